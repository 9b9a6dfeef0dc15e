//! Accepting proxy connections on the Unix socket: HTTP/1.1 per connection, keep-alive with a
//! bounded idle time and the `X-NS-Metadata-Keepalive` signal (issue 8), or one request per
//! connection like Neutron's agent; graceful shutdown. File descriptors: the soft
//! `RLIMIT_NOFILE` raised to the hard one at start, open connections capped below it (at the
//! cap the oldest idle keep-alive connection is closed for the newcomer, so idle proxy pools
//! cannot lock new clients out), and accept errors reported once per few seconds.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use ns_contract::keepalive;
use tokio::net::UnixListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use crate::handler::Agent;

/// Connection behaviour.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// `Some(idle)`: keep connections open up to `idle` between requests and say so.
    pub keepalive: Option<Duration>,
    /// How long in-flight requests may finish after shutdown starts.
    pub grace: Duration,
    /// Open connections at most (see `connection_cap`).
    pub max_connections: usize,
}

/// Descriptors kept back from the limit for everything that is not a proxy connection
/// (listener, inventory reads, logging, the runtime's own).
const FD_RESERVE: u64 = 64;

/// Raise the soft `RLIMIT_NOFILE` to the hard one ([`ns_contract::rlimit`]). Returns the soft
/// limit in force afterwards.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    ns_contract::rlimit::raise_nofile_to_hard().map(|(soft, _)| soft)
}

/// The connection cap: `configured` when set, else half of what the descriptor limit leaves
/// after a reserve (each proxy connection may hold a Nova connection too).
pub fn connection_cap(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    let cap = soft.saturating_sub(FD_RESERVE) / 2;
    usize::try_from(cap).unwrap_or(usize::MAX).max(1)
}

/// How often a run of accept errors is summarized.
const ACCEPT_REPORT_EVERY: Duration = Duration::from_secs(5);

/// Accept-error log control: the first error of a run is logged, then one summary line per
/// `ACCEPT_REPORT_EVERY` with the count suppressed meanwhile, then one line when accepting
/// works again. The clock is passed in so the test needs no sleeps.
#[derive(Debug, Default)]
struct AcceptErrors {
    /// When the current run started and when it was last reported.
    since: Option<(Instant, Instant)>,
    suppressed: u64,
}

/// What `AcceptErrors` wants logged.
#[derive(Debug, PartialEq, Eq)]
enum AcceptReport {
    First,
    Still { suppressed: u64, for_s: u64 },
    Quiet,
}

impl AcceptErrors {
    fn failed(&mut self, now: Instant) -> AcceptReport {
        match &mut self.since {
            None => {
                self.since = Some((now, now));
                AcceptReport::First
            }
            Some((start, reported)) => {
                self.suppressed += 1;
                if now.saturating_duration_since(*reported) < ACCEPT_REPORT_EVERY {
                    return AcceptReport::Quiet;
                }
                *reported = now;
                let suppressed = std::mem::take(&mut self.suppressed);
                AcceptReport::Still {
                    suppressed,
                    for_s: now.saturating_duration_since(*start).as_secs(),
                }
            }
        }
    }

    /// Accepting works again: returns whether a run of errors just ended.
    fn succeeded(&mut self) -> bool {
        self.suppressed = 0;
        self.since.take().is_some()
    }
}

/// The open connections, for closing the oldest idle one at the cap.
#[derive(Default)]
struct Open {
    conns: Mutex<HashMap<u64, Arc<Activity>>>,
    /// A connection finished a request or closed: a waiting newcomer may find room.
    changed: Notify,
}

