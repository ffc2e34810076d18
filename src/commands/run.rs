//! `batch-runner run INPUT --output OUTPUT --engine-url URL`

use std::path::Path;

use batch_job::dispatch::{EngineOptions, RetryPolicy};
use batch_job::progress::ProgressMode;
use batch_job::run::{RunOptions, default_errors_path, default_state_dir};
use batch_job::summary::RunSummary;
use batch_job::validate::ValidateOptions;

use super::{Exit, runtime};
use crate::cli::{ProgressArg, RunArgs};

pub fn run(args: RunArgs) -> Exit {
    let summary_json = args.summary_json.clone();
    let options = options(args);
    let result = runtime()
        .map_err(|e| e.to_string())
        .map(|rt| rt.block_on(batch_job::run::run(options)));
    match result {
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            Exit::Runtime
        }
        Ok(Err(e)) => {
            tracing::error!("{e}");
            if e.is_usage() {
                Exit::Invalid
            } else {
                Exit::Runtime
            }
        }
        Ok(Ok(summary)) => {
            eprint!("{}", summary.render());
            if let Some(path) = summary_json
                && let Err(e) = write_summary(&summary, &path)
            {
                tracing::error!("cannot write --summary-json {}: {e}", path.display());
                return Exit::Runtime;
            }
            if summary.failed > 0 {
                Exit::SomeFailed
            } else {
                Exit::Success
            }
        }
    }
}

fn options(args: RunArgs) -> RunOptions {
    let errors = args
        .errors
        .clone()
        .unwrap_or_else(|| default_errors_path(&args.output));
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| default_state_dir(&args.output));
    RunOptions {
        validate: ValidateOptions::from(&args.rules),
        engines: EngineOptions {
            urls: args.engine_urls,
            api_key: args.api_key,
            headers: args.headers,
            request_timeout: args.request_timeout,
            connect_timeout: args.connect_timeout,
            retry: RetryPolicy {
                max_retries: args.max_retries,
                base_delay: args.retry_backoff,
                max_delay: args.retry_max_backoff,
            },
        },
        input: args.input,
        output: args.output,
        errors,
        state_dir,
        max_concurrency: args.max_concurrency as usize,
        skip_invalid: args.skip_invalid,
        metrics_listen: args.metrics_listen,
        progress: match args.progress {
            ProgressArg::Auto => ProgressMode::Auto,
            ProgressArg::Bar => ProgressMode::Bar,
            ProgressArg::Log => ProgressMode::Log,
            ProgressArg::Off => ProgressMode::Off,
        },
        progress_interval: args.progress_interval,
    }
}

fn write_summary(summary: &RunSummary, path: &Path) -> std::io::Result<()> {
    let mut text = serde_json::to_string_pretty(summary).map_err(std::io::Error::other)?;
    text.push('\n');
    if path == Path::new("-") {
        print!("{text}");
        Ok(())
    } else {
        std::fs::write(path, text)
    }
}
