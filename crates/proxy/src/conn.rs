//! One VM connection: read requests (keep-alive, pipelining kept in order), answer the ones
//! the proxy rejects itself, relay the rest through the agent, one access-log line each.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{timeout, timeout_at};

use crate::bufpool::Buf;
use crate::http1;
use crate::request::{self, Body, ReqInfo};
use crate::response::ForClient;
use crate::state::Shared;
use crate::upstream::{Client, Exchange, UpError};

/// After SIGTERM, how long an idle keep-alive connection waits for its client's next
/// request (answered with `Connection: close`) before it is closed; within the server's
/// [`crate::server::GRACE`].
pub const DRAIN_IDLE: Duration = Duration::from_secs(1);

/// One accepted VM connection and what serving it needs.
pub struct Conn {
    shared: Arc<Shared>,
    sock: TcpStream,
    /// The VM's address (IPv4 plainly, never v4-mapped).
    peer: IpAddr,
    /// The client's source port, for the access line.
    peer_port: u16,
    shutdown: watch::Receiver<bool>,
    /// Served by a process serving many namespaces: between two requests, a connection of a
    /// busy namespace on the main thread moves to a helper ([`crate::workers::move_busy`]).
    movable: bool,
    /// No request read yet (`timeout http-request` for the first byte, not keep-alive's).
    first: bool,
}

/// How [`Conn::serve`] ended.
pub enum Served {
    /// The connection is closed (or given up).
    Closed,
    /// Idle between two requests, taken off this thread's runtime for `to`'s, where it is
    /// counted by `open`; the caller serves it there (no request is read yet).
    Moved {
        sock: std::net::TcpStream,
        to: tokio::runtime::Handle,
        open: crate::workers::Open,
    },
}

/// How a request ended, for the access line's `term` (and, for an agent failure, `reason`).
enum End<'a> {
    /// The agent's answer was relayed.
    Relayed,
    /// The proxy answered itself: a bad request, a timeout, a rate limit.
    Own,
    /// The agent could not answer: the error becomes `reason`.
    Agent(&'a UpError),
    /// No slot with the agent within the queue's wait (`--max-agent-requests`): 503.
    Queue,
}

/// One request, for its answer and its access-log line.
#[derive(Clone, Copy)]
struct Seen<'a> {
    info: Option<&'a ReqInfo>,
    /// The client's bytes (method and target are ranges into them).
    inb: &'a [u8],
    started: Instant,
    /// When the agent was asked (the request was read by then).
    agent: Option<Instant>,
}

impl Conn {
    pub fn new(
        shared: Arc<Shared>,
        sock: TcpStream,
        peer: SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) -> Conn {
        Conn {
            shared,
            sock,
            peer: peer.ip().to_canonical(),
            peer_port: peer.port(),
            shutdown,
            movable: false,
            first: true,
        }
    }

    /// In a process serving many namespaces: may move between requests (`movable`), and
    /// whether it has had no request yet (`first`: false for a connection that moved).
    pub fn placed(mut self, movable: bool, first: bool) -> Conn {
        (self.movable, self.first) = (movable, first);
        self
    }

