//! Router and network records (Neutron's field names), their validation, and the store
//! that holds them: records made through the control API (persisted in
//! `<state dir>/records.json` so a restarted supervisor adopts instead of killing), records
//! from the static records file, and routers auto-enabled from `qrouter-*` namespaces.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use ns_contract::neutron::{Port, Subnet};
use ns_contract::{validate_id, validate_ifname, validate_netns, Kind};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// HA state of a router on this host (keepalived's view).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HaState {
    /// Serves traffic (older Neutron called it `master`).
    #[serde(alias = "master")]
    Primary,
    /// Standby.
    Backup,
}

/// A router hosted here: the l3 agent's view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Router {
    /// The router id; in the API it comes from the path (a body `id` must match).
    #[serde(default)]
    pub id: String,
    /// Namespace; default `qrouter-<id>`.
    #[serde(default)]
    pub netns: Option<String>,
    /// `primary`, `backup` or null (not HA).
    #[serde(default)]
    pub ha_state: Option<HaState>,
    /// DVR router (with HA: the proxy runs on primary and backup, LP#1817956).
    #[serde(default)]
    pub distributed: bool,
}

impl Router {
    /// The namespace the router's proxy runs in.
    pub fn netns(&self) -> String {
        self.netns
            .clone()
            .unwrap_or_else(|| format!("{}{}", Kind::Router.netns_prefix(), self.id))
    }

    /// Validate ids and names.
    pub fn validate(&self) -> Result<()> {
        validate_id(&self.id)?;
        if let Some(ns) = &self.netns {
            validate_netns(ns)?;
        }
        Ok(())
    }
}

/// A network served by a DHCP namespace here: the dhcp agent's view (subnets and ports are
/// Neutron's dicts, [`ns_contract::neutron`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// The network id; in the API it comes from the path (a body `id` must match).
    #[serde(default)]
    pub id: String,
    /// Namespace; default `qdhcp-<id>`.
    #[serde(default)]
    pub netns: Option<String>,
    /// The DHCP port's device, which gets 169.254.169.254/32; default: `[spawner]
    /// router_interface` (`lo`). Needed for the IPv6 bind.
    #[serde(default)]
    pub interface: Option<String>,
    #[serde(default)]
    pub subnets: Vec<Subnet>,
    #[serde(default)]
    pub ports: Vec<Port>,
}

impl Network {
    /// The namespace the network's proxy runs in.
    pub fn netns(&self) -> String {
        self.netns
            .clone()
            .unwrap_or_else(|| format!("{}{}", Kind::Network.netns_prefix(), self.id))
    }

    /// Validate ids, names, CIDRs and versions.
    pub fn validate(&self) -> Result<()> {
        validate_id(&self.id)?;
        if let Some(ns) = &self.netns {
            validate_netns(ns)?;
        }
        if let Some(ifname) = &self.interface {
            validate_ifname(ifname)?;
        }
        for s in &self.subnets {
            s.check().map_err(Error::BadRecord)?;
        }
        Ok(())
    }
}

/// Parse a router record from a JSON body; `id` is the id from the path.
pub fn router_from_json(id: &str, body: &[u8]) -> Result<Router> {
    let mut r: Router = if body.iter().all(u8::is_ascii_whitespace) {
        Router {
            id: String::new(),
            netns: None,
            ha_state: None,
            distributed: false,
        }
    } else {
        serde_json::from_slice(body).map_err(|e| Error::BadRecord(format!("bad JSON: {e}")))?
    };
    merge_id(&mut r.id, id)?;
    r.validate()?;
    Ok(r)
}

/// Parse a network record from a JSON body; `id` is the id from the path (or empty: the
/// body's `id` is used).
pub fn network_from_json(id: &str, body: &[u8]) -> Result<Network> {
    let mut n: Network =
        serde_json::from_slice(body).map_err(|e| Error::BadRecord(format!("bad JSON: {e}")))?;
    merge_id(&mut n.id, id)?;
    n.validate()?;
    Ok(n)
}

fn merge_id(body_id: &mut String, path_id: &str) -> Result<()> {
    if path_id.is_empty() {
        return Ok(());
    }
    if !body_id.is_empty() && body_id != path_id {
        return Err(Error::BadRecord(format!(
            "id {body_id:?} in the body does not match {path_id:?} in the path"
        )));
    }
    *body_id = path_id.to_owned();
    Ok(())
}

/// The shape of the static records file and of `records.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordSet {
    #[serde(default)]
    pub routers: Vec<Router>,
    #[serde(default)]
    pub networks: Vec<Network>,
}

impl RecordSet {
    /// Read and validate a records file (`{"routers": [...], "networks": [...]}`).
    pub fn load(path: &Path) -> Result<RecordSet> {
        let text = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
        RecordSet::parse(&text, path)
    }

