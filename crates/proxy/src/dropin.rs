//! The haproxy drop-in: started as `haproxy` (or as `ns-metadata-proxy -f FILE`), decide
//! whether the command is Neutron's metadata proxy, `haproxy -f <Neutron's config>`, and
//! serve it, or hand the unchanged argv to the real haproxy with `exec`.
//!
//! The rule: exactly `-f FILE`, and a FILE whose sections and keywords are all in Neutron's
//! grammar ([`crate::haproxy`]), is ours; a bad value in it is an error (exit 1, one line
//! `file:line: keyword: reason`), never passed on. Anything else (another flag, keyword or
//! section) runs the real haproxy, `/usr/sbin/haproxy` unless [`DROPIN_CONF`] says otherwise.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};

use ns_contract::limits::{Rate, RateLimit, Timeouts, Versions};
use ns_contract::KeepaliveMode;

use crate::config::{Config, DEFAULT_RETRIES};
use crate::haproxy::{self, HaproxyConfig, Parse};

/// Our one configuration file for the drop-in (`[haproxy] real_haproxy = PATH`). Fixed: sudo
/// and rootwrap strip the environment and Neutron passes no options.
pub const DROPIN_CONF: &str = "/etc/ns-metadata/haproxy-dropin.ini";
/// The real haproxy, as Debian and Red Hat install it.
pub const REAL_HAPROXY: &str = "/usr/sbin/haproxy";
/// The daemon child gets its readiness pipe here (its argv stays exactly `haproxy -f FILE`).
pub const READY_FD_ENV: &str = "NS_METADATA_PROXY_READY_FD";
/// The tag of the one line saying which way a command went, when it goes to syslog.
pub const LOG_TAG: &str = "ns-metadata-proxy";

/// What to do with a command line.
#[derive(Debug)]
pub enum Route {
    /// Neutron's metadata proxy: serve this configuration.
    Serve(Box<Config>, PathBuf),
    /// Not ours: exec the real haproxy; why, for the log line.
    Exec(String),
    /// Ours, but a bad value (or unreadable drop-in settings): exit 1 with this line.
    Fail(String),
}

/// Whether `argv` asks for the drop-in: run as `haproxy`, or given `-f`.
pub fn is_dropin(argv: &[OsString]) -> bool {
    let name = argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n == "haproxy");
    name || argv.iter().skip(1).any(|a| a == "-f")
}

/// Decide for a drop-in command line (see the module doc).
pub fn route(argv: &[OsString]) -> Route {
    let file = match argv {
        [_, f, file] if f == "-f" => PathBuf::from(file),
        _ => {
            let flags: Vec<_> = argv.iter().skip(1).map(|a| a.to_string_lossy()).collect();
            return Route::Exec(format!("arguments `{}` are not `-f FILE`", flags.join(" ")));
        }
    };
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) => return Route::Exec(format!("{}: {e}", file.display())),
    };
    match haproxy::parse(&text, &file) {
        Ok(h) => match to_config(&h).and_then(|c| check_creds(&h, &file).map(|()| c)) {
            Ok(cfg) => Route::Serve(Box::new(cfg), file),
            Err(e) => Route::Fail(e),
        },
        Err(Parse::Foreign { line: 0, what }) => Route::Exec(what),
        Err(f @ Parse::Foreign { .. }) => Route::Exec(format!("{}: {f}", file.display())),
        Err(bad @ Parse::Bad { .. }) => Route::Fail(bad.to_string()),
    }
}

/// `user` and `group` name an existing user and group, as haproxy checks when it parses
/// (`file:line: user: no such user`).
fn check_creds(h: &HaproxyConfig, file: &Path) -> Result<(), String> {
    for (kw, v) in [("user", &h.user), ("group", &h.group)] {
        if let Some((name, line)) = v {
            let (u, g) = match kw {
                "user" => (Some(name.as_str()), None),
                _ => (None, Some(name.as_str())),
            };
            if let Err(e) = crate::process::Creds::resolve(u, g) {
                return Err(format!("{}:{line}: {kw}: {e}", file.display()));
            }
        }
    }
    Ok(())
}

