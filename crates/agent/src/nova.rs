//! Forwarding to Nova's metadata API: same method, path, query and body, plus
//! X-Forwarded-For, X-Instance-ID, X-Tenant-ID and the signature Nova checks
//! (neutron/common/metadata.py `_proxy_request`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{header, Extensions, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{
    capture_connection, Connected, Connection, HttpConnector,
};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ns_contract::headers::{X_FORWARDED_FOR, X_INSTANCE_ID, X_INSTANCE_ID_SIGNATURE, X_TENANT_ID};
use sha2::Sha256;
use tokio::sync::watch;

use crate::config::Config;
use crate::respond::{error, Resp};
use crate::tls::{client_config, TlsError};

/// Lowercase hex HMAC-SHA256 of the instance id keyed by the shared secret
/// (neutron common/utils.py `sign_instance_id`); Nova compares it in constant time.
pub fn sign_instance_id(secret: &str, instance_id: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(instance_id.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Response headers that describe the hop, not the content; hyper writes its own framing.
const DROPPED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "content-length",
    "te",
    "trailer",
    "upgrade",
    "date",
];

/// A pooled HTTP(S) client for one Nova endpoint.
pub struct Nova {
    client: Client<HttpsConnector<Watched<HttpConnector>>, Full<Bytes>>,
    base: String,
    secret: String,
    timeout: Duration,
    max_response: usize,
}

impl Nova {
    /// Read the TLS material now, so a bad file stops the agent at start-up.
    pub fn new(cfg: &Config) -> Result<Nova, TlsError> {
        let tls = client_config(cfg)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.nova_metadata_timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(Watched(http));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(32)
            .build(https);
        Ok(Nova {
            client,
            base: format!("{}://{}", cfg.nova_metadata_protocol, cfg.nova_authority()),
            secret: cfg.metadata_proxy_shared_secret.clone(),
            timeout: cfg.nova_metadata_timeout,
            max_response: cfg.nova_max_response_bytes,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Send the request on and relay Nova's answer. Unreachable: 503 (LP#2059032);
    /// no answer within the timeout: 504; a broken answer, or one larger than
    /// `nova_max_response_bytes`: 502.
    ///
    /// The answer is read whole, under a cap, rather than streamed: Nova's metadata answers
    /// are small (user data is at most 64 KiB), and reading it whole keeps the contract that
    /// a Nova answer that breaks off or times out becomes a clean 502/504 instead of a
    /// truncated 200 the guest would take as data. The cap bounds memory per request.
    pub async fn forward(
        &self,
        method: Method,
        path_and_query: &str,
        xff: &str,
        instance_id: &str,
        project_id: &str,
        body: Bytes,
    ) -> Resp {
        let uri = format!("{}{}", self.base, path_and_query);
        let mut req = Request::new(Full::new(body));
        let retry_ok = method.is_idempotent();
        let head = method == Method::HEAD;
        *req.method_mut() = method;
        *req.uri_mut() = match uri.parse() {
            Ok(u) => u,
            Err(_) => return error(StatusCode::BAD_REQUEST, "The request path is not valid."),
        };
        let h = req.headers_mut();
        for (name, value) in [
            (X_FORWARDED_FOR, xff),
            (X_INSTANCE_ID, instance_id),
            (X_TENANT_ID, project_id),
            (
                X_INSTANCE_ID_SIGNATURE,
                &sign_instance_id(&self.secret, instance_id),
            ),
        ] {
            match HeaderValue::from_str(value) {
                Ok(v) => {
                    h.insert(HeaderName::from_static(name.lower), v);
                }
                Err(_) => {
                    tracing::warn!(
                        header = name.wire,
                        "value not valid in a header; request refused"
                    );
                    return error(StatusCode::BAD_REQUEST, "Invalid header value.");
                }
            }
        }
        // A copy for the one retry: `Request` is not `Clone` (its extensions), its parts are.
        let again = retry_ok.then(|| {
            let mut r = Request::new(req.body().clone());
            *r.method_mut() = req.method().clone();
            *r.uri_mut() = req.uri().clone();
            *r.headers_mut() = req.headers().clone();
            r
        });
        let call = async {
            let resp = match (self.attempt(req).await, again) {
                // A pooled keep-alive connection Nova closed just as it was reused (its idle
                // timeout, a restart) fails with no answer; Neutron's agent, which never
                // reuses one, would have got the answer: an idempotent request goes once
                // more, on a connection the pool opens anew. A refused connect is not retried.
                (Err(e), Some(again)) if e.lost_before_answer() => {
                    tracing::debug!(url = %uri, err = %e, "Nova connection lost before an answer; sent once more");
                    self.attempt(again).await?
                }
                (r, _) => r?,
            };
            let (parts, body) = resp.into_parts();
            let announced = parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let bytes = match announced {
                // Refuse at once when Nova says how much is coming.
                Some(n) if n > self.max_response as u64 => Err(TooLarge(Some(n))),
                _ => Limited::new(body, self.max_response)
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .map_err(|e| {
                        if e.is::<LengthLimitError>() {
                            TooLarge(None)
                        } else {
                            BrokeOff(e)
                        }
                    }),
            };
            Ok::<_, Failed>((parts, bytes))
        };
        let (parts, bytes) = match tokio::time::timeout(self.timeout, call).await {
            Err(_) => {
                tracing::warn!(url = %uri, "Nova did not answer in time");
                return error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "The remote metadata server did not answer in time.",
                );
            }
            Ok(Err(err)) => {
                tracing::warn!(url = %uri, %err, "Nova metadata server unreachable");
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The remote metadata server is temporarily unavailable. Please try again later.",
                );
            }
            Ok(Ok(x)) => x,
        };
        let bytes = match bytes {
            Ok(b) => b,
            Err(TooLarge(size)) => {
                tracing::warn!(
                    url = %uri,
                    size = %size.map_or_else(|| format!("more than {}", self.max_response), |n| n.to_string()),
                    limit = self.max_response,
                    "Nova's answer exceeds nova_max_response_bytes; answering 502"
                );
                return error(
                    StatusCode::BAD_GATEWAY,
                    "The remote metadata server's answer is too large.",
                );
            }
            Err(BrokeOff(err)) => {
                tracing::warn!(url = %uri, %err, "Nova's response broke off");
                return error(
                    StatusCode::BAD_GATEWAY,
                    "The remote metadata server's answer broke off.",
                );
            }
        };
        match parts.status.as_u16() {
            403 => tracing::warn!(
                "Nova answered 403 Forbidden; this usually means metadata_proxy_shared_secret differs from Nova's"
            ),
            500 => tracing::warn!("Nova metadata server had an internal error"),
            // A protocol switch or a redirect is not an answer for the VM: relayed, a 101
            // would make haproxy tunnel, and a Location would show the VM Nova's own address
            // (Neutron's agent relays only Nova's 200, 400, 403, 404, 409 and 5xx; `requests`
            // followed its redirects).
            100..=199 | 300..=399 => {
                tracing::warn!(url = %uri, status = parts.status.as_u16(), "Nova answered with a status that is not relayed; answering 502");
                return error(
                    StatusCode::BAD_GATEWAY,
                    "The remote metadata server's answer cannot be relayed.",
                );
            }
            _ => {}
        }
        let mut out = Resp::new(Full::new(bytes));
        *out.status_mut() = parts.status;
        // Hop-by-hop: the fixed ones, and any the answer names in its `Connection` header.
        let named: Vec<String> = parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|n| n.trim().to_ascii_lowercase())
            .filter(|n| !n.is_empty())
            .collect();
        for (name, value) in &parts.headers {
            // A HEAD answer has no body here to measure: Nova's length is the GET's.
            let length_of_head = head && name == header::CONTENT_LENGTH;
            let hop = DROPPED.contains(&name.as_str()) || named.iter().any(|n| n == name.as_str());
            if length_of_head || !hop {
                out.headers_mut().append(name.clone(), value.clone());
            }
        }
        if !out.headers().contains_key(header::CONTENT_TYPE) {
            out.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=UTF-8"),
            );
        }
        out
    }

    /// One send, up to the answer's head. hyper 1.x hands a request to a pooled HTTP/1
    /// connection's task over a channel; if that task ends (Nova closed the connection) between
    /// the client's check that it is open and the push, the request stays in the channel, held
    /// by the very connection handle this future owns, and neither an answer nor an error ever
    /// comes: only `nova_metadata_timeout` would end it. So the wait for the head also watches
    /// the connection the request went on ([`Watched`]): once that connection's IO is dropped,
    /// and no answer and no other connection (hyper-util's own resend of an unsent request)
    /// has come within [`LOST_GRACE`], the attempt is [`Failed::Lost`]. The body is read
    /// after this returns, so the watch cannot cut an answer short.
    async fn attempt(&self, mut req: Request<Full<Bytes>>) -> Result<Response<Incoming>, Failed> {
        let mut captured = capture_connection(&mut req);
        let lost = async move {
            captured.wait_for_connection_metadata().await;
            connection_lost(|| io_alive(&captured.connection_metadata()), LOST_GRACE).await
        };
        tokio::select! {
            biased;
            r = self.client.request(req) => r.map_err(Failed::Client),
            () = lost => Err(Failed::Lost),
        }
    }
}

