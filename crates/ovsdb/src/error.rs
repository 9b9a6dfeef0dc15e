//! The crate's error type: one variant per way a remote, the wire or a request can fail.
use std::io;

/// Everything this crate returns.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the OVSDB client. Nothing the server sends can panic the client: bad input
/// ends up as [`Error::Protocol`] (and a reconnect), never as a crash.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A remote string that is not `unix:PATH`, `tcp:HOST:PORT` or `ssl:HOST:PORT`.
    #[error("bad remote {remote:?}: {reason}")]
    Remote { remote: String, reason: String },
    /// Bad client configuration (missing TLS files for an `ssl:` remote, empty monitor, ...).
    #[error("{0}")]
    Config(String),
    /// Reading a TLS key, certificate or CA file.
    #[error("tls {path}: {reason}")]
    Tls { path: String, reason: String },
    /// Connecting to or talking with a remote.
    #[error("{remote}: {source}")]
    Io {
        remote: String,
        #[source]
        source: io::Error,
    },
    /// The server sent something that breaks RFC 7047 (malformed JSON, wrong types, a diff
    /// for a row we do not have, an oversized message).
    #[error("protocol: {0}")]
    Protocol(String),
    /// The server answered a request with a JSON-RPC error.
    #[error("{method} failed: {error}")]
    Rpc { method: String, error: String },
    /// A transaction was answered but one of its operations (or the commit) failed.
    #[error("transaction failed at operation {index}: {error}{}", details.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Transaction {
        index: usize,
        error: String,
        details: Option<String>,
    },
    /// No usable connection right now (the client is reconnecting); retry after the next
    /// [`crate::Event::Ready`].
    #[error("not connected")]
    NotConnected,
    /// The connection was lost while the request was in flight; whether a transaction
    /// committed is unknown (use `wait` or idempotent mutations).
    #[error("connection lost with the request in flight")]
    Disconnected,
    /// The remote is a clustered member that is not (or no longer) the leader, or not
    /// connected to its cluster.
    #[error("{remote}: {reason}")]
    NotLeader { remote: String, reason: String },
    /// The client task is gone (the [`crate::Client`] was dropped or the runtime shut down).
    #[error("client stopped")]
    Stopped,
}

impl Error {
    pub(crate) fn protocol(msg: impl Into<String>) -> Error {
        Error::Protocol(msg.into())
    }
}
