//! One VM connection: read requests (keep-alive, pipelining kept in order), answer the ones
//! the proxy rejects itself, relay the rest through the agent, one access-log line each.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{timeout, timeout_at};

use crate::bufpool::Buf;
use crate::chunked;
use crate::request::{self, Body, ReqInfo};
use crate::response::ForClient;
use crate::server::Shared;

/// Serve one accepted connection until it closes, times out, or the proxy shuts down.
pub async fn serve(
    shared: Arc<Shared>,
    mut sock: TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = sock.set_nodelay(true);
    let peer_ip = peer.ip().to_canonical();
    // Bytes of a pipelined next request; `None` while idle so an idle connection holds
    // no buffer.
    let mut pending: Option<Buf> = None;
    let mut first = true;
    loop {
        if pending.is_none() {
            // Wait for the first byte without a buffer: haproxy's `timeout http-request`
            // for a new connection, `timeout http-keep-alive` between requests. A client
            // that sends nothing is closed quietly (no log storm).
            let wait = if first {
                shared.timeouts.request
            } else {
                shared.timeouts.keepalive
            };
            tokio::select! {
                r = timeout(wait, sock.readable()) => {
                    if !matches!(r, Ok(Ok(()))) {
                        tracing::debug!(client = %peer_ip, "idle client connection closed");
                        return;
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
        let inb = match pending.take() {
            Some(b) => b,
            None => {
                // Readiness can be spurious: take a buffer only once bytes are there, so
                // a silent connection costs its task and socket, no buffer.
                let mut b = Buf::get();
                match sock.try_read_buf(&mut *b) {
                    Ok(0) => return,
                    Ok(_) => b,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(_) => return,
                }
            }
        };
        first = false;
        match one_request(&shared, &mut sock, peer_ip, inb, &shutdown).await {
            Some(rest) => pending = rest,
            None => {
                let _ = sock.shutdown().await;
                return;
            }
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

/// Handle one request. `None`: close the connection. `Some(rest)`: keep it, with any
/// pipelined bytes already read.
async fn one_request(
    shared: &Shared,
    sock: &mut TcpStream,
    peer: IpAddr,
    mut inb: Buf,
    shutdown: &watch::Receiver<bool>,
) -> Option<Option<Buf>> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + shared.timeouts.request;
    // The agent's request is built only once a whole head has arrived, so a slow client
    // holds one buffer, not two.
    let mut out: Option<Buf> = None;
    // Bytes already searched for the end of the head: a client sending its head in many
    // small pieces costs one pass over it, not one per piece.
    let mut scanned = 0;
    // 1. The head, within the request timeout.
    let info = loop {
        let from = scanned;
        scanned = inb.len();
        let parsed = if head_may_be_complete(&inb, from) {
            request::parse(
                &inb,
                &shared.upstream,
                peer,
                out.get_or_insert_with(Buf::get),
            )
        } else {
            Ok(None)
        };
        match parsed {
            Ok(Some(info)) => break info,
            Ok(None) => {}
            Err(e) => {
                reject(shared, sock, peer, started, e.status(), None, &inb).await;
                return None;
            }
        }
        match timeout_at(deadline, sock.read_buf(&mut *inb)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return None,
            Err(_) if inb.is_empty() => {
                tracing::debug!(client = %peer, "client sent nothing, closed");
                return None;
            }
            Err(_) => {
                // Partial request: say so (haproxy answers 408 too), then close.
                reject(shared, sock, peer, started, 408, None, &inb).await;
                return None;
            }
        }
    };
    let keep_alive = info.keep_alive && !*shutdown.borrow();
    let mut out = out?;

    // 2. The body, which with the head must fit in the agent's single recv.
    let mut chunk_body: Option<Buf> = None;
    let consumed = match read_body(shared, sock, &mut inb, &info, &mut chunk_body).await {
        Ok(n) => n,
        Err(status) => {
            if let Some(status) = status {
                reject(shared, sock, peer, started, status, Some(&info), &inb).await;
            }
            return None;
        }
    };
    let body = match &chunk_body {
        Some(b) => &b[..],
        None => &inb[info.head_len..consumed],
    };
    if let Err(e) = request::finish(&mut out, info.body, body) {
        reject(shared, sock, peer, started, e.status(), Some(&info), &inb).await;
        return None;
    }
    let has_body = !body.is_empty();
    drop(chunk_body);

    // 3. Rate limiting (haproxy tracks the request, then denies over the limit).
    if let Some(rl) = &shared.ratelimit {
        if rl.deny(peer, Instant::now()) {
            let ok = error_reply(shared, sock, 429, keep_alive, &info, &inb, peer, started).await;
            return ok.then(|| rest(inb, consumed));
        }
    }

    // 4. The agent.
    let fc = ForClient {
        is_head: info.is_head,
        minor: info.minor,
        keep_alive,
    };
    let result = shared
        .agent
        .exchange(
            &mut out,
            info.idempotent,
            has_body,
            fc,
            shutdown,
            sock,
            shared.timeouts.client,
        )
        .await;
    drop(out);
    match result {
        Ok(o) => {
            access_log(shared, peer, Some(&info), &inb, o.status, o.bytes, started);
            if o.client_close || !keep_alive {
                return None;
            }
            Some(rest(inb, consumed))
        }
        Err(e) => {
            tracing::warn!(client = %peer, id = %shared.id, err = %e, "agent request failed");
            let ok = error_reply(
                shared,
                sock,
                e.status(),
                keep_alive && !*shutdown.borrow(),
                &info,
                &inb,
                peer,
                started,
            )
            .await;
            ok.then(|| rest(inb, consumed))
        }
    }
}

/// A cheap pre-check before parsing: an empty line has arrived since byte `from` (the
/// bytes before it were searched already), or the head limit is hit.
fn head_may_be_complete(b: &[u8], from: usize) -> bool {
    // An end marker may straddle `from`: look back by its length less one.
    let new = b.get(from.saturating_sub(2)..).unwrap_or_default();
    b.len() >= request::MAX_HEAD
        || new.windows(2).any(|w| w == b"\n\n")
        || new.windows(3).any(|w| w == b"\n\r\n")
}

/// Keep the bytes after this request (a pipelined next one), or nothing.
fn rest(mut inb: Buf, consumed: usize) -> Option<Buf> {
    if consumed >= inb.len() {
        return None;
    }
    inb.drain(..consumed);
    Some(inb)
}

/// Read the request body. Returns the end of the request in `inb`; a decoded chunked body
/// goes into `chunked_out`. `Err(Some(status))`: answer and close; `Err(None)`: just close.
async fn read_body(
    shared: &Shared,
    sock: &mut TcpStream,
    inb: &mut Buf,
    info: &ReqInfo,
    chunked_out: &mut Option<Buf>,
) -> Result<usize, Option<u16>> {
    let t = shared.timeouts.client;
    let mut continued = false;
    match info.body {
        Body::None => Ok(info.head_len),
        Body::Length(n) => {
            let end = info.head_len + n;
            while inb.len() < end {
                if info.expect_continue && !continued && info.minor >= 1 {
                    continued = true;
                    write(sock, b"HTTP/1.1 100 Continue\r\n\r\n", t)
                        .await
                        .map_err(|_| None)?;
                }
                let missing = end - inb.len();
                inb.reserve(missing);
                match timeout(t, sock.read_buf(&mut **inb)).await {
                    Ok(Ok(m)) if m > 0 => {}
                    _ => return Err(None),
                }
            }
            Ok(end)
        }
        Body::Chunked => {
            let mut dec = chunked::Decoder::default();
            let mut dst = Buf::get();
            let mut pos = info.head_len;
            loop {
                let mut too_big = false;
                let used = dec
                    .feed(&inb[pos..], |d| {
                        if dst.len() + d.len() > request::MAX_UPSTREAM {
                            too_big = true;
                        } else {
                            dst.extend_from_slice(d);
                        }
                    })
                    .map_err(|_| Some(400))?;
                pos += used;
                if too_big {
                    return Err(Some(413));
                }
                if dec.is_done() {
                    *chunked_out = Some(dst);
                    return Ok(pos);
                }
                if info.expect_continue && !continued {
                    continued = true;
                    write(sock, b"HTTP/1.1 100 Continue\r\n\r\n", t)
                        .await
                        .map_err(|_| None)?;
                }
                // Decoded bytes are kept elsewhere: drop the raw ones to bound `inb`.
                inb.drain(info.head_len..pos);
                pos = info.head_len;
                if inb.len() > request::MAX_HEAD + 2 * request::MAX_UPSTREAM {
                    return Err(Some(413));
                }
                match timeout(t, sock.read_buf(&mut **inb)).await {
                    Ok(Ok(m)) if m > 0 => {}
                    _ => return Err(None),
                }
            }
        }
    }
}

async fn write(sock: &mut TcpStream, data: &[u8], t: std::time::Duration) -> std::io::Result<()> {
    match timeout(t, sock.write_all(data)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

fn reason(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => ("Bad Request", "Your browser sent an invalid request."),
        408 => (
            "Request Time-out",
            "Your browser didn't send a complete request in time.",
        ),
        413 => (
            "Payload Too Large",
            "The request is larger than the metadata agent accepts.",
        ),
        429 => (
            "Too Many Requests",
            "You have sent too many requests in a given amount of time.",
        ),
        431 => (
            "Request Header Fields Too Large",
            "The request header block is too large.",
        ),
        502 => (
            "Bad Gateway",
            "The metadata agent returned an invalid or no response.",
        ),
        503 => (
            "Service Unavailable",
            "No server is available to handle this request.",
        ),
        504 => (
            "Gateway Time-out",
            "The metadata agent didn't respond in time.",
        ),
        _ => ("Error", "Error."),
    }
}

/// Write the proxy's own answer. Returns whether the connection may stay open.
async fn send_status(
    shared: &Shared,
    sock: &mut TcpStream,
    status: u16,
    keep: bool,
) -> (bool, u64) {
    use std::io::Write as _;
    let (title, text) = reason(status);
    let mut body = Buf::get();
    let _ = write!(
        body,
        "<html><head><title>{status} {title}</title></head><body><h1>{status} {title}</h1>\n{text}\n</body></html>\n"
    );
    let mut b = Buf::get();
    let _ = write!(
        b,
        "HTTP/1.1 {status} {title}\r\nContent-Type: text/html\r\nContent-Length: {}\r\nCache-Control: no-cache\r\nConnection: {}\r\n\r\n",
        body.len(),
        if keep { "keep-alive" } else { "close" }
    );
    b.extend_from_slice(&body);
    let ok = write(sock, &b, shared.timeouts.client).await.is_ok();
    (ok && keep, b.len() as u64)
}

#[allow(clippy::too_many_arguments)]
async fn error_reply(
    shared: &Shared,
    sock: &mut TcpStream,
    status: u16,
    keep: bool,
    info: &ReqInfo,
    inb: &[u8],
    peer: IpAddr,
    started: Instant,
) -> bool {
    let (ok, bytes) = send_status(shared, sock, status, keep).await;
    access_log(shared, peer, Some(info), inb, status, bytes, started);
    ok
}

async fn reject(
    shared: &Shared,
    sock: &mut TcpStream,
    peer: IpAddr,
    started: Instant,
    status: u16,
    info: Option<&ReqInfo>,
    inb: &[u8],
) {
    let (_, bytes) = send_status(shared, sock, status, false).await;
    access_log(shared, peer, info, inb, status, bytes, started);
}

fn access_log(
    shared: &Shared,
    peer: IpAddr,
    info: Option<&ReqInfo>,
    inb: &[u8],
    status: u16,
    bytes: u64,
    started: Instant,
) {
    let field = |r: Option<std::ops::Range<usize>>| {
        r.and_then(|r| inb.get(r))
            .and_then(|s| std::str::from_utf8(s).ok())
            .unwrap_or("-")
    };
    let method = field(info.map(|i| i.method.clone()));
    let path = field(info.map(|i| i.target.clone()));
    tracing::info!(
        target: "access",
        client = %peer,
        method,
        path,
        status,
        bytes,
        duration_us = started.elapsed().as_micros() as u64,
        id = %shared.id,
    );
}

#[cfg(test)]
mod tests {
    use super::head_may_be_complete;

    #[test]
    fn head_end_found_across_reads() {
        let head = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        // Whatever the split, searching only the new bytes finds the end, and not before.
        for cut in 0..head.len() {
            let first = head_may_be_complete(&head[..cut], 0);
            let second = head_may_be_complete(head, cut);
            assert!(first || second, "missed the end with the cut at {cut}");
            assert!(!first || cut >= head.len() - 1, "early end at {cut}");
        }
        assert!(head_may_be_complete(b"GET / HTTP/1.0\n\n", 15));
        assert!(!head_may_be_complete(b"GET / HTTP/1.0\n\nX: y\r\n", 17));
    }
}
