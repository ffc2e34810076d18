//! One job from input file to final files: validate, open (or resume) the state, dispatch,
//! checkpoint, finalize.
//!
//! Two stages run at once, connected by a bounded channel so memory stays flat however large the
//! input is:
//! - a reader thread (`feed`) streams the input a second time and turns each line still
//!   without a result into a request (or, with `--skip-invalid`, into an error record for a line
//!   the validation pass rejected), handing them over in batches so the threads rarely have to
//!   wake each other;
//! - the `dispatcher` keeps at most `--max-concurrency` requests in flight, each a task that
//!   sends, retries, formats its result line (`execute`) and appends it to the spool.
//!
//! Appending is a short copy into the spool's buffer under a lock, cheaper than handing each
//! record to a writer thread (measured: the wake-ups cost more than the writes). Checkpoints run
//! beside it (see `sink`); the deadline and the stop grace are timers that move the
//! [`StopSignal`].

pub mod deadline;
mod dispatcher;
mod execute;
mod feed;
mod grouping;
pub mod stop;
mod supervise;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use batch_format::LineRules;
use batch_storage::object::ObjectDir;
use batch_storage::{Location, StorageError};
use tokio::sync::{mpsc, oneshot};

pub use dispatcher::Ended;
use dispatcher::{Shared, dispatch};
pub use execute::CANCELLED_MESSAGE;
pub(crate) use execute::Ids;
use feed::Feed;
use supervise::Supervisor;

use crate::dispatch::{EngineError, EngineOptions, Engines, ProbeResult};
use crate::input::Changed;
use crate::input::validate::{
    Report, Source, ValidateError, ValidateOptions, Validation, validate,
};
use crate::launch::{LaunchError, LaunchSpec, Launched};
use crate::output::finalize::{Destination, FinalizeError, Order, finalize};
use crate::output::remote::{Remote, UploadError, deliver};
use crate::output::retry_failed::{Previous, seed};
use crate::report::metrics::{self, Stats};
use crate::report::progress::{ProgressDisplay, ProgressMode};
use crate::report::summary::{JobStatus, Paths, RunSummary};
use crate::run::deadline::Deadline;
use crate::run::stop::{StopReason, StopSignal};
use crate::state::finished::{Completion, IdDigest, remove_state};
use crate::state::mirror::Mirror;
use crate::state::outcome::LineOutcome;
use crate::state::sink::{CheckpointPolicy, Sink};
use crate::state::{self, NewJob, StateError};

/// The copy of an input that can be read only once (stdin, a pipe), in the state directory.
pub const STREAM_COPY: &str = "input.jsonl";

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub input: PathBuf,
    pub output: PathBuf,
    pub errors: PathBuf,
    pub state_dir: PathBuf,
    pub engines: EngineOptions,
    pub skip_invalid: bool,
    pub validate: ValidateOptions,
    pub metrics_listen: Option<SocketAddr>,
    pub progress: ProgressMode,
    pub progress_interval: Duration,
    pub order: Order,
    pub checkpoint: CheckpointPolicy,
    /// Discard an existing state directory instead of resuming from it.
    pub restart: bool,
    /// Keep the state directory after the final files are written.
    pub keep_state: bool,
    pub deadline: Deadline,
    /// How long requests in flight may still finish once the job is stopping.
    pub grace: Duration,
    /// Rerun only what an earlier run did not get a success for, merging with its output.
    pub retry_failed: Option<Previous>,
    /// Start an engine for the job (it is used together with `engines.urls`).
    pub launch: Option<LaunchSpec>,
    /// URLs the input comes from and the results go to. When set, `input`, `output` and `errors`
    /// are the local copies inside the state directory.
    pub remote: Remote,
    /// The state's home in object storage (`s3://bucket/prefix`); `state_dir` is then its local
    /// cache.
    pub state_remote: Option<reqwest::Url>,
    /// Send lines sharing a prompt prefix together, within windows of this many lines
    /// (`--order-dispatch prefix`); `None`: input order.
    pub group_window: Option<usize>,
    /// Stop (resumable) when no engine has answered for this long; `None`: wait as long as the
    /// completion window allows.
    pub engine_down_timeout: Option<Duration>,
    /// Refuse to start when every engine lists its models and none is the batch's.
    pub model_check: bool,
}

