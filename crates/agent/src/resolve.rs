//! "Which instance is IP X on router/network Y": the client address rules Neutron applies
//! (v4-mapped IPv6 read as IPv4, link-local IPv6 matched by the MAC in its EUI-64,
//! LP#1460177) and a short-TTL lookup cache that can never outlive an inventory reload.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::inventory::{Lookup, Resource, Snapshot};
use crate::store::InventoryStore;

/// The client address as the lookup uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub ip: IpAddr,
    /// Set for link-local IPv6 clients: the MAC decoded from the EUI-64 interface id.
    pub mac: Option<String>,
}

/// Parse an `X-Forwarded-For` value holding exactly one address.
pub fn parse_client(xff: &str) -> Option<Client> {
    let ip: IpAddr = xff.trim().parse().ok()?;
    let ip = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    let mac = match ip {
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => eui64_mac(&v6.octets()),
        _ => None,
    };
    Some(Client { ip, mac })
}

/// The MAC inside a modified EUI-64 interface id (`xx:xx:xx:ff:fe:xx:xx:xx`, U/L bit flipped).
fn eui64_mac(o: &[u8; 16]) -> Option<String> {
    if o[11] != 0xff || o[12] != 0xfe {
        return None;
    }
    let m = [o[8] ^ 0x02, o[9], o[10], o[13], o[14], o[15]];
    Some(
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

type Key = (Resource, IpAddr, Option<String>);

/// Resolves through the live inventory, caching answers for `ttl` (0 = no cache).
/// Each entry records the inventory generation it was computed from; after a reload the
/// generation differs and the entry is ignored, so the cache never serves a stale answer.
pub struct Resolver {
    store: Arc<InventoryStore>,
    ttl: Duration,
    cache: Mutex<HashMap<Key, (u64, Instant, Lookup)>>,
}

/// Bound on cached entries; the cache is cleared when it fills (entries are cheap to redo).
const CACHE_MAX: usize = 65_536;

impl Resolver {
    pub fn new(store: Arc<InventoryStore>, ttl: Duration) -> Resolver {
        Resolver {
            store,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Look up the client; returns the answer and the snapshot it came from.
    pub fn resolve(&self, resource: &Resource, client: &Client) -> (Lookup, Arc<Snapshot>) {
        let (generation, snap) = self.store.current();
        if self.ttl.is_zero() {
            let found = snap.lookup(resource, client.ip, client.mac.as_deref());
            return (found, snap);
        }
        let key = (resource.clone(), client.ip, client.mac.clone());
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((g, at, found)) = cache.get(&key) {
            if *g == generation && now.duration_since(*at) < self.ttl {
                return (found.clone(), snap);
            }
        }
        let found = snap.lookup(resource, client.ip, client.mac.as_deref());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, (generation, now, found.clone()));
        (found, snap)
    }

    pub fn store(&self) -> &Arc<InventoryStore> {
        &self.store
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_addresses() {
        let c = parse_client("::ffff:10.1.2.3").expect("parses");
        assert_eq!(c.ip, "10.1.2.3".parse::<IpAddr>().expect("ip"));
        assert_eq!(c.mac, None);
        let c = parse_client(" 10.0.0.1 ").expect("parses");
        assert_eq!(c.ip.to_string(), "10.0.0.1");
        let c = parse_client("fe80::f816:3eff:fe00:2").expect("parses");
        assert_eq!(c.mac.as_deref(), Some("fa:16:3e:00:00:02"));
        assert_eq!(parse_client("fe80::1").expect("parses").mac, None);
        assert_eq!(
            parse_client("fd00::f816:3eff:fe00:2").expect("parses").mac,
            None
        );
        assert!(parse_client("10.0.0.1, 10.0.0.2").is_none());
        assert!(parse_client("").is_none());
        assert!(parse_client("vm1").is_none());
    }
}
