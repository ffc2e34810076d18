//! Planning for deadlines: each model's measured throughput, the ETA of every unfinished batch
//! given the work queued ahead of it, and admission at create.
//!
//! Throughput is measured, never configured: while batches of a model run, the rates their
//! workers report (results per second over each one's run) are summed and sampled, and a
//! decaying average is kept in the store, so a restart does not forget it. A batch's queue is the work of the unfinished
//! batches of its model that go before it (earlier deadlines: the order workers take them in
//! within an owner), plus its own; requests left are exact once a batch is validated and
//! estimated from its file before.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::model::BatchProgress;
use crate::store::{BatchRow, BatchStatus, Store, StoreError, Throughput, now_ms, now_secs};

/// Time between two throughput samples.
const SAMPLE_SPAN: Duration = Duration::from_secs(2);
/// Weight of a new sample in the average.
const NEW_SAMPLE_WEIGHT: f64 = 0.3;

/// What `POST /v1/batches` does with a batch whose window cannot be met (`--admission`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Admission {
    /// Accept it, marked at risk.
    #[default]
    Warn,
    /// Refuse it: 429 `window_infeasible`, naming the earliest window that can be met.
    Reject,
}

/// When a batch should finish, on the measured throughput.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    pub eta_seconds: u64,
    /// Unix seconds.
    pub estimated_finish_at: i64,
    pub at_risk: bool,
}

/// What was measured per model ([`Store::throughputs`]), read once per request.
pub type Rates = HashMap<String, Throughput>;

/// The plan of `batch`, when its model's throughput is known and it is unfinished.
pub async fn plan(
    store: &Store,
    rates: &Rates,
    batch: &BatchRow,
) -> Result<Option<Plan>, StoreError> {
    let Some(model) = batch.model.as_deref() else {
        return Ok(None);
    };
    if batch.is_terminal() {
        return Ok(None);
    }
    let mine = Mine {
        id: &batch.id,
        expires_at: batch.expires_at,
        unstored: 0,
        started: batch.status != BatchStatus::Validating,
    };
    let queued = queued(store, rates, model, mine).await?;
    Ok(queued.map(|q| q.plan))
}

/// A batch's place in its model's queue.
#[derive(Debug, Clone, Copy)]
pub struct Queued {
    pub plan: Plan,
    /// Requests that go before it (its own included once it is stored).
    pub ahead: i64,
    /// The model's measured results per second.
    pub rate: f64,
}

/// The batch whose queue is asked for.
#[derive(Debug, Clone, Copy)]
pub struct Mine<'a> {
    pub id: &'a str,
    /// Unix seconds: the end of its window.
    pub expires_at: i64,
    /// Its requests when it is not stored yet (at create), else 0.
    pub unstored: i64,
    /// Whether its worker has validated it: before, the batch's overhead is still ahead.
    pub started: bool,
}

/// The queue of `mine`, a batch of `model`; none until the model's throughput is measured.
/// The batches ahead run beside each other, so their start-ups overlap with other work; the
/// batch's own start-up and finalizing do not, and are added while it has not started.
pub async fn queued(
    store: &Store,
    rates: &Rates,
    model: &str,
    mine: Mine<'_>,
) -> Result<Option<Queued>, StoreError> {
    let Some(measured) = rates.get(model).copied().filter(|r| r.per_second > 0.0) else {
        return Ok(None);
    };
    let ahead = store.work_ahead(model, mine.expires_at, mine.id).await?;
    let overhead = if mine.started {
        0.0
    } else {
        measured.overhead_seconds
    };
    let rate = measured.per_second;
    Ok(Some(Queued {
        plan: plan_for(ahead + mine.unstored, rate, overhead, mine.expires_at),
        ahead,
        rate,
    }))
}

/// `work` requests at `rate` per second after `overhead` seconds, due at `expires_at`.
pub fn plan_for(work: i64, rate: f64, overhead: f64, expires_at: i64) -> Plan {
    let eta_seconds = (work.max(0) as f64 / rate + overhead).ceil() as u64;
    let estimated_finish_at = now_secs() + eta_seconds as i64;
    Plan {
        eta_seconds,
        estimated_finish_at,
        at_risk: estimated_finish_at > expires_at,
    }
}

/// Requests in a file of `bytes` bytes whose first bytes are `head`: exact when the head is
/// the whole file, in proportion to the head's lines otherwise.
pub fn estimate_lines(head: &[u8], bytes: u64) -> i64 {
    let newlines = head.iter().filter(|&&b| b == b'\n').count() as u64;
    let whole = head.len() as u64 >= bytes;
    let lines = if whole {
        newlines + u64::from(head.last().is_some_and(|&b| b != b'\n'))
    } else if head.is_empty() {
        0
    } else {
        (bytes as f64 * newlines.max(1) as f64 / head.len() as f64).round() as u64
    };
    i64::try_from(lines).unwrap_or(i64::MAX)
}

/// Samples each model's throughput while its batches run: the sum of the rates their workers
/// report (each over its own run, start-up included), so a model's figure is what its batches
/// together achieve, whatever the phase of their reports.
#[derive(Debug, Default)]
pub struct Sampler {
    last: Option<Instant>,
}

impl Sampler {
    /// Takes a sample if the last one is old enough; keeps the average in the store.
    pub async fn sample(&mut self, store: &Store) {
        if self.last.is_some_and(|t| t.elapsed() < SAMPLE_SPAN) {
            return;
        }
        self.last = Some(Instant::now());
        if let Err(e) = measure(store).await {
            tracing::warn!("cannot measure throughput: {e}");
        }
    }
}

async fn measure(store: &Store) -> Result<(), StoreError> {
    let mut rates: HashMap<String, f64> = HashMap::new();
    for (model, progress) in store.running_progress(now_ms()).await? {
        let progress: BatchProgress = serde_json::from_str(&progress).unwrap_or_default();
        *rates.entry(model).or_default() += progress.requests_per_second;
    }
    let known = store.throughputs().await?;
    for (model, rate) in rates.into_iter().filter(|(_, r)| *r > 0.0) {
        let average = match known.get(&model).filter(|k| k.per_second > 0.0) {
            Some(old) => old.per_second * (1.0 - NEW_SAMPLE_WEIGHT) + rate * NEW_SAMPLE_WEIGHT,
            None => rate,
        };
        store.set_throughput(&model, average).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_counted_or_estimated_from_the_head() {
        assert_eq!(estimate_lines(b"a\nb\nc\n", 6), 3);
        assert_eq!(estimate_lines(b"a\nb\nc", 5), 3);
        assert_eq!(estimate_lines(b"", 0), 0);
        // A head of 10 lines of 10 bytes from a 1,000-byte file.
        assert_eq!(estimate_lines(&b"123456789\n".repeat(10), 1000), 100);
    }

    #[test]
    fn a_plan_past_the_window_is_at_risk() {
        let now = now_secs();
        let plan = plan_for(1000, 10.0, 0.0, now + 50);
        assert_eq!(plan.eta_seconds, 100);
        assert!(plan.at_risk);
        assert!(!plan_for(100, 10.0, 0.0, now + 50).at_risk);
        // The batch's own start-up and finalizing count too.
        assert_eq!(plan_for(100, 10.0, 2.5, now + 50).eta_seconds, 13);
        assert!(plan_for(450, 10.0, 5.5, now + 50).at_risk);
    }
}
