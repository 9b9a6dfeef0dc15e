//! One request from a proxy: check the identity headers, find the instance, then forward to
//! Nova or answer from the built-in responder (reference §5; neutron common/metadata.py).

use std::sync::Arc;

use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::builtin::{Builtin, Ctx};
use crate::inventory::{Lookup, Resource};
use crate::nova::Nova;
use crate::resolve::{parse_client, Resolver};
use crate::respond::{error, Resp};

/// Request bodies are tiny (Nova's password POST is at most 1020 bytes).
pub const MAX_BODY: usize = 64 * 1024;

pub const NETWORK_ID_HEADER: &str = "x-neutron-network-id";
pub const ROUTER_ID_HEADER: &str = "x-neutron-router-id";

/// Who answers once the instance is known.
pub enum Answerer {
    Nova(Nova),
    Builtin(Builtin),
}

/// The request handler shared by all connections.
pub struct Agent {
    pub resolver: Resolver,
    pub answerer: Answerer,
}

/// The single value of a header; Err if it appears more than once or is not text.
fn single<'a>(h: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ()> {
    let mut it = h.get_all(name).iter();
    match (it.next(), it.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => v.to_str().map(|s| Some(s.trim())).map_err(|_| ()),
        _ => Err(()),
    }
}

impl Agent {
    pub fn new(resolver: Resolver, answerer: Answerer) -> Agent {
        Agent { resolver, answerer }
    }

    /// Validate, resolve and answer.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Resp {
        let (parts, body) = req.into_parts();
        let h = &parts.headers;
        let bad = |msg: &str| {
            tracing::warn!(path = %parts.uri.path(), "{msg}");
            error(StatusCode::BAD_REQUEST, msg)
        };
        let (Ok(network), Ok(router)) = (single(h, NETWORK_ID_HEADER), single(h, ROUTER_ID_HEADER))
        else {
            return bad("X-Neutron-Network-ID and X-Neutron-Router-ID may each appear once.");
        };
        let resource = match (
            network.filter(|s| !s.is_empty()),
            router.filter(|s| !s.is_empty()),
        ) {
            (Some(n), Some(r)) => {
                // Only one may be given; both means a spoofing attempt (LP#1865036).
                return bad(&format!("Both network {n} and router {r} defined."));
            }
            (Some(n), None) => Resource::Network(n.to_owned()),
            (None, Some(r)) => Resource::Router(r.to_owned()),
            (None, None) => {
                return bad("Neither X-Neutron-Network-ID nor X-Neutron-Router-ID was given.")
            }
        };
        let xff = match single(h, "x-forwarded-for") {
            Ok(Some(x)) if !x.is_empty() => x.to_owned(),
            Ok(_) => return bad("X-Forwarded-For is missing."),
            Err(()) => return bad("X-Forwarded-For must appear once."),
        };
        let Some(client) = parse_client(&xff) else {
            return bad(&format!("X-Forwarded-For {xff:?} is not one IP address."));
        };
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return error(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large.");
            }
            Err(e) => {
                tracing::debug!(err = %e, "request body broke off");
                return bad("The request body could not be read.");
            }
        };

        let (found, snap) = self.resolver.resolve(&resource, &client);
        let (instance_id, project_id) = match found {
            Lookup::Found {
                instance_id,
                project_id,
            } if !instance_id.is_empty() => (instance_id, project_id),
            other => {
                if let Lookup::Ambiguous(n) = other {
                    tracing::warn!(%resource, ip = %client.ip, ports = n, "several ports match; refusing to guess");
                } else {
                    tracing::warn!(%resource, ip = %client.ip, "no port found");
                }
                // Name the network or router and the IP (LP#2106713).
                return error(
                    StatusCode::NOT_FOUND,
                    &format!("Instance was not found on {resource} for IP {}.", client.ip),
                );
            }
        };
        tracing::debug!(%resource, ip = %client.ip, instance = %instance_id, path = %parts.uri, "resolved");

        let path_and_query = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        match &self.answerer {
            Answerer::Nova(nova) => {
                nova.forward(
                    parts.method.clone(),
                    path_and_query,
                    &xff,
                    &instance_id,
                    &project_id,
                    body,
                )
                .await
            }
            Answerer::Builtin(builtin) => {
                let Some(inst) = snap.instance(&instance_id) else {
                    tracing::warn!(instance = %instance_id, "port found but the instance is not in the inventory");
                    return error(StatusCode::NOT_FOUND, "The resource could not be found.");
                };
                // Nova answers 404 when the port's project is not the instance's.
                if inst
                    .project_id
                    .as_deref()
                    .is_some_and(|p| !project_id.is_empty() && p != project_id)
                {
                    tracing::warn!(instance = %instance_id, "project of the port differs from the instance's");
                    return error(StatusCode::NOT_FOUND, "The resource could not be found.");
                }
                let ctx = Ctx {
                    snap: &snap,
                    inst,
                    client_ip: client.ip,
                };
                builtin.respond(&parts.method, parts.uri.path(), h, &body, &ctx)
            }
        }
    }
}
