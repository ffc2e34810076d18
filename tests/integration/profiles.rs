//! The runner against sim-engine's profiles of real servers (`--profile sglang|vllm|transformers`):
//! `run`, `--launch` and `serve` cope with each server's own answers, and every failure lands in
//! the error file in OpenAI's shape with the engine's own body kept.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::service::Service;
use crate::common::{
    BIN, Job, Sim, chat_line, cmd, json_lines, numbered_lines, results_by_id, run_args, stderr,
};

const PROFILES: [&str; 3] = ["sglang", "vllm", "transformers"];

/// An instant engine of `profile` serving `sim-model` with a context of 64 tokens.
fn engine(profile: &str, extra: &[&str]) -> Sim {
    let mut args = vec!["--profile", profile, "--context-length", "64"];
    args.extend_from_slice(extra);
    Sim::instant(&args)
}

/// Runs `lines` against `sim` with `extra` flags; returns (exit code, stderr, output by id,
/// errors by id).
fn run(sim: &Sim, lines: &[Value], extra: &[&str]) -> (i32, String, Results, Results) {
    let job = Job::new();
    let input = job.input(lines);
    let input = input.display().to_string();
    let out = cmd()
        .args(run_args(&job, &input, &[&sim.url], extra))
        .output()
        .expect("run");
    let read = |name: &str| {
        let path = job.path(name);
        if path.exists() {
            results_by_id(&path)
        } else {
            Results::new()
        }
    };
    (
        out.status.code().unwrap_or(-1),
        stderr(&out),
        read("out.jsonl"),
        read("out.errors.jsonl"),
    )
}

type Results = std::collections::HashMap<String, Value>;

#[test]
fn run_keeps_each_servers_answers_and_reads_its_errors() {
    for profile in PROFILES {
        let sim = engine(profile, &[]);
        let mut lines = numbered_lines("ok-", 10);
        let long = "word ".repeat(80);
        lines.push(chat_line(
            "long",
            json!({"messages": [{"role": "user", "content": long}]}),
        ));
        let (code, err, ok, failed) = run(&sim, &lines, &[]);
        for i in 0..10 {
            let r = &ok[&format!("ok-{i}")];
            let body = &r["response"]["body"];
            let request_id = r["response"]["request_id"].as_str().expect("request_id");
            // The result names the engine's request: its x-request-id header (transformers),
            // else the body's id.
            assert_eq!(body["id"], request_id, "{profile}");
            assert_eq!(
                body["choices"][0]["message"]["content"],
                format!("echo: prompt for ok-{i}")
            );
            match profile {
                "transformers" => {
                    assert_eq!(request_id.len(), 36, "a uuid: {request_id}");
                    assert_eq!(body["model"], "sim-model@main");
                    assert!(body["usage"].get("prompt_tokens_details").is_none());
                }
                "vllm" => assert_eq!(body["choices"][0]["stop_reason"], Value::Null),
                _ => assert!(request_id.starts_with("chatcmpl-")),
            }
        }
        if profile == "transformers" {
            // No context check there: the long prompt is answered.
            assert_eq!(code, 0, "{profile}: {err}");
            assert_eq!(ok.len(), 11);
            continue;
        }
        assert_eq!(code, 1, "{profile}: one line failed: {err}");
        let long = &failed["long"]["response"];
        assert_eq!(long["status_code"], 400, "{profile}");
        let message = long["body"]["error"]["message"]
            .as_str()
            .expect("OpenAI-shaped error");
        assert!(message.contains("context length"), "{profile}: {message}");
        match profile {
            // vLLM's errors are OpenAI's shape already: kept as they are.
            "vllm" => assert!(long["body"].get("engine_body").is_none()),
            _ => assert_eq!(long["body"]["engine_body"]["object"], "error"),
        }
    }
}

