//! The spawner's configuration: Neutron's option names in `[DEFAULT]` and
//! `[metadata_rate_limiting]`, plus our own `[spawner]` section, read with `ns_ini`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ns_ini::{Entry, Ini};

use crate::Result;

/// Agent connection reuse mode passed to every proxy (`--agent-keepalive`, issue 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keepalive {
    Off,
    On,
    Auto,
}

impl Keepalive {
    /// The flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            Keepalive::Off => "off",
            Keepalive::On => "on",
            Keepalive::Auto => "auto",
        }
    }
}

/// `[metadata_rate_limiting]` when enabled: limits passed to every proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    pub base_rate: u32,
    pub base_window: u32,
    pub burst_rate: u32,
    pub burst_window: u32,
}

/// Everything the spawner reads from its INI files, with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `[spawner] state_dir`: pid files, control socket, records.json.
    pub state_dir: PathBuf,
    /// The control socket; default `<state_dir>/control.sock` (only the CLI overrides it).
    pub control_socket: PathBuf,
    /// `[DEFAULT] metadata_proxy_socket`; default `$state_path/metadata_proxy`.
    pub metadata_proxy_socket: PathBuf,
    pub enable_isolated_metadata: bool,
    pub force_metadata: bool,
    pub enable_metadata_network: bool,
    pub metadata_proxy_user: Option<String>,
    pub metadata_proxy_group: Option<String>,
    pub rate_limit: Option<RateLimit>,
    /// `[spawner] proxy_binary`; default: `ns-metadata-proxy` next to our executable, else PATH.
    pub proxy_binary: PathBuf,
    /// `[spawner] router_interface`: where 169.254.169.254/32 goes in router namespaces.
    pub router_interface: String,
    /// `[spawner] ipv6`: also bind `[fe80::a9fe:a9fe]:80` and add the /128.
    pub ipv6: bool,
    /// `[spawner] auto_enable_routers`: a new `qrouter-<id>` namespace gets a router proxy.
    pub auto_enable_routers: bool,
    /// `[spawner] records_file`: static records, read at start and on SIGHUP.
    pub records_file: Option<PathBuf>,
    /// `[spawner] agent_keepalive`.
    pub agent_keepalive: Keepalive,
    /// `[spawner] ready_timeout` (seconds): how long a proxy may take to report READY.
    pub ready_timeout: Duration,
    /// `[spawner] stop_timeout` (seconds): SIGTERM → SIGKILL grace (Neutron: 5 s).
    pub stop_timeout: Duration,
    /// `[spawner] max_restart_delay` (seconds): cap of the restart backoff.
    pub max_restart_delay: Duration,
}

/// Keys we read, per section; anything else in these sections is warned about.
pub const KNOWN: &[(&str, &[&str])] = &[
    (
        "DEFAULT",
        &[
            "state_path",
            "metadata_proxy_socket",
            "enable_isolated_metadata",
            "force_metadata",
            "enable_metadata_network",
            "metadata_proxy_user",
            "metadata_proxy_group",
        ],
    ),
    (
        "metadata_rate_limiting",
        &[
            "rate_limit_enabled",
            "ip_versions",
            "base_window_duration",
            "base_query_rate_limit",
            "burst_window_duration",
            "burst_query_rate_limit",
        ],
    ),
    (
        "spawner",
        &[
            "proxy_binary",
            "state_dir",
            "router_interface",
            "ipv6",
            "auto_enable_routers",
            "records_file",
            "agent_keepalive",
            "ready_timeout",
            "stop_timeout",
            "max_restart_delay",
        ],
    ),
];

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ns-metadata";

fn default_proxy_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("ns-metadata-proxy")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("ns-metadata-proxy"))
}

fn seconds(e: &Entry) -> Result<Duration> {
    let s: f64 = e.parse()?;
    if !(s.is_finite() && s > 0.0 && s <= 86_400.0) {
        return Err(e.error("expected seconds between 0 and 86400").into());
    }
    Ok(Duration::from_secs_f64(s))
}

