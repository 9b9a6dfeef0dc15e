//! The serving loop: accept on every listener under `--max-connections`, one task per
//! connection, graceful shutdown, and idle housekeeping (pool pruning, buffer release).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::config::{Config, Timeouts};
use crate::ratelimit::RateLimiter;
use crate::request::Upstream;
use crate::upstream::Agent;
use crate::{bufpool, conn};

/// How long in-flight requests may finish after SIGTERM (Neutron sends SIGKILL after 5 s).
pub const GRACE: Duration = Duration::from_secs(3);
const HOUSEKEEPING: Duration = Duration::from_secs(5);

/// State every connection reads.
#[derive(Debug)]
pub struct Shared {
    pub id: String,
    pub upstream: Upstream,
    pub agent: Agent,
    pub ratelimit: Option<RateLimiter>,
    pub timeouts: Timeouts,
}

impl Shared {
    pub fn new(cfg: &Config) -> Shared {
        Shared {
            id: cfg.resource.id().to_owned(),
            upstream: Upstream {
                id_line: cfg.resource.header_line(),
                close: cfg.agent_keepalive == crate::upstream::KeepaliveMode::Off,
            },
            agent: Agent::new(
                cfg.socket.clone(),
                cfg.agent_keepalive,
                cfg.timeouts.connect,
                cfg.timeouts.server,
            ),
            ratelimit: cfg
                .rate_limit
                .map(|r| RateLimiter::new(r.base, r.burst, r.versions)),
            timeouts: cfg.timeouts,
        }
    }
}

/// Serve until `shutdown` resolves, then stop accepting, let in-flight requests finish
/// for up to `grace`, and return. Must run on a current-thread runtime (the buffer pool
/// is per thread).
pub async fn serve(
    shared: Arc<Shared>,
    listeners: Vec<TcpListener>,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let sem = Arc::new(Semaphore::new(max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    // Each accept loop holds one permit while it waits for a connection.
    let waiting = listeners.len();
    for l in listeners {
        tokio::spawn(accept_loop(l, shared.clone(), sem.clone(), stop_rx.clone()));
    }
    tokio::spawn(housekeeping(
        shared.clone(),
        sem.clone(),
        max_connections.saturating_sub(waiting),
        stop_rx.clone(),
    ));
    shutdown.await;
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
            "grace period over, closing open connections"
        );
    }
}

async fn accept_loop(
    l: TcpListener,
    shared: Arc<Shared>,
    sem: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let permit = tokio::select! {
            p = sem.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        let (sock, peer) = tokio::select! {
            r = l.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(err = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            conn::serve(shared, sock, peer, stop).await;
            drop(permit);
        });
    }
}

/// Every few seconds: drop expired agent connections; once no client connection has been
/// open for a whole period, hand pooled buffers back to the allocator. `idle_permits`: the
/// free permits when no client connection is open.
async fn housekeeping(
    shared: Arc<Shared>,
    sem: Arc<Semaphore>,
    idle_permits: usize,
    mut stop: watch::Receiver<bool>,
) {
    let mut was_idle = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(HOUSEKEEPING) => {}
            _ = stop.changed() => return,
        }
        shared.agent.prune();
        let idle = sem.available_permits() >= idle_permits;
        if idle && was_idle && bufpool::pooled() > 0 {
            bufpool::release();
            tracing::debug!("idle: released buffers");
        }
        was_idle = idle;
    }
}
