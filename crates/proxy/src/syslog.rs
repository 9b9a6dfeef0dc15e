//! Logging to the local syslog socket (`--use-syslog`): one datagram per log line,
//! `<PRI>TAG[PID]: line`, with the tag Neutron's haproxy uses (`haproxy-metadata-proxy-<id>`).

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::Arc;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// The local syslog socket.
pub const DEV_LOG: &str = "/dev/log";

/// A facility number from oslo's spelling (`LOG_LOCAL0`) or the bare name (`local0`).
pub fn facility(name: &str) -> Option<u8> {
    let n = name.trim().to_ascii_lowercase();
    let n = n.strip_prefix("log_").unwrap_or(&n);
    const NAMES: [&str; 12] = [
        "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
        "authpriv", "ftp",
    ];
    if let Some(i) = NAMES.iter().position(|f| *f == n) {
        return u8::try_from(i).ok();
    }
    match n.strip_prefix("local")?.parse::<u8>() {
        Ok(d) if d <= 7 => Some(16 + d),
        _ => None,
    }
}

/// Sends each formatted log line as one datagram to the syslog socket.
#[derive(Clone)]
pub struct Syslog {
    sock: Arc<UnixDatagram>,
    path: Arc<Path>,
    facility: u8,
    tag: String,
}

impl Syslog {
    /// Check that a syslog daemon listens on `path` (normally [`DEV_LOG`]) and log there.
    pub fn connect(path: &Path, facility: u8, tag: &str) -> io::Result<Syslog> {
        UnixDatagram::unbound()?.connect(path)?;
        // Unconnected, each line addressed by path (as haproxy does): a restarted daemon
        // (a new socket at the same path) keeps getting our lines.
        let sock = UnixDatagram::unbound()?;
        // Never wait for room: a stalled syslog daemon would stop the proxy's one thread
        // (haproxy too sends its logs without blocking and drops them).
        sock.set_nonblocking(true)?;
        Ok(Syslog {
            sock: Arc::new(sock),
            path: path.into(),
            facility,
            tag: format!("{tag}[{}]", std::process::id()),
        })
    }
}

impl Syslog {
    /// Append a datagram's `<PRI>TAG[PID]: ` for a line of `severity` (syslog's 0-7).
    pub fn push_head(&self, severity: u8, out: &mut Vec<u8>) {
        use std::io::Write as _;
        let pri = u16::from(self.facility) * 8 + u16::from(severity);
        let _ = write!(out, "<{pri}>{}: ", self.tag);
    }

    /// Send one whole datagram, never waiting: a full or restarting syslog daemon must not
    /// stop the proxy, the line is lost then.
    pub fn send_raw(&self, msg: &[u8]) {
        let _ = self.sock.send_to(msg, &self.path);
    }
}

/// The writer for one log event, carrying its severity.
pub struct Line<'a> {
    log: &'a Syslog,
    severity: u8,
}

impl io::Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut text = buf;
        while let Some(t) = text.strip_suffix(b"\n") {
            text = t;
        }
        let mut msg = Vec::with_capacity(text.len() + 64);
        self.log.push_head(self.severity, &mut msg);
        msg.extend_from_slice(text);
        self.log.send_raw(&msg);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line {
            log: self,
            severity: 6,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line<'a> {
        let severity = match *meta.level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            _ => 7,
        };
        Line {
            log: self,
            severity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn facilities_in_both_spellings() {
        assert_eq!(facility("LOG_USER"), Some(1));
        assert_eq!(facility("daemon"), Some(3));
        assert_eq!(facility("LOG_LOCAL0"), Some(16));
        assert_eq!(facility("local7"), Some(23));
        assert_eq!(facility("local8"), None);
        assert_eq!(facility("bogus"), None);
    }

    #[test]
    fn one_datagram_per_line_with_priority_and_tag() {
        let path = std::env::temp_dir().join(format!("nsmp-syslog-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).expect("bind");
        let log = Syslog::connect(&path, 16, "haproxy-metadata-proxy-r1").expect("connect");
        log.make_writer()
            .write_all(b"hello world\n")
            .expect("write");
        let mut buf = [0u8; 256];
        let n = server.recv(&mut buf).expect("recv");
        let got = String::from_utf8_lossy(&buf[..n]).into_owned();
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            got,
            format!(
                "<134>haproxy-metadata-proxy-r1[{}]: hello world",
                std::process::id()
            )
        );
    }

    #[test]
    fn a_syslog_that_reads_nothing_never_blocks_logging() {
        let path =
            std::env::temp_dir().join(format!("nsmp-syslog-full-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let _server = UnixDatagram::bind(&path).expect("bind");
        let log = Syslog::connect(&path, 16, "t").expect("connect");
        // Far more lines than the socket queue holds (net.unix.max_dgram_qlen, 512 by
        // default); nobody reads them. The proxy's one thread must not wait for room.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for _ in 0..5_000 {
                let _ = log.make_writer().write_all(b"line\n");
            }
            let _ = tx.send(());
        });
        let done = rx.recv_timeout(std::time::Duration::from_secs(30));
        let _ = std::fs::remove_file(&path);
        assert!(done.is_ok(), "logging blocked on a full syslog socket");
    }

    #[test]
    fn lines_reach_a_restarted_syslog_daemon() {
        let path =
            std::env::temp_dir().join(format!("nsmp-syslog-again-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let first = UnixDatagram::bind(&path).expect("bind");
        let log = Syslog::connect(&path, 16, "t").expect("connect");
        // The daemon restarts: its socket file is made anew at the same path.
        drop(first);
        std::fs::remove_file(&path).expect("remove");
        let second = UnixDatagram::bind(&path).expect("bind again");
        second
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        log.make_writer().write_all(b"after\n").expect("write");
        let mut buf = [0u8; 256];
        let got = second.recv(&mut buf);
        let _ = std::fs::remove_file(&path);
        let n = got.expect("the line reaches the new socket");
        assert!(String::from_utf8_lossy(&buf[..n]).ends_with(": after"));
    }
}
