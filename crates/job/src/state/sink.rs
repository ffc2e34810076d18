//! The spool as the request tasks share it, and the checkpoints that make it durable.
//!
//! Appending is a short copy into the spool's buffers under a lock. A checkpoint takes the lock
//! only to flush those buffers and read the file lengths; it syncs the files and replaces the
//! manifest outside the lock, so appends continue while the disk catches up. A checkpoint runs
//! every `every_results` results or `every` time, whichever comes first.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use batch_format::output::Usage;
use tokio::sync::{Notify, oneshot};

use crate::run::stop::{StopReason, StopSignal};
use crate::state::mirror::Mirror;
use crate::state::outcome::LineOutcome;
use crate::state::spool::{Positions, Spool, SyncHandles};
use crate::state::timings::Timing;
use crate::state::{Manifest, Totals};

/// How often to checkpoint; zero turns a trigger off.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointPolicy {
    pub every_results: u64,
    pub every: Duration,
}

impl CheckpointPolicy {
    /// The defaults of `run` and of the service's workers (their flags take these): the one
    /// definition.
    pub const DEFAULT_EVERY_RESULTS: u64 = 10_000;
    pub const DEFAULT_EVERY: Duration = Duration::from_secs(5);
    /// [`Self::DEFAULT_EVERY`] as a flag's default text.
    pub const DEFAULT_EVERY_TEXT: &str = "5s";
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        Self {
            every_results: Self::DEFAULT_EVERY_RESULTS,
            every: Self::DEFAULT_EVERY,
        }
    }
}

/// One formatted result line on its way to the spool.
pub struct Record {
    pub line: u64,
    pub outcome: LineOutcome,
    pub bytes: Vec<u8>,
    pub usage: Usage,
    /// How its request went; its retries are `attempts - 1`.
    pub timing: Timing,
}

struct Appending {
    spool: Spool,
    error: Option<io::Error>,
    totals: Totals,
    since_checkpoint: u64,
}

pub struct Sink {
    appending: Mutex<Appending>,
    failed: AtomicBool,
    sync: SyncHandles,
    dir: PathBuf,
    /// The manifest as last stored; also serialises checkpoints.
    manifest: Mutex<Manifest>,
    policy: CheckpointPolicy,
    wake: Notify,
    /// Where each checkpoint is copied, when the state lives in object storage.
    mirror: Option<Arc<Mirror>>,
}

impl Sink {
    pub fn new(
        spool: Spool,
        manifest: Manifest,
        dir: PathBuf,
        policy: CheckpointPolicy,
    ) -> io::Result<Self> {
        Ok(Self {
            sync: spool.sync_handles()?,
            appending: Mutex::new(Appending {
                spool,
                error: None,
                totals: manifest.totals,
                since_checkpoint: 0,
            }),
            failed: AtomicBool::new(false),
            dir,
            manifest: Mutex::new(manifest),
            policy,
            wake: Notify::new(),
            mirror: None,
        })
    }

    pub fn with_mirror(mut self, mirror: Option<Arc<Mirror>>) -> Self {
        self.mirror = mirror;
        self
    }

    /// A checkpoint (on a blocking thread), then its copy to object storage. A failed copy is
    /// only a warning: the local state is complete, the remote one is just behind.
    pub async fn checkpoint_now(self: &Arc<Self>) -> io::Result<Positions> {
        let sink = self.clone();
        let positions = tokio::task::spawn_blocking(move || sink.checkpoint())
            .await
            .map_err(io::Error::other)??;
        if let Some(mirror) = &self.mirror
            && let Err(e) = mirror.push(&self.dir, &self.manifest()).await
        {
            tracing::warn!("the job's state in object storage is behind: {e}");
        }
        Ok(positions)
    }

