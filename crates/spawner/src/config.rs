//! The spawner's configuration as one option table for `ns_ini` ([`SCHEMA`]): Neutron's names
//! in `[DEFAULT]`, the contract's shared groups (`state_path`/`metadata_proxy_socket`,
//! `[metadata_haproxy]`, `[metadata_rate_limiting]`, read with the contract's readers so every
//! proxy gets what a standalone proxy reads), our `[spawner]` section, and the few checks
//! that involve more than one value. Precedence, `$` rules and flags are the layer's
//! (crates/ini/README.md); [`Sources`] remembers the layers so SIGHUP reads them again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::ArgMatches;
use ns_contract::limits::{RateLimit, Timeouts};
use ns_contract::neutron_options as neutron;
use ns_contract::options::{self, HAPROXY, RATE_LIMITING, SOCKET};
use ns_contract::KeepaliveMode;
use ns_ini::{Kind, Loader, Opt, Schema, Values, DEFAULT_GROUP as D};

use crate::Result;

/// Our own section.
pub const GROUP: &str = "spawner";

/// Neutron's OVN metadata agent's sections, read with `source = ovn`.
const OVN: &str = "ovn";
const OVS: &str = "ovs";

/// `[spawner] source`: the records only, or also the OVN Southbound database.
const SOURCES: [&str; 2] = ["records", "ovn"];
const MODELS: [&str; 2] = ["per-namespace", "shared"];

/// `[spawner] proxy_model`: how namespaces are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyModel {
    /// One `ns-metadata-proxy` process per namespace (the default).
    PerNamespace,
    /// One server process for every namespace: the spawner opens each namespace's listeners
    /// and hands them over (`ns-metadata-proxy --shared-server`, issue #20).
    Shared,
}

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ns-metadata";

const SECONDS: Kind = Kind::Seconds {
    min: 0.001,
    max: 86_400.0,
};

/// Seconds where 0 switches the feature off.
const SECONDS_OR_OFF: Kind = Kind::Seconds {
    min: 0.0,
    max: 86_400.0,
};

const KEEPALIVE: [&str; 3] = [
    KeepaliveMode::CHOICES[0].0,
    KeepaliveMode::CHOICES[1].0,
    KeepaliveMode::CHOICES[2].0,
];

