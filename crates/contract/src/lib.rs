//! The contract every binary of the project shares, in one place: the id
//! rule and name checks, the resource kinds with their identity headers, the headers the proxy
//! strips, the keep-alive signal between proxy and agent, the agent socket's default path,
//! the Neutron model types, and `sd_notify`. A fact that two crates need lives here.
#![forbid(unsafe_code)]

pub mod eui64;
pub mod headers;
pub mod id;
pub mod journal;
pub mod keepalive;
pub mod limits;
pub mod logfile;
pub mod metrics;
pub mod neutron;
pub mod neutron_options;
pub mod notify;
pub mod options;
pub mod ovn;
pub mod proxy_stats;
pub mod resource;
pub mod rlimit;
pub mod socket;
pub mod spawn;

/// The version every binary reports (`--version`, `build_info`): the package version and the
/// commit it was built from (see build.rs).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("NS_GIT_COMMIT"), ")");

pub use id::{validate_id, validate_ifname, validate_netns, InvalidName};
pub use keepalive::KeepaliveMode;
pub use resource::{Kind, Resource};
