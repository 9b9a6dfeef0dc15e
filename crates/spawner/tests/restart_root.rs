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
    restart_under_load("restart", Behave::Headers, 131).await;
}

/// The same with an agent that takes 150 ms per answer: requests are always in flight in the
/// old proxy when it gets SIGTERM, and finish there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_requests_in_flight_loses_none() {
    if !require_root("restart_with_requests_in_flight_loses_none") {
        return;
    }
    restart_under_load("slow", Behave::Delay(150), 133).await;
}

/// A fresh connection per request from `vm`, back to back until `go` is false: (answered,
/// failures).
fn fresh_loop(vm: &TestNs, go: &Arc<AtomicBool>) -> std::thread::JoinHandle<(u32, Vec<String>)> {
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
}

/// One router served by a real spawner daemon, answered from a VM namespace on link `n`:
/// what every test here starts from. Fields drop in order: the daemon first, the state dir last.
struct Served {
    daemon: ns_testkit::ChildGuard,
    /// Guards the running proxy (tests add its successors).
    guard: PidGuard,
    vm: TestNs,
    _rns: TestNs,
    _agent: StandIn,
    /// The proxy's pid once it ran.
    old: u32,
    p: String,
    id: String,
    netns: String,
    vm_ip: std::net::IpAddr,
    ini: std::path::PathBuf,
    dir: TempDir,
}

impl Served {
    /// Agent `behave`, `[spawner]` lines `extra` in the daemon's INI, router `<prefix><tag>`
    /// added through the CLI and running (not yet asked: see [`Served::expect`]).
    async fn start(tag: &str, behave: Behave, n: u8, extra: &str) -> Served {
        let dir = TempDir::new(&format!("rt-{tag}")).reaping();
        let agent = StandIn::start_at(dir.path().join("agent.sock"), behave);
        let ini = write_ini(dir.path(), "");
        let mut text = std::fs::read_to_string(&ini).expect("ini");
        text.push_str(extra);
        std::fs::write(&ini, text).expect("ini");
        let p = unique_prefix();
        let id = format!("{p}{tag}");
        let netns = format!("qrouter-{id}");
        let rns = TestNs::new(&netns).expect("router ns");
        let vm = TestNs::new(&format!("{p}vm")).expect("vm ns");
        let (_, vm_ip) = link(&rns, &vm, n).await.expect("veth");
        let daemon = start_daemon(dir.path(), &ini, &[]);
        let (ok, text) = cli(&ini, &["router", "add", &id]);
        assert!(ok, "{text}");
        assert!(wait_until(T, || pid_of(dir.path(), &id).is_some()));
        let old = pid_of(dir.path(), &id).expect("pid");
        Served {
            daemon,
            guard: PidGuard(vec![old]),
            vm,
            _rns: rns,
            _agent: agent,
            old,
            p,
            id,
            netns,
            vm_ip,
            ini,
            dir,
        }
    }

    /// The body a `Behave::Headers` agent answers the VM with.
    fn expect(&self) -> String {
        format!("router={} network=- xff={}", self.id, self.vm_ip)
    }
}

