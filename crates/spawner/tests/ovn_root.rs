//! Root tests of the OVN source end to end: real `ovsdb-server`s for the Southbound and the
//! local OVS database (no ovs-vswitchd: the OVS rows are checked as rows), real namespaces, the
//! real proxy.
//! - A VM port bound here + a metadata port → `ovnmeta-<net>` with the veth pair, MAC, MTU,
//!   addresses, the OVS Port/Interface rows and a proxy; a VM namespace wired to the outer veth
//!   end (moved into it: it stands in for br-int) fetches metadata through the proxy with
//!   `X-OVN-Network-ID` reaching the agent stand-in; CIDR changes move the addresses; an IPv6
//!   VIF adds `fe80::a9fe:a9fe/128`, the metadata MAC's EUI-64 link-local address and the v6
//!   bind, and its removal takes them away; unbinding the last VIF removes everything.
//! - The same namespace in the shared model (`proxy_model = shared`): served by the shared
//!   server with `X-OVN-Network-ID`, removed from it when the last VIF goes.
//! - The daemon binary (`source = ovn`): a migration target (`additional_chassis`) gets the
//!   namespace; at start a stale agent-built `ovnmeta-` namespace is removed and a foreign one
//!   kept; kill -9 and restart adopts the proxy and rebuilds nothing; a Southbound server
//!   restart tears nothing down; the migration ending elsewhere removes it all.
//! - A live Neutron OVN metadata agent (sb-cfg within 1 of nb_cfg, no marker) is refused.
//! - A `datapath_type=netdev` bridge row brings the CHECKSUM rule into the namespace.
//! - An `ssl:` Southbound with Neutron's `[ovn] ovn_sb_private_key`/`_certificate`/`_ca_cert`.
//! - A three-member Southbound cluster: the leader killed → nothing torn down, changes through
//!   the new leader followed.
//! - The Southbound database down at start: the daemon waits, `status`/`check`/`STATUS=` say
//!   what for, and READY follows once it answers.
//!
//! Everything is made under a per-run prefix and removed on drop; the tests run one at a time.

mod common;
mod root_common;

use std::net::IpAddr;
use std::time::Duration;

use common::*;
use ns_metadata_spawner::config::ProxyModel;
use ns_metadata_spawner::netns_platform::Namespaces;
use ns_metadata_spawner::ovn_decide::veth_names;
use ns_metadata_spawner::ovn_source::{OvnOptions, OvnSource};
use ns_metadata_spawner::records::Records;
use ns_metadata_spawner::supervisor::{State, Supervisor};
use ns_netns::Netlink;
use ns_testkit::netns::{unique_prefix, TestNs};
use ns_testkit::ovsdb::{
    create_db, have, ovs_run, pssl, sb_and_ovs_servers, vsctl, Cluster, Server, OVN_SBCTL,
    OVSDB_CLIENT, OVSDB_SERVER, OVSDB_TOOL, OVS_VSCTL, SB_SCHEMA, VS_SCHEMA,
};
use ns_testkit::{eventually_async, eventually_await, require_root, TempDir};
use root_common::*;

const T: Duration = Duration::from_secs(20);

/// One at a time: an OVN source removes, at start, every `ovnmeta-` namespace it does not
/// want (Neutron's sync), so it would remove the other test's.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Removes what the spawner builds for `net` if the test stops half-way.
struct Leftovers(String);

impl Drop for Leftovers {
    fn drop(&mut self) {
        let _ = ns_netns::delete(&format!("ovnmeta-{}", self.0));
        let (outer, _) = veth_names(&self.0);
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &outer])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

const BRIDGE: &str = "br-test";
/// The EUI-64 link-local address of the fixture's metadata port MAC `fa:16:3e:aa:bb:01`.
const LLA: &str = "fe80::f816:3eff:feaa:bb01";

/// Writes to the Southbound database: one server, or a cluster (through its leader).
trait Sbctl {
    fn sbctl(&self, args: &[&str]) -> String;
}

impl Sbctl for Server {
    fn sbctl(&self, args: &[&str]) -> String {
        Server::sbctl(self, args)
    }
}

impl Sbctl for Cluster {
    fn sbctl(&self, args: &[&str]) -> String {
        Cluster::sbctl(self, args)
    }
}

/// The databases of one test: our chassis and integration bridge in the local OVS database,
/// our `Chassis` row, the network's datapath and its metadata port in the Southbound database.
struct Fixture {
    prefix: String,
    net: String,
    outer: String,
    inner: String,
    chassis_row: String,
    datapath: String,
    _leftovers: Leftovers,
}

