//! The engine guard: a small process (`batch-runner engine-guard`) between the runner and a
//! launched engine, so the engine never outlives the runner.
//!
//! The guard starts the engine command with `sh -c` in a process group of its own, writes the
//! engine's output to the bounded log, and waits. It tears the whole group down (SIGTERM, then
//! SIGKILL after the grace) when:
//! - its standard input reaches end of file: the runner holds the other end of that pipe, and the
//!   kernel closes it however the runner ends, `kill -9` included;
//! - it receives SIGTERM (the runner's normal teardown).
//!
//! SIGINT is ignored: a Ctrl-C in the terminal reaches the whole foreground group, and it is the
//! runner's job to decide what happens to the engine. The guard exits with the engine's status.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use super::log::RotatingLog;

#[derive(Debug, Clone)]
pub struct GuardOptions {
    /// The engine command, run with `sh -c`.
    pub command: String,
    pub log: PathBuf,
    pub max_log_bytes: u64,
    /// Time between SIGTERM and SIGKILL at teardown.
    pub stop_grace: Duration,
    /// Also copy the engine's output to the guard's stdout (the runner shows it).
    pub mirror: bool,
}

/// Runs the guard; returns the exit code for the guard process.
pub async fn run_guard(options: GuardOptions) -> i32 {
    let log = match RotatingLog::open(&options.log, options.max_log_bytes) {
        Ok(l) => Arc::new(Mutex::new(l)),
        Err(e) => {
            eprintln!("engine-guard: cannot open {}: {e}", options.log.display());
            return 3;
        }
    };
    let mut std_command = std::process::Command::new("sh");
    std_command
        .arg("-c")
        .arg(&options.command)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match Command::from(std_command).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("engine-guard: cannot start `{}`: {e}", options.command);
            return 3;
        }
    };
    let Some(pgid) = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw)
    else {
        return 3;
    };
    let copies: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>),
    ]
    .into_iter()
    .flatten()
    .map(|stream| tokio::spawn(copy_lines(stream, log.clone(), options.mirror)))
    .collect();

    // A plain thread, not the runtime's blocking pool: the runtime would wait for it at exit.
    let (gone, runner_gone) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = [0u8; 256];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        let _ = gone.send(());
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    // Listening for SIGINT replaces its default action (exit) with nothing.
    let _interrupts = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
    let terminated = async {
        match &mut term {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };

    let status = tokio::select! {
        status = child.wait() => status.ok(),
        _ = runner_gone => teardown(&mut child, pgid, options.stop_grace).await,
        () = terminated => teardown(&mut child, pgid, options.stop_grace).await,
    };
    // Whatever the engine started and left behind in its group goes with it.
    let _ = killpg(pgid, Signal::SIGKILL);
    for copy in copies {
        let _ = tokio::time::timeout(Duration::from_secs(1), copy).await;
    }
    status.map_or(3, exit_code)
}

/// SIGTERM to the engine's group, then SIGKILL if it has not exited within the grace.
async fn teardown(child: &mut Child, pgid: Pid, grace: Duration) -> Option<ExitStatus> {
    let _ = killpg(pgid, Signal::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            let _ = killpg(pgid, Signal::SIGKILL);
            child.wait().await.ok()
        }
    }
}

async fn copy_lines(stream: impl AsyncRead + Unpin, log: Arc<Mutex<RotatingLog>>, mirror: bool) {
    let mut lines = BufReader::new(stream).split(b'\n');
    while let Ok(Some(line)) = lines.next_segment().await {
        if mirror {
            println!("{}", String::from_utf8_lossy(&line));
        }
        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = log.line(&line) {
            eprintln!("engine-guard: cannot write the engine log: {e}");
        }
    }
}

/// The shell convention: the exit code, or 128 + the signal that ended the process.
fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}
