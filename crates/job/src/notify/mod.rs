//! Webhooks, as OpenAI sends them for batch events: an event `{"id": "evt_…", "object": "event",
//! "type": "batch.completed", "created_at": …, "data": {…}}` POSTed as JSON and signed with the
//! Standard Webhooks scheme (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64
//! HMAC-SHA256 of "{id}.{timestamp}.{body}">`, secrets written `whsec_<base64>`), so a receiver
//! verifies it with the official SDK's `client.webhooks.unwrap()` unchanged.
//!
//! `run --notify-url` sends one when the job ends ([`notify`]); the service's outbox delivers its
//! batches' events with the same [`Event`] and [`Secret`].

mod sign;

use std::time::Duration;

pub use sign::{Secret, SecretError};

/// One event, its body fixed at creation: every retry sends the same bytes under the same id,
/// so a receiver can drop repeats by `webhook-id`.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub body: String,
}

impl Event {
    /// `kind` is the event type (`batch.completed`, …); `data` its `data` object.
    pub fn new(id: String, kind: &str, created_at: i64, data: serde_json::Value) -> Self {
        let body = serde_json::json!({
            "id": id,
            "object": "event",
            "type": kind,
            "created_at": created_at,
            "data": data,
        })
        .to_string();
        Self { id, body }
    }

    /// The headers of one delivery attempt, signed at `timestamp` (Unix seconds; receivers
    /// refuse signatures older than a few minutes, so each attempt is signed afresh).
    pub fn headers(&self, secret: Option<&Secret>, timestamp: i64) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            ("content-type", "application/json".to_owned()),
            ("webhook-id", self.id.clone()),
            ("webhook-timestamp", timestamp.to_string()),
        ];
        if let Some(secret) = secret {
            let signature = secret.sign(&self.id, timestamp, &self.body);
            headers.push(("webhook-signature", signature));
        }
        headers
    }
}

/// How one delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// A 2xx answer.
    Delivered(u16),
    /// Another status; `retry_after` is the receiver's `Retry-After`, when it sent one.
    Refused {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// No answer (connection refused, timeout, a refused address); the reason.
    Failed(String),
}

impl Attempt {
    pub fn describe(&self) -> String {
        match self {
            Attempt::Delivered(status) => format!("delivered ({status})"),
            Attempt::Refused { status, .. } => format!("answered {status}"),
            Attempt::Failed(why) => why.clone(),
        }
    }
}

/// Sends `event` to `url` once. Redirects are not followed: a webhook URL that moved is the
/// receiver's to fix, and following one could lead the request anywhere.
pub async fn send(
    client: &reqwest::Client,
    url: &str,
    event: &Event,
    secret: Option<&Secret>,
) -> Attempt {
    let mut request = client.post(url).body(event.body.clone());
    for (name, value) in event.headers(secret, unix_now()) {
        request = request.header(name, value);
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            if response.status().is_success() {
                Attempt::Delivered(status)
            } else {
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                Attempt::Refused {
                    status,
                    retry_after,
                }
            }
        }
        Err(e) => Attempt::Failed(crate::error_with_causes(&e)),
    }
}

/// A client for webhooks: no redirects, a bounded time per attempt.
pub fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .build()
        .map_err(|e| format!("cannot set up the webhook client: {e}"))
}

/// The retry schedule of a notification: `base` doubled per attempt, at most `cap`, with up to
/// a fifth added at random so that many receivers failing together are not retried in step;
/// a `Retry-After` longer than that wins (up to `cap`).
pub fn backoff(
    attempt: u32,
    base: Duration,
    cap: Duration,
    retry_after: Option<Duration>,
) -> Duration {
    let doubled = base.saturating_mul(1u32 << attempt.min(20)).min(cap);
    let jitter = doubled.mul_f64(f64::from((crate::random_u64() % 1000) as u32) / 5000.0);
    (doubled + jitter)
        .max(retry_after.unwrap_or_default())
        .min(cap)
}

/// A fresh `evt_…` id for an event of `run`.
pub fn new_event_id() -> String {
    format!("evt_{}", crate::random_tag())
}

pub fn unix_now() -> i64 {
    (crate::state::unix_now_ms() / 1000) as i64
}

/// What `run --notify-url` sends when the job ends, to each URL, with bounded retries (about
/// a minute in all); a notification that cannot be delivered is logged and changes nothing
/// about the job.
pub async fn notify(urls: &[String], secret: Option<&Secret>, event: &Event) {
    const ATTEMPTS: u32 = 6;
    let client = match client(Duration::from_secs(10)) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("{e}: no notification sent");
            return;
        }
    };
    let client = &client;
    let deliveries = urls.iter().map(|url| async move {
        for attempt in 0..ATTEMPTS {
            let result = send(client, url, event, secret).await;
            match &result {
                Attempt::Delivered(_) => {
                    tracing::info!("notified {url} ({})", event.id);
                    return;
                }
                Attempt::Refused { status, .. }
                    if (400..500).contains(status) && *status != 429 =>
                {
                    tracing::warn!("{url} refused the notification ({status}); not retried");
                    return;
                }
                _ => {}
            }
            if attempt + 1 == ATTEMPTS {
                tracing::warn!(
                    "cannot notify {url} after {ATTEMPTS} attempts: {}",
                    result.describe()
                );
                return;
            }
            let retry_after = match result {
                Attempt::Refused { retry_after, .. } => retry_after,
                _ => None,
            };
            let wait = backoff(
                attempt,
                Duration::from_secs(1),
                Duration::from_secs(30),
                retry_after,
            );
            tracing::debug!("notifying {url}: {}; again in {wait:?}", result.describe());
            tokio::time::sleep(wait).await;
        }
    });
    futures_util::future::join_all(deliveries).await;
}
