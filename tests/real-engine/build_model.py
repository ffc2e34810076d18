#!/usr/bin/env python3
"""Builds a small causal LM with random weights and a BPE tokenizer trained on the spot, so a
real engine can serve it on a machine that cannot download anything.

    build_model.py OUT_DIR

The model is Llama-shaped (6 layers, hidden 1024, about 90M parameters, bf16); the tokenizer is
a byte-level BPE of 8,000 tokens trained on generated sentences, with a chat template of
<|role|> markers. Its output is noise, which is all a throughput and behaviour check needs: the
engine still runs every layer for every token. Prints what it built as one JSON line.
"""
import json
import random
import sys
import time

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def corpus(n):
    """Sentences in the shape of the check's prompts, so the tokenizer learns their words."""
    rnd = random.Random(7)
    nouns = ["engine", "batch", "request", "answer", "queue", "server", "model", "line", "file", "token"]
    verbs = ["reads", "writes", "sends", "retries", "answers", "counts", "finishes", "starts", "waits for"]
    for i in range(n):
        a, b = rnd.randint(0, 999), rnd.randint(0, 999)
        yield (f"The {rnd.choice(nouns)} {rnd.choice(verbs)} the {rnd.choice(nouns)}. "
               f"Question {i}: what is {a} plus {b}? It is {a + b}.")
        yield f"Say something short about {rnd.choice(nouns)} number {i}."


def build_tokenizer(out):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=8000, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(5000), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", pad_token="<|pad|>",
                                   chat_template=CHAT_TEMPLATE, model_max_length=2048)
    fast.save_pretrained(out)
    return fast


def build_model(out, tok):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=1024, intermediate_size=2816,
                         num_hidden_layers=6, num_attention_heads=16, num_key_value_heads=16,
                         max_position_embeddings=2048, tie_word_embeddings=False,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    config.architectures = ["LlamaForCausalLM"]
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, do_sample=False,
                                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    started = time.time()
    tok = build_tokenizer(out)
    params = build_model(out, tok)
    print(json.dumps({"model_dir": out, "parameters": params, "vocab": len(tok),
                      "seconds": round(time.time() - started, 1)}), flush=True)


if __name__ == "__main__":
    main()