/// The proxy's configuration from a parsed haproxy one, each keyword with haproxy's effect.
pub fn to_config(h: &HaproxyConfig) -> Result<Config, String> {
    let t = h.timeouts;
    let def = Timeouts::default();
    // haproxy: http-keep-alive falls back to http-request, which falls back to client.
    let client = t.client.unwrap_or(def.client);
    let request = t.http_request.or(t.client).unwrap_or(def.request);
    let timeouts = Timeouts {
        request,
        connect: t.connect.unwrap_or(def.connect),
        client,
        server: t.server.unwrap_or(def.server),
        keepalive: t
            .http_keep_alive
            .or(t.http_request)
            .or(t.client)
            .unwrap_or(def.keepalive),
    };
    let mut rate_table = None;
    let rate_limit = match h.denies.as_slice() {
        [] => None,
        denies => {
            let rate = |(name, limit): &(String, u32)| {
                let t = h.tables.iter().find(|t| &t.name == name);
                t.map(|t| Rate {
                    limit: *limit,
                    window: t.period,
                })
            };
            let rates: Vec<Rate> = denies.iter().filter_map(rate).collect();
            let (base, burst) = match rates.as_slice() {
                [a] => (*a, *a),
                [a, b, ..] => (*a, *b),
                [] => return Err("rate limit without a table".into()),
            };
            let ipv6 = h.tables.iter().any(|t| t.ipv6);
            let size = h
                .tables
                .iter()
                .map(|t| t.size)
                .min()
                .unwrap_or(crate::ratelimit::TABLE_SIZE);
            let expire = h.tables.iter().map(|t| t.expire).max().unwrap_or_default();
            rate_table = Some((size, expire));
            Some(RateLimit {
                base,
                burst,
                // `type ip` tracks IPv4 (and v4-mapped) sources only; `type ipv6` tracks every
                // source, IPv4 as v4-mapped (observed with haproxy 2.6).
                versions: Versions { v4: true, v6: ipv6 },
            })
        }
    };
    let (syslog_facility, log_level) = match &h.log {
        Some(l) => (Some(l.facility), Some(level(l.level))),
        None => (None, None),
    };
    Ok(Config {
        resource: Some(h.resource.clone()),
        shared_server: None,
        socket: h.server.clone(),
        binds: h.binds.clone(),
        netns: None,
        pid_file: h.pidfile.clone(),
        daemonize: h.daemon,
        user: h.user.as_ref().map(|(u, _)| u.clone()),
        group: h.group.as_ref().map(|(g, _)| g.clone()),
        timeouts,
        max_connections: h.maxconn.unwrap_or(crate::config::DEFAULT_MAXCONN),
        // Neutron's `server` line has no `maxconn`: haproxy queues nothing, nor do we.
        max_agent_requests: 0,
        // haproxy starts one thread per CPU unless told `nbthread`; ours serve on one (see
        // crate::workers for why), more only when `nbthread` asks, and then only under load.
        threads: h
            .nbthread
            .map_or(1, |n| n as usize)
            .clamp(1, crate::workers::MAX_THREADS),
        rate_limit,
        // `option http-server-close`: one request per agent connection (Neutron's agent
        // needs that); without it haproxy keeps server connections, as `auto` may.
        agent_keepalive: if h.http_server_close {
            KeepaliveMode::Off
        } else {
            KeepaliveMode::Auto
        },
        ready_fds: ready_fd_from_env(),
        stats_fd: None,
        heartbeat_fd: None,
        log_file: None,
        syslog_facility,
        syslog_socket: h.log.as_ref().map_or_else(
            || PathBuf::from(crate::syslog::DEV_LOG),
            |l| l.socket.clone(),
        ),
        syslog_tag: h.log_tag.clone(),
        debug: log_level == Some(tracing::Level::DEBUG),
        log_level,
        connect_retries: h.retries.unwrap_or(DEFAULT_RETRIES),
        rate_table,
        warnings: Vec::new(),
    })
}

/// haproxy's level names onto the log levels this proxy has.
fn level(name: &str) -> tracing::Level {
    match name {
        "debug" => tracing::Level::DEBUG,
        "info" | "notice" => tracing::Level::INFO,
        "warning" => tracing::Level::WARN,
        _ => tracing::Level::ERROR,
    }
}

/// In the daemon child (only there): the readiness pipe its parent made.
fn ready_fd_from_env() -> Vec<i32> {
    if std::env::var_os(crate::process::DAEMON_ENV).is_none() {
        return Vec::new();
    }
    std::env::var(READY_FD_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .into_iter()
        .collect()
}

/// The real haproxy's path: [`REAL_HAPROXY`], or `[haproxy] real_haproxy` in `conf` when
/// that file exists. The file decides what root executes, so it must be a regular file owned
/// by root that nobody else may write.
pub fn real_haproxy(conf: &Path) -> Result<PathBuf, String> {
    let meta = match std::fs::metadata(conf) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(REAL_HAPROXY.into()),
        Err(e) => return Err(format!("{}: {e}", conf.display())),
    };
    if !meta.is_file() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{}: must be a regular file owned by root and writable only by root; not used",
            conf.display()
        ));
    }
    let ini = ns_ini::Ini::load(&[conf]).map_err(|e| e.to_string())?;
    match ini.get("haproxy", "real_haproxy") {
        None => Ok(REAL_HAPROXY.into()),
        Some(e) => {
            let p = PathBuf::from(e.value.trim());
            if p.is_relative() {
                return Err(e.error("must be an absolute path").to_string());
            }
            Ok(p)
        }
    }
}