impl Fixture {
    fn new(db_dir: &TempDir, sb: &impl Sbctl, ovs: &Server) -> Fixture {
        let prefix = unique_prefix();
        let net = format!("{prefix}net");
        let (outer, inner) = veth_names(&net);
        let chassis = format!("{prefix}-chassis");
        let ovs_db = ovs.unix();
        vsctl(db_dir.path(), &ovs_db, &["add-br", BRIDGE]);
        vsctl(
            db_dir.path(),
            &ovs_db,
            &[
                "set",
                "Open_vSwitch",
                ".",
                &format!("external_ids:system-id={chassis}"),
                &format!("external_ids:ovn-bridge={BRIDGE}"),
            ],
        );
        sb.sbctl(&["chassis-add", &chassis, "geneve", "127.0.0.1"]);
        let chassis_row = find_uuid(sb, "Chassis", &chassis);
        let datapath = sb.sbctl(&[
            "create",
            "Datapath_Binding",
            "tunnel_key=7",
            &format!("external_ids:name=neutron-{net}"),
        ]);
        sb.sbctl(&[
            "create",
            "Port_Binding",
            "logical_port=md-port",
            &format!("datapath={datapath}"),
            "tunnel_key=1",
            "type=localport",
            "mac=\"fa:16:3e:aa:bb:01 10.250.7.2 10.250.8.2\"",
            "external_ids:\"neutron:device_owner\"=\"network:distributed\"",
            "external_ids:\"neutron:cidrs\"=\"10.250.7.2/24 10.250.8.2/24\"",
            "external_ids:\"neutron:mtu\"=1400",
        ]);
        Fixture {
            prefix,
            _leftovers: Leftovers(net.clone()),
            net,
            outer,
            inner,
            chassis_row,
            datapath,
        }
    }

    /// The usual VM port, bound here.
    fn bind_vm_here(&self, sb: &impl Sbctl) {
        let mac = "fa:16:3e:aa:bb:10 10.250.7.10";
        self.bind_vm(sb, "vm-port", 2, mac, Some(&self.chassis_row), None);
    }

