//! Per-source-IP rate limiting like Neutron's haproxy template (`[metadata_rate_limiting]`,
//! LP#1989199): two sliding windows (base and burst) counted like haproxy's
//! `http_req_rate(<period>)`, deny when a count is strictly greater than its limit, the listed
//! IP versions (both by default), a bounded table whose entries expire after the longer window. The
//! settings ([`Rate`], [`Versions`]) are the contract's (`ns_contract::limits`).
//!
//! The table is haproxy's stick table: an entry lives `expire` after its last request
//! (haproxy refreshes an entry's expiry on every touch), and a new source arriving at a full
//! table takes the place of the entry touched least recently (haproxy's
//! `stktable_trash_oldest` walks the expiry tree from the oldest date). Every request costs
//! O(1) amortised whatever the table holds: touches are queued in order and expired or
//! evicted from the front, never by a walk over the table, so a flood of new source
//! addresses (a VM with many addresses, a flat network) makes no request slow, in this
//! namespace or any other of a shared server.

use std::collections::{HashMap, VecDeque};
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
    /// The number of this entry's latest touch in [`Table::order`].
    seq: u64,
}

/// The stick table: entries by source, and their touches oldest first.
#[derive(Debug, Default)]
struct Table {
    entries: HashMap<IpAddr, Entry>,
    /// One `(source, seq)` per touch, oldest first. A pair whose `seq` is no longer its
    /// entry's (touched again since, or removed) is stale and skipped when it reaches the
    /// front; [`Table::compact`] keeps stale pairs from outnumbering live ones.
    order: VecDeque<(IpAddr, u64)>,
    next_seq: u64,
    /// Queue positions looked at, for the tests that hold the cost per request to O(1).
    #[cfg(test)]
    visited: u64,
}

impl Table {
    fn is_current(&self, ip: &IpAddr, seq: u64) -> bool {
        self.entries.get(ip).is_some_and(|e| e.seq == seq)
    }

    fn visit(&mut self, _n: usize) {
        #[cfg(test)]
        {
            self.visited += _n as u64;
        }
    }

    /// Drop stale touches and expired entries from the front. Each touch is queued once and
    /// dropped once, so this is O(1) amortised; it stops at the first live entry.
    fn expire(&mut self, now: Instant, expire: Duration) {
        while let Some(&(ip, seq)) = self.order.front() {
            self.visit(1);
            if self.is_current(&ip, seq) {
                let live = self
                    .entries
                    .get(&ip)
                    .is_some_and(|e| now.saturating_duration_since(e.last) < expire);
                if live {
                    return;
                }
                self.entries.remove(&ip);
            }
            self.order.pop_front();
        }
    }

    /// Remove the entry touched least recently (haproxy purges the oldest); false when
    /// there was none.
    fn evict_oldest(&mut self) -> bool {
        while let Some((ip, seq)) = self.order.pop_front() {
            self.visit(1);
            if self.is_current(&ip, seq) {
                self.entries.remove(&ip);
                return true;
            }
        }
        false
    }

    /// Queue a touch of `ip` (already in `entries`) and return its number.
    fn touch(&mut self, ip: IpAddr) -> u64 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.order.push_back((ip, seq));
        if self.order.len() > 2 * self.entries.len() + 64 {
            // Costs the queue's length, after at least as many touches since the last one.
            self.compact();
        }
        seq
    }

    /// Drop every stale touch, keeping the order of the others.
    fn compact(&mut self) {
        self.visit(self.order.len());
        let entries = &self.entries;
        self.order
            .retain(|(ip, seq)| entries.get(ip).is_some_and(|e| e.seq == *seq));
    }
}

