//! The state directory's rules (issue "hardening", item 3): the spawner runs as root and
//! acts on what it finds there (pid files name processes it may signal, `records.json` names
//! proxies it starts), so the directory must be writable by the spawner's user alone, and
//! nothing in it is followed through a symlink or written in place.
//!
//! - `state_dir` and `pids/` are created 0700; an existing one that is group- or
//!   other-writable, or not owned by the effective uid, stops the start with one line.
//! - Files are replaced atomically: a fresh temp file (`O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC`,
//!   0600), written, fsynced, renamed over the target, then the directory fsynced, so a power
//!   loss leaves the old content or the new one, never a torn file (pid files skip the
//!   fsyncs: what they say dies with the machine, see `pidfile::write_record`).
//! - Files are read with `O_NOFOLLOW` and a size cap.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::{Error, Result};

/// Create `dir` (and missing parents) 0700, then check it: see [`check`].
pub fn prepare(dir: &Path) -> Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io("create", dir, e))?;
    }
    check(dir)
}

/// Refuse a directory another user could write to: group/other-writable, or owned by
/// another uid than ours. The message says what to run.
pub fn check(dir: &Path) -> Result<()> {
    let m = std::fs::metadata(dir).map_err(|e| Error::io("stat", dir, e))?;
    if !m.is_dir() {
        return Err(Error::Invalid(format!(
            "{}: not a directory",
            dir.display()
        )));
    }
    let me = rustix::process::geteuid().as_raw();
    if m.uid() != me {
        return Err(Error::Invalid(format!(
            "{}: owned by uid {}, not by the spawner's uid {me}: another user could plant pid files the spawner acts on (chown {me} {0})",
            dir.display(),
            m.uid()
        )));
    }
    if m.mode() & 0o022 != 0 {
        return Err(Error::Invalid(format!(
            "{}: writable by group or others (mode {:04o}): another user could plant pid files the spawner acts on (chmod 700 {0})",
            dir.display(),
            m.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Replace `dir/name` with `bytes` atomically and durably (module docs). On error no temp
/// file is left behind and the old file is untouched.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    replace(dir, name, bytes, true)
}

/// As [`write_atomic`] (same temp file rules, same rename), without the fsyncs: atomic for
/// every reader and across a crash of the process, not across a power loss. For files
/// whose content dies with the machine anyway (pid files: a reboot ends every proxy).
pub fn write_atomic_unsynced(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    replace(dir, name, bytes, false)
}

fn replace(dir: &Path, name: &str, bytes: &[u8], durable: bool) -> Result<()> {
    let target = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    // A temp file left by a crash would make O_EXCL fail for ever; unlinking never follows.
    let _ = std::fs::remove_file(&tmp);
    let r = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&tmp)
        .map_err(|e| Error::io("create", &tmp, e))
        .and_then(|mut f| {
            f.write_all(bytes)
                .and_then(|()| if durable { f.sync_all() } else { Ok(()) })
                .map_err(|e| Error::io("write", &tmp, e))
        })
        .and_then(|()| std::fs::rename(&tmp, &target).map_err(|e| Error::io("rename", &target, e)));
    if r.is_err() {
        // A full or read-only state dir must not collect half-written temp files.
        let _ = std::fs::remove_file(&tmp);
        return r;
    }
    if durable {
        sync_dir(dir);
    }
    Ok(())
}

/// fsync a directory, so a rename in it survives a power loss. Best effort: the rename has
/// happened; a failure here only weakens durability, and is logged.
pub fn sync_dir(dir: &Path) {
    if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dir.display(), err = %e, "cannot fsync directory");
    }
}

/// Read at most `max` bytes of a regular file without following a symlink in its place.
/// `Ok(None)` when it does not exist.
pub fn read_nofollow(p: &Path, max: u64) -> Result<Option<Vec<u8>>> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(p);
    let f = match f {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open", p, e)),
    };
    let m = f.metadata().map_err(|e| Error::io("stat", p, e))?;
    if !m.is_file() {
        return Err(Error::Invalid(format!(
            "{}: not a regular file",
            p.display()
        )));
    }
    if m.len() > max {
        return Err(Error::Invalid(format!(
            "{}: {} bytes, more than the {max} accepted",
            p.display(),
            m.len()
        )));
    }
    let mut out = Vec::new();
    f.take(max)
        .read_to_end(&mut out)
        .map_err(|e| Error::io("read", p, e))?;
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("ns-statedir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn creates_0700_and_refuses_a_writable_one() {
        let d = tmp("mode");
        let state = d.join("a/b");
        prepare(&state).expect("create");
        let mode = std::fs::metadata(&state).expect("stat").mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let e = prepare(&state).expect_err("world-writable").to_string();
        assert!(
            e.contains("writable by group or others (mode 0777)") && e.contains("chmod 700"),
            "{e}"
        );
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        prepare(&state).expect("0755 is fine: others may read, not write");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn refuses_a_directory_of_another_user() {
        if !rustix::process::geteuid().is_root() {
            return; // chown needs root; CI runs as root
        }
        let d = tmp("owner");
        prepare(&d).expect("create");
        std::os::unix::fs::chown(&d, Some(65534), None).expect("chown");
        let e = prepare(&d).expect_err("foreign").to_string();
        assert!(e.contains("owned by uid 65534"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn write_atomic_does_not_write_through_a_planted_symlink_and_leaves_no_temp() {
        let d = tmp("atomic");
        prepare(&d).expect("create");
        let victim = d.join("victim");
        std::fs::write(&victim, "keep").expect("victim");
        // A planted temp-file symlink is removed (never followed) and the write goes on.
        std::os::unix::fs::symlink(&victim, d.join(".records.json.tmp")).expect("symlink");
        write_atomic(&d, "records.json", b"{}").expect("write");
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "keep");
        assert_eq!(std::fs::read(d.join("records.json")).expect("read"), b"{}");
        let mode = std::fs::metadata(d.join("records.json"))
            .expect("stat")
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!d.join(".records.json.tmp").exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn read_nofollow_refuses_links_and_oversized_files() {
        let d = tmp("read");
        prepare(&d).expect("create");
        std::fs::write(d.join("f"), "12345").expect("write");
        std::os::unix::fs::symlink(d.join("f"), d.join("l")).expect("symlink");
        assert_eq!(
            read_nofollow(&d.join("f"), 10).expect("read"),
            Some(b"12345".to_vec())
        );
        assert!(read_nofollow(&d.join("l"), 10).is_err(), "symlink followed");
        assert!(read_nofollow(&d.join("f"), 4).is_err(), "size cap");
        assert_eq!(read_nofollow(&d.join("missing"), 4).expect("missing"), None);
        let _ = std::fs::remove_dir_all(&d);
    }
}
