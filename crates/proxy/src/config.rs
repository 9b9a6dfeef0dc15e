//! The proxy's options as one `ns_ini` table ([`SCHEMA`]: Neutron's names, the contract's
//! shared `state_path`/`metadata_proxy_socket`, `[metadata_haproxy]` and
//! `[metadata_rate_limiting]` groups), the few flags that are not INI options, and the checks
//! that involve more than one value. Precedence, `$` rules, flags and messages are the
//! layer's (crates/ini/README.md).

use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches, Parser};
use ns_contract::limits::{Rate, RateLimit, Timeouts, Versions, RATE_GROUP};
use ns_contract::neutron_options as neutron;
use ns_contract::options::{self, HAPROXY, LOGGING, RATE_LIMITING, SOCKET};
use ns_contract::{KeepaliveMode, Kind as IdKind, Resource};
use ns_ini::{Kind, Loader, Opt, Origin, Schema, Values, DEFAULT_GROUP as D};

use crate::bind::BindSpec;
use crate::error::{Error, Result};
pub use crate::shared::SharedServer;

/// Retries of a refused agent connect: Neutron's haproxy template says `retries 3`.
pub const DEFAULT_RETRIES: u32 = 3;

/// Client connections served at once: Neutron's haproxy `maxconn 1024`. Kept in step with
/// the `max_connections` default in [`OPTS`] by a unit test.
pub const DEFAULT_MAXCONN: usize = 1024;

/// The guest-facing default bind.
pub const DEFAULT_BIND: &str = "169.254.169.254:80";

const KEEPALIVE: [&str; 3] = [
    KeepaliveMode::CHOICES[0].0,
    KeepaliveMode::CHOICES[1].0,
    KeepaliveMode::CHOICES[2].0,
];

