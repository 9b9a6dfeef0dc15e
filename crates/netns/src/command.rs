//! `CommandExt`: make a child process enter a namespace between fork and exec.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use nix::sched::{setns, CloneFlags};

use crate::ns::Netns;

/// Enter a network namespace in the child between fork and exec.
///
/// The namespace fd is dup'ed now (before the fork, CLOEXEC so the program never inherits it)
/// and kept alive by the command; the child only calls `setns(2)` on it: one syscall, nothing
/// allocated, async-signal-safe. Errors reach the parent as the spawn error.
pub trait CommandExt {
    /// Run the child in `ns`. If the dup fails the spawn fails with that error.
    fn netns(&mut self, ns: &Netns) -> &mut Self;
}

/// The fd to enter, or the error to report from the child (dup failed in the parent).
fn prepare(ns: &Netns) -> Result<Arc<OwnedFd>, i32> {
    ns.as_fd()
        .try_clone_to_owned()
        .map(Arc::new)
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EBADF))
}

/// The pre_exec hook body: called in the forked child, must not allocate.
fn enter(fd: &Result<Arc<OwnedFd>, i32>) -> std::io::Result<()> {
    match fd {
        Ok(fd) => setns(fd.as_fd(), CloneFlags::CLONE_NEWNET)
            // from_raw_os_error does not allocate.
            .map_err(|e| std::io::Error::from_raw_os_error(e as i32)),
        Err(code) => Err(std::io::Error::from_raw_os_error(*code)),
    }
}

impl CommandExt for std::process::Command {
    fn netns(&mut self, ns: &Netns) -> &mut Self {
        let fd = prepare(ns);
        // SAFETY: the hook runs in the forked child before exec; it only reads the fd captured
        // here (opened before the fork, kept alive by the Arc in the closure) and calls
        // setns(2), which is async-signal-safe; it allocates nothing and takes no lock.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(self, move || enter(&fd));
        }
        self
    }
}

impl CommandExt for tokio::process::Command {
    fn netns(&mut self, ns: &Netns) -> &mut Self {
        let fd = prepare(ns);
        // SAFETY: as for std::process::Command above: only setns(2) on an fd opened before
        // the fork, no allocation, no lock.
        unsafe {
            self.pre_exec(move || enter(&fd));
        }
        self
    }
}
