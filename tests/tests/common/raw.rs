//! Harness of the hostile-input tests: the real `ns-metadata-proxy` on loopback in front of a
//! scriptable agent stand-in (a Unix socket served by this test), and a raw TCP client that
//! sends exact bytes and reads whatever comes back. No root needed.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ns_e2e::procs::TempDir;
use ns_e2e::{bin_path, unique_prefix, wait_until, ChildGuard};

/// One request the stand-in agent received: its head (as text, lossy) and body.
#[derive(Debug, Clone)]
pub struct Seen {
    pub head: String,
    pub body: Vec<u8>,
}

/// What the stand-in shares with the test.
#[derive(Default)]
pub struct AgentState {
    pub seen: Mutex<Vec<Seen>>,
    /// Set when the endless chunked answer's write failed (the proxy let go of it).
    pub endless_stopped: AtomicBool,
    pub endless_started: AtomicUsize,
}

/// The agent stand-in: answers by path (see [`answer`]); one request per connection.
pub struct StandIn {
    pub socket: PathBuf,
    pub state: Arc<AgentState>,
}

impl StandIn {
    pub fn start(socket: PathBuf) -> StandIn {
        let listener = UnixListener::bind(&socket).expect("bind stand-in agent socket");
        let state = Arc::new(AgentState::default());
        let st = Arc::clone(&state);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let st = Arc::clone(&st);
                std::thread::spawn(move || serve(conn, &st));
            }
        });
        StandIn { socket, state }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("seen lock").clone()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Read one request (head + body by Content-Length or chunked) and answer it by its path.
fn serve(mut conn: UnixStream, st: &AgentState) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 1 << 20 {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let lower = head.to_ascii_lowercase();
    let mut body = buf[head_end..].to_vec();
    let cl = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = lower.contains("transfer-encoding: chunked");
    loop {
        let done = match cl {
            Some(n) => body.len() >= n,
            None if chunked => body.ends_with(b"0\r\n\r\n"),
            None => true,
        };
        if done {
            break;
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let path = head.split(' ').nth(1).unwrap_or("").to_owned();
    st.seen.lock().expect("seen lock").push(Seen {
        head: head.clone(),
        body: body.clone(),
    });
    answer(&mut conn, &path, &body, st);
}

/// The stand-in's answers: hostile ones for the `/agent-*` paths, else 200 echoing the path.
fn answer(conn: &mut UnixStream, path: &str, body: &[u8], st: &AgentState) {
    match path {
        "/agent-truncated" => {
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort");
        }
        "/agent-badstatus" => {
            let _ = conn.write_all(b"HTTP/1.1 abc oops\r\nContent-Length: 0\r\n\r\n");
        }
        "/agent-garbage" => {
            let _ = conn.write_all(b"\x16\x03\x01garbage\x00\xff\r\n\r\n");
        }
        "/agent-silent" => std::thread::sleep(Duration::from_secs(8)),
        "/agent-close" => {}
        "/agent-cl2" => {
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 30\r\n\r\nokHTTP/1.1 200 OK\r\nX-Injected: 1\r\nContent-Length: 0\r\n\r\n",
            );
        }
        "/agent-clte" => {
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nokHTTP/1.1 200 OK\r\nX-Injected: 1\r\nContent-Length: 0\r\n\r\n",
            );
        }
        "/agent-negcl" => {
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\nok");
        }
        "/agent-hugeheaders" => {
            let mut s = b"HTTP/1.1 200 OK\r\n".to_vec();
            for i in 0..20_000 {
                s.extend_from_slice(format!("X-Huge-{i}: {}\r\n", "v".repeat(40)).as_bytes());
            }
            s.extend_from_slice(b"Content-Length: 2\r\n\r\nok");
            let _ = conn.write_all(&s);
        }
        "/agent-endless" => {
            st.endless_started.fetch_add(1, Ordering::SeqCst);
            let _ = conn.set_write_timeout(Some(Duration::from_secs(120)));
            let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
            let piece = format!("1000\r\n{}\r\n", "e".repeat(0x1000));
            let ok = conn.write_all(head).is_ok();
            let start = Instant::now();
            while ok && start.elapsed() < Duration::from_secs(120) {
                if conn.write_all(piece.as_bytes()).is_err() {
                    break;
                }
            }
            st.endless_stopped.store(true, Ordering::SeqCst);
        }
        "/agent-big" => {
            let body = vec![b'b'; 1 << 20];
            let _ = conn.write_all(
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
            );
            let _ = conn.write_all(&body);
        }
        _ => {
            let text = format!("path={path} body={}", String::from_utf8_lossy(body));
            let _ = conn.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{text}",
                    text.len()
                )
                .as_bytes(),
            );
        }
    }
    let _ = conn.shutdown(Shutdown::Write);
}

/// The real proxy on 127.0.0.1 with its agent stand-in; killed (by pid) on drop.
pub struct Proxy {
    pub child: ChildGuard,
    pub port: u16,
    pub log: PathBuf,
    pub agent: StandIn,
    pub dir: TempDir,
}

