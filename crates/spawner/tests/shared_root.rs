//! Root tests of the shared proxy model (`proxy_model = shared`, issue #20) with real
//! namespaces and the real `ns-metadata-proxy --shared-server`: routers served by one
//! process, a server killed under load, removal, a spawner killed and restarted taking
//! the running server and its sockets over, each namespace's counts in `/metrics` across
//! both, `check` on the server, a graceful server restart under a request loop, and the
//! server's line in `status` (text and JSON) with `restart --all` replacing it once, and a
//! failed server restart leaving the old server to be taken over, one that cannot be taken
//! over stopped and replaced, switching the model either way under a request loop with
//! nothing refused, and a server stopped with SIGSTOP past `ready_timeout` left alone,
//! keeping the namespace handed to it meanwhile, and a hung (frozen) server killed and
//! replaced on the spawner's copies of the listeners with nothing refused. Routers
//! are added explicitly (never auto-enabled: other tests' namespaces share `/run/netns`).
//! Each test has its own state dir and namespaces
//! (per-run prefix), removed on drop; the server is killed on drop (`TempDir::reaping`).

mod common;
mod root_common;

use std::time::Duration;

use common::*;
use ns_metadata_spawner::config::ProxyModel;
use ns_metadata_spawner::netns_platform::Namespaces;
use ns_metadata_spawner::supervisor::{State, Supervisor};
use ns_testkit::netns::{link, unique_prefix, TestNs};
use ns_testkit::proc::{alive, kill9};
use ns_testkit::require_root;
use ns_testkit::{eventually_async, ChildGuard, TempDir};
use root_common::*;

const T: Duration = Duration::from_secs(15);

