//! Helpers for the root tests: an HTTP GET run inside a namespace and a supervisor config
//! wired to the real proxy binary. The agent stand-in is ns-testkit's, in its `Headers` mode
//! (it answers `router=<X-Neutron-Router-ID> network=<…> xff=<…>`).
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ns_metadata_spawner::config::Config;
use ns_metadata_spawner::netns_platform::Namespaces;
use ns_metadata_spawner::records::Records;
use ns_metadata_spawner::supervisor::Supervisor;
use ns_netns::Netns;
pub use ns_testkit::agent::{Behave, StandIn};
use ns_testkit::http::Blocking;
use ns_testkit::netns::TestNs;
use ns_testkit::TempDir;
use ns_testkit::{bin_path, ChildGuard};

/// Where a VM finds the metadata service.
pub const META: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(169, 254, 169, 254), 80));

/// The agent stand-in on the socket the configs below name.
pub fn agent(dir: &Path) -> StandIn {
    StandIn::start_at(dir.join("agent.sock"), Behave::Headers)
}

/// GET /latest/meta-data/ at `addr` from inside `ns` (a blocking socket on a thread that
/// entered the namespace); the body on a 200, else an error string.
pub fn get_in(ns: &Netns, addr: SocketAddr) -> Result<String, String> {
    ns.run(move || -> Result<String, String> {
        let mut c = Blocking::tcp(addr, Duration::from_secs(2)).map_err(|e| format!("connect: {e}"))?;
        c.send(b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n")
            .map_err(|e| format!("write: {e}"))?;
        let r = c
            .read(false, Duration::from_secs(5))
            .ok_or("no complete answer")?;
        if r.status != 200 {
            return Err(format!("not 200: {}", r.head));
        }
        Ok(r.text())
    })
    .map_err(|e| e.to_string())?
}

/// A config for the real proxy binary under `dir`.
pub fn real_config(dir: &Path) -> Config {
    let mut c = Config::defaults().with_overrides(Some(dir), None);
    c.proxy_binary = bin_path("ns-metadata-proxy");
    c.metadata_proxy_socket = dir.join("agent.sock");
    c.stop_timeout = Duration::from_secs(3);
    c
}

/// The same as an INI file (for the daemon binary).
pub fn write_ini(dir: &Path, extra: &str) -> PathBuf {
    let p = dir.join("spawner.ini");
    let text = format!(
        "[DEFAULT]\nmetadata_proxy_socket = {}\n{extra}\n[spawner]\nstate_dir = {}\nproxy_binary = {}\nstop_timeout = 3\n",
        dir.join("agent.sock").display(),
        dir.display(),
        bin_path("ns-metadata-proxy").display()
    );
    std::fs::write(&p, text).expect("write ini");
    p
}

/// `ini` with `[spawner] hang_timeout = 1` (the last section of [`write_ini`]'s files): hung
/// processes are watched every 250 ms, a quarter of the timeout, in either model.
pub fn with_hang_timeout(ini: &Path) -> PathBuf {
    let text = std::fs::read_to_string(ini).expect("ini");
    std::fs::write(ini, format!("{text}hang_timeout = 1\n")).expect("ini");
    ini.to_owned()
}

/// Wait until the daemon's log in `dir` holds `what`; the log in the panic message if not.
pub fn logged(dir: &Path, what: &str) {
    let log = dir.join("daemon.log");
    let found = ns_testkit::wait_until(Duration::from_secs(15), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains(what))
    });
    assert!(
        found,
        "the log never said {what:?}:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// How long a daemon may take to send READY=1.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Start the daemon and wait for its READY=1 on a private NOTIFY_SOCKET.
pub fn start_daemon(dir: &Path, ini: &Path, extra: &[&str]) -> ChildGuard {
    start_daemon_by(
        Command::new(env!("CARGO_BIN_EXE_ns-metadata-spawner")),
        dir,
        ini,
        extra,
    )
}

/// The same, run by `cmd` (the daemon binary itself, or a wrapper with the binary as its
/// last argument so far).
pub fn start_daemon_by(cmd: Command, dir: &Path, ini: &Path, extra: &[&str]) -> ChildGuard {
    let (guard, rx) = spawn_daemon(cmd, dir, ini, extra);
    let msg = next_notify(&rx, dir, |m| !is_progress(m));
    assert_eq!(msg, "READY=1");
    guard
}

/// Before READY the OVN source says what it waits for (`STATUS=`) and pushes systemd's
/// start timeout back (`EXTEND_TIMEOUT_USEC=`).
fn is_progress(msg: &str) -> bool {
    msg.starts_with("STATUS=") || msg.starts_with("EXTEND_TIMEOUT_USEC=")
}

/// Spawn `cmd … --config-file INI run EXTRA` with its log in `dir/daemon.log` and a private
/// NOTIFY_SOCKET, whose receiving end is returned (see [`next_notify`]).
pub fn spawn_daemon(
    mut cmd: Command,
    dir: &Path,
    ini: &Path,
    extra: &[&str],
) -> (ChildGuard, UnixDatagram) {
    static N: AtomicU32 = AtomicU32::new(0);
    let notify = dir.join(format!("notify-{}.sock", N.fetch_add(1, Ordering::Relaxed)));
    let _ = std::fs::remove_file(&notify);
    let rx = UnixDatagram::bind(&notify).expect("notify socket");
    rx.set_read_timeout(Some(READY_TIMEOUT)).expect("timeout");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("daemon.log"))
        .expect("log");
    let child = cmd
        .arg("--config-file")
        .arg(ini)
        .arg("run")
        .args(extra)
        .env("NOTIFY_SOCKET", &notify)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn daemon");
    (ChildGuard(child), rx)
}

