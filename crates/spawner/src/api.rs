//! The control API: HTTP/1.1 + JSON on a Unix socket (`<state dir>/control.sock`, mode
//! 0600) with Neutron's field names; `GET /metrics` in Prometheus text ([`crate::metrics`]).
//! Records change only through the supervisor's methods.

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use tokio::net::UnixListener;

use ns_contract::validate_id;

use crate::agent_probe::AgentStatus;
use crate::decide::host_routes;
use crate::metrics;
use crate::platform::Platform;
use crate::records::{network_from_json, router_from_json};
use crate::supervisor::{Applied, Change, ProxyStatus, RecordsState, RestartError, Supervisor};
use crate::{Error, Result};

/// `GET /v1/status`: the agent as just probed, `records.json`, and every proxy.
#[derive(Debug, Serialize)]
pub struct StatusReply {
    pub agent: AgentStatus,
    pub records: RecordsState,
    pub proxies: Vec<ProxyStatus>,
    /// The shared servers (`proxy_model = shared`); left out in the per-namespace model.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<crate::shared_model::ServerStatus>,
}

/// Largest request body accepted (a network with many ports fits easily).
const MAX_BODY: usize = 4 << 20;
/// How long a control client may take to send a request head, and then its body; a
/// stalled client is closed (the CLI sends everything at once).
pub const CLIENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Bind the control socket: a stale socket file (nobody listening) is replaced, a live one
/// is an error (another supervisor runs on this state dir); mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::Invalid(format!(
                "{}: another supervisor is listening on this control socket",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(|e| Error::io("remove stale", path, e))?;
    }
    // Created under a 077 umask, so no other user can connect between bind and chmod.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let l = UnixListener::bind(path).map_err(|e| Error::io("bind", path, e));
    rustix::process::umask(old);
    let l = l?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io("chmod", path, e))?;
    Ok(l)
}

/// Serve the API forever, one task per connection.
pub async fn serve<P: Platform>(sup: Supervisor<P>, listener: UnixListener) {
    loop {
        let stream = accept(&listener).await;
        let sup = sup.clone();
        serve_connection(stream, move |req| {
            let sup = sup.clone();
            async move { handle(&sup, req).await }
        });
    }
}

/// Before READY (the OVN source waiting for its databases): every request is answered 503
/// with `starting: <phase>`, so `status` and `check` say what the daemon waits for instead
/// of hanging. It borrows the listener; [`serve`] takes it over once this is dropped.
pub async fn serve_starting(listener: &UnixListener, phase: tokio::sync::watch::Receiver<String>) {
    loop {
        let stream = accept(listener).await;
        let phase = phase.clone();
        serve_connection(stream, move |_req| {
            let now = phase.borrow().clone();
            async move { error(StatusCode::SERVICE_UNAVAILABLE, format!("starting: {now}")) }
        });
    }
}

