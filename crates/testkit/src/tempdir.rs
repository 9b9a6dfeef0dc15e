//! [`TempDir`]: a fresh directory under the system temp dir, unique to this process and call,
//! removed (recursively) on drop, also when the test panics.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A directory removed on drop. Its name carries the pid and a per-process counter, so two
/// tests (or two runs) never share one.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    /// Kill (by pid) processes whose argv mentions this directory before removing it.
    reap: bool,
}

impl TempDir {
    /// `$TMPDIR/ns-test-<tag>-<pid>-<n>`, created empty.
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("ns-test-{tag}-{}-{n}", std::process::id()));
        // A leftover of a crashed run with the same pid would make the test see stale files.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("create temp dir {}: {e}", path.display()));
        TempDir { path, reap: false }
    }

    /// Also kill, on drop, every process whose command line mentions this directory: the
    /// processes a supervisor under test started from files here (they run in their own
    /// session and outlive it). The path is unique to this call, so nobody else's process
    /// can match.
    pub fn reaping(mut self) -> TempDir {
        self.reap = true;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path()/name`.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// Write `text` to `path()/name` (creating the directories on the way); its path.
    pub fn write(&self, name: impl AsRef<Path>, text: &str) -> PathBuf {
        let p = self.path.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("create the file's directory");
        }
        std::fs::write(&p, text).expect("write the test file");
        p
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let path = self.path.display().to_string();
        if self.reap {
            crate::proc::kill_mentioning(&path);
        }
        let _ = std::fs::remove_dir_all(&self.path);
        if self.reap {
            // A supervisor still running in the test's runtime (a test that panicked) may
            // have restarted one in between; with the directory gone it cannot again.
            crate::proc::kill_mentioning(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_and_removed_on_drop() {
        let a = TempDir::new("kit");
        let b = TempDir::new("kit");
        assert_ne!(a.path(), b.path());
        std::fs::write(a.join("f"), "x").expect("write");
        let p = a.path().to_path_buf();
        drop(a);
        assert!(!p.exists());
    }
}
