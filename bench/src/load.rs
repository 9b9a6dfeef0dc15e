//! Direct Unix-socket load against the agent stand-in, to show its ceiling.
//!
//! wrk cannot speak to a Unix socket, and wrk through socat would measure socat's
//! fork-per-connection instead of the agent; so this sends the same requests the proxies
//! send (XFF and router id headers), from one current-thread runtime (one core), with the
//! same connection behaviour as the proxy mode being compared.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;

use crate::parse_head;

const REQUEST_CLOSE: &[u8] = b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\nX-Forwarded-For: 10.250.0.2\r\nX-Neutron-Router-ID: 00000000-0000-4000-8000-000000000001\r\nConnection: close\r\n\r\n";
const REQUEST_KEEP: &[u8] = b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\nX-Forwarded-For: 10.250.0.2\r\nX-Neutron-Router-ID: 00000000-0000-4000-8000-000000000001\r\n\r\n";

/// Totals of one load run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// 200 responses received.
    pub ok: u64,
    /// Any other outcome (error, non-200, early close).
    pub errors: u64,
}

/// Run `conns` concurrent clients for `duration`; `reuse` keeps each connection open.
pub async fn run(socket: &Path, conns: usize, duration: Duration, reuse: bool) -> Totals {
    let deadline = Instant::now() + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let socket = socket.to_owned();
        tasks.spawn(async move {
            let mut t = Totals::default();
            while Instant::now() < deadline {
                match client(&socket, reuse, deadline).await {
                    Ok(n) => t.ok += n,
                    Err(n) => {
                        t.ok += n;
                        t.errors += 1;
                    }
                }
            }
            t
        });
    }
    let mut sum = Totals::default();
    while let Some(res) = tasks.join_next().await {
        if let Ok(t) = res {
            sum.ok += t.ok;
            sum.errors += t.errors;
        }
    }
    sum
}

/// One connection: one request, or requests until the deadline when reusing.
/// Returns the number of 200s; `Err` carries the 200s seen before a failure.
async fn client(socket: &Path, reuse: bool, deadline: Instant) -> Result<u64, u64> {
    let mut stream = UnixStream::connect(socket).await.map_err(|_| 0u64)?;
    let mut buf = Vec::with_capacity(1024);
    let mut ok = 0u64;
    loop {
        let req = if reuse { REQUEST_KEEP } else { REQUEST_CLOSE };
        stream.write_all(req).await.map_err(|_| ok)?;
        let head = loop {
            match parse_head(&buf) {
                Ok(Some(h)) => break h,
                Ok(None) => {
                    if stream.read_buf(&mut buf).await.map_err(|_| ok)? == 0 {
                        return Err(ok);
                    }
                }
                Err(_) => return Err(ok),
            }
        };
        while buf.len() < head.len + head.content_length {
            if stream.read_buf(&mut buf).await.map_err(|_| ok)? == 0 {
                return Err(ok);
            }
        }
        buf.drain(..head.len + head.content_length);
        if head.status != Some(200) {
            return Err(ok);
        }
        ok += 1;
        if !reuse || head.close || Instant::now() >= deadline {
            return Ok(ok);
        }
    }
}
