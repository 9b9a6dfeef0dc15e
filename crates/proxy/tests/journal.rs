//! Under journald (`JOURNAL_STREAM` naming the proxy's stderr, as systemd sets it), every log
//! line starts with its syslog priority and carries no timestamp; with the variable naming
//! another stream (inherited by a child whose stderr is elsewhere) lines are as usual.

use std::io::Read as _;
use std::os::fd::AsFd as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use ns_testkit::http::free_port;
use ns_testkit::{bin_path, wait_until, ChildGuard, TempDir};

/// The proxy's stderr lines, with `JOURNAL_STREAM` naming its stderr pipe (`matching`) or
/// not, once it has logged its start-up lines and been stopped.
fn stderr_lines(matching: bool) -> String {
    let dir = TempDir::new("journal");
    let port = free_port();
    let (r, w) = nix::unistd::pipe().expect("pipe");
    let m = nix::sys::stat::fstat(w.as_fd()).expect("fstat");
    let ino = if matching { m.st_ino } else { m.st_ino + 1 };
    let child = Command::new(bin_path("ns-metadata-proxy"))
        .args(["--router-id", "journal-r1"])
        .arg("--bind")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--metadata-proxy-socket")
        .arg(dir.path().join("missing.sock"))
        .env("JOURNAL_STREAM", format!("{}:{ino}", m.st_dev))
        .stderr(Stdio::from(w))
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn proxy");
    let mut guard = ChildGuard(child);
    let mut f = std::fs::File::from(r);
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    // Until the "listening" line, then SIGTERM and read to EOF.
    assert!(wait_until(Duration::from_secs(10), || {
        let n = f.read(&mut buf).unwrap_or(0);
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        text.contains("listening")
    }));
    // One request (the agent is missing: a 503), for its access line.
    if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
        use std::io::Write as _;
        let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = c.write_all(b"GET /j HTTP/1.1\r\nConnection: close\r\n\r\n");
        let _ = c.read_to_end(&mut Vec::new());
    }
    guard.signal("TERM");
    let _ = guard.0.wait();
    f.read_to_string(&mut text).expect("read");
    text
}

#[test]
fn journal_lines_carry_priorities_and_no_timestamp() {
    let text = stderr_lines(true);
    let warn = text
        .lines()
        .find(|l| l.contains("does not exist"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(warn.starts_with("<4>"), "{text}");
    let info = text
        .lines()
        .find(|l| l.contains("listening"))
        .expect("listening");
    assert!(info.starts_with("<6>"), "{text}");
    assert!(text.lines().all(|l| l.starts_with('<')), "{text}");
    // The access line too (written by its own writer, src/accesslog.rs).
    assert!(
        text.lines()
            .any(|l| l.starts_with("<6> INFO access: client=127.0.0.1 ") && l.contains("path=/j ")),
        "{text}"
    );
    // Under another stream the same lines are timestamped, without priorities.
    let other = stderr_lines(false);
    assert!(other.lines().all(|l| !l.starts_with('<')), "{other}");
    assert!(
        other
            .lines()
            .any(|l| l.contains("listening") && l.starts_with("20")),
        "{other}"
    );
    assert!(
        other
            .lines()
            .any(|l| l.starts_with("20") && l.contains("Z  INFO access: client=127.0.0.1 ")),
        "{other}"
    );
}