fn shared_supervisor(dir: &TempDir) -> Supervisor<Namespaces> {
    supervisor(dir, |c| c.proxy_model = ProxyModel::Shared)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_serves_every_router_and_a_kill9_refuses_nothing() {
    if !require_root("one_server_serves_every_router_and_a_kill9_refuses_nothing") {
        return;
    }
    let dir = TempDir::new("sh-routers").reaping();
    let _agent = agent(dir.path());
    let p = unique_prefix();
    let (ids, nss) = routers(&p, "s", 3);
    let vm = TestNs::new(&format!("{p}vm")).expect("vm ns");
    let (_, vm_ip) = link(&nss[0], &vm, 111).await.expect("veth");
    let sup = shared_supervisor(&dir);
    for id in &ids {
        sup.put_router(router(id));
    }
    let pids: Vec<u32> = futures_pids(&sup, &ids).await;
    assert!(
        pids.iter().all(|&p| p == pids[0]),
        "one server for all: {pids:?}"
    );
    let server = pids[0];
    let body = answer(&vm).await.expect("vm gets an answer");
    assert_eq!(body, format!("router={} network=- xff={vm_ip}", ids[0]));
    for (id, ns) in ids.iter().zip(&nss) {
        let body = get_in(ns.netns(), META).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert!(body.starts_with(&format!("router={id} ")), "{body}");
    }

    // kill -9 under a request loop from the vm: some requests wait, none is refused.
    let load = RequestLoop::start(vm.netns());
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill9(server);
    let server2 = eventually_async("server restarted", T, || {
        status_of(&sup, &ids[0])
            .filter(|s| s.state == State::Running)
            .and_then(|s| s.pid)
            .filter(|&n| n != server)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failed) = load.finish();
    // A request in flight at the kill may be cut (its connection reset); a new connection
    // is never refused, since the listeners never close.
    assert!(
        failed.iter().all(|e| !e.contains("refused")) && failed.len() <= 1,
        "{ok} ok, failed: {failed:?}"
    );
    assert!(ok > 0);
    for id in &ids {
        assert_eq!(
            status_of(&sup, id).and_then(|s| s.pid),
            Some(server2),
            "{id} follows the restarted server"
        );
    }

    // Removal: the namespace stops answering and loses its address; the others go on.
    assert!(sup.remove_router(&ids[1]));
    eventually_async("removed router refuses", T, || {
        get_in(nss[1].netns(), META).is_err().then_some(())
    })
    .await;
    // The server stops serving first, then the namespace is torn down: polled.
    let nl = ns_netns::Netlink::open(nss[1].netns())
        .await
        .expect("netlink");
    let deadline = std::time::Instant::now() + T;
    let addrs = loop {
        let addrs = nl.addresses("lo").await.expect("addresses");
        let gone = !addrs
            .iter()
            .any(|(a, _)| a.to_string() == "169.254.169.254");
        if gone || std::time::Instant::now() > deadline {
            break addrs;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        !addrs
            .iter()
            .any(|(a, _)| a.to_string() == "169.254.169.254"),
        "{addrs:?}"
    );
    assert!(get_in(nss[2].netns(), META).is_ok());
    assert!(alive(server2), "the server keeps serving the rest");

    // --stop-proxies-on-exit: the server too, with its pid file and control socket.
    sup.stop_all().await;
    eventually_async("server stopped", T, || (!alive(server2)).then_some(())).await;
    assert!(!dir.path().join("shared-server.pid").exists());
    assert!(!dir.path().join("shared.sock").exists());
}

async fn futures_pids(sup: &Supervisor<Namespaces>, ids: &[String]) -> Vec<u32> {
    let mut pids = Vec::new();
    for id in ids {
        pids.push(running_pid(sup, id, T).await);
    }
    pids
}

/// The daemon's config for the shared model. Routers are added by the test, never enabled
/// from `/run/netns`: other tests' namespaces live there too.
fn shared_ini(dir: &std::path::Path) -> std::path::PathBuf {
    let ini = write_ini(dir, "");
    let text = std::fs::read_to_string(&ini).expect("ini");
    std::fs::write(&ini, format!("{text}proxy_model = shared\n")).expect("ini");
    ini
}

/// Wait until router `id`'s namespace `ns` answers, as router `id`.
fn answered_for(ns: &TestNs, id: &str) {
    let body = ns_testkit::eventually(id, T, || get_in(ns.netns(), META).ok());
    assert!(body.starts_with(&format!("router={id} ")), "{body}");
}

/// Every router `ids[i]` answers in `nss[i]`, served by the server `pid`.
fn all_served_by(dir: &std::path::Path, ids: &[String], nss: &[TestNs], pid: u32) {
    for (id, ns) in ids.iter().zip(nss) {
        answered_for(ns, id);
        assert_eq!(pid_of(dir, id), Some(pid), "{id} follows the new server");
    }
}

/// The pid the shared server's pid file names.
fn server_pid(dir: &std::path::Path) -> Option<u32> {
    shard_pid(dir, 0)
}

/// A spawner daemon of the shared model (`ini` in `dir`) serving two routers tagged `tag`,
/// both answering: the ini, the daemon, the ids and namespaces, and the server's pid.
fn serving_two_routers(
    dir: &std::path::Path,
    tag: &str,
) -> (
    std::path::PathBuf,
    ChildGuard,
    Vec<String>,
    Vec<TestNs>,
    u32,
) {
    let (ids, nss) = routers(&unique_prefix(), tag, 2);
    let ini = shared_ini(dir);
    let daemon = start_daemon(dir, &ini, &[]);
    for id in &ids {
        add_router(&ini, id);
    }
    let server = ns_testkit::eventually("server pid file", T, || server_pid(dir));
    for (id, ns) in ids.iter().zip(&nss) {
        answered_for(ns, id);
    }
    (ini, daemon, ids, nss, server)
}

/// A daemon of the shared model in `dir` serving two routers tagged `tag`, then killed -9
/// (its server runs on): the ini, the ids and namespaces, and the server's pid.
fn two_routers_and_a_killed_spawner(
    dir: &std::path::Path,
    tag: &str,
) -> (std::path::PathBuf, Vec<String>, Vec<TestNs>, u32) {
    let (ini, mut daemon, ids, nss, server) = serving_two_routers(dir, tag);
    kill9(daemon.pid());
    let _ = daemon.0.wait();
    (ini, ids, nss, server)
}

#[test]
fn a_restarted_spawner_takes_the_running_server_and_its_sockets_over() {
    if !require_root("a_restarted_spawner_takes_the_running_server_and_its_sockets_over") {
        return;
    }
    let dir = TempDir::new("sh-takeover").reaping();
    let _agent = agent(dir.path());
    let (ini, ids, nss, server) = two_routers_and_a_killed_spawner(dir.path(), "t");
    let pid_file = dir.path().join("shared-server.pid");
    assert!(alive(server), "the server outlives its spawner");
    assert!(get_in(nss[0].netns(), META).is_ok(), "and serves meanwhile");

    let _daemon2 = start_daemon(dir.path(), &ini, &[]);
    // The same server serves both namespaces with the same sockets: never restarted.
    for (id, ns) in ids.iter().zip(&nss) {
        answered_for(ns, id);
    }
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
    assert!(log.contains("took over the running shared server"), "{log}");
    assert!(alive(server), "taken over, not restarted");
    let now = std::fs::read_to_string(&pid_file).expect("pid file");
    assert!(now.starts_with(&format!("{server} ")), "{now}");
    let adopted = |ini: &std::path::Path| {
        let (_, out) = cli(ini, &["status", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        v["servers"][0]["adopted"].clone()
    };
    assert_eq!(adopted(&ini), serde_json::json!(true));
    // Replaced by this spawner: no longer shown as taken over.
    let (ok, out) = cli(&ini, &["restart", "--all"]);
    assert!(ok, "{out}");
    assert_eq!(adopted(&ini), serde_json::json!(false));
}

/// A previous run's server that is provably ours but cannot be taken over (here its control
/// socket is gone; a broken or hostile answer to `list` is the same) is stopped, not left
/// holding every namespace's port-80 sockets unmanaged where no new server could bind them:
/// a new server serves both routers.
#[test]
fn a_server_that_cannot_be_taken_over_is_stopped_and_replaced() {
    if !require_root("a_server_that_cannot_be_taken_over_is_stopped_and_replaced") {
        return;
    }
    let dir = TempDir::new("sh-untakeable").reaping();
    let _agent = agent(dir.path());
    let (ini, ids, nss, server) = two_routers_and_a_killed_spawner(dir.path(), "u");
    std::fs::remove_file(dir.path().join("shared.sock")).expect("remove its control socket");

    let _daemon2 = start_daemon(dir.path(), &ini, &[]);
    assert!(
        ns_testkit::wait_until(T, || !alive(server)),
        "the server that could not be taken over still runs"
    );
    let new = ns_testkit::eventually("a new server", T, || {
        server_pid(dir.path()).filter(|p| *p != server)
    });
    for (id, ns) in ids.iter().zip(&nss) {
        answered_for(ns, id);
    }
    assert!(alive(new));
}

/// One raw request from inside `ns`: the status answered (0: none).
fn status_in(ns: &ns_netns::Netns, raw: &'static [u8]) -> u16 {
    use ns_testkit::http::Blocking;
    ns.run(move || {
        let mut c = Blocking::tcp(META, Duration::from_secs(2)).ok()?;
        c.send(raw).ok()?;
        Some(c.read(false, Duration::from_secs(5))?.status)
    })
    .ok()
    .flatten()
    .unwrap_or(0)
}

const GET: &[u8] =
    b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n";

/// The daemon's `/metrics`: the value of every `ns_metadata_proxy_*` series whose labels hold
/// `labels`, by name and extra labels.
fn proxy_series(dir: &std::path::Path, labels: &str) -> std::collections::BTreeMap<String, f64> {
    scrape(dir)
        .lines()
        .filter(|l| l.starts_with("ns_metadata_proxy_") && l.contains(labels))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.replace(labels, ""), v.parse().ok()?))
        })
        .collect()
}

#[test]
fn shared_namespaces_are_counted_in_metrics_across_a_server_kill9_and_a_takeover() {
    if !require_root(
        "shared_namespaces_are_counted_in_metrics_across_a_server_kill9_and_a_takeover",
    ) {
        return;
    }
    let dir = TempDir::new("sh-metrics").reaping();
    let agent_sock = dir.path().join("agent.sock");
    let ok_agent = agent(dir.path());
    let id = format!("{}m", unique_prefix());
    let netns = format!("qrouter-{id}");
    let rns = TestNs::new(&netns).expect("router ns");
    let ns = rns.netns();
    let ini = shared_ini(dir.path());
    let mut daemon = start_daemon(dir.path(), &ini, &[]);
    add_router(&ini, &id);
    let server_pid = || server_pid(dir.path());
    // Known traffic: the first answer is awaited, then 3 more 200s, a 400, a 503.
    let mut ok = 0u64;
    ns_testkit::eventually("served", T, || (status_in(ns, GET) == 200).then_some(()));
    ok += 1;
    for _ in 0..3 {
        assert_eq!(status_in(ns, GET), 200);
        ok += 1;
    }
    assert_eq!(status_in(ns, b"NOT HTTP AT ALL\r\n\r\n"), 400);
    drop(ok_agent);
    let _ = std::fs::remove_file(&agent_sock);
    assert_eq!(status_in(ns, GET), 503);
    let _agent = agent(dir.path());

    let labels = format!("netns=\"{netns}\",kind=\"router\",id=\"{id}\"");
    // The counts land after each answer is written: polled until they are all there.
    let want = |ok: u64| {
        let matches = |got: &std::collections::BTreeMap<String, f64>| {
            [
                ("ns_metadata_proxy_requests_total{,class=\"2xx\"}", ok),
                ("ns_metadata_proxy_requests_total{,class=\"4xx\"}", 1),
                ("ns_metadata_proxy_requests_total{,class=\"5xx\"}", 1),
                ("ns_metadata_proxy_errors_total{,code=\"400\"}", 1),
                ("ns_metadata_proxy_errors_total{,code=\"503\"}", 1),
                ("ns_metadata_proxy_connections_open{}", 0),
            ]
            .iter()
            .all(|(series, n)| got.get(*series) == Some(&(*n as f64)))
                // A client that gave up while its connection waited for a new server still
                // counts as accepted.
                && got
                    .get("ns_metadata_proxy_connections_accepted_total{}")
                    .is_some_and(|&a| a >= (ok + 2) as f64)
        };
        let mut last = Default::default();
        let found = ns_testkit::wait_until(T, || {
            last = proxy_series(dir.path(), &labels);
            matches(&last)
        });
        assert!(
            found,
            "{ok} 200s, a 400 and a 503 wanted in /metrics: {last:?}\n{}",
            std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default()
        );
    };
    want(ok);
    let text = scrape(dir.path());
    ns_contract::metrics::check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(
        text.contains("\nns_metadata_shared_server_up{shard=\"0\"} 1\n"),
        "{text}"
    );

    // The server killed: a new one counts on into the same block.
    let first = server_pid().expect("server pid");
    kill9(first);
    ns_testkit::eventually("a new server", T, || {
        server_pid().filter(|&p| p != first && alive(p))
    });
    ns_testkit::eventually("served again", T, || {
        (status_in(ns, GET) == 200).then_some(())
    });
    ok += 1;
    want(ok);

    // The spawner killed and restarted: it takes the server over, the counts go on.
    kill9(daemon.pid());
    let _ = daemon.0.wait();
    let _daemon2 = start_daemon(dir.path(), &ini, &[]);
    ns_testkit::eventually("taken over", T, || {
        let log = std::fs::read_to_string(dir.path().join("daemon.log")).ok()?;
        log.contains("took over the running shared server")
            .then_some(())
    });
    want(ok);
    assert_eq!(status_in(ns, GET), 200);
    want(ok + 1);
    // Counted in a record of the server's slab, not a block file of its own (issue #20).
    let stats = dir.path().join("stats");
    assert!(stats.join("shared.slab").is_file());
    assert!(!stats.join(format!("{id}.stats")).exists());
}

#[test]
fn check_knows_the_shared_server_and_names_what_is_wrong() {
    if !require_root("check_knows_the_shared_server_and_names_what_is_wrong") {
        return;
    }
    let dir = TempDir::new("sh-check").reaping();
    let _agent = agent(dir.path());
    let id = format!("{}c", unique_prefix());
    let netns = format!("qrouter-{id}");
    let rns = TestNs::new(&netns).expect("router ns");
    let ini = shared_ini(dir.path());
    let _daemon = start_daemon(dir.path(), &ini, &[]);
    add_router(&ini, &id);
    ns_testkit::eventually("served", T, || get_in(rns.netns(), META).ok());
    // Served by a process in no namespace of its own, with the sockets it holds: healthy.
    let (ok, out) = cli(&ini, &["check"]);
    assert!(ok && out.starts_with("ok: 1 proxies"), "{out}");

    // A stranger on port 80 in the namespace: named, with the server's pid.
    let server = server_pid(dir.path()).expect("server pid");
    let stranger = rns
        .netns()
        .run(|| std::net::TcpListener::bind("127.0.0.1:80"))
        .expect("enter")
        .expect("bind 127.0.0.1:80");
    let (ok, out) = cli(&ini, &["check"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "{netns}: something besides shared server pid {server} listens on port 80"
        )),
        "{out}"
    );
    assert_eq!(out.lines().count(), 1, "one line per problem: {out}");
    drop(stranger);

    // A pid file that does not prove the server (another start time): said, one line.
    let pid_file = dir.path().join("shared-server.pid");
    let good = std::fs::read_to_string(&pid_file).expect("pid file");
    std::fs::write(&pid_file, format!("{server} 1\n")).expect("forge");
    let (ok, out) = cli(&ini, &["check"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("{netns}: shared server pid {server}"))
            && out.contains("recycled pid"),
        "{out}"
    );
    std::fs::write(&pid_file, good).expect("restore");
    let (ok, out) = cli(&ini, &["check"]);
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_server_restart_loses_no_request() {
    if !require_root("a_graceful_server_restart_loses_no_request") {
        return;
    }
    let dir = TempDir::new("sh-replace").reaping();
    let _agent = agent(dir.path());
    let (ids, nss) = routers(&unique_prefix(), "g", 2);
    let sup = shared_supervisor(&dir);
    for id in &ids {
        sup.put_router(router(id));
    }
    let old = futures_pids(&sup, &ids).await[0];
    let server = sup.shared_server().expect("the shared server");

    // A request loop from inside the first namespace across the restart: every request
    // answered with a 200.
    let load = RequestLoop::start(nss[0].netns());
    // Requests before and after, observed rather than slept on.
    eventually_async("answers before", T, || (load.answered() > 0).then_some(())).await;
    let new = server.replace().await.expect("replaced");
    assert_ne!(new, old);
    eventually_async("the old server drained and exited", T, || {
        (!alive(old)).then_some(())
    })
    .await;
    let before = load.answered();
    eventually_async("answers after", T, || {
        (load.answered() > before).then_some(())
    })
    .await;
    let (ok, failed) = load.finish();
    assert!(failed.is_empty(), "{ok} ok, lost: {failed:?}");
    assert!(ok > 0);
    for (id, ns) in ids.iter().zip(&nss) {
        let body = get_in(ns.netns(), META).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert!(body.starts_with(&format!("router={id} ")), "{body}");
        assert_eq!(
            status_of(&sup, id).and_then(|s| s.pid),
            Some(new),
            "{id} follows the new server"
        );
    }
    let recorded = server_pid(dir.path());
    assert_eq!(recorded, Some(new), "the pid file names the new server");
    sup.stop_all().await;
    eventually_async("server stopped", T, || (!alive(new)).then_some(())).await;
}

#[test]
fn status_shows_the_server_and_restart_all_replaces_it_once() {
    if !require_root("status_shows_the_server_and_restart_all_replaces_it_once") {
        return;
    }
    let dir = TempDir::new("sh-status").reaping();
    let _agent = agent(dir.path());
    let p = unique_prefix();
    let (ids, nss) = routers(&p, "s", 3);
    let ini = shared_ini(dir.path());
    let _daemon = start_daemon(dir.path(), &ini, &[]);
    for id in &ids {
        add_router(&ini, id);
    }
    for (id, ns) in ids.iter().zip(&nss) {
        answered_for(ns, id);
    }
    let server = server_pid(dir.path()).expect("server pid");

    // Text: the server's own line under the proxies' table.
    let (code, out) = cli_code(&ini, &["status"]);
    assert_eq!(code, Some(0), "{out}");
    let line = out
        .lines()
        .skip_while(|l| !l.starts_with("SHARED SERVER"))
        .nth(1)
        .unwrap_or_else(|| panic!("no server line: {out}"));
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cells[..5],
        ["0", "running", &server.to_string(), "3", "0"],
        "{out}"
    );
    // JSON: the same under `servers`.
    let (code, out) = cli_code(&ini, &["status", "--json"]);
    assert_eq!(code, Some(0), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let s = &v["servers"][0];
    assert_eq!(
        (&s["shard"], &s["state"], &s["pid"], &s["namespaces"]),
        (
            &serde_json::json!(0),
            &serde_json::json!("running"),
            &serde_json::json!(server),
            &serde_json::json!(3)
        ),
        "{out}"
    );
    assert_eq!(v["servers"].as_array().map(Vec::len), Some(1), "{out}");

    // restart --all: the server once, not once per namespace.
    let (code, out) = cli_code(&ini, &["restart", "--all"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out.matches("restarted shared server").count(), 1, "{out}");
    assert!(
        out.contains(&format!("restarted shared server 0: pid {server} -> "))
            && out.contains("3 namespaces handed to the new server")
            && out.ends_with("1 shared servers restarted, 0 failed\n"),
        "{out}"
    );
    let new = server_pid(dir.path()).expect("new server pid");
    assert_ne!(new, server);
    ns_testkit::eventually("the old server gone", T, || (!alive(server)).then_some(()));
    for (id, ns) in ids.iter().zip(&nss) {
        let body = get_in(ns.netns(), META).expect("answered by the new server");
        assert!(body.starts_with(&format!("router={id} ")), "{body}");
    }
    let (code, out) = cli_code(&ini, &["status", "--json"]);
    assert_eq!(code, Some(0), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["servers"][0]["pid"], serde_json::json!(new), "{out}");
    // A graceful restart is not counted as a death.
    assert_eq!(v["servers"][0]["restarts"], serde_json::json!(0), "{out}");

    // kill -9: counted, the reason kept, running again.
    kill9(new);
    let why = ns_testkit::eventually("restarted after kill -9", T, || {
        let (_, out) = cli_code(&ini, &["status", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        let s = &v["servers"][0];
        (s["state"] == "running" && s["restarts"] == 1 && s["pid"] != serde_json::json!(new))
            .then_some(s["last_error"].as_str().unwrap_or_default().to_owned())
    });
    assert!(
        why.starts_with("shared server ") && why.contains('9'),
        "{why}"
    );
}

#[test]
fn a_failed_server_restart_leaves_the_old_server_in_place_for_a_takeover() {
    use std::os::unix::fs::PermissionsExt as _;
    if !require_root("a_failed_server_restart_leaves_the_old_server_in_place_for_a_takeover") {
        return;
    }
    let dir = TempDir::new("sh-replace-fails").reaping();
    let _agent = agent(dir.path());
    let id = format!("{}f", unique_prefix());
    let rns = TestNs::new(&format!("qrouter-{id}")).expect("router ns");
    // Our own copy of the proxy binary, so the test can make the next start fail.
    let proxy = dir.path().join("proxy");
    std::fs::copy(ns_testkit::bin_path("ns-metadata-proxy"), &proxy).expect("copy proxy");
    let ini = shared_ini(dir.path());
    let text = std::fs::read_to_string(&ini).expect("ini");
    let text = text
        .lines()
        .map(|l| match l.starts_with("proxy_binary") {
            true => format!("proxy_binary = {}", proxy.display()),
            false => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&ini, format!("{text}\n")).expect("ini");
    let mut daemon = start_daemon(dir.path(), &ini, &[]);
    add_router(&ini, &id);
    answered_for(&rns, &id);
    let server = server_pid(dir.path()).expect("server pid");
    let pid_file = std::fs::read_to_string(dir.path().join("shared-server.pid")).expect("pid");

    // The new server cannot start (not executable): the restart fails, the old one serves.
    std::fs::set_permissions(&proxy, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (code, out) = cli_code(&ini, &["restart", "--all"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("shared server 0") && out.contains("the old server goes on serving"),
        "{out}"
    );
    assert!(alive(server));
    assert!(
        get_in(rns.netns(), META).is_ok(),
        "the old server still answers"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("shared-server.pid")).expect("pid"),
        pid_file,
        "the pid file still names the old server"
    );
    assert!(
        !dir.path().join("shared.sock.next").exists(),
        "the new server's control socket is removed"
    );

    // So a restarted spawner takes the old server over (its control socket path is its own).
    std::fs::set_permissions(&proxy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    kill9(daemon.pid());
    let _ = daemon.0.wait();
    let _daemon2 = start_daemon(dir.path(), &ini, &[]);
    let (code, out) = ns_testkit::eventually("running", T, || {
        let (code, out) = cli_code(&ini, &["status", "--json"]);
        (code == Some(0)).then_some((code, out))
    });
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        (&v["servers"][0]["pid"], &v["servers"][0]["adopted"]),
        (&serde_json::json!(server), &serde_json::json!(true)),
        "{code:?} {out}\n{log}"
    );
    assert!(log.contains("took over the running shared server"), "{log}");
    assert!(get_in(rns.netns(), META).is_ok());
}

/// The pid shard `shard`'s pid file names.
fn shard_pid(dir: &std::path::Path, shard: usize) -> Option<u32> {
    let name = ns_metadata_spawner::shared_model::ShardFiles::of(shard).pid;
    let text = std::fs::read_to_string(dir.join(name)).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

#[test]
fn two_shards_serve_apart_and_are_both_taken_over() {
    use ns_metadata_spawner::shared_model::shard_of;
    if !require_root("two_shards_serve_apart_and_are_both_taken_over") {
        return;
    }
    let dir = TempDir::new("sh-shards").reaping();
    let _agent = agent(dir.path());
    let p = unique_prefix();
    // Two routers on each shard (the hash decides; the test picks ids until it has them).
    let mut ids: [Vec<String>; 2] = [vec![], vec![]];
    for i in 0.. {
        let id = format!("{p}h{i}");
        let shard = shard_of(&id, 2);
        if ids[shard].len() < 2 {
            ids[shard].push(id);
        }
        if ids.iter().all(|v| v.len() == 2) {
            break;
        }
    }
    let all: Vec<(usize, String)> = (0..2)
        .flat_map(|s| ids[s].iter().map(move |id| (s, id.clone())))
        .collect();
    let nss: Vec<TestNs> = all
        .iter()
        .map(|(_, id)| TestNs::new(&format!("qrouter-{id}")).expect("router ns"))
        .collect();
    let ini = shared_ini(dir.path());
    let text = std::fs::read_to_string(&ini).expect("ini");
    std::fs::write(&ini, format!("{text}shared_servers = 2\n")).expect("ini");
    let mut daemon = start_daemon(dir.path(), &ini, &[]);
    for (_, id) in &all {
        add_router(&ini, id);
    }
    let answers = |nss: &[TestNs]| {
        for ((_, id), ns) in all.iter().zip(nss) {
            answered_for(ns, id);
        }
    };
    answers(&nss);
    let pids = [
        shard_pid(dir.path(), 0).expect("shard 0"),
        shard_pid(dir.path(), 1).expect("shard 1"),
    ];
    assert_ne!(pids[0], pids[1]);
    // Each namespace runs with its own shard's pid; status has a line per shard.
    let (code, out) = cli_code(&ini, &["status", "--json"]);
    assert_eq!(code, Some(0), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    for (shard, id) in &all {
        let proxy = v["proxies"]
            .as_array()
            .and_then(|l| l.iter().find(|p| p["id"] == id.as_str()))
            .unwrap_or_else(|| panic!("{id}: {out}"));
        assert_eq!(proxy["pid"], serde_json::json!(pids[*shard]), "{id}: {out}");
    }
    for shard in 0..2 {
        let s = &v["servers"][shard];
        assert_eq!(
            (&s["shard"], &s["pid"], &s["namespaces"]),
            (
                &serde_json::json!(shard),
                &serde_json::json!(pids[shard]),
                &serde_json::json!(2)
            ),
            "{out}"
        );
    }
    let metrics = scrape(dir.path());
    assert!(
        metrics.contains("\nns_metadata_shared_server_up{shard=\"1\"} 1\n")
            && metrics.contains("\nns_metadata_shared_server_namespaces{shard=\"0\"} 2\n"),
        "{metrics}"
    );

    // kill -9 of shard 1: shard 0's namespaces answer throughout, its server untouched.
    kill9(pids[1]);
    for ((shard, _), ns) in all.iter().zip(&nss) {
        if *shard == 0 {
            assert!(get_in(ns.netns(), META).is_ok(), "shard 0 disturbed");
        }
    }
    let restarted = ns_testkit::eventually("shard 1 restarted", T, || {
        shard_pid(dir.path(), 1).filter(|p| *p != pids[1])
    });
    answers(&nss);
    assert!(alive(pids[0]));
    assert_eq!(shard_pid(dir.path(), 0), Some(pids[0]));

    // A restarted spawner takes both over, each with its own namespaces.
    kill9(daemon.pid());
    let _ = daemon.0.wait();
    let mut daemon2 = start_daemon(dir.path(), &ini, &[]);
    answers(&nss);
    let (code, out) = ns_testkit::eventually("running", T, || {
        let (code, out) = cli_code(&ini, &["status", "--json"]);
        (code == Some(0)).then_some((code, out))
    });
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    for (shard, pid) in [(0, pids[0]), (1, restarted)] {
        let s = &v["servers"][shard];
        assert_eq!(
            (&s["pid"], &s["adopted"], &s["namespaces"]),
            (
                &serde_json::json!(pid),
                &serde_json::json!(true),
                &serde_json::json!(2)
            ),
            "{code:?} {out}"
        );
    }
    assert!(
        alive(pids[0]) && alive(restarted),
        "taken over, not restarted"
    );

    // shared_servers lowered to 1: the next spawner takes shard 1's server over only to move
    // its namespaces to shard 0 (the sockets, not fresh binds: shard 1 still holds them),
    // then stops it and removes its files.
    kill9(daemon2.pid());
    let _ = daemon2.0.wait();
    std::fs::write(&ini, format!("{text}shared_servers = 1\n")).expect("ini");
    let _daemon3 = start_daemon(dir.path(), &ini, &[]);
    ns_testkit::eventually("shard 1's server stopped", T, || {
        (!alive(restarted)).then_some(())
    });
    answers(&nss);
    assert_eq!(shard_pid(dir.path(), 1), None, "shard 1's pid file removed");
    assert!(
        !dir.path()
            .join(ns_metadata_spawner::shared_model::ShardFiles::of(1).control)
            .exists(),
        "shard 1's control socket removed"
    );
    let out = ns_testkit::eventually("every namespace on shard 0", T, || {
        let (code, out) = cli_code(&ini, &["status", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        let on_0 = v["proxies"]
            .as_array()?
            .iter()
            .all(|p| p["state"] == "running" && p["pid"] == serde_json::json!(pids[0]));
        (code == Some(0) && on_0 && v["servers"].as_array()?.len() == 1).then_some(out)
    });
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["servers"][0]["namespaces"], serde_json::json!(4), "{out}");
    assert!(alive(pids[0]), "shard 0 taken over, not restarted");
}

/// Switching `proxy_model` back to per-namespace: the next spawner takes the shared server
/// over only to hand each namespace's sockets to its new proxy (nothing refused meanwhile),
/// then stops it and removes its files.
/// The pids `status --json` shows running, once `ok` holds for them.
fn running_pids(ini: &std::path::Path, ok: impl Fn(&[u32]) -> bool) -> Vec<u32> {
    ns_testkit::eventually("the proxies running", T, || {
        let (code, out) = cli_code(ini, &["status", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        let pids: Vec<u32> = v["proxies"]
            .as_array()?
            .iter()
            .filter(|p| p["state"] == "running")
            .filter_map(|p| p["pid"].as_u64().and_then(|p| u32::try_from(p).ok()))
            .collect();
        (code == Some(0) && ok(&pids)).then_some(pids)
    })
}

#[test]
fn switching_back_to_per_namespace_hands_the_servers_sockets_to_the_proxies() {
    if !require_root("switching_back_to_per_namespace_hands_the_servers_sockets_to_the_proxies") {
        return;
    }
    let dir = TempDir::new("sh-back").reaping();
    let _agent = agent(dir.path());
    let (ini, ids, nss, server) = two_routers_and_a_killed_spawner(dir.path(), "b");
    let text = std::fs::read_to_string(&ini).expect("ini");
    std::fs::write(
        &ini,
        text.replace("proxy_model = shared", "proxy_model = per-namespace"),
    )
    .expect("ini");

    // Requests into the first namespace all through the switch.
    let load = RequestLoop::start(nss[0].netns());
    let _daemon2 = start_daemon(dir.path(), &ini, &[]);
    ns_testkit::eventually("the shared server stopped", T, || {
        (!alive(server)).then_some(())
    });
    for (id, ns) in ids.iter().zip(&nss) {
        answered_for(ns, id);
    }
    // Every router has a proxy of its own.
    running_pids(&ini, |p| {
        p.len() == 2 && p[0] != p[1] && p.iter().all(|&p| p != server && alive(p))
    });
    std::thread::sleep(Duration::from_millis(200));
    let (ok, failed) = load.finish();
    assert!(
        ok > 0 && failed.iter().all(|e| !e.contains("refused")) && failed.len() <= 1,
        "{ok} ok, failed: {failed:?}"
    );
    assert_eq!(server_pid(dir.path()), None, "its pid file removed");
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
    assert!(
        log.contains("taken from a shared server this run does not keep"),
        "the proxies got the server's sockets, not fresh binds: {log}"
    );
}

#[test]
fn switching_to_the_shared_model_hands_the_proxies_sockets_to_the_server() {
    if !require_root("switching_to_the_shared_model_hands_the_proxies_sockets_to_the_server") {
        return;
    }
    let dir = TempDir::new("sh-to").reaping();
    let _agent = agent(dir.path());
    let (ids, nss) = routers(&unique_prefix(), "t", 2);
    let ini = write_ini(dir.path(), "");
    let mut daemon = start_daemon(dir.path(), &ini, &[]);
    for id in &ids {
        add_router(&ini, id);
    }
    for (id, ns) in ids.iter().zip(&nss) {
        answered_for(ns, id);
    }
    let proxies = running_pids(&ini, |p| p.len() == 2 && p[0] != p[1]);
    // The spawner goes away (its proxies outlive it) and comes back with the shared model.
    kill9(daemon.pid());
    let _ = daemon.0.wait();
    let text = std::fs::read_to_string(&ini).expect("ini");
    std::fs::write(&ini, format!("{text}proxy_model = shared\n")).expect("ini");

    // Requests into the first namespace all through the switch.
    let load = RequestLoop::start(nss[0].netns());
    let _daemon2 = start_daemon(dir.path(), &ini, &[]);
    let server = ns_testkit::eventually("server pid file", T, || server_pid(dir.path()));
    ns_testkit::eventually("the namespaces' own proxies stopped", T, || {
        proxies.iter().all(|&p| !alive(p)).then_some(())
    });
    for (id, ns) in ids.iter().zip(&nss) {
        answered_for(ns, id);
    }
    running_pids(&ini, |p| p.len() == 2 && p.iter().all(|&p| p == server));
    std::thread::sleep(Duration::from_millis(200));
    let (ok, failed) = load.finish();
    assert!(
        ok > 0 && failed.iter().all(|e| !e.contains("refused")) && failed.len() <= 1,
        "{ok} ok, failed: {failed:?}"
    );
    let pids = std::fs::read_dir(dir.path().join("pids"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(pids, 0, "the proxies' pid files removed");
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
    assert!(
        log.contains("own proxy's sockets go to the shared server"),
        "the server got the proxies' sockets, not fresh binds: {log}"
    );
}

/// The shared server stopped (SIGSTOP) for longer than the spawner waits on it: an `add`
/// through its control socket goes unanswered for `ready_timeout` (2 s here); the server,
/// alive and provably ours, is neither stopped nor replaced, and keeps the namespace whose
/// sockets the message carried (the log says so), and `check` says it is stopped; a router
/// removed meanwhile is removed once it runs. After SIGCONT the same process serves the old
/// namespaces and the one added meanwhile, and its control connection stays in step (late
/// answers are read first): a router removed and another added later are served as asked,
/// and `status` shows no error. Before, the namespace was served but unknown to the
/// spawner, which kept failing to bind its address (`Address already in use`).
#[test]
fn a_stopped_server_is_left_alone_and_serves_again_after_sigcont() {
    if !require_root("a_stopped_server_is_left_alone_and_serves_again_after_sigcont") {
        return;
    }
    let dir = TempDir::new("shared-sigstop").reaping();
    let _agent = agent(dir.path());
    let (ids, nss) = routers(&unique_prefix(), "sg", 4);
    let ini = with_hang_timeout(&shared_ini(dir.path()));
    let text = std::fs::read_to_string(&ini).expect("ini");
    std::fs::write(&ini, format!("{text}ready_timeout = 2\n")).expect("ini");
    let _daemon = start_daemon(dir.path(), &ini, &[]);
    for id in &ids[..2] {
        add_router(&ini, id);
    }
    let server = ns_testkit::eventually("server pid file", T, || server_pid(dir.path()));
    for (id, ns) in ids.iter().zip(&nss).take(2) {
        answered_for(ns, id);
    }

    ns_testkit::proc::signal(server, "STOP");
    let resume = Continue(server);
    add_router(&ini, &ids[2]);
    // Its add goes unanswered for ready_timeout; the sockets went with it, so the namespace
    // is the stopped server's (served once it runs), not a start to retry.
    let p = ns_testkit::eventually("the namespace handed to the stopped server", T, || {
        proxy_json(dir.path(), &ids[2]).filter(|p| p["state"] == "running")
    });
    assert_eq!(p["pid"].as_u64(), Some(u64::from(server)), "{p}");
    // Its heartbeat is still for longer than hang_timeout: the watchdog saw it stopped.
    logged(dir.path(), "left alone");
    assert!(
        stopped(server) && server_pid(dir.path()) == Some(server),
        "the stopped server is left as it is"
    );
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
    assert!(
        log.contains("did not answer in time"),
        "the spawner says why: {log}"
    );
    let (code, out) = cli_code(&ini, &["check"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("shared server pid {server} is stopped")),
        "check says why: {out}"
    );
    // A router removed meanwhile: its `remove` goes out too, for when the server runs.
    let (ok, out) = cli(&ini, &["router", "remove", &ids[1]]);
    assert!(ok, "router remove: {out}");

    drop(resume);
    answered_for(&nss[0], &ids[0]);
    answered_for(&nss[2], &ids[2]);
    // Its address goes with the teardown anyway; that the server let its sockets go shows
    // the `remove` reached it.
    let port80 = |ns: &TestNs| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", ns.name(), "ss", "-Hltn", "sport = :80"])
            .output()
            .expect("ss");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert!(
        ns_testkit::wait_until(T, || port80(&nss[1]).is_empty()),
        "the router removed while the server was stopped is no longer served: {}",
        port80(&nss[1])
    );
    assert!(!port80(&nss[0]).is_empty(), "the others are");
    let (ok, out) = cli(&ini, &["router", "remove", &ids[0]]);
    assert!(ok, "router remove: {out}");
    assert!(
        ns_testkit::wait_until(T, || get_in(nss[0].netns(), META).is_err()),
        "a removed router's namespace is no longer served"
    );
    add_router(&ini, &ids[3]);
    answered_for(&nss[3], &ids[3]);
    for id in &ids[2..] {
        let p = ns_testkit::eventually(id, T, || {
            proxy_json(dir.path(), id).filter(|p| p["state"] == "running")
        });
        assert!(p["last_error"].is_null(), "{id}: {p}");
        assert_eq!(p["pid"].as_u64(), Some(u64::from(server)), "{id}: {p}");
    }
    assert_eq!(
        server_pid(dir.path()),
        Some(server),
        "the same server throughout"
    );
}

/// The shared server's event loop hangs for real (frozen in a cgroup freezer, no hook in the
/// binaries; with the v1 freezer it cannot even die until thawed) under a request loop: once
/// its heartbeat has been still for `hang_timeout` (1 s here) the spawner logs it, counts it
/// in `/metrics`, kills it and starts another with its own copies of every namespace's
/// listeners, without waiting for the frozen one to die. Every namespace answers again
/// through the new server, no request is refused (they wait in the accept queues), `status`
/// keeps the reason on the server's line, and once thawed the old one is gone while the new
/// one runs on, unreplaced.
#[test]
fn a_hung_server_is_killed_and_replaced_with_nothing_refused() {
    hung_server_replaced(
        "a_hung_server_is_killed_and_replaced_with_nothing_refused",
        true,
    );
}

/// The same with `proxy_metrics = false`: the server still gets its slab, for the heartbeat
/// in its header alone (no namespace has a record), so it is watched all the same.
#[test]
fn a_hung_server_is_replaced_with_the_metrics_off_too() {
    hung_server_replaced("a_hung_server_is_replaced_with_the_metrics_off_too", false);
}

fn hung_server_replaced(name: &str, metrics: bool) {
    if !require_root(name) {
        return;
    }
    let Some(freezer) = Freezer::for_test(name) else {
        return;
    };
    let dir = TempDir::new("shared-hang").reaping();
    let _agent = agent(dir.path());
    let (ids, nss) = routers(&unique_prefix(), "hg", 2);
    let ini = with_hang_timeout(&shared_ini(dir.path()));
    if !metrics {
        let text = std::fs::read_to_string(&ini).expect("ini");
        std::fs::write(&ini, format!("{text}proxy_metrics = false\n")).expect("ini");
    }
    let _daemon = start_daemon(dir.path(), &ini, &[]);
    for id in &ids {
        add_router(&ini, id);
    }
    let old = ns_testkit::eventually("server pid file", T, || server_pid(dir.path()));
    for (id, ns) in ids.iter().zip(&nss) {
        answered_for(ns, id);
    }
    let current = || server_pid(dir.path());

    let new = hang_under_load(&freezer, nss[0].netns(), old, current);
    all_served_by(dir.path(), &ids, &nss, new);
    logged(dir.path(), "shared server hung");
    let (ok, out) = cli(&ini, &["status", "--json"]);
    assert!(ok, "{out}");
    let st: serde_json::Value = serde_json::from_str(&out).expect("status json");
    let sv = &st["servers"][0];
    assert!(
        sv["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("hung")),
        "{sv}"
    );
    assert!(sv["restarts"].as_u64() >= Some(1), "{sv}");
    let scraped = scrape(dir.path());
    assert!(
        scraped.contains("ns_metadata_hangs_total{model=\"shared\",kind=\"server\"} 1\n"),
        "{scraped}"
    );
    assert_eq!(
        scraped.contains("ns_metadata_proxy_requests_total{"),
        metrics,
        "counts exported only with the metrics on: {scraped}"
    );
    thawed_and_gone(
        freezer,
        dir.path(),
        (old, new),
        current,
        "shared server hung",
    );
}

/// The agent starts after the spawner, as its own user: the shared server follows its
/// socket's owner (replaced gracefully, as for a changed option).
#[test]
fn the_shared_server_follows_an_agent_started_late_as_its_own_user() {
    agent_started_late_as_its_own_user(
        "the_shared_server_follows_an_agent_started_late_as_its_own_user",
        true,
    );
}

/// A SIGHUP that changes an option every process gets (`[metadata_haproxy] timeout_server`)
/// reaches the shared server too: it is replaced gracefully with the new argv (as a
/// per-namespace proxy is by socket takeover), under a request loop that sees no failure.
#[test]
fn a_changed_option_replaces_the_shared_server_without_a_failed_request() {
    if !require_root("a_changed_option_replaces_the_shared_server_without_a_failed_request") {
        return;
    }
    let dir = TempDir::new("shared-hup").reaping();
    let _agent = agent(dir.path());
    let (ini, daemon, ids, nss, old) = serving_two_routers(dir.path(), "hu");
    let argv = |pid: u32| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default()
    };
    assert!(!argv(old).contains("--timeout-server"), "{}", argv(old));
    let load = RequestLoop::start(nss[0].netns());
    ns_testkit::eventually("answers before", T, || (load.answered() > 0).then_some(()));
    let text = std::fs::read_to_string(&ini).expect("ini");
    std::fs::write(
        &ini,
        format!("{text}[metadata_haproxy]\ntimeout_server = 90\n"),
    )
    .expect("ini");
    daemon.signal("HUP");
    let new = ns_testkit::eventually("a new server", T, || {
        server_pid(dir.path()).filter(|&p| p != old)
    });
    assert!(argv(new).contains("--timeout-server 90"), "{}", argv(new));
    let before = load.answered();
    ns_testkit::eventually("answers through the new server", T, || {
        (load.answered() > before).then_some(())
    });
    let (answered, failed) = load.finish();
    assert!(failed.is_empty(), "{answered} answered, failed: {failed:?}");
    all_served_by(dir.path(), &ids, &nss, new);
    logged(dir.path(), "the shared server's options changed");
}

/// A damaged `records.json` whose last save is lost (loaded from the previous copy, or with
/// no good copy at all) stops nothing found running, in either model: the router the lost
/// save named keeps answering through its running proxy, or through the shared server that
/// served it before (the server was told to drop it once; session 15's review).
#[test]
fn damaged_records_stop_nothing_found_running_in_either_model() {
    if !require_root("damaged_records_stop_nothing_found_running_in_either_model") {
        return;
    }
    for (shared, prev) in [(true, false), (true, true), (false, true)] {
        let case = format!("shared={shared} prev={prev}");
        let dir = TempDir::new("sh-lost").reaping();
        let _agent = agent(dir.path());
        let (ids, nss) = routers(&unique_prefix(), if shared { "l" } else { "m" }, 2);
        let ini = if shared {
            shared_ini(dir.path())
        } else {
            write_ini(dir.path(), "")
        };
        let mut daemon = start_daemon(dir.path(), &ini, &[]);
        // Two saves: the previous copy names the first router only.
        for id in &ids {
            add_router(&ini, id);
        }
        for (id, ns) in ids.iter().zip(&nss) {
            answered_for(ns, id);
        }
        let before = pid_of(dir.path(), &ids[1]).expect("served");
        kill9(daemon.pid());
        let _ = daemon.0.wait();
        std::fs::write(dir.path().join("records.json"), "{\"routers\": [").expect("torn");
        for f in ["records.journal", "records.journal.old"]
            .into_iter()
            .chain((!prev).then_some("records.json.prev"))
        {
            let _ = std::fs::remove_file(dir.path().join(f));
        }

        let _daemon2 = start_daemon(dir.path(), &ini, &[]);
        let (_, out) = cli(&ini, &["status"]);
        assert!(out.contains("none is stopped"), "{case}: {out}");
        // Answering still, by the same process, a while after the start's adoption pass.
        std::thread::sleep(Duration::from_millis(500));
        for (id, ns) in ids.iter().zip(&nss) {
            answered_for(ns, id);
        }
        let body = get_in(nss[1].netns(), META).expect("the lost router answers");
        assert!(
            body.starts_with(&format!("router={} ", ids[1])),
            "{case}: {body}"
        );
        assert!(alive(before), "{case}: its server or proxy runs on");
        let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
        assert!(
            !log.contains("removed from the shared server") && !log.contains("no longer wanted"),
            "{case}: {log}"
        );
    }
}

/// Started at a soft open-files limit of 64 (systemd's is 1,024: ~500 namespaces of the shared
/// model), the spawner raises it to the hard one, and the shared server it starts inherits it
/// (issue #20: 2,000 namespaces hold 4,000 to 6,000 listeners in both).
#[test]
fn the_spawner_raises_its_open_files_limit_and_the_server_inherits_it() {
    if !require_root("the_spawner_raises_its_open_files_limit_and_the_server_inherits_it") {
        return;
    }
    let soft_of = |pid: u32| {
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .expect("nofile line")
            .to_owned();
        line
    };
    let dir = TempDir::new("sh-nofile").reaping();
    let _agent = agent(dir.path());
    let (ids, nss) = routers(&unique_prefix(), "n", 1);
    let ini = shared_ini(dir.path());
    let mut cmd = std::process::Command::new("prlimit");
    cmd.args([
        "--nofile=64:4096",
        env!("CARGO_BIN_EXE_ns-metadata-spawner"),
    ]);
    let daemon = start_daemon_by(cmd, dir.path(), &ini, &[]);
    add_router(&ini, &ids[0]);
    answered_for(&nss[0], &ids[0]);
    let server = server_pid(dir.path()).expect("server");
    for pid in [daemon.pid(), server] {
        let line = soft_of(pid);
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[3..5], ["4096", "4096"], "{pid}: {line}");
    }
}

/// A second record naming a namespace another record's proxy serves (a mistyped `--netns`)
/// waits, with the reason in `status`, in either model; removing it leaves the first one's
/// address and answers alone (it used to tear the address down: session 15's review). After
/// a spawner restart the proxy running there keeps its namespace, whatever the keys' order.
#[test]
fn a_second_record_for_a_served_namespace_waits_and_its_removal_takes_nothing() {
    if !require_root("a_second_record_for_a_served_namespace_waits_and_its_removal_takes_nothing") {
        return;
    }
    for shared in [false, true] {
        let dir = TempDir::new("sh-dupns").reaping();
        let _agent = agent(dir.path());
        let p = unique_prefix();
        // "z…" serves the namespace; "a…" (sorting first) names it too.
        let (ids, nss) = routers(&p, if shared { "zs" } else { "zp" }, 1);
        let dup = format!("{p}a{}", u8::from(shared));
        let ini = if shared {
            shared_ini(dir.path())
        } else {
            write_ini(dir.path(), "")
        };
        let mut daemon = start_daemon(dir.path(), &ini, &[]);
        add_router(&ini, &ids[0]);
        answered_for(&nss[0], &ids[0]);
        let (ok, out) = cli(&ini, &["router", "add", &dup, "--netns", nss[0].name()]);
        assert!(ok, "{out}");
        let why = ns_testkit::eventually("the second record waits", T, || {
            let p = proxy_json(dir.path(), &dup)?;
            (p["state"] == "waiting").then(|| p["last_error"].to_string())
        });
        assert!(
            why.contains(&format!("already served for {}", ids[0])),
            "shared={shared}: {why}"
        );
        // A restart: the proxy running there keeps it, though the other key sorts first.
        kill9(daemon.pid());
        let _ = daemon.0.wait();
        daemon = start_daemon(dir.path(), &ini, &[]);
        answered_for(&nss[0], &ids[0]);
        assert_eq!(
            proxy_json(dir.path(), &dup).map(|p| p["state"].clone()),
            Some("waiting".into()),
            "shared={shared}"
        );
        let (ok, out) = cli(&ini, &["router", "remove", &dup]);
        assert!(ok, "{out}");
        std::thread::sleep(Duration::from_millis(300));
        answered_for(&nss[0], &ids[0]);
        drop(daemon);
    }
}

/// With `enable_metadata_network`, a metadata network is served with its router's id: the
/// shared server serves it beside the router's own namespace (it tells namespaces apart by
/// `KIND ID NETNS`), each answering as the router; removing one leaves the other served
/// (before, the network took the router's place in the server, and the router's listener
/// stayed bound with nobody accepting: VMs hung; session 15's review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metadata_network_and_its_router_are_both_served() {
    if !require_root("a_metadata_network_and_its_router_are_both_served") {
        return;
    }
    let dir = TempDir::new("sh-metanet").reaping();
    let _agent = agent(dir.path());
    let p = unique_prefix();
    let (ids, nss) = routers(&p, "mr", 1);
    let net_id = format!("{p}mn");
    let dns = TestNs::new(&format!("qdhcp-{net_id}")).expect("dhcp ns");
    let vm = TestNs::new(&format!("{p}mv")).expect("vm ns");
    let (_, vm_ip) = link(&dns, &vm, 112).await.expect("veth");
    let sup = supervisor(&dir, |c| {
        c.proxy_model = ProxyModel::Shared;
        c.enable_isolated_metadata = true;
        c.enable_metadata_network = true;
    });
    sup.put_router(router(&ids[0]));
    let server = running_pid(&sup, &ids[0], T).await;
    let net: ns_metadata_spawner::records::Network = serde_json::from_value(serde_json::json!({
        "id": net_id, "interface": "va112",
        "subnets": [{"id": "s1", "cidr": "169.254.12.0/24", "gateway_ip": "169.254.12.1", "enable_dhcp": true, "ip_version": 4}],
        "ports": [{"id": "pr", "device_owner": "network:router_interface", "device_id": ids[0], "fixed_ips": [{"subnet_id": "s1", "ip_address": "169.254.12.1"}]}]
    }))
    .expect("network json");
    sup.put_network(net);
    assert_eq!(
        running_pid(&sup, &net_id, T).await,
        server,
        "one server for both"
    );
    let body = answer(&vm).await.expect("the metadata network answers");
    assert_eq!(body, format!("router={} network=- xff={vm_ip}", ids[0]));
    let body = get_in(nss[0].netns(), META).expect("the router's namespace answers");
    assert!(body.starts_with(&format!("router={} ", ids[0])), "{body}");

    // Removing the network leaves the router served, and the other way round.
    assert!(sup.remove_network(&net_id));
    sup.reconcile().await;
    let body = get_in(nss[0].netns(), META).expect("the router still answers");
    assert!(body.starts_with(&format!("router={} ", ids[0])), "{body}");
    sup.stop_all().await;
}

/// `check` with a hung agent (it accepts connections, never answers): one line says so, and
/// no namespace is probed (each probe would wait out its timeout: 5 s per namespace, hours
/// at thousands; session 15's review).
#[test]
fn check_names_a_hung_agent_once_and_probes_no_namespace() {
    if !require_root("check_names_a_hung_agent_once_and_probes_no_namespace") {
        return;
    }
    let dir = TempDir::new("sh-hungagent").reaping();
    let _agent = ns_testkit::agent::StandIn::start_at(
        dir.path().join("agent.sock"),
        ns_testkit::agent::Behave::Slow,
    );
    let (ids, nss) = routers(&unique_prefix(), "h", 3);
    let ini = write_ini(dir.path(), "");
    let _daemon = start_daemon(dir.path(), &ini, &[]);
    for id in &ids {
        add_router(&ini, id);
    }
    for id in &ids {
        ns_testkit::eventually("running", T, || pid_of(dir.path(), id));
    }
    let (ok, out) = cli(&ini, &["check"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("accepts connections but sent nothing within")
            && out.contains("probes through the proxies left out"),
        "{out}"
    );
    assert_eq!(
        out.lines().count(),
        1,
        "one line, no probe per namespace: {out}"
    );
    drop(nss);
}

/// A spawner that died between starting a server and naming it in the pid file (killed
/// during a restart of a dead server: the pid file still names the dead one) left that server
/// holding the sockets it was handed, unmanaged: the next spawner started another, whose
/// binds failed for as long as it lived (session 15's review). The new server is named in a
/// `.next` pid file from its spawn on; a restarted spawner takes it over.
#[test]
fn a_server_the_previous_spawner_did_not_name_is_taken_over() {
    if !require_root("a_server_the_previous_spawner_did_not_name_is_taken_over") {
        return;
    }
    let dir = TempDir::new("sh-unnamed").reaping();
    let _agent = agent(dir.path());
    let (ini, ids, nss, server) = two_routers_and_a_killed_spawner(dir.path(), "x");
    // The state such a death leaves: the server named only as the next one.
    let (pid_file, next) = (
        dir.path().join("shared-server.pid"),
        dir.path().join("shared-server.pid.next"),
    );
    std::fs::rename(&pid_file, &next).expect("as the next one");
    std::fs::write(&pid_file, "1 1\n").expect("a pid file naming another process");

    let _daemon2 = start_daemon(dir.path(), &ini, &[]);
    all_served_by(dir.path(), &ids, &nss, server);
    assert!(alive(server), "taken over, not replaced");
    let now = std::fs::read_to_string(&pid_file).expect("pid file");
    assert!(now.starts_with(&format!("{server} ")), "{now}");
    assert!(!next.exists(), "the next pid file is gone");
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
    assert!(
        log.contains("did not name in its pid file; taking it over"),
        "{log}"
    );

    // Named in both files (a death between the two writes): the server is not touched.
    drop(_daemon2);
    std::fs::copy(&pid_file, &next).expect("named twice");
    let _daemon3 = start_daemon(dir.path(), &ini, &[]);
    all_served_by(dir.path(), &ids, &nss, server);
    assert!(alive(server) && !next.exists());
}

/// A proxy started while its statistics block could not be made (here a file stands where
/// the stats directory goes; a full state dir is the same) serves with an anonymous block:
/// uncounted and, after a spawner restart, not watched for hangs. Once the block can be made
/// it is restarted on its sockets with it, answering throughout (session 15's review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_started_without_its_statistics_block_gets_it_once_it_can_be_made() {
    if !require_root("a_proxy_started_without_its_statistics_block_gets_it_once_it_can_be_made") {
        return;
    }
    let dir = TempDir::new("sh-noblock").reaping();
    let _agent = agent(dir.path());
    let (ids, nss) = routers(&unique_prefix(), "b", 1);
    let sup = supervisor(&dir, |_| {});
    let stats = dir.path().join("stats");
    let _ = std::fs::remove_dir_all(&stats);
    std::fs::write(&stats, "not a directory").expect("a file in the way");
    sup.put_router(router(&ids[0]));
    let first = running_pid(&sup, &ids[0], T).await;
    let block = stats.join(format!("{}.stats", ids[0]));
    assert!(!block.exists());
    answered_for(&nss[0], &ids[0]);

    std::fs::remove_file(&stats).expect("out of the way");
    let second = eventually_async("restarted with its block", T, || {
        status_of(&sup, &ids[0])
            .filter(|s| s.state == State::Running)
            .and_then(|s| s.pid)
            .filter(|p| *p != first)
    })
    .await;
    assert!(block.exists(), "its block file");
    assert!(!alive(first) || second != first);
    answered_for(&nss[0], &ids[0]);
    sup.stop_all().await;
}
