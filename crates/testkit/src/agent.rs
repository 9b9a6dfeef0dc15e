//! One scriptable metadata-agent stand-in on a Unix socket (std threads, so it serves sync
//! and async tests alike): it records every request and answers as its [`Behave`] says, from
//! a well-behaved echo with or without keep-alive (the `X-NS-Metadata-Keepalive` signal) to
//! Neutron's close-after-each-reply, silence, and the hostile answers of [`Behave::Hostile`].
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::TempDir;

/// How the stand-in answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behave {
    /// 200 with the raw request as body. `advertise`: keep the connection and send
    /// `X-NS-Metadata-Keepalive: <s>`; `reuse`: keep it without advertising; neither: close
    /// after the reply, as Neutron's agent does.
    Echo { advertise: Option<u64>, reuse: bool },
    /// 200 with `router=<X-Neutron-Router-ID> network=<X-Neutron-Network-ID> xff=<X-Forwarded-For>`
    /// (`-` for a missing header), keeping the connection.
    Headers,
    /// Read the request, close without a reply.
    CloseNoReply,
    /// Read the request, never answer.
    Slow,
    /// Answer the first request on a connection (advertising keep-alive for 10 s), then read
    /// the second and close without a reply.
    DropSecond,
    /// Echo after this many milliseconds, then close.
    Delay(u64),
    /// Echo in three writes a few milliseconds apart (part of the head; the rest of the head
    /// with part of the body; the rest of the body), then close.
    Split,
    /// One request per connection, answered by path: `/agent-truncated`, `-badstatus`,
    /// `-garbage`, `-silent` (8 s), `-close`, `-cl2`, `-clte`, `-negcl`, `-hugeheaders`,
    /// `-endless` (a chunked answer until the reader lets go), `-big` (1 MiB), `-lfchunked` (chunked
    /// with bare LFs, an extension and a trailer); anything else
    /// 200 `path=<path> body=<body>`. The write side is shut after each answer.
    Hostile,
    /// Answer each request with the bytes last given to [`StandIn::set_answer`], exactly,
    /// then shut the write side (hostile-input tests of the proxy's answer parsing).
    Canned,
}

/// One request as the stand-in read it.
#[derive(Debug, Clone)]
pub struct Request {
    /// Head and body, exactly as received.
    pub raw: Vec<u8>,
    /// The head as text (lossy), up to and including the empty line.
    pub head: String,
    pub body: Vec<u8>,
}

/// What the stand-in saw; shared with the test.
#[derive(Debug, Default)]
pub struct Seen {
    pub connections: AtomicUsize,
    pub requests: Mutex<Vec<Request>>,
    /// For each request: did the first read hold all of it (one write by the peer)?
    pub whole_in_first_read: Mutex<Vec<bool>>,
    /// `/agent-endless` answers begun, and whether one stopped because its write failed.
    pub endless_started: AtomicUsize,
    pub endless_stopped: AtomicBool,
    /// What [`Behave::Canned`] sends.
    pub canned: Mutex<Vec<u8>>,
}

/// The stand-in; stops accepting on drop (its socket is removed with its directory).
pub struct StandIn {
    pub path: PathBuf,
    pub seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
    _dir: Option<TempDir>,
}

impl StandIn {
    /// Listen on `agent.sock` in a fresh temp dir.
    pub fn start(b: Behave) -> StandIn {
        let dir = TempDir::new("agent");
        let mut s = StandIn::start_at(dir.join("agent.sock"), b);
        s._dir = Some(dir);
        s
    }

