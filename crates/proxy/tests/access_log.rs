//! The access line (issue "the operator's view"): what haproxy's `httplog` gives operators,
//! values printed plainly: client address and port, method, path, HTTP version, status,
//! bytes, the request/agent/total timers, how it ended, and an agent failure's reason on the
//! same line as its 5xx.

use std::io::{Read as _, Write as _};
use std::process::{Command, Stdio};
use std::time::Duration;

use ns_testkit::agent::{Behave, StandIn};
use ns_testkit::http::free_port;
use ns_testkit::{bin_path, wait_until, ChildGuard, TempDir};

/// Send `req` to 127.0.0.1:`port` and read the answer to EOF.
fn ask(port: u16, req: &str) -> String {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    c.write_all(req.as_bytes()).expect("send");
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    out
}

/// The access lines of a proxy on `socket` after `requests`.
fn access_lines(socket: &std::path::Path, requests: &[&str]) -> Vec<String> {
    let port = free_port();
    let (r, w) = nix::unistd::pipe().expect("pipe");
    let child = Command::new(bin_path("ns-metadata-proxy"))
        .args([
            "--router-id",
            "acc-r1",
            "--bind",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--metadata-proxy-socket")
        .arg(socket)
        .stderr(Stdio::from(w))
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn proxy");
    let mut guard = ChildGuard(child);
    assert!(wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));
    for q in requests {
        ask(port, q);
    }
    guard.signal("TERM");
    let _ = guard.0.wait();
    let mut text = String::new();
    std::fs::File::from(r)
        .read_to_string(&mut text)
        .expect("read");
    text.lines()
        .filter(|l| l.contains(" access: "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn access_lines_carry_httplogs_fields_plainly() {
    let dir = TempDir::new("access");
    let sock = dir.path().join("agent.sock");
    let _agent = StandIn::start_at(sock.clone(), Behave::Headers);
    let lines = access_lines(
        &sock,
        &[
            "GET /latest/meta-data/?x=1 HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n",
            "GET /a HTTP/1.0\r\n\r\n",
            "BROKEN\r\n\r\n",
        ],
    );
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let ok = &lines[0];
    for f in [
        "client=127.0.0.1 client_port=",
        " method=GET path=/latest/meta-data/?x=1 http=1.1 status=200 bytes=",
        " request_us=",
        " agent_us=",
        " duration_us=",
        " term=agent id=acc-r1",
    ] {
        assert!(ok.contains(f), "{f:?} in {ok}");
    }
    assert!(
        !ok.contains("Some(") && !ok.contains('"'),
        "plain values: {ok}"
    );
    assert!(lines[1].contains("http=1.0 status=200"), "{}", lines[1]);
    assert!(
        lines[2].contains("status=400") && lines[2].contains("term=proxy"),
        "{}",
        lines[2]
    );
}

#[test]
fn an_agent_failure_names_its_reason_on_the_5xx_line() {
    let dir = TempDir::new("access-503");
    let lines = access_lines(
        &dir.path().join("missing.sock"),
        &["GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"],
    );
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let l = &lines[0];
    assert!(
        l.contains("status=503") && l.contains("term=agent_unavailable"),
        "{l}"
    );
    assert!(l.contains("reason=agent unavailable: "), "{l}");
}