/// Refuse a "real" haproxy that is this very binary (installed as /usr/sbin/haproxy, or a
/// link to it): exec would loop.
pub fn check_not_self(real: &Path, me: &Path) -> Result<(), String> {
    let id = |p: &Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino()));
    match (id(real), id(me)) {
        (Ok(a), Ok(b)) if a == b => Err(format!(
            "{} is this drop-in itself; install the real haproxy there or set \
             `[haproxy] real_haproxy` in {DROPIN_CONF}",
            real.display()
        )),
        (Err(e), _) => Err(format!("real haproxy {}: {e}", real.display())),
        _ => Ok(()),
    }
}

/// Say once which way the command went: to syslog (`/dev/log`) when there is one, since the
/// caller's stderr may be parsed; else to stderr.
pub fn announce(line: &str) {
    use std::io::Write as _;
    use tracing_subscriber::fmt::MakeWriter as _;
    let daemon = crate::syslog::facility("daemon").unwrap_or(3);
    match crate::syslog::Syslog::connect(Path::new(crate::syslog::DEV_LOG), daemon, LOG_TAG) {
        Ok(s) => {
            let _ = s.make_writer().write_all(line.as_bytes());
        }
        Err(_) => eprintln!("{LOG_TAG}: {line}"),
    }
}

