//! Options: defaults, INI files with Neutron's `metadata_agent.ini` names, CLI flags on top,
//! and the validation that turns any bad value into one line naming where it came from.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use ns_ini::Ini;

/// A bad option value, already formatted as `origin: key: reason` (origin is `file:line` or
/// `--flag`). `main` prints it and exits 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Which answers the agent gives once it knows the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// Forward to Nova's metadata API with the signed instance id (Neutron's behaviour).
    Nova,
    /// Answer from the inventory file, as Nova would.
    Builtin,
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
    pub backend: BackendKind,
    pub inventory_file: PathBuf,
    pub inventory_poll_interval: Duration,
    pub cache_ttl: Duration,
    pub keepalive: bool,
    pub keepalive_idle_timeout: Duration,
    pub imds_require_token: bool,
    pub dhcp_domain: String,
    pub debug: bool,
}

/// Command line. Every INI option has a flag (dashes; Neutron's underscore spelling is an
/// alias). Values are strings here and validated with the INI values, so the messages match.
#[derive(Debug, Default, Parser)]
#[command(
    name = "ns-metadata-agent",
    version,
    about = "Neutron-compatible metadata agent"
)]
pub struct Cli {
    /// INI file (repeatable; later files win). Options live in [DEFAULT].
    #[arg(long = "config-file", alias = "config_file", value_name = "PATH")]
    pub config_file: Vec<PathBuf>,
    /// Base for $state_path in metadata_proxy_socket [default: /var/lib/neutron].
    #[arg(long, alias = "state_path", value_name = "DIR")]
    pub state_path: Option<String>,
    /// Unix socket the proxies connect to [default: $state_path/metadata_proxy].
    #[arg(long, alias = "metadata_proxy_socket", value_name = "PATH")]
    pub metadata_proxy_socket: Option<String>,
    /// deduce | user (0644) | group (0664) | all (0666) [default: deduce].
    #[arg(long, alias = "metadata_proxy_socket_mode", value_name = "MODE")]
    pub metadata_proxy_socket_mode: Option<String>,
    /// User the proxies run as, for socket mode "deduce" [default: the agent's user].
    #[arg(long, alias = "metadata_proxy_user", value_name = "USER")]
    pub metadata_proxy_user: Option<String>,
    /// Group the proxies run as, for socket mode "deduce" [default: the agent's group].
    #[arg(long, alias = "metadata_proxy_group", value_name = "GROUP")]
    pub metadata_proxy_group: Option<String>,
    /// Listen backlog of the socket [default: 4096].
    #[arg(long, alias = "metadata_backlog", value_name = "N")]
    pub metadata_backlog: Option<String>,
    /// Worker threads; 0 = a single thread [default: CPUs/2, at least 1].
    #[arg(long, alias = "metadata_workers", value_name = "N")]
    pub metadata_workers: Option<String>,
    /// Key of the X-Instance-ID-Signature HMAC; must match Nova's [neutron] metadata_proxy_shared_secret [default: empty]. Prefer the INI file: argv is visible to all users.
    #[arg(long, alias = "metadata_proxy_shared_secret", value_name = "SECRET")]
    pub metadata_proxy_shared_secret: Option<String>,
    /// Nova metadata API host; setting it selects the Nova backend under "auto" [default: unset; 127.0.0.1 when the Nova backend is forced].
    #[arg(long, alias = "nova_metadata_host", value_name = "HOST")]
    pub nova_metadata_host: Option<String>,
    /// Nova metadata API port [default: 8775].
    #[arg(long, alias = "nova_metadata_port", value_name = "PORT")]
    pub nova_metadata_port: Option<String>,
    /// http or https [default: http].
    #[arg(long, alias = "nova_metadata_protocol", value_name = "http|https")]
    pub nova_metadata_protocol: Option<String>,
    /// Do not verify Nova's certificate [default: false].
    #[arg(long, alias = "nova_metadata_insecure", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub nova_metadata_insecure: Option<String>,
    /// CA bundle (PEM) to verify Nova with [default: the system bundle].
    #[arg(long, alias = "auth_ca_cert", value_name = "PATH")]
    pub auth_ca_cert: Option<String>,
    /// Client certificate (PEM) for Nova; needs nova_client_priv_key [default: none].
    #[arg(long, alias = "nova_client_cert", value_name = "PATH")]
    pub nova_client_cert: Option<String>,
    /// Private key (PEM) of nova_client_cert [default: none].
    #[arg(long, alias = "nova_client_priv_key", value_name = "PATH")]
    pub nova_client_priv_key: Option<String>,
    /// Seconds to wait for Nova's answer; then 504 [default: 60].
    #[arg(long, alias = "nova_metadata_timeout", value_name = "SECONDS")]
    pub nova_metadata_timeout: Option<String>,
    /// auto | nova | builtin [default: auto = nova if nova_metadata_host is set, else builtin].
    #[arg(long, alias = "metadata_backend", value_name = "KIND")]
    pub metadata_backend: Option<String>,
    /// Inventory JSON (ports, networks, instances) [default: /etc/ns-metadata/inventory.json].
    #[arg(long, alias = "inventory_file", value_name = "PATH")]
    pub inventory_file: Option<String>,
    /// Seconds between checks of the inventory file; 0 = reload on SIGHUP only [default: 2].
    #[arg(long, alias = "inventory_poll_interval", value_name = "SECONDS")]
    pub inventory_poll_interval: Option<String>,
    /// Seconds a lookup answer is cached; 0 = no cache. Reloads invalidate it [default: 5].
    #[arg(long, alias = "cache_ttl", value_name = "SECONDS")]
    pub cache_ttl: Option<String>,
    /// Keep proxy connections open and send X-NS-Metadata-Keepalive [default: true].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub keepalive: Option<String>,
    /// Seconds an idle proxy connection is kept open [default: 60].
    #[arg(long, alias = "keepalive_idle_timeout", value_name = "SECONDS")]
    pub keepalive_idle_timeout: Option<String>,
    /// Built-in responder: EC2 paths need an IMDSv2 token [default: false].
    #[arg(long, alias = "imds_require_token", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub imds_require_token: Option<String>,
    /// Built-in responder: domain appended to hostnames, as Nova's [api] dhcp_domain; empty = none [default: novalocal].
    #[arg(long, alias = "dhcp_domain", value_name = "DOMAIN")]
    pub dhcp_domain: Option<String>,
    /// Log at debug level [default: false].
    #[arg(long, short = 'd', value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub debug: Option<String>,
}

