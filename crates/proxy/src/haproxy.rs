//! Neutron's haproxy configuration for a namespace metadata proxy, read as a structure: the
//! grammar of the text Neutron's l3, dhcp and OVN agents render (neutron/common/metadata.py,
//! agent/metadata/driver_base.py, driver.py, ovn/metadata/driver.py), and nothing more.
//!
//! [`parse`] answers one of three things: the file is ours ([`HaproxyConfig`]); it uses a
//! section, keyword or form outside that grammar ([`Parse::Foreign`]: the real haproxy must run
//! it); or it is ours with a bad value ([`Parse::Bad`]: `file:line: keyword: reason`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use ns_contract::headers::is_identity;
use ns_contract::{Kind, Resource};

use crate::bind::BindSpec;

/// Neutron's `log` target line: `log <unix socket> <facility> [<level> [<minlevel>]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogTarget {
    pub socket: PathBuf,
    pub facility: u8,
    /// haproxy's level name (`info`, `debug`, ...): messages above it are not sent.
    pub level: &'static str,
}

/// One `backend NAME` holding `stick-table type ip|ipv6 size N expire T store http_req_rate(P)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickTable {
    pub name: String,
    /// `type ipv6`: IPv4 sources are tracked too (as v4-mapped); `type ip`: only IPv4.
    pub ipv6: bool,
    pub size: usize,
    pub expire: Duration,
    pub period: Duration,
    pub line: usize,
}

/// The five `timeout` lines, when present.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeouts {
    pub http_request: Option<Duration>,
    pub connect: Option<Duration>,
    pub client: Option<Duration>,
    pub server: Option<Duration>,
    pub http_keep_alive: Option<Duration>,
}

/// Everything a Neutron metadata haproxy configuration says, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaproxyConfig {
    pub log: Option<LogTarget>,
    pub log_tag: Option<String>,
    /// `user`/`group` names, with their lines (resolved when the proxy starts).
    pub user: Option<(String, usize)>,
    pub group: Option<(String, usize)>,
    pub maxconn: Option<usize>,
    pub nbthread: Option<u32>,
    pub pidfile: Option<PathBuf>,
    pub daemon: bool,
    /// `option http-server-close`: one request per agent connection.
    pub http_server_close: bool,
    pub retries: Option<u32>,
    pub timeouts: Timeouts,
    pub tables: Vec<StickTable>,
    pub binds: Vec<BindSpec>,
    /// `server <name> <absolute path>`: the agent's Unix socket.
    pub server: PathBuf,
    /// The one `set-header`/`add-header` of a resource header.
    pub resource: Resource,
    /// `track-scN src table T`, in order.
    pub tracked: Vec<String>,
    /// `deny deny_status 429 if { src_http_req_rate(T) gt N }`: (table, N).
    pub denies: Vec<(String, u32)>,
}

/// Why a file is not (or not validly) ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    /// Outside Neutron's grammar: line (0 = the file as a whole) and what was found.
    Foreign { line: usize, what: String },
    /// Ours, with a bad value: `file:line: keyword: reason`.
    Bad {
        file: PathBuf,
        line: usize,
        keyword: String,
        reason: String,
    },
}

impl std::fmt::Display for Parse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Parse::Foreign { line: 0, what } => write!(f, "{what}"),
            Parse::Foreign { line, what } => write!(f, "line {line}: {what}"),
            Parse::Bad {
                file,
                line,
                keyword,
                reason,
            } => write!(f, "{}:{line}: {keyword}: {reason}", file.display()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Global,
    Defaults,
    Backend,
    Listen,
}

/// What one line said: `Err(None)` = foreign, `Err(Some(reason))` = bad value of `keyword`.
type LineResult = Result<(), Option<String>>;

fn foreign() -> LineResult {
    Err(None)
}

