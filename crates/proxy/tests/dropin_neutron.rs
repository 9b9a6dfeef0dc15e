//! Neutron 29's own metadata driver code (neutron_driver.py, in $NS_NEUTRON_VENV) runs the
//! drop-in: `MetadataDriver.spawn_monitored_metadata_proxy` of the ML2 driver (router,
//! network) and of the OVN driver, as root without sudo, with the drop-in first on PATH as
//! `haproxy`, in real namespaces. Neutron's ProcessManager sees it active, a VM namespace gets
//! 200 with the right identity header and X-Forwarded-For, the ProcessMonitor respawns it
//! after kill -9, a changed config restarts it, destroy stops it and removes the pid file.
//! Also: every variant Neutron renders parses as expected, and under one rendered
//! rate-limited config the drop-in answers the same status sequence as the real haproxy.

mod common;

use std::collections::HashMap;
use std::io::{BufRead as _, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::neutron_conf::{render, GLOBAL, HEADERS_ML2, LISTEN, ROUTER_DEFAULTS};
use common::{Behave, StandIn, TempDir};
use ns_contract::Kind;
use ns_metadata_proxy::haproxy::{self, HaproxyConfig};
use ns_netns::Netlink;
use ns_testkit::netns::{link, netns, unique_prefix, TestNs};
use ns_testkit::neutron::venv_python;
use ns_testkit::proc::{alive, kill9};
use ns_testkit::{bin_path, eventually, require_root, PidGuard};

/// The real haproxy (Debian's package), for the side-by-side rate-limit run.
const REAL_HAPROXY: &str = "/usr/sbin/haproxy";

const ECHO: Behave = Behave::Echo {
    advertise: None,
    reuse: false,
};

/// neutron_driver.py, running Neutron's driver code in the venv.
struct Harness {
    script: common::VenvScript,
}

impl Harness {
    /// Start the driver with `state` as Neutron's state_path, `socket` as the agent's socket,
    /// and `bin` first on PATH.
    fn start(py: &Path, state: &Path, socket: &Path, bin: &Path) -> Harness {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/neutron_driver.py");
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let path = std::ffi::OsString::from(path);
        Harness {
            script: common::start_venv_script(
                py,
                &script,
                &[state.as_os_str(), socket.as_os_str()],
                &[("PATH", path.as_os_str())],
            ),
        }
    }

    /// One request (`op key=value ...`); its answer as a map. Neutron's errors fail the test.
    fn call(&mut self, req: &str) -> HashMap<String, String> {
        writeln!(self.script.stdin, "{req}").expect("send to neutron_driver.py");
        let mut line = String::new();
        self.script.stdout.read_line(&mut line).expect("answer");
        let answer: HashMap<String, String> = line
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert!(!answer.contains_key("error"), "{req}: {line}");
        answer
    }
}

fn pid(a: &HashMap<String, String>) -> u32 {
    a.get("pid")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid: {a:?}"))
}

fn is(a: &HashMap<String, String>, key: &str) -> bool {
    a.get(key).map(String::as_str) == Some("True")
}

/// The drop-in as `haproxy` in `dir/bin` (first on Neutron's PATH).
fn dropin_bin(dir: &TempDir) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir bin");
    std::os::unix::fs::symlink(bin_path("ns-metadata-proxy"), bin.join("haproxy"))
        .expect("symlink");
    bin
}

/// The process at `pid` is our binary (not a real haproxy found on PATH).
fn assert_ours(pid: u32) {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe");
    let ours = bin_path("ns-metadata-proxy")
        .canonicalize()
        .expect("canonical");
    assert_eq!(exe, ours, "pid {pid} is the drop-in");
}

/// `curl` in the VM namespace: the head and the body (the stand-in echoes the request).
/// Retried for a while: the VM's own IPv6 link-local address may still be tentative.
fn curl(ns: &str, url: &str, header: &str) -> String {
    let mut last = String::new();
    let got = ns_testkit::poll(Duration::from_secs(15), || {
        let out = Command::new("ip")
            .args([
                "netns", "exec", ns, "curl", "-sS", "-g", "-m", "10", "-H", header, "-D", "-", url,
            ])
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        last = format!("{text} {}", String::from_utf8_lossy(&out.stderr));
        text.starts_with("HTTP/1.1 200").then_some(text)
    });
    got.unwrap_or_else(|| panic!("{url} from {ns}: {last}"))
}

