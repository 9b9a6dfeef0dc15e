//! Shared test helpers: the quickstart-like inventory, an in-process agent and the request a
//! proxy sends. Temp dirs, polling, the raw HTTP client and the Nova stand-in are ns-testkit's.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use ns_metadata_agent::Config;
use ns_testkit::http::{request_unix, Response};
use ns_testkit::{poll_async, TempDir};

/// Replace a file atomically (write + rename), as a careful operator or tool would.
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename into place");
}

/// The quickstart-like inventory used by most tests: router r1 with networks n1 and n2.
pub const INVENTORY: &str = r##"{
  "networks": [
    {"id": "n1", "name": "private", "project_id": "p1", "subnets": [
      {"id": "s1", "cidr": "10.250.41.0/24", "gateway_ip": "10.250.41.1", "enable_dhcp": true, "ip_version": 4}]},
    {"id": "n2", "subnets": [{"id": "s2", "cidr": "10.250.42.0/24", "gateway_ip": "10.250.42.1"}]}
  ],
  "ports": [
    {"id": "rp1", "network_id": "n1", "device_id": "r1", "device_owner": "network:router_interface",
     "fixed_ips": [{"subnet_id": "s1", "ip_address": "10.250.41.1"}]},
    {"id": "rp2", "network_id": "n2", "device_id": "r1", "device_owner": "network:router_interface",
     "fixed_ips": [{"subnet_id": "s2", "ip_address": "10.250.42.1"}]},
    {"id": "vp1", "network_id": "n1", "device_id": "vm-uuid-1", "device_owner": "compute:nova",
     "mac_address": "fa:16:3e:00:00:02", "project_id": "p1",
     "fixed_ips": [{"subnet_id": "s1", "ip_address": "10.250.41.2"}]},
    {"id": "vp2", "network_id": "n2", "device_id": "vm-uuid-2", "device_owner": "compute:nova",
     "project_id": "p2", "fixed_ips": [{"subnet_id": "s2", "ip_address": "10.250.42.2"}]}
  ],
  "instances": [
    {"uuid": "vm-uuid-1", "name": "vm1", "hostname": "vm1", "project_id": "p1", "availability_zone": "nova",
     "launch_index": 0, "flavor": "m1.small", "public_keys": {"demo": "ssh-ed25519 AAAAC3Nz demo@example"},
     "user_data": "#cloud-config\nfqdn: vm1.example\n", "meta": {"role": "web"}},
    {"uuid": "vm-uuid-2", "name": "vm2", "hostname": "vm2", "project_id": "p2"}
  ]
}"##;

/// An agent running inside the test's runtime; stopped (socket removed) on `stop`.
pub struct RunningAgent {
    pub socket: PathBuf,
    pub inventory: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<ns_metadata_agent::Result<()>>>,
}

impl RunningAgent {
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("agent task").expect("agent ran cleanly");
        }
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Test defaults: socket and inventory in `dir`, inventory polled every second.
pub fn config(dir: &TempDir, inventory: &str) -> Config {
    let inv = dir.join("inventory.json");
    write_atomic(&inv, inventory);
    let mut cfg = Config::for_test(&dir.join("agent.sock"), &inv);
    cfg.inventory_poll_interval = Duration::from_millis(100);
    cfg
}

/// Resolve a config from `(flag, value)` pairs as the binary would (for option combinations).
pub fn config_from(flags: &[(&str, &str)]) -> Config {
    ns_metadata_agent::config::from_flags(flags.iter().copied()).expect("valid test config")
}

/// Start the agent and wait until its socket accepts connections.
pub async fn start(cfg: Config) -> RunningAgent {
    let socket = cfg.metadata_proxy_socket.clone();
    let inventory = cfg.inventory_file.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(ns_metadata_agent::run(cfg, async move {
        let _ = rx.await;
    }));
    // Seen listening in /proc/net/unix, not by connecting: a probe connection would count
    // against `metadata_max_connections` until the agent saw it close, and a test of the cap
    // could find it still there.
    let listening = poll_async(Duration::from_secs(10), || {
        if listening_unix(&socket) {
            Some(true)
        } else {
            task.is_finished().then_some(false)
        }
    })
    .await;
    assert!(
        listening.is_some(),
        "agent did not start listening on {}",
        socket.display()
    );
    assert_eq!(listening, Some(true), "agent exited early");
    RunningAgent {
        socket,
        inventory,
        stop: Some(tx),
        task: Some(task),
    }
}

/// Whether a listening Unix socket is bound at `path` (`/proc/net/unix`: the `__SO_ACCEPTCON`
/// flag, 0x10000, on a line naming the path).
fn listening_unix(path: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return false;
    };
    let want = path.to_string_lossy();
    table.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        f.len() >= 8
            && f[7] == want
            && u32::from_str_radix(f[3], 16).is_ok_and(|flags| flags & 0x10000 != 0)
    })
}

/// One request on a fresh connection to the agent's socket, and its reply (the agent always
/// answers; a close without one fails the test).
pub async fn ask(socket: &Path, request: impl AsRef<[u8]>) -> Response {
    request_unix(socket, request)
        .await
        .expect("the agent answers")
}

/// A GET as a proxy sends it: XFF plus one identity header.
pub fn get(path: &str, xff: &str, id_header: &str, id: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\nX-Forwarded-For: {xff}\r\n{id_header}: {id}\r\n\r\n")
}
