#!/usr/bin/env python3
"""The physical anchor: the same model, prompts and max_tokens as the HTTP runs, generated
in-process with transformers' own continuous batching (`generate_batch`), no HTTP at all.
`batch-runner run`'s throughput against the engine's server is reported as a fraction of this.

    offline.py MODEL_DIR INPUT.jsonl

Only chat lines are used (their messages through the tokenizer's chat template, as the server
does). Prints one JSON line: requests, generated tokens, seconds, requests/s, tokens/s.
"""
import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig


def prompts(path, tok):
    ids, max_tokens = [], None
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            body = json.loads(line)["body"]
            if "messages" not in body:
                continue
            max_tokens = body.get("max_tokens", max_tokens)
            ids.append(tok.apply_chat_template(body["messages"], add_generation_prompt=True,
                                               tokenize=True, return_dict=True)["input_ids"])
    return ids, max_tokens


def load(model_dir):
    """The model with a paged attention for continuous batching; the name changed across
    transformers versions, so the known ones are tried in turn."""
    errors = []
    for attn in ("paged|sdpa", "sdpa_paged", None):
        try:
            kwargs = {"attn_implementation": attn} if attn else {}
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16,
                                                         device_map="cuda", **kwargs)
            return model, attn or "default", errors
        except Exception as e:  # the next name may be the one this version knows
            errors.append(f"{attn}: {e}")
    raise RuntimeError("; ".join(errors))


def generate(model, ids, config):
    outputs = model.generate_batch(inputs=ids, generation_config=config)
    return sum(len(o.generated_tokens) for o in outputs.values()), len(outputs)


def main():
    model_dir, path = sys.argv[1], sys.argv[2]
    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    ids, max_tokens = prompts(path, tok)
    model, attn, load_errors = load(model_dir)
    config = GenerationConfig(max_new_tokens=max_tokens or 16, do_sample=False,
                              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    generate(model, ids[:64], config)  # warm-up: kernels, allocator, cache
    torch.cuda.synchronize()
    started = time.time()
    tokens, answered = generate(model, ids, config)
    torch.cuda.synchronize()
    seconds = time.time() - started
    print(json.dumps({"requests": answered, "generated_tokens": tokens, "max_new_tokens": max_tokens,
                      "attn_implementation": attn, "load_errors": load_errors,
                      "seconds": round(seconds, 3), "requests_per_second": round(answered / seconds, 2),
                      "tokens_per_second": round(tokens / seconds, 1)}))


if __name__ == "__main__":
    main()