/// The request the agent got says `header: value` once and X-Forwarded-For `xff`.
fn assert_identity(answer: &str, header: &str, value: &str, xff: &str) {
    assert_eq!(
        answer.matches(&format!("{header}: {value}\r\n")).count(),
        1,
        "{answer}"
    );
    assert!(
        answer.contains(&format!("X-Forwarded-For: {xff}\r\n")),
        "{answer}"
    );
    assert!(!answer.contains("spoofed"), "{answer}");
}

/// One root test's Neutron: its driver code with the drop-in first on PATH, the agent
/// stand-in, a per-run name prefix. Dropped in this order: Neutron first (no more respawns),
/// then the stand-in, then the directory, which kills the proxies left (their argv names it).
struct Fixture {
    h: Harness,
    agent: StandIn,
    prefix: String,
    _dir: TempDir,
}

impl Fixture {
    fn new(test: &str, tag: &str) -> Option<Fixture> {
        if !require_root(test) {
            return None;
        }
        let py = venv_python(test)?;
        let dir = TempDir::new(tag).reaping();
        let bin = dropin_bin(&dir);
        let agent = StandIn::start_at(dir.join("agent.sock"), ECHO);
        Some(Fixture {
            h: Harness::start(&py, &dir.join("state"), agent.path(), &bin),
            agent,
            prefix: unique_prefix(),
            _dir: dir,
        })
    }

    /// Namespace `<kind><prefix>` joined to a VM namespace by the veth of `subnet`:
    /// (namespace, vm, namespace's address, vm's address).
    async fn topology(&self, kind: &str, subnet: u8) -> (TestNs, TestNs, IpAddr, IpAddr) {
        let ns = TestNs::new(&format!("{kind}{}", self.prefix)).expect("netns");
        let vm = TestNs::new(&format!("vm{subnet}-{}", self.prefix)).expect("vm netns");
        let (a, b) = link(&ns, &vm, subnet).await.expect("veth");
        (ns, vm, a, b)
    }
}

#[tokio::test]
async fn ml2_driver_runs_the_dropin_for_a_router_and_a_network() {
    let Some(mut f) = Fixture::new(
        "ml2_driver_runs_the_dropin_for_a_router_and_a_network",
        "dropin-ml2",
    ) else {
        return;
    };
    let (qr, vm, router_ip, vm_ip) = f.topology("qrouter-", 71).await;
    let (prefix, h) = (f.prefix.clone(), &mut f.h);
    let mut pids = PidGuard::default();

    // The l3 agent's call for a router: 0.0.0.0:9697 in qrouter-.
    let rid = format!("r-{prefix}");
    let spawn = format!(
        "spawn driver=ml2 ns={} port=9697 router_id={rid}",
        qr.name()
    );
    let a = h.call(&spawn);
    assert!(is(&a, "active"), "{a:?}");
    let first = pid(&a);
    pids.0.push(first);
    assert_ours(first);
    let url = format!("http://{router_ip}:9697/latest/meta-data/");
    let spoof = "X-Neutron-Router-ID: spoofed";
    let answer = curl(vm.name(), &url, spoof);
    assert_identity(&answer, "X-Neutron-Router-ID", &rid, &vm_ip.to_string());

    // kill -9: the ProcessMonitor (every 1 s here) starts it again.
    kill9(first);
    let state = format!("state driver=ml2 uuid={rid} ns={}", qr.name());
    let second = eventually(
        "the ProcessMonitor respawns the drop-in",
        Duration::from_secs(30),
        || {
            let s = h.call(&state);
            // `pid`, then `active`, are two reads of the pid file: during a respawn (Neutron
            // deletes the file before each start; the new proxy writes it once bound) `pid`
            // can read None and `active` True a moment later.
            let p = s.get("pid").and_then(|p| p.parse::<u32>().ok());
            p.filter(|&p| is(&s, "active") && p != first)
        },
    );
    pids.0.push(second);
    assert_ours(second);
    curl(vm.name(), &url, spoof);

    // A changed config (another [metadata_haproxy] timeout_server): stop, rewrite, start.
    let a = h.call(&format!("{spawn} timeout_server=33"));
    let third = pid(&a);
    pids.0.push(third);
    assert!(is(&a, "active") && third != second, "{a:?}");
    eventually("the old proxy stops", Duration::from_secs(4), || {
        (!alive(second)).then_some(())
    });
    let cfg = std::fs::read_to_string(&a["cfg"]).expect("config");
    assert!(cfg.contains("timeout server          33s"), "{cfg}");
    curl(vm.name(), &url, spoof);

    // destroy: SIGTERM, gone, pid file and config removed.
    let d = h.call(&format!("destroy driver=ml2 uuid={rid} ns={}", qr.name()));
    assert!(
        !is(&d, "active") && !is(&d, "pid_file_exists") && !is(&d, "cfg_exists"),
        "{d:?}"
    );
    // Neutron deletes the pid file right after `kill -15`, so it reports inactive before the
    // process is gone: the proxy must be gone well within Neutron's 5 s SIGKILL deadline.
    eventually(
        "the proxy exits on Neutron's SIGTERM",
        Duration::from_secs(4),
        || (!alive(third)).then_some(()),
    );
    assert!(!Path::new(&a["pid_file"]).exists());

    // The dhcp agent's call for an isolated network: 169.254.169.254:80 in qdhcp-.
    let (qd, vm2, _, vm2_ip) = f.topology("qdhcp-", 72).await;
    let h = &mut f.h;
    let nl = Netlink::open(qd.netns()).await.expect("netlink");
    let md: IpAddr = "169.254.169.254".parse().expect("ip");
    nl.ensure_address("va72", md, 32)
        .await
        .expect("169.254.169.254");
    let nid = format!("n-{prefix}");
    let a = h.call(&format!(
        "spawn driver=ml2 ns={} port=80 network_id={nid} bind_address=169.254.169.254",
        qd.name()
    ));
    assert!(is(&a, "active"), "{a:?}");
    pids.0.push(pid(&a));
    assert_ours(pid(&a));
    let answer = curl(
        vm2.name(),
        "http://169.254.169.254/",
        "X-Neutron-Network-ID: spoofed",
    );
    assert_identity(&answer, "X-Neutron-Network-ID", &nid, &vm2_ip.to_string());
    assert!(!answer.contains("X-Neutron-Router-ID"), "{answer}");
    let d = h.call(&format!("destroy driver=ml2 uuid={nid} ns={}", qd.name()));
    assert!(!is(&d, "active") && !is(&d, "pid_file_exists"), "{d:?}");
}

