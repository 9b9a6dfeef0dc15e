//! Serving threads (`--threads`, issue #19), with the real binary on loopback: an idle proxy
//! is one thread; with 8 connections open a second serving thread starts and answers; once
//! the proxy is idle again it ends. `--threads 1` never starts one.

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Behave, StandIn};
use ns_metadata_proxy::workers::START_AT;
use ns_testkit::http::free_port;
use ns_testkit::{bin_path, eventually, wait_until, ChildGuard};

const ECHO: Behave = Behave::Echo {
    advertise: None,
    reuse: false,
};

/// The proxy on `127.0.0.1:port` in front of `agent`, with `args`.
fn proxy(agent: &StandIn, port: u16, args: &[&str]) -> ChildGuard {
    let child = Command::new(bin_path("ns-metadata-proxy"))
        .args(["--router-id", "r-threads", "--bind"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--metadata-proxy-socket")
        .arg(agent.path())
        .args(args)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn proxy");
    let guard = ChildGuard(child);
    assert!(
        wait_until(Duration::from_secs(10), || TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "the proxy listens"
    );
    guard
}

/// The names of the proxy's threads (`/proc/PID/task/*/comm`).
fn threads(pid: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|c| c.trim().to_owned())
        .collect()
}

fn serving_threads(pid: u32) -> usize {
    threads(pid)
        .iter()
        .filter(|n| n.starts_with("serve-"))
        .count()
}

/// `n` keep-alive connections, each with one request answered 200.
fn open_and_ask(port: u16, n: usize) -> Vec<TcpStream> {
    (0..n).map(|_| ask(connect(port))).collect()
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s
}

/// One request on `s` (kept open), answered 200.
fn ask(mut s: TcpStream) -> TcpStream {
    s.write_all(b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n")
        .expect("send");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // The stand-in echoes the request: the answer's end is the request's blank line.
    while !String::from_utf8_lossy(&got).contains("\r\n\r\nGET") || !got.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut buf).expect("read the answer");
        assert!(
            n > 0,
            "closed before the answer: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    s
}

#[test]
fn a_busy_proxy_starts_a_second_thread_that_serves_and_ends_when_idle() {
    let agent = StandIn::start(ECHO);
    let port = free_port();
    let p = proxy(&agent, port, &["--threads", "2"]);
    let pid = p.0.id();
    assert_eq!(
        serving_threads(pid),
        0,
        "idle: the main thread only: {:?}",
        threads(pid)
    );

    // Below START_AT open connections: still one thread.
    let mut open = open_and_ask(port, START_AT - 1);
    assert_eq!(serving_threads(pid), 0, "{:?}", threads(pid));
    // At START_AT open on the main thread, the next connection starts the second thread,
    // and the following ones are answered there too (balanced by connections open).
    open.extend(open_and_ask(port, START_AT + 2));
    assert_eq!(serving_threads(pid), 1, "{:?}", threads(pid));
    // Every connection, on either thread, keeps being served.
    open = open.into_iter().map(ask).collect();

    // Idle again (no connection open, none accepted for a while): the helper ends.
    drop(open);
    eventually(
        "the second serving thread ends once the proxy is idle",
        Duration::from_secs(20),
        || (serving_threads(pid) == 0).then_some(()),
    );
    // Busy again: a new one.
    let again = open_and_ask(port, START_AT + 1);
    assert_eq!(serving_threads(pid), 1, "{:?}", threads(pid));
    drop(again);
}

#[test]
fn one_thread_allowed_serves_everything_on_it() {
    let agent = StandIn::start(ECHO);
    let port = free_port();
    let p = proxy(&agent, port, &["--threads", "1"]);
    let pid = p.0.id();
    let open = open_and_ask(port, 3 * START_AT);
    assert_eq!(serving_threads(pid), 0, "{:?}", threads(pid));
    drop(open);
}

#[test]
fn a_bad_thread_count_names_the_option() {
    for bad in ["0", "17", "two"] {
        let out = Command::new(bin_path("ns-metadata-proxy"))
            .args(["--router-id", "r-threads", "--threads", bad])
            .output()
            .expect("run proxy");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains("threads") && err.contains(bad), "{bad}: {err}");
    }
}
