//! The agent's options as one `ns_ini` table (Neutron's `metadata_agent.ini` names and defaults,
//! plus our own), the Neutron keys and sections we accept without reading, and the few checks
//! that involve more than one option. Precedence, `$` rules and messages: crates/ini/README.md.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgMatches, Command};
use ns_contract::neutron_options as neutron;
use ns_ini::{Kind, Loaded, Loader, Opt, Schema, DEFAULT_GROUP as D};

/// Neutron's `[ovn]` section (ml2_conf.ini, neutron_ovn_metadata_agent.ini).
const OVN: &str = "ovn";
/// Neutron's `[ovs]` section of neutron_ovn_metadata_agent.ini.
const OVS: &str = "ovs";

pub use ns_ini::ConfigError;

/// Who answers once the instance is known (option `metadata_backend`; see `answer.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswererKind {
    /// Forward to Nova's metadata API with the signed instance id (Neutron's behaviour).
    Nova,
    /// Answer from the inventory file, as Nova would.
    Builtin,
}

/// Who finds the instance behind (resource, client IP) (option `resolver`; see `resolvers/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolverKind {
    /// The inventory file (`inventory_file`).
    Inventory,
    /// The OVN Southbound database (`[ovn] ovn_sb_connection`), as Neutron's OVN metadata agent.
    Ovn,
}

/// The OVN resolver's options: Neutron's `[ovn]` and `[ovs]` keys (neutron_ovn_metadata_agent.ini).
#[derive(Debug, Clone)]
pub struct OvnOptions {
    /// `[ovn] ovn_sb_connection`: remotes, comma separated (`tcp:`, `ssl:`, `unix:`).
    pub sb_connection: String,
    /// `[ovn] ovn_sb_private_key`, `ovn_sb_certificate`, `ovn_sb_ca_cert` (all three for `ssl:`).
    pub sb_tls: Option<(PathBuf, PathBuf, PathBuf)>,
    /// `[ovn] ovsdb_probe_interval` (milliseconds in the file; 0 = off).
    pub probe_interval: Option<Duration>,
    /// `[ovs] ovsdb_connection`: the local `Open_vSwitch` database (this chassis's `system-id`).
    pub ovsdb_connection: String,
    /// `[DEFAULT] agent_down_time`: bounds the random delay of the `sb-cfg` heartbeat.
    pub agent_down_time: u64,
}

/// Unix socket permissions, as Neutron's `metadata_proxy_socket_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketMode {
    Deduce,
    User,
    Group,
    All,
}

/// Everything the agent needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub metadata_proxy_socket: PathBuf,
    pub metadata_proxy_socket_mode: SocketMode,
    pub metadata_proxy_user: String,
    pub metadata_proxy_group: String,
    pub metadata_backlog: u32,
    /// Tokio worker threads; 0 runs everything on one thread.
    pub metadata_workers: usize,
    pub metadata_proxy_shared_secret: String,
    pub nova_metadata_host: String,
    pub nova_metadata_port: u16,
    pub nova_metadata_protocol: String,
    pub nova_metadata_insecure: bool,
    pub auth_ca_cert: Option<PathBuf>,
    pub nova_client_cert: Option<PathBuf>,
    pub nova_client_priv_key: Option<PathBuf>,
    pub nova_metadata_timeout: Duration,
    /// Largest Nova answer body relayed; larger ones become 502.
    pub nova_max_response_bytes: usize,
    /// Open proxy connections at most; 0 = derived from the file descriptor limit.
    pub metadata_max_connections: usize,
    pub answerer: AnswererKind,
    pub resolver: ResolverKind,
    pub ovn: OvnOptions,
    pub inventory_file: PathBuf,
    pub inventory_poll_interval: Duration,
    pub cache_ttl: Duration,
    /// oslo.log's `log_file` (relative ones in `log_dir`); `None`: stderr.
    pub log_file: Option<PathBuf>,
    /// `metrics_bind`: a TCP address serving only `GET /metrics` (off by default).
    pub metrics_bind: Option<std::net::SocketAddr>,
    pub keepalive: bool,
    pub keepalive_idle_timeout: Duration,
    pub imds_require_token: bool,
    pub dhcp_domain: String,
    pub debug: bool,
}

