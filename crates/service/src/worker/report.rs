//! What a running worker tells the store: its lease renewed (heartbeat) and the batch's
//! progress (counters, latency), written back as the job goes.

use super::*;

/// Results between two progress writes of a busy batch.
const RESULTS_PER_WRITE: u64 = 100;
/// Report periods after which changed counters are written however few results they add.
const QUIET_WRITES: u32 = 5;

/// Renews the lease three times per lease period; a lost lease stops the job at once.
pub(super) async fn heartbeat(
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

/// Keeps the job's cap on requests in flight at this batch's share of its owner's
/// `--owner-max-in-flight`, read again every `every` as the owner's batches start and end.
pub(super) async fn follow_in_flight_share(
    store: Store,
    owner: String,
    (cap, every): (u64, Duration),
    share: tokio::sync::watch::Sender<usize>,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        match store.running_by_owner(now_ms()).await {
            Ok(running) => {
                let running = running.get(&owner).copied().unwrap_or(1);
                share.send_if_modified(|now| {
                    let new = in_flight_share(cap, running);
                    std::mem::replace(now, new) != new
                });
            }
            Err(e) => tracing::warn!("cannot read the running batches of {owner}: {e}"),
        }
    }
}

/// Writes the live counters every `every`; a cancel seen in the answer starts the cancel.
pub(super) async fn report_loop(
    store: Store,
    batch: String,
    fence: i64,
    every: Duration,
    stop: StopSignal,
    (stats, latency, poke, history): (
        tokio::sync::oneshot::Receiver<Arc<Stats>>,
        LatencyBase,
        Arc<tokio::sync::Notify>,
        History,
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
            let mut shown = progress.clone();
            shown.history = history.add(done);
            let text = serde_json::to_string(&shown).unwrap_or_default();
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

/// The counts and progress of a running job, as a batch shows them (also `run --ui`'s page).
pub(crate) fn snapshot(
    stats: &Stats,
    started: SystemTime,
    latency: LatencyBase,
) -> (Counts, BatchProgress) {
    use batch_job::LineOutcome;
    let done = stats.done();
    let not_run = stats.count(LineOutcome::Expired) + stats.count(LineOutcome::Cancelled);
    let counts = Counts {
        completed: stats.count(LineOutcome::Succeeded) as i64,
        failed: (stats.failed() - not_run) as i64,
        input_tokens: Stats::load(&stats.input_tokens) as i64,
        output_tokens: Stats::load(&stats.output_tokens) as i64,
        cached_tokens: Stats::load(&stats.cached_tokens) as i64,
        reasoning_tokens: Stats::load(&stats.reasoning_tokens) as i64,
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
        output_tokens_per_second: if elapsed > 0.0 {
            (stats.output_tokens_now() as f64 / elapsed).round()
        } else {
            0.0
        },
        eta_seconds: (rate > 0.0).then(|| (left as f64 / rate).ceil() as u64),
        latency_count,
        latency_sum_seconds: latency_sum,
        models: stats.models.as_ref().map_or_else(Vec::new, |m| m.tallies()),
        // Set when the batch is read: restarts, paths and the webhook come from its row.
        ..BatchProgress::default()
    };
    (counts, progress)
}

/// The batch's results over time (`BatchProgress::history`), carried from earlier workers and
/// shared by the report loop and the job's end.
#[derive(Clone, Default)]
pub(super) struct History(Arc<std::sync::Mutex<Vec<[u64; 2]>>>);

impl History {
    pub(super) fn of(batch: &BatchRow) -> Self {
        Self(Arc::new(std::sync::Mutex::new(
            earlier_progress(batch).history,
        )))
    }

    /// Adds `results` now; the series so far.
    pub(super) fn add(&self, results: u64) -> Vec<[u64; 2]> {
        let mut h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        crate::model::add_history_point(&mut h, now_secs().max(0) as u64, results);
        h.clone()
    }
}

/// The progress an earlier worker of the batch last reported (default: none).
pub(super) fn earlier_progress(batch: &BatchRow) -> BatchProgress {
    batch
        .progress
        .as_deref()
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or_default()
}

/// Engine latency counters carried over from earlier workers of the batch, so the service's
/// latency metrics (counters) never go back when a worker is restarted.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LatencyBase {
    count: u64,
    sum_seconds: f64,
}

impl LatencyBase {
    pub(super) fn of(batch: &BatchRow) -> Self {
        let p = earlier_progress(batch);
        Self {
            count: p.latency_count,
            sum_seconds: p.latency_sum_seconds,
        }
    }

    /// This worker's latency counters (`stats`) on top of the earlier ones.
    pub(super) fn with(self, stats: Option<&Stats>) -> (u64, f64) {
        let (count, sum) = stats.map(Stats::latency).unwrap_or_default();
        (self.count + count, self.sum_seconds + sum.as_secs_f64())
    }
}
