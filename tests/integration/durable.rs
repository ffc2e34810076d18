//! Durable jobs: crash and resume, expiry, signals, cancellation, ordering.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use crate::common::{
    Job, Sim, chat_line, cmd, custom_ids_in_order, lines_of, numbered_lines, results_by_id, signal,
    stderr, wait_for,
};

/// A batch of `n` chat lines; every tenth is refused by the engine with 400, so both final
/// files have lines.
fn batch(job: &Job, n: usize) -> std::path::PathBuf {
    let lines: Vec<Value> = (0..n)
        .map(|i| {
            let extra = if i % 10 == 7 {
                json!({"sim": {"status": 400}})
            } else {
                json!({})
            };
            chat_line(&format!("line-{i}"), extra)
        })
        .collect();
    job.input(&lines)
}

fn run_cmd(input: &Path, output: &Path, engine: &str, extra: &[&str]) -> Command {
    let mut c = cmd();
    c.arg("run")
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(["--engine-url", engine, "--progress", "off"])
        .args(["--retry-backoff", "10ms", "--retry-max-backoff", "50ms"])
        .args(extra);
    c
}

/// A result line with what legitimately differs between two runs removed: generated ids and
/// timestamps.
fn normalise(line: &str) -> String {
    let mut v: Value = serde_json::from_str(line).expect("result line is JSON");
    if let Some(o) = v.as_object_mut() {
        o.remove("id");
    }
    if let Some(r) = v.get_mut("response").and_then(Value::as_object_mut) {
        r.remove("request_id");
        if let Some(b) = r.get_mut("body").and_then(Value::as_object_mut) {
            b.remove("id");
            b.remove("created");
        }
    }
    v.to_string()
}

fn normalised(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(normalise)
        .collect()
}

/// A small deterministic generator, seeded per test run (the seed is printed on failure).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

