//! Protecting online traffic: `--priority` against sim-engine's priority scheduling.

use std::time::Duration;

use serde_json::Value;

use crate::common::service::post_chat;
use crate::common::{
    Job, Sim, cmd, http_get, numbered_lines, prometheus_value, results_by_id, run_args, wait_for,
};

/// `batch-runner run INPUT` against `sim` with `fixed` flags (add more with `.args`); its
/// stderr (the summary) is not shown.
fn run_command(
    job: &Job,
    input: &std::path::Path,
    sim: &Sim,
    fixed: &[&str],
) -> std::process::Command {
    let mut command = cmd();
    command
        .args(run_args(
            job,
            input.to_str().expect("utf-8 path"),
            &[&sim.url],
            fixed,
        ))
        .stderr(std::process::Stdio::null());
    command
}

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
    let v = post_chat(&sim.url, &body).json();
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
    let mut run = run_command(&job, &input, &sim, &["--max-concurrency", "20"])
        .args(extra)
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

/// Runs 3000 lines against an engine that runs 8 at a time, sampling its waiting queue every
/// 20 ms; returns the wall time and the queue samples of the second half of the run.
fn queue_while_running(concurrency: &[&str]) -> (Duration, Vec<f64>) {
    let sim = Sim::start(&[
        "--ttft-ms",
        "20",
        "--ms-per-token",
        "0",
        "--max-running",
        "8",
    ]);
    let job = Job::new();
    let input = job.input(&numbered_lines("q", 3000));
    let started = std::time::Instant::now();
    let mut run = run_command(&job, &input, &sim, &[])
        .args(concurrency)
        .spawn()
        .expect("run");
    let mut samples = Vec::new();
    while run.try_wait().expect("wait").is_none() {
        if let Ok(text) = http_get(&format!("{}/metrics", sim.url))
            && let Some(q) = prometheus_value(&text, "sglang:num_queue_reqs")
        {
            samples.push(q);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let wall = started.elapsed();
    assert_eq!(results_by_id(&job.path("out.jsonl")).len(), 3000);
    let half = samples.split_off(samples.len() / 2);
    (wall, half)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

#[test]
fn adaptive_concurrency_keeps_the_engine_queue_short_at_the_same_throughput() {
    let (fixed_wall, fixed) = queue_while_running(&["--max-concurrency", "256"]);
    let (adaptive_wall, adaptive) =
        queue_while_running(&["--concurrency", "adaptive", "--max-concurrency", "256"]);
    let (fixed_q, adaptive_q) = (median(fixed), median(adaptive));
    assert!(
        fixed_q >= 150.0,
        "a fixed 256 floods an engine that runs 8: queue {fixed_q}"
    );
    assert!(
        adaptive_q <= 16.0,
        "adaptive must keep the queue short: {adaptive_q}"
    );
    // Generous: the engine is the bottleneck either way.
    assert!(
        adaptive_wall.as_secs_f64() <= fixed_wall.as_secs_f64() * 1.5,
        "adaptive {adaptive_wall:?} against fixed {fixed_wall:?}"
    );
}

/// Wall time of a run of `lines` against an instant engine with `extra` flags.
fn timed_run(lines: &[Value], extra: &[&str]) -> Duration {
    let sim = Sim::instant(&[]);
    let job = Job::new();
    let input = job.input(lines);
    let started = std::time::Instant::now();
    let out = run_command(&job, &input, &sim, &[])
        .args(extra)
        .output()
        .expect("run");
    assert!(out.status.success());
    assert_eq!(results_by_id(&job.path("out.jsonl")).len(), lines.len());
    started.elapsed()
}

#[test]
fn rate_limits_pace_requests_and_tokens() {
    // 60 requests at 20 per second: 20 at once (a full bucket), 40 more over 2 s.
    let paced = timed_run(
        &numbered_lines("r", 60),
        &["--max-requests-per-second", "20"],
    );
    assert!(paced >= Duration::from_millis(1500), "{paced:?}");
    // 12 requests of about 103 tokens each (usage) against 1200 tokens per minute: the last
    // ones wait for about 40 tokens at 20 per second.
    let lines: Vec<Value> = (0..12)
        .map(|i| crate::common::chat_line(&format!("t{i}"), serde_json::json!({"max_tokens": 100})))
        .collect();
    let paced = timed_run(&lines, &["--max-tokens-per-minute", "1200"]);
    assert!(paced >= Duration::from_millis(1000), "{paced:?}");
    let free = timed_run(&lines, &[]);
    assert!(free < paced, "{free:?} without a limit, {paced:?} with");
}

/// 800 chat lines whose system prompt is one of 16 (20 words each), interleaved pseudo-randomly.
fn shared_prompt_lines() -> Vec<Value> {
    let mut seed: u64 = 7;
    (0..800)
        .map(|i| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let prompt = (seed >> 33) % 16;
            let system = format!(
                "You are assistant number {prompt}. {}",
                "Answer briefly. ".repeat(7)
            );
            serde_json::json!({"custom_id": format!("s{i}"), "method": "POST",
                "url": "/v1/chat/completions", "body": {"model": "sim-model", "max_tokens": 1,
                "messages": [{"role": "system", "content": system},
                             {"role": "user", "content": format!("question {i}")}]}})
        })
        .collect()
}

/// The engine's prefix-cache hit rate (cached prompt tokens over prompt tokens) for a run.
fn cache_hit_rate(extra: &[&str]) -> f64 {
    // Room for the prefixes of two system prompts only.
    let sim = Sim::instant(&["--prefix-cache-tokens", "50"]);
    let job = Job::new();
    let input = job.input(&shared_prompt_lines());
    let out = run_command(&job, &input, &sim, &["--max-concurrency", "1"])
        .args(extra)
        .output()
        .expect("run");
    assert!(out.status.success());
    let results = results_by_id(&job.path("out.jsonl"));
    assert_eq!(results.len(), 800);
    let cached: u64 = results
        .values()
        .map(|r| {
            r["response"]["body"]["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(cached as f64, sim.metric("sglang:cached_tokens_total"));
    cached as f64 / sim.metric("sglang:prompt_tokens_total")
}

#[test]
fn prefix_grouped_dispatch_reuses_the_engine_prefix_cache() {
    let input_order = cache_hit_rate(&[]);
    let grouped = cache_hit_rate(&["--order-dispatch", "prefix"]);
    assert!(input_order < 0.2, "input order hit rate {input_order}");
    assert!(grouped > 0.7, "grouped hit rate {grouped}");
}

/// An adaptive minimum above the maximum is a usage error naming both flags, not a limit that
/// silently ignores one of them.
#[test]
fn an_adaptive_minimum_above_the_maximum_is_refused() {
    let job = Job::new();
    let input = job.input(&numbered_lines("r", 2));
    let flags = [
        "--concurrency",
        "adaptive",
        "--min-concurrency",
        "100",
        "--max-concurrency",
        "10",
    ];
    let out = cmd()
        .args(run_args(
            &job,
            input.to_str().expect("utf-8 path"),
            &["http://127.0.0.1:1"],
            &flags,
        ))
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--min-concurrency 100 is above --max-concurrency 10"),
        "{err}"
    );
    assert!(!job.path("out.jsonl").exists());
}
