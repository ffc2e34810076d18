//! One batch in one process: `batch-runner worker --batch ID --fence N`.
//!
//! The worker validates the input (`validating`), runs the job pipeline of `run` on it
//! (`in_progress`, counters written back every `report_every`), then turns the final files into
//! File objects and ends the batch (`finalizing` → `completed`, or `expired`, `cancelled`).
//! Every write names the fence the scheduler gave it: once another worker has taken the batch
//! over, the writes match nothing and this worker stops without touching the results.
//!
//! The job state lives in `WORK_DIR/ID/state`, so a worker started after a crash resumes from
//! the last checkpoint. Once the pipeline has finished, `WORK_DIR/ID/outcome.json` records how,
//! so a crash while the files are being registered does not run (or expire) anything twice.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::Instrument;

use batch_job::{
    Deadline, JobFiles, JobStatus, Remote, RunError, RunOptions, RunSummary, Stats, StopReason,
    StopSignal, ValidateOptions, Validation, run_observed, validate_file,
};
use serde::{Deserialize, Serialize};

use batch_storage::object::ObjectDir;
use batch_storage::{StorageError, absent_is_fine};

use crate::blobs::Blobs;
use crate::ids;
use crate::model::{BatchError, BatchProgress};
use crate::settings::WorkerSettings;
use crate::store::{
    BatchRow, BatchStatus, Counts, FileRow, Finish, LeaseLost, Store, StoreError, now_secs,
};
use crate::{BatchWork, DataDir};

