//! The serving loop: accept on every listener under `--max-connections`, one task per
//! connection on the serving thread [`crate::workers`] chooses, graceful shutdown,
//! rate-limited accept-error logging, and idle housekeeping (pool pruning; when the proxy
//! goes idle, freed memory and extra serving threads are given back).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::bufpool;
use crate::conn::{Conn, Served};
/// The state connections share lives in [`crate::state`]; named here too for the callers
/// of [`serve`].
pub use crate::state::Shared;

/// How long in-flight requests may finish after SIGTERM (Neutron sends SIGKILL after 5 s).
/// The listeners are closed at once (after a restart by socket takeover the new proxy holds
/// them too, so nothing waiting in their accept queues is lost); idle keep-alive connections
/// get [`crate::conn::DRAIN_IDLE`] to send a last request, answered with `Connection: close`.
pub const GRACE: Duration = Duration::from_secs(3);
const HOUSEKEEPING: Duration = Duration::from_secs(5);
/// No connection open and none accepted for this long: the proxy counts as idle.
const QUIET: Duration = Duration::from_millis(1500);
/// The longest gap between two housekeeping ticks (a tick, then the quiet wait before a
/// release): a heartbeat period at least twice as long is beaten by the tick, with no timer
/// (no wake-up) of its own ([`crate::stats::Heartbeat`]).
pub const BEAT_COVERED: Duration =
    Duration::from_millis(ns_contract::proxy_stats::HEARTBEAT_TICK_GAP_MS);
const _: () = assert!(BEAT_COVERED.as_millis() >= HOUSEKEEPING.as_millis() + QUIET.as_millis());
/// Memory is given back at most this often.
const RELEASE_EVERY: Duration = Duration::from_secs(5);
/// Back-off after accept(2) ran out of descriptors or memory (the error repeats at once).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// While accept(2) keeps failing, one summary line at most this often.
const ACCEPT_REPORT_EVERY: Duration = Duration::from_secs(60);

/// Serve `listeners` (listening, non-blocking) until `shutdown` resolves, then stop
/// accepting, let in-flight requests finish for up to `grace`, and return. Must run on a
/// current-thread runtime (the buffer pool is per thread; busy, connections also go to the
/// serving threads of [`crate::workers`]).
pub async fn serve(
    shared: Arc<Shared>,
    listeners: Vec<std::net::TcpListener>,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    serve_capped(shared, listeners, max_connections, None, shutdown, grace).await;
}

