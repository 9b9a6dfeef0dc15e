//! Command line and INI options (Neutron's names accepted), merged into one checked
//! [`Config`]: the command line wins over `--config-file`s, which win over defaults.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ns_ini::{Entry, Ini};

use crate::bind::BindSpec;
use crate::ratelimit::{Rate, Versions};
use crate::upstream::KeepaliveMode;
use crate::{Error, Result};

/// Neutron's default agent socket (`$state_path/metadata_proxy`).
pub const DEFAULT_SOCKET: &str = "/var/lib/neutron/metadata_proxy";
/// The guest-facing default bind.
pub const DEFAULT_BIND: &str = "169.254.169.254:80";

/// ns-metadata-proxy: relays a VM's metadata requests (169.254.169.254) from inside a
/// network namespace to the metadata agent's Unix socket, adding X-Forwarded-For and the
/// router or network id. Every option can also be set in an INI file (see README).
#[derive(Debug, Default, Parser)]
#[command(name = "ns-metadata-proxy", version, about, long_about = None)]
pub struct Args {
    /// Serve a router: send `X-Neutron-Router-ID: ID` (letters, digits, '-', '_', max 64). [INI: router_id]
    #[arg(long = "router-id", visible_alias = "router_id", value_name = "ID")]
    pub router_id: Option<String>,
    /// Serve an isolated network: send `X-Neutron-Network-ID: ID`. [INI: network_id]
    #[arg(long = "network-id", visible_alias = "network_id", value_name = "ID")]
    pub network_id: Option<String>,
    /// The metadata agent's Unix socket [default: /var/lib/neutron/metadata_proxy, or
    /// STATE_PATH/metadata_proxy]. [INI: metadata_proxy_socket]
    #[arg(
        long = "metadata-proxy-socket",
        alias = "metadata_proxy_socket",
        value_name = "PATH"
    )]
    pub metadata_proxy_socket: Option<PathBuf>,
    /// Address to listen on, repeatable: `169.254.169.254:80`, `0.0.0.0:9697`,
    /// `[::]:9697` (dual-stack), `[fe80::a9fe:a9fe]:80%tap0` (link-local needs %IFACE)
    /// [default: 169.254.169.254:80]. [INI: bind, comma-separated]
    #[arg(long, value_name = "ADDR:PORT[%IFACE]")]
    pub bind: Vec<String>,
    /// Neutron's spelling: listen on 0.0.0.0:PORT (only when no --bind). [INI: metadata_port]
    #[arg(
        long = "metadata-port",
        visible_alias = "metadata_port",
        value_name = "PORT"
    )]
    pub metadata_port: Option<u16>,
    /// Enter this network namespace (name under /run/netns, or a path) before binding. [INI: netns]
    #[arg(long, value_name = "NAME|PATH")]
    pub netns: Option<String>,
    /// Write the pid here after binding (flock'ed, removed on exit). [INI: pid_file]
    #[arg(long = "pid-file", visible_alias = "pid_file", value_name = "PATH")]
    pub pid_file: Option<PathBuf>,
    /// Run in the background; return only once listening (non-zero with the reason if not). [INI: daemonize]
    #[arg(long, overrides_with = "nodaemonize")]
    pub daemonize: bool,
    /// oslo.config's negation: stay in the foreground (the default here).
    #[arg(long, overrides_with = "daemonize", hide = true)]
    pub nodaemonize: bool,
    /// Drop to this user (name or uid) after binding. [INI: metadata_proxy_user]
    #[arg(long, visible_alias = "metadata_proxy_user", value_name = "USER")]
    pub user: Option<String>,
    /// Drop to this group (name or gid) after binding [default: the user's group]. [INI: metadata_proxy_group]
    #[arg(long, visible_alias = "metadata_proxy_group", value_name = "GROUP")]
    pub group: Option<String>,
    /// Seconds a client has to send a complete request head [default: 30]. [INI: [metadata_haproxy] timeout_http_request]
    #[arg(long = "timeout-request", value_name = "SECONDS")]
    pub timeout_request: Option<u64>,
    /// Seconds to connect to the agent socket, else 503 [default: 30]. [INI: [metadata_haproxy] timeout_connect]
    #[arg(long = "timeout-connect", value_name = "SECONDS")]
    pub timeout_connect: Option<u64>,
    /// Client inactivity while reading a body or writing the answer [default: 32]. [INI: [metadata_haproxy] timeout_client]
    #[arg(long = "timeout-client", value_name = "SECONDS")]
    pub timeout_client: Option<u64>,
    /// Agent inactivity before answering 504 [default: 32]. [INI: [metadata_haproxy] timeout_server]
    #[arg(long = "timeout-server", value_name = "SECONDS")]
    pub timeout_server: Option<u64>,
    /// Idle seconds between requests on a kept-alive client connection [default: 30]. [INI: [metadata_haproxy] timeout_http_keep_alive]
    #[arg(long = "timeout-keepalive", value_name = "SECONDS")]
    pub timeout_keepalive: Option<u64>,
    /// Client connections served at once; more wait in the listen backlog [default: 1024]. [INI: max_connections]
    #[arg(long = "max-connections", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Per source IP, at most N requests per S seconds (sliding window), else 429. Enables
    /// rate limiting; without --rate-limit-burst only this window applies. [INI: [metadata_rate_limiting]]
    #[arg(long = "rate-limit-base", value_name = "N/S")]
    pub rate_limit_base: Option<Rate>,
    /// A second (short) window, like Neutron's burst_query_rate_limit/burst_window_duration.
    #[arg(long = "rate-limit-burst", value_name = "N/S")]
    pub rate_limit_burst: Option<Rate>,
    /// Reuse agent connections: off (one request per connection, what Neutron's agent needs),
    /// on, or auto (only after the agent's response carries X-NS-Metadata-Keepalive)
    /// [default: auto]. [INI: agent_keepalive]
    #[arg(long = "agent-keepalive", value_name = "off|on|auto")]
    pub agent_keepalive: Option<KeepaliveMode>,
    /// After all binds succeed write `READY=1\n` to this inherited fd (a pipe) and close it.
    #[arg(long = "ready-fd", value_name = "FD")]
    pub ready_fd: Vec<i32>,
    /// INI file with Neutron's option names; repeatable, later files win.
    #[arg(
        long = "config-file",
        visible_alias = "config_file",
        value_name = "PATH"
    )]
    pub config_file: Vec<PathBuf>,
    /// Neutron's state_path: the default socket is STATE_PATH/metadata_proxy. [INI: state_path]
    #[arg(long = "state-path", visible_alias = "state_path", value_name = "PATH")]
    pub state_path: Option<PathBuf>,
    /// Write logs to this file (appending) instead of stderr. [INI: log_file]
    #[arg(long = "log-file", visible_alias = "log_file", value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// Debug logging (RUST_LOG overrides). [INI: debug]
    #[arg(long, overrides_with = "nodebug")]
    pub debug: bool,
    #[arg(long, overrides_with = "debug", hide = true)]
    pub nodebug: bool,
    /// Directory for the log file: a relative --log-file goes there, and without --log-file
    /// the file is `DIR/neutron-ns-metadata-proxy-<id>.log` (Neutron's name). [INI: log_dir]
    #[arg(
        long = "log-dir",
        visible_alias = "log_dir",
        alias = "logdir",
        value_name = "DIR"
    )]
    pub log_dir: Option<PathBuf>,
    /// Log to syslog (/dev/log) with the tag `haproxy-metadata-proxy-<id>`, as Neutron's
    /// haproxy does; stderr if /dev/log is missing. [INI: use_syslog]
    #[arg(
        long = "use-syslog",
        visible_alias = "use_syslog",
        overrides_with = "nouse_syslog"
    )]
    pub use_syslog: bool,
    #[arg(
        long = "nouse-syslog",
        alias = "nouse_syslog",
        overrides_with = "use_syslog",
        hide = true
    )]
    pub nouse_syslog: bool,
    /// Syslog facility: LOG_USER, LOG_DAEMON, LOG_LOCAL0..7, ... (or `local0`) [default: LOG_USER].
    /// [INI: syslog_log_facility]
    #[arg(
        long = "syslog-log-facility",
        visible_alias = "syslog_log_facility",
        value_name = "FACILITY"
    )]
    pub syslog_log_facility: Option<String>,
    /// Accepted and ignored: the old Python proxy's log-rotation watcher
    /// (`--metadata_proxy_watch_log`, `--nometadata_proxy_watch_log`); SIGHUP reopens the
    /// log file instead.
    #[arg(
        long = "metadata_proxy_watch_log",
        alias = "metadata-proxy-watch-log",
        hide = true
    )]
    pub watch_log: bool,
    #[arg(
        long = "nometadata_proxy_watch_log",
        alias = "nometadata-proxy-watch-log",
        hide = true
    )]
    pub nowatch_log: bool,
    /// Accepted and ignored: the old proxy's thread pool (`--max-connections` limits instead).
    #[arg(
        long = "metadata_proxy_num_threads",
        alias = "metadata-proxy-num-threads",
        value_name = "N",
        hide = true
    )]
    pub num_threads: Option<u64>,
    /// Accepted and ignored: oslo's deprecated `--verbose` (info is the default level).
    #[arg(long, hide = true)]
    pub verbose: bool,
    /// Started under the old name `neutron-ns-metadata-proxy`: daemonize by default, as the
    /// Python proxy did (its agents waited for the command to return). Set by main from argv[0].
    #[arg(skip)]
    pub neutron_defaults: bool,
}

