//! Restart delays: the first restart is immediate, then capped exponential backoff with
//! jitter while the proxy keeps dying; a run that lasted long enough resets it.

use std::time::Duration;

/// A run at least this long counts as healthy and resets the backoff.
pub const HEALTHY_RUN: Duration = Duration::from_secs(10);
const BASE: Duration = Duration::from_millis(250);

/// Backoff state of one proxy.
#[derive(Debug, Clone)]
pub struct Backoff {
    failures: u32,
    max: Duration,
}

impl Backoff {
    /// A fresh backoff with the given cap.
    pub fn new(max: Duration) -> Backoff {
        Backoff { failures: 0, max }
    }

    /// Record a failure after a run of `ran`; return how long to wait before the next try.
    pub fn next(&mut self, ran: Duration) -> Duration {
        if ran >= HEALTHY_RUN {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        if self.failures == 1 {
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

    #[test]
    fn immediate_then_exponential_capped_with_jitter() {
        let mut b = Backoff::new(Duration::from_secs(2));
        let short = Duration::from_millis(10);
        assert_eq!(b.next(short), Duration::ZERO);
        let d2 = b.next(short);
        assert!(
            d2 >= Duration::from_millis(125) && d2 <= Duration::from_millis(250),
            "{d2:?}"
        );
        let d3 = b.next(short);
        assert!(
            d3 >= Duration::from_millis(250) && d3 <= Duration::from_millis(500),
            "{d3:?}"
        );
        let d4 = b.next(short);
        assert!(
            d4 >= Duration::from_millis(500) && d4 <= Duration::from_secs(1),
            "{d4:?}"
        );
        for _ in 0..40 {
            let d = b.next(short);
            assert!(
                d <= Duration::from_secs(2) && d >= Duration::from_secs(1),
                "{d:?}"
            );
        }
        assert_eq!(b.next(HEALTHY_RUN), Duration::ZERO, "a healthy run resets");
        assert_eq!(b.failures(), 1);
    }
}
