//! Test topologies for the three modes of DESIGN.md, built with real namespaces and served by the
//! real agent and spawner:
//!
//! ```text
//! router:        vm1 (10.250.B.10) --veth-- qrouter-R (10.250.B.1; the spawner puts 169.254.169.254 on lo)
//! isolated net:  vm2 (10.250.B+1.10) --veth-- qdhcp-N (tap 10.250.B+1.2 + 169.254.169.254),
//!                vm2's route to 169.254.169.254/32 via the DHCP port as `host-routes` says (option 121)
//! metadata net:  vm3 (10.250.B+2.10) --veth-- qrouter-R2 (forwards; not announced) --veth--
//!                qdhcp-M (169.254.0.0/16, tap 169.254.0.2 + 169.254.169.254), proxy carries R2's id
//! ```
//!
//! The inventory the agent reads and the records the spawner gets are derived from the same ids.
use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::client::{self, Reply};
use crate::nova::Nova;
use crate::procs::{Agent, AgentConfig, Spawner, SpawnerConfig, TempDir};
use crate::topo::{self, End};
use crate::{unique_prefix, Ids, TestNs};

/// How long a freshly announced proxy may take to answer.
pub const ANSWER: Duration = Duration::from_secs(20);

/// One deferred topology step: creates its namespaces, announces them, returns the proxy's id.
type Step = Box<dyn FnOnce(&mut Spawner, &mut Vec<TestNs>) -> String>;

/// Which modes to build.
#[derive(Clone, Copy)]
pub struct Modes {
    pub router: bool,
    pub isolated: bool,
    pub metadata_network: bool,
    /// Give the isolated network an IPv6 subnet and the spawner `ipv6 = true`: its proxy also
    /// binds `[fe80::a9fe:a9fe]:80` on the tap, vm2's MAC is its port's (EUI-64 lookup).
    pub ipv6: bool,
}

impl Modes {
    pub const ALL: Modes = Modes {
        router: true,
        isolated: true,
        metadata_network: true,
        ipv6: false,
    };
    pub const ROUTER: Modes = Modes {
        router: true,
        isolated: false,
        metadata_network: false,
        ipv6: false,
    };
}

/// Where the agent sends requests.
pub enum Upstream {
    /// The agent's built-in responder.
    Builtin,
    /// The Nova stand-in; the agent signs with `agent_secret`, Nova checks with `nova_secret`.
    Nova {
        agent_secret: String,
        nova_secret: String,
    },
    /// The real neutron-metadata-agent (run by `python`, a neutron venv's) in place of ours,
    /// forwarding to the Nova stand-in with `secret`.
    NeutronAgent {
        python: std::path::PathBuf,
        secret: String,
    },
}

/// A VM of the world.
#[derive(Debug, Clone)]
pub struct Vm {
    pub name: &'static str,
    pub mode: &'static str,
    pub ns: String,
    pub ip: String,
    pub instance: String,
    pub project: String,
    pub user_data: String,
    /// The MAC of the vm's port in the inventory (set on eth0 only where the mode needs it).
    pub mac: String,
}

/// Everything one test runs; fields drop in order: processes first (the spawner guard kills its
/// proxies), then the namespaces, then the files.
pub struct World {
    pub spawner: Spawner,
    pub agent: Agent,
    pub nova: Option<Nova>,
    pub vms: Vec<Vm>,
    /// Resource id of the proxy serving each vm (router id, network id, or R2's id).
    pub proxy_ids: Vec<String>,
    namespaces: Vec<TestNs>,
    pub dir: TempDir,
}

struct Net {
    id: String,
    subnet: String,
    cidr: String,
    gateway: String,
}

