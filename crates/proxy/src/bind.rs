//! Listening sockets: parse `ADDR:PORT[%IFACE]`, resolve the interface's scope id, wait
//! for IPv6 DAD, and bind — inside another namespace when `--netns` is given.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV6};
use std::time::{Duration, Instant};

use ns_netns::Netns;

use crate::error::{Error, Result};

/// How long a bind that fails with EADDRNOTAVAIL is retried: an IPv6 address is not
/// bindable while it is tentative (DAD, ~1-2 s). Neutron waits for DAD too (LP#1953165).
/// We retry rather than set IP_FREEBIND, so a proxy never reports ready on an address
/// the namespace does not (yet) have.
pub const DAD_WAIT: Duration = Duration::from_secs(5);

/// One `--bind` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindSpec {
    pub addr: IpAddr,
    pub port: u16,
    pub iface: Option<String>,
}

impl BindSpec {
    /// `0.0.0.0:PORT` (Neutron's `--metadata_port`).
    pub fn any(port: u16) -> BindSpec {
        BindSpec {
            addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port,
            iface: None,
        }
    }
}

impl std::fmt::Display for BindSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.port)?,
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.port)?,
        }
        if let Some(i) = &self.iface {
            write!(f, "%{i}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for BindSpec {
    type Err = String;

    /// `1.2.3.4:80`, `[::]:80`, `[fe80::a9fe:a9fe]:80%tap0`, `[fe80::a9fe:a9fe%tap0]:80`.
    fn from_str(s: &str) -> std::result::Result<BindSpec, String> {
        let s = s.trim();
        let (host, rest) = if let Some(r) = s.strip_prefix('[') {
            let (h, rest) = r.split_once(']').ok_or("missing ']'")?;
            (h, rest.strip_prefix(':').ok_or("expected ]:PORT")?)
        } else {
            s.rsplit_once(':').ok_or("expected ADDR:PORT")?
        };
        let (host, zone) = match host.split_once('%') {
            Some((h, z)) => (h, Some(z)),
            None => (host, None),
        };
        let (port, suffix) = match rest.split_once('%') {
            Some((p, z)) => (p, Some(z)),
            None => (rest, None),
        };
        let iface = match (zone, suffix) {
            (Some(_), Some(_)) => return Err("interface given twice".into()),
            (z, s) => z.or(s).map(str::to_owned),
        };
        let addr: IpAddr = host
            .parse()
            .map_err(|_| format!("invalid address {host:?}"))?;
        let port: u16 = port.parse().map_err(|_| format!("invalid port {port:?}"))?;
        if let Some(i) = &iface {
            ns_contract::validate_ifname(i).map_err(|e| e.to_string())?;
            if addr.is_ipv4() {
                return Err("%IFACE is only for IPv6 addresses".into());
            }
        }
        if let IpAddr::V6(a) = addr {
            if a.is_unicast_link_local() && iface.is_none() {
                return Err("a link-local IPv6 address needs %IFACE".into());
            }
        }
        Ok(BindSpec { addr, port, iface })
    }
}

impl BindSpec {
    /// The prefix length an address of ours gets (a host route, as the spawner adds it).
    pub fn host_prefix(&self) -> u8 {
        if self.addr.is_ipv4() {
            32
        } else {
            128
        }
    }

    /// The interface the address belongs on: its %IFACE, else `lo`.
    pub fn device(&self) -> &str {
        self.iface.as_deref().unwrap_or("lo")
    }
}

/// Where the listeners are bound, for messages: a namespace's label (its name, or the path
/// it was opened from) or the current namespace.
#[derive(Debug, Clone, Default)]
pub struct Where {
    /// `Some((label, named))`: inside that namespace; `named` when it is under /run/netns
    /// (so `ip netns exec` reaches it).
    netns: Option<(String, bool)>,
}

impl Where {
    pub fn of(netns: &Netns) -> Where {
        Where {
            netns: Some((netns.label(), netns.name().is_some())),
        }
    }

    /// `" in namespace qrouter-…"`, or nothing for the current namespace.
    fn suffix(&self) -> String {
        match &self.netns {
            Some((label, _)) => format!(" in namespace {label}"),
            None => String::new(),
        }
    }

    /// What to do when the address is missing: the commands that add it. (The proxy does not
    /// add it itself: rtnetlink in every proxy would cost each one ~40 KB of relocated,
    /// private memory; the spawner prepares namespaces.)
    fn missing_address_hint(&self, spec: &BindSpec) -> String {
        let add = format!(
            "ip addr add {}/{} dev {}",
            spec.addr,
            spec.host_prefix(),
            spec.device()
        );
        let up = format!("ip link set {} up", spec.device());
        let run = |c: &str| match &self.netns {
            Some((label, true)) => format!("ip netns exec {label} {c}"),
            Some((label, false)) => format!("nsenter --net={label} {c}"),
            None => c.to_owned(),
        };
        let (cmd, up) = (run(&add), run(&up));
        let ns = match &self.netns {
            Some(_) => "the namespace",
            None => "this namespace",
        };
        format!(
            " ({ns} has no address {}); add it with `{cmd}` (and `{up}` if it is down)",
            spec.addr
        )
    }
}

/// Bind every spec in the calling thread's namespace. Retries EADDRNOTAVAIL on IPv6
/// (tentative address during DAD) up to [`DAD_WAIT`].
pub fn bind_all(specs: &[BindSpec]) -> Result<Vec<std::net::TcpListener>> {
    bind_all_at(specs, &Where::default())
}

fn bind_all_at(specs: &[BindSpec], at: &Where) -> Result<Vec<std::net::TcpListener>> {
    specs.iter().map(|s| bind_one(s, at)).collect()
}

fn bind_one(spec: &BindSpec, at: &Where) -> Result<std::net::TcpListener> {
    let err = |source: io::Error| {
        let hint =
            if source.kind() == io::ErrorKind::AddrNotAvailable && !spec.addr.is_unspecified() {
                at.missing_address_hint(spec)
            } else {
                String::new()
            };
        Error::Bind {
            addr: spec.to_string(),
            where_: at.suffix(),
            source,
            hint,
        }
    };
    let addr = match spec.addr {
        IpAddr::V4(a) => SocketAddr::from((a, spec.port)),
        IpAddr::V6(a) => {
            let scope = match &spec.iface {
                Some(i) => nix::net::if_::if_nametoindex(i.as_str()).map_err(|e| {
                    err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("interface {i}: {e}"),
                    ))
                })?,
                None => 0,
            };
            SocketAddr::V6(SocketAddrV6::new(a, spec.port, 0, scope))
        }
    };
    let start = Instant::now();
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => {
                l.set_nonblocking(true).map_err(err)?;
                return Ok(l);
            }
            Err(e)
                if spec.addr.is_ipv6()
                    && e.kind() == io::ErrorKind::AddrNotAvailable
                    && start.elapsed() < DAD_WAIT =>
            {
                // A poll with a deadline, on the dedicated bind thread, not a fixed wait.
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(err(e)),
        }
    }
}

