//! The inventory file (JSON with Neutron's field names; the format's reference is the
//! "Inventory file" section of crates/agent/README.md, sample: examples/inventory.json): its
//! data model, validation, and the indexes that answer "which port has IP X on network Y".
//! Subnets and ports are Neutron's model types from the contract; networks and instances
//! are this file's own.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;

use base64::Engine as _;
use ns_contract::neutron::{is_router_interface, parse_cidr, Port, Subnet};
use ns_contract::{Kind, Resource};
use serde::Deserialize;
use serde_json::Value;

/// Why an inventory could not be used (the previous good one stays in force).
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("inventory_file {path}: cannot read: {source}{}", read_hint(source))]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// Where to start when the file is missing: the sample, and where the format is described.
fn read_hint(err: &std::io::Error) -> &'static str {
    if err.kind() == std::io::ErrorKind::NotFound {
        "; start from the sample examples/inventory.json (format: crates/agent/README.md, \"Inventory file\")"
    } else {
        ""
    }
}

/// The whole file. Unknown fields are ignored; optional ones may be absent.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Inventory {
    #[serde(default)]
    pub networks: Vec<Network>,
    #[serde(default)]
    pub ports: Vec<Port>,
    #[serde(default)]
    pub instances: Vec<Instance>,
    /// Static vendor data served as `vendor_data.json` (Nova's `vendordata_jsonfile_path`).
    #[serde(default)]
    pub vendor_data: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Network {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub subnets: Vec<Subnet>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Instance {
    pub uuid: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default)]
    pub availability_zone: Option<String>,
    #[serde(default)]
    pub launch_index: u32,
    #[serde(default)]
    pub flavor: Option<String>,
    /// Key name -> OpenSSH public key.
    #[serde(default)]
    pub public_keys: BTreeMap<String, String>,
    #[serde(default)]
    pub user_data: Option<String>,
    #[serde(default)]
    pub user_data_b64: Option<String>,
    #[serde(default)]
    pub meta: BTreeMap<String, Value>,
    /// Nova's `devices` list (device tagging), passed through as given.
    #[serde(default)]
    pub devices: Vec<Value>,
    // Optional EC2-tree details; derived from the uuid or defaulted when absent.
    #[serde(default)]
    pub ec2_instance_id: Option<String>,
    #[serde(default)]
    pub ami_id: Option<String>,
    #[serde(default)]
    pub reservation_id: Option<String>,
    #[serde(default)]
    pub security_groups: Option<Vec<String>>,
    #[serde(default)]
    pub root_device_name: Option<String>,
    #[serde(default)]
    pub floating_ips: Vec<IpAddr>,
    /// Per-instance vendor data; overrides the file-wide `vendor_data`.
    #[serde(default)]
    pub vendor_data: Option<Value>,
    /// `user_data` or the decoded `user_data_b64`, set once when the snapshot is built
    /// (not decoded again for every request).
    #[serde(skip)]
    user_data_raw: Option<bytes::Bytes>,
}

impl Instance {
    /// The user data, if any (decoded and validated at load time); cheap to clone.
    pub fn user_data(&self) -> Option<bytes::Bytes> {
        self.user_data_raw.clone()
    }

    /// The user data as a vector.
    pub fn user_data_bytes(&self) -> Option<Vec<u8>> {
        self.user_data_raw.as_deref().map(<[u8]>::to_vec)
    }
}

/// What the lookup found: Neutron wants exactly one port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found {
        instance_id: String,
        project_id: String,
    },
    NotFound,
    /// Several ports matched (Neutron treats this as not found too).
    Ambiguous(usize),
}

/// A validated inventory plus its indexes. Immutable; replaced whole on reload.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub inventory: Inventory,
    router_networks: HashMap<String, Vec<String>>,
    by_ip: HashMap<(String, IpAddr), Vec<usize>>,
    by_mac: HashMap<(String, String), Vec<usize>>,
    instances: HashMap<String, usize>,
    /// device_id -> indexes of its ports, in file order.
    ports_by_device: HashMap<String, Vec<usize>>,
    subnets: HashMap<String, (usize, usize)>,
    networks: HashMap<String, usize>,
}

