//! The engines a job sends to: least-in-flight choice and a circuit breaker per engine.
//!
//! Each request goes to the available engine with the fewest requests in flight. An engine that
//! fails several times in a row (transport errors or 5xx) is skipped for a cool-down. When it
//! ends, a single request probes the engine (half-open) while the others wait: an answer that is
//! not a server error closes the breaker, a failure opens it again for twice as long (up to a
//! cap). An outage counts once however many requests were in flight when it began: failures of
//! requests that were sent before the breaker opened are not counted again, so 64 requests
//! failing together open it for the first cool-down, not the longest. When every engine is
//! cooling down, requests wait for the first one to come back instead of hammering engines that
//! are known to be down.
//!
//! An engine the runner launched itself is *suspended* while it restarts after a crash: no
//! request goes to it, and requests that have nowhere else to go wait until it is back, so a
//! restart that takes minutes (model loading) burns no retries.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

// tokio's clock, so tests can pause and advance time.
use tokio::time::Instant;

use super::adaptive::{Controller, Signal};

/// Consecutive failures that open an engine's breaker.
pub const FAILURES_TO_OPEN: u32 = 5;
const FIRST_COOL_DOWN: Duration = Duration::from_secs(2);
const MAX_COOL_DOWN: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    /// Skipped until then; the first lease after it is the probe.
    Open {
        until: Instant,
    },
    /// The probe is out; everyone else waits for its outcome.
    Probing,
}

#[derive(Debug)]
struct Breaker {
    state: State,
    /// The next open period.
    cool_down: Duration,
    suspended: bool,
    /// When the breaker opened, until a success closes it.
    down_since: Option<Instant>,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            state: State::Closed { failures: 0 },
            cool_down: FIRST_COOL_DOWN,
            suspended: false,
            down_since: None,
        }
    }
}

impl Breaker {
    fn open(&mut self, now: Instant) -> Duration {
        let for_how_long = self.cool_down;
        self.state = State::Open {
            until: now + for_how_long,
        };
        self.down_since.get_or_insert(now);
        for_how_long
    }
}

/// A breaker that opened, or stayed open after its probe failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// Closed until now: this failure opened it.
    Now { next_probe: Duration },
    /// The probe failed.
    ProbeFailed { next_probe: Duration },
}

/// Chooses engines; knows nothing about HTTP.
#[derive(Debug)]
pub struct Pool {
    in_flight: Vec<AtomicUsize>,
    /// Per-engine concurrency controllers (`--concurrency adaptive`); empty for a fixed limit,
    /// which the dispatcher enforces across all engines.
    controllers: Vec<Mutex<Controller>>,
    /// Wakes requests waiting for an engine below its limit.
    freed: tokio::sync::Notify,
    breakers: Mutex<Vec<Breaker>>,
    /// Rotates the starting point so ties do not always go to the first engine.
    turn: AtomicUsize,
    /// Wakes requests waiting on a breaker: a suspended engine came back, or a probe ended.
    changed: tokio::sync::Notify,
}

/// Why no engine can take a request now.
enum Blocked {
    /// Every usable engine is at its adaptive limit.
    Full,
    /// Every usable engine's breaker is open until the first of these.
    Until(Instant),
    /// Every engine is suspended or being probed.
    Waiting,
}

/// Holds an engine's in-flight slot; released on drop. Its outcome goes to the breaker through
/// [`Lease::failed`] and [`Lease::succeeded`].
pub struct Lease<'a> {
    pool: &'a Pool,
    pub engine: usize,
    /// This request probes an engine whose cool-down ended.
    probe: bool,
}

impl Lease<'_> {
    /// Records a failure (a transport error or a 5xx); says when the breaker opened.
    pub fn failed(&mut self) -> Option<Opened> {
        let probe = std::mem::take(&mut self.probe);
        self.pool.record_failure(self.engine, probe)
    }

    /// Records an answer; true when it closed an open breaker.
    pub fn succeeded(&mut self) -> bool {
        self.probe = false;
        self.pool.record_success(self.engine)
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.pool.in_flight[self.engine].fetch_sub(1, Ordering::Relaxed);
        if self.probe {
            // A probe that ended with no outcome (the job stopped): probe again at once.
            self.pool.abandon_probe(self.engine);
        }
        if !self.pool.controllers.is_empty() {
            self.pool.freed.notify_waiters();
        }
    }
}