/// How long after a connection's IO is dropped an answer on it, or hyper-util's resend on a
/// fresh connection, may still take before the request counts as lost. The answer itself is
/// handed over before the IO is dropped; the margin is for hyper-util's resend of a request
/// that never left, whose fresh connect (and TLS handshake) may take a while.
const LOST_GRACE: Duration = Duration::from_secs(1);

/// Why a send to Nova got no answer.
#[derive(Debug)]
enum Failed {
    Client(hyper_util::client::legacy::Error),
    /// The connection the request went on is gone and no answer came (see [`Nova::attempt`]).
    Lost,
}

impl Failed {
    /// Whether an idempotent request may go once more: anything but a refused connect.
    fn lost_before_answer(&self) -> bool {
        match self {
            Failed::Client(e) => !e.is_connect(),
            Failed::Lost => true,
        }
    }
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Client(e) => ErrChain(e).fmt(f),
            Failed::Lost => f.write_str("the connection closed with the request unanswered"),
        }
    }
}

/// Resolves once the connection `current` names has dropped its IO and, `grace` later,
/// `current` still names it (no answer ended the wait meanwhile, and hyper-util did not move
/// the request to another connection, which is then watched the same way).
async fn connection_lost(
    mut current: impl FnMut() -> Option<watch::Receiver<()>>,
    grace: Duration,
) {
    let mut watched: Option<watch::Receiver<()>> = None;
    loop {
        // A connector without the watch: nothing to tell, the timeout stays the bound.
        let Some(mut rx) = current() else {
            return std::future::pending().await;
        };
        if watched.is_some_and(|w| w.same_channel(&rx)) {
            return;
        }
        // `changed` fails once the sender, owned by the IO, is dropped.
        while rx.changed().await.is_ok() {}
        watched = Some(rx);
        tokio::time::sleep(grace).await;
    }
}