/// Keys this program reads from `[DEFAULT]`.
pub const KNOWN_KEYS: &[&str] = &[
    "state_path",
    "metadata_proxy_socket",
    "metadata_proxy_socket_mode",
    "metadata_proxy_user",
    "metadata_proxy_group",
    "metadata_backlog",
    "metadata_workers",
    "metadata_proxy_shared_secret",
    "nova_metadata_host",
    "nova_metadata_ip",
    "nova_metadata_port",
    "nova_metadata_protocol",
    "nova_metadata_insecure",
    "auth_ca_cert",
    "nova_client_cert",
    "nova_client_priv_key",
    "nova_metadata_timeout",
    "metadata_backend",
    "inventory_file",
    "inventory_poll_interval",
    "cache_ttl",
    "keepalive",
    "keepalive_idle_timeout",
    "imds_require_token",
    "dhcp_domain",
    "debug",
];

/// Default inventory path.
pub const DEFAULT_INVENTORY: &str = "/etc/ns-metadata/inventory.json";

/// One raw value and where it came from.
struct Raw {
    value: String,
    origin: String,
}

struct Sources<'a> {
    ini: &'a Ini,
}

impl Sources<'_> {
    fn get(&self, cli: &Option<String>, key: &str) -> Option<Raw> {
        if let Some(v) = cli {
            return Some(Raw {
                value: v.clone(),
                origin: format!("--{}", key.replace('_', "-")),
            });
        }
        self.ini.get("DEFAULT", key).map(|e| Raw {
            value: e.value.trim().to_owned(),
            origin: format!("{}:{}: [DEFAULT]", e.path.display(), e.line),
        })
    }
}

