//! When to retry a request, and how long to wait first.
//!
//! Retryable: transport failures (refused or reset connections, timeouts, truncated answers) and
//! the statuses that mean "not now" (408, 429, 5xx). Every other 4xx is the request's own fault
//! and final. Waits grow exponentially with jitter, and a `Retry-After` (or `retry-after-ms`)
//! from the engine is honoured: the wait is never shorter than what the engine asked for.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;

/// The longest `Retry-After` honoured; a longer one is clamped to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// The wait before the first retry (before jitter).
    pub base_delay: Duration,
    /// The longest wait between two attempts (before `Retry-After`).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

pub fn status_is_retryable(status: u16) -> bool {
    matches!(status, 408 | 429) || (500..600).contains(&status)
}

impl RetryPolicy {
    /// The wait before retry number `retry` (0 for the first retry): half the exponential delay
    /// plus a random part of the other half, so many clients that failed together spread out.
    pub fn backoff(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX))
            .min(self.max_delay);
        let half = exp / 2;
        let jitter = half.mul_f64(random_fraction());
        let delay = half + jitter;
        match retry_after {
            Some(asked) => delay.max(asked.min(MAX_RETRY_AFTER)),
            None => delay,
        }
    }
}

/// Reads `retry-after-ms`, or `Retry-After` as seconds or as an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = header_str(headers, "retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        return Duration::try_from_secs_f64(ms / 1000.0).ok();
    }
    let value = header_str(headers, "retry-after")?;
    if let Ok(secs) = value.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).ok();
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok().map(str::trim)
}

/// A uniformly distributed number in [0, 1): each `RandomState` is freshly keyed, which is
/// enough randomness for jitter without a PRNG dependency.
fn random_fraction() -> f64 {
    (RandomState::new().hash_one(0u8) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn classifies_statuses() {
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert!(status_is_retryable(s), "{s}");
        }
        for s in [200, 400, 401, 403, 404, 409, 422] {
            assert!(!status_is_retryable(s), "{s}");
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            max_retries: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        for _ in 0..100 {
            let d0 = p.backoff(0, None);
            assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100));
            let d3 = p.backoff(3, None);
            assert!(d3 >= Duration::from_millis(400) && d3 <= Duration::from_millis(800));
            let d9 = p.backoff(40, None);
            assert!(d9 >= Duration::from_millis(500) && d9 <= Duration::from_secs(1));
        }
        assert!(p.backoff(0, Some(Duration::from_secs(7))) >= Duration::from_secs(7));
        assert_eq!(
            p.backoff(0, Some(Duration::from_secs(9999))),
            MAX_RETRY_AFTER
        );
    }

    #[test]
    fn reads_retry_after_in_its_three_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
        h.insert("retry-after-ms", HeaderValue::from_static("soon"));
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }
}