/// The next sd_notify datagram for which `want` holds (others skipped), each within
/// [`READY_TIMEOUT`]; the daemon's log in the panic message if none comes.
pub fn next_notify(rx: &UnixDatagram, dir: &Path, want: impl Fn(&str) -> bool) -> String {
    let mut buf = [0u8; 1024];
    loop {
        let n = rx.recv(&mut buf).unwrap_or_else(|e| {
            panic!(
                "no sd_notify message: {e}; log:\n{}",
                std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
            )
        });
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if want(&msg) {
            return msg;
        }
    }
}

/// A supervisor on real namespaces with its reconcile loop running.
pub fn supervisor(
    dir: &TempDir,
    tweak: impl FnOnce(&mut ns_metadata_spawner::config::Config),
) -> Supervisor<Namespaces> {
    let mut cfg = real_config(dir.path());
    tweak(&mut cfg);
    let sup = Supervisor::new(Namespaces, cfg, Records::default());
    let looper = sup.clone();
    tokio::spawn(async move { looper.run_loop().await });
    sup
}

/// GET from the vm until it answers (the proxy may still be starting), or the last error.
pub async fn answer(vm: &TestNs) -> Result<String, String> {
    let mut last = String::new();
    for _ in 0..300 {
        match get_in(vm.netns(), META) {
            Ok(b) => return Ok(b),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(last)
}

/// Run the CLI with `--config-file INI ARGS`: (success, stdout then stderr).
pub fn cli(ini: &Path, args: &[&str]) -> (bool, String) {
    let (code, out) = cli_code(ini, args);
    (code == Some(0), out)
}

/// The same with the exit code (`None`: killed by a signal).
pub fn cli_code(ini: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ns-metadata-spawner"))
        .arg("--config-file")
        .arg(ini)
        .args(args)
        .output()
        .expect("cli");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `ns-metadata-spawner router add ID` to the daemon of `ini`.
pub fn add_router(ini: &Path, id: &str) {
    let (ok, out) = cli(ini, &["router", "add", id]);
    assert!(ok, "router add {id}: {out}");
    // Saved before anything kills the daemon: a restarted one knows the router.
    let records = ini.parent().expect("dir").join("records.json");
    ns_testkit::eventually("router saved", Duration::from_secs(15), || {
        std::fs::read_to_string(&records)
            .ok()?
            .contains(&format!("\"{id}\""))
            .then_some(())
    });
}

/// The heartbeat in the statistics block of key `key` (state dir `dir`), as the proxy wrote it.
pub fn beat_of(dir: &Path, key: &str) -> Option<u64> {
    let block = std::fs::read(dir.join("stats").join(format!("{key}.stats"))).ok()?;
    let at = ns_contract::proxy_stats::SLOT_HEARTBEAT * 8;
    Some(u64::from_le_bytes(block.get(at..at + 8)?.try_into().ok()?))
}

/// The proxy of record `id` in `status --json` of the daemon on state dir `dir`.
pub fn proxy_json(dir: &Path, id: &str) -> Option<serde_json::Value> {
    let o = Command::new(env!("CARGO_BIN_EXE_ns-metadata-spawner"))
        .arg("--state-dir")
        .arg(dir)
        .args(["status", "--json"])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
    v["proxies"]
        .as_array()?
        .iter()
        .find(|p| p["id"] == id)
        .cloned()
}

/// The pid of record `id`'s proxy while it is running (daemon on state dir `dir`).
pub fn pid_of(dir: &Path, id: &str) -> Option<u32> {
    proxy_json(dir, id)
        .filter(|p| p["state"] == "running")
        .and_then(|p| p["pid"].as_u64())
        .and_then(|p| u32::try_from(p).ok())
}

/// An isolated network `id` with an IPv4 and an IPv6 DHCP subnet, its DHCP port on interface
/// `va{n}` with `dhcp_ip` (as `ns_testkit::netns::link(…, n)` makes them).
pub fn dual_stack_network(
    id: &str,
    n: u8,
    dhcp_ip: std::net::IpAddr,
) -> ns_metadata_spawner::records::Network {
    serde_json::from_value(serde_json::json!({
        "id": id, "interface": format!("va{n}"),
        "subnets": [
            {"id": "s1", "cidr": format!("10.250.{n}.0/24"), "gateway_ip": null, "enable_dhcp": true, "ip_version": 4},
            {"id": "s6", "cidr": format!("fd00:250:{n}::/64"), "gateway_ip": null, "enable_dhcp": true, "ip_version": 6}
        ],
        "ports": [{"id": "pd", "device_owner": "network:dhcp", "device_id": "d", "fixed_ips": [{"subnet_id": "s1", "ip_address": dhcp_ip.to_string()}]}]
    }))
    .expect("network json")
}

/// `[fe80::a9fe:a9fe]:80` on interface `iface` of `ns` (its scope id looked up there).
pub async fn v6_meta(ns: &Netns, iface: &str) -> SocketAddr {
    let nl = ns_netns::Netlink::open(ns).await.expect("netlink");
    let index = nl.link_index(iface).await.expect("index");
    SocketAddr::V6(std::net::SocketAddrV6::new(
        "fe80::a9fe:a9fe".parse().expect("ip"),
        80,
        0,
        index,
    ))
}

/// Sends SIGCONT to `pid` on drop, so a failing test never leaves a stopped process behind.
pub struct Continue(pub u32);

impl Drop for Continue {
    fn drop(&mut self) {
        let pid = self.0;
        let _ = std::panic::catch_unwind(|| ns_testkit::proc::signal(pid, "CONT"));
    }
}

/// Whether `pid` is stopped (state `T` in `/proc/PID/stat`).
pub fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
    })
}

