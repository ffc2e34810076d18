//! The batch service for tests: `batch-runner serve` spawned on port 0 over a temporary data
//! directory, and a small blocking HTTP client (real sockets, no client library).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{cmd, wait_for};

pub const KEY_A: &str = "sk-test-a";
pub const KEY_B: &str = "sk-test-b";

/// A running `batch-runner serve`, killed (SIGKILL) when dropped.
pub struct Service {
    pub child: Child,
    /// `127.0.0.1:PORT`
    pub addr: String,
}

impl Service {
    /// Starts the service on `data_dir` with keys for owners A and B and `extra` flags.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Service {
        Service::start_with(data_dir, extra, &[])
    }

    /// [`Service::start`] with extra environment variables.
    pub fn start_with(data_dir: &Path, extra: &[&str], env: &[(&str, String)]) -> Service {
        Service::spawn(data_dir, extra, env, Stdio::inherit())
    }

    /// [`Service::start_with`] with the service's log (its stderr) written to `log`.
    pub fn start_logging(
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, String)],
        log: &Path,
    ) -> Service {
        let file = std::fs::File::create(log).expect("create the log file");
        Service::spawn(data_dir, extra, env, Stdio::from(file))
    }

    fn spawn(data_dir: &Path, extra: &[&str], env: &[(&str, String)], stderr: Stdio) -> Service {
        let mut child = cmd()
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("BATCH_RUNNER_API_KEYS", format!("{KEY_A} a,{KEY_B} b"))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn serve");
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut first)
            .expect("the listening line");
        let addr = first
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .to_owned();
        Service { child, addr }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// A service on a fresh data directory whose default engine is `sim`, with `extra` flags.
    pub fn with_engine(sim: &super::Sim, extra: &[&str]) -> (tempfile::TempDir, Service) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut flags = vec!["--engine-url", sim.url.as_str()];
        flags.extend_from_slice(extra);
        let service = Service::start(dir.path(), &flags);
        (dir, service)
    }

    /// A request as owner A.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Response {
        self.call_as(KEY_A, method, path, body)
    }

    /// A request with the API key `key`.
    pub fn call_as(&self, key: &str, method: &str, path: &str, body: Option<&Value>) -> Response {
        let body = body.map(|b| b.to_string().into_bytes());
        let mut headers = vec![format!("Authorization: Bearer {key}")];
        if body.is_some() {
            headers.push("Content-Type: application/json".into());
        }
        request(
            &self.addr,
            method,
            path,
            &headers,
            body.as_deref().unwrap_or_default(),
        )
    }

    /// Uploads `content` as a `purpose=batch` file of owner A; returns its id.
    pub fn upload(&self, name: &str, content: &[u8]) -> String {
        self.upload_as(KEY_A, name, content)
    }

    /// Uploads `content` as a `purpose=batch` file with the API key `key`; returns its id.
    pub fn upload_as(&self, key: &str, name: &str, content: &[u8]) -> String {
        let parts: [(&str, Option<&str>, &[u8]); 2] =
            [("purpose", None, b"batch"), ("file", Some(name), content)];
        let r = self.post_file_as(key, &parts);
        assert_eq!(r.status, 200, "upload: {}", r.text());
        r.json()["id"].as_str().expect("file id").to_owned()
    }

    /// POST /v1/files as owner A with these multipart `parts` (name, filename, content), however
    /// wrong they are; the answer as it comes.
    pub fn post_file(&self, parts: &[(&str, Option<&str>, &[u8])]) -> Response {
        self.post_file_as(KEY_A, parts)
    }

    fn post_file_as(&self, key: &str, parts: &[(&str, Option<&str>, &[u8])]) -> Response {
        let (content_type, body) = multipart(parts);
        let headers = [
            format!("Authorization: Bearer {key}"),
            format!("Content-Type: {content_type}"),
        ];
        request(&self.addr, "POST", "/v1/files", &headers, &body)
    }

    /// Creates a batch over `file_id` for the chat endpoint; returns its id.
    pub fn create_batch(&self, file_id: &str, window: &str) -> String {
        let r = self.call(
            "POST",
            "/v1/batches",
            Some(&serde_json::json!({
                "input_file_id": file_id,
                "endpoint": "/v1/chat/completions",
                "completion_window": window,
            })),
        );
        assert_eq!(r.status, 200, "create: {}", r.text());
        r.json()["id"].as_str().expect("batch id").to_owned()
    }

    /// Uploads `n` numbered chat lines (custom_ids `{prefix}0`…) and creates a batch over them
    /// with a 24h window; returns its id.
    pub fn submit(&self, prefix: &str, n: usize) -> String {
        let lines = super::numbered_lines(prefix, n);
        let file = self.upload("in.jsonl", &super::jsonl(&lines));
        self.create_batch(&file, "24h")
    }

    pub fn batch(&self, id: &str) -> Value {
        let r = self.call("GET", &format!("/v1/batches/{id}"), None);
        assert_eq!(r.status, 200, "retrieve {id}: {}", r.text());
        r.json()
    }

    /// Polls until the batch has results for at least `lines` lines; returns it then.
    pub fn wait_completed(&self, id: &str, lines: i64, limit: Duration) -> Value {
        wait_for(limit, || {
            let b = self.batch(id);
            (b["request_counts"]["completed"].as_i64() >= Some(lines)).then_some(b)
        })
    }

    /// Polls until the batch has one of `statuses`.
    pub fn wait_status(&self, id: &str, statuses: &[&str], limit: Duration) -> Value {
        wait_for(limit, || {
            let b = self.batch(id);
            statuses
                .contains(&b["status"].as_str().unwrap_or_default())
                .then_some(b)
        })
    }

    pub fn content(&self, file_id: &str) -> Vec<u8> {
        let r = self.call("GET", &format!("/v1/files/{file_id}/content"), None);
        assert_eq!(r.status, 200, "content of {file_id}");
        r.body
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Response {
    pub status: u16,
    /// The status line and headers, as received.
    pub head: String,
    pub body: Vec<u8>,
}

impl Response {
    /// A header's value (the name in any case).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The OpenAI error body's `error` object (panics if the body is not one).
    pub fn error(&self) -> Value {
        let e = self.json()["error"].clone();
        assert!(
            e["message"].is_string() && e["type"].is_string(),
            "not an OpenAI error body: {}",
            self.text()
        );
        e
    }
}

/// One HTTP/1.1 request over a new connection (`Connection: close`, body read to the end).
pub fn request(addr: &str, method: &str, path: &str, headers: &[String], body: &[u8]) -> Response {
    request_raw(addr, &{
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for h in headers {
            head.push_str(h);
            head.push_str("\r\n");
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        bytes
    })
}

/// POSTs a chat completion `body` (sent as it is, valid JSON or not) to an engine at `url`.
pub fn post_chat(url: &str, body: &str) -> Response {
    let addr = url.strip_prefix("http://").expect("an http:// URL");
    let json = ["Content-Type: application/json".to_owned()];
    request(addr, "POST", "/v1/chat/completions", &json, body.as_bytes())
}

/// Sends `raw` bytes as they are and reads the answer.
pub fn request_raw(addr: &str, raw: &[u8]) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect to the service");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    stream.write_all(raw).expect("send");
    let mut data = Vec::new();
    stream.read_to_end(&mut data).expect("read the answer");
    let split = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(&data)));
    let headers = String::from_utf8_lossy(&data[..split]).into_owned();
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let mut body = data[split + 4..].to_vec();
    if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Response {
        status,
        head: headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[end + 4 + size..];
    }
}