impl Snapshot {
    /// Read and validate a file.
    pub fn load(path: &Path) -> Result<Snapshot, InventoryError> {
        let text = std::fs::read(path).map_err(|source| InventoryError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Snapshot::parse(&text, &path.display().to_string())
    }

    /// Parse and validate file contents (`origin` names the file in errors).
    pub fn parse(text: &[u8], origin: &str) -> Result<Snapshot, InventoryError> {
        let inventory: Inventory =
            serde_json::from_slice(text).map_err(|source| InventoryError::Json {
                path: origin.to_owned(),
                source,
            })?;
        Snapshot::build(inventory).map_err(|reason| InventoryError::Invalid {
            path: origin.to_owned(),
            reason,
        })
    }

    /// Validate and index.
    pub fn build(mut inventory: Inventory) -> Result<Snapshot, String> {
        let mut s = Snapshot::default();
        for (i, n) in inventory.networks.iter().enumerate() {
            if n.id.is_empty() {
                return Err(format!("networks[{i}]: empty id"));
            }
            if s.networks.insert(n.id.clone(), i).is_some() {
                return Err(format!("networks[{i}]: duplicate network id {}", n.id));
            }
            for (j, sub) in n.subnets.iter().enumerate() {
                parse_cidr(&sub.cidr).ok_or_else(|| {
                    format!("networks[{i}].subnets[{j}]: invalid cidr {:?}", sub.cidr)
                })?;
                if s.subnets.insert(sub.id.clone(), (i, j)).is_some() {
                    return Err(format!(
                        "networks[{i}].subnets[{j}]: duplicate subnet id {}",
                        sub.id
                    ));
                }
            }
        }
        let mut port_ids = HashSet::new();
        for (i, p) in inventory.ports.iter().enumerate() {
            if p.id.is_empty() || p.network_id.is_empty() {
                return Err(format!("ports[{i}]: id and network_id are required"));
            }
            if !port_ids.insert(p.id.as_str()) {
                return Err(format!("ports[{i}]: duplicate port id {}", p.id));
            }
            if is_router_interface(&p.device_owner) && !p.device_id.is_empty() {
                let nets = s.router_networks.entry(p.device_id.clone()).or_default();
                if !nets.contains(&p.network_id) {
                    nets.push(p.network_id.clone());
                }
            }
            for ip in &p.fixed_ips {
                s.by_ip
                    .entry((p.network_id.clone(), ip.ip_address))
                    .or_default()
                    .push(i);
            }
            if !p.device_id.is_empty() {
                s.ports_by_device
                    .entry(p.device_id.clone())
                    .or_default()
                    .push(i);
            }
            if let Some(mac) = &p.mac_address {
                let mac = mac.to_ascii_lowercase();
                s.by_mac
                    .entry((p.network_id.clone(), mac))
                    .or_default()
                    .push(i);
            }
        }
        for (i, inst) in inventory.instances.iter_mut().enumerate() {
            if inst.uuid.is_empty() {
                return Err(format!("instances[{i}]: empty uuid"));
            }
            if s.instances.insert(inst.uuid.clone(), i).is_some() {
                return Err(format!(
                    "instances[{i}]: duplicate instance uuid {}",
                    inst.uuid
                ));
            }
            if inst.user_data.is_some() && inst.user_data_b64.is_some() {
                return Err(format!(
                    "instances[{i}]: give user_data or user_data_b64, not both"
                ));
            }
            if let Some(b) = &inst.user_data_b64 {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .map_err(|e| format!("instances[{i}]: user_data_b64 is not base64: {e}"))?;
                inst.user_data_raw = Some(raw.into());
            } else if let Some(t) = &inst.user_data {
                inst.user_data_raw = Some(t.clone().into_bytes().into());
            }
        }
        s.inventory = inventory;
        Ok(s)
    }

    /// Neutron's lookup (agent.py `get_port`): the networks of the resource, then the ports
    /// on them holding `ip` (or, for a link-local IPv6 client, the MAC in its EUI-64).
    /// An OVN network is a network: Neutron's OVN agent looks the port up by network and IP.
    pub fn lookup(&self, resource: &Resource, ip: IpAddr, mac: Option<&str>) -> Lookup {
        let networks: Vec<&str> = match resource.kind() {
            Kind::Network | Kind::OvnNetwork => vec![resource.id()],
            Kind::Router => self
                .router_networks
                .get(resource.id())
                .map(|v| v.iter().map(String::as_str).collect())
                .unwrap_or_default(),
        };
        let mut found: Vec<usize> = Vec::new();
        for net in networks {
            let hits = match mac {
                Some(m) => self.by_mac.get(&(net.to_owned(), m.to_ascii_lowercase())),
                None => self.by_ip.get(&(net.to_owned(), ip)),
            };
            for &i in hits.into_iter().flatten() {
                if !found.contains(&i) {
                    found.push(i);
                }
            }
        }
        match found.as_slice() {
            [] => Lookup::NotFound,
            [i] => {
                let p = &self.inventory.ports[*i];
                Lookup::Found {
                    instance_id: p.device_id.clone(),
                    project_id: p.project_id.clone().unwrap_or_default(),
                }
            }
            many => Lookup::Ambiguous(many.len()),
        }
    }

    pub fn instance(&self, uuid: &str) -> Option<&Instance> {
        self.instances
            .get(uuid)
            .map(|&i| &self.inventory.instances[i])
    }

    /// The instance's ports, in file order.
    pub fn instance_ports<'a>(&'a self, uuid: &str) -> impl Iterator<Item = &'a Port> + 'a {
        self.ports_by_device
            .get(uuid)
            .into_iter()
            .flatten()
            .map(|&i| &self.inventory.ports[i])
    }

