//! The webhook outbox: one event per batch that ended, inserted in the transaction that ends it
//! (so an event exists exactly when the end does), then claimed and delivered by whichever
//! replica gets it first, with the same lease and fence as batches.

use super::*;

/// How long an event is retried after it was written (or re-sent): a day, as OpenAI does, and
/// an hour more so that a receiver down for exactly a day still gets it.
pub const RETRY_FOR_MS: i64 = 25 * 3600 * 1000;

const EVENT_COLUMNS: &str = "id, batch_id, owner, type, created_at, url, state, attempts, \
    next_attempt_at, retry_until, fence, last_attempt_at, last_status, last_error, delivered_at";

/// One event as the deliverer and the API see it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct WebhookEvent {
    pub id: String,
    pub batch_id: String,
    pub owner: String,
    /// `batch.completed`, `batch.failed`, `batch.expired` or `batch.cancelled`.
    #[sqlx(rename = "type")]
    pub kind: String,
    pub created_at: i64,
    /// The batch's own URL; none: the owner's endpoint.
    pub url: Option<String>,
    /// `pending`, `delivered`, `failed` (given up) or `no_endpoint`.
    pub state: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub retry_until: i64,
    pub fence: i64,
    pub last_attempt_at: Option<i64>,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub delivered_at: Option<i64>,
}

/// How an attempt ended, as the outbox records it.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    Delivered {
        status: i64,
    },
    /// Tried again at `next_attempt_at` (Unix ms).
    Retry {
        status: Option<i64>,
        error: String,
        next_attempt_at: i64,
    },
    /// No more attempts (retried for [`RETRY_FOR_MS`], or the URL is refused).
    GaveUp {
        status: Option<i64>,
        error: String,
    },
    /// Nowhere to send it: the owner has no endpoint and the batch no URL.
    NoEndpoint,
    /// Not attempted (the endpoint's breaker is open): try again at this time.
    Deferred {
        next_attempt_at: i64,
    },
}

/// The event type of a batch that ended `status`.
fn event_type(status: BatchStatus) -> &'static str {
    match status {
        BatchStatus::Completed => "batch.completed",
        BatchStatus::Expired => "batch.expired",
        BatchStatus::Cancelled => "batch.cancelled",
        _ => "batch.failed",
    }
}

/// How long an event waits for its batch's results (`held`) before it is sent without them:
/// the scheduler that publishes them retries for longer (its stranded check), but a receiver
/// should not wait forever for a host that is gone.
pub const HELD_FOR_SECS: i64 = 15 * 60;

/// Whether an event can be sent as soon as it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Release {
    Now,
    /// Once the batch's results are attached ([`Store::attach_results`]): a batch failed by
    /// the scheduler gets them after its failure is recorded, and a receiver that reads the
    /// batch on its event should find them.
    WithResults,
}

/// Adds the event of batch `id`, which just ended `status`, in the caller's transaction: one
/// row, its owner and URL copied from the batch.
pub(super) async fn insert_event<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    id: &str,
    status: BatchStatus,
    release: Release,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO webhook_events (id, batch_id, owner, type, created_at, url, retry_until, \
         state) SELECT $1, id, owner, $2, $3, webhook_url, $4, $6 FROM batches WHERE id = $5",
    )
    .bind(crate::ids::event_id())
    .bind(event_type(status))
    .bind(now_secs())
    .bind(now_ms() + RETRY_FOR_MS)
    .bind(id)
    .bind(match release {
        Release::Now => "pending",
        Release::WithResults => "held",
    })
    .execute(executor)
    .await?;
    Ok(())
}

/// Releases the held event of batch `id` (its results are attached), in the caller's
/// transaction.
pub(super) async fn release_event<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    id: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE webhook_events SET state = 'pending' WHERE batch_id = $1 AND state = 'held'",
    )
    .bind(id)
    .execute(executor)
    .await?;
    Ok(())
}