/// Which id the proxy passes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    Router(String),
    Network(String),
}

impl Resource {
    pub fn id(&self) -> &str {
        match self {
            Resource::Router(id) | Resource::Network(id) => id,
        }
    }

    /// The header line sent to the agent.
    pub fn header_line(&self) -> String {
        match self {
            Resource::Router(id) => format!("X-Neutron-Router-ID: {id}\r\n"),
            Resource::Network(id) => format!("X-Neutron-Network-ID: {id}\r\n"),
        }
    }
}

/// Timeouts (Neutron's haproxy values by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub request: Duration,
    pub connect: Duration,
    pub client: Duration,
    pub server: Duration,
    pub keepalive: Duration,
}

/// Rate limiting settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub base: Rate,
    pub burst: Rate,
    pub versions: Versions,
}

/// Everything the proxy runs with, checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub resource: Resource,
    pub socket: PathBuf,
    pub binds: Vec<BindSpec>,
    pub netns: Option<String>,
    pub pid_file: Option<PathBuf>,
    pub daemonize: bool,
    pub user: Option<String>,
    pub group: Option<String>,
    pub timeouts: Timeouts,
    pub max_connections: usize,
    pub rate_limit: Option<RateLimit>,
    pub agent_keepalive: KeepaliveMode,
    pub ready_fds: Vec<i32>,
    pub log_file: Option<PathBuf>,
    /// Log to syslog with this facility number (tag `haproxy-metadata-proxy-<id>`).
    pub syslog_facility: Option<u8>,
    pub debug: bool,
}

