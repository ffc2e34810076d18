//! The engines a job sends to: least-in-flight choice and a circuit breaker per engine.
//!
//! Each request goes to the available engine with the fewest requests in flight. An engine that
//! fails several times in a row (transport errors or 5xx) is skipped for a cool-down that doubles
//! while it keeps failing; after the cool-down one request probes it, and any answer that is not
//! a server error closes the breaker again. When every engine is cooling down, requests wait for
//! the first one to come back instead of hammering engines that are known to be down.
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

#[derive(Debug)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
    cool_down: Duration,
    suspended: bool,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            failures: 0,
            open_until: None,
            cool_down: FIRST_COOL_DOWN,
            suspended: false,
        }
    }
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
    /// Wakes requests waiting for a suspended engine to come back.
    resumed: tokio::sync::Notify,
}

/// Why no engine can take a request now.
enum Blocked {
    /// Every usable engine is at its adaptive limit.
    Full,
    /// Every usable engine's breaker is open until the first of these.
    Until(Instant),
    /// Every engine is suspended.
    Suspended,
}

/// Holds an engine's in-flight slot; released on drop.
pub struct Lease<'a> {
    pool: &'a Pool,
    pub engine: usize,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.pool.in_flight[self.engine].fetch_sub(1, Ordering::Relaxed);
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
            resumed: tokio::sync::Notify::new(),
        }
    }

    pub fn in_flight(&self, engine: usize) -> usize {
        self.in_flight[engine].load(Ordering::Relaxed)
    }

    /// Takes a slot on the best available engine, waiting while every breaker is open or
    /// every engine is at its adaptive limit.
    pub async fn lease(&self) -> Lease<'_> {
        loop {
            // Registered before choosing, so a resume or a release between the two is not missed.
            let resumed = self.resumed.notified();
            let freed = self.freed.notified();
            match self.choose(Instant::now()) {
                Ok(engine) => {
                    self.in_flight[engine].fetch_add(1, Ordering::Relaxed);
                    return Lease { pool: self, engine };
                }
                Err(Blocked::Full) => {
                    tokio::select! {
                        () = freed => {}
                        () = resumed => {}
                    }
                }
                Err(Blocked::Until(reopens_at)) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(reopens_at) => {}
                        () = resumed => {}
                    }
                }
                Err(Blocked::Suspended) => resumed.await,
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
        let (before, after) = {
            let mut c = controller.lock().unwrap_or_else(|e| e.into_inner());
            let before = c.limit();
            c.observe(signal, Instant::now());
            (before, c.limit())
        };
        if after > before {
            self.freed.notify_waiters();
        }
    }

    /// The available engine with the fewest in flight, below its limit; otherwise why none is.
    fn choose(&self, now: Instant) -> Result<usize, Blocked> {
        let breakers = self.lock();
        let n = breakers.len();
        let start = self.turn.fetch_add(1, Ordering::Relaxed) % n.max(1);
        let mut best: Option<(usize, usize)> = None;
        let mut first_reopen: Option<Instant> = None;
        let mut full = false;
        for k in 0..n {
            let i = (start + k) % n;
            if breakers[i].suspended {
                continue;
            }
            match breakers[i].open_until {
                Some(until) if until > now => {
                    first_reopen = Some(first_reopen.map_or(until, |f| f.min(until)));
                }
                _ => {
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
            (Some((i, _)), _) => Ok(i),
            (None, _) if full => Err(Blocked::Full),
            (None, Some(at)) => Err(Blocked::Until(at)),
            (None, None) => Err(Blocked::Suspended),
        }
    }

    /// Sends nothing to `engine` until [`Pool::resume`].
    pub fn suspend(&self, engine: usize) {
        self.lock()[engine].suspended = true;
    }

    /// Takes `engine` back into use with a clean breaker.
    pub fn resume(&self, engine: usize) {
        self.lock()[engine] = Breaker::default();
        self.resumed.notify_waiters();
    }

    pub fn record_success(&self, engine: usize) {
        let mut breakers = self.lock();
        let suspended = breakers[engine].suspended;
        breakers[engine] = Breaker {
            suspended,
            ..Breaker::default()
        };
    }

    /// Records a failure; returns true when this failure opened the breaker.
    pub fn record_failure(&self, engine: usize) -> bool {
        let mut breakers = self.lock();
        let b = &mut breakers[engine];
        b.failures += 1;
        if b.failures < FAILURES_TO_OPEN {
            return false;
        }
        b.open_until = Some(Instant::now() + b.cool_down);
        b.cool_down = (b.cool_down * 2).min(MAX_COOL_DOWN);
        true
    }

    /// Opens an engine's breaker straight away (it failed its probe before the run).
    pub fn mark_down(&self, engine: usize) {
        let mut breakers = self.lock();
        let b = &mut breakers[engine];
        b.failures = FAILURES_TO_OPEN;
        b.open_until = Some(Instant::now() + b.cool_down);
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
            assert_eq!(pool.record_failure(1), k + 1 == FAILURES_TO_OPEN);
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
}
