//! `batch-runner run` end to end against real sim-engine processes.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{
    Job, Sim, chat_line, cmd, http_get, lines_of, numbered_lines, prometheus_value, results_by_id,
    run_args, run_cmd, stderr, wait_for,
};

/// Fast retries so fault tests finish quickly.
const FAST_RETRIES: [&str; 4] = ["--retry-backoff", "10ms", "--retry-max-backoff", "50ms"];

fn run_job(
    job: &Job,
    input: &std::path::Path,
    engines: &[&str],
    extra: &[&str],
) -> std::process::Output {
    let input = input.to_str().expect("utf-8 path");
    cmd()
        .args(run_args(job, input, engines, extra))
        .output()
        .expect("run")
}

fn summary(job: &Job) -> Value {
    serde_json::from_str(&std::fs::read_to_string(job.path("summary.json")).expect("summary"))
        .expect("summary JSON")
}

#[test]
fn a_mixed_batch_puts_every_line_in_exactly_one_file() {
    let sim = Sim::instant(&[]);
    let job = Job::new();
    let mut lines = Vec::new();
    for i in 0..20 {
        lines.push(chat_line(&format!("ok-{i}"), json!({})));
    }
    lines.push(chat_line("bad-request", json!({"sim": {"status": 400}})));
    lines.push(chat_line(
        "busy-twice",
        json!({"sim": {"status": 503, "times": 2}}),
    ));
    lines.push(chat_line(
        "rate-limited-once",
        json!({"sim": {"status": 429, "times": 1}}),
    ));
    lines.push(chat_line(
        "dropped-once",
        json!({"sim": {"drop": true, "times": 1}}),
    ));
    lines.push(chat_line("always-dropped", json!({"sim": {"drop": true}})));
    lines.push(chat_line("always-503", json!({"sim": {"status": 503}})));
    lines.push(chat_line("hangs", json!({"sim": {"hang": true}})));
    let input = job.input(&lines);
    let mut extra = vec!["--request-timeout", "300ms", "--max-retries", "2"];
    extra.extend_from_slice(&FAST_RETRIES);
    let out = run_job(&job, &input, &[&sim.url], &extra);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));

    let ok = results_by_id(&job.path("out.jsonl"));
    let failed = results_by_id(&job.path("out.errors.jsonl"));
    assert_eq!(ok.len() + failed.len(), lines.len());
    for id in ok.keys() {
        assert!(!failed.contains_key(id), "{id} in both files");
    }
    for i in 0..20 {
        let r = &ok[&format!("ok-{i}")];
        assert_eq!(r["response"]["status_code"], 200);
        assert_eq!(r["error"], Value::Null);
        assert!(r["id"].as_str().expect("id").starts_with("batch_req_"));
        assert!(
            r["response"]["request_id"]
                .as_str()
                .expect("request id")
                .starts_with("chatcmpl-")
        );
        assert_eq!(
            r["response"]["body"]["choices"][0]["message"]["content"],
            format!("echo: prompt for ok-{i}")
        );
    }
    for id in ["busy-twice", "rate-limited-once", "dropped-once"] {
        assert_eq!(ok[id]["response"]["status_code"], 200, "{id}");
    }
    let bad = &failed["bad-request"];
    assert_eq!(bad["response"]["status_code"], 400);
    // SGLang's flat error body reads as OpenAI's, the engine's own kept beside it.
    assert_eq!(
        bad["response"]["body"]["error"]["message"],
        "injected failure"
    );
    assert_eq!(bad["response"]["body"]["error"]["code"], 400);
    assert_eq!(
        bad["response"]["body"]["engine_body"]["message"],
        "injected failure"
    );
    assert_eq!(bad["error"], Value::Null);
    let busy = &failed["always-503"];
    assert_eq!(busy["response"]["status_code"], 503);
    for id in ["always-dropped", "hangs"] {
        let f = &failed[id];
        assert_eq!(f["response"], Value::Null, "{id}");
        assert_eq!(f["error"]["code"], "engine_unavailable", "{id}");
        assert!(
            f["error"]["message"]
                .as_str()
                .expect("message")
                .contains("after 3 attempts"),
            "{f}"
        );
    }
    let ids: std::collections::HashSet<&str> = ok
        .values()
        .chain(failed.values())
        .map(|v| v["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids.len(), lines.len(), "result ids must be unique");

    let s = summary(&job);
    assert_eq!(s["succeeded"], 23);
    assert_eq!(s["failed"], 4);
    assert_eq!(s["failed_by_reason"]["engine_error"], 2);
    assert_eq!(s["failed_by_reason"]["engine_unavailable"], 2);
    // 2 (busy-twice) + 1 + 1 + 2 (always-dropped) + 2 (always-503) + 2 (hangs), plus each
    // dropped attempt that went out on a kept-alive connection and was sent again at once on
    // a fresh one (4 dropped attempts at most).
    let retries = s["retries"].as_u64().expect("retries");
    assert!((10..=14).contains(&retries), "{retries} retries");
    assert_eq!(s["usage"]["output_tokens"], 23 * 4);
    assert!(
        !job.path("out.jsonl.state").exists(),
        "state is removed on success"
    );
}

#[test]
fn retry_after_from_the_engine_is_honoured() {
    let sim = Sim::instant(&[]);
    let job = Job::new();
    let input = job.input(&[chat_line(
        "slow-down",
        json!({"sim": {"status": 429, "times": 1, "retry_after": 1}}),
    )]);
    let started = std::time::Instant::now();
    let out = run_job(&job, &input, &[&sim.url], &FAST_RETRIES);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Own backoff is at most 50 ms here; only the engine's Retry-After explains a second.
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(summary(&job)["retries"], 1);
}

#[test]
fn bodies_are_forwarded_byte_for_byte() {
    let sim = Sim::instant(&[]);
    let job = Job::new();
    // Unusual spacing, key order and escapes must reach the engine untouched; the echo shows
    // the prompt arrived intact and the sim's request-hash id shows the exact bytes.
    let line = "{\"custom_id\":\"x\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{ \"messages\" : [{\"role\":\"user\",\"content\":\"tab\\there \\u00e9\"}],\"model\":\"sim-model\" }}\n";
    let input = job.write("in.jsonl", line.as_bytes());
    let out = run_job(&job, &input, &[&sim.url], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let ok = results_by_id(&job.path("out.jsonl"));
    assert_eq!(
        ok["x"]["response"]["body"]["choices"][0]["message"]["content"],
        "echo: tab\there é"
    );
    let sent = &line[line.find("{ \"messages\"").expect("body")..line.len() - 2];
    let mut h = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(sent.as_bytes(), &mut h);
    let digest = format!("chatcmpl-{:016x}", std::hash::Hasher::finish(&h));
    let id = ok["x"]["response"]["request_id"].as_str().expect("id");
    assert!(
        id.starts_with(&digest),
        "{id} should start with {digest}: the body was altered"
    );
}

#[test]
fn several_engines_share_the_work_and_a_dead_one_is_skipped() {
    let a = Sim::instant(&[]);
    let b = Sim::instant(&[]);
    // A port nothing listens on: bound by the OS, then closed.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", l.local_addr().expect("addr"))
    };
    let job = Job::new();
    let lines = numbered_lines("r", 200);
    let input = job.input(&lines);
    let out = run_job(&job, &input, &[&a.url, &dead, &b.url], &FAST_RETRIES);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(lines_of(&job.path("out.jsonl")), 200);
    assert_eq!(lines_of(&job.path("out.errors.jsonl")), 0);
    let served_a = a.metric("sglang:num_requests_total");
    let served_b = b.metric("sglang:num_requests_total");
    assert_eq!(served_a + served_b, 200.0);
    assert!(
        served_a > 0.0 && served_b > 0.0,
        "both engines get work: {served_a} / {served_b}"
    );
}

#[test]
fn no_reachable_engine_is_a_runtime_failure_before_anything_is_written() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", l.local_addr().expect("addr"))
    };
    let job = Job::new();
    let input = job.input(&[chat_line("a", json!({}))]);
    let out = run_job(&job, &input, &[&dead], &[]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("no engine is reachable"),
        "{}",
        stderr(&out)
    );
    assert!(!job.path("out.jsonl").exists());
    assert!(!job.path("out.jsonl.state").exists());
}

