//! Test topologies for the three modes (router, isolated network, metadata network; the
//! spawner README's "Modes"), built with real namespaces and served by the real agent and
//! spawner:
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

use crate::client::{self, Reply};
use crate::inventory::{Inventory, Net};
use crate::nova::Nova;
use crate::procs::{Agent, AgentConfig, Spawner, SpawnerConfig};
use crate::topo::{self, End};
use crate::TempDir;
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

impl World {
    /// Build the world for `modes` with subnets 10.250.`base`.0/24 (and base+1, base+2),
    /// wait until every vm gets an answer.
    pub fn build(test: &str, base: u8, modes: Modes, upstream: Upstream) -> World {
        World::build_with(test, base, modes, upstream, "")
    }

    /// [`World::build`] with `agent_ini` appended to the agent's `[DEFAULT]` section.
    pub fn build_with(
        test: &str,
        base: u8,
        modes: Modes,
        upstream: Upstream,
        agent_ini: &str,
    ) -> World {
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
            Nova::with_instances(secret, known)
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
                extra_ini: agent_ini.to_owned(),
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
                            self.spawner.status(),
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
