//! Neutron's model, as far as metadata needs it: the fields of its subnet and port dicts
//! (field names as Neutron's API and RPC give them, unknown fields ignored), the device owners
//! that matter, and CIDR arithmetic.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// neutron-lib's `ROUTER_INTERFACE_OWNERS`: a port with one of these owners is a router's
/// interface, and its `device_id` is the router.
pub const ROUTER_INTERFACE_OWNERS: [&str; 3] = [
    "network:router_interface",
    "network:ha_router_replicated_interface",
    "network:router_interface_distributed",
];
/// The DHCP agent's port.
pub const DEVICE_OWNER_DHCP: &str = "network:dhcp";
/// An OVN metadata port (device id `ovnmeta-<network id>`).
pub const DEVICE_OWNER_DISTRIBUTED: &str = "network:distributed";

/// Whether a port with this owner is a router interface.
pub fn is_router_interface(device_owner: &str) -> bool {
    ROUTER_INTERFACE_OWNERS.contains(&device_owner)
}

/// A subnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    pub id: String,
    pub cidr: String,
    #[serde(default)]
    pub gateway_ip: Option<IpAddr>,
    #[serde(default = "yes")]
    pub enable_dhcp: bool,
    /// 4 or 6; absent means "as the CIDR says" ([`Subnet::version`]).
    #[serde(default)]
    pub ip_version: Option<u8>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_nameservers: Vec<IpAddr>,
    /// User-defined routes, pushed by DHCP before the metadata route.
    #[serde(default)]
    pub host_routes: Vec<HostRoute>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_address_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_id: Option<String>,
}

fn yes() -> bool {
    true
}

impl Subnet {
    /// The CIDR's network address and prefix length, if it parses.
    pub fn prefix(&self) -> Option<(IpAddr, u8)> {
        parse_cidr(&self.cidr)
    }

    /// The IP version: the CIDR's, else the declared one.
    pub fn version(&self) -> Option<u8> {
        self.prefix()
            .map(|(a, _)| if a.is_ipv4() { 4 } else { 6 })
            .or(self.ip_version)
    }

    /// A subnet whose CIDR parses and whose declared `ip_version` (if any) matches it.
    pub fn check(&self) -> Result<(), String> {
        let (addr, _) = self
            .prefix()
            .ok_or_else(|| format!("subnet {}: invalid cidr {:?}", self.id, self.cidr))?;
        let v = if addr.is_ipv4() { 4 } else { 6 };
        match self.ip_version {
            Some(d) if d != v => Err(format!(
                "subnet {}: ip_version {d} does not match cidr {}",
                self.id, self.cidr
            )),
            _ => Ok(()),
        }
    }

    /// Whether `ip` lies in this subnet.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.prefix()
            .is_some_and(|(net, len)| in_prefix(ip, net, len))
    }
}

/// A `destination`/`nexthop` pair of a subnet's `host_routes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRoute {
    pub destination: String,
    pub nexthop: IpAddr,
}

/// A fixed IP of a port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixedIp {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_id: Option<String>,
    pub ip_address: IpAddr,
}

/// A port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    #[serde(default)]
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub network_id: String,
    #[serde(default)]
    pub device_id: String,
    #[serde(default)]
    pub device_owner: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    /// `project_id`, or the older `tenant_id`.
    #[serde(default, alias = "tenant_id", skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    #[serde(default)]
    pub fixed_ips: Vec<FixedIp>,
    #[serde(
        default,
        rename = "binding:vif_type",
        skip_serializing_if = "Option::is_none"
    )]
    pub vif_type: Option<String>,
}

/// Parse `a.b.c.d/n` or `x::/n` into (address, prefix length); `None` if either part is bad
/// or the length is over the family's maximum.
pub fn parse_cidr(cidr: &str) -> Option<(IpAddr, u8)> {
    let (a, l) = cidr.trim().split_once('/')?;
    let addr: IpAddr = a.trim().parse().ok()?;
    let len: u8 = l.trim().parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((addr, len))
}

/// The IPv4 netmask of a prefix length, as bits (a length over 32 counts as 32).
pub fn mask_v4(len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(len.min(32)))
        .unwrap_or(0)
}

/// The IPv6 netmask of a prefix length, as bits (a length over 128 counts as 128).
pub fn mask_v6(len: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(len.min(128)))
        .unwrap_or(0)
}

/// Whether `ip` lies in `net/len` (different families never match).
pub fn in_prefix(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let m = mask_v4(len);
            u32::from(a) & m == u32::from(b) & m
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let m = mask_v6(len);
            u128::from(a) & m == u128::from(b) & m
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn cidrs() {
        assert_eq!(parse_cidr("10.0.0.0/24"), Some((ip("10.0.0.0"), 24)));
        assert_eq!(parse_cidr(" fd00::/64 "), Some((ip("fd00::"), 64)));
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
        assert_eq!(parse_cidr("10.0.0.0"), None);
        assert_eq!(parse_cidr("x/8"), None);
        assert!(in_prefix(ip("10.0.0.7"), ip("10.0.0.0"), 24));
        assert!(!in_prefix(ip("10.0.1.7"), ip("10.0.0.0"), 24));
        assert!(in_prefix(ip("1.2.3.4"), ip("0.0.0.0"), 0));
        assert!(!in_prefix(ip("::1"), ip("0.0.0.0"), 0));
        assert!(in_prefix(ip("fd00::5"), ip("fd00::"), 64));
        assert_eq!(mask_v4(40), u32::MAX);
        assert_eq!(mask_v6(0), 0);
    }

    #[test]
    fn subnet_and_port_json_as_neutron_sends_them() {
        let s: Subnet = serde_json::from_str(
            r#"{"id": "s", "cidr": "10.0.0.0/24", "ip_version": 4, "extra": 1,
                "host_routes": [{"destination": "0.0.0.0/0", "nexthop": "10.0.0.1"}]}"#,
        )
        .expect("subnet");
        assert!(s.enable_dhcp);
        assert_eq!(s.version(), Some(4));
        assert!(s.check().is_ok());
        assert!(s.contains(ip("10.0.0.9")));
        let bad = Subnet {
            ip_version: Some(6),
            ..s.clone()
        };
        assert!(bad.check().is_err());

        let p: Port = serde_json::from_str(
            r#"{"id": "p", "tenant_id": "t", "binding:vif_type": "ovs",
                "fixed_ips": [{"ip_address": "10.0.0.5"}]}"#,
        )
        .expect("port");
        assert_eq!(p.project_id.as_deref(), Some("t"));
        assert_eq!(p.vif_type.as_deref(), Some("ovs"));
        assert_eq!(p.fixed_ips[0].subnet_id, None);
        let back: Port =
            serde_json::from_str(&serde_json::to_string(&p).expect("ser")).expect("de");
        assert_eq!(back, p);
        assert!(is_router_interface("network:router_interface_distributed"));
        assert!(!is_router_interface(DEVICE_OWNER_DHCP));
    }
}
