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
//! namespace carries the metadata address, nothing else listens on port 80 there, it is not
//! stopped (SIGSTOP: named at once, not probed, as a probe would wait out its timeout in every
//! namespace), and a probe through it gets an HTTP answer other than 502/503/504. One line per
//! problem; exit 1 if any.
//!
//! In the shared model (issue #20) a namespace's pid is the shared server's, which runs in no
//! namespace of its own: instead of "the pid is the process in the namespace", the server must
//! be the one its pid file (`STATE_DIR/shared-server.pid`: pid and start time) names, and the
//! port-80 sockets in the namespace must be ones it holds. The probe through each namespace
//! proves the server serves it.

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
    /// The status line, headers (lines ending in `\n`) and body as received, with no
    /// control character but line ends (and tabs in the body).
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
        let fail = |what: &str, e: std::io::Error| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Error::Invalid(
                format!("{METADATA} in {ns_name}: {what}: no answer within {PROBE_TIMEOUT:?}"),
            ),
            _ => Error::Invalid(format!("{METADATA} in {ns_name}: {what}: {e}")),
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
        // Printed on an operator's terminal: what answers here (a tenant's user data, a
        // proxy that may be compromised) must not drive it with escape sequences.
        let head = crate::printable(&head.replace("\r\n", "\n"), &['\n']);
        let body = crate::printable(&body, &['\n', '\t']);
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

/// The socket inodes of each process `check` looked at, each process's descriptor table
/// read once: in the shared model every namespace's check asks about the same server, which
/// holds a listener per namespace, so reading its table per namespace made `check` read
/// N descriptor links N times (4 million `readlink`s at 2,000 namespaces).
#[derive(Debug, Default)]
pub struct HeldSockets {
    by_pid: std::collections::HashMap<u32, std::collections::HashSet<u64>>,
    reads: usize,
    /// Processes already said to be stopped: a stopped shared server is one problem, not
    /// one per namespace it serves.
    stopped_said: std::collections::HashSet<u32>,
}

impl HeldSockets {
    /// The socket inodes `pid` holds open (`socket:[INODE]` links under /proc/PID/fd), read
    /// on the first question about `pid`.
    pub fn of(&mut self, pid: u32) -> &std::collections::HashSet<u64> {
        let reads = &mut self.reads;
        self.by_pid.entry(pid).or_insert_with(|| {
            *reads += 1;
            socket_inodes(pid)
        })
    }

    /// How many descriptor tables were read so far.
    pub fn reads(&self) -> usize {
        self.reads
    }
}

