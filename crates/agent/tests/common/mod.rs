//! Shared test helpers: a temp dir guard, an in-process agent, a raw HTTP/1.1 client over
//! the Unix socket, and a Nova stand-in that checks the signature as Nova does.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use ns_metadata_agent::{Cli, Config};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("nsagent-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Replace a file atomically (write + rename), as a careful operator or tool would.
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename into place");
}

/// Poll until `f` is true or `timeout` passes.
pub async fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

/// The quickstart-like inventory used by most tests: router r1 with networks n1 and n2.
pub const INVENTORY: &str = r##"{
  "networks": [
    {"id": "n1", "name": "private", "project_id": "p1", "subnets": [
      {"id": "s1", "cidr": "10.250.41.0/24", "gateway_ip": "10.250.41.1", "enable_dhcp": true, "ip_version": 4}]},
    {"id": "n2", "subnets": [{"id": "s2", "cidr": "10.250.42.0/24", "gateway_ip": "10.250.42.1"}]}
  ],
  "ports": [
    {"id": "rp1", "network_id": "n1", "device_id": "r1", "device_owner": "network:router_interface",
     "fixed_ips": [{"subnet_id": "s1", "ip_address": "10.250.41.1"}]},
    {"id": "rp2", "network_id": "n2", "device_id": "r1", "device_owner": "network:router_interface",
     "fixed_ips": [{"subnet_id": "s2", "ip_address": "10.250.42.1"}]},
    {"id": "vp1", "network_id": "n1", "device_id": "vm-uuid-1", "device_owner": "compute:nova",
     "mac_address": "fa:16:3e:00:00:02", "project_id": "p1",
     "fixed_ips": [{"subnet_id": "s1", "ip_address": "10.250.41.2"}]},
    {"id": "vp2", "network_id": "n2", "device_id": "vm-uuid-2", "device_owner": "compute:nova",
     "project_id": "p2", "fixed_ips": [{"subnet_id": "s2", "ip_address": "10.250.42.2"}]}
  ],
  "instances": [
    {"uuid": "vm-uuid-1", "name": "vm1", "hostname": "vm1", "project_id": "p1", "availability_zone": "nova",
     "launch_index": 0, "flavor": "m1.small", "public_keys": {"demo": "ssh-ed25519 AAAAC3Nz demo@example"},
     "user_data": "#cloud-config\nfqdn: vm1.example\n", "meta": {"role": "web"}},
    {"uuid": "vm-uuid-2", "name": "vm2", "hostname": "vm2", "project_id": "p2"}
  ]
}"##;

/// An agent running inside the test's runtime; stopped (socket removed) on `stop`.
pub struct RunningAgent {
    pub socket: PathBuf,
    pub inventory: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<ns_metadata_agent::Result<()>>>,
}

impl RunningAgent {
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("agent task").expect("agent ran cleanly");
        }
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Test defaults: socket and inventory in `dir`, inventory polled every second.
pub fn config(dir: &TempDir, inventory: &str) -> Config {
    let inv = dir.path("inventory.json");
    write_atomic(&inv, inventory);
    let mut cfg = Config::for_test(&dir.path("agent.sock"), &inv);
    cfg.inventory_poll_interval = Duration::from_millis(100);
    cfg
}

/// Resolve a config from flags as the binary would (for option combinations).
pub fn config_from(cli: Cli) -> Config {
    ns_metadata_agent::config::resolve(&cli, &ns_ini::Ini::default()).expect("valid test config")
}

/// Start the agent and wait until its socket accepts connections.
pub async fn start(cfg: Config) -> RunningAgent {
    let socket = cfg.metadata_proxy_socket.clone();
    let inventory = cfg.inventory_file.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(ns_metadata_agent::run(cfg, async move {
        let _ = rx.await;
    }));
    let end = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&socket).await.is_err() {
        assert!(
            Instant::now() < end,
            "agent did not start listening on {}",
            socket.display()
        );
        assert!(!task.is_finished(), "agent exited early");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    RunningAgent {
        socket,
        inventory,
        stop: Some(tx),
        task: Some(task),
    }
}

/// A parsed response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Read one response (Content-Length framed, as the agent always answers) from `s`.
pub async fn read_reply(s: &mut UnixStream) -> Option<Reply> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Reply {
        status,
        headers,
        body,
    })
}

