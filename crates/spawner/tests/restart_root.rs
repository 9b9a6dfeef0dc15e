//! Root tests of `ns-metadata-spawner restart` (issue #17): the real daemon, the real proxy,
//! real namespaces. Under a request loop from a VM namespace (a fresh connection per request
//! and a keep-alive client sending back to back) a restart by socket takeover fails no request;
//! status and the pid file show the new pid, the old process is gone, and the statistics
//! counters go on. Then the verb's errors: an unknown id, a proxy that is not running. Each
//! test has its own state dir and namespaces (per-run prefix), removed on drop; proxies are
//! killed on drop.

mod common;
mod root_common;

use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::running_pid;
use ns_netns::Netns;
use ns_testkit::http::Blocking;
use ns_testkit::netns::{link, unique_prefix, TestNs};
use ns_testkit::proc::alive;
use ns_testkit::TempDir;
use ns_testkit::{require_root, wait_until, PidGuard};
use root_common::*;

const T: Duration = Duration::from_secs(15);

/// `ns_metadata_proxy_requests_total{…class="2xx"}` of `netns`, from `GET /metrics`.
fn served_2xx(dir: &Path, netns: &str) -> f64 {
    let mut c = Blocking::unix(&dir.join("control.sock")).expect("control socket");
    c.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send");
    let text = c
        .read(false, Duration::from_secs(5))
        .expect("metrics")
        .text();
    text.lines()
        .filter(|l| l.starts_with("ns_metadata_proxy_requests_total{"))
        .filter(|l| l.contains(&format!("netns=\"{netns}\"")) && l.contains("class=\"2xx\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// A keep-alive client in `ns`, back to back until `go` is false: (answered, connections
/// opened, failures). A connection the proxy answers with `Connection: close` is replaced;
/// any request without a complete 200 answer is a failure.
fn keepalive_loop(ns: &Netns, go: Arc<AtomicBool>) -> (u32, u32, Vec<String>) {
    ns.run(move || {
        let (mut ok, mut conns, mut failed) = (0u32, 0u32, Vec::new());
        let mut c: Option<Blocking<TcpStream>> = None;
        while go.load(Ordering::Relaxed) {
            let conn = match c.as_mut() {
                Some(conn) => conn,
                None => match Blocking::tcp(META, Duration::from_secs(2)) {
                    Ok(conn) => {
                        conns += 1;
                        c.insert(conn)
                    }
                    Err(e) => {
                        failed.push(format!("connect: {e}"));
                        continue;
                    }
                },
            };
            let sent =
                conn.send(b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n");
            match (sent, conn.read(false, Duration::from_secs(5))) {
                (Ok(()), Some(r)) if r.status == 200 => {
                    ok += 1;
                    if r.header("connection")
                        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                    {
                        c = None;
                    }
                }
                (sent, r) => {
                    failed.push(format!(
                        "request {} on connection {conns}: {sent:?} {:?}",
                        ok + 1,
                        r.map(|r| r.head)
                    ));
                    c = None;
                }
            }
        }
        (ok, conns, failed)
    })
    .expect("vm thread")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_under_load_loses_no_request() {
    if !require_root("restart_under_load_loses_no_request") {
        return;
    }
    restart_under_load("rt-restart", Behave::Headers, 131).await;
}

/// The same with an agent that takes 150 ms per answer: requests are always in flight in the
/// old proxy when it gets SIGTERM, and finish there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_requests_in_flight_loses_none() {
    if !require_root("restart_with_requests_in_flight_loses_none") {
        return;
    }
    restart_under_load("rt-restart-slow", Behave::Delay(150), 133).await;
}

/// A router proxy answering through an agent that behaves as `behave`; the VM on link `n`.
async fn restart_under_load(tag: &str, behave: Behave, n: u8) {
    let headers = matches!(behave, Behave::Headers);
    let dir = TempDir::new(tag).reaping();
    let _agent = StandIn::start_at(dir.path().join("agent.sock"), behave);
    let ini = write_ini(dir.path(), "");
    let p = unique_prefix();
    let id = format!("{p}rs");
    let netns = format!("qrouter-{id}");
    let rns = TestNs::new(&netns).expect("router ns");
    let vm = TestNs::new(&format!("{p}vm")).expect("vm ns");
    let (_, vm_ip) = link(&rns, &vm, n).await.expect("veth");
    let _d = start_daemon(dir.path(), &ini, &[]);
    let (ok, text) = cli(&ini, &["router", "add", &id]);
    assert!(ok, "{text}");
    assert!(wait_until(T, || pid_of(dir.path(), &id).is_some()));
    let old = pid_of(dir.path(), &id).expect("pid");
    let mut guard = PidGuard(vec![old]);
    let body = answer(&vm).await.expect("vm gets an answer");
    if headers {
        assert_eq!(body, format!("router={id} network=- xff={vm_ip}"));
    }
    assert!(wait_until(T, || served_2xx(dir.path(), &netns) >= 1.0));

    // The verb's errors: one line, exit 1.
    let (ok, text) = cli(&ini, &["restart", &format!("{p}nope")]);
    assert!(!ok);
    assert_eq!(
        text.trim(),
        format!("ns-metadata-spawner: 404: no proxy {p}nope: see `status`")
    );
    let waiting = format!("{p}wt");
    assert!(cli(&ini, &["router", "add", &waiting]).0);
    assert!(wait_until(T, || proxy_json(dir.path(), &waiting).is_some()));
    let (ok, text) = cli(&ini, &["restart", &waiting]);
    assert!(!ok);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains(&format!("409: proxy {waiting} is not running")),
        "{text}"
    );
    assert!(cli(&ini, &["router", "remove", &waiting]).0);

    // Load from the VM: fresh connections on two threads, one keep-alive client.
    let go = Arc::new(AtomicBool::new(true));
    let fresh: Vec<_> = (0..2)
        .map(|_| {
            let (ns, go) = (vm.netns().try_clone().expect("vm ns"), go.clone());
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0u32, Vec::new());
                while go.load(Ordering::Relaxed) {
                    match get_in(&ns, META) {
                        Ok(_) => ok += 1,
                        Err(e) => failed.push(e),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let kept = {
        let (ns, go) = (vm.netns().try_clone().expect("vm ns"), go.clone());
        std::thread::spawn(move || keepalive_loop(&ns, go))
    };
    // Requests flow before the restart.
    let before = served_2xx(dir.path(), &netns);
    assert!(wait_until(T, || served_2xx(dir.path(), &netns) > before + 20.0));
    let counted_before = served_2xx(dir.path(), &netns);

    // Three restarts in a row under the load.
    let (mut old, mut new, mut mid) = (old, old, counted_before);
    for _ in 0..3 {
        let (ok, text) = cli(&ini, &["restart", &id]);
        assert!(ok, "{text}");
        new = pid_of(dir.path(), &id).expect("running after the restart");
        // Never kill a pid that may be recycled: only the live proxy is guarded.
        guard.0 = vec![new];
        assert_ne!(new, old);
        assert_eq!(
            text,
            format!("restarted {id}: pid {old} -> {new} (socket takeover, nothing lost)\n")
        );
        assert!(!alive(old), "the old proxy is gone once restart returns");
        let pid_file =
            std::fs::read_to_string(dir.path().join(format!("pids/{id}.pid"))).expect("pid file");
        assert_eq!(
            pid_file.split_whitespace().next(),
            Some(new.to_string().as_str())
        );
        let st = proxy_json(dir.path(), &id).expect("status");
        assert_eq!(st["restarts"], 0, "a restart is not a crash: {st}");
        // Requests flow after it, counted on from where they were.
        let now = served_2xx(dir.path(), &netns);
        assert!(now >= mid, "monotonic: {now} < {mid}");
        assert!(wait_until(T, || served_2xx(dir.path(), &netns) > now + 20.0));
        (old, mid) = (new, now);
    }
    go.store(false, Ordering::Relaxed);
    let mut total = 0;
    for t in fresh {
        let (ok, failed) = t.join().expect("load thread");
        assert!(failed.is_empty(), "{ok} ok, failed: {failed:?}");
        total += ok;
    }
    let (ka_ok, conns, failed) = kept.join().expect("keep-alive thread");
    assert!(
        failed.is_empty(),
        "keep-alive: {ka_ok} ok, failed: {failed:?}"
    );
    assert!(
        ka_ok > conns,
        "connections were reused: {ka_ok} answers on {conns}"
    );
    assert!(total > 0 && ka_ok > 0);
    let after = served_2xx(dir.path(), &netns);
    assert!(after >= mid, "monotonic: {after} < {mid}");

    // `restart --all`: every running proxy, one at a time.
    let (ok, text) = cli(&ini, &["restart", "--all"]);
    assert!(ok, "{text}");
    let newest = pid_of(dir.path(), &id).expect("running");
    guard.0 = vec![newest];
    assert!(
        text.contains(&format!(
            "restarted {id}: pid {new} -> {newest} (socket takeover"
        )) && text.ends_with("1 restarted, 0 failed\n"),
        "{text}"
    );
    assert!(!alive(new));
    let body = answer(&vm).await.expect("vm gets an answer");
    if headers {
        assert_eq!(body, format!("router={id} network=- xff={vm_ip}"));
    }
    drop(rns);
}

/// With IPv6 the proxy has two listeners (169.254.169.254:80 and `[fe80::a9fe:a9fe]:80` on
/// the DHCP tap): both are taken over, and both answer from the new proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_takes_over_both_listeners_with_ipv6() {
    if !require_root("restart_takes_over_both_listeners_with_ipv6") {
        return;
    }
    let dir = TempDir::new("rt-restart6").reaping();
    let _agent = agent(dir.path());
    let p = unique_prefix();
    let id = format!("{p}n6");
    let dns = TestNs::new(&format!("qdhcp-{id}")).expect("dhcp ns");
    let vm = TestNs::new(&format!("{p}vm")).expect("vm ns");
    let (dhcp_ip, _) = link(&dns, &vm, 132).await.expect("veth");
    let sup = supervisor(&dir, |c| {
        c.enable_isolated_metadata = true;
        c.ipv6 = true;
    });
    let net = dual_stack_network(&id, 132, dhcp_ip);
    sup.put_network(net);
    let old = running_pid(&sup, &id, T).await;
    let mut guard = PidGuard(vec![old]);
    let done = sup.restart(&id).await.expect("restarted");
    let new = done.new_pid.expect("new pid");
    guard.0 = vec![new];
    assert_eq!(
        (done.method, done.old_pid),
        ("takeover", Some(old)),
        "{done:?}"
    );
    assert!(!alive(old));
    let v6 = v6_meta(dns.netns(), "va132").await;
    for addr in [META, v6] {
        let body = get_in(dns.netns(), addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
        assert!(
            body.starts_with(&format!("router=- network={id} ")),
            "{body}"
        );
    }
    sup.stop_all().await;
}