/// The proxy's own options, all in `[DEFAULT]`; every one has a flag (`--dashes`, Neutron's
/// `--under_scores` as a hidden alias, `--noNAME` for booleans).
#[rustfmt::skip] // a table: one entry per option, read down the page
static OPTS: &[Opt] = &[
    Opt::new(D, "router_id", Kind::Str,
        "Serve a router: send `X-Neutron-Router-ID: ID` (letters, digits, '-', '_', max 64)")
        .value_name("ID"),
    Opt::new(D, "network_id", Kind::Str, "Serve an isolated network: send `X-Neutron-Network-ID: ID`")
        .value_name("ID"),
    Opt::new(D, "ovn_network_id", Kind::Str,
        "Serve an ML2/OVN network (`ovnmeta-` namespace): send `X-OVN-Network-ID: ID`")
        .value_name("ID"),
    Opt::new(D, "bind", Kind::List,
        "Address to listen on, repeatable: `169.254.169.254:80`, `0.0.0.0:9697`, `[::]:9697` \
         (dual-stack), `[fe80::a9fe:a9fe]:80%tap0` (link-local needs %IFACE)")
        .default(DEFAULT_BIND)
        .value_name("ADDR:PORT[%IFACE]"),
    Opt::new(D, "metadata_port", Kind::Port,
        "Neutron's spelling: listen on 0.0.0.0:PORT (unless --bind is set at the same or a \
         later layer)"),
    Opt::new(D, "netns", Kind::Str,
        "Enter this network namespace (name under /run/netns, or a path) before binding")
        .value_name("NAME|PATH"),
    Opt::new(D, "pid_file", Kind::Path, "Write the pid here after binding (flock'ed, removed on exit)"),
    Opt::new(D, "daemonize", Kind::Bool,
        "Run in the background; return only once listening (non-zero with the reason if not). \
         Started as neutron-ns-metadata-proxy, the default is true")
        .default("false"),
    Opt::new(D, "metadata_proxy_user", Kind::Str, "Drop to this user (name or uid) after binding")
        .long("user")
        .value_name("USER"),
    Opt::new(D, "metadata_proxy_group", Kind::Str,
        "Drop to this group (name or gid) after binding (unset: the user's group)")
        .long("group")
        .value_name("GROUP"),
    Opt::new(D, "max_connections", Kind::Int { min: 1, max: 1_000_000 },
        "Client connections served at once; more wait in the listen backlog")
        .default("1024"),
    Opt::new(D, "max_agent_requests", Kind::Int { min: 0, max: 1_000_000 },
        "Requests relayed to the agent at once (per namespace in the shared server; while \
         another namespace asked within 1 s a quarter of them, of which one under 4 ms old \
         per ms the agent takes to answer); more wait in arrival order, up to \
         timeout_connect, then 503; 0 = no limit")
        .default("16"),
    Opt::new(D, "threads", Kind::Str,
        "Serving threads at most: one serves, another starts only while every running one has \
         8 connections open, and stops once the proxy is idle; auto = 2 with 2 CPUs or more")
        .default("1")
        .value_name("auto|1..16"),
    Opt::new(D, "agent_keepalive", Kind::Choice(&KEEPALIVE),
        "Reuse agent connections: off (one request per connection, what Neutron's agent \
         needs), on, or auto (only after the agent's response carries X-NS-Metadata-Keepalive)")
        .default("auto"),
    Opt::new(D, "debug", Kind::Bool, "Debug logging (RUST_LOG overrides)").default("false"),
    Opt::new(D, "use_syslog", Kind::Bool,
        "Log to syslog (/dev/log) with the tag `haproxy-metadata-proxy-<id>`, as Neutron's \
         haproxy does; stderr if /dev/log is missing")
        .default("false"),
    Opt::new(D, "syslog_log_facility", Kind::Str,
        "Syslog facility: LOG_USER, LOG_DAEMON, LOG_LOCAL0..7, ... (or `local0`)")
        .default("LOG_USER")
        .value_name("FACILITY"),
    // Accepted and ignored, for the old Python proxy's command line: its log-rotation
    // watcher (SIGHUP reopens the log file instead), its thread pool (--max-connections
    // limits instead) and oslo's deprecated --verbose (info is the default level).
    Opt::new(D, "metadata_proxy_watch_log", Kind::Bool, "Ignored (old proxy)").hidden(),
    Opt::new(D, "metadata_proxy_num_threads", Kind::Int { min: 0, max: i64::MAX }, "Ignored (old proxy)")
        .hidden(),
    Opt::new(D, "verbose", Kind::Bool, "Ignored (oslo's old --verbose)").hidden(),
];

/// Every option the proxy reads, and the Neutron keys and sections it accepts quietly: an
/// operator passes `metadata_agent.ini`, `l3_agent.ini`, `dhcp_agent.ini` or `neutron.conf`
/// as they are, and still hears about a typo in a key or section of ours.
pub static SCHEMA: Schema = Schema::new(OPTS)
    .shared(&[SOCKET, HAPROXY, RATE_LIMITING, LOGGING])
    .ignored(&[
        (D, neutron::OSLO),
        (D, neutron::NEUTRON),
        (D, neutron::NEUTRON_SERVER),
        (D, neutron::DHCP_AGENT),
        (D, neutron::L3_AGENT),
        (D, neutron::METADATA_AGENT),
    ])
    .foreign_sections(neutron::SECTIONS);

