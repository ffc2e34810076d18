//! `run --mixed-models`: one file, several models, each line sent to its model's engines.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{
    Job, Sim, chat_line, cmd, http_get, lines_of, prometheus_value, run_args, stderr, wait_for,
};

/// A chat line for `model`.
fn line_for(custom_id: &str, model: &str) -> Value {
    chat_line(custom_id, json!({ "model": model }))
}

fn summary(job: &Job) -> Value {
    serde_json::from_str(&std::fs::read_to_string(job.path("summary.json")).expect("summary"))
        .expect("summary JSON")
}

/// Each line reaches the engines of its own model: a --model-engine entry, a LoRA adapter's
/// base entry, or the default --engine-url; the summary counts each model apart. Without the
/// flag the same file is refused as before; a model whose engines do not list it stops the
/// run before anything is sent, naming it and its lines.
#[test]
fn each_line_goes_to_its_models_engines_and_is_counted_under_it() {
    let llama = Sim::instant(&["--model", "llama"]);
    let qwen = Sim::instant(&["--model", "qwen"]);
    let default = Sim::instant(&["--model", "mistral"]);
    let job = Job::new();
    let mut lines = Vec::new();
    for i in 0..40 {
        let model = ["llama", "qwen", "llama:sql-adapter", "mistral"][i % 4];
        lines.push(line_for(&format!("r{i}"), model));
    }
    let input = job.input(&lines);
    let input = input.to_str().expect("utf-8");
    let llama_route = format!("llama={}", llama.url);
    let qwen_route = format!("qwen={}", qwen.url);
    let routes = [
        "--mixed-models",
        "--model-engine",
        &llama_route,
        "--model-engine",
        &qwen_route,
    ];
    let out = cmd()
        .args(run_args(&job, input, &[&default.url], &routes))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(lines_of(&job.path("out.jsonl")), 40);
    assert_eq!(llama.served(), 20.0, "llama and its adapter's lines");
    assert_eq!(qwen.served(), 10.0);
    assert_eq!(default.served(), 10.0);
    let models = summary(&job)["models"].clone();
    let by_model = |name: &str| {
        models
            .as_array()
            .and_then(|m| m.iter().find(|t| t["model"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {models}"))
    };
    for (name, n) in [
        ("llama", 10),
        ("qwen", 10),
        ("llama:sql-adapter", 10),
        ("mistral", 10),
    ] {
        let t = by_model(name);
        assert_eq!(
            (t["total"].as_u64(), t["succeeded"].as_u64()),
            (Some(n), Some(n)),
            "{t}"
        );
    }
    let text = stderr(&out);
    assert!(
        text.contains("by model:") && text.contains("qwen: 10 succeeded, 0 failed of 10"),
        "{text}"
    );

    // The one-model rule still holds without the flag, and says how to lift it.
    let plain = Job::new();
    let plain_input = plain.input(&lines);
    let out = cmd()
        .args(run_args(
            &plain,
            plain_input.to_str().expect("utf-8"),
            &[&default.url],
            &[],
        ))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--mixed-models"), "{}", stderr(&out));

    // qwen's lines routed to an engine that lists only llama: refused before sending.
    let wrong = Job::new();
    let wrong_input = wrong.input(&lines);
    let misrouted = format!("qwen={}", llama.url);
    let out = cmd()
        .args(run_args(
            &wrong,
            wrong_input.to_str().expect("utf-8"),
            &[&default.url],
            &[
                "--mixed-models",
                "--model-engine",
                &llama_route,
                "--model-engine",
                &misrouted,
            ],
        ))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("\"qwen\" (10 lines)") && err.contains("llama"),
        "{err}"
    );
    assert_eq!(llama.served(), 20.0, "nothing more was sent");
}

/// `validate --mixed-models` with routes names each line whose model has none.
#[test]
fn validation_reports_each_line_whose_model_no_engine_serves() {
    let job = Job::new();
    let lines = [
        line_for("a", "llama"),
        line_for("b", "gpt-4o"),
        line_for("c", "llama:adapter"),
        line_for("d", "gpt-4o"),
    ];
    let input = job.input(&lines);
    let input = input.to_str().expect("utf-8");
    let out = cmd()
        .args([
            "validate",
            input,
            "--mixed-models",
            "--model-engine",
            "llama=http://127.0.0.1:9",
            "--json",
        ])
        .output()
        .expect("validate");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("report");
    let errors = report["errors"].as_array().expect("errors");
    let lines: Vec<_> = errors.iter().map(|e| e["line"].as_u64()).collect();
    assert_eq!(lines, [Some(2), Some(4)], "{report}");
    assert_eq!(errors[0]["code"], "model_not_served");
    assert_eq!(errors[0]["param"], "body.model");
    assert!(
        errors[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("gpt-4o"))
    );
    assert_eq!(report["models"], json!({"llama": 1, "llama:adapter": 1}));

    // Without routes every model passes, and the report counts them.
    let out = cmd()
        .args(["validate", input, "--mixed-models"])
        .output()
        .expect("validate");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("models: gpt-4o (2), llama (1), llama:adapter (1)"),
        "{}",
        stderr(&out)
    );
}

/// --max-concurrency applies to each model apart: a slow model's engine never has more than
/// its limit, and its lines do not hold back a fast model's. Metrics count per model.
#[test]
fn each_model_has_its_own_concurrency_limit() {
    let slow = Sim::start(&[
        "--model",
        "slow",
        "--ttft-ms",
        "1500",
        "--ms-per-token",
        "0",
    ]);
    let fast = Sim::instant(&["--model", "fast"]);
    let job = Job::new();
    let mut lines: Vec<Value> = (0..9).map(|i| line_for(&format!("s{i}"), "slow")).collect();
    lines.extend((0..30).map(|i| line_for(&format!("f{i}"), "fast")));
    let input = job.input(&lines);
    let port = crate::common::free_port().to_string();
    let metrics = format!("127.0.0.1:{port}");
    let slow_route = format!("slow={}", slow.url);
    let fast_route = format!("fast={}", fast.url);
    let mut child = cmd()
        .args(run_args(
            &job,
            input.to_str().expect("utf-8"),
            &[],
            &[
                "--mixed-models",
                "--model-engine",
                &slow_route,
                "--model-engine",
                &fast_route,
                "--max-concurrency",
                "3",
                "--metrics-listen",
                &metrics,
            ],
        ))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run");
    // The fast model's 30 lines finish while the slow one is in its first round of three.
    fast.wait_served(30.0, Duration::from_secs(20));
    assert!(
        slow.served() < 9.0,
        "the slow model's lines held back the fast one's"
    );
    let running = slow.metric("sglang:num_running_reqs");
    assert!(
        running <= 3.0,
        "{running} in flight on the slow model's engine"
    );
    let text = wait_for(Duration::from_secs(10), || {
        http_get(&format!("http://{metrics}/metrics")).ok()
    });
    let fast_done = prometheus_value(
        &text,
        "batch_runner_model_requests_total{model=\"fast\",outcome=\"succeeded\"}",
    );
    assert_eq!(fast_done, Some(30.0), "{text}");
    assert!(
        text.contains("batch_runner_model_requests_planned{model=\"slow\"} 9"),
        "{text}"
    );
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
    assert_eq!(slow.served(), 9.0);
    assert_eq!(summary(&job)["models"][0]["succeeded"], 9);
}

/// `serve`: a batch created with `x_batch_runner.mixed_models` sends each line to its model's
/// engines and counts each model in `x_batch_runner.models`; without it, the file's second
/// model fails the batch as before; a model no engine serves fails it naming its lines; the
/// pre-flight count cannot be combined with it.
#[test]
fn a_service_batch_may_mix_models() {
    use crate::common::jsonl;
    use crate::common::service::Service;
    let llama = Sim::instant(&["--model", "llama"]);
    let qwen = Sim::instant(&["--model", "qwen"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let llama_route = format!("llama={}", llama.url);
    let qwen_route = format!("qwen={}", qwen.url);
    let service = Service::start(
        dir.path(),
        &[
            "--model-engine",
            &llama_route,
            "--model-engine",
            &qwen_route,
            "--report-interval",
            "100ms",
        ],
    );
    let lines: Vec<Value> = (0..30)
        .map(|i| line_for(&format!("r{i}"), ["llama", "qwen", "llama:sql"][i % 3]))
        .collect();
    let mixed = service.upload("mixed.jsonl", &jsonl(&lines));
    let create = |file: &str, extension: Value| {
        service.call(
            "POST",
            "/v1/batches",
            Some(&json!({
                "input_file_id": file,
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
                "x_batch_runner": extension,
            })),
        )
    };
    let r = create(&mixed, json!({"mixed_models": true}));
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["id"].as_str().expect("id").to_owned();
    let done = service.wait_status(&id, &["completed", "failed"], Duration::from_secs(60));
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["request_counts"]["completed"], 30);
    assert_eq!((llama.served(), qwen.served()), (20.0, 10.0));
    let models = &done["x_batch_runner"]["models"];
    assert_eq!(
        models,
        &json!([
            {"model": "llama", "total": 10, "succeeded": 10, "failed": 0, "expired": 0, "cancelled": 0},
            {"model": "qwen", "total": 10, "succeeded": 10, "failed": 0, "expired": 0, "cancelled": 0},
            {"model": "llama:sql", "total": 10, "succeeded": 10, "failed": 0, "expired": 0, "cancelled": 0},
        ]),
        "{done}"
    );

    // One model per batch without the extension.
    let r = create(&mixed, json!({}));
    let id = r.json()["id"].as_str().expect("id").to_owned();
    let failed = service.wait_status(&id, &["failed"], Duration::from_secs(60));
    assert_eq!(
        failed["errors"]["data"][0]["code"], "model_mismatch",
        "{failed}"
    );

    // A model without engines fails the batch, each of its lines named.
    let stray = [
        line_for("a", "llama"),
        line_for("b", "gpt-4o"),
        line_for("c", "gpt-4o"),
    ];
    let file = service.upload("stray.jsonl", &jsonl(&stray));
    let r = create(&file, json!({"mixed_models": true}));
    let id = r.json()["id"].as_str().expect("id").to_owned();
    let failed = service.wait_status(&id, &["failed"], Duration::from_secs(60));
    let errors = failed["errors"]["data"].as_array().expect("errors").clone();
    let named: Vec<_> = errors
        .iter()
        .map(|e| (e["code"].clone(), e["line"].clone()))
        .collect();
    assert_eq!(
        named,
        [
            (json!("model_not_served"), json!(2)),
            (json!("model_not_served"), json!(3))
        ],
        "{failed}"
    );

    let r = create(&mixed, json!({"mixed_models": true, "preflight": true}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.error()["param"], "x_batch_runner");
    let r = create(&mixed, json!({"mixed_models": "yes"}));
    assert_eq!(r.status, 400, "{}", r.text());
}