const DEFAULT: &str = "DEFAULT";
const HAPROXY: &str = "metadata_haproxy";
const RATE: &str = "metadata_rate_limiting";

/// Ids become header values and file names: letters, digits, '-' and '_' only, max 64
/// (what the spawner accepts, so every record it takes can be served).
pub fn validate_id(id: &str) -> std::result::Result<(), String> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "invalid id {id:?}: letters, digits, '-' and '_' only, 1..=64 characters"
        ));
    }
    Ok(())
}

fn get<'a>(ini: &'a Ini, section: &str, key: &str) -> Option<&'a Entry> {
    ini.get(section, key)
}

fn secs(cli: Option<u64>, ini: &Ini, key: &str, default: u64) -> Result<Duration> {
    let v = match (cli, get(ini, HAPROXY, key)) {
        (Some(v), _) => v,
        (None, Some(e)) => e.parse::<u64>()?,
        (None, None) => default,
    };
    if v == 0 || v > 86_400 {
        return Err(match (cli, get(ini, HAPROXY, key)) {
            (None, Some(e)) => e.error("must be 1..=86400 seconds").into(),
            _ => Error::Config(format!(
                "--{}: must be 1..=86400 seconds",
                key.replace('_', "-")
            )),
        });
    }
    Ok(Duration::from_secs(v))
}

