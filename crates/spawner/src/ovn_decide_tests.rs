//! Case-by-case tests of the OVN decision.

use super::*;

const NET: &str = "0f3a1c2e-9b7d-4e11-8a55-1234567890ab";
const DP: &str = "dp-1";
const US: &str = "ch-us";

fn meta(cidrs: &str) -> PortRow {
    PortRow {
        logical_port: "mdport".into(),
        kind: "localport".into(),
        mac: vec!["fa:16:3e:11:22:33 10.250.0.2 fd00::2".into()],
        datapath: DP.into(),
        external_ids: [
            (
                KEY_DEVICE_OWNER.to_owned(),
                "network:distributed".to_owned(),
            ),
            (KEY_CIDRS.to_owned(), cidrs.to_owned()),
            (KEY_MTU.to_owned(), "1442".to_owned()),
        ]
        .into(),
        ..PortRow::default()
    }
}

fn vif(name: &str, mac: &str, chassis: Option<&str>, additional: &[&str]) -> PortRow {
    PortRow {
        logical_port: name.into(),
        kind: String::new(),
        mac: vec![mac.into()],
        chassis: chassis.map(str::to_owned),
        additional_chassis: additional.iter().map(|s| (*s).to_owned()).collect(),
        datapath: DP.into(),
        ..PortRow::default()
    }
}

