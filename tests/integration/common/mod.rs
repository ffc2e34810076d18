//! Helpers shared by the integration tests: spawn the real binary, start sim-engines, build
//! batch files, read result files.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub mod s3;
pub mod service;
pub mod store;

pub const BIN: &str = env!("CARGO_BIN_EXE_batch-runner");

/// A `batch-runner` command with logs quiet unless the test asks.
pub fn cmd() -> Command {
    let mut c = Command::new(BIN);
    c.env("BATCH_RUNNER_LOG", "warn");
    c.env_remove("BATCH_RUNNER_ENGINE_URL");
    c.env_remove("BATCH_RUNNER_API_KEY");
    c
}

/// Runs `command` with `data` piped to its standard input (written, then closed) and returns
/// what it printed.
pub fn output_with_stdin(command: &mut Command, data: &[u8]) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    // A command that stops reading early (an error) closes the pipe: not the test's failure.
    let _ = stdin.write_all(data);
    drop(stdin);
    child.wait_with_output().expect("wait")
}

pub fn run_cmd(args: &[&str]) -> Output {
    cmd().args(args).output().expect("spawn batch-runner")
}

/// A sim-engine child process, killed when dropped.
pub struct Sim {
    child: Child,
    pub url: String,
}

impl Sim {
    pub fn start(extra: &[&str]) -> Sim {
        Sim::start_at(0, extra)
    }

    /// A sim-engine on `port` (0: any free one), e.g. to bring an engine back where it was.
    pub fn start_at(port: u16, extra: &[&str]) -> Sim {
        let mut child = cmd()
            .args(["sim-engine", "--port", &port.to_string()])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sim-engine");
        let stdout = child.stdout.take().expect("stdout");
        let mut first = String::new();
        BufReader::new(stdout)
            .read_line(&mut first)
            .expect("read the listening line");
        let url = first
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .to_owned();
        Sim { child, url }
    }

    /// A sim-engine that answers at once.
    pub fn instant(extra: &[&str]) -> Sim {
        let mut args = vec!["--ttft-ms", "0", "--ms-per-token", "0"];
        args.extend_from_slice(extra);
        Sim::start(&args)
    }

    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the URL ends in a port")
    }

    /// Requests the engine has answered so far.
    pub fn served(&self) -> f64 {
        self.metric("sglang:num_requests_total")
    }

    /// Waits (at most `limit`) until the engine has answered `n` requests: a job under way.
    pub fn wait_served(&self, n: f64, limit: Duration) {
        wait_for(limit, || (self.served() >= n).then_some(()));
    }

    /// Reads a Prometheus value from the engine's /metrics.
    pub fn metric(&self, name: &str) -> f64 {
        let text = http_get(&format!("{}/metrics", self.url)).expect("metrics");
        prometheus_value(&text, name).unwrap_or_else(|| panic!("{name} not in {text}"))
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first sample of `name` (any labels) in Prometheus text.
pub fn prometheus_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A minimal blocking HTTP GET over a real socket (no client library needed in tests).
pub fn http_get(url: &str) -> std::io::Result<String> {
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_once('/').map_or((rest, "/"), |(h, p)| (h, p));
    let mut stream = std::net::TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_owned()))
}

/// A temporary directory with a batch file in it.
pub struct Job {
    pub dir: tempfile::TempDir,
}

impl Job {
    pub fn new() -> Job {
        Job {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, content: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, content).expect("write");
        p
    }

    pub fn input(&self, lines: &[Value]) -> PathBuf {
        let mut text = String::new();
        for l in lines {
            text.push_str(&l.to_string());
            text.push('\n');
        }
        self.write("input.jsonl", text.as_bytes())
    }
}

/// A chat request line whose prompt names its custom_id, with optional extra body fields.
pub fn chat_line(custom_id: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": "sim-model",
        "messages": [{"role": "user", "content": format!("prompt for {custom_id}")}],
        "max_tokens": 4
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    json!({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})
}

/// Lines as JSONL bytes.
pub fn jsonl(lines: &[Value]) -> Vec<u8> {
    let mut text = String::new();
    for l in lines {
        text.push_str(&l.to_string());
        text.push('\n');
    }
    text.into_bytes()
}

/// JSONL bytes (a result file's content), each line parsed.
pub fn json_lines(data: &[u8]) -> Vec<Value> {
    data.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("a JSON line"))
        .collect()
}

/// Lines in JSONL bytes.
pub fn count_lines(data: &[u8]) -> usize {
    data.iter().filter(|&&b| b == b'\n').count()
}

/// Sends the signal `name` (e.g. "INT") to a child process.
pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name}");
}

/// `n` plain chat lines with custom_ids `{prefix}0`, `{prefix}1`, ...
pub fn numbered_lines(prefix: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| chat_line(&format!("{prefix}{i}"), json!({})))
        .collect()
}

/// The custom_ids of a result file, in file order.
pub fn custom_ids_in_order(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("result line is JSON");
            v["custom_id"].as_str().unwrap_or_default().to_owned()
        })
        .collect()
}

/// Every line of a JSONL file, parsed, keyed by custom_id (panics on a duplicate id).
pub fn results_by_id(path: &Path) -> HashMap<String, Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = HashMap::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).expect("result line is JSON");
        let id = v["custom_id"].as_str().expect("custom_id").to_owned();
        assert!(
            out.insert(id.clone(), v).is_none(),
            "duplicate result for {id}"
        );
    }
    out
}

pub fn lines_of(path: &Path) -> usize {
    std::fs::read_to_string(path).expect("read").lines().count()
}

/// Polls `f` until it returns Some, or panics after `limit`.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The arguments of a `run` of `input` against `engines`: output, summary and errors in `job`,
/// no progress output, then `extra`.
pub fn run_args<'a>(
    job: &'a Job,
    input: &'a str,
    engines: &[&'a str],
    extra: &[&'a str],
) -> Vec<String> {
    let mut args = vec![
        "run".to_owned(),
        input.to_owned(),
        "--output".to_owned(),
        job.path("out.jsonl").display().to_string(),
        "--summary-json".to_owned(),
        job.path("summary.json").display().to_string(),
        "--progress".to_owned(),
        "off".to_owned(),
    ];
    for e in engines {
        args.push("--engine-url".to_owned());
        args.push((*e).to_owned());
    }
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

/// A port free now on loopback (bound and released: another process could take it first).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