/// Neutron's `[ovn] ovn_sb_connection` default.
pub const DEFAULT_SB_CONNECTION: &str = ns_contract::ovn::DEFAULT_SB_CONNECTION;
/// Neutron's `[ovs] ovsdb_connection` default (neutron/conf/agent/ovn/metadata/config.py).
pub const DEFAULT_OVSDB_CONNECTION: &str = ns_contract::ovn::DEFAULT_OVSDB_CONNECTION;

/// Default inventory path.
pub const DEFAULT_INVENTORY: &str = "/etc/ns-metadata/inventory.json";

/// Longest interval we accept (a year), as before the table.
const YEAR: f64 = 86_400.0 * 365.0;
const SECONDS_0: Kind = Kind::Seconds {
    min: 0.0,
    max: YEAR,
};
const SECONDS_1: Kind = Kind::Seconds {
    min: 1.0,
    max: YEAR,
};

/// Neutron's default `metadata_workers` is `cpus // 2`; we keep at least one thread.
fn half_the_cpus() -> String {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    (cpus / 2).max(1).to_string()
}

/// The agent's own options, all in `[DEFAULT]` (`state_path` and `metadata_proxy_socket` come
/// from `ns_contract::options::SOCKET`). Every one has a flag: `--dashes`, Neutron's
/// `--under_scores` as a hidden alias.
#[rustfmt::skip] // a table: one entry per option, read down the page
static OPTS: &[Opt] = &[
    Opt::new(D, "metadata_proxy_socket_mode", Kind::Choice(&["deduce", "user", "group", "all"]),
        "Socket file mode: user 0644, group 0664, all 0666; deduce from metadata_proxy_user/group")
        .default("deduce"),
    Opt::new(D, "metadata_proxy_user", Kind::Str,
        "User the proxies run as, for socket mode \"deduce\" (empty: the agent's user)")
        .value_name("USER"),
    Opt::new(D, "metadata_proxy_group", Kind::Str,
        "Group the proxies run as, for socket mode \"deduce\" (empty: the agent's group)")
        .value_name("GROUP"),
    Opt::new(D, "metadata_backlog", Kind::Int { min: 1, max: 65_535 }, "Listen backlog of the socket")
        .default("4096"),
    Opt::new(D, "metadata_max_connections", Kind::Int { min: 0, max: 1 << 24 },
        "Open proxy connections at most (at the cap the oldest idle one is closed); \
         0 = from the file descriptor limit")
        .default("0"),
    Opt::new(D, "metadata_workers", Kind::Int { min: 0, max: 1024 },
        "Worker threads; 0 = a single thread")
        .computed(half_the_cpus, "CPUs/2, at least 1"),
    Opt::new(D, "metadata_proxy_shared_secret", Kind::Str,
        "Key of the X-Instance-ID-Signature HMAC; must match Nova's [neutron] \
         metadata_proxy_shared_secret. `$$` for a literal `$`. Prefer the INI file: argv is \
         visible to all users")
        .value_name("SECRET"),
    Opt::new(D, "nova_metadata_host", Kind::Str,
        "Nova metadata API host; setting it selects the Nova answerer under \"auto\" \
         (unset: 127.0.0.1 when \"nova\" is forced)")
        .value_name("HOST")
        .deprecated(&[(D, "nova_metadata_ip")]),
    Opt::new(D, "nova_metadata_port", Kind::Port, "Nova metadata API port").default("8775"),
    Opt::new(D, "nova_metadata_protocol", Kind::Choice(&["http", "https"]), "Protocol to Nova")
        .default("http"),
    Opt::new(D, "nova_metadata_insecure", Kind::Bool, "Do not verify Nova's certificate")
        .default("false"),
    Opt::new(D, "auth_ca_cert", Kind::Path, "CA bundle (PEM) to verify Nova with (unset: the system bundle)"),
    Opt::new(D, "nova_client_cert", Kind::Path, "Client certificate (PEM) for Nova; needs nova_client_priv_key"),
    Opt::new(D, "nova_client_priv_key", Kind::Path, "Private key (PEM) of nova_client_cert"),
    Opt::new(D, "nova_metadata_timeout", SECONDS_1, "Seconds to wait for Nova's answer; then 504")
        .default("60"),
    Opt::new(D, "nova_max_response_bytes", Kind::Int { min: 1, max: 1 << 40 },
        "Largest Nova answer relayed, in bytes; a larger one is answered 502")
        .default("8388608"),
    Opt::new(D, "metadata_backend", Kind::Choice(&["auto", "nova", "builtin"]),
        "Who answers: auto = nova if nova_metadata_host is set, else builtin")
        .default("auto"),
    Opt::new(D, "resolver", Kind::Choice(&["auto", "inventory", "ovn"]),
        "Who finds the instance behind a router/network and IP: auto = ovn if [ovn] \
         ovn_sb_connection is set, else inventory")
        .default("auto"),
    Opt::new(OVN, "ovn_sb_connection", Kind::Str,
        "OVN Southbound remotes, comma separated (tcp:IP:PORT, ssl:IP:PORT, unix:PATH); \
         setting it selects the OVN resolver under resolver = auto")
        .default(DEFAULT_SB_CONNECTION)
        .value_name("REMOTES"),
    Opt::new(OVN, "ovn_sb_private_key", Kind::Path, "Private key (PEM) for ssl: Southbound remotes"),
    Opt::new(OVN, "ovn_sb_certificate", Kind::Path, "Certificate (PEM) of ovn_sb_private_key"),
    Opt::new(OVN, "ovn_sb_ca_cert", Kind::Path, "CA certificate (PEM) the Southbound server is verified with"),
    Opt::new(OVN, "ovsdb_probe_interval", Kind::Int { min: 0, max: 1 << 31 },
        "Milliseconds of silence on a tcp/ssl Southbound connection before probing it; 0 = off")
        .default("60000"),
    Opt::new(OVS, "ovsdb_connection", Kind::Str,
        "The local Open_vSwitch database, read for this chassis's external_ids:system-id")
        .default(DEFAULT_OVSDB_CONNECTION)
        .value_name("REMOTE"),
    Opt::new(D, "agent_down_time", Kind::Int { min: 1, max: i32::MAX as i64 },
        "Neutron server's agent_down_time: the sb-cfg heartbeat waits a random 0..max(min(this/3, 10), 3) s")
        .default("75"),
    Opt::new(D, "inventory_file", Kind::Path, "Inventory JSON (ports, networks, instances)")
        .default(DEFAULT_INVENTORY),
    Opt::new(D, "inventory_poll_interval", SECONDS_0,
        "Seconds between checks of the inventory file; 0 = reload on SIGHUP only")
        .default("2"),
    Opt::new(D, "cache_ttl", SECONDS_0,
        "Seconds a lookup answer is cached; 0 = no cache. Reloads invalidate it")
        .default("5"),
    Opt::new(D, "metrics_bind", Kind::Str,
        "ADDRESS:PORT where Prometheus scrapes GET /metrics over TCP (empty: off)"),
    Opt::new(D, "keepalive", Kind::Bool,
        "Keep proxy connections open and send X-NS-Metadata-Keepalive")
        .default("true"),
    Opt::new(D, "keepalive_idle_timeout", SECONDS_1, "Seconds an idle proxy connection is kept open")
        .default("60"),
    Opt::new(D, "imds_require_token", Kind::Bool, "Built-in responder: EC2 paths need an IMDSv2 token")
        .default("false"),
    Opt::new(D, "dhcp_domain", Kind::Str,
        "Built-in responder: domain appended to hostnames, as Nova's [api] dhcp_domain; empty = none")
        .default("novalocal")
        .value_name("DOMAIN"),
    Opt::new(D, "debug", Kind::Bool, "Log at debug level").default("false").short('d'),
];

