//! Fault injection: by rate, and by a `sim` directive in the request body.
//!
//! A directive `{"sim": {"status": S, "retry_after": SECS, "drop": true, "hang": true,
//! "times": N}}` applies its fault
//! to the first `N` attempts of that exact body (every attempt when `times` is absent), so a
//! test can say "this line fails twice with 503 and then succeeds" and know what to expect.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::SimConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status, and a `Retry-After` of that many seconds when given.
    Status(u16, Option<u64>),
    Drop,
    Hang,
}

pub struct Faults {
    /// Attempts seen per body, for directives with `times`.
    attempts: Mutex<HashMap<u64, u64>>,
    draws: AtomicU64,
    seed: u64,
}

impl Faults {
    pub fn new(seed: u64) -> Self {
        Self {
            attempts: Mutex::new(HashMap::new()),
            draws: AtomicU64::new(0),
            seed,
        }
    }

    pub fn pick(
        &self,
        config: &SimConfig,
        request: &serde_json::Value,
        body: &[u8],
    ) -> Option<Fault> {
        if let Some(directive) = request.get("sim").filter(|d| d.is_object()) {
            return self.directed(directive, body);
        }
        let roll = |rate: f64| rate > 0.0 && self.uniform() < rate;
        if roll(config.drop_rate) {
            Some(Fault::Drop)
        } else if roll(config.hang_rate) {
            Some(Fault::Hang)
        } else if roll(config.fail_rate) {
            Some(Fault::Status(config.fail_status, None))
        } else {
            None
        }
    }

    fn directed(&self, directive: &serde_json::Value, body: &[u8]) -> Option<Fault> {
        if let Some(times) = directive.get("times").and_then(serde_json::Value::as_u64) {
            let mut h = DefaultHasher::new();
            body.hash(&mut h);
            let mut attempts = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
            let seen = attempts.entry(h.finish()).or_default();
            *seen += 1;
            if *seen > times {
                return None;
            }
        }
        let flag =
            |name: &str| directive.get(name).and_then(serde_json::Value::as_bool) == Some(true);
        if flag("drop") {
            Some(Fault::Drop)
        } else if flag("hang") {
            Some(Fault::Hang)
        } else {
            directive
                .get("status")
                .and_then(serde_json::Value::as_u64)
                .and_then(|s| u16::try_from(s).ok())
                .map(|status| {
                    let retry_after = directive
                        .get("retry_after")
                        .and_then(serde_json::Value::as_u64);
                    Fault::Status(status, retry_after)
                })
        }
    }

    /// A number in [0, 1) from a SplitMix64 sequence: lock-free and repeatable for a seed.
    fn uniform(&self) -> f64 {
        let n = self.draws.fetch_add(1, Ordering::Relaxed);
        let mut z = self
            .seed
            .wrapping_add(n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn directives_apply_to_the_first_attempts_only() {
        let f = Faults::new(1);
        let c = SimConfig::default();
        let req = json!({"sim": {"status": 503, "times": 2}});
        let body = req.to_string();
        assert_eq!(
            f.pick(&c, &req, body.as_bytes()),
            Some(Fault::Status(503, None))
        );
        assert_eq!(
            f.pick(&c, &req, body.as_bytes()),
            Some(Fault::Status(503, None))
        );
        assert_eq!(f.pick(&c, &req, body.as_bytes()), None);
        let always = json!({"sim": {"drop": true}});
        for _ in 0..3 {
            assert_eq!(f.pick(&c, &always, b"x"), Some(Fault::Drop));
        }
    }

    #[test]
    fn rates_are_roughly_honoured() {
        let f = Faults::new(7);
        let c = SimConfig {
            fail_rate: 0.25,
            ..Default::default()
        };
        let req = json!({});
        let failed = (0..10_000)
            .filter(|_| f.pick(&c, &req, b"").is_some())
            .count();
        assert!((2_000..3_000).contains(&failed), "{failed}");
    }
}