impl RunOptions {
    /// A job of `input` into `output` and `errors`, its state in `state_dir`, on `engines`
    /// (their concurrency included), with `grace` for the requests in flight when it stops; everything else off or at its default: no progress display, no metrics endpoint,
    /// no deadline, no engine launched, no remote input or results, input order, default
    /// checkpoints and validation, the model check on, no limit on how long engines may be
    /// down (a caller with a completion window sets the deadline instead).
    pub fn new(files: JobFiles, engines: EngineOptions, grace: Duration) -> Self {
        Self {
            input: files.input,
            output: files.output,
            errors: files.errors,
            state_dir: files.state_dir,
            engines,
            skip_invalid: false,
            validate: ValidateOptions::default(),
            metrics_listen: None,
            progress: ProgressMode::Off,
            // Unused while the progress display is off.
            progress_interval: Duration::from_secs(10),
            order: Order::Input,
            checkpoint: CheckpointPolicy::default(),
            restart: false,
            keep_state: false,
            deadline: Deadline::None,
            grace,
            retry_failed: None,
            launch: None,
            remote: Remote::default(),
            state_remote: None,
            group_window: None,
            engine_down_timeout: None,
            model_check: true,
        }
    }
}

/// The local files of a job.
pub struct JobFiles {
    pub input: PathBuf,
    pub output: PathBuf,
    pub errors: PathBuf,
    pub state_dir: PathBuf,
}

/// `OUTPUT.state`, next to the output so finalize can rename instead of copying.
pub fn default_state_dir(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_os_string();
    name.push(".state");
    PathBuf::from(name)
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{}", .0.render(&.1))]
    Invalid(Box<Report>, String),
    #[error(transparent)]
    Validate(#[from] ValidateError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Finalize(#[from] FinalizeError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("{0}")]
    Paths(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Upload(#[from] UploadError),
    /// Stopped (a signal) while the engines were being started; nothing was sent.
    #[error("stopped before any request was sent; run the same command again to start over")]
    StoppedBeforeStart,
    /// The launched engine kept dying; the job is checkpointed and can be resumed.
    #[error("{0}")]
    EngineGaveUp(String),
    /// No engine serves the batch's model.
    #[error(
        "the batch's model {model:?} is not served by any engine; they serve:\n{served}\nSet \
         body.model to one of these (or add --no-model-check if the engine accepts other names)"
    )]
    ModelNotServed { model: String, served: String },
    /// Checkpoints kept failing; the job stopped with what the last good one recorded.
    #[error("{0}")]
    CheckpointsFailed(String),
    /// The input's bytes differ from those validated; the results so far are kept.
    #[error(
        "{input} changed while the job was running: {what}. Nothing more was sent; the results \
         so far are kept in {state_dir}. Restore the original input and run the same command \
         again to resume, or add --restart to start over with the new input"
    )]
    InputChanged {
        input: String,
        what: String,
        state_dir: String,
    },
    /// The input ended but some validated lines got no result: never finalized.
    #[error(
        "only {results} of {planned} lines have a result although the input ended; the job is \
         not finalized. The results are kept in {state_dir}: run the same command again to \
         send the rest"
    )]
    Incomplete {
        results: u64,
        planned: u64,
        state_dir: String,
    },
}

impl RunError {
    /// True when the input or the command line is at fault (rather than the environment).
    pub fn is_usage(&self) -> bool {
        match self {
            RunError::Validate(e) => matches!(e, ValidateError::Read { .. }),
            RunError::Invalid(..)
            | RunError::Paths(_)
            | RunError::InputChanged { .. }
            | RunError::ModelNotServed { .. } => true,
            RunError::State(e) => !matches!(e, StateError::Io { .. }),
            RunError::Engine(e) => !matches!(e, EngineError::NoneReachable(_)),
            RunError::Io { .. }
            | RunError::Finalize(_)
            | RunError::Launch(_)
            | RunError::Storage(_)
            | RunError::Upload(_)
            | RunError::StoppedBeforeStart
            | RunError::EngineGaveUp(_)
            | RunError::CheckpointsFailed(_)
            | RunError::Incomplete { .. } => false,
        }
    }

