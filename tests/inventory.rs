//! The agent's inventory (Neutron field names; format: crates/agent/README.md, "Inventory file") and the spawner's
//! network records for a test world, built together from the same ids.
use serde_json::{json, Value};

use crate::world::Vm;
use crate::Ids;

/// A network with one IPv4 subnet.
pub(crate) struct Net {
    pub(crate) id: String,
    pub(crate) subnet: String,
    pub(crate) cidr: String,
    pub(crate) gateway: String,
}

/// The agent's inventory (crates/agent's embedded backend, Neutron field names) and the
/// spawner's network records, built together.
#[derive(Default)]
pub(crate) struct Inventory {
    networks: Vec<Value>,
    ports: Vec<Value>,
    instances: Vec<Value>,
}

impl Inventory {
    pub(crate) fn network(&mut self, n: &Net, project: &str) {
        self.networks.push(json!({
            "id": n.id, "name": format!("net-{}", &n.id[..8]), "project_id": project,
            "subnets": [{"id": n.subnet, "cidr": n.cidr, "gateway_ip": n.gateway,
                         "enable_dhcp": true, "ip_version": 4}],
        }));
    }

    /// Add an IPv6 subnet (DHCP enabled, no gateway) to network `net`.
    pub(crate) fn add_v6_subnet(&mut self, net: &str, id: &str, cidr: &str) {
        let n = self
            .networks
            .iter_mut()
            .find(|x| x["id"] == net)
            .expect("network is in the inventory");
        if let Some(subnets) = n["subnets"].as_array_mut() {
            subnets.push(json!({"id": id, "cidr": cidr, "gateway_ip": null,
                                "enable_dhcp": true, "ip_version": 6}));
        }
    }

    /// Add a port; returns its id.
    pub(crate) fn port(
        &mut self,
        ids: &Ids,
        n: &Net,
        device: &str,
        owner: &str,
        ip: &str,
        project: &str,
    ) -> String {
        let id = ids.next();
        self.ports.push(json!({
            "id": id, "network_id": n.id, "device_id": device, "device_owner": owner,
            "mac_address": format!("fa:16:3e:00:{:02x}:{:02x}", self.ports.len() / 256, self.ports.len() % 256),
            "project_id": project,
            "fixed_ips": [{"subnet_id": n.subnet, "ip_address": ip}],
        }));
        id
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn vm(
        &mut self,
        ids: &Ids,
        name: &'static str,
        mode: &'static str,
        prefix: &str,
        n: &Net,
        ip: &str,
        project: &str,
    ) -> Vm {
        let instance = ids.next();
        self.port(ids, n, &instance, "compute:nova", ip, project);
        let user_data = format!("#cloud-config\nhostname: {name}\n# e2e {instance}\n");
        self.instances.push(json!({
            "uuid": instance, "name": name, "hostname": name, "project_id": project,
            "availability_zone": "nova", "launch_index": 0, "flavor": "m1.tiny",
            "public_keys": {"e2e": format!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE2eTestKeyNotReal {name}@e2e")},
            "user_data": user_data, "meta": {"mode": mode},
        }));
        let mac = self.ports.last().map_or(String::new(), |p| {
            p["mac_address"].as_str().unwrap_or_default().to_owned()
        });
        Vm {
            mac,
            name,
            mode,
            ns: format!("{prefix}-{name}"),
            ip: ip.to_owned(),
            instance,
            project: project.to_owned(),
            user_data,
        }
    }

    /// The spawner's record for network `n` (what a DHCP agent knows about it).
    pub(crate) fn record(&self, n: &Net, tap: &str) -> Value {
        let ports: Vec<Value> = self
            .ports
            .iter()
            .filter(|p| p["network_id"] == n.id.as_str())
            .map(|p| {
                json!({"id": p["id"], "device_owner": p["device_owner"], "device_id": p["device_id"],
                       "fixed_ips": p["fixed_ips"]})
            })
            .collect();
        let net = self
            .networks
            .iter()
            .find(|x| x["id"] == n.id.as_str())
            .expect("network is in the inventory");
        json!({"id": n.id, "netns": format!("qdhcp-{}", n.id), "interface": tap,
               "subnets": net["subnets"], "ports": ports})
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({"networks": self.networks, "ports": self.ports, "instances": self.instances})
    }
}