impl Raw {
    fn err(&self, key: &str, reason: impl std::fmt::Display) -> ConfigError {
        if self.origin.starts_with("--") {
            ConfigError(format!("{}: {reason}", self.origin))
        } else {
            ConfigError(format!("{} {key}: {reason}", self.origin))
        }
    }
    fn bool(&self, key: &str) -> Result<bool, ConfigError> {
        ns_ini::parse_bool(&self.value).ok_or_else(|| {
            self.err(
                key,
                format!(
                    "invalid boolean {:?}: expected true/false, yes/no, on/off or 1/0",
                    self.value
                ),
            )
        })
    }
    fn int<T: std::str::FromStr>(&self, key: &str, min: i64, max: i64) -> Result<T, ConfigError> {
        let n: i64 = self
            .value
            .parse()
            .map_err(|_| self.err(key, format!("invalid integer {:?}", self.value)))?;
        if n < min || n > max {
            return Err(self.err(key, format!("{n} is out of range {min}..={max}")));
        }
        self.value
            .parse()
            .map_err(|_| self.err(key, format!("invalid integer {:?}", self.value)))
    }
    fn seconds(&self, key: &str, min: i64) -> Result<Duration, ConfigError> {
        Ok(Duration::from_secs(self.int::<u64>(
            key,
            min,
            86_400 * 365,
        )?))
    }
    fn choice<T: Copy>(&self, key: &str, choices: &[(&str, T)]) -> Result<T, ConfigError> {
        let v = self.value.to_ascii_lowercase();
        choices
            .iter()
            .find(|(n, _)| *n == v)
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
                self.err(
                    key,
                    format!(
                        "invalid value {:?}: expected one of {}",
                        self.value,
                        names.join(", ")
                    ),
                )
            })
    }
    fn path(&self, key: &str) -> Result<Option<PathBuf>, ConfigError> {
        if self.value.is_empty() {
            return Ok(None);
        }
        let p = PathBuf::from(&self.value);
        if p.is_relative() {
            return Err(self.err(key, format!("{:?} must be an absolute path", self.value)));
        }
        Ok(Some(p))
    }
}

/// Load the INI files named on the command line; unknown `[DEFAULT]` keys are returned as
/// warnings (oslo.config ignores them too, but a typo deserves a word).
pub fn load(cli: &Cli) -> Result<(Config, Vec<String>), ConfigError> {
    let ini = Ini::load(&cli.config_file).map_err(|e| ConfigError(e.to_string()))?;
    let warnings = ini
        .unknown_keys(&[("DEFAULT", KNOWN_KEYS)])
        .into_iter()
        .map(|e| {
            format!(
                "{}:{}: [DEFAULT] {}: unknown option, ignored",
                e.path.display(),
                e.line,
                e.key
            )
        })
        .collect();
    Ok((resolve(cli, &ini)?, warnings))
}

