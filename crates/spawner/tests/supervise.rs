//! Unprivileged tests of supervision with a stand-in proxy in the current namespace:
//! start/stop with pid files, restart after kill -9, failure with backoff visible in the
//! status, restart on config change, adoption by a new supervisor, stale pid files,
//! `--stop-proxies-on-exit`-style stop of everything, a proxy that never beats its
//! heartbeat (an older binary) never called hung, and a proxy stopped during its launch
//! leaving its successor's pid file alone.

mod common;

use std::time::Duration;

use common::*;
use ns_contract::KeepaliveMode as Keepalive;
use ns_metadata_spawner::pidfile;
use ns_metadata_spawner::platform::Host;
use ns_metadata_spawner::records::{Records, Router};
use ns_metadata_spawner::supervisor::{State, Supervisor};
use ns_testkit::proc::{alive, kill9, ChildGuard, PidGuard};
use ns_testkit::{eventually_async, poll_async, TempDir};

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_stop_pid_file_and_restart_after_kill() {
    let dir = TempDir::new("basic").reaping();
    let proxy = fake_proxy(dir.path());
    let cfg = config(dir.path(), &proxy);
    let pid_dir = cfg.pid_dir();
    let sup = Supervisor::new(Host, cfg, Records::default());
    let looper = sup.clone();
    let lp = tokio::spawn(async move { looper.run_loop().await });

    sup.put_router(router("r1"));
    let pid = running_pid(&sup, "r1", T).await;
    let mut guard = PidGuard(vec![pid]);
    assert_eq!(pidfile::read(&pidfile::path(&pid_dir, "r1")), Some(pid));
    let argv = pidfile::cmdline(pid).expect("proxy alive");
    assert!(
        argv.windows(2)
            .any(|w| w[0] == "--router-id" && w[1] == "r1"),
        "{argv:?}"
    );

    kill9(pid);
    let pid2 = eventually_async("restarted after kill -9", T, || {
        status_of(&sup, "r1")
            .and_then(|s| s.pid)
            .filter(|&p| p != pid && s_running(&sup))
    })
    .await;
    guard.0.push(pid2);
    let st = status_of(&sup, "r1").expect("status");
    assert_eq!(st.restarts, 1);
    assert!(
        st.last_error.as_deref().unwrap_or("").contains("exited"),
        "{st:?}"
    );

    assert!(sup.remove_router("r1"));
    assert!(!sup.remove_router("r1"), "second remove finds nothing");
    eventually_async("status entry gone", T, || {
        status_of(&sup, "r1").is_none().then_some(())
    })
    .await;
    eventually_async("proxy stopped", T, || (!alive(pid2)).then_some(())).await;
    eventually_async("pid file removed", T, || {
        (!pidfile::path(&pid_dir, "r1").exists()).then_some(())
    })
    .await;
    lp.abort();
}

/// The stand-in proxy never beats its heartbeat, as a proxy binary older than the spawner
/// would not: with a `hang_timeout` of 100 ms it is not watched for hangs (logged once), so it
/// runs on, the same process, through many timeouts' worth of looks; a hung one would have
/// been replaced within one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_never_beats_is_never_called_hung() {
    let dir = TempDir::new("nobeat").reaping();
    let proxy = fake_proxy(dir.path());
    let mut cfg = config(dir.path(), &proxy);
    cfg.hang_timeout = Duration::from_millis(100);
    let sup = Supervisor::new(Host, cfg, Records::default());
    let looper = sup.clone();
    let lp = tokio::spawn(async move { looper.run_loop().await });
    sup.put_router(router("nb"));
    let pid = running_pid(&sup, "nb", T).await;
    let _g = PidGuard(vec![pid]);
    let replaced = poll_async(Duration::from_secs(1), || {
        status_of(&sup, "nb").filter(|s| s.state != State::Running || s.pid != Some(pid))
    })
    .await;
    assert!(replaced.is_none(), "{replaced:?}");
    assert!(alive(pid));
    sup.stop_all().await;
    lp.abort();
}