static OPTS: &[Opt] = &[
    Opt::new(
        D,
        "enable_isolated_metadata",
        Kind::Bool,
        "Serve networks without a router (Neutron's dhcp agent option)",
    )
    .default("false"),
    Opt::new(
        D,
        "force_metadata",
        Kind::Bool,
        "Serve every network with DHCP, router or not",
    )
    .default("false"),
    Opt::new(
        D,
        "enable_metadata_network",
        Kind::Bool,
        "Serve networks with a subnet in 169.254.0.0/16 with their router's id (needs enable_isolated_metadata)",
    )
    .default("false"),
    Opt::new(
        D,
        "metadata_proxy_user",
        Kind::Str,
        "User the proxies run as after binding (unset: stay root)",
    )
    .value_name("USER"),
    Opt::new(
        D,
        "metadata_proxy_group",
        Kind::Str,
        "Group the proxies run as after binding (unset: stay root)",
    )
    .value_name("GROUP"),
    Opt::new(GROUP, "proxy_binary", Kind::Str, "The proxy to run")
        .value_name("PATH")
        .computed(default_proxy_binary, "ns-metadata-proxy next to this executable, else from PATH"),
    Opt::new(
        GROUP,
        "state_dir",
        Kind::Path,
        "Pid files, control socket and records.json",
    )
    .default(DEFAULT_STATE_DIR),
    Opt::new(GROUP, "control_socket", Kind::Path, "The control API's socket")
        .default("$state_dir/control.sock"),
    Opt::new(
        GROUP,
        "router_interface",
        Kind::Str,
        "Interface that gets 169.254.169.254/32 in router namespaces",
    )
    .default("lo")
    .value_name("IFNAME"),
    Opt::new(
        GROUP,
        "ipv6",
        Kind::Bool,
        "Also bind [fe80::a9fe:a9fe]:80 and add its /128",
    )
    .default("false"),
    Opt::new(
        GROUP,
        "proxy_metrics",
        Kind::Bool,
        "Each proxy counts requests into <state_dir>/stats/<key>.stats (shared memory), \
         exported by the spawner's /metrics; off, the file holds only the heartbeat the \
         hang_timeout watchdog reads (none with hang_timeout 0)",
    )
    .default("true"),
    Opt::new(
        GROUP,
        "auto_enable_routers",
        Kind::Bool,
        "Every qrouter-<id> namespace in /run/netns gets a router proxy",
    )
    .default("false"),
    Opt::new(
        GROUP,
        "records_file",
        Kind::Path,
        "Static router/network records (JSON), read at start and on SIGHUP",
    ),
    Opt::new(
        GROUP,
        "agent_keepalive",
        Kind::Choice(&KEEPALIVE),
        "Proxies keep their connection to the agent (auto: when the agent says it does)",
    )
    .default("auto"),
    Opt::new(
        GROUP,
        "max_agent_requests",
        Kind::Int { min: 0, max: 1_000_000 },
        "Requests of one namespace relayed to the agent at once, the rest queued in order; \
         in the shared server, while another namespace asked within 1 s, a quarter of them, \
         of which one under 4 ms old per ms the agent takes to answer (passed as \
         --max-agent-requests; unset: the proxy's default, 16; 0 = no limit)",
    ),
    Opt::new(
        GROUP,
        "proxy_threads",
        Kind::Str,
        "Serving threads of each proxy and of the shared server at most, started only under \
         load (passed as --threads: auto or 1..16; unset: the proxy's default, 1)",
    ),
    Opt::new(
        GROUP,
        "ready_timeout",
        SECONDS,
        "Seconds a proxy may take to report READY",
    )
    .default("10"),
    Opt::new(
        GROUP,
        "stop_timeout",
        SECONDS,
        "Seconds between SIGTERM and SIGKILL when stopping a proxy",
    )
    .default("5"),
    Opt::new(
        GROUP,
        "max_restart_delay",
        SECONDS,
        "Longest restart backoff, seconds",
    )
    .default("30"),
    Opt::new(
        GROUP,
        "hang_timeout",
        SECONDS_OR_OFF,
        "Seconds a proxy or shared server may go without a heartbeat from its event loop \
         (and not stopped) before it is killed and replaced as if it had died (0: not \
         watched); read at start",
    )
    .default("60"),
    Opt::new(
        GROUP,
        "proxy_model",
        Kind::Choice(&MODELS),
        "per-namespace: one proxy process per namespace; shared: one server process for all, the spawner opening each namespace's listeners and handing them over (opt-in); read at start",
    )
    .default("per-namespace"),
    Opt::new(
        GROUP,
        "shared_servers",
        Kind::Int { min: 1, max: 64 },
        "With proxy_model = shared: how many server processes (shards) serve the namespaces, each namespace on the one a hash of its key picks (the same after a restart); read at start",
    )
    .default("1"),
    Opt::new(
        GROUP,
        "source",
        Kind::Choice(&SOURCES),
        "Where records come from besides the control API and records_file: ovn = the OVN Southbound database ([ovn] ovn_sb_connection) builds ovnmeta- namespaces",
    )
    .default("records"),
    Opt::new(
        OVN,
        "ovn_sb_connection",
        Kind::Str,
        "OVN Southbound remotes, comma separated (tcp:IP:PORT, ssl:IP:PORT, unix:PATH), read with source = ovn",
    )
    .default(ns_contract::ovn::DEFAULT_SB_CONNECTION),
    Opt::new(OVN, "ovn_sb_private_key", Kind::Path, "Private key (PEM) for ssl: Southbound remotes"),
    Opt::new(OVN, "ovn_sb_certificate", Kind::Path, "Certificate (PEM) of ovn_sb_private_key"),
    Opt::new(
        OVN,
        "ovn_sb_ca_cert",
        Kind::Path,
        "CA certificate (PEM) the Southbound server is verified with",
    ),
    Opt::new(
        OVN,
        "ovsdb_probe_interval",
        Kind::Int { min: 0, max: 1 << 31 },
        "Milliseconds of silence on a tcp/ssl Southbound connection before probing it; 0 = off",
    )
    .default("60000"),
    Opt::new(
        OVS,
        "ovsdb_connection",
        Kind::Str,
        "The local Open_vSwitch database (system-id, ovn-bridge; the metadata ports are plugged there), read with source = ovn",
    )
    .default(ns_contract::ovn::DEFAULT_OVSDB_CONNECTION),
    Opt::new(
        GROUP,
        "metrics_bind",
        Kind::Str,
        "ADDRESS:PORT where Prometheus scrapes GET /metrics over TCP (empty: off; the control socket serves it too)",
    ),
];