    /// Serve until the connection closes, times out, or the proxy shuts down; or until,
    /// idle between two requests, it should move to a helper thread. The connection has
    /// `TCP_NODELAY` already, from its listener or set at accept (`server::serve_capped`).
    pub async fn serve(mut self) -> Served {
        // Bytes of a pipelined next request; `None` while idle so an idle connection holds
        // no buffer.
        let mut pending: Option<Buf> = None;
        // A client sends its request right after connecting, so it is usually there by the
        // time the connection is accepted: the first read is tried at once rather than after
        // a runtime turn for the readiness event of a registration this new (which costs one
        // `EAGAIN` when it is not there yet).
        let mut read_at_once = self.first;
        loop {
            if pending.is_none() && self.should_move() {
                if let Some((to, open)) = crate::workers::move_busy() {
                    return match self.sock.into_std() {
                        Ok(sock) => Served::Moved { sock, to, open },
                        Err(e) => {
                            tracing::debug!(client = %self.peer, err = %e, "a connection that could not move to a helper thread is closed");
                            Served::Closed
                        }
                    };
                }
            }
            if pending.is_none() && !std::mem::take(&mut read_at_once) {
                // Wait for the first byte without a buffer: haproxy's `timeout http-request`
                // for a new connection, `timeout http-keep-alive` between requests. A client
                // that sends nothing is closed quietly (no log storm).
                let wait = if self.first {
                    self.shared.timeouts.request
                } else {
                    self.shared.timeouts.keepalive
                };
                // Shutting down (SIGTERM, e.g. a restart whose successor already serves our
                // listeners): an idle connection is not cut at once, since its client may be
                // sending on it right now; its next request is answered with
                // `Connection: close` (`one_request` sees the shutdown), and it is closed if
                // nothing comes within DRAIN_IDLE.
                let draining = *self.shutdown.borrow();
                let wait = if draining { wait.min(DRAIN_IDLE) } else { wait };
                tokio::select! {
                    r = timeout(wait, self.sock.readable()) => {
                        if !matches!(r, Ok(Ok(()))) {
                            tracing::debug!(client = %self.peer, "idle client connection closed");
                            return Served::Closed;
                        }
                    }
                    changed = self.shutdown.changed(), if !draining => {
                        if changed.is_err() {
                            return Served::Closed;
                        }
                        continue;
                    }
                }
            }
            let inb = match pending.take() {
                Some(b) => b,
                None => {
                    // Readiness can be spurious: take a buffer only once bytes are there, so
                    // a silent connection costs its task and socket, no buffer.
                    let mut b = Buf::get();
                    match self.sock.try_read_buf(&mut *b) {
                        Ok(0) => return Served::Closed,
                        Ok(_) => b,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(_) => return Served::Closed,
                    }
                }
            };
            self.first = false;
            match self.one_request(inb).await {
                Some(rest) => pending = rest,
                None => {
                    let _ = self.sock.shutdown().await;
                    return Served::Closed;
                }
            }
            // Answered with keep-alive although a shutdown began meanwhile: the client may
            // send its next request at once, so the loop waits (DRAIN_IDLE) for it and
            // answers it with `Connection: close` rather than closing under it.
        }
    }

    /// A connection of a busy namespace, on the main thread, between two requests, in a
    /// process serving many namespaces, not shutting down.
    fn should_move(&self) -> bool {
        self.movable
            && !self.first
            && crate::workers::index() == 0
            && self.shared.activity.open() > crate::workers::BUSY_NAMESPACE
            && !*self.shutdown.borrow()
    }

