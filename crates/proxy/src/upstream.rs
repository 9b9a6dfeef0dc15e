//! The agent connection: connect over the Unix socket, the optional keep-alive pool
//! (`--agent-keepalive`), one request/response exchange with the retry rule, and relaying
//! the response to the VM.

use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncWrite, AsyncWriteExt, Interest};
use tokio::time::timeout;

use ns_contract::KeepaliveMode;

use crate::bufpool::Buf;
use crate::http1;
use crate::request;
use crate::response::{self, ForClient, Framing, RespInfo};
use crate::workers::PerThread;

/// Idle connections kept at most (enough for the c32 benchmark shape).
pub const POOL_MAX: usize = 32;
/// Idle lifetime in `on` mode when the agent advertises nothing.
const DEFAULT_IDLE: Duration = Duration::from_secs(2);
/// `auto` against an agent that does not advertise reuse: how often one request goes
/// without `Connection: close`, to see whether it advertises now (an agent swapped behind
/// the same socket path). One answer with the header switches back at once, whatever the
/// request asked: `ns-metadata-agent` advertises on every answer.
const PROBE_EVERY: Duration = Duration::from_secs(10);

/// Why the VM gets an error instead of the agent's answer.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("agent unavailable: {0}")]
    Unavailable(io::Error),
    #[error("agent closed the connection without a reply")]
    NoReply,
    #[error("agent timed out")]
    Timeout,
    #[error(transparent)]
    BadResponse(#[from] response::RespError),
    #[error("agent send failed: {0}")]
    Send(io::Error),
    #[error("proxy shutting down before the agent answered")]
    ShuttingDown,
}

impl UpError {
    /// The access line's `term`: which side ended the exchange, and how.
    pub fn term(&self) -> &'static str {
        match self {
            UpError::Unavailable(_) => "agent_unavailable",
            UpError::NoReply => "agent_closed",
            UpError::Timeout => "agent_timeout",
            UpError::BadResponse(_) => "agent_bad_response",
            UpError::Send(_) => "agent_send_failed",
            UpError::ShuttingDown => "proxy_shutdown",
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            UpError::Unavailable(_) | UpError::ShuttingDown => 503,
            UpError::Timeout => 504,
            UpError::NoReply | UpError::BadResponse(_) | UpError::Send(_) => 502,
        }
    }
}

/// A connected agent socket not yet registered with the runtime.
struct Fresh(StdUnix);

/// The connection a request goes out on.
enum Conn {
    Fresh(Fresh),
    Pooled(Reg),
}

type StdUnix = std::os::unix::net::UnixStream;

/// An agent socket registered with the runtime, for reads only. A Unix socket takes a
/// whole request at once, so the proxy never waits to write in the usual case; with write
/// interest too (what tokio's `UnixStream` registers), every change of the send buffer (the
/// agent reading the request) is an edge-triggered `EPOLLOUT` that wakes the proxy for
/// nothing: two extra `epoll_wait` returns per request against nginx at low load, one
/// against a close-mode agent. Only a write that could not complete registers writes too.
type Reg = AsyncFd<StdUnix>;

/// An agent connection, registered with the runtime only once it has to be waited on: a
/// fresh connection whose whole answer is already there when it is first read is never
/// registered (no `epoll_ctl` ADD and DEL).
struct Stream {
    plain: Option<StdUnix>,
    reg: Option<Reg>,
    /// `reg` waits for writability too.
    rw: bool,
}

impl Stream {
    fn pooled(reg: Reg) -> Stream {
        Stream {
            plain: None,
            reg: Some(reg),
            rw: false,
        }
    }

    fn fresh(s: StdUnix) -> Stream {
        Stream {
            plain: Some(s),
            reg: None,
            rw: false,
        }
    }

    /// The registered socket, registering it (reads only) now if needed.
    fn reg(&mut self) -> io::Result<&Reg> {
        if let Some(p) = self.plain.take() {
            self.reg = Some(register(p, Interest::READABLE)?);
        }
        self.reg.as_ref().ok_or_else(lost)
    }

    fn into_reg(mut self) -> io::Result<Reg> {
        self.reg()?;
        self.reg.take().ok_or_else(lost)
    }

    /// The socket, registered or not.
    fn sock(&self) -> io::Result<&StdUnix> {
        match (&self.plain, &self.reg) {
            (Some(p), _) => Ok(p),
            (None, Some(r)) => Ok(r.get_ref()),
            (None, None) => Err(lost()),
        }
    }

