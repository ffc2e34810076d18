//! `batch-runner status STATE_DIR`: what a running or interrupted job has done so far.

use batch_job::{JobProgress, read_progress};

use super::Exit;
use crate::cli::StatusArgs;

pub fn run(args: StatusArgs) -> Exit {
    let progress: JobProgress = match read_progress(&args.state_dir) {
        Ok(Some(p)) => p,
        Ok(None) => {
            tracing::error!(
                "{} is not a job's state directory (no manifest)",
                args.state_dir.display()
            );
            return Exit::Invalid;
        }
        Err(e) => {
            tracing::error!("cannot read {}: {e}", args.state_dir.display());
            return Exit::Runtime;
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&progress) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                tracing::error!("cannot encode the status: {e}");
                return Exit::Runtime;
            }
        }
    } else {
        print!("{}", progress.render());
    }
    Exit::Success
}
