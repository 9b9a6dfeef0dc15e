//! Who the proxy runs as after binding (issue "hardening", items 8 and 10), with the real
//! binary: as root it keeps uid 0 but no capability and PR_SET_NO_NEW_PRIVS; dropped to a
//! user that cannot write the agent socket it refuses to start, naming the socket, instead of
//! reporting READY and answering 503 for ever.

use std::io::Read as _;
use std::os::fd::AsRawFd as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use ns_testkit::http::free_port;
use ns_testkit::{bin_path, require_root, wait_until, ChildGuard, TempDir};

/// `Name:\tvalue` of /proc/PID/status.
fn status_field(pid: u32, name: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| {
        l.strip_prefix(name)?
            .strip_prefix(':')
            .map(|v| v.trim().to_owned())
    })
}

/// Start the proxy on loopback with `extra` flags; READY read from its ready fd, or its
/// exit status and stderr if it failed to start.
fn start(dir: &TempDir, sock: &std::path::Path, extra: &[&str]) -> Result<ChildGuard, String> {
    let port = free_port();
    let (r, w) = nix::unistd::pipe().expect("pipe");
    let fd = w.as_raw_fd();
    let child = Command::new(bin_path("ns-metadata-proxy"))
        .args([
            "--router-id",
            "priv-r1",
            "--bind",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--metadata-proxy-socket")
        .arg(sock)
        .args(["--ready-fd", &fd.to_string()])
        .args(extra)
        .current_dir(dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn proxy");
    let mut guard = ChildGuard(child);
    drop(w);
    let mut got = Vec::new();
    std::fs::File::from(r)
        .read_to_end(&mut got)
        .expect("read ready fd");
    if got.starts_with(b"READY=1") {
        return Ok(guard);
    }
    let mut code = None;
    wait_until(Duration::from_secs(10), || {
        code = guard.0.try_wait().ok().flatten();
        code.is_some()
    });
    let mut err = String::new();
    if let Some(mut e) = guard.0.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    Err(format!("{code:?}: {err}"))
}

#[test]
fn as_root_the_proxy_keeps_no_capability() {
    if !require_root("as_root_the_proxy_keeps_no_capability") {
        return;
    }
    let dir = TempDir::new("priv-root");
    let sock = dir.path().join("agent.sock");
    let _agent = std::os::unix::net::UnixListener::bind(&sock).expect("agent socket");
    let proxy = start(&dir, &sock, &[]).expect("starts");
    let pid = proxy.pid();
    assert_eq!(
        status_field(pid, "Uid")
            .as_deref()
            .map(|u| u.split_whitespace().next()),
        Some(Some("0"))
    );
    for set in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
        assert_eq!(
            status_field(pid, set).as_deref(),
            Some("0000000000000000"),
            "{set}"
        );
    }
    assert_eq!(status_field(pid, "NoNewPrivs").as_deref(), Some("1"));
}

#[test]
fn a_user_that_cannot_reach_the_agent_socket_fails_start_up() {
    if !require_root("a_user_that_cannot_reach_the_agent_socket_fails_start_up") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("priv-user");
    // The directory must be traversable by nobody; the socket is root's, 0644 (Neutron's
    // "user" mode): nobody cannot connect.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let sock = dir.path().join("agent.sock");
    let _agent = std::os::unix::net::UnixListener::bind(&sock).expect("agent socket");
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let Err(e) = start(&dir, &sock, &["--user", "65534", "--group", "65534"]) else {
        panic!("started as a user that cannot reach the agent");
    };
    assert!(
        e.starts_with("Some(ExitStatus(unix_wait_status(256)))"),
        "{e}"
    );
    assert!(
        e.contains("cannot reach the agent socket")
            && e.contains(&sock.display().to_string())
            && e.contains("uid 65534 gid 65534")
            && e.contains("mode 644, owner 0:0"),
        "{e}"
    );
    // Mode 0666 (Neutron's "all"): the same user starts and reaches it.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    start(&dir, &sock, &["--user", "65534", "--group", "65534"]).expect("starts");
}
