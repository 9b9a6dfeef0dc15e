//! The resolver seam: "which instance is IP X behind router/network Y". The client address
//! rules Neutron applies (v4-mapped IPv6 read as IPv4, link-local IPv6 matched by the MAC in
//! its EUI-64, LP#1460177), the [`Resolver`] trait every source of answers implements (one
//! file each under `resolvers/`), and the short-TTL cache in front of it, keyed by the
//! resolver's generation so that no answer outlives a reload of the data it came from.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ns_contract::Resource;

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
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => ns_contract::eui64::mac(&v6)
            .map(|m| {
                m.iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":")
            }),
        _ => None,
    };
    Some(Client { ip, mac })
}

/// What every answerer needs to know about the client's instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The port's `device_id`: sent to Nova as `X-Instance-ID` (and signed); the built-in
    /// responder looks the instance up by it.
    pub instance_id: String,
    /// The port's project: `X-Tenant-ID` (empty when the port names none).
    pub project_id: String,
}

/// Why there is no instance. Neutron answers not-found and ambiguous alike (404).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("no port matches")]
    NotFound,
    /// Several ports matched; Neutron refuses to guess.
    #[error("{0} ports match")]
    Ambiguous(usize),
    /// The source of answers cannot be asked now (a database connection down, say): 503,
    /// and the answer is not cached.
    #[error("lookup unavailable: {0}")]
    Unavailable(String),
}

/// The future a resolver returns (boxed, so resolvers can be chosen at run time and may
/// wait on the network).
pub type ResolveFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Resolved, ResolveError>> + Send + 'a>>;

/// A source of answers to "which instance is `client` behind `resource`". A new source (OVN
/// Southbound, the Neutron API) is one file under `resolvers/` implementing this, a value of
/// the `resolver` option, and one arm in `build_resolver`.
pub trait Resolver: Send + Sync {
    /// The `resolver` option value that selects it, for logs.
    fn name(&self) -> &'static str;
    /// A number that changes whenever the data answers come from changes (an inventory
    /// reload, a database update). Cached answers from another generation are never used; a
    /// resolver that cannot tell returns a constant and the TTL alone bounds staleness.
    fn generation(&self) -> u64;
    /// Find the instance. Every [`ns_contract::Kind`] is asked; a resolver that cannot
    /// answer one kind says [`ResolveError::NotFound`].
    fn resolve<'a>(&'a self, resource: &'a Resource, client: &'a Client) -> ResolveFuture<'a>;
}

type Key = (Resource, IpAddr, Option<String>);
type Entry = (u64, Instant, Result<Resolved, ResolveError>);

/// A resolver behind a cache of `ttl` (0 = no cache). Each entry records the generation it
/// was computed from; after a reload the generation differs and the entry is ignored, so
/// the cache never serves an answer from older data.
pub struct Cached {
    inner: Box<dyn Resolver>,
    ttl: Duration,
    cache: Mutex<HashMap<Key, Entry>>,
    /// Lookups answered from the cache, and those that asked the resolver (metrics).
    hits: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
}

/// Bound on cached entries; the cache is cleared when it fills (entries are cheap to redo).
const CACHE_MAX: usize = 65_536;

impl Cached {
    pub fn new(inner: Box<dyn Resolver>, ttl: Duration) -> Cached {
        Cached {
            inner,
            ttl,
            cache: Mutex::new(HashMap::new()),
            hits: std::sync::atomic::AtomicU64::new(0),
            misses: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// (cache hits, lookups that asked the resolver) so far.
    pub fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.hits.load(Relaxed), self.misses.load(Relaxed))
    }

    /// The resolver behind the cache.
    pub fn inner(&self) -> &dyn Resolver {
        self.inner.as_ref()
    }

    /// Look the client up, from the cache when a fresh entry of the current generation holds it.
    pub async fn resolve(
        &self,
        resource: &Resource,
        client: &Client,
    ) -> Result<Resolved, ResolveError> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.ttl.is_zero() {
            self.misses.fetch_add(1, Relaxed);
            return self.inner.resolve(resource, client).await;
        }
        // Read before the lookup: if the data changes meanwhile, the entry is stamped with
        // the older generation and is never used (stale-safe, at worst one wasted entry).
        let generation = self.inner.generation();
        let key = (resource.clone(), client.ip, client.mac.clone());
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((g, at, found)) = cache.get(&key) {
                if *g == generation && at.elapsed() < self.ttl {
                    self.hits.fetch_add(1, Relaxed);
                    return found.clone();
                }
            }
        }
        self.misses.fetch_add(1, Relaxed);
        let found = self.inner.resolve(resource, client).await;
        if !matches!(found, Err(ResolveError::Unavailable(_))) {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(key, (generation, Instant::now(), found.clone()));
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::Arc;

    use ns_contract::Kind;

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

    /// Answers with the generation as instance id; counts the lookups it was asked.
    #[derive(Default)]
    struct Fake {
        generation: Arc<AtomicU64>,
        asked: Arc<AtomicUsize>,
        down: bool,
    }

    impl Resolver for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn generation(&self) -> u64 {
            self.generation.load(Ordering::SeqCst)
        }
        fn resolve<'a>(&'a self, _: &'a Resource, _: &'a Client) -> ResolveFuture<'a> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            let found = if self.down {
                Err(ResolveError::Unavailable("down".into()))
            } else {
                Ok(Resolved {
                    instance_id: self.generation().to_string(),
                    project_id: String::new(),
                })
            };
            Box::pin(std::future::ready(found))
        }
    }

    #[tokio::test]
    async fn cache_follows_the_generation_and_skips_unavailable() {
        let fake = Fake::default();
        let (generation, asked) = (fake.generation.clone(), fake.asked.clone());
        let cached = Cached::new(Box::new(fake), Duration::from_secs(3600));
        let r = Resource::new(Kind::Network, "n1").expect("id");
        let c = parse_client("10.0.0.2").expect("ip");
        let id = |x: Result<Resolved, ResolveError>| x.expect("found").instance_id;
        assert_eq!(id(cached.resolve(&r, &c).await), "0");
        assert_eq!(id(cached.resolve(&r, &c).await), "0");
        assert_eq!(
            asked.load(Ordering::SeqCst),
            1,
            "second answer from the cache"
        );
        generation.store(7, Ordering::SeqCst);
        assert_eq!(id(cached.resolve(&r, &c).await), "7", "reload: never stale");
        assert_eq!(asked.load(Ordering::SeqCst), 2);

        let down = Fake {
            down: true,
            ..Fake::default()
        };
        let asked = down.asked.clone();
        let cached = Cached::new(Box::new(down), Duration::from_secs(3600));
        for _ in 0..2 {
            assert!(matches!(
                cached.resolve(&r, &c).await,
                Err(ResolveError::Unavailable(_))
            ));
        }
        assert_eq!(asked.load(Ordering::SeqCst), 2, "outages are not cached");
    }
}