fn s_running(sup: &Supervisor<Host>) -> bool {
    status_of(sup, "r1").is_some_and(|s| s.state == State::Running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_proxy_backs_off_with_reason_in_status() {
    let dir = TempDir::new("fail").reaping();
    let proxy = fake_proxy(dir.path());
    std::fs::write(dir.path().join("fail"), "").expect("fail flag");
    let sup = Supervisor::new(Host, config(dir.path(), &proxy), Records::default());
    let looper = sup.clone();
    let lp = tokio::spawn(async move { looper.run_loop().await });
    sup.put_router(router("r1"));
    let st = eventually_async("retries", T, || {
        status_of(&sup, "r1").filter(|s| s.restarts >= 2)
    })
    .await;
    let err = st.last_error.clone().unwrap_or_default();
    assert!(
        err.contains("exited") && err.contains("before ready"),
        "{st:?}"
    );
    // Fixing the cause lets it come up on a later try.
    std::fs::remove_file(dir.path().join("fail")).expect("clear flag");
    let pid = running_pid(&sup, "r1", T).await;
    let _g = PidGuard(vec![pid]);
    sup.stop_all().await;
    assert!(!alive(pid));
    lp.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_change_restarts_with_new_arguments() {
    let dir = TempDir::new("cfg").reaping();
    let proxy = fake_proxy(dir.path());
    let cfg = config(dir.path(), &proxy);
    let sup = Supervisor::new(Host, cfg.clone(), Records::default());
    let looper = sup.clone();
    let lp = tokio::spawn(async move { looper.run_loop().await });
    sup.put_router(router("r1"));
    let pid = running_pid(&sup, "r1", T).await;
    let mut g = PidGuard(vec![pid]);
    let mut cfg2 = cfg;
    cfg2.agent_keepalive = Keepalive::On;
    sup.set_config(cfg2);
    let pid2 = eventually_async("restarted", T, || {
        status_of(&sup, "r1")
            .filter(|s| s.state == State::Running)
            .and_then(|s| s.pid)
            .filter(|&p| p != pid)
    })
    .await;
    g.0.push(pid2);
    assert!(!alive(pid), "old proxy stopped");
    let argv = pidfile::cmdline(pid2).expect("alive");
    assert!(
        argv.windows(2)
            .any(|w| w[0] == "--agent-keepalive" && w[1] == "on"),
        "{argv:?}"
    );
    sup.stop_all().await;
    lp.abort();
}

#[test]
fn restarted_supervisor_adopts_kills_unwanted_and_cleans_stale() {
    let dir = TempDir::new("adopt").reaping();
    let proxy = fake_proxy(dir.path());
    let cfg = config(dir.path(), &proxy);
    let pid_dir = cfg.pid_dir();
    let mut records = Records::default();
    records.api_routers.insert("r1".into(), router("r1"));
    records.api_routers.insert("r2".into(), router("r2"));

    // First supervisor, on its own runtime, dropped without stopping its proxies.
    let rt1 = tokio::runtime::Runtime::new().expect("runtime");
    let (p1, p2) = rt1.block_on(async {
        let sup = Supervisor::new(Host, cfg.clone(), records.clone());
        sup.adopt_and_start().await;
        (
            running_pid(&sup, "r1", T).await,
            running_pid(&sup, "r2", T).await,
        )
    });
    drop(rt1);
    let _g = PidGuard(vec![p1, p2]);
    assert!(alive(p1) && alive(p2), "proxies outlive their supervisor");
    // A stale pid file (previous release's bare pid) naming a process that is not a proxy.
    std::fs::write(
        pidfile::path(&pid_dir, "r9"),
        format!("{}\n", std::process::id()),
    )
    .expect("write");

    // Second supervisor: r2 is no longer wanted.
    records.api_routers.remove("r2");
    let rt2 = tokio::runtime::Runtime::new().expect("runtime");
    rt2.block_on(async {
        let sup = Supervisor::new(Host, cfg.clone(), records.clone());
        sup.adopt_and_start().await;
        let st = status_of(&sup, "r1").expect("r1");
        assert_eq!(
            (st.pid, st.adopted, st.state),
            (Some(p1), true, State::Running),
            "{st:?}"
        );
        assert!(status_of(&sup, "r2").is_none());
        assert!(!alive(p2), "unwanted proxy stopped");
        assert!(!pidfile::path(&pid_dir, "r2").exists());
        assert!(
            !pidfile::path(&pid_dir, "r9").exists(),
            "stale pid file removed"
        );
        assert!(
            alive(std::process::id()),
            "the stale pid's process was not touched"
        );
        // An adopted proxy that dies is noticed through its pidfd and restarted.
        kill9(p1);
        let p3 = eventually_async("adopted proxy restarted", T, || {
            status_of(&sup, "r1")
                .filter(|s| s.state == State::Running)
                .and_then(|s| s.pid)
                .filter(|&p| p != p1)
        })
        .await;
        let _g3 = PidGuard(vec![p3]);
        assert!(!status_of(&sup, "r1").expect("r1").adopted);
        sup.stop_all().await;
        assert!(!alive(p3));
    });
}

#[test]
fn adoption_with_changed_arguments_restarts() {
    let dir = TempDir::new("adopt2").reaping();
    let proxy = fake_proxy(dir.path());
    let cfg = config(dir.path(), &proxy);
    let mut records = Records::default();
    records.api_routers.insert("r1".into(), router("r1"));
    let rt1 = tokio::runtime::Runtime::new().expect("runtime");
    let p1 = rt1.block_on(async {
        let sup = Supervisor::new(Host, cfg.clone(), records.clone());
        sup.adopt_and_start().await;
        running_pid(&sup, "r1", T).await
    });
    drop(rt1);
    let _g = PidGuard(vec![p1]);
    let mut cfg2 = cfg.clone();
    cfg2.agent_keepalive = Keepalive::Off;
    let rt2 = tokio::runtime::Runtime::new().expect("runtime");
    rt2.block_on(async {
        let sup = Supervisor::new(Host, cfg2, records);
        sup.adopt_and_start().await;
        let p2 = running_pid(&sup, "r1", T).await;
        let _g2 = PidGuard(vec![p2]);
        assert_ne!(p1, p2);
        assert!(!alive(p1));
        sup.stop_all().await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_namespace_waits() {
    let dir = TempDir::new("wait");
    let proxy = fake_proxy(dir.path());
    let sup = Supervisor::new(Host, config(dir.path(), &proxy), Records::default());
    sup.put_router(Router {
        netns: Some("missing-ns".into()),
        ..router("r1")
    });
    sup.reconcile().await;
    let st = status_of(&sup, "r1").expect("listed");
    assert_eq!((st.state, st.pid), (State::Waiting, None));
}

/// Removes the file that stands for an interface on `Host` (see `Host::missing`).
struct FileGuard(std::path::PathBuf);

impl Drop for FileGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_interface_waits_without_restarts_then_starts() {
    let dir = TempDir::new("wait-if").reaping();
    let proxy = fake_proxy(dir.path());
    let mut cfg = config(dir.path(), &proxy);
    let ifname = format!("missing-if{}", std::process::id());
    cfg.router_interface = ifname.clone();
    cfg.max_restart_delay = Duration::from_secs(60);
    let sup = Supervisor::new(Host, cfg, Records::default());
    let looper = sup.clone();
    let lp = tokio::spawn(async move { looper.run_loop().await });
    sup.put_router(router("r1"));
    let st = poll_async(T, || {
        status_of(&sup, "r1").filter(|s| s.state == State::Waiting)
    })
    .await
    .unwrap_or_else(|| panic!("not waiting: {:?}", status_of(&sup, "r1")));
    let reason = format!("interface {ifname} not in qrouter-r1");
    assert_eq!(st.last_error.as_deref(), Some(reason.as_str()));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let st = status_of(&sup, "r1").expect("listed");
    assert_eq!((st.state, st.restarts, st.pid), (State::Waiting, 0, None));

    let appeared = FileGuard(std::env::temp_dir().join(&ifname));
    std::fs::write(&appeared.0, "").expect("interface file");
    let pid = poll_async(Duration::from_secs(5), || {
        status_of(&sup, "r1")
            .filter(|s| s.state == State::Running)
            .and_then(|s| s.pid)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "not running 5 s after the interface: {:?}",
            status_of(&sup, "r1")
        )
    });
    let _g = PidGuard(vec![pid]);
    let st = status_of(&sup, "r1").expect("listed");
    assert_eq!((st.restarts, st.last_error), (0, None));
    sup.stop_all().await;
    lp.abort();
}

#[test]
fn concurrent_changes_all_reach_records_json() {
    let dir = TempDir::new("persist");
    let proxy = fake_proxy(dir.path());
    // Namespaces named missing-* never "exist" on the Host platform: nothing is spawned.
    let sup = Supervisor::new(Host, config(dir.path(), &proxy), Records::default());
    std::thread::scope(|s| {
        for t in 0..8 {
            let sup = sup.clone();
            s.spawn(move || {
                for i in 0..25 {
                    sup.put_router(Router {
                        netns: Some(format!("missing-{t}-{i}")),
                        ..router(&format!("r{t}x{i}"))
                    });
                }
            });
        }
    });
    let saved =
        ns_metadata_spawner::records::RecordSet::load(&sup.config().records_json()).expect("load");
    assert_eq!(saved.routers.len(), 200);
}

/// A pid file that cannot be written (full or read-only state dir; here its name is taken by
/// a directory) leaves the proxy running, says why in the status, and leaves no temp file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_pid_file_is_reported_and_the_proxy_still_runs() {
    let dir = TempDir::new("pidfail").reaping();
    let proxy = fake_proxy(dir.path());
    let cfg = config(dir.path(), &proxy);
    let pid_dir = cfg.pid_dir();
    std::fs::create_dir_all(pidfile::path(&pid_dir, "rp").join("x")).expect("block pid file");
    let sup = Supervisor::new(Host, cfg, Records::default());
    let looper = sup.clone();
    let lp = tokio::spawn(async move { looper.run_loop().await });
    sup.put_router(router("rp"));
    let pid = running_pid(&sup, "rp", T).await;
    let _guard = PidGuard(vec![pid]);
    let st = status_of(&sup, "rp").expect("status");
    assert!(
        st.last_error.as_deref().unwrap_or("").contains("pid file"),
        "{st:?}"
    );
    let left: Vec<_> = std::fs::read_dir(&pid_dir)
        .expect("pid dir")
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "temp files left: {left:?}");
    // Its task would otherwise outlive the test and recreate the removed directory's stats.
    sup.stop_all().await;
    lp.abort();
}

/// A proxy whose pid file is missing (it could not be written, or was deleted) is still
/// found and adopted by a restarted supervisor, instead of a second proxy that fails to bind
/// next to it forever.
#[test]
fn restarted_supervisor_adopts_a_proxy_whose_pid_file_is_missing() {
    let dir = TempDir::new("adopt-nopid").reaping();
    let proxy = fake_proxy(dir.path());
    let cfg = config(dir.path(), &proxy);
    let pid_dir = cfg.pid_dir();
    let mut records = Records::default();
    records.api_routers.insert("rn".into(), router("rn"));
    let rt1 = tokio::runtime::Runtime::new().expect("runtime");
    let p1 = rt1.block_on(async {
        let sup = Supervisor::new(Host, cfg.clone(), records.clone());
        sup.adopt_and_start().await;
        running_pid(&sup, "rn", T).await
    });
    drop(rt1);
    let _g = PidGuard(vec![p1]);
    std::fs::remove_file(pidfile::path(&pid_dir, "rn")).expect("remove pid file");
    let rt2 = tokio::runtime::Runtime::new().expect("runtime");
    rt2.block_on(async {
        let sup = Supervisor::new(Host, cfg.clone(), records.clone());
        sup.adopt_and_start().await;
        let st = status_of(&sup, "rn").expect("rn");
        if let Some(p) = st.pid.filter(|&p| p != p1) {
            kill9(p);
        }
        assert_eq!((st.pid, st.adopted), (Some(p1), true), "{st:?}");
        assert_eq!(
            pidfile::read(&pidfile::path(&pid_dir, "rn")),
            Some(p1),
            "pid file written again"
        );
        sup.stop_all().await;
        assert!(!alive(p1));
    });
}

/// `proxy_binary` missing, then not executable: the reason is in the status and retries
/// back off; once a working binary appears the proxy starts by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_proxy_binary_is_reported_then_recovers_when_it_appears() {
    let dir = TempDir::new("nobin").reaping();
    let real = fake_proxy(dir.path());
    let bin = dir.path().join("later-proxy");
    let mut cfg = config(dir.path(), &bin);
    cfg.max_restart_delay = Duration::from_millis(500);
    let sup = Supervisor::new(Host, cfg, Records::default());
    let looper = sup.clone();
    let lp = tokio::spawn(async move { looper.run_loop().await });
    sup.put_router(router("rb"));
    let why = |needle: &'static str| {
        let sup = sup.clone();
        async move {
            poll_async(T, || {
                status_of(&sup, "rb")
                    .filter(|s| s.state != State::Running)
                    .and_then(|s| s.last_error)
                    .filter(|e| e.contains(needle))
            })
            .await
        }
    };
    let e = why("No such file").await.expect("missing binary in status");
    assert!(e.contains("later-proxy"), "{e}");
    std::fs::write(&bin, "not a program").expect("write");
    why("Permission denied")
        .await
        .expect("not executable in status");
    let restarts = status_of(&sup, "rb").expect("rb").restarts;
    std::fs::copy(&real, &bin).expect("install the binary");
    let pid = running_pid(&sup, "rb", T).await;
    let _g = PidGuard(vec![pid]);
    // The first attempt met the missing binary; "Permission denied" needs one more, which a
    // restart counts (`restarts` grows when a backoff ends, before its attempt). Not 2: the
    // file may be written before the second attempt, so that one is the first to see it.
    assert!(restarts >= 1, "retried: {restarts}");
    sup.stop_all().await;
    lp.abort();
}

/// A process started by the test (guarded), stdout on /dev/null, stdin a pipe the guard
/// holds open: a `bash -c 'read -r _'` waits on it without a child of its own, so killing
/// the guarded pid leaves nothing behind.
fn start(cmd: &mut std::process::Command) -> ChildGuard {
    use std::process::Stdio;
    ChildGuard(
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn"),
    )
}

/// A stand-in proxy started by hand (not by a supervisor): our binary, the exact id pair.
fn manual_proxy(proxy: &std::path::Path, id: &str) -> ChildGuard {
    let mut cmd = std::process::Command::new(proxy);
    cmd.args(["--router-id", id, "--ready-fd", "1"]);
    let g = start(&mut cmd);
    // Ready when the interpreter has exec'd (argv `python3 SCRIPT ...`, not `env python3
    // SCRIPT ...`) and /proc shows all the identity a pid file records.
    let script = proxy.display().to_string();
    poll(|| pidfile::cmdline(g.pid()).filter(|a| a.get(1) == Some(&script)));
    poll(|| pidfile::Record::of(g.pid(), "lo"));
    g
}

fn poll<T>(f: impl FnMut() -> Option<T>) -> T {
    ns_testkit::poll(T, f).expect("in time")
}

/// Issue "adoption identity": pid files live on persistent storage, so after a reboot a
/// pid may name keepalived, dnsmasq, `ip netns exec qrouter-<id> ...` or sshd. A process
/// whose argv merely holds the id is never signalled, for a wanted key or an unwanted one
/// (`pids/sshd.pid`, old or new format); its pid files are removed, and the wanted proxy
/// starts fresh.
#[test]
fn a_process_that_mentions_the_id_is_never_signalled_and_loses_its_pid_file() {
    let dir = TempDir::new("sshd").reaping();
    let proxy = fake_proxy(dir.path());
    let cfg = config(dir.path(), &proxy);
    let pid_dir = cfg.pid_dir();
    let mut records = Records::default();
    records.api_routers.insert("r7".into(), router("r7"));
    let mut other = start(
        std::process::Command::new("bash")
            .args(["-c", "read -r _", "ip", "netns", "exec", "qrouter-r7"])
            .args(["--router-id", "r7", "sshd"]),
    );
    let pid = other.pid();
    poll(|| pidfile::cmdline(pid).filter(|a| a.iter().any(|x| x == "sshd")));
    pidfile::write(&pid_dir, "r7", pid, "lo").expect("write");
    pidfile::write(&pid_dir, "sshd", pid, "lo").expect("write");
    std::fs::write(pidfile::path(&pid_dir, "old"), format!("{pid}\n")).expect("write");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let sup = Supervisor::new(Host, cfg.clone(), records);
        sup.adopt_and_start().await;
        let p = running_pid(&sup, "r7", T).await;
        let _g = PidGuard(vec![p]);
        assert!(other.alive(), "the look-alike was not signalled");
        let st = status_of(&sup, "r7").expect("r7");
        assert!(p != pid && !st.adopted, "{st:?}");
        assert_eq!(pidfile::read(&pidfile::path(&pid_dir, "r7")), Some(p));
        for k in ["sshd", "old"] {
            assert!(!pidfile::path(&pid_dir, k).exists(), "{k}.pid removed");
        }
        sup.stop_all().await;
    });
    assert!(other.alive());
}

