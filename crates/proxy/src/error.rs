//! The crate's start-up error type and `Result` alias; each message is one line naming what
//! failed (and, where there is one, what to do about it).

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Start-up failures; each message is one line naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    /// A bad option value: one line naming `file:line: [section] key`, `OS_X__Y` or `--flag`.
    #[error(transparent)]
    Options(#[from] ns_ini::ConfigError),
    /// `where_` names the namespace ("" for the current one); `hint` says what to do.
    #[error("bind {addr}{where_}: {source}{hint}")]
    Bind {
        addr: String,
        where_: String,
        source: std::io::Error,
        hint: String,
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
            Error::Config(_) | Error::Options(_) => 2,
            _ => 1,
        }
    }
}