#[test]
fn kill_9_at_random_points_then_resume_gives_exactly_once_output() {
    let sim = Sim::start(&[
        "--ttft-ms",
        "15",
        "--ms-per-token",
        "0",
        "--max-running",
        "16",
    ]);
    let job = Job::new();
    let n = 3000;
    let input = batch(&job, n);
    let reference = job.path("reference.jsonl");
    let out = run_cmd(&input, &reference, &sim.url, &[])
        .output()
        .expect("reference run");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let served_before = sim.metric("sglang:num_requests_total");

    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let mut rng = Lcg(seed);
    let output = job.path("crashed.jsonl");
    let extra = [
        "--checkpoint-every",
        "50",
        "--checkpoint-interval",
        "100ms",
        "--max-concurrency",
        "16",
    ];
    let mut kills: u64 = 0;
    let finished = loop {
        let mut child = run_cmd(&input, &output, &sim.url, &extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        // Mostly mid-dispatch; sometimes very early (validation, resume) or very late (finalize).
        // The later ones reach further with each kill, so a machine too loaded to get past the
        // start within 440 ms still gets the job to its end.
        let delay = match rng.below(4) {
            0 => rng.below(40),
            _ => 40 + rng.below(400 + 10 * kills),
        };
        std::thread::sleep(Duration::from_millis(delay));
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
        kills += 1;
        assert!(kills < 200, "seed {seed}: the job never finished");
    };
    assert_eq!(finished.code(), Some(1), "seed {seed}");
    assert!(
        kills >= 3,
        "seed {seed}: only {kills} kills; the test did not exercise resume"
    );
    eprintln!("exactly-once after {kills} SIGKILLs (seed {seed})");

    let errors_of = batch_runner_errors;
    assert_eq!(
        normalised(&output),
        normalised(&reference),
        "seed {seed}, {kills} kills"
    );
    assert_eq!(
        normalised(&errors_of(&output)),
        normalised(&errors_of(&reference)),
        "seed {seed}, {kills} kills"
    );
    let ok = results_by_id(&output);
    let failed = results_by_id(&errors_of(&output));
    assert_eq!(
        ok.len() + failed.len(),
        n,
        "seed {seed}: exactly one line per custom_id"
    );
    assert!(ok.keys().all(|k| !failed.contains_key(k)));
    assert!(!job.path("crashed.jsonl.state").exists());
    // Each crash re-sends at most one checkpoint interval (50) plus what was in flight (16).
    let resent = sim.metric("sglang:num_requests_total") - served_before - n as f64;
    assert!(
        resent <= (kills * (50 + 16 + 16)) as f64,
        "seed {seed}: {resent} requests re-sent over {kills} crashes"
    );
}

fn batch_runner_errors(output: &Path) -> std::path::PathBuf {
    let name = output.to_string_lossy();
    std::path::PathBuf::from(format!("{}.errors.jsonl", name.trim_end_matches(".jsonl")))
}

#[test]
fn a_short_window_expires_what_cannot_finish_and_keeps_what_did() {
    // 60 requests of 100 ms, two at a time, need 3 s; the window is 1 s.
    let sim = Sim::start(&["--ttft-ms", "100", "--ms-per-token", "0"]);
    let job = Job::new();
    let lines = numbered_lines("w", 60);
    let input = job.input(&lines);
    let output = job.path("out.jsonl");
    let started = Instant::now();
    let out = run_cmd(
        &input,
        &output,
        &sim.url,
        &[
            "--completion-window",
            "1s",
            "--grace",
            "50ms",
            "--max-concurrency",
            "2",
            "--summary-json",
            "-",
        ],
    )
    .output()
    .expect("run");
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let ok = results_by_id(&output);
    let failed = results_by_id(&batch_runner_errors(&output));
    assert_eq!(ok.len() + failed.len(), 60);
    assert!((5..40).contains(&ok.len()), "{} finished", ok.len());
    for f in failed.values() {
        assert_eq!(f["response"], Value::Null);
        assert_eq!(f["error"]["code"], "batch_expired");
        assert_eq!(
            f["error"]["message"],
            "This request could not be executed before the completion window expired."
        );
    }
    let summary: Value = serde_json::from_slice(&out.stdout).expect("summary");
    assert_eq!(summary["status"], "expired");
    assert_eq!(summary["expired"].as_u64(), Some(failed.len() as u64));
    assert_eq!(summary["succeeded"].as_u64(), Some(ok.len() as u64));
    assert_eq!(summary["failed"], 0);
    // Input order: the finished lines are the first ones.
    let first = custom_ids_in_order(&output);
    let expected: Vec<String> = (0..first.len()).map(|i| format!("w{i}")).collect();
    assert_eq!(first, expected);
}

#[test]
fn retries_never_wait_past_the_deadline() {
    let sim = Sim::instant(&[]);
    let job = Job::new();
    let input = job.input(&[
        chat_line("stubborn", json!({"sim": {"status": 503}})),
        chat_line("fine", json!({})),
    ]);
    let output = job.path("out.jsonl");
    let started = Instant::now();
    let mut c = cmd();
    c.arg("run")
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .args([
            "--engine-url",
            &sim.url,
            "--progress",
            "off",
            "--completion-window",
            "1s",
        ])
        .args([
            "--retry-backoff",
            "20s",
            "--retry-max-backoff",
            "20s",
            "--max-retries",
            "3",
        ]);
    let out = c.output().expect("run");
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited {:?}",
        started.elapsed()
    );
    let failed = results_by_id(&batch_runner_errors(&output));
    assert_eq!(failed["stubborn"]["error"]["code"], "batch_expired");
    assert_eq!(
        results_by_id(&output)["fine"]["response"]["status_code"],
        200
    );
}

