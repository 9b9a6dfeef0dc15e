//! One request from a proxy: check the identity headers (exactly one resource header of the
//! contract's three), ask the resolver for the instance, then let the answerer answer
//! (neutron/common/metadata.py, neutron/agent/ovn/metadata/server.py).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use ns_contract::headers::X_FORWARDED_FOR;
use ns_contract::{Kind, Resource};

use crate::answer::{Answerer, Asked};
use crate::resolve::{parse_client, Cached, ResolveError};
use crate::respond::{error, Resp};

/// Request bodies are tiny (Nova's password POST is at most 1020 bytes).
pub const MAX_BODY: usize = 64 * 1024;

/// How long a request's body may take to arrive once its head is in: haproxy's `timeout
/// http-request` (Neutron's 30 s). Without it a client sending a declared body a byte at a
/// time held its connection, and one slot of the agent's connection cap, for ever; Neutron's
/// haproxy passes the head on at once and streams the body, so one VM could fill the cap
/// and stall metadata for the whole node. Neutron's own agent reads one `recv` and never
/// waits for a body.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The resource headers in the order the messages name them (Neutron's "Both network N and
/// router R defined." first).
const RESOURCE_KINDS: [Kind; 3] = [Kind::Network, Kind::Router, Kind::OvnNetwork];

/// The request handler shared by all connections.
pub struct Agent {
    pub resolver: Cached,
    pub answerer: Answerer,
    pub metrics: crate::metrics::Metrics,
    /// [`BODY_TIMEOUT`] (shorter in tests).
    pub body_timeout: std::time::Duration,
}

/// Why a header has no single value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NotSingle {
    Repeated,
    NotText,
}

impl NotSingle {
    /// The 400 message for header `wire`.
    fn message(self, wire: &str) -> String {
        match self {
            NotSingle::Repeated => format!("{wire} may appear only once."),
            NotSingle::NotText => format!("{wire} is not text."),
        }
    }
}

/// The single value of a header; Err if it appears more than once or is not text.
fn single<'a>(h: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, NotSingle> {
    let mut it = h.get_all(name).iter();
    match (it.next(), it.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => v
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| NotSingle::NotText),
        _ => Err(NotSingle::Repeated),
    }
}

/// Exactly one of `X-Neutron-Network-ID`, `X-Neutron-Router-ID` and `X-OVN-Network-ID`, with
/// a valid id; otherwise the 400 message. More than one is a spoofing attempt (LP#1865036).
fn resource(h: &HeaderMap) -> Result<Resource, String> {
    let mut given = Vec::new();
    for kind in RESOURCE_KINDS {
        let name = kind.header();
        match single(h, name.lower) {
            Err(why) => return Err(why.message(name.wire)),
            Ok(Some(v)) if !v.is_empty() => given.push((kind, v)),
            Ok(_) => {}
        }
    }
    match given.as_slice() {
        [(kind, id)] => {
            Resource::new(*kind, *id).map_err(|e| format!("{}: {e}.", kind.header().wire))
        }
        [] => Err(format!(
            "None of {} was given.",
            names(RESOURCE_KINDS.iter().map(|k| k.header().wire), "or")
        )),
        [(a, x), (b, y)] => Err(format!("Both {a} {x} and {b} {y} defined.")),
        all => Err(format!(
            "All of {} defined; only one may be given.",
            names(all.iter().map(|(k, id)| format!("{k} {id}")), "and")
        )),
    }
}

/// `a, b and c`.
fn names<S: AsRef<str>>(items: impl Iterator<Item = S>, last: &str) -> String {
    let v: Vec<S> = items.collect();
    match v.split_last() {
        Some((l, [])) => l.as_ref().to_owned(),
        Some((l, rest)) => {
            let head: Vec<&str> = rest.iter().map(AsRef::as_ref).collect();
            format!("{} {last} {}", head.join(", "), l.as_ref())
        }
        None => String::new(),
    }
}