/// [`serve`] where every connection also takes a permit of `global`, a cap shared with other
/// namespaces served by the same process (the shared model, [`crate::shared`]): a namespace
/// gets at most `max_connections`, all of them together at most what `global` holds; with
/// `global` there is no housekeeping task per namespace: the caller runs one
/// [`housekeeping_all`] for every namespace.
pub async fn serve_capped(
    shared: Arc<Shared>,
    listeners: Vec<std::net::TcpListener>,
    max_connections: usize,
    global: Option<Arc<Semaphore>>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let sem = Arc::new(Semaphore::new(max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut accepting = Vec::with_capacity(listeners.len());
    for l in listeners {
        // TCP_NODELAY on the listener: Linux copies it to every connection accepted from
        // it, which then needs no setsockopt of its own (one system call per connection);
        // where it cannot be set, each connection sets it.
        let inherited =
            nix::sys::socket::setsockopt(&l, nix::sys::socket::sockopt::TcpNoDelay, &true).is_ok();
        match ns_netns::async_listener(l) {
            Ok(l) => accepting.push((l, inherited)),
            Err(e) => {
                tracing::error!(id = %shared.id, err = %e, "cannot watch a listener; it is not served")
            }
        }
    }
    if global.is_none() {
        tokio::spawn(housekeeping(shared.clone(), stop_rx.clone()));
    }
    let caps = || Caps {
        own: sem.clone(),
        global: global.clone(),
    };
    // Every listener's accept loop in this task, not one of its own: a shared server handed
    // thousands of namespaces at once (after a kill -9) schedules one task per namespace
    // (issue #20). The loops end with the shutdown, when this future is dropped.
    let accepting =
        async {
            futures::future::join_all(accepting.into_iter().map(|(l, nodelay)| {
                accept_loop(l, nodelay, shared.clone(), caps(), stop_rx.clone())
            }))
            .await;
            std::future::pending::<()>().await
        };
    tokio::select! {
        () = accepting => {}
        () = shutdown => {}
    }
    tracing::info!(id = %shared.id, "shutting down");
    let _ = stop_tx.send(true);
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    // Every connection holds a permit: having them all back means all are done.
    if tokio::time::timeout(grace, sem.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            open = max_connections - sem.available_permits(),
            "grace period over, answering 503 to requests still waiting for the agent"
        );
        // A moment to write those answers; what is left (a body being relayed) is cut.
        shared.agent.give_up();
        let _ = tokio::time::timeout(GIVE_UP_WRITE, sem.acquire_many(all)).await;
    }
}

/// After the grace: time to write the 503s of requests still waiting for the agent.
const GIVE_UP_WRITE: Duration = Duration::from_millis(300);

/// Logging of failed accept(2) calls without a log storm: at the descriptor limit every
/// accept fails again at once, for as long as the limit is hit. One warning when errors
/// start, a summary at most every [`ACCEPT_REPORT_EVERY`] while they go on, one info line
/// when an accept succeeds again.
#[derive(Debug, Default)]
struct AcceptErrors {
    /// When the current run of errors started, and when it was last reported.
    since: Option<(Instant, Instant)>,
    /// Errors in the run not yet reported, and in total.
    unreported: u64,
    total: u64,
}

impl AcceptErrors {
    fn failed(&mut self, e: &io::Error, now: Instant) {
        self.total += 1;
        match &mut self.since {
            None => {
                self.since = Some((now, now));
                tracing::warn!(
                    err = %e,
                    "accept failed; repeats are summarized every {} s until it recovers",
                    ACCEPT_REPORT_EVERY.as_secs()
                );
            }
            Some((start, reported)) => {
                self.unreported += 1;
                if now.saturating_duration_since(*reported) >= ACCEPT_REPORT_EVERY {
                    tracing::warn!(
                        err = %e,
                        errors = self.unreported,
                        failing_for_s = now.saturating_duration_since(*start).as_secs(),
                        "accept still failing"
                    );
                    *reported = now;
                    self.unreported = 0;
                }
            }
        }
    }

    fn succeeded(&mut self, now: Instant) {
        if let Some((start, _)) = self.since.take() {
            tracing::info!(
                errors = self.total,
                failed_for_ms = now.saturating_duration_since(start).as_millis() as u64,
                "accept works again"
            );
            self.total = 0;
            self.unreported = 0;
        }
    }
}

/// Errors after which accept(2) fails again at once, so the loop must wait a little.
fn needs_backoff(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EMFILE | nix::libc::ENFILE | nix::libc::ENOBUFS | nix::libc::ENOMEM)
    )
}

/// The connection caps an accept loop honours: its own namespace's, and the process's.
struct Caps {
    own: Arc<Semaphore>,
    global: Option<Arc<Semaphore>>,
}

impl Caps {
    /// A permit of each cap (the namespace's first, so a namespace at its own limit never
    /// holds a global permit while it waits).
    async fn acquire(&self) -> Option<(OwnedSemaphorePermit, Option<OwnedSemaphorePermit>)> {
        let own = self.own.clone().acquire_owned().await.ok()?;
        let global = match &self.global {
            Some(g) => Some(g.clone().acquire_owned().await.ok()?),
            None => None,
        };
        Some((own, global))
    }
}

