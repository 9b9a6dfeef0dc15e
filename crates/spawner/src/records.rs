//! Router and network records (Neutron's field names), their validation, and the store
//! that holds them: records made through the control API (persisted in
//! `<state dir>/records.json` so a restarted supervisor adopts instead of killing), records
//! from the static records file, and routers auto-enabled from `qrouter-*` namespaces.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Neutron's `ROUTER_INTERFACE_OWNERS` (neutron-lib constants).
pub const ROUTER_INTERFACE_OWNERS: [&str; 3] = [
    "network:router_interface",
    "network:ha_router_replicated_interface",
    "network:router_interface_distributed",
];
/// Owner of the DHCP agent's port.
pub const DEVICE_OWNER_DHCP: &str = "network:dhcp";
/// Owner of an OVN metadata port (`network:distributed`, device id `ovnmeta-<net>`).
pub const DEVICE_OWNER_DISTRIBUTED: &str = "network:distributed";

/// Check that an id can be used as a file name and a namespace suffix: 1–64 characters of
/// ASCII letters, digits, `-` and `_`, starting with a letter or digit (UUIDs pass).
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::BadRecord(format!(
            "invalid id {id:?}: expected 1-64 characters of letters, digits, '-' or '_' (a UUID)"
        )))
    }
}

/// A namespace name as `ip netns` accepts it (a single path component, the rules of
/// [`ns_netns::validate_name`]), and without whitespace.
pub fn validate_netns(name: &str) -> Result<()> {
    let ok = ns_netns::validate_name(name).is_ok() && !name.chars().any(char::is_whitespace);
    if ok {
        Ok(())
    } else {
        Err(Error::BadRecord(format!("invalid netns name {name:?}")))
    }
}

/// An interface name as the kernel accepts it (at most 15 bytes, no '/', ':' or spaces).
pub fn validate_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && !name.contains(['/', ':', '\0'])
        && !name.chars().any(char::is_whitespace);
    if ok {
        Ok(())
    } else {
        Err(Error::BadRecord(format!("invalid interface name {name:?}")))
    }
}

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
            .unwrap_or_else(|| format!("qrouter-{}", self.id))
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

/// A subnet of a network (the fields of Neutron's subnet dict that matter here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    pub id: String,
    pub cidr: String,
    #[serde(default)]
    pub gateway_ip: Option<IpAddr>,
    #[serde(default = "default_true")]
    pub enable_dhcp: bool,
    pub ip_version: u8,
    /// User-defined host routes (pushed before the metadata route, as Neutron does).
    #[serde(default)]
    pub host_routes: Vec<HostRoute>,
    #[serde(default)]
    pub segment_id: Option<String>,
}

fn default_true() -> bool {
    true
}

/// A `destination`/`nexthop` pair, as in Neutron's subnet `host_routes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRoute {
    pub destination: String,
    pub nexthop: String,
}

/// A fixed IP of a port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixedIp {
    pub subnet_id: String,
    pub ip_address: IpAddr,
}

/// A port on a network (the fields of Neutron's port dict that matter here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub device_owner: String,
    #[serde(default)]
    pub device_id: String,
    #[serde(default)]
    pub fixed_ips: Vec<FixedIp>,
}

/// A network served by a DHCP namespace here: the dhcp agent's view.
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
            .unwrap_or_else(|| format!("qdhcp-{}", self.id))
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
            let (addr, _) = parse_cidr(&s.cidr).ok_or_else(|| {
                Error::BadRecord(format!("subnet {}: invalid cidr {:?}", s.id, s.cidr))
            })?;
            let v = if addr.is_ipv4() { 4 } else { 6 };
            if s.ip_version != v {
                return Err(Error::BadRecord(format!(
                    "subnet {}: ip_version {} does not match cidr {}",
                    s.id, s.ip_version, s.cidr
                )));
            }
        }
        Ok(())
    }
}

/// Parse `a.b.c.d/n` or `x::/n` into (network address, prefix length).
pub fn parse_cidr(cidr: &str) -> Option<(IpAddr, u8)> {
    let (a, p) = cidr.trim().split_once('/')?;
    let addr: IpAddr = a.parse().ok()?;
    let prefix: u8 = p.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some((addr, prefix))
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
        let set: RecordSet = serde_json::from_slice(&text)
            .map_err(|e| Error::BadRecord(format!("{}: {e}", path.display())))?;
        for r in &set.routers {
            r.validate()
                .map_err(|e| Error::BadRecord(format!("{}: router: {e}", path.display())))?;
        }
        for n in &set.networks {
            n.validate()
                .map_err(|e| Error::BadRecord(format!("{}: network: {e}", path.display())))?;
        }
        Ok(set)
    }

    /// Write atomically (temporary file + rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(self).map_err(|e| Error::Invalid(e.to_string()))?;
        let r = std::fs::write(&tmp, text)
            .map_err(|e| Error::io("write", &tmp, e))
            .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io("rename", path, e)));
        if r.is_err() {
            // A full or read-only state dir: keep the old file, leave no partial temp file.
            let _ = std::fs::remove_file(&tmp);
        }
        r
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
    fn failed_save_leaves_no_temp_file() {
        let dir = std::env::temp_dir().join(format!("spawner-recsave-{}", std::process::id()));
        let path = dir.join("records.json");
        // The target's name is taken by a non-empty directory: the rename fails.
        std::fs::create_dir_all(path.join("x")).expect("mkdir");
        assert!(RecordSet::default().save(&path).is_err());
        assert!(!path.with_extension("json.tmp").exists(), "temp file left");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ids_and_names() {
        assert!(validate_id("6f1c4b1e-2a0b-4c55-9a8e-1f2d3c4b5a69").is_ok());
        for bad in ["", "../x", "a/b", "-x", "a b", &"a".repeat(65)] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
        assert!(validate_netns("qrouter-1").is_ok());
        assert!(validate_netns("a/b").is_err());
        assert!(validate_netns("..").is_err());
        assert!(validate_ifname("tap1234567890ab").is_ok());
        assert!(validate_ifname("tap1234567890abc").is_err());
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
        set.save(&p).expect("save");
        assert_eq!(RecordSet::load(&p).expect("load"), set);
        std::fs::write(&p, br#"{"routers":[{"id":"../x"}]}"#).expect("write");
        assert!(RecordSet::load(&p).is_err());
        std::fs::write(&p, br#"{"router":[]}"#).expect("write");
        assert!(RecordSet::load(&p).is_err());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
