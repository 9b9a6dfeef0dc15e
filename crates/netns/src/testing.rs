//! Test helpers (feature `test-util`) that need this crate's namespace syscalls: unique names,
//! a namespace guard, a veth topology. Everything else a test needs (temp dirs, polling,
//! process guards, skips) is in the ns-testkit crate, which re-exports these.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::{Error, Result};
use crate::ns::Netns;

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

/// A namespace created for a test, deleted on Drop (kills nothing: ns-testkit's `ChildGuard` does that).
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
}
