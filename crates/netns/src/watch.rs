//! Watching `/run/netns` with inotify: a stream of namespaces appearing and disappearing.

use std::path::Path;

use crate::error::Result;

/// A change under the watched directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsEvent {
    Added(String),
    Removed(String),
}

/// Placeholder until the inotify watch lands.
pub fn watch() -> Result<()> {
    watch_dir(Path::new(crate::NETNS_RUN_DIR))
}

/// Placeholder until the inotify watch lands.
pub fn watch_dir(_dir: &Path) -> Result<()> {
    Ok(())
}
