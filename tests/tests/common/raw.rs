//! Harness of the hostile-input tests: the real `ns-metadata-proxy` on loopback in front of
//! ns-testkit's agent stand-in in its hostile mode, and the kit's raw client, which sends exact
//! bytes and reads whatever comes back. No root needed.
#![allow(dead_code)]

use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

pub use ns_testkit::agent::{Behave, StandIn};
use ns_testkit::http::Blocking;
pub use ns_testkit::http::{show, status, statuses};

use ns_e2e::TempDir;
use ns_e2e::{bin_path, unique_prefix, wait_until, ChildGuard};

/// The real proxy on 127.0.0.1 with its agent stand-in; killed (by pid) on drop.
pub struct Proxy {
    pub child: ChildGuard,
    pub port: u16,
    pub log: PathBuf,
    pub agent: StandIn,
    pub dir: TempDir,
}

impl Proxy {
    /// Start `ns-metadata-proxy --router-id ... --bind 127.0.0.1:PORT` plus `extra` flags.
    pub fn start(test: &str, extra: &[&str]) -> Proxy {
        Proxy::start_limited(test, None, extra)
    }

    /// [`Proxy::start`] under `prlimit --nofile=N:N` (prlimit execs it: same pid).
    pub fn start_limited(test: &str, nofile: Option<u32>, extra: &[&str]) -> Proxy {
        Proxy::start_behaving(test, nofile, Behave::Hostile, extra)
    }

    /// [`Proxy::start_limited`] in front of a stand-in that behaves as `behave`.
    pub fn start_behaving(
        test: &str,
        nofile: Option<u32>,
        behave: Behave,
        extra: &[&str],
    ) -> Proxy {
        let dir = TempDir::new(&format!("{}-{test}", unique_prefix()));
        let agent = StandIn::start_at(dir.path().join("agent.sock"), behave);
        let log = dir.path().join("proxy.log");
        let port = ns_testkit::http::free_port();
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
            .arg(&agent.path)
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
    let stream = s.try_clone().expect("dup the client socket");
    Blocking::new(stream).read_until_closed(wait)
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
