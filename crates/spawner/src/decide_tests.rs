//! Case-by-case tests of the mode decisions and the option-121 routes.

use super::*;

fn cfg(isolated: bool, force: bool, metanet: bool) -> Config {
    let mut c = Config::defaults();
    c.enable_isolated_metadata = isolated;
    c.force_metadata = force;
    c.enable_metadata_network = metanet;
    c
}

fn subnet(id: &str, cidr: &str, gw: Option<&str>, dhcp: bool) -> Subnet {
    Subnet {
        id: id.into(),
        cidr: cidr.into(),
        gateway_ip: gw.map(|g| g.parse().expect("ip")),
        enable_dhcp: dhcp,
        ip_version: Some(if cidr.contains(':') { 6 } else { 4 }),
        dns_nameservers: vec![],
        host_routes: vec![],
        ipv6_address_mode: None,
        segment_id: None,
    }
}

fn port(id: &str, owner: &str, device: &str, ips: &[(&str, &str)]) -> Port {
    Port {
        id: id.into(),
        device_owner: owner.into(),
        device_id: device.into(),
        fixed_ips: ips
            .iter()
            .map(|(s, ip)| FixedIp {
                subnet_id: Some((*s).into()),
                ip_address: ip.parse().expect("ip"),
            })
            .collect(),
        network_id: String::new(),
        mac_address: None,
        project_id: None,
        vif_type: None,
    }
}

fn net(subnets: Vec<Subnet>, ports: Vec<Port>) -> Network {
    Network {
        id: "net1".into(),
        netns: None,
        interface: Some("tap1".into()),
        subnets,
        ports,
    }
}

fn dhcp_port() -> Port {
    port("pd", DEVICE_OWNER_DHCP, "dhcpX", &[("s1", "10.0.0.2")])
}

fn router_port(dev: &str, ip: &str) -> Port {
    port(
        &format!("p-{dev}"),
        "network:router_interface",
        dev,
        &[("s1", ip)],
    )
}

fn isolated_net() -> Network {
    net(
        vec![subnet("s1", "10.0.0.0/24", Some("10.0.0.1"), true)],
        vec![dhcp_port()],
    )
}

fn routed_net() -> Network {
    let mut n = isolated_net();
    n.ports.push(router_port("r1", "10.0.0.1"));
    n
}

fn router(ha: Option<HaState>, distributed: bool) -> Router {
    Router {
        id: "r1".into(),
        netns: None,
        ha_state: ha,
        distributed,
    }
}

#[test]
fn router_plain_primary_backup_distributed() {
    let c = Config::defaults();
    let s = router_spec(&router(None, false), &c).expect("plain router gets a proxy");
    assert_eq!(
        (
            s.kind,
            s.id.as_str(),
            s.netns.as_str(),
            s.interface.as_str()
        ),
        (Kind::Router, "r1", "qrouter-r1", "lo")
    );
    assert!(router_spec(&router(Some(HaState::Primary), false), &c).is_some());
    assert!(
        router_spec(&router(Some(HaState::Backup), false), &c).is_none(),
        "HA backup: none"
    );
    assert!(
        router_spec(&router(Some(HaState::Backup), true), &c).is_some(),
        "DVR+HA backup runs (LP#1817956)"
    );
    assert!(router_spec(&router(None, true), &c).is_some());
}

#[test]
fn router_ipv6_and_interface_from_config() {
    let mut c = Config::defaults();
    c.ipv6 = true;
    c.router_interface = "dummy0".into();
    let s = router_spec(&router(None, false), &c).expect("spec");
    assert!(s.ipv6);
    assert_eq!(s.interface, "dummy0");
}

#[test]
fn rule1_ovn_metadata_port_wins_over_force() {
    let mut n = isolated_net();
    n.ports.push(port(
        "po",
        DEVICE_OWNER_DISTRIBUTED,
        "ovnmeta-net1",
        &[("s1", "10.0.0.3")],
    ));
    assert!(!should_enable_metadata(&n, &cfg(true, true, true)));
    // network:distributed without the ovnmeta- prefix is not an OVN metadata port.
    let mut n = isolated_net();
    n.ports
        .push(port("po", DEVICE_OWNER_DISTRIBUTED, "other", &[]));
    assert!(should_enable_metadata(&n, &cfg(true, false, false)));
}

#[test]
fn rule2_no_dhcp_subnet_wins_over_force() {
    let n = net(
        vec![subnet("s1", "10.0.0.0/24", Some("10.0.0.1"), false)],
        vec![],
    );
    assert!(!should_enable_metadata(&n, &cfg(true, true, false)));
    let n = net(vec![], vec![]);
    assert!(!should_enable_metadata(&n, &cfg(true, true, false)));
}

#[test]
fn rule3_force_metadata_even_when_routed_and_isolated_off() {
    assert!(should_enable_metadata(
        &routed_net(),
        &cfg(false, true, false)
    ));
}

#[test]
fn rule4_isolated_off_means_none() {
    assert!(!should_enable_metadata(
        &isolated_net(),
        &cfg(false, false, true)
    ));
}

