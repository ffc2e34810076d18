#!/usr/bin/env python3
"""Writes N chat-completion batch lines (about 330 bytes each) to stdout, for benchmarks."""
import json
import sys

n = int(sys.argv[1])
out = sys.stdout
for i in range(n):
    line = {
        "custom_id": f"req-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "sim-model",
            "messages": [
                {"role": "system", "content": "You are a concise assistant."},
                {"role": "user", "content": f"Summarise item {i} of the benchmark corpus in one line."},
            ],
            "max_tokens": 16,
        },
    }
    out.write(json.dumps(line, separators=(",", ":")))
    out.write("\n")