/// The liveness watch of a connection's IO, from the metadata hyper-util captured for a request.
fn io_alive(connected: &Option<Connected>) -> Option<watch::Receiver<()>> {
    let mut ext = Extensions::new();
    connected.as_ref()?.get_extras(&mut ext);
    ext.get::<IoAlive>().map(|a| a.0.clone())
}

/// A receiver whose sender lives in a connection's IO ([`WatchedIo`]): `changed` fails once
/// hyper's connection task has dropped the IO, i.e. the connection is gone.
#[derive(Clone)]
struct IoAlive(watch::Receiver<()>);

/// A connector whose connections carry an [`IoAlive`] in their metadata.
#[derive(Clone)]
struct Watched<C>(C);

impl<C> tower_service::Service<Uri> for Watched<C>
where
    C: tower_service::Service<Uri>,
    C::Future: Send + 'static,
{
    type Response = WatchedIo<C::Response>;
    type Error = C::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, C::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), C::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            let io = connecting.await?;
            Ok(WatchedIo {
                io,
                alive: watch::channel(()).0,
            })
        })
    }
}

/// A connection's IO that owns the sender of its [`IoAlive`] watch, so dropping it (the end
/// of hyper's connection task) tells every request sent on it.
struct WatchedIo<T> {
    io: T,
    alive: watch::Sender<()>,
}

impl<T: Connection> Connection for WatchedIo<T> {
    fn connected(&self) -> Connected {
        self.io.connected().extra(IoAlive(self.alive.subscribe()))
    }
}

impl<T: Read + Unpin> Read for WatchedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for WatchedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

/// Why Nova's answer body could not be relayed.
enum BodyError {
    /// Over the cap; the announced size when Nova gave a Content-Length.
    TooLarge(Option<u64>),
    BrokeOff(Box<dyn std::error::Error + Send + Sync>),
}
use BodyError::{BrokeOff, TooLarge};

