//! network_data.json from the instance's ports and their subnets, shaped as Nova's
//! `get_network_metadata` (nova/virt/netutils.py): links, networks, services.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ns_contract::neutron::{mask_v4, mask_v6, parse_cidr, Port, Subnet};
use serde_json::{json, Value};

use crate::inventory::Snapshot;

fn netmask(ip: IpAddr, len: u8) -> String {
    match ip {
        IpAddr::V4(_) => Ipv4Addr::from(mask_v4(len)).to_string(),
        IpAddr::V6(_) => Ipv6Addr::from(mask_v6(len)).to_string(),
    }
}

fn network_address(ip: IpAddr, len: u8) -> String {
    match ip {
        IpAddr::V4(a) => Ipv4Addr::from(u32::from(a) & mask_v4(len)).to_string(),
        IpAddr::V6(a) => Ipv6Addr::from(u128::from(a) & mask_v6(len)).to_string(),
    }
}

fn dns(subnet: &Subnet) -> Vec<Value> {
    subnet
        .dns_nameservers
        .iter()
        .map(|a| json!({"type": "dns", "address": a.to_string()}))
        .collect()
}

/// The first fixed IP of the port whose subnet is known and of the given family.
fn first_of<'a>(snap: &'a Snapshot, port: &Port, v4: bool) -> Option<(IpAddr, &'a Subnet)> {
    port.fixed_ips
        .iter()
        .filter(|f| f.ip_address.is_ipv4() == v4)
        .find_map(|f| {
            let subnet = match &f.subnet_id {
                Some(id) => snap.subnet(id),
                None => snap.subnet_for(&port.network_id, f.ip_address),
            }?;
            Some((f.ip_address, subnet))
        })
}

fn net_entry(ip: IpAddr, subnet: &Subnet, num: usize, link: &str, network_id: &str) -> Value {
    let version = if ip.is_ipv4() { 4 } else { 6 };
    let mode = subnet.ipv6_address_mode.as_deref().filter(|_| version == 6);
    if mode.is_none() && subnet.enable_dhcp {
        return json!({
            "id": format!("network{num}"),
            "type": format!("ipv{version}_dhcp"),
            "link": link,
            "network_id": network_id,
        });
    }
    let len = parse_cidr(&subnet.cidr)
        .map(|(_, l)| l)
        .unwrap_or(if version == 4 { 32 } else { 128 });
    let mut routes = Vec::new();
    if let Some(gw) = subnet.gateway_ip {
        let any = if version == 4 { "0.0.0.0" } else { "::" };
        routes.push(json!({"network": any, "netmask": any, "gateway": gw.to_string()}));
    }
    for r in &subnet.host_routes {
        if let Some((dst, dlen)) = parse_cidr(&r.destination) {
            routes.push(json!({
                "network": network_address(dst, dlen),
                "netmask": netmask(dst, dlen),
                "gateway": r.nexthop.to_string(),
            }));
        }
    }
    let kind = match mode {
        Some(m) => format!("ipv6_{m}"),
        None => format!("ipv{version}"),
    };
    json!({
        "id": format!("network{num}"),
        "type": kind,
        "link": link,
        "ip_address": ip.to_string(),
        "netmask": netmask(ip, len),
        "routes": routes,
        "network_id": network_id,
        "services": dns(subnet),
    })
}

/// network_data.json for the instance (ports whose device_id is its uuid, in file order).
pub fn network_data(snap: &Snapshot, uuid: &str) -> Value {
    let mut links = Vec::new();
    let mut nets = Vec::new();
    let mut services: Vec<Value> = Vec::new();
    for port in snap.instance_ports(uuid) {
        let v4 = first_of(snap, port, true);
        let v6 = first_of(snap, port, false);
        if v4.is_none() && v6.is_none() {
            continue;
        }
        // Nova names the link after the tap device: "tap" + the first 11 characters of the port id.
        let link_id = format!("tap{}", port.id.chars().take(11).collect::<String>());
        let mtu = snap.network(&port.network_id).and_then(|n| n.mtu);
        links.push(json!({
            "id": link_id,
            "vif_id": port.id,
            "type": port.vif_type.clone().unwrap_or_else(|| "ovs".into()),
            "mtu": mtu,
            "ethernet_mac_address": port.mac_address,
        }));
        for (ip, subnet) in [v4, v6].into_iter().flatten() {
            nets.push(net_entry(
                ip,
                subnet,
                nets.len(),
                &link_id,
                &port.network_id,
            ));
            for d in dns(subnet) {
                if !services.contains(&d) {
                    services.push(d);
                }
            }
        }
    }
    json!({"links": links, "networks": nets, "services": services})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_addresses() {
        let v4: IpAddr = "10.1.2.3".parse().expect("ip");
        assert_eq!(netmask(v4, 24), "255.255.255.0");
        assert_eq!(netmask(v4, 0), "0.0.0.0");
        assert_eq!(network_address(v4, 16), "10.1.0.0");
        let v6: IpAddr = "fd00:1::5".parse().expect("ip");
        assert_eq!(netmask(v6, 64), "ffff:ffff:ffff:ffff::");
    }
}
