//! The input as a careless user gives it: piped, a FIFO, changed during the run, or the same
//! finished command run again. None of these may lose or duplicate a result.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

const REQUESTS: &str = "sglang:num_requests_total";

fn assert_one_result_per_line(out: &Path, n: usize) {
    let results = results_by_id(out);
    assert_eq!(results.len(), n, "one result per line");
    for i in 0..n {
        assert!(results.contains_key(&format!("r{i}")), "r{i} has no result");
    }
}

#[test]
fn piped_input_runs_every_line() {
    let sim = Sim::instant(&[]);
    let job = Job::new();
    let data = jsonl(&numbered_lines("r", 300));
    let args = run_args(&job, "-", &[&sim.url], &[]);
    let o = output_with_stdin(cmd().args(&args), &data);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_one_result_per_line(&job.path("out.jsonl"), 300);
    assert!(!job.path("out.jsonl.state").exists(), "the copy is removed");
}

#[test]
fn a_fifo_input_runs_every_line_and_validate_reads_stdin() {
    let sim = Sim::instant(&[]);
    let job = Job::new();
    let fifo = job.path("in.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let data = jsonl(&numbered_lines("r", 200));
    let writer = {
        let (fifo, data) = (fifo.clone(), data.clone());
        std::thread::spawn(move || std::fs::write(fifo, data).expect("write the FIFO"))
    };
    let fifo_arg = fifo.display().to_string();
    let o = cmd()
        .args(run_args(&job, &fifo_arg, &[&sim.url], &[]))
        .output()
        .expect("run");
    writer.join().expect("writer");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_one_result_per_line(&job.path("out.jsonl"), 200);

    let o = output_with_stdin(cmd().args(["validate", "--json", "-"]), &data);
    assert!(o.status.success());
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON report");
    assert_eq!(report["requests"], 200);
}

/// Starts a slow run of `n` lines and waits until some results are in, so the feed is mid-file.
fn start_slow_run(job: &Job, sim: &Sim, n: usize) -> std::process::Child {
    let input = job.input(&numbered_lines("r", n));
    let args = run_args(
        job,
        input.to_str().expect("utf-8 path"),
        &[&sim.url],
        &["--max-concurrency", "16", "--checkpoint-interval", "50ms"],
    );
    let child = cmd()
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    sim.wait_served(40.0, Duration::from_secs(20));
    child
}

#[test]
fn an_input_truncated_or_appended_to_mid_run_stops_the_job_with_its_state_kept() {
    for change in ["truncate", "append"] {
        let sim = Sim::start(&["--ttft-ms", "5", "--ms-per-token", "0"]);
        let job = Job::new();
        // Two blocks of the input's hashes (1 MiB each): a change is caught when the reader
        // reaches the block it is in, or the end.
        let n = 12_000;
        let child = start_slow_run(&job, &sim, n);
        let input = job.path("input.jsonl");
        let original = std::fs::read(&input).expect("read");
        match change {
            "truncate" => {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&input)
                    .expect("open");
                file.set_len(original.len() as u64 * 3 / 5)
                    .expect("truncate");
            }
            _ => {
                let mut file = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&input)
                    .expect("open");
                file.write_all(&jsonl(&numbered_lines("extra", 10)))
                    .expect("append");
            }
        }
        let o = child.wait_with_output().expect("wait");
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{change}: {err}");
        assert!(err.contains("changed while the job was running"), "{err}");
        assert!(
            err.contains("from line "),
            "the message names the line: {err}"
        );
        assert!(!job.path("out.jsonl").exists(), "{change}: never finalized");
        assert!(job.path("out.jsonl.state").exists(), "{change}: state kept");

        // The original input back: the same command finishes with every line exactly once.
        std::fs::write(&input, &original).expect("restore");
        let again = cmd()
            .args(run_args(
                &job,
                input.to_str().expect("utf-8"),
                &[&sim.url],
                &["--max-concurrency", "256"],
            ))
            .output()
            .expect("resume");
        assert!(again.status.success(), "{}", stderr(&again));
        assert_one_result_per_line(&job.path("out.jsonl"), n);
    }
}