#[test]
fn a_model_the_server_does_not_serve_is_named_in_each_lines_error() {
    let lines: Vec<Value> = (0..3)
        .map(|i| chat_line(&format!("m-{i}"), json!({"model": "other-model"})))
        .collect();
    // vLLM lists its models: the runner stops before sending anything.
    let sim = engine("vllm", &[]);
    let (code, err, ok, failed) = run(&sim, &lines, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("other-model") && err.contains("--no-model-check"),
        "{err}"
    );
    assert!(ok.is_empty() && failed.is_empty());
    let (_, _, _, failed) = run(&sim, &lines, &["--no-model-check"]);
    assert_eq!(failed["m-0"]["response"]["status_code"], 404);
    assert_eq!(
        failed["m-0"]["response"]["body"]["error"]["message"],
        "The model `other-model` does not exist."
    );
    // transformers cannot list its models (500): each line gets its 400, read from FastAPI's
    // {"detail": ...} into OpenAI's shape.
    let sim = engine("transformers", &[]);
    let (code, err, _, failed) = run(&sim, &lines, &[]);
    assert_eq!(code, 1, "{err}");
    let r = &failed["m-2"]["response"];
    assert_eq!(r["status_code"], 400);
    assert_eq!(
        r["body"]["error"]["message"],
        "Server is pinned to 'sim-model'; requested 'other-model'."
    );
    assert_eq!(r["body"]["error"]["type"], "invalid_request_error");
    assert_eq!(
        r["body"]["engine_body"]["detail"],
        r["body"]["error"]["message"]
    );
    // SGLang lists its model, so the runner stops as for vLLM, though SGLang would answer any
    // name with its own model; --no-model-check sends them.
    let sim = engine("sglang", &[]);
    let (code, err, _, _) = run(&sim, &lines, &[]);
    assert_eq!(code, 2, "{err}");
    let (code, err, ok, _) = run(&sim, &lines, &["--no-model-check"]);
    assert_eq!((code, ok.len()), (0, 3), "{err}");
}

#[test]
fn priority_goes_only_to_servers_that_take_it() {
    let lines = numbered_lines("p-", 6);
    // transformers refuses the field (422) and vLLM without priority scheduling too (400):
    // the runner sends without it, once warned, and every line succeeds.
    for profile in ["transformers", "vllm"] {
        let sim = engine(profile, &[]);
        let (code, err, ok, failed) = run(&sim, &lines, &["--priority", "-10"]);
        assert_eq!(
            (code, ok.len(), failed.len()),
            (0, 6, 0),
            "{profile}: {err}"
        );
        assert_eq!(
            err.matches("refuses the priority field").count(),
            1,
            "{profile}: {err}"
        );
    }
    // With priority scheduling vLLM takes it, and so does SGLang: no warning.
    for (profile, flag) in [
        ("vllm", "--enable-priority-scheduling"),
        ("sglang", "--enable-priority-scheduling"),
    ] {
        let sim = engine(profile, &[flag]);
        let (code, err, ok, _) = run(&sim, &lines, &["--priority", "-10"]);
        assert_eq!((code, ok.len()), (0, 6), "{profile}: {err}");
        assert!(!err.contains("refuses the priority field"), "{err}");
    }
}

#[test]
fn launch_waits_for_each_server_to_load_its_model() {
    for profile in PROFILES {
        let job = Job::new();
        let input = job.input(&numbered_lines("l-", 5));
        // SGLang answers 503 while loading; vLLM and transformers open their port only then;
        // transformers' /v1/models (the readiness path) is a 500 for good: /health decides.
        let launch = format!(
            "{BIN} sim-engine --host {{host}} --port {{port}} --profile {profile} --startup-ms 1500 \
             --ttft-ms 0 --ms-per-token 0"
        );
        let out = cmd()
            .arg("run")
            .arg(&input)
            .arg("--output")
            .arg(job.path("out.jsonl"))
            .args([
                "--progress",
                "off",
                "--launch",
                &launch,
                "--launch-timeout",
                "30s",
            ])
            .output()
            .expect("run");
        assert!(out.status.success(), "{profile}: {}", stderr(&out));
        let ok = results_by_id(&job.path("out.jsonl"));
        assert_eq!(ok.len(), 5, "{profile}");
        assert!(ok.values().all(|r| r["response"]["status_code"] == 200));
    }
}

#[test]
fn serve_runs_a_batch_on_each_server() {
    for profile in PROFILES {
        let sim = engine(profile, &[]);
        let (_dir, service) = Service::with_engine(&sim, &[]);
        let id = service.submit("s-", 8);
        let batch = service.wait_status(&id, &["completed", "failed"], Duration::from_secs(60));
        assert_eq!(batch["status"], "completed", "{profile}: {batch}");
        assert_eq!(batch["request_counts"]["completed"], 8, "{profile}");
        let output = service.content(batch["output_file_id"].as_str().expect("output file"));
        let lines = json_lines(&output);
        assert_eq!(lines.len(), 8);
        assert!(
            lines
                .iter()
                .all(|l| l["response"]["body"]["id"] == l["response"]["request_id"])
        );
    }
}

