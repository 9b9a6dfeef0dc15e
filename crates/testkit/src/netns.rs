//! Namespace and veth fixtures (root). The primitives that need namespace syscalls —
//! [`TestNs`] (created on `new`, deleted on drop), [`link`] (a veth pair addressed in
//! 10.250.N.0/24) and [`unique_prefix`] (per-run names) — stay in `ns_netns::testing`,
//! because unsafe code and rtnetlink live only in crates/netns, and are re-exported here.
//! What an operator would type with iproute2 (veths created directly in their namespaces,
//! routes, forwarding, `/etc/netns/<ns>/resolv.conf`) lives here.
use std::path::PathBuf;
use std::process::Command;

pub use ns_netns::testing::{link, unique_prefix, TestNs};

/// Run `ip ARGS`, panicking with its stderr on failure (a broken topology fails the test).
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A namespace for the test (deleted on drop) with loopback up.
pub fn netns(name: &str) -> TestNs {
    let ns = TestNs::new(name).unwrap_or_else(|e| panic!("create netns {name}: {e}"));
    ip(&["-n", name, "link", "set", "lo", "up"]);
    ns
}

/// A namespace named `<per-run prefix><tag>` (deleted on drop) with loopback up and the
/// metadata address 169.254.169.254/32 on it, as a proxy's namespace has it: for tests that
/// bind or answer on port 80 there themselves.
pub fn metadata_netns(tag: &str) -> TestNs {
    let name = format!("{}{tag}", unique_prefix());
    let ns = netns(&name);
    ip(&[
        "-n",
        &name,
        "addr",
        "add",
        "169.254.169.254/32",
        "dev",
        "lo",
    ]);
    ns
}

/// One end of a veth: namespace, interface name, optional address in CIDR form.
pub struct End<'a> {
    pub ns: &'a str,
    pub ifname: &'a str,
    pub cidr: Option<&'a str>,
    /// MAC to set before the link goes up (the IPv6 link-local address derives from it).
    pub mac: Option<&'a str>,
}

/// A veth pair between two namespaces, both ends up with their addresses. The pair is
/// created inside the namespaces (no name is ever taken in the host's) and vanishes with
/// either namespace.
pub fn veth(a: End<'_>, b: End<'_>) {
    ip(&[
        "link", "add", "name", a.ifname, "netns", a.ns, "type", "veth", "peer", "name", b.ifname,
        "netns", b.ns,
    ]);
    for end in [&a, &b] {
        if let Some(mac) = end.mac {
            ip(&["-n", end.ns, "link", "set", end.ifname, "address", mac]);
        }
        if let Some(cidr) = end.cidr {
            ip(&["-n", end.ns, "addr", "add", cidr, "dev", end.ifname]);
        }
        ip(&["-n", end.ns, "link", "set", end.ifname, "up"]);
    }
}

/// `ip -n NS route replace DEST via VIA`.
pub fn route(ns: &str, dest: &str, via: &str) {
    ip(&["-n", ns, "route", "replace", dest, "via", via]);
}

/// Let a router namespace forward IPv4 (the sysctl is per namespace).
pub fn forward(ns: &str) {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])
        .output()
        .expect("run sysctl");
    assert!(
        out.status.success(),
        "ip_forward in {ns}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// `/etc/netns/<ns>/resolv.conf` pointing at a resolver that refuses at once, so programs run
/// with `ip netns exec` (cloud-init looks names up) fail lookups fast instead of hanging on
/// the host's resolvers, which are unreachable from the namespace. Removed on drop.
pub struct EtcNetnsResolv {
    dir: PathBuf,
    /// Whether /etc/netns itself was created here (then it is removed too, when empty).
    created_parent: bool,
}

impl EtcNetnsResolv {
    /// Write the file for namespace `ns` (whose name is unique to this run).
    pub fn new(ns: &str) -> EtcNetnsResolv {
        let created_parent = !std::path::Path::new("/etc/netns").exists();
        let dir = PathBuf::from("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).expect("create /etc/netns/<ns>");
        std::fs::write(
            dir.join("resolv.conf"),
            "# written by an ns-metadata test; removed when it ends\n\
             nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        )
        .expect("write /etc/netns/<ns>/resolv.conf");
        EtcNetnsResolv {
            dir,
            created_parent,
        }
    }
}

impl Drop for EtcNetnsResolv {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.dir.join("resolv.conf"));
        let _ = std::fs::remove_dir(&self.dir);
        if self.created_parent {
            let _ = std::fs::remove_dir("/etc/netns");
        }
    }
}