/// Deepen every listener's accept queue to `max_connections` (std's bind uses 128), as
/// haproxy sizes its backlog from maxconn: a burst of booting VMs then waits in the kernel
/// instead of having SYNs dropped and retried a second later. The kernel caps the value at
/// `net.core.somaxconn`; listen(2) on a listening socket only updates its backlog.
pub fn set_backlog(listeners: &[std::net::TcpListener], max_connections: usize) -> Result<()> {
    let max = i32::from(nix::sys::socket::Backlog::MAXCONN);
    let n = i32::try_from(max_connections).unwrap_or(max).clamp(1, max);
    for l in listeners {
        let fail = |e: nix::Error| Error::Bind {
            addr: local(l),
            where_: String::new(),
            source: e.into(),
            hint: String::new(),
        };
        let backlog = nix::sys::socket::Backlog::new(n).map_err(fail)?;
        nix::sys::socket::listen(l, backlog).map_err(fail)?;
    }
    Ok(())
}

fn local(l: &std::net::TcpListener) -> String {
    l.local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "listener".into())
}

/// Bind inside `netns` (`--netns`) on a dedicated thread, or here.
pub fn bind_in(netns: Option<&Netns>, specs: &[BindSpec]) -> Result<Vec<std::net::TcpListener>> {
    match netns {
        None => bind_all(specs),
        Some(ns) => {
            let specs = specs.to_vec();
            let at = Where::of(ns);
            ns.run(move || bind_all_at(&specs, &at))
                .map_err(|source| Error::Netns {
                    spec: ns.label(),
                    source,
                })?
        }
    }
}