/// An error with its sources, on one line (hyper's top-level message says little).
struct ErrChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut src = self.0.source();
        while let Some(s) = src {
            write!(f, ": {s}")?;
            src = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A connection that is never read or written, with an extra of its own (as `TcpStream`
    /// brings `HttpInfo`) to show the watch is added to, not in place of, the inner metadata.
    struct FakeIo;

    impl Connection for FakeIo {
        fn connected(&self) -> Connected {
            Connected::new().extra(7u32)
        }
    }

    fn fake_connection() -> (WatchedIo<FakeIo>, Connected) {
        let io = WatchedIo {
            io: FakeIo,
            alive: watch::channel(()).0,
        };
        let connected = io.connected();
        (io, connected)
    }

    const GRACE: Duration = Duration::from_millis(50);

    /// The stuck request (a send that never ends) on a connection whose IO is then dropped:
    /// reported lost after the grace, not before and not while the IO lives.
    #[tokio::test]
    async fn dropped_connection_under_a_waiting_request_is_lost_after_the_grace() {
        let (io, connected) = fake_connection();
        let mut ext = Extensions::new();
        connected.get_extras(&mut ext);
        assert_eq!(ext.get::<u32>(), Some(&7), "the inner metadata stays");
        let current = Some(connected);
        let waiting =
            tokio::spawn(async move { connection_lost(|| io_alive(&current), GRACE).await });
        tokio::time::sleep(5 * GRACE).await;
        assert!(!waiting.is_finished(), "lost while the connection lives");
        let dropped = tokio::time::Instant::now();
        drop(io);
        let r = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        let waited = dropped.elapsed();
        assert!(matches!(r, Ok(Ok(()))), "not reported lost");
        assert!(waited >= GRACE, "reported before the grace: {waited:?}");
        assert!(waited < Duration::from_secs(2), "reported late: {waited:?}");
    }

    /// hyper-util moved the request to another connection within the grace: that one is
    /// watched instead, and only its loss counts.
    #[tokio::test]
    async fn request_moved_to_another_connection_follows_it() {
        let (first, first_meta) = fake_connection();
        let (second, second_meta) = fake_connection();
        let current = Arc::new(Mutex::new(Some(first_meta)));
        let now = current.clone();
        let lost = tokio::spawn(async move {
            connection_lost(|| io_alive(&now.lock().expect("lock")), GRACE).await
        });
        drop(first);
        *current.lock().expect("lock") = Some(second_meta);
        tokio::time::sleep(5 * GRACE).await;
        assert!(!lost.is_finished(), "lost while the new connection lives");
        drop(second);
        let r = tokio::time::timeout(Duration::from_secs(5), lost).await;
        assert!(
            matches!(r, Ok(Ok(()))),
            "the new connection's loss not reported"
        );
    }

    /// The premise, on a real connection: when Nova closes a pooled connection, hyper's
    /// connection task drops the IO, and with it the watch a request on it holds.
    #[tokio::test]
    async fn closed_pooled_connection_drops_the_watched_io() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.expect("read");
                assert!(n > 0, "request cut short");
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .expect("write");
            // Keep-alive answered; now close it, as Nova's idle timeout or restart would.
            tokio::time::sleep(Duration::from_millis(100)).await;
        });
        let client: Client<Watched<HttpConnector>, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build(Watched(HttpConnector::new()));
        let mut req = Request::new(Full::new(Bytes::new()));
        *req.uri_mut() = format!("http://127.0.0.1:{port}/").parse().expect("uri");
        let captured = capture_connection(&mut req);
        let resp = client.request(req).await.expect("answer");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], b"ok");
        let mut alive = io_alive(&captured.connection_metadata()).expect("watch in the metadata");
        let gone = tokio::time::timeout(Duration::from_secs(5), async {
            while alive.changed().await.is_ok() {}
        })
        .await;
        assert!(gone.is_ok(), "the IO outlived its closed connection");
        server.await.expect("server");
    }

    #[test]
    fn signature_matches_python_hmac() {
        // python3: hmac.new(b"secret", b"vm-1", hashlib.sha256).hexdigest()
        assert_eq!(
            sign_instance_id("secret", "vm-1"),
            "8d8df128f7f73330977b8bd71fc9442bf6c491ce9b938aa95d11265d36ce09f5"
        );
        // Neutron's default secret is empty.
        assert_eq!(
            sign_instance_id("", "6b2c1e0a-1f7e-4c1e-9d9a-2f0c3e4b5a61"),
            "0695deceda96005c4f56ad859d8f1d343103930ef7cb6fad269983ba7076f650"
        );
    }
}
