//! The relay queue of one namespace (`--max-agent-requests`, issue #20): at most N of its
//! requests are with the agent at once (asked, and not yet answered to the VM); the others
//! wait in arrival order, as in haproxy's queue in front of a `server ... maxconn N`, for up to
//! `timeout connect` (haproxy's `timeout queue` falls back to it), then get 503.
//!
//! Why: the shared server runs every namespace on one thread. Without a bound, a VM flooding
//! its router keeps up to `max_connections` (1,024) tasks runnable, and another router's
//! request waits behind all of them at each step (read, agent, write). A request waiting
//! here is parked, not runnable, so one namespace contributes at most about 2 N runnable
//! tasks, whatever its connection count. A namespace's own order is kept (FIFO), and another
//! namespace never waits in this queue at all.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

/// Requests of one namespace with the agent at once, by default. Bench figure 14
/// (bench/RESULTS.md, "The relay queue"): a quiet namespace's p99 beside a 2,000-connection
/// flood grows with it (median 3.4 / 6.5 / 9.6 ms at 8 / 16 / 32, ~43 ms unlimited; 16 is
/// within 2× its idle p99), and one busy namespace's req/s did not drop at 8 with a fast agent;
/// with a slow agent it bounds a namespace's rate (16 slots at 50 ms each: 320 req/s), hence
/// not lower.
pub const DEFAULT_MAX_AGENT_REQUESTS: usize = 16;

/// One namespace's queue; `0` slots means no limit (every request goes to the agent at once).
#[derive(Debug)]
pub struct RelayQueue {
    slots: Option<Semaphore>,
    /// Requests waiting for a slot now (counted on the slow path only).
    waiting: AtomicUsize,
}

/// A request's place with the agent: held until its answer is relayed, freed on drop (the
/// next waiting request of the namespace is let through).
#[derive(Debug)]
pub struct Slot<'a> {
    _permit: Option<SemaphorePermit<'a>>,
}

impl RelayQueue {
    /// `max` requests with the agent at once; `0`: unlimited.
    pub fn new(max: usize) -> RelayQueue {
        RelayQueue {
            slots: (max > 0).then(|| Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            waiting: AtomicUsize::new(0),
        }
    }

    /// A slot, at once when one is free, else after the requests that queued before this
    /// one; `None` if none came within `wait`.
    pub async fn enter(&self, wait: Duration) -> Option<Slot<'_>> {
        let Some(sem) = &self.slots else {
            return Some(Slot { _permit: None });
        };
        // The common case (a free slot) without a timer.
        if let Ok(p) = sem.try_acquire() {
            return Some(Slot { _permit: Some(p) });
        }
        let _waiting = Waiting::new(&self.waiting);
        match tokio::time::timeout(wait, sem.acquire()).await {
            Ok(Ok(p)) => Some(Slot { _permit: Some(p) }),
            // Never closed; a timeout is the only other way out.
            Ok(Err(_)) | Err(_) => None,
        }
    }

    /// Requests waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Free slots now (`None`: unlimited).
    pub fn free(&self) -> Option<usize> {
        self.slots.as_ref().map(Semaphore::available_permits)
    }
}

/// One waiting request, counted while it waits (also when its connection goes away).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a AtomicUsize) -> Waiting<'a> {
        n.fetch_add(1, Ordering::Relaxed);
        Waiting(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_go_in_arrival_order_and_time_out() {
        let q = RelayQueue::new(1);
        let first = q.enter(Duration::from_secs(1)).await.expect("free slot");
        assert_eq!(q.free(), Some(0));
        // A second request waits, then a third; the second is let through first.
        let order = std::sync::Mutex::new(Vec::new());
        let waiter = |n: u8| {
            let (q, order) = (&q, &order);
            async move {
                let s = q.enter(Duration::from_secs(5)).await;
                order.lock().expect("lock").push(n);
                s.is_some()
            }
        };
        let release = async {
            tokio::task::yield_now().await;
            drop(first);
        };
        let (a, b, ()) = tokio::join!(waiter(2), waiter(3), release);
        assert!(a && b);
        assert_eq!(*order.lock().expect("lock"), [2, 3]);
        assert_eq!(q.free(), Some(1));

        let held = q.enter(Duration::from_secs(1)).await.expect("free again");
        assert!(
            q.enter(Duration::from_millis(20)).await.is_none(),
            "no slot within the wait: none"
        );
        drop(held);
        assert_eq!(RelayQueue::new(0).free(), None);
        assert!(RelayQueue::new(0)
            .enter(Duration::ZERO)
            .await
            .is_some_and(|s| s._permit.is_none()));
    }
}
