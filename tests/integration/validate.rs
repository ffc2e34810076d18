//! `batch-runner validate` on a corpus of bad files: every rule, with exact line numbers.

use serde_json::{Value, json};

use crate::common::{Job, chat_line, run_cmd, stderr};

/// Validates `content` with `--json` and returns (exit code, report).
fn validate(content: &[u8], extra: &[&str]) -> (i32, Value) {
    let job = Job::new();
    let path = job.write("in.jsonl", content);
    let path = path.to_str().expect("utf-8 path");
    let mut args = vec!["validate", path, "--json"];
    args.extend_from_slice(extra);
    let out = run_cmd(&args);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("report JSON: {e}; stderr: {}", stderr(&out)));
    (out.status.code().expect("exit code"), report)
}

/// The (line, code) pairs of a report's errors.
fn errors(report: &Value) -> Vec<(Option<u64>, String)> {
    report["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| {
            (
                e["line"].as_u64(),
                e["code"].as_str().expect("code").to_owned(),
            )
        })
        .collect()
}

fn good(id: &str) -> String {
    chat_line(id, json!({})).to_string()
}

#[test]
fn a_valid_file_passes_with_a_summary() {
    let text = format!("{}\n{}\n", good("a"), good("b"));
    let (code, report) = validate(text.as_bytes(), &[]);
    assert_eq!(code, 0);
    assert_eq!(report["valid"], true);
    assert_eq!(report["requests"], 2);
    assert_eq!(report["endpoint"], "/v1/chat/completions");
    assert_eq!(report["model"], "sim-model");
}