/// Namespaces `qrouter-<prefix><tag><i>` for i in 0..n: the ids and the namespaces.
pub fn routers(prefix: &str, tag: &str, n: usize) -> (Vec<String>, Vec<ns_testkit::netns::TestNs>) {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}{tag}{i}")).collect();
    let nss = ids
        .iter()
        .map(|id| ns_testkit::netns::TestNs::new(&format!("qrouter-{id}")).expect("router ns"))
        .collect();
    (ids, nss)
}

/// The daemon's `/metrics` text over its control socket in `dir` (empty if it did not answer).
pub fn scrape(dir: &Path) -> String {
    let mut c = Blocking::unix(&dir.join("control.sock")).expect("control socket");
    c.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send");
    c.read(false, Duration::from_secs(5))
        .map(|r| r.text())
        .unwrap_or_default()
}

/// GET requests in a loop from inside a namespace, on a thread, until finished.
pub struct RequestLoop {
    go: std::sync::Arc<std::sync::atomic::AtomicBool>,
    answered: std::sync::Arc<std::sync::atomic::AtomicU32>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl RequestLoop {
    pub fn start(ns: &ns_netns::Netns) -> RequestLoop {
        use std::sync::atomic::Ordering::Relaxed;
        let ns = ns.try_clone().expect("ns");
        let go = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let answered = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (g, a) = (go.clone(), answered.clone());
        let thread = std::thread::spawn(move || {
            let mut failed = Vec::new();
            while g.load(Relaxed) {
                match get_in(&ns, META) {
                    Ok(_) => {
                        a.fetch_add(1, Relaxed);
                    }
                    Err(e) => failed.push(e),
                }
            }
            failed
        });
        RequestLoop {
            go,
            answered,
            thread,
        }
    }

    /// Requests answered with a 200 so far.
    pub fn answered(&self) -> u32 {
        self.answered.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stop: how many were answered, and how each other one failed.
    pub fn finish(self) -> (u32, Vec<String>) {
        self.go.store(false, std::sync::atomic::Ordering::Relaxed);
        let answered = self.answered;
        let failed = self.thread.join().expect("request loop");
        (answered.load(std::sync::atomic::Ordering::Relaxed), failed)
    }
}

/// A hang for real under a request loop from `ns`: `old` frozen in `freezer`, then waited
/// for its replacement (`current` names the process serving now). The new pid, once it has
/// answered; no request was refused meanwhile (they wait in the accept queues), and where a
/// frozen task cannot die (cgroup v1) the old one is still there: the replacement did not
/// wait for it.
pub fn hang_under_load(
    freezer: &Freezer,
    ns: &Netns,
    old: u32,
    current: impl Fn() -> Option<u32>,
) -> u32 {
    let t = Duration::from_secs(15);
    let load = RequestLoop::start(ns);
    ns_testkit::eventually("answers before", t, || (load.answered() > 0).then_some(()));
    freezer.freeze(old);
    let new = ns_testkit::eventually("a new process", t, || current().filter(|&p| p != old));
    let before = load.answered();
    ns_testkit::eventually("answers through the new process", t, || {
        (load.answered() > before).then_some(())
    });
    let (ok, failed) = load.finish();
    assert!(
        failed.iter().all(|e| !e.contains("refused")),
        "{ok} ok, failed: {failed:?}"
    );
    if !freezer.frozen_can_die() {
        assert!(
            ns_testkit::proc::alive(old),
            "{}: the replacement did not wait for the frozen process to die",
            freezer.kind()
        );
    }
    new
}

/// After [`hang_under_load`]: thawed (the freezer dropped), the old process dies of its
/// SIGKILL, the new one runs on (`current`), and the daemon's log in `dir` says `hung` once.
pub fn thawed_and_gone(
    freezer: Freezer,
    dir: &Path,
    (old, new): (u32, u32),
    current: impl Fn() -> Option<u32>,
    hung: &str,
) {
    drop(freezer);
    ns_testkit::eventually(
        "the old process gone once thawed",
        Duration::from_secs(15),
        || (!ns_testkit::proc::alive(old)).then_some(()),
    );
    assert_eq!(current(), Some(new), "the new one runs on");
    let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
    assert_eq!(log.matches(hung).count(), 1, "one hang: {log}");
}

/// A cgroup freezer that hangs the processes a test puts in it for real (no hook in the
/// binaries): the cgroup v1 freezer where it is mounted (a frozen task cannot even die until
/// thawed, the hardest case for a supervisor), else cgroup v2's `cgroup.freeze` (where
/// SIGKILL kills a frozen task). On drop it is thawed, whatever is still in it goes back to
/// the hierarchy's root, and the cgroup is removed.
pub struct Freezer {
    dir: PathBuf,
    v1: bool,
}

impl Freezer {
    /// [`Freezer::new`], or `None` with `test` skipped (saying what is missing).
    pub fn for_test(test: &str) -> Option<Freezer> {
        Freezer::new()
            .map_err(|what| ns_testkit::skip(test, &format!("needs {what}")))
            .ok()
    }

    /// A cgroup of its own (`ns-metadata-test-<pid>-<n>`) in the v1 freezer hierarchy
    /// (`/sys/fs/cgroup/freezer`) or the v2 one (`/sys/fs/cgroup/unified`, or
    /// `/sys/fs/cgroup` itself); the reason neither works otherwise.
    pub fn new() -> Result<Freezer, String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "ns-metadata-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let v1 = Path::new("/sys/fs/cgroup/freezer");
        if v1.join("cgroup.procs").is_file() {
            let dir = v1.join(&name);
            std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            return Ok(Freezer { dir, v1: true });
        }
        for root in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
            let root = Path::new(root);
            if !root.join("cgroup.controllers").is_file() {
                continue;
            }
            let dir = root.join(&name);
            if std::fs::create_dir(&dir).is_ok() {
                if dir.join("cgroup.freeze").is_file() {
                    return Ok(Freezer { dir, v1: false });
                }
                let _ = std::fs::remove_dir(&dir);
            }
        }
        Err("a cgroup freezer (cgroup v1 freezer or cgroup v2 cgroup.freeze)".to_owned())
    }

