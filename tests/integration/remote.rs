//! Inputs and results at http(s) URLs: download, upload with retries, and delivering later what
//! could not be uploaded.

use std::sync::atomic::Ordering;

use crate::common::store::Store;
use crate::common::{Job, Sim, cmd, count_lines, jsonl, numbered_lines, stderr};

#[test]
fn input_from_a_url_and_results_put_to_urls() {
    let sim = Sim::instant(&[]);
    let store = Store::start();
    store.put_object("/in/batch.jsonl", &jsonl(&numbered_lines("u", 40)));
    // Two uploads fail with 503 first; they are retried.
    store.state.fail_next_puts.store(2, Ordering::SeqCst);
    let job = Job::new();
    let out = cmd()
        .current_dir(job.dir.path())
        .arg("run")
        .arg(format!("{}/in/batch.jsonl", store.url))
        .args(["-o", &format!("{}/out/results.jsonl", store.url)])
        .args(["--engine-url", &sim.url, "--progress", "off"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let results = store.object("/out/results.jsonl").expect("output uploaded");
    assert_eq!(count_lines(&results), 40);
    let errors = store
        .object("/out/results.errors.jsonl")
        .expect("error file uploaded");
    assert!(errors.is_empty());
    assert_eq!(store.state.chunked_puts.load(Ordering::SeqCst), 0);
    assert_eq!(
        store.state.puts.load(Ordering::SeqCst),
        4,
        "two uploads, two retries"
    );
    assert!(
        !job.path("results.jsonl.state").exists(),
        "state removed once delivered"
    );
}

#[test]
fn a_failed_upload_keeps_the_results_and_upload_delivers_them_later() {
    let sim = Sim::instant(&[]);
    let store = Store::start();
    store.state.refuse_puts.store(true, Ordering::SeqCst);
    let job = Job::new();
    let input = job.input(&numbered_lines("f", 25));
    let secret = "X-Amz-Signature=abc123secret";
    let output = format!("{}/o/r.jsonl?{secret}", store.url);
    let errors = format!("{}/o/r.errors.jsonl?{secret}", store.url);
    let state = job.path("state");
    let out = cmd()
        .arg("run")
        .arg(&input)
        .args(["-o", &output, "--errors", &errors, "--state-dir"])
        .arg(&state)
        .args([
            "--engine-url",
            &sim.url,
            "--progress",
            "off",
            "--output-header",
            "x-job: 9",
        ])
        .args(["--transfer-retries", "1"])
        .env("BATCH_RUNNER_LOG", "info")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("batch-runner upload"), "{err}");
    assert!(
        !err.contains("abc123secret"),
        "a signature leaked into the log: {err}"
    );
    let kept = std::fs::read(state.join("final/output.jsonl")).expect("results kept locally");
    assert_eq!(count_lines(&kept), 25);

    store.state.refuse_puts.store(false, Ordering::SeqCst);
    let out = cmd().arg("upload").arg(&state).output().expect("upload");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(store.object("/o/r.jsonl").expect("delivered"), kept);
    assert!(store.object("/o/r.errors.jsonl").is_some());
    assert!(!state.exists());
}

#[test]
fn a_presigned_output_needs_its_own_errors_url_and_other_schemes_are_refused() {
    let job = Job::new();
    let input = job.input(&numbered_lines("p", 1));
    let out = cmd()
        .arg("run")
        .arg(&input)
        .args([
            "-o",
            "https://bucket.example/r.jsonl?X-Amz-Signature=s",
            "--engine-url",
            "http://127.0.0.1:9",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--errors is required"),
        "{}",
        stderr(&out)
    );
    let out = cmd()
        .arg("run")
        .arg(&input)
        .args([
            "-o",
            "gs://bucket/r.jsonl",
            "--engine-url",
            "http://127.0.0.1:9",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("gs:// locations are not supported"),
        "{}",
        stderr(&out)
    );
}