/// The next connection on the control socket (accept errors logged and retried).
async fn accept(listener: &UnixListener) -> tokio::net::UnixStream {
    loop {
        match listener.accept().await {
            Ok((s, _)) => return s,
            Err(e) => {
                tracing::warn!(err = %e, "control socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// One task serving HTTP/1 on a control connection with `f` answering each request.
fn serve_connection<F, Fut>(stream: tokio::net::UnixStream, f: F)
where
    F: Fn(Request<Incoming>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    tokio::spawn(async move {
        let svc = hyper::service::service_fn(move |req| {
            let fut = f(req);
            async move { Ok::<_, Infallible>(fut.await) }
        });
        if let Err(e) = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(CLIENT_TIMEOUT)
            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
            .await
        {
            tracing::debug!(err = %e, "control connection");
        }
    });
}

/// Bind `[spawner] metrics_bind`.
pub async fn bind_metrics(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Invalid(format!("[spawner] metrics_bind {addr}: cannot listen: {e}")))
}

/// Serve `GET /metrics` (only that: the control API stays on its root-only Unix socket) on
/// the `metrics_bind` listener, for Prometheus. Any local user can connect to it: at most
/// [`MAX_SCRAPE_CONNECTIONS`] at once (one more is closed at once), each for at most
/// [`SCRAPE_CONNECTION_LIFETIME`], so none can fill the supervisor's descriptor table.
pub async fn serve_metrics<P: Platform>(sup: Supervisor<P>, listener: tokio::net::TcpListener) {
    use ns_contract::metrics::{MAX_SCRAPE_CONNECTIONS, SCRAPE_CONNECTION_LIFETIME};
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPE_CONNECTIONS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(err = %e, "metrics accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = std::sync::Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!("metrics: {MAX_SCRAPE_CONNECTIONS} connections open; one more closed");
            continue;
        };
        let sup = sup.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let sup = sup.clone();
                async move {
                    Ok::<_, Infallible>(match (req.method(), req.uri().path()) {
                        (&Method::GET, "/metrics") => metrics_response(&sup).await,
                        _ => error(
                            StatusCode::NOT_FOUND,
                            "only GET /metrics is served here; the control API is on the control socket",
                        ),
                    })
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(CLIENT_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            match tokio::time::timeout(SCRAPE_CONNECTION_LIFETIME, conn).await {
                Ok(Err(e)) => tracing::debug!(err = %e, "metrics connection"),
                Ok(Ok(())) => {}
                Err(_) => tracing::debug!("metrics connection closed at the end of its lifetime"),
            }
        });
    }
}

/// The Prometheus text of `GET /metrics`.
async fn metrics_response<P: Platform>(sup: &Supervisor<P>) -> Response<Full<Bytes>> {
    let agent = sup.check_agent().await;
    let mut r = Response::new(Full::new(Bytes::from(metrics::render(sup, &agent))));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

fn json<T: Serialize>(code: StatusCode, v: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(v).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(code: StatusCode, reason: impl std::fmt::Display) -> Response<Full<Bytes>> {
    json(code, &serde_json::json!({ "error": reason.to_string() }))
}

/// The answer of a change, or 500 when it was not saved: its line could not be appended to
/// the journal (`journal.rs`; full or read-only state dir), or, for a supervisor without a
/// journal, the last debounced `records.json` save failed. The change is in effect, but a
/// restarted spawner would not know it.
fn saved_or(applied: Applied, ok: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    match applied.saved {
        Ok(()) => ok,
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "change applied but not saved: {e}; a spawner killed before the next records.json save (about 100 ms, if the disk allows: `status` says whether it failed) would not know it; sending it again is safe"
            ),
        ),
    }
}

fn no_content() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

async fn body(req: Request<Incoming>) -> std::result::Result<Bytes, Response<Full<Bytes>>> {
    let read = Limited::new(req.into_body(), MAX_BODY).collect();
    match tokio::time::timeout(CLIENT_TIMEOUT, read).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("cannot read body: {e}"),
        )),
        Err(_) => {
            let mut r = error(StatusCode::REQUEST_TIMEOUT, "request body not sent in time");
            r.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            Err(r)
        }
    }
}