async fn accept_loop(
    l: AsyncFd<std::net::TcpListener>,
    nodelay: bool,
    shared: Arc<Shared>,
    caps: Caps,
    mut stop: watch::Receiver<bool>,
) {
    let mut errors = AcceptErrors::default();
    loop {
        let permit = tokio::select! {
            p = caps.acquire() => match p { Some(p) => p, None => return },
            _ = stop.changed() => return,
        };
        let (fd, peer) = tokio::select! {
            r = accept(&l) => match r {
                Ok(x) => x,
                Err(e) => {
                    errors.failed(&e, Instant::now());
                    if needs_backoff(&e) {
                        // EMFILE and friends: back off instead of spinning.
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        errors.succeeded(Instant::now());
        if !nodelay {
            let _ = nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::TcpNoDelay, &true);
        }
        shared.activity.opened();
        shared.stats.conn_opened();
        let (place, open) = if caps.global.is_some() {
            // The shared model: a flooded namespace is served off the quiet ones' thread.
            crate::workers::place_namespace(shared.activity.open() > crate::workers::BUSY_NAMESPACE)
        } else {
            crate::workers::place()
        };
        let accepted = Accepted {
            shared: shared.clone(),
            peer,
            stop: stop.clone(),
            _permit: permit,
            movable: caps.global.is_some(),
        };
        // Registered with the runtime of the thread that serves it, when it first runs there.
        let conn = serve_accepted(accepted, std::net::TcpStream::from(fd), open, true);
        match place {
            crate::workers::Place::Here => drop(tokio::spawn(conn)),
            crate::workers::Place::On(helper) => drop(helper.spawn(conn)),
        }
    }
}

/// An accepted connection's place in the process: its namespace, its client, the shutdown
/// signal, and the connection caps' permits it holds until closed.
struct Accepted {
    shared: Arc<Shared>,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
    /// Held, never read: released when the connection closes.
    _permit: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
    /// In a process serving many namespaces: a busy namespace's connection may move to a
    /// helper thread between two requests ([`crate::conn::Served::Moved`]).
    movable: bool,
}

/// Serve `sock` on the calling thread (counted there by `open`) until it closes, or until it
/// moves to a helper thread, which then serves it the same way.
async fn serve_accepted(
    a: Accepted,
    sock: std::net::TcpStream,
    open: crate::workers::Open,
    first: bool,
) {
    let served = match TcpStream::from_std(sock) {
        Ok(sock) => {
            Conn::new(a.shared.clone(), sock, a.peer, a.stop.clone())
                .placed(a.movable, first)
                .serve()
                .await
        }
        Err(e) => {
            tracing::warn!(client = %a.peer.ip(), err = %e, "cannot serve an accepted connection");
            Served::Closed
        }
    };
    match served {
        Served::Moved {
            sock,
            to,
            open: there,
        } => {
            drop(open);
            drop(to.spawn(moved(a, sock, there)));
        }
        Served::Closed => {
            let shared = a.shared.clone();
            drop((a, open));
            shared.activity.closed();
            shared.stats.conn_closed();
        }
    }
}

/// [`serve_accepted`] for a connection that moved (boxed: the future is its own caller's).
fn moved(
    a: Accepted,
    sock: std::net::TcpStream,
    open: crate::workers::Open,
) -> futures::future::BoxFuture<'static, ()> {
    Box::pin(serve_accepted(a, sock, open, false))
}

/// One connection from `l` (non-blocking, close-on-exec) and its peer (from `accept4`, no
/// `getpeername`), not registered with any runtime yet: the thread that serves it does
/// that.
async fn accept(l: &AsyncFd<std::net::TcpListener>) -> io::Result<(OwnedFd, SocketAddr)> {
    use rustix::net::{acceptfrom_with, SocketFlags};
    loop {
        let mut ready = l.readable().await?;
        let accepted = ready.try_io(|l| {
            acceptfrom_with(l.get_ref(), SocketFlags::NONBLOCK | SocketFlags::CLOEXEC)
                .map_err(io::Error::from)
        });
        if let Ok(r) = accepted {
            let (fd, addr) = r?;
            let peer = addr
                .and_then(|a| SocketAddr::try_from(a).ok())
                .ok_or_else(|| io::Error::other("accepted a connection without a peer address"))?;
            return Ok((fd, peer));
        }
    }
}

/// Every few seconds: drop expired agent connections. When the proxy goes idle (no client
/// connection open and none accepted for [`QUIET`]) after serving something, give memory
/// back: pooled buffers, spare table capacity, then glibc's free pages
/// ([`ns_netns::release_free_memory`]); at most every [`RELEASE_EVERY`], never while a
/// request is in flight.
async fn housekeeping(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let beat = shared.stats.heartbeat();
    let one = [shared];
    tend(|| one.to_vec(), Some(&one[0].activity.idle), beat, stop).await;
}

/// [`housekeeping`] for every namespace of the shared server in one task (issue #20): one
/// timer for all instead of one per namespace. `states` gives the namespaces served now; the
/// process counts as idle when none of them has a connection open and none accepted one
/// for [`QUIET`]. Runs on the runtime thread that serves them (the buffer pool is per
/// thread) until `stop` changes.
pub async fn housekeeping_all(states: impl Fn() -> Vec<Arc<Shared>>, stop: watch::Receiver<bool>) {
    tend(states, None, None, stop).await;
}

/// Open connections and accepted ones so far, over `all`.
fn activity_of(all: &[Arc<Shared>]) -> (usize, u64) {
    all.iter().fold((0, 0), |(open, seen), s| {
        (
            open + s.activity.open(),
            seen.wrapping_add(s.activity.accepted()),
        )
    })
}

async fn tend(
    states: impl Fn() -> Vec<Arc<Shared>>,
    idle: Option<&tokio::sync::Notify>,
    beat: Option<crate::stats::Heartbeat>,
    mut stop: watch::Receiver<bool>,
) {
    // Accepted count at the last release: nothing new served, nothing to give back.
    let mut released_at = activity_of(&states()).1;
    let mut last_release: Option<Instant> = None;
    loop {
        let went_idle = async {
            match idle {
                Some(n) => n.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(HOUSEKEEPING) => {}
            _ = went_idle => {}
            _ = stop.changed() => return,
        }
        if let Some(b) = &beat {
            b.tick(BEAT_COVERED);
        }
        let all = states();
        for s in &all {
            s.agent.prune();
        }
        let (open, seen) = activity_of(&all);
        drop(all);
        if open > 0 || seen == released_at {
            continue;
        }
        if last_release.is_some_and(|t| t.elapsed() < RELEASE_EVERY) {
            continue; // the next periodic tick tries again
        }
        tokio::select! {
            _ = tokio::time::sleep(QUIET) => {}
            _ = stop.changed() => return,
        }
        let all = states();
        if activity_of(&all) != (0, seen) {
            continue;
        }
        release_memory(&all);
        released_at = seen;
        last_release = Some(Instant::now());
    }
}

/// Give memory kept for the next requests back to the system.
fn release_memory(all: &[Arc<Shared>]) {
    let buffers = bufpool::pooled();
    bufpool::release();
    let now = Instant::now();
    for shared in all {
        shared.agent.shrink();
        if let Some(rl) = &shared.ratelimit {
            rl.shrink(now);
        }
    }
    // Extra serving threads without a connection end, with their agent connections.
    let threads = crate::workers::retire_idle(|i| {
        for shared in all {
            shared.agent.forget(i);
        }
    });
    let trimmed = ns_netns::release_free_memory();
    tracing::debug!(buffers, threads, trimmed, "idle: memory released");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_are_summarized() {
        let mut a = AcceptErrors::default();
        let t0 = Instant::now();
        let e = io::Error::from_raw_os_error(nix::libc::EMFILE);
        assert!(needs_backoff(&e));
        assert!(!needs_backoff(&io::Error::from_raw_os_error(
            nix::libc::ECONNABORTED
        )));
        a.failed(&e, t0);
        for i in 1..50u64 {
            a.failed(&e, t0 + Duration::from_millis(100 * i));
        }
        // No summary within the period: all but the first are still unreported.
        assert_eq!((a.unreported, a.total), (49, 50));
        a.failed(&e, t0 + ACCEPT_REPORT_EVERY);
        assert_eq!(a.unreported, 0, "a summary resets the count");
        a.succeeded(t0 + ACCEPT_REPORT_EVERY * 2);
        assert!(a.since.is_none() && a.total == 0);
    }

    /// What `serve_capped` relies on to skip a setsockopt per connection: Linux copies
    /// `TCP_NODELAY` from a listener to the connections accepted from it (and not otherwise).
    #[test]
    fn accepted_connections_inherit_tcp_nodelay_from_their_listener() {
        use nix::sys::socket::{getsockopt, setsockopt, sockopt::TcpNoDelay};
        for on in [true, false] {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            if on {
                setsockopt(&l, TcpNoDelay, &true).expect("listener nodelay");
            }
            let _c = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
            let (a, _) = l.accept().expect("accept");
            assert_eq!(getsockopt(&a, TcpNoDelay).expect("getsockopt"), on);
        }
    }
}
