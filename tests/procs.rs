//! The processes under test, each owned by a guard: the agent, the spawner (whose
//! guard also kills, by pid, every proxy the spawner started, since proxies run in their own
//! session and would outlive it). Configuration files are written as an operator would.
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{bin_path, wait_until, ChildGuard};
use ns_testkit::http::Blocking;

/// How long a process gets to become ready before the test fails.
pub const READY: Duration = Duration::from_secs(20);

/// A child process restarted with the same command line, its stderr appended to a log file.
struct Supervised {
    args: Vec<String>,
    bin: PathBuf,
    log: PathBuf,
    child: Option<ChildGuard>,
}

impl Supervised {
    fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log file");
        let child = Command::new(&self.bin)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.bin.display()));
        self.child = Some(ChildGuard(child));
    }

    fn pid(&self) -> i32 {
        let child = self.child.as_ref().expect("process is running");
        i32::try_from(child.0.id()).expect("pid fits i32")
    }

    /// SIGKILL by pid and reap (the guard's drop does both).
    fn kill(&mut self) {
        self.child = None;
    }

    /// Whether the process has exited on its own.
    fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.0.try_wait().ok().flatten().is_some(),
            None => true,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Settings of the agent under test.
pub struct AgentConfig {
    /// Inventory for the embedded backend.
    pub inventory: PathBuf,
    /// `Some((port, secret))`: forward to a Nova on 127.0.0.1:port signing with `secret`;
    /// `None`: the built-in responder answers.
    pub nova: Option<(u16, String)>,
    /// Run the real neutron-metadata-agent with this venv python instead of ours
    /// (ns-testkit's `neutron_agent.py`: its port lookup answered from the inventory; needs `nova`).
    pub neutron_python: Option<PathBuf>,
    /// More `[DEFAULT]` lines for our agent's INI (e.g. `imds_require_token = true\n`).
    pub extra_ini: String,
}

/// `ns-metadata-agent` under test, listening on `<dir>/metadata_proxy`.
pub struct Agent {
    proc: Supervised,
    socket: PathBuf,
    /// The real Neutron agent closes header-less requests without a reply, so its readiness is
    /// the wrapper's `READY` line (in the log) instead of an HTTP answer.
    neutron: bool,
}

impl Agent {
    /// Write `<dir>/metadata_agent.ini`, start the agent, wait until it answers HTTP on its socket.
    pub fn start(dir: &Path, cfg: &AgentConfig) -> Agent {
        let socket = dir.join("metadata_proxy");
        let ini = dir.join("metadata_agent.ini");
        let mut text = format!(
            "[DEFAULT]\nmetadata_proxy_socket = {}\ninventory_file = {}\nkeepalive = true\n",
            socket.display(),
            cfg.inventory.display()
        );
        text.push_str(&cfg.extra_ini);
        if let Some((port, secret)) = &cfg.nova {
            text.push_str(&format!(
                "nova_metadata_host = 127.0.0.1\nnova_metadata_port = {port}\n\
                 nova_metadata_protocol = http\nmetadata_proxy_shared_secret = {secret}\n"
            ));
        }
        std::fs::write(&ini, text).expect("write metadata_agent.ini");
        let (bin, args) = match (&cfg.neutron_python, &cfg.nova) {
            (Some(python), Some((port, secret))) => (
                python.clone(),
                vec![
                    ns_testkit::neutron::agent_script().display().to_string(),
                    socket.display().to_string(),
                    cfg.inventory.display().to_string(),
                    port.to_string(),
                    secret.clone(),
                ],
            ),
            (Some(_), None) => panic!("the real neutron agent needs a Nova"),
            (None, _) => (
                bin_path("ns-metadata-agent"),
                vec!["--config-file".into(), ini.display().to_string()],
            ),
        };
        let mut agent = Agent {
            proc: Supervised {
                args,
                bin,
                log: dir.join("agent.log"),
                child: None,
            },
            socket,
            neutron: cfg.neutron_python.is_some(),
        };
        agent.restart();
        agent
    }

    /// The agent's Unix socket (what proxies are configured with).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// kill -9 and reap.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Start (again) with the same configuration and wait for readiness.
    pub fn restart(&mut self) {
        let readies = |p: &Supervised| p.log_text().lines().filter(|l| *l == "READY").count();
        let before = readies(&self.proc);
        self.proc.kill();
        self.proc.spawn();
        let socket = self.socket.clone();
        let ready = wait_until(READY, || {
            self.proc.exited()
                || if self.neutron {
                    readies(&self.proc) > before
                } else {
                    answers_http(&socket)
                }
        });
        assert!(
            ready && !self.proc.exited(),
            "agent did not become ready on {}; its log:\n{}",
            self.socket.display(),
            self.proc.log_text()
        );
    }