    /// Parse and validate the content of a records file; errors name `path`.
    pub fn parse(text: &[u8], path: &Path) -> Result<RecordSet> {
        let set: RecordSet = serde_json::from_slice(text)
            .map_err(|e| Error::BadRecord(format!("{}: {e}", path.display())))?;
        set.check(path)?;
        Ok(set)
    }

    /// Validate every record; errors name `path`.
    pub fn check(&self, path: &Path) -> Result<()> {
        for r in &self.routers {
            r.validate()
                .map_err(|e| Error::BadRecord(format!("{}: router: {e}", path.display())))?;
        }
        for n in &self.networks {
            n.validate()
                .map_err(|e| Error::BadRecord(format!("{}: network: {e}", path.display())))?;
        }
        Ok(())
    }
}

/// A change to the API records, as the control API asks for it; also a line of the
/// write-ahead journal (`journal.rs`), so its JSON shape is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Add or replace a router made through the API.
    PutRouter(Router),
    /// Remove an API router.
    RemoveRouter(String),
    /// Add or replace a network made through the API.
    PutNetwork(Network),
    /// Remove an API network.
    RemoveNetwork(String),
}

impl Change {
    /// Validate ids and names, as the API did before accepting it (a journal line is read
    /// back from disk, so it is checked again).
    pub fn validate(&self) -> Result<()> {
        match self {
            Change::PutRouter(r) => r.validate(),
            Change::PutNetwork(n) => n.validate(),
            Change::RemoveRouter(id) | Change::RemoveNetwork(id) => Ok(validate_id(id)?),
        }
    }
}

/// Every record the supervisor knows, by source.
#[derive(Debug, Clone, Default)]
pub struct Records {
    /// Made through the control API (persisted).
    pub api_routers: BTreeMap<String, Router>,
    pub api_networks: BTreeMap<String, Network>,
    /// From the static records file (replaced on SIGHUP).
    pub file: RecordSet,
    /// Router ids auto-enabled from `qrouter-<id>` namespaces.
    pub auto_routers: BTreeSet<String>,
    /// OVN networks provisioned by the OVN source (`ovnmeta-<id>`), by id: whether IPv6 is on.
    pub ovn_networks: BTreeMap<String, bool>,
}

impl Records {
    /// Every router: API records win over file records, which win over auto-enabled ones.
    pub fn routers(&self) -> BTreeMap<String, Router> {
        let mut out: BTreeMap<String, Router> = self
            .auto_routers
            .iter()
            .map(|id| {
                (
                    id.clone(),
                    Router {
                        id: id.clone(),
                        netns: None,
                        ha_state: None,
                        distributed: false,
                    },
                )
            })
            .collect();
        for r in &self.file.routers {
            out.insert(r.id.clone(), r.clone());
        }
        out.extend(self.api_routers.iter().map(|(k, v)| (k.clone(), v.clone())));
        out
    }

