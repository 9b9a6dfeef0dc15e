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

/// The command for a proxy `id` on 127.0.0.1:`port` for the agent at `socket`, with `extra`
/// arguments and its stderr to `stderr`.
fn proxy_command(
    id: &str,
    port: u16,
    socket: &std::path::Path,
    extra: &[&std::ffi::OsStr],
    stderr: Stdio,
) -> Command {
    let mut cmd = Command::new(bin_path("ns-metadata-proxy"));
    cmd.args(["--router-id", id, "--bind", &format!("127.0.0.1:{port}")])
        .arg("--metadata-proxy-socket")
        .arg(socket)
        .args(extra)
        .stderr(stderr)
        .stdout(Stdio::null());
    cmd
}

/// That proxy, started.
fn proxy(
    id: &str,
    port: u16,
    socket: &std::path::Path,
    extra: &[&std::ffi::OsStr],
    stderr: Stdio,
) -> ChildGuard {
    ChildGuard(
        proxy_command(id, port, socket, extra, stderr)
            .spawn()
            .expect("spawn proxy"),
    )
}

/// Everything a proxy on `socket` wrote to stderr after `requests`, until SIGTERM, with
/// `RUST_LOG` set to `rust_log` if given.
fn stderr_after(socket: &std::path::Path, rust_log: Option<&str>, requests: &[&str]) -> String {
    let port = free_port();
    let (r, w) = nix::unistd::pipe().expect("pipe");
    let mut cmd = proxy_command("acc-r1", port, socket, &[], Stdio::from(w));
    if let Some(v) = rust_log {
        cmd.env("RUST_LOG", v);
    }
    let mut guard = ChildGuard(cmd.spawn().expect("spawn proxy"));
    // The command holds the pipe's write end: dropped, EOF comes when the proxy exits.
    drop(cmd);
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
    text
}

/// The access lines of a proxy on `socket` after `requests`.
fn access_lines(socket: &std::path::Path, requests: &[&str]) -> Vec<String> {
    stderr_after(socket, None, requests)
        .lines()
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

/// Access lines are batched (src/accesslog.rs): far more than one batch (8 KiB) of them all
/// arrive, in the order of the requests, before the shutdown line, and none is lost at
/// SIGTERM.
#[test]
fn batched_lines_all_arrive_in_order_at_sigterm() {
    let dir = TempDir::new("access-batch");
    let sock = dir.path().join("agent.sock");
    let _agent = StandIn::start_at(sock.clone(), Behave::Headers);
    let reqs: Vec<String> = (0..250)
        .map(|i| format!("GET /n{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
        .collect();
    let reqs: Vec<&str> = reqs.iter().map(String::as_str).collect();
    let lines = access_lines(&sock, &reqs);
    assert_eq!(lines.len(), 250, "{lines:#?}");
    let total: usize = lines.iter().map(|l| l.len() + 1).sum();
    assert!(total > 32 * 1024, "more than one batch: {total} bytes");
    for (i, l) in lines.iter().enumerate() {
        assert!(
            l.contains(&format!(" path=/n{i} ")) && l.contains("status=200"),
            "line {i}: {l}"
        );
        // Exactly as the fmt layer prints an event: timestamp, level, target, fields.
        let (stamp, rest) = l.split_at(27);
        assert!(
            stamp.len() == 27 && stamp.starts_with("20") && stamp.ends_with('Z'),
            "{l}"
        );
        assert!(rest.starts_with("  INFO access: client=127.0.0.1 "), "{l}");
    }
}

/// Lines are batched, but a lone request's line is written soon (a timer on the serving
/// thread) even though the proxy then stays idle: nothing else would wake it.
#[test]
fn a_lone_access_line_is_written_while_the_proxy_stays_idle() {
    let dir = TempDir::new("access-lone");
    let sock = dir.path().join("agent.sock");
    let _agent = StandIn::start_at(sock.clone(), Behave::Headers);
    let log = dir.path().join("proxy.log");
    let port = free_port();
    let _guard = proxy(
        "acc-lone",
        port,
        &sock,
        &["--log-file".as_ref(), log.as_os_str()],
        Stdio::null(),
    );
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(10), || read().contains("listening")));
    ask(port, "GET /lone HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(
        wait_until(Duration::from_secs(5), || read().contains(" path=/lone ")),
        "{}",
        read()
    );
}

/// With `--log-file`, access lines go to the file; those of requests before a SIGHUP stay
/// in the rotated file, those after it go to the new one.
#[test]
fn access_lines_follow_a_rotated_log_file() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let dir = TempDir::new("access-file");
    let sock = dir.path().join("agent.sock");
    let _agent = StandIn::start_at(sock.clone(), Behave::Headers);
    let log = dir.path().join("proxy.log");
    let port = free_port();
    let mut guard = proxy(
        "acc-file",
        port,
        &sock,
        &["--log-file".as_ref(), log.as_os_str()],
        Stdio::null(),
    );
    let pid = Pid::from_raw(guard.0.id() as i32);
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(10), || read(&log).contains("listening")));
    let get = |p: &str| {
        ask(
            port,
            &format!("GET {p} HTTP/1.1\r\nConnection: close\r\n\r\n"),
        )
    };
    get("/before");
    let rotated = dir.path().join("proxy.log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    kill(pid, Signal::SIGHUP).expect("SIGHUP");
    assert!(wait_until(Duration::from_secs(10), || read(&log).contains("reopened")));
    get("/after");
    guard.signal("TERM");
    assert!(guard.0.wait().expect("wait").success());
    let (old, new) = (read(&rotated), read(&log));
    assert!(
        old.contains(" access: ") && old.contains("path=/before "),
        "{old}"
    );
    assert!(!old.contains("path=/after "), "{old}");
    assert!(
        new.contains("path=/after ") && !new.contains("path=/before "),
        "{new}"
    );
}

/// `RUST_LOG` takes `level` and `target=level` directives (the README's `info,access=off`);
/// one it cannot read is named in a warning and the configured level applies.
#[test]
fn rust_log_directives_select_lines_and_a_bad_one_is_named() {
    const GET: &str = "GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    let dir = TempDir::new("rustlog");
    let sock = dir.path().join("agent.sock");
    let _agent = StandIn::start_at(sock.clone(), Behave::Headers);
    let quiet = stderr_after(&sock, Some("info,access=off"), &[GET]);
    assert!(quiet.contains("listening"), "{quiet}");
    assert!(!quiet.contains(" access: "), "{quiet}");
    let warn = stderr_after(&sock, Some("warn"), &[GET]);
    assert!(!warn.contains("listening"), "{warn}");
    assert!(!warn.contains(" access: "), "{warn}");
    let bad = stderr_after(&sock, Some("info,access=loudly"), &[GET]);
    assert!(
        bad.contains("RUST_LOG ignored") && bad.contains("info,access=loudly"),
        "{bad}"
    );
    assert!(
        bad.contains("listening") && bad.contains(" access: "),
        "{bad}"
    );
}