impl World {
    /// Build the world for `modes` with subnets 10.250.`base`.0/24 (and base+1, base+2),
    /// wait until every vm gets an answer.
    pub fn build(test: &str, base: u8, modes: Modes, upstream: Upstream) -> World {
        let prefix = unique_prefix();
        let ids = Ids::new(u16::from(base));
        let dir = TempDir::new(&format!("{prefix}-{test}"));
        let project = ids.next();
        let mut inv = Inventory::default();
        let mut vms = Vec::new();
        let mut plan: Vec<Step> = Vec::new();

        let net = |cidr3: String| Net {
            id: ids.next(),
            subnet: ids.next(),
            cidr: format!("{cidr3}.0/24"),
            gateway: format!("{cidr3}.1"),
        };

        if modes.router {
            let router = ids.next();
            let a = net(format!("10.250.{base}"));
            inv.network(&a, &project);
            inv.port(
                &ids,
                &a,
                &router,
                "network:router_interface",
                &a.gateway,
                &project,
            );
            let vm = inv.vm(
                &ids,
                "vm1",
                "router",
                &prefix,
                &a,
                &format!("10.250.{base}.10"),
                &project,
            );
            let (vm_ns, vm_ip, gw) = (vm.ns.clone(), vm.ip.clone(), a.gateway.clone());
            vms.push(vm);
            plan.push(Box::new(move |spawner, nss| {
                let qr = format!("qrouter-{router}");
                nss.push(topo::netns(&qr));
                nss.push(topo::netns(&vm_ns));
                let qr_if = format!("qr-{}", &router[..8]);
                topo::veth(
                    End {
                        ns: &qr,
                        ifname: &qr_if,
                        cidr: Some(&format!("{gw}/24")),
                        mac: None,
                    },
                    End {
                        ns: &vm_ns,
                        ifname: "eth0",
                        cidr: Some(&format!("{vm_ip}/24")),
                        mac: None,
                    },
                );
                topo::route(&vm_ns, "default", &gw);
                spawner.router_add(&router, &qr);
                router
            }));
        }

        if modes.isolated {
            let n = net(format!("10.250.{}", base + 1));
            inv.network(&n, &project);
            if modes.ipv6 {
                // Only data: no traffic uses this prefix, the VM talks link-local.
                inv.add_v6_subnet(&n.id, &ids.next(), &format!("fd00:250:{base}::/64"));
            }
            let dhcp_ip = format!("10.250.{}.2", base + 1);
            let dhcp_port = inv.port(
                &ids,
                &n,
                &format!("dhcp-{}", n.id),
                "network:dhcp",
                &dhcp_ip,
                &project,
            );
            let vm = inv.vm(
                &ids,
                "vm2",
                "isolated network",
                &prefix,
                &n,
                &format!("10.250.{}.10", base + 1),
                &project,
            );
            let (vm_ns, vm_ip) = (vm.ns.clone(), vm.ip.clone());
            let vm_mac = modes.ipv6.then(|| vm.mac.clone());
            vms.push(vm);
            let tap = format!("tap{}", &dhcp_port[..11]);
            let record = inv.record(&n, &tap);
            plan.push(Box::new(move |spawner, nss| {
                let qdhcp = format!("qdhcp-{}", n.id);
                nss.push(topo::netns(&qdhcp));
                nss.push(topo::netns(&vm_ns));
                topo::veth(
                    End {
                        ns: &qdhcp,
                        ifname: &tap,
                        cidr: Some(&format!("{dhcp_ip}/24")),
                        mac: None,
                    },
                    End {
                        ns: &vm_ns,
                        ifname: "eth0",
                        cidr: Some(&format!("{vm_ip}/24")),
                        mac: vm_mac.as_deref(),
                    },
                );
                spawner.network_put(&record, &n.id);
                let hop = spawner.metadata_next_hop(&n.id);
                assert_eq!(
                    hop, dhcp_ip,
                    "option 121 route for an isolated subnet goes via the DHCP port"
                );
                topo::route(&vm_ns, "169.254.169.254/32", &hop);
                n.id
            }));
        }

        if modes.metadata_network {
            let router2 = ids.next();
            let m = Net {
                id: ids.next(),
                subnet: ids.next(),
                cidr: "169.254.0.0/16".into(),
                gateway: "169.254.0.1".into(),
            };
            let c = net(format!("10.250.{}", base + 2));
            inv.network(&m, &project);
            inv.network(&c, &project);
            inv.port(
                &ids,
                &m,
                &router2,
                "network:router_interface",
                &m.gateway,
                &project,
            );
            let dhcp_port = inv.port(
                &ids,
                &m,
                &format!("dhcp-{}", m.id),
                "network:dhcp",
                "169.254.0.2",
                &project,
            );
            inv.port(
                &ids,
                &c,
                &router2,
                "network:router_interface",
                &c.gateway,
                &project,
            );
            let vm = inv.vm(
                &ids,
                "vm3",
                "metadata network",
                &prefix,
                &c,
                &format!("10.250.{}.10", base + 2),
                &project,
            );
            let (vm_ns, vm_ip, gw) = (vm.ns.clone(), vm.ip.clone(), c.gateway.clone());
            vms.push(vm);
            let tap = format!("tap{}", &dhcp_port[..11]);
            let record = inv.record(&m, &tap);
            plan.push(Box::new(move |spawner, nss| {
                let qr = format!("qrouter-{router2}");
                let qdhcp = format!("qdhcp-{}", m.id);
                nss.push(topo::netns(&qr));
                nss.push(topo::netns(&qdhcp));
                nss.push(topo::netns(&vm_ns));
                topo::forward(&qr);
                topo::veth(
                    End {
                        ns: &qr,
                        ifname: "qr-c",
                        cidr: Some(&format!("{gw}/24")),
                        mac: None,
                    },
                    End {
                        ns: &vm_ns,
                        ifname: "eth0",
                        cidr: Some(&format!("{vm_ip}/24")),
                        mac: None,
                    },
                );
                topo::veth(
                    End {
                        ns: &qr,
                        ifname: "qr-m",
                        cidr: Some("169.254.0.1/16"),
                        mac: None,
                    },
                    End {
                        ns: &qdhcp,
                        ifname: &tap,
                        cidr: Some("169.254.0.2/16"),
                        mac: None,
                    },
                );
                topo::route(&vm_ns, "default", &gw);
                topo::route(&qdhcp, "default", "169.254.0.1");
                spawner.network_put(&record, &router2);
                router2
            }));
        }

        let inventory = dir.path().join("inventory.json");
        std::fs::write(&inventory, inv.to_json().to_string()).expect("write inventory");

        let start_nova = |secret: &str| {
            let known: HashMap<String, String> = vms
                .iter()
                .map(|v| (v.instance.clone(), v.project.clone()))
                .collect();
            Nova::start(secret, known)
        };
        let (nova, agent_nova, neutron_python, keepalive) = match upstream {
            Upstream::Builtin => (None, None, None, "on"),
            Upstream::Nova {
                agent_secret,
                nova_secret,
            } => {
                let nova = start_nova(&nova_secret);
                let port = nova.port();
                (Some(nova), Some((port, agent_secret)), None, "on")
            }
            // Neutron's agent closes after every answer and never sends the keep-alive
            // signal: `auto` is what an operator would configure for it.
            Upstream::NeutronAgent { python, secret } => {
                let nova = start_nova(&secret);
                let port = nova.port();
                (Some(nova), Some((port, secret)), Some(python), "auto")
            }
        };
        let agent = Agent::start(
            dir.path(),
            &AgentConfig {
                inventory,
                nova: agent_nova,
                neutron_python,
            },
        );
        let mut spawner = Spawner::start(
            dir.path(),
            &SpawnerConfig {
                agent_socket: agent.socket(),
                agent_keepalive: keepalive,
                ipv6: modes.ipv6,
                enable_isolated_metadata: true,
                enable_metadata_network: true,
            },
        );
        let mut namespaces = Vec::new();
        let mut proxy_ids = Vec::new();
        for step in plan {
            proxy_ids.push(step(&mut spawner, &mut namespaces));
        }
        World {
            spawner,
            agent,
            nova,
            vms,
            proxy_ids,
            namespaces,
            dir,
        }
    }

