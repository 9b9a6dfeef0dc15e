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
//! In company, a quarter, and of those a share by the agent's speed: in the shared server,
//! while another namespace has asked the agent within the last [`COMPANY_WINDOW`], a
//! namespace has at most N / [`COMPANY_QUARTER`] requests with the agent (at least one), and
//! of those at most one *young* request (with the agent for less than [`COMPANY_SLOW_AFTER`])
//! for each [`COMPANY_SLOT_TIME`] its requests lately held their slot (asked until answered),
//! from one to all of the quarter. The agent answers in arrival order, so another
//! namespace's request waits behind every request the flooding one has there, and with a fast
//! agent each of them is CPU the two share: a quiet namespace's p99 beside a 2,000-connection
//! flood was ~4× its idle p99 with 16 of them there, 2–8× with 4, under 2× with one young
//! request at a time (bench figure 14, bench/RESULTS.md, sessions 11 and 13). A request
//! waiting on a slow agent costs no CPU: at 4 ms an answer the share is the whole quarter, and
//! a request older than [`COMPANY_SLOW_AFTER`] (a slow agent, one stalled request, a VM reading
//! its answer slowly) gives its young place back, so it never holds up the namespace's next
//! request beyond that. Alone, a namespace keeps all N (one busy namespace's req/s dropped
//! ~30% at 4 with a fast agent).

use std::future::Future;
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

/// In company, a namespace has one young request with the agent per this much of the time
/// its requests hold their slot (module docs).
pub const COMPANY_SLOT_TIME: Duration = Duration::from_millis(1);

/// In company, a namespace has at most N / this many requests with the agent: a quarter.
pub const COMPANY_QUARTER: u32 = 4;

/// A request with the agent this long is old: in company it gives its young place back (the
/// time at which the share is the whole quarter anyway).
pub const COMPANY_SLOW_AFTER: Duration =
    Duration::from_millis(COMPANY_SLOT_TIME.as_millis() as u64 * COMPANY_QUARTER as u64);

/// The requests a namespace in company may have with the agent, out of `max` slots: a
/// quarter, at least one.
pub fn company_quarter(max: u32) -> u32 {
    (max / COMPANY_QUARTER).max(1)
}

/// The young requests a namespace in company may have with the agent, out of `max` slots,
/// when its requests lately held their slot for `held_us` microseconds (module docs): from
/// one to the quarter.
pub fn company_share(max: u32, held_us: u64) -> u32 {
    let per = COMPANY_SLOT_TIME.as_micros() as u64;
    let by_speed = u32::try_from(held_us.div_ceil(per)).unwrap_or(u32::MAX);
    by_speed.clamp(1, company_quarter(max))
}

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
    /// The slots, as a permit count (at most `u32::MAX`).
    max: u32,
    /// In company: the young requests' places, the quarter's count; a request takes
    /// quarter / share of them (`None`: a proxy of its own, or no limit).
    young: Option<Semaphore>,
    /// How long this namespace's requests lately held their slot, asked until answered
    /// (µs, a moving average over about 8; kept in company only): its share in company.
    held_us: AtomicU64,
}

/// A request's place with the agent: held until its answer is relayed, freed on drop (the
/// next waiting request of the namespace is let through).
#[derive(Debug, Default)]
pub struct Slot<'a> {
    _permit: Option<SemaphorePermit<'a>>,
    /// In company: its young place, given back after [`COMPANY_SLOW_AFTER`] ([`Slot::hold`]).
    young: Option<SemaphorePermit<'a>>,
}