fn positive(e: &Entry) -> Result<u32> {
    let n: u32 = e.parse()?;
    if n == 0 {
        return Err(e.error("must be at least 1").into());
    }
    Ok(n)
}

impl Config {
    /// Read the INI files (later wins); unknown keys in our sections are returned as
    /// warnings ("file:line: [section] key: unknown option").
    pub fn load(files: &[PathBuf]) -> Result<(Config, Vec<String>)> {
        let ini = Ini::load(files)?;
        Config::from_ini(&ini)
    }

    /// Build from parsed INI.
    pub fn from_ini(ini: &Ini) -> Result<(Config, Vec<String>)> {
        let mut warnings: Vec<String> = ini
            .unknown_keys(KNOWN)
            .into_iter()
            .map(|e| e.error("unknown option, ignored").to_string())
            .collect();
        let get = |s: &str, k: &str| ini.get(s, k);
        let flag =
            |s: &str, k: &str| -> Result<bool> { get(s, k).map_or(Ok(false), |e| Ok(e.bool()?)) };
        let path = |s: &str, k: &str| -> Result<Option<PathBuf>> {
            match get(s, k) {
                None => Ok(None),
                Some(e) if e.value.trim().is_empty() => Err(e.error("must not be empty").into()),
                Some(e) => Ok(Some(PathBuf::from(e.value.trim()))),
            }
        };
        let name = |s: &str, k: &str| {
            get(s, k)
                .map(|e| e.value.trim().to_owned())
                .filter(|v| !v.is_empty())
        };

        let state_path =
            path("DEFAULT", "state_path")?.unwrap_or_else(|| PathBuf::from("/var/lib/neutron"));
        // oslo.config interpolates `$state_path` (Neutron's sample line); the agent does too.
        let metadata_proxy_socket = path("DEFAULT", "metadata_proxy_socket")?
            .map(|p| {
                let state = state_path.to_string_lossy();
                PathBuf::from(ns_ini::interpolate(
                    &p.to_string_lossy(),
                    "state_path",
                    &state,
                ))
            })
            .unwrap_or_else(|| state_path.join("metadata_proxy"));
        let enable_isolated_metadata = flag("DEFAULT", "enable_isolated_metadata")?;
        let enable_metadata_network = flag("DEFAULT", "enable_metadata_network")?;
        if enable_metadata_network && !enable_isolated_metadata {
            if let Some(e) = get("DEFAULT", "enable_metadata_network") {
                warnings.push(
                    e.error(
                        "has no effect without enable_isolated_metadata = true (as in Neutron)",
                    )
                    .to_string(),
                );
            }
        }

        let rate_limit = if flag("metadata_rate_limiting", "rate_limit_enabled")? {
            let num = |k: &str| -> Result<u32> {
                get("metadata_rate_limiting", k).map_or(Ok(10), positive)
            };
            if let Some(e) = get("metadata_rate_limiting", "ip_versions") {
                for v in e.list() {
                    if v != "4" && v != "6" {
                        return Err(e
                            .error(format!("invalid IP version {v:?}: expected 4 and/or 6"))
                            .into());
                    }
                }
            }
            // Windows as the proxy takes them (`--rate-limit-base N/SECONDS`).
            let window = |k: &str| -> Result<u32> {
                match get("metadata_rate_limiting", k) {
                    Some(e) if num(k)? > 86_400 => Err(e.error("must be 1..=86400 seconds").into()),
                    _ => num(k),
                }
            };
            Some(RateLimit {
                base_rate: num("base_query_rate_limit")?,
                base_window: window("base_window_duration")?,
                burst_rate: num("burst_query_rate_limit")?,
                burst_window: window("burst_window_duration")?,
            })
        } else {
            None
        };

        let state_dir =
            path("spawner", "state_dir")?.unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let router_interface = match get("spawner", "router_interface") {
            None => "lo".to_owned(),
            Some(e) => {
                let v = e.value.trim();
                crate::records::validate_ifname(v).map_err(|err| e.error(err.to_string()))?;
                v.to_owned()
            }
        };
        let agent_keepalive = match get("spawner", "agent_keepalive") {
            None => Keepalive::Auto,
            Some(e) => match e.value.trim().to_ascii_lowercase().as_str() {
                "off" => Keepalive::Off,
                "on" => Keepalive::On,
                "auto" => Keepalive::Auto,
                _ => {
                    return Err(e
                        .error(format!(
                            "invalid value {:?}: expected off, on or auto",
                            e.value
                        ))
                        .into())
                }
            },
        };
        let secs = |k: &str, d: u64| -> Result<Duration> {
            get("spawner", k).map_or(Ok(Duration::from_secs(d)), seconds)
        };
        Ok((
            Config {
                control_socket: state_dir.join("control.sock"),
                state_dir,
                metadata_proxy_socket,
                enable_isolated_metadata,
                force_metadata: flag("DEFAULT", "force_metadata")?,
                enable_metadata_network,
                metadata_proxy_user: name("DEFAULT", "metadata_proxy_user"),
                metadata_proxy_group: name("DEFAULT", "metadata_proxy_group"),
                rate_limit,
                proxy_binary: path("spawner", "proxy_binary")?.unwrap_or_else(default_proxy_binary),
                router_interface,
                ipv6: flag("spawner", "ipv6")?,
                auto_enable_routers: flag("spawner", "auto_enable_routers")?,
                records_file: path("spawner", "records_file")?,
                agent_keepalive,
                ready_timeout: secs("ready_timeout", 10)?,
                stop_timeout: secs("stop_timeout", 5)?,
                max_restart_delay: secs("max_restart_delay", 30)?,
            },
            warnings,
        ))
    }