impl Open {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Activity>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ask the keep-alive connection idle the longest (one that served a request and has
    /// none in flight) to close. False when every connection is busy or new.
    fn close_oldest_idle(&self) -> bool {
        let conns = self.lock();
        let oldest = conns
            .values()
            .filter(|a| {
                a.served.load(Ordering::SeqCst)
                    && a.inflight.load(Ordering::SeqCst) == 0
                    && !a.evicted.load(Ordering::SeqCst)
            })
            .min_by_key(|a| *a.last.lock().unwrap_or_else(|p| p.into_inner()));
        match oldest {
            Some(a) => {
                a.evicted.store(true, Ordering::SeqCst);
                a.close.notify_one();
                true
            }
            None => false,
        }
    }

    /// Connections not already asked to close.
    fn live(&self) -> usize {
        self.lock()
            .values()
            .filter(|a| !a.evicted.load(Ordering::SeqCst))
            .count()
    }
}

/// Removes a connection from `Open` when its task ends, however it ends.
struct Registered {
    open: Arc<Open>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.open.lock().remove(&self.id);
        self.open.changed.notify_waiters();
    }
}

/// Header reads without keep-alive are bounded like haproxy's `timeout http-request`.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Serve `GET /metrics` (and nothing else: 404) on the `metrics_bind` listener, one task per
/// connection, until the task is aborted. Any local user can connect to it: at most
/// `MAX_SCRAPE_CONNECTIONS` at once (one more is closed at once), each for at most
/// `SCRAPE_CONNECTION_LIFETIME` (`ns_contract::metrics`), so none can fill our descriptor
/// table and starve the agent socket.
pub async fn serve_metrics(listener: tokio::net::TcpListener, agent: Arc<Agent>) {
    use ns_contract::metrics::{MAX_SCRAPE_CONNECTIONS, SCRAPE_CONNECTION_LIFETIME};
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPE_CONNECTIONS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(err = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!("metrics: {MAX_SCRAPE_CONNECTIONS} connections open; one more closed");
            continue;
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let agent = agent.clone();
                async move {
                    let r = if req.method() == http::Method::GET && req.uri().path() == "/metrics" {
                        let mut r = http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(agent.render_metrics()),
                        ));
                        r.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                        );
                        r
                    } else {
                        crate::respond::error(
                            http::StatusCode::NOT_FOUND,
                            "Only GET /metrics is served here.",
                        )
                    };
                    Ok::<_, Infallible>(r)
                }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), svc);
            match tokio::time::timeout(SCRAPE_CONNECTION_LIFETIME, conn).await {
                Ok(Err(e)) => tracing::debug!(err = %e, "metrics connection"),
                Ok(Ok(())) => {}
                Err(_) => tracing::debug!("metrics connection closed at the end of its lifetime"),
            }
        });
    }
}