    /// True when the job stopped with its state kept, so the same command resumes it.
    pub fn is_resumable(&self) -> bool {
        matches!(
            self,
            RunError::EngineGaveUp(_)
                | RunError::StoppedBeforeStart
                | RunError::Incomplete { .. }
                | RunError::CheckpointsFailed(_)
        )
    }

    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
        let context = context.into();
        move |source| RunError::Io { context, source }
    }
}

/// Runs the job to its end: completed, expired, cancelled, or interrupted (resumable). `stop`
/// is how the caller (signal handlers, a service) stops it early.
pub async fn run(options: RunOptions, stop: StopSignal) -> Result<RunSummary, RunError> {
    run_observed(options, stop, |_| {}).await
}

/// [`run`], handing the job's live counters to `observe` once they exist (the service's worker
/// reports them to the store while the job runs).
pub async fn run_observed(
    options: RunOptions,
    stop: StopSignal,
    observe: impl FnOnce(Arc<Stats>),
) -> Result<RunSummary, RunError> {
    let started = Instant::now();
    check_paths(&options)?;
    let remote_state = match &options.state_remote {
        Some(url) => Some(ObjectDir::open(url, &options.remote.s3)?),
        None => None,
    };
    if options.restart {
        if options.state_dir.exists() {
            std::fs::remove_dir_all(&options.state_dir).map_err(RunError::io(format!(
                "cannot remove the state directory {} (--restart)",
                options.state_dir.display()
            )))?;
        }
        if let Some(dir) = &remote_state {
            dir.remove_all().await?;
        }
    }
    let mirror = match remote_state {
        Some(dir) => Some(Arc::new(Mirror::restore(dir, &options.state_dir).await?)),
        None => None,
    };
    let existed = options.state_dir.exists();
    // Until the state is opened, a failure leaves no state directory this run created behind.
    let abandon = |e: RunError| {
        if !existed {
            let _ = std::fs::remove_dir_all(&options.state_dir);
        }
        e
    };
    check_destinations(&options).map_err(abandon)?;
    if let Some(from) = &options.remote.input {
        let remote = &options.remote;
        let size = from
            .fetch(&options.input, &remote.input_http, &remote.s3)
            .await
            .map_err(|e| abandon(e.into()))?;
        tracing::info!("downloaded {} ({size} bytes)", from.describe());
    }
    let mut validation = validate_input(&options, &stop).await.map_err(abandon)?;
    let report = std::mem::take(&mut validation.report);
    let input_name = options
        .remote
        .input
        .as_ref()
        .map_or_else(|| options.input.display().to_string(), Location::describe);
    if report.requests == 0 && report.invalid_lines == 0 || !report.valid && !options.skip_invalid {
        return Err(abandon(RunError::Invalid(Box::new(report), input_name)));
    }
    if !report.valid {
        tracing::warn!(
            "{} invalid lines go to the error file (--skip-invalid):\n{}",
            report.invalid_lines,
            report.render(&input_name)
        );
    }
    let planned = report.requests
        + if options.skip_invalid {
            report.invalid_lines
        } else {
            0
        };

    let shown = |local: &PathBuf, remote: &Option<Location>| {
        remote
            .as_ref()
            .map_or_else(|| local.display().to_string(), Location::describe)
    };
    let (output_name, errors_name) = (
        shown(&options.output, &options.remote.output),
        shown(&options.errors, &options.remote.errors),
    );
    let state_name = options.state_dir.display().to_string();
    let paths = || Paths {
        input: &input_name,
        output: &output_name,
        errors: &errors_name,
        state_dir: &state_name,
    };
    if let Some((succeeded, failed)) = already_finished(&options, &validation).map_err(abandon)? {
        tracing::info!(
            "{output_name} and {errors_name} already hold a result for every line of \
             {input_name} ({succeeded} succeeded, {failed} failed): nothing to do. Add --restart \
             to run every line again (replacing them), or --retry-failed {output_name} to rerun \
             only the failures"
        );
        return Ok(RunSummary::already_complete(
            paths(),
            report.lines,
            succeeded,
            failed,
        ));
    }

    let job = NewJob {
        input: &input_name,
        fingerprint: &validation.fingerprint,
        run_tag: crate::random_tag(),
    };
    let mut opened = state::open(&options.state_dir, job)?;
    let seeded = match &options.retry_failed {
        Some(previous) if !opened.resumed => {
            let (back, result) = seed_from(
                previous,
                &options,
                &validation.source,
                opened,
                planned,
                &input_name,
            )
            .await
            .map_err(abandon)?;
            opened = back;
            // A failed seed must not leave a fresh state behind: the next run would resume it
            // and run every line instead of only the failed ones.
            result.map_err(abandon)?;
            true
        }
        _ => false,
    };
    let already = opened.done.count();
    if opened.resumed {
        tracing::info!(
            "resuming from {}: {already} of {planned} lines already have a result",
            options.state_dir.display()
        );
    }

    let model = validation.settled.as_ref().map(|s| s.model.as_str());
    let starting = start_engines(&options, already < planned, model);
    let engines_started = tokio::select! {
        started = starting => started,
        // A model can take minutes to load: a stop meanwhile must not wait for it.
        () = stop.stopping() => Err(RunError::StoppedBeforeStart),
    };
    let (engines, launched) = match engines_started {
        Ok(started) => started,
        Err(RunError::StoppedBeforeStart) => return Err(RunError::StoppedBeforeStart),
        // Nothing was done: leave no state behind (but keep a failed engine's log).
        Err(e) if matches!(e, RunError::Launch(_)) => return Err(e),
        Err(e) => return Err(abandon(e)),
    };

    let stats = Arc::new(Stats::for_job(
        planned,
        &opened.counts,
        opened.manifest.totals,
    ));
    observe(stats.clone());
    let deadline = options.deadline.resolve(opened.manifest.started_at_ms);
    let ids = Ids::new(opened.manifest.run_tag.clone());
    let state_io = RunError::io(format!("state directory {}", options.state_dir.display()));
    let sink = Arc::new(
        Sink::new(
            opened.spool,
            opened.manifest,
            options.state_dir.clone(),
            options.checkpoint,
        )
        .map_err(state_io)?
        .with_mirror(mirror.clone()),
    );
    // The carried-over results (and, for a state in object storage, the job itself) are made
    // durable before anything else happens.
    if seeded || mirror.is_some() {
        sink.checkpoint_now()
            .await
            .map_err(RunError::io("checkpoint"))?;
    }
    let (finish_checkpoints, finish) = tokio::sync::oneshot::channel();
    let checkpoints = tokio::spawn(sink.clone().run_checkpoints(finish, stop.clone()));
    let stop_metrics = match options.metrics_listen {
        Some(addr) => Some(start_metrics(addr, stats.clone()).await?),
        None => None,
    };
    let progress =
        ProgressDisplay::start(stats.clone(), options.progress, options.progress_interval);
    let timers = tokio::spawn(stop_timers(stop.clone(), deadline, options.grace));

    let target = engines.target(validation.settled.as_ref().map_or("", |s| s.url.as_str()))?;
    let shared = Arc::new(Shared {
        engines,
        target,
        stats: stats.clone(),
        sink: sink.clone(),
        stop: stop.clone(),
        ids,
    });
    let (batch_tx, batches) = mpsc::channel(8);
    let reader = {
        let path = validation.source.clone();
        let rules = LineRules::settled(options.validate.rules.clone(), validation.settled);
        let max_line_bytes = options.validate.max_line_bytes;
        let group_window = options.group_window;
        let (invalid, done, blocks) = (validation.invalid, opened.done, validation.blocks);
        std::thread::spawn(move || {
            let feed = Feed {
                path: &path,
                blocks: &blocks,
                max_line_bytes,
                rules,
                invalid: &invalid,
                done: &done,
                group_window,
            };
            feed.run(&batch_tx)
        })
    };
    let supervisor = launched.map(|engine| {
        let restarts = options.launch.as_ref().map_or(0, |l| l.max_restarts);
        Supervisor::start(engine, shared.clone(), restarts)
    });
    let engine_count = options.engines.urls.len() + usize::from(options.launch.is_some());
    let max_in_flight = options.engines.concurrency.total(engine_count);
    let load = tokio::spawn(watch_load(shared.clone()));
    let watch_down = tokio::spawn(watch_engines(shared.clone(), options.engine_down_timeout));
    let ended = dispatch(shared, batches, max_in_flight).await;
    load.abort();
    watch_down.abort();
    let engines_down = watch_down.await.ok().flatten();
    let engine_gave_up = match supervisor {
        Some(s) => s.finish().await,
        None => None,
    };
    timers.abort();
    let _ = finish_checkpoints.send(());
    let checkpoints_gave_up = checkpoints.await.ok().flatten();
    progress.finish();
    if let Some(stop) = stop_metrics {
        let _ = stop.send(());
    }
    let read = reader
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the reader thread panicked")));
    if let Some(reason) = checkpoints_gave_up {
        // One last try: space may have been freed meanwhile.
        let _ = sink.checkpoint_now().await;
        return Err(RunError::CheckpointsFailed(reason));
    }
    let positions = sink.checkpoint_now().await.map_err(RunError::io(format!(
        "cannot write the spool in {}",
        options.state_dir.display()
    )))?;
    read.map_err(|e| match Changed::in_error(&e) {
        Some(what) => RunError::InputChanged {
            input: input_name.clone(),
            what: what.to_owned(),
            state_dir: options.state_dir.display().to_string(),
        },
        None => RunError::io(format!("cannot read {}", options.input.display()))(e),
    })?;

    if let Some(message) = engine_gave_up.or(engines_down) {
        return Err(RunError::EngineGaveUp(message));
    }
    let status = match ended {
        Ended::Complete if stats.done() != planned => {
            return Err(RunError::Incomplete {
                results: stats.done(),
                planned,
                state_dir: options.state_dir.display().to_string(),
            });
        }
        Ended::Complete => JobStatus::Completed,
        Ended::Stopped(StopReason::Expired) => JobStatus::Expired,
        Ended::Stopped(StopReason::Cancelled) => JobStatus::Cancelled,
        Ended::Stopped(StopReason::Interrupted) => JobStatus::Interrupted,
        Ended::SpoolFailed => {
            return Err(RunError::io(format!(
                "cannot write the spool in {}",
                options.state_dir.display()
            ))(std::io::Error::other("an append failed")));
        }
    };
    let finalize_time = if status == JobStatus::Interrupted {
        Duration::ZERO
    } else {
        let done = Completion {
            input_fingerprint: validation.fingerprint.current.clone(),
            succeeded: stats.count(LineOutcome::Succeeded),
            failed: stats.failed(),
        };
        deliver_results(&options, positions, mirror.as_deref(), &done).await?
    };
    let mut summary = RunSummary::new(paths(), status, report.lines, &stats, started.elapsed());
    summary.finalize_seconds = finalize_time.as_secs_f64();
    Ok(summary)
}

