//! Options every binary shares, as `ns_ini` table entries, and their readers: `state_path` and
//! `metadata_proxy_socket` (Neutron's names and defaults), `[metadata_haproxy]` timeouts and
//! `[metadata_rate_limiting]`. A binary lists [`SOCKET`], [`HAPROXY`] and [`RATE_LIMITING`]
//! in its schema with `Schema::shared`, and reads them with the functions here, so the spawner
//! and a standalone proxy read the same files the same way.

use std::path::PathBuf;

use ns_ini::{ConfigError, ConfigResult, Kind, Opt, Values, DEFAULT_GROUP as D};

use crate::limits::{
    Rate, RateLimit, Timeouts, Versions, HAPROXY_GROUP, MAX_SECONDS, RATE_GROUP, RATE_KEYS,
    TIMEOUT_KEYS,
};
use crate::socket::{check_socket_path, DEFAULT_SOCKET_TEMPLATE, DEFAULT_STATE_PATH};

const SECONDS: Kind = Kind::Int {
    min: 1,
    max: MAX_SECONDS as i64,
};
const COUNT: Kind = Kind::Int {
    min: 1,
    max: u32::MAX as i64,
};

/// oslo.log's `[DEFAULT] log_file` and `log_dir` (old names `logfile`, `logdir`), as
/// Neutron's launchers pass them (`--log-file`, `--log-dir`). Read with [`log_file`].
pub static LOGGING: &[Opt] = &[
    Opt::new(
        D,
        "log_file",
        Kind::Str,
        "Write logs to this file (appending, reopened on SIGHUP) instead of stderr",
    )
    .value_name("PATH")
    .aliases(&["logfile"])
    .deprecated(&[(D, "logfile")]),
    Opt::new(
        D,
        "log_dir",
        Kind::Path,
        "Directory for the log file: a relative --log-file goes there, and without --log-file \
         the file is DIR/<name>.log (the proxy: neutron-ns-metadata-proxy-<id>.log, Neutron's \
         name; the agent: ns-metadata-agent.log)",
    )
    .value_name("DIR")
    .aliases(&["logdir"])
    .deprecated(&[(D, "logdir")]),
];

/// The log file as oslo.log finds it: `log_file`, relative ones inside `log_dir`;
/// `log_dir/<default_name>` when only `log_dir` is set; `None` for stderr.
pub fn log_file(v: &Values, default_name: &str) -> ConfigResult<Option<PathBuf>> {
    let log_dir = v.path(D, "log_dir")?;
    Ok(
        match (v.opt_str(D, "log_file")?.map(PathBuf::from), log_dir) {
            (Some(f), Some(d)) if f.is_relative() => Some(d.join(f)),
            (None, Some(d)) => Some(d.join(default_name)),
            (f, _) => f,
        },
    )
}

/// An optional `ADDRESS:PORT` value (`metrics_bind`): `None` when empty; an error naming the
/// key and the expected form (with `example`) otherwise.
pub fn socket_addr(
    v: &Values,
    group: &str,
    key: &str,
    example: &str,
) -> ConfigResult<Option<std::net::SocketAddr>> {
    v.opt_str(group, key)?
        .map(|a| {
            a.parse().map_err(|e| {
                v.error(
                    group,
                    key,
                    format!("{a:?} is not ADDRESS:PORT ({e}); e.g. {example}"),
                )
            })
        })
        .transpose()
}

/// `[DEFAULT] state_path` and `metadata_proxy_socket`, with Neutron's defaults.
pub static SOCKET: &[Opt] = &[
    Opt::new(
        D,
        "state_path",
        Kind::Path,
        "Neutron's state directory; $state_path in other values",
    )
    .default(DEFAULT_STATE_PATH),
    Opt::new(
        D,
        "metadata_proxy_socket",
        Kind::Path,
        "The metadata agent's Unix socket",
    )
    .default(DEFAULT_SOCKET_TEMPLATE),
];

const fn timeout(i: usize, default: &'static str) -> Opt {
    let k = TIMEOUT_KEYS[i];
    Opt::new(HAPROXY_GROUP, k.key, SECONDS, k.help)
        .long(k.flag)
        .value_name("SECONDS")
        .default(default)
}

/// `[metadata_haproxy]` (LP#2154609), flags `--timeout-request` ... `--timeout-keepalive`.
pub static HAPROXY: &[Opt] = &[
    timeout(0, "30"),
    timeout(1, "30"),
    timeout(2, "32"),
    timeout(3, "32"),
    timeout(4, "30"),
];

const fn rate(i: usize, kind: Kind, help: &'static str) -> Opt {
    Opt::new(RATE_GROUP, RATE_KEYS[i].0, kind, help)
        .default("10")
        .no_flag()
}

/// `[metadata_rate_limiting]` (LP#1989199). File-only, as in Neutron; the proxy's own
/// `--rate-limit-*` flags set the same limits on its command line.
pub static RATE_LIMITING: &[Opt] = &[
    Opt::new(
        RATE_GROUP,
        "rate_limit_enabled",
        Kind::Bool,
        "Limit requests per source address (429 beyond)",
    )
    .default("false")
    .no_flag(),
    Opt::new(
        RATE_GROUP,
        "ip_versions",
        Kind::List,
        "IP versions limited: 4, 6 or both (Neutron: one only; default here: both)",
    )
    .default("4,6")
    .no_flag(),
    rate(0, COUNT, "Requests allowed per base window"),
    rate(1, SECONDS, "Base window, seconds"),
    rate(2, COUNT, "Requests allowed per burst window"),
    rate(3, SECONDS, "Burst window, seconds"),
];

