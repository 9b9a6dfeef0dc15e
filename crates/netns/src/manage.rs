//! Named namespaces under `/run/netns`: create, delete, list, validate, the way `ip netns` does.
//!
//! `create` follows iproute2's `netns_add`: make `/run/netns` a shared mount point (bind-mounting
//! it onto itself first if it is not a mount point yet) so the namespace mounts propagate to
//! other mount namespaces, create an empty file with O_EXCL, then bind-mount a fresh namespace
//! onto it. The fresh namespace comes from a dedicated thread that unshare(CLONE_NEWNET)s and
//! bind-mounts its own `/proc/self/task/TID/ns/net` (not `/proc/self/ns/net`, which is the main
//! thread's). The thread then exits; the bind mount keeps the namespace alive.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::error::{Error, Result};
use crate::ns::Netns;

/// Where named namespaces live (iproute2's NETNS_RUN_DIR).
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Serializes the "make /run/netns a shared mount" step within this process, so two threads
/// do not both bind-mount the directory onto itself.
static RUN_DIR_SETUP: Mutex<()> = Mutex::new(());

/// Check a namespace name: the project's one rule, [`ns_contract::validate_netns`] (what
/// iproute2 takes: not empty, at most 255 bytes, no '/', not "." or ".."; plus no NUL byte,
/// and no whitespace, so the name survives every command and log line it appears in).
pub fn validate_name(name: &str) -> Result<()> {
    ns_contract::validate_netns(name).map_err(|e| Error::InvalidName {
        name: e.name,
        reason: e.reason,
    })
}

fn ns_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Create a named namespace like `ip netns add NAME` and return it opened.
/// [`Error::AlreadyExists`] if `/run/netns/NAME` exists.
pub fn create(name: &str) -> Result<Netns> {
    validate_name(name)?;
    let what = format!("namespace {name}");
    let dir = Path::new(NETNS_RUN_DIR);
    ensure_shared_run_dir(dir)?;

    let path = ns_path(name);
    // Mode 0 like iproute2: the file is only a mount point.
    match OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(&path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(Error::AlreadyExists { what })
        }
        Err(e) => return Err(Error::from_io("create", &path, &what, e)),
    }

    let target = path.clone();
    let bound = std::thread::Builder::new()
        .name("netns-create".into())
        .spawn(move || -> nix::Result<()> {
            unshare(CloneFlags::CLONE_NEWNET)?;
            let own = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
            mount(
                Some(own.as_str()),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        })
        .map_err(|e| Error::Io {
            op: "spawn thread to create",
            target: what.clone(),
            source: e,
        })?
        .join()
        .unwrap_or(Err(nix::Error::EIO));
    if let Err(e) = bound {
        let _ = fs::remove_file(&path);
        return Err(Error::from_errno(
            "bind-mount new namespace on",
            &path,
            &what,
            e,
        ));
    }
    tracing::debug!(netns = %name, "created network namespace");
    Netns::open(name)
}

/// Make `dir` exist and be a shared mount point (what `ip netns add` does every time).
fn ensure_shared_run_dir(dir: &Path) -> Result<()> {
    let _guard = RUN_DIR_SETUP.lock().unwrap_or_else(|p| p.into_inner());
    fs::create_dir_all(dir).map_err(|e| Error::from_io("create", dir, "directory", e))?;
    let shared = || {
        mount(
            None::<&str>,
            dir,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        // EINVAL: not a mount point yet; bind it onto itself, then make it shared.
        Err(nix::Error::EINVAL) => mount(
            Some(dir),
            dir,
            Some("none"),
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .and_then(|()| shared())
        .map_err(|e| Error::from_errno("make shared mount point", dir, "directory", e)),
        Err(e) => Err(Error::from_errno(
            "make shared mount point",
            dir,
            "directory",
            e,
        )),
    }
}

/// Delete a named namespace like `ip netns del NAME`: detach the bind mount, remove the file.
/// The namespace itself lives on while processes or open fds still use it.
/// [`Error::NotFound`] if absent.
pub fn delete(name: &str) -> Result<()> {
    validate_name(name)?;
    let what = format!("namespace {name}");
    let path = ns_path(name);
    if let Err(e) = fs::symlink_metadata(&path) {
        return Err(Error::from_io("stat", &path, &what, e));
    }
    match umount2(&path, MntFlags::MNT_DETACH) {
        // EINVAL: not mounted (a leftover empty file); still remove it.
        Ok(()) | Err(nix::Error::EINVAL) => {}
        Err(e) => return Err(Error::from_errno("unmount", &path, &what, e)),
    }
    fs::remove_file(&path).map_err(|e| Error::from_io("remove", &path, &what, e))?;
    tracing::debug!(netns = %name, "deleted network namespace");
    Ok(())
}

/// Names under `/run/netns`, sorted; empty if the directory does not exist.
pub fn list() -> Result<Vec<String>> {
    list_dir(Path::new(NETNS_RUN_DIR))
}

pub(crate) fn list_dir(dir: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::from_io("list", dir, "directory", e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::from_io("list", dir, "directory", e))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(name: &str) -> String {
        match validate_name(name) {
            Err(Error::InvalidName { reason, .. }) => reason,
            other => panic!("{name:?} should be invalid, got {other:?}"),
        }
    }

    #[test]
    fn names_accepted_like_iproute2() {
        for ok in [
            "qrouter-8c2f3f0a-1b2c-4d5e-9f00-0123456789ab",
            "a",
            "...",
            &"n".repeat(255),
        ] {
            validate_name(ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
    }

    #[test]
    fn names_rejected_with_reason() {
        assert_eq!(reason(""), "empty");
        assert_eq!(reason("."), "is \".\" or \"..\"");
        assert_eq!(reason(".."), "is \".\" or \"..\"");
        assert_eq!(reason("a/b"), "contains '/'");
        assert_eq!(reason("a\0b"), "contains a NUL byte");
        assert_eq!(reason(&"n".repeat(256)), "longer than 255 bytes");
        assert_eq!(reason("x y"), "contains whitespace");
        let e = validate_name("a/b").expect_err("invalid");
        assert_eq!(
            e.to_string(),
            "invalid namespace name \"a/b\": contains '/'"
        );
    }

    #[test]
    fn list_of_missing_dir_is_empty() {
        let names = list_dir(Path::new("/nonexistent/ns-netns")).expect("list");
        assert!(names.is_empty());
    }

    #[test]
    fn delete_and_create_reject_bad_names() {
        assert!(matches!(delete("../etc"), Err(Error::InvalidName { .. })));
        assert!(matches!(create(""), Err(Error::InvalidName { .. })));
    }
}