/// haproxy's time format: a number and an optional unit (`us`, `ms`, `s`, `m`, `h`, `d`;
/// none means milliseconds), up to haproxy's limit of 2^31-1 ms.
pub fn time(s: &str) -> Result<Duration, String> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (n, unit) = s.split_at(digits);
    let n: u64 = n.parse().map_err(|_| format!("invalid time {s:?}"))?;
    let d = match unit {
        "us" => Duration::from_micros(n),
        "" | "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86_400)),
        _ => {
            return Err(format!(
                "invalid time {s:?}: unit must be us, ms, s, m, h or d"
            ))
        }
    };
    if d > Duration::from_millis(i32::MAX as u64) {
        return Err(format!("time {s:?} is over haproxy's limit (24.8 days)"));
    }
    Ok(d)
}

/// haproxy's size format for tables: a number with an optional `k`, `m` or `g`.
fn size(s: &str) -> Result<usize, String> {
    let (n, mul) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 1_000),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 1_000_000),
        Some(b'g' | b'G') => (&s[..s.len() - 1], 1_000_000_000),
        _ => (s, 1),
    };
    let n: usize = n.parse().map_err(|_| format!("invalid size {s:?}"))?;
    match n.checked_mul(mul) {
        Some(v) if v > 0 => Ok(v),
        _ => Err(format!("size {s:?} is out of range")),
    }
}

fn number<T>(s: &str, min: T) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    match s.parse::<T>() {
        Ok(v) if v >= min => Ok(v),
        Ok(_) => Err(format!("{s} is below {min}")),
        Err(_) => Err(format!("invalid number {s:?}")),
    }
}

/// haproxy's syslog levels, most severe first.
const LEVELS: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

/// `bind` in Neutron's forms: `a.b.c.d:p`, `:::p`, `[v6]:p [interface X]`, and the legacy
/// unbracketed `fe80::a9fe:a9fe:p interface X` (the last `:` separates the port, as in
/// haproxy). Options other than `interface` are outside the grammar.
fn bind(args: &[&str]) -> Result<BindSpec, Option<String>> {
    let (addr, iface) = match args {
        [a] => (*a, None),
        [a, "interface", i] => (*a, Some(*i)),
        _ => return Err(None),
    };
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (h, p) = rest
            .split_once("]:")
            .ok_or_else(|| Some(format!("invalid address {addr:?}")))?;
        (h, p)
    } else {
        addr.rsplit_once(':')
            .ok_or_else(|| Some(format!("{addr:?}: expected ADDRESS:PORT")))?
    };
    let host = match host {
        "" | "*" => "0.0.0.0",
        h => h,
    };
    let ip: std::net::IpAddr = host
        .parse()
        .map_err(|_| Some(format!("invalid address {host:?}")))?;
    if ip.is_ipv4() && iface.is_some() {
        // haproxy's SO_BINDTODEVICE on IPv4: not a form Neutron writes.
        return Err(None);
    }
    let spec = match (ip, iface) {
        (std::net::IpAddr::V6(_), Some(i)) => format!("[{ip}]:{port}%{i}"),
        (std::net::IpAddr::V6(_), None) => format!("[{ip}]:{port}"),
        (std::net::IpAddr::V4(_), _) => format!("{ip}:{port}"),
    };
    spec.parse::<BindSpec>().map_err(Some)
}

#[derive(Default)]
struct Builder {
    cfg_log: Option<LogTarget>,
    log_tag: Option<String>,
    user: Option<(String, usize)>,
    group: Option<(String, usize)>,
    maxconn: Option<usize>,
    nbthread: Option<u32>,
    pidfile: Option<PathBuf>,
    daemon: bool,
    mode_http: bool,
    http_server_close: bool,
    retries: Option<u32>,
    timeouts: Timeouts,
    tables: Vec<StickTable>,
    binds: Vec<BindSpec>,
    server: Option<(PathBuf, usize)>,
    resources: Vec<(Resource, usize)>,
    tracked: Vec<(String, usize)>,
    denies: Vec<(String, u32, usize)>,
    listen: Option<usize>,
    backend: Option<String>,
}

