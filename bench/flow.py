#!/usr/bin/env python3
"""Engine-aware flow control, measured: online latency and batch throughput on a shared engine.

Run by bench/flow.sh (which builds the release binary and a venv with matplotlib). Scenarios,
each on a fresh sim-engine that models SGLang (continuous batching: every decode step slower the
more requests run; priority scheduling; a bounded running set):

  capacity   batch alone, fixed concurrency 256: the engine's capacity C (req/s)
  adaptive0  batch alone, --concurrency adaptive: the share of C it reaches
  online     online traffic alone at C/2 (open loop, fixed rate)
  fixed      online + batch at fixed concurrency 256
  adaptive   online + batch --concurrency adaptive
  priority   online + batch --concurrency adaptive --priority -10 (the engine's default
             priority is 0, so online requests, which send none, win)
  input/prefix  16 shared system prompts interleaved at random, input order against
             --order-dispatch prefix, on an engine with a prefix cache and a prefill cost

Online latency percentiles are over the steady part of each window (after WARMUP seconds).
Writes a Markdown table to stdout and a PNG of the concurrency limit and online latency over
time.
"""

import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

BIN = sys.argv[1]
WORK = sys.argv[2]
PNG = sys.argv[3]
WINDOW = float(os.environ.get("WINDOW", "25"))
WARMUP = float(os.environ.get("WARMUP", "8"))
SIM_ARGS = ["--max-running", "32", "--max-queued", "100000", "--ttft-ms", "30",
            "--ms-per-token", "10", "--ms-per-token-per-running", "0.1",
            "--enable-priority-scheduling", "--default-priority-value", "0"]


def start(args, wait_for="listening on "):
    """Starts a process whose stdout's first line names its URL; returns (process, url)."""
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline().strip()
    assert line.startswith(wait_for), line
    return p, line[len(wait_for):]


def metric(text, name):
    total = None
    for line in text.splitlines():
        if line.startswith(name) and (len(line) > len(name) and line[len(name)] in " {"):
            total = (total or 0.0) + float(line.rsplit(" ", 1)[1])
    return total


def get(url, timeout=2):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def chat_body(i, priority=None, system="You are a concise assistant."):
    body = {"model": "sim-model", "max_tokens": 16, "messages": [
        {"role": "system", "content": system},
        {"role": "user", "content": f"online question {i}"}]}
    if priority is not None:
        body["priority"] = priority
    return json.dumps(body)


class Online:
    """Open-loop load: one request every 1/rate seconds, whatever the answers take."""

    def __init__(self, url, rate):
        self.host = url.removeprefix("http://")
        self.rate = rate
        self.samples = []  # (sent at, latency s, status)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=400)

    def one(self, i, t0):
        sent = time.monotonic()
        try:
            c = http.client.HTTPConnection(self.host, timeout=60)
            c.request("POST", "/v1/chat/completions", chat_body(i),
                      {"Content-Type": "application/json"})
            status = c.getresponse().status
            c.close()
        except OSError:
            status = 0
        with self.lock:
            self.samples.append((sent - t0, time.monotonic() - sent, status))

    def run(self, t0, seconds):
        i = 0
        while not self.stop.is_set():
            due = t0 + i / self.rate
            if due - t0 > seconds:
                break
            time.sleep(max(0.0, due - time.monotonic()))
            self.pool.submit(self.one, i, t0)
            i += 1
        self.pool.shutdown(wait=True)


def batch(sim, extra, input_path):
    args = [BIN, "run", input_path, "--output", f"{WORK}/out.jsonl", "--restart",
            "--engine-url", sim, "--progress", "off", "--metrics-listen", "127.0.0.1:0"] + extra
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, BATCH_RUNNER_LOG="info"))
    for line in p.stderr:
        if "serving metrics on " in line:
            url = line.split("serving metrics on ", 1)[1].strip()
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            return p, url
    raise RuntimeError("batch-runner did not start")


def scenario(name, online_rate=None, batch_args=None, sim_extra=(), input_path=None,
             seconds=WINDOW):
    sim_p, sim = start([BIN, "sim-engine", "--port", "0"] + SIM_ARGS + list(sim_extra))
    timeline = []  # (t, limit, batch done)
    try:
        runner = None
        if batch_args is not None:
            runner, metrics_url = batch(sim, batch_args, input_path)
        t0 = time.monotonic()
        load = None
        if online_rate:
            load = Online(sim, online_rate)
            th = threading.Thread(target=load.run, args=(t0, seconds))
            th.start()
        while time.monotonic() - t0 < seconds:
            t = time.monotonic() - t0
            if runner is not None:
                try:
                    text = get(metrics_url)
                    timeline.append((t, metric(text, "batch_runner_concurrency_limit"),
                                     metric(text, "batch_runner_requests_total"),
                                     metric(text, "batch_runner_in_flight")))
                except OSError:
                    pass
            time.sleep(0.25)
        if load:
            th.join()
        if runner is not None:
            runner.kill()
            runner.wait()
        engine = get(f"{sim}/metrics")
    finally:
        sim_p.kill()
        sim_p.wait()
    result = {"name": name, "timeline": timeline}
    steady = [s for s in timeline if s[0] >= WARMUP]
    if len(steady) >= 2:
        result["batch_rps"] = (steady[-1][2] - steady[0][2]) / (steady[-1][0] - steady[0][0])
    if load:
        lat = sorted(l for (t, l, s) in load.samples if t >= WARMUP and s == 200)
        result["online"] = load.samples
        result["p50"] = lat[len(lat) // 2]
        result["p99"] = lat[int(len(lat) * 0.99)]
        result["online_ok"] = len(lat)
        result["online_failed"] = sum(1 for (t, l, s) in load.samples if s != 200)
    prompt = metric(engine, "sglang:prompt_tokens_total") or 0
    cached = metric(engine, "sglang:cached_tokens_total") or 0
    result["hit_rate"] = cached / prompt if prompt else 0.0
    return result


def write_input(path, n, prompts=None, seed=1):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            system = "You are a concise assistant."
            if prompts:
                k = rng.randrange(len(prompts))
                system = prompts[k]
            line = {"custom_id": f"b{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "sim-model", "max_tokens": 16, "messages": [
                        {"role": "system", "content": system},
                        {"role": "user", "content": f"batch item {i}"}]}}
            f.write(json.dumps(line, separators=(",", ":")) + "\n")