impl Config {
    /// Merge the command line with its `--config-file`s and check everything.
    pub fn from_args(a: Args) -> Result<Config> {
        let ini = Ini::load(&a.config_file)?;
        let s = |key: &str| get(&ini, DEFAULT, key);
        let string = |cli: Option<String>, key: &str| {
            cli.or_else(|| s(key).map(|e| e.value.trim().to_owned()))
        };

        let router = string(a.router_id, "router_id").filter(|v| !v.is_empty());
        let network = string(a.network_id, "network_id").filter(|v| !v.is_empty());
        let resource = match (router, network) {
            (Some(r), None) => Resource::Router(r),
            (None, Some(n)) => Resource::Network(n),
            (None, None) => {
                return Err(Error::Config(
                    "one of --router-id or --network-id is required".into(),
                ))
            }
            (Some(_), Some(_)) => {
                return Err(Error::Config(
                    "give only one of --router-id and --network-id".into(),
                ))
            }
        };
        if let Err(reason) = validate_id(resource.id()) {
            let key = match resource {
                Resource::Router(_) => "router_id",
                Resource::Network(_) => "network_id",
            };
            return Err(match s(key) {
                Some(e) if e.value.trim() == resource.id() => e.error(reason).into(),
                _ => Error::Config(reason),
            });
        }

        let state_path = a
            .state_path
            .or_else(|| s("state_path").map(|e| PathBuf::from(e.value.trim())));
        // oslo.config interpolates `$state_path` (Neutron's sample line), as the agent does.
        let socket = a
            .metadata_proxy_socket
            .or_else(|| s("metadata_proxy_socket").map(|e| PathBuf::from(e.value.trim())))
            .map(|p| {
                let state = state_path
                    .as_deref()
                    .map_or("/var/lib/neutron".into(), |s| s.to_string_lossy());
                let p = p.to_string_lossy();
                PathBuf::from(ns_ini::interpolate(&p, "state_path", &state))
            })
            .unwrap_or_else(|| match &state_path {
                Some(p) => p.join("metadata_proxy"),
                None => PathBuf::from(DEFAULT_SOCKET),
            });

        let mut binds = Vec::new();
        if !a.bind.is_empty() {
            for b in &a.bind {
                binds.push(
                    b.parse::<BindSpec>()
                        .map_err(|r| Error::Config(format!("--bind {b}: {r}")))?,
                );
            }
        } else if let Some(port) = a.metadata_port {
            binds.push(BindSpec::any(port));
        } else if let Some(e) = s("bind") {
            for b in e.list() {
                binds.push(b.parse::<BindSpec>().map_err(|r| e.error(r))?);
            }
        } else if let Some(e) = s("metadata_port") {
            binds.push(BindSpec::any(e.parse::<u16>()?));
        }
        if binds.is_empty() {
            binds.push(DEFAULT_BIND.parse::<BindSpec>().map_err(Error::Config)?);
        }

        let flag = |on: bool, off: bool, key: &str, default: bool| -> Result<bool> {
            Ok(on || !off && s(key).map(Entry::bool).transpose()?.unwrap_or(default))
        };
        let daemonize = flag(a.daemonize, a.nodaemonize, "daemonize", a.neutron_defaults)?;
        let debug = flag(a.debug, a.nodebug, "debug", false)?;
        let log_dir = a
            .log_dir
            .or_else(|| s("log_dir").map(|e| PathBuf::from(e.value.trim())))
            .filter(|p| !p.as_os_str().is_empty());
        let log_file = a
            .log_file
            .or_else(|| s("log_file").map(|e| PathBuf::from(e.value.trim())))
            .filter(|p| !p.as_os_str().is_empty());
        // oslo.log: a relative log_file lives in log_dir; the agents named it after the uuid.
        let log_file = match (log_file, log_dir) {
            (Some(f), Some(d)) if f.is_relative() => Some(d.join(f)),
            (None, Some(d)) => {
                Some(d.join(format!("neutron-ns-metadata-proxy-{}.log", resource.id())))
            }
            (f, _) => f,
        };
        let syslog_facility = if flag(a.use_syslog, a.nouse_syslog, "use_syslog", false)? {
            let name = match (&a.syslog_log_facility, s("syslog_log_facility")) {
                (Some(v), _) => v.clone(),
                (None, Some(e)) => {
                    let v = e.value.trim().to_owned();
                    if crate::syslog::facility(&v).is_none() {
                        return Err(e.error("unknown syslog facility").into());
                    }
                    v
                }
                (None, None) => "LOG_USER".into(),
            };
            Some(crate::syslog::facility(&name).ok_or_else(|| {
                Error::Config(format!(
                    "--syslog-log-facility {name}: unknown syslog facility"
                ))
            })?)
        } else {
            None
        };
        let max_connections = match (a.max_connections, s("max_connections")) {
            (Some(n), _) => n,
            (None, Some(e)) => e.parse()?,
            (None, None) => 1024,
        };
        if max_connections == 0 || max_connections > 1_000_000 {
            return Err(Error::Config("max connections must be 1..=1000000".into()));
        }
        let agent_keepalive = match (a.agent_keepalive, s("agent_keepalive")) {
            (Some(m), _) => m,
            (None, Some(e)) => e.parse()?,
            (None, None) => KeepaliveMode::Auto,
        };

        let timeouts = Timeouts {
            request: secs(a.timeout_request, &ini, "timeout_http_request", 30)?,
            connect: secs(a.timeout_connect, &ini, "timeout_connect", 30)?,
            client: secs(a.timeout_client, &ini, "timeout_client", 32)?,
            server: secs(a.timeout_server, &ini, "timeout_server", 32)?,
            keepalive: secs(a.timeout_keepalive, &ini, "timeout_http_keep_alive", 30)?,
        };

        let rate_limit = rate_limit(a.rate_limit_base, a.rate_limit_burst, &ini)?;

        Ok(Config {
            resource,
            socket,
            binds,
            netns: string(a.netns, "netns").filter(|v| !v.is_empty()),
            pid_file: a
                .pid_file
                .or_else(|| s("pid_file").map(|e| PathBuf::from(e.value.trim()))),
            daemonize,
            user: string(a.user, "metadata_proxy_user").filter(|v| !v.is_empty()),
            group: string(a.group, "metadata_proxy_group").filter(|v| !v.is_empty()),
            timeouts,
            max_connections,
            rate_limit,
            agent_keepalive,
            ready_fds: a.ready_fd,
            log_file,
            syslog_facility,
            debug,
        })
    }
}