#[test]
fn the_same_finished_command_again_sends_nothing_and_keeps_the_results() {
    let sim = Sim::instant(&[]);
    let job = Job::new();
    let input = job.input(&numbered_lines("r", 50));
    let args = run_args(&job, input.to_str().expect("utf-8"), &[&sim.url], &[]);
    let o = cmd().args(&args).output().expect("run");
    assert!(o.status.success(), "{}", stderr(&o));
    let sent = sim.metric(REQUESTS);
    let before = std::fs::read(job.path("out.jsonl")).expect("output");

    let o = cmd()
        .args(&args)
        .env("BATCH_RUNNER_LOG", "info")
        .output()
        .expect("rerun");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("nothing to do"), "{}", stderr(&o));
    assert_eq!(sim.metric(REQUESTS), sent, "nothing was sent again");
    assert_eq!(
        std::fs::read(job.path("out.jsonl")).expect("output"),
        before
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(job.path("summary.json")).expect("summary"))
            .expect("JSON");
    assert_eq!(summary["status"], "already_complete");
    assert_eq!(summary["succeeded"], 50);

    // --restart runs it all again.
    let o = cmd()
        .args(&args)
        .arg("--restart")
        .output()
        .expect("restart");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sim.metric(REQUESTS), sent + 50.0);

    // A different input with the same output runs.
    let other = job.write("other.jsonl", &jsonl(&numbered_lines("x", 7)));
    let o = cmd()
        .args(run_args(
            &job,
            other.to_str().expect("utf-8"),
            &[&sim.url],
            &[],
        ))
        .output()
        .expect("other input");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(lines_of(&job.path("out.jsonl")), 7);
}

/// kill -9 at each file removal the run makes (its start-up checks, finalize, the removal of
/// the finished state): the rerun completes the job, and once the final files were in place it
/// sends nothing again.
#[test]
fn a_kill_at_any_file_removal_neither_loses_nor_resends() {
    kill_at_each_call("unlink,unlinkat,rmdir", &[]);
}

/// kill -9 at each rename (checkpoints, and finalize in completion order, where the final files
/// are hard links of the spool): the rerun completes the job and leaves no temporary file.
#[test]
fn a_kill_at_any_rename_leaves_no_temporary_file() {
    kill_at_each_call("rename,renameat,renameat2", &["--order", "completion"]);
}

/// Runs a small job under strace, killed at the n-th of `calls`, for n = 1, 2, ... until a run
/// makes fewer calls than n; after each kill the same command must finish the job.
fn kill_at_each_call(calls: &str, extra: &[&str]) {
    let sim = Sim::instant(&[]);
    let mut killed = 0;
    for n in 1..=40 {
        let job = Job::new();
        let input = job.input(&numbered_lines("r", 40));
        let args = run_args(&job, input.to_str().expect("utf-8"), &[&sim.url], extra);
        let trace = format!("trace={calls}");
        let inject = format!("inject={calls}:signal=SIGKILL:when={n}");
        let o = Command::new("strace")
            .args(["-f", "-o", "/dev/null", "-e", &trace, "-e", &inject, BIN])
            .args(&args)
            .env("BATCH_RUNNER_LOG", "warn")
            .output()
            .expect("strace must be installed");
        if o.status.success() {
            break; // fewer than n calls: every point was tried
        }
        killed += 1;
        let finished = job.path("out.jsonl").exists() && job.path("out.errors.jsonl").exists();
        let sent = sim.metric(REQUESTS);
        let again = cmd().args(&args).output().expect("rerun");
        assert!(again.status.success(), "when={n}: {}", stderr(&again));
        if finished {
            assert_eq!(sim.metric(REQUESTS), sent, "when={n}: nothing resent");
        }
        assert!(!job.path("out.jsonl.state").exists(), "when={n}");
        assert_one_result_per_line(&job.path("out.jsonl"), 40);
        let leftovers: Vec<_> = std::fs::read_dir(job.dir.path())
            .expect("list")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "when={n}: {leftovers:?}");
    }
    assert!(killed >= 3, "only {killed} calls were tried");
}

/// A signal during validation stops the run at once, even one blocked on a FIFO that nobody
/// writes; an endless stream without line breaks fails instead of being read forever.
#[test]
fn a_signal_during_validation_stops_promptly_and_endless_input_fails() {
    let job = Job::new();
    let fifo = job.path("never-written.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let fifo_arg = fifo.display().to_string();
    let args = run_args(&job, &fifo_arg, &["http://127.0.0.1:9"], &[]);
    let child = cmd()
        .args(&args)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(500));
    signal(&child, "TERM");
    let started = std::time::Instant::now();
    let out = child.wait_with_output().expect("wait");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped promptly"
    );
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(!job.path("out.jsonl.state").exists(), "nothing left behind");

    let args = run_args(
        &job,
        "/dev/zero",
        &["http://127.0.0.1:9"],
        &["--max-line-bytes", "1000000"],
    );
    let out = cmd().args(&args).output().expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("without a line break"),
        "{}",
        stderr(&out)
    );
}