/// Issue "adoption by an unprivileged look-alike": a process of another user whose argv
/// ends with the proxy's own arguments, but whose executable is not the proxy, is not
/// adopted (the router would get no metadata) and not signalled; a real proxy starts.
#[test]
fn a_look_alike_with_the_exact_arguments_is_not_adopted() {
    let dir = TempDir::new("lookalike").reaping();
    let proxy = fake_proxy(dir.path());
    let cfg = config(dir.path(), &proxy);
    let pid_dir = cfg.pid_dir();
    let mut records = Records::default();
    records.api_routers.insert("r8".into(), router("r8"));
    // The exact argv of a real proxy for r8 (after the interpreter).
    let rt1 = tokio::runtime::Runtime::new().expect("runtime");
    let argv = rt1.block_on(async {
        let sup = Supervisor::new(Host, cfg.clone(), records.clone());
        sup.adopt_and_start().await;
        let p = running_pid(&sup, "r8", T).await;
        let _g = PidGuard(vec![p]);
        let argv = pidfile::cmdline(p).expect("alive");
        sup.stop_all().await;
        argv
    });
    drop(rt1);
    let setpriv = ns_testkit::skip::is_root() && std::path::Path::new("/usr/bin/setpriv").exists();
    let mut cmd = if setpriv {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "bash"]);
        c
    } else {
        std::process::Command::new("bash")
    };
    cmd.args(["-c", "read -r _"]).args(&argv[1..]);
    let mut fake = start(&mut cmd);
    let pid = fake.pid();
    poll(|| pidfile::cmdline(pid).filter(|a| a.ends_with(&argv[1..])));
    pidfile::write(&pid_dir, "r8", pid, "lo").expect("write");
    let rt2 = tokio::runtime::Runtime::new().expect("runtime");
    rt2.block_on(async {
        let sup = Supervisor::new(Host, cfg.clone(), records);
        sup.adopt_and_start().await;
        let p = running_pid(&sup, "r8", T).await;
        let _g = PidGuard(vec![p]);
        let st = status_of(&sup, "r8").expect("r8");
        assert!(p != pid && !st.adopted, "look-alike adopted: {st:?}");
        assert!(fake.alive(), "the look-alike was not signalled");
        sup.stop_all().await;
    });
}