/// The validation pass, on a blocking thread; a stream is copied into the state directory. A
/// stop ends it at once: the thread is told to stop, but may be blocked on a read that never
/// returns (a FIFO with no writer), so it is not waited for.
async fn validate_input(options: &RunOptions, stop: &StopSignal) -> Result<Validation, RunError> {
    let cancel = Arc::new(AtomicBool::new(false));
    let copy_to = options.state_dir.join(STREAM_COPY);
    let (path, vopts, flag) = (
        options.input.clone(),
        options.validate.clone(),
        cancel.clone(),
    );
    let validating = tokio::task::spawn_blocking(move || {
        let source = Source {
            path: &path,
            copy_to: Some(&copy_to),
            cancel: Some(&flag),
        };
        validate(source, &vopts)
    });
    tokio::select! {
        done = validating => done
            .map_err(|e| RunError::io("validation")(std::io::Error::other(e)))
            .and_then(|v| v.map_err(RunError::from)),
        () = stop.stopping() => {
            cancel.store(true, Ordering::Relaxed);
            Err(RunError::StoppedBeforeStart)
        }
    }
}

/// A job this command already finished: `Some((succeeded, failed))` when there is nothing to
/// do. Either the state directory holds the completion marker for this input (a run killed while
/// removing its state), or there is no state and the final files already hold one result per
/// line of the input. A finished job of another input (or one to rerun with --retry-failed)
/// has its leftovers removed and runs as a new job.
fn already_finished(
    options: &RunOptions,
    validation: &Validation,
) -> Result<Option<(u64, u64)>, RunError> {
    let dir = &options.state_dir;
    let remove = |keep: Option<&Path>| {
        remove_state(dir, keep).map_err(RunError::io(format!(
            "cannot remove the finished job's state in {}",
            dir.display()
        )))
    };
    if let Some(done) = Completion::load(dir) {
        if validation.fingerprint.matches(&done.input_fingerprint) && options.retry_failed.is_none()
        {
            if !options.keep_state {
                remove(None)?;
            }
            return Ok(Some((done.succeeded, done.failed)));
        }
        // The copy of this run's input (a stream, a download) lives in the same directory.
        remove(
            Some(&validation.source)
                .filter(|s| s.starts_with(dir))
                .map(PathBuf::as_path),
        )?;
        return Ok(None);
    }
    let resumable = dir.join(state::MANIFEST).exists();
    if options.restart
        || resumable
        || options.retry_failed.is_some()
        || options.remote.output.is_some()
        || !options.output.exists()
    {
        return Ok(None);
    }
    let mut found = IdDigest::default();
    let mut count = |path: &Path| {
        found
            .add_results(path)
            .map_err(RunError::io(format!("cannot read {}", path.display())))
    };
    let succeeded = count(&options.output)?;
    let failed = count(&options.errors)?;
    if found != validation.ids {
        return Ok(None);
    }
    if dir.exists() {
        remove(None)?;
    }
    Ok(Some((succeeded, failed)))
}