    /// Which freezer this is, for messages.
    pub fn kind(&self) -> &'static str {
        if self.v1 {
            "cgroup v1 freezer"
        } else {
            "cgroup v2 cgroup.freeze"
        }
    }

    /// Whether a frozen task can die before it is thawed (v2) or not (v1).
    pub fn frozen_can_die(&self) -> bool {
        !self.v1
    }

    /// Move `pid` (every thread of it) into the cgroup and freeze it; returns once the
    /// kernel says it is frozen.
    pub fn freeze(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).expect("into the cgroup");
        let (file, on, done) = self.switch();
        std::fs::write(self.dir.join(file), on).expect("freeze");
        ns_testkit::eventually("frozen", Duration::from_secs(10), || {
            let state = std::fs::read_to_string(self.dir.join(done)).ok()?;
            let frozen = if self.v1 {
                state.trim() == "FROZEN"
            } else {
                state.lines().any(|l| l == "frozen 1")
            };
            frozen.then_some(())
        });
    }

    /// Thaw whatever is in the cgroup.
    pub fn thaw(&self) {
        let file = self.switch().0;
        let off = if self.v1 { "THAWED" } else { "0" };
        let _ = std::fs::write(self.dir.join(file), off);
    }

    /// The file that freezes, its "frozen" value, and the file that says it is done.
    fn switch(&self) -> (&'static str, &'static str, &'static str) {
        if self.v1 {
            ("freezer.state", "FROZEN", "freezer.state")
        } else {
            ("cgroup.freeze", "1", "cgroup.events")
        }
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        self.thaw();
        let root = self.dir.parent().map(|p| p.join("cgroup.procs"));
        let gone = ns_testkit::wait_until(Duration::from_secs(10), || {
            // Processes still alive (not killed meanwhile) go back to the root; dying ones
            // leave by themselves once thawed.
            if let (Ok(procs), Some(root)) = (
                std::fs::read_to_string(self.dir.join("cgroup.procs")),
                &root,
            ) {
                for pid in procs.split_whitespace() {
                    let _ = std::fs::write(root, pid);
                }
            }
            std::fs::remove_dir(&self.dir).is_ok()
        });
        if !gone {
            eprintln!("cannot remove the test cgroup {}", self.dir.display());
        }
    }
}