/// A recycled pid: the pid file's start time is not the process's. Even though the process
/// now at that pid is a proxy of ours (started by hand), it is not the one the file was
/// written for: it is not signalled, and the file is removed.
#[test]
fn a_recycled_pid_is_never_signalled() {
    let dir = TempDir::new("recycled").reaping();
    let proxy = fake_proxy(dir.path());
    let cfg = config(dir.path(), &proxy);
    let pid_dir = cfg.pid_dir();
    let mut other = manual_proxy(&proxy, "r5");
    let pid = other.pid();
    let mut rec = pidfile::Record::of(pid, "lo").expect("record");
    rec.start = rec.start.map(|s| s.saturating_sub(1));
    pidfile::write_record(&pid_dir, "r5", &rec).expect("write");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        // r5 is not wanted: the old rule stopped any process of the proxy binary.
        let sup = Supervisor::new(Host, cfg.clone(), Records::default());
        sup.adopt_and_start().await;
    });
    assert!(
        other.alive(),
        "the process at the recycled pid was not signalled"
    );
    assert!(!pidfile::path(&pid_dir, "r5").exists(), "pid file removed");
}

/// Upgrade: a pid file of the previous release (a bare pid) naming a wanted proxy in its
/// record's namespace is adopted (no kill, no duplicate that could not bind), and the file
/// is rewritten in the new format.
#[test]
fn an_old_format_pid_file_of_a_wanted_proxy_is_adopted_and_upgraded() {
    let dir = TempDir::new("upgrade").reaping();
    let proxy = fake_proxy(dir.path());
    let cfg = config(dir.path(), &proxy);
    let pid_dir = cfg.pid_dir();
    let mut records = Records::default();
    records.api_routers.insert("ru".into(), router("ru"));
    let rt1 = tokio::runtime::Runtime::new().expect("runtime");
    let p1 = rt1.block_on(async {
        let sup = Supervisor::new(Host, cfg.clone(), records.clone());
        sup.adopt_and_start().await;
        running_pid(&sup, "ru", T).await
    });
    drop(rt1);
    let _g = PidGuard(vec![p1]);
    std::fs::write(pidfile::path(&pid_dir, "ru"), format!("{p1}\n")).expect("old format");
    let rt2 = tokio::runtime::Runtime::new().expect("runtime");
    rt2.block_on(async {
        let sup = Supervisor::new(Host, cfg.clone(), records);
        sup.adopt_and_start().await;
        let st = status_of(&sup, "ru").expect("ru");
        assert_eq!((st.pid, st.adopted), (Some(p1), true), "{st:?}");
        let rec = pidfile::read_record(&pidfile::path(&pid_dir, "ru")).expect("pid file");
        assert_eq!(rec, pidfile::Record::of(p1, "lo").expect("alive"));
        sup.stop_all().await;
        assert!(!alive(p1));
    });
}