/// Serve until `shutdown` resolves; then stop accepting, let connections finish for
/// `grace`, and return.
pub async fn serve(
    listener: UnixListener,
    agent: Arc<Agent>,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let open = Arc::new(Open::default());
    let cap = opts.max_connections.max(1);
    let mut errors = AcceptErrors::default();
    let mut next_id = 0u64;
    tokio::pin!(shutdown);
    'accept: loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if errors.succeeded() {
                        tracing::info!("accept works again");
                    }
                    stream
                }
                Err(err) => {
                    match errors.failed(Instant::now()) {
                        AcceptReport::First => tracing::warn!(
                            %err,
                            "accept failed; repeats are summarized every {} s",
                            ACCEPT_REPORT_EVERY.as_secs()
                        ),
                        AcceptReport::Still { suppressed, for_s } => tracing::warn!(
                            %err, suppressed, failing_for_s = for_s, "accept still failing"
                        ),
                        AcceptReport::Quiet => {}
                    }
                    // EMFILE and friends: back off briefly instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        // At the cap: make room by closing the oldest idle keep-alive connection; when all
        // are busy, hold the newcomer until one finishes a request or closes.
        loop {
            let changed = open.changed.notified();
            if open.live() < cap || open.close_oldest_idle() {
                break;
            }
            tokio::select! {
                _ = &mut shutdown => break 'accept,
                _ = changed => {}
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        next_id += 1;
        let act = Arc::new(Activity::new());
        open.lock().insert(next_id, act.clone());
        let reg = Registered {
            open: open.clone(),
            id: next_id,
        };
        conns.spawn(connection(
            stream,
            agent.clone(),
            opts,
            stop_rx.clone(),
            act,
            reg,
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(opts.grace, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = conns.len(),
            "shutdown grace over; closing remaining connections"
        );
        conns.abort_all();
    }
}

/// Per-connection activity, for the idle timer and the cap.
struct Activity {
    inflight: AtomicUsize,
    last: Mutex<Instant>,
    /// At least one request answered: only then is an idle connection a pooled one.
    served: AtomicBool,
    /// Asked to close to make room.
    evicted: AtomicBool,
    close: Notify,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            inflight: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
            served: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            close: Notify::new(),
        }
    }
}

async fn connection(
    stream: tokio::net::UnixStream,
    agent: Arc<Agent>,
    opts: ServeOptions,
    mut stop: watch::Receiver<bool>,
    act: Arc<Activity>,
    // Dropped when this task ends, however it ends: the connection leaves `Open`.
    reg: Registered,
) {
    let open = reg.open.clone();
    let signal = opts.keepalive.map(|idle| {
        (
            HeaderName::from_static(keepalive::HEADER.lower),
            HeaderValue::from(idle.as_secs().max(1)),
        )
    });
    let svc_act = act.clone();
    let svc = service_fn(move |req| {
        let agent = agent.clone();
        let act = svc_act.clone();
        let signal = signal.clone();
        let open = open.clone();
        async move {
            act.inflight.fetch_add(1, Ordering::SeqCst);
            let mut resp = agent.handle(req).await;
            if let Some((name, value)) = signal {
                resp.headers_mut().insert(name, value);
            }
            *act.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            act.served.store(true, Ordering::SeqCst);
            act.inflight.fetch_sub(1, Ordering::SeqCst);
            open.changed.notify_waiters();
            Ok::<_, Infallible>(resp)
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(opts.keepalive.is_some())
        // A client that shuts its side down after its request (`nc -N`, `socat` from an
        // operator's shell) still gets the answer, as from Neutron's agent.
        .half_close(true)
        .timer(TokioTimer::new())
        .header_read_timeout(
            opts.keepalive
                .unwrap_or(HEADER_TIMEOUT)
                .max(Duration::from_secs(1)),
        )
        .max_buf_size(64 * 1024);
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        let idle_check = async {
            match opts.keepalive {
                Some(idle) if !closing => {
                    // While a request is in flight, look again one idle period later.
                    let last = *act.last.lock().unwrap_or_else(|p| p.into_inner());
                    let from = if act.inflight.load(Ordering::SeqCst) > 0 {
                        Instant::now()
                    } else {
                        last
                    };
                    tokio::time::sleep_until((from + idle).into()).await;
                }
                _ => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(err) = res {
                    tracing::debug!(%err, "connection ended with an error");
                }
                return;
            }
            _ = idle_check => {
                let last = *act.last.lock().unwrap_or_else(|p| p.into_inner());
                if act.inflight.load(Ordering::SeqCst) == 0 && last.elapsed() >= opts.keepalive.unwrap_or_default() {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            _ = stop.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = act.close.notified(), if !closing => {
                tracing::debug!("connection cap reached; closing the oldest idle connection");
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_are_summarized_then_recovery_reported() {
        let t0 = Instant::now();
        let mut e = AcceptErrors::default();
        assert_eq!(e.failed(t0), AcceptReport::First);
        for ms in 1..1000 {
            assert_eq!(
                e.failed(t0 + Duration::from_millis(ms)),
                AcceptReport::Quiet
            );
        }
        assert_eq!(
            e.failed(t0 + ACCEPT_REPORT_EVERY),
            AcceptReport::Still {
                suppressed: 1000,
                for_s: ACCEPT_REPORT_EVERY.as_secs()
            }
        );
        assert_eq!(
            e.failed(t0 + ACCEPT_REPORT_EVERY + Duration::from_secs(1)),
            AcceptReport::Quiet
        );
        assert!(e.succeeded());
        assert!(!e.succeeded());
        assert_eq!(e.failed(t0 + Duration::from_secs(60)), AcceptReport::First);
    }

    #[test]
    fn cap_follows_the_descriptor_limit_unless_configured() {
        assert_eq!(connection_cap(3), 3);
        let (soft, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .expect("getrlimit");
        let auto = connection_cap(0) as u64;
        assert!(auto >= 1 && auto < soft, "{auto} vs {soft}");
    }
}
