#!/usr/bin/env python3
"""Deadline-first claiming and fair shares between owners, on sim-engine (issue 18).

    bench/scheduling.py BINARY [BINARY_BEFORE] WORKDIR

Runs each scenario with BINARY, and with BINARY_BEFORE when given (a build from before the
change, to compare), and prints one line per scenario and binary:

- windows: 12 batches of 200 requests from 3 owners created together, the first 8 with a 60 s
  window, the last 4 with windows of 8, 10, 12 and 14 s; an engine of 16 slots at 100 ms per
  request (160 requests/s), 2 worker slots. All 2,400 requests take about 15 s, so every window
  can be met, but only if the short ones go first. Reports how many batches expired.
- fairness: owner A creates 10 batches of 200 requests, then owner B one. B's time to its last
  result, against its fair-share time (half the engine: 200 requests at 80/s, 2.5 s).
- overload (BINARY only): the throughput is measured first (one batch of 800), then 12 batches
  of 200 with 10 s windows are created together: 1.5x what the engine can do in 10 s. With
  --admission reject: how many were refused at create, and whether every accepted one met its
  window; with warn: how many of the batches that expired had been flagged at_risk.
- eta (BINARY only): 3 batches of 2,000 run one at a time; at 25% of each batch's progress its
  eta_seconds against the time it then took to end: the median error.
"""
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request

from benchlib import start

KEYS = {"a": "sk-a", "b": "sk-b", "c": "sk-c"}



def call(base, key, method, path, body=None, content_type="application/json"):
    data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": content_type})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def upload(base, key, n, tag):
    lines = "".join(json.dumps({"custom_id": f"{tag}-{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": {"model": "sim-model", "max_tokens": 1,
                                         "messages": [{"role": "user", "content": f"q {i}"}]}}) + "\n"
                    for i in range(n))
    boundary = "benchboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{tag}.jsonl\"\r\n"
            f"Content-Type: application/jsonl\r\n\r\n{lines}\r\n--{boundary}--\r\n").encode()
    return call(base, key, "POST", "/files", body, f"multipart/form-data; boundary={boundary}")["id"]


def create(base, owner, file_id, window):
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": window}
    return call(base, KEYS[owner], "POST", "/batches", body)["id"]


def wait_all(base, ids, limit=180):
    """Polls every 0.1 s; returns {id: (status, seconds from the start to the end seen)}."""
    t0, ended = time.time(), {}
    while len(ended) < len(ids) and time.time() - t0 < limit:
        for owner, bid in ids:
            if bid in ended:
                continue
            b = call(base, KEYS[owner], "GET", f"/batches/{bid}")
            if b["status"] in ("completed", "failed", "expired", "cancelled"):
                ended[bid] = (b["status"], time.time() - t0)
        time.sleep(0.1)
    return ended


def service(binary, work, sim_url, extra=(), slots=2):
    data = os.path.join(work, "data")
    shutil.rmtree(data, ignore_errors=True)
    keys = ",".join(f"{k} {o}" for o, k in KEYS.items())
    p, url = start([binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", data, "--engine-url", sim_url,
                    "--max-concurrent-batches", str(slots), "--max-concurrency", "16", "--min-completion-window", "1s",
                    "--report-interval", "200ms", *extra], {"BATCH_RUNNER_API_KEYS": keys})
    return p, url + "/v1"


def windows(binary, work, sim_url):
    p, base = service(binary, work, sim_url)
    try:
        files = {o: upload(base, KEYS[o], 200, o) for o in KEYS}
        owners = ["a", "b", "c"]
        ids = [(owners[i % 3], create(base, owners[i % 3], files[owners[i % 3]], "60s")) for i in range(8)]
        ids += [(owners[i % 3], create(base, owners[i % 3], files[owners[i % 3]], f"{8 + 2 * i}s"))
                for i in range(4)]
        ended = wait_all(base, ids)
        expired = sum(1 for s, _ in ended.values() if s == "expired")
        last = max(t for _, t in ended.values())
        return f"{expired} of 12 batches expired (short windows: {[ended[b][0] for _, b in ids[8:]]}); last ended at {last:.1f} s"
    finally:
        p.kill()