/// The listening sockets the spawner handed over for a restart by socket takeover
/// (`ns_contract::spawn::LISTEN_FDS_ENV`), to serve instead of binding `binds`; `None` when
/// the variable is not set. Refused (one line) unless started by the spawner (its state-dir
/// marker and a `--ready-fd`, no `--netns`, no `--daemonize`); each descriptor must be a
/// listening TCP socket of this network namespace bound to one of `binds` (a link-local
/// address on its interface), and every bind must be covered exactly once. Call after the
/// namespace is entered, before any thread exists (the variable is removed).
pub fn inherited(
    binds: &[BindSpec],
    started_by_spawner: bool,
) -> Result<Option<Vec<std::net::TcpListener>>> {
    use ns_contract::spawn::LISTEN_FDS_ENV;
    let Some(value) = std::env::var_os(LISTEN_FDS_ENV) else {
        return Ok(None);
    };
    let fail = |why: String| Error::Config(format!("{LISTEN_FDS_ENV}: {why}"));
    if !started_by_spawner {
        return Err(fail(
            "internal to ns-metadata-spawner (needs its state-dir marker and a --ready-fd, \
             no --netns or --daemonize); use --bind"
                .into(),
        ));
    }
    let value = value
        .into_string()
        .map_err(|_| fail("not a list of descriptor numbers".into()))?;
    let here = Netns::current().map_err(|e| fail(format!("this namespace: {e}")))?;
    let mut got: Vec<Option<std::net::TcpListener>> = binds.iter().map(|_| None).collect();
    for item in value.split(',') {
        let fd: i32 = item
            .trim()
            .parse()
            .map_err(|_| fail(format!("{item:?} is not a descriptor number")))?;
        let owned = ns_netns::take_inherited(fd).map_err(|e| fail(e.to_string()))?;
        let at =
            match_listener(&owned, binds, &here).map_err(|why| fail(format!("fd {fd}: {why}")))?;
        if got[at].is_some() {
            return Err(fail(format!("fd {fd}: a second socket for {}", binds[at])));
        }
        got[at] = Some(std::net::TcpListener::from(owned));
    }
    // Not inherited by anything this process might start, and not seen twice.
    std::env::remove_var(LISTEN_FDS_ENV);
    let mut out = Vec::with_capacity(binds.len());
    for (l, spec) in got.into_iter().zip(binds) {
        let l = l.ok_or_else(|| fail(format!("no socket for --bind {spec}")))?;
        l.set_nonblocking(true)
            .map_err(|e| fail(format!("{spec}: {e}")))?;
        out.push(l);
    }
    Ok(Some(out))
}

