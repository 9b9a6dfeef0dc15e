//! The binary under systemd: with `$NOTIFY_SOCKET` set it says READY once its socket
//! listens, RELOADING then READY around a SIGHUP reload, and STOPPING on SIGTERM.
//! It needs none of the in-process helpers of tests/common, only ns-testkit's guards.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use ns_testkit::{ChildGuard, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_ns-metadata-agent");

/// The next datagram, within 10 s.
fn next(rx: &UnixDatagram) -> String {
    let mut buf = [0u8; 1024];
    let n = rx.recv(&mut buf).expect("a notification within 10 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn ready_reloading_and_stopping_reach_systemd() {
    let dir = TempDir::new("sdnotify");
    let notify = dir.join("notify.sock");
    let rx = UnixDatagram::bind(&notify).expect("bind notify socket");
    rx.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let inventory = dir.join("inventory.json");
    std::fs::write(&inventory, r#"{"instances": [{"uuid": "vm1"}]}"#).expect("inventory");
    let sock = dir.join("agent.sock");
    let child = Command::new(BIN)
        .arg("--metadata-proxy-socket")
        .arg(&sock)
        .arg("--inventory-file")
        .arg(&inventory)
        .args(["--inventory-poll-interval", "0", "--metadata-workers", "0"])
        .env("NOTIFY_SOCKET", &notify)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn agent");
    let mut guard = ChildGuard(child);

    let ready = next(&rx);
    assert!(
        ready.starts_with("READY=1\nSTATUS=listening on "),
        "{ready}"
    );
    assert!(sock.exists(), "READY only once the socket is there");

    guard.signal("HUP");
    let reloading = next(&rx);
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert_eq!(next(&rx), "READY=1");

    guard.signal("TERM");
    assert_eq!(next(&rx), "STOPPING=1");
    let status = guard.0.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
}
