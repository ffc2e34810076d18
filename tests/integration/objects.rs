//! Inputs and results in a real S3-compatible store (moto): `s3://` locations, presigned URLs,
//! and a large upload with bounded memory.

use std::time::Duration;

use object_store::path::Path as ObjectPath;
use object_store::signer::Signer;

use crate::common::s3::{BUCKET, Moto};
use crate::common::{Job, Sim, cmd, count_lines, jsonl, numbered_lines, stderr};

#[test]
fn s3_input_and_outputs_end_to_end() {
    let moto = Moto::start();
    let sim = Sim::instant(&[]);
    moto.put("in/batch.jsonl", &jsonl(&numbered_lines("s", 30)));
    let job = Job::new();
    let out = cmd()
        .current_dir(job.dir.path())
        .envs(moto.env())
        .arg("run")
        .arg(format!("s3://{BUCKET}/in/batch.jsonl"))
        .args(["-o", &format!("s3://{BUCKET}/out/results.jsonl")])
        .args(["--engine-url", &sim.url, "--progress", "off"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let results = moto.get("out/results.jsonl").expect("output object");
    assert_eq!(count_lines(&results), 30);
    assert!(
        moto.get("out/results.errors.jsonl").is_some(),
        "error object"
    );
    assert!(!job.path("results.jsonl.state").exists());
}

/// Image answers of a job whose output is in S3 go to `KEY.media/` beside it; each result line
/// names its payload's `s3://` URL.
#[test]
fn media_payloads_go_beside_an_s3_output() {
    let moto = Moto::start();
    let sim = Sim::instant(&[]);
    let lines: Vec<serde_json::Value> = (0..3)
        .map(|i| {
            serde_json::json!({"custom_id": format!("i{i}"), "method": "POST",
                               "url": "/v1/images/generations",
                               "body": {"model": "sim-model", "prompt": format!("p{i}")}})
        })
        .collect();
    moto.put("in/images.jsonl", &jsonl(&lines));
    let job = Job::new();
    let out = cmd()
        .current_dir(job.dir.path())
        .envs(moto.env())
        .arg("run")
        .arg(format!("s3://{BUCKET}/in/images.jsonl"))
        .args(["-o", &format!("s3://{BUCKET}/out/images.jsonl")])
        .args(["--engine-url", &sim.url, "--progress", "off"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let results = moto.get("out/images.jsonl").expect("output object");
    for line in crate::common::json_lines(&results) {
        let file = &line["response"]["body"]["data"][0]["file"];
        let url = file["url"].as_str().expect("url");
        let prefix = format!("s3://{BUCKET}/out/images.jsonl.media/batch_req_");
        assert!(url.starts_with(&prefix) && url.ends_with("-0.png"), "{url}");
        let key = url.trim_start_matches(&format!("s3://{BUCKET}/"));
        let png = moto.get(key).expect("payload object");
        assert!(png.starts_with(b"\x89PNG"));
        assert_eq!(file["bytes"], png.len());
    }
}

#[test]
fn presigned_urls_for_the_input_and_both_outputs() {
    let moto = Moto::start();
    let sim = Sim::instant(&[]);
    moto.put("in/p.jsonl", &jsonl(&numbered_lines("p", 12)));
    let client = moto.client();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let sign = |method: reqwest::Method, key: &str| {
        rt.block_on(client.signed_url(method, &ObjectPath::from(key), Duration::from_secs(600)))
            .expect("presign")
            .to_string()
    };
    let input = sign(reqwest::Method::GET, "in/p.jsonl");
    let output = sign(reqwest::Method::PUT, "out/p.jsonl");
    let errors = sign(reqwest::Method::PUT, "out/p.errors.jsonl");
    let job = Job::new();
    // No credentials in the runner's environment: the URLs carry the authorisation.
    let out = cmd()
        .current_dir(job.dir.path())
        .env_remove("AWS_ACCESS_KEY_ID")
        .arg("run")
        .arg(&input)
        .args([
            "-o",
            &output,
            "--errors",
            &errors,
            "--engine-url",
            &sim.url,
            "--progress",
            "off",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(count_lines(&moto.get("out/p.jsonl").expect("output")), 12);
    assert!(moto.get("out/p.errors.jsonl").is_some());
    assert!(
        !stderr(&out).contains("X-Amz-Signature="),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_large_output_is_uploaded_with_bounded_memory() {
    let moto = Moto::start();
    let job = Job::new();
    let state = job.path("state");
    std::fs::create_dir_all(&state).expect("state dir");
    // 256 MB of result lines, delivered by `batch-runner upload` as after a failed upload.
    let line = format!("{{\"custom_id\":\"x\",\"pad\":\"{}\"}}\n", "y".repeat(1000));
    let lines = 256 * 1024 * 1024 / line.len();
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(state.join("big.jsonl")).expect("create"),
        );
        for _ in 0..lines {
            f.write_all(line.as_bytes()).expect("write");
        }
        f.flush().expect("flush");
    }
    let pending = serde_json::json!([{"file": "big.jsonl", "url": format!("s3://{BUCKET}/big.jsonl"), "headers": []}]);
    std::fs::write(state.join("uploads.json"), pending.to_string()).expect("uploads.json");
    let out = std::process::Command::new("/usr/bin/time")
        .args(["-f", "peak-rss-kb %M"])
        .arg(crate::common::BIN)
        .arg("upload")
        .arg(&state)
        .envs(moto.env())
        .env("BATCH_RUNNER_LOG", "warn")
        .output()
        .expect("GNU time (/usr/bin/time) runs the upload");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let rss_kb: u64 = err
        .lines()
        .find_map(|l| l.strip_prefix("peak-rss-kb "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in {err}"));
    assert!(
        rss_kb < 100 * 1024,
        "peak RSS {rss_kb} KB for a 256 MB upload"
    );
    eprintln!("256 MB uploaded with a peak RSS of {rss_kb} KB");
    let stored = moto.get("big.jsonl").expect("uploaded");
    assert_eq!(stored.len(), lines * line.len());
    assert!(!state.exists());
}

#[test]
fn a_job_with_its_state_in_s3_resumes_on_a_fresh_cache() {
    let moto = Moto::start();
    let sim = Sim::start(&[
        "--ttft-ms",
        "20",
        "--ms-per-token",
        "0",
        "--max-running",
        "8",
    ]);
    let job = Job::new();
    let n = 300;
    let input = job.input(&numbered_lines("m", n));
    let output = job.path("out.jsonl");
    let state = format!("s3://{BUCKET}/state/job-1");
    let run = |cache: &str| {
        let mut c = cmd();
        c.envs(moto.env())
            .arg("run")
            .arg(&input)
            .arg("-o")
            .arg(&output)
            .args(["--state-dir", &state, "--state-cache"])
            .arg(job.path(cache))
            .args([
                "--engine-url",
                &sim.url,
                "--progress",
                "off",
                "--max-concurrency",
                "8",
            ])
            .args(["--checkpoint-every", "20"]);
        c
    };
    // First machine: interrupted after some results.
    let child = run("cache-a")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    sim.wait_served(100.0, Duration::from_secs(20));
    crate::common::signal(&child, "INT");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(
        moto.get("state/job-1/manifest.json").is_some(),
        "the state is in the bucket"
    );

    // Second machine: an empty cache.
    let served_before = sim.metric("sglang:num_requests_total");
    let out = run("cache-b")
        .env("BATCH_RUNNER_LOG", "info")
        .output()
        .expect("resume");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("restoring the job's state from object storage"),
        "{err}"
    );
    let done_before: u64 = err
        .split("resuming from ")
        .nth(1)
        .and_then(|rest| rest.split(": ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no resume line in {err}"));
    assert!(done_before >= 60, "only {done_before} results carried over");
    let resent = sim.metric("sglang:num_requests_total") - served_before;
    assert!(
        resent <= (n as f64) - (done_before as f64) + 8.0,
        "{resent} sent again"
    );
    let ids = crate::common::custom_ids_in_order(&output);
    let expected: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
    assert_eq!(ids, expected, "every line exactly once, in input order");
    assert!(
        moto.get("state/job-1/manifest.json").is_none(),
        "the remote state is removed"
    );
}
