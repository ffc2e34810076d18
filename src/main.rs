//! `batch-runner`: parse the command line, set up logging, run one subcommand, exit with its code.

mod cli;
mod commands;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

/// jemalloc rather than glibc's allocator: `serve` sees waves of short-lived connections, and
/// glibc kept what a wave of a thousand idle ones had used (7-11 MB, never given back, and more
/// with each wave) where jemalloc gives it back (measured by the test
/// `idle_and_stalled_connections_are_closed_while_the_service_keeps_serving`; mimalloc was
/// tried too and kept a 40% higher baseline).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let matches = cli::Cli::command()
        .after_help(commands::Exit::help_text())
        .get_matches();
    let cli = cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    init_logging();
    let code = match cli.command {
        // The guard reports the engine's own exit status.
        cli::Command::EngineGuard(args) => return ExitCode::from(commands::guard::run(args)),
        cli::Command::Validate(args) => commands::validate::run(args),
        cli::Command::Run(args) => commands::run::run(*args),
        cli::Command::SimEngine(args) => commands::sim::run(args),
        cli::Command::Status(args) => commands::status::run(args),
        cli::Command::Upload(args) => commands::upload::run(args),
        cli::Command::Serve(args) => commands::serve::run(*args),
        cli::Command::Worker(args) => commands::worker::run(args),
        cli::Command::Webhooks(args) => commands::webhooks::run(args),
        cli::Command::WorkerPool(args) => commands::serve::run_pool(*args),
    };
    ExitCode::from(code as u8)
}

/// Logs go to stderr (stdout carries machine-readable output); `BATCH_RUNNER_LOG` or `RUST_LOG`
/// set the filter, `info` by default.
fn init_logging() {
    let filter = std::env::var("BATCH_RUNNER_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(|| batch_job::StderrAboveBar)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
