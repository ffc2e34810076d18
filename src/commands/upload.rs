//! `batch-runner upload STATE_DIR`: deliver results whose upload failed.

use batch_job::{has_pending, upload_pending};
use batch_storage::HttpOptions;

use super::{Exit, with_runtime};
use crate::cli::UploadArgs;

pub fn run(args: UploadArgs) -> Exit {
    if !has_pending(&args.state_dir) {
        tracing::error!(
            "{} has nothing to upload (no {})",
            args.state_dir.display(),
            batch_job::UPLOADS
        );
        return Exit::Invalid;
    }
    let s3 = batch_storage::S3Options::from(&args.s3);
    let delivered = with_runtime(|rt| {
        rt.block_on(upload_pending(
            &args.state_dir,
            &HttpOptions::default(),
            &s3,
        ))
    });
    match delivered {
        Err(exit) => exit,
        Ok(Err(e)) => {
            tracing::error!("{e}");
            Exit::Runtime
        }
        Ok(Ok(())) => {
            eprintln!("every result is delivered");
            if !args.keep_state
                && let Err(e) = std::fs::remove_dir_all(&args.state_dir)
            {
                tracing::warn!("cannot remove {}: {e}", args.state_dir.display());
            }
            Exit::Success
        }
    }
}
