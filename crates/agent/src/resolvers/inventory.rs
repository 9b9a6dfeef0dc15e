//! The inventory resolver (`resolver = inventory`): answers from the live inventory file
//! (`store.rs`), with Neutron's lookup (`Snapshot::lookup`). Its generation is the store's,
//! bumped on every applied reload.

use std::sync::Arc;

use ns_contract::Resource;

use crate::inventory::Lookup;
use crate::resolve::{Client, ResolveError, ResolveFuture, Resolved, Resolver};
use crate::store::InventoryStore;

/// Resolves through the inventory in force.
pub struct InventoryResolver {
    store: Arc<InventoryStore>,
}

impl InventoryResolver {
    pub fn new(store: Arc<InventoryStore>) -> InventoryResolver {
        InventoryResolver { store }
    }

    /// The lookup itself (in memory, never blocks).
    pub fn lookup(&self, resource: &Resource, client: &Client) -> Result<Resolved, ResolveError> {
        let (_, snap) = self.store.current();
        match snap.lookup(resource, client.ip, client.mac.as_deref()) {
            // A port without a device is nobody's: not found, as Neutron (no instance id).
            Lookup::Found {
                instance_id,
                project_id,
            } if !instance_id.is_empty() => Ok(Resolved {
                instance_id,
                project_id,
            }),
            Lookup::Found { .. } | Lookup::NotFound => Err(ResolveError::NotFound),
            Lookup::Ambiguous(n) => Err(ResolveError::Ambiguous(n)),
        }
    }
}

impl Resolver for InventoryResolver {
    fn name(&self) -> &'static str {
        "inventory"
    }

    fn generation(&self) -> u64 {
        self.store.generation()
    }

    fn resolve<'a>(&'a self, resource: &'a Resource, client: &'a Client) -> ResolveFuture<'a> {
        Box::pin(std::future::ready(self.lookup(resource, client)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::parse_client;
    use ns_contract::Kind;

    #[test]
    fn every_kind_and_every_miss() {
        let dir = std::env::temp_dir().join(format!("ns-agent-invres-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let f = dir.join("inv.json");
        std::fs::write(
            &f,
            r#"{"ports": [
              {"id": "rp", "network_id": "n1", "device_id": "r1", "device_owner": "network:router_interface",
               "fixed_ips": [{"ip_address": "10.0.0.1"}]},
              {"id": "p1", "network_id": "n1", "device_id": "vm1", "tenant_id": "t1",
               "fixed_ips": [{"ip_address": "10.0.0.2"}]},
              {"id": "p2", "network_id": "n1", "fixed_ips": [{"ip_address": "10.0.0.3"}]},
              {"id": "p3", "network_id": "n1", "device_id": "vm3", "fixed_ips": [{"ip_address": "10.0.0.4"}]},
              {"id": "p4", "network_id": "n1", "device_id": "vm4", "fixed_ips": [{"ip_address": "10.0.0.4"}]}
            ]}"#,
        )
        .expect("write");
        let r = InventoryResolver::new(Arc::new(InventoryStore::open(&f).expect("opens")));
        let ask = |kind, id: &str, ip: &str| {
            r.lookup(
                &Resource::new(kind, id).expect("id"),
                &parse_client(ip).expect("ip"),
            )
        };
        let vm1 = Ok(Resolved {
            instance_id: "vm1".into(),
            project_id: "t1".into(),
        });
        assert_eq!(ask(Kind::Network, "n1", "10.0.0.2"), vm1);
        assert_eq!(ask(Kind::OvnNetwork, "n1", "10.0.0.2"), vm1);
        assert_eq!(ask(Kind::Router, "r1", "10.0.0.2"), vm1);
        assert_eq!(
            ask(Kind::Network, "n1", "10.0.0.3"),
            Err(ResolveError::NotFound),
            "a port with no device"
        );
        assert_eq!(
            ask(Kind::Network, "n1", "10.0.0.4"),
            Err(ResolveError::Ambiguous(2))
        );
        assert_eq!(r.generation(), 1);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
