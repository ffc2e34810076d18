//! `batch-runner engine-guard` (internal): see `batch_job::run_guard`.

use std::time::Duration;

use batch_job::{GuardOptions, run_guard};

use super::runtime;
use crate::cli::GuardArgs;

/// Returns the engine's exit status as the process's.
pub fn run(args: GuardArgs) -> u8 {
    let options = GuardOptions {
        command: args.command.join(" "),
        log: args.log,
        max_log_bytes: args.max_log_bytes,
        stop_grace: Duration::from_millis(args.stop_grace_ms),
        mirror: args.mirror,
    };
    match runtime() {
        Ok(rt) => u8::try_from(rt.block_on(run_guard(options))).unwrap_or(1),
        Err(e) => {
            eprintln!("engine-guard: cannot start the async runtime: {e}");
            3
        }
    }
}