    /// Defaults only (no files).
    pub fn defaults() -> Config {
        // An empty INI cannot fail.
        match Config::from_ini(&Ini::default()) {
            Ok((c, _)) => c,
            Err(e) => unreachable!("defaults are valid: {e}"),
        }
    }

    /// Apply the CLI's `--state-dir` and `--control-socket` overrides.
    pub fn with_overrides(
        mut self,
        state_dir: Option<&Path>,
        control_socket: Option<&Path>,
    ) -> Config {
        if let Some(d) = state_dir {
            self.state_dir = d.to_owned();
            self.control_socket = d.join("control.sock");
        }
        if let Some(s) = control_socket {
            self.control_socket = s.to_owned();
        }
        self
    }

    /// `<state_dir>/pids`.
    pub fn pid_dir(&self) -> PathBuf {
        self.state_dir.join("pids")
    }

    /// `<state_dir>/records.json`: the records made through the control API.
    pub fn records_json(&self) -> PathBuf {
        self.state_dir.join("records.json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<(Config, Vec<String>)> {
        Config::from_ini(&Ini::parse_str(text, Path::new("s.ini")).expect("ini parses"))
    }

    #[test]
    fn defaults() {
        let c = Config::defaults();
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/ns-metadata"));
        assert_eq!(
            c.control_socket,
            PathBuf::from("/var/lib/ns-metadata/control.sock")
        );
        assert_eq!(
            c.metadata_proxy_socket,
            PathBuf::from("/var/lib/neutron/metadata_proxy")
        );
        assert_eq!(c.router_interface, "lo");
        assert_eq!(c.agent_keepalive, Keepalive::Auto);
        assert!(
            !c.ipv6 && !c.auto_enable_routers && !c.force_metadata && !c.enable_isolated_metadata
        );
        assert_eq!(c.rate_limit, None);
        assert_eq!(c.ready_timeout, Duration::from_secs(10));
    }

    #[test]
    fn neutron_names_and_our_section() {
        let (c, w) = load(
            "[DEFAULT]\nstate_path = /srv/n\nenable_isolated_metadata = true\nforce_metadata = True\n\
             enable_metadata_network = yes\nmetadata_proxy_user = neutron\ndebug = true\n\
             [metadata_rate_limiting]\nrate_limit_enabled = true\nbase_query_rate_limit = 5\n\
             [spawner]\nstate_dir = /tmp/s\nrouter_interface = dummy0\nipv6 = on\nagent_keepalive = on\n\
             ready_timeout = 2.5\n[agent]\nwhatever = 1\n",
        )
        .expect("valid");
        assert_eq!(
            c.metadata_proxy_socket,
            PathBuf::from("/srv/n/metadata_proxy")
        );
        assert!(c.enable_isolated_metadata && c.force_metadata && c.enable_metadata_network);
        assert_eq!(c.metadata_proxy_user.as_deref(), Some("neutron"));
        assert_eq!(
            c.rate_limit,
            Some(RateLimit {
                base_rate: 5,
                base_window: 10,
                burst_rate: 10,
                burst_window: 10
            })
        );
        assert_eq!(c.control_socket, PathBuf::from("/tmp/s/control.sock"));
        assert_eq!(c.router_interface, "dummy0");
        assert!(c.ipv6);
        assert_eq!(c.agent_keepalive, Keepalive::On);
        assert_eq!(c.ready_timeout, Duration::from_millis(2500));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("s.ini:7: [DEFAULT] debug: unknown option"),
            "{w:?}"
        );
    }