    pub fn log(&self) -> String {
        self.proc.log_text()
    }
}

/// Whether something answers an HTTP request on the Unix socket (any status counts).
fn answers_http(socket: &Path) -> bool {
    let Ok(mut c) = Blocking::unix(socket) else {
        return false;
    };
    c.send(b"GET / HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n")
        .is_ok()
        && c.read(false, Duration::from_secs(2)).is_some()
}

/// Settings of the spawner under test.
pub struct SpawnerConfig<'a> {
    pub agent_socket: &'a Path,
    /// `[spawner] agent_keepalive`: off, on or auto.
    pub agent_keepalive: &'a str,
    /// `[spawner] ipv6`: also bind `[fe80::a9fe:a9fe]:80` for networks with an IPv6 subnet.
    pub ipv6: bool,
    pub enable_isolated_metadata: bool,
    pub enable_metadata_network: bool,
}

/// `ns-metadata-spawner run` under test, state in `<dir>/state`.
pub struct Spawner {
    proc: Supervised,
    config: PathBuf,
    state: PathBuf,
    dir: PathBuf,
    /// Resource ids announced, so the guard can find every proxy started for this test.
    ids: Vec<String>,
}

impl Spawner {
    /// Write `<dir>/spawner.ini`, start the spawner, wait for its control socket.
    pub fn start(dir: &Path, cfg: &SpawnerConfig<'_>) -> Spawner {
        let state = dir.join("state");
        let config = dir.join("spawner.ini");
        let text = format!(
            "[DEFAULT]\nmetadata_proxy_socket = {}\nenable_isolated_metadata = {}\n\
             enable_metadata_network = {}\nforce_metadata = false\n\n\
             [spawner]\nproxy_binary = {}\nstate_dir = {}\n\
             auto_enable_routers = false\nagent_keepalive = {}\nipv6 = {}\n",
            cfg.agent_socket.display(),
            cfg.enable_isolated_metadata,
            cfg.enable_metadata_network,
            bin_path("ns-metadata-proxy").display(),
            state.display(),
            cfg.agent_keepalive,
            cfg.ipv6,
        );
        std::fs::write(&config, text).expect("write spawner.ini");
        let mut spawner = Spawner {
            proc: Supervised {
                args: vec![
                    "run".into(),
                    "--config-file".into(),
                    config.display().to_string(),
                ],
                bin: bin_path("ns-metadata-spawner"),
                log: dir.join("spawner.log"),
                child: None,
            },
            config,
            state,
            dir: dir.to_path_buf(),
            ids: Vec::new(),
        };
        spawner.restart();
        spawner
    }

    /// Start (again) with the same configuration and state; wait until `status` answers.
    pub fn restart(&mut self) {
        self.proc.kill();
        self.proc.spawn();
        let ready = wait_until(READY, || {
            // `status` answers 0 (all running) or 3 (some proxy is not): the daemon is up.
            self.proc.exited() || matches!(self.try_cli(&["status"]).status.code(), Some(0 | 3))
        });
        assert!(
            ready && !self.proc.exited(),
            "spawner did not become ready; its log:\n{}",
            self.proc.log_text()
        );
    }

    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// kill -9 and reap the spawner only (its proxies keep running).
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    pub fn log(&self) -> String {
        self.proc.log_text()
    }

    /// `ns-metadata-spawner --config-file F ARGS...`, whatever its outcome.
    pub fn try_cli(&self, args: &[&str]) -> Output {
        Command::new(bin_path("ns-metadata-spawner"))
            .arg("--config-file")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ns-metadata-spawner client")
    }