    /// Listen on `socket` (a stale file there is removed first).
    pub fn start_at(socket: PathBuf, b: Behave) -> StandIn {
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket)
            .unwrap_or_else(|e| panic!("bind stand-in agent on {}: {e}", socket.display()));
        let seen = Arc::new(Seen::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { return };
                seen2.connections.fetch_add(1, Ordering::SeqCst);
                let (seen, stop) = (seen2.clone(), stop2.clone());
                std::thread::spawn(move || serve(conn, b, &seen, &stop));
            }
        });
        StandIn {
            path: socket,
            seen,
            stop,
            _dir: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The bytes [`Behave::Canned`] answers with from now on.
    pub fn set_answer(&self, bytes: &[u8]) {
        *self.seen.canned.lock().expect("lock") = bytes.to_vec();
    }

    pub fn connections(&self) -> usize {
        self.seen.connections.load(Ordering::SeqCst)
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Request> {
        self.seen.requests.lock().expect("lock").clone()
    }

    /// Every request so far, as text (lossy).
    pub fn requests(&self) -> Vec<String> {
        self.received()
            .iter()
            .map(|r| String::from_utf8_lossy(&r.raw).into_owned())
            .collect()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = UnixStream::connect(&self.path);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Read one request (head, then a body by Content-Length or chunked); `None` on EOF first.
/// Bytes past it stay in `buf` for the next request.
fn read_request(conn: &mut UnixStream, buf: &mut Vec<u8>, seen: &Seen) -> Option<Request> {
    let mut chunk = [0u8; 8192];
    let mut first_read = None;
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk).ok().filter(|&n| n > 0)?;
        first_read.get_or_insert(n);
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 1 << 20 {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let lower = head.to_ascii_lowercase();
    let cl = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    // A header line, not the words anywhere: a value may hold them (the hostile tests
    // send `Host: xTransfer-Encoding: chunked`).
    let chunked = lower.lines().any(|l| {
        l.strip_prefix("transfer-encoding:")
            .is_some_and(|v| v.trim() == "chunked")
    });
    let body_end = loop {
        let have = buf.len() - head_end;
        let done = match cl {
            Some(n) if have >= n => Some(head_end + n),
            Some(_) => None,
            None if chunked => find(&buf[head_end..], b"0\r\n\r\n").map(|i| head_end + i + 5),
            None => Some(head_end),
        };
        if let Some(end) = done {
            break end;
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => break buf.len(),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let raw: Vec<u8> = buf.drain(..body_end).collect();
    let req = Request {
        body: raw[head_end..].to_vec(),
        head,
        raw,
    };
    seen.whole_in_first_read
        .lock()
        .expect("lock")
        .push(first_read == Some(req.raw.len()));
    seen.requests.lock().expect("lock").push(req.clone());
    Some(req)
}

fn echo_reply(req: &[u8], advertise: Option<u64>) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n",
        req.len()
    );
    if let Some(s) = advertise {
        // Twice, in two spellings: the proxy must strip every copy of the signal.
        out.push_str(&format!(
            "X-NS-Metadata-Keepalive: {s}\r\nx-ns-metadata-keepalive: {s}\r\n"
        ));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(req);
    out
}

fn text_reply(text: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{text}",
        text.len()
    )
    .into_bytes()
}

/// Sleep up to `d`, returning early once the stand-in is stopped.
fn idle(d: Duration, stop: &AtomicBool) {
    let end = Instant::now() + d;
    while Instant::now() < end && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn serve(mut conn: UnixStream, b: Behave, seen: &Seen, stop: &AtomicBool) {
    if b == Behave::Hostile {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    }
    let mut buf = Vec::new();
    let mut n = 0;
    while let Some(req) = read_request(&mut conn, &mut buf, seen) {
        n += 1;
        match b {
            Behave::Echo { advertise, reuse } => {
                let _ = conn.write_all(&echo_reply(&req.raw, advertise));
                if advertise.is_none() && !reuse {
                    return;
                }
            }
            Behave::Headers => {
                let h = |k: &str| {
                    req.head
                        .lines()
                        .find_map(|l| {
                            let (n, v) = l.split_once(':')?;
                            n.trim()
                                .eq_ignore_ascii_case(k)
                                .then(|| v.trim().to_owned())
                        })
                        .unwrap_or_else(|| "-".into())
                };
                let text = format!(
                    "router={} network={} xff={}",
                    h("x-neutron-router-id"),
                    h("x-neutron-network-id"),
                    h("x-forwarded-for")
                );
                if conn.write_all(&text_reply(&text)).is_err() {
                    return;
                }
            }
            Behave::CloseNoReply => return,
            Behave::Slow => idle(Duration::from_secs(3600), stop),
            Behave::Delay(ms) => {
                std::thread::sleep(Duration::from_millis(ms));
                let _ = conn.write_all(&echo_reply(&req.raw, None));
                return;
            }
            Behave::Split => {
                let r = echo_reply(&req.raw, None);
                let (a, z) = (10, r.len() - req.raw.len() / 2);
                for part in [&r[..a], &r[a..z], &r[z..]] {
                    let _ = conn.write_all(part);
                    std::thread::sleep(Duration::from_millis(3));
                }
                return;
            }
            Behave::DropSecond => {
                if n >= 2 {
                    return;
                }
                let _ = conn.write_all(&echo_reply(&req.raw, Some(10)));
            }
            Behave::Canned => {
                let answer = seen.canned.lock().expect("lock").clone();
                let _ = conn.write_all(&answer);
                let _ = conn.shutdown(Shutdown::Write);
                return;
            }
            Behave::Hostile => {
                hostile(&mut conn, &req, seen, stop);
                let _ = conn.shutdown(Shutdown::Write);
                return;
            }
        }
    }
}

/// The answers of [`Behave::Hostile`].
fn hostile(conn: &mut UnixStream, req: &Request, seen: &Seen, stop: &AtomicBool) {
    let path = req.head.split(' ').nth(1).unwrap_or("");
    let canned: &[u8] = match path {
        "/agent-truncated" => b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort",
        "/agent-badstatus" => b"HTTP/1.1 abc oops\r\nContent-Length: 0\r\n\r\n",
        "/agent-garbage" => b"\x16\x03\x01garbage\x00\xff\r\n\r\n",
        "/agent-cl2" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 30\r\n\r\nokHTTP/1.1 200 OK\r\nX-Injected: 1\r\nContent-Length: 0\r\n\r\n",
        "/agent-clte" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nokHTTP/1.1 200 OK\r\nX-Injected: 1\r\nContent-Length: 0\r\n\r\n",
        "/agent-negcl" => b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\nok",
        "/agent-lfchunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=\"y z\"\nhello\n0\nX-Trailer: \x01\n\n",
        _ => b"",
    };
    if !canned.is_empty() {
        let _ = conn.write_all(canned);
        return;
    }
    match path {
        "/agent-silent" => idle(Duration::from_secs(8), stop),
        "/agent-close" => {}
        "/agent-hugeheaders" => {
            let mut s = b"HTTP/1.1 200 OK\r\n".to_vec();
            for i in 0..20_000 {
                s.extend_from_slice(format!("X-Huge-{i}: {}\r\n", "v".repeat(40)).as_bytes());
            }
            s.extend_from_slice(b"Content-Length: 2\r\n\r\nok");
            let _ = conn.write_all(&s);
        }
        "/agent-endless" => {
            seen.endless_started.fetch_add(1, Ordering::SeqCst);
            let _ = conn.set_write_timeout(Some(Duration::from_secs(120)));
            let piece = format!("1000\r\n{}\r\n", "e".repeat(0x1000));
            let ok = conn
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .is_ok();
            let start = Instant::now();
            while ok && start.elapsed() < Duration::from_secs(120) {
                if conn.write_all(piece.as_bytes()).is_err() {
                    break;
                }
            }
            seen.endless_stopped.store(true, Ordering::SeqCst);
        }
        "/agent-big" => {
            let body = vec![b'b'; 1 << 20];
            let _ = conn.write_all(
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
            );
            let _ = conn.write_all(&body);
        }
        _ => {
            let text = format!("path={path} body={}", String::from_utf8_lossy(&req.body));
            let _ = conn.write_all(&text_reply(&text));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Blocking;

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn echo_keepalive_records_and_closes_like_neutron() {
        let a = StandIn::start(Behave::Echo {
            advertise: Some(7),
            reuse: false,
        });
        let mut c = Blocking::unix(&a.path).expect("connect");
        for i in 0..2 {
            let req = format!("POST /{i} HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi");
            c.send(req.as_bytes()).expect("send");
            let r = c.read(false, T).expect("reply");
            assert_eq!(r.header("x-ns-metadata-keepalive"), Some("7"));
            assert_eq!(r.text(), req);
        }
        assert_eq!(a.connections(), 1);
        assert_eq!(a.received()[1].body, b"hi");

        let a = StandIn::start(Behave::Echo {
            advertise: None,
            reuse: false,
        });
        let mut c = Blocking::unix(&a.path).expect("connect");
        c.send(b"GET / HTTP/1.1\r\n\r\n").expect("send");
        assert_eq!(c.read(false, T).expect("reply").status, 200);
        assert!(c.read_until_closed(T).1, "closed after one reply");
    }

    #[test]
    fn headers_and_hostile() {
        let a = StandIn::start(Behave::Headers);
        let mut c = Blocking::unix(&a.path).expect("connect");
        c.send(b"GET / HTTP/1.1\r\nX-Neutron-Router-ID: r1\r\nX-Forwarded-For: 10.0.0.2\r\n\r\n")
            .expect("send");
        let r = c.read(false, T).expect("reply");
        assert_eq!(r.text(), "router=r1 network=- xff=10.0.0.2");

        let a = StandIn::start(Behave::Hostile);
        let mut c = Blocking::unix(&a.path).expect("connect");
        c.send(b"GET /agent-badstatus HTTP/1.1\r\n\r\n")
            .expect("send");
        let (bytes, closed) = c.read_until_closed(T);
        assert!(closed);
        assert_eq!(crate::http::status(&bytes), None);
    }
}
