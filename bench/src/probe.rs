//! Blocking HTTP probes run from inside network namespaces (figures 4, 5 and 6).
//!
//! The calling thread enters a namespace with `setns` and opens its socket there: a socket
//! stays in the namespace it was created in, so one process can probe 200 namespaces
//! without an `ip netns exec` fork per request (which would dominate the timings).
//! Only the `ns-bench` tool uses this; it is single-threaded, so switching the thread's
//! namespace affects nothing else.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd as _;
use std::time::Duration;

use anyhow::Context as _;
use nix::sched::{setns, CloneFlags};

use crate::parse_head;

/// An open handle on `/run/netns/NAME`.
#[derive(Debug)]
pub struct Netns {
    /// The name under /run/netns.
    pub name: String,
    file: File,
}

impl Netns {
    /// Open a named namespace once; entering it later is one syscall.
    pub fn open(name: &str) -> anyhow::Result<Self> {
        let path = if name.contains('/') {
            name.to_owned()
        } else {
            format!("/run/netns/{name}")
        };
        let file = File::open(&path).with_context(|| format!("open netns {path}"))?;
        Ok(Self {
            name: name.to_owned(),
            file,
        })
    }

    /// Move the calling thread into this namespace.
    pub fn enter(&self) -> anyhow::Result<()> {
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("setns {}", self.name))
    }
}

/// Outcome of one probe request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A complete response with this status.
    Status(u16),
    /// Connect, write or read failed (refused, reset, timeout, garbage).
    Failed(String),
}

/// One `GET /` on a fresh connection (as a VM does), in the thread's current namespace.
pub fn get(addr: SocketAddr, timeout: Duration) -> Probe {
    match try_get(addr, timeout) {
        Ok(status) => Probe::Status(status),
        Err(e) => Probe::Failed(format!("{e:#}")),
    }
}

fn try_get(addr: SocketAddr, timeout: Duration) -> anyhow::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout).context("connect")?;
    stream.set_read_timeout(Some(timeout)).context("timeout")?;
    stream.set_write_timeout(Some(timeout)).context("timeout")?;
    stream
        .write_all(b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\nUser-Agent: ns-bench-probe\r\nConnection: close\r\n\r\n")
        .context("write")?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).context("read")?;
        if n == 0 {
            anyhow::bail!("closed after {} bytes", buf.len());
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_head(&buf) {
            Ok(Some(head)) => {
                let status = head.status.context("not a response")?;
                // Read the body too, so a truncated answer counts as a failure.
                while buf.len() < head.len + head.content_length {
                    let n = stream.read(&mut chunk).context("read body")?;
                    if n == 0 {
                        anyhow::bail!("body truncated");
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                return Ok(status);
            }
            Ok(None) if buf.len() > 64 * 1024 => anyhow::bail!("head too large"),
            Ok(None) => {}
            Err(e) => anyhow::bail!("bad response head: {e:?}"),
        }
    }
}