/// A router proxy answering through an agent that behaves as `behave`; the VM on link `n`.
async fn restart_under_load(tag: &str, behave: Behave, n: u8) {
    let headers = matches!(behave, Behave::Headers);
    let mut s = Served::start(tag, behave, n, "").await;
    let (dir, ini, p, id, netns, vm) = (&s.dir, &s.ini, &s.p, &s.id, &s.netns, &s.vm);
    let old = s.old;
    let body = answer(vm).await.expect("vm gets an answer");
    if headers {
        assert_eq!(body, s.expect());
    }
    assert!(wait_until(T, || served_2xx(dir.path(), netns) >= 1.0));

    // The verb's errors: one line, exit 1.
    let (ok, text) = cli(ini, &["restart", &format!("{p}nope")]);
    assert!(!ok);
    assert_eq!(
        text.trim(),
        format!("ns-metadata-spawner: 404: no proxy {p}nope: see `status`")
    );
    let waiting = format!("{p}wt");
    assert!(cli(ini, &["router", "add", &waiting]).0);
    assert!(wait_until(T, || proxy_json(dir.path(), &waiting).is_some()));
    let (ok, text) = cli(ini, &["restart", &waiting]);
    assert!(!ok);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains(&format!("409: proxy {waiting} is not running")),
        "{text}"
    );
    assert!(cli(ini, &["router", "remove", &waiting]).0);

    // Load from the VM: fresh connections on two threads, one keep-alive client.
    let go = Arc::new(AtomicBool::new(true));
    let fresh: Vec<_> = (0..2).map(|_| fresh_loop(vm, &go)).collect();
    let kept = {
        let (ns, go) = (vm.netns().try_clone().expect("vm ns"), go.clone());
        std::thread::spawn(move || keepalive_loop(&ns, go))
    };
    // Requests flow before the restart.
    let before = served_2xx(dir.path(), netns);
    assert!(wait_until(T, || served_2xx(dir.path(), netns) > before + 20.0));
    let counted_before = served_2xx(dir.path(), netns);

    // Three restarts in a row under the load.
    let (mut old, mut new, mut mid) = (old, old, counted_before);
    for _ in 0..3 {
        let (ok, text) = cli(ini, &["restart", id]);
        assert!(ok, "{text}");
        new = pid_of(dir.path(), id).expect("running after the restart");
        // Never kill a pid that may be recycled: only the live proxy is guarded.
        s.guard.0 = vec![new];
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
        let st = proxy_json(dir.path(), id).expect("status");
        assert_eq!(st["restarts"], 0, "a restart is not a crash: {st}");
        // Requests flow after it, counted on from where they were.
        let now = served_2xx(dir.path(), netns);
        assert!(now >= mid, "monotonic: {now} < {mid}");
        assert!(wait_until(T, || served_2xx(dir.path(), netns) > now + 20.0));
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
    let after = served_2xx(dir.path(), netns);
    assert!(after >= mid, "monotonic: {after} < {mid}");

    // `restart --all`: every running proxy, one at a time.
    let (ok, text) = cli(ini, &["restart", "--all"]);
    assert!(ok, "{text}");
    let newest = pid_of(dir.path(), id).expect("running");
    s.guard.0 = vec![newest];
    assert!(
        text.contains(&format!(
            "restarted {id}: pid {new} -> {newest} (socket takeover"
        )) && text.ends_with("1 restarted, 0 failed\n"),
        "{text}"
    );
    assert!(!alive(new));
    let body = answer(vm).await.expect("vm gets an answer");
    if headers {
        assert_eq!(body, s.expect());
    }
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

/// The listening sockets of proxy `pid` bound to `169.254.169.254:80`, copied with
/// `pidfd_getfd` (as the spawner's takeover does).
fn listeners_of(pid: u32) -> Vec<std::os::fd::OwnedFd> {
    let raw = rustix::process::Pid::from_raw(pid as i32).expect("pid");
    let pidfd =
        rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()).expect("pidfd");
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .flatten()
    {
        let Some(n) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(fd) =
            rustix::process::pidfd_getfd(&pidfd, n, rustix::process::PidfdGetfdFlags::empty())
        else {
            continue;
        };
        let bound = rustix::net::getsockname(&fd)
            .ok()
            .and_then(|a| std::net::SocketAddr::try_from(a).ok());
        if rustix::net::sockopt::socket_acceptconn(&fd).unwrap_or(false) && bound == Some(META) {
            out.push(fd);
        }
    }
    out
}

