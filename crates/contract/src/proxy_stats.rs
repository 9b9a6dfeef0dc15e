//! The per-namespace statistics block the proxy fills and the spawner reads (issue #17): one
//! page of little-endian `u64` slots, shared by `mmap`, updated by the proxy with relaxed
//! atomic adds (no syscall per request). One block per namespace, not per process, so a
//! shared proxy serving many namespaces (issue #20) fills one block each the same way; there
//! the blocks are records of one slab per server ([`RECORD_SIZE`] bytes each, the key in the
//! record's tail), so a namespace costs an eighth of a page, not a page.
//!
//! The layout is the contract between the two binaries, so it lives here once: slot indexes,
//! the status classes, the error codes counted, the latency buckets. Slot 0 holds
//! [`MAGIC`]; the reader treats every other slot as an untrusted number.

use crate::metrics::LATENCY_BUCKETS;

/// The block's size in bytes: one page, room to grow without a new format.
pub const BLOCK_SIZE: usize = 4096;

/// The shared model's slab (one file per shared server, issue #20): records of
/// [`RECORD_SIZE`] bytes, each a block's first [`RECORD_SLOTS`] slots (same indexes, same
/// [`MAGIC`] in slot 0 while in use, 0 while free), so 8 namespaces share a page instead of
/// one page each. Record 0 is the header: [`SLAB_MAGIC`], then the capacity.
pub const RECORD_SIZE: usize = 512;
/// Slots per record.
pub const RECORD_SLOTS: usize = RECORD_SIZE / 8;
/// Records per slab, the header's included: 8 MiB, created sparse (a page never touched
/// costs no memory).
pub const SLAB_RECORDS: usize = 16_384;
/// The slab's size in bytes.
pub const SLAB_SIZE: usize = RECORD_SIZE * SLAB_RECORDS;
/// Slot 0 of record 0: "NSMSLAB1".
pub const SLAB_MAGIC: u64 = u64::from_le_bytes(*b"NSMSLAB1");
/// Slot 1 of record 0: the capacity in records ([`SLAB_RECORDS`]).
pub const SLAB_SLOT_CAPACITY: usize = 1;
/// In a used record, the key of its namespace: this slot holds its length in bytes, the
/// bytes follow from the next slot on (little-endian, zero-padded), so a restarted spawner
/// finds which record is whose from the slab itself. Slots [`SLOTS`]..this one stay free
/// for new counters.
pub const SLOT_KEY_LEN: usize = 40;
/// The longest key a record holds; a namespace with a longer one keeps a block file.
pub const MAX_RECORD_KEY: usize = (RECORD_SLOTS - SLOT_KEY_LEN - 1) * 8;
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
/// Counter slots in use (what the spawner folds and exports); the rest of the page stays
/// zero but for the heartbeat below.
pub const SLOTS: usize = SLOT_AGENT_REUSED + 1;

/// The liveness signal (the spawner's `hang_timeout`, a watchdog as systemd's
/// `WatchdogSec=`): a counter the process bumps from a timer task of its serving runtime, so
/// it stops when the event loop stops. In a per-namespace block it is these two slots after
/// the counters; for a shared server it is in its slab's header ([`SLAB_SLOT_HEARTBEAT`]),
/// one per process. The spawner zeroes the beat before a start and writes the period; the
/// process bumps the beat once before READY and then every period (re-read at each beat),
/// and never when the period is 0. A process of an older layout never bumps it: a beat that
/// never moves is "not watched", never "hung". Not a counter: not folded, not exported.
pub const SLOT_HEARTBEAT: usize = SLOTS;
/// The period the spawner asks for, in milliseconds (0: no heartbeat).
pub const SLOT_HEARTBEAT_MS: usize = SLOTS + 1;
/// Slots of a block a proxy maps: the counters and the heartbeat.
pub const BLOCK_MAPPED_SLOTS: usize = SLOT_HEARTBEAT_MS + 1;
/// The shared server's beat and period: slots 3 and 4 of the slab's header (record 0; slot 2
/// is the spawner's high-water mark).
pub const SLAB_SLOT_HEARTBEAT: usize = 3;
pub const SLAB_SLOT_HEARTBEAT_MS: usize = 4;
/// The shortest and longest period a process honours (a hostile or damaged value can make
/// it neither spin nor sleep for ever).
pub const HEARTBEAT_MIN_MS: u64 = 10;
pub const HEARTBEAT_MAX_MS: u64 = 3_600_000;
/// The longest gap between two beats of a per-namespace proxy whose period is at least twice
/// this: its housekeeping tick beats then, with no timer of its own. So a proxy adopted by a
/// spawner asking for a shorter period shows its first beat at the latest this long after.
pub const HEARTBEAT_TICK_GAP_MS: u64 = 6_500;

const _: () = assert!(SLOTS * 8 <= BLOCK_SIZE);
const _: () = assert!(BLOCK_MAPPED_SLOTS <= SLOT_KEY_LEN && SLOT_KEY_LEN < RECORD_SLOTS);
const _: () = assert!(SLAB_SLOT_HEARTBEAT_MS < RECORD_SLOTS);

/// A key as the `u64` slots of a record's tail (after [`SLOT_KEY_LEN`]); `None` if longer
/// than [`MAX_RECORD_KEY`].
pub fn key_slots(key: &str) -> Option<Vec<u64>> {
    let b = key.as_bytes();
    if b.len() > MAX_RECORD_KEY {
        return None;
    }
    Some(
        b.chunks(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w[..c.len()].copy_from_slice(c);
                u64::from_le_bytes(w)
            })
            .collect(),
    )
}

/// The key a record's tail holds: its length slot and the slots after it, as read. `None`
/// for a length out of range or bytes that are not UTF-8 (a record written by something else).
pub fn key_of(len: u64, slots: &[u64]) -> Option<String> {
    let len = usize::try_from(len).ok().filter(|&l| l <= MAX_RECORD_KEY)?;
    let bytes: Vec<u8> = slots
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .take(len)
        .collect();
    if bytes.len() != len {
        return None;
    }
    String::from_utf8(bytes).ok()
}

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

    #[test]
    fn a_key_round_trips_through_a_records_tail() {
        assert_eq!(RECORD_SLOTS, 64);
        assert_eq!(MAX_RECORD_KEY, 184);
        assert_eq!(SLAB_SIZE, 8 << 20);
        let key = "4f3c2a1e-8b7d-4c6e-9f1a-2b3c4d5e6f70";
        let slots = key_slots(key).expect("fits");
        assert_eq!(slots.len(), 5);
        assert_eq!(key_of(key.len() as u64, &slots).as_deref(), Some(key));
        assert_eq!(key_of(0, &[]).as_deref(), Some(""));
        assert!(key_slots(&"k".repeat(MAX_RECORD_KEY)).is_some());
        assert!(key_slots(&"k".repeat(MAX_RECORD_KEY + 1)).is_none());
        // Whatever a record holds, reading it cannot panic.
        assert!(key_of(u64::MAX, &slots).is_none());
        assert!(key_of(41, &slots).is_none());
        assert!(key_of(8, &[u64::MAX]).is_none());
    }
}