/// The real uid of `pid` (`/proc/PID/status`).
pub fn uid_of(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The boot race of a node whose agent runs as its own user (Neutron's `neutron`): the
/// spawner (`shared`: in the shared model) starts before the agent, so the process serving a
/// router runs as the spawner's uid (0, without capabilities) and could not connect to a
/// socket of another user's mode 0644. Once the agent's socket appears (owner 65534 here),
/// the spawner sees the new owner at its next agent check (every 5 s) and replaces that
/// process with one running as the owner, without a request to the router failing for
/// anything but the missing agent; the VM is answered.
pub fn agent_started_late_as_its_own_user(name: &str, shared: bool) {
    if !ns_testkit::require_root(name) {
        return;
    }
    let dir = TempDir::new("rt-late-agent").reaping();
    let (ids, nss) = routers(&ns_testkit::netns::unique_prefix(), "la", 1);
    let ini = write_ini(dir.path(), "");
    if shared {
        let text = std::fs::read_to_string(&ini).expect("ini");
        std::fs::write(&ini, format!("{text}proxy_model = shared\n")).expect("ini");
    }
    let _daemon = start_daemon(dir.path(), &ini, &[]);
    add_router(&ini, &ids[0]);
    let t = Duration::from_secs(15);
    let old = ns_testkit::eventually("serving", t, || pid_of(dir.path(), &ids[0]));
    assert_eq!(
        uid_of(old),
        Some(0),
        "no agent socket yet: the spawner's uid"
    );
    assert!(get_in(nss[0].netns(), META).is_err(), "no agent yet");

    let _agent = agent(dir.path());
    let sock = dir.path().join("agent.sock");
    std::os::unix::fs::chown(&sock, Some(65534), Some(65534)).expect("chown socket");
    std::fs::set_permissions(&sock, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod socket");
    let new = ns_testkit::eventually("replaced by one running as the socket's owner", t, || {
        pid_of(dir.path(), &ids[0]).filter(|&p| p != old && uid_of(p) == Some(65534))
    });
    let body = ns_testkit::eventually("answered", t, || get_in(nss[0].netns(), META).ok());
    assert!(body.starts_with(&format!("router={} ", ids[0])), "{body}");
    assert_eq!(pid_of(dir.path(), &ids[0]), Some(new), "replaced once");
    logged(dir.path(), "the agent socket has a new owner");
}
