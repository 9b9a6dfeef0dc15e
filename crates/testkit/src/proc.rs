//! Processes a test starts: guards that kill them by pid (never by name) on drop, a look at
//! `/proc`, and the workspace binaries next to the test executable.
use std::path::PathBuf;
use std::process::Child;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A child process killed (SIGKILL, by pid) and reaped on drop.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Whether it is still running (not exited, not reaped).
    pub fn alive(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }

    /// Send it the signal `name` ([`signal`]).
    pub fn signal(&self, name: &str) {
        signal(self.pid(), name);
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Child::kill is a harmless error once reaped; wait reaps it so no zombie is left.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Pids the test obtained from the code under test (processes it started for the test, such
/// as the proxies a supervisor spawned), killed on drop if still alive.
#[derive(Debug, Default)]
pub struct PidGuard(pub Vec<u32>);

impl Drop for PidGuard {
    fn drop(&mut self) {
        for &p in &self.0 {
            if alive(p) {
                kill9(p);
            }
        }
    }
}

/// Whether `pid` is a live process (not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// SIGKILL `pid`. A process already gone is fine; any other failure (EPERM) panics.
pub fn kill9(pid: u32) {
    let raw = i32::try_from(pid).unwrap_or_else(|_| panic!("pid {pid} out of range"));
    match kill(Pid::from_raw(raw), Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => panic!("kill -9 {pid}: {e}"),
    }
}

/// Send `pid` the signal `name` (`"HUP"`, `"TERM"`, `"SIGKILL"`, …); panics if it cannot be
/// delivered (the process is gone or not ours): the test meant to signal a live process.
pub fn signal(pid: u32, name: &str) {
    let full = if name.starts_with("SIG") {
        name.to_owned()
    } else {
        format!("SIG{name}")
    };
    let sig: Signal = full
        .parse()
        .unwrap_or_else(|e| panic!("signal {name}: {e}"));
    let raw = i32::try_from(pid).unwrap_or_else(|_| panic!("pid {pid} out of range"));
    kill(Pid::from_raw(raw), sig).unwrap_or_else(|e| panic!("kill -{name} {pid}: {e}"));
}

/// `/proc/PID/cmdline` with NULs as spaces, if the process exists.
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " "))
}

/// `pid`'s open descriptors by kind, for leak checks: what the `/proc/PID/fd` link names
/// up to `:` or `[` (`socket`, `pipe`, `anon_inode`, `net`), or `file` for a path.
pub fn fds_by_kind(pid: u32) -> std::collections::BTreeMap<String, usize> {
    let mut by = std::collections::BTreeMap::new();
    let entries = std::fs::read_dir(format!("/proc/{pid}/fd"));
    for e in entries.into_iter().flatten().flatten() {
        let Ok(link) = std::fs::read_link(e.path()) else {
            continue; // closed meanwhile
        };
        let link = link.to_string_lossy();
        let kind = if link.starts_with('/') {
            "file"
        } else {
            link.split([':', '[']).next().unwrap_or("?")
        };
        *by.entry(kind.to_string()).or_insert(0) += 1;
    }
    by
}

/// A number field of `/proc/PID/status` (`Threads:`, `VmRSS:` in kB); 0 if unreadable.
pub fn status_field(pid: u32, field: &str) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Live processes (other than this one) whose command line contains `needle`.
pub fn pids_mentioning(needle: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && alive(pid))
        .filter(|&pid| cmdline(pid).is_some_and(|c| c.contains(needle)))
        .collect()
}

/// SIGKILL every process whose command line contains `needle`, which must be unique to the
/// test (a path under its [`crate::TempDir`], a run-unique id): only what it started matches.
pub fn kill_mentioning(needle: &str) {
    for pid in pids_mentioning(needle) {
        kill9(pid);
    }
}

/// Path of a workspace binary next to the test executable (`target/<profile>/NAME`).
/// Panics with "run cargo build --workspace --bins" when it is not built.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable path");
    let mut dir = exe
        .parent()
        .expect("test executable has a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found: run cargo build --workspace --bins",
        path.display()
    );
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_guard_kills_and_reaps() {
        let child = std::process::Command::new("sleep")
            .arg("1000")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        drop(ChildGuard(child));
        assert!(!alive(pid));
    }

    #[test]
    fn pid_guard_and_mentioning() {
        let tag = format!("kit-proc-{}", std::process::id());
        // A shell blocked in its `read` builtin keeps the tag (its $0) in its own argv; an
        // `exec` would replace that argv and race the lookup.
        let mut child = ChildGuard(
            std::process::Command::new("sh")
                .args(["-c", "read x", &tag])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("spawn sh"),
        );
        let pid = child.pid();
        // Until the child has exec'd, its cmdline is still ours (without the tag).
        crate::eventually::eventually(
            "the shell's argv to carry the tag",
            std::time::Duration::from_secs(5),
            || (pids_mentioning(&tag) == vec![pid]).then_some(()),
        );
        drop(PidGuard(vec![pid]));
        let _ = child.0.wait();
        assert!(!alive(pid));
    }
}
