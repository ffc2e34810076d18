//! Planning for deadlines: each model's measured throughput, the ETA of every unfinished batch
//! given the work queued ahead of it, and admission at create.
//!
//! Throughput is measured, never configured: while batches of a model run, the results they
//! deliver are sampled every few seconds, and a decaying average is kept in the store, so a
//! restart does not forget it. A batch's queue is the work of the unfinished
//! batches of its model that go before it (earlier deadlines: the order workers take them in
//! within an owner), plus its own; requests left are exact once a batch is validated and
//! estimated from its file before.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::model::BatchProgress;
use crate::store::{BatchRow, Store, StoreError, Throughput, now_ms, now_secs};

/// Time between two throughput samples (at most: the scheduler's loop takes them).
const SAMPLE_SPAN: Duration = Duration::from_millis(500);
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
    margin: f64,
) -> Result<Option<Plan>, StoreError> {
    let Some(model) = batch.model.as_deref() else {
        return Ok(None);
    };
    if batch.is_terminal() {
        return Ok(None);
    }
    let mine = Mine {
        id: &batch.id,
        created_at: batch.created_at,
        expires_at: batch.expires_at,
        unstored: 0,
    };
    let queued = queued(store, rates, model, mine, margin).await?;
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
    /// Unix seconds: when it was created and when its window ends.
    pub created_at: i64,
    pub expires_at: i64,
    /// Its requests when it is not stored yet (at create), else 0.
    pub unstored: i64,
}

/// The queue of `mine`, a batch of `model`; none until the model's throughput is measured.
/// Each batch ahead that has not started (and this one, until it has) adds its overhead:
/// counted one after another, which is exact with one worker slot and errs on the late side
/// with more.
pub async fn queued(
    store: &Store,
    rates: &Rates,
    model: &str,
    mine: Mine<'_>,
    margin: f64,
) -> Result<Option<Queued>, StoreError> {
    let Some(measured) = rates.get(model).copied().filter(|r| r.per_second > 0.0) else {
        return Ok(None);
    };
    let ahead = store.work_ahead(model, mine.expires_at, mine.id).await?;
    let unstarted = ahead.unstarted + i64::from(mine.unstored > 0);
    let overhead = measured.overhead_seconds * unstarted as f64;
    let rate = measured.per_second;
    let window = Window {
        created_at: mine.created_at,
        expires_at: mine.expires_at,
        margin,
    };
    Ok(Some(Queued {
        plan: plan_for(ahead.requests + mine.unstored, rate, overhead, window),
        ahead: ahead.requests,
        rate,
    }))
}

/// A batch's window, and the part of it kept spare (`--admission-margin`): a batch whose
/// estimate ends within that last part is at risk.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub created_at: i64,
    pub expires_at: i64,
    /// A fraction of the window, from 0 to 1.
    pub margin: f64,
}

/// `work` requests at `rate` per second after `overhead` seconds, in `window`.
pub fn plan_for(work: i64, rate: f64, overhead: f64, window: Window) -> Plan {
    let eta_seconds = (work.max(0) as f64 / rate + overhead).ceil() as u64;
    let estimated_finish_at = now_secs() + eta_seconds as i64;
    let length = (window.expires_at - window.created_at).max(0) as f64;
    let spare = (length * window.margin).round() as i64;
    Plan {
        eta_seconds,
        estimated_finish_at,
        at_risk: estimated_finish_at > window.expires_at - spare,
    }
}