#[test]
fn each_rule_is_reported_on_its_line() {
    let lines = [
        good("ok-1"),                                                            // 1
        "{not json".to_owned(),                                                  // 2
        "[1, 2, 3]".to_owned(),                                                  // 3
        r#"{"method":"POST","url":"/v1/chat/completions","body":{"model":"sim-model"}}"#.into(), // 4
        r#"{"custom_id":"","method":"POST","url":"/v1/chat/completions","body":{"model":"sim-model"}}"#.into(), // 5
        r#"{"custom_id":"m","method":"GET","url":"/v1/chat/completions","body":{"model":"sim-model"}}"#.into(), // 6
        r#"{"custom_id":"u","method":"POST","url":"/v1/images","body":{"model":"sim-model"}}"#.into(), // 7
        r#"{"custom_id":"e","method":"POST","url":"/v1/embeddings","body":{"model":"sim-model"}}"#.into(), // 8
        r#"{"custom_id":"md","method":"POST","url":"/v1/chat/completions","body":{"model":"other"}}"#.into(), // 9
        r#"{"custom_id":"b","method":"POST","url":"/v1/chat/completions","body":"text"}"#.into(), // 10
        r#"{"custom_id":"s","method":"POST","url":"/v1/chat/completions","body":{"model":"sim-model","stream":true}}"#.into(), // 11
        good("ok-1"),                                                            // 12
        r#"{"custom_id":7,"method":"POST","url":"/v1/chat/completions","body":{"model":"sim-model"}}"#.into(), // 13
        r#"{"custom_id":"nm","method":"POST","url":"/v1/chat/completions","body":{}}"#.into(), // 14
        String::new(),                                                           // 15 (blank)
        good("ok-2"),                                                            // 16
    ];
    let (code, report) = validate(lines.join("\n").as_bytes(), &[]);
    assert_eq!(code, 2);
    assert_eq!(report["valid"], false);
    let expected: Vec<(Option<u64>, String)> = [
        (2, "invalid_json_line"),
        (3, "not_an_object"),
        (4, "missing_required_field"),
        (5, "empty_custom_id"),
        (6, "invalid_method"),
        (7, "unsupported_url"),
        (8, "url_mismatch"),
        (9, "model_mismatch"),
        (10, "invalid_field_type"),
        (11, "stream_not_supported"),
        (12, "duplicate_custom_id"),
        (13, "invalid_field_type"),
        (14, "missing_required_field"),
    ]
    .iter()
    .map(|(l, c)| (Some(*l), (*c).to_owned()))
    .collect();
    assert_eq!(errors(&report), expected);
    assert_eq!(report["requests"], 2);
    assert_eq!(report["blank_lines"], 1);
    assert_eq!(report["lines"], 16);
    let dup = &report["errors"][10];
    assert_eq!(dup["param"], "custom_id");
    assert!(dup["message"].as_str().expect("message").contains("line 1"));
    let params: Vec<&Value> = report["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| &e["param"])
        .collect();
    assert_eq!(params[3], "custom_id");
    assert_eq!(params[13 - 2], "custom_id");
    assert_eq!(params[14 - 2], "body.model");
}

#[test]
fn the_human_report_names_file_line_and_fix() {
    let job = Job::new();
    let text = format!(
        "{}\n{}\n",
        good("a"),
        r#"{"custom_id":"x","method":"PUT","url":"/v1/chat/completions","body":{"model":"sim-model"}}"#
    );
    let path = job.write("in.jsonl", text.as_bytes());
    let out = run_cmd(&["validate", path.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(
            "in.jsonl:2: `method` is \"PUT\"; only \"POST\" is supported [invalid_method]"
        ),
        "{err}"
    );
    assert!(err.contains("errors by kind: invalid_method: 1"), "{err}");
}

#[test]
fn encoding_problems_are_reported_or_tolerated() {
    let mut content = b"\xEF\xBB\xBF".to_vec();
    content.extend_from_slice(good("a").as_bytes());
    content.extend_from_slice(b"\r\n");
    content.extend_from_slice(b"{\"custom_id\":\"\xff\xfe\"}\r\n");
    content.extend_from_slice(good("c").as_bytes());
    content.extend_from_slice(b"\r\n\r\n   \n");
    let (code, report) = validate(&content, &[]);
    assert_eq!(code, 2);
    assert_eq!(errors(&report), vec![(Some(2), "invalid_utf8".to_owned())]);
    assert_eq!(report["requests"], 2);
    assert_eq!(report["blank_lines"], 2);
    assert_eq!(report["warnings"]["byte_order_mark"], true);
    assert_eq!(report["warnings"]["crlf_lines"], 4);
    assert_eq!(report["warnings"]["first_crlf_line"], 1);
}

#[test]
fn over_long_lines_and_empty_files() {
    let long = chat_line("long", json!({"pad": "x".repeat(5000)})).to_string();
    let text = format!("{}\n{long}\n{}\n", good("a"), good("b"));
    let (code, report) = validate(text.as_bytes(), &["--max-line-bytes", "1000"]);
    assert_eq!(code, 2);
    assert_eq!(errors(&report), vec![(Some(2), "line_too_long".to_owned())]);
    assert_eq!(report["requests"], 2);

    let (code, report) = validate(b"\n\n", &[]);
    assert_eq!(code, 2);
    assert_eq!(errors(&report), vec![(None, "empty_file".to_owned())]);
}

#[test]
fn extra_urls_can_be_allowed() {
    let line = r#"{"custom_id":"r","method":"POST","url":"/v1/classify","body":{"model":"m"}}"#;
    let (code, _) = validate(line.as_bytes(), &[]);
    assert_eq!(code, 2);
    let (code, report) = validate(line.as_bytes(), &["--allow-url", "/v1/classify"]);
    assert_eq!(code, 0, "{report}");
}

#[test]
fn many_errors_are_counted_but_listed_up_to_the_limit() {
    let mut text = String::new();
    for _ in 0..500 {
        text.push_str("oops\n");
    }
    let (code, report) = validate(text.as_bytes(), &["--max-errors", "5"]);
    assert_eq!(code, 2);
    assert_eq!(report["errors"].as_array().expect("errors").len(), 5);
    assert_eq!(report["errors"][4]["line"], 5);
    assert_eq!(report["errors_not_listed"], 495);
    assert_eq!(report["errors_by_code"]["invalid_json_line"], 500);
}

#[test]
fn a_missing_file_is_a_usage_error() {
    let out = run_cmd(&["validate", "/nonexistent/batch.jsonl"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot read /nonexistent/batch.jsonl"));
}

#[test]
fn unreadable_and_endless_inputs_get_a_report_that_names_the_cause() {
    let job = Job::new();
    let missing = job.path("missing.jsonl").display().to_string();
    let out = run_cmd(&["validate", "--json", &missing]);
    assert_eq!(out.status.code(), Some(2));
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(report["valid"], false);
    assert!(report["error"].as_str().expect("error").contains(&missing));

    // An endless stream with no line break fails once it passes --max-line-bytes.
    let out = run_cmd(&["validate", "/dev/zero", "--max-line-bytes", "100000"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("without a line break"),
        "{}",
        stderr(&out)
    );

    // A temporary directory that does not exist is named as such, not as the input.
    // (A piped input is copied to a temporary file so it can be read again.)
    let line = format!("{}\n", good("a"));
    let mut validate = crate::common::cmd();
    validate
        .args(["validate", "-"])
        .env("TMPDIR", "/nonexistent-tmp");
    let out = crate::common::output_with_stdin(&mut validate, line.as_bytes());
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("temporary file in /nonexistent-tmp"),
        "{}",
        stderr(&out)
    );
}

/// Files that are not what they seem get a message that says what they are and what to do.
#[test]
fn encodings_endings_and_odd_values_are_named_for_what_they_are() {
    let line = good("a");
    let utf16: Vec<u8> = "\u{feff}"
        .chars()
        .chain(line.chars())
        .flat_map(|c| (c as u16).to_le_bytes())
        .collect();
    let gzip = [0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, b'\n'];
    for (content, says) in [
        (gzip.to_vec(), "looks gzip-compressed"),
        (utf16, "looks UTF-16 encoded"),
    ] {
        let (code, report) = validate(&content, &[]);
        assert_eq!(code, 2);
        let first = &report["errors"][0];
        assert_eq!(first["code"], "invalid_file_encoding", "{report}");
        assert!(
            first["message"].as_str().expect("m").contains(says),
            "{report}"
        );
    }

    let job = Job::new();
    let cr_only = format!("{line}\r{}\r", good("b"));
    let path = job.write("mac.jsonl", cr_only.as_bytes());
    let out = run_cmd(&["validate", path.to_str().expect("path")]);
    let err = stderr(&out);
    assert!(err.contains("CR-only"), "{err}");
    assert!(!err.contains("CR LF"), "{err}");

    let surrogate = r#"{"custom_id":"\ud800","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}"#;
    let empty_url = r#"{"custom_id":"e","method":"POST","url":"","body":{"model":"m"}}"#;
    let (_, report) = validate(format!("{surrogate}\n{empty_url}\n").as_bytes(), &[]);
    let messages: Vec<&str> = report["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert!(
        messages[0].contains("cannot be decoded") && !messages[0].contains("must be a string"),
        "{messages:?}"
    );
    assert!(
        messages[1].contains("`url` is empty") && !messages[1].contains("--allow-url"),
        "{messages:?}"
    );
}

#[test]
fn allow_url_takes_only_a_normalised_path() {
    let job = Job::new();
    let path = job.write("in.jsonl", format!("{}\n", good("a")).as_bytes());
    let path = path.to_str().expect("path");
    for bad in [
        "http://127.0.0.1:8000/v1/x",
        "",
        "/v1/../admin",
        "v1/x",
        "//x",
    ] {
        let out = run_cmd(&["validate", path, "--allow-url", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(stderr(&out).contains("--allow-url"), "{}", stderr(&out));
    }
    let out = run_cmd(&[
        "run",
        path,
        "-o",
        job.path("o.jsonl").to_str().expect("path"),
        "--engine-url",
        "http://127.0.0.1:9",
        "--allow-url",
        "http://127.0.0.1:9/v1/x",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        !job.path("o.jsonl.state").exists(),
        "no state for a usage error"
    );
    let ok = run_cmd(&["validate", path, "--allow-url", "/v1/classify"]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
}

/// `-` on a terminal (a resume of `run -` typed without the pipe) fails at once, saying to pipe
/// the file, instead of waiting for someone to type the batch.
#[test]
fn stdin_on_a_terminal_is_refused_at_once() {
    use std::io::Read;
    use std::process::Stdio;
    // `script` gives the command a terminal; its own stdin stays open and silent meanwhile.
    let command = format!("{} validate -", crate::common::BIN);
    let mut child = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("script (util-linux)");
    let _silent = child.stdin.take();
    crate::common::wait_for(std::time::Duration::from_secs(10), || {
        child.try_wait().expect("wait").map(|_| ())
    });
    let mut text = String::new();

    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut text)
        .expect("read");
    assert!(
        text.contains("it is a terminal: pipe the batch file"),
        "{text}"
    );
}

/// `validate --engine-url`: the engine's tokenizer counts every valid line; a line over the
/// model's context length is an error with its line number, and the report has the totals.
#[test]
fn an_engine_counts_the_lines_and_names_those_over_its_context() {
    let sim = crate::common::Sim::instant(&["--profile", "vllm", "--context-length", "64"]);
    let long = chat_line(
        "long",
        json!({"messages": [{"role": "user", "content": "word ".repeat(80)}]}),
    );
    let content = format!("{}\n{}\n{long}\n{}\n", good("a"), good("b"), good("c"));
    let (code, plain) = validate(content.as_bytes(), &[]);
    assert_eq!((code, plain["valid"].clone()), (0, json!(true)), "{plain}");
    let (code, report) = validate(content.as_bytes(), &["--engine-url", &sim.url]);
    assert_eq!(code, 2, "{report}");
    assert_eq!(
        errors(&report),
        [(Some(3), "context_length_exceeded".to_owned())]
    );
    let preflight = &report["preflight"];
    assert_eq!(preflight["input_tokens"], 9, "{preflight}");
    assert_eq!(
        (
            preflight["over_context"].clone(),
            preflight["requests"].clone()
        ),
        (json!(1), json!(4))
    );
    assert_eq!(
        (report["requests"].clone(), report["invalid_lines"].clone()),
        (json!(3), json!(1))
    );
}
