#!/usr/bin/env python3
"""The real-engine check: batch-runner against a real OpenAI-compatible server on a GPU.

    check.py --bin PATH/batch-runner --report report.json [--engine transformers|sim]

With --engine transformers (on the GPU machine; see tests/real-engine/check, which installs the
carried wheels first) it builds a small random-weight model, starts `transformers serve
--continuous-batching` on it and runs a fixed scenario; with --engine sim it runs the same
scenario against sim-engine (with transformers' quirks), to try the script without a GPU.

The scenario, each step recorded in the report whether it passed or not:
 1. probes: what the engine answers to the requests the runner relies on (health, models,
    metrics, a good request, a wrong model, an unknown field, a too long prompt, ...);
 2. validate the chat file and a completions file (a batch holds one endpoint);
 3. run the completions file: every line gets exactly one result, in the output or the error
    file (transformers serve has no /v1/completions: its 404s must land in the error file);
 4. throughput, 1,000 chat requests: `run` at fixed 64 and 256 and adaptive up to 256, next to
    the plain asyncio + openai SDK client (sdk_client.py) at 64 and 256, interleaved;
 5. resume: SIGTERM mid-run, then the same command finishes the job, each line once;
 6. serve: the OpenAI Files + Batches API driven by the openai SDK against the engine;
 7. launch: `run --engine transformers` starts its own engine, which is killed (SIGKILL)
    mid-run; the runner restarts it and finishes;
 8. the physical anchor (transformers only): offline.py, in-process continuous batching;
    with --anchor-rounds N, also N rounds of the anchor and `run` at 1,024 in turns;
 9. mixed models: a second model on a second engine, and one file of both run with
    `--mixed-models --model-engine`: each line must reach the engine of its model (transformers
    serve is pinned to its model and answers 400 to another), counted per model; the same file
    with every line sent to the first engine shows what the routing avoids. The second engine
    runs on the CPU: transformers serve's continuous batching takes most of the GPU's memory
    for its cache, and a second one on the same GPU dies (CUDA out of memory) at its first
    request, answering 503 "CB worker is dead" from then on (seen on the H200).
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = "/tmp/model"
# The second model of the mixed-models step.
MODEL_B = "/tmp/model-b"


class Check:
    def __init__(self, args):
        self.args = args
        self.work = args.work
        self.report = {"engine": args.engine, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "steps": {}}
        self.engine = None
        self.engine_url = None

    # ---- plumbing ----

    def step(self, name, fn):
        """Runs one step, recording its result or its failure, and goes on either way."""
        started = time.time()
        print(f"== {name}", flush=True)
        try:
            result = fn()
            entry = {"ok": True, "result": result}
        except Exception as e:
            entry = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
        entry["seconds"] = round(time.time() - started, 1)
        self.report["steps"][name] = entry
        print(json.dumps(entry)[:1500], flush=True)
        self.save()

    def save(self):
        with open(self.args.report, "w") as f:
            json.dump(self.report, f, indent=1)

    def path(self, name):
        return os.path.join(self.work, name)

    def runner(self, *args, timeout=600):
        """Runs batch-runner; returns (exit code, stderr tail, seconds)."""
        started = time.time()
        p = subprocess.run([self.args.bin, *args], capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stderr[-3000:], round(time.time() - started, 3)

    # ---- the engine ----

    def start_engine(self):
        port = free_port()
        log = open(self.path("engine.log"), "w")
        if self.args.engine == "transformers":
            cmd = serve_command(MODEL, "127.0.0.1", port)
            env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        else:
            cmd = sim_command(self.args.bin, port)
            env = os.environ
        self.engine = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.engine_url = f"http://127.0.0.1:{port}"
        started = time.time()
        while time.time() - started < 300:
            if self.engine.poll() is not None:
                raise RuntimeError(f"engine exited {self.engine.returncode}: {tail(self.path('engine.log'))}")
            if http("GET", self.engine_url + "/health", timeout=2)[0] == 200:
                return {"command": " ".join(cmd), "ready_seconds": round(time.time() - started, 1)}
            time.sleep(0.5)
        raise RuntimeError("engine not ready after 300 s")

    def stop_engine(self):
        if self.engine and self.engine.poll() is None:
            os.killpg(self.engine.pid, signal.SIGTERM)
            try:
                self.engine.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.engine.pid, signal.SIGKILL)
                self.engine.wait()
        return {"exit": self.engine.returncode if self.engine else None}

    # ---- the steps ----

    def environment(self):
        env = {"binary": subprocess.run([self.args.bin, "--version"], capture_output=True, text=True).stdout.strip()}
        if self.args.engine == "transformers":
            import torch
            import transformers
            env.update(torch=torch.__version__, transformers=transformers.__version__,
                       gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                       python=sys.version.split()[0], cpus=os.cpu_count())
        return env

    def build_model(self):
        if self.args.engine != "transformers":
            return "sim-engine needs no model"
        p = subprocess.run([sys.executable, os.path.join(HERE, "build_model.py"), MODEL],
                           capture_output=True, text=True, timeout=300)
        if p.returncode != 0:
            raise RuntimeError(p.stderr[-3000:])
        return json.loads(p.stdout.strip().splitlines()[-1])

    def inputs(self):
        n, tokens = self.args.requests, self.args.max_tokens
        write_jsonl(self.path("chat.jsonl"), [chat_line(f"chat-{i}", i, tokens) for i in range(n)])
        write_jsonl(self.path("completions.jsonl"),
                    [completion_line(f"completion-{i}", i, tokens) for i in range(n // 5)])
        return {"chat.jsonl": n, "completions.jsonl": n // 5}

    def probes(self):
        """What the engine answers; sim-engine's transformers profile is held to this."""
        u = self.engine_url
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "Question 3: what is 3 plus 8?"}],
                "max_tokens": 8}
        cases = {
            "health": ("GET", "/health", None),
            "models": ("GET", "/v1/models", None),
            "metrics": ("GET", "/metrics", None),
            "chat": ("POST", "/v1/chat/completions", chat),
            "chat_with_request_id": ("POST", "/v1/chat/completions", chat, {"x-request-id": "probe-1"}),
            "completions": ("POST", "/v1/completions", {"model": MODEL, "prompt": "Question 3:", "max_tokens": 8}),
            "embeddings": ("POST", "/v1/embeddings", {"model": MODEL, "input": "hello"}),
            "wrong_model": ("POST", "/v1/chat/completions", dict(chat, model="other-model")),
            "unknown_field": ("POST", "/v1/chat/completions", dict(chat, not_a_field=1)),
            "max_completion_tokens": ("POST", "/v1/chat/completions",
                                      {k: v for k, v in dict(chat, max_completion_tokens=4).items() if k != "max_tokens"}),
            "too_long_prompt": ("POST", "/v1/chat/completions",
                                dict(chat, messages=[{"role": "user", "content": "word " * 5000}])),
            "priority": ("POST", "/v1/chat/completions", dict(chat, priority=5)),
            "bad_json": ("POST", "/v1/chat/completions", b"{not json"),
        }
        out = {}
        for name, (method, path, body, *headers) in cases.items():
            # max_completion_tokens is ignored by transformers: the answer runs to the model's
            # limit, which takes long; a time-out says as much.
            status, hdrs, text = http(method, u + path, body, headers=headers[0] if headers else None, timeout=15)
            out[name] = {"status": status, "headers": {k: v for k, v in hdrs.items()
                                                       if k.lower() in ("content-type", "x-request-id")},
                         "body": text[:1500]}
        return out

    def mixed_models(self):
        """One file of two models, each on its own engine, routed by `--mixed-models`."""
        if self.args.engine == "transformers":
            p = subprocess.run([sys.executable, os.path.join(HERE, "build_model.py"), MODEL_B],
                               capture_output=True, text=True, timeout=300)
            if p.returncode != 0:
                raise RuntimeError(p.stderr[-3000:])
            port = free_port()
            cmd = serve_command(MODEL_B, "127.0.0.1", port)
            env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
        else:
            port = free_port()
            cmd = sim_command(self.args.bin, port)
            env = os.environ
        log = open(self.path("engine-b.log"), "w")
        second = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        url_b = f"http://127.0.0.1:{port}"
        try:
            started = time.time()
            while http("GET", url_b + "/health", timeout=2)[0] != 200:
                if second.poll() is not None or time.time() - started > 300:
                    raise RuntimeError(f"second engine not ready: {tail(self.path('engine-b.log'))}")
                time.sleep(0.5)
            ready = round(time.time() - started, 1)
            lines = []
            for i in range(200):
                line = chat_line(f"mixed-{i}", i, 8)
                line["body"]["model"] = MODEL if i % 2 == 0 else MODEL_B
                lines.append(line)
            write_jsonl(self.path("mixed.jsonl"), lines)
            results = {}
            for name, routes in (("routed", ["--model-engine", f"{MODEL_B}={url_b}"]), ("unrouted", [])):
                out = self.path(f"mixed-{name}.jsonl")
                summary = self.path(f"mixed-{name}-summary.json")
                clean(out)
                rc, err, secs = self.runner("run", self.path("mixed.jsonl"), "--output", out, "--mixed-models",
                                            "--engine-url", self.engine_url, *routes, "--max-concurrency", "32",
                                            "--engine-down-timeout", "60s", "--progress", "off",
                                            "--summary-json", summary, timeout=240)
                got = read_results(out, error_path(out))
                expect_each_once(self.path("mixed.jsonl"), got)
                results[name] = {"exit": rc, "seconds": secs, "results_by_kind_and_status": by_kind_and_status(got),
                                 "models": load_json(summary).get("models"), "stderr": err[-600:]}
            routed = results["routed"]
            if routed["exit"] != 0 or routed["results_by_kind_and_status"] != {"output:200": 200}:
                raise RuntimeError(f"the routed run did not succeed on every line: {routed}")
            if [m["succeeded"] for m in routed["models"] or []] != [100, 100]:
                raise RuntimeError(f"per-model counts: {routed['models']}")
            return {"second_engine_ready_seconds": ready, **results}
        finally:
            os.killpg(second.pid, signal.SIGTERM)
            try:
                second.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(second.pid, signal.SIGKILL)

    def validate(self):
        out = {}
        for name in ("chat.jsonl", "completions.jsonl"):
            rc, err, secs = self.runner("validate", self.path(name))
            if rc != 0:
                raise RuntimeError(f"validate {name} exit {rc}: {err}")
            out[name] = {"seconds": secs, "stderr": err[-300:]}
        return out

    def run_completions(self):
        out = self.path("completions-out.jsonl")
        summary = self.path("completions-summary.json")
        rc, err, secs = self.runner("run", self.path("completions.jsonl"), "--output", out, "--engine-url",
                                    self.engine_url, "--max-concurrency", "64", "--progress", "off",
                                    "--summary-json", summary)
        got = read_results(out, error_path(out))
        expect_each_once(self.path("completions.jsonl"), got)
        statuses = by_kind_and_status(got)
        sample_error = next((r["line"] for r in got.values() if r["kind"] == "error"), None)
        sample_ok = next((r["line"] for r in got.values() if r["kind"] == "output"), None)
        return {"exit": rc, "seconds": secs, "results_by_kind_and_status": statuses, "summary": load_json(summary),
                "sample_output_line": sample_ok, "sample_error_line": sample_error, "stderr": err[-800:]}

    def throughput(self):
        """`run` fixed and adaptive next to the SDK client, interleaved in rounds."""
        variants = [
            ("run fixed 64", ["--max-concurrency", "64"]),
            ("sdk 64", 64),
            ("run fixed 256", ["--max-concurrency", "256"]),
            ("sdk 256", 256),
            ("run adaptive max 256", ["--concurrency", "adaptive", "--max-concurrency", "256"]),
            ("run fixed 1024", ["--max-concurrency", "1024"]),
            ("run adaptive max 1024", ["--concurrency", "adaptive", "--max-concurrency", "1024"]),
        ]
        if self.args.no_sdk:
            variants = [(name, how) for name, how in variants if not isinstance(how, int)]
        rows = {name: [] for name, _ in variants}
        self.timed_run(["--max-concurrency", "256"])  # warm-up: the engine's first batches, not timed
        for round_no in range(self.args.rounds):
            # The engine's speed drifts over a call; every other round runs the variants in the
            # reverse order, so no variant always comes after the same one.
            for name, how in variants if round_no % 2 == 0 else variants[::-1]:
                rows[name].append(self.sdk(how) if isinstance(how, int) else self.timed_run(how))
        best = {name: max((r["requests_per_second"] for r in rs), default=0) for name, rs in rows.items()}
        median = {name: statistics.median(r["requests_per_second"] for r in rs) for name, rs in rows.items() if rs}
        fixed = max(v for k, v in best.items() if k.startswith("run fixed"))
        adaptive = max(v for k, v in best.items() if k.startswith("run adaptive"))
        median_fixed = max(v for k, v in median.items() if k.startswith("run fixed"))
        median_adaptive = max(v for k, v in median.items() if k.startswith("run adaptive"))
        return {"rounds": rows, "best_requests_per_second": best, "median_requests_per_second": median,
                "adaptive_over_best_fixed": ratio(adaptive, fixed),
                "adaptive_over_best_fixed_medians": ratio(median_adaptive, median_fixed),
                "adaptive_over_fixed_at_256": ratio(best["run adaptive max 256"], best["run fixed 256"]),
                "adaptive_over_fixed_at_1024": ratio(best["run adaptive max 1024"], best["run fixed 1024"]),
                "run_over_sdk_at_64": ratio(best["run fixed 64"], best.get("sdk 64")),
                "run_over_sdk_at_256": ratio(best["run fixed 256"], best.get("sdk 256"))}

    def timed_run(self, extra):
        out = self.path("tp-out.jsonl")
        clean(out)
        summary = self.path("tp-summary.json")
        engine_cpu = cpu_seconds(self.engine.pid) if self.engine else None
        runner_cpu = children_cpu_seconds()
        rc, err, secs = self.runner("run", self.path("chat.jsonl"), "--output", out, "--engine-url", self.engine_url,
                                    "--progress", "off", "--summary-json", summary, *extra)
        s = load_json(summary) or {}
        if rc != 0 or s.get("succeeded") != self.args.requests:
            raise RuntimeError(f"run {extra} exit {rc}, summary {s}: {err}")
        # Where the time goes: CPU seconds per wall second of the engine's process (its HTTP
        # layer and scheduler are Python: near 1.0 means one core is saturated) and of the runner.
        engine_load = (round((cpu_seconds(self.engine.pid) - engine_cpu) / secs, 2)
                       if engine_cpu is not None else None)
        return {"requests_per_second": round(self.args.requests / secs, 2), "wall_seconds": secs,
                "engine_cpu_per_second": engine_load,
                "runner_cpu_per_second": round((children_cpu_seconds() - runner_cpu) / secs, 2),
                "summary_requests_per_second": s.get("requests_per_second"),
                "output_tokens": s.get("usage", {}).get("output_tokens"), "retries": s.get("retries"),
                "adaptive_log": [l[-160:] for l in err.splitlines() if "adaptive limit" in l][:5]}

    def sdk(self, concurrency):
        out = self.path("sdk-out.jsonl")
        started = time.time()
        p = subprocess.run([sys.executable, os.path.join(HERE, "sdk_client.py"), self.path("chat.jsonl"), out,
                            "--base-url", self.engine_url + "/v1", "--concurrency", str(concurrency)],
                           capture_output=True, text=True, timeout=900)
        secs = round(time.time() - started, 3)
        if p.returncode != 0:
            raise RuntimeError(p.stderr[-2000:])
        inner = json.loads(p.stdout.strip().splitlines()[-1])
        return {"requests_per_second": round(self.args.requests / secs, 2), "wall_seconds": secs,
                "failed": inner["failed"]}

    def resume_after_sigterm(self):
        out = self.path("resume-out.jsonl")
        clean(out)
        metrics_port = free_port()
        args = [self.args.bin, "run", self.path("chat.jsonl"), "--output", out, "--engine-url", self.engine_url,
                "--max-concurrency", "64", "--progress", "off", "--summary-json", self.path("resume-1.json"),
                "--metrics-listen", f"127.0.0.1:{metrics_port}"]
        first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        done_at_signal = wait_done(metrics_port, self.args.requests // 4, first)
        first.send_signal(signal.SIGTERM)
        _, err1 = first.communicate(timeout=120)
        s1 = load_json(self.path("resume-1.json")) or {}
        args[args.index(self.path("resume-1.json"))] = self.path("resume-2.json")
        rc2, err2, secs = self.runner(*args[1:])
        s2 = load_json(self.path("resume-2.json")) or {}
        got = read_results(out, error_path(out))
        expect_each_once(self.path("chat.jsonl"), got)
        if rc2 != 0 or s2.get("status") != "completed":
            raise RuntimeError(f"resume exit {rc2}, summary {s2}: {err2}")
        return {"done_when_signalled": done_at_signal, "first_exit": first.returncode, "first_status": s1.get("status"),
                "first_results": s1.get("results"), "second_exit": rc2,
                "second_sent": s2.get("usage_this_run"), "results": len(got), "stderr_first": err1[-600:]}

    def serve(self):
        """The Files + Batches API driven by the openai SDK."""
        from openai import OpenAI

        data = self.path("serve-data")
        shutil.rmtree(data, ignore_errors=True)
        log = open(self.path("serve.log"), "w")
        env = dict(os.environ, BATCH_RUNNER_API_KEYS="sk-real-check check")
        p = subprocess.Popen([self.args.bin, "serve", "--listen", "127.0.0.1:0", "--data-dir", data,
                              "--engine-url", self.engine_url], stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        try:
            first = p.stdout.readline()
            m = re.search(r"listening on (\S+)", first)
            if not m:
                raise RuntimeError(f"serve said {first!r}: {tail(self.path('serve.log'))}")
            client = OpenAI(base_url=m.group(1) + "/v1", api_key="sk-real-check", max_retries=0)
            with open(self.path("chat.jsonl"), "rb") as f:
                file = client.files.create(file=("chat.jsonl", f), purpose="batch")
            started = time.time()
            batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                          completion_window="24h")
            while batch.status not in ("completed", "failed", "expired", "cancelled"):
                if time.time() - started > 300:
                    raise RuntimeError(f"batch still {batch.status} after 300 s")
                time.sleep(0.5)
                batch = client.batches.retrieve(batch.id)
            secs = round(time.time() - started, 1)
            output = client.files.content(batch.output_file_id).text if batch.output_file_id else ""
            errors = client.files.content(batch.error_file_id).text if batch.error_file_id else ""
            n_out = len([x for x in output.splitlines() if x.strip()])
            n_err = len([x for x in errors.splitlines() if x.strip()])
            if batch.status != "completed" or n_out != count_lines(self.path("chat.jsonl")):
                raise RuntimeError(f"batch {batch.status}: {n_out} results + {n_err} errors; {batch}")
            return {"status": batch.status, "seconds": secs, "request_counts": batch.request_counts.model_dump(),
                    "output_lines": n_out, "error_lines": n_err}
        finally:
            p.terminate()
            p.wait(30)

    def launch_with_crash(self):
        """`run --engine transformers` (or sim-engine through --launch); the engine is killed
        with SIGKILL once a quarter of the job is done."""
        out = self.path("launch-out.jsonl")
        clean(out)
        metrics_port = free_port()
        if self.args.engine == "transformers":
            how = (["--engine", "transformers", "--model-path", MODEL] if shutil.which("transformers")
                   else ["--launch", " ".join(serve_command(MODEL, "{host}", "{port}")), "--launch-ready-path", "/health"])
            env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        else:
            how = ["--launch", " ".join(sim_command(self.args.bin, "{port}")), "--launch-ready-path", "/health"]
            env = os.environ
        summary = self.path("launch-summary.json")
        p = subprocess.Popen([self.args.bin, "run", self.path("chat.jsonl"), "--output", out, *how,
                              "--max-concurrency", "64", "--progress", "off", "--summary-json", summary,
                              "--metrics-listen", f"127.0.0.1:{metrics_port}", "--launch-timeout", "5m"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        done_at_kill = wait_done(metrics_port, self.args.requests // 4, p)
        killed = kill_engines(exclude={p.pid})
        _, err = p.communicate(timeout=600)
        s = load_json(summary) or {}
        got = read_results(out, error_path(out))
        expect_each_once(self.path("chat.jsonl"), got)
        if p.returncode != 0 or s.get("succeeded") != self.args.requests:
            raise RuntimeError(f"exit {p.returncode}, summary {s}: {err[-2000:]}")
        return {"done_when_killed": done_at_kill, "killed_pids": killed, "exit": p.returncode,
                "succeeded": s.get("succeeded"), "retries": s.get("retries"),
                "restart_lines": [x for x in err.splitlines() if "restart" in x.lower()][:5]}

    def offline_anchor(self):
        if self.args.engine != "transformers":
            return "skipped: needs the GPU"
        p = subprocess.run([sys.executable, os.path.join(HERE, "offline.py"), MODEL, self.path("chat.jsonl")],
                           capture_output=True, text=True, timeout=600)
        if p.returncode != 0:
            raise RuntimeError(p.stderr[-3000:])
        anchor = json.loads(p.stdout.strip().splitlines()[-1])
        tp = self.report["steps"].get("throughput", {}).get("result") or {}
        best = max((v for k, v in (tp.get("best_requests_per_second") or {}).items() if k.startswith("run")),
                   default=None)
        anchor["best_run_over_offline"] = ratio(best, anchor["requests_per_second"]) if best else None
        return anchor

    def anchor_rounds(self):
        """The anchor and `run` over HTTP in turns, on one GPU: each round the in-process figure,
        then a fresh engine with a warm-up and `run` at fixed and adaptive 1,024 (every request
        queued at once, the most the server batches), the order reversed every other round."""
        if self.args.engine != "transformers":
            return "skipped: needs the GPU"
        rows = {"offline": [], "run fixed 1024": [], "run adaptive max 1024": []}
        loads = {}

        def offline():
            p = subprocess.run([sys.executable, os.path.join(HERE, "offline.py"), MODEL, self.path("chat.jsonl")],
                               capture_output=True, text=True, timeout=600)
            if p.returncode != 0:
                raise RuntimeError(p.stderr[-3000:])
            rows["offline"].append(json.loads(p.stdout.strip().splitlines()[-1])["requests_per_second"])

        def served():
            self.start_engine()
            try:
                self.timed_run(["--max-concurrency", "256"])  # warm-up, not timed
                for name, how in (("run fixed 1024", ["--max-concurrency", "1024"]),
                                  ("run adaptive max 1024", ["--concurrency", "adaptive", "--max-concurrency", "1024"])):
                    run = self.timed_run(how)
                    rows[name].append(run["requests_per_second"])
                    loads.setdefault(name, []).append(
                        {k: run[k] for k in ("engine_cpu_per_second", "runner_cpu_per_second")})
            finally:
                self.stop_engine()

        for round_no in range(self.args.anchor_rounds):
            for part in (offline, served) if round_no % 2 == 0 else (served, offline):
                part()
        median = {name: statistics.median(v) for name, v in rows.items()}
        return {"rounds": rows, "cpu": loads, "median_requests_per_second": median,
                "per_round_fixed_over_offline": [ratio(a, b) for a, b in zip(rows["run fixed 1024"], rows["offline"])],
                "fixed_over_offline_medians": ratio(median["run fixed 1024"], median["offline"]),
                "adaptive_over_offline_medians": ratio(median["run adaptive max 1024"], median["offline"])}

    def main(self):
        os.makedirs(self.work, exist_ok=True)
        self.step("environment", self.environment)
        self.step("build_model", self.build_model)
        self.step("inputs", self.inputs)
        self.step("engine_start", self.start_engine)
        if self.report["steps"]["engine_start"]["ok"]:
            for name in ("probes", "validate", "run_completions", "throughput", "resume_after_sigterm", "serve"):
                if name in self.args.skip:
                    continue
                self.step(name, getattr(self, name))
        if self.report["steps"]["engine_start"]["ok"] and "mixed_models" not in self.args.skip:
            self.step("mixed_models", self.mixed_models)
        self.step("engine_stop", self.stop_engine)
        for name in ("launch_with_crash", "offline_anchor"):
            if name not in self.args.skip:
                self.step(name, getattr(self, name))
        if self.args.anchor_rounds:
            self.step("anchor_rounds", self.anchor_rounds)
        steps = self.report["steps"]
        self.report["passed"] = [k for k, v in steps.items() if v["ok"]]
        self.report["failed"] = [k for k, v in steps.items() if not v["ok"]]
        self.save()
        print(f"passed {len(self.report['passed'])}, failed {self.report['failed']}", flush=True)
        return 1 if self.report["failed"] else 0


# ---- helpers ----

def serve_command(model, host, port):
    return [sys.executable, "-m", "transformers.cli.transformers", "serve", model, "--host", str(host),
            "--port", str(port), "--continuous-batching"]


def sim_command(binary, port):
    """sim-engine behaving like transformers serve on this model (until profiles exist)."""
    return [binary, "sim-engine", "--port", str(port), "--model", MODEL, "--max-running", "256",
            "--ttft-ms", "20", "--ms-per-token", "2", "--models-status", "500", "--no-metrics"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, headers=None, timeout=30):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode(errors="replace")
    except OSError as e:
        return None, {}, str(e)


def chat_line(custom_id, i, max_tokens):
    a, b = (i * 37) % 1000, (i * 91) % 1000
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": MODEL, "max_tokens": max_tokens,
                     "messages": [{"role": "system", "content": "You are assistant number 7."},
                                  {"role": "user", "content": f"Question {i}: what is {a} plus {b}?"}]}}


def completion_line(custom_id, i, max_tokens):
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/completions",
            "body": {"model": MODEL, "max_tokens": max_tokens, "prompt": f"The engine number {i} reads"}}


def write_jsonl(path, lines):
    with open(path, "w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")


def count_lines(path):
    with open(path) as f:
        return sum(1 for line in f if line.strip())


def error_path(out):
    return out[: -len(".jsonl")] + ".errors.jsonl"


def clean(out):
    for p in (out, error_path(out)):
        if os.path.exists(p):
            os.remove(p)
    shutil.rmtree(out + ".state", ignore_errors=True)


def read_results(out, errors):
    """custom_id -> {kind, status, line} over both files; a custom_id seen twice raises."""
    got = {}
    for kind, path in (("output", out), ("error", errors)):
        if not os.path.exists(path):
            continue
        with open(path) as f:
            for raw in f:
                if not raw.strip():
                    continue
                line = json.loads(raw)
                cid = line["custom_id"]
                if cid in got:
                    raise RuntimeError(f"{cid} has two results")
                status = (line.get("response") or {}).get("status_code") or (line.get("error") or {}).get("code")
                got[cid] = {"kind": kind, "status": status, "line": raw[:1200]}
    return got


def by_kind_and_status(got):
    """How many results of read_results are in each file with each status, e.g. "error:400"."""
    counts = {}
    for r in got.values():
        key = f"{r['kind']}:{r['status']}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def expect_each_once(input_path, got):
    with open(input_path) as f:
        want = {json.loads(line)["custom_id"] for line in f if line.strip()}
    missing, extra = want - set(got), set(got) - want
    if missing or extra:
        raise RuntimeError(f"{len(missing)} lines without a result (e.g. {sorted(missing)[:3]}), "
                           f"{len(extra)} results for no line")


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def tail(path, n=1500):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return ""


def cpu_seconds(pid):
    """User + system CPU seconds of a process so far (all its threads), from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def children_cpu_seconds():
    import resource
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime


def ratio(a, b):
    return round(a / b, 3) if a and b else None


def wait_done(metrics_port, target, proc, limit=300):
    """Waits until the runner's /metrics counts `target` finished requests; returns the count."""
    started = time.time()
    while time.time() - started < limit:
        if proc.poll() is not None:
            raise RuntimeError(f"the run ended (exit {proc.returncode}) before {target} requests were done")
        status, _, text = http("GET", f"http://127.0.0.1:{metrics_port}/metrics", timeout=2)
        if status == 200:
            done = sum(float(m) for m in re.findall(r'^batch_runner_requests_total\{[^}]*\} (\S+)', text, re.M))
            if done >= target:
                return int(done)
        time.sleep(0.1)
    raise RuntimeError(f"fewer than {target} requests done after {limit} s")


def kill_engines(exclude):
    """SIGKILLs every engine process (transformers serve or sim-engine) but the runner itself."""
    killed = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) in exclude or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        is_engine = ("transformers" in cmd and " serve " in cmd) or " sim-engine " in cmd
        if is_engine and "engine-guard" not in cmd and "sh -c" not in cmd:
            try:
                os.kill(int(pid), signal.SIGKILL)
                killed.append(int(pid))
            except OSError:
                pass
    return killed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="the batch-runner binary")
    ap.add_argument("--engine", choices=["transformers", "sim"], default="transformers")
    ap.add_argument("--report", required=True, help="where the JSON report goes")
    ap.add_argument("--work", default="/tmp/real-engine-check", help="scratch folder")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=1, help="rounds of the throughput comparison")
    ap.add_argument("--skip", nargs="*", default=[], help="steps to leave out")
    ap.add_argument("--anchor-rounds", type=int, default=0,
                    help="rounds of the anchor against `run` at 1,024, the engine restarted each round")
    ap.add_argument("--no-sdk", action="store_true", help="leave the openai SDK client out of the throughput step")
    args = ap.parse_args()
    args.bin = os.path.abspath(args.bin)
    check = Check(args)
    try:
        return check.main()
    finally:
        check.stop_engine()


if __name__ == "__main__":
    sys.exit(main())
