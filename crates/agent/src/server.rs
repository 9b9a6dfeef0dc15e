//! Accepting proxy connections on the Unix socket: HTTP/1.1 per connection, keep-alive with a
//! bounded idle time and the `X-NS-Metadata-Keepalive` signal (issue 8), or one request per
//! connection like Neutron's agent; graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use ns_contract::keepalive;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::handler::Agent;

/// Connection behaviour.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// `Some(idle)`: keep connections open up to `idle` between requests and say so.
    pub keepalive: Option<Duration>,
    /// How long in-flight requests may finish after shutdown starts.
    pub grace: Duration,
}

/// Header reads without keep-alive are bounded like haproxy's `timeout http-request`.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

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
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(connection(stream, agent.clone(), opts, stop_rx.clone()));
                }
                Err(err) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
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

/// Per-connection activity, for the idle timer.
struct Activity {
    inflight: AtomicUsize,
    last: Mutex<Instant>,
}

async fn connection(
    stream: tokio::net::UnixStream,
    agent: Arc<Agent>,
    opts: ServeOptions,
    mut stop: watch::Receiver<bool>,
) {
    let act = Arc::new(Activity {
        inflight: AtomicUsize::new(0),
        last: Mutex::new(Instant::now()),
    });
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
        async move {
            act.inflight.fetch_add(1, Ordering::SeqCst);
            let mut resp = agent.handle(req).await;
            if let Some((name, value)) = signal {
                resp.headers_mut().insert(name, value);
            }
            *act.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            act.inflight.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, Infallible>(resp)
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(opts.keepalive.is_some())
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
        }
    }
}