#[test]
fn an_invalid_file_fails_before_any_request_is_sent() {
    let sim = Sim::instant(&[]);
    let job = Job::new();
    let mut lines = vec![chat_line("a", json!({})), chat_line("a", json!({}))];
    lines.push(json!({"custom_id": "b", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "sim-model", "stream": true}}));
    let input = job.input(&lines);
    let out = run_job(&job, &input, &[&sim.url], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("input.jsonl:2: the custom_id \"a\" is a duplicate of line 1"),
        "{err}"
    );
    assert!(
        err.contains("input.jsonl:3: `body.stream` is true"),
        "{err}"
    );
    assert_eq!(sim.metric("sglang:num_requests_total"), 0.0);
    assert!(!job.path("out.jsonl").exists());
}

#[test]
fn skip_invalid_runs_the_rest_and_reports_each_bad_line() {
    let sim = Sim::instant(&[]);
    let job = Job::new();
    let text = format!(
        "{}\nnot json\n{}\n{}\n{}\n{}\n",
        chat_line("a", json!({})),
        chat_line("a", json!({})),
        json!({"custom_id": "g", "method": "GET", "url": "/v1/chat/completions", "body": {"model": "sim-model"}}),
        chat_line("b", json!({})),
        // Cut off after its id: the id is still readable.
        r#"{"custom_id": "cut", "method": "POST", "url": "/v1/chat/com"#,
    );
    let input = job.write("in.jsonl", text.as_bytes());
    let out = run_job(&job, &input, &[&sim.url], &["--skip-invalid"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let ok = results_by_id(&job.path("out.jsonl"));
    assert_eq!(ok.len(), 2);
    let errors =
        crate::common::json_lines(&std::fs::read(job.path("out.errors.jsonl")).expect("errors"));
    assert_eq!(errors.len(), 4);
    let by_custom: Vec<(Value, String)> = errors
        .iter()
        .map(|e| {
            assert_eq!(e["error"]["code"], "invalid_request");
            assert_eq!(e["response"], Value::Null);
            (
                e["custom_id"].clone(),
                e["error"]["message"].as_str().expect("m").to_owned(),
            )
        })
        .collect();
    assert!(
        by_custom
            .iter()
            .any(|(c, m)| c.is_null() && m.starts_with("line 2: this line is not parseable"))
    );
    assert!(
        by_custom
            .iter()
            .any(|(c, m)| c == "a" && m.starts_with("line 3: the custom_id \"a\" is a duplicate"))
    );
    assert!(
        by_custom
            .iter()
            .any(|(c, m)| c == "g" && m.starts_with("line 4: `method`"))
    );
    assert!(
        by_custom
            .iter()
            .any(|(c, m)| c == "cut" && m.starts_with("line 6: "))
    );
    assert_eq!(sim.metric("sglang:num_requests_total"), 2.0);
    assert_eq!(summary(&job)["failed_by_reason"]["invalid_request"], 4);
}

#[test]
fn api_key_and_headers_reach_the_engine() {
    let sim = Sim::instant(&["--api-key", "secret", "--require-header", "X-Team: batch"]);
    let job = Job::new();
    let input = job.input(&[chat_line("a", json!({}))]);
    let good = ["--api-key", "secret", "--header", "X-Team: batch"];
    let out = run_job(&job, &input, &[&sim.url], &good);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // --restart: the finished job is run again rather than recognised as done.
    for bad in [
        &[
            "--restart",
            "--api-key",
            "wrong",
            "--header",
            "X-Team: batch",
        ][..],
        &["--restart", "--api-key", "secret"],
    ] {
        let out = run_job(&job, &input, &[&sim.url], bad);
        assert_eq!(out.status.code(), Some(1), "{bad:?}");
        let failed = results_by_id(&job.path("out.errors.jsonl"));
        assert_eq!(failed["a"]["response"]["status_code"], 401, "{bad:?}");
    }
    let out = run_job(
        &job,
        &input,
        &[&sim.url],
        &["--restart", "--api-key", "wrong"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("unauthorised"), "{}", stderr(&out));
    let failed = results_by_id(&job.path("out.errors.jsonl"));
    assert_eq!(failed["a"]["response"]["status_code"], 401);
}

#[test]
fn metrics_are_served_while_the_job_runs() {
    // 40 requests of 100 ms, two at a time: about two seconds of running.
    let sim = Sim::start(&["--ttft-ms", "100", "--ms-per-token", "0"]);
    let job = Job::new();
    let lines = numbered_lines("m", 40);
    let input = job.input(&lines);
    let mut child = cmd()
        .env("BATCH_RUNNER_LOG", "info")
        .args(run_args(
            &job,
            input.to_str().expect("path"),
            &[&sim.url],
            &["--metrics-listen", "127.0.0.1:0", "--max-concurrency", "2"],
        ))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stderr_lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let metrics_url = wait_for(Duration::from_secs(20), || {
        let line = stderr_lines.next()?.ok()?;
        line.split("serving metrics on ").nth(1).map(str::to_owned)
    });
    let text = wait_for(Duration::from_secs(20), || {
        let text = http_get(&metrics_url).ok()?;
        let done = prometheus_value(&text, "batch_runner_requests_total")?;
        (done > 0.0).then_some(text)
    });
    assert!(text.contains("batch_runner_in_flight"), "{text}");
    assert!(
        text.contains("batch_runner_request_duration_seconds_bucket{le=\"0.25\"}"),
        "{text}"
    );
    assert_eq!(
        prometheus_value(&text, "batch_runner_requests_planned"),
        Some(40.0)
    );
    // Drain stderr so the child never blocks on a full pipe.
    for _ in stderr_lines.by_ref() {}
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn outputs_that_would_overwrite_the_input_are_refused() {
    let job = Job::new();
    let input = job.input(&[chat_line("a", json!({}))]);
    let dir = job.dir.path().to_str().expect("path");
    for (output, errors, expected) in [
        ("input.jsonl", "e.jsonl", "would overwrite the input"),
        ("o.jsonl", "./input.jsonl", "would overwrite the input"),
        ("o.jsonl", "o.jsonl", "are the same file"),
    ] {
        let out = cmd()
            .current_dir(dir)
            .arg("run")
            .arg(&input)
            .args([
                "-o",
                output,
                "--errors",
                errors,
                "--engine-url",
                "http://127.0.0.1:9",
            ])
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{output} {errors}");
        assert!(stderr(&out).contains(expected), "{}", stderr(&out));
    }
    assert!(
        std::fs::read_to_string(&input)
            .expect("input")
            .contains("\"a\"")
    );
}

#[test]
fn usage_errors_exit_with_code_2() {
    let out = run_cmd(&["run", "in.jsonl"]);
    assert_eq!(out.status.code(), Some(2));
    let job = Job::new();
    let input = job.input(&[chat_line("a", json!({}))]);
    let out = run_cmd(&[
        "run",
        input.to_str().expect("path"),
        "-o",
        job.path("o.jsonl").to_str().expect("path"),
        "--engine-url",
        "not a url",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid --engine-url"),
        "{}",
        stderr(&out)
    );
}

/// Destinations that cannot be written are found before the first request, with the exact
/// path named, and leave no state behind.
#[test]
fn unwritable_destinations_fail_before_any_request() {
    let sim = Sim::instant(&[]);
    let job = Job::new();
    let input = job.input(&numbered_lines("r", 5));
    let input = input.to_str().expect("path");
    std::fs::create_dir(job.path("dir.jsonl")).expect("a directory where OUTPUT goes");
    job.write("plain-file", b"not a directory");
    let output = job.path("out.jsonl").display().to_string();
    let blocked = job.path("plain-file/errors.jsonl").display().to_string();
    let dir_output = job.path("dir.jsonl").display().to_string();
    let state_file = job.write("state-file", b"x").display().to_string();
    for (extra, code, says) in [
        (
            vec!["-o", &dir_output],
            2,
            format!("OUTPUT {dir_output} is a directory"),
        ),
        (
            vec!["-o", &output, "--errors", &blocked],
            3,
            format!("cannot write the error file (--errors) {blocked}"),
        ),
        (
            vec!["-o", &output, "--state-dir", &state_file],
            2,
            format!("the state directory {state_file} is a file"),
        ),
    ] {
        let out = cmd()
            .args(["run", input, "--engine-url", &sim.url, "--progress", "off"])
            .args(&extra)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(code), "{}", stderr(&out));
        assert!(stderr(&out).contains(&says), "{}", stderr(&out));
    }
    assert_eq!(sim.metric("sglang:num_requests_total"), 0.0);
    assert!(!job.path("out.jsonl.state").exists());
    assert!(!job.path("dir.jsonl.state").exists());
}

/// A kept-alive connection found closed makes the client send the request again on a fresh
/// one: that second send is counted as a retry, even with --max-retries 0.
#[test]
fn a_request_sent_again_on_a_fresh_connection_counts_as_a_retry() {
    let sim = Sim::instant(&["--drop-rate", "0.2", "--seed", "3"]);
    let job = Job::new();
    let input = job.input(&numbered_lines("r", 200));
    let args = ["--max-retries", "0", "--max-concurrency", "1"];
    let out = run_job(&job, &input, &[&sim.url], &args);
    assert!(matches!(out.status.code(), Some(0 | 1)), "{}", stderr(&out));
    let s = summary(&job);
    let answered = sim.metric("sglang:num_requests_total");
    let failed = s["failed"].as_f64().expect("failed");
    // Every drop on a reused connection was sent again; with no retries allowed, only those.
    assert!(s["retries"].as_u64().expect("retries") > 0, "{s}");
    assert_eq!(answered + failed, 200.0, "{s}");
}

/// When every engine lists its models and none is the batch's, nothing is sent: every line
/// would get the same 400 or 404.
#[test]
fn a_model_no_engine_serves_fails_before_sending() {
    let sim = Sim::instant(&["--model", "other-model"]);
    let job = Job::new();
    let input = job.input(&numbered_lines("r", 5));
    let out = run_job(&job, &input, &[&sim.url], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("\"sim-model\" is not served") && err.contains("other-model"),
        "{err}"
    );
    assert_eq!(sim.metric("sglang:num_requests_total"), 0.0);
    assert!(!job.path("out.jsonl.state").exists());

    let out = run_job(&job, &input, &[&sim.url], &["--no-model-check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// Engines that answer 500 on /v1/models and 404 on /metrics (a real `transformers serve`):
/// the run goes ahead, and the missing queue signal is said once, not polled for all run long.
#[test]
fn an_engine_without_a_model_list_or_metrics_still_runs() {
    let sim = Sim::start(&[
        "--ttft-ms",
        "5",
        "--ms-per-token",
        "0",
        "--models-status",
        "500",
        "--no-metrics",
    ]);
    let job = Job::new();
    let input = job.input(&numbered_lines("r", 300));
    let out = cmd()
        .env("BATCH_RUNNER_LOG", "info")
        .args(run_args(
            &job,
            input.to_str().expect("path"),
            &[&sim.url],
            &["--concurrency", "adaptive", "--max-concurrency", "8"],
        ))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.matches("/metrics").count(), 1, "{err}");
    assert!(err.contains("shows no request queue (HTTP 404)"), "{err}");
    assert!(!err.contains("not reachable"), "{err}");
    assert_eq!(results_by_id(&job.path("out.jsonl")).len(), 300);
}
