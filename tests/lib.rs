//! Harness for the end-to-end tests in `tests/tests/*.rs`: real binaries (agent, spawner, the
//! proxies it starts) in real namespaces, real clients (curl, cloud-init) inside `vm` namespaces.
//!
//! Every resource a test creates is owned by a guard that removes it on drop, also when the
//! test panics: namespaces ([`TestNs`]), processes ([`procs::Agent`], [`procs::Spawner`], which
//! also kills the proxies it started), files ([`TempDir`], [`topo::EtcNetnsResolv`]). The
//! generic pieces come from ns-testkit and are re-exported here.
//! Names carry a per-run prefix, addresses stay in 10.250.0.0/16 and 169.254.0.0/16 inside the
//! test's own namespaces.
#![forbid(unsafe_code)]

pub mod client;
mod inventory;
pub mod procs;
pub mod world;

pub use ns_testkit::netns::{self as topo, unique_prefix, TestNs};
pub use ns_testkit::nova;
pub use ns_testkit::{bin_path, require, require_root, wait_until, ChildGuard, TempDir};

/// `Key=` values of a systemd unit's text, continuation lines joined (the example units are
/// read by tests/tests/units.rs and packaging.rs).
pub fn unit_values(text: &str, key: &str) -> Vec<String> {
    text.replace("\\\n", " ")
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_owned))
        .collect()
}

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Per-run unique UUID-shaped ids (the spawner validates ids before they become file names).
pub struct Ids {
    run: u32,
    next: AtomicU32,
}

impl Ids {
    /// Ids unique to this process run: pid and clock mixed into the first group.
    pub fn new(tag: u16) -> Ids {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        Ids {
            run: std::process::id().rotate_left(16) ^ nanos ^ (u32::from(tag) << 8),
            next: AtomicU32::new(1),
        }
    }

    /// The next id, e.g. `00013f2a-0000-4000-8000-00003f2a91c0`: the counter leads, so ids of
    /// one run differ in their first 8 hex digits (the agent's EC2 `i-XXXXXXXX` id comes from
    /// them); the run's number fills the tail.
    pub fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed) & 0xffff;
        format!(
            "{n:04x}{:04x}-0000-4000-8000-{:012x}",
            self.run & 0xffff,
            self.run
        )
    }
}