/// Route one request.
pub async fn handle<P: Platform>(
    sup: &Supervisor<P>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    match (parts.as_slice(), &method) {
        (["metrics"], &Method::GET) => metrics_response(sup).await,
        (["v1", "proxies"], &Method::GET) => json(StatusCode::OK, &sup.status()),
        (["v1", "status"], &Method::GET) => {
            let agent = sup.check_agent().await;
            json(
                StatusCode::OK,
                &StatusReply {
                    agent,
                    records: sup.records_state(),
                    proxies: sup.status(),
                    servers: sup.servers(),
                },
            )
        }
        (["v1", "routers"], &Method::GET) => json(
            StatusCode::OK,
            &sup.records().routers().into_values().collect::<Vec<_>>(),
        ),
        (["v1", "networks"], &Method::GET) => json(
            StatusCode::OK,
            &sup.records().networks().into_values().collect::<Vec<_>>(),
        ),
        (["v1", kind @ ("routers" | "networks"), id], m) => {
            if let Err(e) = validate_id(id) {
                return error(StatusCode::BAD_REQUEST, e);
            }
            let routers = *kind == "routers";
            match *m {
                Method::PUT => {
                    let b = match body(req).await {
                        Ok(b) => b,
                        Err(r) => return r,
                    };
                    if routers {
                        match router_from_json(id, &b) {
                            Ok(r) => {
                                let ok = json(StatusCode::OK, &r);
                                saved_or(sup.apply(Change::PutRouter(r)), ok)
                            }
                            Err(e) => error(StatusCode::BAD_REQUEST, e),
                        }
                    } else {
                        match network_from_json(id, &b) {
                            Ok(n) => {
                                let ok = json(StatusCode::OK, &n);
                                saved_or(sup.apply(Change::PutNetwork(n)), ok)
                            }
                            Err(e) => error(StatusCode::BAD_REQUEST, e),
                        }
                    }
                }
                Method::DELETE => {
                    let applied = sup.apply(if routers {
                        Change::RemoveRouter((*id).to_owned())
                    } else {
                        Change::RemoveNetwork((*id).to_owned())
                    });
                    if applied.found {
                        saved_or(applied, no_content())
                    } else {
                        let what = if routers { "router" } else { "network" };
                        error(
                            StatusCode::NOT_FOUND,
                            format!("no {what} {id} was made through the API"),
                        )
                    }
                }
                Method::GET => {
                    let rec = sup.records();
                    let found = if routers {
                        rec.routers()
                            .get(*id)
                            .map(|r| serde_json::to_value(r).unwrap_or_default())
                    } else {
                        rec.networks()
                            .get(*id)
                            .map(|n| serde_json::to_value(n).unwrap_or_default())
                    };
                    match found {
                        Some(v) => json(StatusCode::OK, &v),
                        None => error(
                            StatusCode::NOT_FOUND,
                            format!("no such {} {id}", &kind[..kind.len() - 1]),
                        ),
                    }
                }
                _ => error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("{m} not allowed on {path}"),
                ),
            }
        }
        (["v1", "shared-servers", shard, "restart"], &Method::POST) => {
            let Ok(shard) = shard.parse::<usize>() else {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("shared server {shard:?}: not a number"),
                );
            };
            match sup.restart_server(shard).await {
                Ok(done) => json(StatusCode::OK, &done),
                Err(e) => error(restart_code(&e), e),
            }
        }
        (["v1", "proxies", id, "restart"], &Method::POST) => {
            if let Err(e) = validate_id(id) {
                return error(StatusCode::BAD_REQUEST, e);
            }
            match sup.restart(id).await {
                Ok(done) => json(StatusCode::OK, &done),
                Err(e) => error(restart_code(&e), e),
            }
        }
        (["v1", "networks", id, "host-routes"], &Method::GET) => {
            if let Err(e) = validate_id(id) {
                return error(StatusCode::BAD_REQUEST, e);
            }
            match sup.records().networks().get(*id) {
                Some(n) => json(StatusCode::OK, &host_routes(n, &sup.config())),
                None => error(StatusCode::NOT_FOUND, format!("no such network {id}")),
            }
        }
        (
            ["metrics"]
            | ["v1", "proxies" | "status"]
            | ["v1", "routers" | "networks"]
            | ["v1", "networks", _, "host-routes"]
            | ["v1", "proxies", _, "restart"]
            | ["v1", "shared-servers", _, "restart"],
            m,
        ) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{m} not allowed on {path}"),
        ),
        _ => error(StatusCode::NOT_FOUND, format!("no such resource {path}")),
    }
}

/// The HTTP status of a failed restart.
fn restart_code(e: &RestartError) -> StatusCode {
    match e {
        RestartError::Unknown(_) => StatusCode::NOT_FOUND,
        RestartError::NotRunning(_) => StatusCode::CONFLICT,
        RestartError::Shared => StatusCode::NOT_IMPLEMENTED,
        RestartError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
