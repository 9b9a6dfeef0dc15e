//! The mode decisions, as one pure function: router and network records + configuration →
//! the proxies that should run (the spawner README's "Modes": routers as
//! neutron/agent/l3/router_info.py and ha_router.py spawn them, networks as
//! neutron/agent/linux/dhcp.py `should_enable_metadata` decides), and the DHCP option-121 host
//! routes Neutron's dhcp agent would push for a network (neutron/agent/linux/dhcp.py
//! `_generate_opts_per_subnet`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ns_contract::neutron::{
    is_router_interface, parse_cidr, FixedIp, HostRoute, Port, Subnet, DEVICE_OWNER_DHCP,
    DEVICE_OWNER_DISTRIBUTED,
};
use ns_contract::Kind;
use serde::Serialize;

use crate::config::Config;
use crate::records::{HaState, Network, Records, Router};

/// One proxy that should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySpec {
    /// Unique key and pid file name: the id of the record that asked for it (a metadata
    /// network's proxy is keyed by the network, though it carries the router id, so it never
    /// collides with that router's own proxy).
    pub key: String,
    /// Router, network, or OVN network (only from the OVN source's records).
    pub kind: Kind,
    /// The id passed to the proxy.
    pub id: String,
    pub netns: String,
    /// Interface that gets 169.254.169.254/32 (and fe80::a9fe:a9fe/128).
    pub interface: String,
    /// Also bind `[fe80::a9fe:a9fe]:80%interface`.
    pub ipv6: bool,
}

/// The desired set, by key, plus what the operator should be told.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub specs: BTreeMap<String, ProxySpec>,
    pub warnings: Vec<String>,
}

/// Records + configuration → the proxies that should run.
pub fn desired(records: &Records, cfg: &Config) -> Desired {
    let mut out = Desired::default();
    for r in records.routers().values() {
        if let Some(s) = router_spec(r, cfg) {
            out.specs.insert(s.key.clone(), s);
        }
    }
    for n in records.networks().values() {
        let (spec, warnings) = network_spec(n, cfg);
        out.warnings.extend(warnings);
        if let Some(s) = spec {
            // A router record and a network record with the same id: keep the router's.
            out.specs.entry(s.key.clone()).or_insert(s);
        }
    }
    for (id, ipv6) in &records.ovn_networks {
        // The OVN source built the namespace (ovn_provision.rs); the inner veth end holds the
        // addresses and, with IPv6, the v6 bind.
        let s = ProxySpec {
            key: id.clone(),
            kind: Kind::OvnNetwork,
            id: id.clone(),
            netns: crate::ovn_decide::netns(id),
            interface: crate::ovn_decide::veth_names(id).1,
            ipv6: *ipv6,
        };
        out.specs.entry(s.key.clone()).or_insert(s);
    }
    out
}

/// The l3 agent's rule: a proxy in the router namespace, except on an HA backup, unless the
/// router is also distributed (DVR+HA serves local VMs on the standby too, LP#1817956).
pub fn router_spec(r: &Router, cfg: &Config) -> Option<ProxySpec> {
    if r.ha_state == Some(HaState::Backup) && !r.distributed {
        return None;
    }
    Some(ProxySpec {
        key: r.id.clone(),
        kind: Kind::Router,
        id: r.id.clone(),
        netns: r.netns(),
        interface: cfg.router_interface.clone(),
        ipv6: cfg.ipv6,
    })
}

fn is_router_port(owner: &str) -> bool {
    is_router_interface(owner)
}

fn is_ovn_metadata_port(owner: &str, device_id: &str) -> bool {
    owner == DEVICE_OWNER_DISTRIBUTED && device_id.starts_with(Kind::OvnNetwork.netns_prefix())
}

/// Whether a fixed IP is on `subnet`: by `subnet_id`, or by address when the record left the
/// id out (the contract makes it optional).
fn on_subnet(ip: &FixedIp, subnet: &Subnet) -> bool {
    match &ip.subnet_id {
        Some(id) => *id == subnet.id,
        None => subnet.contains(ip.ip_address),
    }
}

/// A subnet is non-isolated when a router-interface port holds its gateway IP (LP#1236783).
pub fn is_isolated(net: &Network, subnet: &Subnet) -> bool {
    !net.ports
        .iter()
        .filter(|p| is_router_port(&p.device_owner))
        .any(|p| {
            p.fixed_ips
                .iter()
                .any(|ip| on_subnet(ip, subnet) && Some(ip.ip_address) == subnet.gateway_ip)
        })
}

/// A subnet inside 169.254.0.0/16.
pub fn is_metadata_subnet(subnet: &Subnet) -> bool {
    match parse_cidr(&subnet.cidr) {
        Some((IpAddr::V4(a), prefix)) => prefix >= 16 && a.octets()[..2] == [169, 254],
        _ => false,
    }
}