    /// Handle one request. `None`: close the connection. `Some(rest)`: keep it, with any
    /// pipelined bytes already read.
    async fn one_request(&mut self, mut inb: Buf) -> Option<Option<Buf>> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started) + self.shared.timeouts.request;
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
            let parsed = if http1::head_may_be_complete(&inb, from, request::MAX_HEAD) {
                request::parse(
                    &inb,
                    &self.shared.upstream,
                    self.peer,
                    out.get_or_insert_with(Buf::get),
                )
            } else {
                Ok(None)
            };
            match parsed {
                Ok(Some(info)) => break info,
                Ok(None) => {}
                Err(e) => {
                    let seen = Seen {
                        info: None,
                        inb: &inb,
                        started,
                        agent: None,
                    };
                    self.answer(e.status(), false, seen).await;
                    return None;
                }
            }
            match timeout_at(deadline, self.sock.read_buf(&mut *inb)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return None,
                Err(_) if inb.is_empty() => {
                    tracing::debug!(client = %self.peer, "client sent nothing, closed");
                    return None;
                }
                Err(_) => {
                    // Partial request: say so (haproxy answers 408 too), then close.
                    let seen = Seen {
                        info: None,
                        inb: &inb,
                        started,
                        agent: None,
                    };
                    self.answer(408, false, seen).await;
                    return None;
                }
            }
        };
        let keep_alive = info.keep_alive && !*self.shutdown.borrow();
        let mut out = out?;

        // 2. The body, which with the head must fit in the agent's single recv.
        let mut chunk_body: Option<Buf> = None;
        let consumed = match self.read_body(&mut inb, &info, &mut chunk_body).await {
            Ok(n) => n,
            Err(status) => {
                if let Some(status) = status {
                    let seen = Seen {
                        info: Some(&info),
                        inb: &inb,
                        started,
                        agent: None,
                    };
                    self.answer(status, false, seen).await;
                }
                return None;
            }
        };
        let body = match &chunk_body {
            Some(b) => &b[..],
            None => &inb[info.head_len..consumed],
        };
        let finished = request::finish(&mut out, info.body, body);
        let body_len = body.len();
        drop(chunk_body);
        let seen = Seen {
            info: Some(&info),
            inb: &inb,
            started,
            agent: None,
        };
        if let Err(e) = finished {
            self.answer(e.status(), false, seen).await;
            return None;
        }

        // 3. Rate limiting (haproxy tracks the request, then denies over the limit).
        if let Some(rl) = &self.shared.ratelimit {
            if rl.deny(self.peer, Instant::now()) {
                let ok = self.answer(429, keep_alive, seen).await;
                return ok.then(|| rest(inb, consumed));
            }
        }

        // 4. A slot with the agent: at most `--max-agent-requests` of this namespace's
        // requests are there at once, the others wait here in order (parked, not runnable,
        // so a flooding namespace cannot fill the shared server's run queue; issue #20).
        // haproxy's `timeout queue` defaults to `timeout connect`: so does this wait.
        let Some(mut slot) = self.shared.queue.enter(self.shared.timeouts.connect).await else {
            let ok = self.answer_for(503, keep_alive, seen, End::Queue).await;
            return ok.then(|| rest(inb, consumed));
        };

        // 5. The agent.
        let x = Exchange {
            retry_ok: info.idempotent,
            body_len,
            fc: ForClient {
                is_head: info.is_head,
                minor: info.minor,
                keep_alive,
            },
        };
        let client = Client {
            io: &mut self.sock,
            timeout: self.shared.timeouts.client,
        };
        let asked = Instant::now();
        // In company a slow exchange gives its young place back (`relayq`).
        let result = slot
            .hold(
                self.shared
                    .agent
                    .exchange(&mut out, x, client, &self.shutdown),
            )
            .await;
        // How long the agent took sets this namespace's share of the slots in company.
        self.shared.queue.answered(asked);
        drop(slot);
        drop(out);
        let seen = Seen {
            agent: Some(asked),
            ..seen
        };
        match result {
            Ok(o) => {
                self.shared.agent_ok();
                self.access_log(seen, o.status, o.bytes, End::Relayed);
                if o.client_close || !keep_alive {
                    return None;
                }
                Some(rest(inb, consumed))
            }
            Err(e) => {
                match &e {
                    UpError::Unavailable(err) => self.shared.agent_unavailable(self.peer, err),
                    _ => {
                        tracing::warn!(client = %self.peer, id = %self.shared.id, err = %e, "agent request failed")
                    }
                }
                let keep = keep_alive && !*self.shutdown.borrow();
                let ok = self
                    .answer_for(e.status(), keep, seen, End::Agent(&e))
                    .await;
                ok.then(|| rest(inb, consumed))
            }
        }
    }

    /// Read the request body. Returns the end of the request in `inb`; a decoded chunked
    /// body goes into `chunked_out`. `Err(Some(status))`: answer and close; `Err(None)`:
    /// just close.
    async fn read_body(
        &mut self,
        inb: &mut Buf,
        info: &ReqInfo,
        chunked_out: &mut Option<Buf>,
    ) -> Result<usize, Option<u16>> {
        let t = self.shared.timeouts.client;
        let mut continued = false;
        match info.body {
            Body::None => Ok(info.head_len),
            Body::Length(n) => {
                let end = info.head_len + n;
                while inb.len() < end {
                    if info.expect_continue && !continued && info.minor >= 1 {
                        continued = true;
                        self.write(http1::CONTINUE, t).await.map_err(|_| None)?;
                    }
                    let missing = end - inb.len();
                    inb.reserve(missing);
                    match timeout(t, self.sock.read_buf(&mut **inb)).await {
                        Ok(Ok(m)) if m > 0 => {}
                        _ => return Err(None),
                    }
                }
                Ok(end)
            }
            Body::Chunked => {
                let mut dec = http1::Decoder::default();
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
                        self.write(http1::CONTINUE, t).await.map_err(|_| None)?;
                    }
                    // Decoded bytes are kept elsewhere: drop the raw ones to bound `inb`.
                    inb.drain(info.head_len..pos);
                    pos = info.head_len;
                    if inb.len() > request::MAX_HEAD + 2 * request::MAX_UPSTREAM {
                        return Err(Some(413));
                    }
                    match timeout(t, self.sock.read_buf(&mut **inb)).await {
                        Ok(Ok(m)) if m > 0 => {}
                        _ => return Err(None),
                    }
                }
            }
        }
    }

    async fn write(&mut self, data: &[u8], t: Duration) -> std::io::Result<()> {
        match timeout(t, self.sock.write_all(data)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }

    /// Write the proxy's own answer and its access-log line. Returns whether the connection
    /// may stay open (`keep` asked for it and the write succeeded).
    async fn answer(&mut self, status: u16, keep: bool, seen: Seen<'_>) -> bool {
        self.answer_for(status, keep, seen, End::Own).await
    }

    async fn answer_for(&mut self, status: u16, keep: bool, seen: Seen<'_>, end: End<'_>) -> bool {
        let mut b = Buf::get();
        http1::error_page(status, keep, &mut b);
        let ok = self.write(&b, self.shared.timeouts.client).await.is_ok();
        self.access_log(seen, status, b.len() as u64, end);
        ok && keep
    }

    /// One line per request, with what haproxy's `httplog` gives operators: client address
    /// and port, method, path, HTTP version, status, bytes, the time to read the request, the
    /// agent's time, the total, how it ended (`term`), and for an agent failure why.
    fn access_log(&self, seen: Seen<'_>, status: u16, bytes: u64, end: End<'_>) {
        let field = |r: Option<std::ops::Range<usize>>| {
            r.and_then(|r| seen.inb.get(r))
                .and_then(|s| std::str::from_utf8(s).ok())
                .unwrap_or("-")
        };
        let method = field(seen.info.map(|i| i.method.clone()));
        let path = field(seen.info.map(|i| i.target.clone()));
        let http = match seen.info.map(|i| i.minor) {
            Some(0) => "1.0",
            Some(_) => "1.1",
            None => "-",
        };
        let now = Instant::now();
        let us = |d: std::time::Duration| d.as_micros() as u64;
        // Until the agent was asked (or until now, for the proxy's own answers).
        let request_us = us(seen.agent.unwrap_or(now).duration_since(seen.started));
        let agent_us = seen.agent.map_or(0, |a| us(now.duration_since(a)));
        let answer = match end {
            End::Relayed => crate::stats::Answer::Relayed,
            End::Own | End::Agent(_) | End::Queue => crate::stats::Answer::Own,
        };
        self.shared
            .stats
            .request(status, answer, now.duration_since(seen.started));
        let (term, reason) = match end {
            End::Relayed => ("agent", None),
            End::Own => ("proxy", None),
            End::Queue => ("queue_timeout", None),
            End::Agent(e) => (e.term(), Some(e as &dyn std::fmt::Display)),
        };
        crate::accesslog::log(
            &crate::accesslog::Access {
                client: self.peer,
                client_port: self.peer_port,
                method,
                path,
                http,
                status,
                bytes,
                request_us,
                agent_us,
                duration_us: us(now.duration_since(seen.started)),
                term,
                reason,
                id: &self.shared.id,
            },
            now,
        );
    }
}

/// Keep the bytes after this request (a pipelined next one), or nothing.
fn rest(mut inb: Buf, consumed: usize) -> Option<Buf> {
    if consumed >= inb.len() {
        return None;
    }
    inb.drain(..consumed);
    Some(inb)
}