/// A restart the previous spawner did not finish: it was killed while the new proxy ran next
/// to the old one on the same sockets, before the new one's pid file was written. The next
/// spawner adopts the proxy of the pid file and stops the other one without tearing the
/// namespace down: the addresses both served stay, and the VM is answered throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_restart_leaves_the_namespace_served() {
    if !require_root("an_unfinished_restart_leaves_the_namespace_served") {
        return;
    }
    let mut s = Served::start("unfinished", Behave::Headers, 134, "").await;
    let (dir, ini, id, netns, vm, old) = (&s.dir, &s.ini, &s.id, &s.netns, &s.vm, s.old);
    assert!(wait_until(T, || std::fs::read_to_string(
        dir.path().join("records.json")
    )
    .is_ok_and(|t| t.contains(id.as_str()))));
    let expect = s.expect();
    assert_eq!(answer(vm).await.expect("answered"), expect);

    // The spawner dies mid-restart: the successor runs on the old proxy's sockets (copied
    // as the takeover does), started as the spawner starts it, and the pid file still names
    // the old proxy.
    s.daemon.signal("KILL");
    assert!(wait_until(T, || !s.daemon.alive()));
    let argv = ns_metadata_spawner::pidfile::cmdline(old).expect("old proxy alive");
    let ready = dir.path().join("twin-ready");
    let mut cmd = ns_netns::Spawn::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd.env(ns_contract::spawn::STATE_ENV, dir.path());
    cmd.env(
        ns_contract::spawn::NETNS_FD_ENV,
        ns_contract::spawn::NETNS_FD.to_string(),
    );
    let first_fd = ns_contract::spawn::FIRST_LISTEN_FD;
    cmd.env(ns_contract::spawn::LISTEN_FDS_ENV, first_fd.to_string());
    let ready_file = std::fs::File::create(&ready).expect("ready file");
    cmd.fd(ready_file.into(), 3);
    let log = std::fs::File::create(dir.path().join("twin.log")).expect("twin log");
    cmd.fd(log.into(), 2);
    let ns_fd = std::fs::File::open(format!("/run/netns/{netns}")).expect("netns fd");
    cmd.fd(ns_fd.into(), ns_contract::spawn::NETNS_FD);
    // The proxy's own statistics block, as a restart passes it.
    let stats = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.path().join(format!("stats/{id}.stats")))
        .expect("statistics block");
    cmd.fd(stats.into(), 5);
    let mut taken = listeners_of(old);
    assert_eq!(taken.len(), 1, "the old proxy's one listener");
    cmd.fd(taken.remove(0), first_fd);
    let twin = cmd.spawn().expect("twin").pid;
    s.guard.0.push(twin);
    assert!(
        wait_until(T, || std::fs::read_to_string(&ready)
            .is_ok_and(|t| t.contains("READY=1"))),
        "the second proxy is not ready: {}",
        std::fs::read_to_string(dir.path().join("twin.log")).unwrap_or_default()
    );

    let _second = start_daemon(dir.path(), ini, &[]);
    let st = proxy_json(dir.path(), id).expect("status");
    assert_eq!(
        (st["pid"].as_u64(), st["adopted"].as_bool()),
        (Some(u64::from(old)), Some(true)),
        "{st}"
    );
    assert!(
        wait_until(T, || {
            let _ = rustix::process::waitpid(
                rustix::process::Pid::from_raw(twin as i32),
                rustix::process::WaitOptions::NOHANG,
            );
            !alive(twin)
        }),
        "the second proxy is stopped"
    );
    assert!(alive(old), "the proxy of the pid file serves on");
    // The namespace kept its address: the VM is answered, by the adopted proxy.
    for _ in 0..20 {
        assert_eq!(get_in(vm.netns(), META).as_deref(), Ok(expect.as_str()));
    }
}

