//! Test kit for the workspace's tests (dev-only, never published): one home for each helper
//! the crates' tests and the end-to-end suite share.
//!
//! | module | job |
//! |---|---|
//! | [`tempdir`] | a directory removed on drop |
//! | [`fuzz`] | seeded xorshift PRNG, mutations of valid inputs, a runner that prints the seed of a failure |
//! | [`eventually`] | polling with a timeout (never a fixed sleep as synchronisation) |
//! | [`proc`] | child and pid guards that kill, by pid, only what the test started; workspace binaries |
//! | [`skip`] | root checks and skips, printed as `SKIP name: reason`; a failure under `CI=true` |
//! | [`http`] | one raw HTTP/1 client (TCP or Unix, blocking or tokio) and its response parser |
//! | [`agent`] | one scriptable metadata-agent stand-in on a Unix socket |
//! | [`nova`] | one Nova metadata API stand-in that checks the signature as Nova does |
//! | [`netns`] | namespace and veth fixtures |
//! | [`neutron`] | the wrapper around Neutron's real metadata agent and its venv |
//! | [`ovsdb`] | real `ovsdb-server`s from the shipped OVN/OVS schemas, and their command-line tools |
//! | [`tmpfs`] | a small tmpfs on a temp dir (root), filled on demand, unmounted on drop |
#![forbid(unsafe_code)]

pub mod agent;
pub mod eventually;
pub mod fuzz;
pub mod http;
pub mod netns;
pub mod neutron;
pub mod nova;
pub mod ovsdb;
pub mod proc;
pub mod skip;
pub mod tempdir;
pub mod tmpfs;

pub use eventually::{
    eventually, eventually_async, eventually_await, poll, poll_async, spin_until, wait_until,
    wait_until_async,
};
pub use proc::{bin_path, ChildGuard, PidGuard};
pub use skip::{require, require_root, skip};
pub use tempdir::TempDir;