impl Builder {
    fn global(&mut self, w: &[&str], line: usize) -> LineResult {
        let one = |w: &[&str]| match w {
            [_, v] => Ok(v.to_string()),
            [_] => Err(Some("missing value".to_owned())),
            _ => Err(None),
        };
        match w[0] {
            "log" => self.cfg_log = Some(log_line(&w[1..])?),
            "log-tag" => self.log_tag = Some(one(w)?),
            "user" => self.user = Some((one(w)?, line)),
            "group" => self.group = Some((one(w)?, line)),
            "maxconn" => self.maxconn = Some(number(&one(w)?, 1usize).map_err(Some)?),
            "nbthread" => self.nbthread = Some(number(&one(w)?, 1u32).map_err(Some)?),
            "pidfile" => {
                let p = PathBuf::from(one(w)?);
                if p.is_relative() {
                    return Err(Some(format!("{} must be an absolute path", p.display())));
                }
                self.pidfile = Some(p);
            }
            "daemon" if w.len() == 1 => self.daemon = true,
            _ => return foreign(),
        }
        Ok(())
    }

    fn defaults(&mut self, w: &[&str]) -> LineResult {
        match w {
            ["log", "global"] => {}
            ["mode", "http"] => self.mode_http = true,
            ["option", "httplog" | "dontlognull" | "forwardfor"] => {}
            ["option", "http-server-close"] => self.http_server_close = true,
            ["retries", n] => self.retries = Some(number(n, 0u32).map_err(Some)?),
            ["timeout", which, v] => {
                let t = &mut self.timeouts;
                let slot = match *which {
                    "http-request" => &mut t.http_request,
                    "connect" => &mut t.connect,
                    "client" => &mut t.client,
                    "server" => &mut t.server,
                    "http-keep-alive" => &mut t.http_keep_alive,
                    _ => return foreign(),
                };
                let d = time(v).map_err(Some)?;
                if d.is_zero() {
                    return Err(Some("must be above 0".into()));
                }
                *slot = Some(d);
            }
            ["timeout", "http-request" | "connect" | "client" | "server" | "http-keep-alive"] => {
                return Err(Some("missing value".into()))
            }
            _ => return foreign(),
        }
        Ok(())
    }

    fn backend(&mut self, w: &[&str], line: usize) -> LineResult {
        let ["stick-table", "type", ty, "size", sz, "expire", exp, "store", store] = w else {
            return foreign();
        };
        let ipv6 = match *ty {
            "ip" => false,
            "ipv6" => true,
            _ => return foreign(),
        };
        let Some(period) = store
            .strip_prefix("http_req_rate(")
            .and_then(|p| p.strip_suffix(')'))
        else {
            return foreign();
        };
        let name = self.backend.clone().unwrap_or_default();
        if self.tables.iter().any(|t| t.name == name) {
            return Err(Some("a second stick-table in this backend".into()));
        }
        let (period, expire) = (time(period).map_err(Some)?, time(exp).map_err(Some)?);
        if period.is_zero() || expire.is_zero() {
            return Err(Some(
                "expire and the http_req_rate period must be above 0".into(),
            ));
        }
        self.tables.push(StickTable {
            name,
            ipv6,
            size: size(sz).map_err(Some)?,
            expire,
            period,
            line,
        });
        Ok(())
    }

    fn listen(&mut self, w: &[&str], line: usize) -> LineResult {
        match w {
            ["bind", rest @ ..] => self.binds.push(bind(rest)?),
            ["server", _name, path] => {
                if !path.starts_with('/') {
                    // A TCP server (host:port): not the agent's Unix socket.
                    return foreign();
                }
                if self.server.is_some() {
                    return Err(Some("a second server line".into()));
                }
                let p = PathBuf::from(path);
                ns_contract::socket::check_socket_path(&p).map_err(Some)?;
                self.server = Some((p, line));
            }
            ["http-request", rule @ ..] => self.http_request(rule, line)?,
            _ => return foreign(),
        }
        Ok(())
    }