    /// The vm called `name`.
    pub fn vm(&self, name: &str) -> &Vm {
        self.vms
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("no vm {name}"))
    }

    /// Wait until every vm gets some HTTP answer for `path` (the proxy is up), return the replies.
    pub fn wait_answering(&self, path: &str) -> Vec<Reply> {
        self.vms
            .iter()
            .map(|vm| {
                let start = std::time::Instant::now();
                loop {
                    let r = client::curl_with(&vm.ns, &client::url(path), &[], 2);
                    if r.status != 0 || start.elapsed() > ANSWER {
                        assert_ne!(
                            r.status,
                            0,
                            "{} ({}) got no answer: {}\nspawner status:\n{}\nspawner log:\n{}",
                            vm.name,
                            vm.mode,
                            r.error,
                            self.spawner.cli(&["status"]),
                            self.spawner.log()
                        );
                        return r;
                    }
                }
            })
            .collect()
    }

    /// Names of the namespaces the world created.
    pub fn namespace_names(&self) -> Vec<String> {
        self.namespaces
            .iter()
            .map(|n| n.name().to_owned())
            .collect()
    }
}

/// The agent's inventory (crates/agent's embedded backend, Neutron field names) and the
/// spawner's network records, built together.
#[derive(Default)]
struct Inventory {
    networks: Vec<Value>,
    ports: Vec<Value>,
    instances: Vec<Value>,
}

impl Inventory {
    fn network(&mut self, n: &Net, project: &str) {
        self.networks.push(json!({
            "id": n.id, "name": format!("net-{}", &n.id[..8]), "project_id": project,
            "subnets": [{"id": n.subnet, "cidr": n.cidr, "gateway_ip": n.gateway,
                         "enable_dhcp": true, "ip_version": 4}],
        }));
    }

    /// Add an IPv6 subnet (DHCP enabled, no gateway) to network `net`.
    fn add_v6_subnet(&mut self, net: &str, id: &str, cidr: &str) {
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
    fn port(
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
    fn vm(
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
    fn record(&self, n: &Net, tap: &str) -> Value {
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

    fn to_json(&self) -> Value {
        json!({"networks": self.networks, "ports": self.ports, "instances": self.instances})
    }
}