/// Every option the spawner reads, and the Neutron keys and sections it accepts quietly: an
/// operator passes `neutron.conf`, `dhcp_agent.ini` and `l3_agent.ini` as they are.
pub static SCHEMA: Schema = Schema::new(OPTS)
    .shared(&[SOCKET, HAPROXY, RATE_LIMITING])
    .ignored(&[
        (D, neutron::OSLO),
        (D, neutron::NEUTRON),
        (D, neutron::NEUTRON_SERVER),
        (D, neutron::DHCP_AGENT),
        (D, neutron::L3_AGENT),
        (OVN, neutron::OVN_METADATA_AGENT_OVN),
        (OVS, neutron::AGENT_OVS),
    ])
    .foreign_sections(neutron::SECTIONS);

/// Everything the spawner reads, with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `[spawner] state_dir`: pid files, control socket, records.json.
    pub state_dir: PathBuf,
    /// `[spawner] control_socket`; default `$state_dir/control.sock`.
    pub control_socket: PathBuf,
    /// `[DEFAULT] metadata_proxy_socket`; default `$state_path/metadata_proxy`.
    pub metadata_proxy_socket: PathBuf,
    pub enable_isolated_metadata: bool,
    pub force_metadata: bool,
    pub enable_metadata_network: bool,
    pub metadata_proxy_user: Option<String>,
    pub metadata_proxy_group: Option<String>,
    /// `[metadata_rate_limiting]` when `rate_limit_enabled`: limits and the IP versions they
    /// apply to, passed to every proxy.
    pub rate_limit: Option<RateLimit>,
    /// `[metadata_haproxy]` timeouts (LP#2154609), passed to every proxy.
    pub timeouts: Timeouts,
    /// `[spawner] proxy_binary`; default: `ns-metadata-proxy` next to our executable, else PATH.
    pub proxy_binary: PathBuf,
    /// `[spawner] router_interface`: where 169.254.169.254/32 goes in router namespaces.
    pub router_interface: String,
    /// `[spawner] ipv6`: also bind `[fe80::a9fe:a9fe]:80` and add the /128.
    pub ipv6: bool,
    /// `[spawner] auto_enable_routers`: a new `qrouter-<id>` namespace gets a router proxy.
    pub auto_enable_routers: bool,
    /// `[spawner] proxy_metrics`: pass each proxy a statistics block (`--stats-fd`; without
    /// it, [`Config::stats_blocks`]).
    pub proxy_metrics: bool,
    /// `[spawner] records_file`: static records, read at start and on SIGHUP.
    pub records_file: Option<PathBuf>,
    /// `[spawner] agent_keepalive`.
    pub agent_keepalive: KeepaliveMode,
    /// `[spawner] max_agent_requests`, passed as `--max-agent-requests` when set (unset: the
    /// proxy's default, and no flag, so the argv of running proxies stays as it was).
    pub max_agent_requests: Option<usize>,
    /// `[spawner] proxy_threads` (`auto` or 1..=16), passed as `--threads` when set (unset:
    /// no flag, as for `max_agent_requests`).
    pub proxy_threads: Option<String>,
    /// `[spawner] ready_timeout`: how long a proxy may take to report READY.
    pub ready_timeout: Duration,
    /// `[spawner] stop_timeout`: SIGTERM → SIGKILL grace (Neutron: 5 s).
    pub stop_timeout: Duration,
    /// `[spawner] max_restart_delay`: cap of the restart backoff.
    pub max_restart_delay: Duration,
    /// `[spawner] hang_timeout`: a process whose heartbeat has not moved for longer is hung
    /// ([`crate::hang`]); zero: not watched.
    pub hang_timeout: Duration,
    /// `[spawner] metrics_bind`: a TCP address serving only `GET /metrics` (off by default).
    pub metrics_bind: Option<std::net::SocketAddr>,
    /// `[spawner] proxy_model`.
    pub proxy_model: ProxyModel,
    /// `[spawner] shared_servers`: shards of the shared model (1..=64).
    pub shared_servers: usize,
    /// `[spawner] source = ovn`: the databases of the OVN source (`None`: records only).
    pub ovn: Option<crate::ovn_source::OvnOptions>,
}

/// `ns-metadata-proxy` next to our executable if it is there, else the bare name (PATH).
fn default_proxy_binary() -> String {
    let path = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("ns-metadata-proxy")))
        .filter(|p| p.is_file())
        .map_or_else(
            || "ns-metadata-proxy".to_owned(),
            |p| p.display().to_string(),
        );
    // A default is substituted like any value: a `$` in our own path is literal.
    path.replace('$', "$$")
}

