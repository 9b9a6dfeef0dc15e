//! Fault drills against the real binaries in real namespaces: the agent restarted (gracefully
//! and with kill -9, its socket file deleted and recreated) while proxies hold pooled
//! keep-alive connections to it. Root only.
use std::time::Duration;

use ns_e2e::client::{get, get_until_ok};
use ns_e2e::require_root;
use ns_e2e::world::{Modes, Upstream, World};

const PATH: &str = "/latest/meta-data/instance-id";
const BOUND: Duration = Duration::from_secs(15);

/// Whether `pid` is gone or a zombie (exited, not yet reaped by its parent, the harness).
fn exited(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

#[test]
fn agent_restart_under_pooled_keepalive_connections_costs_no_request() {
    if !require_root("agent_restart_under_pooled_keepalive_connections_costs_no_request") {
        return;
    }
    // Our agent signals keep-alive and the spawner runs the proxies with
    // `--agent-keepalive on` (the world's default for the built-in responder).
    let mut world = World::build("kafault", 120, Modes::ROUTER, Upstream::Builtin);
    world.wait_answering(PATH);
    let vm = world.vm("vm1").clone();
    let ok = get_until_ok(&vm.ns, PATH, BOUND);
    assert_eq!(ok.status, 200, "{}", ok.error);
    // The EC2 id derived from the vm's instance uuid.
    let want = ok.body;
    assert!(
        want.starts_with("i-") && vm.instance.starts_with(&want[2..]),
        "{want}"
    );

    for (round, graceful) in [(1, true), (2, false), (3, true)] {
        // Requests leave pooled connections to the agent in the proxy.
        for _ in 0..3 {
            assert_eq!(get(&vm.ns, PATH).status, 200);
        }
        let pid = world.agent.pid();
        if graceful {
            // systemctl restart: SIGTERM, the agent closes its idle connections and exits.
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            assert!(
                ns_e2e::wait_until(BOUND, || exited(pid)),
                "round {round}: the agent did not exit on SIGTERM with idle keep-alive \
                 connections open; its log:\n{}",
                world.agent.log()
            );
        }
        // A new agent: the socket file is removed and bound again (a new inode).
        world.agent.restart();
        let r = get(&vm.ns, PATH);
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, want.as_str()),
            "round {round} ({}): the first request after the agent restart: {}",
            if graceful { "SIGTERM" } else { "kill -9" },
            r.error
        );
    }
}