/// A multipart/form-data body from `(name, filename, content)` parts; returns the content type
/// and the body.
pub fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "----batch-runner-test-boundary";
    let mut body = Vec::new();
    for (name, filename, content) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match filename {
            Some(f) => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n\
                     Content-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// The pids of the worker processes of `batch` (found by their command line).
pub fn worker_pids(batch: &str) -> Vec<u32> {
    let out = std::process::Command::new("pgrep")
        .args(["-f", &format!("batch-runner worker .*--batch '?{batch}")])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A `batch-runner worker-pool` in a process group of its own (so a test can freeze the whole
/// "host": the pool and its workers), killed with its group when dropped.
pub struct Pool {
    pub child: Child,
}

impl Pool {
    pub fn start(data_dir: &Path, extra: &[&str], env: &[(&str, String)]) -> Pool {
        use std::os::unix::process::CommandExt;
        let mut child = cmd()
            .args(["worker-pool", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn worker-pool");
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut first)
            .expect("the ready line");
        assert_eq!(first.trim(), "worker pool ready");
        Pool { child }
    }

    /// Sends `signal` (e.g. "STOP", "CONT", "KILL") to the pool's whole process group.
    pub fn signal_group(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([
                &format!("-{signal}"),
                "--",
                &format!("-{}", self.child.id()),
            ])
            .status()
            .expect("kill");
        assert!(
            status.success(),
            "kill -{signal} the group of {}",
            self.child.id()
        );
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // The group may be gone already (a test killed the pool and its workers exited).
        for signal in ["-CONT", "-KILL"] {
            let _ = std::process::Command::new("kill")
                .args([signal, "--", &format!("-{}", self.child.id())])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.wait();
    }
}

/// A PostgreSQL schema of its own on the machine's server (`BATCH_RUNNER_TEST_POSTGRES`,
/// default the local `test` database), dropped with everything in it when this goes.
pub struct PgSchema {
    base: String,
    name: String,
    /// The database URL that works in this schema.
    pub url: String,
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let _ = pg_execute(
            &self.base,
            &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name),
        );
    }
}

/// Runs one SQL statement on the PostgreSQL at `url`.
fn pg_execute(url: &str, statement: &str) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(sqlx::Error::Io)?;
    runtime.block_on(async {
        let mut connection = sqlx::PgConnection::connect(url).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_owned()))
            .execute(&mut connection)
            .await?;
        connection.close().await
    })
}

pub fn postgres_schema() -> PgSchema {
    let base = std::env::var("BATCH_RUNNER_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!(
        "it_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    if let Err(e) = pg_execute(&base, &format!("CREATE SCHEMA {schema}")) {
        panic!("cannot create a schema in {base}: {e}");
    }
    // The URL may already carry parameters (a Unix socket's `host=`).
    let separator = if base.contains('?') { '&' } else { '?' };
    PgSchema {
        url: format!("{base}{separator}options=-c%20search_path%3D{schema}"),
        base,
        name: schema,
    }
}

/// The custom_ids of JSONL result bytes; panics on a duplicate.
pub fn unique_ids(data: &[u8]) -> std::collections::HashSet<String> {
    let mut ids = std::collections::HashSet::new();
    for line in String::from_utf8_lossy(data).lines() {
        let v: Value = serde_json::from_str(line).expect("result line is JSON");
        let id = v["custom_id"].as_str().expect("custom_id").to_owned();
        assert!(ids.insert(id.clone()), "duplicate result for {id}");
    }
    ids
}