fn view(ports: Vec<PortRow>) -> SbView {
    SbView {
        chassis: Some(US.into()),
        datapaths: [(DP.to_owned(), format!("neutron-{NET}"))].into(),
        ports,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[test]
fn vm_bound_here_and_metadata_port_give_a_namespace() {
    let sb = view(vec![
        meta("10.250.0.2/24 10.250.9.2/24"),
        vif("vm1", "fa:16:3e:00:00:01 10.250.0.10", Some(US), &[]),
    ]);
    let nets = ovn_networks(&sb);
    let n = &nets[NET];
    assert_eq!(n.netns(), format!("ovnmeta-{NET}"));
    assert_eq!(n.mac, [0xfa, 0x16, 0x3e, 0x11, 0x22, 0x33]);
    assert_eq!(n.logical_port, "mdport");
    assert_eq!(n.mtu, Some(1442));
    // Only the subnet with a local VIF (LP#1981113).
    assert_eq!(n.cidrs, vec![(ip("10.250.0.2"), 24)]);
    assert!(!n.ipv6);
}

#[test]
fn no_vif_here_no_namespace() {
    let other = view(vec![
        meta("10.250.0.2/24"),
        vif(
            "vm1",
            "fa:16:3e:00:00:01 10.250.0.10",
            Some("ch-other"),
            &[],
        ),
    ]);
    assert!(ovn_networks(&other).is_empty());
    let unbound = view(vec![
        meta("10.250.0.2/24"),
        vif("vm1", "fa:16:3e:00:00:01 10.250.0.10", None, &[]),
    ]);
    assert!(ovn_networks(&unbound).is_empty());
    // A VIF without addresses does not count.
    let no_ip = view(vec![
        meta("10.250.0.2/24"),
        vif("vm1", "fa:16:3e:00:00:01", Some(US), &[]),
    ]);
    assert!(ovn_networks(&no_ip).is_empty());
    // Our Chassis row unknown: nothing.
    let mut sb = view(vec![
        meta("10.250.0.2/24"),
        vif("vm1", "fa:16:3e:00:00:01 10.250.0.10", Some(US), &[]),
    ]);
    sb.chassis = None;
    assert!(ovn_networks(&sb).is_empty());
}

#[test]
fn live_migration_target_counts() {
    let sb = view(vec![
        meta("10.250.0.2/24"),
        vif(
            "vm1",
            "fa:16:3e:00:00:01 10.250.0.10",
            Some("ch-src"),
            &[US],
        ),
    ]);
    assert!(ovn_networks(&sb).contains_key(NET));
}

#[test]
fn metadata_port_needs_owner_localport_and_mac() {
    let vm = vif("vm1", "fa:16:3e:00:00:01 10.250.0.10", Some(US), &[]);
    let mut m = meta("10.250.0.2/24");
    m.external_ids
        .insert(KEY_DEVICE_OWNER.into(), "network:dhcp".into());
    assert!(ovn_networks(&view(vec![m, vm.clone()])).is_empty());
    let mut m = meta("10.250.0.2/24");
    m.kind = String::new();
    // Now it is a VIF, not a metadata port.
    assert!(ovn_networks(&view(vec![m, vm.clone()])).is_empty());
    let mut m = meta("10.250.0.2/24");
    m.mac = vec!["unknown".into()];
    assert!(ovn_networks(&view(vec![m, vm.clone()])).is_empty());
    let mut m = meta("10.250.0.2/24");
    m.mac.clear();
    assert!(ovn_networks(&view(vec![m, vm])).is_empty());
}

#[test]
fn ipv6_only_vif_counts_and_turns_v6_on() {
    let sb = view(vec![
        meta("10.250.0.2/24 fd00::2/64"),
        vif("vm1", "fa:16:3e:00:00:01 fd00::10", Some(US), &[]),
    ]);
    let n = &ovn_networks(&sb)[NET];
    assert!(n.ipv6);
    // Neutron puts only the CIDRs of subnets with local IPv4 addresses on the tap.
    assert!(n.cidrs.is_empty(), "{:?}", n.cidrs);
}

#[test]
fn cidr_change_follows_the_local_subnets() {
    let vm = vif(
        "vm1",
        "fa:16:3e:00:00:01 10.250.0.10 10.250.9.10",
        Some(US),
        &[],
    );
    let n = &ovn_networks(&view(vec![meta("10.250.0.2/24 10.250.9.2/24"), vm]))[NET];
    assert_eq!(
        n.cidrs,
        vec![(ip("10.250.0.2"), 24), (ip("10.250.9.2"), 24)]
    );
}

#[test]
fn other_datapaths_and_bad_values_are_ignored() {
    let mut sb = view(vec![
        meta("10.250.0.2/24"),
        vif("vm1", "fa:16:3e:00:00:01 10.250.0.10", Some(US), &[]),
    ]);
    sb.datapaths.insert(DP.into(), "router-x".into());
    assert!(ovn_networks(&sb).is_empty());
    let mut m = meta("10.250.0.2/24 garbage");
    m.external_ids.insert(KEY_MTU.into(), "huge".into());
    let n = &ovn_networks(&view(vec![
        m,
        vif("vm1", "fa:16:3e:00:00:01 10.250.0.10", Some(US), &[]),
    ]))[NET];
    assert_eq!(n.mtu, None);
    assert_eq!(n.cidrs, vec![(ip("10.250.0.2"), 24)]);
}

#[test]
fn veth_names_follow_neutron() {
    assert_eq!(
        veth_names(NET),
        ("tap0f3a1c2e-90".to_owned(), "tap0f3a1c2e-91".to_owned())
    );
    assert_eq!(
        parse_mac("FA:16:3e:00:00:0a"),
        Some([0xfa, 0x16, 0x3e, 0, 0, 10])
    );
    assert_eq!(parse_mac("fa:16:3e:00:00"), None);
    assert_eq!(parse_mac("fa:16:3e:00:00:00:00"), None);
}

#[test]
fn addresses_have_the_link_local_ones_only_with_ipv6() {
    let v4 = vif("vm1", "fa:16:3e:00:00:01 10.250.0.10", Some(US), &[]);
    let n = &ovn_networks(&view(vec![meta("10.250.0.2/24 fd00::2/64"), v4]))[NET];
    assert_eq!(
        n.addresses().into_iter().collect::<Vec<_>>(),
        vec![(ip("10.250.0.2"), 24), (ip("169.254.169.254"), 32)]
    );
    let v6 = vif(
        "vm1",
        "fa:16:3e:00:00:01 10.250.0.10 fd00::10",
        Some(US),
        &[],
    );
    let n = &ovn_networks(&view(vec![meta("10.250.0.2/24 fd00::2/64"), v6]))[NET];
    let got = n.addresses();
    assert!(got.contains(&(ip("fe80::a9fe:a9fe"), 128)), "{got:?}");
    assert!(
        got.contains(&(ip("fe80::f816:3eff:fe11:2233"), 64)),
        "{got:?}"
    );
    assert!(got.contains(&(ip("169.254.169.254"), 32)), "{got:?}");
    assert!(got.contains(&(ip("10.250.0.2"), 24)), "{got:?}");
    assert_eq!(got.len(), 4, "{got:?}: not the metadata port's fd00::2/64");
}

/// A hostile or broken Southbound database (seeded; `NS_FUZZ_SEED` replays): mutated MACs,
/// addresses, CIDRs, MTUs and datapath names never panic the decision, and every namespace
/// it asks for has a valid name, veth names within IFNAMSIZ and a MAC of six bytes.
#[test]
fn mutated_southbound_rows_give_valid_namespaces_or_none() {
    use ns_testkit::fuzz;
    const DICT: &[&[u8]] = &[
        b"ff:ff:ff:ff:ff:ff",
        b"+f",
        b" 10.250.0.99",
        b" fe80::1",
        b"/33",
        b"/129",
        b"4294967296",
        b"neutron-",
        b"../",
    ];
    let m = |rng: &mut fuzz::Rng, s: &str| {
        String::from_utf8_lossy(&fuzz::mutate(rng, s.as_bytes(), DICT)).into_owned()
    };
    fuzz::run("ovn-decide", 0x5eed_0012, 2000, |rng, _| {
        let mut md = meta("10.250.0.2/24 10.250.9.2/24 fd00::2/64");
        md.mac = vec![m(rng, "fa:16:3e:11:22:33 10.250.0.2 fd00::2")];
        let cidrs = m(rng, "10.250.0.2/24 10.250.9.2/24");
        md.external_ids.insert(KEY_CIDRS.to_owned(), cidrs);
        let mtu = m(rng, "1442");
        md.external_ids.insert(KEY_MTU.to_owned(), mtu);
        let vm = vif(
            "vm1",
            &m(rng, "fa:16:3e:00:00:01 10.250.0.10 fd00::10"),
            Some(US),
            &[],
        );
        let mut sb = view(vec![md, vm]);
        let name = m(rng, &format!("neutron-{NET}"));
        sb.datapaths.insert(DP.to_owned(), name);
        for (id, n) in ovn_networks(&sb) {
            assert!(ns_contract::validate_netns(&n.netns()).is_ok(), "{id:?}");
            let (outer, inner) = veth_names(&id);
            assert!(outer.len() <= 15 && inner.len() <= 15, "{outer} {inner}");
            assert!(n.mtu.is_none_or(|m| m >= 68));
            let _ = n.addresses();
        }
    });
}

/// Two metadata ports on one network: the one with the smallest `logical_port`, in either
/// row order.
#[test]
fn of_two_metadata_ports_the_same_one_wins_in_any_order() {
    let mut second = meta("10.250.0.3/24");
    second.logical_port = "a-mdport".into();
    second.mac = vec!["fa:16:3e:44:55:66 10.250.0.3".into()];
    let vm = vif("vm1", "fa:16:3e:00:00:01 10.250.0.10", Some(US), &[]);
    for ports in [
        vec![meta("10.250.0.2/24"), second.clone(), vm.clone()],
        vec![second.clone(), meta("10.250.0.2/24"), vm.clone()],
    ] {
        let nets = ovn_networks(&view(ports));
        assert_eq!(nets[NET].logical_port, "a-mdport");
        assert_eq!(nets[NET].mac, [0xfa, 0x16, 0x3e, 0x44, 0x55, 0x66]);
    }
}