impl Store {
    /// Up to `limit` events due at `now` (Unix ms) that no replica holds, each claimed until
    /// `now + lease_ms`; the fence each carries is the one its result must name.
    pub async fn claim_events(
        &self,
        now: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<WebhookEvent>> {
        let due = sqlx::query_as::<_, WebhookEvent>(sql(format!(
            "SELECT {EVENT_COLUMNS} FROM webhook_events WHERE (state = 'pending' \
             OR (state = 'held' AND created_at < $3)) \
             AND next_attempt_at <= $1 AND lease_until < $1 ORDER BY next_attempt_at LIMIT $2"
        )))
        .bind(now)
        .bind(limit)
        .bind(now / 1000 - HELD_FOR_SECS)
        .fetch_all(&self.pool)
        .await?;
        let mut claimed = Vec::with_capacity(due.len());
        for mut event in due {
            let taken = sqlx::query(
                "UPDATE webhook_events SET lease_until = $1, fence = fence + 1 \
                 WHERE id = $2 AND fence = $3 AND lease_until < $4",
            )
            .bind(now + lease_ms)
            .bind(&event.id)
            .bind(event.fence)
            .bind(now)
            .execute(&self.pool)
            .await?;
            if taken.rows_affected() == 1 {
                event.fence += 1;
                claimed.push(event);
            }
        }
        Ok(claimed)
    }

    /// Records an attempt of the event held with `fence`; false when another replica has
    /// taken the event over meanwhile (its result is then that replica's to record).
    pub async fn record_attempt(&self, id: &str, fence: i64, result: &Recorded) -> Result<bool> {
        let now = now_ms();
        let (state, status, error, next, attempted) = match result {
            Recorded::Delivered { status } => ("delivered", Some(*status), None, 0, true),
            Recorded::Retry {
                status,
                error,
                next_attempt_at,
            } => (
                "pending",
                *status,
                Some(error.as_str()),
                *next_attempt_at,
                true,
            ),
            Recorded::GaveUp { status, error } => {
                ("failed", *status, Some(error.as_str()), 0, true)
            }
            Recorded::NoEndpoint => ("no_endpoint", None, None, 0, false),
            Recorded::Deferred { next_attempt_at } => {
                ("pending", None, None, *next_attempt_at, false)
            }
        };
        let done = sqlx::query(
            "UPDATE webhook_events SET state = $3, next_attempt_at = $4, lease_until = 0, \
             attempts = attempts + $5, \
             last_attempt_at = CASE WHEN $5 = 1 THEN $6 ELSE last_attempt_at END, \
             last_status = CASE WHEN $5 = 1 THEN $7 ELSE last_status END, \
             last_error = CASE WHEN $5 = 1 THEN $8 ELSE last_error END, \
             delivered_at = CASE WHEN $3 = 'delivered' THEN $6 ELSE delivered_at END \
             WHERE id = $1 AND fence = $2",
        )
        .bind(id)
        .bind(fence)
        .bind(state)
        .bind(next)
        .bind(i64::from(attempted))
        .bind(now)
        .bind(status)
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The newest event of a batch.
    pub async fn event_of(&self, batch_id: &str) -> Result<Option<WebhookEvent>> {
        let event = sqlx::query_as::<_, WebhookEvent>(sql(format!(
            "SELECT {EVENT_COLUMNS} FROM webhook_events WHERE batch_id = $1 \
             ORDER BY created_at DESC, id DESC LIMIT 1"
        )))
        .bind(batch_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(event)
    }

    /// Events, newest first, in `state` when given.
    pub async fn events(&self, state: Option<&str>, limit: i64) -> Result<Vec<WebhookEvent>> {
        let events = sqlx::query_as::<_, WebhookEvent>(sql(format!(
            "SELECT {EVENT_COLUMNS} FROM webhook_events WHERE ($1 = '' OR state = $1) \
             ORDER BY id DESC LIMIT $2"
        )))
        .bind(state.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(events)
    }

    /// Sends events again that were given up or had nowhere to go: `id`, or every such event
    /// when none is named; retried for another [`RETRY_FOR_MS`]. How many.
    pub async fn resend_events(&self, id: Option<&str>) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE webhook_events SET state = 'pending', next_attempt_at = 0, lease_until = 0, \
             retry_until = $1 WHERE state IN ('failed', 'no_endpoint') AND ($2 = '' OR id = $2)",
        )
        .bind(now_ms() + RETRY_FOR_MS)
        .bind(id.unwrap_or(""))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// How many events are in each state, for the metrics.
    pub async fn event_counts(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM webhook_events GROUP BY state")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("state")?, r.try_get("n")?)))
            .collect()
    }
}