impl<'a> Slot<'a> {
    fn new(p: SemaphorePermit<'a>, young: Option<SemaphorePermit<'a>>) -> Slot<'a> {
        Slot {
            _permit: Some(p),
            young,
        }
    }

    /// Run the request's exchange with the agent in this slot. A young place (in company)
    /// goes back once the exchange has taken [`COMPANY_SLOW_AFTER`]: a request that slow no
    /// longer costs the CPU another namespace's request waits for, and must not hold up its
    /// own namespace's next one (module docs). No timer otherwise.
    pub async fn hold<F: Future>(&mut self, exchange: F) -> F::Output {
        if self.young.is_none() {
            return exchange.await;
        }
        let mut exchange = std::pin::pin!(exchange);
        match tokio::time::timeout(COMPANY_SLOW_AFTER, exchange.as_mut()).await {
            Ok(out) => out,
            Err(_) => {
                self.young = None;
                exchange.await
            }
        }
    }
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
            max: u32::try_from(max).unwrap_or(u32::MAX),
            young: None,
            held_us: AtomicU64::new(0),
        }
    }

    /// The same, for a namespace of a shared server: a share of the slots by the agent's
    /// speed while another namespace of `company` asks the agent too (module docs).
    pub fn in_company(max: usize, company: &Arc<Company>) -> RelayQueue {
        let q = RelayQueue::new(max);
        let quarter = company_quarter(q.max);
        RelayQueue {
            company: Some((company.clone(), company.key())),
            young: q.slots.is_some().then(|| Semaphore::new(quarter as usize)),
            ..q
        }
    }

    /// Slots the request asking at `now` takes, and young places: one slot alone; in
    /// company N / quarter slots, and quarter / share young places.
    fn weight(&self, now: impl FnOnce() -> Instant) -> (u32, Option<u32>) {
        match &self.company {
            Some((c, key)) if c.asks(*key, now()) => {
                let quarter = company_quarter(self.max);
                let share = company_share(self.max, self.held_us.load(Ordering::Relaxed));
                ((self.max / quarter).max(1), Some((quarter / share).max(1)))
            }
            _ => (1, None),
        }
    }

    /// A request of this namespace, asked at `asked`, was answered (or failed) now: how long
    /// its slot was held sets the namespace's share in company. Nothing to do (no clock
    /// read) for a proxy of its own.
    pub fn answered(&self, asked: Instant) {
        if self.company.is_some() {
            self.held(asked.elapsed());
        }
    }

    fn held(&self, took: Duration) {
        // A moving average over about 8 requests; threads of one server may race here, and
        // a lost update only delays the average by a request.
        let took = u64::try_from(took.as_micros())
            .unwrap_or(u64::MAX)
            .min(1 << 40);
        let avg = self.held_us.load(Ordering::Relaxed);
        let avg = (avg * 7 + took).div_ceil(8);
        self.held_us.store(avg, Ordering::Relaxed);
    }

    /// A slot, at once when one is free, else after the requests that queued before this
    /// one; `None` if none came within `wait`.
    pub async fn enter(&self, wait: Duration) -> Option<Slot<'_>> {
        let Some(sem) = &self.slots else {
            return Some(Slot::default());
        };
        let (n, young) = self.weight(Instant::now);
        let young = young.and_then(|k| self.young.as_ref().map(|y| (y, k)));
        // The young place first: it is what a fast namespace in company waits for, so the
        // slots' waiters stay few and a request's end wakes one waiter, not two.
        // The common case (free places) without a timer.
        let mut taken = None;
        let young_now = match young {
            Some((y, k)) => y.try_acquire_many(k).ok().map(Some),
            None => Some(None),
        };
        if let Some(yp) = young_now {
            match sem.try_acquire_many(n) {
                Ok(p) => return Some(Slot::new(p, yp)),
                Err(_) => taken = Some(yp),
            }
        }
        let _waiting = Waiting::new(&self.waiting);
        // The semaphores are never closed: an error cannot happen, a timeout is the only
        // other way out.
        let both = async {
            let y = match (taken, young) {
                (Some(yp), _) => yp,
                (None, Some((y, k))) => Some(y.acquire_many(k).await.ok()?),
                (None, None) => None,
            };
            let p = sem.acquire_many(n).await.ok()?;
            Some(Slot::new(p, y))
        };
        tokio::time::timeout(wait, both).await.ok().flatten()
    }

    /// Requests waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Free slots now (`None`: unlimited); a request in company takes N / quarter.
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
    fn in_company_a_namespace_has_a_quarter_and_a_share_of_young_ones() {
        let c = Company::new();
        let (a, b) = (
            RelayQueue::in_company(16, &c),
            RelayQueue::in_company(16, &c),
        );
        let t = Instant::now();
        let at = |ms: u64| move || t + Duration::from_millis(ms);
        assert_eq!(a.weight(at(0)), (1, None), "alone");
        assert_eq!(
            a.weight(at(1)),
            (1, None),
            "its own requests are no company"
        );
        // Nothing answered yet: a quarter of the slots, one young request at a time.
        assert_eq!(b.weight(at(2)), (4, Some(4)), "a asked 1 ms ago");
        assert_eq!(a.weight(at(3)), (4, Some(4)), "b asked 1 ms ago");
        // a's agent answers in 2 ms: two young at a time.
        for _ in 0..64 {
            a.held(Duration::from_millis(2));
        }
        assert_eq!(a.weight(at(4)), (4, Some(2)));
        // In 50 ms: the whole quarter may be young.
        for _ in 0..64 {
            a.held(Duration::from_millis(50));
        }
        assert_eq!(a.weight(at(5)), (4, Some(1)));
        assert_eq!(b.weight(at(6)), (4, Some(4)), "b's own share has not moved");
        let window = COMPANY_WINDOW.as_millis() as u64;
        assert_eq!(
            a.weight(at(6 + window - 1)),
            (4, Some(1)),
            "within the window"
        );
        assert_eq!(
            a.weight(at(6 + window)),
            (1, None),
            "b's request left the window"
        );
        // A third namespace: whoever asked before it is its company.
        let z = RelayQueue::in_company(16, &c);
        assert_eq!(z.weight(at(7 + window)), (4, Some(4)));
        // Fewer slots than a quarter: one request at a time, never none.
        let two = RelayQueue::in_company(2, &c);
        assert_eq!(two.weight(at(8 + window)), (2, Some(1)));
        assert_eq!(RelayQueue::in_company(usize::MAX, &c).max, u32::MAX);
        // A proxy of its own has no company, no young places, and keeps no average.
        let own = RelayQueue::new(16);
        own.answered(t);
        assert_eq!(own.held_us.load(Ordering::Relaxed), 0);
        assert_eq!(own.weight(at(9 + window)), (1, None));
        assert!(own.young.is_none());
    }

    #[test]
    fn the_share_grows_with_the_agents_answer_time_up_to_a_quarter() {
        let us = |ms: f64| (ms * 1000.0) as u64;
        // A fast agent (loopback, answering in µs): one at a time.
        assert_eq!(company_share(16, 0), 1);
        assert_eq!(company_share(16, 150), 1);
        assert_eq!(company_share(16, us(1.0)), 1);
        assert_eq!(company_share(16, 1001), 2);
        assert_eq!(company_share(16, us(3.5)), 4);
        // A slow agent (Nova behind it): a quarter, ~80 req/s at 50 ms.
        assert_eq!(company_share(16, us(50.0)), 4);
        assert_eq!(company_share(400, us(50.0)), 50);
        assert_eq!(company_share(400, u64::MAX), 100);
        assert_eq!(company_share(3, us(50.0)), 1);
        assert_eq!(company_share(0, us(50.0)), 1);
    }

    #[test]
    fn the_average_follows_the_last_eight_or_so_answers() {
        let q = RelayQueue::in_company(16, &Company::new());
        q.held(Duration::from_millis(50));
        assert_eq!(q.held_us.load(Ordering::Relaxed), 6250, "one slow answer");
        for _ in 0..80 {
            q.held(Duration::from_micros(100));
        }
        let avg = q.held_us.load(Ordering::Relaxed);
        // Rounded up at each step: it settles up to 7 µs above.
        assert!((100..=107).contains(&avg), "fast again: {avg}");
        q.held(Duration::MAX);
        assert_eq!(
            q.held_us.load(Ordering::Relaxed),
            (avg * 7 + (1 << 40)).div_ceil(8)
        );
    }

    /// Two namespaces of one server, `quiet` having just asked.
    fn pair() -> (RelayQueue, RelayQueue) {
        let c = Company::new();
        let (busy, quiet) = (
            RelayQueue::in_company(16, &c),
            RelayQueue::in_company(16, &c),
        );
        quiet.weight(Instant::now);
        (busy, quiet)
    }

    #[tokio::test]
    async fn in_company_a_fast_namespace_has_one_young_request_and_a_slow_one_gives_way() {
        let alone = RelayQueue::in_company(16, &Company::new());
        let first = alone.enter(Duration::ZERO).await.expect("a slot");
        assert_eq!(alone.free(), Some(15), "alone: one slot a request");
        assert!(first.young.is_none());
        drop(first);

        let (busy, _quiet) = pair();
        let mut first = busy.enter(Duration::ZERO).await.expect("the young place");
        assert_eq!(busy.free(), Some(12), "a quarter's weight");
        assert!(
            busy.enter(Duration::from_millis(1)).await.is_none(),
            "one young request at a time while the agent is fast"
        );
        assert_eq!(busy.free(), Some(12), "the one that gave up took nothing");
        // A fast exchange keeps its young place to the end.
        assert_eq!(first.hold(async { 7 }).await, 7);
        assert!(first.young.is_some());
        // A slow one (a stalled agent, a VM reading slowly) gives it back after
        // COMPANY_SLOW_AFTER, so the next request goes in meanwhile.
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let exchange = first.hold(async move { rx.await.is_ok() });
        let next = async {
            let next = busy
                .enter(Duration::from_secs(1))
                .await
                .expect("the next one");
            let _ = tx.send(());
            next
        };
        let started = Instant::now();
        let (ok, next) = tokio::join!(exchange, next);
        assert!(ok);
        assert!(
            started.elapsed() >= COMPANY_SLOW_AFTER,
            "let in once the first turned old, not before"
        );
        assert!(first.young.is_none() && next.young.is_some());
        assert_eq!(busy.free(), Some(8), "both keep their quarter's weight");
    }

    #[tokio::test]
    async fn in_company_a_namespace_with_a_slow_agent_has_a_quarter_there() {
        let (busy, _quiet) = pair();
        busy.held(Duration::from_millis(50));
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(busy.enter(Duration::ZERO).await.expect("a quarter"));
        }
        assert_eq!(busy.free(), Some(0));
        assert!(busy.enter(Duration::from_millis(20)).await.is_none());
        held.pop();
        assert!(busy.enter(Duration::ZERO).await.is_some());
    }
}
