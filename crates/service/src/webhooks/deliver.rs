//! Delivers the outbox: every second, claims the events that are due (the lease and fence keep
//! two replicas from sending one event twice), sends each to its URL, and records how it went:
//! delivered on a 2xx, otherwise tried again with exponential backoff and jitter (honouring
//! `Retry-After`) until a day has passed. A per-endpoint breaker stops hammering a receiver
//! that keeps failing: after five failures in a row its events wait a minute untried.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use batch_job::{Attempt, Event};
use tokio::sync::{Semaphore, watch};
use tracing::Instrument;

use super::{Endpoints, target};
use crate::store::{Recorded, Store, WebhookEvent, now_ms};

/// How long a claim lasts: longer than a round can take (its events queue for their endpoint
/// in waves of [`PER_ENDPOINT`], each attempt at most [`ATTEMPT_TIMEOUT`]).
const LEASE_MS: i64 = 120_000;
/// Deliveries in flight to one URL at once: a receiver is not flooded by a burst of events.
const PER_ENDPOINT: usize = 16;
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Events claimed per round; they are sent concurrently.
const PER_ROUND: i64 = 64;
const LONGEST_WAIT: Duration = Duration::from_secs(3600);
const BREAKER_FAILURES: u32 = 5;
const BREAKER_OPEN: Duration = Duration::from_secs(60);

/// Deliveries since the process started, for the metrics.
#[derive(Debug, Default)]
pub struct Counters {
    pub delivered: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub given_up: AtomicU64,
}

/// Runs deliveries until `stop` turns true.
pub async fn run(
    store: Store,
    endpoints: Endpoints,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let client = match batch_job::send_event_client(ATTEMPT_TIMEOUT) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}: webhooks are not delivered");
            return;
        }
    };
    let deliverer = Deliverer {
        store,
        endpoints,
        client,
        counters,
        breakers: Mutex::new(HashMap::new()),
        in_flight: Mutex::new(HashMap::new()),
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut busy = false;
    loop {
        // After a full round more are due: the next round starts at once.
        if !busy {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
        } else if *stop.borrow() {
            return;
        }
        let claimed = deliverer
            .store
            .claim_events(now_ms(), LEASE_MS, PER_ROUND)
            .await;
        let due = match claimed {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!("cannot look for webhook events to deliver: {e}");
                busy = false;
                continue;
            }
        };
        busy = due.len() as i64 == PER_ROUND;
        let rounds = due.iter().map(|event| deliverer.deliver(event));
        futures_util::future::join_all(rounds).await;
    }
}

