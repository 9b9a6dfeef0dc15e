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

    /// Start the child in a new session (`setsid(2)` between fork and exec), so it has no
    /// controlling terminal and no signal aimed at the parent's session or process group
    /// reaches it: supervised proxies must outlive their supervisor's restart.
    fn new_session(&mut self) -> &mut Self;
}

/// The pre_exec hook body for `new_session`: one async-signal-safe syscall, no allocation.
fn setsid_hook() -> std::io::Result<()> {
    nix::unistd::setsid()
        .map(drop)
        .map_err(|e| std::io::Error::from_raw_os_error(e as i32))
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

    fn new_session(&mut self) -> &mut Self {
        // SAFETY: the hook runs in the forked child before exec and only calls setsid(2),
        // which is async-signal-safe; it allocates nothing and takes no lock.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(self, setsid_hook);
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

    fn new_session(&mut self) -> &mut Self {
        // SAFETY: as for std::process::Command above: only setsid(2), no allocation, no lock.
        unsafe {
            self.pre_exec(setsid_hook);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::CommandExt;

    /// Field 6 of /proc/PID/stat: the session id (after the parenthesised command name).
    fn session_of(stat: &str) -> i32 {
        let after = &stat[stat.rfind(')').expect("comm") + 2..];
        after
            .split_whitespace()
            .nth(3)
            .expect("session field")
            .parse()
            .expect("numeric session")
    }

    #[test]
    fn new_session_makes_the_child_a_session_leader() {
        for tokio_cmd in [false, true] {
            let out = if tokio_cmd {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    let mut c = tokio::process::Command::new("cat");
                    c.arg("/proc/self/stat").new_session();
                    c.output().await.expect("run cat")
                })
            } else {
                std::process::Command::new("cat")
                    .arg("/proc/self/stat")
                    .new_session()
                    .output()
                    .expect("run cat")
            };
            let stat = String::from_utf8_lossy(&out.stdout);
            let pid: i32 = stat
                .split_whitespace()
                .next()
                .expect("pid")
                .parse()
                .expect("numeric pid");
            assert_eq!(session_of(&stat), pid, "tokio={tokio_cmd}: {stat}");
            let own = std::fs::read_to_string("/proc/self/stat").expect("own stat");
            assert_ne!(session_of(&own), pid);
        }
    }
}