/// An adopted proxy that runs with other arguments (here: started without a statistics
/// block, as before an upgrade that added `--stats-fd`) is replaced by socket takeover, as
/// `restart ID` does: under a loop of fresh connections from the VM no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_proxy_with_other_arguments_is_replaced_without_refusing() {
    if !require_root("an_adopted_proxy_with_other_arguments_is_replaced_without_refusing") {
        return;
    }
    let mut s = Served::start("upgrade", Behave::Headers, 135, "proxy_metrics = false\n").await;
    let (dir, ini, id, vm, old) = (&s.dir, &s.ini, &s.id, &s.vm, s.old);
    let argv = ns_metadata_spawner::pidfile::cmdline(old).expect("alive");
    assert!(!argv.iter().any(|a| a == "--stats-fd"), "{argv:?}");
    let expect = s.expect();
    assert_eq!(answer(vm).await.expect("answered"), expect);
    // The spawner stops (its proxies keep serving); the next one has metrics on.
    s.daemon.signal("TERM");
    assert!(wait_until(T, || !s.daemon.alive()));
    assert!(alive(old));
    write_ini(dir.path(), "");

    let go = Arc::new(AtomicBool::new(true));
    let fresh = fresh_loop(vm, &go);
    let _second = start_daemon(dir.path(), ini, &[]);
    let new = replaced_without_refusing(dir.path(), id, old, (go, fresh));
    s.guard.0.push(new);
    let argv = ns_metadata_spawner::pidfile::cmdline(new).expect("alive");
    assert!(argv.iter().any(|a| a == "--stats-fd"), "{argv:?}");
    assert_eq!(get_in(vm.netns(), META).as_deref(), Ok(expect.as_str()));
}

/// A configuration change that only changes a proxy's arguments (SIGHUP after editing the
/// file) replaces the proxy by socket takeover: under a loop of fresh connections from the
/// VM no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_option_replaces_the_proxy_without_refusing() {
    if !require_root("a_changed_option_replaces_the_proxy_without_refusing") {
        return;
    }
    let mut s = Served::start("reload", Behave::Headers, 136, "").await;
    let (dir, ini, id, vm, old) = (&s.dir, &s.ini, &s.id, &s.vm, s.old);
    let expect = s.expect();
    assert_eq!(answer(vm).await.expect("answered"), expect);

    let go = Arc::new(AtomicBool::new(true));
    let fresh = fresh_loop(vm, &go);
    let mut text = std::fs::read_to_string(ini).expect("ini");
    text.push_str("proxy_metrics = false\n");
    std::fs::write(ini, text).expect("ini without metrics");
    s.daemon.signal("HUP");
    let new = replaced_without_refusing(dir.path(), id, old, (go, fresh));
    s.guard.0.push(new);
    let argv = ns_metadata_spawner::pidfile::cmdline(new).expect("alive");
    assert!(!argv.iter().any(|a| a == "--stats-fd"), "{argv:?}");
    // Still watched for hangs: the block, for the heartbeat alone.
    assert!(argv.iter().any(|a| a == "--heartbeat-fd"), "{argv:?}");
    assert_eq!(get_in(vm.netns(), META).as_deref(), Ok(expect.as_str()));
}

/// Proxy `id` (pid `old`) was replaced by socket takeover while `load` ran: the new pid, once
/// the old proxy is gone; the load stopped, none of its requests failed.
fn replaced_without_refusing(
    dir: &Path,
    id: &str,
    old: u32,
    load: (Arc<AtomicBool>, std::thread::JoinHandle<(u32, Vec<String>)>),
) -> u32 {
    assert!(wait_until(T, || pid_of(dir, id).is_some_and(|p| p != old)));
    let new = pid_of(dir, id).expect("pid");
    assert!(wait_until(T, || !alive(old)), "the old proxy is stopped");
    std::thread::sleep(Duration::from_millis(200));
    load.0.store(false, Ordering::Relaxed);
    let (ok, failed) = load.1.join().expect("load thread");
    assert!(failed.is_empty(), "{ok} ok, failed: {failed:?}");
    assert!(ok > 0);
    let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
    assert!(
        log.contains("replaced by socket takeover"),
        "the daemon's log:\n{log}"
    );
    new
}