/// Issue "hardening" item 16: a descriptor the spawner inherited without O_CLOEXEC (from
/// whoever started it) does not leak into the proxies it starts.
#[test]
fn an_inherited_descriptor_does_not_reach_the_proxies() {
    use std::os::fd::AsFd;
    let dir = TempDir::new("fds").reaping();
    let proxy = fake_proxy(dir.path());
    let cfg = config(dir.path(), &proxy);
    let f = std::fs::File::open(dir.path()).expect("open");
    // A copy at 300 or above without CLOEXEC, as an inherited one would be.
    let fd = rustix::io::fcntl_dupfd_cloexec(f.as_fd(), 300).expect("dup");
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::empty()).expect("clear cloexec");
    let n = {
        use std::os::fd::AsRawFd;
        fd.as_raw_fd()
    };
    let mut records = Records::default();
    records.api_routers.insert("rf".into(), router("rf"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let sup = Supervisor::new(Host, cfg.clone(), records);
        sup.adopt_and_start().await;
        let p = running_pid(&sup, "rf", T).await;
        let _g = PidGuard(vec![p]);
        let fds: Vec<String> = std::fs::read_dir(format!("/proc/{p}/fd"))
            .expect("proxy fds")
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        assert!(!fds.contains(&n.to_string()), "fd {n} leaked: {fds:?}");
        sup.stop_all().await;
    });
    drop(fd);
}

