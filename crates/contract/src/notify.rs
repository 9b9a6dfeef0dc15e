//! `sd_notify`: one datagram to `$NOTIFY_SOCKET` (a path, or `@name` in the abstract
//! namespace), as systemd's `Type=notify` and `Type=notify-reload` units expect.

use std::os::unix::net::UnixDatagram;
use std::path::Path;

/// A state to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Start-up is done (`READY=1`).
    Ready,
    /// A reload began (`RELOADING=1` with `MONOTONIC_USEC`, as `Type=notify-reload` needs);
    /// send [`State::Ready`] when it is done.
    Reloading,
    /// Shutdown began (`STOPPING=1`).
    Stopping,
    /// A one-line status shown by `systemctl status` (`STATUS=...`; newlines become spaces).
    Status(String),
    /// Start-up (or shutdown) goes on: allow this much more time from now than the unit's
    /// timeout (`EXTEND_TIMEOUT_USEC=...`).
    ExtendTimeout(std::time::Duration),
}

impl State {
    fn line(&self) -> String {
        match self {
            State::Ready => "READY=1".into(),
            State::Reloading => format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()),
            State::Stopping => "STOPPING=1".into(),
            State::Status(s) => format!("STATUS={}", s.replace('\n', " ")),
            State::ExtendTimeout(d) => format!("EXTEND_TIMEOUT_USEC={}", d.as_micros()),
        }
    }
}

fn monotonic_usec() -> i64 {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map_or(0, |t| t.tv_sec() * 1_000_000 + t.tv_nsec() / 1_000)
}

/// Send `states` in one datagram if `$NOTIFY_SOCKET` is set. `Ok(false)` when it is not set
/// (not under systemd); an error is for the caller to log, never fatal.
pub fn notify(states: &[State]) -> std::io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    send_to(Path::new(&path), states)?;
    Ok(true)
}

/// Send `states` to the socket at `path` (`@name` for the abstract namespace).
pub fn send_to(path: &Path, states: &[State]) -> std::io::Result<()> {
    let msg = states
        .iter()
        .map(State::line)
        .collect::<Vec<_>>()
        .join("\n");
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_os_str().as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt as _;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(msg.as_bytes(), &addr)?;
    } else {
        sock.send_to(msg.as_bytes(), path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(rx: &UnixDatagram) -> String {
        let mut buf = [0u8; 256];
        let n = rx.recv(&mut buf).expect("recv");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn path_and_abstract_sockets_get_every_state() {
        let dir = std::env::temp_dir().join(format!("ns-contract-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let p = dir.join("n.sock");
        let rx = UnixDatagram::bind(&p).expect("bind");
        send_to(&p, &[State::Ready, State::Status("serving\n2".into())]).expect("send");
        assert_eq!(recv(&rx), "READY=1\nSTATUS=serving 2");
        send_to(&p, &[State::Reloading]).expect("send");
        let m = recv(&rx);
        assert!(m.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{m}");
        send_to(&p, &[State::Stopping]).expect("send");
        assert_eq!(recv(&rx), "STOPPING=1");
        let more = std::time::Duration::from_secs(60);
        send_to(&p, &[State::ExtendTimeout(more)]).expect("send");
        assert_eq!(recv(&rx), "EXTEND_TIMEOUT_USEC=60000000");
        std::fs::remove_dir_all(&dir).expect("cleanup");

        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("ns-contract-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract name");
        let rx = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        send_to(Path::new(&format!("@{name}")), &[State::Ready]).expect("send");
        assert_eq!(recv(&rx), "READY=1");
    }
}