    pub fn network(&self, id: &str) -> Option<&Network> {
        self.networks.get(id).map(|&i| &self.inventory.networks[i])
    }

    pub fn subnet(&self, id: &str) -> Option<&Subnet> {
        self.subnets
            .get(id)
            .map(|&(n, s)| &self.inventory.networks[n].subnets[s])
    }

    /// The subnet of `net` whose CIDR holds `ip` (when a fixed IP names no subnet).
    pub fn subnet_for(&self, net: &str, ip: IpAddr) -> Option<&Subnet> {
        self.network(net)?.subnets.iter().find(|s| s.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const SAMPLE: &str = r#"{
      "networks": [{"id": "net1", "subnets": [{"id": "sub1", "cidr": "10.250.1.0/24",
         "gateway_ip": "10.250.1.1", "enable_dhcp": true, "ip_version": 4}]},
         {"id": "net2", "subnets": [{"id": "sub2", "cidr": "10.250.2.0/24"}]}],
      "ports": [
        {"id": "rp1", "network_id": "net1", "device_id": "r1", "device_owner": "network:router_interface",
         "fixed_ips": [{"subnet_id": "sub1", "ip_address": "10.250.1.1"}]},
        {"id": "rp2", "network_id": "net2", "device_id": "r1", "device_owner": "network:router_interface_distributed",
         "fixed_ips": [{"subnet_id": "sub2", "ip_address": "10.250.2.1"}]},
        {"id": "p1", "network_id": "net1", "device_id": "vm1", "device_owner": "compute:nova",
         "mac_address": "FA:16:3E:00:00:02", "project_id": "proj",
         "fixed_ips": [{"subnet_id": "sub1", "ip_address": "10.250.1.2"}]},
        {"id": "p2", "network_id": "net2", "device_id": "vm2", "tenant_id": "proj2",
         "fixed_ips": [{"ip_address": "10.250.2.2"}]},
        {"id": "p3", "network_id": "net2", "device_id": "vm3", "fixed_ips": [{"ip_address": "10.250.2.3"}]},
        {"id": "p4", "network_id": "net2", "device_id": "vm4", "fixed_ips": [{"ip_address": "10.250.2.3"}]}
      ],
      "instances": [{"uuid": "vm1", "hostname": "vm1", "user_data_b64": "aGk="}],
      "extra": "ignored"
    }"#;

    fn snap() -> Snapshot {
        Snapshot::parse(SAMPLE.as_bytes(), "inv.json").expect("sample is valid")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn res(kind: Kind, id: &str) -> Resource {
        Resource::new(kind, id).expect("valid id")
    }

    #[test]
    fn network_and_router_lookups() {
        let s = snap();
        let found = |i: &str, p: &str| Lookup::Found {
            instance_id: i.into(),
            project_id: p.into(),
        };
        assert_eq!(
            s.lookup(&res(Kind::Network, "net1"), ip("10.250.1.2"), None),
            found("vm1", "proj")
        );
        assert_eq!(
            s.lookup(&res(Kind::Router, "r1"), ip("10.250.2.2"), None),
            found("vm2", "proj2")
        );
        assert_eq!(
            s.lookup(&res(Kind::Network, "net1"), ip("10.250.2.2"), None),
            Lookup::NotFound
        );
        assert_eq!(
            s.lookup(&res(Kind::Router, "r9"), ip("10.250.1.2"), None),
            Lookup::NotFound
        );
        assert_eq!(
            s.lookup(&res(Kind::Router, "r1"), ip("10.250.2.3"), None),
            Lookup::Ambiguous(2)
        );
        let by_mac = s.lookup(
            &res(Kind::Router, "r1"),
            ip("fe80::1"),
            Some("fa:16:3e:00:00:02"),
        );
        assert_eq!(by_mac, found("vm1", "proj"));
        assert_eq!(
            s.instance("vm1").and_then(Instance::user_data_bytes),
            Some(b"hi".to_vec())
        );
        assert_eq!(
            s.subnet_for("net2", ip("10.250.2.9"))
                .map(|x| x.id.as_str()),
            Some("sub2")
        );
    }

    #[test]
    fn invalid_files_are_refused_with_a_reason() {
        let cases = [
            ("{", "invalid JSON"),
            (
                r#"{"ports": [{"id": "a", "network_id": "n"}, {"id": "a", "network_id": "n"}]}"#,
                "duplicate port id a",
            ),
            (
                r#"{"ports": [{"id": "a", "network_id": "n", "fixed_ips": [{"ip_address": "300.1.1.1"}]}]}"#,
                "invalid JSON",
            ),
            (
                r#"{"instances": [{"uuid": "u", "user_data": "x", "user_data_b64": "eA=="}]}"#,
                "not both",
            ),
            (
                r#"{"instances": [{"uuid": "u", "user_data_b64": "!!"}]}"#,
                "not base64",
            ),
            (
                r#"{"networks": [{"id": "n", "subnets": [{"id": "s", "cidr": "10.0.0.0/40"}]}]}"#,
                "invalid cidr",
            ),
        ];
        for (text, want) in cases {
            let err = Snapshot::parse(text.as_bytes(), "f.json")
                .expect_err(text)
                .to_string();
            assert!(err.starts_with("f.json: ") && err.contains(want), "{err}");
        }
    }

    /// Mutations of the sample (seeded; `NS_FUZZ_SEED` replays), deep nesting and huge
    /// numbers: a one-line error naming the file, or a snapshot whose lookups never panic.
    #[test]
    fn mutated_inventories_load_or_say_why_in_one_line() {
        use ns_testkit::fuzz;
        const DICT: &[&[u8]] = &[
            b"{\"id\": \"x\", \"network_id\": \"net1\"},",
            b"\"cidr\": \"10.0.0.0/255\",",
            b"\"ip_address\": \"::ffff:10.250.1.2\",",
            b"\"user_data_b64\": \"====\",",
            b"\"mtu\": 99999999999999999999999,",
            b"\"launch_index\": -1,",
            b"\"\\ud800\"",
            b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
        ];
        let sample = include_str!("../../../examples/inventory.json");
        let ips: Vec<IpAddr> = [
            "10.250.1.2",
            "10.250.2.3",
            "fe80::f816:3eff:fe00:2",
            "::",
            "255.255.255.255",
        ]
        .iter()
        .map(|s| ip(s))
        .collect();
        let check = |text: &[u8]| match Snapshot::parse(text, "inv.json") {
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.starts_with("inv.json: ") && !msg.contains('\n'),
                    "{msg:?}"
                );
            }
            Ok(s) => {
                for p in &s.inventory.ports {
                    for kind in [Kind::Network, Kind::Router, Kind::OvnNetwork] {
                        let Ok(r) = Resource::new(kind, &p.network_id) else {
                            continue;
                        };
                        for ip in &ips {
                            let _ = s.lookup(&r, *ip, p.mac_address.as_deref());
                            let _ = s.subnet_for(&p.network_id, *ip);
                        }
                    }
                }
                for i in &s.inventory.instances {
                    let _ = i.user_data_bytes();
                }
            }
        };
        for m in fuzz::truncations_and_substitutions(SAMPLE.as_bytes(), b"\0\"}") {
            check(&m);
        }
        let deep = format!(
            "{{\"vendor_data\": {}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        check(deep.as_bytes());
        fuzz::run("inventory", 0x5eed_0008, 2000, |rng, _| {
            let text = if rng.one_in(2) { SAMPLE } else { sample };
            check(&fuzz::mutate(rng, text.as_bytes(), DICT));
        });
    }

    #[test]
    fn an_ovn_network_resolves_as_a_network() {
        let s = snap();
        assert_eq!(
            s.lookup(&res(Kind::OvnNetwork, "net1"), ip("10.250.1.2"), None),
            s.lookup(&res(Kind::Network, "net1"), ip("10.250.1.2"), None),
        );
        assert_eq!(
            s.lookup(&res(Kind::OvnNetwork, "r1"), ip("10.250.2.2"), None),
            Lookup::NotFound,
            "an OVN network id is never read as a router's"
        );
    }

    #[test]
    fn the_sample_in_examples_is_valid() {
        let sample = include_str!("../../../examples/inventory.json");
        let s = Snapshot::parse(sample.as_bytes(), "examples/inventory.json").expect("valid");
        assert!(!s.inventory.ports.is_empty() && !s.inventory.instances.is_empty());
    }

    #[test]
    fn a_missing_file_names_the_option_the_path_and_the_sample() {
        let path = std::env::temp_dir().join("ns-agent-no-such-inventory.json");
        let err = Snapshot::load(&path).expect_err("missing").to_string();
        assert_eq!(err.lines().count(), 1, "{err}");
        for want in [
            "inventory_file ",
            &path.display().to_string(),
            "examples/inventory.json",
        ] {
            assert!(err.contains(want), "{err} should contain {want}");
        }
    }
}