/// Flags that are not INI options. The `--rate-limit-*` flags set `[metadata_rate_limiting]`
/// in the spawner's compact form; they are not `[DEFAULT]` keys because `rate_limit_burst` is
/// already oslo.log's key there, in every Neutron file.
fn own_args() -> [Arg; 9] {
    [
        Arg::new("rate_limit_base")
            .long("rate-limit-base")
            .value_name("N/S")
            .value_parser(|s: &str| s.parse::<Rate>())
            .help(
                "Per source IP, at most N requests per S seconds (sliding window), else 429. \
                 Enables rate limiting; without --rate-limit-burst only this window applies \
                 [config: [metadata_rate_limiting] base_*]",
            ),
        Arg::new("rate_limit_burst")
            .long("rate-limit-burst")
            .value_name("N/S")
            .value_parser(|s: &str| s.parse::<Rate>())
            .help("A second (short) window [config: [metadata_rate_limiting] burst_*]"),
        Arg::new("rate_limit_ip_versions")
            .long("rate-limit-ip-versions")
            .value_name("4|6|4,6")
            .value_parser(|s: &str| s.parse::<Versions>())
            .help(
                "IP versions rate-limited; needs rate limiting on (a --rate-limit-* window, or \
                 rate_limit_enabled) [config: [metadata_rate_limiting] ip_versions] [default: 4,6]",
            ),
        Arg::new("ready_fd")
            .long("ready-fd")
            .value_name("FD")
            .action(ArgAction::Append)
            .value_parser(clap::value_parser!(i32))
            .help("After all binds succeed write `READY=1\\n` to this inherited fd (a pipe) and close it"),
        Arg::new("shared_server")
            .long("shared-server")
            .value_name("STATE_DIR")
            .value_parser(clap::value_parser!(PathBuf))
            .requires("control_fd")
            .help(
                "Serve every namespace the spawner of STATE_DIR hands over on --control-fd \
                 (the shared proxy model) instead of one namespace; no --router-id, \
                 --network-id, --ovn-network-id, --netns, --bind or --daemonize",
            ),
        Arg::new("control_fd")
            .long("control-fd")
            .value_name("FD")
            .value_parser(clap::value_parser!(i32))
            .requires("shared_server")
            .help("With --shared-server: the inherited listening control socket (SOCK_SEQPACKET)"),
        Arg::new("shard")
            .long("shard")
            .value_name("N")
            .value_parser(clap::value_parser!(u16).range(1..64))
            .requires("shared_server")
            .help(
                "With --shared-server: which of the spawner's servers this is (1..63; the first \
                 has none), part of its identity in argv",
            ),
        Arg::new("stats_fd")
            .long("stats-fd")
            .value_name("FD")
            .value_parser(clap::value_parser!(i32))
            .help(
                "Count requests into the statistics block on this inherited fd (a file the \
                 spawner created; see ns_contract::proxy_stats); the fd is closed once mapped",
            ),
        Arg::new("heartbeat_fd")
            .long("heartbeat-fd")
            .value_name("FD")
            .value_parser(clap::value_parser!(i32))
            .conflicts_with("stats_fd")
            .help(
                "Beat into the statistics block on this inherited fd and count nothing there \
                 (the spawner's hang watchdog with proxy_metrics off); the fd is closed once \
                 mapped",
            ),
    ]
}

/// The command line: the table's flags, `--config-file`, `--config-dir`, and [`own_args`].
pub fn command() -> Command {
    SCHEMA
        .augment(
            Command::new("ns-metadata-proxy")
                .version(ns_contract::VERSION)
                .about(
                    "Relays a VM's metadata requests (169.254.169.254) from inside a network \
                     namespace to the metadata agent's Unix socket, adding X-Forwarded-For and \
                     the router, network or OVN network id. Every option but --ready-fd, --stats-fd, \
                     --heartbeat-fd and --rate-limit-* is also an INI key (see README).",
                ),
        )
        .args(own_args())
}

/// The parsed command line (`Args::parse()`, `Args::try_parse_from(argv)`), read by
/// [`Config::from_args`].
#[derive(Debug, Clone)]
pub struct Args {
    matches: ArgMatches,
    /// Started under the old name `neutron-ns-metadata-proxy`: daemonize by default, as the
    /// Python proxy did (its agents waited for the command to return). Set by main from argv[0].
    pub neutron_defaults: bool,
}

impl CommandFactory for Args {
    fn command() -> Command {
        command()
    }
    fn command_for_update() -> Command {
        command()
    }
}

impl FromArgMatches for Args {
    fn from_arg_matches(m: &ArgMatches) -> std::result::Result<Args, clap::Error> {
        Ok(Args {
            matches: m.clone(),
            neutron_defaults: false,
        })
    }
    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> std::result::Result<(), clap::Error> {
        self.matches = m.clone();
        Ok(())
    }
}

impl Parser for Args {}