    /// Every network: API records win over file records.
    pub fn networks(&self) -> BTreeMap<String, Network> {
        let mut out: BTreeMap<String, Network> = self
            .file
            .networks
            .iter()
            .map(|n| (n.id.clone(), n.clone()))
            .collect();
        out.extend(
            self.api_networks
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        out
    }

    /// Apply a change to the API records; false when it removes an id that is not there
    /// (nothing changed).
    pub fn apply(&mut self, change: Change) -> bool {
        match change {
            Change::PutRouter(r) => {
                self.api_routers.insert(r.id.clone(), r);
                true
            }
            Change::RemoveRouter(id) => self.api_routers.remove(&id).is_some(),
            Change::PutNetwork(n) => {
                self.api_networks.insert(n.id.clone(), n);
                true
            }
            Change::RemoveNetwork(id) => self.api_networks.remove(&id).is_some(),
        }
    }

    /// The API records of `set` (as loaded from `records.json`).
    pub fn set_api(&mut self, set: RecordSet) {
        self.api_routers = set.routers.into_iter().map(|r| (r.id.clone(), r)).collect();
        self.api_networks = set
            .networks
            .into_iter()
            .map(|n| (n.id.clone(), n))
            .collect();
    }

    /// The API records, for persisting.
    pub fn api_set(&self) -> RecordSet {
        RecordSet {
            routers: self.api_routers.values().cloned().collect(),
            networks: self.api_networks.values().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        let e = router_from_json("qrouter-r1", b"").expect_err("namespace name as id");
        assert!(e.to_string().contains("give the id without"), "{e}");
        assert!(router_from_json("r1", br#"{"netns":"a b"}"#).is_err());
        assert!(network_from_json("n1", br#"{"interface":"tap1234567890abc"}"#).is_err());
        assert!(network_from_json("n1", br#"{"interface":"tap%1"}"#).is_err());
    }

    /// A `records.json` exactly as the previous version wrote it (its own model types:
    /// `ip_version` required, `subnet_id` and `nexthop` plain strings, nulls written out)
    /// loads into the contract's types and means the same.
    #[test]
    fn records_json_of_the_previous_version_loads() {
        let dir = std::env::temp_dir().join(format!("spawner-recold-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let p = dir.join("records.json");
        std::fs::write(
            &p,
            r#"{
  "routers": [
    {
      "id": "r1",
      "netns": null,
      "ha_state": "primary",
      "distributed": false
    }
  ],
  "networks": [
    {
      "id": "n1",
      "netns": "qdhcp-n1",
      "interface": "tap1",
      "subnets": [
        {
          "id": "s1",
          "cidr": "10.0.0.0/24",
          "gateway_ip": "10.0.0.1",
          "enable_dhcp": true,
          "ip_version": 4,
          "host_routes": [
            {
              "destination": "192.168.0.0/24",
              "nexthop": "10.0.0.254"
            }
          ],
          "segment_id": null
        },
        {
          "id": "s6",
          "cidr": "fd00::/64",
          "gateway_ip": null,
          "enable_dhcp": true,
          "ip_version": 6,
          "host_routes": [],
          "segment_id": null
        }
      ],
      "ports": [
        {
          "id": "p1",
          "device_owner": "network:dhcp",
          "device_id": "dhcp1",
          "fixed_ips": [
            {
              "subnet_id": "s1",
              "ip_address": "10.0.0.2"
            }
          ]
        }
      ]
    }
  ]
}"#,
        )
        .expect("write");
        let set = RecordSet::load(&p).expect("old records.json loads");
        assert_eq!(set.routers[0].ha_state, Some(HaState::Primary));
        let n = &set.networks[0];
        assert_eq!(n.subnets[0].version(), Some(4));
        assert_eq!(n.subnets[1].version(), Some(6));
        assert_eq!(
            n.subnets[0].host_routes[0].nexthop,
            "10.0.0.254".parse::<std::net::IpAddr>().expect("ip")
        );
        assert_eq!(n.ports[0].fixed_ips[0].subnet_id.as_deref(), Some("s1"));
        // Saved again in the new shape, it still loads to the same records.
        crate::persist::save(p.parent().expect("dir"), &set).expect("save");
        assert_eq!(RecordSet::load(&p).expect("reload"), set);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    /// Hostile `records.json` files and API bodies (seeded; `NS_FUZZ_SEED` replays): an
    /// error naming the file (or the record), or records the decisions and host routes take
    /// without a panic.
    #[test]
    fn mutated_records_and_bodies_load_or_say_why() {
        use ns_testkit::fuzz;
        const SET: &str = r#"{"routers":[{"id":"r1","netns":null,"ha_state":"primary","distributed":false}],
 "networks":[{"id":"n1","netns":"qdhcp-n1","interface":"tap1","subnets":[
  {"id":"s1","cidr":"10.0.0.0/24","gateway_ip":"10.0.0.1","enable_dhcp":true,"ip_version":4,
   "host_routes":[{"destination":"192.168.0.0/24","nexthop":"10.0.0.254"}]},
  {"id":"s6","cidr":"fd00::/64","gateway_ip":null,"enable_dhcp":true,"ip_version":6}],
  "ports":[{"id":"p1","device_owner":"network:router_interface","device_id":"r1",
   "fixed_ips":[{"subnet_id":"s1","ip_address":"10.0.0.1"}]}]}]}"#;
        const DICT: &[&[u8]] = &[
            b"\"cidr\":\"169.254.0.0/16\",",
            b"\"cidr\":\"10.0.0.0/99\",",
            b"\"ip_version\":99999999999,",
            b"\"ha_state\":\"backup\",",
            b"\"distributed\":true,",
            b"\"netns\":\"../../etc\",",
            b"\"id\":\"qrouter-x\",",
            b"{\"destination\":\"0.0.0.0/0\",\"nexthop\":\"::1\"},",
            b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
        ];
        let path = Path::new("/var/lib/ns-metadata/records.json");
        let configs = {
            let mut all = crate::config::Config::defaults();
            all.enable_isolated_metadata = true;
            all.enable_metadata_network = true;
            [crate::config::Config::defaults(), all]
        };
        let check = |text: &[u8]| {
            match RecordSet::parse(text, path) {
                Err(e) => {
                    let msg = e.to_string();
                    assert!(
                        msg.contains("records.json: ") && !msg.contains('\n'),
                        "{msg:?}"
                    );
                }
                Ok(set) => {
                    let records = Records {
                        file: set,
                        ..Records::default()
                    };
                    for cfg in &configs {
                        let _ = crate::decide::desired(&records, cfg);
                        for n in records.networks().values() {
                            let _ = crate::decide::host_routes(n, cfg);
                        }
                    }
                }
            }
            for id in ["r1", "", "n1"] {
                let _ = router_from_json(id, text);
                let _ = network_from_json(id, text);
            }
        };
        for m in fuzz::truncations_and_substitutions(SET.as_bytes(), b"\0\"") {
            check(&m);
        }
        fuzz::run("records", 0x5eed_000c, 2000, |rng, _| {
            check(&fuzz::mutate(rng, SET.as_bytes(), DICT));
        });
    }

    #[test]
    fn router_json() {
        let r = router_from_json(
            "r1",
            br#"{"netns":"qrouter-r1","ha_state":"master","distributed":true}"#,
        )
        .expect("valid");
        assert_eq!(r.ha_state, Some(HaState::Primary));
        assert!(r.distributed);
        let r = router_from_json("r1", b"").expect("empty body is a plain router");
        assert_eq!(r.netns(), "qrouter-r1");
        let r = router_from_json("r1", br#"{"ha_state":null}"#).expect("null ha_state");
        assert_eq!(r.ha_state, None);
        let e = router_from_json("r1", br#"{"ha_state":"sideways"}"#).expect_err("bad state");
        assert!(e.to_string().contains("bad JSON"), "{e}");
        let e = router_from_json("r1", br#"{"id":"r2"}"#).expect_err("id mismatch");
        assert!(e.to_string().contains("does not match"), "{e}");
        assert!(router_from_json("r1", br#"{"distributed":"yes"}"#).is_err());
        assert!(router_from_json("r1", b"{").is_err());
        assert!(router_from_json("r1", br#"{"netns":"../../etc"}"#).is_err());
    }

    #[test]
    fn network_json() {
        let n = network_from_json(
            "n1",
            br#"{"interface":"tap1","subnets":[{"id":"s1","cidr":"10.0.0.0/24","gateway_ip":"10.0.0.1","enable_dhcp":true,"ip_version":4}],
                 "ports":[{"id":"p1","device_owner":"network:dhcp","device_id":"d","fixed_ips":[{"subnet_id":"s1","ip_address":"10.0.0.2"}],"mac_address":"fa:16:3e:00:00:01"}]}"#,
        )
        .expect("valid");
        assert_eq!(n.netns(), "qdhcp-n1");
        assert_eq!(n.subnets[0].gateway_ip, "10.0.0.1".parse().ok());
        let e = network_from_json(
            "n1",
            br#"{"subnets":[{"id":"s","cidr":"10.0.0.0/24","ip_version":6}]}"#,
        )
        .expect_err("version mismatch");
        assert!(e.to_string().contains("ip_version"), "{e}");
        assert!(network_from_json(
            "n1",
            br#"{"subnets":[{"id":"s","cidr":"10.0.0.0/33","ip_version":4}]}"#
        )
        .is_err());
        assert!(network_from_json("n1", br#"{"interface":"a/b"}"#).is_err());
        assert!(network_from_json(
            "n1",
            br#"{"ports":[{"fixed_ips":[{"subnet_id":"s","ip_address":"x"}]}]}"#
        )
        .is_err());
    }

    #[test]
    fn precedence_api_over_file_over_auto() {
        let mut rec = Records::default();
        rec.auto_routers.insert("a".into());
        rec.auto_routers.insert("b".into());
        rec.file.routers.push(Router {
            id: "b".into(),
            netns: Some("x".into()),
            ha_state: None,
            distributed: false,
        });
        rec.api_routers.insert(
            "b".into(),
            Router {
                id: "b".into(),
                netns: Some("y".into()),
                ha_state: None,
                distributed: false,
            },
        );
        let r = rec.routers();
        assert_eq!(r.len(), 2);
        assert_eq!(r["b"].netns(), "y");
        assert_eq!(r["a"].netns(), "qrouter-a");
    }

    #[test]
    fn record_set_round_trip() {
        let dir = std::env::temp_dir().join(format!("spawner-rec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let p = dir.join("records.json");
        let set = RecordSet {
            routers: vec![Router {
                id: "r".into(),
                netns: None,
                ha_state: Some(HaState::Backup),
                distributed: false,
            }],
            networks: vec![],
        };
        crate::persist::save(p.parent().expect("dir"), &set).expect("save");
        assert_eq!(RecordSet::load(&p).expect("load"), set);
        std::fs::write(&p, br#"{"routers":[{"id":"../x"}]}"#).expect("write");
        assert!(RecordSet::load(&p).is_err());
        std::fs::write(&p, br#"{"router":[]}"#).expect("write");
        assert!(RecordSet::load(&p).is_err());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
