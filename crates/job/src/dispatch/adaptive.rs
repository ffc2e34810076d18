//! `--concurrency adaptive`: how many requests one engine may have in flight, kept just below
//! the point where the engine shows overload.
//!
//! The limit starts at the maximum, as a fixed limit would, and comes down on the engine's
//! signs of overload: by exactly the excess when the engine's own waiting queue (read from
//! its `/metrics`) grows past a small target; by x0.7 for a 429 or 503, a timeout or a dropped
//! connection; by x0.9 when latency rises well above its smoothed average (online traffic
//! arriving on a shared engine). At most one decrease per round trip, so a burst of failures
//! from one overload counts once. While the engine is healthy it grows back by one per round
//! trip. The aim is an engine kept just saturated: a short queue, not a long one.
//!
//! Why not start low and double per round trip, as TCP's slow start does: a batching engine
//! answers a small batch about as slowly as a full one (its latency is per decode step, not
//! per request), so each doubling costs a whole round trip of seconds. Measured on
//! `transformers serve` on one H200 (BENCHMARKS.md), a start at 4 took 13 s to reach 256 and
//! ran a 1,000-request job at 38-70% of a fixed limit's rate. Starting at the top costs one
//! round trip of queueing at most, which the engine's queue or 429/503 show at once, and with
//! `--priority` online requests pass the queued batch anyway.

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
/// Answers needed before latency is compared with its baseline, at least: the baseline also
/// waits for the first round trip to end, see [`Controller::warmed_up`].
const LATENCY_WARM_UP: u64 = 20;

/// What an attempt on the engine told the controller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    /// An answer that is not an overload status, after this long.
    Answered(Duration),
    /// 429, 503, a timeout, a reset: the engine is overloaded or going down.
    Overloaded,
    /// The engine's waiting queue as its `/metrics` reports it, and how many requests the
    /// runner has in flight on it at that moment.
    Queue { waiting: f64, in_flight: usize },
}

#[derive(Debug, Clone)]
pub struct Controller {
    min: f64,
    max: f64,
    limit: f64,
    short: Option<f64>,
    long: Option<f64>,
    answers: u64,
    /// When the first answer came.
    first_answer_at: Option<Instant>,
    /// Whether a request sent after the first answer came has been answered: the first round
    /// trip is over.
    second_round: bool,
    /// No second decrease before this (one round trip after the last).
    calm_until: Option<Instant>,
    /// The queue the engine may keep before it counts as overloaded.
    queue_target: f64,
    /// Decreases so far.
    cuts: u64,
}

impl Controller {
    pub fn new(min: usize, max: usize) -> Self {
        let min = min.max(1) as f64;
        let max = (max as f64).max(min);
        Self {
            min,
            max,
            limit: max,
            short: None,
            long: None,
            answers: 0,
            first_answer_at: None,
            second_round: false,
            calm_until: None,
            queue_target: 0.0,
            cuts: 0,
        }
    }

    /// The current limit, in whole requests.
    pub fn limit(&self) -> usize {
        self.limit.floor() as usize
    }

    /// How many times the limit came down (a sign of overload each).
    pub fn cuts(&self) -> u64 {
        self.cuts
    }

    pub fn observe(&mut self, signal: Signal, now: Instant) {
        match signal {
            Signal::Answered(latency) => {
                let secs = latency.as_secs_f64();
                self.answers += 1;
                let first = *self.first_answer_at.get_or_insert(now);
                self.second_round |= now.checked_sub(latency).is_some_and(|sent| sent >= first);
                let short = ewma(self.short, secs, SHORT_WEIGHT);
                let long = ewma(self.long, secs, LONG_WEIGHT);
                self.short = Some(short);
                self.long = Some(long);
                // Relative to the recent average, not to the first answers: a batching engine
                // answers more slowly as its batch grows, by design, so only a rise from the
                // load it had is a sign (more traffic on a shared engine).
                if self.warmed_up() && short > long * LATENCY_TOLERANCE {
                    self.decrease(now, self.limit * (1.0 - LATENCY_DECREASE));
                } else {
                    self.increase();
                }
            }
            Signal::Overloaded => self.decrease(now, self.limit * (1.0 - DECREASE)),
            Signal::Queue { waiting, in_flight } => {
                // A little queue keeps the engine's batches full; more only adds latency. The
                // excess says exactly how far the limit is off, so just that comes off: no
                // sawtooth below the engine's capacity. Requests still in flight above the
                // limit (sent before the last cut) are part of the queue that is already
                // going away: counted again, they would cut the limit twice.
                self.queue_target = (self.limit * 0.1).max(2.0);
                let leaving = (in_flight as f64 - self.limit).max(0.0);
                let excess = waiting - self.queue_target - leaving;
                if excess > 0.0 {
                    self.decrease(now, excess);
                }
            }
        }
    }

    /// Whether latency may be compared with its baseline yet. Not during the first round trip
    /// (until a request sent after the first answer came is answered): a batching engine given
    /// a full limit at once answers its first requests before the rest of its batch has even
    /// started, so the latency of that round trip climbs by design (on `transformers serve` at
    /// 256, from about 1 s to 3.4 s, which cut the limit and cost 10% of the job's rate). Told
    /// by time rather than by a count of answers: a count would have to be the number sent at
    /// once, which the job's size and the dispatcher bound as much as the limit does.
    fn warmed_up(&self) -> bool {
        self.answers > LATENCY_WARM_UP && self.second_round
    }

    /// About one more per round trip (one limit's worth of answers).
    fn increase(&mut self) {
        self.limit = (self.limit + 1.0 / self.limit).min(self.max);
    }