/// Everything the proxy runs with, checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// The one resource served; `None` only for the shared server ([`Config::shared_server`]),
    /// which learns its namespaces' resources from the spawner.
    pub resource: Option<Resource>,
    /// `--shared-server STATE_DIR --control-fd N`: serve the namespaces handed over.
    pub shared_server: Option<SharedServer>,
    pub socket: PathBuf,
    pub binds: Vec<BindSpec>,
    pub netns: Option<String>,
    pub pid_file: Option<PathBuf>,
    pub daemonize: bool,
    pub user: Option<String>,
    pub group: Option<String>,
    pub timeouts: Timeouts,
    pub max_connections: usize,
    /// Requests with the agent at once, the rest queued ([`crate::relayq`]); 0: no limit.
    pub max_agent_requests: usize,
    /// Serving threads at most ([`crate::workers`]; haproxy's `nbthread`).
    pub threads: usize,
    pub rate_limit: Option<RateLimit>,
    pub agent_keepalive: KeepaliveMode,
    pub ready_fds: Vec<i32>,
    /// `--stats-fd`: the inherited statistics block (issue #17), mapped at start.
    pub stats_fd: Option<i32>,
    /// `--heartbeat-fd`: the same kind of block, for the heartbeat alone (nothing counted).
    pub heartbeat_fd: Option<i32>,
    pub log_file: Option<PathBuf>,
    /// Log to syslog with this facility number (tag `haproxy-metadata-proxy-<id>`).
    pub syslog_facility: Option<u8>,
    /// The syslog socket: `/dev/log`, or the one a haproxy `log` line names.
    pub syslog_socket: PathBuf,
    /// The syslog tag when not the default `haproxy-metadata-proxy-<id>` (haproxy's `log-tag`).
    pub syslog_tag: Option<String>,
    pub debug: bool,
    /// The most verbose level logged, when set by a haproxy `log` line's level (else info, or
    /// debug with `debug`).
    pub log_level: Option<tracing::Level>,
    /// Retries of a refused agent connect (haproxy's `retries`; Neutron writes 3).
    pub connect_retries: u32,
    /// The rate-limit table's size and entry lifetime when not the defaults (haproxy's
    /// `stick-table size`/`expire`).
    pub rate_table: Option<(usize, std::time::Duration)>,
    /// The files' unknown keys, typos of our sections and old names, one line each: logged
    /// once at start.
    pub warnings: Vec<String>,
}

impl Config {
    /// Every layer: the command line's files, directories and flags, then `OS_*` variables.
    pub fn from_args(a: Args) -> Result<Config> {
        Config::resolve(&a, Loader::new(&SCHEMA).matches(&a.matches).process_env())
    }