/// Issue "hardening" item 13: auto-enabled routers are not API records: adding and removing
/// thousands of them never writes records.json.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_enabled_routers_never_write_records_json() {
    let dir = TempDir::new("autowrite").reaping();
    let proxy = fake_proxy(dir.path());
    let cfg = config(dir.path(), &proxy);
    let sup = Supervisor::new(Host, cfg.clone(), Records::default());
    for i in 0..2000 {
        sup.set_auto_router(&format!("auto{i}"), true);
    }
    sup.set_auto_routers((0..1000).map(|i| format!("auto{i}")).collect());
    for i in 0..1000 {
        sup.set_auto_router(&format!("auto{i}"), false);
    }
    sup.flush_records().await.expect("nothing to save");
    assert_eq!(sup.records_writes(), 0);
    assert!(!cfg.records_json().exists());
    sup.stop_all().await;
}

/// Issue "hardening" item 13: a burst of API changes is saved by one write per save delay,
/// off the runtime, and every change reaches the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_changes_is_saved_in_few_writes() {
    let dir = TempDir::new("burst").reaping();
    let proxy = fake_proxy(dir.path());
    let sup = Supervisor::new(Host, config(dir.path(), &proxy), Records::default());
    let started = std::time::Instant::now();
    for i in 0..500 {
        sup.put_router(Router {
            netns: Some(format!("missing-{i}")),
            ..router(&format!("burst{i}"))
        });
    }
    let spent = started.elapsed();
    sup.flush_records().await.expect("saved");
    // One write per save delay at most while the burst lasted, plus the last one.
    let windows = (spent.as_millis() / ns_metadata_spawner::persist::SAVE_DELAY.as_millis()) as u64;
    let writes = sup.records_writes();
    assert!(
        writes >= 1 && writes <= windows + 2,
        "{writes} writes for a burst of {spent:?}"
    );
    let saved =
        ns_metadata_spawner::records::RecordSet::load(&sup.config().records_json()).expect("load");
    assert_eq!(saved.routers.len(), 500);
    sup.stop_all().await;
}