/// The agent's configuration: its options, the shared socket options, and Neutron's keys and
/// sections we accept without reading. The ignored keys cover what neutron-metadata-agent
/// reads (its own, oslo's, Neutron's core) and neutron.conf's server keys, since Neutron's
/// units pass `--config-file neutron.conf` too; ours among them still count as ours.
pub static SCHEMA: Schema = Schema::new(OPTS)
    .shared(&[ns_contract::options::SOCKET, ns_contract::options::LOGGING])
    .ignored(&[
        (D, neutron::OSLO),
        (D, neutron::NEUTRON),
        (D, neutron::NEUTRON_SERVER),
        (D, neutron::METADATA_AGENT),
        (OVN, neutron::OVN_METADATA_AGENT_OVN),
        (OVS, neutron::OVN_METADATA_AGENT_OVS),
    ])
    .foreign_sections(neutron::SECTIONS);

/// The command line: `--config-file`, `--config-dir` and one flag per option.
pub fn command() -> Command {
    SCHEMA.augment(
        Command::new("ns-metadata-agent")
            .version(ns_contract::VERSION)
            .about("Neutron-compatible metadata agent"),
    )
}

/// Every layer of the command line in `m` and the process environment, then the checks.
/// Returns the configuration and the warnings to log (one line each).
pub fn load(m: &ArgMatches) -> Result<(Config, Vec<String>), ConfigError> {
    resolve(SCHEMA.load(m)?)
}