/// Fails now, not after hours of work, when a result file or the state cannot be written:
/// a directory where a file goes, a directory that cannot be created or written to.
fn check_destinations(options: &RunOptions) -> Result<(), RunError> {
    let finals = [
        ("OUTPUT", &options.output),
        ("the error file (--errors)", &options.errors),
    ];
    // (Remote results are finalized inside the state directory, then uploaded.)
    for (what, path) in finals {
        if path.is_dir() {
            return Err(RunError::Paths(format!(
                "{what} {} is a directory; give a file path",
                path.display()
            )));
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        writable_dir(dir).map_err(RunError::io(format!(
            "cannot write {what} {}: its directory {} is not writable",
            path.display(),
            dir.display()
        )))?;
    }
    if options.state_dir.exists() && !options.state_dir.is_dir() {
        return Err(RunError::Paths(format!(
            "the state directory {} is a file; remove it or give another --state-dir",
            options.state_dir.display()
        )));
    }
    writable_dir(&options.state_dir).map_err(RunError::io(format!(
        "cannot write the state directory {}",
        options.state_dir.display()
    )))
}

/// Creates `dir` if needed and proves a file can be created in it.
fn writable_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    tempfile::Builder::new()
        .prefix(".batch-runner-check")
        .tempfile_in(dir)
        .map(drop)
}