#[tokio::test]
async fn ovn_driver_runs_the_dropin_with_x_ovn_network_id_on_v4_and_v6() {
    let Some(mut f) = Fixture::new(
        "ovn_driver_runs_the_dropin_with_x_ovn_network_id_on_v4_and_v6",
        "dropin-ovn",
    ) else {
        return;
    };
    let (meta, vm, _, vm_ip) = f.topology("ovnmeta-", 73).await;
    let prefix = f.prefix.clone();
    let nl = Netlink::open(meta.netns()).await.expect("netlink");
    for (a, len) in [("169.254.169.254", 32), ("fe80::a9fe:a9fe", 128)] {
        let a: IpAddr = a.parse().expect("ip");
        nl.ensure_address("va73", a, len).await.expect("address");
    }
    let h = &mut f.h;
    let nid = format!("n-{prefix}");
    // The OVN metadata agent's call (provision_datapath): v4 and the tap's v6 bind; Neutron
    // waits for DAD itself first.
    let a = h.call(&format!(
        "spawn driver=ovn ns={} port=80 network_id={nid} bind_address=169.254.169.254 \
         bind_address_v6=fe80::a9fe:a9fe bind_interface=va73",
        meta.name()
    ));
    assert!(is(&a, "active"), "{a:?}");
    let _pids = PidGuard(vec![pid(&a)]);
    assert_ours(pid(&a));
    assert!(a["cfg"].contains("/ovn-metadata-proxy/"), "{a:?}");
    let spoof = "X-OVN-Network-ID: spoofed";
    let v4 = curl(vm.name(), "http://169.254.169.254/latest/meta-data/", spoof);
    assert_identity(&v4, "X-OVN-Network-ID", &nid, &vm_ip.to_string());
    let v6 = curl(
        vm.name(),
        "http://[fe80::a9fe:a9fe%25vb73]/openstack",
        spoof,
    );
    assert!(v6.contains("X-Forwarded-For: fe80::"), "{v6}");
    // The agent stand-in: every request carried the network once, under the OVN header only.
    let seen = f.agent.received();
    assert_eq!(seen.len(), 2);
    for r in &seen {
        assert_eq!(
            r.head
                .matches(&format!("X-OVN-Network-ID: {nid}\r\n"))
                .count(),
            1,
            "{}",
            r.head
        );
        assert!(
            !r.head.contains("spoofed") && !r.head.contains("X-Neutron-"),
            "{}",
            r.head
        );
    }
    let d = h.call(&format!("destroy driver=ovn uuid={nid} ns={}", meta.name()));
    assert!(!is(&d, "active") && !is(&d, "pid_file_exists"), "{d:?}");
}