fn rate_limit(base: Option<Rate>, burst: Option<Rate>, ini: &Ini) -> Result<Option<RateLimit>> {
    let both = Versions { v4: true, v6: true };
    // One window given: the other adds no limit of its own.
    let given = match (base, burst) {
        (Some(b), Some(u)) => Some((b, u)),
        (Some(b), None) => Some((b, b)),
        (None, Some(u)) => Some((u, u)),
        (None, None) => None,
    };
    if let Some((base, burst)) = given {
        return Ok(Some(RateLimit {
            base,
            burst,
            versions: both,
        }));
    }
    let enabled = get(ini, RATE, "rate_limit_enabled")
        .map(Entry::bool)
        .transpose()?
        .unwrap_or(false);
    if !enabled {
        return Ok(None);
    }
    let int = |key: &str, default: u64| -> Result<u64> {
        match get(ini, RATE, key) {
            Some(e) => {
                let v: u64 = e.parse()?;
                if v == 0 && key.ends_with("duration") || v > 86_400 && key.ends_with("duration") {
                    return Err(e.error("must be 1..=86400 seconds").into());
                }
                if v > u64::from(u32::MAX) {
                    return Err(e.error("too large").into());
                }
                Ok(v)
            }
            None => Ok(default),
        }
    };
    let rate = |limit: u64, window: u64| Rate {
        limit: limit as u32,
        window: Duration::from_secs(window),
    };
    let base = rate(
        int("base_query_rate_limit", 10)?,
        int("base_window_duration", 10)?,
    );
    let burst = rate(
        int("burst_query_rate_limit", 10)?,
        int("burst_window_duration", 10)?,
    );
    // Neutron can limit only one IP version at a time; we limit what is listed (both by
    // default, which Neutron cannot do).
    let versions = match get(ini, RATE, "ip_versions") {
        None => both,
        Some(e) => {
            let mut v = Versions {
                v4: false,
                v6: false,
            };
            for item in e.list() {
                match item.as_str() {
                    "4" => v.v4 = true,
                    "6" => v.v6 = true,
                    other => {
                        return Err(e
                            .error(format!("invalid IP version {other:?}: expected 4 and/or 6"))
                            .into())
                    }
                }
            }
            v
        }
    };
    Ok(Some(RateLimit {
        base,
        burst,
        versions,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn parse(args: &[&str]) -> Result<Config> {
        let mut v = vec!["ns-metadata-proxy"];
        v.extend_from_slice(args);
        Config::from_args(Args::try_parse_from(v).expect("clap"))
    }

    fn ini(text: &str) -> tempfile_path::TempIni {
        tempfile_path::TempIni::new(text)
    }

    mod tempfile_path {
        use super::*;
        pub struct TempIni(pub PathBuf);
        impl TempIni {
            pub fn new(text: &str) -> TempIni {
                let p = std::env::temp_dir().join(format!(
                    "nsmp-cfg-{}-{:?}.ini",
                    std::process::id(),
                    std::thread::current().id()
                ));
                let mut f = std::fs::File::create(&p).expect("create ini");
                f.write_all(text.as_bytes()).expect("write ini");
                TempIni(p)
            }
            pub fn arg(&self) -> &str {
                self.0.to_str().expect("utf8 path")
            }
        }
        impl Drop for TempIni {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn defaults_and_neutron_spellings() {
        let c = parse(&[
            "--router_id=r-1",
            "--pid_file=/tmp/p",
            "--metadata_port=9697",
        ])
        .expect("ok");
        assert_eq!(c.resource, Resource::Router("r-1".into()));
        assert_eq!(c.binds.len(), 1);
        assert_eq!(c.binds[0].to_string(), "0.0.0.0:9697");
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.timeouts.server, Duration::from_secs(32));
        assert_eq!(c.max_connections, 1024);
        assert_eq!(c.agent_keepalive, KeepaliveMode::Auto);
        assert!(c.rate_limit.is_none());
        let c = parse(&["--network-id", "n1"]).expect("ok");
        assert_eq!(c.binds[0].to_string(), DEFAULT_BIND);
    }

    #[test]
    fn exactly_one_valid_id() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--router-id", "a", "--network-id", "b"]).is_err());
        assert!(parse(&["--router-id", "a/b"]).is_err());
        assert!(parse(&["--router-id", &"a".repeat(65)]).is_err());
        // The spawner takes ids with '_' (and auto-enables `qrouter-<id>` namespaces):
        // its proxy must start for them.
        assert_eq!(
            parse(&["--router-id", "r_1"])
                .expect("'_' is valid")
                .resource,
            Resource::Router("r_1".into())
        );
        assert!(parse(&["--router-id", "r 1"]).is_err());
    }

    #[test]
    fn ini_values_and_cli_precedence() {
        let f = ini("[DEFAULT]\nnetwork_id = n-2\nmetadata_proxy_socket = /s\nagent_keepalive = on\n[metadata_haproxy]\ntimeout_server = 7\n[metadata_rate_limiting]\nrate_limit_enabled = true\nip_versions = 6\nbase_query_rate_limit = 5\n");
        let c = parse(&["--config-file", f.arg(), "--timeout-server", "9"]).expect("ok");
        assert_eq!(c.resource, Resource::Network("n-2".into()));
        assert_eq!(c.socket, PathBuf::from("/s"));
        assert_eq!(c.agent_keepalive, KeepaliveMode::On);
        assert_eq!(c.timeouts.server, Duration::from_secs(9));
        let rl = c.rate_limit.expect("enabled");
        assert_eq!(rl.base.limit, 5);
        assert_eq!(
            rl.versions,
            Versions {
                v4: false,
                v6: true
            }
        );
    }

    #[test]
    fn socket_expands_state_path_as_oslo_config() {
        let f = ini("[DEFAULT]\nrouter_id = r\nstate_path = /srv/n\nmetadata_proxy_socket = $state_path/mp\n");
        let c = parse(&["--config-file", f.arg()]).expect("ok");
        assert_eq!(c.socket, PathBuf::from("/srv/n/mp"));
        let c = parse(&[
            "--router-id",
            "r",
            "--metadata-proxy-socket",
            "${state_path}/mp",
        ])
        .expect("ok");
        assert_eq!(c.socket, PathBuf::from("/var/lib/neutron/mp"));
    }

    #[test]
    fn ini_errors_name_file_line_and_key() {
        let f = ini("[DEFAULT]\nrouter_id = r\n\n[metadata_haproxy]\ntimeout_client = soon\n");
        let e = parse(&["--config-file", f.arg()])
            .expect_err("bad value")
            .to_string();
        assert!(
            e.contains(":5: [metadata_haproxy] timeout_client: invalid value"),
            "{e}"
        );
        let f = ini("[DEFAULT]\nrouter_id = r\nagent_keepalive = maybe\n");
        let e = parse(&["--config-file", f.arg()])
            .expect_err("bad value")
            .to_string();
        assert!(e.contains(":3: [DEFAULT] agent_keepalive:"), "{e}");
    }

    #[test]
    fn rate_flags() {
        let c = parse(&["--router-id", "r", "--rate-limit-base", "10/60"]).expect("ok");
        let rl = c.rate_limit.expect("on");
        assert_eq!(rl.burst, rl.base);
        assert!(rl.versions.v4 && rl.versions.v6);
    }

    #[test]
    fn old_proxy_log_options() {
        let c = parse(&[
            "--router_id=r",
            "--log-dir=/l",
            "--log-file=x.log",
            "--nodaemonize",
        ])
        .expect("ok");
        assert_eq!(c.log_file, Some(PathBuf::from("/l/x.log")));
        assert!(!c.daemonize);
        let c = parse(&["--router_id=r", "--log_dir=/l", "--use-syslog"]).expect("ok");
        assert_eq!(
            c.log_file,
            Some(PathBuf::from("/l/neutron-ns-metadata-proxy-r.log"))
        );
        assert_eq!(c.syslog_facility, Some(1));
        let e = parse(&[
            "--router_id=r",
            "--use-syslog",
            "--syslog-log-facility=LOG_NOPE",
        ])
        .expect_err("bad facility")
        .to_string();
        assert!(e.contains("syslog-log-facility"), "{e}");
        let c = parse(&["--router_id=r", "--daemonize", "--nodaemonize"]).expect("ok");
        assert!(!c.daemonize, "the last of a flag and its negation wins");
    }
}