/// The checks on loaded values: every option typed, then the rules between options.
pub fn resolve(loaded: Loaded) -> Result<(Config, Vec<String>), ConfigError> {
    let Loaded {
        values: v,
        warnings,
    } = loaded;
    let mut warnings: Vec<String> = warnings.iter().map(ToString::to_string).collect();

    let nova_host = v.opt_str(D, "nova_metadata_host")?;
    if let Some(h) = &nova_host {
        let bare = h.trim_start_matches('[').trim_end_matches(']');
        if bare.contains(['/', ' ', '?', '#', '@']) {
            return Err(v.error(D, "nova_metadata_host", format!("invalid host {h:?}")));
        }
    }
    let backend = v.choice_as(
        D,
        "metadata_backend",
        &[
            ("auto", None),
            ("nova", Some(AnswererKind::Nova)),
            ("builtin", Some(AnswererKind::Builtin)),
        ],
    )?;
    let resolver = match v.choice_as(
        D,
        "resolver",
        &[
            ("auto", None),
            ("inventory", Some(ResolverKind::Inventory)),
            ("ovn", Some(ResolverKind::Ovn)),
        ],
    )? {
        Some(r) => r,
        None if v.is_set(OVN, "ovn_sb_connection")? => ResolverKind::Ovn,
        None => ResolverKind::Inventory,
    };
    let ovn = ovn_options(&v, resolver == ResolverKind::Ovn)?;
    // Neutron's OVN agent always forwards to Nova (127.0.0.1 unless set); so does ours.
    let answerer = backend.unwrap_or(match (nova_host.is_some(), resolver) {
        (true, _) | (false, ResolverKind::Ovn) => AnswererKind::Nova,
        _ => AnswererKind::Builtin,
    });

    // Neutron sends a client certificate only when both files are set and says nothing
    // otherwise; we keep the behaviour but say it, at the place that set the lone one.
    let cert = v.path(D, "nova_client_cert")?;
    let key = v.path(D, "nova_client_priv_key")?;
    let lone = match (&cert, &key) {
        (Some(_), None) => Some(("nova_client_cert", "nova_client_priv_key")),
        (None, Some(_)) => Some(("nova_client_priv_key", "nova_client_cert")),
        _ => None,
    };
    if let Some((set, unset)) = lone {
        warnings.push(format!(
            "{}: {unset} is not set, so no client certificate is sent to Nova",
            v.place(D, set)?
        ));
    }

    // Nova refuses an empty key unless its own is empty too (nova api/metadata/handler.py
    // `_validate_shared_secret`), so say it once at start instead of in every 403.
    let secret = v.str(D, "metadata_proxy_shared_secret")?;
    if answerer == AnswererKind::Nova && secret.is_empty() {
        warnings.push(
            "metadata_proxy_shared_secret is empty while answering through Nova: Nova refuses \
             every request with 403 unless its [neutron] metadata_proxy_shared_secret is empty too"
                .to_owned(),
        );
    }

    let cfg = Config {
        metadata_proxy_socket: ns_contract::options::agent_socket(&v)?,
        metadata_proxy_socket_mode: v.choice_as(
            D,
            "metadata_proxy_socket_mode",
            &[
                ("deduce", SocketMode::Deduce),
                ("user", SocketMode::User),
                ("group", SocketMode::Group),
                ("all", SocketMode::All),
            ],
        )?,
        metadata_proxy_user: v.str(D, "metadata_proxy_user")?,
        metadata_proxy_group: v.str(D, "metadata_proxy_group")?,
        metadata_backlog: v.int(D, "metadata_backlog")?,
        metadata_workers: v.int(D, "metadata_workers")?,
        metadata_proxy_shared_secret: secret,
        nova_metadata_host: nova_host.unwrap_or_else(|| "127.0.0.1".to_owned()),
        nova_metadata_port: v.port(D, "nova_metadata_port")?,
        nova_metadata_protocol: v.choice(D, "nova_metadata_protocol")?.to_owned(),
        nova_metadata_insecure: v.bool(D, "nova_metadata_insecure")?,
        auth_ca_cert: v.path(D, "auth_ca_cert")?,
        nova_client_cert: cert,
        nova_client_priv_key: key,
        nova_metadata_timeout: v.seconds(D, "nova_metadata_timeout")?,
        nova_max_response_bytes: v.int(D, "nova_max_response_bytes")?,
        metadata_max_connections: v.int(D, "metadata_max_connections")?,
        answerer,
        resolver,
        ovn,
        inventory_file: v
            .path(D, "inventory_file")?
            .unwrap_or_else(|| PathBuf::from(DEFAULT_INVENTORY)),
        inventory_poll_interval: v.seconds(D, "inventory_poll_interval")?,
        cache_ttl: v.seconds(D, "cache_ttl")?,
        log_file: ns_contract::options::log_file(&v, "ns-metadata-agent.log")?,
        metrics_bind: ns_contract::options::socket_addr(
            &v,
            D,
            "metrics_bind",
            "127.0.0.1:9716 or [::1]:9716",
        )?,
        keepalive: v.bool(D, "keepalive")?,
        keepalive_idle_timeout: v.seconds(D, "keepalive_idle_timeout")?,
        imds_require_token: v.bool(D, "imds_require_token")?,
        dhcp_domain: v.str(D, "dhcp_domain")?,
        debug: v.bool(D, "debug")?,
    };
    Ok((cfg, warnings))
}

