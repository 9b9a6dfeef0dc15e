//! The haproxy drop-in as a process (the real binary, run as `haproxy` through a symlink, on
//! loopback, no namespace): Neutron's process contract (`daemon` returns 0 once listening with
//! its stdio closed, pid file, config path in argv, SIGTERM), syslog lines on the config's
//! `log` socket, bad values as one line, and anything not Neutron's going to the real haproxy.

mod common;

use std::io::Read as _;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::neutron_conf::{render, GLOBAL, HEADERS_ML2, LISTEN, ROUTER_DEFAULTS};
use common::{Behave, StandIn, TempDir};
use ns_testkit::http::free_port;
use ns_testkit::proc::{alive, cmdline};
use ns_testkit::{bin_path, eventually, PidGuard};

/// The real haproxy (Debian's package), where the drop-in execs it.
const REAL_HAPROXY: &str = "/usr/sbin/haproxy";

const ECHO: Behave = Behave::Echo {
    advertise: None,
    reuse: false,
};

/// `dir/haproxy` → our binary: what an operator's `/usr/local/sbin/haproxy` is.
fn dropin(dir: &TempDir) -> PathBuf {
    let link = dir.join("haproxy");
    std::os::unix::fs::symlink(bin_path("ns-metadata-proxy"), &link).expect("symlink");
    link
}

/// The user and group this test runs as, by name (Neutron writes names).
fn me() -> (String, String) {
    let u = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .expect("getpwuid")
        .expect("a user");
    let g = nix::unistd::Group::from_gid(nix::unistd::getegid())
        .expect("getgrgid")
        .expect("a group");
    (u.name, g.name)
}

/// Neutron's router config, on 127.0.0.1:`port`, with its pid file, agent socket and syslog
/// socket in `dir`.
fn router_conf(dir: &TempDir, id: &str, port: u16, socket: &Path, extra: &str) -> PathBuf {
    let (user, group) = me();
    let port = port.to_string();
    let pid = dir.join(format!("{id}.pid.haproxy")).display().to_string();
    let log = dir.join("log.sock").display().to_string();
    let sock = socket.display().to_string();
    let text = render(
        &[GLOBAL, LISTEN, HEADERS_ML2, extra],
        &[
            ("res_id", id),
            ("host", "127.0.0.1"),
            ("port", &port),
            ("user", &user),
            ("group", &group),
            ("pidfile", &pid),
            ("unix_socket_path", &sock),
        ],
        ROUTER_DEFAULTS,
    )
    .replace("/dev/log", &log);
    dir.write(format!("{id}.conf"), &text)
}

/// Run `haproxy -f conf` the way Neutron does (`communicate()`: stdout and stderr to EOF),
/// failing the test if that takes more than 20 s.
fn run_like_neutron(haproxy: &Path, conf: &Path) -> Output {
    let child = Command::new(haproxy)
        .arg("-f")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run haproxy");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("returns, and closes stdout and stderr, within 20 s")
        .expect("wait")
}

fn pid_in(file: &Path) -> Option<u32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