/// The socket inodes `pid` holds open (`socket:[INODE]` links under /proc/PID/fd).
fn socket_inodes(pid: u32) -> std::collections::HashSet<u64> {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Default::default();
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

/// Inodes of the TCP sockets listening on port 80 in the network namespace `proc` sees
/// (`/proc/PID` or `/proc/thread-self`; its net/tcp and tcp6: state 0A, local port 0050).
fn port80_listeners(proc: &str) -> Vec<u64> {
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|t| std::fs::read_to_string(format!("{proc}/net/{t}")).ok())
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

/// The state dir and shard of the shared server `pid` is (`--shared-server DIR` and
/// `--shard N`, none for the first, in its argv), if it is one.
fn shared_server_dir(pid: u32) -> Option<(std::path::PathBuf, usize)> {
    let argv = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let words: Vec<&[u8]> = argv.split(|&b| b == 0).collect();
    let dir = words
        .windows(2)
        .find(|w| w[0] == b"--shared-server")
        .map(|w| std::path::PathBuf::from(String::from_utf8_lossy(w[1]).into_owned()))?;
    let shard = match words.windows(2).find(|w| w[0] == b"--shard") {
        None => 0,
        Some(w) => std::str::from_utf8(w[1]).ok()?.parse().ok()?,
    };
    Some((dir, shard))
}

/// Whether `pid` is the shared server its state dir's pid file (of its shard) names (same
/// pid, same start time): the reason when not.
fn is_recorded_server(
    pid: u32,
    (dir, shard): &(std::path::PathBuf, usize),
) -> std::result::Result<(), String> {
    let file = dir.join(crate::shared_model::ShardFiles::of(*shard).pid);
    let text = match crate::statedir::read_nofollow(&file, 64) {
        Ok(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
        Ok(None) => return Err(format!("{} is missing", file.display())),
        Err(e) => return Err(e.to_string()),
    };
    let mut f = text.split_ascii_whitespace();
    let recorded = (f.next(), f.next());
    let now = crate::pidfile::start_time(pid).map(|s| s.to_string());
    match recorded {
        (Some(p), Some(start)) if p == pid.to_string() && Some(start) == now.as_deref() => Ok(()),
        (Some(p), Some(_)) if p == pid.to_string() => Err(format!(
            "pid {pid} started after {} was written (a recycled pid)",
            file.display()
        )),
        _ => Err(format!("{} names another process", file.display())),
    }
}

/// The port-80 listeners inside `netns`, read from a thread that entered it.
async fn port80_listeners_in(netns: &str) -> std::result::Result<Vec<u64>, String> {
    let name = netns.to_owned();
    tokio::task::spawn_blocking(move || {
        let ns = Netns::open(&name).map_err(|e| e.to_string())?;
        ns.run(|| port80_listeners("/proc/thread-self"))
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Whether `pid` is stopped (state `T` or `t` in `/proc/PID/stat`).
fn stopped(pid: u32) -> bool {
    matches!(crate::pidfile::state(pid), Some('T' | 't'))
}

/// The problems of one running proxy (or, in the shared model, of the shared server for
/// this namespace) that need no request: process, address, port 80, stopped; and whether it
/// can be probed ([`probe_problems`]: not when stopped, where a probe would only wait out
/// its timeout). `held` carries the descriptor tables already read, and the processes
/// already said to be stopped, from one call to the next.
pub async fn check_proxy(
    netns: &str,
    interface: &str,
    pid: u32,
    held: &mut HeldSockets,
) -> (Vec<String>, bool) {
    let mut problems = Vec::new();
    let shared = shared_server_dir(pid);
    if let Some(dir) = &shared {
        if let Err(why) = is_recorded_server(pid, dir) {
            problems.push(format!("{netns}: shared server pid {pid}: {why}"));
        }
    }
    let same_ns = std::fs::metadata(format!("/proc/{pid}/ns/net")).and_then(|p| {
        std::fs::metadata(format!("{}/{netns}", ns_netns::NETNS_RUN_DIR)).map(|n| (p, n))
    });
    match same_ns {
        // The shared server runs in none of the namespaces it serves.
        _ if shared.is_some() => {}
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
    let listeners = match shared {
        Some(_) => port80_listeners_in(netns).await.unwrap_or_else(|e| {
            problems.push(format!("{netns}: port 80 listeners: {e}"));
            Vec::new()
        }),
        None => port80_listeners(&format!("/proc/{pid}")),
    };
    let ours = held.of(pid);
    let strangers = listeners.iter().filter(|i| !ours.contains(i)).count();
    if strangers > 0 {
        let who = if shared.is_some() {
            "shared server"
        } else {
            "proxy"
        };
        problems.push(format!(
            "{netns}: something besides {who} pid {pid} listens on port 80 ({strangers} socket(s))"
        ));
    }
    if stopped(pid) {
        // A probe would wait out its timeout (per namespace: hours for a shared server's
        // thousands); the kernel queues the connections, nothing answers them.
        let who = if shared.is_some() {
            "shared server"
        } else {
            "proxy"
        };
        if !held.stopped_said.insert(pid) {
            return (problems, false);
        }
        problems.push(format!(
            "{netns}: {who} pid {pid} is stopped (SIGSTOP or a debugger): VMs' connections wait unanswered until it continues (kill -CONT {pid})"
        ));
        return (problems, false);
    }
    (problems, true)
}

/// Probes `check` runs at once: each may wait [`PROBE_TIMEOUT`] for a slow agent or Nova, and
/// one after another that was 5 s per namespace (hours at 2,000).
pub const PROBE_PARALLEL: usize = 32;

/// One probe through the proxy of `netns`: what is wrong with its answer (a 502/503/504 names
/// the broken hop), if anything.
pub async fn probe_problems(netns: &str) -> Vec<String> {
    let mut problems = Vec::new();
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

/// Whether the agent answers a request on its socket within [`PROBE_TIMEOUT`]: a hung agent
/// (or one stuck on Nova with its workers all busy) still accepts connections, so the
/// spawner's reachability check says all is well while every VM waits. One request without
/// identity headers (any answer, an error too, is an answer).
pub async fn agent_answers(socket: &std::path::Path) -> std::result::Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut c = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        c.write_all(
            b"GET / HTTP/1.1\r\nHost: 169.254.169.254\r\nUser-Agent: ns-metadata-spawner-check\r\nConnection: close\r\n\r\n",
        )
        .await
        .map_err(|e| format!("send: {e}"))?;
        let mut first = [0u8; 1];
        match c.read(&mut first).await {
            Ok(1..) => Ok(()),
            Ok(0) => Err("closed the connection without an answer".to_owned()),
            Err(e) => Err(format!("read: {e}")),
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "accepts connections but sent nothing within {PROBE_TIMEOUT:?}"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hung agent (accepts, never answers) is told apart from one that answers, within the
    /// probe timeout, not per namespace.
    #[tokio::test]
    async fn a_hung_agent_is_told_from_one_that_answers() {
        let dir = std::env::temp_dir().join(format!("ns-doctor-agent-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let (hung, ok) = (dir.join("hung.sock"), dir.join("ok.sock"));
        let _ = std::fs::remove_file(&hung);
        let _ = std::fs::remove_file(&ok);
        let h = tokio::net::UnixListener::bind(&hung).expect("bind");
        let o = tokio::net::UnixListener::bind(&ok).expect("bind");
        let held = tokio::spawn(async move {
            let (c, _) = h.accept().await.expect("accept");
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(c);
        });
        let answering = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let (mut c, _) = o.accept().await.expect("accept");
            let _ = c.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        });
        assert_eq!(agent_answers(&ok).await, Ok(()));
        let t = Instant::now();
        let e = agent_answers(&hung).await.expect_err("hung");
        assert!(e.contains("sent nothing within"), "{e}");
        assert!(t.elapsed() < PROBE_TIMEOUT + Duration::from_secs(2));
        held.abort();
        answering.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An answer carrying terminal escape sequences (a tenant's user data, a compromised
    /// proxy) reaches the operator's terminal without them.
    #[test]
    fn a_probe_answer_carries_no_control_characters() {
        if !ns_testkit::skip::require_root("a_probe_answer_carries_no_control_characters") {
            return;
        }
        let ns = ns_testkit::netns::metadata_netns("qrouter-probe");
        let name = ns.name().to_owned();
        let l = ns
            .netns()
            .run(|| std::net::TcpListener::bind(METADATA).expect("bind"))
            .expect("in the namespace");
        let answering = std::thread::spawn(move || {
            let (mut c, _) = l.accept().expect("accept");
            let mut req = [0u8; 512];
            let _ = c.read(&mut req);
            let _ = c.write_all(
                b"HTTP/1.1 200 OK\r\nX-T: \x1b]0;owned\x07\r\n\r\nline\tone\n\x1b[2J\x1b[8mhidden\r",
            );
        });
        let p = probe(&name, "/openstack/latest/user_data").expect("probe");
        answering.join().expect("answered");
        assert_eq!(p.status, Some(200));
        for text in [&p.head, &p.body] {
            assert!(
                !text
                    .chars()
                    .any(|c| c.is_control() && c != '\n' && c != '\t'),
                "{text:?}"
            );
        }
        assert!(p.head.contains("X-T: \u{fffd}]0;owned"), "{:?}", p.head);
        assert!(
            p.body.starts_with("line\tone\n") && p.body.contains("hidden"),
            "{:?}",
            p.body
        );
    }

    /// `check` of N namespaces served by one process reads its descriptor table once, not N
    /// times (each read costs a `readlink` per descriptor, N of them for a shared server).
    #[test]
    fn a_process_descriptor_table_is_read_once_per_check() {
        let sockets: Vec<std::net::UdpSocket> = (0..200)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("socket"))
            .collect();
        let inodes: Vec<u64> = sockets
            .iter()
            .map(|s| {
                use std::os::fd::AsRawFd;
                let link = std::fs::read_link(format!("/proc/self/fd/{}", s.as_raw_fd()))
                    .expect("fd link");
                let text = link.to_string_lossy().into_owned();
                text.trim_start_matches("socket:[")
                    .trim_end_matches(']')
                    .parse()
                    .expect("socket inode")
            })
            .collect();
        let me = std::process::id();
        let mut held = HeldSockets::default();
        for ino in &inodes {
            assert!(held.of(me).contains(ino), "socket {ino} is ours");
        }
        assert_eq!(held.reads(), 1, "one read for {} lookups", inodes.len());
        assert!(
            held.of(u32::MAX).is_empty(),
            "no such process: nothing held"
        );
        assert_eq!(held.reads(), 2);
    }

    /// `check`'s loop over N namespaces of one process (the shared server) reads that
    /// process's descriptor table once: here 50 namespaces that do not exist (each check
    /// then reports them, without root), all "served" by this process.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checking_many_namespaces_of_one_process_reads_its_table_once() {
        let me = std::process::id();
        let mut held = HeldSockets::default();
        for i in 0..50 {
            let netns = format!("ns-metadata-no-such-netns-{me}-{i}");
            let (problems, _) = check_proxy(&netns, "lo", me, &mut held).await;
            assert!(
                problems
                    .iter()
                    .any(|p| p.starts_with(&format!("{netns}: "))),
                "{problems:?}"
            );
        }
        assert_eq!(held.reads(), 1);
    }

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
