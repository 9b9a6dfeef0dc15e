//! The OVN mode table, as one pure function next to [`crate::decide`]: the Southbound rows
//! this chassis monitors → the networks that get an `ovnmeta-<network id>` namespace here and
//! how it is built, as Neutron's OVN metadata agent decides in `provision_datapath`
//! (neutron/agent/ovn/metadata/agent.py):
//!
//! 1. the network's metadata port: a `Port_Binding` on its datapath of type `localport` with
//!    `external_ids:neutron:device_owner = network:distributed` and a MAC (first token of
//!    `mac[0]`); none, or no MAC → no namespace;
//! 2. the VIFs bound here (`chassis` is ours or ours is in `additional_chassis`, live
//!    migration), types `""` and `external`, on that datapath, with their IP addresses
//!    (the tokens after the MAC); none with an IPv4 or an IPv6 address → no namespace;
//! 3. the metadata port's `neutron:cidrs`, kept only for subnets holding a local VIF IPv4
//!    address (lazily, LP#1981113; Neutron's `_active_subnets_cidrs` reads only the IPv4 ones,
//!    so the metadata port's IPv6 addresses are never put on the tap); `neutron:mtu`; IPv6
//!    when a local VIF has an IPv6 address;
//! 4. the inner end's addresses ([`OvnNet::addresses`]): 169.254.169.254/32, those CIDRs and,
//!    with IPv6, `fe80::a9fe:a9fe/128` and the metadata MAC's EUI-64 link-local address.
//!
//! Network id = `Datapath_Binding.external_ids:name` minus `neutron-`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ns_contract::neutron::{parse_cidr, DEVICE_OWNER_DISTRIBUTED};
use ns_contract::Kind;

use crate::netns_platform::{METADATA_V4, METADATA_V6};

/// `Datapath_Binding.external_ids:name` is `neutron-<network id>`.
const DATAPATH_NAME_PREFIX: &str = "neutron-";
/// `Port_Binding.external_ids` keys Neutron's ML2/OVN driver writes.
pub const KEY_DEVICE_OWNER: &str = "neutron:device_owner";
pub const KEY_CIDRS: &str = "neutron:cidrs";
pub const KEY_MTU: &str = "neutron:mtu";
/// Port types that are VMs' ports (Neutron's `_vif_ports`).
const VIF_TYPES: [&str; 2] = ["", "external"];
const LOCALPORT: &str = "localport";

/// One `Port_Binding` row, as far as the decision reads it (UUIDs as strings).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortRow {
    pub logical_port: String,
    pub kind: String,
    /// The `mac` column: each entry `"MAC IP IP…"`.
    pub mac: Vec<String>,
    pub chassis: Option<String>,
    pub additional_chassis: Vec<String>,
    pub datapath: String,
    pub external_ids: BTreeMap<String, String>,
}

/// What the decision needs from the Southbound view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SbView {
    /// Our `Chassis` row's UUID (`None` while ovn-controller has not created it).
    pub chassis: Option<String>,
    /// `Datapath_Binding` UUID → `external_ids:name`.
    pub datapaths: BTreeMap<String, String>,
    pub ports: Vec<PortRow>,
}

/// An `ovnmeta-` namespace to build, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvnNet {
    /// The Neutron network id.
    pub id: String,
    /// The metadata port's `logical_port` (the OVS Interface's `external_ids:iface-id`).
    pub logical_port: String,
    /// The metadata port's MAC, for the inner veth end.
    pub mac: [u8; 6],
    /// The metadata port's addresses on subnets with local VIF IPv4 addresses.
    pub cidrs: Vec<(IpAddr, u8)>,
    /// `neutron:mtu`, if set and valid.
    pub mtu: Option<u32>,
    /// A local VIF has an IPv6 address: also `fe80::a9fe:a9fe/128` and the v6 bind.
    pub ipv6: bool,
}

impl OvnNet {
    /// `ovnmeta-<id>`.
    pub fn netns(&self) -> String {
        netns(&self.id)
    }

    /// The addresses the inner veth end holds, all others removed (Neutron's
    /// `_process_cidrs`): 169.254.169.254/32 and the CIDRs; with IPv6 also
    /// `fe80::a9fe:a9fe/128` and the metadata MAC's EUI-64 link-local address `/64`
    /// (`ip_lib.get_ipv6_lladdr`). Without IPv6 the kernel's own `fe80::/64` goes too.
    pub fn addresses(&self) -> BTreeSet<(IpAddr, u8)> {
        let mut out: BTreeSet<(IpAddr, u8)> = self.cidrs.iter().copied().collect();
        out.insert((METADATA_V4, 32));
        if self.ipv6 {
            out.insert((METADATA_V6, 128));
            out.insert((IpAddr::V6(ns_contract::eui64::link_local(self.mac)), 64));
        }
        out
    }
}

