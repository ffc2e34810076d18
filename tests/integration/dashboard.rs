//! The dashboard in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, installed by scripts/test) driven by Selenium (`tests/ui/dashboard.py`)
//! against the real service and a sim-engine. Screenshots of a failure are saved under
//! `target/ui-test/`; with `BATCH_RUNNER_UI_SCREENSHOTS=DIR` a screenshot of each page is saved
//! in DIR (how docs/img/ is made).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::service::{KEY_A, Service};
use crate::common::{Sim, free_port, jsonl, numbered_lines, stderr};

/// Where a browser test saves its downloads and failure screenshots.
fn test_dir(name: &str) -> PathBuf {
    let out = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/ui-test")
        .join(name);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).expect("target/ui-test");
    out
}

/// The browser test `script` (in tests/ui/), with the browser and where to save things.
fn browser_test(script: &str, out: &Path) -> Command {
    let python = std::env::var("BATCH_RUNNER_TEST_PYTHON")
        .expect("BATCH_RUNNER_TEST_PYTHON is not set: run the tests with scripts/test");
    let chromium = tool("BATCH_RUNNER_CHROMIUM", "/usr/bin/chromium");
    let driver = tool("BATCH_RUNNER_CHROMEDRIVER", "/usr/bin/chromedriver");
    let mut command = Command::new(python);
    command
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/ui")
                .join(script),
        )
        .env("OUT", out)
        .env("CHROMIUM", chromium)
        .env("CHROMEDRIVER", driver);
    if let Ok(docs) = std::env::var("BATCH_RUNNER_UI_SCREENSHOTS") {
        command.env("DOCS", docs);
    }
    command
}

/// Its output once it passed every check: how many steps it took.
fn passed(run: &std::process::Output, out: &Path) -> usize {
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success() && stdout.contains("all checks passed"),
        "the browser test failed (screenshots in {}):\n{stdout}\n{}",
        out.display(),
        stderr(run)
    );
    stdout.lines().filter(|l| l.starts_with("ok ")).count()
}

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
    let out = test_dir("service");
    let mut command = browser_test("dashboard.py", &out);
    command
        .env("BASE_URL", format!("http://{}", service.addr))
        .env("KEY", KEY_A)
        .env("SMALL", &small)
        .env("BIG", &big);
    let run = command.output().expect("run the browser test");
    assert_eq!(passed(&run, &out), 9);
}

/// `run --ui`: the job's page while it runs (results so far, errors by code, a request opened)
/// and at its end, with the counts of each model of a file of two (`--mixed-models`: a base
/// model and a LoRA adapter of it).
#[test]
fn run_ui_shows_the_job_as_it_goes() {
    let sim = Sim::start(&[
        "--ttft-ms",
        "20",
        "--ms-per-token",
        "0",
        "--fail-rate",
        "0.1",
        "--fail-status",
        "503",
        "--seed",
        "5",
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    let mut lines = numbered_lines("j", 1500);
    for line in lines.iter_mut().skip(1).step_by(2) {
        line["body"]["model"] = "sim-model:adapter".into();
    }
    std::fs::write(&input, jsonl(&lines)).expect("write");
    let output = dir.path().join("out.jsonl");
    let port = free_port();
    let mut job = Command::new(env!("CARGO_BIN_EXE_batch-runner"))
        .arg("run")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .args([
            "--engine-url",
            &sim.url,
            "--max-concurrency",
            "2",
            "--max-retries",
            "0",
            "--mixed-models",
        ])
        .args([
            "--progress",
            "off",
            "--ui",
            &port.to_string(),
            "--ui-keep",
            "2m",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the job");
    let out = test_dir("run");
    let run = browser_test("run_page.py", &out)
        .env("BASE_URL", format!("http://127.0.0.1:{port}"))
        .env("TITLE", output.display().to_string())
        .output()
        .expect("run the browser test");
    // The page stays after the end (--ui-keep) until a signal.
    let _ = Command::new("kill")
        .args(["-INT", &job.id().to_string()])
        .status();
    let status = job.wait().expect("the job ends");
    assert_eq!(passed(&run, &out), 3);
    assert_eq!(status.code(), Some(1), "some requests failed");
}