/// Refuses outputs that would overwrite the input or each other.
fn check_paths(options: &RunOptions) -> Result<(), RunError> {
    let input = same_file_key(&options.input);
    let output = same_file_key(&options.output);
    let errors = same_file_key(&options.errors);
    if output == input || errors == input {
        return Err(RunError::Paths(format!(
            "the output would overwrite the input {}; choose another --output / --errors",
            options.input.display()
        )));
    }
    if output == errors {
        return Err(RunError::Paths(format!(
            "--output and --errors are the same file ({}); give them different paths",
            options.output.display()
        )));
    }
    Ok(())
}

/// A path made comparable: the canonical parent directory plus the file name (the file itself
/// need not exist yet).
fn same_file_key(path: &Path) -> PathBuf {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_owned());
    dir.join(path.file_name().unwrap_or_default())
}

/// Seeds a fresh job with an earlier run's successes (`--retry-failed`), on a blocking thread.
/// Hands `opened` back with the seeding's result (the outer error: the thread itself failed).
async fn seed_from(
    previous: &Previous,
    options: &RunOptions,
    input: &Path,
    mut opened: state::Opened,
    planned: u64,
    input_name: &str,
) -> Result<(state::Opened, Result<(), RunError>), RunError> {
    let (previous, input) = (previous.clone(), input.to_owned());
    let max_line_bytes = options.validate.max_line_bytes;
    let joined = tokio::task::spawn_blocking(move || {
        let o = &mut opened;
        let result = seed(
            &previous,
            &input,
            max_line_bytes,
            &mut o.spool,
            &mut o.done,
            &mut o.counts,
        );
        (opened, result)
    })
    .await;
    let (opened, result) =
        joined.map_err(|e| RunError::io("--retry-failed")(std::io::Error::other(e)))?;
    let mut opened = opened;
    let result = result
        .map_err(RunError::io("--retry-failed"))
        .map(|seeded| {
            // The merged job's totals include what the carried-over successes used.
            let totals = &mut opened.manifest.totals;
            totals.input_tokens += seeded.usage.input_tokens;
            totals.output_tokens += seeded.usage.output_tokens;
            totals.total_tokens += seeded.usage.total_tokens;
            tracing::info!(
                "--retry-failed: {} earlier successes kept; {} lines to run ({} listed as failed)",
                seeded.reused,
                planned.saturating_sub(seeded.reused),
                seeded.listed_failed
            );
            if seeded.unknown > 0 {
                tracing::warn!(
                    "--retry-failed: {} earlier results name a custom_id that is not in \
                 {input_name}; they are left out",
                    seeded.unknown
                );
            }
        });
    Ok((opened, result))
}