/// What `parse` makes of Neutron's rendering of one variant.
fn rendered(h: &mut Harness, dir: &TempDir, name: &str, args: &str) -> (String, HaproxyConfig) {
    let out = dir.join(format!("{name}.conf"));
    let pid_file = dir.join(format!("{name}.pid.haproxy"));
    h.call(&format!(
        "render {args} pid_file={} out={}",
        pid_file.display(),
        out.display()
    ));
    let text = std::fs::read_to_string(&out).expect("rendered");
    let parsed = haproxy::parse(&text, &out).unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
    assert_eq!(parsed.pidfile.as_deref(), Some(pid_file.as_path()));
    (text, parsed)
}

#[test]
fn every_variant_neutron_renders_is_ours() {
    let Some(py) = venv_python("every_variant_neutron_renders_is_ours") else {
        return;
    };
    let dir = TempDir::new("dropin-render");
    let socket = dir.join("agent.sock");
    let mut h = Harness::start(&py, &dir.join("state"), &socket, &dir.join("bin"));
    let binds = |c: &HaproxyConfig| c.binds.iter().map(ToString::to_string).collect::<Vec<_>>();

    let (text, c) = rendered(&mut h, &dir, "router", "driver=ml2 port=9697 router_id=r1");
    assert_eq!((c.resource.kind(), c.resource.id()), (Kind::Router, "r1"));
    assert_eq!(binds(&c), ["0.0.0.0:9697"]);
    assert_eq!(c.server, socket);
    // Our copy of Neutron's templates (tests/data) renders the very same text.
    let (user, group) = (
        c.user.clone().expect("user").0,
        c.group.clone().expect("group").0,
    );
    let pid_file = dir.join("router.pid.haproxy").display().to_string();
    let sock = socket.display().to_string();
    let ours = render(
        &[GLOBAL, LISTEN, HEADERS_ML2],
        &[
            ("res_id", "r1"),
            ("user", &user),
            ("group", &group),
            ("pidfile", &pid_file),
            ("unix_socket_path", &sock),
        ],
        ROUTER_DEFAULTS,
    );
    assert_eq!(ours, text);

    let (_, c) = rendered(
        &mut h,
        &dir,
        "router6",
        "driver=ml2 port=9697 router_id=r1 bind_address=::",
    );
    assert_eq!(binds(&c), ["[::]:9697"]);

    let net = "port=80 network_id=n1 bind_address=169.254.169.254 \
               bind_address_v6=fe80::a9fe:a9fe bind_interface=tap0";
    let (text, c) = rendered(&mut h, &dir, "dhcp", &format!("driver=ml2 {net}"));
    assert!(
        text.contains("bind [fe80::a9fe:a9fe]:80 interface tap0"),
        "{text}"
    );
    assert_eq!((c.resource.kind(), c.resource.id()), (Kind::Network, "n1"));
    assert_eq!(
        binds(&c),
        ["169.254.169.254:80", "[fe80::a9fe:a9fe]:80%tap0"]
    );

    // The dhcp agent's metadata network: the router's id on the dhcp bind.
    let (_, c) = rendered(
        &mut h,
        &dir,
        "metanet",
        "driver=ml2 port=80 router_id=r1 bind_address=169.254.169.254",
    );
    assert_eq!(
        (c.resource.kind(), binds(&c)[0].as_str()),
        (Kind::Router, "169.254.169.254:80")
    );

    let (_, c) = rendered(&mut h, &dir, "ovn", &format!("driver=ovn {net}"));
    assert_eq!(
        (c.resource.kind(), c.resource.id()),
        (Kind::OvnNetwork, "n1")
    );
    assert_eq!(binds(&c).len(), 2);

    for (v, ipv6) in [("4", false), ("6", true)] {
        let (_, c) = rendered(
            &mut h,
            &dir,
            &format!("rate{v}"),
            &format!("driver=ml2 port=9697 router_id=r1 rate_ip_versions={v} base=7/20 burst=3/5"),
        );
        assert_eq!(c.tables.len(), 2);
        assert!(c.tables.iter().all(|t| t.ipv6 == ipv6 && t.size == 10_000));
        assert!(c.tables.iter().all(|t| t.expire == Duration::from_secs(20)));
        assert_eq!(
            c.denies,
            [
                ("base_rate_limiter".to_owned(), 7),
                ("burst_rate_limiter".to_owned(), 3)
            ]
        );
        let periods: Vec<_> = c.tables.iter().map(|t| t.period.as_secs()).collect();
        assert_eq!(periods, [20, 5]);
    }
}

