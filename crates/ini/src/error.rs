//! Errors of the option layer: each one is a single line that names the file and line, the
//! environment variable, the flag or the default it is about.

use std::path::PathBuf;

use crate::origin::Place;

/// Result alias for the option layer.
pub type ConfigResult<T, E = ConfigError> = std::result::Result<T, E>;

/// A configuration problem, always with the place it comes from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read or has a syntax error.
    #[error(transparent)]
    Ini(#[from] crate::Error),
    /// `--config-dir` names something that is not a readable directory.
    #[error("--config-dir {}: {reason}", path.display())]
    ConfigDir { path: PathBuf, reason: String },
    /// A bad value: `file:line: [group] key: reason`, `OS_X__Y: reason`, `--flag: reason`,
    /// `key (default): reason`.
    #[error("{place}: {reason}")]
    Value { place: Place, reason: String },
    /// A `(flag, value)` pair names no flag of the schema.
    #[error("--{name}: unknown option")]
    UnknownFlag { name: String },
    /// The program asked for an option its schema does not declare (a bug in the program).
    #[error("[{group}] {name}: not an option of this program (schema bug)")]
    NotInSchema { group: String, name: String },
    /// The program read an option with the wrong getter (a bug in the program).
    #[error("[{group}] {name}: is {kind}, read as {wanted} (schema bug)")]
    WrongKind {
        group: String,
        name: String,
        kind: &'static str,
        wanted: &'static str,
    },
    /// The option table itself is inconsistent (found by `Schema::check`).
    #[error("option table: {0}")]
    Schema(String),
}
