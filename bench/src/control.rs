//! The spawner's control API under many records (figure 7, issue 13 item 13): PUT routers
//! through its Unix socket and time each request from `connect` to the last byte of the
//! answer, as a client such as `ns-metadata-spawner router add` sees it (one connection per
//! request).
//!
//! A blocking client on purpose: one request at a time, nothing else in the process, so the
//! time measured is the spawner's.

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::parse_head;

/// One `PUT /v1/routers/<id>` with body `{}` on a fresh connection: the status and the time
/// it took.
pub fn put_router(socket: &Path, id: &str, timeout: Duration) -> anyhow::Result<(u16, Duration)> {
    let start = Instant::now();
    let mut s =
        UnixStream::connect(socket).with_context(|| format!("connect {}", socket.display()))?;
    s.set_read_timeout(Some(timeout)).context("timeout")?;
    s.set_write_timeout(Some(timeout)).context("timeout")?;
    let req = format!(
        "PUT /v1/routers/{id} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    s.write_all(req.as_bytes()).context("write")?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).context("read")?;
        if n == 0 {
            anyhow::bail!("closed after {} bytes", buf.len());
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_head(&buf) {
            Ok(Some(head)) => {
                while buf.len() < head.len + head.content_length {
                    let n = s.read(&mut chunk).context("read body")?;
                    if n == 0 {
                        anyhow::bail!("body truncated");
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let status = head.status.context("not a response")?;
                if status != 200 {
                    anyhow::bail!(
                        "PUT {id}: {status} {}",
                        String::from_utf8_lossy(&buf[head.len..]).trim()
                    );
                }
                return Ok((status, start.elapsed()));
            }
            Ok(None) if buf.len() > 64 * 1024 => anyhow::bail!("head too large"),
            Ok(None) => {}
            Err(e) => anyhow::bail!("bad response head: {e:?}"),
        }
    }
}

/// Nearest-rank percentile (`p` in 0..=100) of unsorted values; `None` when empty.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&[3.0], 99.0), Some(3.0));
        assert_eq!(percentile(&[2.0, 1.0], 50.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