/// `n` requests with curl in `ns` (one connection, kept alive); their status codes.
fn statuses(ns: &str, url: &str, n: usize) -> Vec<String> {
    let mut each = Vec::new();
    for _ in 0..n {
        each.extend(["-o", "/dev/null", url]);
    }
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "curl",
            "-s",
            "-g",
            "-m",
            "10",
            "-w",
            "%{http_code} ",
        ])
        .args(each)
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Start `haproxy -f conf` in `ns` (real or drop-in), run the request sequence from every
/// client URL, stop it; the statuses.
fn sequence(start: &mut Command, pid_file: &Path, ns: &str, urls: &[String]) -> Vec<Vec<String>> {
    // The drop-in's start-up lines (no /dev/log in CI) would only clutter the test output.
    let status = start.stderr(Stdio::null()).status().expect("start");
    assert!(status.success(), "{start:?}: {status:?}");
    let pid: u32 = std::fs::read_to_string(pid_file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    let _guard = PidGuard(vec![pid]);
    let out = urls.iter().map(|u| statuses(ns, u, 9)).collect();
    ns_testkit::proc::signal(pid, "TERM");
    eventually(
        "the proxy exits on SIGTERM",
        Duration::from_secs(10),
        || (!alive(pid)).then_some(()),
    );
    let _ = std::fs::remove_file(pid_file);
    out
}

#[test]
fn rate_limits_answer_like_the_real_haproxy_under_neutrons_config() {
    let test = "rate_limits_answer_like_the_real_haproxy_under_neutrons_config";
    if !require_root(test)
        || !ns_testkit::require(
            test,
            Path::new(REAL_HAPROXY).is_file(),
            "the haproxy package",
        )
    {
        return;
    }
    let Some(py) = venv_python(test) else { return };
    nix::sys::prctl::set_child_subreaper(true).expect("subreaper");
    let prefix = unique_prefix();
    let dir = TempDir::new("dropin-rate").reaping();
    let agent = StandIn::start_at(dir.join("agent.sock"), ECHO);
    let ns = netns(&format!("rl-{prefix}"));
    let mut h = Harness::start(&py, &dir.join("state"), agent.path(), &dir.join("bin"));
    let ours = bin_path("ns-metadata-proxy");
    // The l3 agent on a host with IPv6: `bind :::9697`, dual-stack. `type ip` tracks IPv4
    // sources only; `type ipv6` tracks both (IPv4 as v4-mapped).
    for (v, v6_limited) in [("4", false), ("6", true)] {
        let conf = dir.join(format!("rate{v}.conf"));
        let pid_file = dir.join(format!("rate{v}.pid.haproxy"));
        h.call(&format!(
            "render driver=ml2 port=9697 router_id=r-{prefix} bind_address=:: \
             rate_ip_versions={v} base=6/10 burst=4/60 pid_file={} out={}",
            pid_file.display(),
            conf.display()
        ));
        let urls = [
            "http://127.0.0.1:9697/".to_owned(),
            "http://[::1]:9697/".to_owned(),
        ];
        let real = sequence(
            Command::new("ip")
                .args(["netns", "exec", ns.name(), REAL_HAPROXY, "-f"])
                .arg(&conf),
            &pid_file,
            ns.name(),
            &urls,
        );
        let dropin = sequence(
            Command::new("ip")
                .args(["netns", "exec", ns.name()])
                .arg(&ours)
                .arg("-f")
                .arg(&conf),
            &pid_file,
            ns.name(),
            &urls,
        );
        assert_eq!(dropin, real, "ip_versions={v}");
        let limited: Vec<String> = ["200"; 4]
            .into_iter()
            .chain(["429"; 5])
            .map(String::from)
            .collect();
        let open = vec!["200".to_owned(); 9];
        assert_eq!(real[0], limited, "IPv4 is limited in both table types");
        assert_eq!(
            real[1],
            if v6_limited { limited } else { open },
            "ip_versions={v}"
        );
    }
}