#[test]
fn preflight_counts_with_each_servers_tokenizer_and_refuses_lines_over_the_context() {
    for profile in PROFILES {
        let sim = engine(profile, &[]);
        let mut lines = numbered_lines("ok-", 10);
        // 80 words: over the context of 64 on its own.
        let long = json!({"messages": [{"role": "user", "content": "word ".repeat(80)}]});
        lines.push(chat_line("long", long));
        // 50 words fit, but not with 20 more to generate (SGLang itself would accept it).
        let tight = json!({"messages": [{"role": "user", "content": "word ".repeat(50)}],
                           "max_tokens": 20});
        lines.push(chat_line("tight", tight));
        let job = Job::new();
        let input = job.input(&lines).display().to_string();
        let out = cmd()
            .args(run_args(&job, &input, &[&sim.url], &["--preflight"]))
            .output()
            .expect("run");
        let err = stderr(&out);
        let summary: Value =
            serde_json::from_slice(&std::fs::read(job.path("summary.json")).expect("summary"))
                .expect("summary json");
        let preflight = &summary["preflight"];
        let failed = results_by_id(&job.path("out.errors.jsonl"));
        if profile == "transformers" {
            // No tokenizer there: estimated, and nothing refused on an estimate.
            assert_eq!(preflight["counted_by_engine"], 0, "{preflight}");
            assert_eq!(preflight["estimated"], 12);
            assert_eq!(preflight["over_context"], 0);
            // The report says why: both routes were asked, and answered 404.
            let source = preflight["source"].as_str().expect("a string");
            assert!(source.starts_with("estimated"), "{source}");
            assert!(source.contains("/v1/tokenize answered 404"), "{source}");
            assert!(failed.is_empty(), "{err}");
            continue;
        }
        assert_eq!(out.status.code(), Some(1), "{profile}: {err}");
        assert_eq!(preflight["counted_by_engine"], 12, "{profile}: {preflight}");
        assert_eq!(preflight["context_length"], 64);
        assert_eq!(preflight["over_context"], 2);
        // Ten prompts of three words, each asking for at most 4 tokens.
        assert_eq!(preflight["input_tokens"], 30, "{profile}: {preflight}");
        assert_eq!(preflight["worst_case_output_tokens"], 40);
        let route = if profile == "sglang" {
            "/v1/tokenize"
        } else {
            "/tokenize"
        };
        assert!(
            preflight["source"]
                .as_str()
                .expect("a string")
                .ends_with(route)
        );
        assert!(err.contains("pre-flight: 12 requests"), "{err}");
        assert_eq!(failed.len(), 2, "{profile}: only the refused lines fail");
        for id in ["long", "tight"] {
            let record = &failed[id];
            assert_eq!(
                record["response"],
                Value::Null,
                "{profile}: {id} was never sent"
            );
            assert_eq!(record["error"]["code"], "context_length_exceeded");
        }
        let tight = failed["tight"]["error"]["message"]
            .as_str()
            .expect("a string");
        assert!(tight.contains("lower max_tokens to at most 14"), "{tight}");
        // The summary names the failures' code, with a sample message.
        let top = &summary["top_errors"][0];
        assert_eq!(
            (top["code"].clone(), top["count"].clone()),
            (json!("context_length_exceeded"), json!(2))
        );
        let sample = top["sample"].as_str().expect("a sample");
        assert!(sample.contains("context length"), "{top}");
        assert!(err.contains("context_length_exceeded x2: line "), "{err}");
    }
}

/// A tokenizer that breaks mid-pass is given up after a few failures in a row: the rest of the
/// lines are estimated without asking it again (a hanging one would cost a timeout per line).
#[test]
fn a_tokenizer_that_breaks_is_given_up() {
    let sim = Sim::instant(&["--tokenize-fail-after", "3", "--context-length", "64"]);
    let job = Job::new();
    let input = job.input(&numbered_lines("t-", 60)).display().to_string();
    let out = cmd()
        .args(run_args(&job, &input, &[&sim.url], &["--preflight"]))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let summary: Value =
        serde_json::from_slice(&std::fs::read(job.path("summary.json")).expect("summary"))
            .expect("summary json");
    let preflight = &summary["preflight"];
    // The probe and two lines were answered; every other line is estimated.
    assert_eq!(preflight["counted_by_engine"], 2, "{preflight}");
    assert_eq!(preflight["estimated"], 58);
    // 16 are asked at once: once 8 have failed in a row, no more are asked.
    let asked = sim.metric("sim_tokenize_requests_total");
    assert!(
        asked <= 30.0,
        "the tokenizer was asked {asked} times for 60 lines"
    );
}
