//! The relay against a plain keep-alive HTTP/1.1 agent (nginx on a Unix socket): a server that
//! keeps connections open without advertising reuse (`X-NS-Metadata-Keepalive`), the agent
//! shape of issue 19's bench. Loopback, no root. Every request must get its whole answer
//! without waiting for the agent to close, and no agent connection may be left open unless
//! the mode pools it. nginx's access log (`$connection $connection_requests
//! "$http_connection"`) shows what reached it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Client, Proxy, TempDir};
use ns_testkit::{eventually, require, ChildGuard};

/// The body nginx answers: the identity headers it got, so the test sees the relay's rewrite.
const ANSWER: &str = "$http_x_neutron_router_id $http_x_forwarded_for\\n";
/// Far longer than the test: a request that waited for nginx to close would hang (and the
/// client's 20 s read timeout would fail the test) instead of passing by luck.
const NGINX_IDLE: &str = "300s";

/// Debian's nginx.
const NGINX: &str = "/usr/sbin/nginx";

struct Nginx {
    _child: ChildGuard,
    socket: PathBuf,
    log: PathBuf,
}

impl Nginx {
    /// nginx in the foreground, one process, on `dir/agent.sock`; `None` (skipped) if
    /// nginx is not installed.
    fn start(test: &str, dir: &Path) -> Option<Nginx> {
        if !require(test, Path::new(NGINX).exists(), "nginx (apt install nginx)") {
            return None;
        }
        let socket = dir.join("agent.sock");
        let log = dir.join("access.log");
        let d = dir.display();
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n\
               log_format conns '$connection $connection_requests \"$http_connection\"';\n\
               access_log {d}/access.log conns;\n\
               client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;\n\
               uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n\
               keepalive_timeout {NGINX_IDLE};\n\
               server {{\n\
                 listen unix:{socket};\n\
                 default_type text/plain;\n\
                 location / {{ return 200 \"{ANSWER}\"; }}\n\
               }}\n\
             }}\n",
            socket = socket.display(),
        );
        std::fs::write(dir.join("nginx.conf"), conf).expect("write nginx.conf");
        std::fs::create_dir_all(dir.join("tmp")).expect("nginx tmp dir");
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nginx");
        let child = ChildGuard(child);
        eventually("nginx listening", Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&socket)
                .ok()
                .map(|_| ())
        });
        Some(Nginx {
            _child: child,
            socket,
            log,
        })
    }

    /// nginx's access lines so far: (connection serial, requests on it, Connection header).
    fn lines(&self) -> Vec<(u64, u64, String)> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .map(|l| {
                let mut f = l.splitn(3, ' ');
                let n = |s: Option<&str>| s.and_then(|s| s.parse().ok()).expect("number");
                let conn = n(f.next());
                let reqs = n(f.next());
                (
                    conn,
                    reqs,
                    f.next().unwrap_or("").trim_matches('"').to_owned(),
                )
            })
            .collect()
    }

    /// Connections open on nginx's side of its socket (`ss -x`).
    fn open_connections(&self) -> usize {
        let out = Command::new("ss")
            .args(["-xH", "state", "connected", "src"])
            .arg(&self.socket)
            .output()
            .expect("ss");
        String::from_utf8_lossy(&out.stdout).lines().count()
    }
}

/// `clients` keep-alive client connections at once, `each` requests in turn on each; every
/// answer is checked whole.
async fn load(p: &Proxy, clients: usize, each: usize) {
    let mut tasks = Vec::new();
    for i in 0..clients {
        let addr = p.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = Client::tcp(addr).await;
            for j in 0..each {
                c.send(format!("GET /latest/{i}/{j} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                    .await;
                let r = c.read(false).await.expect("an answer");
                assert_eq!(r.status, 200, "request {i}/{j}");
                assert_eq!(r.text(), "r-0001 127.0.0.1\n", "request {i}/{j}");
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
}

/// `off` and `auto` (nginx advertises nothing): one agent connection per request, and nginx
/// closes it once the answer is out, asked to by `Connection: close`. `off` asks every time;
/// `auto` sends its first request without (nginx keeps that connection open, for 300 s, so
/// the proxy ends that exchange at the end of the `Content-Length` body and closes it
/// itself), sees that nginx's answer advertises no reuse, and asks it to close from then on
/// (issue 19: leaving each connection to the proxy cost nginx 1.35x its CPU per request).
#[tokio::test]
async fn one_request_per_connection_closed_after_the_answer() {
    for (mode, first) in [("off", "close"), ("auto", "-")] {
        let dir = TempDir::new("nginx");
        let test = format!("one_request_per_connection_closed_after_the_answer ({mode})");
        let Some(nginx) = Nginx::start(&test, dir.path()) else {
            return;
        };
        let p = Proxy::start(&nginx.socket, "127.0.0.1:0", &["--agent-keepalive", mode]);
        // One request alone first (auto's probe), then 40 from 8 connections at once.
        load(&p, 1, 1).await;
        load(&p, 8, 5).await;
        let lines = eventually("41 nginx access lines", Duration::from_secs(10), || {
            let l = nginx.lines();
            (l.len() >= 41).then_some(l)
        });
        assert_eq!(lines.len(), 41, "{mode}: {lines:?}");
        let mut conns: Vec<u64> = lines.iter().map(|l| l.0).collect();
        conns.sort_unstable();
        conns.dedup();
        assert_eq!(conns.len(), 41, "{mode}: one connection per request");
        for (i, (_, reqs, connection)) in lines.iter().enumerate() {
            assert_eq!(*reqs, 1, "{mode}: one request per connection");
            let sent = if i == 0 { first } else { "close" };
            assert_eq!(connection, sent, "{mode}: Connection header of request {i}");
        }
        let open = eventually("no agent connection open", Duration::from_secs(10), || {
            let n = nginx.open_connections();
            (n == 0).then_some(n)
        });
        assert_eq!(open, 0, "{mode}");
        assert_eq!(p.shared.agent.idle(), 0, "{mode}: nothing pooled");
    }
}

/// `on`: the proxy pools nginx's connections (HTTP/1.1, no `close`, a known length), so the
/// same requests take far fewer agent connections, each serving several requests.
#[tokio::test]
async fn on_reuses_nginx_connections() {
    let dir = TempDir::new("nginx");
    let Some(nginx) = Nginx::start("on_reuses_nginx_connections", dir.path()) else {
        return;
    };
    let p = Proxy::start(&nginx.socket, "127.0.0.1:0", &["--agent-keepalive", "on"]);
    load(&p, 1, 20).await;
    let lines = eventually("20 nginx access lines", Duration::from_secs(10), || {
        let l = nginx.lines();
        (l.len() >= 20).then_some(l)
    });
    assert!(
        lines.iter().all(|l| l.2 == "-"),
        "no Connection: close: {lines:?}"
    );
    assert_eq!(
        lines.iter().map(|l| l.1).max(),
        Some(20),
        "all 20 on one connection: {lines:?}"
    );
}