impl Config {
    /// A configuration read again (SIGHUP) keeps `old`'s values of what changes only on
    /// restart: where state lives and is served (`state_dir`, the control socket,
    /// `metrics_bind`), and how namespaces are served (`proxy_model`, `shared_servers`: the
    /// shared servers are taken over, started or retired once, at start; switching at run
    /// time would leave namespaces of both models, and a server's sockets held twice). The
    /// names of the keys whose new value was not taken.
    pub fn keep_restart_only(&mut self, old: &Config) -> Vec<&'static str> {
        let mut kept = Vec::new();
        if self.state_dir != old.state_dir {
            self.state_dir = old.state_dir.clone();
            kept.push("state_dir");
        }
        if self.control_socket != old.control_socket {
            self.control_socket = old.control_socket.clone();
            kept.push("control_socket");
        }
        if self.metrics_bind != old.metrics_bind {
            self.metrics_bind = old.metrics_bind;
            kept.push("metrics_bind");
        }
        if self.proxy_model != old.proxy_model {
            self.proxy_model = old.proxy_model;
            kept.push("proxy_model");
        }
        if self.shared_servers != old.shared_servers {
            self.shared_servers = old.shared_servers;
            kept.push("shared_servers");
        }
        // Every running proxy task and server manager holds the value it started with: one
        // value for all, or the log and the watchdogs would disagree.
        if self.hang_timeout != old.hang_timeout {
            self.hang_timeout = old.hang_timeout;
            kept.push("hang_timeout");
        }
        kept
    }

    /// The configuration from resolved values, plus the warnings of the cross-field checks.
    pub fn from_values(v: &Values) -> Result<(Config, Vec<String>)> {
        let mut warnings = Vec::new();
        let required = |name: &str| {
            v.path(GROUP, name)?
                .ok_or_else(|| v.error(GROUP, name, "must not be empty"))
        };
        let enable_isolated_metadata = v.bool(D, "enable_isolated_metadata")?;
        let enable_metadata_network = v.bool(D, "enable_metadata_network")?;
        if enable_metadata_network && !enable_isolated_metadata {
            let why = "has no effect without enable_isolated_metadata = true (as in Neutron)";
            warnings.push(v.error(D, "enable_metadata_network", why).to_string());
        }
        let router_interface = v.str(GROUP, "router_interface")?;
        ns_contract::validate_ifname(&router_interface)
            .map_err(|e| v.error(GROUP, "router_interface", e))?;
        let proxy_threads = match v.opt_str(GROUP, "proxy_threads")? {
            None => None,
            // Checked by the proxy's own rule; passed on as written.
            Some(t) => match ns_metadata_proxy::workers::parse_threads(&t) {
                Ok(_) => Some(t.trim().to_owned()),
                Err(why) => return Err(v.error(GROUP, "proxy_threads", why).into()),
            },
        };
        let proxy_binary = v
            .opt_str(GROUP, "proxy_binary")?
            .ok_or_else(|| v.error(GROUP, "proxy_binary", "must not be empty"))?;
        let config = Config {
            state_dir: required("state_dir")?,
            control_socket: required("control_socket")?,
            metadata_proxy_socket: options::agent_socket(v)?,
            enable_isolated_metadata,
            force_metadata: v.bool(D, "force_metadata")?,
            enable_metadata_network,
            metadata_proxy_user: v.opt_str(D, "metadata_proxy_user")?,
            metadata_proxy_group: v.opt_str(D, "metadata_proxy_group")?,
            rate_limit: options::rate_limit(v)?,
            timeouts: options::timeouts(v)?,
            proxy_binary: PathBuf::from(proxy_binary),
            router_interface,
            ipv6: v.bool(GROUP, "ipv6")?,
            auto_enable_routers: v.bool(GROUP, "auto_enable_routers")?,
            proxy_metrics: v.bool(GROUP, "proxy_metrics")?,
            records_file: v.path(GROUP, "records_file")?,
            agent_keepalive: v.choice_as(GROUP, "agent_keepalive", &KeepaliveMode::CHOICES)?,
            max_agent_requests: match v.is_set(GROUP, "max_agent_requests")? {
                true => Some(v.int(GROUP, "max_agent_requests")?),
                false => None,
            },
            proxy_threads,
            ready_timeout: v.seconds(GROUP, "ready_timeout")?,
            stop_timeout: v.seconds(GROUP, "stop_timeout")?,
            max_restart_delay: v.seconds(GROUP, "max_restart_delay")?,
            hang_timeout: v.seconds(GROUP, "hang_timeout")?,
            metrics_bind: ns_contract::options::socket_addr(
                v,
                GROUP,
                "metrics_bind",
                "127.0.0.1:9715 or [::1]:9715",
            )?,
            proxy_model: match v.choice(GROUP, "proxy_model")? {
                "shared" => ProxyModel::Shared,
                _ => ProxyModel::PerNamespace,
            },
            shared_servers: v.int(GROUP, "shared_servers")?,
            ovn: match v.choice(GROUP, "source")? {
                "ovn" => {
                    let sb = v.str(OVN, "ovn_sb_connection")?;
                    ns_ovsdb::Remote::parse_list(&sb)
                        .map_err(|e| v.error(OVN, "ovn_sb_connection", e))?;
                    let ovs = v.str(OVS, "ovsdb_connection")?;
                    ns_ovsdb::Remote::parse_list(&ovs)
                        .map_err(|e| v.error(OVS, "ovsdb_connection", e))?;
                    let tls = match (
                        v.path(OVN, "ovn_sb_private_key")?,
                        v.path(OVN, "ovn_sb_certificate")?,
                        v.path(OVN, "ovn_sb_ca_cert")?,
                    ) {
                        (Some(k), Some(c), Some(ca)) => Some((k, c, ca)),
                        _ if sb.split(',').any(|r| r.trim().starts_with("ssl:")) => {
                            return Err(v
                                .error(
                                    OVN,
                                    "ovn_sb_connection",
                                    "ssl: needs ovn_sb_private_key, ovn_sb_certificate and ovn_sb_ca_cert",
                                )
                                .into())
                        }
                        _ => None,
                    };
                    let probe: u64 = v.int(OVN, "ovsdb_probe_interval")?;
                    Some(crate::ovn_source::OvnOptions {
                        sb_connection: sb,
                        sb_tls: tls,
                        probe_interval: (probe > 0).then(|| Duration::from_millis(probe)),
                        ovsdb_connection: ovs,
                    })
                }
                _ => None,
            },
        };
        Ok((config, warnings))
    }

    /// Load every layer of `loader`: the configuration, then the loader's warnings (unknown
    /// keys, typos, old names) and ours, one line each.
    pub fn from_loader(loader: Loader<'_>) -> Result<(Config, Vec<String>)> {
        let loaded = loader.load()?;
        let (config, ours) = Config::from_values(&loaded.values)?;
        let mut warnings: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
        warnings.extend(ours);
        Ok((config, warnings))
    }

    /// These INI files only (later wins; no flags, no environment).
    pub fn load(files: &[PathBuf]) -> Result<(Config, Vec<String>)> {
        Sources::files(files).load()
    }

    /// Defaults only (no files, flags or environment).
    pub fn defaults() -> Config {
        match Config::from_loader(Loader::new(&SCHEMA)) {
            Ok((c, _)) => c,
            Err(e) => unreachable!("defaults are valid (SCHEMA.check in a test): {e}"),
        }
    }

    /// Set the state directory (and with it the control socket) or the control socket, as
    /// `--state-dir` and `--control-socket` do (for tests that build a `Config` by hand).
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

    /// Whether each proxy has a statistics block (the shared server its slab): to count into
    /// (`proxy_metrics`), or, without it, for its heartbeat alone while hangs are watched
    /// (`hang_timeout` not 0; `--heartbeat-fd`, nothing counted or exported): the watchdog
    /// reads the beat there ([`crate::hang`]).
    pub fn stats_blocks(&self) -> bool {
        self.proxy_metrics || !self.hang_timeout.is_zero()
    }

    /// `<state_dir>/stats`: the proxies' statistics blocks.
    pub fn stats_dir(&self) -> PathBuf {
        self.state_dir.join("stats")
    }

    /// `<state_dir>/pids`.
    pub fn pid_dir(&self) -> PathBuf {
        self.state_dir.join("pids")
    }

    /// The configuration the proxies' arguments are built from: `metadata_proxy_user` and
    /// `metadata_proxy_group` filled in by Neutron's rule (issue "hardening", items 8 and 10),
    /// read again at every reconcile:
    /// - both set: as they are;
    /// - a user without a group: the spawner's effective group, as Neutron passes its agent's
    ///   `os.getegid()` (the agent then makes its socket 0664 for that group, LP#1907695's
    ///   setup; the user's own group could not connect);
    /// - neither: the owner and group of the agent's socket (Neutron runs proxies as the
    ///   agent's user), numerically; nothing when that is the spawner's own uid and gid (the
    ///   proxy then stays uid 0 and drops every capability after binding), or while the socket
    ///   does not exist.
    pub fn for_proxies(&self) -> Config {
        self.for_proxies_owned(self.socket_owner())
    }

    /// The owner and group of the agent's socket now (`None` while it does not exist).
    pub fn socket_owner(&self) -> Option<(u32, u32)> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.metadata_proxy_socket)
            .ok()
            .map(|m| (m.uid(), m.gid()))
    }

    /// [`Config::for_proxies`] with the agent socket's `owner` given (the supervisor passes
    /// the last one it saw, so an agent restarting, its socket gone for a moment, does not
    /// change who the proxies run as).
    pub fn for_proxies_owned(&self, owner: Option<(u32, u32)>) -> Config {
        let mut c = self.clone();
        let egid = rustix::process::getegid().as_raw();
        match (&self.metadata_proxy_user, &self.metadata_proxy_group) {
            (Some(_), Some(_)) => {}
            (Some(_), None) => c.metadata_proxy_group = Some(egid.to_string()),
            (None, group) => {
                let euid = rustix::process::geteuid().as_raw();
                if let Some((uid, gid)) = owner {
                    if uid != euid || (group.is_none() && gid != egid) {
                        c.metadata_proxy_user = Some(uid.to_string());
                        if group.is_none() {
                            c.metadata_proxy_group = Some(gid.to_string());
                        }
                    }
                }
            }
        }
        c
    }

    /// The uids a process this spawner started as a proxy may have, on a configuration
    /// [`Config::for_proxies`] resolved: the spawner's own (before the proxy drops
    /// privileges, or when it keeps them) and `metadata_proxy_user`'s (a number, or a name
    /// looked up), if another.
    pub fn proxy_uids(&self) -> Vec<u32> {
        let mut uids = vec![rustix::process::geteuid().as_raw()];
        let uid = self
            .metadata_proxy_user
            .as_ref()
            .and_then(|u| match u.parse::<u32>() {
                Ok(n) => Some(n),
                Err(_) => nix::unistd::User::from_name(u)
                    .ok()
                    .flatten()
                    .map(|p| p.uid.as_raw()),
            });
        uids.extend(uid.filter(|u| !uids.contains(u)));
        uids
    }

    /// `<state_dir>/records.json`: the records made through the control API.
    pub fn records_json(&self) -> PathBuf {
        self.state_dir.join("records.json")
    }
}

