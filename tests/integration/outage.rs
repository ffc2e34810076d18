//! Engines that go away during a run: the job neither stalls long after they come back nor
//! crawls on for hours when they never do.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;

const REQUESTS: &str = "sglang:num_requests_total";

/// An engine down for one second with 64 requests in flight: one outage, one cool-down, and
/// the first request after it is back succeeds within three seconds.
#[test]
fn an_engine_back_after_a_short_crash_gets_work_within_seconds() {
    let sim = Sim::start(&["--ttft-ms", "200", "--ms-per-token", "0"]);
    let port = sim.port();
    let job = Job::new();
    let input = job.input(&numbered_lines("r", 2000));
    let args = run_args(
        &job,
        input.to_str().expect("utf-8"),
        &[&sim.url],
        &["--max-concurrency", "64", "--max-retries", "100"],
    );
    let mut child = cmd()
        .args(&args)
        .env("BATCH_RUNNER_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    sim.wait_served(64.0, Duration::from_secs(20));
    drop(sim); // the engine dies with 64 requests in flight
    std::thread::sleep(Duration::from_secs(1));
    let back = Sim::start_at(port, &["--ttft-ms", "10", "--ms-per-token", "0"]);
    let back_at = Instant::now();
    let first = wait_for(Duration::from_secs(30), || {
        (back.metric(REQUESTS) >= 1.0).then(|| back_at.elapsed())
    });
    assert!(
        first <= Duration::from_secs(3),
        "first request {first:?} after the engine was back"
    );
    let mut warnings = String::new();
    let stderr = child.stderr.take().expect("stderr");
    let status = child.wait().expect("wait");
    for line in BufReader::new(stderr).lines() {
        warnings.push_str(&line.expect("stderr line"));
        warnings.push('\n');
    }
    assert!(status.success(), "{warnings}");
    assert!(
        warnings.contains("is failing") && warnings.contains("next probe in 2.0s"),
        "{warnings}"
    );
    assert!(warnings.contains("answers again"), "{warnings}");
    assert_eq!(results_by_id(&job.path("out.jsonl")).len(), 2000);
}

/// An engine that never comes back: it shows as down in the metrics and the progress lines, and
/// after --engine-down-timeout the job stops, resumable.
#[test]
fn no_engine_for_the_down_timeout_stops_the_job_resumably() {
    let sim = Sim::start(&["--ttft-ms", "100", "--ms-per-token", "0"]);
    let job = Job::new();
    let input = job.input(&numbered_lines("r", 500));
    let mut args = run_args(
        &job,
        input.to_str().expect("utf-8"),
        &[&sim.url],
        &["--max-concurrency", "8", "--engine-down-timeout", "4s"],
    );
    args.retain(|a| a != "--progress" && a != "off");
    args.extend(["--progress", "log", "--progress-interval", "300ms"].map(String::from));
    args.extend(["--metrics-listen", "127.0.0.1:0"].map(String::from));
    let mut child = cmd()
        .args(&args)
        .env("BATCH_RUNNER_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stderr_pipe = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut log = String::new();
    let metrics = wait_for(Duration::from_secs(20), || {
        let line = lines.recv_timeout(Duration::from_millis(100)).ok()?;
        log.push_str(&line);
        log.push('\n');
        line.split("serving metrics on ").nth(1).map(str::to_owned)
    });
    sim.wait_served(8.0, Duration::from_secs(20));
    drop(sim);
    let killed_at = Instant::now();
    wait_for(Duration::from_secs(10), || {
        let text = http_get(&metrics).ok()?;
        (prometheus_value(&text, "batch_runner_engines_down")? == 1.0).then_some(())
    });
    let status = child.wait().expect("wait");
    reader.join().expect("stderr reader");
    log.extend(lines.try_iter().map(|l| l + "\n"));
    assert_eq!(status.code(), Some(75), "{log}");
    assert!(log.contains("no engine has answered for 4.0s"), "{log}");
    assert!(log.contains("| 1 engine down |"), "{log}");
    assert!(killed_at.elapsed() < Duration::from_secs(15));
    assert!(job.path("out.jsonl.state").exists());
}