/// The same router announced twice in quick succession with different namespaces (an l3
/// agent that moved it and moved it back): one proxy, in the namespace announced last,
/// answering the VM; nothing left in the other namespace.
#[test]
fn router_announced_twice_quickly_with_different_netns_ends_in_the_last_one() {
    if !require_root("router_announced_twice_quickly_with_different_netns_ends_in_the_last_one") {
        return;
    }
    let mut world = World::build("twice", 121, Modes::ROUTER, Upstream::Builtin);
    world.wait_answering(PATH);
    let vm = world.vm("vm1").clone();
    let router = world.proxy_ids[0].clone();
    let home = format!("qrouter-{router}");
    let alt_name = format!("{}alt", ns_e2e::unique_prefix());
    let _alt = ns_e2e::topo::netns(&alt_name);
    for _ in 0..3 {
        world.spawner.router_add(&router, &alt_name);
        world.spawner.router_add(&router, &home);
    }
    let netns_of = |pid: i32| {
        let out = std::process::Command::new("ip")
            .args(["netns", "identify", &pid.to_string()])
            .output()
            .expect("ip netns identify");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    // The API answers before the passes are done: wait for the final state.
    let settled = ns_e2e::wait_until(BOUND, || {
        let pids = ns_e2e::procs::proxies_of(std::slice::from_ref(&router));
        pids.len() == 1
            && world.spawner.proxy_pid(&router) == Some(pids[0])
            && netns_of(pids[0]) == home
    });
    let pids = ns_e2e::procs::proxies_of(std::slice::from_ref(&router));
    assert!(
        settled,
        "one proxy for the router, in {home}: got {:?}; status:\n{}\nspawner log:\n{}",
        pids.iter().map(|&p| (p, netns_of(p))).collect::<Vec<_>>(),
        world.spawner.status(),
        world.spawner.log()
    );
    assert_eq!(get_until_ok(&vm.ns, PATH, BOUND).status, 200);
    let addrs = std::process::Command::new("ip")
        .args(["-n", &alt_name, "addr", "show", "dev", "lo"])
        .output()
        .expect("ip addr");
    let addrs = String::from_utf8_lossy(&addrs.stdout);
    assert!(
        !addrs.contains("169.254.169.254"),
        "metadata address left in {alt_name}:\n{addrs}"
    );
}

/// A namespace deleted while its proxy is being started (a router created and deleted at
/// once): no proxy is left behind, the record waits for its namespace, and a recreated
/// namespace gets its proxy.
#[test]
fn namespace_deleted_while_its_proxy_starts_leaves_nothing_behind() {
    if !require_root("namespace_deleted_while_its_proxy_starts_leaves_nothing_behind") {
        return;
    }
    let mut world = World::build("nsgone", 122, Modes::ROUTER, Upstream::Builtin);
    world.wait_answering(PATH);
    let ids = ns_e2e::Ids::new(122);
    let mut gone = Vec::new();
    for _ in 0..3 {
        let id = ids.next();
        let ns = format!("qrouter-{id}");
        let guard = ns_e2e::topo::netns(&ns);
        world.spawner.router_add(&id, &ns);
        drop(guard);
        gone.push(id);
    }
    let clean = ns_e2e::wait_until(BOUND, || ns_e2e::procs::proxies_of(&gone).is_empty());
    let status = world.spawner.status();
    assert!(
        clean,
        "proxies outlived their namespaces: {:?}; status:\n{status}\nspawner log:\n{}",
        ns_e2e::procs::proxies_of(&gone),
        world.spawner.log()
    );
    let waiting = ns_e2e::wait_until(BOUND, || {
        let st = world.spawner.status();
        gone.iter().all(|id| {
            st.lines()
                .any(|l| l.contains(id.as_str()) && l.contains("waiting"))
        })
    });
    assert!(
        waiting,
        "records wait for their namespaces:\n{}",
        world.spawner.status()
    );
    // The world's own proxy is untouched, and a namespace that comes back gets its proxy.
    assert_eq!(get_until_ok(&world.vm("vm1").ns, PATH, BOUND).status, 200);
    let back = format!("qrouter-{}", gone[0]);
    let _back = ns_e2e::topo::netns(&back);
    assert!(
        ns_e2e::wait_until(BOUND, || world.spawner.proxy_pid(&gone[0]).is_some()),
        "no proxy in the recreated {back}:\n{}",
        world.spawner.status()
    );
}

/// The command line Neutron's l3 agent built for the old `neutron-ns-metadata-proxy`, run
/// the way it ran it (`ip netns exec qrouter-R neutron-ns-metadata-proxy …`, log arguments
/// included): the command returns once the proxy listens, the VM gets its metadata from
/// the router's port 9697 through our agent, the log is in `--log-dir` under the uuid, and
/// SIGTERM by the pid file stops it.
#[test]
fn old_neutron_ns_metadata_proxy_command_line_serves_the_vm() {
    if !require_root("old_neutron_ns_metadata_proxy_command_line_serves_the_vm") {
        return;
    }
    let world = World::build("oldcli", 123, Modes::ROUTER, Upstream::Builtin);
    world.wait_answering(PATH);
    let vm = world.vm("vm1").clone();
    let router = world.proxy_ids[0].clone();
    let dir = world.dir.path().join("old");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let link = dir.join("neutron-ns-metadata-proxy");
    std::os::unix::fs::symlink(ns_e2e::bin_path("ns-metadata-proxy"), &link).expect("symlink");
    let pid_file = dir.join(format!("{router}.pid"));
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &format!("qrouter-{router}")])
        .arg(&link)
        .arg(format!("--pid_file={}", pid_file.display()))
        .arg(format!(
            "--metadata_proxy_socket={}",
            world.agent.socket().display()
        ))
        .arg(format!("--router_id={router}"))
        .arg(format!("--state_path={}", dir.display()))
        .arg("--metadata_port=9697")
        .args(["--metadata_proxy_user=root", "--metadata_proxy_group=root"])
        .arg("--debug")
        .arg(format!("--log-file=neutron-ns-metadata-proxy-{router}.log"))
        .arg(format!("--log-dir={}", dir.display()))
        .arg("--nometadata_proxy_watch_log")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the old command line");
    let pid: Option<i32> = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    // Stop it whatever happens below (it is a daemon: not the harness's child).
    struct Stop(Option<i32>);
    impl Drop for Stop {
        fn drop(&mut self) {
            if let Some(pid) = self.0 {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
        }
    }
    let stop = Stop(pid);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = stop.0.expect("pid file written");
    let gw = vm
        .ip
        .rsplit_once('.')
        .map(|(n, _)| format!("{n}.1"))
        .expect("ip");
    let r = ns_e2e::client::curl_with(&vm.ns, &format!("http://{gw}:9697{PATH}"), &[], 5);
    assert_eq!(r.status, 200, "{}", r.error);
    assert!(r.body.starts_with("i-"), "{}", r.body);
    // Access lines are written in batches, at the latest 50 ms after the request.
    let log_file = dir.join(format!("neutron-ns-metadata-proxy-{router}.log"));
    let log = || std::fs::read_to_string(&log_file).unwrap_or_default();
    assert!(
        ns_e2e::wait_until(BOUND, || log().contains("status=200")),
        "access line in the --log-dir log:\n{}",
        log()
    );
    drop(stop);
    assert!(
        ns_e2e::wait_until(BOUND, || !std::path::Path::new(&format!("/proc/{pid}"))
            .exists()),
        "the old-style proxy stops on SIGTERM"
    );
}
