//! `--concurrency adaptive`: how many requests one engine may have in flight, found as TCP finds
//! its window.
//!
//! The limit starts at the minimum and, while the engine is healthy, grows: by one per success
//! at first (slow start, doubling every round trip), then by one per round trip (additive
//! increase) after the first sign of overload. It shrinks on overload: by x0.7 for a 429 or 503,
//! a timeout or dropped connection; by x0.9 for latency rising well above its smoothed
//! baseline (after slow start only: a batching engine answers more slowly as its batch grows,
//! by design, and the baseline of the first answers was taken at a fraction of the load); and
//! by exactly the excess when the engine's own waiting queue (read from its
//! `/metrics`) grows past a small target. At most one decrease per round trip, so a burst of
//! failures from one overload counts once. The aim is an engine kept just saturated: a short queue, not a long one.

use std::time::Duration;

// tokio's clock, so tests can pause and advance time.
use tokio::time::Instant;

/// The factor a limit is multiplied by on overload (429/503, timeouts).
const DECREASE: f64 = 0.7;
/// The gentler factor for rising latency, a softer sign.
const LATENCY_DECREASE: f64 = 0.9;
/// Latency this many times its long-run average is an overload sign.
const LATENCY_TOLERANCE: f64 = 1.5;
/// Smoothing of the short (recent) and long (baseline) latency averages.
const SHORT_WEIGHT: f64 = 0.2;
const LONG_WEIGHT: f64 = 0.02;
/// Answers needed before latency is compared with its baseline.
const LATENCY_WARM_UP: u64 = 20;

/// What an attempt on the engine told the controller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    /// An answer that is not an overload status, after this long.
    Answered(Duration),
    /// 429, 503, a timeout, a reset: the engine is overloaded or going down.
    Overloaded,
    /// The engine's waiting queue as its `/metrics` reports it.
    Queue(f64),
}

#[derive(Debug, Clone)]
pub struct Controller {
    min: f64,
    max: f64,
    limit: f64,
    slow_start: bool,
    short: Option<f64>,
    long: Option<f64>,
    answers: u64,
    /// No second decrease before this (one round trip after the last).
    calm_until: Option<Instant>,
    /// The queue the engine may keep before it counts as overloaded.
    queue_target: f64,
}

impl Controller {
    pub fn new(min: usize, max: usize) -> Self {
        let min = min.max(1) as f64;
        let max = (max as f64).max(min);
        Self {
            min,
            max,
            limit: min,
            slow_start: true,
            short: None,
            long: None,
            answers: 0,
            calm_until: None,
            queue_target: 0.0,
        }
    }

    /// The current limit, in whole requests.
    pub fn limit(&self) -> usize {
        self.limit.floor() as usize
    }

    /// Still growing by one per answer (no overload sign seen yet).
    pub fn in_slow_start(&self) -> bool {
        self.slow_start
    }

    pub fn observe(&mut self, signal: Signal, now: Instant) {
        match signal {
            Signal::Answered(latency) => {
                let secs = latency.as_secs_f64();
                self.answers += 1;
                let short = ewma(self.short, secs, SHORT_WEIGHT);
                let long = ewma(self.long, secs, LONG_WEIGHT);
                self.short = Some(short);
                self.long = Some(long);
                // Not in slow start: its latency baseline comes from the first answers, at a
                // fraction of the load, and a batching engine answers more slowly as its batch
                // grows, by design. Slow start ends on real overload signs (429/503, timeouts,
                // the engine's queue), as TCP's ends on loss.
                if !self.slow_start
                    && self.answers > LATENCY_WARM_UP
                    && short > long * LATENCY_TOLERANCE
                {
                    self.decrease(now, self.limit * (1.0 - LATENCY_DECREASE));
                } else {
                    self.increase();
                }
            }
            Signal::Overloaded => self.decrease(now, self.limit * (1.0 - DECREASE)),
            Signal::Queue(waiting) => {
                // A little queue keeps the engine's batches full; more only adds latency. The
                // excess says exactly how far the limit is off, so just that comes off: no
                // sawtooth below the engine's capacity.
                self.queue_target = (self.limit * 0.1).max(2.0);
                if waiting > self.queue_target {
                    self.decrease(now, waiting - self.queue_target);
                }
            }
        }
    }

