//! The proxy as a process (the real binary, no root): --ready-fd, --daemonize with the pid
//! file, SIGTERM, start-up failures and config errors.

use std::io::Read as _;
use std::os::fd::AsRawFd as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use ns_testkit::{bin_path, spin_until, wait_until, ChildGuard};

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn tmp(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("nsmp-proc-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

fn http_status(port: u16) -> Option<String> {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.lines().next().map(str::to_owned)
}

#[test]
fn ready_fd_then_sigterm_exits_zero() {
    let dir = tmp("ready");
    let port = free_port();
    // nix's pipe() leaves CLOEXEC off, so the child inherits the write end at this number.
    let (r, w) = nix::unistd::pipe().expect("pipe");
    let fd = w.as_raw_fd();
    let child = Command::new(bin_path("ns-metadata-proxy"))
        .args([
            "--network-id",
            "net-ready-1",
            "--bind",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--metadata-proxy-socket")
        .arg(dir.join("missing.sock"))
        .args(["--ready-fd", &fd.to_string()])
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn proxy");
    let mut guard = ChildGuard(child);
    drop(w);
    let mut got = Vec::new();
    std::fs::File::from(r)
        .read_to_end(&mut got)
        .expect("read ready pipe");
    assert_eq!(got, b"READY=1\n", "READY then EOF (fd closed)");
    assert_eq!(
        http_status(port).as_deref(),
        Some("HTTP/1.1 503 Service Unavailable")
    );
    kill(Pid::from_raw(guard.0.id() as i32), Signal::SIGTERM).expect("kill");
    let status = guard.0.wait().expect("wait");
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn notify_socket_gets_ready() {
    let dir = tmp("notify");
    let sock_path = dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let port = free_port();
    let child = Command::new(bin_path("ns-metadata-proxy"))
        .args([
            "--router-id",
            "r-notify",
            "--bind",
            &format!("127.0.0.1:{port}"),
        ])
        .env("NOTIFY_SOCKET", &sock_path)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut guard = ChildGuard(child);
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).expect("READY datagram");
    assert_eq!(&buf[..n], b"READY=1");
    kill(Pid::from_raw(guard.0.id() as i32), Signal::SIGTERM).expect("kill");
    assert!(guard.0.wait().expect("wait").success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn startup_failure_is_one_line_and_no_ready() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let (r, w) = nix::unistd::pipe().expect("pipe");
    let out = Command::new(bin_path("ns-metadata-proxy"))
        .args([
            "--router-id",
            "r-fail",
            "--bind",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["--ready-fd", &w.as_raw_fd().to_string()])
        .output()
        .expect("run");
    drop(w);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .filter(|l| l.starts_with("ns-metadata-proxy:"))
        .collect::<Vec<_>>();
    assert_eq!(line.len(), 1, "{err}");
    assert!(line[0].contains(&format!("bind 127.0.0.1:{port}")), "{err}");
    let mut got = Vec::new();
    std::fs::File::from(r).read_to_end(&mut got).expect("read");
    assert!(got.is_empty(), "no READY on failure");
}

/// A symlink planted at `--pid-file` or `--log-file` (the proxy runs as root, often in a
/// directory others can write to) is refused at start-up, and its target is left as it was.
#[test]
fn symlinked_pid_or_log_file_is_refused_and_its_target_kept() {
    let dir = tmp("symlink");
    let victim = dir.join("victim");
    std::fs::write(&victim, "precious\n").expect("victim");
    let link = dir.join("link");
    std::os::unix::fs::symlink(&victim, &link).expect("symlink");
    for flag in ["--pid-file", "--log-file"] {
        let out = Command::new(bin_path("ns-metadata-proxy"))
            .args(["--router-id", "r-link"])
            .args(["--bind", &format!("127.0.0.1:{}", free_port())])
            .arg(flag)
            .arg(&link)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flag}: {err}");
        let line = err
            .lines()
            .filter(|l| l.starts_with("ns-metadata-proxy:"))
            .collect::<Vec<_>>();
        assert_eq!(line.len(), 1, "{flag}: {err}");
        assert!(line[0].contains("symlink"), "{flag}: {err}");
        assert_eq!(
            std::fs::read_to_string(&victim).expect("read"),
            "precious\n",
            "{flag}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_config_exits_2_naming_file_line_key() {
    let dir = tmp("badcfg");
    let ini = dir.join("proxy.ini");
    std::fs::write(
        &ini,
        "[DEFAULT]\nrouter_id = r1\n[metadata_haproxy]\ntimeout_server = later\n",
    )
    .expect("write");
    let out = Command::new(bin_path("ns-metadata-proxy"))
        .arg("--config-file")
        .arg(&ini)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "{}:4: [metadata_haproxy] timeout_server",
            ini.display()
        )),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn daemonized_pid_file_names_live_process_and_sigterm_cleans_up() {
    // Become a subreaper so the daemon (orphaned when its parent exits) is ours to reap.
    nix::sys::prctl::set_child_subreaper(true).expect("subreaper");
    let dir = tmp("daemon");
    let port = free_port();
    let pid_file = dir.join("r-daemon-7.pid");
    let id = "r-daemon-7";
    let status = Command::new(bin_path("ns-metadata-proxy"))
        .args([
            "--router-id",
            id,
            "--daemonize",
            "--bind",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--pid-file")
        .arg(&pid_file)
        .arg("--metadata-proxy-socket")
        .arg(dir.join("missing.sock"))
        .status()
        .expect("run");
    assert!(status.success(), "parent returns 0 once the child listens");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("pid file written")
        .trim()
        .parse()
        .expect("pid");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("live process");
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains(id), "{cmdline}");
    // Listening already: the parent returned only after READY.
    assert_eq!(
        http_status(port).as_deref(),
        Some("HTTP/1.1 503 Service Unavailable")
    );
    // Own session (setsid), so the starter's terminal signals don't reach it.
    let sid = nix::unistd::getsid(Some(Pid::from_raw(pid))).expect("sid");
    assert_eq!(sid.as_raw(), pid);
    kill(Pid::from_raw(pid), Signal::SIGTERM).expect("SIGTERM");
    let st = nix::sys::wait::waitpid(Pid::from_raw(pid), None).expect("reap daemon");
    assert_eq!(
        st,
        nix::sys::wait::WaitStatus::Exited(Pid::from_raw(pid), 0)
    );
    assert!(!pid_file.exists(), "pid file removed");
    assert!(wait_until(Duration::from_secs(5), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
    }));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The command line Neutron's l3/dhcp agents built for the old Python
/// `neutron-ns-metadata-proxy` (reference §1: driver.py, `get_log_args`) starts the proxy;
/// `--log-dir` puts the log at `<dir>/neutron-ns-metadata-proxy-<uuid>.log`.
#[test]
fn old_neutron_ns_metadata_proxy_command_line_is_accepted() {
    let dir = tmp("oldcli");
    let port = free_port();
    let id = "4a8f3c1e-9b2d-4c6e-8f10-2a3b4c5d6e7f";
    let uid = nix::unistd::getuid().to_string();
    let gid = nix::unistd::getgid().to_string();
    let log_name = format!("neutron-ns-metadata-proxy-{id}.log");
    let run = |log_args: &[String]| {
        let child = Command::new(bin_path("ns-metadata-proxy"))
            .arg(format!(
                "--pid_file={}",
                dir.join(format!("{id}.pid")).display()
            ))
            .arg(format!(
                "--metadata_proxy_socket={}",
                dir.join("missing.sock").display()
            ))
            .arg(format!("--router_id={id}"))
            .arg(format!("--state_path={}", dir.display()))
            .arg(format!("--metadata_port={port}"))
            .arg(format!("--metadata_proxy_user={uid}"))
            .arg(format!("--metadata_proxy_group={gid}"))
            .args(log_args)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn proxy");
        let mut guard = ChildGuard(child);
        let up = wait_until(Duration::from_secs(10), || {
            http_status(port).as_deref() == Some("HTTP/1.1 503 Service Unavailable")
        });
        let pid = Pid::from_raw(guard.0.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let status = guard.0.wait().expect("wait");
        let mut err = String::new();
        if let Some(mut e) = guard.0.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        assert!(up && status.success(), "{log_args:?}: {status:?} {err}");
    };
    run(&[
        "--debug".into(),
        format!("--log-file={log_name}"),
        format!("--log-dir={}", dir.display()),
        "--nometadata_proxy_watch_log".into(),
        "--nodaemonize".into(),
    ]);
    let log = std::fs::read_to_string(dir.join(&log_name)).expect("log file in --log-dir");
    assert!(log.contains("listening"), "{log}");
    std::fs::remove_file(dir.join(&log_name)).expect("rm log");
    // --log-dir alone names the file after the uuid too.
    run(&[format!("--log-dir={}", dir.display())]);
    assert!(dir.join(&log_name).exists(), "log named after the uuid");
    // Syslog arguments (when /dev/log is missing the proxy logs to stderr and says so).
    run(&[
        "--use-syslog".into(),
        "--syslog-log-facility=LOG_LOCAL0".into(),
        "--metadata_proxy_watch_log".into(),
        "--metadata_proxy_num_threads=1000".into(),
    ]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Under its old name (a symlink `neutron-ns-metadata-proxy`) the proxy daemonizes by
/// default, as the Python one did: an old agent's `ip netns exec … neutron-ns-metadata-proxy …`
/// returns once the proxy listens instead of hanging on a foreground process.
#[test]
fn old_name_daemonizes_by_default() {
    nix::sys::prctl::set_child_subreaper(true).expect("subreaper");
    let dir = tmp("oldname");
    let port = free_port();
    let id = "5b9f4d2f-0c3e-4d7f-9a21-3b4c5d6e7f80";
    let link = dir.join("neutron-ns-metadata-proxy");
    std::os::unix::fs::symlink(bin_path("ns-metadata-proxy"), &link).expect("symlink");
    let pid_file = dir.join(format!("{id}.pid"));
    let child = Command::new(&link)
        .arg(format!("--pid_file={}", pid_file.display()))
        .arg(format!(
            "--metadata_proxy_socket={}",
            dir.join("missing.sock").display()
        ))
        .arg(format!("--router_id={id}"))
        .arg(format!("--metadata_port={port}"))
        .arg(format!("--log-dir={}", dir.display()))
        .stdin(Stdio::null())
        .spawn()
        .expect("run");
    // A foreground proxy would never return: the guard kills it when the assert fails.
    let mut guard = ChildGuard(child);
    let mut status = None;
    wait_until(Duration::from_secs(10), || {
        status = guard.0.try_wait().ok().flatten();
        status.is_some()
    });
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .map(|s| s.trim().parse().unwrap_or(0))
        .unwrap_or(0);
    let answer = http_status(port);
    if pid > 0 {
        kill(Pid::from_raw(pid), Signal::SIGTERM).expect("SIGTERM");
        let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
    }
    assert!(
        status.is_some_and(|s| s.success()),
        "returns 0 once listening: {status:?}"
    );
    assert!(pid > 0, "pid file written by the daemon");
    assert_eq!(answer.as_deref(), Some("HTTP/1.1 503 Service Unavailable"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM while a request waits for a slow agent: the VM gets an answer (503 once the
/// grace is over) rather than a connection closed without a reply, and the proxy exits 0.
#[test]
fn sigterm_during_a_slow_agent_request_answers_503_and_exits_zero() {
    use std::io::Write as _;
    let dir = tmp("slowterm");
    let sock = dir.join("agent.sock");
    // An agent that accepts and never answers (the connections are kept open).
    let agent = std::os::unix::net::UnixListener::bind(&sock).expect("bind agent");
    let (accepted_tx, accepted) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Some(c) = agent.incoming().next() {
            let _ = accepted_tx.send(());
            std::thread::sleep(Duration::from_secs(8));
            drop(c);
        }
    });
    let port = free_port();
    let child = Command::new(bin_path("ns-metadata-proxy"))
        .args([
            "--router-id",
            "r-slowterm",
            "--bind",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--metadata-proxy-socket")
        .arg(&sock)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn proxy");
    let mut guard = ChildGuard(child);
    assert!(wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    c.write_all(b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n")
        .expect("send");
    // The request reached the agent (it is in flight) before the signal.
    accepted
        .recv_timeout(Duration::from_secs(10))
        .expect("the agent got the connection");
    kill(Pid::from_raw(guard.0.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    let mut got = String::new();
    let _ = c.read_to_string(&mut got);
    let status = guard.0.wait().expect("wait");
    assert!(status.success(), "{status:?}");
    assert!(
        got.starts_with("HTTP/1.1 503"),
        "in-flight request answered 503, got {got:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGHUP does not stop the proxy; with `--log-file` it reopens the file by path, so a
/// log rotated by renaming (logrotate without copytruncate) goes on in a new file.
#[test]
fn sighup_keeps_serving_and_reopens_a_rotated_log_file() {
    let dir = tmp("hup");
    let port = free_port();
    let log = dir.join("proxy.log");
    let child = Command::new(bin_path("ns-metadata-proxy"))
        .args([
            "--router-id",
            "r-hup",
            "--bind",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--metadata-proxy-socket")
        .arg(dir.join("missing.sock"))
        .arg("--log-file")
        .arg(&log)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn proxy");
    let mut guard = ChildGuard(child);
    let pid = Pid::from_raw(guard.0.id() as i32);
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(10), || read(&log).contains("listening")));
    std::fs::rename(&log, dir.join("proxy.log.1")).expect("rotate");
    kill(pid, Signal::SIGHUP).expect("SIGHUP");
    assert!(
        wait_until(Duration::from_secs(10), || read(&log).contains("reopened")),
        "new log file after SIGHUP: {:?}",
        read(&dir.join("proxy.log.1"))
    );
    assert_eq!(
        http_status(port).as_deref(),
        Some("HTTP/1.1 503 Service Unavailable"),
        "still serving after SIGHUP"
    );
    assert!(wait_until(Duration::from_secs(10), || read(&log)
        .contains("status=503")));
    kill(pid, Signal::SIGTERM).expect("SIGTERM");
    assert!(guard.0.wait().expect("wait").success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The spawner's namespace hand-over (`NS_METADATA_SPAWNER_NETNS_FD`, issue 19) is internal:
/// without the spawner's other marks it is refused before anything is bound, with one line;
/// with them but no namespace on the descriptor, the start fails naming it.
#[test]
fn spawner_netns_handover_is_refused_outside_the_spawner() {
    let port = free_port().to_string();
    let bind = format!("127.0.0.1:{port}");
    let run = |state_dir: bool, extra: &[&str]| {
        let mut c = Command::new(bin_path("ns-metadata-proxy"));
        c.args(["--router-id", "r1", "--bind", &bind])
            .args(extra)
            .env("NS_METADATA_SPAWNER_NETNS_FD", "4")
            .env_remove("NS_METADATA_SPAWNER_STATE_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if state_dir {
            c.env("NS_METADATA_SPAWNER_STATE_DIR", "/nonexistent");
        }
        let out = c.output().expect("run proxy");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(false, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("internal to ns-metadata-spawner"), "{err}");
    // With the state-dir mark, still refused without a --ready-fd, or with --netns.
    let (code, err) = run(true, &[]);
    assert_eq!(code, Some(2), "{err}");
    let (code, err) = run(true, &["--ready-fd", "1", "--netns", "x"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("internal to ns-metadata-spawner"), "{err}");
    // Every mark, but descriptor 4 is not open here: nothing is entered or bound.
    let (code, err) = run(true, &["--ready-fd", "1"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("NS_METADATA_SPAWNER_NETNS_FD=4"), "{err}");
}

/// Whatever finds the pid file may signal the pid at once (logrotate's SIGHUP, a stop's
/// SIGTERM): the handlers are installed before the file is written, so a SIGHUP the moment
/// it appears never kills the proxy (SIGHUP's default action), and a SIGTERM then is a clean
/// stop (exit 0, pid file removed).
#[test]
fn signals_the_moment_the_pid_file_appears_are_handled() {
    for (sig, tag) in [
        (Signal::SIGHUP, "early-hup"),
        (Signal::SIGTERM, "early-term"),
    ] {
        for round in 0..5 {
            let dir = ns_testkit::TempDir::new(&format!("proxy-{tag}-{round}"));
            let port = free_port();
            let pid_file = dir.join("proxy.pid");
            let child = Command::new(bin_path("ns-metadata-proxy"))
                .args([
                    "--router-id",
                    "r-early",
                    "--bind",
                    &format!("127.0.0.1:{port}"),
                ])
                .arg("--metadata-proxy-socket")
                .arg(dir.join("missing.sock"))
                .arg("--pid-file")
                .arg(&pid_file)
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn proxy");
            let mut guard = ChildGuard(child);
            let pid = Pid::from_raw(guard.0.id() as i32);
            // As soon as the file names the pid: no sleep between polls.
            assert!(
                spin_until(Duration::from_secs(10), || {
                    std::fs::read_to_string(&pid_file).is_ok_and(|t| !t.trim().is_empty())
                }),
                "no pid file"
            );
            kill(pid, sig).expect("signal");
            if sig == Signal::SIGHUP {
                assert_eq!(
                    http_status(port).as_deref(),
                    Some("HTTP/1.1 503 Service Unavailable"),
                    "still serving after an early SIGHUP (round {round})"
                );
                assert!(guard.0.try_wait().expect("wait").is_none(), "round {round}");
                kill(pid, Signal::SIGTERM).expect("SIGTERM");
            }
            let mut status = None;
            assert!(
                wait_until(Duration::from_secs(10), || {
                    status = guard.0.try_wait().expect("wait");
                    status.is_some()
                }),
                "{sig:?} round {round}: still running"
            );
            assert!(
                status.is_some_and(|s| s.success()),
                "{sig:?} round {round}: {status:?}"
            );
            assert!(!pid_file.exists(), "pid file removed (round {round})");
        }
    }
}