def fairness(binary, work, sim_url):
    p, base = service(binary, work, sim_url)
    try:
        fa, fb = upload(base, KEYS["a"], 200, "a"), upload(base, KEYS["b"], 200, "b")
        ids = [("a", create(base, "a", fa, "24h")) for _ in range(10)]
        b = create(base, "b", fb, "24h")
        ended = wait_all(base, ids + [("b", b)])
        # wait_all's clock starts within milliseconds of B's create.
        took = ended[b][1]
        return f"B's batch ended {took:.1f} s after it was created: {took / 2.5:.2f}x its fair-share time (2.5 s)"
    finally:
        p.kill()


def measured(base):
    """Runs one batch of 800 so the service measures the engine; waits for the measurement."""
    f = upload(base, KEYS["a"], 800, "m")
    b = create(base, "a", f, "24h")
    wait_all(base, [("a", b)])
    return f


def overload(binary, work, sim_url):
    out = []
    for policy in ("reject", "warn"):
        p, base = service(binary, work, sim_url, ("--admission", policy))
        try:
            measured(base)
            f = upload(base, KEYS["b"], 200, "o")
            ids, refused = [], 0
            for _ in range(12):
                body = {"input_file_id": f, "endpoint": "/v1/chat/completions", "completion_window": "10s"}
                try:
                    ids.append(("b", call(base, KEYS["b"], "POST", "/batches", body)["id"]))
                except urllib.error.HTTPError as e:
                    assert e.code == 429, e.code
                    refused += 1
            flagged = {bid for o, bid in ids
                       if call(base, KEYS[o], "GET", f"/batches/{bid}")["x_batch_runner"].get("at_risk")}
            ended = wait_all(base, ids)
            expired = {bid for bid, (st, _) in ended.items() if st == "expired"}
            if policy == "reject":
                out.append(f"reject: {refused} of 12 refused at create, {len(expired)} of the "
                           f"{len(ids)} accepted expired")
            else:
                hit = len(expired & flagged)
                out.append(f"warn: {len(expired)} of 12 expired, {hit} of them flagged at_risk at "
                           f"create ({len(flagged)} flagged in all)")
        finally:
            p.kill()
    return "; ".join(out)


def eta(binary, work, sim_url):
    # One slot: the batches run one after another, each alone on the engine.
    p, base = service(binary, work, sim_url, slots=1)
    try:
        measured(base)
        # Long enough (about 13 s each) that the whole seconds of eta_seconds do not decide.
        f = upload(base, KEYS["a"], 2000, "e")
        ids = [create(base, "a", f, "24h") for _ in range(3)]
        at25, ended, errors = {}, {}, []
        t0 = time.time()
        while len(ended) < len(ids) and time.time() - t0 < 180:
            for bid in ids:
                if bid in ended:
                    continue
                b = call(base, KEYS["a"], "GET", f"/batches/{bid}")
                total = b["request_counts"]["total"] or 1
                done = b["request_counts"]["completed"] + b["request_counts"]["failed"]
                if bid not in at25 and done >= total / 4 and b["x_batch_runner"].get("eta_seconds"):
                    at25[bid] = (time.time(), b["x_batch_runner"]["eta_seconds"])
                if b["status"] == "completed":
                    ended[bid] = time.time()
            time.sleep(0.05)
        for bid, (t, predicted) in at25.items():
            actual = ended[bid] - t
            errors.append(abs(predicted - actual) / actual)
        errors.sort()
        median = errors[len(errors) // 2] if errors else float("nan")
        return (f"median |ETA error| at 25% progress {median:.0%} over {len(errors)} batches "
                f"(each: {', '.join(f'{e:.0%}' for e in errors)})")
    finally:
        p.kill()


def main():
    binary, work = sys.argv[1], sys.argv[-1]
    before = sys.argv[2] if len(sys.argv) == 4 else None
    os.makedirs(work, exist_ok=True)
    sim, sim_url = start([binary, "sim-engine", "--port", "0", "--ttft-ms", "100", "--ms-per-token", "0",
                          "--max-running", "16"])
    try:
        for name, fn in (("windows", windows), ("fairness", fairness)):
            for label, b in (("before", before), ("after", binary)):
                if b:
                    print(f"{name} [{label}]: {fn(b, work, sim_url)}", flush=True)
        for name, fn in (("overload", overload), ("eta", eta)):
            print(f"{name}: {fn(binary, work, sim_url)}", flush=True)
    finally:
        sim.kill()


if __name__ == "__main__":
    main()
