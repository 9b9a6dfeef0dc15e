//! A small tmpfs mounted on a fresh temp dir (root only), unmounted and removed on drop, also
//! when the test fails: a state dir that a test can fill to the last byte.

use std::path::Path;
use std::process::Command;

use crate::TempDir;

/// A tmpfs of a given size on its own temp dir. Drop: `umount -l`, then the dir is removed.
pub struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    /// Mount a tmpfs of `kib` KiB on a new temp dir tagged `tag`; `Err` with `mount`'s words.
    pub fn mount(tag: &str, kib: u64) -> Result<Tmpfs, String> {
        let dir = TempDir::new(tag);
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={kib}k,mode=0700"))
            .arg("ns-testkit-tmpfs")
            .arg(dir.path())
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount tmpfs on {}: {}",
                dir.path().display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fill it: a file `name` written until the filesystem says it is full.
    pub fn fill(&self, name: &str) {
        use std::io::Write as _;
        let mut f = std::fs::File::create(self.path().join(name)).expect("create the filler");
        let chunk = [0x5au8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a descriptor still open on it (a process of the test) does not keep it.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