impl Pool {
    pub fn new(engines: usize) -> Self {
        Self::with_controllers(engines, None)
    }

    /// A pool whose engines each get an adaptive limit between `min` and `max`.
    pub fn adaptive(engines: usize, min: usize, max: usize) -> Self {
        Self::with_controllers(engines, Some(Controller::new(min, max)))
    }

    fn with_controllers(engines: usize, controller: Option<Controller>) -> Self {
        Self {
            controllers: controller
                .map(|c| (0..engines).map(|_| Mutex::new(c.clone())).collect())
                .unwrap_or_default(),
            freed: tokio::sync::Notify::new(),
            in_flight: (0..engines).map(|_| AtomicUsize::new(0)).collect(),
            breakers: Mutex::new((0..engines).map(|_| Breaker::default()).collect()),
            turn: AtomicUsize::new(0),
            changed: tokio::sync::Notify::new(),
        }
    }

    pub fn in_flight(&self, engine: usize) -> usize {
        self.in_flight[engine].load(Ordering::Relaxed)
    }

    /// Takes a slot on the best available engine, waiting while every breaker is open or
    /// every engine is at its adaptive limit.
    pub async fn lease(&self) -> Lease<'_> {
        loop {
            // Registered before choosing, so a change or a release between the two is not missed.
            let changed = self.changed.notified();
            let freed = self.freed.notified();
            match self.choose(Instant::now()) {
                Ok((engine, probe)) => {
                    self.in_flight[engine].fetch_add(1, Ordering::Relaxed);
                    return Lease {
                        pool: self,
                        engine,
                        probe,
                    };
                }
                Err(Blocked::Full) => {
                    tokio::select! {
                        () = freed => {}
                        () = changed => {}
                    }
                }
                Err(Blocked::Until(reopens_at)) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(reopens_at) => {}
                        () = changed => {}
                    }
                }
                Err(Blocked::Waiting) => changed.await,
            }
        }
    }

    /// An adaptive engine's current limit (`None` with a fixed limit).
    pub fn limit(&self, engine: usize) -> Option<usize> {
        self.controllers
            .get(engine)
            .map(|c| c.lock().unwrap_or_else(|e| e.into_inner()).limit())
    }

    /// Feeds an adaptive engine's controller; a raised limit lets waiting requests in.
    pub fn observe(&self, engine: usize, signal: Signal) {
        let Some(controller) = self.controllers.get(engine) else {
            return;
        };
        let (before, after, cuts) = {
            let mut c = controller.lock().unwrap_or_else(|e| e.into_inner());
            let before = c.limit();
            c.observe(signal, Instant::now());
            (before, c.limit(), c.cuts())
        };
        if after < before {
            // The first sign of overload is worth knowing; the adjustments after it are not.
            let message = format!(
                "engine {}: adaptive limit {before} -> {after} ({signal:?})",
                engine + 1
            );
            if cuts == 1 {
                tracing::info!("{message}");
            } else {
                tracing::debug!("{message}");
            }
        }
        if after > before {
            self.freed.notify_waiters();
        }
    }

    /// The available engine with the fewest in flight, below its limit, and whether the lease
    /// is its probe; otherwise why none is available.
    fn choose(&self, now: Instant) -> Result<(usize, bool), Blocked> {
        let mut breakers = self.lock();
        let n = breakers.len();
        let start = self.turn.fetch_add(1, Ordering::Relaxed) % n.max(1);
        let mut best: Option<(usize, usize)> = None;
        let mut first_reopen: Option<Instant> = None;
        let mut full = false;
        for k in 0..n {
            let i = (start + k) % n;
            match breakers[i].state {
                _ if breakers[i].suspended => {}
                State::Probing => {}
                State::Open { until } if until > now => {
                    first_reopen = Some(first_reopen.map_or(until, |f| f.min(until)));
                }
                State::Open { .. } | State::Closed { .. } => {
                    let load = self.in_flight(i);
                    if self.limit(i).is_some_and(|limit| load >= limit) {
                        full = true;
                        continue;
                    }
                    if best.is_none_or(|(_, b)| load < b) {
                        best = Some((i, load));
                    }
                }
            }
        }
        match (best, first_reopen) {
            (Some((i, _)), _) => {
                let probe = matches!(breakers[i].state, State::Open { .. });
                if probe {
                    breakers[i].state = State::Probing;
                }
                Ok((i, probe))
            }
            (None, _) if full => Err(Blocked::Full),
            (None, Some(at)) => Err(Blocked::Until(at)),
            (None, None) => Err(Blocked::Waiting),
        }
    }

    /// Sends nothing to `engine` until [`Pool::resume`].
    pub fn suspend(&self, engine: usize) {
        self.lock()[engine].suspended = true;
    }

    /// Takes `engine` back into use with a clean breaker.
    pub fn resume(&self, engine: usize) {
        self.lock()[engine] = Breaker::default();
        self.changed.notify_waiters();
    }

    /// True when this closed an open breaker.
    fn record_success(&self, engine: usize) -> bool {
        let mut breakers = self.lock();
        let b = &mut breakers[engine];
        let was_open = b.down_since.is_some();
        b.state = State::Closed { failures: 0 };
        b.cool_down = FIRST_COOL_DOWN;
        b.down_since = None;
        drop(breakers);
        if was_open {
            self.changed.notify_waiters();
        }
        was_open
    }

    fn record_failure(&self, engine: usize, probe: bool) -> Option<Opened> {
        let mut breakers = self.lock();
        let b = &mut breakers[engine];
        let now = Instant::now();
        let opened = match b.state {
            State::Closed { failures } if failures + 1 < FAILURES_TO_OPEN => {
                b.state = State::Closed {
                    failures: failures + 1,
                };
                None
            }
            State::Closed { .. } => Some(Opened::Now {
                next_probe: b.open(now),
            }),
            State::Probing if probe => {
                b.cool_down = (b.cool_down * 2).min(MAX_COOL_DOWN);
                Some(Opened::ProbeFailed {
                    next_probe: b.open(now),
                })
            }
            // Requests sent before the breaker opened, failing with the same outage.
            State::Open { .. } | State::Probing => None,
        };
        drop(breakers);
        if matches!(opened, Some(Opened::ProbeFailed { .. })) {
            self.changed.notify_waiters();
        }
        opened
    }

    fn abandon_probe(&self, engine: usize) {
        let mut breakers = self.lock();
        if breakers[engine].state == State::Probing {
            breakers[engine].state = State::Open {
                until: Instant::now(),
            };
            drop(breakers);
            self.changed.notify_waiters();
        }
    }

    /// Opens an engine's breaker straight away (it failed its probe before the run).
    pub fn mark_down(&self, engine: usize) {
        self.lock()[engine].open(Instant::now());
    }

    /// Engines (not suspended) whose breaker is open.
    pub fn down(&self) -> usize {
        self.lock()
            .iter()
            .filter(|b| !b.suspended && b.down_since.is_some())
            .count()
    }

    /// How long every engine (not suspended) has been down, when all are; `None` while one
    /// answers, or all are suspended (a launched engine restarting has its own limits).
    pub fn all_down_for(&self) -> Option<Duration> {
        let now = Instant::now();
        let breakers = self.lock();
        let mut active = breakers.iter().filter(|b| !b.suspended).peekable();
        active.peek()?;
        active
            .map(|b| {
                b.down_since
                    .map(|since| now.saturating_duration_since(since))
            })
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .min()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Breaker>> {
        // The breakers hold plain counters; a panic elsewhere cannot leave them inconsistent.
        self.breakers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn prefers_the_least_loaded_engine() {
        let pool = Pool::new(3);
        let a = pool.lease().await;
        let b = pool.lease().await;
        let c = pool.lease().await;
        let mut engines = vec![a.engine, b.engine, c.engine];
        engines.sort_unstable();
        assert_eq!(engines, vec![0, 1, 2]);
        drop(b);
        let d = pool.lease().await;
        assert_eq!(pool.in_flight(d.engine), 1);
        assert!([a.engine, c.engine].iter().all(|&e| pool.in_flight(e) == 1));
    }

    #[tokio::test]
    async fn a_failing_engine_is_skipped_until_it_cools_down() {
        let pool = Pool::new(2);
        for k in 0..FAILURES_TO_OPEN {
            let opened = pool.record_failure(1, false);
            assert_eq!(opened.is_some(), k + 1 == FAILURES_TO_OPEN);
        }
        for _ in 0..10 {
            assert_eq!(pool.lease().await.engine, 0);
        }
        pool.record_success(1);
        let engines: Vec<usize> = futures_lite_collect(&pool, 4).await;
        assert!(engines.contains(&1));
    }

    async fn futures_lite_collect(pool: &Pool, n: usize) -> Vec<usize> {
        let mut leases = Vec::new();
        for _ in 0..n {
            leases.push(pool.lease().await);
        }
        leases.iter().map(|l| l.engine).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn an_adaptive_limit_holds_requests_until_there_is_room() {
        let pool = std::sync::Arc::new(Pool::adaptive(1, 2, 2));
        let a = pool.lease().await;
        let _b = pool.lease().await;
        let third = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.lease().await.engine })
        };
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(
            !third.is_finished(),
            "a third request must wait at a limit of 2"
        );
        drop(a);
        assert_eq!(third.await.expect("join"), 0);
        assert_eq!(pool.limit(0), Some(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_suspended_engine_gets_nothing_until_resumed() {
        let pool = std::sync::Arc::new(Pool::new(1));
        pool.suspend(0);
        let waiting = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.lease().await.engine })
        };
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(
            !waiting.is_finished(),
            "no lease while suspended, however long"
        );
        pool.resume(0);
        assert_eq!(waiting.await.expect("join"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn when_all_are_down_a_lease_waits_for_the_first_to_reopen() {
        let pool = Pool::new(1);
        pool.mark_down(0);
        let started = Instant::now();
        let lease = pool.lease().await;
        assert_eq!(lease.engine, 0);
        assert!(started.elapsed() >= FIRST_COOL_DOWN - Duration::from_millis(50));
    }

    /// One outage with many requests in flight: their failures count once, the cool-down does
    /// not grow, and the first probe after it closes the breaker.
    #[tokio::test(start_paused = true)]
    async fn failures_of_one_outage_count_once_and_a_probe_closes_the_breaker() {
        let pool = Pool::new(1);
        let mut leases = Vec::new();
        for _ in 0..64 {
            leases.push(pool.lease().await);
        }
        let opened: Vec<Opened> = leases.iter_mut().filter_map(Lease::failed).collect();
        assert_eq!(
            opened,
            vec![Opened::Now {
                next_probe: FIRST_COOL_DOWN
            }]
        );
        drop(leases);
        let started = Instant::now();
        let mut probe = pool.lease().await;
        assert_eq!(
            started.elapsed(),
            FIRST_COOL_DOWN,
            "the first cool-down only"
        );
        assert!(probe.probe);
        // While the probe is out, nobody else gets the engine.
        let other = tokio::time::timeout(Duration::from_secs(30), pool.lease()).await;
        assert!(other.is_err());
        assert_eq!(
            pool.all_down_for(),
            Some(FIRST_COOL_DOWN + Duration::from_secs(30))
        );
        assert!(probe.succeeded());
        drop(probe);
        assert_eq!(pool.all_down_for(), None);
        let _ = pool.lease().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_doubles_the_cool_down_and_lets_the_next_probe_through() {
        let pool = Pool::new(1);
        pool.mark_down(0);
        let mut probe = pool.lease().await;
        assert_eq!(
            probe.failed(),
            Some(Opened::ProbeFailed {
                next_probe: FIRST_COOL_DOWN * 2
            })
        );
        drop(probe);
        let started = Instant::now();
        let probe = pool.lease().await;
        assert_eq!(started.elapsed(), FIRST_COOL_DOWN * 2);
        // A probe dropped without an outcome (the job stopped) lets the next one through.
        drop(probe);
        let again = tokio::time::timeout(Duration::from_millis(1), pool.lease()).await;
        assert!(again.is_ok_and(|l| l.probe));
    }
}
