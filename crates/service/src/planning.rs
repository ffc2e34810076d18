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
use crate::store::{BatchRow, Store, StoreError, now_ms, now_secs};

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

/// Measured results per second per model ([`Store::throughputs`]), read once per request.
pub type Rates = HashMap<String, f64>;

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
    let queued = queued(store, rates, model, batch.expires_at, &batch.id, 0).await?;
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

/// The queue of a batch `id` of `model` due at `expires_at`, with `own` requests of its own
/// not stored yet; none until the model's throughput is measured.
pub async fn queued(
    store: &Store,
    rates: &Rates,
    model: &str,
    expires_at: i64,
    id: &str,
    own: i64,
) -> Result<Option<Queued>, StoreError> {
    let Some(rate) = rates.get(model).copied().filter(|r| *r > 0.0) else {
        return Ok(None);
    };
    let ahead = store.work_ahead(model, expires_at, id).await?;
    Ok(Some(Queued {
        plan: plan_for(ahead + own, rate, expires_at),
        ahead,
        rate,
    }))
}

/// `work` requests at `rate` per second, due at `expires_at`.
pub fn plan_for(work: i64, rate: f64, expires_at: i64) -> Plan {
    let eta_seconds = (work.max(0) as f64 / rate).ceil() as u64;
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
        let average = match known.get(&model) {
            Some(old) => old * (1.0 - NEW_SAMPLE_WEIGHT) + rate * NEW_SAMPLE_WEIGHT,
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
        let plan = plan_for(1000, 10.0, now + 50);
        assert_eq!(plan.eta_seconds, 100);
        assert!(plan.at_risk);
        assert!(!plan_for(100, 10.0, now + 50).at_risk);
    }
}