/// The tokens a batch's requests left should take: its results' tokens per request so far
/// times the requests left, or, before any result, its estimate (file size, or its pre-flight
/// count) in proportion to the requests left.
pub fn remaining_tokens(batch: &BatchRow) -> u64 {
    let done = batch.completed + batch.failed;
    let total = if batch.total > 0 {
        batch.total
    } else {
        batch.estimated_lines
    };
    let left = (total - done).max(0) as f64;
    let tokens = if batch.completed > 0 {
        (batch.input_tokens + batch.output_tokens) as f64 / batch.completed as f64 * left
    } else if total > 0 {
        batch.estimated_tokens as f64 * left / total as f64
    } else {
        batch.estimated_tokens as f64
    };
    tokens.round().max(0.0) as u64
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

/// Samples each model's throughput while it has work: the results its batches delivered since
/// that busy period began (start-ups, finalizing and the gaps between batches included, which
/// the rates workers measure of themselves leave out), over the period's length. Measured over
/// the whole period, the steps in which workers report their counts (every 100 results) weigh
/// less and less.
#[derive(Debug, Default)]
pub struct Sampler {
    last: Option<Instant>,
    /// Per model with work: when its busy period began, and its results then.
    busy: HashMap<String, (Instant, i64)>,
    /// Each unfinished batch at the last sample: its model and results then.
    seen: HashMap<String, (String, i64)>,
    /// Per model: the results its batches delivered while this sampler watched.
    delivered: HashMap<String, i64>,
}

/// A busy period shorter than this measures nothing yet.
const MIN_PERIOD: Duration = Duration::from_secs(2);

impl Sampler {
    /// Takes a sample if the last one is old enough; keeps the average in the store.
    pub async fn sample(&mut self, store: &Store) {
        if self.last.is_some_and(|t| t.elapsed() < SAMPLE_SPAN) {
            return;
        }
        let previous = self.last.replace(Instant::now());
        if let Err(e) = self.measure(store, previous).await {
            tracing::warn!("cannot measure throughput: {e}");
        }
    }

    /// `previous`: the last sample's time. A period began or ended between it and now: the
    /// middle of that span is taken, so the measure is not biased by when samples fall.
    /// Per model: its results delivered so far (while watched), and whether it has unfinished
    /// batches. Only unfinished batches are read, and those that ended since the last sample.
    async fn deliveries(
        &mut self,
        store: &Store,
    ) -> Result<HashMap<String, (i64, bool)>, StoreError> {
        let unfinished = store.unfinished_results().await?;
        let mut seen: HashMap<String, (String, i64)> = unfinished
            .into_iter()
            .map(|(id, model, done)| (id, (model, done)))
            .collect();
        let ended: Vec<String> = self
            .seen
            .keys()
            .filter(|id| !seen.contains_key(*id))
            .cloned()
            .collect();
        let finals = store.results_of(&ended).await?;
        for (id, (model, before)) in &self.seen {
            // A batch first seen counts from then (a restarted service does not count twice).
            let now = match seen.get(id) {
                Some((_, done)) => *done,
                None => finals.get(id).copied().unwrap_or(*before),
            };
            *self.delivered.entry(model.clone()).or_default() += (now - before).max(0);
        }
        let mut models: HashMap<String, (i64, bool)> = self
            .delivered
            .iter()
            .map(|(model, done)| (model.clone(), (*done, false)))
            .collect();
        for (model, _) in seen.values() {
            models.entry(model.clone()).or_default().1 = true;
        }
        std::mem::swap(&mut self.seen, &mut seen);
        Ok(models)
    }

    async fn measure(
        &mut self,
        store: &Store,
        previous: Option<Instant>,
    ) -> Result<(), StoreError> {
        let at = Instant::now();
        let between = previous.map_or(at, |p| p + (at - p) / 2);
        let now = self.deliveries(store).await?;
        let mut tokens: HashMap<String, f64> = HashMap::new();
        for (model, progress) in store.running_progress(now_ms()).await? {
            let progress: BatchProgress = serde_json::from_str(&progress).unwrap_or_default();
            *tokens.entry(model).or_default() += progress.output_tokens_per_second;
        }
        let known = store.throughputs().await?;
        let decay = |old: f64, new: f64| old * (1.0 - NEW_SAMPLE_WEIGHT) + new * NEW_SAMPLE_WEIGHT;
        for (model, (done, busy)) in now {
            // A period that just ended is measured once more, with its last results.
            let ((since, at_start), end) = match (busy, self.busy.get(&model).copied()) {
                (true, Some(period)) => (period, at),
                (true, None) => (
                    *self.busy.entry(model.clone()).or_insert((between, done)),
                    at,
                ),
                (false, Some(period)) => {
                    self.busy.remove(&model);
                    (period, between)
                }
                (false, None) => continue,
            };
            let period = end.saturating_duration_since(since);
            // Something delivered: an engine that is down is not a measure of what it does.
            if period < MIN_PERIOD || done <= at_start {
                continue;
            }
            let requests = (done - at_start) as f64 / period.as_secs_f64();
            let tokens = tokens.get(&model).copied().unwrap_or(0.0);
            let average = match known.get(&model).filter(|k| k.per_second > 0.0) {
                Some(old) => Throughput {
                    per_second: decay(old.per_second, requests),
                    tokens_per_second: decay(old.tokens_per_second, tokens),
                    ..*old
                },
                None => Throughput {
                    per_second: requests,
                    tokens_per_second: tokens,
                    ..Throughput::default()
                },
            };
            store.set_throughput(&model, &average).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_tokens_come_from_results_so_far_or_the_estimate() {
        let mut b = BatchRow {
            total: 100,
            estimated_tokens: 5000,
            ..BatchRow::default()
        };
        assert_eq!(remaining_tokens(&b), 5000);
        (b.completed, b.failed, b.input_tokens, b.output_tokens) = (20, 5, 600, 400);
        // 50 tokens per completed request, 75 requests left.
        assert_eq!(remaining_tokens(&b), 3750);
        b.total = 0;
        b.estimated_lines = 10;
        b.completed = 0;
        b.failed = 0;
        assert_eq!(remaining_tokens(&b), 5000);
    }

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
        let window = |length: i64, margin: f64| Window {
            created_at: now,
            expires_at: now + length,
            margin,
        };
        let plan = plan_for(1000, 10.0, 0.0, window(50, 0.0));
        assert_eq!(plan.eta_seconds, 100);
        assert!(plan.at_risk);
        assert!(!plan_for(100, 10.0, 0.0, window(50, 0.0)).at_risk);
        // Overheads count too.
        assert_eq!(plan_for(100, 10.0, 2.5, window(50, 0.0)).eta_seconds, 13);
        assert!(plan_for(450, 10.0, 5.5, window(50, 0.0)).at_risk);
        // With a margin of 10%, the last 5 s of a 50 s window are spare.
        assert!(!plan_for(440, 10.0, 0.0, window(50, 0.0)).at_risk);
        assert!(plan_for(460, 10.0, 0.0, window(50, 0.1)).at_risk);
    }
}
