#!/usr/bin/env python3
"""Benchmark of the results API (issue 19): pages of 100 results from a 1M-line batch.

Runs one batch of N lines (default 1,000,000; 1% of requests answered 400 by the engine)
through `serve` against a zero-latency sim-engine, then times, over one kept-alive connection:
- while it runs, at about half done: pages of the results so far (read from the worker's
  spool), with the worker and the engine busy on the same cores ("loaded");
- still running, once the engine has stopped (sim-engine --exit-after: it answers N*0.52
  requests, then exits; the batch waits for it): the same pages on a quiet machine ("quiet");
- once it has ended (cancelled: the rest of its lines are recorded as cancelled): pages of 100
  at random cursors, all statuses and `status=failed`; single requests by `custom_id`;
  `/errors`.
Prints p50 / p99 / max in milliseconds for each.

    python3 bench/results_api.py target/release/batch-runner target/bench-results [N]
"""
import http.client
import json
import os
import random
import shutil
import sys
import time

from benchlib import start

binary, work = sys.argv[1], sys.argv[2]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 1_000_000
KEY = "sk-bench"
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)



sim, sim_url = start([binary, "sim-engine", "--port", "0", "--ttft-ms", "0", "--ms-per-token", "0",
                      "--max-running", "4096", "--fail-rate", "0.01", "--fail-status", "400", "--seed", "1",
                      "--exit-after", str(int(n * 0.52))])
svc, svc_url = start([binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", f"{work}/data",
                      "--engine-url", sim_url, "--max-concurrency", "128", "--max-upload-bytes", str(2 << 30)],
                     {"BATCH_RUNNER_API_KEYS": f"{KEY} bench"})
host = svc_url.split("//")[1].split("/")[0]
conn = http.client.HTTPConnection(host, timeout=60)


def call(method, path, body=None, headers=None):
    h = {"Authorization": f"Bearer {KEY}", **(headers or {})}
    conn.request(method, path, body=body, headers=h)
    r = conn.getresponse()
    data = r.read()
    assert r.status == 200, (path, r.status, data[:300])
    return json.loads(data)


def timed(paths):
    times = []
    for p in paths:
        t = time.perf_counter()
        call("GET", p)
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return f"p50 {times[len(times) // 2]:.2f} ms, p99 {times[int(len(times) * 0.99)]:.2f} ms, max {times[-1]:.2f} ms ({len(times)} calls)"


try:
    path = f"{work}/input.jsonl"
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": {"model": "sim-model", "max_tokens": 8,
                                         "messages": [{"role": "user", "content": f"Summarise item {i}."}]}},
                               separators=(",", ":")) + "\n")
    size = os.path.getsize(path)
    boundary = "benchboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n"
            f"Content-Type: application/jsonl\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    with open(path, "rb") as f:
        body = head + f.read() + tail
    file_id = call("POST", "/v1/files", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})["id"]
    del body
    batch = call("POST", "/v1/batches", json.dumps({"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                                                   "completion_window": "24h"}),
                 {"Content-Type": "application/json"})["id"]
    print(f"machine: {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}; batch of {n} lines ({size / 1e6:.0f} MB)")
    t0 = time.time()
    loaded = False
    while True:
        b = call("GET", f"/v1/batches/{batch}")
        done = b["request_counts"]["completed"] + b["request_counts"]["failed"]
        if not loaded and done >= n // 2:
            rng = random.Random(1)
            pages = [f"/v1/batches/{batch}/results?limit=100&after={rng.randrange(done)}" for _ in range(200)]
            print(f"running, loaded ({done} results so far), page of 100 from the spool: {timed(pages)}")
            loaded = True
        if sim.poll() is not None:
            break
        time.sleep(0.5)
    time.sleep(3)
    b = call("GET", f"/v1/batches/{batch}")
    done = b["request_counts"]["completed"] + b["request_counts"]["failed"]
    assert b["status"] == "in_progress", b["status"]
    rng = random.Random(3)
    pages = [f"/v1/batches/{batch}/results?limit=100&after={rng.randrange(done)}" for _ in range(1000)]
    print(f"running, quiet ({done} results so far), page of 100 from the spool: {timed(pages)}")
    call("POST", f"/v1/batches/{batch}/cancel")
    while b["status"] not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(0.5)
        b = call("GET", f"/v1/batches/{batch}")
    print(f"batch {b['status']} after {time.time() - t0:.0f} s: {b['request_counts']}")
    rng = random.Random(2)
    print("ended, page of 100 at a random cursor:",
          timed([f"/v1/batches/{batch}/results?limit=100&after={rng.randrange(n)}" for _ in range(2000)]))
    print("ended, page of 100 failed at a random cursor:",
          timed([f"/v1/batches/{batch}/results?limit=100&status=failed&after={rng.randrange(n)}" for _ in range(1000)]))
    print("ended, one request by custom_id:",
          timed([f"/v1/batches/{batch}/results/req-{rng.randrange(n)}" for _ in range(1000)]))
    print("ended, errors by code:", timed([f"/v1/batches/{batch}/errors" for _ in range(200)]))
finally:
    svc.terminate()
    sim.terminate()
    svc.wait()
    sim.wait()
