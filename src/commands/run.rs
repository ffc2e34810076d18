//! `batch-runner run INPUT --output OUTPUT --engine-url URL`

use std::path::Path;

use batch_job::{Event, JobStatus, Phase, RunError, RunSummary, Secret, StopReason, StopSignal};

use super::run_options::build;
use super::{Exit, Signals, with_runtime};
use crate::cli::RunArgs;

/// First signal: stop sending and let requests in flight finish; second: stop at once.
async fn watch_signals(stop: StopSignal, reason: StopReason, grace: std::time::Duration) {
    let mut signals = Signals::new();
    loop {
        signals.recv().await;
        match stop.request(reason) {
            Phase::Draining(_) => tracing::warn!(
                "stopping: no new requests; those in flight may finish within {} (press Ctrl-C \
                 again to stop at once)",
                batch_job::format_duration(grace)
            ),
            _ => tracing::warn!("stopping at once"),
        }
    }
}

/// Where and how `--notify-url` tells that the job ended.
struct Notifications {
    urls: Vec<String>,
    secret: Option<Secret>,
    /// The job's output, named in the event: a receiver may run several jobs.
    output: String,
}

impl Notifications {
    /// The event of a job that ended; none for one that is only interrupted (it resumes).
    fn event(&self, result: &Result<RunSummary, RunError>) -> Option<Event> {
        let (kind, data) = match result {
            Ok(summary) => {
                let kind = match summary.status {
                    JobStatus::Completed | JobStatus::AlreadyComplete => "batch.completed",
                    JobStatus::Expired => "batch.expired",
                    JobStatus::Cancelled => "batch.cancelled",
                    JobStatus::Interrupted => return None,
                };
                let summary = serde_json::to_value(summary).unwrap_or_default();
                (
                    kind,
                    serde_json::json!({"id": self.output, "summary": summary}),
                )
            }
            Err(e) if e.is_resumable() => return None,
            Err(e) => (
                "batch.failed",
                serde_json::json!({"id": self.output, "error": e.to_string()}),
            ),
        };
        Some(Event::new(
            batch_job::new_event_id(),
            kind,
            batch_job::unix_now(),
            data,
        ))
    }

    async fn send(&self, result: &Result<RunSummary, RunError>) {
        if self.urls.is_empty() {
            return;
        }
        if let Some(event) = self.event(result) {
            batch_job::notify(&self.urls, self.secret.as_ref(), &event).await;
        }
    }
}

pub fn run(args: RunArgs) -> Exit {
    let notifications = Notifications {
        urls: args.notify_url.clone(),
        secret: args.notify_secret.clone(),
        output: args.output.clone(),
    };
    let print_launch = args.print_launch;
    let summary_json = args.summary_json.clone();
    let on_signal = if args.cancel_on_signal {
        StopReason::Cancelled
    } else {
        StopReason::Interrupted
    };
    let grace = args.grace;
    let options = match build(args) {
        Ok(options) => options,
        Err(e) => {
            tracing::error!("{e}");
            return Exit::Invalid;
        }
    };
    if print_launch {
        return match &options.launch {
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
    let result = with_runtime(|rt| {
        let result = rt.block_on(async {
            let stop = StopSignal::new();
            let watcher = tokio::spawn(watch_signals(stop.clone(), on_signal, grace));
            let result = batch_job::run(options, stop).await;
            watcher.abort();
            notifications.send(&result).await;
            result
        });
        // A validation stopped by a signal may still be blocked on a read that never returns
        // (a FIFO with no writer): do not wait for it.
        rt.shutdown_timeout(std::time::Duration::from_secs(1));
        result
    });
    match result {
        Err(exit) => exit,
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
                // A job run again after it finished answers as it did: its failures are
                // still in the error file.
                JobStatus::Completed | JobStatus::AlreadyComplete if summary.failed > 0 => {
                    Exit::SomeFailed
                }
                JobStatus::Completed | JobStatus::AlreadyComplete => Exit::Success,
            }
        }
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
