//! Restart delays. A proxy that dies after it was ready is restarted at once, up to
//! [`BURST`] times per [`WINDOW`]; beyond that, and for proxies that fail to start (exit
//! before READY), capped exponential backoff with jitter. A run of [`HEALTHY_RUN`] resets it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A run at least this long counts as healthy and resets the backoff.
pub const HEALTHY_RUN: Duration = Duration::from_secs(10);
/// Immediate restarts allowed per [`WINDOW`] for proxies that died after being ready.
pub const BURST: usize = 10;
/// The window of [`BURST`].
pub const WINDOW: Duration = Duration::from_secs(10);
const BASE: Duration = Duration::from_millis(250);

/// Backoff state of one proxy.
#[derive(Debug, Clone)]
pub struct Backoff {
    failures: u32,
    max: Duration,
    deaths: VecDeque<Instant>,
}

impl Backoff {
    /// A fresh backoff with the given cap.
    pub fn new(max: Duration) -> Backoff {
        Backoff {
            failures: 0,
            max,
            deaths: VecDeque::new(),
        }
    }

    /// The proxy could not be started (or exited before READY): the first retry is
    /// immediate, then 250 ms, 500 ms, … up to the cap, jittered.
    pub fn start_failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.delay()
    }

    /// A ready proxy died after running for `ran`: restart at once, unless it keeps dying
    /// (more than [`BURST`] deaths in [`WINDOW`]), then back off.
    pub fn died(&mut self, ran: Duration) -> Duration {
        if ran >= HEALTHY_RUN {
            self.failures = 0;
        }
        let now = Instant::now();
        self.deaths.push_back(now);
        while self
            .deaths
            .front()
            .is_some_and(|t| now.duration_since(*t) > WINDOW)
        {
            self.deaths.pop_front();
        }
        if self.deaths.len() <= BURST {
            return Duration::ZERO;
        }
        // Past the burst: at least one step of backoff.
        self.failures = self.failures.saturating_add(1).max(2);
        self.delay()
    }

    fn delay(&self) -> Duration {
        if self.failures <= 1 {
            return Duration::ZERO;
        }
        let exp = BASE.saturating_mul(1u32 << (self.failures - 2).min(16));
        let capped = exp.min(self.max);
        // Jitter: a random point in [capped/2, capped], so proxies that died together do
        // not restart in lockstep.
        let half = capped / 2;
        half + half.mul_f64(random_unit())
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(d: Duration, lo_ms: u64, hi_ms: u64) -> bool {
        d >= Duration::from_millis(lo_ms) && d <= Duration::from_millis(hi_ms)
    }

    #[test]
    fn start_failures_immediate_then_exponential_capped_with_jitter() {
        let mut b = Backoff::new(Duration::from_secs(2));
        assert_eq!(b.start_failed(), Duration::ZERO);
        let d = b.start_failed();
        assert!(within(d, 125, 250), "{d:?}");
        let d = b.start_failed();
        assert!(within(d, 250, 500), "{d:?}");
        let d = b.start_failed();
        assert!(within(d, 500, 1000), "{d:?}");
        for _ in 0..40 {
            let d = b.start_failed();
            assert!(within(d, 1000, 2000), "{d:?}");
        }
        assert_eq!(b.died(HEALTHY_RUN), Duration::ZERO, "a healthy run resets");
        assert_eq!(b.failures(), 0);
        assert_eq!(b.start_failed(), Duration::ZERO);
    }

    #[test]
    fn deaths_after_ready_restart_at_once_until_the_burst_is_spent() {
        let mut b = Backoff::new(Duration::from_secs(2));
        let short = Duration::from_millis(5);
        for i in 0..BURST {
            assert_eq!(b.died(short), Duration::ZERO, "death {i}");
        }
        let d = b.died(short);
        assert!(within(d, 125, 250), "{d:?}");
        let d = b.died(short);
        assert!(within(d, 250, 500), "{d:?}");
    }
}
