//! The live inventory: the last good snapshot, its generation number, and reloading it when
//! the file changes (polled) or on SIGHUP. A bad file keeps the last good one and logs why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use ns_contract::notify::State;

use crate::inventory::{InventoryError, Snapshot};
use crate::notify;

/// What identifies one version of the file on disk, so polling reads it only when it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

/// Outcome of one reload attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    Applied(u64),
    Rejected,
}

/// Shared, cheap to read: readers clone the `Arc` of the current snapshot.
#[derive(Debug)]
pub struct InventoryStore {
    path: PathBuf,
    current: RwLock<(u64, Arc<Snapshot>)>,
    /// Stamp of the last file version tried (good or bad), so a bad file is reported once.
    seen: Mutex<Option<FileStamp>>,
}

impl InventoryStore {
    /// Load the file once; at start-up a missing or bad file is an error.
    pub fn open(path: &Path) -> Result<InventoryStore, InventoryError> {
        let before = stamp(path);
        let snap = Snapshot::load(path)?;
        Ok(InventoryStore {
            path: path.to_owned(),
            current: RwLock::new((1, Arc::new(snap))),
            seen: Mutex::new(before),
        })
    }

    /// The snapshot in force and its generation (bumped on every applied reload).
    pub fn current(&self) -> (u64, Arc<Snapshot>) {
        match self.current.read() {
            Ok(g) => (g.0, g.1.clone()),
            Err(poisoned) => {
                let g = poisoned.into_inner();
                (g.0, g.1.clone())
            }
        }
    }

    pub fn generation(&self) -> u64 {
        self.current().0
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-read the file if it changed (or always, with `force`); swap it in if it is valid.
    pub fn reload(&self, force: bool) -> Reload {
        let now = stamp(&self.path);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if !force && *seen == now {
                return Reload::Unchanged;
            }
            *seen = now;
        }
        match Snapshot::load(&self.path) {
            Ok(snap) => {
                let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
                cur.0 += 1;
                cur.1 = Arc::new(snap);
                tracing::info!(
                    path = %self.path.display(),
                    generation = cur.0,
                    ports = cur.1.inventory.ports.len(),
                    instances = cur.1.inventory.instances.len(),
                    "inventory loaded"
                );
                Reload::Applied(cur.0)
            }
            Err(err) => {
                tracing::warn!(%err, "inventory rejected, keeping the last good one");
                Reload::Rejected
            }
        }
    }

    /// Poll every `interval` (0 = never) and reload on each SIGHUP `hup` delivers, until the
    /// task is dropped. A SIGHUP reload is framed by RELOADING and READY for systemd
    /// (`Type=notify-reload`). The caller installs the handler before the agent's socket
    /// exists: a SIGHUP after READY must reload, never kill the agent (SIGHUP's default
    /// action).
    pub async fn watch(
        self: Arc<Self>,
        interval: Duration,
        mut hup: Option<tokio::signal::unix::Signal>,
    ) {
        let mut tick = (!interval.is_zero()).then(|| {
            let mut t = tokio::time::interval(interval);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            let force = tokio::select! {
                _ = async { match tick.as_mut() { Some(t) => { t.tick().await; } None => std::future::pending::<()>().await } } => false,
                _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending::<()>().await } } => true,
            };
            if force {
                crate::reopen_log_file();
                tracing::info!("SIGHUP: reloading inventory");
                notify::systemd(&[State::Reloading]);
            }
            // Reading and parsing a large file blocks: keep it off the request threads
            // (with metadata_workers = 0 there is only one).
            let store = self.clone();
            if let Err(err) = tokio::task::spawn_blocking(move || store.reload(force)).await {
                tracing::warn!(%err, "inventory reload failed");
            }
            if force {
                // Done, applied or not: a rejected file leaves the last good one serving.
                notify::systemd(&[State::Ready]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_applies_good_and_keeps_last_good() {
        let dir = std::env::temp_dir().join(format!("ns-agent-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let f = dir.join("inv.json");
        std::fs::write(&f, r#"{"instances": [{"uuid": "a"}]}"#).expect("write");
        let store = InventoryStore::open(&f).expect("opens");
        assert_eq!(store.reload(false), Reload::Unchanged);
        std::fs::write(&f, r#"{"instances": [{"uuid": "a"}, {"uuid": "b"}]}"#).expect("write");
        assert_eq!(store.reload(true), Reload::Applied(2));
        assert!(store.current().1.instance("b").is_some());
        std::fs::write(&f, "{ not json").expect("write");
        assert_eq!(store.reload(true), Reload::Rejected);
        assert_eq!(store.generation(), 2);
        assert!(store.current().1.instance("b").is_some());
        assert!(InventoryStore::open(&dir.join("missing.json")).is_err());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