    /// As [`Config::from_args`], with exactly these `OS_*` variables instead of the
    /// process's (tests, embedders).
    pub fn from_args_env<K: Into<String>, V: Into<String>>(
        a: &Args,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Config> {
        Config::resolve(a, Loader::new(&SCHEMA).matches(&a.matches).env(env))
    }

    /// The layers in `loader` (built from `a`'s matches), plus `a`'s own flags, checked.
    fn resolve(a: &Args, loader: Loader<'_>) -> Result<Config> {
        let loaded = loader.load()?;
        let v = &loaded.values;
        let m = &a.matches;
        let shared_server = match (
            m.get_one::<PathBuf>("shared_server"),
            m.get_one::<i32>("control_fd"),
        ) {
            (Some(dir), Some(fd)) => Some(SharedServer {
                state_dir: dir.clone(),
                control_fd: *fd,
                shard: m.get_one::<u16>("shard").copied().unwrap_or(0),
            }),
            _ => None,
        };
        let resource = match &shared_server {
            None => Some(resource(v)?),
            Some(_) => {
                only_for_one_namespace(v)?;
                if m.get_one::<i32>("stats_fd").is_some()
                    || m.get_one::<i32>("heartbeat_fd").is_some()
                {
                    return Err(Error::Config(
                        "--shared-server counts each namespace into the statistics block its \
                         spawner hands over with it, and beats in its slab: no --stats-fd or \
                         --heartbeat-fd"
                            .into(),
                    ));
                }
                None
            }
        };
        let binds = binds(v)?;
        let rate_limit = rate_limit(
            v,
            m.get_one::<Rate>("rate_limit_base").copied(),
            m.get_one::<Rate>("rate_limit_burst").copied(),
            m.get_one::<Versions>("rate_limit_ip_versions").copied(),
        )?;
        // oslo.log: a relative log_file lives in log_dir; the agents named it after the uuid.
        let log_file = options::log_file(
            v,
            &match &resource {
                Some(r) => format!("neutron-ns-metadata-proxy-{}.log", r.id()),
                None => "ns-metadata-proxy-shared.log".to_owned(),
            },
        )?;
        let syslog_facility = if v.bool(D, "use_syslog")? {
            let name = v.str(D, "syslog_log_facility")?;
            let f = crate::syslog::facility(&name).ok_or_else(|| {
                v.error(
                    D,
                    "syslog_log_facility",
                    format!("unknown syslog facility {name:?}"),
                )
            })?;
            Some(f)
        } else {
            None
        };
        let daemonize = match v.is_set(D, "daemonize")? {
            true => v.bool(D, "daemonize")?,
            false => a.neutron_defaults,
        };
        Ok(Config {
            resource,
            shared_server,
            socket: options::agent_socket(v)?,
            binds,
            netns: v.opt_str(D, "netns")?,
            pid_file: v.path(D, "pid_file")?,
            daemonize,
            user: v.opt_str(D, "metadata_proxy_user")?,
            group: v.opt_str(D, "metadata_proxy_group")?,
            timeouts: options::timeouts(v)?,
            max_connections: v.int(D, "max_connections")?,
            max_agent_requests: v.int(D, "max_agent_requests")?,
            threads: threads(v)?,
            rate_limit,
            agent_keepalive: v.choice_as(D, "agent_keepalive", &KeepaliveMode::CHOICES)?,
            ready_fds: m
                .get_many::<i32>("ready_fd")
                .map(|fds| fds.copied().collect())
                .unwrap_or_default(),
            stats_fd: m.get_one::<i32>("stats_fd").copied(),
            heartbeat_fd: m.get_one::<i32>("heartbeat_fd").copied(),
            log_file,
            syslog_facility,
            syslog_socket: PathBuf::from(crate::syslog::DEV_LOG),
            syslog_tag: None,
            debug: v.bool(D, "debug")?,
            log_level: None,
            connect_retries: DEFAULT_RETRIES,
            rate_table: None,
            warnings: loaded.warnings.iter().map(ToString::to_string).collect(),
        })
    }
}

/// `threads`: `auto` or a count of 1..=[`crate::workers::MAX_THREADS`].
fn threads(v: &Values) -> Result<usize> {
    let text = v.str(D, "threads")?;
    crate::workers::parse_threads(&text).map_err(|why| v.error(D, "threads", why).into())
}

/// How high the layer that set a value is: default < files < environment < flags.
fn rank(o: &Origin) -> u8 {
    match o {
        Origin::Default => 0,
        Origin::File { .. } => 1,
        Origin::Env { .. } => 2,
        Origin::Flag { .. } => 3,
    }
}

/// With `--shared-server`: none of the options that name or place one namespace.
fn only_for_one_namespace(v: &Values) -> Result<()> {
    let keys = IdKind::ALL
        .map(IdKind::key)
        .into_iter()
        .chain(["netns", "bind", "metadata_port"]);
    for key in keys {
        let set = match v.origin(D, key)? {
            Origin::Default => false,
            Origin::Flag { .. } => true,
            _ => v.text(D, key)?.is_some_and(|t| !t.trim().is_empty()),
        };
        if set {
            return Err(Error::Config(format!(
                "--shared-server serves the namespaces its spawner hands over: {key} does not \
                 apply (each namespace's id and sockets come from the spawner)"
            )));
        }
    }
    if v.bool(D, "daemonize")? {
        return Err(Error::Config(
            "--shared-server runs in the foreground under its spawner: no --daemonize".into(),
        ));
    }
    Ok(())
}

/// The one resource served: exactly one of the three ids, checked with the contract's id
/// rule. An empty id given as a flag is an error (it is a mistake, e.g. an unset shell
/// variable); an empty value in a file or the environment counts as unset.
fn resource(v: &Values) -> Result<Resource> {
    let mut given = Vec::with_capacity(1);
    for kind in IdKind::ALL {
        let id = v.text(D, kind.key())?.map(str::trim).unwrap_or_default();
        let flag = matches!(v.origin(D, kind.key())?, Origin::Flag { .. });
        if flag || !id.is_empty() {
            given.push((kind, id.to_owned()));
        }
    }
    let flags = IdKind::ALL.map(IdKind::flag);
    match given.as_slice() {
        [(kind, id)] => {
            Resource::new(*kind, id.as_str()).map_err(|e| v.error(D, kind.key(), e).into())
        }
        [] => Err(Error::Config(format!(
            "one of {}, {} or {} is required",
            flags[0], flags[1], flags[2]
        ))),
        _ => {
            // Where each was given (`--router-id`, or `file:line: [DEFAULT] network_id`).
            let got = given
                .iter()
                .map(|(k, _)| v.place(D, k.key()).map(ToString::to_string))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Err(Error::Config(format!(
                "give only one of {}, {} and {} (got {})",
                flags[0],
                flags[1],
                flags[2],
                got.join(" and ")
            )))
        }
    }
}

/// The listeners: `bind`, unless `metadata_port` is set at a higher layer (a
/// `--metadata-port` flag over an INI `bind`); then `0.0.0.0:PORT`, as Neutron's haproxy.
/// An empty `bind` means the default.
fn binds(v: &Values) -> Result<Vec<BindSpec>> {
    let port_layer = rank(v.origin(D, "metadata_port")?);
    if port_layer > 0 && port_layer > rank(v.origin(D, "bind")?) {
        return Ok(vec![BindSpec::any(v.port(D, "metadata_port")?)]);
    }
    let mut binds = Vec::new();
    for b in v.list(D, "bind")? {
        let spec = b
            .parse::<BindSpec>()
            .map_err(|r| v.error(D, "bind", format!("{b:?}: {r}")))?;
        binds.push(spec);
    }
    if binds.is_empty() {
        binds.push(DEFAULT_BIND.parse::<BindSpec>().map_err(Error::Config)?);
    }
    Ok(binds)
}

/// Rate limiting: windows from `--rate-limit-base`/`--rate-limit-burst` when either is given
/// (one window given: the other adds no limit of its own), else `[metadata_rate_limiting]`
/// when `rate_limit_enabled`; IP versions from `--rate-limit-ip-versions`, else
/// `ip_versions` (default both).
fn rate_limit(
    v: &Values,
    base: Option<Rate>,
    burst: Option<Rate>,
    versions_flag: Option<Versions>,
) -> Result<Option<RateLimit>> {
    let ini = options::rate_limit(v)?;
    let (base, burst) = match (base, burst, ini) {
        (Some(b), Some(u), _) => (b, u),
        (Some(w), None, _) | (None, Some(w), _) => (w, w),
        (None, None, Some(rl)) => (rl.base, rl.burst),
        (None, None, None) if versions_flag.is_some() => {
            return Err(Error::Config(format!(
                "--rate-limit-ip-versions: rate limiting is off; give --rate-limit-base or \
                 --rate-limit-burst, or set [{RATE_GROUP}] rate_limit_enabled = true"
            )))
        }
        (None, None, None) => return Ok(None),
    };
    let versions = match versions_flag {
        Some(flag) => flag,
        None => Versions::from_items(&v.list(RATE_GROUP, "ip_versions")?)
            .map_err(|r| v.error(RATE_GROUP, "ip_versions", r))?,
    };
    Ok(Some(RateLimit {
        base,
        burst,
        versions,
    }))
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
