//! Harness for the end-to-end tests in `tests/tests/*.rs`: real binaries (agent, spawner, the
//! proxies it starts) in real namespaces, real clients (curl, cloud-init) inside `vm` namespaces.
//!
//! Every resource a test creates is owned by a guard that removes it on drop, also when the
//! test panics: namespaces ([`TestNs`]), processes ([`procs::Agent`], [`procs::Spawner`], which
//! also kills the proxies it started), files ([`procs::TempDir`], [`topo::EtcNetnsResolv`]).
//! Names carry a per-run prefix, addresses stay in 10.250.0.0/16 and 169.254.0.0/16 inside the
//! test's own namespaces.
#![forbid(unsafe_code)]

pub mod client;
mod inventory;
pub mod nova;
pub mod procs;
pub mod topo;
pub mod world;

pub use ns_netns::testing::{
    bin_path, require_root, unique_prefix, wait_until, ChildGuard, TestNs,
};

use std::io::Write as _;
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

/// Whether the test environment demands that skips fail (CI=true), as `require_root` does.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skip (or, on CI, fail) a test whose external prerequisite is missing. The SKIP line goes
/// straight to the process's stderr, so libtest's capture does not hide it.
pub fn require(test: &str, ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    assert!(
        !ci(),
        "{test}: {what} is missing and CI=true forbids skipping"
    );
    let _ = writeln!(std::io::stderr(), "SKIP {test}: needs {what}");
    false
}