    /// `status`'s table, whether every proxy runs (exit 0) or not (exit 3); panics on an
    /// error (exit 1).
    pub fn status(&self) -> String {
        let out = self.try_cli(&["status"]);
        assert!(
            matches!(out.status.code(), Some(0 | 3)),
            "ns-metadata-spawner status: {}\nspawner log:\n{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The CLI client's stdout; panics with its stderr (and the spawner's log) on failure.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.try_cli(args);
        assert!(
            out.status.success(),
            "ns-metadata-spawner {}: {}\nspawner log:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim(),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Announce a router (`router add ID --netns NS`).
    pub fn router_add(&mut self, id: &str, netns: &str) {
        self.ids.push(id.to_owned());
        self.cli(&["router", "add", id, "--netns", netns]);
    }

    /// Announce a network record (`network put FILE`); `proxy_id` is the id its proxy will carry
    /// (the network id, or the router id for a metadata network).
    pub fn network_put(&mut self, record: &serde_json::Value, proxy_id: &str) {
        self.ids.push(proxy_id.to_owned());
        let n = self.ids.len();
        let file = self.dir.join(format!("network-{n}.json"));
        std::fs::write(&file, record.to_string()).expect("write network record");
        self.cli(&["network", "put", &file.display().to_string()]);
    }

    /// The next hop a VM on the network uses for 169.254.169.254 (`host-routes ID`), as the
    /// DHCP server would push it with option 121.
    pub fn metadata_next_hop(&self, network_id: &str) -> String {
        let out = self.cli(&["host-routes", network_id]);
        parse_metadata_next_hop(&out)
            .unwrap_or_else(|| panic!("no 169.254.169.254 route in `host-routes`: {out}"))
    }

    /// [`Spawner::proxy_pid`], waited for: the spawner writes the pid file after the proxy's
    /// READY, so a proxy can answer a moment before its file is there.
    pub fn wait_proxy_pid(&self, id: &str) -> Option<i32> {
        let mut pid = None;
        wait_until(READY, || {
            pid = self.proxy_pid(id);
            pid.is_some()
        });
        pid
    }

    /// The pid of the live proxy for `id`, from the spawner's pid file.
    pub fn proxy_pid(&self, id: &str) -> Option<i32> {
        let text =
            std::fs::read_to_string(self.state.join("pids").join(format!("{id}.pid"))).ok()?;
        // `pid starttime netns-inode interface`: the pid first.
        let pid: i32 = text.split_whitespace().next()?.parse().ok()?;
        cmdline_has(pid, id).then_some(pid)
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.proc.kill();
        for pid in proxies_of(&self.ids) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let ids = self.ids.clone();
        // Reparented to init, which reaps them; wait so their namespaces can really go.
        wait_until(Duration::from_secs(5), || proxies_of(&ids).is_empty());
    }
}

/// Extract the next hop of the `169.254.169.254/32` route from `host-routes` output, whether it
/// is JSON (`{"destination": ..., "nexthop": ...}` objects) or lines like `169.254.169.254/32 via X`.
pub fn parse_metadata_next_hop(out: &str) -> Option<String> {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(out) {
        let routes = v
            .get("host_routes")
            .or_else(|| v.get("routes"))
            .unwrap_or(&v)
            .as_array()?
            .clone();
        return routes.iter().find_map(|r| {
            let dest = r.get("destination")?.as_str()?;
            dest.starts_with("169.254.169.254")
                .then(|| r.get("nexthop")?.as_str().map(str::to_owned))?
        });
    }
    out.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        let dest = words.next()?;
        if !dest.starts_with("169.254.169.254") {
            return None;
        }
        let rest: Vec<&str> = words.collect();
        let i = rest.iter().position(|w| *w == "via")?;
        rest.get(i + 1).map(|s| (*s).to_owned())
    })
}

/// Whether `/proc/PID/cmdline` holds `needle` (how Neutron decides a proxy is "active").
pub fn cmdline_has(pid: i32, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(needle))
        .unwrap_or(false)
}

/// Pids of live `ns-metadata-proxy` processes whose command line holds one of `ids`.
pub fn proxies_of(ids: &[String]) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let cmd = String::from_utf8_lossy(&raw);
            cmd.contains("ns-metadata-proxy") && ids.iter().any(|id| cmd.contains(id.as_str()))
        })
        .filter(|pid| !is_zombie(*pid))
        .collect()
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
        .unwrap_or(true)
}

/// kill -9 a process that is not our child (a proxy).
pub fn kill9(pid: i32) {
    ns_testkit::proc::kill9(u32::try_from(pid).expect("pid is positive"));
}

#[cfg(test)]
mod tests {
    use super::parse_metadata_next_hop;

    #[test]
    fn next_hop_is_read_from_text_or_json() {
        assert_eq!(
            parse_metadata_next_hop(
                "0.0.0.0/0 via 10.250.2.1\n169.254.169.254/32 via 10.250.2.2\n"
            )
            .as_deref(),
            Some("10.250.2.2")
        );
        assert_eq!(
            parse_metadata_next_hop(
                r#"[{"destination": "169.254.169.254/32", "nexthop": "10.250.2.2"}]"#
            )
            .as_deref(),
            Some("10.250.2.2")
        );
        assert_eq!(parse_metadata_next_hop("0.0.0.0/0 via 10.250.2.1\n"), None);
    }
}
