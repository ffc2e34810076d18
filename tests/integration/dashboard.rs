//! The dashboard in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, installed by scripts/test) driven by Selenium (`tests/ui/dashboard.py`)
//! against the real service and a sim-engine. Screenshots of a failure are saved under
//! `target/ui-test/`; with `BATCH_RUNNER_UI_SCREENSHOTS=DIR` a screenshot of each page is saved
//! in DIR (how docs/img/ is made).

use std::path::Path;
use std::process::Command;

use crate::common::service::{KEY_A, Service};
use crate::common::{Sim, jsonl, numbered_lines, stderr};

fn tool(env: &str, default: &str) -> String {
    let path = std::env::var(env).unwrap_or_else(|_| default.into());
    assert!(
        Path::new(&path).exists(),
        "{path} is missing: run the tests with scripts/test, which installs Debian's chromium \
         and chromium-driver (or set {env})"
    );
    path
}

#[test]
fn the_dashboard_drives_a_batch_from_upload_to_download() {
    let python = std::env::var("BATCH_RUNNER_TEST_PYTHON")
        .expect("BATCH_RUNNER_TEST_PYTHON is not set: run the tests with scripts/test");
    let chromium = tool("BATCH_RUNNER_CHROMIUM", "/usr/bin/chromium");
    let driver = tool("BATCH_RUNNER_CHROMEDRIVER", "/usr/bin/chromedriver");
    let sim = Sim::start(&[
        "--ttft-ms",
        "15",
        "--ms-per-token",
        "0",
        "--fail-rate",
        "0.15",
        "--fail-status",
        "400",
        "--seed",
        "3",
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let service = Service::start(
        &dir.path().join("data"),
        &[
            "--engine-url",
            &sim.url,
            "--max-concurrency",
            "2",
            "--report-interval",
            "200ms",
            "--checkpoint-interval",
            "100ms",
        ],
    );
    let small = dir.path().join("small.jsonl");
    std::fs::write(&small, jsonl(&numbered_lines("s", 60))).expect("write");
    let big = dir.path().join("big.jsonl");
    std::fs::write(&big, jsonl(&numbered_lines("b", 4000))).expect("write");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-test");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).expect("target/ui-test");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ui/dashboard.py");
    let mut command = Command::new(python);
    command
        .arg(script)
        .env("BASE_URL", format!("http://{}", service.addr))
        .env("KEY", KEY_A)
        .env("SMALL", &small)
        .env("BIG", &big)
        .env("OUT", &out)
        .env("CHROMIUM", chromium)
        .env("CHROMEDRIVER", driver);
    if let Ok(docs) = std::env::var("BATCH_RUNNER_UI_SCREENSHOTS") {
        command.env("DOCS", docs);
    }
    let run = command.output().expect("run the browser test");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success() && stdout.contains("all checks passed"),
        "the browser test failed (screenshots in {}):\n{stdout}\n{}",
        out.display(),
        stderr(&run)
    );
    assert_eq!(stdout.matches("\nok ").count() + 1, 9, "{stdout}");
}
