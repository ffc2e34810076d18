//! `batch-runner run INPUT --output OUTPUT --engine-url URL`

use std::path::Path;

use batch_job::deadline::Deadline;
use batch_job::dispatch::{EngineOptions, RetryPolicy};
use batch_job::finalize::Order;
use batch_job::launch::LaunchSpec;
use batch_job::launch::preset::Preset;
use batch_job::progress::ProgressMode;
use batch_job::retry_failed::Previous;
use batch_job::run::{RunOptions, default_errors_path, default_state_dir};
use batch_job::sink::CheckpointPolicy;
use batch_job::stop::{Phase, StopReason, StopSignal};
use batch_job::summary::{JobStatus, RunSummary};
use batch_job::validate::ValidateOptions;

use super::{Exit, Signals, runtime};
use crate::cli::{EngineArg, OrderArg, ProgressArg, RunArgs};

/// First signal: stop sending and let requests in flight finish; second: stop at once.
async fn watch_signals(stop: StopSignal, reason: StopReason, grace: std::time::Duration) {
    let mut signals = Signals::new();
    loop {
        signals.recv().await;
        match stop.request(reason) {
            Phase::Draining(_) => tracing::warn!(
                "stopping: no new requests; those in flight may finish within {} (press Ctrl-C \
                 again to stop at once)",
                batch_job::progress::format_duration(grace)
            ),
            _ => tracing::warn!("stopping at once"),
        }
    }
}

pub fn run(args: RunArgs) -> Exit {
    let launch = match launch_spec(&args) {
        Ok(spec) => spec,
        Err(e) => {
            tracing::error!("{e}");
            return Exit::Invalid;
        }
    };
    if args.print_launch {
        return match &launch {
            Some(spec) => {
                println!("{}", spec.template.replace("{host}", &spec.host));
                Exit::Success
            }
            None => {
                tracing::error!("--print-launch needs --launch or --engine");
                Exit::Invalid
            }
        };
    }
    let summary_json = args.summary_json.clone();
    let on_signal = if args.cancel_on_signal {
        StopReason::Cancelled
    } else {
        StopReason::Interrupted
    };
    let grace = args.grace;
    let mut options = options(args);
    options.launch = launch;
    let result = runtime().map_err(|e| e.to_string()).map(|rt| {
        rt.block_on(async {
            let stop = StopSignal::new();
            let watcher = tokio::spawn(watch_signals(stop.clone(), on_signal, grace));
            let result = batch_job::run::run(options, stop).await;
            watcher.abort();
            result
        })
    });
    match result {
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            Exit::Runtime
        }
        Ok(Err(e)) => {
            tracing::error!("{e}");
            if e.is_usage() {
                Exit::Invalid
            } else if e.is_resumable() {
                Exit::Interrupted
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
            match summary.status {
                JobStatus::Expired => Exit::Expired,
                JobStatus::Cancelled => Exit::Cancelled,
                JobStatus::Interrupted => Exit::Interrupted,
                JobStatus::Completed if summary.failed > 0 => Exit::SomeFailed,
                JobStatus::Completed => Exit::Success,
            }
        }
    }
}

fn options(args: RunArgs) -> RunOptions {
    let retry_failed = args.retry_failed.clone().map(|errors| Previous {
        errors,
        output: args
            .previous_output
            .clone()
            .unwrap_or_else(|| args.output.clone()),
    });
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
        order: match args.order {
            OrderArg::Input => Order::Input,
            OrderArg::Completion => Order::Completion,
        },
        checkpoint: CheckpointPolicy {
            every_results: args.checkpoint_every,
            every: args.checkpoint_interval,
        },
        restart: args.restart,
        keep_state: args.keep_state,
        deadline: match (args.completion_window, args.deadline) {
            (Some(window), _) => Deadline::Window(window),
            (None, Some(at)) => Deadline::At(at),
            (None, None) => Deadline::None,
        },
        grace: args.grace,
        retry_failed,
        launch: None,
    }
}

/// Size at which the engine's log is rotated.
const ENGINE_LOG_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// What --launch or --engine asks for, if anything.
fn launch_spec(args: &RunArgs) -> Result<Option<LaunchSpec>, String> {
    let (template, ready_path) = match (&args.launch, args.engine) {
        (Some(command), _) => (command.clone(), args.launch_ready_path.clone()),
        (None, Some(engine)) => {
            let preset = match engine {
                EngineArg::Sglang => Preset::Sglang,
                EngineArg::Vllm => Preset::Vllm,
            };
            let model = args
                .model_path
                .as_deref()
                .ok_or("--engine needs --model-path")?;
            (
                preset.template(model, &args.engine_args),
                preset.ready_path().to_owned(),
            )
        }
        (None, None) => return Ok(None),
    };
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| default_state_dir(&args.output));
    let guard_program = std::env::current_exe().map_err(|e| {
        format!("cannot find the batch-runner executable for the engine guard: {e}")
    })?;
    Ok(Some(LaunchSpec {
        template,
        host: args.launch_host.clone(),
        ready_path,
        ready_timeout: args.launch_timeout,
        max_restarts: args.max_engine_restarts,
        guard_program,
        log: state_dir.join("engine.log"),
        max_log_bytes: ENGINE_LOG_MAX_BYTES,
        stop_grace: args.engine_stop_grace,
        verbose: args.verbose,
    }))
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
