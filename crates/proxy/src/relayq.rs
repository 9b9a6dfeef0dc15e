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
//!
//! In company, a quarter: in the shared server, while another namespace has asked the agent
//! within the last [`COMPANY_WINDOW`], a namespace's request takes [`COMPANY_WEIGHT`] of its
//! N slots, so it has at most N / 4 requests with the agent (at least one). The agent answers
//! in arrival order, so another namespace's request waits behind every request the flooding
//! one has there: 16 of them kept a quiet namespace's p99 beside a 2,000-connection flood at
//! ~4× its idle p99, 4 at ~2–3× (bench figure 14, bench/RESULTS.md, session 11). Alone, a
//! namespace keeps all N (one busy namespace's req/s dropped ~30% at 4 with a fast agent).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};

/// Requests of one namespace with the agent at once, by default. Bench figure 14
/// (bench/RESULTS.md, "The relay queue"): a quiet namespace's p99 beside a 2,000-connection
/// flood grows with it (median 3.4 / 6.5 / 9.6 ms at 8 / 16 / 32, ~43 ms unlimited; 16 is
/// within 2× its idle p99), and one busy namespace's req/s did not drop at 8 with a fast agent;
/// with a slow agent it bounds a namespace's rate (16 slots at 50 ms each: 320 req/s), hence
/// not lower.
pub const DEFAULT_MAX_AGENT_REQUESTS: usize = 16;

/// How long after its last request another namespace still counts as company: a VM's
/// metadata crawl (cloud-init asks one path after another) stays in company from its second
/// request on.
pub const COMPANY_WINDOW: Duration = Duration::from_secs(1);

/// Slots a request takes while its namespace has company: a quarter of them each.
pub const COMPANY_WEIGHT: u32 = 4;

/// The namespaces of one shared server that asked the agent lately: the last two distinct
/// ones, which is enough to tell a namespace whether another one did within
/// [`COMPANY_WINDOW`] (with many namespaces asking, the other of the two is always one of them).
#[derive(Debug, Default)]
pub struct Company {
    next: AtomicU64,
    /// The namespace that asked last and when, and the one before it (key 0: none).
    last: Mutex<[(u64, Option<Instant>); 2]>,
}

impl Company {
    /// Nobody has asked yet.
    pub fn new() -> Arc<Company> {
        Arc::new(Company::default())
    }

    fn key(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Namespace `key` asks at `now`: whether another one asked within the window.
    fn asks(&self, key: u64, now: Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last[0].0 != key {
            last[1] = last[0];
        }
        last[0] = (key, Some(now));
        let (other, at) = last[1];
        other != 0 && at.is_some_and(|t| now.saturating_duration_since(t) < COMPANY_WINDOW)
    }
}

/// One namespace's queue; `0` slots means no limit (every request goes to the agent at once).
#[derive(Debug)]
pub struct RelayQueue {
    slots: Option<Semaphore>,
    /// Requests waiting for a slot now (counted on the slow path only).
    waiting: AtomicUsize,
    /// The shared server's namespaces, and this one's key among them (`None`: a proxy of its own).
    company: Option<(Arc<Company>, u64)>,
    /// Slots a request takes in company (a quarter of them, at least all of one).
    weight: u32,
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
        let max = max.min(Semaphore::MAX_PERMITS);
        RelayQueue {
            slots: (max > 0).then(|| Semaphore::new(max)),
            waiting: AtomicUsize::new(0),
            company: None,
            // `max` is at most MAX_PERMITS (usize::MAX >> 3): it may not fit a u32.
            weight: u32::try_from(max).map_or(COMPANY_WEIGHT, |m| m.clamp(1, COMPANY_WEIGHT)),
        }
    }

    /// The same, for a namespace of a shared server: a quarter of the slots while another
    /// namespace of `company` asks the agent too.
    pub fn in_company(max: usize, company: &Arc<Company>) -> RelayQueue {
        RelayQueue {
            company: Some((company.clone(), company.key())),
            ..RelayQueue::new(max)
        }
    }

    /// Slots the request asking at `now` takes.
    fn weight(&self, now: impl FnOnce() -> Instant) -> u32 {
        match &self.company {
            Some((c, key)) if c.asks(*key, now()) => self.weight,
            _ => 1,
        }
    }

    /// A slot, at once when one is free, else after the requests that queued before this
    /// one; `None` if none came within `wait`.
    pub async fn enter(&self, wait: Duration) -> Option<Slot<'_>> {
        let Some(sem) = &self.slots else {
            return Some(Slot { _permit: None });
        };
        let n = self.weight(Instant::now);
        // The common case (a free slot) without a timer.
        if let Ok(p) = sem.try_acquire_many(n) {
            return Some(Slot { _permit: Some(p) });
        }
        let _waiting = Waiting::new(&self.waiting);
        match tokio::time::timeout(wait, sem.acquire_many(n)).await {
            Ok(Ok(p)) => Some(Slot { _permit: Some(p) }),
            // Never closed; a timeout is the only other way out.
            Ok(Err(_)) | Err(_) => None,
        }
    }

    /// Requests waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Free slots now (`None`: unlimited); a request in company takes [`COMPANY_WEIGHT`].
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

    #[test]
    fn in_company_a_namespace_takes_a_quarter_of_its_slots() {
        let c = Company::new();
        let (a, b) = (
            RelayQueue::in_company(16, &c),
            RelayQueue::in_company(16, &c),
        );
        let t = Instant::now();
        let at = |ms: u64| move || t + Duration::from_millis(ms);
        assert_eq!(a.weight(at(0)), 1, "alone");
        assert_eq!(a.weight(at(1)), 1, "its own requests are no company");
        assert_eq!(b.weight(at(2)), COMPANY_WEIGHT, "a asked 1 ms ago");
        assert_eq!(a.weight(at(3)), COMPANY_WEIGHT, "b asked 1 ms ago");
        let window = COMPANY_WINDOW.as_millis() as u64;
        assert_eq!(
            a.weight(at(2 + window - 1)),
            COMPANY_WEIGHT,
            "still within the window"
        );
        assert_eq!(a.weight(at(2 + window)), 1, "b's request left the window");
        // A third namespace: whoever asked before it is its company.
        let z = RelayQueue::in_company(16, &c);
        assert_eq!(z.weight(at(3 + window)), COMPANY_WEIGHT);
        // Fewer slots than the weight: one request at a time, never none.
        assert_eq!(RelayQueue::in_company(2, &c).weight(at(4 + window)), 2);
        assert_eq!(
            RelayQueue::in_company(usize::MAX, &c).weight,
            COMPANY_WEIGHT
        );
        // A proxy of its own has no company.
        assert_eq!(RelayQueue::new(16).weight(at(5 + window)), 1);
    }

    #[tokio::test]
    async fn in_company_the_fifth_request_of_sixteen_slots_waits() {
        let c = Company::new();
        let (busy, quiet) = (
            RelayQueue::in_company(16, &c),
            RelayQueue::in_company(16, &c),
        );
        let alone = busy.enter(Duration::ZERO).await.expect("a slot");
        assert_eq!(busy.free(), Some(15), "alone: one slot a request");
        drop(alone);
        let _q = quiet.enter(Duration::ZERO).await.expect("quiet's slot");
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(
                busy.enter(Duration::ZERO)
                    .await
                    .expect("a quarter of the slots"),
            );
        }
        assert_eq!(busy.free(), Some(0));
        assert!(busy.enter(Duration::from_millis(20)).await.is_none());
        // One finishes: the next one goes in its place.
        held.pop();
        assert!(busy.enter(Duration::ZERO).await.is_some());
    }
}