fn get(port: u16, extra: &str) -> String {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n{extra}Connection: close\r\n\r\n"
    )
    .expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn neutron_process_contract_and_syslog_on_the_configs_socket() {
    nix::sys::prctl::set_child_subreaper(true).expect("subreaper");
    let dir = TempDir::new("dropin-contract").reaping();
    let syslog = UnixDatagram::bind(dir.join("log.sock")).expect("syslog socket");
    syslog
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let agent = StandIn::start(ECHO);
    let id = "0b7c3a44-1d2e-4f60-8a9b-0c1d2e3f4a5b";
    let port = free_port();
    let conf = router_conf(&dir, id, port, agent.path(), "");
    let haproxy = dropin(&dir);

    let out = run_like_neutron(&haproxy, &conf);
    assert!(out.status.success(), "{out:?}");
    let pid_file = dir.join(format!("{id}.pid.haproxy"));
    let pid = pid_in(&pid_file).expect("the daemon wrote its bare pid");
    let _guard = PidGuard(vec![pid]);
    // Neutron's liveness check: the uuid in /proc/PID/cmdline; argv is exactly haproxy's.
    assert_eq!(
        cmdline(pid).expect("alive").trim_end(),
        format!("{} -f {}", haproxy.display(), conf.display())
    );

    let answer = get(port, "X-Neutron-Router-ID: spoofed\r\n");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = agent.requests().concat();
    assert!(
        seen.contains(&format!("X-Neutron-Router-ID: {id}\r\n")),
        "{seen}"
    );
    assert!(seen.contains("X-Forwarded-For: 127.0.0.1\r\n"), "{seen}");
    assert!(!seen.contains("spoofed"), "{seen}");

    // Syslog: local0 (16) info, the config's log-tag, our pid; the start line and the access line.
    let tag = format!("haproxy-metadata-proxy-{id}[{pid}]: ");
    let mut lines = Vec::new();
    eventually(
        "the access line on the syslog socket",
        Duration::from_secs(10),
        || {
            let mut buf = [0u8; 2048];
            let n = syslog.recv(&mut buf).ok()?;
            lines.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            lines.iter().any(|l| l.contains("status=200")).then_some(())
        },
    );
    assert!(
        lines.iter().all(|l| l.starts_with(&format!("<134>{tag}"))),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("haproxy drop-in:") && l.contains("served by ns-metadata-proxy")),
        "{lines:#?}"
    );

    // A second start on the same config cannot bind: non-zero, one line on stderr.
    let again = run_like_neutron(&haproxy, &conf);
    let err = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");

    // SIGTERM: exits, removes its pid file.
    ns_testkit::proc::signal(pid, "TERM");
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
    assert!(!alive(pid));
    assert!(!pid_file.exists(), "pid file removed on SIGTERM");
}

#[test]
fn a_bad_value_is_one_line_naming_file_line_and_keyword() {
    let dir = TempDir::new("dropin-bad");
    let agent = StandIn::start(ECHO);
    let conf = router_conf(&dir, "r-bad-1", free_port(), agent.path(), "");
    let good = std::fs::read_to_string(&conf).expect("read");
    let (user, _) = me();
    for (from, to, want) in [
        (
            "timeout server          32s".to_owned(),
            "timeout server 32x".to_owned(),
            ":23: timeout server: invalid time \"32x\": unit must be us, ms, s, m, h or d",
        ),
        (
            format!("user        {user}"),
            "user        nsmp-no-such-user".to_owned(),
            ":5: user: user \"nsmp-no-such-user\": no such user",
        ),
    ] {
        std::fs::write(&conf, good.replace(&from, &to)).expect("write");
        let out = run_like_neutron(&dropin(&dir), &conf);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert_eq!(
            err.trim_end(),
            format!("ns-metadata-proxy: {}{want}", conf.display())
        );
        assert!(!dir.join("r-bad-1.pid.haproxy").exists(), "never started");
        let _ = std::fs::remove_file(dir.join("haproxy"));
    }
}

#[test]
fn anything_else_runs_the_real_haproxy() {
    if !ns_testkit::require(
        "anything_else_runs_the_real_haproxy",
        Path::new(REAL_HAPROXY).is_file(),
        "the haproxy package",
    ) {
        return;
    }
    nix::sys::prctl::set_child_subreaper(true).expect("subreaper");
    let dir = TempDir::new("dropin-real").reaping();
    let haproxy = dropin(&dir);

    // A flag: `haproxy -v` is the real one's version.
    let out = Command::new(&haproxy).arg("-v").output().expect("run");
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("HAProxy version"),
        "{out:?}"
    );

    // A keyword outside Neutron's template, written by hand: the real haproxy serves it.
    let agent = StandIn::start(ECHO);
    let id = "6c1e9d20-3f4a-4b5c-8d6e-7f8091a2b3c4";
    let port = free_port();
    let conf = router_conf(&dir, id, port, agent.path(), "    option redispatch\n");
    let out = run_like_neutron(&haproxy, &conf);
    assert!(out.status.success(), "{out:?}");
    if !Path::new("/dev/log").exists() {
        // No syslog: the line saying which way it went is on stderr.
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("exec {REAL_HAPROXY}")), "{err}");
    }
    let pid = pid_in(&dir.join(format!("{id}.pid.haproxy"))).expect("haproxy's pid file");
    let _guard = PidGuard(vec![pid]);
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe"),
        Path::new(REAL_HAPROXY)
    );
    let answer = get(port, "");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // haproxy 2.x writes header names in lower case.
    let seen = agent.requests().concat().to_ascii_lowercase();
    assert!(
        seen.contains(&format!("x-neutron-router-id: {id}")),
        "{seen}"
    );
    ns_testkit::proc::signal(pid, "TERM");
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
}
