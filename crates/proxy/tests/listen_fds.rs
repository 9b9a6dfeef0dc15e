//! Inherited listeners (`NS_METADATA_SPAWNER_LISTEN_FDS`, the spawner's `restart` by socket
//! takeover), with the real binary: served when the spawner's rules hold; refused with one
//! line outside the spawner, for a socket that is not listening, for one bound to another
//! address than the `--bind`s, and (as root) for one of another network namespace.

use std::io::Read as _;
use std::os::fd::OwnedFd;
use std::time::Duration;

use ns_contract::spawn::{LISTEN_FDS_ENV, STATE_ENV};
use ns_testkit::bin_path;

/// The proxy started the spawner's way (posix_spawn, fds mapped) with `sock` on fd 6 named
/// in the variable, `--bind bind`, stderr and the ready fd on pipes; `marker` adds the
/// spawner's state-dir marker. Returns (READY seen, stderr) once the process exited or was
/// ready (then `while_ready` runs and it is stopped with SIGTERM).
fn run(sock: OwnedFd, bind: &str, marker: bool, while_ready: impl FnOnce()) -> (bool, String) {
    let dir = ns_testkit::TempDir::new("lfd");
    let (err_r, err_w) = nix::unistd::pipe().expect("pipe");
    let (ready_r, ready_w) = nix::unistd::pipe().expect("pipe");
    let mut cmd = ns_netns::Spawn::new(bin_path("ns-metadata-proxy"));
    cmd.args([
        "--router-id",
        "r1",
        "--metadata-proxy-socket",
        dir.join("agent.sock").to_str().expect("utf-8"),
        "--bind",
        bind,
        "--ready-fd",
        "3",
    ]);
    cmd.env("PATH", "/usr/bin:/bin");
    cmd.env(LISTEN_FDS_ENV, "6");
    if marker {
        cmd.env(STATE_ENV, dir.path());
    }
    cmd.fd(err_w, 2).fd(ready_w, 3).fd(sock, 6);
    let child = cmd.spawn().expect("spawn");
    let mut ready = String::new();
    let _ = std::fs::File::from(ready_r).read_to_string(&mut ready);
    let is_ready = ready.contains("READY=1");
    if is_ready {
        while_ready();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let mut err = String::new();
    let _ = std::fs::File::from(err_r).read_to_string(&mut err);
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child.pid as i32), None);
    (is_ready, err)
}

fn listener() -> (OwnedFd, u16) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    (OwnedFd::from(l), port)
}

/// The last line of stderr (the proxy's error), which must be the only error line.
fn error_line(err: &str) -> String {
    let lines: Vec<&str> = err.lines().filter(|l| l.contains(LISTEN_FDS_ENV)).collect();
    assert_eq!(lines.len(), 1, "one error line: {err}");
    lines[0].to_owned()
}

#[test]
fn an_inherited_listener_is_served() {
    let (sock, port) = listener();
    let mut answer = None;
    let (ready, err) = run(sock, &format!("127.0.0.1:{port}"), true, || {
        answer = get(port);
    });
    assert!(ready, "READY on the inherited socket: {err}");
    assert!(!err.contains(LISTEN_FDS_ENV), "{err}");
    // No agent: the proxy's own 503 proves it accepted on the inherited socket.
    assert_eq!(
        answer.as_deref(),
        Some("HTTP/1.1 503 Service Unavailable"),
        "{err}"
    );
}

fn get(port: u16) -> Option<String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut c = ns_testkit::http::Blocking::tcp(addr, Duration::from_secs(5)).ok()?;
    c.send(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    c.read(true, Duration::from_secs(10))
        .and_then(|r| r.head.lines().next().map(str::to_owned))
}

#[test]
fn refused_outside_the_spawner() {
    let (sock, port) = listener();
    let (ready, err) = run(sock, &format!("127.0.0.1:{port}"), false, || {});
    assert!(!ready);
    let line = error_line(&err);
    assert!(line.contains("internal to ns-metadata-spawner"), "{line}");
}

#[test]
fn a_socket_that_does_not_listen_is_refused() {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let port = s.local_addr().expect("addr").port();
    let (ready, err) = run(OwnedFd::from(s), &format!("127.0.0.1:{port}"), true, || {});
    assert!(!ready);
    let line = error_line(&err);
    assert!(line.contains("fd 6: not a listening TCP socket"), "{line}");
    // A connected (not listening) TCP socket too.
    let (l, port) = listener();
    let c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let (ready, err) = run(OwnedFd::from(c), &format!("127.0.0.1:{port}"), true, || {});
    assert!(!ready);
    assert!(
        error_line(&err).contains("not a listening TCP socket"),
        "{err}"
    );
    drop(l);
}

#[test]
fn a_listener_on_another_address_is_refused() {
    let (sock, port) = listener();
    let other = port.wrapping_add(1).max(1024);
    let (ready, err) = run(sock, &format!("127.0.0.1:{other}"), true, || {});
    assert!(!ready);
    let line = error_line(&err);
    assert!(
        line.contains(&format!(
            "fd 6: bound to 127.0.0.1:{port}, which is not one of the --bind addresses"
        )),
        "{line}"
    );
}

#[test]
fn a_listener_of_another_namespace_is_refused() {
    if !ns_testkit::require_root("a_listener_of_another_namespace_is_refused") {
        return;
    }
    let ns = ns_testkit::netns::TestNs::new(&format!("{}lfd", ns_testkit::netns::unique_prefix()))
        .expect("namespace");
    let l = ns
        .netns()
        .run(|| std::net::TcpListener::bind("0.0.0.0:0"))
        .expect("enter")
        .expect("bind there");
    let port = l.local_addr().expect("addr").port();
    let (ready, err) = run(OwnedFd::from(l), &format!("0.0.0.0:{port}"), true, || {});
    assert!(!ready);
    let line = error_line(&err);
    assert!(
        line.contains(&format!(
            "fd 6: 0.0.0.0:{port} belongs to another network namespace"
        )),
        "{line}"
    );
}
