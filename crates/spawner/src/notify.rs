//! `sd_notify(READY=1)`: one datagram to `$NOTIFY_SOCKET` (a path, or `@name` for the
//! abstract namespace), so systemd `Type=notify` units know the first reconcile is done.

use std::os::unix::net::UnixDatagram;

/// Send `state` (e.g. `"READY=1"`) if `$NOTIFY_SOCKET` is set; errors are logged, not fatal.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = UnixDatagram::unbound().and_then(|sock| {
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)
        } else {
            sock.send_to(state.as_bytes(), &path)
        }
    });
    if let Err(e) = result {
        tracing::warn!(err = %e, "sd_notify failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_ready_to_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("spawner-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let p = dir.join("n.sock");
        let rx = UnixDatagram::bind(&p).expect("bind");
        // Only this test touches NOTIFY_SOCKET in this process.
        std::env::set_var("NOTIFY_SOCKET", &p);
        notify("READY=1");
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