/// How a worker ended; the process exit code tells the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerEnd {
    /// The batch reached a terminal status (or already had one).
    Done,
    /// The worker gave the batch up (stopped, or another worker holds it now); not a failure.
    GaveUp,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no batch {0} in the database")]
    NoBatch(String),
    #[error("{0}")]
    Run(#[from] RunError),
    #[error(transparent)]
    Blob(#[from] crate::blobs::BlobError),
    #[error(transparent)]
    Storage(#[from] batch_storage::StorageError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> WorkerError {
    let context = context.into();
    move |source| WorkerError::Io { context, source }
}

/// What the pipeline ended with, kept until the batch's files are registered.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BatchOutcome {
    status: BatchStatus,
    /// The request count, when only the worker knows it (a batch cancelled before it ran).
    #[serde(default)]
    total: Option<i64>,
    completed: i64,
    failed: i64,
    input_tokens: i64,
    output_tokens: i64,
    progress: BatchProgress,
}

pub struct Worker {
    pub store: Store,
    pub blobs: Blobs,
    pub work_root: PathBuf,
    /// Where the worker log is kept once the batch has ended ([`DataDir::logs`]).
    pub log_root: PathBuf,
    pub settings: WorkerSettings,
    pub batch: String,
    pub fence: i64,
    /// Notified when the service pokes the worker (a byte on its lifeline): look at the batch's
    /// status now rather than at the next report, so a cancel stops sending at once.
    pub poke: Arc<tokio::sync::Notify>,
}

/// The byte the scheduler writes on a worker's lifeline when its batch was cancelled.
pub const POKE: u8 = b'c';

impl Worker {
    /// Runs the batch to its end. `stop` is moved to draining when the worker must give up
    /// (its lifeline to the service closed, a signal).
    pub async fn run(&self, stop: StopSignal) -> Result<WorkerEnd, WorkerError> {
        let batch = self
            .store
            .batch_by_id(&self.batch)
            .await?
            .ok_or_else(|| WorkerError::NoBatch(self.batch.clone()))?;
        if batch.fence != self.fence {
            tracing::warn!("the batch is held by a newer worker; leaving it");
            return Ok(WorkerEnd::GaveUp);
        }
        if batch.is_terminal() {
            return Ok(WorkerEnd::Done);
        }
        let work = BatchWork::new(&self.work_root, &self.batch);
        std::fs::create_dir_all(work.dir())
            .map_err(io(format!("cannot create {}", work.dir().display())))?;
        let lost = Arc::new(AtomicBool::new(false));
        let heartbeat = tokio::spawn(
            heartbeat(
                self.store.clone(),
                self.batch.clone(),
                self.fence,
                self.settings.lease,
                stop.clone(),
                lost.clone(),
            )
            .in_current_span(),
        );
        let ended = self.drive(&batch, &work, stop.clone()).await;
        heartbeat.abort();
        if lost.load(Ordering::Relaxed) {
            tracing::warn!("the lease was taken over; stopping");
            return Ok(WorkerEnd::GaveUp);
        }
        match ended {
            Ok(WorkerEnd::Done) => {
                // The batch is recorded: its job state is no longer needed.
                if let Some(url) = self.settings.object_url(&format!("work/{}", self.batch)) {
                    let removed = match url {
                        Ok(url) => match ObjectDir::open(&url, &self.settings.s3) {
                            Ok(dir) => dir.remove_all().await,
                            Err(e) => Err(e),
                        },
                        Err(e) => Err(e),
                    };
                    if let Err(e) = removed {
                        tracing::warn!("cannot remove the job state in object storage: {e}");
                    }
                }
                self.keep_log(&work);
                if let Err(e) = std::fs::remove_dir_all(work.dir()) {
                    tracing::warn!("cannot remove {}: {e}", work.dir().display());
                }
                Ok(WorkerEnd::Done)
            }
            Ok(WorkerEnd::GaveUp) => {
                let _ = self.store.release(&self.batch, self.fence).await;
                Ok(WorkerEnd::GaveUp)
            }
            Err(e) => Err(e),
        }
    }

    /// Moves the log of this batch's workers out of the work directory before it goes, so the
    /// batch's story can still be read. (This worker's own stderr is that file: later lines
    /// land in the kept one.)
    fn keep_log(&self, work: &BatchWork) {
        let kept = DataDir::kept_log(&self.log_root, &self.batch);
        let moved = std::fs::create_dir_all(&self.log_root)
            .and_then(|()| std::fs::rename(work.log(), &kept));
        if let Err(e) = moved {
            tracing::warn!("cannot keep the worker log as {}: {e}", kept.display());
        }
    }

    async fn drive(
        &self,
        batch: &BatchRow,
        work: &BatchWork,
        stop: StopSignal,
    ) -> Result<WorkerEnd, WorkerError> {
        let outcome_path = work.outcome();
        if let Some(outcome) = read_outcome(&outcome_path)? {
            return self.register(batch, work, outcome).await;
        }
        let state = work.state();
        let state_remote = self.take_over_state(&state).await?;
        let input = self
            .blobs
            .local_copy(&batch.input_blob, &work.input())
            .await?;
        if batch.status == BatchStatus::Cancelling
            && batch.in_progress_at.is_none()
            && !state.exists()
        {
            return self.cancel_unsent(batch, work, &input).await;
        }
        // A batch past validation (a worker restarted) is validated again by the pipeline;
        // otherwise the pipeline is handed this validation instead of reading the input again.
        let (model, validated) = match &batch.model {
            Some(model) if batch.status != BatchStatus::Validating => (model.clone(), None),
            _ => match self.validate(batch, &input).await? {
                Ok((model, validation)) => (model, Some(validation)),
                Err(end) => return Ok(end),
            },
        };
        // A cancel that came during validation: nothing may be sent.
        if !state.exists() && self.store.status(&self.batch).await? == Some(BatchStatus::Cancelling)
        {
            return self.cancel_unsent(batch, work, &input).await;
        }
        let Some(urls) = self.settings.engines_for(&model) else {
            return self.fail_with(vec![no_engine(&model)]).await;
        };
        let files = JobFiles {
            input,
            output: work.output(),
            errors: work.errors(),
            state_dir: state,
        };
        let options = self.run_options(batch, files, urls, state_remote);
        let Some(outcome) = self.run_job(batch, options, validated, stop).await? else {
            return Ok(WorkerEnd::GaveUp);
        };
        write_outcome(&outcome_path, &outcome)?;
        self.register(batch, work, outcome).await
    }

    /// The job's options for this batch: the service's settings, its engines, and its window.
    fn run_options(
        &self,
        batch: &BatchRow,
        files: JobFiles,
        urls: &[String],
        state_remote: Option<reqwest::Url>,
    ) -> RunOptions {
        let engines = self.settings.engine_options(urls);
        RunOptions {
            validate: self.validate_options(),
            checkpoint: self.settings.checkpoint(),
            // The worker removes the state once the batch is recorded, not before.
            keep_state: true,
            // A batch waits for its engines until its completion window ends.
            deadline: Deadline::At(
                UNIX_EPOCH + Duration::from_secs(batch.expires_at.max(0) as u64),
            ),
            remote: Remote {
                s3: self.settings.s3.clone(),
                ..Remote::default()
            },
            state_remote,
            // Pools already route batches by the models their engines list.
            model_check: false,
            ..RunOptions::new(files, engines, self.settings.grace)
        }
    }

    /// Runs the job, reporting its progress to the store as it goes; how the batch ended, or
    /// none when the worker gives the batch back (stopped, or a resumable failure).
    async fn run_job(
        &self,
        batch: &BatchRow,
        options: RunOptions,
        validated: Option<Validation>,
        stop: StopSignal,
    ) -> Result<Option<BatchOutcome>, WorkerError> {
        let (stats_tx, stats_rx) = tokio::sync::oneshot::channel::<Arc<Stats>>();
        let observed = Arc::new(std::sync::OnceLock::new());
        let keep = observed.clone();
        let latency = LatencyBase::of(batch);
        let reporter = tokio::spawn(
            report_loop(
                self.store.clone(),
                self.batch.clone(),
                self.fence,
                self.settings.report_every,
                stop.clone(),
                (stats_rx, latency, self.poke.clone()),
            )
            .in_current_span(),
        );
        let result = run_observed(options, validated, stop, move |stats| {
            let _ = keep.set(stats.clone());
            let _ = stats_tx.send(stats);
        })
        .await;
        reporter.abort();
        let summary = match result {
            Ok(summary) => summary,
            Err(e) if e.is_resumable() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let status = match summary.status {
            JobStatus::Completed | JobStatus::AlreadyComplete => BatchStatus::Completed,
            JobStatus::Expired => BatchStatus::Expired,
            JobStatus::Cancelled => BatchStatus::Cancelled,
            JobStatus::Interrupted => return Ok(None),
        };
        let latency = latency.with(observed.get().map(Arc::as_ref));
        Ok(Some(outcome_of(status, &summary, latency)))
    }

    /// With object storage, each claim keeps its job state under its own prefix
    /// (`work/BATCH/fence-N`), so a worker that lost its lease can only ever write where nobody
    /// reads any more. The newest earlier state is restored into the local cache first; the
    /// pipeline then uploads it whole as the new prefix's first segment.
    async fn take_over_state(&self, local: &Path) -> Result<Option<reqwest::Url>, WorkerError> {
        let url_of = |fence: i64| {
            self.settings
                .object_url(&format!("work/{}/fence-{fence}", self.batch))
                .transpose()
        };
        let Some(mine) = url_of(self.fence)? else {
            return Ok(None);
        };
        for fence in (1..self.fence).rev() {
            let Some(url) = url_of(fence)? else { break };
            let dir = ObjectDir::open(&url, &self.settings.s3)?;
            if dir.get("manifest.json").await?.is_none() {
                continue;
            }
            tracing::info!("resuming from the state of claim {fence}");
            // A local cache left by an earlier claim of this host belongs to another line of
            // history than the newest state (checkpoint counters of the two are not
            // comparable): rebuild from the newest state instead of choosing by counter.
            let manifest = local.join(batch_job::MANIFEST);
            absent_is_fine(std::fs::remove_file(&manifest))
                .map_err(io(format!("cannot remove {}", manifest.display())))?;
            match batch_job::Mirror::restore(dir, local).await {
                Ok(_) => break,
                // Retrying would find the same damage: an older state (or none, and the batch
                // starts over) costs re-sent requests, not the batch.
                Err(e @ StorageError::Damaged { .. }) => {
                    tracing::warn!("{e}; falling back to an earlier claim's state, or the start");
                    // What the failed restore left is no state at all.
                    absent_is_fine(std::fs::remove_dir_all(local))
                        .map_err(io(format!("cannot remove {}", local.display())))?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Some(mine))
    }

    fn validate_options(&self) -> ValidateOptions {
        ValidateOptions {
            rules: batch_format::RulesConfig {
                extra_urls: self.settings.extra_endpoints.clone(),
            },
            max_listed_errors: 1000,
            ..ValidateOptions::default()
        }
    }

    /// The `validating` phase: the whole file against every rule, the batch's endpoint, and an
    /// engine for its model. Returns the model and the validation (for the pipeline), or how
    /// the batch ended.
    async fn validate(
        &self,
        batch: &BatchRow,
        input: &Path,
    ) -> Result<Result<(String, Validation), WorkerEnd>, WorkerError> {
        let (path, options) = (input.to_owned(), self.validate_options());
        let validation = tokio::task::spawn_blocking(move || validate_file(&path, &options))
            .await
            .map_err(|e| io("validation")(std::io::Error::other(e)))?;
        let validation = match validation {
            Ok(v) => v,
            Err(e) => {
                let error = batch_error("invalid_file", e.to_string(), None, None);
                return Ok(Err(self.fail_with(vec![error]).await?));
            }
        };
        let report = &validation.report;
        let mut errors: Vec<BatchError> = report
            .errors
            .iter()
            .map(|e| {
                batch_error(
                    e.code,
                    e.message.clone(),
                    e.param.map(str::to_owned),
                    e.line,
                )
            })
            .collect();
        if report.errors_not_listed > 0 {
            errors.push(batch_error(
                "too_many_errors",
                format!("and {} more problems not listed", report.errors_not_listed),
                None,
                None,
            ));
        }
        if report.requests == 0 && errors.is_empty() {
            errors.push(batch_error(
                "empty_file",
                "The input file has no request lines".into(),
                None,
                None,
            ));
        }
        if let Some(endpoint) = &report.endpoint
            && endpoint != &batch.endpoint
        {
            errors.push(batch_error(
                "url_mismatch",
                format!(
                    "The requests use the url {endpoint:?} but the batch was created for the \
                     endpoint {:?}; create the batch with endpoint {endpoint:?}",
                    batch.endpoint
                ),
                Some("url".into()),
                None,
            ));
        }
        let model = report.model.clone().unwrap_or_default();
        if errors.is_empty() && self.settings.engines_for(&model).is_none() {
            errors.push(no_engine(&model));
        }
        if !errors.is_empty() {
            return Ok(Err(self.fail_with(errors).await?));
        }
        match self
            .store
            .start(
                &self.batch,
                self.fence,
                report.requests as i64,
                Some(&model),
            )
            .await?
        {
            Ok(()) => Ok(Ok((model, validation))),
            Err(LeaseLost) => Ok(Err(WorkerEnd::GaveUp)),
        }
    }

    async fn fail_with(&self, errors: Vec<BatchError>) -> Result<WorkerEnd, WorkerError> {
        let text = serde_json::to_string(&errors).unwrap_or_else(|_| "[]".into());
        Ok(
            match self.store.fail(&self.batch, self.fence, &text).await? {
                Ok(()) => WorkerEnd::Done,
                Err(LeaseLost) => WorkerEnd::GaveUp,
            },
        )
    }

    /// Ends a batch cancelled before any request was sent: every line of its input is a
    /// `batch_cancelled` record in the error file, and `total` counts them, as when a cancel
    /// stops a running batch.
    async fn cancel_unsent(
        &self,
        batch: &BatchRow,
        work: &BatchWork,
        input: &Path,
    ) -> Result<WorkerEnd, WorkerError> {
        let max_line_bytes = self.validate_options().max_line_bytes;
        let ending = Ending {
            code: "batch_cancelled",
            message: batch_job::CANCELLED_MESSAGE,
        };
        let salvaged = final_files(work, input, max_line_bytes, ending).await?;
        let outcome = BatchOutcome {
            status: BatchStatus::Cancelled,
            total: Some(salvaged.unfinished as i64),
            completed: 0,
            failed: 0,
            input_tokens: 0,
            output_tokens: 0,
            progress: BatchProgress::default(),
        };
        write_outcome(&work.outcome(), &outcome)?;
        self.register(batch, work, outcome).await
    }

    /// Registers the final files as File objects and ends the batch, in one transaction.
    async fn register(
        &self,
        batch: &BatchRow,
        work: &BatchWork,
        outcome: BatchOutcome,
    ) -> Result<WorkerEnd, WorkerError> {
        if outcome.status == BatchStatus::Completed {
            self.store.finalizing(&self.batch, self.fence).await?;
        }
        let output = adopt(&self.blobs, batch, &work.output(), "output").await?;
        let errors = adopt(&self.blobs, batch, &work.errors(), "error").await?;
        let finish = Finish {
            total: outcome.total,
            status: outcome.status,
            counts: Counts {
                completed: outcome.completed,
                failed: outcome.failed,
                input_tokens: outcome.input_tokens,
                output_tokens: outcome.output_tokens,
            },
            progress: serde_json::to_string(&outcome.progress).unwrap_or_default(),
            output,
            errors,
        };
        match self.store.finish(&self.batch, self.fence, &finish).await? {
            Ok(()) => {
                tracing::info!(
                    "the batch is {}: {} requests succeeded, {} failed",
                    finish.status.as_str(),
                    finish.counts.completed,
                    finish.counts.failed
                );
                Ok(WorkerEnd::Done)
            }
            Err(LeaseLost) => {
                // Another worker owns the batch now; the files made here are not its.
                for file in [finish.output, finish.errors].into_iter().flatten() {
                    let _ = self.blobs.remove(&file.blob).await;
                }
                Ok(WorkerEnd::GaveUp)
            }
        }
    }
}

/// How the lines of a batch that cannot run end: the code and message of their error lines.
#[derive(Debug, Clone, Copy)]
pub struct Ending {
    pub code: &'static str,
    pub message: &'static str,
}

/// The message of the lines a failed batch never ran.
pub const FAILED_MESSAGE: &str =
    "This request was not executed because the batch failed (its worker kept failing).";

/// Writes a batch's final files into `work` from its job state there (none: nothing ran), every
/// line without a result ending as `ending` says.
pub async fn final_files(
    work: &BatchWork,
    input: &Path,
    max_line_bytes: usize,
    ending: Ending,
) -> Result<batch_job::Salvaged, WorkerError> {
    let (work, input) = (work.clone(), input.to_owned());
    tokio::task::spawn_blocking(move || {
        let (output, errors) = (work.output(), work.errors());
        let to = batch_job::Destination {
            output: &output,
            errors: &errors,
        };
        let state = work.state();
        batch_job::salvage(
            &state,
            &input,
            &to,
            max_line_bytes,
            ending.code,
            ending.message,
        )
    })
    .await
    .map_err(|e| io("writing the final files")(std::io::Error::other(e)))?
    .map_err(io("cannot write the batch's final files"))
}

/// Publishes what a batch that failed (its worker kept dying) had finished: the successes as its
/// output file, the failures and every unfinished line (`batch_failed`) as its error file; then
/// removes its work directory. The batch stays `failed`.
pub async fn publish_failed(
    store: &Store,
    blobs: &Blobs,
    work_root: &Path,
    id: &str,
) -> Result<(), WorkerError> {
    let Some(batch) = store.batch_by_id(id).await? else {
        return Ok(());
    };
    let work = BatchWork::new(work_root, id);
    std::fs::create_dir_all(work.dir())
        .map_err(io(format!("cannot create {}", work.dir().display())))?;
    let input = blobs.local_copy(&batch.input_blob, &work.input()).await?;
    let ending = Ending {
        code: "batch_failed",
        message: FAILED_MESSAGE,
    };
    let max_line_bytes = batch_job::DEFAULT_MAX_LINE_BYTES;
    let salvaged = final_files(&work, &input, max_line_bytes, ending).await?;
    let output = adopt(blobs, &batch, &work.output(), "output").await?;
    let errors = adopt(blobs, &batch, &work.errors(), "error").await?;
    let counts = Counts {
        completed: salvaged.succeeded as i64,
        failed: salvaged.failed as i64,
        input_tokens: batch.input_tokens,
        output_tokens: batch.output_tokens,
    };
    // Nothing is in flight any more; the latency seen so far stays in the metrics.
    let mut progress = earlier_progress(&batch);
    progress.in_flight = 0;
    progress.eta_seconds = None;
    progress.requests_per_second = 0.0;
    let progress = serde_json::to_string(&progress).unwrap_or_default();
    let blobs_made: Vec<String> = [&output, &errors]
        .into_iter()
        .flatten()
        .map(|f| f.blob.clone())
        .collect();
    if !store
        .attach_results(id, output, errors, &counts, &progress)
        .await?
    {
        for blob in blobs_made {
            let _ = blobs.remove(&blob).await;
        }
        return Ok(());
    }
    tracing::info!(
        "batch {id} failed; its results are published: {} succeeded, {} failed, {} not run",
        salvaged.succeeded,
        salvaged.failed,
        salvaged.unfinished
    );
    absent_is_fine(std::fs::remove_dir_all(work.dir()))
        .map_err(io(format!("cannot remove {}", work.dir().display())))
}

/// The progress an earlier worker of the batch last reported (default: none).
fn earlier_progress(batch: &BatchRow) -> BatchProgress {
    batch
        .progress
        .as_deref()
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or_default()
}

/// Engine latency counters carried over from earlier workers of the batch, so the service's
/// latency metrics (counters) never go back when a worker is restarted.
#[derive(Debug, Clone, Copy, Default)]
struct LatencyBase {
    count: u64,
    sum_seconds: f64,
}

impl LatencyBase {
    fn of(batch: &BatchRow) -> Self {
        let p = earlier_progress(batch);
        Self {
            count: p.latency_count,
            sum_seconds: p.latency_sum_seconds,
        }
    }

    /// This worker's latency counters (`stats`) on top of the earlier ones.
    fn with(self, stats: Option<&Stats>) -> (u64, f64) {
        let (count, sum) = stats.map(Stats::latency).unwrap_or_default();
        (self.count + count, self.sum_seconds + sum.as_secs_f64())
    }
}

/// A result file as a new File object (`None` when it is empty or missing), linked into the
/// blob store: the work copy stays until the batch is recorded, so a crash in between loses
/// nothing.
async fn adopt(
    blobs: &Blobs,
    batch: &BatchRow,
    path: &Path,
    kind: &str,
) -> Result<Option<FileRow>, WorkerError> {
    let bytes = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(format!("cannot read {}", path.display()))(e)),
    };
    if bytes == 0 {
        return Ok(None);
    }
    let id = ids::file_id();
    blobs.store_file(path, &id).await?;
    let created_at = now_secs();
    Ok(Some(FileRow {
        id: id.clone(),
        owner: batch.owner.clone(),
        filename: format!("{}_{kind}.jsonl", batch.id),
        purpose: "batch_output".into(),
        bytes: bytes as i64,
        created_at,
        expires_at: batch.output_expires_seconds.map(|s| created_at + s),
        blob: id,
    }))
}

fn batch_error(
    code: &str,
    message: String,
    param: Option<String>,
    line: Option<u64>,
) -> BatchError {
    BatchError {
        code: code.into(),
        message,
        param,
        line,
    }
}

fn no_engine(model: &str) -> BatchError {
    batch_error(
        "model_not_found",
        format!(
            "No engine serves the model {model:?}: start the service with --model-engine \
             '{model}=URL' or a default --engine-url"
        ),
        Some("model".into()),
        None,
    )
}

fn outcome_of(status: BatchStatus, summary: &RunSummary, latency: (u64, f64)) -> BatchOutcome {
    let (latency_count, latency_sum) = latency;
    BatchOutcome {
        status,
        total: None,
        completed: summary.succeeded as i64,
        failed: summary.failed as i64,
        input_tokens: summary.usage.input_tokens as i64,
        output_tokens: summary.usage.output_tokens as i64,
        progress: BatchProgress {
            retried: summary.retries,
            not_run: summary.expired + summary.cancelled,
            requests_per_second: (summary.requests_per_second * 10.0).round() / 10.0,
            latency_count,
            latency_sum_seconds: latency_sum,
            ..BatchProgress::default()
        },
    }
}

fn read_outcome(path: &Path) -> Result<Option<BatchOutcome>, WorkerError> {
    match std::fs::read(path) {
        // A damaged record (it is written whole, so only a disk fault makes one) is dropped:
        // the kept job state then finalizes the batch again.
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(outcome) => Ok(Some(outcome)),
            Err(e) => {
                tracing::warn!("{} is damaged ({e}); finalizing again", path.display());
                Ok(None)
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(format!("cannot read {}", path.display()))(e)),
    }
}

fn write_outcome(path: &Path, outcome: &BatchOutcome) -> Result<(), WorkerError> {
    let text = serde_json::to_vec(outcome).map_err(|e| io("outcome")(std::io::Error::other(e)))?;
    let temp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&temp)?;
        std::io::Write::write_all(&mut f, &text)?;
        f.sync_all()?;
        std::fs::rename(&temp, path)
    };
    write().map_err(io(format!("cannot write {}", path.display())))
}