/// `[ovn]`/`[ovs]`; when the OVN resolver is used (`check`) the remotes must parse and
/// `ssl:` needs the key, certificate and CA.
fn ovn_options(v: &ns_ini::Values, check: bool) -> Result<OvnOptions, ConfigError> {
    let sb = v.str(OVN, "ovn_sb_connection")?;
    let ovs = v.str(OVS, "ovsdb_connection")?;
    let remotes = match check {
        true => {
            ns_ovsdb::Remote::parse_list(&sb).map_err(|e| v.error(OVN, "ovn_sb_connection", e))?
        }
        false => Vec::new(),
    };
    if check {
        ns_ovsdb::Remote::parse_list(&ovs).map_err(|e| v.error(OVS, "ovsdb_connection", e))?;
    }
    let files = (
        v.path(OVN, "ovn_sb_private_key")?,
        v.path(OVN, "ovn_sb_certificate")?,
        v.path(OVN, "ovn_sb_ca_cert")?,
    );
    let sb_tls = match files {
        (Some(k), Some(c), Some(ca)) => Some((k, c, ca)),
        _ if remotes
            .iter()
            .any(|r| matches!(r, ns_ovsdb::Remote::Ssl { .. })) =>
        {
            return Err(v.error(
                OVN,
                "ovn_sb_connection",
                "ssl: needs ovn_sb_private_key, ovn_sb_certificate and ovn_sb_ca_cert",
            ))
        }
        _ => None,
    };
    let probe: u64 = v.int(OVN, "ovsdb_probe_interval")?;
    Ok(OvnOptions {
        sb_connection: sb,
        sb_tls,
        probe_interval: (probe > 0).then(|| Duration::from_millis(probe)),
        ovsdb_connection: ovs,
        agent_down_time: v.int(D, "agent_down_time")?,
    })
}

/// Flags only, as `(flag, value)` pairs (no files, no environment): tests and embedders.
pub fn from_flags<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Config, ConfigError> {
    Ok(resolve(Loader::new(&SCHEMA).flags(pairs).load()?)?.0)
}

impl Config {
    /// Defaults only, with the given socket and inventory: what tests start from.
    pub fn for_test(socket: &Path, inventory: &Path) -> Config {
        let (socket, inventory) = (
            socket.display().to_string(),
            inventory.display().to_string(),
        );
        let flags = [
            ("metadata-proxy-socket", socket.as_str()),
            ("inventory-file", inventory.as_str()),
            ("metadata-workers", "1"),
        ];
        match from_flags(flags) {
            Ok(c) => c,
            Err(e) => panic!("test config: {e}"),
        }
    }

    /// `host:port` for a URL, with brackets around an IPv6 literal.
    pub fn nova_authority(&self) -> String {
        let h = &self.nova_metadata_host;
        if h.contains(':') && !h.starts_with('[') {
            format!("[{h}]:{}", self.nova_metadata_port)
        } else {
            format!("{h}:{}", self.nova_metadata_port)
        }
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