    /// Read what is there without waiting, into the spare room of `b`; whether bytes came.
    fn read_now(&mut self, b: &mut Buf) -> bool {
        let Some(p) = &self.plain else { return false };
        read_spare(p, b).unwrap_or(0) > 0
    }

    /// Wait until the agent sent something, and read it into the spare room of `b`
    /// (0: EOF).
    async fn read(&mut self, b: &mut Buf) -> io::Result<usize> {
        let reg = self.reg()?;
        loop {
            let mut ready = reg.readable().await?;
            if let Ok(r) = ready.try_io(|s| read_spare(s.get_ref(), b)) {
                return r;
            }
        }
    }

    /// Write all of `data`: straight to the socket, and only if its buffer is full,
    /// registered for writability and waiting for it.
    async fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let r = if self.rw {
                let reg = self.reg.as_ref().ok_or_else(lost)?;
                let mut ready = reg.writable().await?;
                match ready.try_io(|s| s.get_ref().write(data)) {
                    Ok(r) => r,
                    Err(_) => continue,
                }
            } else {
                self.sock()?.write(data)
            };
            match r {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => data = data.get(n..).unwrap_or_default(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && !self.rw => {
                    let s = match (self.plain.take(), self.reg.take()) {
                        (Some(p), _) => p,
                        (None, Some(r)) => r.into_inner(),
                        (None, None) => return Err(lost()),
                    };
                    self.reg = Some(register(s, Interest::READABLE | Interest::WRITABLE)?);
                    self.rw = true;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Register an agent socket with the runtime for `interest`.
fn register(s: StdUnix, interest: Interest) -> io::Result<Reg> {
    // tokio 1.54 deprecates the safe constructors because a borrowed raw fd could be closed
    // behind the reactor's back; a `UnixStream` moved in owns its fd, so this is sound (as
    // crates/spawner/src/launch.rs does for its pidfd).
    #[allow(deprecated)]
    AsyncFd::with_interest(s, interest)
}

fn lost() -> io::Error {
    io::Error::other("agent connection lost")
}

/// One `read` into the spare room of `b` (at least one byte of room), straight into its
/// uninitialised capacity: zero-filling the 4 kB room first cost a `memset` per answer.
fn read_spare(s: &StdUnix, b: &mut Vec<u8>) -> io::Result<usize> {
    if b.len() == b.capacity() {
        b.reserve(1);
    }
    Ok(rustix::io::read(s, rustix::buffer::spare_capacity(b))?)
}

/// A pooled connection the agent has not closed and sent nothing on since its last
/// answer. Costs no syscall while the runtime has seen no event on it.
fn alive(reg: &Reg) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match reg.poll_read_ready(&mut cx) {
        std::task::Poll::Pending => true,
        std::task::Poll::Ready(Err(_)) => false,
        std::task::Poll::Ready(Ok(mut ready)) => {
            let mut probe = [0u8; 1];
            // Nothing to read (readiness cleared): still open. EOF or stray bytes: unusable.
            ready.try_io(|s| s.get_ref().read(&mut probe)).is_err()
        }
    }
}

/// Connect without the runtime: a Unix-socket connect completes or fails at once (no
/// `EINPROGRESS`; a full backlog is `EAGAIN`), so tokio's wait for writability and its
/// `SO_ERROR` check would only cost a wake-up and a syscall per request.
fn connect_now(path: &std::path::Path) -> io::Result<StdUnix> {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
    use std::os::fd::AsRawFd;
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    socket::connect(fd.as_raw_fd(), &addr)?;
    Ok(StdUnix::from(fd))
}

/// Counts an exchange in flight while alive.
struct InFlight<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(n: &'a std::sync::atomic::AtomicUsize) -> Self {
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InFlight(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

struct Idle {
    stream: Reg,
    expires: Instant,
}

/// `auto` only: what the agent's answers said about reuse (issue 19). An agent that keeps
/// connections open without advertising reuse (nginx, any plain HTTP/1.1 server) is asked
/// to close, as `off` does, instead of being left with a connection for the proxy to close:
/// that cost nginx 1.35x its CPU per request (bench figure 12). Nothing unadvertised is ever
/// pooled (Neutron's agent handles one request per connection and reads it with one
/// `recv`); asking to close only makes the agent end what the proxy would end anyway.
#[derive(Debug)]
struct Advertised {
    base: Instant,
    /// 0: the last answer advertised reuse, or no answer came yet: send no
    /// `Connection: close`. Otherwise the agent does not advertise: ask it to close until
    /// this time (ms after `base`), when one request goes without (the probe).
    probe_at: std::sync::atomic::AtomicU64,
}

impl Advertised {
    fn new(now: Instant) -> Advertised {
        Advertised {
            base: now,
            probe_at: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.base).as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Whether a request on a fresh connection should ask the agent to close. The first
    /// request once the probe is due goes without (and moves the next probe on); the
    /// others keep asking until its answer is in.
    fn ask_close(&self, now: impl FnOnce() -> Instant) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let at = self.probe_at.load(Relaxed);
        if at == 0 {
            return false;
        }
        let now = self.ms(now());
        if now < at {
            return true;
        }
        let next = now.saturating_add(PROBE_EVERY.as_millis() as u64);
        self.probe_at
            .compare_exchange(at, next, Relaxed, Relaxed)
            .is_err()
    }

    /// An answer came, with (`true`) or without the reuse header.
    fn saw(&self, advertised: bool, now: impl FnOnce() -> Instant) {
        use std::sync::atomic::Ordering::Relaxed;
        let at = self.probe_at.load(Relaxed);
        if advertised {
            if at != 0 {
                self.probe_at.store(0, Relaxed);
            }
        } else if at == 0 {
            // Not moved on by every answer, or a steady load would never probe.
            let next = self
                .ms(now())
                .saturating_add(PROBE_EVERY.as_millis() as u64);
            let _ = self.probe_at.compare_exchange(0, next, Relaxed, Relaxed);
        }
    }
}

/// What the exchange needs to know about the request besides its bytes.
#[derive(Debug, Clone, Copy)]
pub struct Exchange {
    /// Safe to send again on a fresh connection (an idempotent method).
    pub retry_ok: bool,
    /// The body's bytes at the end of the request buffer (0: none).
    pub body_len: usize,
    /// About the VM's request, for the head it gets.
    pub fc: ForClient,
}

/// Where the agent's answer is relayed: the VM's connection and its write timeout
/// (`--timeout-client`).
#[derive(Debug)]
pub struct Client<'a, C> {
    pub io: &'a mut C,
    pub timeout: Duration,
}

/// The agent's address, timeouts and the pool.
pub struct Agent {
    path: PathBuf,
    mode: KeepaliveMode,
    connect_timeout: Duration,
    /// Connect attempts: haproxy's `retries` (3 in Neutron's template) plus the first.
    connect_tries: u32,
    server_timeout: Duration,
    /// Idle connections, one pool per serving thread ([`crate::workers`]): a connection is
    /// registered with the runtime of the thread that made it.
    pools: PerThread<Mutex<Vec<Idle>>>,
    /// Exchanges in flight per serving thread: with others running on the same thread, a
    /// fresh connection's answer is looked for once after the others had their turn,
    /// before registering the socket.
    inflight: PerThread<std::sync::atomic::AtomicUsize>,
    /// Set when the shutdown grace is over: requests still waiting for the agent's head
    /// answer 503 at once instead of being cut without a reply.
    give_up: tokio::sync::watch::Sender<bool>,
    /// New and pooled agent connections are counted here (issue #17).
    stats: std::sync::Arc<crate::stats::Stats>,
    /// `auto`: whether the agent advertises reuse.
    advertised: Advertised,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("path", &self.path)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// How an exchange ended, for the access log and the connection loop.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub status: u16,
    /// Bytes written to the VM (head and body).
    pub bytes: u64,
    /// The VM connection must be closed now.
    pub client_close: bool,
}

impl Agent {
    pub fn new(
        path: PathBuf,
        mode: KeepaliveMode,
        connect_timeout: Duration,
        server_timeout: Duration,
    ) -> Agent {
        Agent {
            path,
            mode,
            connect_timeout,
            connect_tries: crate::config::DEFAULT_RETRIES + 1,
            server_timeout,
            pools: PerThread::new(|| Mutex::new(Vec::new())),
            inflight: PerThread::new(|| std::sync::atomic::AtomicUsize::new(0)),
            give_up: tokio::sync::watch::Sender::new(false),
            stats: std::sync::Arc::default(),
            advertised: Advertised::new(Instant::now()),
        }
    }

    /// Count agent connections (new, reused) into the proxy's statistics block.
    pub fn with_stats(mut self, stats: std::sync::Arc<crate::stats::Stats>) -> Agent {
        self.stats = stats;
        self
    }

    /// Retry a refused or full agent connect `retries` times (haproxy's `retries`).
    pub fn with_retries(mut self, retries: u32) -> Agent {
        self.connect_tries = retries.saturating_add(1);
        self
    }

    /// The agent's socket path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(pool: &Mutex<Vec<Idle>>) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        match pool.lock() {
            Ok(p) => p,
            Err(p) => p.into_inner(),
        }
    }

    /// This serving thread's pool.
    fn pool(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        Agent::lock(self.pools.mine())
    }

    /// This serving thread's exchanges in flight.
    fn inflight(&self) -> &std::sync::atomic::AtomicUsize {
        self.inflight.mine()
    }

    /// Serving thread `i` is retired: its pooled connections (registered with its runtime)
    /// are closed.
    pub fn forget(&self, i: usize) {
        if let Some(p) = self.pools.get(i) {
            Agent::lock(p).clear();
        }
    }

    /// The shutdown grace is over: every request still waiting for the agent gets 503.
    pub fn give_up(&self) {
        self.give_up.send_replace(true);
    }

    /// Idle pooled connections right now.
    pub fn idle(&self) -> usize {
        self.pools.iter().map(|p| Agent::lock(p).len()).sum()
    }

    /// Drop expired idle connections (called periodically).
    pub fn prune(&self) {
        let now = Instant::now();
        for p in self.pools.iter() {
            Agent::lock(p).retain(|i| i.expires > now);
        }
    }

    /// Drop expired idle connections and give the pool's spare capacity back (called when
    /// the proxy is idle). Live pooled connections are kept: they hold no buffer, only the
    /// socket, and reusing them is the point of the pool.
    pub fn shrink(&self) {
        let now = Instant::now();
        for p in self.pools.iter() {
            let mut pool = Agent::lock(p);
            pool.retain(|i| i.expires > now);
            pool.shrink_to_fit();
        }
    }

    /// A live idle connection: the newest first; expired or closed ones are dropped.
    fn take(&self) -> Option<Reg> {
        let now = Instant::now();
        let mut pool = self.pool();
        while let Some(idle) = pool.pop() {
            if idle.expires > now && alive(&idle.stream) {
                return Some(idle.stream);
            }
        }
        None
    }

    fn put(&self, stream: Reg, hint: Option<u64>) {
        let idle = match hint {
            // Stay below the agent's own idle timeout so it never closes one under us.
            Some(0) => return,
            Some(1) => Duration::from_millis(500),
            Some(s) => Duration::from_secs(s.min(3600) - 1),
            None => DEFAULT_IDLE,
        };
        let mut pool = self.pool();
        if pool.len() < POOL_MAX {
            pool.push(Idle {
                stream,
                expires: Instant::now() + idle,
            });
        }
    }

    /// Connect, retrying a full backlog or a refused connection; all within
    /// `--timeout-connect`.
    async fn connect(&self) -> Result<Fresh, UpError> {
        match timeout(self.connect_timeout, self.connect_tries()).await {
            Ok(r) => {
                if r.is_ok() {
                    self.stats.agent_conn(false);
                }
                r
            }
            Err(_) => Err(UpError::Unavailable(io::Error::new(
                io::ErrorKind::TimedOut,
                "connect timed out",
            ))),
        }
    }

    async fn connect_tries(&self) -> Result<Fresh, UpError> {
        let mut last = None;
        for attempt in 0..self.connect_tries {
            match connect_now(&self.path) {
                Ok(s) => return Ok(Fresh(s)),
                Err(e) => {
                    // A missing socket will not appear within a retry; a full backlog
                    // (EAGAIN) or a restarting agent (ECONNREFUSED) may recover.
                    let again = matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::ConnectionRefused
                    );
                    last = Some(e);
                    if !again || attempt + 1 >= self.connect_tries {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20 << attempt.min(5))).await;
                }
            }
        }
        Err(UpError::Unavailable(
            last.unwrap_or_else(|| io::Error::other("connect failed")),
        ))
    }

