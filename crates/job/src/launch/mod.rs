//! Launching the engine: `run --launch 'COMMAND'` or `--engine sglang|vllm`.
//!
//! The runner chooses a free port, substitutes `{port}` and `{host}` into the command, and starts
//! it under the engine guard ([`guard`]), which ties the engine's life to the runner's. It then
//! polls the engine's readiness endpoint until it answers 200. While the job runs, a supervisor
//! restarts an engine that dies (the dispatcher sends it nothing meanwhile) up to a limit.
//!
//! - [`preset`]: the commands for SGLang and vLLM;
//! - [`log`]: the engine's bounded log file and its last lines for error messages.

pub mod guard;
pub mod log;
pub mod preset;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use hyper::header::HeaderMap;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, ChildStdin, Command};

use crate::dispatch::transport::{Transport, Url};

/// Lines of the engine's log quoted in error messages.
const TAIL_LINES: usize = 20;
const READY_POLL: Duration = Duration::from_millis(250);

/// How to start and supervise one engine.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The command, with `{port}` and `{host}` still to substitute.
    pub template: String,
    pub host: String,
    /// Path polled for readiness: `/health` for SGLang and vLLM, `/v1/models` otherwise.
    pub ready_path: String,
    pub ready_timeout: Duration,
    pub max_restarts: u32,
    /// The `batch-runner` executable, whose `engine-guard` subcommand wraps the engine.
    pub guard_program: PathBuf,
    pub log: PathBuf,
    pub max_log_bytes: u64,
    pub stop_grace: Duration,
    /// Show the engine's output (above the progress bar).
    pub verbose: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot start the engine: {0}")]
    Spawn(std::io::Error),
    #[error("cannot find a free port for the engine: {0}")]
    Port(std::io::Error),
    #[error("the engine exited ({status}) before it was ready. Last lines of {log}:\n{tail}")]
    Exited {
        status: String,
        log: String,
        tail: String,
    },
    #[error(
        "the engine did not become ready within {timeout:?}: {last} (polling {url}); raise \
         --launch-timeout if it needs longer to load. Last lines of {log}:\n{tail}"
    )]
    NotReady {
        timeout: Duration,
        url: String,
        /// What the last poll got: no answer, or the status it answered.
        last: String,
        log: String,
        tail: String,
    },
}

/// A running, ready engine.
pub struct Launched {
    guard: Child,
    /// Holding this open keeps the engine alive; closing it (or dying) makes the guard tear the
    /// engine down.
    lifeline: Option<ChildStdin>,
    pub url: String,
    port: u16,
    spec: LaunchSpec,
}

impl LaunchSpec {
    /// The command with `{port}` and `{host}` substituted.
    pub fn command(&self, port: u16) -> String {
        self.template
            .replace("{port}", &port.to_string())
            .replace("{host}", &self.host)
    }