/// Issue "hardening" item 12: a proxy this spawner started whose pid file is gone (never
/// written: full disk) and whose record was never saved is stopped at the next start; one
/// that another spawner (another state dir) started is left alone.
#[test]
fn an_unmanaged_proxy_of_this_spawner_is_stopped_at_start_and_anothers_is_not() {
    let dir = TempDir::new("unmanaged").reaping();
    let other_dir = TempDir::new("unmanaged-other").reaping();
    let proxy = fake_proxy(dir.path());
    let cfg = config(dir.path(), &proxy);
    let mut other_cfg = cfg.clone();
    other_cfg.state_dir = other_dir.path().to_owned();
    let mut records = Records::default();
    records.api_routers.insert("ru1".into(), router("ru1"));
    let rt1 = tokio::runtime::Runtime::new().expect("runtime");
    let (mine, theirs) = rt1.block_on(async {
        let sup = Supervisor::new(Host, cfg.clone(), records.clone());
        let other = Supervisor::new(Host, other_cfg.clone(), records.clone());
        sup.adopt_and_start().await;
        other.adopt_and_start().await;
        (
            running_pid(&sup, "ru1", T).await,
            running_pid(&other, "ru1", T).await,
        )
    });
    drop(rt1);
    let _g = PidGuard(vec![mine, theirs]);
    pidfile::remove(&cfg.pid_dir(), "ru1");
    assert_ne!(mine, theirs);
    let rt2 = tokio::runtime::Runtime::new().expect("runtime");
    rt2.block_on(async {
        let sup = Supervisor::new(Host, cfg.clone(), Records::default());
        sup.adopt_and_start().await;
    });
    assert!(!alive(mine), "this spawner's unmanaged proxy was stopped");
    assert!(alive(theirs), "another spawner's proxy was left alone");
}