    /// A VM port on the network, bound to `chassis` and/or with `additional` as its
    /// additional chassis (live migration).
    fn bind_vm(
        &self,
        sb: &impl Sbctl,
        name: &str,
        key: u32,
        mac: &str,
        chassis: Option<&str>,
        additional: Option<&str>,
    ) {
        let mut args = vec![
            "create".to_owned(),
            "Port_Binding".to_owned(),
            format!("logical_port={name}"),
            format!("datapath={}", self.datapath),
            format!("tunnel_key={key}"),
            format!("mac=\"{mac}\""),
        ];
        if let Some(c) = chassis {
            args.push(format!("chassis={c}"));
        }
        if let Some(c) = additional {
            args.push(format!("additional_chassis={c}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sb.sbctl(&args);
    }
}

/// A supervisor on real namespaces (state under `dir`) and the OVN source's start on the two
/// servers, bounded by [`T`]: the source, or its error.
async fn start_source(
    dir: &TempDir,
    sb: &Server,
    ovs: &Server,
) -> (
    Supervisor<Namespaces>,
    Result<OvnSource, ns_metadata_spawner::Error>,
) {
    start_source_in(dir, sb, ovs, ProxyModel::PerNamespace).await
}

/// The same, in proxy model `model`.
async fn start_source_in(
    dir: &TempDir,
    sb: &Server,
    ovs: &Server,
    model: ProxyModel,
) -> (
    Supervisor<Namespaces>,
    Result<OvnSource, ns_metadata_spawner::Error>,
) {
    let mut cfg = real_config(dir.path());
    cfg.proxy_model = model;
    let sup = Supervisor::new(Namespaces, cfg, Records::default());
    let opts = OvnOptions {
        sb_connection: sb.unix(),
        sb_tls: None,
        probe_interval: None,
        ovsdb_connection: ovs.unix(),
    };
    let r = tokio::time::timeout(T, OvnSource::start(sup.clone(), &opts))
        .await
        .expect("the OVN source answers in time");
    (sup, r)
}

/// The UUID of the row of `table` named `name` (empty if none).
fn find_uuid(sb: &impl Sbctl, table: &str, name: &str) -> String {
    sb.sbctl(&[
        "--bare",
        "--columns=_uuid",
        "find",
        table,
        &format!("name={name}"),
    ])
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

async fn inner_addresses(net: &str, ifname: &str) -> Vec<(IpAddr, u8)> {
    let ns = ns_netns::Netns::open(&format!("ovnmeta-{net}")).expect("ovnmeta namespace");
    let nl = Netlink::open(&ns).await.expect("netlink");
    nl.addresses(ifname).await.expect("addresses")
}

/// Wait until `ifname` in `ovnmeta-<net>` has (`present`) or lacks the address.
async fn wait_address(net: &str, ifname: &str, (addr, prefix): (&str, u8), present: bool) {
    let what = format!(
        "{addr}/{prefix} {}",
        if present { "added" } else { "removed" }
    );
    let want = (ip(addr), prefix);
    eventually_await(&what, T, || async move {
        (inner_addresses(net, ifname).await.contains(&want) == present).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_bound_here_gets_an_ovnmeta_namespace_that_answers_and_unbinding_removes_it() {
    let test = "vm_bound_here_gets_an_ovnmeta_namespace_that_answers_and_unbinding_removes_it";
    if !require_root(test) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let Some((db_dir, sb, ovs)) = sb_and_ovs_servers(test, "ovn-spawn", |_| (None, vec![])) else {
        return;
    };
    let f = Fixture::new(&db_dir, &sb, &ovs);
    let (net, outer, inner, bridge, ovs_db) = (
        f.net.clone(),
        f.outer.clone(),
        f.inner.clone(),
        BRIDGE,
        ovs.unix(),
    );
    let p = f.prefix.clone();
    f.bind_vm_here(&sb);

    let dir = TempDir::new("rt-ovn").reaping();
    let agent = agent(dir.path());
    let (sup, source) = start_source(&dir, &sb, &ovs).await;
    let _source = source.expect("the OVN source starts");
    sup.adopt_and_start().await;
    let looper = sup.clone();
    tokio::spawn(async move { looper.run_loop().await });

    // The namespace, the veth pair, MAC, MTU, addresses, the proxy.
    let pid = running_pid(&sup, &net, T).await;
    let st = status_of(&sup, &net).expect("status");
    assert_eq!(st.netns, format!("ovnmeta-{net}"));
    let ns = ns_netns::Netns::open(&format!("ovnmeta-{net}")).expect("ovnmeta namespace");
    let nl = Netlink::open(&ns).await.expect("netlink");
    let (mac, mtu) = nl
        .link_mac_mtu(&inner)
        .await
        .expect("link")
        .expect("inner end in the namespace");
    assert_eq!(mac, Some([0xfa, 0x16, 0x3e, 0xaa, 0xbb, 0x01]));
    assert_eq!(mtu, 1400);
    let root = Netlink::current().await.expect("netlink");
    let (_, outer_mtu) = root
        .link_mac_mtu(&outer)
        .await
        .expect("link")
        .expect("outer end in the root namespace");
    assert_eq!(outer_mtu, 1400);
    let addrs = inner_addresses(&net, &inner).await;
    assert!(addrs.contains(&(ip("169.254.169.254"), 32)), "{addrs:?}");
    assert!(addrs.contains(&(ip("10.250.7.2"), 24)), "{addrs:?}");
    // Only subnets with local VIF IPv4 addresses (LP#1981113).
    assert!(!addrs.contains(&(ip("10.250.8.2"), 24)), "{addrs:?}");
    // The OVS rows: a Port in the bridge, its Interface bound to the metadata port.
    assert_eq!(
        vsctl(db_dir.path(), &ovs_db, &["list-ports", bridge]),
        outer
    );
    assert_eq!(
        vsctl(
            db_dir.path(),
            &ovs_db,
            &["get", "Interface", &outer, "external_ids:iface-id"]
        )
        .trim_matches('"'),
        "md-port"
    );

    let vm = vm_asks(&root, &outer, &p, &net, &agent).await;

    // A second subnet gets a local VIF address: the metadata port's address there follows.
    sb.sbctl(&[
        "set",
        "Port_Binding",
        "vm-port",
        "mac=\"fa:16:3e:aa:bb:10 10.250.7.10 10.250.8.10\"",
    ]);
    let (n, i) = (net.clone(), inner.clone());
    wait_address(&net, &inner, ("10.250.8.2", 24), true).await;
    sb.sbctl(&[
        "set",
        "Port_Binding",
        "md-port",
        "external_ids:\"neutron:cidrs\"=\"10.250.7.2/24\"",
    ]);
    wait_address(&net, &inner, ("10.250.8.2", 24), false).await;
    assert_eq!(
        status_of(&sup, &net).and_then(|s| s.pid),
        Some(pid),
        "proxy kept"
    );

    // An IPv6 address on the VM: fe80::a9fe:a9fe/128 and the v6 bind on the inner end.
    sb.sbctl(&[
        "set",
        "Port_Binding",
        "md-port",
        "external_ids:\"neutron:cidrs\"=\"10.250.7.2/24 fd00:250:7::2/64\"",
    ]);
    sb.sbctl(&[
        "set",
        "Port_Binding",
        "vm-port",
        "mac=\"fa:16:3e:aa:bb:10 10.250.7.10 fd00:250:7::10\"",
    ]);
    let v6_pid = eventually_async("the proxy restarted with the v6 bind", T, || {
        let s = status_of(&sup, &net)?;
        let pid = s.pid.filter(|p| *p != pid && s.state == State::Running)?;
        let argv = ns_metadata_spawner::pidfile::cmdline(pid)?;
        argv.iter()
            .any(|a| *a == format!("[fe80::a9fe:a9fe]:80%{inner}"))
            .then_some(pid)
    })
    .await;
    let addrs = inner_addresses(&net, &inner).await;
    assert!(addrs.contains(&(ip("fe80::a9fe:a9fe"), 128)), "{addrs:?}");
    // As Neutron: only subnets with a local IPv4 address get the metadata port's address.
    assert!(!addrs.contains(&(ip("fd00:250:7::2"), 64)), "{addrs:?}");
    // The metadata port MAC's EUI-64 link-local address, as Neutron's get_ipv6_lladdr.
    assert!(addrs.contains(&(ip(LLA), 64)), "{addrs:?}");
    assert!(get_in(vm.netns(), META).is_ok(), "IPv4 still answers");

    // The VM's IPv6 address goes: both link-local addresses and the v6 bind go with it.
    sb.sbctl(&[
        "set",
        "Port_Binding",
        "vm-port",
        "mac=\"fa:16:3e:aa:bb:10 10.250.7.10\"",
    ]);
    let pid = eventually_async("the proxy restarted without the v6 bind", T, || {
        let s = status_of(&sup, &net)?;
        let pid = s
            .pid
            .filter(|p| *p != v6_pid && s.state == State::Running)?;
        let argv = ns_metadata_spawner::pidfile::cmdline(pid)?;
        (!argv.iter().any(|a| a.contains("fe80::a9fe:a9fe"))).then_some(pid)
    })
    .await;
    eventually_await("no link-local address left", T, || {
        let (n, i) = (n.clone(), i.clone());
        async move {
            let v6: Vec<_> = inner_addresses(&n, &i)
                .await
                .into_iter()
                .filter(|(a, _)| a.is_ipv6())
                .collect();
            v6.is_empty().then_some(())
        }
    })
    .await;
    assert!(get_in(vm.netns(), META).is_ok(), "IPv4 still answers");

    // Unbind the last VIF: proxy, namespace, veth and OVS port all gone.
    sb.sbctl(&["clear", "Port_Binding", "vm-port", "chassis"]);
    eventually_async("the proxy gone", T, || {
        status_of(&sup, &net).is_none().then_some(())
    })
    .await;
    eventually_async("the namespace gone", T, || {
        (!std::path::Path::new(&format!("/run/netns/ovnmeta-{net}")).exists()).then_some(())
    })
    .await;
    eventually_async("the OVS port gone", T, || {
        vsctl(db_dir.path(), &ovs_db, &["list-ports", bridge])
            .is_empty()
            .then_some(())
    })
    .await;
    // The bridge's own interface stays; ours went with its Port.
    let ifaces = vsctl(
        db_dir.path(),
        &ovs_db,
        &["--bare", "--columns=name", "list", "Interface"],
    );
    assert!(!ifaces.contains(&outer), "{ifaces}");
    assert!(!ns_testkit::proc::alive(pid), "proxy stopped");
    assert!(sup.status().iter().all(|s| s.state != State::Backoff));
}

/// A VM on the outer end `outer` (moved into the VM's namespace `<p>vm`: it stands in for
/// br-int) at 10.250.7.10 gets an answer, and the agent saw it with `X-OVN-Network-ID: net`.
async fn vm_asks(root: &Netlink, outer: &str, p: &str, net: &str, agent: &StandIn) -> TestNs {
    let vm = TestNs::new(&format!("{p}vm")).expect("vm ns");
    root.move_link(outer, vm.netns())
        .await
        .expect("move outer end");
    let vnl = Netlink::open(vm.netns()).await.expect("netlink");
    vnl.ensure_address(outer, ip("10.250.7.10"), 24)
        .await
        .expect("vm address");
    vnl.set_link_up(outer).await.expect("up");
    vnl.set_link_up("lo").await.expect("lo up");
    vnl.ensure_route(ip("169.254.169.254"), 32, Some(ip("10.250.7.2")), None)
        .await
        .expect("route");
    let mut body = Err(String::new());
    for _ in 0..250 {
        body = get_in(vm.netns(), META);
        if body.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    body.expect("the VM gets an answer through the proxy");
    let heads: Vec<String> = agent.received().into_iter().map(|r| r.head).collect();
    assert!(
        heads
            .iter()
            .any(|h| h.contains(&format!("X-OVN-Network-ID: {net}\r\n"))
                && h.contains("10.250.7.10")),
        "{heads:?}"
    );
    vm
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_server_serves_an_ovnmeta_namespace_until_its_last_vif_goes() {
    let test = "the_shared_server_serves_an_ovnmeta_namespace_until_its_last_vif_goes";
    if !require_root(test) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let Some((db_dir, sb, ovs)) = sb_and_ovs_servers(test, "ovn-shared", |_| (None, vec![])) else {
        return;
    };
    let f = Fixture::new(&db_dir, &sb, &ovs);
    let (net, outer) = (f.net.clone(), f.outer.clone());
    f.bind_vm_here(&sb);

    let dir = TempDir::new("rt-ovn-sh").reaping();
    let agent = agent(dir.path());
    let (sup, source) = start_source_in(&dir, &sb, &ovs, ProxyModel::Shared).await;
    let _source = source.expect("the OVN source starts");
    sup.adopt_and_start().await;
    let looper = sup.clone();
    tokio::spawn(async move { looper.run_loop().await });

    let pid = running_pid(&sup, &net, T).await;
    let server = sup.shared_server().expect("the shared server");
    assert_eq!(server.pid(), Some(pid), "the namespace is the server's");
    let root = Netlink::current().await.expect("netlink");
    let _vm = vm_asks(&root, &outer, &f.prefix, &net, &agent).await;

    // Unbind the last VIF: the namespace goes; the server stays, serving nothing.
    sb.sbctl(&["clear", "Port_Binding", "vm-port", "chassis"]);
    eventually_async("the namespace gone", T, || {
        (status_of(&sup, &net).is_none()
            && !std::path::Path::new(&format!("/run/netns/ovnmeta-{net}")).exists())
        .then_some(())
    })
    .await;
    assert!(ns_testkit::proc::alive(pid), "the server serves on");
    sup.stop_all().await;
    eventually_async("server stopped", T, || {
        (!ns_testkit::proc::alive(pid)).then_some(())
    })
    .await;
}

/// The inode of a named namespace (the same inode: the same namespace, not rebuilt).
fn netns_inode(name: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/run/netns/{name}"))
        .ok()
        .map(|m| m.ino())
}

/// `ns-metadata-spawner run` with `source = ovn`, waited for until READY=1.
fn start_ovn_daemon(dir: &std::path::Path, sb: &Server, ovs: &Server) -> ns_testkit::ChildGuard {
    start_ovn_daemon_on(dir, &sb.unix(), "", ovs)
}

/// The same on the Southbound remote(s) `sb`, with more `[ovn]` lines (`key = value\n`).
fn start_ovn_daemon_on(
    dir: &std::path::Path,
    sb: &str,
    ovn_lines: &str,
    ovs: &Server,
) -> ns_testkit::ChildGuard {
    start_daemon(dir, &write_ovn_ini(dir, sb, ovn_lines, ovs), &[])
}

/// `dir/spawner.ini` for `source = ovn` on Southbound remote(s) `sb`, more `[ovn]` lines.
fn write_ovn_ini(
    dir: &std::path::Path,
    sb: &str,
    ovn_lines: &str,
    ovs: &Server,
) -> std::path::PathBuf {
    let ini = dir.join("spawner.ini");
    std::fs::write(
        &ini,
        format!(
            "[DEFAULT]\nmetadata_proxy_socket = {}\n[spawner]\nstate_dir = {}\nproxy_binary = {}\n\
             stop_timeout = 3\nsource = ovn\n[ovn]\novn_sb_connection = {sb}\n{ovn_lines}\
             [ovs]\novsdb_connection = {}\n",
            dir.join("agent.sock").display(),
            dir.display(),
            ns_testkit::bin_path("ns-metadata-proxy").display(),
            ovs.unix(),
        ),
    )
    .expect("write ini");
    ini
}

/// Wait until the namespace and the proxy are gone.
async fn wait_gone(ns_name: &str, pid: u32) {
    eventually_async("the namespace gone", T, || {
        netns_inode(ns_name).is_none().then_some(())
    })
    .await;
    eventually_async("the proxy gone", T, || {
        (!ns_testkit::proc::alive(pid)).then_some(())
    })
    .await;
}

/// The proxy's pid from its pid file, once it is there and alive.
fn proxy_pid(dir: &std::path::Path, key: &str) -> Option<u32> {
    let pid = ns_metadata_spawner::pidfile::read(&ns_metadata_spawner::pidfile::path(
        &dir.join("pids"),
        key,
    ))?;
    ns_testkit::proc::alive(pid).then_some(pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_follows_migration_adopts_after_kill9_and_survives_a_southbound_restart() {
    let test = "daemon_follows_migration_adopts_after_kill9_and_survives_a_southbound_restart";
    if !require_root(test) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let Some((db_dir, mut sb, ovs)) = sb_and_ovs_servers(test, "ovn-daemon", |_| (None, vec![]))
    else {
        return;
    };
    let f = Fixture::new(&db_dir, &sb, &ovs);
    let ns_name = format!("ovnmeta-{}", f.net);
    // A VM migrating here: bound elsewhere, with us as its additional chassis.
    let other = format!("{}-other", f.prefix);
    sb.sbctl(&["chassis-add", &other, "geneve", "127.0.0.2"]);
    let other_row = find_uuid(&sb, "Chassis", &other);
    f.bind_vm(
        &sb,
        "vm-port",
        2,
        "fa:16:3e:aa:bb:10 10.250.7.10",
        Some(&other_row),
        Some(&f.chassis_row),
    );
    // Left from before: a namespace an agent built for a network no longer here (removed at
    // start), and one named ovnmeta- that no agent built (left alone).
    let stale_id = format!("{}old", f.prefix);
    let stale = TestNs::new(&format!("ovnmeta-{stale_id}")).expect("stale ns");
    let (o, i) = veth_names(&stale_id);
    Netlink::open(stale.netns())
        .await
        .expect("netlink")
        .create_veth(&o, &i)
        .await
        .expect("veth");
    let foreign = TestNs::new(&format!("ovnmeta-{}x", f.prefix)).expect("foreign ns");
    let dir = TempDir::new("rt-ovnd").reaping();
    let _agent = agent(dir.path());
    let daemon = start_ovn_daemon(dir.path(), &sb, &ovs);
    // READY comes after the first pass and adoption: the namespace is there already.
    let ino = netns_inode(&ns_name).expect("ovnmeta namespace at READY");
    assert_eq!(netns_inode(stale.name()), None, "stale namespace removed");
    assert!(
        netns_inode(foreign.name()).is_some(),
        "foreign namespace kept"
    );
    let pid = eventually_async("the proxy", T, || proxy_pid(dir.path(), &f.net)).await;
    // The CLI lists the OVN network (from its proxy: it has no record) and shows it.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ns-metadata-spawner"))
            .arg("--config-file")
            .arg(dir.path().join("spawner.ini"))
            .args(args)
            .output()
            .expect("cli");
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let list = cli(&["network", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with(&format!("{} ", f.net)) && l.contains("(ovn)")),
        "{list}"
    );
    let shown: serde_json::Value =
        serde_json::from_str(&cli(&["network", "show", &f.net])).expect("show json");
    assert_eq!(shown["ovn_network"]["id"], f.net.as_str(), "{shown}");
    assert_eq!(shown["ovn_network"]["netns"], ns_name.as_str(), "{shown}");

    // kill -9 and restart: nothing rebuilt, the proxy adopted.
    drop(daemon);
    let read_log = || std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
    let before = read_log().len();
    let daemon = start_ovn_daemon(dir.path(), &sb, &ovs);
    assert_eq!(netns_inode(&ns_name), Some(ino), "namespace not rebuilt");
    assert_eq!(proxy_pid(dir.path(), &f.net), Some(pid), "proxy adopted");
    let log = read_log();
    assert!(!log[before..].contains("tearing down"), "{log}");

    // The Southbound server restarts: no teardown, then it is followed again.
    sb.kill();
    sb.restart();
    eventually_async("the Southbound connection back", T, || {
        std::fs::read_to_string(dir.path().join("daemon.log"))
            .ok()?
            .contains("Southbound connection back")
            .then_some(())
    })
    .await;
    assert_eq!(netns_inode(&ns_name), Some(ino), "kept over the outage");
    assert_eq!(proxy_pid(dir.path(), &f.net), Some(pid), "proxy kept");

    // The migration ends elsewhere (we leave additional_chassis): all gone.
    sb.sbctl(&["clear", "Port_Binding", "vm-port", "additional_chassis"]);
    wait_gone(&ns_name, pid).await;
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_to_run_next_to_a_live_neutron_ovn_metadata_agent() {
    let test = "refuses_to_run_next_to_a_live_neutron_ovn_metadata_agent";
    // Nothing is built by the refusal (it comes before any namespace work); the start that
    // follows runs the first pass, which needs root.
    if !require_root(test) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let Some((db_dir, sb, ovs)) = sb_and_ovs_servers(test, "ovn-coexist", |_| (None, vec![]))
    else {
        return;
    };
    let f = Fixture::new(&db_dir, &sb, &ovs);
    let chassis = format!("{}-chassis", f.prefix);
    let existing = find_uuid(&sb, "Chassis_Private", &chassis);
    if existing.is_empty() {
        sb.sbctl(&["create", "Chassis_Private", &format!("name={chassis}")]);
    }
    sb.sbctl(&["set", "SB_Global", ".", "nb_cfg=5"]);
    sb.sbctl(&[
        "set",
        "Chassis_Private",
        &chassis,
        "external_ids:\"neutron:ovn-metadata-sb-cfg\"=4",
    ]);
    let dir = TempDir::new("rt-ovnc");
    let err = match start_source(&dir, &sb, &ovs).await.1 {
        Ok(_) => panic!("started next to a live Neutron agent"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("Neutron's OVN metadata agent is alive"),
        "{err}"
    );
    // Our own agent writes the same key with its marker: that is no reason to refuse.
    sb.sbctl(&[
        "set",
        "Chassis_Private",
        &chassis,
        &format!("external_ids:\"{}\"=1", ns_contract::ovn::AGENT_MARKER_KEY),
    ]);
    let (_, started) = start_source(&dir, &sb, &ovs).await;
    assert!(started.is_ok(), "{:?}", started.err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netdev_bridge_gets_the_checksum_rule_in_the_namespace() {
    let test = "netdev_bridge_gets_the_checksum_rule_in_the_namespace";
    if !require_root(test) || !ns_testkit::ovsdb::have(test, &["iptables"], &[]) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let Some((db_dir, sb, ovs)) = sb_and_ovs_servers(test, "ovn-netdev", |_| (None, vec![])) else {
        return;
    };
    let f = Fixture::new(&db_dir, &sb, &ovs);
    // A userspace (DPDK) integration bridge, as a row.
    vsctl(
        db_dir.path(),
        &ovs.unix(),
        &["set", "Bridge", BRIDGE, "datapath_type=netdev"],
    );
    f.bind_vm_here(&sb);
    let dir = TempDir::new("rt-ovnn").reaping();
    let _agent = agent(dir.path());
    let (sup, source) = start_source(&dir, &sb, &ovs).await;
    let source = source.expect("the OVN source starts");
    assert!(
        ns_metadata_spawner::ovn_provision::checksum_rule_present(&f.net)
            .await
            .expect("iptables -C"),
        "CHECKSUM --checksum-fill in ovnmeta-{}",
        f.net
    );
    drop(source);
    sup.stop_all().await;
}

/// The fixture's VM bound here, and the daemon on Southbound remote(s) `sb` with more `[ovn]`
/// lines: what was built for it by READY.
struct BoundDaemon {
    guard: ns_testkit::ChildGuard,
    _agent: ns_testkit::agent::StandIn,
    dir: TempDir,
    ns_name: String,
    /// The namespace's inode at READY.
    ino: u64,
    /// The proxy's pid.
    pid: u32,
}

impl BoundDaemon {
    async fn start(
        f: &Fixture,
        sb: &impl Sbctl,
        remote: &str,
        ovn_lines: &str,
        ovs: &Server,
    ) -> Self {
        f.bind_vm_here(sb);
        let dir = TempDir::new("rt-ovnd").reaping();
        let agent = agent(dir.path());
        let guard = start_ovn_daemon_on(dir.path(), remote, ovn_lines, ovs);
        let ns_name = format!("ovnmeta-{}", f.net);
        let ino = netns_inode(&ns_name).expect("ovnmeta namespace at READY");
        let pid = eventually_async("the proxy", T, || proxy_pid(dir.path(), &f.net)).await;
        BoundDaemon {
            guard,
            _agent: agent,
            dir,
            ns_name,
            ino,
            pid,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Namespace and proxy still the ones of READY.
    fn kept(&self, when: &str) {
        assert_eq!(
            netns_inode(&self.ns_name),
            Some(self.ino),
            "namespace {when}"
        );
        assert_eq!(
            proxy_pid(self.dir.path(), self.ns_name.trim_start_matches("ovnmeta-")),
            Some(self.pid),
            "proxy {when}"
        );
    }

    /// After the VM's unbinding: namespace and proxy gone, then the daemon stopped.
    async fn all_gone(self) {
        wait_gone(&self.ns_name, self.pid).await;
        drop(self.guard);
    }
}

/// `ssl:` Southbound with the `[ovn]` options as Neutron names them, `ovs-pki` certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_on_an_ssl_southbound_with_neutrons_options() {
    let test = "daemon_on_an_ssl_southbound_with_neutrons_options";
    if !require_root(test) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let port = ns_testkit::http::free_port();
    let mut client = None;
    let Some((db_dir, sb, ovs)) = sb_and_ovs_servers(test, "ovn-ssl", |dir| {
        let (remote, files) = pssl(dir, port);
        client = Some(files);
        remote
    }) else {
        return;
    };
    let c = client.expect("client files");
    let ovn = format!(
        "ovn_sb_private_key = {}\novn_sb_certificate = {}\novn_sb_ca_cert = {}\n",
        c.private_key, c.certificate, c.ca_cert
    );
    let f = Fixture::new(&db_dir, &sb, &ovs);
    let d = BoundDaemon::start(&f, &sb, &format!("ssl:127.0.0.1:{port}"), &ovn, &ovs).await;
    // Changes arrive over the ssl: connection too: the unbinding removes it all.
    sb.sbctl(&["clear", "Port_Binding", "vm-port", "chassis"]);
    d.all_gone().await;
}

/// Whether cluster member `remote` (a unix socket) leads the Southbound database.
fn leads(dir: &std::path::Path, remote: &str) -> bool {
    let query = r#"["_Server",{"op":"select","table":"Database","where":[["name","==","OVN_Southbound"]],"columns":["leader"]}]"#;
    ovs_run(
        dir,
        OVSDB_CLIENT,
        &["--timeout=20", "transact", remote, query],
    )
    .replace(' ', "")
    .contains(r#""leader":true"#)
}

/// A clustered Southbound (three members, the daemon given all three): the leader dies →
/// nothing torn down; a new leader answers → the daemon resyncs and follows changes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_on_a_clustered_southbound_survives_the_leaders_death() {
    let test = "daemon_on_a_clustered_southbound_survives_the_leaders_death";
    if !require_root(test)
        || !have(
            test,
            &[OVSDB_SERVER, OVSDB_TOOL, OVSDB_CLIENT, OVN_SBCTL, OVS_VSCTL],
            &[SB_SCHEMA, VS_SCHEMA],
        )
    {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut cl = Cluster::start("ovn-cluster");
    let ovs_db = create_db(&cl.dir, "ovs", VS_SCHEMA);
    let ovs = Server::start(&cl.dir, "ovs", &ovs_db, None, &[]);
    vsctl(cl.dir.path(), &ovs.unix(), &["init"]);
    let f = Fixture::new(&cl.dir, &cl, &ovs);
    let remotes = cl.members.iter().map(Server::tcp).collect::<Vec<_>>();
    let d = BoundDaemon::start(&f, &cl, &remotes.join(","), "", &ovs).await;

    // The leader dies (the daemon is connected to it: it only reads from leaders).
    let leader = (0..3)
        .find(|&i| leads(cl.dir.path(), &cl.members[i].unix()))
        .expect("a leader");
    let rest: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let before = d.log().len();
    cl.members[leader].kill();
    eventually_async("the Southbound connection back", T, || {
        d.log()[before..]
            .contains("Southbound connection back")
            .then_some(())
    })
    .await;
    assert!(
        rest.iter()
            .any(|&i| leads(cl.dir.path(), &cl.members[i].unix())),
        "a new leader"
    );
    let log = d.log();
    assert!(!log[before..].contains("tearing down"), "{log}");
    d.kept("kept over the election");

    // Changes through the new leader are followed: the CIDR moves, then the unbinding.
    cl.sbctl_via(
        &rest,
        &[
            "set",
            "Port_Binding",
            "md-port",
            "external_ids:\"neutron:cidrs\"=\"10.250.7.3/24\"",
        ],
    );
    wait_address(&f.net, &f.inner, ("10.250.7.3", 24), true).await;
    cl.sbctl_via(&rest, &["clear", "Port_Binding", "vm-port", "chassis"]);
    d.all_gone().await;
}

/// The Southbound database down at start: the daemon waits for it without a time limit,
/// saying what it waits for in `status`, `check` and systemd's `STATUS=`, builds nothing;
/// once it answers, READY follows with the namespace built.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_waits_for_the_southbound_database_and_says_so() {
    let test = "daemon_waits_for_the_southbound_database_and_says_so";
    if !require_root(test) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let Some((db_dir, mut sb, ovs)) = sb_and_ovs_servers(test, "ovn-wait", |_| (None, vec![]))
    else {
        return;
    };
    let f = Fixture::new(&db_dir, &sb, &ovs);
    f.bind_vm_here(&sb);
    let ns_name = format!("ovnmeta-{}", f.net);
    sb.kill();
    let dir = TempDir::new("rt-ovnw").reaping();
    let _agent = agent(dir.path());
    let ini = write_ovn_ini(dir.path(), &sb.unix(), "", &ovs);
    let bin = env!("CARGO_BIN_EXE_ns-metadata-spawner");
    let (daemon, rx) = spawn_daemon(std::process::Command::new(bin), dir.path(), &ini, &[]);
    let waiting = "waiting for the Southbound database at unix:";
    let msg = next_notify(&rx, dir.path(), |m| m.contains(waiting) || m == "READY=1");
    assert!(msg.starts_with("STATUS=starting: "), "{msg}");
    for cmd in ["status", "check"] {
        let out = std::process::Command::new(bin)
            .arg("--config-file")
            .arg(&ini)
            .arg(cmd)
            .output()
            .expect("cli");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cmd}: {out:?}");
        assert!(err.contains(waiting), "{cmd}: {err}");
    }
    assert_eq!(netns_inode(&ns_name), None, "nothing built while waiting");

    sb.restart();
    next_notify(&rx, dir.path(), |m| m == "READY=1");
    assert!(
        netns_inode(&ns_name).is_some(),
        "ovnmeta namespace at READY"
    );
    eventually_async("the proxy", T, || proxy_pid(dir.path(), &f.net)).await;
    drop(daemon);
}
