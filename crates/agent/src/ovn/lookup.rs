//! Neutron's port lookup for `X-OVN-Network-ID` (impl_idl_ovn.py
//! `get_network_port_bindings_by_ip`, server_socket.py `get_port`), over our replica: a
//! `Port_Binding` matches when it is bound to a chassis, the first element of its `mac`
//! column (`"MAC IP [IP...]"`) holds the client's MAC (link-local IPv6 clients) or IP among
//! its space-separated tokens, and its datapath's `external_ids:name`, minus the first
//! `neutron-`, is the network id. The replica holds only the rows bound (or additionally
//! bound) here and the localports, so a port bound elsewhere is not found, by design.

use std::net::IpAddr;

use ns_ovsdb::{Replica, Row};

/// `external_ids` keys Neutron writes on every port (ovn_const.OVN_DEVID_EXT_ID_KEY, ...).
pub const DEVICE_ID_KEY: &str = "neutron:device_id";
pub const PROJECT_ID_KEY: &str = "neutron:project_id";

/// What the lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// One port: its `neutron:device_id` and `neutron:project_id` (empty when absent).
    One {
        device_id: Option<String>,
        project_id: String,
    },
    None,
    /// Several ports: their row UUIDs (Neutron's error names them), sorted.
    Many(Vec<String>),
}

/// The network id of a `Datapath_Binding` row, as Neutron's `get_network_name_from_datapath`.
pub fn network_of(datapath: &Row) -> Option<String> {
    datapath
        .map_str("external_ids", "name")
        .map(|n| n.replacen("neutron-", "", 1))
}

/// Whether the port's addresses hold the client (MAC first, then IP, as Neutron).
fn address_matches(port: &Row, ip: &IpAddr, mac: Option<&str>) -> bool {
    let macs = port.strs("mac");
    let Some(first) = macs.first() else {
        return false;
    };
    let tokens: Vec<&str> = first.split(' ').collect();
    if let Some(m) = mac {
        if tokens.iter().any(|t| t.eq_ignore_ascii_case(m)) {
            return true;
        }
    }
    // Neutron compares the text; parsing both sides also matches another spelling of the
    // same IPv6 address.
    tokens
        .iter()
        .any(|t| t.parse::<IpAddr>().is_ok_and(|a| a == *ip))
}

/// The ports on `network` holding the client's address.
pub fn lookup(view: &Replica, network: &str, ip: &IpAddr, mac: Option<&str>) -> Lookup {
    let mut found: Vec<(String, &Row)> = view
        .rows("Port_Binding")
        .filter(|(_, p)| p.uuid("chassis").is_some())
        .filter(|(_, p)| address_matches(p, ip, mac))
        .filter(|(_, p)| {
            p.uuid("datapath")
                .and_then(|dp| view.row("Datapath_Binding", dp))
                .and_then(|dp| network_of(dp))
                .is_some_and(|n| n == network)
        })
        .map(|(u, p)| (u.as_str().to_owned(), p.as_ref()))
        .collect();
    match found.len() {
        0 => Lookup::None,
        1 => {
            let (_, p) = found.remove(0);
            Lookup::One {
                device_id: p.map_str("external_ids", DEVICE_ID_KEY).map(str::to_owned),
                project_id: p
                    .map_str("external_ids", PROJECT_ID_KEY)
                    .unwrap_or_default()
                    .to_owned(),
            }
        }
        _ => {
            let mut uuids: Vec<String> = found.into_iter().map(|(u, _)| u).collect();
            uuids.sort();
            Lookup::Many(uuids)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use ns_ovsdb::{Atom, Datum, Uuid};

    fn uuid(n: u8) -> Uuid {
        Uuid::parse(&format!("00000000-0000-4000-8000-0000000000{n:02x}")).expect("uuid")
    }

    fn port(chassis: Option<u8>, mac: &str, dp: u8, device: &str) -> Row {
        let set = |a: Option<Atom>| Datum::set(a);
        Row::from_columns([
            ("chassis".to_owned(), set(chassis.map(|c| uuid(c).into()))),
            ("mac".to_owned(), set(Some(mac.into()))),
            ("datapath".to_owned(), set(Some(uuid(dp).into()))),
            (
                "external_ids".to_owned(),
                Datum::str_map([(DEVICE_ID_KEY, device), (PROJECT_ID_KEY, "p1")]),
            ),
        ])
    }

    fn view() -> Replica {
        let mut r = Replica::default();
        let dp = |name: &str| {
            Arc::new(Row::from_columns([(
                "external_ids".to_owned(),
                Datum::str_map([("name", name)]),
            )]))
        };
        let dps = r.tables.entry("Datapath_Binding".into()).or_default();
        dps.insert(uuid(1), dp("neutron-net1"));
        dps.insert(uuid(2), dp("neutron-net2"));
        let pbs = r.tables.entry("Port_Binding".into()).or_default();
        let ports = [
            (
                10,
                port(Some(9), "fa:16:3e:00:00:05 10.0.0.5 fd00::5", 1, "vm1"),
            ),
            (
                11,
                port(None, "fa:16:3e:00:00:02 10.0.0.2", 1, "ovnmeta-net1"),
            ),
            (12, port(Some(9), "fa:16:3e:00:00:07 10.0.0.7", 1, "vm7")),
            (13, port(Some(9), "fa:16:3e:00:00:08 10.0.0.7", 1, "vm8")),
            (
                14,
                port(Some(9), "fa:16:3e:00:00:05 10.0.0.5", 2, "vm-other-net"),
            ),
        ];
        for (n, p) in ports {
            pbs.insert(uuid(n), Arc::new(p));
        }
        r
    }

    #[test]
    fn neutrons_rules() {
        let v = view();
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let vm1 = Lookup::One {
            device_id: Some("vm1".into()),
            project_id: "p1".into(),
        };
        assert_eq!(lookup(&v, "net1", &ip("10.0.0.5"), None), vm1);
        assert_eq!(lookup(&v, "net1", &ip("fd00::5"), None), vm1);
        assert_eq!(
            lookup(
                &v,
                "net1",
                &ip("fe80::f816:3eff:fe00:5"),
                Some("fa:16:3e:00:00:05")
            ),
            vm1,
            "a link-local client by its MAC"
        );
        assert_eq!(
            lookup(&v, "net1", &ip("10.0.0.2"), None),
            Lookup::None,
            "unbound localport"
        );
        assert_eq!(lookup(&v, "net1", &ip("10.0.0.9"), None), Lookup::None);
        assert_eq!(lookup(&v, "net3", &ip("10.0.0.5"), None), Lookup::None);
        assert_eq!(
            lookup(&v, "net1", &ip("10.0.0.7"), None),
            Lookup::Many(vec![
                uuid(12).as_str().to_owned(),
                uuid(13).as_str().to_owned()
            ])
        );
        assert_eq!(
            lookup(&v, "net2", &ip("10.0.0.5"), None),
            Lookup::One {
                device_id: Some("vm-other-net".into()),
                project_id: "p1".into()
            }
        );
    }
}
