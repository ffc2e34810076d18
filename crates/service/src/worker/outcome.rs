//! How the pipeline ended, written to `outcome.json` before the batch's files are registered,
//! so a crash in between registers them again instead of running anything twice.

use super::*;

/// What the pipeline ended with, kept until the batch's files are registered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct BatchOutcome {
    pub(super) status: BatchStatus,
    /// The request count, when only the worker knows it (a batch cancelled before it ran).
    #[serde(default)]
    pub(super) total: Option<i64>,
    pub(super) completed: i64,
    pub(super) failed: i64,
    pub(super) input_tokens: i64,
    pub(super) output_tokens: i64,
    /// Added after the first outcome files (absent: none counted).
    #[serde(default)]
    pub(super) cached_tokens: i64,
    #[serde(default)]
    pub(super) reasoning_tokens: i64,
    /// This worker's start-up (to its first request) and finalizing, in seconds.
    #[serde(default)]
    pub(super) overhead_seconds: Option<f64>,
    pub(super) progress: BatchProgress,
}

pub(super) fn outcome_of(
    status: BatchStatus,
    summary: &RunSummary,
    latency: (u64, f64),
) -> BatchOutcome {
    let (latency_count, latency_sum) = latency;
    BatchOutcome {
        status,
        total: None,
        completed: summary.succeeded as i64,
        failed: summary.failed as i64,
        input_tokens: summary.usage.input_tokens as i64,
        output_tokens: summary.usage.output_tokens as i64,
        cached_tokens: summary.usage.cached_tokens as i64,
        reasoning_tokens: summary.usage.reasoning_tokens as i64,
        overhead_seconds: None,
        progress: BatchProgress {
            retried: summary.retries,
            not_run: summary.expired + summary.cancelled,
            requests_per_second: (summary.requests_per_second * 10.0).round() / 10.0,
            latency_count,
            latency_sum_seconds: latency_sum,
            models: summary.models.clone(),
            ..BatchProgress::default()
        },
    }
}

pub(super) fn read_outcome(path: &Path) -> Result<Option<BatchOutcome>, WorkerError> {
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

pub(super) fn write_outcome(path: &Path, outcome: &BatchOutcome) -> Result<(), WorkerError> {
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