#[test]
fn sigint_stops_resumably_and_the_same_command_finishes_the_job() {
    let sim = Sim::start(&[
        "--ttft-ms",
        "20",
        "--ms-per-token",
        "0",
        "--max-running",
        "8",
    ]);
    let job = Job::new();
    let n = 400;
    let input = batch(&job, n);
    let output = job.path("out.jsonl");
    let child = run_cmd(&input, &output, &sim.url, &["--max-concurrency", "8"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let state = job.path("out.jsonl.state");
    // Wait until some results are checkpointed... or at least the job is under way.
    sim.wait_served(40.0, Duration::from_secs(10));
    signal(&child, "INT");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("run the same command again to resume"),
        "{}",
        stderr(&out)
    );
    assert!(state.exists() && !output.exists());

    let status = cmd().arg("status").arg(&state).output().expect("status");
    assert_eq!(status.status.code(), Some(0));
    let text = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(text.contains("results at the last checkpoint"), "{text}");

    let served_before = sim.metric("sglang:num_requests_total");
    let out = run_cmd(&input, &output, &sim.url, &[])
        .env("BATCH_RUNNER_LOG", "info")
        .output()
        .expect("resume");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("resuming from"), "{}", stderr(&out));
    let ok = results_by_id(&output);
    let failed = results_by_id(&batch_runner_errors(&output));
    assert_eq!(ok.len() + failed.len(), n);
    assert_eq!(failed.len(), n / 10);
    // The resumed run sent only what the first one had not finished.
    let resent = sim.metric("sglang:num_requests_total") - served_before;
    assert!(
        resent < (n - 30) as f64,
        "the resume re-sent {resent} requests"
    );
    assert!(!state.exists());
}

#[test]
fn cancel_on_signal_finalizes_unsent_lines_as_cancelled() {
    let sim = Sim::start(&["--ttft-ms", "50", "--ms-per-token", "0"]);
    let job = Job::new();
    let lines = numbered_lines("c", 100);
    let input = job.input(&lines);
    let output = job.path("out.jsonl");
    let mut child = run_cmd(
        &input,
        &output,
        &sim.url,
        &["--max-concurrency", "2", "--cancel-on-signal"],
    )
    .stderr(Stdio::null())
    .spawn()
    .expect("spawn");
    sim.wait_served(4.0, Duration::from_secs(10));
    signal(&child, "TERM");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(5));
    let ok = results_by_id(&output);
    let failed = results_by_id(&batch_runner_errors(&output));
    assert_eq!(ok.len() + failed.len(), 100);
    assert!(
        !ok.is_empty() && failed.len() > 50,
        "{} / {}",
        ok.len(),
        failed.len()
    );
    for f in failed.values() {
        assert_eq!(f["error"]["code"], "batch_cancelled");
    }
    assert!(!job.path("out.jsonl.state").exists());
}

#[test]
fn a_changed_input_is_not_resumed_unless_restarting() {
    let sim = Sim::start(&["--ttft-ms", "20", "--ms-per-token", "0"]);
    let job = Job::new();
    let input = batch(&job, 500);
    let output = job.path("out.jsonl");
    let state = job.path("out.jsonl.state");
    let mut child = run_cmd(
        &input,
        &output,
        &sim.url,
        &["--checkpoint-interval", "10ms"],
    )
    .spawn()
    .expect("run");
    sim.wait_served(40.0, Duration::from_secs(10));
    child.kill().expect("kill -9");
    child.wait().expect("wait");
    assert!(state.join("manifest.json").exists());

    let mut text = std::fs::read_to_string(&input).expect("input");
    text.push_str(&chat_line("new", json!({})).to_string());
    text.push('\n');
    std::fs::write(&input, text).expect("write");
    let out = run_cmd(&input, &output, &sim.url, &[])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("restore the original input") && err.contains("--restart"),
        "{err}"
    );

    let out = run_cmd(&input, &output, &sim.url, &["--restart"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        lines_of(&output) + lines_of(&batch_runner_errors(&output)),
        501
    );
}

