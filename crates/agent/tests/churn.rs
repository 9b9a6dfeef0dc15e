//! Request churn against the `ns-metadata-agent` binary, as a node's proxies give it for
//! months: many one-request connections, keep-alive connections that the client closes
//! mid-request (a head cut short, a request sent and the answer never read), and Nova
//! failing under it (closing at once: 502 or 503, silent past `nova_metadata_timeout`: 504, then
//! back). After a warm-up round the agent's descriptors (by kind) come back to the same
//! counts after every round (its pooled connections to Nova bounded apart), and its threads
//! stay within a small slack. Unprivileged: the
//! agent on a Unix socket in a temp dir, Nova behind a relay on loopback.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use ns_testkit::nova::Nova;
use ns_testkit::proc::{fds_by_kind, status_field};
use ns_testkit::{wait_until, ChildGuard, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_ns-metadata-agent");
const SECRET: &str = "churn-secret";
const ROUNDS: usize = 4;
const SHORT: usize = 150;
const KEEPALIVE: usize = 20;
const T: Duration = Duration::from_secs(10);
/// The runtime's blocking pool keeps idle threads for 10 s: not a leak.
const THREAD_SLACK: usize = 8;

/// What Nova's relay does with the next connection.
const FORWARD: u8 = 0;
const CLOSE: u8 = 1;
const SILENT: u8 = 2;

#[test]
fn agent_descriptors_return_to_baseline_under_request_churn_and_nova_failures() {
    let dir = TempDir::new("agent-churn");
    let nova = Nova::start(SECRET);
    let relay = Relay::start(nova.port());
    let inv = dir.join("inventory.json");
    write_atomic(&inv, INVENTORY);
    let sock = dir.join("agent.sock");
    let ini = dir.join("agent.ini");
    std::fs::write(
        &ini,
        format!(
            "[DEFAULT]\nmetadata_proxy_socket = {}\ninventory_file = {}\nmetadata_backend = nova\n\
             nova_metadata_host = 127.0.0.1\nnova_metadata_port = {}\n\
             metadata_proxy_shared_secret = {SECRET}\nnova_metadata_timeout = 1\nkeepalive = true\n",
            sock.display(),
            inv.display(),
            relay.port
        ),
    )
    .expect("write ini");
    let agent = ChildGuard(
        Command::new(BIN)
            .arg("--config-file")
            .arg(&ini)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("agent.log")).expect("log"))
            .spawn()
            .expect("spawn agent"),
    );
    assert!(
        wait_until(T, || sock.exists()),
        "agent socket not created; log: {}",
        std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
    );
    let pid = agent.pid();

    let mut baseline: Option<(BTreeMap<String, usize>, usize)> = None;
    for round in 0..ROUNDS {
        // Many short connections, one request each, as Neutron's proxies send them.
        for i in 0..SHORT {
            let (status, _) = one_request(&sock, &request(i));
            assert_eq!(status, 200, "round {round}: short request {i}");
        }
        // Keep-alive connections held open together, then dropped mid-request.
        let mut held: Vec<UnixStream> = (0..KEEPALIVE)
            .map(|i| {
                let mut c = connect(&sock);
                c.write_all(request(i).as_bytes()).expect("send");
                assert_eq!(read_answer(&mut c).0, 200, "keep-alive request {i}");
                c
            })
            .collect();
        for (i, c) in held.iter_mut().enumerate() {
            let req = request(i);
            if i % 2 == 0 {
                // A head cut short, then the client goes.
                let _ = c.write_all(&req.as_bytes()[..req.len() / 2]);
            } else {
                // A whole request whose answer is never read.
                let _ = c.write_all(req.as_bytes());
            }
        }
        drop(held);
        // Nova failing: each failure is a 5xx answer, never a hang or a crash.
        // (Silent Nova costs `nova_metadata_timeout`, its minimum 1 s, per request.)
        for (m, want, n) in [(CLOSE, &[502, 503][..], 5), (SILENT, &[504][..], 2)] {
            relay.set(m);
            for i in 0..n {
                let (status, head) = one_request(&sock, &request(i));
                assert!(
                    want.contains(&status),
                    "round {round}: nova mode {m}: {head}"
                );
            }
        }
        relay.set(FORWARD);
        assert_eq!(one_request(&sock, &request(0)).0, 200, "nova back");

        let measure = || (agent_fds(pid), status_field(pid, "Threads"));
        match &baseline {
            None => {
                // The warm-up's baseline once the count holds still (the same in 20 polls in
                // a row): a connection of the round still closing is not part of it.
                let (mut last, mut same) = (measure(), 0);
                let settled = wait_until(T, || {
                    let now = measure();
                    same = if now == last { same + 1 } else { 0 };
                    last = now;
                    same >= 20
                });
                assert!(settled, "the agent's descriptors never settled: {last:?}");
                baseline = Some(last);
            }
            Some((fds0, threads0)) => {
                let mut last = measure();
                let back = wait_until(T, || {
                    last = measure();
                    &last.0 == fds0 && last.1 <= threads0 + THREAD_SLACK
                });
                assert!(
                    back,
                    "round {round}: agent not back to its baseline: descriptors {fds0:?} \
                     threads {threads0} after warm-up, now {:?} threads {}",
                    last.0, last.1
                );
            }
        }
        eprintln!("agent churn round {round}: {:?}", measure());
    }
    assert!(
        std::fs::read_to_string(dir.join("agent.log"))
            .map(|l| !l.contains("panicked"))
            .unwrap_or(true),
        "the agent panicked"
    );
}

