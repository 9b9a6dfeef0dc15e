//! The per-namespace statistics block the proxy fills and the spawner reads (issue #17): one
//! page of little-endian `u64` slots, shared by `mmap`, updated by the proxy with relaxed
//! atomic adds (no syscall per request). One block per namespace, not per process, so a
//! shared proxy serving many namespaces (issue #20) fills one block each the same way.
//!
//! The layout is the contract between the two binaries, so it lives here once: slot indexes,
//! the status classes, the error codes counted, the latency buckets. Slot 0 holds
//! [`MAGIC`]; the reader treats every other slot as an untrusted number.

use crate::metrics::LATENCY_BUCKETS;

/// The block's size in bytes: one page, room to grow without a new format.
pub const BLOCK_SIZE: usize = 4096;
/// Slot 0: "NSMSTAT1" (a block of another format or a random file is refused).
pub const MAGIC: u64 = u64::from_le_bytes(*b"NSMSTAT1");

/// Status classes counted (`1xx`..`5xx`); anything else lands in `other`.
pub const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];
/// The proxy's own error answers, counted by code (the VM's view of what went wrong):
/// 400 malformed, 408 request too slow, 413 body too large, 429 rate limited, 431 header
/// block too large, 502 agent closed without a reply, 503 agent unavailable, 504 agent too
/// slow. An agent's own 5xx relayed unchanged is a class count, not an error of the proxy.
pub const ERROR_CODES: [u16; 8] = [400, 408, 413, 429, 431, 502, 503, 504];

/// The first slot of each group.
pub const SLOT_MAGIC: usize = 0;
pub const SLOT_CLASS: usize = 1;
pub const SLOT_ERROR: usize = SLOT_CLASS + CLASSES.len();
/// Latency buckets: one per [`LATENCY_BUCKETS`] bound (not cumulative) plus the overflow.
pub const SLOT_LATENCY: usize = SLOT_ERROR + ERROR_CODES.len();
/// Sum of request durations, microseconds.
pub const SLOT_LATENCY_SUM_US: usize = SLOT_LATENCY + LATENCY_BUCKETS.len() + 1;
/// Client connections accepted (counter) and open now (gauge, reset by the spawner before
/// each start: a proxy killed with connections open cannot decrement it).
pub const SLOT_CONN_ACCEPTED: usize = SLOT_LATENCY_SUM_US + 1;
pub const SLOT_CONN_OPEN: usize = SLOT_CONN_ACCEPTED + 1;
/// Agent connections: newly connected, and taken from the keep-alive pool.
pub const SLOT_AGENT_NEW: usize = SLOT_CONN_OPEN + 1;
pub const SLOT_AGENT_REUSED: usize = SLOT_AGENT_NEW + 1;
/// Slots in use; the rest of the page stays zero.
pub const SLOTS: usize = SLOT_AGENT_REUSED + 1;

const _: () = assert!(SLOTS * 8 <= BLOCK_SIZE);

/// The class slot of a status code.
pub fn class_slot(status: u16) -> usize {
    let c = match status {
        100..=599 => usize::from(status / 100) - 1,
        _ => CLASSES.len() - 1,
    };
    SLOT_CLASS + c
}

/// The error slot of one of the proxy's own answers, if that code is counted.
pub fn error_slot(status: u16) -> Option<usize> {
    ERROR_CODES
        .iter()
        .position(|&c| c == status)
        .map(|i| SLOT_ERROR + i)
}

/// The latency bucket slot of a duration in microseconds (the bounds are
/// [`LATENCY_BUCKETS`], "less or equal" as Prometheus' `le`).
pub fn latency_slot(us: u64) -> usize {
    let i = LATENCY_US
        .iter()
        .position(|&b| us <= b)
        .unwrap_or(LATENCY_US.len());
    SLOT_LATENCY + i
}

/// [`LATENCY_BUCKETS`] in microseconds (integer compares on the request path).
const LATENCY_US: [u64; 13] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_distinct_and_buckets_match_the_shared_bounds() {
        assert_eq!(LATENCY_US.len(), LATENCY_BUCKETS.len());
        for (us, s) in LATENCY_US.iter().zip(LATENCY_BUCKETS) {
            assert_eq!(*us as f64 / 1e6, *s);
        }
        assert_eq!(class_slot(200), SLOT_CLASS + 1);
        assert_eq!(class_slot(504), SLOT_CLASS + 4);
        assert_eq!(class_slot(0), SLOT_CLASS + 5);
        assert_eq!(class_slot(999), SLOT_CLASS + 5);
        assert_eq!(error_slot(400), Some(SLOT_ERROR));
        assert_eq!(error_slot(504), Some(SLOT_ERROR + 7));
        assert_eq!(error_slot(200), None);
        assert_eq!(latency_slot(0), SLOT_LATENCY);
        assert_eq!(latency_slot(1_000), SLOT_LATENCY);
        assert_eq!(latency_slot(1_001), SLOT_LATENCY + 1);
        assert_eq!(latency_slot(u64::MAX), SLOT_LATENCY + 13);
        assert_eq!(SLOTS, 34);
    }
}