/// Where the configuration comes from, kept so SIGHUP reads the same layers again: the
/// command line (`--config-file`s, `--config-dir`s, option flags), extra flag pairs, and the
/// process's `OS_<GROUP>__<OPTION>` variables (read on every load).
#[derive(Debug, Clone, Default)]
pub struct Sources {
    matches: Option<ArgMatches>,
    files: Vec<PathBuf>,
    flags: Vec<(String, String)>,
    process_env: bool,
}

impl Sources {
    /// The command line as parsed with [`crate::cli::command`] (the subcommand's matches:
    /// the global flags are propagated to it), plus the process environment.
    pub fn command_line(m: &ArgMatches) -> Sources {
        Sources {
            matches: Some(m.clone()),
            process_env: true,
            ..Sources::default()
        }
    }

    /// These INI files only (later wins).
    pub fn files(files: &[PathBuf]) -> Sources {
        Sources {
            files: files.to_vec(),
            ..Sources::default()
        }
    }

    /// One more flag, any spelling (`"state-dir"`, `"--ipv6"`), after the command line's.
    pub fn flag(mut self, flag: &str, value: &str) -> Sources {
        self.flags.push((flag.to_owned(), value.to_owned()));
        self
    }

    /// A loader holding every layer.
    pub fn loader(&self) -> Loader<'static> {
        let mut l = Loader::new(&SCHEMA);
        for f in &self.files {
            l = l.config_file(f);
        }
        if let Some(m) = &self.matches {
            l = l.matches(m);
        }
        l = l.flags(self.flags.iter().map(|(f, v)| (f.as_str(), v.as_str())));
        if self.process_env {
            l = l.process_env();
        }
        l
    }

    /// Read every layer: the configuration and the warnings to log.
    pub fn load(&self) -> Result<(Config, Vec<String>)> {
        Config::from_loader(self.loader())
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
