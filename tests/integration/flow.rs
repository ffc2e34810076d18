//! Protecting online traffic: `--priority` against sim-engine's priority scheduling.

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::Value;

use crate::common::{
    Job, Sim, cmd, http_get, numbered_lines, prometheus_value, results_by_id, wait_for,
};

/// The engine's admission number of an answer (sim-engine puts it in the last 8 hex digits of
/// the response id): the order the engine let requests run in.
fn admitted_as(id: &str) -> u64 {
    u64::from_str_radix(&id[id.len() - 8..], 16).expect("hex admission number")
}

/// Sends one "online" chat request with `priority` and returns its admission number.
fn online_request(sim: &Sim, priority: i64) -> u64 {
    let body = format!(
        r#"{{"model":"sim-model","priority":{priority},"messages":[{{"role":"user","content":"online"}}]}}"#
    );
    let host = sim.url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).expect("connect");
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("answer");
    let json = answer.split_once("\r\n\r\n").expect("body").1;
    let v: Value = serde_json::from_str(json).expect("JSON answer");
    admitted_as(v["id"].as_str().expect("id"))
}

/// Runs 20 batch lines against an engine that runs one request at a time, with `extra` flags,
/// and sends one online request at priority 1 while they queue. Returns the online request's
/// admission number and the batch's.
fn batch_with_online_request(extra: &[&str]) -> (u64, Vec<u64>) {
    let sim = Sim::start(&[
        "--ttft-ms",
        "40",
        "--ms-per-token",
        "0",
        "--max-running",
        "1",
        "--enable-priority-scheduling",
    ]);
    let job = Job::new();
    let input = job.input(&numbered_lines("p", 20));
    let mut run = cmd()
        .arg("run")
        .arg(&input)
        .args([
            "--output",
            &job.path("out.jsonl").display().to_string(),
            "--progress",
            "off",
        ])
        .args(["--engine-url", &sim.url, "--max-concurrency", "20"])
        .args(extra)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run");
    // Wait until the batch fills the engine's queue, then arrive as online traffic.
    wait_for(Duration::from_secs(30), || {
        let text = http_get(&format!("{}/metrics", sim.url)).ok()?;
        (prometheus_value(&text, "sglang:num_queue_reqs")? >= 10.0).then_some(())
    });
    let online = online_request(&sim, 1);
    assert!(run.wait().expect("wait").success());
    let batch = results_by_id(&job.path("out.jsonl"))
        .values()
        .map(|r| admitted_as(r["response"]["body"]["id"].as_str().expect("id")))
        .collect();
    (online, batch)
}

#[test]
fn batch_work_at_a_low_priority_lets_online_requests_go_first() {
    // The batch sends priority 0: the online request (1) is admitted as soon as the running
    // request ends, ahead of every queued batch request.
    let (online, batch) = batch_with_online_request(&["--priority", "0"]);
    let after = batch.iter().filter(|&&n| n > online).count();
    assert!(
        after >= 9,
        "only {after} batch requests ran after the online one ({online})"
    );
}

#[test]
fn batch_work_at_a_higher_priority_would_starve_online_requests() {
    // The control: at priority 5 every queued batch request goes before the online one.
    let (online, batch) = batch_with_online_request(&["--priority", "5"]);
    let before = batch.iter().filter(|&&n| n < online).count();
    assert!(
        before >= 10,
        "only {before} batch requests ran before the online one ({online})"
    );
}
