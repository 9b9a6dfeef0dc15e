//! `Supervisor::restart` without root, on the `test-fake` platform with the stand-in proxy
//! (which binds nothing): the fallback to stop + start, said in the answer; the errors for an
//! unknown key, a proxy that is not running, and the shared model. The takeover itself is
//! tested as root in `restart_root.rs`.

mod common;

use std::time::Duration;

use common::*;
use ns_metadata_spawner::config::ProxyModel;
use ns_metadata_spawner::pidfile;
use ns_metadata_spawner::platform::Host;
use ns_metadata_spawner::records::Records;
use ns_metadata_spawner::supervisor::{RestartError, State, Supervisor};
use ns_testkit::proc::{alive, PidGuard};
use ns_testkit::{eventually_async, TempDir};

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_sockets_to_take_restart_stops_and_starts_and_says_why() {
    let dir = TempDir::new("restart-fb").reaping();
    let proxy = fake_proxy(dir.path());
    let cfg = config(dir.path(), &proxy);
    let pid_dir = cfg.pid_dir();
    let sup = Supervisor::new(Host, cfg, Records::default());
    let looper = sup.clone();
    tokio::spawn(async move { looper.run_loop().await });

    assert!(matches!(
        sup.restart("nope").await,
        Err(RestartError::Unknown(m)) if m == "no proxy nope: see `status`"
    ));

    sup.put_router(router("r1"));
    let old = running_pid(&sup, "r1", T).await;
    let mut guard = PidGuard(vec![old]);
    let done = sup.restart("r1").await.expect("restarted");
    let new = done.new_pid.expect("new pid");
    guard.0 = vec![new];
    assert_eq!((done.old_pid, done.method), (Some(old), "stop-start"));
    let note = done.note.expect("the reason");
    assert!(
        note.contains("holds no listening socket for 169.254.169.254:80"),
        "{note}"
    );
    assert_ne!(new, old);
    assert!(!alive(old));
    let st = status_of(&sup, "r1").expect("status");
    assert_eq!(
        (st.state, st.pid, st.restarts),
        (State::Running, Some(new), 0)
    );
    assert_eq!(pidfile::read(&pidfile::path(&pid_dir, "r1")), Some(new));

    // A proxy that is not running: its start fails while `fail` exists.
    std::fs::write(dir.path().join("fail"), "").expect("fail marker");
    sup.put_router(router("r2"));
    eventually_async("r2 in backoff", T, || {
        status_of(&sup, "r2").filter(|s| s.state == State::Backoff)
    })
    .await;
    match sup.restart("r2").await {
        Err(RestartError::NotRunning(m)) => {
            assert!(m.starts_with("proxy r2 is not running (backoff)"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    sup.stop_all().await;
}

#[tokio::test]
async fn the_shared_model_restarts_only_a_known_running_namespace() {
    let dir = TempDir::new("restart-sh");
    let proxy = fake_proxy(dir.path());
    let mut cfg = config(dir.path(), &proxy);
    cfg.proxy_model = ProxyModel::Shared;
    let sup = Supervisor::new(Host, cfg, Records::default());
    // No such namespace: 404, as in the per-namespace model (the server itself is replaced
    // by `restart` of a served namespace: shared_root.rs).
    let e = sup.restart("r1").await.expect_err("unknown");
    assert_eq!(e, RestartError::Unknown("no proxy r1: see `status`".into()));
}
