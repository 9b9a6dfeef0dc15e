//! The real [`Platform`]: named network namespaces under `/run/netns`, prepared with
//! rtnetlink and entered by the child with `setns` (all through `ns_netns`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ns_netns::{CommandExt, Netlink, Netns};

use crate::decide::ProxySpec;
use crate::platform::Platform;
use crate::{Error, Result};

/// 169.254.169.254, the metadata address.
pub const METADATA_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254));
/// fe80::a9fe:a9fe, the IPv6 metadata address.
pub const METADATA_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0xa9fe, 0xa9fe));

/// Named namespaces, prepared through rtnetlink.
#[derive(Debug, Clone, Copy, Default)]
pub struct Namespaces;

fn netns_err(e: ns_netns::Error) -> Error {
    Error::Netns(e.to_string())
}

impl Platform for Namespaces {
    fn namespace_exists(&self, netns: &str) -> bool {
        // The file, not an open: `ip netns add` creates it just before mounting the
        // namespace on it; a start in that window fails and is retried by the backoff.
        Path::new(ns_netns::NETNS_RUN_DIR).join(netns).exists()
    }

    async fn prepare(&self, spec: &ProxySpec) -> Result<()> {
        let ns = Netns::open(&spec.netns).map_err(netns_err)?;
        let nl = Netlink::open(&ns).await.map_err(netns_err)?;
        nl.set_link_up("lo").await.map_err(netns_err)?;
        nl.ensure_address(&spec.interface, METADATA_V4, 32)
            .await
            .map_err(netns_err)?;
        if spec.ipv6 {
            nl.ensure_address(&spec.interface, METADATA_V6, 128)
                .await
                .map_err(netns_err)?;
        }
        Ok(())
    }

    async fn missing(&self, spec: &ProxySpec) -> Option<String> {
        let ns = match Netns::open(&spec.netns) {
            Ok(ns) => ns,
            Err(e) if e.is_not_found() => {
                return Some(format!("namespace {} does not exist", spec.netns))
            }
            Err(_) => return None,
        };
        match Netlink::open(&ns).await {
            Ok(nl) => match nl.link_exists(&spec.interface).await {
                Ok(false) => Some(format!(
                    "interface {} not in {}",
                    spec.interface, spec.netns
                )),
                // Other failures are not "missing": `prepare` reports them (and backs off).
                Ok(true) | Err(_) => None,
            },
            Err(_) => None,
        }
    }

    async fn teardown(&self, spec: &ProxySpec) -> Result<()> {
        let ns = match Netns::open(&spec.netns) {
            Ok(ns) => ns,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(netns_err(e)),
        };
        let nl = Netlink::open(&ns).await.map_err(netns_err)?;
        nl.remove_address(&spec.interface, METADATA_V4, 32)
            .await
            .map_err(netns_err)?;
        if spec.ipv6 {
            nl.remove_address(&spec.interface, METADATA_V6, 128)
                .await
                .map_err(netns_err)?;
        }
        Ok(())
    }

    fn spawn(
        &self,
        spec: &ProxySpec,
        cmd: &mut tokio::process::Command,
    ) -> Result<tokio::process::Child> {
        let ns = Netns::open(&spec.netns).map_err(netns_err)?;
        cmd.netns(&ns);
        cmd.spawn().map_err(|e| {
            Error::Spawn(format!(
                "spawn {:?} in {}: {e}",
                cmd.as_std().get_program(),
                spec.netns
            ))
        })
    }
}