def main():
    big = f"{WORK}/batch.jsonl"
    write_input(big, 200_000)
    res = {}
    res["capacity"] = scenario("capacity", batch_args=["--max-concurrency", "256"], input_path=big)
    capacity = res["capacity"]["batch_rps"]
    online_rate = round(capacity / 2)
    res["adaptive0"] = scenario("adaptive0", input_path=big, batch_args=[
        "--concurrency", "adaptive", "--max-concurrency", "256"])
    res["online"] = scenario("online", online_rate=online_rate)
    res["fixed"] = scenario("fixed", online_rate, ["--max-concurrency", "256"], input_path=big)
    res["adaptive"] = scenario("adaptive", online_rate, [
        "--concurrency", "adaptive", "--max-concurrency", "256"], input_path=big)
    res["priority"] = scenario("priority", online_rate, [
        "--concurrency", "adaptive", "--max-concurrency", "256", "--priority", "-10"],
        input_path=big)

    # Prefix grouping: 16 system prompts of 200 words, a cache with room for 4 of them.
    prompts = [f"You are assistant {k}. " + " ".join(f"rule{k}-{j}" for j in range(200))
               for k in range(16)]
    shared = f"{WORK}/shared.jsonl"
    write_input(shared, 200_000, prompts, seed=2)
    cache = ["--prefix-cache-tokens", "850", "--prefill-ms-per-token", "0.5"]
    res["input"] = scenario("input", None, ["--max-concurrency", "64"], cache, shared, 20)
    res["prefix"] = scenario("prefix", None, ["--max-concurrency", "64", "--order-dispatch",
                                              "prefix"], cache, shared, 20)

    free = capacity - online_rate
    alone = res["online"]
    print(f"Engine capacity (batch alone, fixed 256): {capacity:.1f} req/s; online load "
          f"{online_rate} req/s (open loop); free capacity {free:.1f} req/s.\n")
    print("| scenario | online p50 | online p99 | p99 / alone | batch req/s | batch share of free capacity |")
    print("|---|---|---|---|---|---|")
    for key, label in [("online", "online alone"), ("fixed", "+ batch, fixed 256"),
                       ("adaptive", "+ batch, adaptive"),
                       ("priority", "+ batch, adaptive + --priority")]:
        r = res[key]
        rps = r.get("batch_rps")
        print(f"| {label} | {r['p50']*1000:.0f} ms | {r['p99']*1000:.0f} ms | "
              f"{r['p99']/alone['p99']:.2f} | {'' if rps is None else f'{rps:.1f}'} | "
              f"{'' if rps is None else f'{rps/free:.0%}'} |")
    a0 = res["adaptive0"]["batch_rps"]
    print(f"\nBatch alone: adaptive {a0:.1f} req/s = {a0/capacity:.1%} of capacity "
          f"(fixed 256: {capacity:.1f}).\n")
    print("| dispatch order (16 shared system prompts) | batch req/s | prefix-cache hit rate |")
    print("|---|---|---|")
    for key in ["input", "prefix"]:
        r = res[key]
        print(f"| {key} | {r['batch_rps']:.1f} | {r['hit_rate']:.1%} |")

    with open(f"{WORK}/flow.json", "w") as f:
        json.dump({k: {kk: vv for kk, vv in v.items() if kk != "online"} for k, v in res.items()}, f)
    plot(res, PNG)


def plot(res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for key, style in [("adaptive", "-"), ("priority", "--")]:
        tl = res[key]["timeline"]
        top.plot([t for t, *_ in tl], [l for _, l, _, _ in tl], style,
                 label=f"limit ({key})")
    tl = res["fixed"]["timeline"]
    top.plot([t for t, *_ in tl], [x for *_, x in tl], ":", label="in flight (fixed 256)")
    top.set_ylabel("batch requests")
    top.set_yscale("log")
    top.legend()
    top.set_title("Batch concurrency and online latency on a shared engine")
    for key, label in [("online", "online alone"), ("fixed", "+ fixed 256"),
                       ("adaptive", "+ adaptive"), ("priority", "+ adaptive + priority")]:
        samples = res[key]["online"]
        seconds = {}
        for t, lat, status in samples:
            seconds.setdefault(int(t), []).append(lat)
        xs = sorted(seconds)
        p99 = [sorted(seconds[x])[int(len(seconds[x]) * 0.99)] * 1000 for x in xs]
        bottom.plot(xs, p99, label=label)
    bottom.set_yscale("log")
    bottom.set_ylabel("online p99 per second (ms)")
    bottom.set_xlabel("seconds")
    bottom.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)


if __name__ == "__main__":
    main()
