//! Webhooks: every batch that ends sends one event, signed as OpenAI signs them; a receiver
//! written with the official openai SDK (`tests/sdk/webhook_receiver.py`) verifies each one
//! unchanged, and refuses it with its body altered.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::service::Service;
use crate::common::{Sim, chat_line, jsonl, numbered_lines, run_cmd, wait_for};

const LONG: Duration = Duration::from_secs(120);
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn python() -> String {
    std::env::var("BATCH_RUNNER_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("BATCH_RUNNER_TEST_PYTHON is not set: run the tests with scripts/test, which installs the openai SDK")
    })
}

/// The SDK receiver, killed when dropped.
pub struct Receiver {
    child: Child,
    port: u16,
    out: PathBuf,
}

impl Receiver {
    /// `port` 0 picks a free one; the first `fail` deliveries are answered 500.
    pub fn start(dir: &Path, port: u16, fail: u32) -> Receiver {
        Receiver::answering(dir, port, fail, 500)
    }

    /// [`Receiver::start`], the first `fail` deliveries answered `status`.
    fn answering(dir: &Path, port: u16, fail: u32, status: u16) -> Receiver {
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out = dir.join(format!("received-{n}.jsonl"));
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/webhook_receiver.py");
        let mut child = Command::new(python())
            .arg(script)
            .args(["--secret", SECRET, "--out"])
            .arg(&out)
            .args(["--port", &port.to_string(), "--fail", &fail.to_string()])
            .args(["--status", &status.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the receiver");
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut first)
            .expect("the listening line");
        let port = first
            .trim()
            .strip_prefix("listening on ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        Receiver { child, port, out }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn entries(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The verified deliveries, once `n` have come.
    pub fn wait_verified(&self, n: usize) -> Vec<Value> {
        wait_for(LONG, || {
            let got: Vec<Value> = self
                .entries()
                .into_iter()
                .filter(|e| e.get("type").is_some())
                .collect();
            (got.len() >= n).then_some(got)
        })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn webhook_file(dir: &Path, owner_url: &str) -> PathBuf {
    let path = dir.join("webhooks");
    std::fs::write(&path, format!("a {owner_url} {SECRET}\nb - {SECRET}\n")).expect("write");
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn service_with_hooks(dir: &Path, sim: &Sim, hooks: &Path, extra: &[&str]) -> Service {
    let mut flags = vec![
        "--engine-url",
        &sim.url,
        "--webhook-allow-private",
        "--webhook-first-retry",
        "200ms",
        "--min-completion-window",
        "1s",
        "--grace",
        "1s",
        "--report-interval",
        "100ms",
        "--max-concurrent-batches",
        "8",
        "--max-concurrency",
        "2",
    ];
    flags.extend_from_slice(extra);
    let hooks = hooks.to_str().expect("utf-8 path");
    flags.extend_from_slice(&["--webhook-file", hooks]);
    Service::start(&dir.join("data"), &flags)
}

#[test]
fn every_ending_sends_one_event_the_sdk_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start(dir.path(), 0, 0);
    let hooks = webhook_file(dir.path(), &receiver.url());
    let sim = Sim::start(&["--ttft-ms", "300", "--ms-per-token", "0"]);
    let service = service_with_hooks(dir.path(), &sim, &hooks, &[]);

    let completed = service.submit("done-", 2);
    let bad = service.upload("bad.jsonl", b"{\"custom_id\": \"x\"}\n");
    let failed = service.create_batch(&bad, "24h");
    let cancelled = service.submit("stop-", 40);
    // A window it cannot meet: 40 requests of 300 ms, two at a time, in one second.
    let slow = service.upload("slow.jsonl", &jsonl(&numbered_lines("late2-", 40)));
    let r = service.call(
        "POST",
        "/v1/batches",
        Some(
            &json!({"input_file_id": slow, "endpoint": "/v1/chat/completions",
                     "completion_window": "1s"}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let expiring = r.json()["id"].as_str().expect("id").to_owned();
    service.wait_status(&cancelled, &["in_progress"], LONG);
    assert_eq!(
        service
            .call("POST", &format!("/v1/batches/{cancelled}/cancel"), None)
            .status,
        200
    );
    let want = vec![
        (completed.clone(), "batch.completed"),
        (failed.clone(), "batch.failed"),
        (expiring.clone(), "batch.expired"),
        (cancelled.clone(), "batch.cancelled"),
    ];
    for (id, _) in &want {
        service.wait_status(id, &["completed", "failed", "expired", "cancelled"], LONG);
    }
    let got = receiver.wait_verified(want.len());
    let mut seen: Vec<(String, String)> = got
        .iter()
        .map(|e| {
            assert_eq!(e["tamper_refused"], true, "{e}");
            assert_eq!(e["webhook_id"], e["id"], "{e}");
            assert!(
                e["id"].as_str().is_some_and(|i| i.starts_with("evt_")),
                "{e}"
            );
            (
                e["data"]["id"].as_str().unwrap_or_default().to_owned(),
                e["type"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let mut want: Vec<(String, String)> =
        want.into_iter().map(|(id, t)| (id, t.to_owned())).collect();
    seen.sort();
    want.sort();
    assert_eq!(seen, want);
    assert!(
        receiver
            .entries()
            .iter()
            .all(|e| e.get("rejected").is_none())
    );
    // The batch shows its delivery; the metrics count it.
    let b = wait_for(LONG, || {
        let b = service.batch(&completed);
        (b["x_batch_runner"]["webhook"]["state"] == "delivered").then_some(b)
    });
    assert_eq!(b["x_batch_runner"]["webhook"]["attempts"], 1, "{b}");
    let metrics = service.call("GET", "/metrics", None).text();
    assert!(
        metrics.contains("batch_runner_webhook_events{state=\"delivered\"} 4"),
        "{metrics}"
    );
    // No event went twice.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(receiver.wait_verified(0).len(), 4);
}

#[test]
fn a_receiver_that_fails_or_is_down_gets_each_event_once_it_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Sim::start(&["--ttft-ms", "1", "--ms-per-token", "0"]);
    // Down: nothing listens on the port yet.
    let port = free_port();
    let hooks = webhook_file(dir.path(), &format!("http://127.0.0.1:{port}/hook"));
    let mut service = service_with_hooks(dir.path(), &sim, &hooks, &[]);
    let first = service.submit("one-", 3);
    service.wait_status(&first, &["completed"], LONG);
    let b = wait_for(LONG, || {
        let b = service.batch(&first);
        (b["x_batch_runner"]["webhook"]["attempts"].as_i64() >= Some(2)).then_some(b)
    });
    let webhook = &b["x_batch_runner"]["webhook"];
    assert_eq!(webhook["state"], "pending", "{b}");
    assert!(
        webhook["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{b}"
    );

    // kill -9 of the service while the event waits: the next start delivers it.
    let _ = service.child.kill();
    let _ = service.child.wait();
    // Up, but answering 500 twice first.
    let receiver = Receiver::start(dir.path(), port, 2);
    service = service_with_hooks(dir.path(), &sim, &hooks, &[]);
    let got = receiver.wait_verified(1);
    assert_eq!(got[0]["data"]["id"], first.as_str());
    let refused = receiver
        .entries()
        .iter()
        .filter(|e| e.get("refused").is_some())
        .count();
    assert_eq!(refused, 2, "{:?}", receiver.entries());
    let b = wait_for(LONG, || {
        let b = service.batch(&first);
        (b["x_batch_runner"]["webhook"]["state"] == "delivered").then_some(b)
    });
    assert!(
        b["x_batch_runner"]["webhook"]["attempts"].as_i64() >= Some(5),
        "{b}"
    );
    // Every attempt carried the same webhook-id.
    let ids: std::collections::HashSet<String> = receiver
        .entries()
        .iter()
        .filter_map(|e| e["webhook_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids.len(), 1, "{:?}", receiver.entries());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(receiver.wait_verified(0).len(), 1);
}

#[test]
fn a_batch_url_is_signed_with_its_owner_secret_and_private_ones_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start(dir.path(), 0, 0);
    let hooks = webhook_file(dir.path(), "-");
    let sim = Sim::start(&["--ttft-ms", "1", "--ms-per-token", "0"]);
    let service = service_with_hooks(dir.path(), &sim, &hooks, &[]);
    let file = service.upload("in.jsonl", &jsonl(&[chat_line("only", json!({}))]));
    let create = |url: &str| {
        service.call(
            "POST",
            "/v1/batches",
            Some(
                &json!({"input_file_id": file, "endpoint": "/v1/chat/completions",
                         "completion_window": "24h", "x_batch_runner": {"webhook_url": url}}),
            ),
        )
    };
    let r = create(&receiver.url());
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["id"].as_str().expect("id").to_owned();
    assert_eq!(r.json()["x_batch_runner"]["webhook_url"], receiver.url());
    let got = receiver.wait_verified(1);
    assert_eq!(got[0]["data"]["id"], id.as_str());
    assert_eq!(got[0]["type"], "batch.completed");
    let r = create("ftp://example.com/x");
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.error()["param"], "x_batch_runner.webhook_url");

    // Without --webhook-allow-private a loopback URL is refused at create, saying why.
    let strict = Service::start(
        &dir.path().join("strict"),
        &[
            "--engine-url",
            &sim.url,
            "--webhook-file",
            hooks.to_str().expect("utf-8"),
        ],
    );
    let file = strict.upload("in.jsonl", &jsonl(&[chat_line("only", json!({}))]));
    let r = strict.call(
        "POST",
        "/v1/batches",
        Some(
            &json!({"input_file_id": file, "endpoint": "/v1/chat/completions",
                     "completion_window": "24h",
                     "x_batch_runner": {"webhook_url": receiver.url()}}),
        ),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let message = r.error()["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("--webhook-allow-private"), "{message}");
}

#[test]
fn run_notifies_when_the_job_ends() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The first attempt is redirected: not followed, tried again.
    let receiver = Receiver::answering(dir.path(), 0, 1, 302);
    let sim = Sim::start(&["--ttft-ms", "1", "--ms-per-token", "0"]);
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, jsonl(&numbered_lines("n-", 5))).expect("write");
    let output = dir.path().join("out.jsonl");
    let out = run_cmd(&[
        "run",
        input.to_str().expect("utf-8"),
        "--output",
        output.to_str().expect("utf-8"),
        "--engine-url",
        &sim.url,
        "--notify-url",
        &receiver.url(),
        "--notify-secret",
        SECRET,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = receiver.wait_verified(1);
    assert_eq!(got[0]["type"], "batch.completed");
    assert_eq!(got[0]["data"]["summary"]["succeeded"], 5, "{}", got[0]);
    assert_eq!(got[0]["tamper_refused"], true);
    let entries = receiver.entries();
    assert!(entries.iter().any(|e| e["refused"] == 302), "{entries:?}");
    assert!(
        entries.iter().all(|e| e.get("followed").is_none()),
        "{entries:?}"
    );

    // A receiver that never answers changes nothing about the job.
    let output = dir.path().join("out2.jsonl");
    let out = run_cmd(&[
        "run",
        input.to_str().expect("utf-8"),
        "--output",
        output.to_str().expect("utf-8"),
        "--engine-url",
        &sim.url,
        "--notify-url",
        &format!("http://127.0.0.1:{}/", free_port()),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot notify"), "{err}");
}

#[test]
fn the_operator_lists_resends_and_reloads_endpoints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start(dir.path(), 0, 0);
    let hooks = webhook_file(dir.path(), &receiver.url());
    let sim = Sim::start(&["--ttft-ms", "1", "--ms-per-token", "0"]);
    let data = dir.path().join("data");
    let hooks_flag = hooks.to_str().expect("utf-8").to_owned();
    let strict = [
        "--engine-url",
        &sim.url,
        "--webhook-file",
        &hooks_flag,
        "--webhook-first-retry",
        "200ms",
    ];
    // Without --webhook-allow-private the loopback receiver is refused: the event is given up
    // at once, saying why.
    let mut service = Service::start(&data, &strict);
    let first = service.submit("f-", 1);
    let b = wait_for(LONG, || {
        let b = service.batch(&first);
        (b["x_batch_runner"]["webhook"]["state"] == "failed").then_some(b)
    });
    let error = b["x_batch_runner"]["webhook"]["last_error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains("--webhook-allow-private"), "{b}");
    let event = b["x_batch_runner"]["webhook"]["event_id"]
        .as_str()
        .expect("event id")
        .to_owned();
    let webhooks = |args: &[&str]| {
        let mut all = vec!["webhooks", "--data-dir", data.to_str().expect("utf-8")];
        all.extend_from_slice(args);
        run_cmd(&all)
    };
    let listed = webhooks(&["list", "--state", "failed"]);
    assert!(listed.status.success());
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed.contains(&event) && listed.contains("\"failed\""),
        "{listed}"
    );

    // Allowed now: resent, it arrives under the same id.
    let _ = service.child.kill();
    let _ = service.child.wait();
    let mut allowed = strict.to_vec();
    allowed.push("--webhook-allow-private");
    service = Service::start(&data, &allowed);
    let resent = webhooks(&["resend", "--all-failed"]);
    assert!(
        resent.status.success(),
        "{}",
        String::from_utf8_lossy(&resent.stderr)
    );
    let got = receiver.wait_verified(1);
    assert_eq!(got[0]["webhook_id"], event.as_str());
    assert_eq!(webhooks(&["resend", "evt_nothing"]).status.code(), Some(2));

    // SIGHUP: the file is read again and the next event goes to the new endpoint.
    let second = Receiver::start(dir.path(), 0, 0);
    webhook_file(dir.path(), &second.url());
    let hup = Command::new("kill")
        .args(["-HUP", &service.child.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    std::thread::sleep(Duration::from_millis(300));
    let next = service.submit("s-", 1);
    let got = second.wait_verified(1);
    assert_eq!(
        got[0]["data"]["id"],
        next.as_str(),
        "first {first}: {:?} / {:?}",
        receiver.entries(),
        second.entries()
    );
    assert_eq!(receiver.wait_verified(0).len(), 1);
}

#[test]
fn a_bad_webhook_file_stops_serve_before_it_listens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hooks = dir.path().join("hooks");
    std::fs::write(
        &hooks,
        format!("a https://hooks.example/x {SECRET}\nb nope\n"),
    )
    .expect("write");
    let out = run_cmd(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().join("data").to_str().expect("utf-8"),
        "--webhook-file",
        hooks.to_str().expect("utf-8"),
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2: expected OWNER URL SECRET"), "{err}");
}

#[test]
fn a_batch_url_whose_owner_left_the_file_is_given_up_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start(dir.path(), 0, 0);
    let hooks = webhook_file(dir.path(), "-");
    let sim = Sim::start(&["--ttft-ms", "1500", "--ms-per-token", "0"]);
    let service = service_with_hooks(dir.path(), &sim, &hooks, &[]);
    let file = service.upload("in.jsonl", &jsonl(&[chat_line("only", json!({}))]));
    let body = json!({"input_file_id": file, "endpoint": "/v1/chat/completions",
                      "completion_window": "24h", "x_batch_runner": {"webhook_url": receiver.url()}});
    let r = service.call("POST", "/v1/batches", Some(&body));
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["id"].as_str().expect("id").to_owned();
    // Owner a leaves the file while its batch runs.
    std::fs::write(&hooks, format!("b - {SECRET}\n")).expect("write");
    let hup = Command::new("kill")
        .args(["-HUP", &service.child.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    let b = wait_for(LONG, || {
        let b = service.batch(&id);
        (b["x_batch_runner"]["webhook"]["state"] == "failed").then_some(b)
    });
    let error = b["x_batch_runner"]["webhook"]["last_error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains("no line in the webhook file"), "{b}");
    assert!(receiver.entries().is_empty());
}
