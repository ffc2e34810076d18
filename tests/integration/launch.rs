//! `run --launch` / `--engine`: the runner starts the engine, restarts it, and never leaves it
//! behind.

use std::process::Stdio;
use std::time::Duration;

use crate::common::{BIN, Job, cmd, lines_of, numbered_lines, results_by_id, stderr, wait_for};

/// Processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(marker) {
                found.push(format!("{}: {text}", name.to_string_lossy()));
            }
        }
    }
    found
}

/// A sim-engine launch command tagged with `marker` (as its model name).
fn sim_launch(marker: &str, extra: &str) -> String {
    format!("{BIN} sim-engine --host {{host}} --port {{port}} --model {marker} {extra}")
}

fn marker(name: &str) -> String {
    format!("marker-{name}-{}", std::process::id())
}

/// Whether the launched engine itself (a process whose first argument is `sim-engine`, not the
/// runner or the shell that mention it) is running with this marker.
fn engine_running(marker: &str) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        std::fs::read(entry.path().join("cmdline")).is_ok_and(|cmdline| {
            let args: Vec<String> = cmdline
                .split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            args.get(1).is_some_and(|a| a == "sim-engine") && args.iter().any(|a| a == marker)
        })
    })
}

/// `batch-runner run INPUT -o JOB/out.jsonl --progress off` (output `out` in the job's folder).
fn run_in(job: &Job, input: &std::path::Path, out: &str) -> std::process::Command {
    let mut c = cmd();
    c.arg("run")
        .arg(input)
        .arg("-o")
        .arg(job.path(out))
        .args(["--progress", "off"])
        // The launched sim-engines list their marker as their model; the lines name another.
        .arg("--no-model-check");
    c
}

fn assert_gone(marker: &str) {
    wait_for(Duration::from_secs(10), || {
        processes_with(marker).is_empty().then_some(())
    });
}

