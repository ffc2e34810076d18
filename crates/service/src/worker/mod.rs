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
    Deadline, JobFiles, JobStatus, Preflight, Remote, RunError, RunOptions, RunSummary, Stats,
    StopReason, StopSignal, ValidateOptions, Validation, preflight_input, run_observed,
    validate_file,
};
use serde::{Deserialize, Serialize};

use batch_storage::object::ObjectDir;
use batch_storage::{StorageError, absent_is_fine};

use crate::blobs::Blobs;
use crate::ids;
use crate::model::{BatchError, BatchProgress};
use crate::settings::{WorkerSettings, in_flight_share};
use crate::store::{
    BatchRow, BatchStatus, Counts, FileRow, Finish, LeaseLost, Store, StoreError, now_ms, now_secs,
};
use crate::{BatchWork, DataDir};

mod media;
mod outcome;
pub(crate) mod report;
mod results;
mod validation;

use outcome::{BatchOutcome, outcome_of, read_outcome, write_outcome};
use report::{History, LatencyBase, follow_in_flight_share, heartbeat, report_loop};
use results::adopt;
pub use results::{Ending, FAILED_MESSAGE, final_files, publish_failed};
use validation::no_engine;

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
        let started = Instant::now();
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
            && batch.times.in_progress_at.is_none()
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
        // Several models: the default engines, and each model's own (set in `run_options`).
        let urls = match self.settings.engines_for(&model) {
            _ if batch.mixed_models != 0 => &self.settings.default_engines,
            Some(urls) => urls,
            None => return self.fail_with(vec![no_engine(&model)]).await,
        };
        let files = JobFiles {
            input,
            output: work.output(),
            errors: work.errors(),
            state_dir: state,
        };
        let options = self.run_options(batch, files, urls, state_remote);
        let job = self
            .run_job(batch, options, validated, stop, started)
            .await?;
        let Some(outcome) = job else {
            return Ok(WorkerEnd::GaveUp);
        };
        write_outcome(&outcome_path, &outcome)?;
        let (status, overhead) = (outcome.status, outcome.overhead_seconds);
        let registering = Instant::now();
        let end = self.register(batch, work, outcome).await?;
        if status == BatchStatus::Completed
            && let Some(seconds) = overhead
        {
            let seconds = seconds + registering.elapsed().as_secs_f64();
            if let Err(e) = self.store.note_overhead(&model, seconds).await {
                tracing::warn!("cannot record the batch's overhead: {e}");
            }
        }
        Ok(end)
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
            // With several models, it holds their routes too.
            validate: self.validate_options(batch),
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
            // A worker restarted after validation counts the lines left again.
            preflight: batch.preflight != 0,
            results_index: Some(BatchWork::new(&self.work_root, &batch.id).results_index()),
            file_url_hosts: Some(self.settings.file_url_hosts.clone()),
            media: Some(Arc::new(media::BatchMedia::new(
                self.store.clone(),
                self.blobs.clone(),
                batch,
            ))),
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
        started: Instant,
    ) -> Result<Option<BatchOutcome>, WorkerError> {
        let (stats_tx, stats_rx) = tokio::sync::oneshot::channel::<Arc<Stats>>();
        let observed = Arc::new(std::sync::OnceLock::new());
        let keep = observed.clone();
        let dispatching = Arc::new(std::sync::OnceLock::new());
        let dispatch_at = dispatching.clone();
        let latency = LatencyBase::of(batch);
        let history = History::of(batch);
        let mut options = options;
        let sharer = match self.settings.owner_max_in_flight {
            Some(cap) => {
                let running = self.store.running_by_owner(now_ms()).await?;
                let now = running.get(&batch.owner).copied().unwrap_or(1);
                let (tx, rx) = tokio::sync::watch::channel(in_flight_share(cap, now));
                options.in_flight_cap = Some(rx);
                let every = self.settings.report_every;
                let follow = follow_in_flight_share(
                    self.store.clone(),
                    batch.owner.clone(),
                    (cap, every),
                    tx,
                );
                Some(tokio::spawn(follow.in_current_span()))
            }
            None => None,
        };
        let reporter = tokio::spawn(
            report_loop(
                self.store.clone(),
                self.batch.clone(),
                self.fence,
                self.settings.report_every,
                stop.clone(),
                (stats_rx, latency, self.poke.clone(), history.clone()),
            )
            .in_current_span(),
        );
        let result = run_observed(options, validated, stop, move |stats| {
            let _ = dispatch_at.set(Instant::now());
            let _ = keep.set(stats.clone());
            let _ = stats_tx.send(stats);
        })
        .await;
        reporter.abort();
        if let Some(sharer) = sharer {
            sharer.abort();
        }
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
        let mut outcome = outcome_of(status, &summary, latency);
        let done = summary.succeeded + summary.failed;
        outcome.progress.history = history.add(done);
        // The batch's own time besides its requests: up to its first request, the first
        // answer's wait (the engine's pipeline filling: one request's mean latency), and
        // finalizing.
        let progress = &outcome.progress;
        let fill = progress.latency_sum_seconds / progress.latency_count.max(1) as f64;
        outcome.overhead_seconds = dispatching
            .get()
            .map(|at| at.duration_since(started).as_secs_f64() + fill + summary.finalize_seconds);
        Ok(Some(outcome))
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
        let max_line_bytes = self.validate_options(batch).max_line_bytes;
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
            cached_tokens: 0,
            reasoning_tokens: 0,
            overhead_seconds: None,
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
        // The index goes beside the first result file, which names it; without it the results
        // API builds one from the files (without the requests' timings).
        let first = output.as_ref().or(errors.as_ref()).map(|f| f.blob.clone());
        if let Some(blob) = first
            && work.results_index().exists()
        {
            let name = crate::api::results::index_blob(&blob);
            if let Err(e) = self.blobs.store_file(&work.results_index(), &name).await {
                tracing::warn!("cannot store the results index: {e}");
            }
        }
        let finish = Finish {
            total: outcome.total,
            status: outcome.status,
            counts: Counts {
                completed: outcome.completed,
                failed: outcome.failed,
                input_tokens: outcome.input_tokens,
                output_tokens: outcome.output_tokens,
                cached_tokens: outcome.cached_tokens,
                reasoning_tokens: outcome.reasoning_tokens,
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