/// Which of `binds` the inherited `fd` serves: it must be a TCP socket in the listening state,
/// created in the namespace `here`, bound to that address and port (and interface).
fn match_listener(
    fd: &std::os::fd::OwnedFd,
    binds: &[BindSpec],
    here: &Netns,
) -> std::result::Result<usize, String> {
    use nix::sys::socket::{getsockname, getsockopt, sockopt, SockType, SockaddrStorage};
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let st = nix::sys::stat::fstat(fd).map_err(|e| format!("fstat: {e}"))?;
    let sock = nix::sys::stat::SFlag::from_bits_truncate(st.st_mode)
        & nix::sys::stat::SFlag::S_IFMT
        == nix::sys::stat::SFlag::S_IFSOCK;
    if !sock {
        return Err("not a socket".into());
    }
    let stream = getsockopt(fd, sockopt::SockType).map_err(|e| format!("SO_TYPE: {e}"))?;
    let listening =
        getsockopt(fd, sockopt::AcceptConn).map_err(|e| format!("SO_ACCEPTCONN: {e}"))?;
    if stream != SockType::Stream || !listening {
        return Err("not a listening TCP socket".into());
    }
    let name: SockaddrStorage =
        getsockname(fd.as_raw_fd()).map_err(|e| format!("getsockname: {e}"))?;
    let addr: SocketAddr = if let Some(a) = name.as_sockaddr_in() {
        SocketAddr::from(std::net::SocketAddrV4::from(*a))
    } else if let Some(a) = name.as_sockaddr_in6() {
        SocketAddr::V6(SocketAddrV6::from(*a))
    } else {
        return Err("not a TCP/IP socket".into());
    };
    let ns = Netns::of_socket(fd.as_fd()).map_err(|e| e.to_string())?;
    if ns != *here {
        return Err(format!("{addr} belongs to another network namespace"));
    }
    let scope = |spec: &BindSpec| {
        spec.iface
            .as_deref()
            .map_or(Some(0), |i| nix::net::if_::if_nametoindex(i).ok())
    };
    binds
        .iter()
        .position(|spec| {
            spec.addr == addr.ip()
                && spec.port == addr.port()
                && match addr {
                    SocketAddr::V4(_) => true,
                    SocketAddr::V6(a) => scope(spec) == Some(a.scope_id()),
                }
        })
        .ok_or_else(|| format!("bound to {addr}, which is not one of the --bind addresses"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_forms() {
        let b: BindSpec = "[fe80::a9fe:a9fe]:80%tap0".parse().expect("ok");
        assert_eq!(b.iface.as_deref(), Some("tap0"));
        assert_eq!(b.to_string(), "[fe80::a9fe:a9fe]:80%tap0");
        let b: BindSpec = "[fe80::a9fe:a9fe%tap1]:80".parse().expect("ok");
        assert_eq!(b.iface.as_deref(), Some("tap1"));
        let b: BindSpec = "169.254.169.254:80".parse().expect("ok");
        assert_eq!(b.port, 80);
        assert!("[::]:9697".parse::<BindSpec>().is_ok());
        for bad in [
            "fe80::1:80",
            "[fe80::1]:80",
            "1.2.3.4:80%eth0",
            "1.2.3.4",
            "x:80",
            "[::]:99999",
            "[::1]:80%a/b",
        ] {
            assert!(bad.parse::<BindSpec>().is_err(), "{bad}");
        }
    }

    /// The accept queue as the kernel reports it: `ss` shows a listener's backlog as Send-Q.
    fn backlog_of(port: u16) -> Option<u32> {
        let out = std::process::Command::new("ss")
            .args(["-ltnH", &format!("sport = :{port}")])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace().nth(2)?.parse().ok()
    }

    #[test]
    fn backlog_follows_max_connections() {
        let l = bind_all(&["127.0.0.1:0".parse().expect("spec")]).expect("bind");
        let port = l[0].local_addr().expect("addr").port();
        let Some(before) = backlog_of(port) else {
            ns_testkit::skip::skip("backlog_follows_max_connections", "no ss");
            return;
        };
        assert_eq!(before, 128, "std's default");
        set_backlog(&l, 1000).expect("listen");
        assert_eq!(backlog_of(port), Some(1000));
        set_backlog(&l, usize::MAX).expect("clamped, not an error");
        assert!(backlog_of(port).is_some_and(|b| b >= 1000));
    }

    #[test]
    fn binds_loopback_and_reports_missing_interface() {
        let l = bind_all(&["127.0.0.1:0".parse().expect("spec")]).expect("bind");
        assert!(l[0].local_addr().expect("addr").port() > 0);
        let e = bind_all(&["[fe80::1]:0%nsmpnope0".parse().expect("spec")]).expect_err("no iface");
        assert!(e.to_string().contains("nsmpnope0"), "{e}");
    }

    #[test]
    fn a_missing_address_names_the_namespace_and_the_fix() {
        let spec: BindSpec = "169.254.169.254:80".parse().expect("spec");
        let named = Where {
            netns: Some(("qrouter-r1".into(), true)),
        };
        let e = Error::Bind {
            addr: spec.to_string(),
            where_: named.suffix(),
            source: io::ErrorKind::AddrNotAvailable.into(),
            hint: named.missing_address_hint(&spec),
        }
        .to_string();
        assert!(
            e.starts_with("bind 169.254.169.254:80 in namespace qrouter-r1: "),
            "{e}"
        );
        assert!(
            e.contains("`ip netns exec qrouter-r1 ip addr add 169.254.169.254/32 dev lo`"),
            "{e}"
        );
        assert!(
            e.contains("`ip netns exec qrouter-r1 ip link set lo up`"),
            "{e}"
        );
        let v6: BindSpec = "[fe80::a9fe:a9fe]:80%tap0".parse().expect("spec");
        let by_path = Where {
            netns: Some(("/proc/1/ns/net".into(), false)),
        };
        assert!(by_path
            .missing_address_hint(&v6)
            .contains("`nsenter --net=/proc/1/ns/net ip addr add fe80::a9fe:a9fe/128 dev tap0`"));
        // Here, in the current namespace: the plain command.
        let e = bind_all(&["192.0.2.123:0".parse().expect("spec")]).expect_err("not ours");
        let e = e.to_string();
        assert!(e.starts_with("bind 192.0.2.123:0: "), "{e}");
        assert!(e.contains("`ip addr add 192.0.2.123/32 dev lo`"), "{e}");
    }
}
