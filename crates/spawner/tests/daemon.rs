//! Root tests of the `ns-metadata-spawner run` daemon binary: sd_notify READY, the CLI
//! against it, kill -9 of the supervisor under a request loop (proxies adopted, no failed
//! request), a deleted namespace stops its proxy, a re-created one brings it back,
//! SIGTERM leaves proxies running, `--stop-proxies-on-exit` stops them, auto-enable.

mod root_common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ns_metadata_spawner::pidfile;
use ns_testkit::netns::{link, unique_prefix, TestNs};
use ns_testkit::proc::{alive, kill9};
use ns_testkit::TempDir;
use ns_testkit::{require_root, wait_until, ChildGuard};
use root_common::*;

const T: Duration = Duration::from_secs(15);

/// The daemons of these tests run one at a time: with auto_enable_routers a daemon would
/// otherwise claim (and on exit clean up) the other tests' qrouter- namespaces.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn status(ini: &Path) -> Vec<serde_json::Value> {
    // Exit 0 (every proxy runs) or 3 (one does not): both answer with the JSON.
    let o = Command::new(env!("CARGO_BIN_EXE_ns-metadata-spawner"))
        .arg("--config-file")
        .arg(ini)
        .args(["status", "--json"])
        .output()
        .expect("cli");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        matches!(o.status.code(), Some(0 | 3)),
        "{o:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("status json");
    serde_json::from_value(v["proxies"].clone()).expect("proxies")
}

fn proxy_of(ini: &Path, id: &str) -> Option<serde_json::Value> {
    status(ini).into_iter().find(|p| p["id"] == id)
}