#[test]
fn rule5_metadata_network_even_when_routed() {
    let mut n = net(
        vec![subnet("s1", "169.254.10.0/24", Some("169.254.10.1"), true)],
        vec![],
    );
    n.ports.push(port(
        "pr",
        "network:router_interface",
        "r9",
        &[("s1", "169.254.10.1")],
    ));
    assert!(should_enable_metadata(&n, &cfg(true, false, true)));
    assert!(
        !should_enable_metadata(&n, &cfg(true, false, false)),
        "not a metadata network when off"
    );
    // 169.254.0.0/15 is not inside 169.254.0.0/16.
    let n2 = net(
        vec![subnet("s1", "169.254.0.0/15", None, true)],
        vec![router_port("r1", "169.254.0.1")],
    );
    assert!(!is_metadata_subnet(&n2.subnets[0]));
}

#[test]
fn rule6_isolated_subnet() {
    assert!(should_enable_metadata(
        &isolated_net(),
        &cfg(true, false, false)
    ));
    assert!(!should_enable_metadata(
        &routed_net(),
        &cfg(true, false, false)
    ));
    // A router port not on the gateway IP does not make the subnet routed.
    let mut n = isolated_net();
    n.ports.push(router_port("r1", "10.0.0.9"));
    assert!(should_enable_metadata(&n, &cfg(true, false, false)));
    // Any isolated DHCP subnet is enough; non-DHCP isolated subnets do not count.
    let mut n = routed_net();
    n.subnets
        .push(subnet("s2", "10.0.1.0/24", Some("10.0.1.1"), false));
    assert!(!should_enable_metadata(&n, &cfg(true, false, false)));
    n.subnets[1].enable_dhcp = true;
    assert!(should_enable_metadata(&n, &cfg(true, false, false)));
    // Other router-interface owners count too.
    let mut n = isolated_net();
    n.ports.push(port(
        "ph",
        "network:ha_router_replicated_interface",
        "r1",
        &[("s1", "10.0.0.1")],
    ));
    assert!(!should_enable_metadata(&n, &cfg(true, false, false)));
}

#[test]
fn network_spec_uses_network_id_and_interface() {
    let (s, w) = network_spec(&isolated_net(), &cfg(true, false, false));
    let s = s.expect("isolated gets a proxy");
    assert!(w.is_empty());
    assert_eq!(
        (s.kind, s.id.as_str(), s.key.as_str()),
        (Kind::Network, "net1", "net1")
    );
    assert_eq!(
        (s.netns.as_str(), s.interface.as_str()),
        ("qdhcp-net1", "tap1")
    );
    assert!(!s.ipv6);
}

#[test]
fn metadata_network_takes_first_router_port_and_warns_on_several() {
    let mut n = net(vec![subnet("s1", "169.254.10.0/24", None, true)], vec![]);
    n.ports.push(port(
        "pa",
        "network:router_interface",
        "rA",
        &[("s1", "169.254.10.1")],
    ));
    n.ports.push(port(
        "pb",
        "network:router_interface_distributed",
        "rB",
        &[("s1", "169.254.10.2")],
    ));
    let (s, w) = network_spec(&n, &cfg(true, false, true));
    let s = s.expect("metadata network gets a proxy");
    assert_eq!(
        (s.kind, s.id.as_str(), s.key.as_str()),
        (Kind::Router, "rA", "net1")
    );
    assert_eq!(w.len(), 1);
    assert!(
        w[0].contains("2 router ports") && w[0].contains("rA"),
        "{w:?}"
    );
}

#[test]
fn metadata_network_without_router_port_uses_network_id() {
    let n = net(vec![subnet("s1", "169.254.10.0/24", None, true)], vec![]);
    let s = network_spec(&n, &cfg(true, false, true)).0.expect("proxy");
    assert_eq!((s.kind, s.id.as_str()), (Kind::Network, "net1"));
}

#[test]
fn router_port_on_ordinary_network_keeps_network_id() {
    // force_metadata on a routed network with enable_metadata_network: no 169.254 subnet,
    // so the network id is used.
    let s = network_spec(&routed_net(), &cfg(true, true, true))
        .0
        .expect("forced");
    assert_eq!((s.kind, s.id.as_str()), (Kind::Network, "net1"));
}

#[test]
fn network_ipv6_only_with_v6_subnet_and_option() {
    let mut c = cfg(true, false, false);
    c.ipv6 = true;
    assert!(!network_spec(&isolated_net(), &c).0.expect("spec").ipv6);
    let mut n = isolated_net();
    n.subnets.push(subnet("s6", "fd00::/64", None, true));
    assert!(network_spec(&n, &c).0.expect("spec").ipv6);
}

