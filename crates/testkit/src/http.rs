//! One raw HTTP/1 client for tests: exact bytes out, whatever comes back parsed by one
//! response parser (status line, headers, body framed by Content-Length, chunked or close;
//! bare-LF line ends tolerated, as Neutron's agent sends them). [`Conn`] is the tokio face
//! (for servers running in the test's runtime), [`Blocking`] the std one; both over TCP or a
//! Unix socket. The byte helpers ([`status`], [`statuses`], [`show`]) judge hostile answers.
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long a read may take before the test fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// The head as received (status line and headers, up to the empty line).
    pub head: String,
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Index just past the empty line that ends the head (`\r\n\r\n` or bare `\n\n`).
fn head_end(buf: &[u8]) -> Option<usize> {
    head_end_from(buf, 0)
}

/// Decode a chunked body; `Some((body, consumed))` once the last chunk and trailers are in.
fn dechunk(buf: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    let mut i = 0;
    loop {
        let nl = buf[i..].iter().position(|&b| b == b'\n')? + i;
        let line = String::from_utf8_lossy(&buf[i..nl]);
        let size = line.trim().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        i = nl + 1;
        if size == 0 {
            // Trailers up to the empty line.
            return head_end_from(buf, i).map(|end| (body, end));
        }
        if buf.len() < i + size {
            return None;
        }
        body.extend_from_slice(&buf[i..i + size]);
        i += size;
        let nl = buf[i..].iter().position(|&b| b == b'\n')? + i;
        i = nl + 1;
    }
}

/// [`head_end`] for a head (or trailers) starting at `from`.
fn head_end_from(buf: &[u8], from: usize) -> Option<usize> {
    let mut line_start = from;
    for (i, &b) in buf.iter().enumerate().skip(from) {
        if b == b'\n' {
            let line = &buf[line_start..i];
            if line.is_empty() || line == b"\r" {
                return Some(i + 1);
            }
            line_start = i + 1;
        }
    }
    None
}

/// Parse one response from the start of `buf`: `Some((response, bytes used))` once complete.
/// `head_only` for the answer to a HEAD; `eof` when no more bytes will come (a body framed by
/// the close is complete then).
pub fn parse(buf: &[u8], head_only: bool, eof: bool) -> Option<(Response, usize)> {
    let end = head_end(buf)?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.lines();
    let status_line = lines.next()?;
    let status: u16 = status_line.split(' ').nth(1)?.trim().parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let no_body = head_only || status < 200 || status == 204 || status == 304;
    let (body, used) = if no_body {
        (Vec::new(), end)
    } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let (body, n) = dechunk(&buf[end..])?;
        (body, end + n)
    } else if let Some(len) = get("content-length") {
        let len: usize = len.parse().ok()?;
        if buf.len() < end + len {
            return None;
        }
        (buf[end..end + len].to_vec(), end + len)
    } else if eof {
        (buf[end..].to_vec(), buf.len())
    } else {
        return None;
    };
    Some((
        Response {
            status,
            head,
            headers,
            body,
        },
        used,
    ))
}

/// A tokio connection with its read buffer (responses may arrive together on keep-alive).
pub struct Conn<S> {
    pub stream: S,
    buf: Vec<u8>,
}

impl Conn<tokio::net::TcpStream> {
    pub async fn tcp(addr: SocketAddr) -> Self {
        let s = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        Conn::new(s)
    }
}

impl Conn<tokio::net::UnixStream> {
    pub async fn unix(path: &Path) -> Self {
        let s = tokio::net::UnixStream::connect(path)
            .await
            .unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        Conn::new(s)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub fn new(stream: S) -> Self {
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).await.expect("send request");
    }