fn running_pid(ini: &Path, id: &str) -> Option<u32> {
    proxy_of(ini, id)
        .filter(|p| p["state"] == "running")
        .and_then(|p| p["pid"].as_u64())
        .map(|p| p as u32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn supervisor_restart_adopts_without_a_failed_request_and_follows_namespaces() {
    if !require_root("supervisor_restart_adopts_without_a_failed_request_and_follows_namespaces") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let dir = TempDir::new("rt-daemon").reaping();
    let _agent = agent(dir.path());
    let ini = write_ini(dir.path(), "");
    let p = unique_prefix();
    let id = format!("{p}r");
    let rns = TestNs::new(&format!("qrouter-{id}")).expect("router ns");
    let vm = TestNs::new(&format!("{p}vm")).expect("vm ns");
    link(&rns, &vm, 111).await.expect("veth");

    let mut d = start_daemon(dir.path(), &ini, &[]);
    let (ok, out) = cli(&ini, &["router", "add", &id]);
    assert!(ok, "{out}");
    assert!(
        wait_until(T, || running_pid(&ini, &id).is_some()),
        "{:?}",
        status(&ini)
    );
    let pid = running_pid(&ini, &id).expect("pid");
    assert!(wait_until(T, || get_in(vm.netns(), META).is_ok()));
    // The daemon's NOTIFY_SOCKET is its unit's, not its proxies'.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    assert!(
        !environ
            .split(|&b| b == 0)
            .any(|kv| kv.starts_with(b"NOTIFY_SOCKET=")),
        "a proxy inherited NOTIFY_SOCKET"
    );
    // Saved within the save delay (persist.rs): a kill -9 before that would lose the record.
    assert!(wait_until(T, || std::fs::read_to_string(
        dir.path().join("records.json")
    )
    .is_ok_and(|t| t.contains(&id))));

    // A request loop from the vm while the supervisor is killed and restarted.
    let stop = Arc::new(AtomicBool::new(false));
    let (oks, fails) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let vmns = vm.netns().try_clone().expect("clone netns");
    let looper = {
        let (stop, oks, fails) = (stop.clone(), oks.clone(), fails.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match get_in(&vmns, META) {
                    Ok(_) => oks.fetch_add(1, Ordering::Relaxed),
                    Err(_) => fails.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    kill9(d.pid());
    let _ = d.0.wait();
    assert!(alive(pid), "the proxy outlives a killed supervisor");
    let before = oks.load(Ordering::Relaxed);
    let d2 = start_daemon(dir.path(), &ini, &[]);
    let st = proxy_of(&ini, &id).expect("listed");
    assert_eq!(st["pid"].as_u64(), Some(u64::from(pid)), "{st}");
    assert_eq!(st["adopted"], true, "{st}");
    assert!(wait_until(T, || oks.load(Ordering::Relaxed) > before + 20));
    stop.store(true, Ordering::Relaxed);
    looper.join().expect("loop");
    assert_eq!(
        fails.load(Ordering::Relaxed),
        0,
        "no request failed ({} ok)",
        oks.load(Ordering::Relaxed)
    );

    // The namespace goes away: the proxy is stopped and its pid file removed.
    drop(vm);
    drop(rns);
    let pid_file = pidfile::path(&dir.path().join("pids"), &id);
    assert!(
        wait_until(T, || !alive(pid) && !pid_file.exists()),
        "proxy or pid file left"
    );
    assert!(wait_until(T, || proxy_of(&ini, &id)
        .is_some_and(|p| p["state"] == "waiting")));
    // It comes back: the proxy starts again.
    let rns = TestNs::new(&format!("qrouter-{id}")).expect("router ns again");
    assert!(
        wait_until(T, || running_pid(&ini, &id).is_some()),
        "{:?}",
        status(&ini)
    );
    let pid3 = running_pid(&ini, &id).expect("pid");
    assert!(get_in(rns.netns(), META).is_ok());

    // SIGTERM: the supervisor exits 0 and leaves the proxy running.
    let mut d2 = d2;
    d2.signal("TERM");
    let st = d2.0.wait().expect("wait");
    assert!(st.success(), "{st:?}");
    assert!(!dir.path().join("control.sock").exists());
    assert!(alive(pid3));
    // --stop-proxies-on-exit: adopted, then stopped with the supervisor.
    let mut d3 = start_daemon(dir.path(), &ini, &["--stop-proxies-on-exit"]);
    assert_eq!(running_pid(&ini, &id), Some(pid3));
    d3.signal("TERM");
    assert!(d3.0.wait().expect("wait").success());
    assert!(!alive(pid3));
    assert!(!pid_file.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auto_enable_follows_qrouter_namespaces() {
    if !require_root("auto_enable_follows_qrouter_namespaces") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let dir = TempDir::new("rt-auto").reaping();
    let _agent = agent(dir.path());
    let ini = write_ini(dir.path(), "");
    std::fs::write(
        &ini,
        std::fs::read_to_string(&ini).expect("ini") + "auto_enable_routers = true\n",
    )
    .expect("ini");
    let p = unique_prefix();
    let before = format!("{p}a");
    let after = format!("{p}b");
    let ns_a = TestNs::new(&format!("qrouter-{before}")).expect("ns");
    let mut d = start_daemon(dir.path(), &ini, &["--stop-proxies-on-exit"]);
    assert!(
        running_pid(&ini, &before).is_some(),
        "present at start: {:?}",
        status(&ini)
    );
    let ns_b = TestNs::new(&format!("qrouter-{after}")).expect("ns");
    assert!(
        wait_until(T, || running_pid(&ini, &after).is_some()),
        "{:?}",
        status(&ini)
    );
    assert!(get_in(ns_b.netns(), META)
        .expect("answers")
        .starts_with(&format!("router={after} ")));
    let pid_b = running_pid(&ini, &after).expect("pid");
    drop(ns_b);
    assert!(wait_until(T, || proxy_of(&ini, &after).is_none() && !alive(pid_b)));
    d.signal("TERM");
    assert!(d.0.wait().expect("wait").success());
    drop(ns_a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_file_and_config_reread_on_sighup() {
    if !require_root("records_file_and_config_reread_on_sighup") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let dir = TempDir::new("rt-hup").reaping();
    let _agent = agent(dir.path());
    let p = unique_prefix();
    let (a, b) = (format!("{p}a"), format!("{p}b"));
    let _ns_a = TestNs::new(&format!("qrouter-{a}")).expect("ns");
    let _ns_b = TestNs::new(&format!("qrouter-{b}")).expect("ns");
    let records = dir.path().join("records.static.json");
    std::fs::write(&records, format!(r#"{{"routers": [{{"id": "{a}"}}]}}"#)).expect("records");
    let ini = write_ini(dir.path(), "");
    let base = std::fs::read_to_string(&ini).expect("ini")
        + &format!("records_file = {}\n", records.display());
    std::fs::write(&ini, &base).expect("ini");
    let mut d = start_daemon(dir.path(), &ini, &["--stop-proxies-on-exit"]);
    let pid_a = running_pid(&ini, &a).unwrap_or_else(|| {
        panic!(
            "a does not run: {:?} {}",
            status(&ini),
            std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default()
        )
    });

    std::fs::write(&records, format!(r#"{{"routers": [{{"id": "{b}"}}]}}"#)).expect("records");
    d.signal("HUP");
    assert!(
        wait_until(T, || running_pid(&ini, &b).is_some()
            && proxy_of(&ini, &a).is_none()),
        "{:?}",
        status(&ini)
    );
    assert!(!alive(pid_a));
    let pid_b = running_pid(&ini, &b).expect("b");

    // A broken records file keeps the old records; a config change restarts the proxy.
    std::fs::write(&records, "{not json").expect("records");
    std::fs::write(
        &ini,
        base.replace("[spawner]\n", "[spawner]\nagent_keepalive = on\n"),
    )
    .expect("ini");
    d.signal("HUP");
    assert!(
        wait_until(T, || running_pid(&ini, &b).is_some_and(|p| p != pid_b)),
        "{:?}",
        status(&ini)
    );
    let argv = pidfile::cmdline(running_pid(&ini, &b).expect("b")).expect("alive");
    assert!(
        argv.windows(2)
            .any(|w| w[0] == "--agent-keepalive" && w[1] == "on"),
        "{argv:?}"
    );
    d.signal("TERM");
    assert!(d.0.wait().expect("wait").success());
}

/// Issue "hardening" item 9: an empty or truncated records.json (power loss) must not make
/// the spawner exit (a crash loop under systemd). With a previous good copy it is loaded;
/// without one the spawner starts anyway; the status says which, and names the file set aside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_records_json_is_set_aside_and_the_spawner_starts() {
    if !require_root("a_damaged_records_json_is_set_aside_and_the_spawner_starts") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let p = unique_prefix();
    for with_prev in [true, false] {
        let dir = TempDir::new("rt-damaged").reaping();
        let ini = write_ini(dir.path(), "");
        // A router whose namespace does not exist: wanted, waiting, nothing started.
        let id = format!("{p}gone{}", u8::from(with_prev));
        if with_prev {
            let prev = format!(r#"{{"routers": [{{"id": "{id}"}}]}}"#);
            std::fs::write(dir.path().join("records.json.prev"), prev).expect("prev");
        }
        std::fs::write(dir.path().join("records.json"), "{\"routers\": [{\"id\"").expect("torn");
        let d = start_daemon(dir.path(), &ini, &[]);
        // Exit 3 with the waiting router: not every proxy runs.
        let (_, out) = cli(&ini, &["status"]);
        assert!(
            out.contains("records.json was damaged") && out.contains("records.json.bad-"),
            "{out}"
        );
        let wanted = proxy_of(&ini, &id).is_some();
        if with_prev {
            assert!(out.contains("loaded records.json.prev"), "{out}");
            assert!(
                wanted,
                "the previous copy's router is wanted: {:?}",
                status(&ini)
            );
            let back = std::fs::read_to_string(dir.path().join("records.json")).expect("restored");
            assert!(back.contains(&id), "{back}");
        } else {
            assert!(out.contains("none is stopped"), "{out}");
            assert!(!wanted);
        }
        let aside = std::fs::read_dir(dir.path())
            .expect("ls")
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("records.json.bad-")
            })
            .count();
        assert_eq!(aside, 1);
        drop(d);
    }
}

/// Issue "hardening" item 3: a state dir another user can write to (pid files there name
/// processes the spawner signals) stops the start with one clear line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_dir_others_can_write_to_is_refused() {
    if !require_root("a_state_dir_others_can_write_to_is_refused") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("rt-statedir").reaping();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("mkdir");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let ini = dir.path().join("spawner.ini");
    std::fs::write(
        &ini,
        format!("[spawner]\nstate_dir = {}\n", state.display()),
    )
    .expect("ini");
    let mut child = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_ns-metadata-spawner"))
            .arg("--config-file")
            .arg(&ini)
            .arg("run")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn"),
    );
    let mut code = None;
    assert!(wait_until(T, || {
        code = child.0.try_wait().ok().flatten();
        code.is_some()
    }));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().expect("stderr"), &mut err)
        .expect("read");
    assert_eq!(code.and_then(|c| c.code()), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("state")).collect();
    assert!(
        lines.len() == 1
            && lines[0].contains("writable by group or others")
            && lines[0].contains("chmod 700"),
        "{err}"
    );
    assert!(!state.join("control.sock").exists() && !state.join("pids").exists());
}

/// The spawner unit's capability bounding set (examples/systemd), as setpriv's
/// `--bounding-set` argument: `-all,+sys_admin,...`.
fn unit_bounding_set() -> String {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/systemd/ns-metadata-spawner.service");
    let text = std::fs::read_to_string(unit).expect("spawner unit");
    let caps: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .flat_map(|v| v.split_whitespace())
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    assert!(!caps.is_empty(), "the unit names its capabilities");
    format!("-all,{}", caps.join(","))
}

/// Issue "hardening" item 1: with proxies running as another user (the agent socket's
/// owner), proving that a process is ours reads /proc/PID/exe, ns/net and environ of another
/// uid. A spawner restarted under the unit's exact capability set (and no_new_privs) still
/// adopts its proxy, and the VM keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_works_under_the_units_capability_set_with_unprivileged_proxies() {
    if !require_root("adoption_works_under_the_units_capability_set_with_unprivileged_proxies") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let dir = TempDir::new("rt-caps").reaping();
    let _agent = agent(dir.path());
    // The agent's socket belongs to "nobody": proxies run as nobody (Neutron's rule).
    std::os::unix::fs::chown(dir.path().join("agent.sock"), Some(65534), Some(65534))
        .expect("chown socket");
    let ini = write_ini(dir.path(), "");
    let p = unique_prefix();
    let id = format!("{p}c");
    let rns = TestNs::new(&format!("qrouter-{id}")).expect("router ns");
    let vm = TestNs::new(&format!("{p}vm")).expect("vm ns");
    link(&rns, &vm, 112).await.expect("veth");
    let under_unit = || {
        let mut c = Command::new("setpriv");
        c.arg(format!("--bounding-set={}", unit_bounding_set()))
            .args(["--inh-caps=-all", "--no-new-privs", "--"])
            .arg(env!("CARGO_BIN_EXE_ns-metadata-spawner"));
        c
    };
    let d = start_daemon_by(under_unit(), dir.path(), &ini, &[]);
    let (ok, out) = cli(&ini, &["router", "add", &id]);
    assert!(ok, "{out}");
    assert!(
        wait_until(T, || running_pid(&ini, &id).is_some()),
        "{:?}",
        status(&ini)
    );
    let pid = running_pid(&ini, &id).expect("pid");
    let uid = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| {
            l.strip_prefix("Uid:")
                .map(|v| v.split_whitespace().next().map(str::to_owned))
        })
        .flatten();
    assert_eq!(
        uid.as_deref(),
        Some("65534"),
        "the proxy runs as the socket's owner"
    );
    assert!(wait_until(T, || get_in(vm.netns(), META).is_ok()));
    assert!(wait_until(T, || std::fs::read_to_string(
        dir.path().join("records.json")
    )
    .is_ok_and(|t| t.contains(&id))));
    let mut d = d;
    kill9(d.pid());
    let _ = d.0.wait();
    let _d2 = start_daemon_by(under_unit(), dir.path(), &ini, &[]);
    let st = proxy_of(&ini, &id).expect("listed");
    assert_eq!(st["pid"].as_u64(), Some(u64::from(pid)), "{st}");
    assert_eq!(st["adopted"], true, "{st}");
    assert!(get_in(vm.netns(), META).is_ok());
}

/// Issue "the operator's view": `probe ID [PATH]` asks through a proxy from inside its
/// namespace; `check` finds nothing wrong on a healthy node, then names a missing address and
/// a stranger on port 80, one line each, with exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_and_check_from_inside_the_namespaces() {
    if !require_root("probe_and_check_from_inside_the_namespaces") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let dir = TempDir::new("rt-doctor").reaping();
    let _agent = agent(dir.path());
    let ini = write_ini(dir.path(), "");
    let id = format!("{}d", unique_prefix());
    let rns = TestNs::new(&format!("qrouter-{id}")).expect("router ns");
    let _d = start_daemon(dir.path(), &ini, &[]);
    let (ok, out) = cli(&ini, &["router", "add", &id]);
    assert!(ok, "{out}");
    assert!(
        wait_until(T, || running_pid(&ini, &id).is_some()),
        "{:?}",
        status(&ini)
    );

    let (ok, out) = cli(&ini, &["probe", &id, "/latest/meta-data/"]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("in qrouter-{id}")) && out.contains("HTTP/1.1 200"),
        "{out}"
    );
    assert!(
        out.contains("connect ") && out.contains(" ms, total "),
        "{out}"
    );
    let (ok, out) = cli(&ini, &["check"]);
    assert!(ok && out.starts_with("ok: 1 proxies"), "{out}");

    // A stranger on port 80 in the namespace, and the address removed.
    let stranger = rns
        .netns()
        .run(|| std::net::TcpListener::bind("127.0.0.1:80"))
        .expect("enter")
        .expect("bind 127.0.0.1:80");
    let del = Command::new("ip")
        .args([
            "-n",
            &format!("qrouter-{id}"),
            "addr",
            "del",
            "169.254.169.254/32",
            "dev",
            "lo",
        ])
        .status()
        .expect("ip");
    assert!(del.success());
    let (ok, out) = cli(&ini, &["check"]);
    assert!(!ok, "{out}");
    assert!(out.contains("169.254.169.254/32 is missing on lo"), "{out}");
    assert!(out.contains("something besides proxy pid"), "{out}");
    drop(stranger);
    let (ok, out) = cli(&ini, &["probe", "no-such", "/"]);
    assert!(!ok && out.contains("no proxy no-such"), "{out}");
}