#[test]
fn desired_combines_routers_and_networks() {
    let mut rec = Records::default();
    rec.api_routers.insert("r1".into(), router(None, false));
    rec.api_routers.insert(
        "r2".into(),
        Router {
            id: "r2".into(),
            netns: None,
            ha_state: Some(HaState::Backup),
            distributed: false,
        },
    );
    rec.api_networks.insert("net1".into(), isolated_net());
    let d = desired(&rec, &cfg(true, false, false));
    assert_eq!(d.specs.keys().collect::<Vec<_>>(), vec!["net1", "r1"]);
}

fn routes(n: &Network, c: &Config) -> Vec<(String, String)> {
    host_routes(n, c)
        .into_iter()
        .flat_map(|s| s.host_routes)
        .map(|r| (r.destination, r.nexthop.to_string()))
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[test]
fn routes_isolated_via_dhcp_port() {
    let r = routes(&isolated_net(), &cfg(true, false, false));
    assert_eq!(
        r,
        pairs(&[
            ("169.254.169.254/32", "10.0.0.2"),
            ("0.0.0.0/0", "10.0.0.1")
        ])
    );
}

#[test]
fn routes_isolated_but_option_off_gets_nothing() {
    assert!(routes(&isolated_net(), &cfg(false, false, false)).is_empty());
}

#[test]
fn routes_routed_via_gateway_regardless_of_flags() {
    let want = pairs(&[
        ("169.254.169.254/32", "10.0.0.1"),
        ("0.0.0.0/0", "10.0.0.1"),
    ]);
    assert_eq!(routes(&routed_net(), &cfg(false, false, false)), want);
    assert_eq!(routes(&routed_net(), &cfg(true, false, false)), want);
}

#[test]
fn routes_force_metadata_via_dhcp_port_even_when_routed() {
    let r = routes(&routed_net(), &cfg(false, true, false));
    assert_eq!(
        r,
        pairs(&[
            ("169.254.169.254/32", "10.0.0.2"),
            ("0.0.0.0/0", "10.0.0.1")
        ])
    );
}

#[test]
fn routes_ovn_metadata_port_first() {
    let mut n = isolated_net();
    n.ports.push(port(
        "po",
        DEVICE_OWNER_DISTRIBUTED,
        "ovnmeta-net1",
        &[("s1", "10.0.0.3")],
    ));
    let r = routes(&n, &cfg(true, true, false));
    assert_eq!(
        r[0],
        ("169.254.169.254/32".to_owned(), "10.0.0.3".to_owned())
    );
}

#[test]
fn routes_user_routes_onlink_and_default_order() {
    let mut n = isolated_net();
    n.subnets[0].host_routes = vec![
        HostRoute {
            destination: "192.168.5.0/24".into(),
            nexthop: "10.0.0.7".parse().expect("ip"),
        },
        HostRoute {
            destination: "0.0.0.0/0".into(),
            nexthop: "10.0.0.254".parse().expect("ip"),
        },
    ];
    n.subnets
        .push(subnet("s2", "10.0.1.0/24", Some("10.0.1.1"), true));
    n.subnets.push(subnet("s3", "10.0.2.0/24", None, false));
    n.subnets.push(subnet("s6", "fd00::/64", None, true));
    let all = host_routes(&n, &cfg(true, false, false));
    assert_eq!(all.len(), 2, "IPv4 DHCP subnets only");
    let r: Vec<_> = all[0]
        .host_routes
        .iter()
        .map(|r| (r.destination.clone(), r.nexthop.to_string()))
        .collect();
    // On-link routes are inserted at the front one by one (so reversed), gateway_ip wins
    // over a 0.0.0.0/0 host route, which is not pushed itself.
    assert_eq!(
        r,
        pairs(&[
            ("10.0.2.0/24", "0.0.0.0"),
            ("10.0.1.0/24", "0.0.0.0"),
            ("192.168.5.0/24", "10.0.0.7"),
            ("169.254.169.254/32", "10.0.0.2"),
            ("0.0.0.0/0", "10.0.0.1"),
        ])
    );
    // s2 has no DHCP port IP: no metadata route, only on-link routes and the default.
    let r2: Vec<_> = all[1]
        .host_routes
        .iter()
        .map(|r| r.destination.clone())
        .collect();
    assert_eq!(r2, vec!["10.0.2.0/24", "10.0.0.0/24", "0.0.0.0/0"]);
}

#[test]
fn routes_no_gateway_no_default() {
    let n = net(
        vec![subnet("s1", "10.0.0.0/24", None, true)],
        vec![dhcp_port()],
    );
    assert_eq!(
        routes(&n, &cfg(true, false, false)),
        pairs(&[("169.254.169.254/32", "10.0.0.2")])
    );
}

#[test]
fn fixed_ip_without_subnet_id_matches_by_address() {
    // The contract makes `subnet_id` optional: a router port holding the gateway by address
    // still makes the subnet non-isolated.
    let mut n = routed_net();
    for ip in &mut n.ports[1].fixed_ips {
        ip.subnet_id = None;
    }
    assert!(!is_isolated(&n, &n.subnets[0]));
    n.ports[1].fixed_ips[0].ip_address = "10.9.0.1".parse().expect("ip");
    assert!(is_isolated(&n, &n.subnets[0]));
}