/// A finished job whose state was kept is done: another input with the same output runs as a
/// new job, and the finished state is not mistaken for one to resume.
#[test]
fn a_finished_kept_state_does_not_block_another_input() {
    let sim = Sim::instant(&[]);
    let job = Job::new();
    let input = batch(&job, 20);
    let output = job.path("out.jsonl");
    let out = run_cmd(&input, &output, &sim.url, &["--keep-state"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let again = run_cmd(&input, &output, &sim.url, &["--keep-state"])
        .output()
        .expect("run");
    // Already complete: nothing sent, and the same exit code, since its failures stand.
    assert_eq!(again.status.code(), Some(1), "already complete");
    let other = job.write(
        "other.jsonl",
        &crate::common::jsonl(&numbered_lines("o", 5)),
    );
    let out = run_cmd(&other, &output, &sim.url, &[])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(lines_of(&output), 5);
}

#[test]
fn completion_order_keeps_the_order_results_arrived_in() {
    // 5 ms per output token: the first line (100 tokens) finishes well after the second (1).
    let sim_slow = Sim::start(&["--ttft-ms", "0", "--ms-per-token", "5"]);
    let job = Job::new();
    let lines = vec![
        chat_line("slow", json!({"max_tokens": 100})),
        chat_line("fast", json!({"max_tokens": 1})),
    ];
    let input = job.input(&lines);
    let output = job.path("out.jsonl");
    let out = run_cmd(&input, &output, &sim_slow.url, &["--order", "completion"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let order = custom_ids_in_order(&output);
    assert_eq!(order, vec!["fast", "slow"]);
    let out = run_cmd(&input, &job.path("ordered.jsonl"), &sim_slow.url, &[])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
    let ordered = std::fs::read_to_string(job.path("ordered.jsonl")).expect("out");
    let ids: Vec<&str> = ordered
        .lines()
        .map(|l| {
            if l.contains("\"custom_id\":\"slow\"") {
                "slow"
            } else {
                "fast"
            }
        })
        .collect();
    assert_eq!(
        ids,
        vec!["slow", "fast"],
        "the default order is the input's"
    );
}

#[test]
fn retry_failed_reruns_only_the_failures_and_merges_the_output() {
    let flaky = Sim::instant(&["--fail-rate", "0.3", "--fail-status", "500", "--seed", "7"]);
    let job = Job::new();
    let n = 300;
    let lines = numbered_lines("r", n);
    let input = job.input(&lines);
    let output = job.path("out.jsonl");
    let errors = batch_runner_errors(&output);
    let out = run_cmd(&input, &output, &flaky.url, &["--max-retries", "0"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let first_ok = results_by_id(&output);
    let first_failed = results_by_id(&errors);
    assert!(first_failed.len() > 30, "{} failed", first_failed.len());
    assert_eq!(first_ok.len() + first_failed.len(), n);

    let healthy = Sim::instant(&[]);
    let summary_path = job.path("summary.json");
    let retry = [
        "--retry-failed",
        errors.to_str().expect("path"),
        "--summary-json",
        summary_path.to_str().expect("path"),
    ];
    let out = run_cmd(&input, &output, &healthy.url, &retry)
        .output()
        .expect("rerun");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Tokens: the merged job's, and this run's alone.
    let summary: Value =
        serde_json::from_slice(&std::fs::read(&summary_path).expect("summary")).expect("JSON");
    let token_sum = |path: &Path| -> u64 {
        results_by_id(path)
            .values()
            .map(|r| {
                r["response"]["body"]["usage"]["completion_tokens"]
                    .as_u64()
                    .unwrap_or(0)
            })
            .sum()
    };
    let all_tokens = token_sum(&output);
    assert_eq!(summary["usage"]["output_tokens"], all_tokens);
    let earlier: u64 = first_ok
        .values()
        .map(|r| {
            r["response"]["body"]["usage"]["completion_tokens"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    assert!(earlier > 0);
    assert_eq!(
        summary["usage_this_run"]["output_tokens"],
        all_tokens - earlier
    );
    assert!(stderr(&out).contains("(this run: "), "{}", stderr(&out));
    assert_eq!(
        healthy.metric("sglang:num_requests_total"),
        first_failed.len() as f64,
        "only the failed lines are sent again"
    );
    let merged = results_by_id(&output);
    assert_eq!(merged.len(), n);
    assert_eq!(lines_of(&errors), 0);
    for (id, line) in &first_ok {
        assert_eq!(&merged[id], line, "earlier successes are kept as they were");
    }
    // Input order across old and new results.
    let order = custom_ids_in_order(&output);
    let expected: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
    assert_eq!(order, expected);
}

#[test]
fn a_second_signal_stops_at_once_and_the_job_still_resumes() {
    // Requests take 5 s; a single signal would wait for them.
    let slow = Sim::start(&["--ttft-ms", "5000", "--ms-per-token", "0"]);
    let job = Job::new();
    let input = batch(&job, 20);
    let output = job.path("out.jsonl");
    let child = run_cmd(&input, &output, &slow.url, &["--max-concurrency", "4"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_for(Duration::from_secs(10), || {
        (slow.metric("sglang:num_running_reqs") >= 4.0).then_some(())
    });
    let started = Instant::now();
    signal(&child, "INT");
    std::thread::sleep(Duration::from_millis(200));
    signal(&child, "INT");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        stderr(&out).contains("stopping at once"),
        "{}",
        stderr(&out)
    );

    let fast = Sim::instant(&[]);
    let out = run_cmd(&input, &output, &fast.url, &[])
        .output()
        .expect("resume");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        lines_of(&output) + lines_of(&batch_runner_errors(&output)),
        20
    );
}

#[test]
fn retry_failed_with_a_file_that_is_not_a_result_file_says_so() {
    let sim = Sim::instant(&[]);
    let job = Job::new();
    let input = job.input(&numbered_lines("w", 5));
    let wrong = job.write("notes.txt", b"these are not results\nneither is this\n");
    let output = job.path("out.jsonl");
    let out = run_cmd(
        &input,
        &output,
        &sim.url,
        &["--retry-failed", wrong.to_str().expect("path")],
    )
    .output()
    .expect("run");
    assert_eq!(
        out.status.code(),
        Some(3),
        "no earlier output: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("--previous-output"),
        "{}",
        stderr(&out)
    );
    job.write("out.jsonl", b"");
    let out = run_cmd(
        &input,
        &output,
        &sim.url,
        &["--retry-failed", wrong.to_str().expect("path")],
    )
    .output()
    .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("2 lines of") && err.contains("(the first is line 1) are not result lines"),
        "{err}"
    );
    assert_eq!(
        lines_of(&output),
        5,
        "with nothing to reuse, every line runs"
    );
}

/// Checkpoints that keep failing (here the manifest's temporary file cannot be written, as on a
/// full disk) stop the job resumably instead of running on with nothing recorded.
#[test]
fn checkpoints_that_keep_failing_stop_the_job_resumably() {
    let sim = Sim::start(&["--ttft-ms", "20", "--ms-per-token", "0"]);
    let job = Job::new();
    let n = 3000;
    let input = batch(&job, n);
    let output = job.path("out.jsonl");
    let args = ["--max-concurrency", "4", "--checkpoint-interval", "100ms"];
    let child = run_cmd(&input, &output, &sim.url, &args)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let state = job.path("out.jsonl.state");
    sim.wait_served(20.0, Duration::from_secs(10));
    let blocker = state.join("manifest.json.tmp");
    // A checkpoint may hold the temporary file at this moment: try again once it is renamed.
    wait_for(Duration::from_secs(5), || {
        std::fs::create_dir(&blocker).ok()
    });
    let started = Instant::now();
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("3 checkpoints in a row failed"),
        "{}",
        stderr(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "stopped promptly"
    );
    assert!(sim.metric("sglang:num_requests_total") < n as f64 / 2.0);

    std::fs::remove_dir(&blocker).expect("unblock");
    let out = run_cmd(&input, &output, &sim.url, &["--max-concurrency", "64"])
        .output()
        .expect("resume");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let ok = results_by_id(&output);
    let failed = results_by_id(&batch_runner_errors(&output));
    assert_eq!(ok.len() + failed.len(), n);
}
