//! One request's way to an answer: wait for room on an engine, send, learn from the answer
//! (rate limits, overload signals, breakers), and retry as the policy allows.

use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::Method;

use super::adaptive::Signal;
use super::retry::{retry_after, status_is_retryable};
use super::{Delivery, Engines, Payload, Sent, Target, pool, priority, rate};
use crate::run::stop::StopSignal;

impl Engines {
    /// Sends one request, retrying as the policy allows. `on_retry` is called before each retry.
    /// A stop ends the wait for a retry at once, so no request sits in backoff past a deadline.
    pub async fn send(
        &self,
        target: &Target,
        body: Payload,
        stop: &StopSignal,
        mut on_retry: impl FnMut() + Send,
    ) -> Sent {
        // The field goes into JSON bodies only (a multipart form has no place for it).
        let prioritised = self
            .priority
            .filter(|_| body.is_json())
            .map(|p| Payload::json(priority::with_priority(&body.bytes, p)));
        let tokens =
            (!self.token_rate.is_empty()).then(|| rate::estimate_tokens(&body.bytes) as f64);
        let mut attempts = 0;
        loop {
            let Some(mut lease) = self.room(tokens, stop).await else {
                return Sent::stopped(attempts);
            };
            let engine = lease.engine;
            let with_priority = prioritised
                .as_ref()
                .filter(|_| !self.priority_refused[engine].load(Ordering::Relaxed));
            let body = with_priority.unwrap_or(&body).clone();
            let sent_at = tokio::time::Instant::now();
            let (delivery, wait_hint) = self.attempt(engine, target, body, &mut on_retry).await;
            tracing::debug!(
                attempt = attempts + 1,
                engine = %self.bases[engine],
                ms = sent_at.elapsed().as_millis() as u64,
                "{}",
                delivery.describe()
            );
            self.settle_tokens(engine, tokens, &delivery);
            if with_priority.is_some() && self.refuses_priority(engine, &delivery) {
                // Sent again at once without the field: the request itself was fine.
                continue;
            }
            self.observe(engine, &delivery, sent_at.elapsed());
            let retryable = self.judge(&mut lease, &delivery);
            drop(lease);
            attempts += 1;
            if !retryable || attempts > self.retry.max_retries {
                return Sent {
                    delivery,
                    attempts,
                    engine,
                };
            }
            let backoff = tokio::time::sleep(self.retry.backoff(attempts - 1, wait_hint));
            tokio::select! {
                () = backoff => {}
                () = stop.stopping() => return Sent::stopped(attempts),
            }
            on_retry();
        }
    }

    /// `GET path` on one engine (a video job's status or content: only the engine that made the
    /// job knows it), retrying what the policy retries; `Stopped` once the job aborts.
    pub async fn get_on(&self, engine: usize, path: &str, stop: &StopSignal) -> Delivery {
        let full = format!("{}{path}", self.bases[engine]);
        let url = match super::transport::Url::parse(&full) {
            Ok(url) => url,
            Err(e) => {
                return Delivery::Unavailable {
                    last_error: format!("{full}: {e}"),
                };
            }
        };
        let mut attempts = 0;
        loop {
            let sending = self.transports[engine].send(
                Method::GET,
                &url,
                bytes::Bytes::new(),
                self.request_timeout,
            );
            let result = tokio::select! {
                biased;
                () = stop.aborting() => return Delivery::Stopped,
                result = sending => result,
            };
            let (delivery, hint) = match result {
                Ok(answer) => (
                    Delivery::Answered {
                        status: answer.status,
                        request_id: None,
                        body: answer.body,
                    },
                    retry_after(&answer.headers),
                ),
                Err(e) => (Delivery::unavailable(&e), None),
            };
            let retryable = match &delivery {
                Delivery::Answered { status, .. } => status_is_retryable(*status),
                _ => true,
            };
            attempts += 1;
            if !retryable || attempts > self.retry.max_retries {
                return delivery;
            }
            tokio::select! {
                () = tokio::time::sleep(self.retry.backoff(attempts - 1, hint)) => {}
                () = stop.aborting() => return Delivery::Stopped,
            }
        }
    }