/// Merge defaults, INI values and CLI flags (in that order of precedence, lowest first).
pub fn resolve(cli: &Cli, ini: &Ini) -> Result<Config, ConfigError> {
    let s = Sources { ini };
    let text = |cli: &Option<String>, key: &str, default: &str| -> String {
        s.get(cli, key)
            .map(|r| r.value)
            .unwrap_or_else(|| default.to_owned())
    };

    let state_path = text(&cli.state_path, "state_path", "/var/lib/neutron");
    let socket = s
        .get(&cli.metadata_proxy_socket, "metadata_proxy_socket")
        .map(|r| {
            (
                ns_ini::interpolate(&r.value, "state_path", &state_path),
                Some(r),
            )
        })
        .unwrap_or_else(|| (format!("{state_path}/metadata_proxy"), None));
    let metadata_proxy_socket = PathBuf::from(&socket.0);
    if metadata_proxy_socket.is_relative() || socket.0.len() > 107 {
        let reason = format!(
            "{:?} must be an absolute path of at most 107 bytes",
            socket.0
        );
        return Err(match socket.1 {
            Some(r) => r.err("metadata_proxy_socket", reason),
            None => ConfigError(format!("state_path: {reason}")),
        });
    }

    let opt = |cli: &Option<String>, key: &str| s.get(cli, key);
    let socket_mode = match opt(
        &cli.metadata_proxy_socket_mode,
        "metadata_proxy_socket_mode",
    ) {
        Some(r) => r.choice(
            "metadata_proxy_socket_mode",
            &[
                ("deduce", SocketMode::Deduce),
                ("user", SocketMode::User),
                ("group", SocketMode::Group),
                ("all", SocketMode::All),
            ],
        )?,
        None => SocketMode::Deduce,
    };
    let int_or =
        |cli: &Option<String>, key: &str, min: i64, max: i64, d: i64| -> Result<i64, ConfigError> {
            opt(cli, key)
                .map(|r| r.int::<i64>(key, min, max))
                .transpose()
                .map(|v| v.unwrap_or(d))
        };
    let secs_or =
        |cli: &Option<String>, key: &str, min: i64, d: u64| -> Result<Duration, ConfigError> {
            opt(cli, key)
                .map(|r| r.seconds(key, min))
                .transpose()
                .map(|v| v.unwrap_or(Duration::from_secs(d)))
        };
    let bool_or = |cli: &Option<String>, key: &str, d: bool| -> Result<bool, ConfigError> {
        opt(cli, key)
            .map(|r| r.bool(key))
            .transpose()
            .map(|v| v.unwrap_or(d))
    };
    let path_opt = |cli: &Option<String>, key: &str| -> Result<Option<PathBuf>, ConfigError> {
        opt(cli, key)
            .map(|r| r.path(key))
            .transpose()
            .map(Option::flatten)
    };

    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let workers_default = (cpus / 2).max(1) as i64;

    // `nova_metadata_ip` is the pre-Queens name; the new one wins when both are given.
    let nova_host_raw = opt(&cli.nova_metadata_host, "nova_metadata_host")
        .or_else(|| s.get(&None, "nova_metadata_ip"))
        .filter(|r| !r.value.is_empty());
    if let Some(r) = &nova_host_raw {
        let h = r.value.trim_start_matches('[').trim_end_matches(']');
        if h.contains(['/', ' ', '?', '#', '@']) {
            return Err(r.err("nova_metadata_host", format!("invalid host {:?}", r.value)));
        }
    }
    let backend = match opt(&cli.metadata_backend, "metadata_backend") {
        Some(r) => {
            let choice = r.choice(
                "metadata_backend",
                &[
                    ("auto", None),
                    ("nova", Some(BackendKind::Nova)),
                    ("builtin", Some(BackendKind::Builtin)),
                ],
            )?;
            choice.unwrap_or(if nova_host_raw.is_some() {
                BackendKind::Nova
            } else {
                BackendKind::Builtin
            })
        }
        None if nova_host_raw.is_some() => BackendKind::Nova,
        None => BackendKind::Builtin,
    };
    let protocol = match opt(&cli.nova_metadata_protocol, "nova_metadata_protocol") {
        Some(r) => r.choice(
            "nova_metadata_protocol",
            &[("http", "http"), ("https", "https")],
        )?,
        None => "http",
    };
    let inventory_file = path_opt(&cli.inventory_file, "inventory_file")?
        .unwrap_or_else(|| PathBuf::from(DEFAULT_INVENTORY));

    let cfg = Config {
        metadata_proxy_socket,
        metadata_proxy_socket_mode: socket_mode,
        metadata_proxy_user: text(&cli.metadata_proxy_user, "metadata_proxy_user", ""),
        metadata_proxy_group: text(&cli.metadata_proxy_group, "metadata_proxy_group", ""),
        metadata_backlog: int_or(&cli.metadata_backlog, "metadata_backlog", 1, 65_535, 4096)?
            as u32,
        metadata_workers: int_or(
            &cli.metadata_workers,
            "metadata_workers",
            0,
            1024,
            workers_default,
        )? as usize,
        metadata_proxy_shared_secret: text(
            &cli.metadata_proxy_shared_secret,
            "metadata_proxy_shared_secret",
            "",
        ),
        nova_metadata_host: nova_host_raw
            .map(|r| r.value)
            .unwrap_or_else(|| "127.0.0.1".to_owned()),
        nova_metadata_port: int_or(
            &cli.nova_metadata_port,
            "nova_metadata_port",
            1,
            65_535,
            8775,
        )? as u16,
        nova_metadata_protocol: protocol.to_owned(),
        nova_metadata_insecure: bool_or(
            &cli.nova_metadata_insecure,
            "nova_metadata_insecure",
            false,
        )?,
        auth_ca_cert: path_opt(&cli.auth_ca_cert, "auth_ca_cert")?,
        nova_client_cert: path_opt(&cli.nova_client_cert, "nova_client_cert")?,
        nova_client_priv_key: path_opt(&cli.nova_client_priv_key, "nova_client_priv_key")?,
        nova_metadata_timeout: secs_or(&cli.nova_metadata_timeout, "nova_metadata_timeout", 1, 60)?,
        backend,
        inventory_file,
        inventory_poll_interval: secs_or(
            &cli.inventory_poll_interval,
            "inventory_poll_interval",
            0,
            2,
        )?,
        cache_ttl: secs_or(&cli.cache_ttl, "cache_ttl", 0, 5)?,
        keepalive: bool_or(&cli.keepalive, "keepalive", true)?,
        keepalive_idle_timeout: secs_or(
            &cli.keepalive_idle_timeout,
            "keepalive_idle_timeout",
            1,
            60,
        )?,
        imds_require_token: bool_or(&cli.imds_require_token, "imds_require_token", false)?,
        dhcp_domain: text(&cli.dhcp_domain, "dhcp_domain", "novalocal"),
        debug: bool_or(&cli.debug, "debug", false)?,
    };
    Ok(cfg)
}