/// The agent socket: `metadata_proxy_socket` after `$state_path` substitution, absolute and
/// short enough for a Unix socket address; an error names where the value came from.
pub fn agent_socket(v: &Values) -> ConfigResult<PathBuf> {
    let key = "metadata_proxy_socket";
    let path = v
        .path(D, key)?
        .ok_or_else(|| v.error(D, key, "must not be empty"))?;
    check_socket_path(&path).map_err(|r| v.error(D, key, r))?;
    Ok(path)
}

/// The `[metadata_haproxy]` timeouts.
pub fn timeouts(v: &Values) -> ConfigResult<Timeouts> {
    let mut secs = [0u64; 5];
    for (s, k) in secs.iter_mut().zip(TIMEOUT_KEYS) {
        *s = v.int(HAPROXY_GROUP, k.key)?;
    }
    Timeouts::from_secs(secs).map_err(ConfigError::Schema)
}

/// `[metadata_rate_limiting]`: `None` unless `rate_limit_enabled`.
pub fn rate_limit(v: &Values) -> ConfigResult<Option<RateLimit>> {
    if !v.bool(RATE_GROUP, "rate_limit_enabled")? {
        return Ok(None);
    }
    let n = |i: usize| v.int::<u64>(RATE_GROUP, RATE_KEYS[i].0);
    let rate = |count: usize, window: usize| -> ConfigResult<Rate> {
        Rate::new(n(count)?, n(window)?).map_err(|r| v.error(RATE_GROUP, RATE_KEYS[count].0, r))
    };
    let versions = Versions::from_items(&v.list(RATE_GROUP, "ip_versions")?)
        .map_err(|r| v.error(RATE_GROUP, "ip_versions", r))?;
    Ok(Some(RateLimit {
        base: rate(0, 1)?,
        burst: rate(2, 3)?,
        versions,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ns_ini::{Ini, Loader, Schema};
    use std::path::Path;

    static SCHEMA: Schema = Schema::new(&[]).shared(&[SOCKET, HAPROXY, RATE_LIMITING]);

    fn load(text: &str) -> ConfigResult<Values> {
        let ini = Ini::parse_str(text, Path::new("x.ini"))?;
        Ok(Loader::new(&SCHEMA)
            .ini(ini)
            .env(Vec::<(String, String)>::new())
            .load()?
            .values)
    }

    #[test]
    fn table_is_sound_and_defaults_are_neutrons() {
        SCHEMA.check().expect("table");
        let v = load("").expect("defaults");
        assert_eq!(timeouts(&v).expect("t"), Timeouts::default());
        assert_eq!(rate_limit(&v).expect("r"), None);
        assert_eq!(
            agent_socket(&v).expect("s"),
            Path::new(crate::socket::DEFAULT_SOCKET)
        );
        for (o, k) in HAPROXY.iter().zip(TIMEOUT_KEYS) {
            match o.default {
                ns_ini::DefaultValue::Text(t) => assert_eq!(t, k.default.to_string()),
                _ => panic!("{} has no text default", k.key),
            }
        }
    }

    #[test]
    fn values_and_blame() {
        let v = load(
            "[DEFAULT]\nstate_path = /srv/n\n[metadata_haproxy]\ntimeout_server = 90\n\
             [metadata_rate_limiting]\nrate_limit_enabled = true\nip_versions = 6\n\
             base_query_rate_limit = 5\nburst_window_duration = 2\n",
        )
        .expect("valid");
        assert_eq!(
            agent_socket(&v).expect("s"),
            Path::new("/srv/n/metadata_proxy")
        );
        assert_eq!(timeouts(&v).expect("t").args(), ["--timeout-server", "90"]);
        let r = rate_limit(&v).expect("r").expect("enabled");
        assert_eq!(r.base.to_string(), "5/10");
        assert_eq!(r.burst.to_string(), "10/2");
        assert_eq!(r.versions.to_string(), "6");

        let e = load("[metadata_haproxy]\ntimeout_client = 0\n").expect_err("0 s");
        assert!(
            e.to_string()
                .starts_with("x.ini:2: [metadata_haproxy] timeout_client"),
            "{e}"
        );
        let v = load("[metadata_rate_limiting]\nrate_limit_enabled = 1\nip_versions = 5\n")
            .expect("loads");
        let e = rate_limit(&v).expect_err("5");
        assert!(
            e.to_string()
                .starts_with("x.ini:3: [metadata_rate_limiting] ip_versions"),
            "{e}"
        );
        let long = "a".repeat(120);
        let v2 = load(&format!("[DEFAULT]\nstate_path = /{long}\n")).expect("loads");
        let e = agent_socket(&v2).expect_err("too long");
        assert!(e.to_string().contains("at most 107"), "{e}");
        assert!(e.to_string().starts_with("metadata_proxy_socket"), "{e}");
    }
}
