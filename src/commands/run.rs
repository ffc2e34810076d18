//! `batch-runner run INPUT --output OUTPUT --engine-url URL`

use std::path::Path;

use batch_job::{Event, JobStatus, Phase, RunError, RunSummary, Secret, StopReason, StopSignal};

use batch_service::ui::run_view::{self, LiveJob, RunView};

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
    let (ui, ui_keep) = (args.ui, args.ui_keep);
    let title = args.output.clone();
    let options = match build(args) {
        Ok(options) => options,
        Err(e) => {
            tracing::error!("{e}");
            return Exit::Invalid;
        }
    };
    let page = match ui.map(|addr| job_page(addr, title, &options)).transpose() {
        Ok(page) => page,
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
            let live = LiveJob::default();
            let page_at = page.as_ref().and_then(|(l, _)| l.local_addr().ok());
            if let Some((listener, view)) = page {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => {
                        tokio::spawn(run_view::serve(listener, view, live.clone()));
                    }
                    Err(e) => tracing::warn!("cannot serve --ui: {e}"),
                }
            }
            let observed = live.clone();
            let result =
                batch_job::run_observed(options, None, stop, move |s| observed.started(s)).await;
            live.ended(ended_as(&result));
            watcher.abort();
            notifications.send(&result).await;
            if let Ok(summary) = &result {
                eprint!("{}", summary.render());
            }
            if let Some(addr) = page_at.filter(|_| !ui_keep.is_zero()) {
                keep_page(addr, ui_keep).await;
            }
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

/// Binds `--ui ADDR` (before the job starts, so a taken port is a usage error) and describes
/// the job's page.
fn job_page(
    addr: std::net::SocketAddr,
    title: String,
    options: &batch_job::RunOptions,
) -> Result<(std::net::TcpListener, RunView), String> {
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| format!("cannot listen on --ui {addr}: {e}"))?;
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!("the job's page: http://{bound}/ui/");
    if !bound.ip().is_loopback() {
        tracing::warn!(
            "--ui {bound} is not a loopback address: anyone who can reach it sees the job's \
             requests and results (the page has no key)"
        );
    }
    let regular = std::fs::metadata(&options.input).is_ok_and(|m| m.is_file());
    Ok((
        listener,
        RunView {
            title,
            state_dir: options.state_dir.clone(),
            input: regular.then(|| options.input.clone()),
            max_line_bytes: options.validate.max_line_bytes,
        },
    ))
}

/// `--ui-keep`: the page stays up for `keep`, or until a signal.
async fn keep_page(addr: std::net::SocketAddr, keep: std::time::Duration) {
    tracing::info!(
        "the job's page stays at http://{addr}/ui/ for {} (Ctrl-C to leave now)",
        batch_job::format_duration(keep)
    );
    let mut signals = Signals::new();
    tokio::select! {
        () = tokio::time::sleep(keep) => {}
        _ = signals.recv() => {}
    }
}

/// How the job's page names the end of `result`.
fn ended_as(result: &Result<RunSummary, RunError>) -> &'static str {
    match result {
        Ok(summary) => match summary.status {
            JobStatus::Completed | JobStatus::AlreadyComplete => "completed",
            JobStatus::Expired => "expired",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Interrupted => "interrupted",
        },
        Err(e) if e.is_resumable() => "interrupted",
        Err(_) => "failed",
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