/// The limiter shared by all connections.
#[derive(Debug)]
pub struct RateLimiter {
    base: Rate,
    burst: Rate,
    versions: Versions,
    expire: Duration,
    max_entries: usize,
    table: Mutex<Table>,
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
            table: Mutex::new(Table::default()),
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
        let mut table = self.lock();
        table.expire(now, self.expire);
        if !table.entries.contains_key(&ip) {
            while table.entries.len() >= self.max_entries && table.evict_oldest() {}
        }
        let e = table.entries.entry(ip).or_insert_with(|| Entry {
            base: Window::new(now),
            burst: Window::new(now),
            last: now,
            seq: 0,
        });
        if now.saturating_duration_since(e.last) >= self.expire {
            e.base = Window::new(now);
            e.burst = Window::new(now);
        }
        // Connections take `now` before the lock: never move an entry's last touch back.
        e.last = e.last.max(now);
        let base = e.base.hit(now, self.base.window);
        let burst = e.burst.hit(now, self.burst.window);
        let seq = table.touch(ip);
        if let Some(e) = table.entries.get_mut(&ip) {
            e.seq = seq;
        }
        base > u64::from(self.base.limit) || burst > u64::from(self.burst.limit)
    }

    /// Drop expired entries and give the table's spare capacity back (called when the
    /// proxy is idle; an expired entry counts as absent anyway).
    pub fn shrink(&self, now: Instant) {
        let mut table = self.lock();
        table.expire(now, self.expire);
        table.compact();
        table.entries.shrink_to_fit();
        table.order.shrink_to_fit();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        match self.table.lock() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        }
    }

    /// Entries currently tracked.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
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

    fn v4(i: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(i))
    }

    fn visited(r: &RateLimiter) -> u64 {
        r.lock().visited
    }

    fn tracked(r: &RateLimiter, ip: IpAddr) -> bool {
        r.lock().entries.contains_key(&ip)
    }

    #[test]
    fn a_full_table_of_live_entries_costs_o1_per_new_source() {
        // Before: every new source at a full table walked all 1,000 entries (5M visits).
        let mut r = rl("1/10", "1/10");
        r.max_entries = 1000;
        let t = Instant::now();
        for i in 0..5000u32 {
            r.deny(v4(i), t + Duration::from_millis(u64::from(i)));
        }
        assert_eq!(r.len(), 1000);
        let v = visited(&r);
        assert!(
            v <= 4 * 5000,
            "{v} queue positions visited for 5000 requests"
        );
        // The same from few sources touched over and over: stale touches are compacted.
        let r = rl("1000000/10", "1000000/10");
        for i in 0..20_000u32 {
            r.deny(v4(i % 3), t);
        }
        assert!(r.lock().order.len() <= 2 * 3 + 65);
        assert!(visited(&r) <= 4 * 20_000, "{}", visited(&r));
    }

    #[test]
    fn a_full_table_evicts_the_entry_touched_least_recently() {
        let mut r = rl("1/10", "1/10");
        r.max_entries = 4;
        let t = Instant::now();
        for i in 0..4u32 {
            assert!(!r.deny(v4(i), t));
        }
        // Source 0 is touched again (and denied): now 1 is the oldest.
        assert!(r.deny(v4(0), t));
        assert!(!r.deny(v4(9), t));
        assert_eq!(r.len(), 4);
        assert!(!tracked(&r, v4(1)), "the least recently touched entry goes");
        for i in [0, 2, 3, 9] {
            assert!(tracked(&r, v4(i)), "{i} stays");
        }
        // Source 0 keeps its count: still over the limit.
        assert!(r.deny(v4(0), t));
        // Source 1 starts over: its first request passes.
        assert!(!r.deny(v4(1), t));
        assert!(!tracked(&r, v4(2)));
    }

    #[test]
    fn expired_entries_leave_before_live_ones_are_evicted() {
        let mut r = rl("1/10", "1/10");
        r.max_entries = 3;
        let t = Instant::now();
        r.deny(v4(0), t);
        r.deny(v4(1), t + Duration::from_secs(5));
        r.deny(v4(2), t + Duration::from_secs(6));
        // At t+11 only source 0 has expired: a new source takes its place, 1 and 2 stay.
        assert!(!r.deny(v4(3), t + Duration::from_secs(11)));
        assert!(!tracked(&r, v4(0)));
        assert!(r.deny(v4(1), t + Duration::from_secs(11)), "1 still counts");
        assert!(tracked(&r, v4(2)));
        // Idle: everything expires and the queue empties.
        r.shrink(t + Duration::from_secs(60));
        assert!(r.is_empty());
        assert!(r.lock().order.is_empty());
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