#[test]
fn launches_the_engine_runs_the_job_and_stops_it() {
    let job = Job::new();
    let input = job.input(&numbered_lines("l", 50));
    let output = job.path("out.jsonl");
    let m = marker("basic");
    let out = run_in(&job, &input, "out.jsonl")
        .args(["--keep-state", "--launch"])
        .arg(sim_launch(&m, "--ttft-ms 0 --ms-per-token 0"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(lines_of(&output), 50);
    let log = std::fs::read_to_string(job.path("out.jsonl.state/engine.log")).expect("engine log");
    assert!(log.contains("listening on http://127.0.0.1:"), "{log}");
    assert_gone(&m);
}

#[test]
fn an_engine_that_crashes_mid_run_is_restarted_and_no_line_is_lost() {
    let job = Job::new();
    let n = 300;
    let input = job.input(&numbered_lines("c", n));
    let output = job.path("out.jsonl");
    let m = marker("crash");
    let out = run_in(&job, &input, "out.jsonl")
        .args(["--keep-state", "--max-engine-restarts", "20"])
        .args([
            "--retry-backoff",
            "20ms",
            "--max-concurrency",
            "16",
            "--launch",
        ])
        .arg(sim_launch(
            &m,
            "--ttft-ms 2 --ms-per-token 0 --exit-after 80",
        ))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let ok = results_by_id(&output);
    assert_eq!(ok.len(), n, "every line exactly once");
    let log = std::fs::read_to_string(job.path("out.jsonl.state/engine.log")).expect("engine log");
    let starts = log.matches("listening on").count();
    assert!(starts >= 4, "the engine was started {starts} times");
    assert!(stderr(&out).contains("restarting it"), "{}", stderr(&out));
    assert_gone(&m);
}

#[test]
fn an_engine_that_exits_at_once_is_reported_with_its_log() {
    let job = Job::new();
    let input = job.input(&numbered_lines("e", 3));
    let out = run_in(&job, &input, "out.jsonl")
        .args(["--launch", "echo 'no GPU found' >&2; exit 3"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert!(
        err.contains("the engine exited (exit code 3) before it was ready"),
        "{err}"
    );
    assert!(err.contains("no GPU found"), "{err}");
    assert!(!job.path("out.jsonl").exists());
}

#[test]
fn an_engine_that_never_gets_ready_times_out_and_is_stopped() {
    let job = Job::new();
    let input = job.input(&numbered_lines("t", 3));
    let m = marker("never-ready");
    let out = run_in(&job, &input, "out.jsonl")
        .args(["--launch-timeout", "1s", "--launch-ready-path", "/nowhere"])
        .args(["--engine-stop-grace", "2s", "--launch"])
        .arg(sim_launch(&m, ""))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert!(
        err.contains("did not become ready within 1s: it answered 404"),
        "{err}"
    );
    assert!(
        err.contains("listening on"),
        "the message quotes the engine's log: {err}"
    );
    assert_gone(&m);
}

#[test]
fn killing_the_runner_with_sigkill_takes_the_engine_down() {
    let job = Job::new();
    let input = job.input(&numbered_lines("k", 100));
    let m = marker("orphan");
    let mut child = run_in(&job, &input, "out.jsonl")
        .args(["--launch"])
        .arg(sim_launch(&m, "--ttft-ms 10000"))
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    // The engine runs (its process carries the marker) and is serving the job.
    wait_for(Duration::from_secs(20), || engine_running(&m).then_some(()));
    std::thread::sleep(Duration::from_millis(500));
    child.kill().expect("SIGKILL the runner");
    child.wait().expect("wait");
    assert_gone(&m);
}

#[test]
fn ctrl_c_while_the_engine_loads_stops_at_once_and_takes_the_engine_down() {
    let job = Job::new();
    let input = job.input(&numbered_lines("w", 3));
    let m = marker("loading");
    // An engine that never gets ready (it answers 404 on the readiness path).
    let child = run_in(&job, &input, "out.jsonl")
        .args(["--launch-ready-path", "/nowhere", "--launch"])
        .arg(sim_launch(&m, ""))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_for(Duration::from_secs(20), || engine_running(&m).then_some(()));
    let started = std::time::Instant::now();
    crate::common::signal(&child, "INT");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        stderr(&out).contains("stopped before any request was sent"),
        "{}",
        stderr(&out)
    );
    assert_gone(&m);
}

#[test]
fn the_presets_build_the_documented_commands() {
    let job = Job::new();
    let input = job.input(&numbered_lines("p", 1));
    let print = |args: &[&str]| {
        let out = cmd()
            .arg("run")
            .arg(&input)
            .arg("-o")
            .arg(job.path("o.jsonl"))
            .args(args)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        String::from_utf8(out.stdout).expect("utf-8")
    };
    assert_eq!(
        print(&[
            "--engine",
            "sglang",
            "--model-path",
            "meta-llama/Llama-3.1-8B-Instruct",
            "--print-launch",
            "--",
            "--tp",
            "2"
        ]),
        "python -m sglang.launch_server --model-path meta-llama/Llama-3.1-8B-Instruct --host 127.0.0.1 --port {port} --enable-metrics --tp 2\n"
    );
    assert_eq!(
        print(&[
            "--engine",
            "vllm",
            "--model-path",
            "/models/my model",
            "--print-launch",
            "--launch-host",
            "0.0.0.0"
        ]),
        "vllm serve '/models/my model' --host 0.0.0.0 --port {port}\n"
    );
    assert_eq!(
        print(&["--launch", "my-server --port {port}", "--print-launch"]),
        "my-server --port {port}\n"
    );
}

/// An engine whose ready path answers 500 (as `transformers serve` does on /v1/models) but
/// whose /health answers 200 is ready: the launch does not wait out its timeout.
#[test]
fn an_engine_whose_model_list_fails_is_ready_by_its_health_check() {
    let job = Job::new();
    let input = job.input(&numbered_lines("h", 20));
    let m = marker("models500");
    let started = std::time::Instant::now();
    let out = run_in(&job, &input, "out.jsonl")
        .env("BATCH_RUNNER_LOG", "info")
        .args(["--launch-timeout", "60s", "--launch"])
        .arg(sim_launch(
            &m,
            "--ttft-ms 0 --ms-per-token 0 --models-status 500",
        ))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(
        stderr(&out).contains("answers 500 but /health answers 200"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("not ready"), "{}", stderr(&out));
    assert_eq!(lines_of(&job.path("out.jsonl")), 20);
    assert_gone(&m);
}

/// `--mixed-models` with a launched engine: it serves every model without a `--model-engine`
/// entry (a base model and its LoRA adapters here, each a route of its own), and when it
/// crashes every one of those routes waits for its restart; the routed model's lines go to
/// their own engine throughout.
#[test]
fn a_launched_engine_serves_the_unrouted_models_of_a_mixed_file_through_a_crash() {
    let other = crate::common::Sim::instant(&["--model", "other"]);
    let job = Job::new();
    let lines: Vec<serde_json::Value> = (0..200)
        .map(|i| {
            let model = ["base", "base:a1", "base:a2", "other"][i % 4];
            crate::common::chat_line(&format!("m{i}"), serde_json::json!({ "model": model }))
        })
        .collect();
    let input = job.input(&lines);
    let m = marker("mixed");
    let route = format!("other={}", other.url);
    let out = run_in(&job, &input, "out.jsonl")
        .args(["--keep-state", "--max-engine-restarts", "20"])
        .args(["--retry-backoff", "20ms", "--max-concurrency", "8"])
        .args(["--mixed-models", "--model-engine", &route, "--launch"])
        .arg(sim_launch(
            &m,
            "--ttft-ms 2 --ms-per-token 0 --exit-after 60",
        ))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        results_by_id(&job.path("out.jsonl")).len(),
        200,
        "every line once"
    );
    assert_eq!(
        other.served(),
        50.0,
        "the routed model's lines, and only they"
    );
    let log = std::fs::read_to_string(job.path("out.jsonl.state/engine.log")).expect("engine log");
    assert!(log.matches("listening on").count() >= 3, "{log}");
    assert_gone(&m);
}
