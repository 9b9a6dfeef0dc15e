//! Root tests with real namespaces and the real `ns-metadata-proxy`: each mode of the
//! table end to end from a `vm` namespace, HA, kill -9 recovery, 50 namespaces at once, a
//! proxy stopped with SIGSTOP left alone and answering after SIGCONT, a hung (frozen) proxy
//! killed and replaced on its sockets, also one adopted by a restarted spawner.
//! Each test has its own state dir and namespaces (per-run prefix), removed on drop.

mod common;
mod root_common;

use std::time::Duration;

use common::*;
use ns_metadata_spawner::netns_platform::Namespaces;
use ns_metadata_spawner::pidfile;
use ns_metadata_spawner::records::{HaState, Network, Records, Router};
use ns_metadata_spawner::supervisor::{State, Supervisor};
use ns_testkit::netns::{link, unique_prefix, TestNs};
use ns_testkit::proc::{alive, kill9};
use ns_testkit::require_root;
use ns_testkit::{eventually_async, poll_async, TempDir};
use root_common::*;

const T: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_mode_vm_reaches_agent_with_router_id_and_its_address_and_survives_kill9() {
    if !require_root(
        "router_mode_vm_reaches_agent_with_router_id_and_its_address_and_survives_kill9",
    ) {
        return;
    }
    let dir = TempDir::new("rt-router").reaping();
    let _agent = agent(dir.path());
    let p = unique_prefix();
    let id = format!("{p}r");
    let rns = TestNs::new(&format!("qrouter-{id}")).expect("router ns");
    let vm = TestNs::new(&format!("{p}vm")).expect("vm ns");
    let (_, vm_ip) = link(&rns, &vm, 101).await.expect("veth");
    let sup = supervisor(&dir, |_| {});
    sup.put_router(router(&id));
    let pid = running_pid(&sup, &id, T).await;
    let body = answer(&vm).await.expect("vm gets an answer");
    assert_eq!(body, format!("router={id} network=- xff={vm_ip}"));
    assert_eq!(
        pidfile::read(&pidfile::path(&sup.config().pid_dir(), &id)),
        Some(pid)
    );
    // Started with posix_spawn, the proxy entered the namespace itself (issue 19): the whole
    // process is in it, and the descriptor it came on did not outlive the start.
    assert_eq!(pidfile::netns_inode(pid), Some(rns.netns().inode()));
    let fd4 = std::fs::read_link(format!("/proc/{pid}/fd/4"));
    assert!(
        fd4.as_ref()
            .map_or(true, |l| !l.to_string_lossy().starts_with("net:")),
        "fd 4 still holds the namespace: {fd4:?}"
    );

    kill9(pid);
    let pid2 = eventually_async("restarted", T, || {
        status_of(&sup, &id)
            .and_then(|s| s.pid)
            .filter(|&n| n != pid)
    })
    .await;
    assert_ne!(pid, pid2);
    assert!(answer(&vm).await.is_ok(), "answers again after kill -9");

    // Removal: proxy stopped, pid file and address gone, the vm gets no answer.
    assert!(sup.remove_router(&id));
    eventually_async("proxy stopped", T, || (!alive(pid2)).then_some(())).await;
    eventually_async("no pid file", T, || {
        (!pidfile::path(&sup.config().pid_dir(), &id).exists()).then_some(())
    })
    .await;
    let nl = ns_netns::Netlink::open(rns.netns()).await.expect("netlink");
    let addrs = nl.addresses("lo").await.expect("addresses");
    assert!(
        !addrs
            .iter()
            .any(|(a, _)| a.to_string() == "169.254.169.254"),
        "{addrs:?}"
    );
    assert!(get_in(vm.netns(), META).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_network_mode_on_the_records_interface() {
    if !require_root("isolated_network_mode_on_the_records_interface") {
        return;
    }
    let dir = TempDir::new("rt-iso").reaping();
    let _agent = agent(dir.path());
    let p = unique_prefix();
    let id = format!("{p}n");
    let dns = TestNs::new(&format!("qdhcp-{id}")).expect("dhcp ns");
    let vm = TestNs::new(&format!("{p}vm")).expect("vm ns");
    let (dhcp_ip, vm_ip) = link(&dns, &vm, 102).await.expect("veth");
    let sup = supervisor(&dir, |c| c.enable_isolated_metadata = true);
    let net: Network = serde_json::from_value(serde_json::json!({
        "id": id, "interface": "va102",
        "subnets": [{"id": "s1", "cidr": "10.250.102.0/24", "gateway_ip": null, "enable_dhcp": true, "ip_version": 4}],
        "ports": [{"id": "pd", "device_owner": "network:dhcp", "device_id": "d", "fixed_ips": [{"subnet_id": "s1", "ip_address": dhcp_ip.to_string()}]}]
    }))
    .expect("network json");
    sup.put_network(net);
    running_pid(&sup, &id, T).await;
    let body = answer(&vm).await.expect("answer");
    assert_eq!(body, format!("router=- network={id} xff={vm_ip}"));
    let nl = ns_netns::Netlink::open(dns.netns()).await.expect("netlink");
    let addrs = nl.addresses("va102").await.expect("addresses");
    assert!(
        addrs
            .iter()
            .any(|(a, n)| a.to_string() == "169.254.169.254" && *n == 32),
        "{addrs:?}"
    );
    sup.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_network_mode_passes_the_router_id() {
    if !require_root("metadata_network_mode_passes_the_router_id") {
        return;
    }
    let dir = TempDir::new("rt-metanet").reaping();
    let _agent = agent(dir.path());
    let p = unique_prefix();
    let id = format!("{p}n");
    let dns = TestNs::new(&format!("qdhcp-{id}")).expect("dhcp ns");
    let vm = TestNs::new(&format!("{p}vm")).expect("vm ns");
    let (_, vm_ip) = link(&dns, &vm, 103).await.expect("veth");
    let sup = supervisor(&dir, |c| {
        c.enable_isolated_metadata = true;
        c.enable_metadata_network = true;
    });
    let net: Network = serde_json::from_value(serde_json::json!({
        "id": id, "interface": "va103",
        "subnets": [{"id": "s1", "cidr": "169.254.10.0/24", "gateway_ip": "169.254.10.1", "enable_dhcp": true, "ip_version": 4}],
        "ports": [{"id": "pr", "device_owner": "network:router_interface", "device_id": "rtr-meta", "fixed_ips": [{"subnet_id": "s1", "ip_address": "169.254.10.1"}]}]
    }))
    .expect("network json");
    sup.put_network(net);
    running_pid(&sup, &id, T).await;
    let body = answer(&vm).await.expect("answer");
    assert_eq!(body, format!("router=rtr-meta network=- xff={vm_ip}"));
    sup.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_metadata_serves_a_routed_network() {
    if !require_root("force_metadata_serves_a_routed_network") {
        return;
    }
    let dir = TempDir::new("rt-force").reaping();
    let _agent = agent(dir.path());
    let p = unique_prefix();
    let id = format!("{p}n");
    let dns = TestNs::new(&format!("qdhcp-{id}")).expect("dhcp ns");
    let vm = TestNs::new(&format!("{p}vm")).expect("vm ns");
    let (dhcp_ip, vm_ip) = link(&dns, &vm, 104).await.expect("veth");
    let sup = supervisor(&dir, |c| c.enable_isolated_metadata = true);
    let net: Network = serde_json::from_value(serde_json::json!({
        "id": id, "interface": "va104",
        "subnets": [{"id": "s1", "cidr": "10.250.104.0/24", "gateway_ip": "10.250.104.254", "enable_dhcp": true, "ip_version": 4}],
        "ports": [
            {"id": "pd", "device_owner": "network:dhcp", "device_id": "d", "fixed_ips": [{"subnet_id": "s1", "ip_address": dhcp_ip.to_string()}]},
            {"id": "pr", "device_owner": "network:router_interface", "device_id": "r", "fixed_ips": [{"subnet_id": "s1", "ip_address": "10.250.104.254"}]}
        ]
    }))
    .expect("network json");
    sup.put_network(net);
    sup.reconcile().await;
    assert!(
        status_of(&sup, &id).is_none(),
        "a routed network gets no proxy without force_metadata"
    );
    assert!(get_in(vm.netns(), META).is_err());
    let mut cfg = (*sup.config()).clone();
    cfg.force_metadata = true;
    sup.set_config(cfg);
    running_pid(&sup, &id, T).await;
    let body = answer(&vm).await.expect("answer");
    assert_eq!(body, format!("router=- network={id} xff={vm_ip}"));
    sup.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_backup_has_no_proxy_primary_does_dvr_backup_does() {
    if !require_root("ha_backup_has_no_proxy_primary_does_dvr_backup_does") {
        return;
    }
    let dir = TempDir::new("rt-ha").reaping();
    let _agent = agent(dir.path());
    let p = unique_prefix();
    let id = format!("{p}r");
    let rns = TestNs::new(&format!("qrouter-{id}")).expect("router ns");
    let vm = TestNs::new(&format!("{p}vm")).expect("vm ns");
    link(&rns, &vm, 105).await.expect("veth");
    let sup = supervisor(&dir, |_| {});
    sup.put_router(Router {
        ha_state: Some(HaState::Backup),
        ..router(&id)
    });
    sup.reconcile().await;
    assert!(status_of(&sup, &id).is_none());
    assert!(get_in(vm.netns(), META).is_err(), "backup does not answer");
    sup.put_router(Router {
        ha_state: Some(HaState::Primary),
        ..router(&id)
    });
    let pid = running_pid(&sup, &id, T).await;
    assert!(answer(&vm)
        .await
        .expect("primary answers")
        .starts_with(&format!("router={id} ")));
    sup.put_router(Router {
        ha_state: Some(HaState::Backup),
        ..router(&id)
    });
    eventually_async("stopped on backup", T, || (!alive(pid)).then_some(())).await;
    assert!(get_in(vm.netns(), META).is_err());
    sup.put_router(Router {
        ha_state: Some(HaState::Backup),
        distributed: true,
        ..router(&id)
    });
    running_pid(&sup, &id, T).await;
    assert!(answer(&vm).await.is_ok(), "DVR+HA backup answers");
    sup.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_namespaces_at_once_all_answer() {
    if !require_root("fifty_namespaces_at_once_all_answer") {
        return;
    }
    let dir = TempDir::new("rt-50").reaping();
    let _agent = agent(dir.path());
    let p = unique_prefix();
    let ids: Vec<String> = (0..50).map(|i| format!("{p}x{i}")).collect();
    let nss: Vec<TestNs> = ids
        .iter()
        .map(|id| TestNs::new(&format!("qrouter-{id}")).expect("ns"))
        .collect();
    let sup = supervisor(&dir, |_| {});
    for id in &ids {
        sup.put_router(router(id));
    }
    poll_async(Duration::from_secs(60), || {
        (sup.status()
            .iter()
            .filter(|s| s.state == State::Running)
            .count()
            == 50)
            .then_some(())
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "not all running: {:?}",
            sup.status()
                .iter()
                .filter(|s| s.state != State::Running)
                .collect::<Vec<_>>()
        )
    });
    for (id, ns) in ids.iter().zip(&nss) {
        // From inside each router namespace itself (the proxy's address is local there).
        let body = get_in(ns.netns(), META).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert!(body.starts_with(&format!("router={id} ")), "{body}");
    }
    sup.stop_all().await;
    assert!(pidfile::list(&sup.config().pid_dir()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_adds_and_binds_the_link_local_metadata_address() {
    if !require_root("ipv6_adds_and_binds_the_link_local_metadata_address") {
        return;
    }
    let dir = TempDir::new("rt-v6").reaping();
    let _agent = agent(dir.path());
    let p = unique_prefix();
    let id = format!("{p}n");
    let dns = TestNs::new(&format!("qdhcp-{id}")).expect("dhcp ns");
    let vm = TestNs::new(&format!("{p}vm")).expect("vm ns");
    let (dhcp_ip, _) = link(&dns, &vm, 106).await.expect("veth");
    let sup = supervisor(&dir, |c| {
        c.enable_isolated_metadata = true;
        c.ipv6 = true;
    });
    let net = dual_stack_network(&id, 106, dhcp_ip);
    sup.put_network(net);
    let pid = running_pid(&sup, &id, T).await;
    let argv = pidfile::cmdline(pid).expect("alive");
    assert!(
        argv.iter().any(|a| a == "[fe80::a9fe:a9fe]:80%va106"),
        "{argv:?}"
    );
    let addr = v6_meta(dns.netns(), "va106").await;
    let nl = ns_netns::Netlink::open(dns.netns()).await.expect("netlink");
    let body = get_in(dns.netns(), addr).expect("answers on fe80::a9fe:a9fe");
    assert!(
        body.starts_with(&format!("router=- network={id} xff=fe80::a9fe:a9fe")),
        "{body}"
    );
    sup.stop_all().await;
    let addrs = nl.addresses("va106").await.expect("addresses");
    assert!(
        !addrs
            .iter()
            .any(|(a, _)| a.to_string().starts_with("fe80::a9fe")
                || a.to_string() == "169.254.169.254"),
        "{addrs:?}"
    );
}

/// The usual orchestrator order: the network is announced before its DHCP port is plugged.
/// The proxy waits (shown with the reason, no restarts, no backoff) and answers the vm
/// promptly once the interface appears, not after a crash backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_waits_for_its_interface_then_answers_promptly() {
    if !require_root("network_waits_for_its_interface_then_answers_promptly") {
        return;
    }
    let dir = TempDir::new("rt-late-tap").reaping();
    let _agent = agent(dir.path());
    let p = unique_prefix();
    let id = format!("{p}n");
    let netns = format!("qdhcp-{id}");
    let dns = TestNs::new(&netns).expect("dhcp ns");
    let vm = TestNs::new(&format!("{p}vm")).expect("vm ns");
    // A long crash backoff: recovering through it would miss the bounded wait below.
    let sup = supervisor(&dir, |c| {
        c.enable_isolated_metadata = true;
        c.max_restart_delay = Duration::from_secs(60);
    });
    let net: Network = serde_json::from_value(serde_json::json!({
        "id": id, "interface": "va107",
        "subnets": [{"id": "s1", "cidr": "10.250.107.0/24", "gateway_ip": null, "enable_dhcp": true, "ip_version": 4}],
        "ports": [{"id": "pd", "device_owner": "network:dhcp", "device_id": "d", "fixed_ips": [{"subnet_id": "s1", "ip_address": "10.250.107.1"}]}]
    }))
    .expect("network json");
    sup.put_network(net);
    let reason = format!("interface va107 not in {netns}");
    let st = poll_async(T, || {
        status_of(&sup, &id).filter(|s| s.state == State::Waiting)
    })
    .await
    .unwrap_or_else(|| panic!("not waiting: {:?}", status_of(&sup, &id)));
    assert_eq!(st.last_error.as_deref(), Some(reason.as_str()), "{st:?}");
    // Several re-checks later: still waiting, nothing counted as a restart.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let st = status_of(&sup, &id).expect("status");
    assert_eq!(
        (st.state, st.restarts, st.pid),
        (State::Waiting, 0, None),
        "{st:?}"
    );

    // Plug the port: a veth end named as the record's interface appears in the namespace.
    let (_, vm_ip) = link(&dns, &vm, 107).await.expect("veth");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let body = loop {
        match get_in(vm.netns(), META) {
            Ok(b) => break b,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!(
                    "no answer 5 s after the interface appeared: {e}; {:?}",
                    status_of(&sup, &id)
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    assert_eq!(body, format!("router=- network={id} xff={vm_ip}"));
    let st = status_of(&sup, &id).expect("status");
    assert_eq!(
        (st.state, st.restarts, st.last_error),
        (State::Running, 0, None)
    );
    sup.stop_all().await;
}

/// Issue "adoption across namespaces": the router's namespace is deleted and re-added while
/// the spawner is down. The old proxy (provably ours, still serving the old namespace) is
/// not adopted: it is stopped, and a new one runs in the namespace that now has the name.
#[test]
fn namespace_recreated_while_down_gets_a_new_proxy_and_the_old_one_is_stopped() {
    if !require_root("namespace_recreated_while_down_gets_a_new_proxy_and_the_old_one_is_stopped") {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let dir = TempDir::new("rt-recreated").reaping();
    let p = unique_prefix();
    let id = format!("{p}x");
    let name = format!("qrouter-{id}");
    let cfg = real_config(dir.path());
    let mut records = Records::default();
    records.api_routers.insert(id.clone(), router(&id));
    let rns = TestNs::new(&name).expect("router ns");
    let rt1 = tokio::runtime::Runtime::new().expect("runtime");
    let p1 = rt1.block_on(async {
        let sup = Supervisor::new(Namespaces, cfg.clone(), records.clone());
        sup.adopt_and_start().await;
        running_pid(&sup, &id, T).await
    });
    drop(rt1);
    let _g1 = ns_testkit::PidGuard(vec![p1]);
    assert!(alive(p1), "the proxy outlives its supervisor");
    drop(rns);
    let rns = TestNs::new(&name).expect("router ns again");
    let ino = |path: String| std::fs::metadata(path).expect("stat").ino();
    let now = ino(format!("/run/netns/{name}"));
    assert_ne!(ino(format!("/proc/{p1}/ns/net")), now, "a new namespace");
    let rt2 = tokio::runtime::Runtime::new().expect("runtime");
    rt2.block_on(async {
        let sup = Supervisor::new(Namespaces, cfg.clone(), records.clone());
        sup.adopt_and_start().await;
        let p2 = running_pid(&sup, &id, T).await;
        let _g2 = ns_testkit::PidGuard(vec![p2]);
        let st = status_of(&sup, &id).expect("status");
        assert!(p2 != p1 && !st.adopted, "{st:?}");
        assert!(!alive(p1), "the proxy of the old namespace was stopped");
        assert_eq!(ino(format!("/proc/{p2}/ns/net")), now, "serves the new one");
        assert_eq!(pidfile::read(&pidfile::path(&cfg.pid_dir(), &id)), Some(p2));
        sup.stop_all().await;
    });
    drop(rns);
}

/// Issue "hardening" item 11: routers removed while the spawner was down leave no
/// 169.254.169.254 behind: one whose proxy still runs (stopped and torn down in its own
/// namespace) and one whose proxy died meanwhile (its pid file recorded the namespace and
/// interface, so the address is removed without a process).
#[test]
fn routers_removed_while_down_leave_no_address() {
    if !require_root("routers_removed_while_down_leave_no_address") {
        return;
    }
    let dir = TempDir::new("rt-leak").reaping();
    let p = unique_prefix();
    let (a, b) = (format!("{p}a"), format!("{p}b"));
    let cfg = real_config(dir.path());
    let mut records = Records::default();
    for id in [&a, &b] {
        records.api_routers.insert(id.clone(), router(id));
    }
    let na = TestNs::new(&format!("qrouter-{a}")).expect("ns a");
    let nb = TestNs::new(&format!("qrouter-{b}")).expect("ns b");
    let rt1 = tokio::runtime::Runtime::new().expect("runtime");
    let (pa, pb) = rt1.block_on(async {
        let sup = Supervisor::new(Namespaces, cfg.clone(), records.clone());
        sup.adopt_and_start().await;
        (
            running_pid(&sup, &a, T).await,
            running_pid(&sup, &b, T).await,
        )
    });
    drop(rt1);
    let _g = ns_testkit::PidGuard(vec![pa, pb]);
    let has_meta = |ns: &TestNs| {
        let out = std::process::Command::new("ip")
            .args([
                "-n",
                ns.name(),
                "-o",
                "addr",
                "show",
                "dev",
                &cfg.router_interface,
            ])
            .output()
            .expect("ip addr");
        String::from_utf8_lossy(&out.stdout).contains("169.254.169.254/32")
    };
    assert!(has_meta(&na) && has_meta(&nb), "both prepared");
    kill9(pa);
    assert!(ns_testkit::wait_until(T, || !alive(pa)), "a's proxy died");
    let rt2 = tokio::runtime::Runtime::new().expect("runtime");
    rt2.block_on(async {
        let sup = Supervisor::new(Namespaces, cfg.clone(), Records::default());
        sup.adopt_and_start().await;
        assert!(sup.status().is_empty());
    });
    assert!(!alive(pb), "b's proxy was stopped");
    assert!(!has_meta(&na), "the dead proxy's address was removed");
    assert!(!has_meta(&nb), "the stopped proxy's address was removed");
    assert!(pidfile::list(&cfg.pid_dir()).is_empty());
}

/// A proxy stopped with SIGSTOP while the spawner runs its passes (another router added and
/// served meanwhile): it is alive and ours, so the spawner neither signals nor replaces it
/// (its status stays `running` with the same pid), and `check` says it is stopped; after
/// SIGCONT it answers again, the same process, with nothing restarted.
#[test]
fn a_stopped_proxy_is_left_alone_and_answers_after_sigcont() {
    if !require_root("a_stopped_proxy_is_left_alone_and_answers_after_sigcont") {
        return;
    }
    let dir = TempDir::new("rt-sigstop").reaping();
    let _agent = agent(dir.path());
    let (ids, nss) = routers(&unique_prefix(), "st", 2);
    let ini = with_hang_timeout(&write_ini(dir.path(), ""));
    let _daemon = start_daemon(dir.path(), &ini, &[]);
    let (ok, out) = cli(&ini, &["router", "add", &ids[0]]);
    assert!(ok, "{out}");
    let pid = ns_testkit::eventually("proxy running", T, || pid_of(dir.path(), &ids[0]));
    ns_testkit::eventually("answers", T, || get_in(nss[0].netns(), META).ok());

    ns_testkit::proc::signal(pid, "STOP");
    let resume = Continue(pid);
    let (ok, out) = cli(&ini, &["router", "add", &ids[1]]);
    assert!(ok, "{out}");
    ns_testkit::eventually("the other router answers", T, || {
        get_in(nss[1].netns(), META).ok()
    });
    // Its heartbeat is still for longer than hang_timeout: the watchdog saw it stopped.
    logged(dir.path(), "left alone");
    assert!(stopped(pid), "the stopped proxy is left as it is");
    assert_eq!(
        pid_of(dir.path(), &ids[0]),
        Some(pid),
        "still running, same pid"
    );

    // `check` names it at once instead of waiting out a probe.
    let (code, out) = cli_code(&ini, &["check"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("proxy pid {pid} is stopped")),
        "check says why: {out}"
    );
    drop(resume);
    let body = ns_testkit::eventually("answers after SIGCONT", T, || {
        get_in(nss[0].netns(), META).ok()
    });
    assert!(body.starts_with(&format!("router={} ", ids[0])), "{body}");
    assert_eq!(pid_of(dir.path(), &ids[0]), Some(pid), "the same process");
}

/// A proxy whose event loop hangs for real (frozen in a cgroup freezer, no hook in the
/// binaries; with the v1 freezer it cannot even die until thawed), under a request loop:
/// once its heartbeat has been still for `hang_timeout` (1 s here) the spawner logs it,
/// counts it in `/metrics`, takes its listening sockets, kills it and starts another on them
/// without waiting for it to die. The namespace answers again through the new process, no
/// request is refused meanwhile (they wait in the accept queue), `status` keeps the reason
/// (`hung: …`), and once thawed the old one is gone while the new one runs on, unreplaced.
#[test]
fn a_hung_proxy_is_killed_and_replaced_on_its_sockets() {
    hung_proxy_replaced("a_hung_proxy_is_killed_and_replaced_on_its_sockets", true);
}

/// The same with `proxy_metrics = false`: the proxy gets its block for the heartbeat alone
/// (`--heartbeat-fd`), so it is watched all the same, and nothing it serves is counted.
#[test]
fn a_hung_proxy_is_replaced_with_the_metrics_off_too() {
    hung_proxy_replaced("a_hung_proxy_is_replaced_with_the_metrics_off_too", false);
}

fn hung_proxy_replaced(name: &str, metrics: bool) {
    if !require_root(name) {
        return;
    }
    let Some(freezer) = Freezer::for_test(name) else {
        return;
    };
    let dir = TempDir::new("rt-hang").reaping();
    let _agent = agent(dir.path());
    let (ids, nss) = routers(&unique_prefix(), "hg", 1);
    let ini = with_hang_timeout(&write_ini(dir.path(), ""));
    if !metrics {
        let text = std::fs::read_to_string(&ini).expect("ini");
        std::fs::write(&ini, format!("{text}proxy_metrics = false\n")).expect("ini");
    }
    let _daemon = start_daemon(dir.path(), &ini, &[]);
    let (ok, out) = cli(&ini, &["router", "add", &ids[0]]);
    assert!(ok, "{out}");
    let old = ns_testkit::eventually("proxy running", T, || pid_of(dir.path(), &ids[0]));
    let current = || pid_of(dir.path(), &ids[0]);
    let argv = std::fs::read(format!("/proc/{old}/cmdline")).expect("cmdline");
    let argv = String::from_utf8_lossy(&argv).replace('\0', " ");
    let flag = if metrics {
        "--stats-fd 5"
    } else {
        "--heartbeat-fd 5"
    };
    assert!(argv.contains(flag), "{argv}");

    let new = hang_under_load(&freezer, nss[0].netns(), old, current);
    let body = get_in(nss[0].netns(), META).expect("answers");
    assert!(body.starts_with(&format!("router={} ", ids[0])), "{body}");
    logged(dir.path(), "proxy hung");
    let p = proxy_json(dir.path(), &ids[0]).expect("status");
    assert!(
        p["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("hung")),
        "{p}"
    );
    assert!(p["restarts"].as_u64() >= Some(1), "{p}");
    let scraped = scrape(dir.path());
    assert!(
        scraped.contains("ns_metadata_hangs_total{model=\"per-namespace\",kind=\"router\"} 1\n"),
        "{scraped}"
    );
    assert_eq!(
        scraped.contains("ns_metadata_proxy_requests_total{"),
        metrics,
        "counts exported only with the metrics on: {scraped}"
    );
    thawed_and_gone(freezer, dir.path(), (old, new), current, "proxy hung");
}

/// The same for a proxy adopted by a restarted spawner (kill -9, then started again): not our
/// child, watched once the new spawner has seen its beat move, and still replaced on its own
/// sockets when it hangs.
#[test]
fn an_adopted_proxy_that_hangs_is_replaced_too() {
    let name = "an_adopted_proxy_that_hangs_is_replaced_too";
    if !require_root(name) {
        return;
    }
    let Some(freezer) = Freezer::for_test(name) else {
        return;
    };
    let dir = TempDir::new("rt-hang-adopted").reaping();
    let _agent = agent(dir.path());
    let (ids, nss) = routers(&unique_prefix(), "ha", 1);
    let ini = with_hang_timeout(&write_ini(dir.path(), ""));
    let mut first = start_daemon(dir.path(), &ini, &[]);
    add_router(&ini, &ids[0]);
    let old = ns_testkit::eventually("proxy running", T, || pid_of(dir.path(), &ids[0]));
    kill9(first.pid());
    let _ = first.0.wait();
    let _daemon = start_daemon(dir.path(), &ini, &[]);
    let p = ns_testkit::eventually("adopted", T, || {
        proxy_json(dir.path(), &ids[0]).filter(|p| p["adopted"] == true)
    });
    assert_eq!(p["pid"].as_u64(), Some(u64::from(old)), "{p}");
    // Watched once the new spawner has seen it beat: a few beats (250 ms apart) after the
    // adoption, at least one of its looks saw the beat move.
    let b0 = beat_of(dir.path(), &ids[0]).expect("a heartbeat");
    ns_testkit::eventually("beats after the adoption", T, || {
        beat_of(dir.path(), &ids[0]).filter(|&b| b >= b0 + 3)
    });
    let current = || pid_of(dir.path(), &ids[0]);

    let new = hang_under_load(&freezer, nss[0].netns(), old, current);
    let body = get_in(nss[0].netns(), META).expect("answers");
    assert!(body.starts_with(&format!("router={} ", ids[0])), "{body}");
    thawed_and_gone(freezer, dir.path(), (old, new), current, "proxy hung");
}

/// A proxy frozen in a cgroup (with the v1 freezer it cannot die until thawed) whose router
/// is removed: the stop (SIGTERM, `stop_timeout`, SIGKILL) does not wait for it for ever, so
/// the namespace's metadata address is removed while the frozen process is still there;
/// thawed, it dies of its SIGKILL. (The default `hang_timeout` is far away here.)
#[test]
fn a_frozen_proxy_is_removed_without_waiting_for_it_to_die() {
    let name = "a_frozen_proxy_is_removed_without_waiting_for_it_to_die";
    if !require_root(name) {
        return;
    }
    let Some(freezer) = Freezer::for_test(name) else {
        return;
    };
    let dir = TempDir::new("rt-frozen-rm").reaping();
    let _agent = agent(dir.path());
    let (ids, nss) = routers(&unique_prefix(), "fz", 1);
    let ini = write_ini(dir.path(), "");
    let _daemon = start_daemon(dir.path(), &ini, &[]);
    let (ok, out) = cli(&ini, &["router", "add", &ids[0]]);
    assert!(ok, "{out}");
    let old = ns_testkit::eventually("proxy running", T, || pid_of(dir.path(), &ids[0]));
    freezer.freeze(old);
    let (ok, out) = cli(&ini, &["router", "remove", &ids[0]]);
    assert!(ok, "{out}");
    let has_address = || {
        let out = std::process::Command::new("ip")
            .args(["-n", nss[0].name(), "-4", "-o", "addr", "show", "dev", "lo"])
            .output()
            .expect("ip");
        String::from_utf8_lossy(&out.stdout).contains("169.254.169.254")
    };
    // stop_timeout (3 s) and the 5 s a SIGKILLed process is waited for, then the teardown.
    assert!(
        ns_testkit::wait_until(Duration::from_secs(20), || !has_address()),
        "the removed router's address is gone"
    );
    if !freezer.frozen_can_die() {
        assert!(alive(old), "{}: removed without waiting", freezer.kind());
        logged(dir.path(), "not dead");
    }
    drop(freezer);
    ns_testkit::eventually("the frozen proxy gone once thawed", T, || {
        (!alive(old)).then_some(())
    });
}

/// `status --json` of the daemon on state dir `dir`.
fn status_json(dir: &std::path::Path) -> serde_json::Value {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ns-metadata-spawner"))
        .arg("--state-dir")
        .arg(dir)
        .args(["status", "--json"])
        .output()
        .expect("status");
    serde_json::from_slice(&o.stdout).unwrap_or_default()
}

/// The daemon's state dir on a small tmpfs, filled while it runs: a router announced then
/// is served all the same (its pid file and statistics file cannot be written: the status
/// says so), `status` names the unsaved `records.json`, the daemon does not die; once there
/// is room again the records and the pid file are written without another change and the
/// errors clear.
#[test]
fn a_full_state_dir_serves_on_says_why_and_saves_once_there_is_room() {
    let name = "a_full_state_dir_serves_on_says_why_and_saves_once_there_is_room";
    if !require_root(name) {
        return;
    }
    let dir = TempDir::new("rt-full").reaping();
    let fs = match ns_testkit::tmpfs::Tmpfs::mount("rt-full-state", 512) {
        Ok(fs) => fs,
        Err(e) => return ns_testkit::skip(name, &e),
    };
    let state = fs.path();
    let _agent = agent(dir.path());
    let (ids, nss) = routers(&unique_prefix(), "fu", 2);
    // write_ini's file, with the state dir on the tmpfs (the log and the agent stay out).
    let ini = write_ini(dir.path(), "");
    let text = std::fs::read_to_string(&ini).expect("ini").replace(
        &format!("state_dir = {}\n", dir.path().display()),
        &format!("state_dir = {}\n", state.display()),
    );
    std::fs::write(&ini, text).expect("ini");
    let mut daemon = start_daemon(dir.path(), &ini, &[]);
    let (ok, out) = cli(&ini, &["router", "add", &ids[0]]);
    assert!(ok, "{out}");
    ns_testkit::eventually("the first router answers", T, || {
        get_in(nss[0].netns(), META).ok()
    });

    fs.fill("filler");
    let (_, out) = cli(&ini, &["router", "add", &ids[1]]);
    let body = ns_testkit::eventually("the second router answers", T, || {
        get_in(nss[1].netns(), META).ok()
    });
    assert!(body.starts_with(&format!("router={} ", ids[1])), "{body}");
    let why = ns_testkit::eventually("status names the unsaved records", T, || {
        status_json(state)["records"]["save_error"]
            .as_str()
            .map(str::to_owned)
    });
    assert!(
        why.contains("records.json") && why.contains("No space left"),
        "{why} (the add said: {out})"
    );
    let p = proxy_json(state, &ids[1]).expect("in status");
    assert_eq!(p["state"], "running", "{p}");
    let pid1 = p["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .expect("pid");
    assert!(
        p["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("pid file")),
        "the missing pid file is named: {p}"
    );
    assert!(daemon.alive(), "the daemon runs on");

    std::fs::remove_file(state.join("filler")).expect("room again");
    let saved = ns_testkit::eventually("records.json saved by the retry", T, || {
        std::fs::read_to_string(state.join("records.json"))
            .ok()
            .filter(|t| t.contains(&format!("\"{}\"", ids[1])))
    });
    assert!(
        saved.contains(&format!("\"{}\"", ids[0])),
        "nothing lost: {saved}"
    );
    assert!(
        ns_testkit::wait_until(T, || status_json(state)["records"]["save_error"].is_null()),
        "the error clears: {}",
        status_json(state)
    );
    // The pid file is written too (a restarted spawner adopts the proxy by it) and the
    // status note goes.
    let p = ns_testkit::eventually("the pid file written once there is room", T, || {
        proxy_json(state, &ids[1]).filter(|p| p["last_error"].is_null())
    });
    assert_eq!(p["pid"].as_u64(), Some(u64::from(pid1)), "{p}");
    let file = std::fs::read_to_string(state.join("pids").join(format!("{}.pid", ids[1])))
        .expect("pid file");
    assert!(file.starts_with(&format!("{pid1} ")), "{file}");
    assert!(daemon.alive(), "the daemon runs on");
    get_in(nss[0].netns(), META).expect("the first router still answers");
}

/// The agent starts after the spawner, as its own user: the proxy follows its socket's owner.
#[test]
fn a_proxy_follows_an_agent_started_late_as_its_own_user() {
    agent_started_late_as_its_own_user(
        "a_proxy_follows_an_agent_started_late_as_its_own_user",
        false,
    );
}
