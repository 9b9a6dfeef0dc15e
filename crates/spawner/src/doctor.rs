//! `probe ID [PATH]` and `check`: what an operator runs on a node to see that metadata works,
//! from the namespaces themselves (the CLI runs as root, like the daemon).
//!
//! `probe` sends one request to 169.254.169.254:80 from inside the proxy's namespace and prints
//! the answer's status line, headers and timings. From the namespace itself the client address
//! is the metadata address, which is no VM: the agent's 404 is the expected answer and proves
//! the whole path (proxy, agent socket, agent); a 502/503/504 names the broken hop.
//!
//! `check` is the doctor: the agent socket answers, `records.json` is saved, `/run/netns` is a
//! shared mount, and for every proxy: it runs, its pid is the process in its namespace, its
//! namespace carries the metadata address, nothing else listens on port 80 there, and a probe
//! through it gets an HTTP answer other than 502/503/504. One line per problem; exit 1 if any.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use ns_netns::Netns;

use crate::{Error, Result};

/// Where VMs ask.
const METADATA: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(169, 254, 169, 254), 80));
/// How long a probe may take (connect, then the whole answer).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer a probe reads.
const PROBE_MAX: u64 = 1 << 20;

/// What one probe saw.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The status line, headers and body as received.
    pub head: String,
    pub body: String,
    /// The status code, when the answer parsed.
    pub status: Option<u16>,
    pub connect: Duration,
    pub total: Duration,
}

/// GET `path` at 169.254.169.254:80 from inside `netns`.
pub fn probe(netns: &str, path: &str) -> Result<Probe> {
    if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(Error::Invalid(format!(
            "{path:?}: a probe path starts with / and has no spaces or control characters"
        )));
    }
    let ns = Netns::open(netns).map_err(|e| Error::Netns(format!("{netns}: {e}")))?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\nUser-Agent: ns-metadata-spawner-probe\r\nConnection: close\r\n\r\n"
    );
    let ns_name = netns.to_owned();
    ns.run(move || -> Result<Probe> {
        let started = Instant::now();
        let fail = |what: &str, e: std::io::Error| {
            Error::Invalid(format!("{METADATA} in {ns_name}: {what}: {e}"))
        };
        let mut c = std::net::TcpStream::connect_timeout(&METADATA, PROBE_TIMEOUT)
            .map_err(|e| fail("connect", e))?;
        let connect = started.elapsed();
        c.set_read_timeout(Some(PROBE_TIMEOUT))
            .and_then(|()| c.set_write_timeout(Some(PROBE_TIMEOUT)))
            .map_err(|e| fail("socket", e))?;
        c.write_all(req.as_bytes()).map_err(|e| fail("send", e))?;
        let mut raw = Vec::new();
        c.take(PROBE_MAX)
            .read_to_end(&mut raw)
            .map_err(|e| fail("read", e))?;
        let total = started.elapsed();
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = match text.split_once("\r\n\r\n") {
            Some((h, b)) => (h.to_owned(), b.to_owned()),
            None => (text, String::new()),
        };
        let status = head
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok());
        Ok(Probe {
            head,
            body,
            status,
            connect,
            total,
        })
    })
    .map_err(|e| Error::Netns(format!("{netns}: {e}")))?
}

/// Whether `/run/netns` is a shared mount (as `ip netns` makes it), so namespaces mounted
/// there by one mount namespace are seen by the others; `None` when it is no mount point.
pub fn run_netns_shared() -> Option<bool> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // Fields: id parent major:minor root mount-point options [optional fields...] - ...
    let line = info
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some(ns_netns::NETNS_RUN_DIR))?;
    let optional = line.split(" - ").next()?.split(' ').skip(6);
    Some(optional.clone().any(|f| f.starts_with("shared:")))
}

/// The socket inodes `pid` holds open (`socket:[INODE]` links under /proc/PID/fd).
fn socket_inodes(pid: u32) -> Vec<u64> {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// Inodes of the TCP sockets listening on port 80 in `pid`'s network namespace
/// (/proc/PID/net/tcp and tcp6: state 0A, local port 0050).
fn port80_listeners(pid: u32) -> Vec<u64> {
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|t| std::fs::read_to_string(format!("/proc/{pid}/net/{t}")).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    let port = f.get(1)?.rsplit(':').next()?;
                    (port == "0050" && f.get(3) == Some(&"0A"))
                        .then(|| f.get(9)?.parse().ok())
                        .flatten()
                })
                .collect::<Vec<u64>>()
        })
        .collect()
}

/// The problems of one running proxy: process, address, port 80, probe.
pub async fn check_proxy(netns: &str, interface: &str, pid: u32) -> Vec<String> {
    let mut problems = Vec::new();
    let same_ns = std::fs::metadata(format!("/proc/{pid}/ns/net")).and_then(|p| {
        std::fs::metadata(format!("{}/{netns}", ns_netns::NETNS_RUN_DIR)).map(|n| (p, n))
    });
    match same_ns {
        Ok((p, n)) => {
            use std::os::unix::fs::MetadataExt;
            if p.ino() != n.ino() {
                problems.push(format!(
                    "{netns}: proxy pid {pid} runs in another network namespace"
                ));
            }
        }
        Err(e) => problems.push(format!("{netns}: proxy pid {pid}: {e}")),
    }
    match Netns::open(netns) {
        Ok(ns) => match ns_netns::Netlink::open(&ns).await {
            Ok(nl) => match nl.addresses(interface).await {
                Ok(addrs) if addrs.iter().any(|(a, p)| *a == METADATA.ip() && *p == 32) => {}
                Ok(_) => problems.push(format!(
                    "{netns}: 169.254.169.254/32 is missing on {interface} (fix: ip netns exec {netns} ip addr add 169.254.169.254/32 dev {interface})"
                )),
                Err(e) => problems.push(format!("{netns}: addresses of {interface}: {e}")),
            },
            Err(e) => problems.push(format!("{netns}: netlink: {e}")),
        },
        Err(e) => problems.push(format!("{netns}: {e}")),
    }
    let ours = socket_inodes(pid);
    let strangers: Vec<u64> = port80_listeners(pid)
        .into_iter()
        .filter(|i| !ours.contains(i))
        .collect();
    if !strangers.is_empty() {
        problems.push(format!(
            "{netns}: something besides proxy pid {pid} listens on port 80 ({} socket(s))",
            strangers.len()
        ));
    }
    let name = netns.to_owned();
    match tokio::task::spawn_blocking(move || probe(&name, "/")).await {
        Ok(Ok(p)) => match p.status {
            Some(code @ (502..=504)) => problems.push(format!(
                "{netns}: a probe through the proxy got {code}: {}",
                p.body.trim().lines().next().unwrap_or_default()
            )),
            Some(_) => {}
            None => problems.push(format!("{netns}: a probe got no HTTP answer")),
        },
        Ok(Err(e)) => problems.push(format!("{netns}: probe: {e}")),
        Err(e) => problems.push(format!("{netns}: probe task: {e}")),
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_paths_are_checked_before_anything_is_sent() {
        for bad in ["latest", "/a b", "/a\r\nX: y"] {
            let e = probe("no-such-netns", bad)
                .expect_err("refused")
                .to_string();
            assert!(e.contains("probe path"), "{bad:?}: {e}");
        }
    }
}