    /// Read one response (`head_only` for HEAD). `None` if the connection closed before a
    /// complete one arrived; panics after [`READ_TIMEOUT`].
    pub async fn read(&mut self, head_only: bool) -> Option<Response> {
        let mut eof = false;
        loop {
            if let Some((r, used)) = parse(&self.buf, head_only, eof) {
                self.buf.drain(..used);
                return Some(r);
            }
            if eof {
                return None;
            }
            let mut tmp = [0u8; 16384];
            let n = tokio::time::timeout(READ_TIMEOUT, self.stream.read(&mut tmp))
                .await
                .unwrap_or_else(|_| panic!("no response within {READ_TIMEOUT:?}"))
                .unwrap_or(0);
            if n == 0 {
                eof = true;
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    /// True if the peer closed the connection (EOF or reset) within [`READ_TIMEOUT`].
    pub async fn closed(&mut self) -> bool {
        let mut tmp = [0u8; 64];
        matches!(
            tokio::time::timeout(READ_TIMEOUT, self.stream.read(&mut tmp)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// One request on a fresh TCP connection (tokio).
pub async fn request_tcp(addr: SocketAddr, raw: impl AsRef<[u8]>) -> Option<Response> {
    let raw = raw.as_ref();
    let mut c = Conn::tcp(addr).await;
    c.send(raw).await;
    c.read(raw.starts_with(b"HEAD ")).await
}

/// One request on a fresh Unix-socket connection (tokio).
pub async fn request_unix(path: &Path, raw: impl AsRef<[u8]>) -> Option<Response> {
    let raw = raw.as_ref();
    let mut c = Conn::unix(path).await;
    c.send(raw).await;
    c.read(raw.starts_with(b"HEAD ")).await
}

/// A blocking connection (std sockets) with its read buffer.
pub struct Blocking<S> {
    pub stream: S,
    buf: Vec<u8>,
}

/// What a blocking stream needs: read, write and a read timeout.
pub trait Stream: Read + Write {
    fn set_timeout(&self, t: Option<Duration>) -> std::io::Result<()>;
    fn shutdown_write(&self) -> std::io::Result<()>;
}

impl Stream for std::net::TcpStream {
    fn set_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        self.set_read_timeout(t)
    }
    fn shutdown_write(&self) -> std::io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

impl Stream for std::os::unix::net::UnixStream {
    fn set_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        self.set_read_timeout(t)
    }
    fn shutdown_write(&self) -> std::io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

impl Blocking<std::net::TcpStream> {
    /// Connect (within `timeout`).
    pub fn tcp(addr: SocketAddr, timeout: Duration) -> std::io::Result<Self> {
        std::net::TcpStream::connect_timeout(&addr, timeout).map(Blocking::new)
    }
}

impl Blocking<std::os::unix::net::UnixStream> {
    pub fn unix(path: &Path) -> std::io::Result<Self> {
        std::os::unix::net::UnixStream::connect(path).map(Blocking::new)
    }
}

impl<S: Stream> Blocking<S> {
    pub fn new(stream: S) -> Self {
        Blocking {
            stream,
            buf: Vec::new(),
        }
    }

    /// Write all of `raw`; an error is returned, not a panic (hostile tests expect resets).
    pub fn send(&mut self, raw: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(raw)
    }

    /// Read one response within `timeout`; `None` if the peer closed (or failed) first or the
    /// time ran out.
    pub fn read(&mut self, head_only: bool, timeout: Duration) -> Option<Response> {
        let start = Instant::now();
        let mut eof = false;
        loop {
            if let Some((r, used)) = parse(&self.buf, head_only, eof) {
                self.buf.drain(..used);
                return Some(r);
            }
            let left = timeout.checked_sub(start.elapsed())?;
            if eof || left.is_zero() {
                return None;
            }
            let _ = self.stream.set_timeout(Some(left));
            let mut tmp = [0u8; 16384];
            match self.stream.read(&mut tmp) {
                Ok(0) => eof = true,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) if timed_out(&e) => return None,
                Err(_) => eof = true,
            }
        }
    }

    /// Send `raw` and return every byte until the peer closes or `wait` passes. A failed
    /// write is not an error: a peer may refuse input by closing, and what it said counts.
    pub fn exchange(&mut self, raw: &[u8], wait: Duration) -> Vec<u8> {
        let _ = self.send(raw);
        self.read_until_closed(wait).0
    }

    /// Send `raw` as all the client will ever send (then its write side is shut) and return
    /// every byte until the peer closes or `wait` passes, and whether it closed: a server
    /// must answer what it got and close, whatever `raw` is.
    pub fn send_last(&mut self, raw: &[u8], wait: Duration) -> (Vec<u8>, bool) {
        let _ = self.send(raw);
        let _ = self.stream.shutdown_write();
        self.read_until_closed(wait)
    }

    /// Every byte until the peer closes (EOF or reset) or `wait` passes; whether it closed.
    pub fn read_until_closed(&mut self, wait: Duration) -> (Vec<u8>, bool) {
        let start = Instant::now();
        let mut out = std::mem::take(&mut self.buf);
        let mut tmp = [0u8; 65536];
        while start.elapsed() < wait {
            let _ = self.stream.set_timeout(Some(Duration::from_millis(200)));
            match self.stream.read(&mut tmp) {
                Ok(0) => return (out, true),
                Ok(n) => out.extend_from_slice(&tmp[..n]),
                Err(e) if timed_out(&e) => {}
                Err(_) => return (out, true),
            }
        }
        (out, false)
    }
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A request for `/metrics` that keeps the connection open.
const SCRAPE: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";

/// `n` hostile clients of a `metrics_bind` listener at `addr` (any local user can be one):
/// each answered once (so the server is serving it), then asking again and again without
/// ever reading, until the server's writes and ours block. Drop them to let go.
pub fn stalled_scrapers(addr: SocketAddr, n: usize) -> Vec<std::net::TcpStream> {
    (0..n)
        .map(|_| {
            let mut c = small_receive_buffer(addr);
            c.set_read_timeout(Some(READ_TIMEOUT)).expect("timeout");
            c.write_all(SCRAPE).expect("send");
            let mut head = [0u8; 12];
            c.read_exact(&mut head).expect("first answer");
            assert_eq!(&head, b"HTTP/1.1 200", "first answer");
            c.set_nonblocking(true).expect("nonblocking");
            loop {
                match c.write(SCRAPE) {
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("asking without reading: {e}"),
                }
            }
            c
        })
        .collect()
}

/// One `GET /metrics` (`Connection: close`) on a fresh connection to `addr`: how reading
/// ended (bytes, or the error's kind) and everything that came.
pub fn scrape_once(addr: SocketAddr) -> (Result<usize, std::io::ErrorKind>, Vec<u8>) {
    let mut c = std::net::TcpStream::connect(addr).expect("connect");
    c.set_read_timeout(Some(READ_TIMEOUT)).expect("timeout");
    let _ = c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut got = Vec::new();
    let end = c.read_to_end(&mut got).map_err(|e| e.kind());
    (end, got)
}

/// What every `metrics_bind` listener at `addr` must do against hostile local clients: `max`
/// clients asking and never reading ([`stalled_scrapers`]) are served, and one more is
/// closed at once, unanswered (panics otherwise). The stalled clients: drop them to let go.
pub async fn assert_scrapes_bounded(addr: SocketAddr, max: usize) -> Vec<std::net::TcpStream> {
    let (stalled, (end, got)) = tokio::task::spawn_blocking(move || {
        let stalled = stalled_scrapers(addr, max);
        (stalled, scrape_once(addr))
    })
    .await
    .expect("join");
    use std::io::ErrorKind::{TimedOut, WouldBlock};
    assert!(
        got.is_empty() && !matches!(end, Err(WouldBlock | TimedOut)),
        "one connection more than {max} is closed at once, unanswered: {end:?} {}",
        String::from_utf8_lossy(&got)
    );
    stalled
}

/// Wait until a scrape of `addr` is answered 200 (panics after 30 s).
pub async fn eventually_scraped(addr: SocketAddr) {
    crate::eventually_await(
        "a scrape answered",
        Duration::from_secs(30),
        || async move {
            let (_, got) = tokio::task::spawn_blocking(move || scrape_once(addr))
                .await
                .ok()?;
            got.starts_with(b"HTTP/1.1 200").then_some(())
        },
    )
    .await;
}

/// A client connection with the smallest receive buffer: one that never reads blocks the
/// server's writes after a few answers.
fn small_receive_buffer(addr: SocketAddr) -> std::net::TcpStream {
    use nix::sys::socket::{
        connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage,
    };
    use std::os::fd::AsRawFd as _;
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).expect("socket");
    setsockopt(&fd, sockopt::RcvBuf, &1).expect("SO_RCVBUF");
    connect(fd.as_raw_fd(), &SockaddrStorage::from(addr)).expect("connect");
    std::net::TcpStream::from(fd)
}

/// A loopback TCP port that was free a moment ago (bound, then released): for a server the
/// test starts next, or for an address where nothing listens.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free loopback port")
}

/// Status code of the response at the start of `r`, if its status line is well-formed
/// (`HTTP/1.x NNN`, CRLF-terminated): stricter than [`parse`], to judge hostile answers.
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

/// The responses `r` holds, all of it: each with a well-formed status line ([`status`]) and
/// complete framing (a body framed by the close ends at the end of `r`, which came with a
/// close); or why `r` is not such a sequence (for hostile-input tests of servers).
pub fn answers(r: &[u8]) -> Result<Vec<Response>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < r.len() {
        let rest = &r[at..];
        if status(rest).is_none() {
            return Err(format!("not a status line: {}", show(rest)));
        }
        let (resp, used) =
            parse(rest, false, true).ok_or_else(|| format!("incomplete answer: {}", show(rest)))?;
        let end = head_end(rest).unwrap_or(used);
        if rest[..end]
            .windows(2)
            .any(|w| w[1] == b'\n' && w[0] != b'\r')
        {
            return Err(format!("a bare LF in the head: {}", show(rest)));
        }
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        if chunked && !strict_chunks(&rest[end..used]) {
            return Err(format!("chunked framing not in CRLF lines: {}", show(rest)));
        }
        out.push(resp);
        at += used;
    }
    Ok(out)
}

/// Whether `b` is exactly a chunked body in RFC 9112's form: hex size (an extension
/// allowed), CRLF, the data, CRLF, ..., `0` CRLF, trailer lines ending in CRLF, CRLF.
fn strict_chunks(mut b: &[u8]) -> bool {
    let line = |b: &[u8]| -> Option<(usize, usize)> {
        let end = find(b, b"\r\n")?;
        (!b[..end].contains(&b'\n') && !b[..end].contains(&b'\r')).then_some((end, end + 2))
    };
    loop {
        let Some((end, next)) = line(b) else {
            return false;
        };
        let size = b[..end].split(|&c| c == b';').next().unwrap_or_default();
        let Some(size) = std::str::from_utf8(size)
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|c| c.is_ascii_hexdigit()))
            .and_then(|s| usize::from_str_radix(s, 16).ok())
        else {
            return false;
        };
        b = &b[next..];
        if size == 0 {
            // Trailer lines, then the empty line that ends the body.
            loop {
                match line(b) {
                    Some((0, 2)) => return b.len() == 2,
                    Some((_, next)) => b = &b[next..],
                    None => return false,
                }
            }
        }
        if b.len() < size + 2 || &b[size..size + 2] != b"\r\n" {
            return false;
        }
        b = &b[size + 2..];
    }
}

/// Every status code of the responses in `r`, in order (bodies must not contain "HTTP/1.").
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

/// Printable form of an answer (its first 600 bytes) for assertion messages.
pub fn show(r: &[u8]) -> String {
    if r.is_empty() {
        return "no bytes (connection closed)".into();
    }
    format!("{:?}", String::from_utf8_lossy(&r[..r.len().min(600)]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_strict_about_line_ends_and_chunks() {
        let ok = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x\r\nhello\r\n0\r\nT: 1\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        let got = answers(ok).expect("strict");
        assert_eq!(got.iter().map(|a| a.status).collect::<Vec<_>>(), [200, 204]);
        for bad in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\nX: y\r\n\r\na",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
            b"garbage",
        ] {
            assert!(answers(bad).is_err(), "{}", show(bad));
        }
    }

    #[test]
    fn content_length_and_pipelined() {
        let b = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nokHTTP/1.1 404 NF\r\n";
        let (r, used) = parse(b, false, false).expect("complete");
        assert_eq!(
            (r.status, r.text().as_str(), r.header("x-a")),
            (200, "ok", Some("b"))
        );
        assert_eq!(&b[used..used + 8], b"HTTP/1.1");
        assert!(parse(&b[..30], false, false).is_none());
    }

    #[test]
    fn chunked_close_bare_lf_and_head() {
        let b = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n3;x=1\r\n!!!\r\n0\r\n\r\n";
        assert_eq!(parse(b, false, false).expect("chunked").0.text(), "ok!!!");
        let b = b"HTTP/1.0 404 Not Found\nContent-Type: text/plain\n\nnope";
        assert!(parse(b, false, false).is_none());
        let (r, _) = parse(b, false, true).expect("close-framed");
        assert_eq!((r.status, r.text().as_str()), (404, "nope"));
        let b = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n";
        assert_eq!(parse(b, true, false).expect("head").0.body.len(), 0);
    }

    #[test]
    fn strict_status_helpers() {
        assert_eq!(status(b"HTTP/1.1 431 Too Large\r\n"), Some(431));
        assert_eq!(status(b"HTTP/1.1 abc oops\r\n"), None);
        assert_eq!(
            statuses(b"HTTP/1.1 200 OK\r\n\r\nHTTP/1.1 400 B\r\n\r\n"),
            vec![200, 400]
        );
        assert_eq!(show(b""), "no bytes (connection closed)");
    }
}
