//! Forwarding to Nova's metadata API: same method, path, query and body, plus
//! X-Forwarded-For, X-Instance-ID, X-Tenant-ID and the signature Nova checks
//! (neutron/common/metadata.py `_proxy_request`).

use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{header, HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ns_contract::headers::{X_FORWARDED_FOR, X_INSTANCE_ID, X_INSTANCE_ID_SIGNATURE, X_TENANT_ID};
use sha2::Sha256;

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
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
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
            .wrap_connector(http);
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
            let resp = match (self.client.request(req).await, again) {
                // A pooled keep-alive connection Nova closed just as it was reused (its idle
                // timeout, a restart) fails with no answer; Neutron's agent, which never
                // reuses one, would have got the answer: an idempotent request goes once
                // more, on a connection the pool opens anew. A refused connect is not retried.
                (Err(e), Some(again)) if !e.is_connect() => {
                    tracing::debug!(url = %uri, err = %ErrChain(&e), "Nova connection lost before an answer; sent once more");
                    self.client.request(again).await?
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
            Ok::<_, hyper_util::client::legacy::Error>((parts, bytes))
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
                tracing::warn!(url = %uri, err = %ErrChain(&err), "Nova metadata server unreachable");
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
            _ => {}
        }
        let mut out = Resp::new(Full::new(bytes));
        *out.status_mut() = parts.status;
        for (name, value) in &parts.headers {
            if !DROPPED.contains(&name.as_str()) {
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
