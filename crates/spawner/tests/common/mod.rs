//! Shared helpers for the spawner's integration tests: a fake proxy, its config, the status
//! of one proxy. Temp dirs, polling and pid guards come from ns-testkit.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use ns_metadata_spawner::api;
use ns_metadata_spawner::config::Config;
use ns_metadata_spawner::platform::{Host, Platform};
use ns_metadata_spawner::records::Records;
use ns_metadata_spawner::records::Router;
use ns_metadata_spawner::supervisor::{ProxyStatus, State, Supervisor};
use ns_testkit::poll_async;

/// A stand-in proxy: reports READY on its --ready-fd (unless `<dir>/fail` exists, then it
/// exits 3 at once), then waits for a signal. Its argv holds the id like the real one.
pub fn fake_proxy(dir: &Path) -> PathBuf {
    let p = dir.join("fake-proxy");
    std::fs::write(&p, fake_proxy_script(dir)).expect("write fake proxy");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    p
}

/// The stand-in proxy (python3): exits 3 while `DIR/fail` exists, else reports READY on its
/// `--ready-fd` and waits for a signal.
fn fake_proxy_script(dir: &Path) -> String {
    format!(
        "#!/usr/bin/env python3\nimport os, sys, signal\nif os.path.exists({fail:?}):\n    sys.exit(3)\n\
         a = sys.argv\nfd = int(a[a.index('--ready-fd') + 1])\nos.write(fd, b'READY=1\\n')\nos.close(fd)\n\
         while True:\n    signal.pause()\n",
        fail = dir.join("fail").display().to_string()
    )
}

/// A config rooted in `dir` with `proxy` as the proxy binary and short timeouts.
pub fn config(dir: &Path, proxy: &Path) -> Config {
    let mut c = Config::defaults().with_overrides(Some(dir), None);
    c.proxy_binary = proxy.to_owned();
    c.metadata_proxy_socket = dir.join("agent.sock");
    c.stop_timeout = Duration::from_secs(2);
    c.ready_timeout = Duration::from_secs(5);
    c
}

/// A router record with only its id (netns qrouter-ID, no HA, not distributed).
pub fn router(id: &str) -> Router {
    Router {
        id: id.into(),
        netns: None,
        ha_state: None,
        distributed: false,
    }
}

/// The status of one proxy key.
pub fn status_of<P: Platform>(sup: &Supervisor<P>, key: &str) -> Option<ProxyStatus> {
    sup.status().into_iter().find(|s| s.key == key)
}

/// The pid of `key` once it is running; panics with its status after `timeout`.
pub async fn running_pid<P: Platform>(sup: &Supervisor<P>, key: &str, timeout: Duration) -> u32 {
    poll_async(timeout, || {
        status_of(sup, key)
            .filter(|s| s.state == State::Running)
            .and_then(|s| s.pid)
    })
    .await
    .unwrap_or_else(|| panic!("{key} never ran: {:?}", status_of(sup, key)))
}

/// A supervisor on the unprivileged [`Host`] platform (the fake proxy) with its control API
/// served on `sock` and its reconcile loop running; both stopped on drop.
pub struct Server {
    pub sup: Supervisor<Host>,
    pub sock: std::path::PathBuf,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// [`Server`] in `dir`, with `enable_isolated_metadata` on.
pub fn server(dir: &ns_testkit::TempDir) -> Server {
    let proxy = fake_proxy(dir.path());
    let mut cfg = config(dir.path(), &proxy);
    cfg.enable_isolated_metadata = true;
    let sock = cfg.control_socket.clone();
    let listener = api::bind(&sock).expect("bind control socket");
    let sup = Supervisor::new(Host, cfg, Records::default());
    let (a, b) = (sup.clone(), sup.clone());
    let tasks = vec![
        tokio::spawn(api::serve(a, listener)),
        tokio::spawn(async move { b.run_loop().await }),
    ];
    Server { sup, sock, tasks }
}