/// `ovnmeta-<network id>`.
pub fn netns(id: &str) -> String {
    format!("{}{id}", Kind::OvnNetwork.netns_prefix())
}

/// Neutron's veth names: `tap<id[:10]>0` in the root namespace, `tap<id[:10]>1` inside.
pub fn veth_names(id: &str) -> (String, String) {
    let short: String = id.chars().take(10).collect();
    (format!("tap{short}0"), format!("tap{short}1"))
}

/// The network id of a datapath name (`neutron-<id>`); other datapaths are not Neutron's.
pub fn network_id(datapath_name: &str) -> Option<&str> {
    datapath_name
        .strip_prefix(DATAPATH_NAME_PREFIX)
        .filter(|id| ns_contract::validate_id(id).is_ok())
}

/// `"fa:16:3e:00:00:01"` → bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// The metadata port of a datapath (Neutron's `get_metadata_port`).
fn is_metadata_port(p: &PortRow) -> bool {
    p.kind == LOCALPORT
        && p.external_ids.get(KEY_DEVICE_OWNER).map(String::as_str)
            == Some(DEVICE_OWNER_DISTRIBUTED)
}

/// Bound here, or here as an additional chassis (live migration).
fn bound_here(p: &PortRow, chassis: &str) -> bool {
    p.chassis.as_deref() == Some(chassis) || p.additional_chassis.iter().any(|c| c == chassis)
}

/// The IP addresses of a port: the tokens after the MAC in every `mac` entry.
fn port_ips(p: &PortRow) -> Vec<IpAddr> {
    p.mac
        .iter()
        .flat_map(|m| m.split_whitespace().skip(1))
        .filter_map(|t| t.parse().ok())
        .collect()
}

/// Whether `ip` is inside `net/prefix` (same family).
fn contains(net: IpAddr, prefix: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let m = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            u32::from(n) & m == u32::from(a) & m
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let m = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            u128::from(n) & m == u128::from(a) & m
        }
        _ => false,
    }
}

/// The Southbound view → the `ovnmeta-` namespaces this chassis needs, by network id.
pub fn ovn_networks(sb: &SbView) -> BTreeMap<String, OvnNet> {
    let mut out = BTreeMap::new();
    let Some(chassis) = sb.chassis.as_deref() else {
        return out;
    };
    // Local VIF addresses per datapath.
    let mut local: BTreeMap<&str, Vec<IpAddr>> = BTreeMap::new();
    for p in &sb.ports {
        if VIF_TYPES.contains(&p.kind.as_str()) && bound_here(p, chassis) {
            local
                .entry(p.datapath.as_str())
                .or_default()
                .extend(port_ips(p));
        }
    }
    for p in sb.ports.iter().filter(|p| is_metadata_port(p)) {
        // 2. A VIF here with an address (IPv4 or any IPv6).
        let Some(ips) = local.get(p.datapath.as_str()).filter(|v| !v.is_empty()) else {
            continue;
        };
        let Some(id) = sb.datapaths.get(&p.datapath).and_then(|n| network_id(n)) else {
            continue;
        };
        // 1. The metadata port's MAC.
        let Some(mac) = p
            .mac
            .first()
            .and_then(|m| m.split_whitespace().next())
            .and_then(parse_mac)
        else {
            continue;
        };
        // 3. CIDRs of subnets with local VIF IPv4 addresses (LP#1981113).
        let cidrs = p
            .external_ids
            .get(KEY_CIDRS)
            .map(|c| {
                c.split_whitespace()
                    .filter_map(parse_cidr)
                    .filter(|(a, len)| ips.iter().any(|ip| ip.is_ipv4() && contains(*a, *len, *ip)))
                    .collect()
            })
            .unwrap_or_default();
        let mtu = p
            .external_ids
            .get(KEY_MTU)
            .and_then(|m| m.parse::<u32>().ok())
            .filter(|m| *m >= 68);
        // Two metadata ports on one network (a leftover, a race in Neutron): the same one
        // every pass, whatever order the rows come in after a resync, so the namespace is not
        // provisioned again with the other's MAC and iface-id.
        if out
            .get(id)
            .is_some_and(|n: &OvnNet| n.logical_port <= p.logical_port)
        {
            continue;
        }
        out.insert(
            id.to_owned(),
            OvnNet {
                id: id.to_owned(),
                logical_port: p.logical_port.clone(),
                mac,
                cidrs,
                mtu,
                ipv6: ips.iter().any(IpAddr::is_ipv6),
            },
        );
    }
    out
}

#[cfg(test)]
#[path = "ovn_decide_tests.rs"]
mod tests;