/// The agent's descriptors by kind, its TCP sockets (to Nova) apart as `nova` and bounded,
/// not counted: its client pool keeps the connection of the last request, and one cut by the
/// relay may still be closing, so 0 to 2 is right; more would grow with the requests.
fn agent_fds(pid: u32) -> BTreeMap<String, usize> {
    let mut by = fds_by_kind(pid);
    let tcp = tcp_sockets(pid);
    assert!(
        tcp <= 2,
        "the agent holds {tcp} connections to Nova after sequential requests"
    );
    if let Some(n) = by.get_mut("socket") {
        *n -= tcp.min(*n);
    }
    by
}

/// How many of `pid`'s descriptors are TCP sockets (their inodes in its `net/tcp`, `tcp6`).
fn tcp_sockets(pid: u32) -> usize {
    let tcp: std::collections::HashSet<String> = ["tcp", "tcp6"]
        .iter()
        .filter_map(|t| std::fs::read_to_string(format!("/proc/{pid}/net/{t}")).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().nth(9).map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .collect();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|l| {
            l.to_str()
                .and_then(|l| l.strip_prefix("socket:["))
                .and_then(|l| l.strip_suffix(']'))
                .is_some_and(|ino| tcp.contains(ino))
        })
        .count()
}

/// A proxy's GET for VM 10.250.41.2 behind router r1 (different paths, same instance).
fn request(i: usize) -> String {
    get(
        &format!("/openstack/latest/meta_data.json?n={i}"),
        "10.250.41.2",
        "X-Neutron-Router-ID",
        "r1",
    )
}

fn connect(sock: &Path) -> UnixStream {
    let c = UnixStream::connect(sock).expect("connect agent");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    c
}

/// One request on a fresh connection that the client then closes: the status and head.
/// Returns once the agent has closed its end too (the client shuts its side and reads to
/// the end), so no connection of ours is still closing when descriptors are counted.
fn one_request(sock: &Path, req: &str) -> (u16, String) {
    let mut c = connect(sock);
    c.write_all(req.as_bytes()).expect("send");
    let answer = read_answer(&mut c);
    let _ = c.shutdown(std::net::Shutdown::Write);
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    answer
}

/// Read one answer (head and a `Content-Length` body): its status and head.
fn read_answer(c: &mut UnixStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                match c.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            return (status, head);
        }
        match c.read(&mut chunk) {
            Ok(0) | Err(_) => return (0, String::from_utf8_lossy(&buf).into_owned()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A loopback relay in front of Nova whose behaviour per connection is its mode: forward,
/// close at once, or hold the connection without a word (until the agent gives up).
/// Changing the mode cuts every forwarded connection, so the agent's pooled one to Nova
/// meets the new mode too.
struct Relay {
    port: u16,
    mode: Arc<AtomicU8>,
    forwarded: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(nova: u16) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let port = l.local_addr().expect("addr").port();
        let mode = Arc::new(AtomicU8::new(FORWARD));
        let forwarded = Arc::new(Mutex::new(Vec::new()));
        let (m, fw) = (mode.clone(), forwarded.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(client) = conn else { continue };
                match m.load(Ordering::SeqCst) {
                    CLOSE => drop(client),
                    SILENT => {
                        std::thread::spawn(move || {
                            let mut client = client;
                            let mut sink = [0u8; 4096];
                            while matches!(client.read(&mut sink), Ok(n) if n > 0) {}
                        });
                    }
                    _ => {
                        let Ok(up) = TcpStream::connect(("127.0.0.1", nova)) else {
                            continue;
                        };
                        if let Ok(c) = client.try_clone() {
                            fw.lock().expect("relay lock").push(c);
                        }
                        pipe(client, up);
                    }
                }
            }
        });
        Relay {
            port,
            mode,
            forwarded,
        }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
        for c in self.forwarded.lock().expect("relay lock").drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Copy both ways between `a` and `b` until either side closes.
fn pipe(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    for (mut from, mut to) in [(a, b2), (b, a2)] {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Both);
        });
    }
}