/// Results between two progress writes of a busy batch.
const RESULTS_PER_WRITE: u64 = 100;
/// Report periods after which changed counters are written however few results they add.
const QUIET_WRITES: u32 = 5;

/// Renews the lease three times per lease period; a lost lease stops the job at once.
async fn heartbeat(
    store: Store,
    batch: String,
    fence: i64,
    lease: Duration,
    stop: StopSignal,
    lost: Arc<AtomicBool>,
) {
    let mut tick = tokio::time::interval(lease / 3);
    loop {
        tick.tick().await;
        match store.renew(&batch, fence, lease).await {
            Ok(Ok(())) => {}
            Ok(Err(LeaseLost)) => {
                lost.store(true, Ordering::Relaxed);
                stop.abort(StopReason::Interrupted);
                return;
            }
            // The database may come back before the lease runs out.
            Err(e) => tracing::warn!("cannot renew the lease of {batch}: {e}"),
        }
    }
}

/// Writes the live counters every `every`; a cancel seen in the answer starts the cancel.
async fn report_loop(
    store: Store,
    batch: String,
    fence: i64,
    every: Duration,
    stop: StopSignal,
    (stats, latency, poke): (
        tokio::sync::oneshot::Receiver<Arc<Stats>>,
        LatencyBase,
        Arc<tokio::sync::Notify>,
    ),
) {
    let Ok(stats) = stats.await else { return };
    let started = SystemTime::now();
    let mut tick = tokio::time::interval(every);
    let mut written: Option<(Counts, BatchProgress, u64, Instant)> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = poke.notified() => {}
        }
        let (counts, progress) = snapshot(&stats, started, latency);
        let done = stats.done();
        // BatchProgress is batched: a write once RESULTS_PER_WRITE more results are in, or once the
        // counters have waited QUIET_WRITES periods; otherwise only the status is read (to see
        // a cancel), so the database load does not grow with the request rate.
        let due = match &written {
            None => true,
            Some((c, p, at_done, at)) => {
                (c, p) != (&counts, &progress)
                    && (done >= at_done + RESULTS_PER_WRITE || at.elapsed() >= every * QUIET_WRITES)
            }
        };
        let status = if due {
            let text = serde_json::to_string(&progress).unwrap_or_default();
            let status = store.report(&batch, fence, &counts, &text).await;
            written = Some((counts, progress, done, Instant::now()));
            status
        } else {
            store.status(&batch).await.map(|s| s.ok_or(LeaseLost))
        };
        match status {
            Ok(Ok(BatchStatus::Cancelling)) => {
                if stop.phase() == batch_job::Phase::Running {
                    tracing::info!("cancel requested");
                    stop.request(StopReason::Cancelled);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("cannot report progress of {batch}: {e}"),
        }
    }
}