impl Agent {
    pub fn new(resolver: Cached, answerer: Answerer) -> Agent {
        Agent {
            resolver,
            answerer,
            metrics: crate::metrics::Metrics::default(),
            body_timeout: BODY_TIMEOUT,
        }
    }

    /// The Prometheus text of `GET /metrics`.
    pub fn render_metrics(&self) -> String {
        self.metrics
            .render(self.resolver.counts(), self.resolver.inner().generation())
    }

    /// Validate, resolve and answer; count the answer.
    pub async fn handle<B>(self: Arc<Self>, req: Request<B>) -> Resp
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (who, resp) = self.handle_inner(req).await;
        self.metrics.answered(who, resp.status().as_u16());
        resp
    }

    async fn handle_inner<B>(&self, req: Request<B>) -> (crate::metrics::Answer, Resp)
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        use crate::metrics::Answer;
        let (parts, body) = req.into_parts();
        if parts.method == http::Method::CONNECT {
            // Not a resource request (an authority, no path): answered, a 200 would read as
            // a tunnel set up to whatever relays it.
            return (
                Answer::Rejected,
                error(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not served."),
            );
        }
        let h = &parts.headers;
        let bad = |msg: &str| {
            tracing::warn!(path = %parts.uri.path(), "{msg}");
            (Answer::Rejected, error(StatusCode::BAD_REQUEST, msg))
        };
        let resource = match resource(h) {
            Ok(r) => r,
            Err(msg) => return bad(&msg),
        };
        let xff = match single(h, X_FORWARDED_FOR.lower) {
            Ok(Some(x)) if !x.is_empty() => x.to_owned(),
            Ok(_) => return bad("X-Forwarded-For is missing."),
            Err(NotSingle::Repeated) => return bad("X-Forwarded-For must appear once."),
            Err(NotSingle::NotText) => return bad("X-Forwarded-For is not text."),
        };
        let Some(client) = parse_client(&xff) else {
            return bad(&format!("X-Forwarded-For {xff:?} is not one IP address."));
        };
        let collected =
            tokio::time::timeout(self.body_timeout, Limited::new(body, MAX_BODY).collect()).await;
        let Ok(collected) = collected else {
            tracing::warn!(path = %parts.uri.path(), ip = %client.ip, "request body not received within {:?}", self.body_timeout);
            return (
                Answer::Rejected,
                error(
                    StatusCode::REQUEST_TIMEOUT,
                    "The request body did not arrive in time.",
                ),
            );
        };
        let body = match collected {
            Ok(c) => c.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return (
                    Answer::Rejected,
                    error(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large."),
                );
            }
            Err(e) => {
                tracing::debug!(err = %e, "request body broke off");
                return bad("The request body could not be read.");
            }
        };

        let found = match self.resolver.resolve(&resource, &client).await {
            Ok(found) => found,
            Err(ResolveError::Unavailable(why)) => {
                tracing::warn!(%resource, ip = %client.ip, resolver = self.resolver.inner().name(), %why, "lookup unavailable");
                return (
                    Answer::Unavailable,
                    error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "The instance lookup is temporarily unavailable. Please try again later.",
                    ),
                );
            }
            Err(miss) => {
                if let ResolveError::Ambiguous(n) = miss {
                    tracing::warn!(%resource, ip = %client.ip, ports = n, "several ports match; refusing to guess");
                } else {
                    tracing::warn!(%resource, ip = %client.ip, "no port found");
                }
                // Name the network or router and the IP (LP#2106713).
                return (
                    Answer::NotFound,
                    error(
                        StatusCode::NOT_FOUND,
                        &format!("Instance was not found on {resource} for IP {}.", client.ip),
                    ),
                );
            }
        };
        tracing::debug!(%resource, ip = %client.ip, instance = %found.instance_id, path = %parts.uri, "resolved");
        let asked = Asked {
            parts: &parts,
            body,
            xff: &xff,
            client: &client,
            found: &found,
        };
        match &self.answerer {
            Answerer::Nova(_) => {
                let started = std::time::Instant::now();
                let r = self.answerer.answer(asked).await;
                self.metrics.nova_latency(started.elapsed());
                (Answer::Nova, r)
            }
            Answerer::Builtin { .. } => (Answer::Builtin, self.answerer.answer(asked).await),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::{Builtin, BuiltinOptions};
    use crate::resolvers::inventory::InventoryResolver;
    use crate::store::InventoryStore;
    use http_body_util::Full;
    use std::time::Duration;

    const INVENTORY: &str = r#"{
      "ports": [
        {"id": "rp", "network_id": "n1", "device_id": "r1", "device_owner": "network:router_interface",
         "fixed_ips": [{"ip_address": "10.0.0.1"}]},
        {"id": "p1", "network_id": "n1", "device_id": "vm1", "project_id": "p",
         "fixed_ips": [{"ip_address": "10.0.0.2"}]}],
      "instances": [{"uuid": "vm1", "hostname": "vm1", "project_id": "p"}]
    }"#;

    /// An agent on the inventory above with the built-in responder; the temp dir goes on drop.
    struct Fixture(Arc<Agent>, std::path::PathBuf);

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }

    fn agent(tag: &str) -> Fixture {
        let dir =
            std::env::temp_dir().join(format!("ns-agent-handler-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let f = dir.join("inv.json");
        std::fs::write(&f, INVENTORY).expect("write");
        let store = Arc::new(InventoryStore::open(&f).expect("opens"));
        let resolver = Cached::new(
            Box::new(InventoryResolver::new(store.clone())),
            Duration::from_secs(5),
        );
        let answerer = Answerer::Builtin {
            responder: Builtin::new(BuiltinOptions {
                dhcp_domain: String::new(),
                require_token: false,
            }),
            store,
        };
        Fixture(Arc::new(Agent::new(resolver, answerer)), dir)
    }

    async fn ask(agent: &Fixture, headers: &[(&str, &str)]) -> (u16, String) {
        let mut req = Request::builder().uri("/latest/meta-data/hostname");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::new())).expect("request");
        let resp = agent.0.clone().handle(req).await;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    const XFF: (&str, &str) = ("X-Forwarded-For", "10.0.0.2");

    /// A resource header whose value is not text is named as such, not as repeated.
    #[tokio::test]
    async fn a_header_that_is_not_text_is_400_saying_so() {
        let a = agent("not-text");
        let req = Request::builder()
            .uri("/latest/meta-data/hostname")
            .header(XFF.0, XFF.1)
            .header(
                "X-Neutron-Network-ID",
                http::HeaderValue::from_bytes(b"\xff\xfe").expect("bytes"),
            )
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = a.0.clone().handle(req).await;
        assert_eq!(resp.status().as_u16(), 400);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("X-Neutron-Network-ID is not text."), "{body}");
    }

    #[tokio::test]
    async fn connect_is_405() {
        let a = agent("connect");
        let req = Request::builder()
            .method("CONNECT")
            .uri("169.254.169.254:443")
            .header(XFF.0, XFF.1)
            .header("X-Neutron-Network-ID", "n1")
            .body(Full::new(Bytes::new()))
            .expect("request");
        assert_eq!(a.0.clone().handle(req).await.status().as_u16(), 405);
    }

    /// A declared body that never comes in full gets 408 once `body_timeout` is over,
    /// instead of holding the connection (and a slot of the connection cap) for ever.
    #[tokio::test]
    async fn a_body_that_does_not_arrive_in_time_is_408() {
        let mut a = agent("slow-body");
        Arc::get_mut(&mut a.0).expect("alone").body_timeout = Duration::from_millis(100);
        /// One byte, then nothing more, ever.
        struct Trickle(bool);
        impl hyper::body::Body for Trickle {
            type Data = Bytes;
            type Error = std::convert::Infallible;
            fn poll_frame(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>>
            {
                if self.0 {
                    return std::task::Poll::Pending;
                }
                self.0 = true;
                std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(b"x")))))
            }
        }
        let req = Request::builder()
            .method("POST")
            .uri("/openstack/latest/password")
            .header(XFF.0, XFF.1)
            .header("X-Neutron-Network-ID", "n1")
            .body(Trickle(false))
            .expect("request");
        let t0 = std::time::Instant::now();
        let resp = tokio::time::timeout(Duration::from_secs(10), a.0.clone().handle(req))
            .await
            .expect("answered, not held");
        assert_eq!(resp.status().as_u16(), 408);
        assert!(t0.elapsed() >= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn each_resource_header_alone_resolves() {
        let a = agent("alone");
        for h in [
            "X-Neutron-Network-ID",
            "x-ovn-network-id",
            "X-OVN-Network-ID",
        ] {
            assert_eq!(ask(&a, &[XFF, (h, "n1")]).await, (200, "vm1".into()), "{h}");
        }
        assert_eq!(
            ask(&a, &[XFF, ("X-Neutron-Router-ID", "r1")]).await,
            (200, "vm1".into())
        );
        let (status, body) = ask(&a, &[XFF, ("X-OVN-Network-ID", "n9")]).await;
        assert_eq!(status, 404);
        assert!(
            body.contains("Instance was not found on ovn-network n9 for IP 10.0.0.2."),
            "{body}"
        );
        // An OVN network id is a network id, never a router's.
        assert_eq!(ask(&a, &[XFF, ("X-OVN-Network-ID", "r1")]).await.0, 404);
    }

    #[tokio::test]
    async fn exactly_one_resource_header_or_400() {
        let a = agent("one");
        let cases: [(&[(&str, &str)], &str); 6] = [
            (
                &[XFF],
                "None of X-Neutron-Network-ID, X-Neutron-Router-ID or X-OVN-Network-ID was given.",
            ),
            (
                &[
                    XFF,
                    ("X-Neutron-Network-ID", "n1"),
                    ("X-Neutron-Router-ID", "r1"),
                ],
                "Both network n1 and router r1 defined.",
            ),
            (
                &[
                    XFF,
                    ("X-OVN-Network-ID", "n1"),
                    ("X-Neutron-Router-ID", "r1"),
                ],
                "Both router r1 and ovn-network n1 defined.",
            ),
            (
                &[
                    XFF,
                    ("X-OVN-Network-ID", "n1"),
                    ("X-Neutron-Network-ID", "n1"),
                ],
                "Both network n1 and ovn-network n1 defined.",
            ),
            (
                &[
                    XFF,
                    ("X-OVN-Network-ID", "n1"),
                    ("X-Neutron-Network-ID", "n1"),
                    ("X-Neutron-Router-ID", "r1"),
                ],
                "All of network n1, router r1 and ovn-network n1 defined; only one may be given.",
            ),
            (
                &[XFF, ("X-OVN-Network-ID", "n1"), ("X-OVN-Network-ID", "n2")],
                "X-OVN-Network-ID may appear only once.",
            ),
        ];
        for (headers, want) in cases {
            let (status, body) = ask(&a, headers).await;
            assert_eq!(status, 400, "{headers:?}");
            assert!(body.contains(want), "{body} should contain {want}");
        }
        // An empty value counts as absent (as Neutron's `if network_id`).
        assert_eq!(
            ask(
                &a,
                &[XFF, ("X-Neutron-Router-ID", ""), ("X-OVN-Network-ID", "n1")]
            )
            .await
            .0,
            200
        );
        let (status, body) = ask(&a, &[XFF, ("X-OVN-Network-ID", "ovnmeta-n1")]).await;
        assert_eq!(status, 400);
        assert!(
            body.contains("X-OVN-Network-ID: invalid id \"ovnmeta-n1\": that is a namespace name"),
            "{body}"
        );
    }
}
