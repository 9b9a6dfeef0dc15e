//! Per-source-IP rate limiting like Neutron's haproxy template (`[metadata_rate_limiting]`,
//! LP#1989199): two sliding windows (base and burst) counted like haproxy's
//! `http_req_rate(<period>)`, deny when a count is strictly greater than its limit, the listed
//! IP versions (both by default), a bounded table whose entries expire after the longer window. The
//! settings ([`Rate`], [`Versions`]) are the contract's (`ns_contract::limits`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ns_contract::limits::{Rate, Versions};

/// haproxy's `freq_ctr` over one period: the current period's count plus the previous
/// period's, weighted by how much of it still overlaps the sliding window.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    curr: u32,
    prev: u32,
}

impl Window {
    fn new(now: Instant) -> Window {
        Window {
            start: now,
            curr: 0,
            prev: 0,
        }
    }

    /// Count one event at `now` and return the rate over the sliding window.
    fn hit(&mut self, now: Instant, period: Duration) -> u64 {
        let elapsed = now.saturating_duration_since(self.start);
        if elapsed >= period {
            let periods = elapsed.as_nanos() / period.as_nanos().max(1);
            self.prev = if periods == 1 { self.curr } else { 0 };
            self.curr = 0;
            self.start += period * u32::try_from(periods).unwrap_or(u32::MAX);
        }
        self.curr = self.curr.saturating_add(1);
        let into = now.saturating_duration_since(self.start).as_nanos();
        let left = period.as_nanos().saturating_sub(into);
        u64::from(self.curr) + (u128::from(self.prev) * left / period.as_nanos().max(1)) as u64
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    base: Window,
    burst: Window,
    last: Instant,
}

/// The limiter shared by all connections.
#[derive(Debug)]
pub struct RateLimiter {
    base: Rate,
    burst: Rate,
    versions: Versions,
    expire: Duration,
    max_entries: usize,
    table: Mutex<HashMap<IpAddr, Entry>>,
}

/// Table size, as Neutron's stick tables (`size 10k`).
pub const TABLE_SIZE: usize = 10_000;

impl RateLimiter {
    pub fn new(base: Rate, burst: Rate, versions: Versions) -> RateLimiter {
        RateLimiter {
            base,
            burst,
            versions,
            expire: base.window.max(burst.window),
            max_entries: TABLE_SIZE,
            table: Mutex::new(HashMap::new()),
        }
    }

    /// A table of `size` entries that live `expire` after their last request (haproxy's
    /// `stick-table size`/`expire`) instead of the defaults.
    pub fn with_table(mut self, size: usize, expire: Duration) -> RateLimiter {
        self.max_entries = size.max(1);
        self.expire = expire;
        self
    }

    /// Count a request from `ip`; true if it must be denied with 429.
    pub fn deny(&self, ip: IpAddr, now: Instant) -> bool {
        let ip = ip.to_canonical();
        let limited = match ip {
            IpAddr::V4(_) => self.versions.v4,
            IpAddr::V6(_) => self.versions.v6,
        };
        if !limited {
            return false;
        }
        let mut table = match self.table.lock() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        };
        if !table.contains_key(&ip) && table.len() >= self.max_entries {
            let expire = self.expire;
            table.retain(|_, e| now.saturating_duration_since(e.last) < expire);
            if table.len() >= self.max_entries {
                // Still full of live entries: drop one (haproxy evicts the oldest; any
                // victim keeps the table bounded at O(1) cost under a flood).
                if let Some(k) = table.keys().next().copied() {
                    table.remove(&k);
                }
            }
        }
        let e = table.entry(ip).or_insert_with(|| Entry {
            base: Window::new(now),
            burst: Window::new(now),
            last: now,
        });
        if now.saturating_duration_since(e.last) >= self.expire {
            e.base = Window::new(now);
            e.burst = Window::new(now);
        }
        e.last = now;
        let base = e.base.hit(now, self.base.window);
        let burst = e.burst.hit(now, self.burst.window);
        base > u64::from(self.base.limit) || burst > u64::from(self.burst.limit)
    }

    /// Drop expired entries and give the table's spare capacity back (called when the
    /// proxy is idle; an expired entry counts as absent anyway).
    pub fn shrink(&self, now: Instant) {
        let mut table = match self.table.lock() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        };
        let expire = self.expire;
        table.retain(|_, e| now.saturating_duration_since(e.last) < expire);
        table.shrink_to_fit();
    }

    /// Entries currently tracked.
    pub fn len(&self) -> usize {
        self.table.lock().map(|t| t.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rl(base: &str, burst: &str) -> RateLimiter {
        RateLimiter::new(
            base.parse().expect("rate"),
            burst.parse().expect("rate"),
            Versions::BOTH,
        )
    }

    #[test]
    fn deny_when_strictly_greater_per_ip_v4_and_v6() {
        let r = rl("3/10", "100/1");
        let t = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        let b: IpAddr = "fe80::1".parse().expect("ip");
        assert!(!r.deny(a, t));
        assert!(!r.deny(mapped, t), "v4-mapped counts as the same v4 source");
        assert!(!r.deny(a, t));
        assert!(r.deny(a, t), "4th request in the window is over 3");
        for _ in 0..3 {
            assert!(!r.deny(b, t));
        }
        assert!(r.deny(b, t));
        // The sliding window: a full period later half of the old count is gone.
        assert!(!r.deny(b, t + Duration::from_secs(25)));
    }

    #[test]
    fn burst_window_and_expiry() {
        let r = rl("100/60", "2/1");
        let t = Instant::now();
        let a: IpAddr = "10.0.0.2".parse().expect("ip");
        assert!(!r.deny(a, t));
        assert!(!r.deny(a, t));
        assert!(r.deny(a, t));
        assert!(!r.deny(a, t + Duration::from_secs(61)), "entry expired");
    }

    #[test]
    fn table_is_bounded() {
        let mut r = rl("1/10", "1/10");
        r.max_entries = 8;
        let t = Instant::now();
        for i in 0..100u32 {
            r.deny(IpAddr::from(std::net::Ipv4Addr::from(i)), t);
        }
        assert!(r.len() <= 8);
    }

    #[test]
    fn only_listed_versions_are_limited() {
        // A limit of 0 (refused as an option) denies every request: only the version matters.
        let none = Rate {
            limit: 0,
            window: Duration::from_secs(10),
        };
        let r = RateLimiter::new(
            none,
            none,
            Versions {
                v4: true,
                v6: false,
            },
        );
        let t = Instant::now();
        assert!(r.deny("10.0.0.1".parse().expect("ip"), t));
        assert!(!r.deny("fe80::1".parse().expect("ip"), t));
    }
}