    fn http_request(&mut self, rule: &[&str], line: usize) -> LineResult {
        match rule {
            ["del-header", name] if is_identity(name) => {}
            ["set-header" | "add-header", name, id] => {
                let Some(kind) = Kind::ALL.into_iter().find(|k| k.header().is(name)) else {
                    return foreign();
                };
                let r = Resource::new(kind, *id).map_err(|e| Some(e.to_string()))?;
                self.resources.push((r, line));
            }
            ["set-header" | "add-header", name]
                if Kind::ALL.iter().any(|k| k.header().is(name)) =>
            {
                return Err(Some("missing id".into()))
            }
            ["track-sc0" | "track-sc1", "src", "table", t] => {
                self.tracked.push((t.to_string(), line));
            }
            ["deny", "deny_status", "429", "if", "{", fetch, "gt", n, "}"] => {
                let Some(t) = fetch
                    .strip_prefix("src_http_req_rate(")
                    .and_then(|t| t.strip_suffix(')'))
                else {
                    return foreign();
                };
                let n = number(n, 0u32).map_err(Some)?;
                self.denies.push((t.to_owned(), n, line));
            }
            _ => return foreign(),
        }
        Ok(())
    }
}

fn log_line(args: &[&str]) -> Result<LogTarget, Option<String>> {
    let (target, facility, level) = match args {
        [t, f] => (*t, *f, "debug"),
        [t, f, l] | [t, f, l, _] => (*t, *f, *l),
        [_] | [] => return Err(Some("missing target or facility".into())),
        _ => return Err(None),
    };
    if !target.starts_with('/') {
        // A UDP/TCP syslog server, `stdout`, `ring@`...: haproxy's, not ours.
        return Err(None);
    }
    let facility = crate::syslog::facility(facility)
        .ok_or_else(|| Some(format!("unknown facility {facility:?}")))?;
    let level = LEVELS
        .iter()
        .find(|l| **l == level)
        .ok_or_else(|| Some(format!("unknown level {level:?}")))?;
    if let [_, _, _, min] = args {
        if !LEVELS.contains(min) {
            return Err(Some(format!("unknown level {min:?}")));
        }
    }
    Ok(LogTarget {
        socket: PathBuf::from(target),
        facility,
        level,
    })
}

/// Read `text` (the content of `file`, which is only used in messages).
pub fn parse(text: &str, file: &Path) -> Result<HaproxyConfig, Parse> {
    let bad = |line: usize, keyword: &str, reason: String| Parse::Bad {
        file: file.to_owned(),
        line,
        keyword: keyword.to_owned(),
        reason,
    };
    let mut b = Builder::default();
    let mut section = None;
    let mut seen = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let code = raw.split('#').next().unwrap_or("");
        if code.contains(['"', '\'', '\\']) {
            // Quoting and escapes: haproxy's full tokenizer, not Neutron's template.
            return Err(Parse::Foreign {
                line: n,
                what: "quotes or escapes".into(),
            });
        }
        let w: Vec<&str> = code.split_whitespace().collect();
        let Some(&first) = w.first() else { continue };
        let header = match (first, &w[1..]) {
            ("global", []) => Some((Section::Global, None)),
            ("defaults", []) => Some((Section::Defaults, None)),
            ("backend", [name]) => Some((Section::Backend, Some(name.to_string()))),
            ("listen", [_]) => Some((Section::Listen, None)),
            _ => None,
        };
        if let Some((s, name)) = header {
            if s != Section::Backend && seen.contains(&s) {
                return Err(bad(n, first, "section given twice".into()));
            }
            if s == Section::Listen {
                b.listen = Some(n);
            }
            seen.push(s);
            b.backend = name;
            section = Some(s);
            continue;
        }
        let r = match section {
            Some(Section::Global) => b.global(&w, n),
            Some(Section::Defaults) => b.defaults(&w),
            Some(Section::Backend) => b.backend(&w, n),
            Some(Section::Listen) => b.listen(&w, n),
            None => foreign(),
        };
        // The keyword, with its sub-keyword where haproxy has one (`timeout server`).
        let keyword = match (first, w.get(1)) {
            ("timeout" | "option" | "http-request", Some(k)) => format!("{first} {k}"),
            _ => first.to_owned(),
        };
        match r {
            Ok(()) => {}
            Err(None) => {
                return Err(Parse::Foreign {
                    line: n,
                    what: format!("`{}`", w.join(" ")),
                })
            }
            Err(Some(reason)) => return Err(bad(n, &keyword, reason)),
        }
    }
    finish(b, file, bad)
}