/// Writes the final files, delivers remote ones, and removes the state (unless kept). Returns
/// the time the final files took to write.
async fn deliver_results(
    options: &RunOptions,
    positions: crate::state::spool::Positions,
    mirror: Option<&Mirror>,
    done: &Completion,
) -> Result<Duration, RunError> {
    let to = Destination {
        output: &options.output,
        errors: &options.errors,
    };
    let finalizing = Instant::now();
    let spool = crate::state::spool::SpoolFiles::in_dir(&options.state_dir);
    finalize(&spool, positions, options.order, &to)?;
    let finalize_time = finalizing.elapsed();
    let uploads: Vec<(PathBuf, Location)> = [
        (&options.output, &options.remote.output),
        (&options.errors, &options.remote.errors),
    ]
    .into_iter()
    .filter_map(|(local, remote)| remote.clone().map(|r| (local.clone(), r)))
    .collect();
    if !uploads.is_empty() {
        let remote = &options.remote;
        deliver(&options.state_dir, uploads, &remote.output_http, &remote.s3).await?;
    }
    // From here on a rerun knows the job is done, whatever happens to the state.
    done.store(&options.state_dir)
        .map_err(RunError::io(format!(
            "cannot record the completion in {}",
            options.state_dir.display()
        )))?;
    if !options.keep_state {
        remove_state(&options.state_dir, None).map_err(RunError::io(format!(
            "cannot remove the state directory {}",
            options.state_dir.display()
        )))?;
        // The results are delivered: a leftover remote state is only clutter.
        if let Some(mirror) = mirror
            && let Err(e) = mirror.remove().await
        {
            tracing::warn!("the job is done, but its state in object storage remains: {e}");
        }
    }
    Ok(finalize_time)
}

/// With adaptive limits: reads the engines' queues, and shows the current limit in the progress
/// output and metrics.
async fn watch_load(shared: Arc<Shared>) {
    if shared.engines.concurrency_limit().is_none() {
        return;
    }
    let show = async {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let limit = shared.engines.concurrency_limit().unwrap_or(0) as u64;
            let stats = &shared.stats;
            let relaxed = std::sync::atomic::Ordering::Relaxed;
            stats.concurrency_limit.store(limit, relaxed);
            stats
                .at_engines
                .store(shared.engines.at_engines() as u64, relaxed);
        }
    };
    tokio::join!(shared.engines.watch_queues(shared.stop.clone()), show);
}

