//! Admission to the running set: at most `max_running` requests run; the rest wait in a queue,
//! served first come first served, or by priority as SGLang does with
//! `--enable-priority-scheduling` (a larger `priority` first; a request without one is the least
//! important, ties in arrival order).

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Mutex;

use tokio::sync::oneshot;

pub struct Admission {
    max_running: usize,
    by_priority: bool,
    state: Mutex<State>,
}

struct State {
    running: usize,
    waiting: BinaryHeap<Waiter>,
    next_seq: u64,
}

struct Waiter {
    priority: i64,
    seq: u64,
    wake: oneshot::Sender<()>,
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Waiter {}
impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiter {
    /// The heap pops the greatest: the higher priority, then the earlier arrival.
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then(other.seq.cmp(&self.seq))
    }
}

/// A place in the running set, given back when dropped.
pub struct Slot<'a> {
    admission: &'a Admission,
}

impl Admission {
    pub fn new(max_running: usize, by_priority: bool) -> Self {
        Self {
            max_running: max_running.max(1),
            by_priority,
            state: Mutex::new(State {
                running: 0,
                waiting: BinaryHeap::new(),
                next_seq: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// (running, waiting) now.
    pub fn counts(&self) -> (usize, usize) {
        let s = self.lock();
        (s.running, s.waiting.len())
    }

    /// Waits for a place in the running set.
    pub async fn enter(&self, priority: Option<i64>) -> Slot<'_> {
        let wait = {
            let mut s = self.lock();
            if s.running < self.max_running {
                s.running += 1;
                None
            } else {
                let (wake, woken) = oneshot::channel();
                let seq = s.next_seq;
                s.next_seq += 1;
                let priority = if self.by_priority {
                    priority.unwrap_or(i64::MIN)
                } else {
                    0
                };
                s.waiting.push(Waiter {
                    priority,
                    seq,
                    wake,
                });
                Some(woken)
            }
        };
        if let Some(woken) = wait {
            // The place is handed over by the leaving request (see `leave`).
            let _ = woken.await;
        }
        Slot { admission: self }
    }

    /// Hands the place to the best waiter still waiting, or frees it.
    fn leave(&self) {
        let mut s = self.lock();
        while let Some(next) = s.waiting.pop() {
            if next.wake.send(()).is_ok() {
                return;
            }
        }
        s.running -= 1;
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.admission.leave();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Queues `requests` behind one running request, in order, then lets them in one by one;
    /// returns the order they ran in.
    async fn run_order(
        by_priority: bool,
        requests: &[(&'static str, Option<i64>)],
    ) -> Vec<&'static str> {
        let admission = Arc::new(Admission::new(1, by_priority));
        let first = admission.enter(None).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for &(name, priority) in requests {
            let (a, o) = (admission.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _slot = a.enter(priority).await;
                o.lock().expect("lock").push(name);
            }));
            while admission.counts().1 < tasks.len() {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(admission.counts(), (1, requests.len()));
        drop(first);
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(admission.counts(), (0, 0));
        order.lock().expect("lock").clone()
    }

    #[tokio::test]
    async fn waiters_enter_by_priority_then_arrival() {
        let order = run_order(
            true,
            &[
                ("low", Some(1)),
                ("none", None),
                ("high", Some(10)),
                ("low2", Some(1)),
            ],
        )
        .await;
        assert_eq!(order, ["high", "low", "low2", "none"]);
    }

    #[tokio::test]
    async fn without_priority_scheduling_it_is_first_come_first_served() {
        let order = run_order(false, &[("a", Some(1)), ("b", Some(10)), ("c", None)]).await;
        assert_eq!(order, ["a", "b", "c"]);
    }
}