    fn lock(&self) -> MutexGuard<'_, Appending> {
        // A panic mid-append leaves at worst a partial record after the last checkpoint, which
        // resume discards.
        self.appending.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn append(&self, record: Record) {
        let mut a = self.lock();
        if a.error.is_some() {
            return;
        }
        match a
            .spool
            .append(record.line, record.outcome, &record.bytes, record.timing)
        {
            Ok(()) => {
                a.totals.retries += u64::from(record.timing.attempts.saturating_sub(1));
                if record.outcome.is_success() {
                    a.totals.add_usage(record.usage);
                }
                a.since_checkpoint += 1;
                if self.policy.every_results > 0 && a.since_checkpoint == self.policy.every_results
                {
                    self.wake.notify_one();
                }
            }
            Err(e) => {
                a.error = Some(e);
                self.failed.store(true, Ordering::Relaxed);
            }
        }
    }

    /// True once an append failed; the job stops and reports the error.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Hands the buffered results to the OS (no sync, nothing recorded), so readers of the
    /// spool (the results API, `run --ui`) see them within [`HAND_OVER_EVERY`] rather than at
    /// the next checkpoint. A failure here is left to the next checkpoint to report.
    fn hand_over(&self) {
        let mut a = self.lock();
        if a.error.is_none()
            && let Err(e) = a.spool.flush()
        {
            tracing::debug!("cannot hand the results over to the OS yet: {e}");
        }
    }

    /// Makes every result appended so far durable and records it in the manifest.
    pub fn checkpoint(&self) -> io::Result<Positions> {
        let mut manifest = self.manifest.lock().unwrap_or_else(|e| e.into_inner());
        let (positions, totals) = {
            let mut a = self.lock();
            if let Some(e) = &a.error {
                return Err(io::Error::new(e.kind(), e.to_string()));
            }
            let positions = a.spool.flush()?;
            a.since_checkpoint = 0;
            (positions, a.totals)
        };
        self.sync.sync()?;
        manifest.positions = positions;
        manifest.totals = totals;
        manifest.checkpoints += 1;
        manifest.store(&self.dir)?;
        Ok(positions)
    }

