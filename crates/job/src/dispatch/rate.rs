//! Rate limits per engine: `--max-requests-per-second` and `--max-tokens-per-minute`, as token
//! buckets that hold at most one second (requests) or one minute (tokens) of allowance.
//!
//! A request's tokens are not known before the answer, so it takes an estimate (a quarter of
//! its body's bytes for the prompt, plus its `max_tokens`, or [`DEFAULT_OUTPUT_ESTIMATE`]), and
//! the difference is settled from the answer's `usage.total_tokens`: an overestimate is given
//! back, an underestimate taken (the bucket may go into debt, which later requests wait out).

use std::sync::Mutex;
use std::time::Duration;

// tokio's clock, so tests can pause and advance time.
use tokio::time::Instant;

/// Output tokens assumed for a request that sets no `max_tokens`.
pub const DEFAULT_OUTPUT_ESTIMATE: u64 = 256;

#[derive(Debug)]
pub struct Bucket {
    per_second: f64,
    capacity: f64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    /// `rate` per `period`, starting full.
    pub fn new(rate: f64, period: Duration) -> Self {
        let per_second = rate / period.as_secs_f64();
        Self {
            per_second,
            capacity: rate,
            state: Mutex::new((rate, Instant::now())),
        }
    }

    fn refill(&self, state: &mut (f64, Instant), now: Instant) {
        let elapsed = now.saturating_duration_since(state.1).as_secs_f64();
        state.0 = (state.0 + elapsed * self.per_second).min(self.capacity);
        state.1 = now;
    }

    /// Waits until `n` can be taken, and takes it (more than the capacity waits for a full
    /// bucket, then goes into debt).
    pub async fn take(&self, n: f64) {
        loop {
            let wait = {
                let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                self.refill(&mut s, Instant::now());
                let need = n.min(self.capacity);
                if s.0 >= need {
                    s.0 -= n;
                    return;
                }
                (need - s.0) / self.per_second
            };
            tokio::time::sleep(Duration::from_secs_f64(wait.max(0.001))).await;
        }
    }

    /// Settles an estimate: positive gives back, negative takes more.
    pub fn settle(&self, difference: f64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.refill(&mut s, Instant::now());
        s.0 = (s.0 + difference).min(self.capacity);
    }
}

/// The tokens a request is expected to cost: its prompt (bytes / 4) and its output limit.
pub fn estimate_tokens(body: &[u8]) -> u64 {
    let output = [
        "\"max_tokens\"",
        "\"max_completion_tokens\"",
        "\"max_output_tokens\"",
    ]
    .iter()
    .find_map(|key| number_after(body, key.as_bytes()))
    .unwrap_or(DEFAULT_OUTPUT_ESTIMATE);
    body.len() as u64 / 4 + output
}

/// The unsigned integer after `key` and a colon, if the body has one.
fn number_after(body: &[u8], key: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(body, key)? + key.len();
    let rest = &body[at..];
    let colon = rest.iter().position(|&b| b == b':')?;
    if !rest[..colon].iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    let digits: Vec<u8> = rest[colon + 1..]
        .iter()
        .copied()
        .skip_while(u8::is_ascii_whitespace)
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// `usage.total_tokens` of an answer body, when it has one.
pub fn total_tokens(answer: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Usage {
        total_tokens: Option<u64>,
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        usage: Option<Usage>,
    }
    serde_json::from_slice::<Answer>(answer)
        .ok()?
        .usage?
        .total_tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_bucket_paces_requests_at_its_rate() {
        let b = Bucket::new(10.0, Duration::from_secs(1));
        let start = Instant::now();
        for _ in 0..30 {
            b.take(1.0).await;
        }
        // 10 at once (a full bucket), then 20 at 10 per second.
        let took = start.elapsed().as_secs_f64();
        assert!((1.9..2.2).contains(&took), "{took}");
    }

    #[tokio::test(start_paused = true)]
    async fn estimates_are_settled_from_usage() {
        let b = Bucket::new(1000.0, Duration::from_secs(60));
        b.take(900.0).await;
        b.settle(-500.0); // the request cost 500 more than estimated: in debt
        let start = Instant::now();
        b.take(100.0).await;
        // 400 in debt + 100 needed = 500 tokens at 1000/min: 30 s.
        let took = start.elapsed().as_secs_f64();
        assert!((29.0..31.5).contains(&took), "{took}");
    }

    #[test]
    fn token_estimates_read_max_tokens() {
        let body = br#"{"model":"m","max_tokens": 64,"messages":[]}"#;
        assert_eq!(estimate_tokens(body), body.len() as u64 / 4 + 64);
        assert_eq!(estimate_tokens(b"{}"), DEFAULT_OUTPUT_ESTIMATE);
        assert_eq!(
            total_tokens(br#"{"id":"x","usage":{"prompt_tokens":3,"total_tokens":12}}"#),
            Some(12)
        );
        assert_eq!(total_tokens(b"not json"), None);
    }
}