    /// Waits for room on an engine (an adaptive limit, a rate limit, open breakers); none once
    /// the job is stopping: nothing new is sent then.
    async fn room(&self, tokens: Option<f64>, stop: &StopSignal) -> Option<pool::Lease<'_>> {
        let room = async {
            let lease = self.pool.lease().await;
            self.pace(lease.engine, tokens).await;
            lease
        };
        tokio::select! {
            biased;
            () = stop.stopping() => None,
            lease = room => Some(lease),
        }
    }

    /// One attempt on `engine`: the delivery, and how long the engine asked to wait before a
    /// retry (`Retry-After`).
    async fn attempt(
        &self,
        engine: usize,
        target: &Target,
        body: Payload,
        on_retry: &mut (impl FnMut() + Send),
    ) -> (Delivery, Option<Duration>) {
        let result = self.transports[engine]
            .send_counting(
                Method::POST,
                &target.urls[engine],
                body,
                self.request_timeout,
                on_retry,
            )
            .await;
        match result {
            Ok(answer) => {
                let hint = retry_after(&answer.headers);
                let request_id = answer
                    .headers
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let delivery = Delivery::Answered {
                    status: answer.status,
                    request_id,
                    body: answer.body,
                };
                (delivery, hint)
            }
            Err(e) => (Delivery::unavailable(&e), None),
        }
    }

    /// Settles the token estimate taken before sending with the answer's usage; an answer
    /// without one cost the estimate.
    fn settle_tokens(&self, engine: usize, estimate: Option<f64>, delivery: &Delivery) {
        if let (Some(estimate), Some(bucket)) = (estimate, self.token_rate.get(engine))
            && let Delivery::Answered { body, .. } = delivery
            && let Some(actual) = rate::total_tokens(body)
        {
            bucket.settle(estimate - actual as f64);
        }
    }

    /// Tells the engine's concurrency limit how the attempt went.
    fn observe(&self, engine: usize, delivery: &Delivery, latency: Duration) {
        let signal = match delivery {
            Delivery::Answered {
                status: 429 | 503, ..
            }
            | Delivery::Unavailable { .. } => Signal::Overloaded,
            Delivery::Answered { .. } => Signal::Answered(latency),
            Delivery::Stopped => return,
        };
        self.pool.observe(engine, signal);
    }

    /// Records the attempt on the engine's breaker; whether the request may be retried.
    fn judge(&self, lease: &mut pool::Lease<'_>, delivery: &Delivery) -> bool {
        match delivery {
            Delivery::Answered { status, .. } if *status >= 500 => {
                self.failed(lease, &format!("HTTP {status}"));
                status_is_retryable(*status)
            }
            Delivery::Answered { status, .. } => {
                if lease.succeeded() {
                    tracing::warn!("{} answers again; sending to it", self.bases[lease.engine]);
                }
                status_is_retryable(*status)
            }
            Delivery::Unavailable { last_error } => {
                self.failed(lease, last_error);
                true
            }
            Delivery::Stopped => false,
        }
    }

    /// Whether `delivery` is the engine refusing the `priority` field (a 400 or 422 that names
    /// it); if so the engine gets no more of it, and the first refusal is logged.
    fn refuses_priority(&self, engine: usize, delivery: &Delivery) -> bool {
        let Delivery::Answered {
            status: 400 | 422,
            body,
            ..
        } = delivery
        else {
            return false;
        };
        if !String::from_utf8_lossy(body).contains("priority") {
            return false;
        }
        if !self.priority_refused[engine].swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "{} refuses the priority field ({}): sending its requests without it, so they are \
                 not scheduled below online traffic there",
                self.bases[engine],
                String::from_utf8_lossy(&body[..body.len().min(200)])
            );
        }
        true
    }

    /// Records a failed request on its engine, and says so when the engine is now skipped.
    fn failed(&self, lease: &mut pool::Lease<'_>, why: &str) {
        let url = &self.bases[lease.engine];
        match lease.failed() {
            Some(pool::Opened::Now { next_probe }) => tracing::warn!(
                "{url} is failing ({why}, {} in a row): skipping it; next probe in {}",
                pool::FAILURES_TO_OPEN,
                crate::report::progress::format_duration(next_probe)
            ),
            Some(pool::Opened::ProbeFailed { next_probe }) => tracing::warn!(
                "{url} is still failing ({why}): skipping it; next probe in {}",
                crate::report::progress::format_duration(next_probe)
            ),
            None => {}
        }
    }

    /// Waits for `engine`'s rate limits to allow one request of `tokens` estimated tokens.
    async fn pace(&self, engine: usize, tokens: Option<f64>) {
        if let Some(bucket) = self.request_rate.get(engine) {
            bucket.take(1.0).await;
        }
        if let (Some(bucket), Some(tokens)) = (self.token_rate.get(engine), tokens) {
            bucket.take(tokens).await;
        }
    }
}
