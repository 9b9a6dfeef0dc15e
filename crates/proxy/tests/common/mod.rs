//! Test helpers: an agent stand-in on a temp Unix socket, the proxy served in-process on
//! loopback, and a raw HTTP/1.1 client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use ns_metadata_proxy::{bind, server, Args, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener};
use tokio::sync::oneshot;

/// A temp directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "nsmp-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("mkdir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How the stand-in agent behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behave {
    /// Answer 200 with the raw request as body; `keepalive`: serve more requests on the
    /// connection and send `X-NS-Metadata-Keepalive: <s>` when `Some(s)`; `reuse`: keep
    /// the connection without advertising.
    Echo { advertise: Option<u64>, reuse: bool },
    /// Read the request, close without a reply.
    CloseNoReply,
    /// Read the request, never answer.
    Slow,
    /// Answer the first request on a connection (advertising keep-alive), then read the
    /// second and close without a reply.
    DropSecond,
    /// Echo after this many milliseconds.
    Delay(u64),
    /// Echo in three writes a few milliseconds apart: part of the head, the rest of the
    /// head with part of the body, the rest of the body; then close.
    Split,
}

/// Counters the tests assert on.
#[derive(Debug, Default)]
pub struct Seen {
    pub connections: AtomicUsize,
    pub requests: Mutex<Vec<Vec<u8>>>,
    /// For each request: did the first read hold all of it (single write)?
    pub whole_in_first_read: Mutex<Vec<bool>>,
}

pub struct StandIn {
    pub path: PathBuf,
    pub seen: Arc<Seen>,
    _dir: TempDir,
}

/// Read one request: head plus Content-Length body. `None` on EOF first.
async fn read_request(s: &mut tokio::net::UnixStream, seen: &Seen) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut first_len = None;
    loop {
        let mut tmp = [0u8; 8192];
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        first_len.get_or_insert(n);
        buf.extend_from_slice(&tmp[..n]);
        let mut h = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Request::new(&mut h);
        if let Ok(httparse::Status::Complete(len)) = r.parse(&buf) {
            let cl = content_length(r.headers).unwrap_or(0);
            if buf.len() >= len + cl {
                seen.whole_in_first_read
                    .lock()
                    .expect("lock")
                    .push(first_len == Some(buf.len()));
                seen.requests.lock().expect("lock").push(buf.clone());
                return Some(buf);
            }
        }
    }
}

fn echo_reply(req: &[u8], advertise: Option<u64>) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n",
        req.len()
    );
    if let Some(s) = advertise {
        out.push_str(&format!(
            "X-NS-Metadata-Keepalive: {s}\r\nx-ns-metadata-keepalive: {s}\r\n"
        ));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(req);
    out
}

impl StandIn {
    pub fn start(b: Behave) -> StandIn {
        let dir = TempDir::new("agent");
        let path = dir.path().join("agent.sock");
        let l = UnixListener::bind(&path).expect("bind agent socket");
        let seen = Arc::new(Seen::default());
        let s2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                s2.connections.fetch_add(1, Ordering::SeqCst);
                let seen = s2.clone();
                tokio::spawn(async move {
                    let mut n = 0;
                    while let Some(req) = read_request(&mut s, &seen).await {
                        n += 1;
                        match b {
                            Behave::Echo { advertise, reuse } => {
                                let _ = s.write_all(&echo_reply(&req, advertise)).await;
                                if advertise.is_none() && !reuse {
                                    return;
                                }
                            }
                            Behave::CloseNoReply => return,
                            Behave::Slow => {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                            }
                            Behave::Delay(ms) => {
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                                let _ = s.write_all(&echo_reply(&req, None)).await;
                                return;
                            }
                            Behave::Split => {
                                let r = echo_reply(&req, None);
                                let (a, b) = (10, r.len() - req.len() / 2);
                                for part in [&r[..a], &r[a..b], &r[b..]] {
                                    let _ = s.write_all(part).await;
                                    tokio::time::sleep(Duration::from_millis(3)).await;
                                }
                                return;
                            }
                            Behave::DropSecond => {
                                if n >= 2 {
                                    return;
                                }
                                let _ = s.write_all(&echo_reply(&req, Some(10))).await;
                            }
                        }
                    }
                });
            }
        });
        StandIn {
            path,
            seen,
            _dir: dir,
        }
    }

    pub fn connections(&self) -> usize {
        self.seen.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<String> {
        self.seen
            .requests
            .lock()
            .expect("lock")
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect()
    }
}