/// Send raw bytes on a new connection and read one reply.
pub async fn raw(socket: &Path, request: &str) -> Reply {
    let mut s = UnixStream::connect(socket).await.expect("connect to agent");
    s.write_all(request.as_bytes())
        .await
        .expect("write request");
    read_reply(&mut s).await.expect("a reply")
}

/// A GET as a proxy sends it: XFF plus one identity header.
pub fn get(path: &str, xff: &str, id_header: &str, id: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\nX-Forwarded-For: {xff}\r\n{id_header}: {id}\r\n\r\n")
}

/// What the Nova stand-in saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Nova's check (nova/api/metadata/handler.py `_validate_shared_secret`), done independently
/// of the agent's code: HMAC-SHA256 keyed by the secret over the instance id, hex.
pub fn nova_signature_ok(secret: &str, instance_id: &str, signature: &str) -> bool {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(instance_id.as_bytes());
    let Ok(sig) = hex::decode(signature) else {
        return false;
    };
    signature.chars().all(|c| !c.is_ascii_uppercase()) && mac.verify_slice(&sig).is_ok()
}

/// gzip of "hi\n" (as `printf 'hi\n' | gzip -n` writes it).
pub const GZIP_BODY: &[u8] = &[
    0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0xcb, 0xc8, 0xe4, 0x02, 0x00, 0x7a,
    0x7a, 0x6f, 0xed, 0x03, 0x00, 0x00, 0x00,
];

/// A Nova metadata API stand-in on 127.0.0.1: 400 without the headers, 403 on a bad
/// signature (as Nova), `/status/NNN` answers NNN, anything else 200 with the instance id.
pub struct NovaStandIn {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for NovaStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn nova_answer(
    secret: Arc<String>,
    seen: Arc<Mutex<Vec<Seen>>>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let s = Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers,
        body: body.to_vec(),
    };
    seen.lock().expect("lock").push(s.clone());
    let reply = |code: u16, ct: &str, text: String| {
        let mut r = Response::new(Full::new(Bytes::from(text)));
        *r.status_mut() = StatusCode::from_u16(code).expect("status");
        r.headers_mut()
            .insert("content-type", ct.parse().expect("ct"));
        r.headers_mut()
            .insert("x-nova-test", "relayed".parse().expect("hv"));
        r
    };
    let (Some(id), Some(sig), Some(_tenant)) = (
        s.header("x-instance-id"),
        s.header("x-instance-id-signature"),
        s.header("x-tenant-id"),
    ) else {
        return reply(400, "text/plain", "missing headers".into());
    };
    if !nova_signature_ok(&secret, id, sig) {
        return reply(403, "text/plain", "Invalid proxy request signature.".into());
    }
    if parts.uri.path() == "/gzip" {
        // Already-compressed user data (LP#2156587): must reach the VM byte for byte.
        let mut r = reply(200, "application/octet-stream", String::new());
        *r.body_mut() = Full::new(Bytes::from_static(GZIP_BODY));
        r.headers_mut()
            .insert("content-encoding", "gzip".parse().expect("hv"));
        return r;
    }
    if let Some(code) = parts.uri.path().strip_prefix("/status/") {
        return reply(
            code.parse().unwrap_or(500),
            "text/plain",
            format!("status {code}"),
        );
    }
    reply(200, "application/json", format!("{{\"uuid\": \"{id}\"}}"))
}

impl NovaStandIn {
    /// Plain HTTP.
    pub async fn start(secret: &str) -> NovaStandIn {
        Self::start_tls(secret, None).await
    }

    /// HTTPS when `tls` is given.
    pub async fn start_tls(secret: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> NovaStandIn {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind nova stand-in");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let secret = Arc::new(secret.to_owned());
        let (seen2, secret2) = (seen.clone(), secret.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (seen, secret, tls) = (seen2.clone(), secret2.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let (seen, secret) = (seen.clone(), secret.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(nova_answer(secret, seen, req).await)
                        }
                    });
                    let builder = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acc) => {
                            if let Ok(stream) = acc.accept(tcp).await {
                                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                    }
                });
            }
        });
        NovaStandIn { addr, seen, task }
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .expect("lock")
            .last()
            .cloned()
            .expect("nova saw a request")
    }
}

/// Fail when CI=true, else print the skip line.
pub fn skip(test: &str, why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {why} (a skip is a failure when CI=true)");
    }
    eprintln!("SKIP {test}: {why}");
}
