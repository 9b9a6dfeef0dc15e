//! ns-metadata-proxy: the per-namespace metadata relay (DESIGN.md "Proxy"). A VM's HTTP
//! request to 169.254.169.254 is checked, stripped of spoofable headers, given
//! X-Forwarded-For and the router/network id, and sent to the metadata agent's Unix socket
//! as one write (Neutron's agent reads a single `recv(4096)`); the answer is relayed back.
#![forbid(unsafe_code)]

pub mod app;
pub mod bind;
pub mod bufpool;
pub mod chunked;
pub mod config;
mod conn;
pub mod logfile;
pub mod process;
pub mod ratelimit;
pub mod request;
pub mod response;
pub mod server;
pub mod syslog;
pub mod upstream;

pub use config::{Args, Config};

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Start-up failures; each message is one line naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Ini(#[from] ns_ini::Error),
    #[error("bind {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("netns {spec}: {source}")]
    Netns {
        spec: String,
        source: ns_netns::Error,
    },
    #[error("pid file {}: {reason}", path.display())]
    PidFile {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("{0}")]
    Privileges(String),
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        source: std::io::Error,
    },
}

impl Error {
    /// Exit code: 2 for bad configuration, 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::Ini(_) => 2,
            _ => 1,
        }
    }
}