/// Neutron's `should_enable_metadata` (neutron/agent/linux/dhcp.py), in its order.
pub fn should_enable_metadata(net: &Network, cfg: &Config) -> bool {
    // 1. An OVN metadata port: the OVN metadata agent serves this network.
    if net
        .ports
        .iter()
        .any(|p| is_ovn_metadata_port(&p.device_owner, &p.device_id))
    {
        return false;
    }
    // 2. No DHCP-enabled subnet.
    let dhcp: Vec<&Subnet> = net.subnets.iter().filter(|s| s.enable_dhcp).collect();
    if dhcp.is_empty() {
        return false;
    }
    // 3. force_metadata.
    if cfg.force_metadata {
        return true;
    }
    // 4. Isolated metadata off.
    if !cfg.enable_isolated_metadata {
        return false;
    }
    // 5. A metadata network (a subnet in 169.254.0.0/16, any DHCP state).
    if cfg.enable_metadata_network && net.subnets.iter().any(is_metadata_subnet) {
        return true;
    }
    // 6. Some DHCP-enabled subnet is isolated.
    dhcp.iter().any(|s| is_isolated(net, s))
}

/// The dhcp agent's rule: whether the network gets a proxy, and with which id: the router
/// id of the first router-interface port on a metadata network (warning when there are
/// several, as Neutron does), else the network id.
pub fn network_spec(net: &Network, cfg: &Config) -> (Option<ProxySpec>, Vec<String>) {
    let mut warnings = Vec::new();
    if !should_enable_metadata(net, cfg) {
        return (None, warnings);
    }
    let mut kind = Kind::Network;
    let mut id = net.id.clone();
    if cfg.enable_metadata_network {
        let router_ports: Vec<_> = net
            .ports
            .iter()
            .filter(|p| is_router_port(&p.device_owner))
            .collect();
        if let Some(first) = router_ports.first() {
            if router_ports.len() > 1 {
                warnings.push(format!(
                    "network {}: {} router ports found on the metadata access network; only port {} \
                     of router {} is considered",
                    net.id,
                    router_ports.len(),
                    first.id,
                    first.device_id
                ));
            }
            if net.subnets.iter().any(is_metadata_subnet) {
                if ns_contract::validate_id(&first.device_id).is_ok() {
                    kind = Kind::Router;
                    id = first.device_id.clone();
                } else {
                    warnings.push(format!(
                        "network {}: router port {} has an invalid device_id {:?}; using the network id",
                        net.id, first.id, first.device_id
                    ));
                }
            }
        }
    }
    let ipv6 = cfg.ipv6 && net.subnets.iter().any(|s| s.version() == Some(6));
    let spec = ProxySpec {
        key: net.id.clone(),
        kind,
        id,
        netns: net.netns(),
        interface: net
            .interface
            .clone()
            .unwrap_or_else(|| cfg.router_interface.clone()),
        ipv6,
    };
    (Some(spec), warnings)
}

/// The option-121 (and 249) routes of one IPv4 DHCP subnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubnetRoutes {
    pub subnet_id: String,
    pub cidr: String,
    pub host_routes: Vec<HostRoute>,
}

/// The classless static routes Neutron's dhcp agent pushes for each IPv4 DHCP subnet, in
/// its order: user host routes, the metadata route (OVN metadata port IP, else the DHCP
/// port IP when forced or isolated+enabled, else the gateway when non-isolated), on-link
/// routes of the other IPv4 subnets of the segment inserted in front, and 0.0.0.0/0 via
/// the gateway last when anything was pushed (RFC 3442).
pub fn host_routes(net: &Network, cfg: &Config) -> Vec<SubnetRoutes> {
    let route = |d: &str, nexthop: IpAddr| HostRoute {
        destination: d.to_owned(),
        nexthop,
    };
    let port_ip = |pred: &dyn Fn(&Port) -> bool, subnet: &Subnet| {
        net.ports
            .iter()
            .filter(|p| pred(p))
            .flat_map(|p| p.fixed_ips.iter())
            .find(|ip| on_subnet(ip, subnet))
            .map(|ip| ip.ip_address)
    };
    let mut out = Vec::new();
    for subnet in net
        .subnets
        .iter()
        .filter(|s| s.enable_dhcp && s.version() == Some(4))
    {
        let mut gateway = subnet.gateway_ip;
        let mut routes = Vec::new();
        for hr in &subnet.host_routes {
            if hr.destination == "0.0.0.0/0" {
                gateway.get_or_insert(hr.nexthop);
            } else {
                routes.push(hr.clone());
            }
        }
        let isolated = is_isolated(net, subnet);
        let ovn = port_ip(
            &|p| is_ovn_metadata_port(&p.device_owner, &p.device_id),
            subnet,
        );
        let metadata_via = if ovn.is_some() {
            ovn
        } else if cfg.force_metadata || (isolated && cfg.enable_isolated_metadata) {
            port_ip(&|p| p.device_owner == DEVICE_OWNER_DHCP, subnet)
        } else if !isolated {
            gateway
        } else {
            None
        };
        if let Some(via) = metadata_via {
            routes.push(route(
                &format!("{}/32", Ipv4Addr::new(169, 254, 169, 254)),
                via,
            ));
        }
        for other in &net.subnets {
            if other.version() == Some(4)
                && other.cidr != subnet.cidr
                && other.segment_id == subnet.segment_id
            {
                routes.insert(0, route(&other.cidr, Ipv4Addr::UNSPECIFIED.into()));
            }
        }
        if !routes.is_empty() {
            if let Some(gw) = gateway {
                routes.push(route("0.0.0.0/0", gw));
            }
        }
        out.push(SubnetRoutes {
            subnet_id: subnet.id.clone(),
            cidr: subnet.cidr.clone(),
            host_routes: routes,
        });
    }
    out
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
