//! The OVN resolver (`resolver = ovn`): answers `X-OVN-Network-ID` (and
//! `X-Neutron-Network-ID`, the same network id) from the Southbound view of this chassis
//! (`ovn/southbound.rs`) with Neutron's lookup (`ovn/lookup.rs`) and Neutron's log lines. A
//! router is not something OVN's agent resolves: not found. A lost connection keeps the last
//! view, so answers never become "unavailable" once the first view arrived.

use std::sync::Arc;

use ns_contract::{Kind, Resource};

use crate::ovn::lookup::{lookup, Lookup};
use crate::ovn::southbound::Southbound;
use crate::resolve::{Client, ResolveError, ResolveFuture, Resolved, Resolver};

/// Resolves through the Southbound view.
pub struct OvnResolver {
    sb: Arc<Southbound>,
}

impl OvnResolver {
    pub fn new(sb: Arc<Southbound>) -> OvnResolver {
        OvnResolver { sb }
    }

    /// The lookup itself (in memory, never blocks on the network).
    pub fn lookup(&self, resource: &Resource, client: &Client) -> Result<Resolved, ResolveError> {
        if resource.kind() == Kind::Router {
            return Err(ResolveError::NotFound);
        }
        let network = resource.id();
        let found = lookup(
            &self.sb.client.view(),
            network,
            &client.ip,
            client.mac.as_deref(),
        );
        match found {
            Lookup::One {
                device_id: Some(instance_id),
                project_id,
            } => Ok(Resolved {
                instance_id,
                project_id,
            }),
            Lookup::One {
                device_id: None, ..
            } => {
                tracing::warn!(network, ip = %client.ip, "the port found has no neutron:device_id");
                Err(ResolveError::NotFound)
            }
            Lookup::None => {
                tracing::warn!(
                    "No port found in network {network} with IP address {}",
                    client.ip
                );
                Err(ResolveError::NotFound)
            }
            Lookup::Many(uuids) => {
                tracing::error!(
                    "More than one port found in network {network} with IP address {}. Please \
                     run the neutron-ovn-db-sync-util script as there seems to be inconsistent \
                     data between Neutron and OVN databases. OVN Port uuids: {}",
                    client.ip,
                    uuids.join(", ")
                );
                Err(ResolveError::Ambiguous(uuids.len()))
            }
        }
    }
}

impl Resolver for OvnResolver {
    fn name(&self) -> &'static str {
        "ovn"
    }

    fn generation(&self) -> u64 {
        self.sb.generation()
    }

    fn resolve<'a>(&'a self, resource: &'a Resource, client: &'a Client) -> ResolveFuture<'a> {
        Box::pin(std::future::ready(self.lookup(resource, client)))
    }
}