    #[test]
    fn socket_expands_state_path_as_oslo_config() {
        // Neutron's sample line, uncommented: the agent expands it, so must we.
        let (c, _) =
            load("[DEFAULT]\nstate_path = /srv/n\nmetadata_proxy_socket = $state_path/mp\n")
                .expect("valid");
        assert_eq!(c.metadata_proxy_socket, PathBuf::from("/srv/n/mp"));
        let (c, _) = load("[DEFAULT]\nmetadata_proxy_socket = ${state_path}/mp\n").expect("valid");
        assert_eq!(
            c.metadata_proxy_socket,
            PathBuf::from("/var/lib/neutron/mp")
        );
    }

    #[test]
    fn bad_values_name_file_key_reason() {
        for (text, want) in [
            (
                "[DEFAULT]\nforce_metadata = maybe\n",
                "s.ini:2: [DEFAULT] force_metadata: invalid boolean",
            ),
            (
                "[spawner]\nagent_keepalive = sometimes\n",
                "[spawner] agent_keepalive: invalid value",
            ),
            (
                "[spawner]\nready_timeout = -1\n",
                "[spawner] ready_timeout: expected seconds",
            ),
            (
                "[spawner]\nrouter_interface = a/b\n",
                "[spawner] router_interface: invalid interface",
            ),
            (
                "[spawner]\nstate_dir =\n",
                "[spawner] state_dir: must not be empty",
            ),
            (
                "[metadata_rate_limiting]\nrate_limit_enabled = 1\nip_versions = 4,5\n",
                "[metadata_rate_limiting] ip_versions: invalid IP version",
            ),
            (
                "[metadata_rate_limiting]\nrate_limit_enabled = 1\nburst_query_rate_limit = 0\n",
                "burst_query_rate_limit: must be at least 1",
            ),
            (
                // The proxy refuses windows over a day: caught here, not by proxies that
                // never start.
                "[metadata_rate_limiting]\nrate_limit_enabled = 1\nbase_window_duration = 90000\n",
                "[metadata_rate_limiting] base_window_duration: must be 1..=86400 seconds",
            ),
        ] {
            let err = load(text).expect_err(text).to_string();
            assert!(err.contains(want), "{err} !~ {want}");
        }
    }

    #[test]
    fn metadata_network_without_isolated_warns() {
        let (_, w) = load("[DEFAULT]\nenable_metadata_network = true\n").expect("valid");
        assert!(
            w.iter()
                .any(|w| w.contains("without enable_isolated_metadata")),
            "{w:?}"
        );
    }

    #[test]
    fn overrides() {
        let c = Config::defaults().with_overrides(Some(Path::new("/x")), None);
        assert_eq!(c.control_socket, PathBuf::from("/x/control.sock"));
        let c = c.with_overrides(None, Some(Path::new("/y.sock")));
        assert_eq!(c.control_socket, PathBuf::from("/y.sock"));
        assert_eq!(c.pid_dir(), PathBuf::from("/x/pids"));
    }
}
