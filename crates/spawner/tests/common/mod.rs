//! Shared helpers for the spawner's integration tests: temp state dirs, a fake proxy, an
//! in-process control API server, polling.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ns_metadata_spawner::config::Config;
use ns_metadata_spawner::platform::Platform;
use ns_metadata_spawner::supervisor::{ProxyStatus, State, Supervisor};

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "spawner-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        ));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Every process this test started carries the unique dir in its argv (the fake
        // proxy's path or the agent socket path): kill those, by pid, even after a panic.
        kill_procs_mentioning(&self.0.display().to_string());
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// SIGKILL every process whose cmdline contains `needle` (a unique per-test path).
pub fn kill_procs_mentioning(needle: &str) {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(needle) {
                kill9(pid);
            }
        }
    }
}

/// A stand-in proxy: reports READY on its --ready-fd (unless `<dir>/fail` exists, then it
/// exits 3 at once), then waits for a signal. Its argv holds the id like the real one.
pub fn fake_proxy(dir: &Path) -> PathBuf {
    let p = dir.join("fake-proxy");
    let script = format!(
        "#!/usr/bin/env python3\nimport os, sys, signal\nif os.path.exists({fail:?}):\n    sys.exit(3)\n\
         a = sys.argv\nfd = int(a[a.index('--ready-fd') + 1])\nos.write(fd, b'READY=1\\n')\nos.close(fd)\n\
         while True:\n    signal.pause()\n",
        fail = dir.join("fail").display().to_string()
    );
    std::fs::write(&p, script).expect("write fake proxy");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    p
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

/// Poll `f` every 10 ms until it returns Some or `timeout` passes.
pub async fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The status of one proxy key.
pub fn status_of<P: Platform>(sup: &Supervisor<P>, key: &str) -> Option<ProxyStatus> {
    sup.status().into_iter().find(|s| s.key == key)
}

/// The pid of `key` once it is running; panics with its status after `timeout`.
pub async fn running_pid<P: Platform>(sup: &Supervisor<P>, key: &str, timeout: Duration) -> u32 {
    eventually(timeout, || {
        status_of(sup, key)
            .filter(|s| s.state == State::Running)
            .and_then(|s| s.pid)
    })
    .await
    .unwrap_or_else(|| panic!("{key} never ran: {:?}", status_of(sup, key)))
}

/// Whether a process is alive (not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// SIGKILL a pid we started (test cleanup, kill -9 tests).
pub fn kill9(pid: u32) {
    let _ = std::process::Command::new("kill")
        .arg("-9")
        .arg(pid.to_string())
        .status();
}

/// Kills every pid on drop (cleanup of proxies left running on purpose).
pub struct PidGuard(pub Vec<u32>);

impl Drop for PidGuard {
    fn drop(&mut self) {
        for &p in &self.0 {
            if alive(p) {
                kill9(p);
            }
        }
    }
}
