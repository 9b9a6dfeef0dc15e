//! Remote strings as OVS and Neutron's `ovn_sb_connection` write them: `unix:PATH`,
//! `tcp:HOST:PORT`, `ssl:HOST:PORT` (IPv6 hosts in brackets), and comma-separated lists of
//! them for failover.
use std::fmt;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// One place to connect to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Remote {
    Unix(PathBuf),
    Tcp { host: String, port: u16 },
    Ssl { host: String, port: u16 },
}

impl Remote {
    /// Parse one remote.
    pub fn parse(s: &str) -> Result<Remote> {
        let s = s.trim();
        let bad = |reason: &str| Error::Remote {
            remote: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (kind, rest) = s
            .split_once(':')
            .ok_or_else(|| bad("expected unix:PATH, tcp:HOST:PORT or ssl:HOST:PORT"))?;
        match kind {
            "unix" if !rest.is_empty() => Ok(Remote::Unix(PathBuf::from(rest))),
            "unix" => Err(bad("empty path")),
            "tcp" | "ssl" => {
                let (host, port) = rest
                    .rsplit_once(':')
                    .ok_or_else(|| bad("expected HOST:PORT"))?;
                let port: u16 = port.parse().map_err(|_| bad("bad port"))?;
                let host = host
                    .strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .unwrap_or(host);
                if host.is_empty() || port == 0 {
                    return Err(bad("expected HOST:PORT"));
                }
                let host = host.to_owned();
                Ok(if kind == "tcp" {
                    Remote::Tcp { host, port }
                } else {
                    Remote::Ssl { host, port }
                })
            }
            // The passive forms are for servers; say so rather than "unknown".
            "punix" | "ptcp" | "pssl" => Err(bad("passive remotes are for servers")),
            _ => Err(bad("expected unix:, tcp: or ssl:")),
        }
    }

    /// Parse a comma-separated list (`tcp:a:6642,tcp:b:6642`); at least one.
    pub fn parse_list(s: &str) -> Result<Vec<Remote>> {
        let list: Vec<Remote> = s
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(Remote::parse)
            .collect::<Result<_>>()?;
        if list.is_empty() {
            return Err(Error::Remote {
                remote: s.to_owned(),
                reason: "no remote".to_owned(),
            });
        }
        Ok(list)
    }

    /// Whether the server probes this connection with `echo` (OVS: unix streams are not
    /// probed, lib/stream-unix.c `needs_probes = false`), so we probe it too.
    pub fn needs_probes(&self) -> bool {
        !matches!(self, Remote::Unix(_))
    }
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hp = |f: &mut fmt::Formatter<'_>, kind: &str, host: &str, port: u16| {
            if host.contains(':') {
                write!(f, "{kind}:[{host}]:{port}")
            } else {
                write!(f, "{kind}:{host}:{port}")
            }
        };
        match self {
            Remote::Unix(p) => write!(f, "unix:{}", p.display()),
            Remote::Tcp { host, port } => hp(f, "tcp", host, *port),
            Remote::Ssl { host, port } => hp(f, "ssl", host, *port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_neutron_connection_strings() {
        let l = Remote::parse_list("tcp:10.0.0.1:6642, ssl:[fd00::1]:6642,unix:/run/ovn/sb.sock")
            .expect("list");
        assert_eq!(
            l,
            vec![
                Remote::Tcp {
                    host: "10.0.0.1".into(),
                    port: 6642
                },
                Remote::Ssl {
                    host: "fd00::1".into(),
                    port: 6642
                },
                Remote::Unix("/run/ovn/sb.sock".into()),
            ]
        );
        assert_eq!(l[1].to_string(), "ssl:[fd00::1]:6642");
        assert!(!l[2].needs_probes());
    }

    #[test]
    fn rejects_bad_remotes() {
        for bad in [
            "",
            "tcp:host",
            "tcp::6642",
            "tcp:h:0",
            "tcp:h:x",
            "ptcp:6642",
            "udp:h:1",
            "unix:",
        ] {
            assert!(Remote::parse_list(bad).is_err(), "{bad:?}");
        }
    }
}