fn snapshot(stats: &Stats, started: SystemTime, latency: LatencyBase) -> (Counts, BatchProgress) {
    use batch_job::LineOutcome;
    let done = stats.done();
    let not_run = stats.count(LineOutcome::Expired) + stats.count(LineOutcome::Cancelled);
    let counts = Counts {
        completed: stats.count(LineOutcome::Succeeded) as i64,
        failed: (stats.failed() - not_run) as i64,
        input_tokens: Stats::load(&stats.input_tokens) as i64,
        output_tokens: Stats::load(&stats.output_tokens) as i64,
    };
    let elapsed = started.elapsed().unwrap_or_default().as_secs_f64();
    // Requests sent, not expired or cancelled lines written at the end.
    let rate = if elapsed > 0.0 {
        stats.sent_now() as f64 / elapsed
    } else {
        0.0
    };
    let left = Stats::load(&stats.planned).saturating_sub(done);
    let (latency_count, latency_sum) = latency.with(Some(stats));
    let progress = BatchProgress {
        in_flight: Stats::load(&stats.in_flight),
        retried: Stats::load(&stats.retries),
        not_run,
        requests_per_second: (rate * 10.0).round() / 10.0,
        eta_seconds: (rate > 0.0).then(|| (left as f64 / rate).ceil() as u64),
        latency_count,
        latency_sum_seconds: latency_sum,
        worker_restarts: 0,
        partial_results_path: None,
    };
    (counts, progress)
}