    fn log_tail(&self) -> String {
        let lines = log::tail(&self.log, TAIL_LINES);
        if lines.is_empty() {
            "  (the engine wrote nothing)".to_owned()
        } else {
            lines
                .iter()
                .map(|l| format!("  {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        }
    }

    /// Starts the engine on a free port and waits until it is ready.
    pub async fn start(&self) -> Result<Launched, LaunchError> {
        let port = free_port(&self.host).map_err(LaunchError::Port)?;
        self.start_on(port).await
    }

    async fn start_on(&self, port: u16) -> Result<Launched, LaunchError> {
        let command = self.command(port);
        tracing::info!("starting the engine: {command}");
        let mut guard = Command::new(&self.guard_program);
        guard
            .arg("engine-guard")
            .arg("--log")
            .arg(&self.log)
            .arg("--max-log-bytes")
            .arg(self.max_log_bytes.to_string())
            .arg("--stop-grace-ms")
            .arg(self.stop_grace.as_millis().to_string());
        if self.verbose {
            guard.arg("--mirror");
        }
        guard
            .arg("--")
            .arg(&command)
            .stdin(Stdio::piped())
            .stdout(if self.verbose {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::inherit())
            // Dropping the handle must not kill the guard: closing its stdin (the lifeline) is
            // what makes it stop the engine properly.
            .kill_on_drop(false);
        let mut child = guard.spawn().map_err(LaunchError::Spawn)?;
        let lifeline = child.stdin.take();
        if let Some(out) = child.stdout.take() {
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(out).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    crate::report::progress::print_line(&line);
                }
            });
        }
        let url = format!("http://{}:{port}", url_host(&self.host));
        let mut launched = Launched {
            guard: child,
            lifeline,
            url,
            port,
            spec: self.clone(),
        };
        if let Err(e) = launched.wait_ready().await {
            launched.stop().await;
            return Err(e);
        }
        tracing::info!("the engine is ready at {}", launched.url);
        Ok(launched)
    }
}

impl Launched {
    async fn wait_ready(&mut self) -> Result<(), LaunchError> {
        let spec = &self.spec;
        let probe_url = format!("{}{}", self.url, spec.ready_path);
        let transport = Transport::new(&self.url, HeaderMap::new(), Duration::from_secs(2))
            .map_err(|e| LaunchError::Spawn(std::io::Error::other(e)))?;
        let parse =
            |u: &str| Url::parse(u).map_err(|e| LaunchError::Spawn(std::io::Error::other(e)));
        let url = parse(&probe_url)?;
        let health = parse(&format!("{}{HEALTH_PATH}", self.url))?;
        let deadline = tokio::time::Instant::now() + spec.ready_timeout;
        loop {
            if let Ok(Some(status)) = self.guard.try_wait() {
                return Err(LaunchError::Exited {
                    status: describe_exit(status),
                    log: spec.log.display().to_string(),
                    tail: spec.log_tail(),
                });
            }
            let last = match get(&transport, &url).await {
                Ok(200) => return Ok(()),
                // It answers, but its ready path fails (`transformers serve` answers 500 on
                // /v1/models when it cannot list its models): its health check decides.
                Ok(status) if status >= 500 && spec.ready_path != HEALTH_PATH => {
                    if get(&transport, &health).await == Ok(200) {
                        tracing::info!(
                            "{probe_url} answers {status} but {HEALTH_PATH} answers 200: taking \
                             the engine as ready"
                        );
                        return Ok(());
                    }
                    format!("it answered {status}")
                }
                Ok(status) => format!("it answered {status}"),
                Err(e) => format!("no answer ({e})"),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(LaunchError::NotReady {
                    timeout: spec.ready_timeout,
                    url: probe_url,
                    last,
                    log: spec.log.display().to_string(),
                    tail: spec.log_tail(),
                });
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// Waits until the engine exits; returns how it ended.
    pub async fn exited(&mut self) -> String {
        match self.guard.wait().await {
            Ok(status) => describe_exit(status),
            Err(e) => format!("unknown ({e})"),
        }
    }

    /// Starts the engine again on the same port (the dispatcher already knows its URL).
    pub async fn restart(&mut self) -> Result<(), LaunchError> {
        let fresh = self.spec.start_on(self.port).await?;
        let old = std::mem::replace(self, fresh);
        old.stop().await;
        Ok(())
    }

    /// The last lines of the engine's log.
    pub fn log_tail(&self) -> String {
        self.spec.log_tail()
    }

    /// Stops the engine: SIGTERM to the guard (which passes it to the engine's group and
    /// escalates to SIGKILL after the grace); the guard is killed if it does not follow.
    pub async fn stop(mut self) {
        if let Some(pid) = self.guard.id().and_then(|id| i32::try_from(id).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let wait = self.spec.stop_grace + Duration::from_secs(5);
        if tokio::time::timeout(wait, self.guard.wait()).await.is_err() {
            let _ = self.guard.kill().await;
        }
        drop(self.lifeline.take());
    }
}

/// The health check that SGLang, vLLM and `transformers serve` all answer.
const HEALTH_PATH: &str = "/health";

/// The status of a GET, or why there was none.
async fn get(transport: &Transport, url: &Url) -> Result<u16, String> {
    transport
        .send(Method::GET, url, Bytes::new(), Duration::from_secs(5))
        .await
        .map(|answer| answer.status)
        .map_err(|e| e.to_string())
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) if c > 128 => format!("killed by signal {}", c - 128),
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        (None, None) => "unknown status".to_owned(),
    }
}

/// A port nothing listens on right now. The engine binds it itself, so the port has to be
/// chosen, released and passed on; another process could take it in between, in which case the
/// engine fails to start and says so in its log.
fn free_port(host: &str) -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind((host, 0))?;
    Ok(listener.local_addr()?.port())
}

/// IPv6 literals need brackets in a URL.
fn url_host(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(template: &str) -> LaunchSpec {
        LaunchSpec {
            template: template.into(),
            host: "127.0.0.1".into(),
            ready_path: "/health".into(),
            ready_timeout: Duration::from_secs(1),
            max_restarts: 0,
            guard_program: "batch-runner".into(),
            log: "engine.log".into(),
            max_log_bytes: 1 << 20,
            stop_grace: Duration::from_secs(1),
            verbose: false,
        }
    }

    #[test]
    fn substitutes_port_and_host() {
        let s = spec("serve --host {host} --port {port} --other {port}");
        assert_eq!(
            s.command(8001),
            "serve --host 127.0.0.1 --port 8001 --other 8001"
        );
        assert_eq!(url_host("::1"), "[::1]");
        assert_eq!(url_host("127.0.0.1"), "127.0.0.1");
    }

    #[test]
    fn free_ports_are_free() {
        let port = free_port("127.0.0.1").expect("port");
        assert!(port > 0);
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("still free");
    }
}