/// Issue "hardening" item 12: re-adding a router whose proxy still runs unmanaged (its pid
/// file lost) must not crash-loop on the taken port: the failed start finds the running
/// proxy of ours and adopts it.
#[test]
fn a_start_that_fails_next_to_a_running_proxy_of_ours_adopts_it() {
    let dir = TempDir::new("eaddrinuse").reaping();
    let proxy = fake_proxy(dir.path());
    let cfg = config(dir.path(), &proxy);
    let mut records = Records::default();
    records.api_routers.insert("re1".into(), router("re1"));
    // The exact argv a proxy for re1 gets (after the interpreter).
    let rt1 = tokio::runtime::Runtime::new().expect("runtime");
    let argv = rt1.block_on(async {
        let sup = Supervisor::new(Host, cfg.clone(), records.clone());
        sup.adopt_and_start().await;
        let p = running_pid(&sup, "re1", T).await;
        let argv = pidfile::cmdline(p).expect("alive");
        sup.stop_all().await;
        argv
    });
    drop(rt1);
    let rt2 = tokio::runtime::Runtime::new().expect("runtime");
    rt2.block_on(async {
        let sup = Supervisor::new(Host, cfg.clone(), Records::default());
        sup.adopt_and_start().await;
        let looper = sup.clone();
        let lp = tokio::spawn(async move { looper.run_loop().await });
        // Started while this supervisor runs, without a pid file (as if it could not be
        // written), with fd 3 open for its READY.
        let ready = dir.path().join("stray-ready");
        let mut cmd = std::process::Command::new("bash");
        cmd.args(["-c", "exec 3>\"$1\"; shift; exec \"$0\" \"$@\""])
            .arg(&argv[1])
            .arg(&ready)
            .args(&argv[2..]);
        let stray = start(&mut cmd);
        let pid = stray.pid();
        // Past its start-up checks once it said READY.
        poll(|| {
            std::fs::read_to_string(&ready)
                .ok()
                .filter(|t| t.contains("READY=1"))
        });
        // Any new proxy fails to start now, as it would on the taken port.
        std::fs::write(dir.path().join("fail"), "").expect("fail");
        sup.put_router(router("re1"));
        let st = eventually_async("adopted", T, || {
            status_of(&sup, "re1").filter(|s| s.state == State::Running)
        })
        .await;
        assert_eq!((st.pid, st.adopted), (Some(pid), true), "{st:?}");
        assert_eq!(
            pidfile::read(&pidfile::path(&cfg.pid_dir(), "re1")),
            Some(pid)
        );
        sup.stop_all().await;
        lp.abort();
        drop(stray);
    });
}

/// A router moved to another namespace while its proxy is still starting (an l3 agent that
/// moved it and moved it back): the proxy in the old namespace, asked to stop during its
/// launch, becomes ready only after its successor in the new one has written the key's pid
/// file. It must not claim that file, or stopping it would remove the file and leave the
/// running successor unadoptable by a restarted spawner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_stopped_during_its_launch_leaves_the_successors_pid_file() {
    let dir = TempDir::new("moved-launching").reaping();
    // The first start is slow (READY after 600 ms), every later one is not; the slow one
    // notes whether a later one had started by the time it goes on (the window exercised).
    let slow = dir.path().join("slow-proxy");
    let first = dir.path().join("first-started");
    let later = dir.path().join("later-started");
    let overlap = dir.path().join("overlap-seen");
    std::fs::write(
        &slow,
        format!(
            "#!/bin/sh\nif mkdir {first:?} 2>/dev/null; then sleep 0.6; \
             [ -e {later:?} ] && : > {overlap:?}; else : > {later:?}; fi\nexec {:?} \"$@\"\n",
            fake_proxy(dir.path())
        ),
    )
    .expect("write wrapper");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let cfg = config(dir.path(), &slow);
    let pid_dir = cfg.pid_dir();
    let sup = Supervisor::new(Host, cfg, Records::default());
    let moved = |netns: &str| Router {
        netns: Some(netns.into()),
        ..router("rm")
    };
    sup.put_router(moved("ns-old"));
    sup.reconcile().await;
    assert!(
        poll_async(T, || first.exists().then_some(()))
            .await
            .is_some(),
        "the first (slow) start began"
    );
    // Moved while the first proxy is still starting: its stop waits for its READY, and the
    // successor in the new namespace (another namespace: no need to wait) starts meanwhile.
    sup.put_router(moved("ns-new"));
    let errors = sup.reconcile().await;
    assert!(errors.is_empty(), "{errors:?}");
    let pid = running_pid(&sup, "rm", T).await;
    let _guard = PidGuard(vec![pid]);
    assert_eq!(
        status_of(&sup, "rm").map(|s| s.netns),
        Some("ns-new".to_owned())
    );
    assert!(
        overlap.exists(),
        "the successor started while the first proxy was still starting"
    );
    assert_eq!(
        pidfile::read(&pidfile::path(&pid_dir, "rm")),
        Some(pid),
        "the running successor's pid file"
    );
    // Its task would otherwise outlive the test and write into the removed directory.
    sup.stop_all().await;
}