    /// Takes `by` requests off the limit (once per round trip).
    fn decrease(&mut self, now: Instant, by: f64) {
        if self.calm_until.is_some_and(|t| now < t) {
            return;
        }
        self.cuts += 1;
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
    fn starts_at_the_maximum_and_stays_there_while_healthy() {
        let mut c = Controller::new(4, 64);
        let now = Instant::now();
        assert_eq!(c.limit(), 64);
        for _ in 0..1000 {
            c.observe(Signal::Answered(RTT), now);
        }
        assert_eq!((c.limit(), c.cuts()), (64, 0));
        assert_eq!(Controller::new(8, 8).limit(), 8);
        assert_eq!(Controller::new(0, 0).limit(), 1);
    }

    #[test]
    fn overload_shrinks_once_per_round_trip_then_growth_is_additive() {
        let mut c = Controller::new(1, 100);
        let t0 = Instant::now();
        c.observe(Signal::Overloaded, t0);
        assert_eq!(c.limit(), 70);
        // The rest of the same burst counts once.
        for _ in 0..10 {
            c.observe(Signal::Overloaded, t0 + RTT / 2);
        }
        assert_eq!(c.limit(), 70);
        c.observe(Signal::Overloaded, t0 + RTT * 2);
        assert_eq!((c.limit(), c.cuts()), (49, 2));
        // Additive: about one more per limit's worth of answers.
        for _ in 0..55 {
            c.observe(Signal::Answered(RTT), t0 + RTT * 3);
        }
        assert_eq!(c.limit(), 50);
        c.observe(Signal::Overloaded, t0 + RTT * 10);
        for _ in 0..10 {
            c.observe(Signal::Overloaded, t0 + RTT * (11 + 2 * 10));
        }
        assert!(c.limit() >= 1, "never below the minimum");
    }

    #[test]
    fn rising_latency_and_a_growing_queue_are_overload_signs() {
        let mut c = Controller::new(1, 1000);
        let t0 = Instant::now();
        for i in 0..60 {
            c.observe(Signal::Answered(RTT), t0 + RTT * i);
        }
        for _ in 0..5 {
            c.observe(Signal::Answered(RTT * 4), t0 + RTT * 61);
        }
        assert!(
            c.limit() < 1000,
            "latency 4x its recent average must shrink the limit"
        );
        let queue = |waiting: f64, in_flight: usize| Signal::Queue { waiting, in_flight };
        let mut q = Controller::new(1, 50);
        q.observe(queue(1.0, 50), t0);
        assert_eq!(q.limit(), 50, "a short queue is the target");
        q.observe(queue(8.0, 50), t0);
        assert_eq!(q.limit(), 47, "a queue of 8 over a target of 5 takes 3 off");
        let mut flood = Controller::new(1, 200);
        flood.observe(queue(170.0, 200), t0);
        assert_eq!(
            flood.limit(),
            50,
            "a queue of 170 over a target of 20 takes 150 off"
        );
        // The next reading, before the requests sent above the new limit have left: they are
        // still queued in the engine, and must not cut the limit again.
        flood.observe(queue(100.0, 150), t0 + RTT * 10);
        assert_eq!(flood.limit(), 50);
        flood.observe(queue(30.0, 50), t0 + RTT * 20);
        assert_eq!(
            flood.limit(),
            25,
            "a queue past the target with no one leaving is cut"
        );
    }

    /// The first round trip of a batching engine given its whole limit at once: the first
    /// answers come back fast, the last ones (admitted later) slowly. That sets the baseline;
    /// it is no overload sign. The same rise after the first round trip is.
    #[test]
    fn the_first_round_trip_sets_the_baseline() {
        let mut c = Controller::new(4, 256);
        let t0 = Instant::now();
        for i in 0..256u32 {
            // The engine runs 64 at a time: answers after 1 s, 2 s, 3 s, then 4 s.
            let latency = RTT * (10 * (1 + i / 64));
            c.observe(Signal::Answered(latency), t0 + latency);
        }
        assert_eq!((c.limit(), c.cuts()), (256, 0));
        for _ in 0..300 {
            c.observe(Signal::Answered(RTT * 10), t0 + RTT * 100);
        }
        for _ in 0..10 {
            c.observe(Signal::Answered(RTT * 40), t0 + RTT * 200);
        }
        assert_eq!(c.cuts(), 1, "a rise after the first round trip");
    }

    /// The first round trip ends with the first answer to a request sent after an answer
    /// came, however high the maximum: a job far smaller than `--max-concurrency` still has its
    /// latency watched.
    #[test]
    fn a_large_maximum_keeps_the_latency_rule() {
        let mut c = Controller::new(4, 100_000);
        let t0 = Instant::now();
        for i in 0..100 {
            c.observe(Signal::Answered(RTT), t0 + RTT * i);
        }
        for _ in 0..5 {
            c.observe(Signal::Answered(RTT * 4), t0 + RTT * 101);
        }
        assert_eq!(c.cuts(), 1);
    }

    /// A batching engine at full load: each answer is slower than an unloaded one would be,
    /// by design, and steadily so. That is no overload sign.
    #[test]
    fn a_steady_latency_under_full_load_keeps_the_limit() {
        let mut c = Controller::new(4, 256);
        let t0 = Instant::now();
        for i in 0..2000u32 {
            let jitter = Duration::from_millis(u64::from(i % 7) * 30);
            c.observe(Signal::Answered(RTT * 20 + jitter), t0);
        }
        assert_eq!(c.limit(), 256);
    }
}