struct Deliverer {
    store: Store,
    endpoints: Endpoints,
    client: reqwest::Client,
    counters: Arc<Counters>,
    /// Per URL: failures in a row, and until when it is skipped.
    breakers: Mutex<HashMap<String, (u32, Option<Instant>)>>,
    /// Per URL: room for [`PER_ENDPOINT`] deliveries at once.
    in_flight: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Deliverer {
    async fn deliver(&self, event: &WebhookEvent) {
        let span = tracing::info_span!("webhook", event = %event.id, batch = %event.batch_id);
        self.deliver_in_span(event).instrument(span).await;
    }

    async fn deliver_in_span(&self, event: &WebhookEvent) {
        let result = self.attempt(event).await;
        match &result {
            Recorded::Delivered { .. } => {
                self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                tracing::info!("{} delivered", event.kind);
            }
            Recorded::Retry {
                error,
                next_attempt_at,
                ..
            } => {
                self.counters
                    .failed_attempts
                    .fetch_add(1, Ordering::Relaxed);
                let wait = (next_attempt_at - now_ms()).max(0) / 1000;
                tracing::warn!(
                    "{} not delivered ({error}); trying again in {wait} s",
                    event.kind
                );
            }
            Recorded::GaveUp { error, .. } => {
                self.counters.given_up.fetch_add(1, Ordering::Relaxed);
                tracing::error!("{} not delivered, given up: {error}", event.kind);
            }
            Recorded::NoEndpoint => {
                tracing::debug!("no webhook endpoint for owner {}", event.owner);
            }
            Recorded::Deferred { .. } => {}
        }
        match self
            .store
            .record_attempt(&event.id, event.fence, &result)
            .await
        {
            Ok(true) => {}
            Ok(false) => tracing::warn!("another replica took this event over"),
            Err(e) => tracing::warn!("cannot record the delivery: {e}"),
        }
    }

    /// One attempt at `event`, as the outbox records it.
    async fn attempt(&self, event: &WebhookEvent) -> Recorded {
        let Some(endpoint) = self.endpoints.of(&event.owner) else {
            if event.url.is_some() {
                // The batch named a URL, but its owner's secret has left the file since.
                let error = format!(
                    "owner {} has no line in the webhook file any more: nothing to sign with",
                    event.owner
                );
                return Recorded::GaveUp {
                    status: None,
                    error,
                };
            }
            return Recorded::NoEndpoint;
        };
        let Some(url) = event.url.clone().or(endpoint.url) else {
            return Recorded::NoEndpoint;
        };
        if let Some(until) = self.open_until(&url) {
            let wait = until.saturating_duration_since(Instant::now());
            return Recorded::Deferred {
                next_attempt_at: now_ms() + wait.as_millis() as i64,
            };
        }
        let checked = match target::parse(&url) {
            Ok(parsed) => target::resolve(&parsed, self.endpoints.allow_private()).await,
            Err(e) => Err(e),
        };
        if let Err(error) = checked {
            // The URL will not become acceptable by waiting.
            return Recorded::GaveUp {
                status: None,
                error,
            };
        }
        let room = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            let room = in_flight.entry(url.clone());
            room.or_insert_with(|| Arc::new(Semaphore::new(PER_ENDPOINT)))
                .clone()
        };
        let _slot = room.acquire_owned().await;
        let body = Event::new(
            event.id.clone(),
            &event.kind,
            event.created_at,
            serde_json::json!({ "id": event.batch_id }),
        );
        let attempt =
            batch_job::send_event(&self.client, &url, &body, Some(&endpoint.secret)).await;
        self.note(&url, matches!(attempt, Attempt::Delivered(_)));
        let (status, retry_after) = match &attempt {
            Attempt::Delivered(status) => {
                return Recorded::Delivered {
                    status: i64::from(*status),
                };
            }
            Attempt::Refused {
                status,
                retry_after,
            } => (Some(i64::from(*status)), *retry_after),
            Attempt::Failed(_) => (None, None),
        };
        let error = attempt.describe();
        let tried = u32::try_from(event.attempts).unwrap_or(u32::MAX);
        let wait = batch_job::backoff(
            tried,
            self.endpoints.first_retry(),
            LONGEST_WAIT,
            retry_after,
        );
        let next_attempt_at = now_ms() + wait.as_millis() as i64;
        if next_attempt_at > event.retry_until {
            return Recorded::GaveUp { status, error };
        }
        Recorded::Retry {
            status,
            error,
            next_attempt_at,
        }
    }

    fn open_until(&self, url: &str) -> Option<Instant> {
        let breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        breakers
            .get(url)
            .and_then(|(_, until)| *until)
            .filter(|until| *until > Instant::now())
    }

    /// Counts a success or failure of `url`; the fifth failure in a row opens its breaker.
    fn note(&self, url: &str, delivered: bool) {
        let mut breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        let entry = breakers.entry(url.to_owned()).or_insert((0, None));
        if delivered {
            *entry = (0, None);
            return;
        }
        entry.0 += 1;
        if entry.0 >= BREAKER_FAILURES {
            entry.1 = Some(Instant::now() + BREAKER_OPEN);
            entry.0 = 0;
            tracing::warn!(
                "{url} failed {BREAKER_FAILURES} times in a row: its events wait {BREAKER_OPEN:?}"
            );
        }
    }
}