    fn increase(&mut self) {
        let step = if self.slow_start {
            1.0
        } else {
            1.0 / self.limit
        };
        self.limit = (self.limit + step).min(self.max);
    }

    /// Takes `by` requests off the limit (once per round trip).
    fn decrease(&mut self, now: Instant, by: f64) {
        if self.calm_until.is_some_and(|t| now < t) {
            return;
        }
        self.slow_start = false;
        self.limit = (self.limit - by).max(self.min);
        let round_trip = self.short.unwrap_or(0.1).clamp(0.01, 10.0);
        self.calm_until = Some(now + Duration::from_secs_f64(round_trip));
    }
}

fn ewma(previous: Option<f64>, value: f64, weight: f64) -> f64 {
    previous.map_or(value, |p| p + weight * (value - p))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: Duration = Duration::from_millis(100);

    #[test]
    fn grows_fast_while_healthy_and_never_past_the_maximum() {
        let mut c = Controller::new(4, 64);
        let now = Instant::now();
        assert_eq!(c.limit(), 4);
        for _ in 0..10 {
            c.observe(Signal::Answered(RTT), now);
        }
        assert_eq!(c.limit(), 14, "slow start: one more per success");
        for _ in 0..1000 {
            c.observe(Signal::Answered(RTT), now);
        }
        assert_eq!(c.limit(), 64);
    }

    #[test]
    fn overload_shrinks_once_per_round_trip_then_growth_is_additive() {
        let mut c = Controller::new(1, 1000);
        let t0 = Instant::now();
        for _ in 0..99 {
            c.observe(Signal::Answered(RTT), t0);
        }
        assert_eq!(c.limit(), 100);
        c.observe(Signal::Overloaded, t0);
        assert_eq!(c.limit(), 70);
        // The rest of the same burst counts once.
        for _ in 0..10 {
            c.observe(Signal::Overloaded, t0 + RTT / 2);
        }
        assert_eq!(c.limit(), 70);
        c.observe(Signal::Overloaded, t0 + RTT * 2);
        assert_eq!(c.limit(), 49);
        // Additive: about one more per limit's worth of answers.
        for _ in 0..55 {
            c.observe(Signal::Answered(RTT), t0 + RTT * 3);
        }
        assert_eq!(c.limit(), 50);
    }

    #[test]
    fn rising_latency_and_a_growing_queue_are_overload_signs() {
        let mut c = Controller::new(1, 1000);
        let t0 = Instant::now();
        for _ in 0..60 {
            c.observe(Signal::Answered(RTT), t0);
        }
        c.observe(Signal::Overloaded, t0); // slow start ends
        let t1 = t0 + RTT * 2;
        for _ in 0..50 {
            c.observe(Signal::Answered(RTT), t1);
        }
        let before = c.limit();
        for _ in 0..5 {
            c.observe(Signal::Answered(RTT * 4), t1);
        }
        assert!(
            c.limit() < before,
            "latency 4x the baseline must shrink the limit"
        );
        let mut q = Controller::new(1, 1000);
        for _ in 0..49 {
            q.observe(Signal::Answered(RTT), t0);
        }
        q.observe(Signal::Queue(1.0), t0);
        assert_eq!(q.limit(), 50, "a short queue is the target");
        q.observe(Signal::Queue(8.0), t0);
        assert_eq!(q.limit(), 47, "a queue of 8 over a target of 5 takes 3 off");
        let mut flood = Controller::new(1, 1000);
        for _ in 0..199 {
            flood.observe(Signal::Answered(RTT), t0);
        }
        flood.observe(Signal::Queue(170.0), t0);
        assert_eq!(
            flood.limit(),
            50,
            "a queue of 170 over a target of 20 takes 150 off"
        );
        assert_eq!(Controller::new(8, 8).limit(), 8);
    }

    /// Slow start on a batching engine: each answer takes longer as the batch grows (here 4x
    /// from the first answers), by design. Only real overload signs end slow start.
    #[test]
    fn latency_growing_with_the_batch_does_not_end_slow_start() {
        let mut c = Controller::new(4, 256);
        let t0 = Instant::now();
        for _ in 0..2000 {
            let latency = RTT + Duration::from_millis(2) * c.limit() as u32;
            c.observe(Signal::Answered(latency), t0);
        }
        assert_eq!(c.limit(), 256);
    }
}