/// Shows how many engines are skipped (progress, metrics); when every engine has failed for
/// `timeout`, stops the job (resumable) and returns why, rather than crawling on at one probe
/// per cool-down for hours.
async fn watch_engines(shared: Arc<Shared>, timeout: Option<Duration>) -> Option<String> {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let down = shared.engines.down() as u64;
        shared
            .stats
            .engines_down
            .store(down, std::sync::atomic::Ordering::Relaxed);
        let Some(limit) = timeout else { continue };
        if shared.engines.all_down_for().is_some_and(|d| d >= limit) {
            let reason = format!(
                "no engine has answered for {} (--engine-down-timeout): stopped. The results so \
                 far are kept; run the same command again to resume once an engine is up",
                crate::report::progress::format_duration(limit)
            );
            shared.stop.request(StopReason::Interrupted);
            shared.stop.abort(StopReason::Interrupted);
            return Some(reason);
        }
    }
}

/// Fires the deadline, and ends the grace once the job is stopping.
async fn stop_timers(stop: StopSignal, deadline: Option<SystemTime>, grace: Duration) {
    let expire = async {
        match deadline {
            Some(at) => {
                let left = at
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                tokio::time::sleep(left).await;
                if stop.phase() == crate::run::stop::Phase::Running {
                    tracing::warn!("the completion window has ended: stopping");
                }
                stop.request(StopReason::Expired);
            }
            None => std::future::pending().await,
        }
    };
    let end_grace = async {
        stop.stopping().await;
        tokio::time::sleep(grace).await;
        if let Some(reason) = stop.phase().reason() {
            stop.abort(reason);
        }
    };
    tokio::join!(expire, end_grace);
}

/// Launches the engine (when asked and there is work left) and sets up every engine; probes them
/// when there is work left.
async fn start_engines(
    options: &RunOptions,
    work_left: bool,
    model: Option<&str>,
) -> Result<(Engines, Option<Launched>), RunError> {
    let mut engine_options = options.engines.clone();
    let launched = match &options.launch {
        Some(spec) if work_left => {
            let engine = spec.start().await?;
            engine_options.urls.insert(0, engine.url.clone());
            Some(engine)
        }
        _ => None,
    };
    let engines = Engines::new(&engine_options)?;
    if work_left {
        let probes = engines.probe().await?;
        log_probes(&probes);
        if options.model_check
            && let Some(model) = model
        {
            check_model(&probes, model)?;
        }
    }
    Ok((engines, launched))
}

/// Refuses a batch whose model no engine serves, when every engine listed its models: each line
/// would only get a 400 or 404. An engine that could not list them may serve it under another
/// name, so it lets the run go ahead.
fn check_model(probes: &[ProbeResult], model: &str) -> Result<(), RunError> {
    let lists: Option<Vec<(&str, &[String])>> = probes
        .iter()
        .map(|p| p.models.as_deref().map(|m| (p.url.as_str(), m)))
        .collect();
    let Some(lists) = lists else {
        return Ok(());
    };
    if lists
        .iter()
        .any(|(_, models)| models.iter().any(|m| m == model))
    {
        return Ok(());
    }
    let served: Vec<String> = lists
        .iter()
        .map(|(url, models)| format!("  {url}: {}", models.join(", ")))
        .collect();
    Err(RunError::ModelNotServed {
        model: model.to_owned(),
        served: served.join("\n"),
    })
}

fn log_probes(probes: &[ProbeResult]) {
    for p in probes {
        match &p.outcome {
            Ok(401 | 403) => tracing::warn!(
                "{} refused GET /v1/models as unauthorised; check --api-key",
                p.url
            ),
            Ok(_) => tracing::debug!("{} is reachable", p.url),
            Err(e) => tracing::warn!("{} is not reachable ({e}); it will be retried later", p.url),
        }
    }
}

async fn start_metrics(
    addr: SocketAddr,
    stats: Arc<Stats>,
) -> Result<oneshot::Sender<()>, RunError> {
    let listener = metrics::bind(addr).await.map_err(RunError::io("metrics"))?;
    if let Ok(local) = listener.local_addr() {
        tracing::info!("serving metrics on http://{local}/metrics");
    }
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        if let Err(e) = metrics::serve(listener, stats, shutdown).await {
            tracing::warn!("the metrics server stopped: {e}");
        }
    });
    Ok(stop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_state_dir_sits_next_to_the_output() {
        assert_eq!(
            default_state_dir(Path::new("out/r.jsonl")),
            PathBuf::from("out/r.jsonl.state")
        );
    }
}
