//! Which waiting batch runs next: owners share the worker slots, and within an owner the
//! batch whose window ends first goes first.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::service::{KEY_A, KEY_B, Service};
use crate::common::{Sim, chat_line, jsonl, numbered_lines};

const LONG: Duration = Duration::from_secs(120);

/// One worker slot; owner A has a batch running and three waiting (the last one with a 1-hour
/// window), owner B then submits one: B's goes next, then A's urgent one, then A's others in
/// creation order.
#[test]
fn a_free_slot_goes_to_the_owner_waiting_longest_then_to_the_closest_deadline() {
    // Each batch takes about 1.2 s (3 requests of 400 ms, one at a time), so the times at which
    // they start (whole seconds) are in order.
    let sim = Sim::start(&["--ttft-ms", "400", "--ms-per-token", "0"]);
    let (_dir, service) = Service::with_engine(
        &sim,
        &[
            "--max-concurrent-batches",
            "1",
            "--max-concurrency",
            "1",
            "--min-completion-window",
            "1m",
        ],
    );
    let lines = jsonl(&numbered_lines("s-", 3));
    let create = |key: &str, window: &str| -> String {
        let file = service.upload_as(key, "in.jsonl", &lines);
        let body = json!({"input_file_id": file, "endpoint": "/v1/chat/completions",
                          "completion_window": window});
        let r = service.call_as(key, "POST", "/v1/batches", Some(&body));
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["id"].as_str().expect("id").to_owned()
    };
    let first = create(KEY_A, "24h");
    service.wait_status(&first, &["in_progress"], LONG);
    let a_older = create(KEY_A, "24h");
    let a_newer = create(KEY_A, "24h");
    let a_urgent = create(KEY_A, "1h");
    let b_only = create(KEY_B, "24h");
    let started = |id: &str, key: &str| -> i64 {
        let done = crate::common::wait_for(LONG, || {
            let r = service.call_as(key, "GET", &format!("/v1/batches/{id}"), None);
            let b: Value = r.json();
            (b["status"] == "completed").then_some(b)
        });
        done["in_progress_at"].as_i64().expect("in_progress_at")
    };
    let order = [
        started(&b_only, KEY_B),
        started(&a_urgent, KEY_A),
        started(&a_older, KEY_A),
        started(&a_newer, KEY_A),
    ];
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "start times (B's, A's urgent, A's older, A's newer): {order:?}"
    );
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Once a model's throughput is measured, a batch's ETA counts the work queued ahead of it; a
/// batch that cannot finish in its window is refused at create with `--admission reject`, and
/// accepted but marked at risk with `warn`; the measurement survives a restart.
#[test]
fn windows_that_cannot_be_met_are_refused_or_flagged() {
    let sim = Sim::start(&["--ttft-ms", "20", "--ms-per-token", "0"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let flags = |admission: &'static str| {
        vec![
            "--engine-url".to_owned(),
            sim.url.clone(),
            "--max-concurrency".into(),
            "4".into(),
            "--min-completion-window".into(),
            "1s".into(),
            "--report-interval".into(),
            "200ms".into(),
            "--admission".into(),
            admission.into(),
        ]
    };
    let strict = flags("reject");
    let mut service = Service::start(&data, &refs(&strict));
    // Nothing measured yet: a batch that could never finish in 1 s is accepted.
    let big = service.upload("big.jsonl", &jsonl(&numbered_lines("big-", 3000)));
    let create = |service: &Service, file: &str, window: &str| {
        let body = json!({"input_file_id": file, "endpoint": "/v1/chat/completions",
                          "completion_window": window});
        service.call("POST", "/v1/batches", Some(&body))
    };
    let r = create(&service, &big, "1s");
    assert_eq!(r.status, 200, "{}", r.text());
    // A batch long enough to measure the engine (4 at a time, about 20 ms each).
    let measuring = service.submit("m-", 800);
    crate::common::wait_for(LONG, || {
        let metrics = service.call("GET", "/metrics", None).text();
        metrics
            .contains("batch_runner_model_throughput_requests_per_second{model=\"sim-model\"}")
            .then_some(())
    });
    service.wait_status(&measuring, &["completed"], LONG);

    let r = create(&service, &big, "2s");
    assert_eq!(r.status, 429, "{}", r.text());
    let error = r.error();
    assert_eq!(error["code"], "window_infeasible", "{error}");
    assert_eq!(error["param"], "completion_window", "{error}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains("earliest window"), "{message}");
    let small = service.upload("small.jsonl", &jsonl(&numbered_lines("s-", 10)));
    let r = create(&service, &small, "24h");
    assert_eq!(r.status, 200, "{}", r.text());
    let ok = r.json()["id"].as_str().expect("id").to_owned();
    let b = service.batch(&ok);
    if b["status"] != "completed" {
        assert_eq!(b["x_batch_runner"]["at_risk"], false, "{b}");
        assert!(
            b["x_batch_runner"]["estimated_finish_at"]
                .as_i64()
                .is_some(),
            "{b}"
        );
    }

    // Restarted with warn: the throughput is remembered, the batch accepted and flagged.
    let _ = service.child.kill();
    let _ = service.child.wait();
    let lenient = flags("warn");
    service = Service::start(&data, &refs(&lenient));
    let r = create(&service, &big, "2s");
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["id"].as_str().expect("id").to_owned();
    let b = service.batch(&id);
    assert_eq!(b["x_batch_runner"]["at_risk"], true, "{b}");
    assert!(b["x_batch_runner"]["eta_seconds"].as_u64() > Some(2), "{b}");
    // The list shows the same.
    let listed = service.call("GET", "/v1/batches?limit=100", None).json();
    let entry = listed["data"]
        .as_array()
        .and_then(|d| d.iter().find(|b| b["id"] == id.as_str()).cloned())
        .expect("listed");
    assert_eq!(entry["x_batch_runner"]["at_risk"], true, "{entry}");
}

/// Usage per owner and model, for operator keys only, counted once per request however the
/// batches ended; the same sums in the metrics.
#[test]
fn operators_see_usage_per_owner_and_model() {
    let sim = Sim::start(&[
        "--ttft-ms",
        "1",
        "--ms-per-token",
        "0",
        "--prefix-cache-tokens",
        "10000",
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = format!("{KEY_A} a,{KEY_B} b,sk-op ops operator");
    let service = Service::start_with(
        dir.path(),
        &["--engine-url", &sim.url, "--max-concurrency", "1"],
        &[("BATCH_RUNNER_API_KEYS", keys)],
    );
    let a = service.submit("a-", 7);
    // B's requests share a system prompt: the engine's prefix cache serves it after the first.
    let shared: Vec<Value> = (0..3)
        .map(|i| {
            let messages = json!([{"role": "system", "content": "you answer briefly and well"},
                                  {"role": "user", "content": format!("question {i}")}]);
            chat_line(&format!("b-{i}"), json!({"messages": messages}))
        })
        .collect();
    let file = service.upload_as(KEY_B, "in.jsonl", &jsonl(&shared));
    let body = json!({"input_file_id": file, "endpoint": "/v1/chat/completions",
                      "completion_window": "24h"});
    let r = service.call_as(KEY_B, "POST", "/v1/batches", Some(&body));
    let b = r.json()["id"].as_str().expect("id").to_owned();
    service.wait_status(&a, &["completed"], LONG);
    crate::common::wait_for(LONG, || {
        let r = service.call_as(KEY_B, "GET", &format!("/v1/batches/{b}"), None);
        (r.json()["status"] == "completed").then_some(())
    });

    let r = service.call("GET", "/v1/x/usage", None);
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.error()["code"], "operator_only");
    let r = service.call_as("sk-op", "GET", "/v1/x/usage", None);
    assert_eq!(r.status, 200, "{}", r.text());
    let rows = r.json()["data"].as_array().cloned().unwrap_or_default();
    let of = |owner: &str| {
        rows.iter()
            .find(|u| u["owner"] == owner)
            .cloned()
            .unwrap_or_else(|| panic!("no usage row of {owner}: {rows:?}"))
    };
    let (ua, ub) = (of("a"), of("b"));
    assert_eq!(
        (ua["model"].clone(), ua["completed"].clone()),
        (json!("sim-model"), json!(7))
    );
    assert_eq!(
        (ub["batches"].clone(), ub["completed"].clone()),
        (json!(1), json!(3))
    );
    assert!(ua["input_tokens"].as_i64() > Some(0) && ua["output_tokens"].as_i64() > Some(0));
    // Two of B's requests read the 5-token system prompt from the cache.
    assert_eq!(ub["cached_tokens"], 10, "{ub}");
    assert_eq!(
        (ua["cached_tokens"].clone(), ua["reasoning_tokens"].clone()),
        (json!(0), json!(0))
    );
    let batch = service
        .call_as(KEY_B, "GET", &format!("/v1/batches/{b}"), None)
        .json();
    assert_eq!(
        batch["usage"]["input_tokens_details"]["cached_tokens"], 10,
        "{batch}"
    );
    let r = service.call_as("sk-op", "GET", "/v1/x/usage?owner=b&from=0", None);
    let only: Vec<Value> = r.json()["data"].as_array().cloned().unwrap_or_default();
    assert!(only.len() == 1 && only[0]["owner"] == "b", "{only:?}");
    let r = service.call_as("sk-op", "GET", "/v1/x/usage?from=soon", None);
    assert_eq!(r.status, 400, "{}", r.text());
    let metrics = service.call("GET", "/metrics", None).text();
    let series =
        "batch_runner_usage_requests{owner=\"a\",model=\"sim-model\",outcome=\"completed\"} 7";
    assert!(metrics.contains(series), "{metrics}");
    let series = "batch_runner_usage_tokens{owner=\"b\",model=\"sim-model\",kind=\"cached\"} 10";
    assert!(metrics.contains(series), "{metrics}");
    // Each completed batch's own time (worker start, validation, finalizing) is measured.
    let overhead =
        crate::common::prometheus_value(&metrics, "batch_runner_model_batch_overhead_seconds");
    assert!(overhead.is_some_and(|s| s > 0.0 && s < 30.0), "{metrics}");
}

/// An owner's batches per hour are capped at create (429), and a batch that would take the
/// owner's enqueued prompt tokens over the limit fails validation with token_limit_exceeded.
#[test]
fn quotas_cap_batches_per_hour_and_enqueued_tokens() {
    let sim = Sim::start(&["--ttft-ms", "1", "--ms-per-token", "0"]);
    let (_dir, service) = Service::with_engine(
        &sim,
        &[
            "--owner-max-batches-per-hour",
            "3",
            "--owner-max-enqueued-tokens",
            "2000",
        ],
    );
    let small = service.upload("small.jsonl", &jsonl(&numbered_lines("s-", 10)));
    let big = service.upload("big.jsonl", &jsonl(&numbered_lines("b-", 100)));
    let first = service.create_batch(&small, "24h");
    service.wait_status(&first, &["completed"], LONG);
    let over = service.create_batch(&big, "24h");
    let failed = service.wait_status(&over, &["failed", "completed"], LONG);
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(
        failed["errors"]["data"][0]["code"], "token_limit_exceeded",
        "{failed}"
    );
    service.create_batch(&small, "24h");
    let body = json!({"input_file_id": small, "endpoint": "/v1/chat/completions",
                      "completion_window": "24h"});
    let r = service.call("POST", "/v1/batches", Some(&body));
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.error()["code"], "rate_limit_exceeded");
    // Another owner has its own count.
    let theirs = service.upload_as(KEY_B, "small.jsonl", &jsonl(&numbered_lines("s-", 10)));
    let body = json!({"input_file_id": theirs, "endpoint": "/v1/chat/completions",
                      "completion_window": "24h"});
    assert_eq!(
        service
            .call_as(KEY_B, "POST", "/v1/batches", Some(&body))
            .status,
        200
    );
}

/// Every slot held by one owner's flood: another owner's batch does not wait for one of them to
/// end. A worker of the flood gives its batch back (checkpointed) and the batch resumes later,
/// each of its lines once.
#[test]
fn a_waiting_owner_gets_a_slot_back_from_a_flood() {
    let sim = Sim::start(&["--ttft-ms", "20", "--ms-per-token", "0"]);
    let (_dir, service) = Service::with_engine(
        &sim,
        &[
            "--max-concurrent-batches",
            "2",
            "--max-concurrency",
            "2",
            "--grace",
            "1s",
            "--checkpoint-interval",
            "200ms",
            "--report-interval",
            "200ms",
        ],
    );
    let flood: Vec<String> = (0..3)
        .map(|i| service.submit(&format!("a{i}-"), 400))
        .collect();
    service.wait_status(&flood[0], &["in_progress"], LONG);
    service.wait_status(&flood[1], &["in_progress"], LONG);
    let file = service.upload_as(KEY_B, "in.jsonl", &jsonl(&numbered_lines("b-", 20)));
    let body = json!({"input_file_id": file, "endpoint": "/v1/chat/completions",
                      "completion_window": "24h"});
    let r = service.call_as(KEY_B, "POST", "/v1/batches", Some(&body));
    let b = r.json()["id"].as_str().expect("id").to_owned();
    crate::common::wait_for(LONG, || {
        let r = service.call_as(KEY_B, "GET", &format!("/v1/batches/{b}"), None);
        (r.json()["status"] == "completed").then_some(())
    });
    // B's 20 requests ended while the flood's first two (4 s each) had not.
    let statuses: Vec<Value> = flood[..2]
        .iter()
        .map(|id| service.batch(id)["status"].clone())
        .collect();
    assert!(
        statuses.iter().all(|s| s != "completed"),
        "B's batch waited for the flood: {statuses:?}"
    );
    for id in &flood {
        let done = service.wait_status(id, &["completed"], LONG);
        let output = service.content(done["output_file_id"].as_str().expect("output"));
        let unique = crate::common::service::unique_ids(&output).len();
        assert_eq!(unique, 400, "{done}");
    }
}

/// A batch created with `x_batch_runner.preflight` is counted by the engine's tokenizer in
/// validation: the enqueued-token quota reads the exact count (the same file estimated from its
/// size is over the limit), and a line over the context length fails without being sent.
#[test]
fn a_preflight_batch_is_counted_exactly_and_refuses_lines_over_the_context() {
    let sim = Sim::instant(&["--profile", "vllm", "--context-length", "64"]);
    let (_dir, service) = Service::with_engine(&sim, &["--owner-max-enqueued-tokens", "300"]);
    let mut lines = numbered_lines("p-", 10);
    lines.push(chat_line(
        "long",
        json!({"messages": [{"role": "user", "content": "word ".repeat(80)}]}),
    ));
    let file = service.upload("in.jsonl", &jsonl(&lines));
    let create = |preflight: bool| {
        let body = json!({"input_file_id": file, "endpoint": "/v1/chat/completions",
                          "completion_window": "24h",
                          "x_batch_runner": {"preflight": preflight}});
        let r = service.call("POST", "/v1/batches", Some(&body));
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["id"].as_str().expect("id").to_owned()
    };
    // About 2,300 bytes: some 580 tokens by the size estimate.
    let estimated = create(false);
    let failed = service.wait_status(&estimated, &["failed", "completed"], LONG);
    assert_eq!(
        failed["errors"]["data"][0]["code"], "token_limit_exceeded",
        "{failed}"
    );
    let counted = create(true);
    let done = service.wait_status(&counted, &["failed", "completed"], LONG);
    assert_eq!(done["status"], "completed", "{done}");
    let preflight = &done["x_batch_runner"]["preflight"];
    assert_eq!(preflight["input_tokens"], 30, "{preflight}");
    assert_eq!(preflight["worst_case_output_tokens"], 40);
    assert_eq!(preflight["over_context"], 1);
    assert_eq!(preflight["context_length"], 64);
    assert_eq!(
        done["request_counts"],
        json!({"total": 11, "completed": 10, "failed": 1})
    );
    let errors = service.content(done["error_file_id"].as_str().expect("an error file"));
    let record: Value = serde_json::from_slice(errors.trim_ascii()).expect("one error line");
    assert_eq!(record["custom_id"], "long");
    assert_eq!(
        record["error"]["code"], "context_length_exceeded",
        "{record}"
    );
    assert_eq!(record["response"], Value::Null);
}

/// `--owner-max-in-flight`: an owner's running batches keep at most that many requests at the
/// engine together (each an equal share), where each alone could keep --max-concurrency.
#[test]
fn an_owners_batches_share_its_in_flight_cap() {
    let sim = Sim::start(&["--ttft-ms", "150", "--ms-per-token", "0"]);
    let (_dir, service) = Service::with_engine(
        &sim,
        &[
            "--max-concurrent-batches",
            "3",
            "--max-concurrency",
            "8",
            "--owner-max-in-flight",
            "6",
            "--report-interval",
            "100ms",
        ],
    );
    let ids: Vec<String> = (0..3)
        .map(|i| service.submit(&format!("f{i}-"), 40))
        .collect();
    crate::common::wait_for(LONG, || {
        ids.iter()
            .all(|id| service.batch(id)["status"] == "in_progress")
            .then_some(())
    });
    // Shares settle within a report interval (plus the requests already sent, 150 ms).
    std::thread::sleep(Duration::from_millis(600));
    let mut most = 0.0f64;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        let at_engine = sim.metric("sglang:num_running_reqs") + sim.metric("sglang:num_queue_reqs");
        most = most.max(at_engine);
        std::thread::sleep(Duration::from_millis(20));
    }
    // Three batches of 8 would keep 24 in flight; the owner's cap of 6 is 2 each.
    assert!((4.0..=6.0).contains(&most), "at most {most} in flight");
    for id in &ids {
        let done = service.wait_status(id, &["completed"], LONG);
        assert_eq!(done["request_counts"]["completed"], 40, "{done}");
    }
}
