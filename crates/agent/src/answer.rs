//! Who answers once the instance is known (option `metadata_backend`, kept under that name):
//! Nova's metadata API with the signed instance id (Neutron's behaviour), or the built-in
//! responder, which answers from the inventory as Nova would.

use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use http::StatusCode;

use crate::builtin::{Builtin, Ctx};
use crate::config::AnswererKind;
use crate::nova::Nova;
use crate::resolve::{Client, Resolved};
use crate::respond::{error, Resp};
use crate::store::InventoryStore;

/// The answerer in force.
pub enum Answerer {
    Nova(Nova),
    /// The built-in responder reads instance details from the inventory in force, whichever
    /// resolver found the instance.
    Builtin {
        responder: Builtin,
        store: Arc<InventoryStore>,
    },
}

/// One checked and resolved request.
pub struct Asked<'a> {
    pub parts: &'a Parts,
    pub body: Bytes,
    /// `X-Forwarded-For` as received (Nova gets it unchanged).
    pub xff: &'a str,
    pub client: &'a Client,
    pub found: &'a Resolved,
}

impl Answerer {
    pub fn kind(&self) -> AnswererKind {
        match self {
            Answerer::Nova(_) => AnswererKind::Nova,
            Answerer::Builtin { .. } => AnswererKind::Builtin,
        }
    }

    /// Answer for the instance found.
    pub async fn answer(&self, q: Asked<'_>) -> Resp {
        match self {
            Answerer::Nova(nova) => {
                let path_and_query = q
                    .parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                nova.forward(
                    q.parts.method.clone(),
                    path_and_query,
                    q.xff,
                    &q.found.instance_id,
                    &q.found.project_id,
                    q.body,
                )
                .await
            }
            Answerer::Builtin { responder, store } => builtin(responder, store, &q),
        }
    }
}

fn builtin(responder: &Builtin, store: &InventoryStore, q: &Asked<'_>) -> Resp {
    let (_, snap) = store.current();
    let (instance_id, project_id) = (&q.found.instance_id, &q.found.project_id);
    let Some(inst) = snap.instance(instance_id) else {
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
        client_ip: q.client.ip,
    };
    responder.respond(
        &q.parts.method,
        q.parts.uri.path(),
        &q.parts.headers,
        &q.body,
        &ctx,
    )
}