/// A free loopback port (bound then released; the proxy binds it right after).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port")
}

impl Proxy {
    /// Start `ns-metadata-proxy --router-id ... --bind 127.0.0.1:PORT` plus `extra` flags.
    pub fn start(test: &str, extra: &[&str]) -> Proxy {
        Proxy::start_limited(test, None, extra)
    }

    /// [`Proxy::start`] under `prlimit --nofile=N:N` (prlimit execs it: same pid).
    pub fn start_limited(test: &str, nofile: Option<u32>, extra: &[&str]) -> Proxy {
        let dir = TempDir::new(&format!("{}-{test}", unique_prefix()));
        let agent = StandIn::start(dir.path().join("agent.sock"));
        let log = dir.path().join("proxy.log");
        let port = free_port();
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}"))
                    .arg("--")
                    .arg(bin_path("ns-metadata-proxy"));
                c
            }
            None => Command::new(bin_path("ns-metadata-proxy")),
        };
        let child = cmd
            .args(["--router-id", "hostile-router-1", "--bind"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--metadata-proxy-socket")
            .arg(&agent.socket)
            .args(["--agent-keepalive", "off"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create proxy log"))
            .spawn()
            .expect("start ns-metadata-proxy");
        let mut proxy = Proxy {
            child: ChildGuard(child),
            port,
            log,
            agent,
            dir,
        };
        let up = wait_until(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok() || !proxy.alive()
        });
        assert!(up && proxy.alive(), "proxy not up: {}", proxy.log_text());
        proxy
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.0.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the proxy");
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        s
    }

    /// Send `bytes` on a fresh connection, read until the proxy closes or `wait` passes.
    pub fn exchange(&self, bytes: &[u8], wait: Duration) -> Vec<u8> {
        let mut s = self.connect();
        let _ = s.write_all(bytes);
        read_all(&mut s, wait)
    }

    /// Like [`Proxy::exchange`], also saying whether the proxy closed the connection in time.
    pub fn exchange_closed(&self, bytes: &[u8], wait: Duration) -> (Vec<u8>, bool) {
        let mut s = self.connect();
        let _ = s.write_all(bytes);
        read_until_closed(&mut s, wait)
    }

    /// The proxy is the same process and answers a normal request with 200.
    pub fn assert_healthy(&mut self, case: &str) {
        assert!(
            self.alive(),
            "{case}: the proxy died; log:\n{}",
            self.log_text()
        );
        let r = self.exchange(
            b"GET /health HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n",
            Duration::from_secs(10),
        );
        assert_eq!(
            status(&r),
            Some(200),
            "{case}: a normal request afterwards got {}",
            show(&r)
        );
        assert!(self.alive(), "{case}: the proxy died");
    }

    /// Number of open file descriptors of the proxy.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

/// Read until EOF, error, or `wait` passes.
pub fn read_all(s: &mut TcpStream, wait: Duration) -> Vec<u8> {
    read_until_closed(s, wait).0
}

/// Read until EOF (or a reset), or `wait` passes; true if the peer closed.
pub fn read_until_closed(s: &mut TcpStream, wait: Duration) -> (Vec<u8>, bool) {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    while start.elapsed() < wait {
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (out, true),
        }
    }
    (out, false)
}

/// Status code of the first response in `r`, if it starts with a well-formed status line.
pub fn status(r: &[u8]) -> Option<u16> {
    let line_end = find(r, b"\r\n")?;
    let line = std::str::from_utf8(&r[..line_end]).ok()?;
    let rest = line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))?;
    let code = rest.get(..3)?;
    if rest.len() > 3 && !rest[3..].starts_with(' ') {
        return None;
    }
    code.parse().ok()
}

/// Every status code of the responses in `r`, in order (bodies here never contain "HTTP/1.").
pub fn statuses(r: &[u8]) -> Vec<u16> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(p) = find(&r[i..], b"HTTP/1.") {
        let at = i + p;
        if let Some(s) = status(&r[at..]) {
            out.push(s);
        }
        i = at + 1;
    }
    out
}

/// Printable form of an answer for assertion messages.
pub fn show(r: &[u8]) -> String {
    let text = String::from_utf8_lossy(&r[..r.len().min(600)]).into_owned();
    if r.is_empty() {
        "no bytes (connection closed)".into()
    } else {
        format!("{text:?}")
    }
}

/// The answer is either nothing (closed) or a well-formed HTTP response with a 4xx/5xx status
/// (never a success for malformed input).
pub fn assert_rejected_or_closed(case: &str, r: &[u8]) {
    if r.is_empty() {
        return;
    }
    let s = status(r).unwrap_or_else(|| panic!("{case}: not a well-formed answer: {}", show(r)));
    assert!(
        (400..600).contains(&s),
        "{case}: malformed input got {s}: {}",
        show(r)
    );
}