/// The checks across lines: one listener with a bind and a server, one identity header,
/// every table tracked and limited.
fn finish(
    b: Builder,
    file: &Path,
    bad: impl Fn(usize, &str, String) -> Parse,
) -> Result<HaproxyConfig, Parse> {
    let whole = |what: &str| Parse::Foreign {
        line: 0,
        what: format!("{} has {what}", file.display()),
    };
    let Some(listen) = b.listen else {
        return Err(whole("no `listen` section"));
    };
    if !b.mode_http {
        // haproxy's default is `mode tcp`, where the header rules mean nothing.
        return Err(whole("no `mode http`"));
    }
    let Some((server, _)) = b.server else {
        return Err(bad(listen, "listen", "no `server` line".into()));
    };
    if b.binds.is_empty() {
        return Err(bad(listen, "listen", "no `bind` line".into()));
    }
    let resource = match b.resources.as_slice() {
        [(r, _)] => r.clone(),
        [] => {
            return Err(bad(
                listen,
                "listen",
                "no `http-request set-header` of a router or network id".into(),
            ))
        }
        [_, (_, line), ..] => {
            return Err(bad(
                *line,
                "http-request set-header",
                "a second id header".into(),
            ))
        }
    };
    for (t, _, line) in &b.denies {
        if !b.tracked.iter().any(|(x, _)| x == t) {
            return Err(bad(
                *line,
                "http-request deny",
                format!("table {t} is not tracked"),
            ));
        }
    }
    for (t, line) in &b.tracked {
        if !b.tables.iter().any(|x| &x.name == t) {
            return Err(bad(
                *line,
                "http-request track-sc",
                format!("no stick-table in backend {t}"),
            ));
        }
        if !b.denies.iter().any(|(x, _, _)| x == t) {
            return Err(bad(
                *line,
                "http-request track-sc",
                format!("table {t} limits nothing (no deny)"),
            ));
        }
    }
    if b.denies.len() > 2 {
        // The limiter has two windows, as Neutron's template.
        return Err(whole("more than two rate limits"));
    }
    if let [a, z] = b.tables.as_slice() {
        if a.ipv6 != z.ipv6 {
            return Err(bad(
                z.line,
                "stick-table",
                "both tables must have the same type".into(),
            ));
        }
    }
    Ok(HaproxyConfig {
        log: b.cfg_log,
        log_tag: b.log_tag,
        user: b.user,
        group: b.group,
        maxconn: b.maxconn,
        nbthread: b.nbthread,
        pidfile: b.pidfile,
        daemon: b.daemon,
        http_server_close: b.http_server_close,
        retries: b.retries,
        timeouts: b.timeouts,
        tables: b.tables,
        binds: b.binds,
        server,
        resource,
        tracked: b.tracked.into_iter().map(|(t, _)| t).collect(),
        denies: b.denies.into_iter().map(|(t, n, _)| (t, n)).collect(),
    })
}

#[cfg(test)]
#[path = "haproxy_tests.rs"]
mod tests;
