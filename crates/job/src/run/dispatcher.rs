//! The dispatch loop: items from the reader thread become request tasks, at most
//! `max_concurrency` at a time, until the input ends or the job is stopped.
//!
//! On a stop, nothing new is sent. Requests in flight finish, or are abandoned when the stop
//! aborts (each task watches for that itself and records what became of its line). Then, for an
//! expired or cancelled job, every line still without a result gets its error record; an
//! interrupted job just stops reading, and those lines run when it resumes.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::feed::Item;
use super::in_flight_cap::CappedSlots;
use super::request::{Ids, Request, execute};
use super::routes::Routes;
use crate::report::metrics::Stats;
use crate::run::stop::{Phase, StopReason, StopSignal};
use crate::state::outcome::LineOutcome;
use crate::state::sink::{Record, Sink};

/// Everything a request task needs, shared.
pub struct Shared {
    pub routes: Routes,
    pub handling: super::handling::Handling,
    pub stats: Arc<Stats>,
    pub sink: Arc<Sink>,
    pub stop: StopSignal,
    pub ids: Ids,
}

impl Shared {
    /// Counts a record and appends it to the spool.
    fn deliver(&self, record: Record) {
        self.stats.record(record.outcome);
        if let Some(models) = &self.stats.models {
            models.record(record.line, record.outcome);
        }
        if record.outcome == LineOutcome::Succeeded {
            self.stats.add_usage(record.usage);
        } else if !matches!(
            record.outcome,
            LineOutcome::Expired | LineOutcome::Cancelled
        ) {
            self.stats.errors.add(&record.bytes);
        }
        self.sink.append(record);
    }

    fn invalid(&self, line: u64, custom_id: Option<&str>, code: &str, message: &str) -> Record {
        self.ids
            .error(line, custom_id, LineOutcome::InvalidRequest, code, message)
    }
}

/// How the dispatch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Every line has a result.
    Complete,
    Stopped(StopReason),
    /// The spool could not be written; the sink holds the error.
    SpoolFailed,
}

/// Hands each item of the input to a request task, up to `max_concurrency` at once, until the
/// input ends or a stop comes; then waits for every task's record. (About 90 lines: the three
/// kinds of item and the stop's leftovers are one loop, read top to bottom.)
pub async fn dispatch(
    shared: Arc<Shared>,
    mut batches: mpsc::Receiver<Vec<Item>>,
    max_concurrency: usize,
    cap: Option<watch::Receiver<usize>>,
) -> Ended {
    let capped = CappedSlots::new(max_concurrency, cap);
    let slots = capped.slots.clone();
    // Items received but not yet dispatched when a stop came.
    let mut leftover: Vec<Item> = Vec::new();
    'input: while let Some(batch) = next_batch(&mut batches, &shared.stop).await {
        let mut items = batch.into_iter();
        while let Some(item) = items.next() {
            if shared.sink.failed() {
                break 'input;
            }
            match item {
                Item::Invalid {
                    line,
                    custom_id,
                    code,
                    message,
                } => shared.deliver(shared.invalid(line, custom_id.as_deref(), code, &message)),
                Item::Request {
                    line,
                    custom_id,
                    body,
                } => {
                    let slot = tokio::select! {
                        biased;
                        () = shared.stop.stopping() => None,
                        slot = slots.clone().acquire_owned() => slot.ok(),
                    };
                    let Some(slot) = slot else {
                        leftover.push(Item::Request {
                            line,
                            custom_id,
                            body,
                        });
                        leftover.extend(items);
                        break 'input;
                    };
                    let shared = shared.clone();
                    tokio::spawn(
                        async move {
                            let request = Request {
                                line,
                                custom_id,
                                body,
                            };
                            let record = send_on_route(&shared, request).await;
                            if let Some(record) = record {
                                shared.deliver(record);
                            }
                            drop(slot);
                        }
                        .in_current_span(),
                    );
                }
            }
        }
    }
    // Every slot back means every request task has finished and delivered its record.
    capped.all_back().await;
    if shared.sink.failed() {
        return Ended::SpoolFailed;
    }
    let reason = match shared.stop.phase() {
        Phase::Running => return Ended::Complete,
        Phase::Draining(r) | Phase::Abort(r) => r,
    };
    if reason == StopReason::Interrupted {
        return Ended::Stopped(reason);
    }
    // Expired or cancelled: every line still without a result gets its record.
    for item in leftover {
        close_out(&shared, item, reason);
    }
    while let Some(batch) = batches.recv().await {
        for item in batch {
            close_out(&shared, item, reason);
        }
    }
    Ended::Stopped(reason)
}

/// Sends a request on its line's route once the route has room (with several models, each
/// bounds its own requests in flight); a stop meanwhile leaves it unsent.
async fn send_on_route(shared: &Shared, request: Request) -> Option<Record> {
    let route = shared.routes.of_line(request.line);
    let Some(room) = route.room(&shared.stop).await else {
        let reason = shared
            .stop
            .phase()
            .reason()
            .unwrap_or(StopReason::Interrupted);
        return shared.ids.stopped(request.line, &request.custom_id, reason);
    };
    let on = super::request::Route {
        engines: &route.engines,
        target: &route.target,
        handling: &shared.handling,
    };
    let record = execute(on, &shared.stats, &shared.stop, &shared.ids, request).await;
    drop(room);
    record
}

/// The next batch, unless the job is stopping.
async fn next_batch(
    batches: &mut mpsc::Receiver<Vec<Item>>,
    stop: &StopSignal,
) -> Option<Vec<Item>> {
    tokio::select! {
        biased;
        () = stop.stopping() => None,
        batch = batches.recv() => batch,
    }
}

/// Records a line that a stop left unrun (invalid lines keep their own record).
fn close_out(shared: &Shared, item: Item, reason: StopReason) {
    let record = match item {
        Item::Invalid {
            line,
            custom_id,
            code,
            message,
        } => Some(shared.invalid(line, custom_id.as_deref(), code, &message)),
        Item::Request {
            line, custom_id, ..
        } => shared.ids.stopped(line, &custom_id, reason),
    };
    if let Some(record) = record {
        shared.deliver(record);
    }
}