/// Exec the real haproxy with `argv` unchanged (argv[0] included). Returns only on failure,
/// with the line to print.
pub fn exec_real(argv: &[OsString], why: &str) -> String {
    let real = match real_haproxy(Path::new(DROPIN_CONF)) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let me = PathBuf::from("/proc/self/exe");
    if let Err(e) = check_not_self(&real, &me) {
        return format!("not Neutron's metadata proxy ({why}) and {e}");
    }
    announce(&format!(
        "haproxy drop-in: not Neutron's metadata proxy ({why}): exec {}",
        real.display()
    ));
    let arg0: &OsStr = argv
        .first()
        .map_or(OsStr::new("haproxy"), OsString::as_os_str);
    let e = std::process::Command::new(&real)
        .arg0(arg0)
        .args(argv.iter().skip(1))
        .exec();
    format!("exec {}: {e}", real.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn who_is_a_dropin_command() {
        assert!(is_dropin(&argv(&["haproxy", "-v"])));
        assert!(is_dropin(&argv(&["/usr/local/sbin/haproxy", "-f", "x"])));
        assert!(is_dropin(&argv(&["ns-metadata-proxy", "-f", "x"])));
        assert!(!is_dropin(&argv(&[
            "ns-metadata-proxy",
            "--router-id",
            "r"
        ])));
        assert!(!is_dropin(&argv(&[
            "neutron-ns-metadata-proxy",
            "--router_id=r"
        ])));
    }

    #[test]
    fn other_flags_go_to_the_real_haproxy() {
        for a in [
            &["haproxy", "-v"][..],
            &["haproxy", "-vv"],
            &["haproxy", "-c", "-f", "/x.cfg"],
            &["haproxy", "-f", "/x.cfg", "-p", "/x.pid"],
            &["haproxy", "-f", "/x.cfg", "-sf", "12"],
            &["haproxy", "-D", "-f", "/x.cfg"],
            &["haproxy"],
        ] {
            assert!(matches!(route(&argv(a)), Route::Exec(_)), "{a:?}");
        }
        // An unreadable file: the real haproxy reports it in its own words.
        let r = route(&argv(&[
            "haproxy",
            "-f",
            "/nonexistent/ns-metadata-test.cfg",
        ]));
        assert!(matches!(r, Route::Exec(_)), "{r:?}");
    }

    fn conf(text: &str) -> Config {
        let h = haproxy::parse(text, Path::new("t.conf")).expect("ours");
        to_config(&h).expect("config")
    }

    const BASE: &str = "global\n    log /run/t.sock local0 info\n    log-tag tag-1\n    user root\n    maxconn 7\n    pidfile /run/x.pid\n    daemon\ndefaults\n    mode http\n    option http-server-close\n    retries 1\n    timeout client 2s\n    timeout server 3s\nlisten listener\n    bind :::9697\n    server metadata /run/agent.sock\n    http-request add-header X-OVN-Network-ID n1\n";

    #[test]
    fn each_keyword_has_haproxys_effect() {
        let c = conf(BASE);
        assert_eq!(
            c.resource
                .as_ref()
                .map(ns_contract::Resource::header_line)
                .as_deref(),
            Some("X-OVN-Network-ID: n1\r\n")
        );
        assert_eq!(c.socket, Path::new("/run/agent.sock"));
        assert_eq!(c.binds[0].to_string(), "[::]:9697");
        assert_eq!(c.max_connections, 7);
        assert_eq!(c.pid_file.as_deref(), Some(Path::new("/run/x.pid")));
        assert!(c.daemonize);
        assert_eq!(c.user.as_deref(), Some("root"));
        assert_eq!(c.connect_retries, 1);
        assert_eq!(c.agent_keepalive, KeepaliveMode::Off, "http-server-close");
        assert_eq!(c.threads, 1, "no nbthread: one");
        let two = conf(&BASE.replace("    daemon\n", "    daemon\n    nbthread 2\n"));
        assert_eq!(two.threads, 2, "nbthread");
        let many = conf(&BASE.replace("    daemon\n", "    daemon\n    nbthread 64\n"));
        assert_eq!(
            many.threads,
            crate::workers::MAX_THREADS,
            "nbthread beyond ours"
        );
        assert_eq!(
            (
                c.syslog_facility,
                c.syslog_socket.as_path(),
                c.syslog_tag.as_deref()
            ),
            (Some(16), Path::new("/run/t.sock"), Some("tag-1"))
        );
        assert_eq!(c.log_level, Some(tracing::Level::INFO));
        // Missing timeouts: http-request and http-keep-alive fall back to client, as in
        // haproxy; connect to Neutron's default.
        let t = c.timeouts;
        let s = std::time::Duration::from_secs;
        assert_eq!(
            (t.request, t.keepalive, t.client, t.server),
            (s(2), s(2), s(2), s(3))
        );
        assert_eq!(t.connect, Timeouts::default().connect);
        assert!(c.rate_limit.is_none());
        // Without http-server-close haproxy keeps server connections: `auto`.
        let c = conf(&BASE.replace("    option http-server-close\n", ""));
        assert_eq!(c.agent_keepalive, KeepaliveMode::Auto);
    }

    #[test]
    fn stick_tables_become_the_two_windows() {
        let limited = BASE.replace(
            "listen listener\n",
            "backend a\n    stick-table type ip size 5 expire 60s store http_req_rate(60s)\n\
             backend b\n    stick-table type ip size 5 expire 60s store http_req_rate(2s)\n\
             listen listener\n    http-request track-sc0 src table a\n\
             http-request track-sc1 src table b\n\
             http-request deny deny_status 429 if { src_http_req_rate(a) gt 9 }\n\
             http-request deny deny_status 429 if { src_http_req_rate(b) gt 3 }\n",
        );
        let c = conf(&limited);
        let rl = c.rate_limit.expect("limited");
        assert_eq!(
            (rl.base.to_string(), rl.burst.to_string()),
            ("9/60".into(), "3/2".into())
        );
        assert_eq!(
            rl.versions,
            Versions {
                v4: true,
                v6: false
            },
            "type ip"
        );
        assert_eq!(c.rate_table, Some((5, std::time::Duration::from_secs(60))));
        let c = conf(&limited.replace("type ip ", "type ipv6 "));
        assert_eq!(
            c.rate_limit.expect("limited").versions,
            Versions::BOTH,
            "type ipv6"
        );
    }

    #[test]
    fn the_real_path_comes_only_from_a_root_owned_file() {
        let d = ns_testkit::TempDir::new("dropin-conf");
        let missing = d.join("none.ini");
        assert_eq!(real_haproxy(&missing), Ok(PathBuf::from(REAL_HAPROXY)));
        let f = d.write(
            "d.ini",
            "[haproxy]\nreal_haproxy = /opt/haproxy/sbin/haproxy\n",
        );
        if nix::unistd::geteuid().is_root() {
            assert_eq!(
                real_haproxy(&f),
                Ok(PathBuf::from("/opt/haproxy/sbin/haproxy"))
            );
        }
        std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .expect("chmod");
        let e = real_haproxy(&f).expect_err("world-writable");
        assert!(e.contains("writable only by root"), "{e}");
        let rel = d.write("rel.ini", "[haproxy]\nreal_haproxy = haproxy\n");
        std::fs::set_permissions(&rel, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .expect("chmod");
        if nix::unistd::geteuid().is_root() {
            let e = real_haproxy(&rel).expect_err("relative");
            assert!(e.contains("rel.ini:2: [haproxy] real_haproxy"), "{e}");
        }
    }

    #[test]
    fn refuses_to_exec_itself() {
        let me = std::env::current_exe().expect("exe");
        let d = ns_testkit::TempDir::new("dropin-self");
        let link = d.join("haproxy");
        std::os::unix::fs::symlink(&me, &link).expect("symlink");
        let e = check_not_self(&link, Path::new("/proc/self/exe")).expect_err("loop");
        assert!(e.contains("is this drop-in itself"), "{e}");
        // A hard link is the same file too.
        let other = d.write("other", "#!/bin/sh\n");
        assert!(check_not_self(&other, Path::new("/proc/self/exe")).is_ok());
        assert!(check_not_self(&d.join("missing"), &me).is_err());
    }
}
