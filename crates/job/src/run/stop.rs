//! Stopping a job early: the completion window ending, Ctrl-C / SIGTERM, or a cancel.
//!
//! A stop has two phases. While *draining*, nothing new is sent and requests already in flight
//! may finish (retries waiting in backoff stop at once). When the grace ends, or on a second
//! signal, the stop *aborts*: requests still in flight are abandoned. What happens to the lines
//! without a result depends on the reason: expired or cancelled lines get an error record and the
//! job is finalized; an interrupted job is checkpointed and left resumable.

use std::sync::Arc;

use tokio::sync::watch;

/// The exit code of a process that stopped with its job resumable (BSD's EX_TEMPFAIL): `run`
/// interrupted, a service worker that gave its batch back. The one definition both use.
pub const RESUMABLE_EXIT: u8 = 75;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The completion window ended.
    Expired,
    /// Ctrl-C or SIGTERM: stop, keep the state, resume later.
    Interrupted,
    /// Ctrl-C or SIGTERM with `--cancel-on-signal` (or a cancel request): finalize as cancelled.
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    Draining(StopReason),
    Abort(StopReason),
}

impl Phase {
    pub fn reason(self) -> Option<StopReason> {
        match self {
            Phase::Running => None,
            Phase::Draining(r) | Phase::Abort(r) => Some(r),
        }
    }
}

/// Shared by the job and whoever may stop it (signal handlers, the deadline timer).
#[derive(Debug, Clone)]
pub struct StopSignal {
    phase: Arc<watch::Sender<Phase>>,
}

impl Default for StopSignal {
    fn default() -> Self {
        Self::new()
    }
}

impl StopSignal {
    pub fn new() -> Self {
        Self {
            phase: Arc::new(watch::Sender::new(Phase::Running)),
        }
    }

    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Starts draining for `reason`; a second request while draining aborts. Returns the new
    /// phase.
    pub fn request(&self, reason: StopReason) -> Phase {
        let mut new = Phase::Running;
        self.phase.send_modify(|p| {
            *p = match *p {
                Phase::Running => Phase::Draining(reason),
                Phase::Draining(first) | Phase::Abort(first) => Phase::Abort(first),
            };
            new = *p;
        });
        new
    }

    /// Abandons what is in flight now (the reason of an earlier request wins).
    pub fn abort(&self, reason: StopReason) {
        self.phase.send_modify(|p| {
            *p = Phase::Abort(p.reason().unwrap_or(reason));
        });
    }

    /// Waits until the phase is no longer `Running`.
    pub async fn stopping(&self) {
        let mut rx = self.phase.subscribe();
        let _ = rx.wait_for(|p| *p != Phase::Running).await;
    }

    /// Waits until the phase is `Abort`.
    pub async fn aborting(&self) {
        let mut rx = self.phase.subscribe();
        let _ = rx.wait_for(|p| matches!(p, Phase::Abort(_))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_request_aborts_and_the_first_reason_wins() {
        let stop = StopSignal::new();
        assert_eq!(stop.phase(), Phase::Running);
        assert_eq!(
            stop.request(StopReason::Interrupted),
            Phase::Draining(StopReason::Interrupted)
        );
        stop.stopping().await;
        assert_eq!(
            stop.request(StopReason::Expired),
            Phase::Abort(StopReason::Interrupted)
        );
        stop.aborting().await;
        stop.abort(StopReason::Expired);
        assert_eq!(stop.phase(), Phase::Abort(StopReason::Interrupted));
    }
}