impl Config {
    /// Defaults only, with the given socket and inventory: what tests start from.
    pub fn for_test(socket: &Path, inventory: &Path) -> Config {
        let cli = Cli {
            metadata_proxy_socket: Some(socket.display().to_string()),
            inventory_file: Some(inventory.display().to_string()),
            metadata_workers: Some("1".into()),
            ..Cli::default()
        };
        match resolve(&cli, &Ini::default()) {
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
mod tests {
    use super::*;

    fn ini(text: &str) -> Ini {
        Ini::parse_str(text, Path::new("/etc/neutron/metadata_agent.ini")).expect("parses")
    }

    #[test]
    fn defaults_follow_neutron() {
        let c = resolve(&Cli::default(), &Ini::default()).expect("defaults are valid");
        assert_eq!(
            c.metadata_proxy_socket,
            PathBuf::from("/var/lib/neutron/metadata_proxy")
        );
        assert_eq!(c.metadata_backlog, 4096);
        assert_eq!(c.nova_metadata_port, 8775);
        assert_eq!(c.nova_metadata_protocol, "http");
        assert_eq!(c.backend, BackendKind::Builtin);
        assert!(c.keepalive);
        assert_eq!(c.nova_metadata_timeout, Duration::from_secs(60));
    }

    #[test]
    fn nova_host_selects_nova_unless_told_otherwise() {
        let c = resolve(
            &Cli::default(),
            &ini("[DEFAULT]\nnova_metadata_host = 10.0.0.5\n"),
        )
        .expect("valid");
        assert_eq!(c.backend, BackendKind::Nova);
        assert_eq!(c.nova_authority(), "10.0.0.5:8775");
        let c = resolve(
            &Cli::default(),
            &ini("[DEFAULT]\nnova_metadata_host = fd00::5\nmetadata_backend = builtin\n"),
        )
        .expect("valid");
        assert_eq!(c.backend, BackendKind::Builtin);
        assert_eq!(c.nova_authority(), "[fd00::5]:8775");
        let c = resolve(
            &Cli::default(),
            &ini("[DEFAULT]\nnova_metadata_ip = 10.1.1.1\n"),
        )
        .expect("valid");
        assert_eq!(
            (c.backend, c.nova_metadata_host.as_str()),
            (BackendKind::Nova, "10.1.1.1")
        );
    }

    #[test]
    fn cli_beats_ini_and_state_path_expands() {
        let cli = Cli {
            nova_metadata_port: Some("9000".into()),
            state_path: Some("/run/x".into()),
            ..Cli::default()
        };
        let c = resolve(&cli, &ini("[DEFAULT]\nnova_metadata_port = 8000\n")).expect("valid");
        assert_eq!(c.nova_metadata_port, 9000);
        assert_eq!(
            c.metadata_proxy_socket,
            PathBuf::from("/run/x/metadata_proxy")
        );
        let c = resolve(
            &Cli::default(),
            &ini("[DEFAULT]\nstate_path = /s\nmetadata_proxy_socket = $state_path/m\n"),
        )
        .expect("valid");
        assert_eq!(c.metadata_proxy_socket, PathBuf::from("/s/m"));
        // oslo.config's braced form, as the spawner and proxy read it too.
        let c = resolve(
            &Cli::default(),
            &ini("[DEFAULT]\nstate_path = /s\nmetadata_proxy_socket = ${state_path}/m\n"),
        )
        .expect("valid");
        assert_eq!(c.metadata_proxy_socket, PathBuf::from("/s/m"));
    }

    #[test]
    fn bad_values_name_file_line_and_key() {
        let cases = [
            (
                "nova_metadata_port = 0\n",
                "nova_metadata_port: 0 is out of range",
            ),
            (
                "nova_metadata_port = x\n",
                "nova_metadata_port: invalid integer",
            ),
            (
                "nova_metadata_protocol = ftp\n",
                "nova_metadata_protocol: invalid value \"ftp\"",
            ),
            ("keepalive = perhaps\n", "keepalive: invalid boolean"),
            (
                "metadata_proxy_socket_mode = world\n",
                "metadata_proxy_socket_mode: invalid value",
            ),
            (
                "auth_ca_cert = ca.pem\n",
                "auth_ca_cert: \"ca.pem\" must be an absolute path",
            ),
            (
                "metadata_backend = magic\n",
                "metadata_backend: invalid value",
            ),
            (
                "metadata_proxy_socket = rel/sock\n",
                "metadata_proxy_socket: \"rel/sock\" must be an absolute",
            ),
        ];
        for (line, want) in cases {
            let err = resolve(&Cli::default(), &ini(&format!("[DEFAULT]\n\n{line}")))
                .expect_err(line)
                .to_string();
            assert!(
                err.starts_with("/etc/neutron/metadata_agent.ini:3: [DEFAULT] "),
                "{err}"
            );
            assert!(err.contains(want), "{err} should contain {want}");
        }
        let cli = Cli {
            cache_ttl: Some("-1".into()),
            ..Cli::default()
        };
        let err = resolve(&cli, &Ini::default())
            .expect_err("negative")
            .to_string();
        assert!(err.starts_with("--cache-ttl: -1 is out of range"), "{err}");
    }

    #[test]
    fn unknown_keys_warn_with_place() {
        let dir = std::env::temp_dir().join(format!("ns-agent-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let f = dir.join("a.ini");
        std::fs::write(
            &f,
            "[DEFAULT]\nnova_metadata_hots = x\n[cache]\nenabled = true\n",
        )
        .expect("write");
        let cli = Cli {
            config_file: vec![f.clone()],
            ..Cli::default()
        };
        let (_, warnings) = load(&cli).expect("loads");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("a.ini:2: [DEFAULT] nova_metadata_hots: unknown option"));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
