//! A live cap on the requests a job keeps in flight, below its `--max-concurrency`: the
//! service sets it to this batch's share of its owner's `--owner-max-in-flight`, which changes
//! as the owner's other batches start and end.
//!
//! The dispatcher's slots are a semaphore of `max` permits; lowering the cap takes permits
//! out (waiting for requests in flight to hand theirs back, so none is cut short) and forgets
//! them, raising it adds permits back.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

/// The dispatcher's slots under a cap that may change.
pub struct CappedSlots {
    pub slots: Arc<Semaphore>,
    /// Permits in the semaphore now (taken or not): what the dispatcher waits for at the end.
    size: Arc<AtomicUsize>,
    follower: Option<JoinHandle<()>>,
}

impl CappedSlots {
    /// `max` slots, following `cap` (at least 1, at most `max`) when given.
    pub fn new(max: usize, cap: Option<watch::Receiver<usize>>) -> Self {
        let max = max.max(1);
        let slots = Arc::new(Semaphore::new(max));
        let size = Arc::new(AtomicUsize::new(max));
        let follower = cap.map(|cap| tokio::spawn(follow(slots.clone(), size.clone(), max, cap)));
        Self {
            slots,
            size,
            follower,
        }
    }

    /// Waits until every slot is back (every request task has ended), with the cap no longer
    /// followed.
    pub async fn all_back(mut self) {
        if let Some(follower) = self.follower.take() {
            follower.abort();
            let _ = follower.await;
        }
        let size = self.size.load(Ordering::Acquire) as u32;
        let _ = self.slots.acquire_many(size).await;
    }
}

async fn follow(
    slots: Arc<Semaphore>,
    size: Arc<AtomicUsize>,
    max: usize,
    mut cap: watch::Receiver<usize>,
) {
    loop {
        let want = (*cap.borrow_and_update()).clamp(1, max);
        let now = size.load(Ordering::Acquire);
        if want > now {
            slots.add_permits(want - now);
            size.store(want, Ordering::Release);
        } else if want < now {
            // Cancel-safe: dropped (the follower aborted) before it completes, the permits
            // taken so far go back, and `size` still counts them.
            match slots.clone().acquire_many_owned((now - want) as u32).await {
                Ok(permits) => {
                    permits.forget();
                    size.store(want, Ordering::Release);
                }
                Err(_) => return,
            }
        }
        if cap.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_cap_lowers_and_raises_the_slots_and_the_end_waits_for_the_rest() {
        let (tx, rx) = watch::channel(2);
        let capped = CappedSlots::new(8, Some(rx));
        tokio::task::yield_now().await;
        let a = capped.slots.clone().acquire_owned().await.expect("a");
        let _b = capped.slots.clone().acquire_owned().await.expect("b");
        assert!(
            capped.slots.clone().try_acquire_owned().is_err(),
            "capped at 2"
        );
        tx.send(3).expect("send");
        let c = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            capped.slots.clone().acquire_owned(),
        )
        .await
        .expect("raised to 3")
        .expect("c");
        // Lowered to 1 with three in flight: nothing new until two have ended.
        tx.send(1).expect("send");
        drop(a);
        drop(c);
        tokio::task::yield_now().await;
        assert!(
            capped.slots.clone().try_acquire_owned().is_err(),
            "capped at 1"
        );
        drop(_b);
        // The end waits for the one slot there is now, not for 8.
        tokio::time::timeout(std::time::Duration::from_secs(5), capped.all_back())
            .await
            .expect("all back");
    }
}
