#!/usr/bin/env python3
"""The usual hand-written batch script, as a baseline for `batch-runner run`: reads a batch
file, sends every line with the official openai SDK's async client, at most CONCURRENCY at
once, and writes one result line per request. Prints a JSON line with its counts and time.

    sdk_client.py INPUT OUTPUT --base-url URL --concurrency N
"""
import argparse
import asyncio
import json
import sys
import time

from openai import AsyncOpenAI


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--base-url", required=True, help="the engine's /v1 URL")
    ap.add_argument("--concurrency", type=int, required=True)
    args = ap.parse_args()
    started = time.time()
    with open(args.input) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    client = AsyncOpenAI(base_url=args.base_url, api_key="none", max_retries=2, timeout=600)
    gate = asyncio.Semaphore(args.concurrency)
    failed = 0

    async def one(line):
        nonlocal failed
        async with gate:
            try:
                if line["url"] == "/v1/chat/completions":
                    answer = await client.chat.completions.create(**line["body"])
                else:
                    answer = await client.completions.create(**line["body"])
                return {"custom_id": line["custom_id"], "response": answer.model_dump()}
            except Exception as e:  # the script keeps going, as such scripts do
                failed += 1
                return {"custom_id": line["custom_id"], "error": str(e)}

    results = await asyncio.gather(*(one(line) for line in lines))
    with open(args.output, "w") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    wall = time.time() - started
    print(json.dumps({"requests": len(lines), "failed": failed, "wall_seconds": round(wall, 3),
                      "requests_per_second": round(len(lines) / wall, 2)}))


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