    /// Checkpoints on the policy's schedule until `finish` fires or its sender is dropped. It
    /// is told, not aborted: a checkpoint being copied to object storage is finished rather than
    /// cut off half-way. A failure is logged and retried at the next trigger; after
    /// [`FAILURES_TOLERATED`] in a row (a full disk, no inodes left) the job is stopped, since
    /// everything sent from then on would be sent again on resume, and the reason returned.
    pub async fn run_checkpoints(
        self: Arc<Self>,
        mut finish: oneshot::Receiver<()>,
        stop: StopSignal,
    ) -> Option<String> {
        let mut failures = 0;
        let interval = if self.policy.every.is_zero() {
            Duration::from_secs(3600 * 24 * 365)
        } else {
            self.policy.every
        };
        let mut due = tokio::time::Instant::now() + interval;
        let mut hand_over = tokio::time::interval(HAND_OVER_EVERY);
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                () = self.wake.notified() => {}
                _ = hand_over.tick() => {
                    self.hand_over();
                    continue;
                }
                _ = &mut finish => return None,
            }
            due = tokio::time::Instant::now() + interval;
            if self.policy.every.is_zero() && self.policy.every_results == 0 {
                continue;
            }
            match self.checkpoint_now().await {
                Ok(_) => failures = 0,
                Err(e) if failures + 1 < FAILURES_TOLERATED => {
                    failures += 1;
                    tracing::warn!("checkpoint failed (will retry): {e}");
                }
                Err(e) => {
                    let reason = format!(
                        "{FAILURES_TOLERATED} checkpoints in a row failed ({e}); stopped so that \
                         no more work is done that could not be resumed. The results up to the \
                         last good checkpoint are kept in {}: free space there and run the same \
                         command again to resume",
                        self.dir.display()
                    );
                    stop.request(StopReason::Interrupted);
                    stop.abort(StopReason::Interrupted);
                    return Some(reason);
                }
            }
        }
    }

    pub fn manifest(&self) -> Manifest {
        self.manifest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// How often results appended since are handed to the OS between checkpoints.
pub const HAND_OVER_EVERY: Duration = Duration::from_millis(250);

/// Checkpoint failures in a row that stop the job.
pub const FAILURES_TOLERATED: u32 = 3;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{NewJob, open};

    fn record(line: u64, outcome: LineOutcome) -> Record {
        Record {
            line,
            outcome,
            bytes: format!("{{\"line\":{line}}}\n").into_bytes(),
            usage: Usage {
                input_tokens: 1,
                output_tokens: 2,
                total_tokens: 3,
                cached_tokens: 1,
                reasoning_tokens: 1,
            },
            timing: Timing {
                attempts: 2,
                ..Timing::default()
            },
        }
    }

    #[tokio::test]
    async fn results_reach_the_spool_files_between_checkpoints() {
        let dir = tempfile::tempdir().expect("temp");
        let fingerprint = crate::input::InputFingerprint::recorded("fp");
        let job = NewJob {
            input: "in",
            fingerprint: &fingerprint,
            run_tag: "t".into(),
        };
        let opened = open(dir.path(), job).expect("open");
        let policy = CheckpointPolicy {
            every_results: 0,
            every: Duration::from_secs(3600),
        };
        let sink = Arc::new(
            Sink::new(opened.spool, opened.manifest, dir.path().to_owned(), policy).expect("sink"),
        );
        let (finish, finished) = oneshot::channel();
        let checkpoints = tokio::spawn(sink.clone().run_checkpoints(finished, StopSignal::new()));
        sink.append(record(1, LineOutcome::Succeeded));
        let output = dir.path().join(crate::state::spool::OUTPUT_SPOOL);
        let len = || std::fs::metadata(&output).map_or(0, |m| m.len());
        assert_eq!(len(), 0, "buffered");
        tokio::time::sleep(HAND_OVER_EVERY * 3).await;
        assert_eq!(len(), 11, "handed over without a checkpoint");
        assert_eq!(sink.manifest().checkpoints, 0);
        let _ = finish.send(());
        assert!(checkpoints.await.expect("joined").is_none());
    }

    #[test]
    fn the_default_interval_text_says_the_default_interval() {
        assert_eq!(
            crate::duration::parse_duration(CheckpointPolicy::DEFAULT_EVERY_TEXT),
            Ok(CheckpointPolicy::DEFAULT_EVERY)
        );
    }

    #[test]
    fn a_checkpoint_records_positions_and_totals_that_a_resume_restores() {
        let dir = tempfile::tempdir().expect("temp");
        let fingerprint = crate::input::InputFingerprint::recorded("fp");
        let job = || NewJob {
            input: "in",
            fingerprint: &fingerprint,
            run_tag: "t".into(),
        };
        let opened = open(dir.path(), job()).expect("open");
        let sink = Sink::new(
            opened.spool,
            opened.manifest,
            dir.path().to_owned(),
            CheckpointPolicy::default(),
        )
        .expect("sink");
        sink.append(record(1, LineOutcome::Succeeded));
        sink.append(record(2, LineOutcome::EngineError));
        let at = sink.checkpoint().expect("checkpoint");
        sink.append(record(3, LineOutcome::Succeeded));
        drop(sink);

        let resumed = open(dir.path(), job()).expect("resume");
        assert_eq!(resumed.manifest.positions, at);
        assert_eq!(resumed.manifest.checkpoints, 1);
        assert_eq!(resumed.manifest.totals.retries, 2);
        assert_eq!(
            resumed.manifest.totals.output_tokens, 2,
            "only successes count usage"
        );
        let totals = resumed.manifest.totals;
        assert_eq!((totals.cached_tokens, totals.reasoning_tokens), (1, 1));
        assert!(resumed.done.contains(2) && !resumed.done.contains(3));
    }
}
