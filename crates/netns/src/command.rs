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

    /// Mark every descriptor from `first` up close-on-exec in the child, so descriptors the
    /// parent inherited without `O_CLOEXEC` (from its own parent, a library, a test harness)
    /// never reach the program. Descriptors mapped onto `first..` by a later hook (such as a
    /// readiness pipe dup2'ed to fd 3) stay open: call this before adding them. They are marked,
    /// not closed, so the runtime's own exec-error pipe keeps working.
    fn close_inherited_fds(&mut self, first: u32) -> &mut Self;
}

/// The pre_exec hook body for `close_inherited_fds`: `close_range(2)` with
/// `CLOSE_RANGE_CLOEXEC` (Linux 5.11); on an older kernel, `fcntl(F_SETFD)` on each
/// descriptor up to the soft `RLIMIT_NOFILE`, read before the fork. No allocation.
fn cloexec_from(first: u32, limit: u32) -> std::io::Result<()> {
    // SAFETY: close_range(2) takes three integers and touches only this process's fd table;
    // it is async-signal-safe and allocates nothing.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return Ok(());
    }
    for fd in first..limit {
        // SAFETY: fcntl(F_GETFD/F_SETFD) on an integer descriptor; a closed one fails with
        // EBADF, which is ignored. Async-signal-safe, no allocation.
        unsafe {
            let flags = libc::fcntl(fd as i32, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd as i32, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
    Ok(())
}

/// The highest descriptor number to visit without `close_range(2)`: the soft limit.
fn fd_limit() -> u32 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft.min(1 << 20) as u32)
        .unwrap_or(1024)
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
    fn close_inherited_fds(&mut self, first: u32) -> &mut Self {
        let limit = fd_limit();
        // SAFETY: the hook runs in the forked child before exec and only calls close_range(2)
        // or fcntl(2) on integers captured here; no allocation, no lock.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(self, move || cloexec_from(first, limit));
        }
        self
    }

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
    fn close_inherited_fds(&mut self, first: u32) -> &mut Self {
        let limit = fd_limit();
        // SAFETY: as for std::process::Command above: close_range(2) or fcntl(2) only.
        unsafe {
            self.pre_exec(move || cloexec_from(first, limit));
        }
        self
    }

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

    /// A descriptor the parent holds without CLOEXEC does not reach the child; fd 0-2 do.
    #[test]
    fn close_inherited_fds_keeps_stdio_and_drops_the_rest() {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open("/proc/self/stat").expect("open");
        // F_DUPFD: a copy at 100 or above (clear of the child's own low fds), no CLOEXEC.
        let fd = nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_DUPFD(100)).expect("dup");
        let _copy = {
            use std::os::fd::FromRawFd;
            // SAFETY: `fd` was just returned by F_DUPFD and is owned by nothing else.
            unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
        };
        assert!(fd >= 100 && f.as_raw_fd() != fd);
        let probe = |close: bool| {
            let mut c = std::process::Command::new("ls");
            c.arg("/proc/self/fd");
            if close {
                c.close_inherited_fds(3);
            }
            let out = c.output().expect("run ls");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert!(
            probe(false).contains(&fd.to_string()),
            "inherited without the hook"
        );
        let with = probe(true);
        assert!(!with.contains(&fd.to_string()), "{with:?}");
        assert!(
            ["0", "1", "2"]
                .iter()
                .all(|s| with.contains(&s.to_string())),
            "{with:?}"
        );
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