    /// Send the request in `buf` (head and body, one write) and relay the answer to
    /// `client`. `buf` is reused for the VM's response head once the agent's head arrived
    /// (no retry is possible after that), saving a buffer per request in flight. On `Err`
    /// nothing has been written to the client.
    pub async fn exchange<C>(
        &self,
        buf: &mut Buf,
        x: Exchange,
        mut client: Client<'_, C>,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> Result<Outcome, UpError>
    where
        C: AsyncWrite + Unpin,
    {
        let Exchange {
            retry_ok,
            body_len,
            fc,
        } = x;
        let mut rbuf = Buf::get();
        let (mut conn, mut pooled) = match (self.mode, self.take()) {
            (KeepaliveMode::Off, _) | (_, None) => {
                self.after_the_turn().await;
                (self.connect_fresh(buf, body_len).await?, false)
            }
            (_, Some(s)) => {
                self.stats.agent_conn(true);
                (Conn::Pooled(s), true)
            }
        };
        let _inflight = InFlight::new(self.inflight());
        let (mut stream, info) = loop {
            let result = match self.write_request(conn, buf).await {
                Ok(mut s) => {
                    if s.plain.is_some()
                        && self.inflight().load(std::sync::atomic::Ordering::Relaxed) > 1
                    {
                        // Let the other requests run first; under load the agent has
                        // usually answered by then.
                        tokio::task::yield_now().await;
                        s.read_now(&mut rbuf);
                    }
                    match self.read_head(&mut s, buf, &mut rbuf, fc, stop).await {
                        Ok(info) => Ok((s, info)),
                        Err(e) => Err((e, true)),
                    }
                }
                Err(e) => Err((e, false)),
            };
            match result {
                Ok(r) => break r,
                Err((e, wrote)) => {
                    // Retry once, on a fresh connection, only when a pooled connection
                    // failed before any response byte, for an idempotent method, and
                    // the body was not delivered (issue 8).
                    let failed_early = matches!(e, UpError::NoReply | UpError::Send(_));
                    if pooled && failed_early && retry_ok && (body_len == 0 || !wrote) {
                        tracing::debug!(err = %e, "pooled agent connection failed, retrying once");
                        conn = self.connect_fresh(buf, body_len).await?;
                        pooled = false;
                        rbuf.clear();
                        continue;
                    }
                    return Err(e);
                }
            }
        };
        if self.mode == KeepaliveMode::Auto {
            self.advertised
                .saw(info.keepalive_hint.is_some(), Instant::now);
        }
        let (outcome, reusable) = self
            .relay_body(&mut stream, &mut rbuf, buf, &info, &mut client)
            .await;
        let keep = match self.mode {
            KeepaliveMode::Off => false,
            KeepaliveMode::On => true,
            KeepaliveMode::Auto => info.keepalive_hint.is_some(),
        };
        if keep && reusable && info.agent_reusable {
            if let Ok(s) = stream.into_reg() {
                self.put(s, info.keepalive_hint);
            }
        }
        Ok(outcome)
    }

    /// With other exchanges in flight, let the other requests of this runtime turn be read
    /// first (issue 19): the turn's agent connects and requests then go out together, once
    /// the VMs' requests are all in, and wake the agent once for all of them. Connected
    /// one by one between the reads, each `connect` and request woke the agent on its own,
    /// and a Unix socket's wake-up is synchronous: the agent ran on the proxy's core and
    /// preempted its only thread, about once per request. Measured side by side at c32
    /// keep-alive against the close-mode stand-in (loopback; bench/RESULTS.md, figure 12
    /// section): agent wake-ups per request 0.10-0.57 → 0.06-0.12, proxy CPU per request
    /// about 8% lower, the agent's 10-50% lower. A lone request does not wait (nothing else
    /// to read); yielding before every connect measured no better.
    async fn after_the_turn(&self) {
        if self.inflight().load(std::sync::atomic::Ordering::Relaxed) > 0 {
            tokio::task::yield_now().await;
        }
    }

    /// A fresh connection for the request in `buf`; in `auto` against an agent that does
    /// not advertise reuse, the request now asks it to close.
    async fn connect_fresh(&self, buf: &mut Buf, body_len: usize) -> Result<Conn, UpError> {
        let fresh = self.connect().await?;
        if self.mode == KeepaliveMode::Auto && self.advertised.ask_close(Instant::now) {
            request::ask_close(buf, body_len);
        }
        Ok(Conn::Fresh(fresh))
    }

    /// Write the request in `buf` (head and body) and return the connection. The request
    /// goes straight to the socket: a Unix socket's send buffer takes a whole request at
    /// once, so the usual case costs no wait for a writable event (tokio's `UnixStream`
    /// waits for one before the first write on a new registration) and a fresh connection
    /// is not registered yet.
    async fn write_request(&self, conn: Conn, buf: &[u8]) -> Result<Stream, UpError> {
        let mut stream = match conn {
            Conn::Pooled(s) => Stream::pooled(s),
            Conn::Fresh(Fresh(s)) => Stream::fresh(s),
        };
        match timeout(self.server_timeout, stream.write_all(buf)).await {
            Ok(Ok(())) => Ok(stream),
            Ok(Err(e)) => Err(UpError::Send(e)),
            Err(_) => Err(UpError::Timeout),
        }
    }

    /// Read the response head; on success `buf` holds the VM's head instead of the request
    /// (on failure it still holds the request, for the retry).
    async fn read_head(
        &self,
        stream: &mut Stream,
        buf: &mut Buf,
        rbuf: &mut Buf,
        fc: ForClient,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> Result<RespInfo, UpError> {
        let mut give_up = self.give_up.subscribe();
        // Bytes already read (see `Stream::read_now`) are parsed before reading more.
        let mut have = !rbuf.is_empty();
        loop {
            if have {
                have = false;
                match response::parse(rbuf, for_client(fc, stop), buf) {
                    Ok(Some(info)) => return Ok(info),
                    Ok(None) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if rbuf.len() == rbuf.capacity() && rbuf.len() < response::MAX_RESP_HEAD {
                let len = rbuf.len();
                rbuf.reserve(len);
            }
            let read = tokio::select! {
                r = timeout(self.server_timeout, stream.read(rbuf)) => r,
                _ = give_up.wait_for(|g| *g) => return Err(UpError::ShuttingDown),
            };
            let n = match read {
                Err(_) => return Err(UpError::Timeout),
                Ok(Ok(n)) => n,
                Ok(Err(_)) if rbuf.is_empty() => return Err(UpError::NoReply),
                Ok(Err(_)) => 0,
            };
            if n == 0 {
                if rbuf.is_empty() {
                    return Err(UpError::NoReply);
                }
                // Neutron's agent ends a bodyless non-200 head at EOF without the empty
                // line (webob's str(Response)): complete it and parse once more.
                rbuf.extend_from_slice(b"\r\n\r\n");
                return match response::parse(rbuf, for_client(fc, stop), buf) {
                    // A head that promises a body, cut at EOF: nothing more can come, so the
                    // VM gets a 502 (as from haproxy), not a head and then a close.
                    Ok(Some(info))
                        if matches!(info.framing, Framing::Chunked)
                            || matches!(info.framing, Framing::Length(n) if n > 0) =>
                    {
                        Err(response::RespError("head cut short").into())
                    }
                    Ok(Some(mut info)) => {
                        info.agent_reusable = false;
                        Ok(info)
                    }
                    // Some bytes came: not "no reply", and never retried.
                    Ok(None) => Err(response::RespError("truncated head").into()),
                    Err(e) => Err(e.into()),
                };
            }
            match response::parse(rbuf, for_client(fc, stop), buf) {
                Ok(Some(info)) => return Ok(info),
                Ok(None) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Relay the head (in `hbuf`) and the body. Returns the outcome and whether the agent
    /// connection ended cleanly at the end of the body (so it may be pooled).
    async fn relay_body<C>(
        &self,
        stream: &mut Stream,
        rbuf: &mut Buf,
        hbuf: &mut Buf,
        info: &RespInfo,
        client: &mut Client<'_, C>,
    ) -> (Outcome, bool)
    where
        C: AsyncWrite + Unpin,
    {
        let mut out = Outcome {
            status: info.status,
            bytes: 0,
            client_close: info.client_close,
        };
        let mut body = Body::new(info);
        // First write: the head plus whatever body bytes came with it.
        let mut start = info.head_len.min(rbuf.len());
        loop {
            let (done, clean) = match body.take(&rbuf[start..], hbuf) {
                Ok(r) => r,
                Err(()) => {
                    out.client_close = true;
                    (true, false)
                }
            };
            if !hbuf.is_empty() {
                match timeout(client.timeout, client.io.write_all(hbuf)).await {
                    Ok(Ok(())) => out.bytes += hbuf.len() as u64,
                    _ => {
                        out.client_close = true;
                        return (out, false);
                    }
                }
                hbuf.clear();
            }
            if done {
                return (out, clean);
            }
            rbuf.clear();
            start = 0;
            let read = timeout(self.server_timeout, stream.read(rbuf)).await;
            match read {
                Ok(Ok(n)) if n > 0 => {}
                // EOF ends a close-delimited body; anything else is a truncated answer
                // the VM must not take for complete: close its connection.
                Ok(Ok(_)) if body.framing == Framing::Close => {
                    let _ = timeout(client.timeout, client.io.flush()).await;
                    return (out, false);
                }
                _ => {
                    out.client_close = true;
                    return (out, false);
                }
            }
        }
    }
}

/// A shutdown that began while the agent was answering still closes the VM connection
/// with `Connection: close` in this answer.
fn for_client(fc: ForClient, stop: &tokio::sync::watch::Receiver<bool>) -> ForClient {
    ForClient {
        keep_alive: fc.keep_alive && !*stop.borrow(),
        ..fc
    }
}

/// Tracks where the response body ends and what of it goes to the VM.
struct Body {
    framing: Framing,
    remaining: u64,
    decoder: http1::Decoder,
    decode: bool,
}

impl Body {
    fn new(info: &RespInfo) -> Body {
        Body {
            framing: info.framing,
            remaining: match info.framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            decoder: http1::Decoder::default(),
            decode: info.decode_chunked,
        }
    }

    /// Move the VM's share of `input` into `dst`. Returns (body complete, agent stream
    /// positioned exactly at the end: nothing extra was sent).
    fn take(&mut self, input: &[u8], dst: &mut Vec<u8>) -> Result<(bool, bool), ()> {
        match self.framing {
            Framing::None => Ok((true, input.is_empty())),
            Framing::Length(_) => {
                let n = input
                    .len()
                    .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                dst.extend_from_slice(&input[..n]);
                self.remaining -= n as u64;
                Ok((self.remaining == 0, n == input.len()))
            }
            Framing::Close => {
                dst.extend_from_slice(input);
                Ok((false, false))
            }
            Framing::Chunked => {
                // The data goes on, framed again in strict CRLF chunks (or bare for an
                // HTTP/1.0 client): the agent's bare LFs, extensions and trailers, which
                // the decoder tolerates, are not a message every VM client can read.
                let decode = self.decode;
                let used = self
                    .decoder
                    .feed(input, |d| {
                        if !decode {
                            let _ = write!(dst, "{:x}\r\n", d.len());
                        }
                        dst.extend_from_slice(d);
                        if !decode {
                            dst.extend_from_slice(b"\r\n");
                        }
                    })
                    .map_err(|_| ())?;
                let done = self.decoder.is_done();
                if done && !decode {
                    dst.extend_from_slice(b"0\r\n\r\n");
                }
                Ok((done, used == input.len()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `read_spare` appends what one `read` gives after the bytes already there, grows a
    /// full buffer, says 0 at EOF and passes `WouldBlock` on.
    #[test]
    fn read_spare_appends_into_the_spare_room() {
        let (a, mut b) = StdUnix::pair().expect("pair");
        a.set_nonblocking(true).expect("nonblocking");
        let mut v = Vec::with_capacity(8);
        v.extend_from_slice(b"abc");
        b.write_all(b"hello").expect("write");
        assert_eq!(read_spare(&a, &mut v).expect("read"), 5);
        assert_eq!(v, b"abchello");
        assert_eq!(v.capacity(), 8, "no allocation while there is room");
        b.write_all(b"xy").expect("write");
        assert_eq!(
            read_spare(&a, &mut v).expect("read"),
            2,
            "a full buffer grows"
        );
        assert_eq!(v, b"abchelloxy");
        let e = read_spare(&a, &mut v).expect_err("nothing to read");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        drop(b);
        assert_eq!(read_spare(&a, &mut v).expect("eof"), 0);
        assert_eq!(v, b"abchelloxy");
    }

    /// What the VM gets of a chunked answer: strict `CRLF` chunked framing whatever line
    /// ends, extensions or trailers the agent used (they are the agent's, not a valid
    /// message for every client), the same data, and the end exactly where the agent's is.
    #[test]
    fn a_chunked_answer_is_relayed_with_strict_framing() {
        let info = RespInfo {
            status: 200,
            head_len: 0,
            framing: Framing::Chunked,
            agent_reusable: true,
            keepalive_hint: None,
            client_close: false,
            decode_chunked: false,
        };
        let agent: &[u8] = b"5\nhello\n3;ext=\"a b\"\r\nabc\r\n0\nX-Trailer: \x01x\n\n";
        for step in 1..=agent.len() {
            let mut body = Body::new(&info);
            let mut vm = Vec::new();
            let mut ends = Vec::new();
            for part in agent.chunks(step) {
                ends.push(body.take(part, &mut vm).expect("valid"));
            }
            assert_eq!(ends.last(), Some(&(true, true)), "step {step}");
            let mut d = http1::Decoder::default();
            let mut data = Vec::new();
            let used = d.feed(&vm, |b| data.extend_from_slice(b)).expect("strict");
            assert!(d.is_done() && used == vm.len(), "step {step}: {vm:?}");
            assert_eq!(data, b"helloabc");
            assert!(
                !vm.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'),
                "{vm:?}"
            );
            assert!(vm.ends_with(b"\r\n0\r\n\r\n") && !vm.contains(&1), "{vm:?}");
        }
        // For an HTTP/1.0 client the data alone, as before.
        let mut body = Body::new(&RespInfo {
            decode_chunked: true,
            ..info
        });
        let mut vm = Vec::new();
        assert_eq!(body.take(agent, &mut vm), Ok((true, true)));
        assert_eq!(vm, b"helloabc");
    }

    /// `auto`: no `Connection: close` until an answer comes without the reuse header; then
    /// every request asks to close but one per [`PROBE_EVERY`]; one advertised answer (the
    /// probe's, or any other) ends the asking at once.
    #[test]
    fn auto_asks_an_unadvertised_agent_to_close_and_probes_it() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let a = Advertised::new(t0);
        assert!(!a.ask_close(|| at(5)), "nothing known yet");
        a.saw(false, || at(10));
        assert!(a.ask_close(|| at(11)));
        a.saw(false, || at(9_000)); // later answers do not put the probe off
        let due = 10 + PROBE_EVERY.as_millis() as u64;
        assert!(a.ask_close(|| at(due - 1)));
        assert!(!a.ask_close(|| at(due)), "the probe goes without");
        assert!(a.ask_close(|| at(due)), "one probe only");
        assert!(a.ask_close(|| at(due + 100)), "until its answer");
        a.saw(false, || at(due + 200)); // the probe's answer: still no header
        let next = due + PROBE_EVERY.as_millis() as u64;
        assert!(a.ask_close(|| at(next - 1)));
        assert!(!a.ask_close(|| at(next)), "the next probe");
        a.saw(true, || at(next + 1)); // the agent advertises now
        assert!(!a.ask_close(|| at(next + 2)));
        assert!(!a.ask_close(|| at(next + 3)));
    }

    /// A request the socket buffer cannot take at once (the agent reading slowly) still
    /// reaches the agent whole: the stream then waits for writability instead of failing.
    #[tokio::test]
    async fn a_request_larger_than_the_socket_buffer_arrives_whole() {
        let (a, b) = StdUnix::pair().expect("pair");
        a.set_nonblocking(true).expect("nonblocking");
        nix::sys::socket::setsockopt(&a, nix::sys::socket::sockopt::SndBuf, &4096)
            .expect("SO_SNDBUF");
        let data: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
        let reader = std::thread::spawn(move || {
            let mut v = Vec::new();
            (&b).read_to_end(&mut v).map(|_| v)
        });
        let mut s = Stream::fresh(a);
        s.write_all(&data).await.expect("write");
        drop(s);
        let got = reader.join().expect("reader thread").expect("read");
        assert_eq!(got.len(), data.len());
        assert!(got == data, "bytes changed on the way");
    }

    /// An answer found by the read before registration, whole or in part, reaches the VM
    /// whole; the socket is registered only when more had to be waited for.
    #[tokio::test]
    async fn an_answer_read_before_registration_is_relayed_whole() {
        let agent = Agent::new(
            PathBuf::from("/nonexistent"),
            KeepaliveMode::Off,
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        for split in [resp.len(), 10, resp.len() - 2] {
            let (mut a, b) = std::os::unix::net::UnixStream::pair().expect("pair");
            b.set_nonblocking(true).expect("nonblocking");
            a.write_all(&resp[..split]).expect("write");
            let mut s = Stream::fresh(b);
            let mut rbuf = Buf::get();
            assert!(s.read_now(&mut rbuf));
            assert_eq!(&rbuf[..], &resp[..split]);
            a.write_all(&resp[split..]).expect("write rest");
            let mut buf = Buf::get();
            let fc = ForClient {
                is_head: false,
                minor: 1,
                keep_alive: true,
            };
            let (_tx, stop) = tokio::sync::watch::channel(false);
            let info = agent
                .read_head(&mut s, &mut buf, &mut rbuf, fc, &stop)
                .await
                .expect("head");
            let mut sink = Vec::new();
            let mut client = Client {
                io: &mut sink,
                timeout: Duration::from_secs(1),
            };
            let (out, _) = agent
                .relay_body(&mut s, &mut rbuf, &mut buf, &info, &mut client)
                .await;
            let client = sink;
            assert_eq!(out.status, 200, "split at {split}");
            assert!(
                client.starts_with(b"HTTP/1.1 200 OK\r\n"),
                "split at {split}"
            );
            assert!(client.ends_with(b"\r\n\r\nhello"), "split at {split}");
            assert_eq!(s.reg.is_some(), split < resp.len(), "split at {split}");
        }
    }
}
