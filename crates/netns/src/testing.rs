//! Test helpers (feature `test-util`): root checks, unique names, namespace and child guards,
//! veth topologies, locating workspace binaries, polling with a timeout.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::ns::Netns;

/// True when running as root (effective uid 0).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// True if root; else prints `SKIP <test>: needs root` and returns false. Panics instead of
/// skipping when the environment has `CI=true` (a skip in CI is a failure).
///
/// The line goes straight to the process's stderr (not through `eprintln!`), so libtest's
/// output capture does not hide it.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: needs root, and CI=true forbids skipping");
    }
    let _ = writeln!(std::io::stderr(), "SKIP {test}: needs root");
    false
}

/// A short prefix unique to this process and call, e.g. "t4821a": "t", the pid in base 36,
/// a per-call counter in base 36. At most 9 chars (usually 5-6), so `prefix + "-xyz"` still
/// fits the 15-char interface name limit.
pub fn unique_prefix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("t{}{}", base36(std::process::id()), base36(n))
}

fn base36(mut n: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// A namespace created for a test, deleted on Drop (kills nothing: [`ChildGuard`] does that).
/// Dropping closes the held fd first, so once nothing else uses the namespace the kernel
/// destroys it together with its veths.
#[derive(Debug)]
pub struct TestNs {
    name: String,
    ns: Option<Netns>,
}

impl TestNs {
    /// Create `/run/netns/NAME`. A leftover of the same name (a crashed earlier run) is
    /// deleted and recreated.
    pub fn new(name: &str) -> Result<TestNs> {
        let ns = match crate::create(name) {
            Err(Error::AlreadyExists { .. }) => {
                crate::delete(name)?;
                crate::create(name)?
            }
            other => other?,
        };
        Ok(TestNs {
            name: name.to_owned(),
            ns: Some(ns),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn netns(&self) -> &Netns {
        // Only None during drop.
        self.ns.as_ref().expect("TestNs used during drop")
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        drop(self.ns.take());
        if let Err(e) = crate::delete(&self.name) {
            if !e.is_not_found() {
                tracing::warn!(netns = %self.name, err = %e, "could not delete test namespace");
            }
        }
    }
}

/// Join two namespaces with a veth: 10.250.`subnet`.1/24 on `a`'s end, .2/24 on `b`'s end,
/// links and lo up in both, default route in `b` via .1. The veth ends are named
/// `va<subnet>` (in `a`) and `vb<subnet>` (in `b`); they vanish with the namespaces.
/// Returns (address in `a`, address in `b`).
pub async fn link(a: &TestNs, b: &TestNs, subnet: u8) -> Result<(IpAddr, IpAddr)> {
    use crate::netlink::Netlink;
    let (ea, eb) = (format!("va{subnet}"), format!("vb{subnet}"));
    let ip_a = IpAddr::V4(Ipv4Addr::new(10, 250, subnet, 1));
    let ip_b = IpAddr::V4(Ipv4Addr::new(10, 250, subnet, 2));
    let na = Netlink::open(a.netns()).await?;
    let nb = Netlink::open(b.netns()).await?;
    na.create_veth(&ea, &eb).await?;
    na.move_link(&eb, b.netns()).await?;
    na.ensure_address(&ea, ip_a, 24).await?;
    nb.ensure_address(&eb, ip_b, 24).await?;
    for (nl, ifname) in [
        (&na, "lo"),
        (&na, ea.as_str()),
        (&nb, "lo"),
        (&nb, eb.as_str()),
    ] {
        nl.set_link_up(ifname).await?;
    }
    nb.ensure_route(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0, Some(ip_a), Some(&eb))
        .await?;
    Ok((ip_a, ip_b))
}

/// A child process killed (SIGKILL, by pid) and reaped on Drop.
#[derive(Debug)]
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Child::kill is a no-op error once reaped; wait reaps it so no zombie is left.
        let _ = self.0.kill();
        let _ = self.0.wait();
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
    if !path.is_file() {
        panic!(
            "{} not found: run cargo build --workspace --bins",
            path.display()
        );
    }
    path
}

/// Poll `f` every 10 ms until it returns true or `timeout` passes; returns whether it did.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_prefix_is_short_and_unique() {
        let a = unique_prefix();
        let b = unique_prefix();
        assert_ne!(a, b);
        assert!(a.starts_with('t') && a.len() <= 9, "{a}");
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()), "{a}");
    }

    #[test]
    fn base36_digits() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
        assert_eq!(base36(u32::MAX).len(), 7);
    }

    #[test]
    fn wait_until_reports_success_and_timeout() {
        let mut n = 0;
        assert!(wait_until(Duration::from_secs(5), || {
            n += 1;
            n >= 3
        }));
        assert!(!wait_until(Duration::from_millis(30), || false));
    }

    #[test]
    fn child_guard_kills_and_reaps() {
        let child = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        drop(ChildGuard(child));
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
}