/// A proxy served in this test's runtime; stops on drop.
pub struct Proxy {
    pub addr: SocketAddr,
    pub shared: Arc<server::Shared>,
    stop: Option<oneshot::Sender<()>>,
    pub done: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// `args`: extra command-line flags; binds `bind` (port 0) and uses `socket`.
    pub fn start(socket: &Path, bind_addr: &str, args: &[&str]) -> Proxy {
        let id: &[&str] = if args.iter().any(|a| a.ends_with("-id")) {
            &[]
        } else {
            &["--router-id", "r-0001"]
        };
        let mut argv = vec!["ns-metadata-proxy".to_owned()];
        argv.extend(id.iter().map(|s| s.to_string()));
        argv.extend([
            "--metadata-proxy-socket".to_owned(),
            socket.display().to_string(),
        ]);
        argv.extend(args.iter().map(|s| s.to_string()));
        let cfg = Config::from_args(Args::try_parse_from(argv).expect("args")).expect("config");
        let std_l = bind::bind_all(&[bind_addr.parse().expect("bind spec")]).expect("bind");
        let addr = std_l[0].local_addr().expect("addr");
        let l = tokio::net::TcpListener::from_std(std_l.into_iter().next().expect("one"))
            .expect("tokio listener");
        let shared = Arc::new(server::Shared::new(&cfg));
        let (tx, rx) = oneshot::channel::<()>();
        let done = tokio::spawn(server::serve(
            shared.clone(),
            vec![l],
            cfg.max_connections,
            async move {
                let _ = rx.await;
            },
            Duration::from_secs(2),
        ));
        Proxy {
            addr,
            shared,
            stop: Some(tx),
            done: Some(done),
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(d) = self.done.take() {
            let _ = d.await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A parsed response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// A client connection with its read buffer.
pub struct Client {
    pub s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Client {
            s: TcpStream::connect(addr).await.expect("connect proxy"),
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, raw: &[u8]) {
        self.s.write_all(raw).await.expect("send");
    }

    /// Read one response (`head_only` for HEAD). `None` if the connection closed first.
    pub async fn read(&mut self, head_only: bool) -> Option<Resp> {
        loop {
            let mut h = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut h);
            if let Ok(httparse::Status::Complete(len)) = r.parse(&self.buf) {
                let status = r.code.expect("code");
                let cl = content_length(r.headers);
                let body_len = if head_only { 0 } else { cl.unwrap_or(0) };
                if self.buf.len() >= len + body_len {
                    let head = String::from_utf8_lossy(&self.buf[..len]).into_owned();
                    let body = self.buf[len..len + body_len].to_vec();
                    self.buf.drain(..len + body_len);
                    return Some(Resp { status, head, body });
                }
            }
            let mut tmp = [0u8; 8192];
            let n = tokio::time::timeout(Duration::from_secs(10), self.s.read(&mut tmp))
                .await
                .expect("response within 10 s")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    /// True if the proxy closed the connection (EOF) within 10 s.
    pub async fn closed(&mut self) -> bool {
        let mut tmp = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), self.s.read(&mut tmp)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// One request on a fresh connection.
pub async fn request(addr: SocketAddr, raw: &[u8]) -> Option<Resp> {
    let mut c = Client::connect(addr).await;
    c.send(raw).await;
    c.read(raw.starts_with(b"HEAD ")).await
}

/// The Content-Length of a parsed head, if present and a number.
fn content_length(headers: &[httparse::Header<'_>]) -> Option<usize> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
}
