//! ns-metadata-spawner: the supervisor that runs one `ns-metadata-proxy` per network
//! namespace that needs one.
//!
//! Flow: events (control API, static records file, `/run/netns` watch) change the
//! [`records::Records`]; [`decide::desired`] turns records + config into proxy specs; the
//! [`supervisor::Supervisor`] reconciles the running proxies against them.
#![forbid(unsafe_code)]

mod adopt;
pub mod agent_probe;
pub mod api;
pub mod backoff;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod decide;
pub mod doctor;
pub mod hang;
pub mod journal;
pub mod launch;
pub mod metrics;
pub mod netns_platform;
pub mod ovn_decide;
pub mod ovn_provision;
pub mod ovn_source;
pub mod persist;
pub mod pidfile;
pub mod platform;
pub mod proxy_stats;
mod proxy_task;
pub mod records;
mod shared_control;
pub mod shared_model;
mod shared_task;
pub mod statedir;
pub mod stats_slab;
pub mod status;
pub mod supervisor;
mod takeover;

/// This build's version and commit (`--version`, `build_info`).
pub const VERSION: &str = ns_contract::VERSION;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the spawner library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad configuration: the message names its origin (`file:line: [section] key`,
    /// `OS_GROUP__KEY`, `--flag` or the default).
    #[error(transparent)]
    Config(#[from] ns_ini::ConfigError),
    /// A configuration problem not tied to one INI entry.
    #[error("{0}")]
    Invalid(String),
    /// A record (router or network) that cannot be accepted.
    #[error("{0}")]
    BadRecord(String),
    /// An id, namespace or interface name that breaks the contract's rule.
    #[error(transparent)]
    Name(#[from] ns_contract::InvalidName),
    /// A file or socket operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// Namespace preparation or entry failed.
    #[error("{0}")]
    Netns(String),
    /// The proxy could not be started or did not become ready.
    #[error("{0}")]
    Spawn(String),
}

impl Error {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<std::path::PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// `text` with every control character but those in `keep` replaced by U+FFFD: for text
/// from a process or a peer we do not trust (a shared server's answers, what a probe
/// receives) on its way to a log or an operator's terminal, where an escape sequence in it
/// would be obeyed.
pub(crate) fn printable(text: &str, keep: &[char]) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && !keep.contains(&c) {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            }
        })
        .collect()
}
