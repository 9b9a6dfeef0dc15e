//! The proxy's limits that Neutron configures: `[metadata_haproxy]` timeouts (LP#2154609) and
//! `[metadata_rate_limiting]` (LP#1989199), their valid ranges, and the proxy flags that carry
//! them, so a proxy started by the spawner runs with exactly what a standalone proxy reads
//! from the same files.

use std::time::Duration;

/// Neutron's group of haproxy timeouts.
pub const HAPROXY_GROUP: &str = "metadata_haproxy";
/// Neutron's rate-limiting group.
pub const RATE_GROUP: &str = "metadata_rate_limiting";
/// Longest timeout or window accepted, in seconds (one day).
pub const MAX_SECONDS: u64 = 86_400;

/// One timeout: its `[metadata_haproxy]` key, the proxy flag, Neutron's default in seconds,
/// and what it bounds.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutKey {
    pub key: &'static str,
    pub flag: &'static str,
    pub default: u64,
    pub help: &'static str,
}

/// Every timeout, in [`Timeouts`] field order (request, connect, client, server, keepalive).
pub const TIMEOUT_KEYS: [TimeoutKey; 5] = [
    TimeoutKey {
        key: "timeout_http_request",
        flag: "timeout-request",
        default: 30,
        help: "Seconds a client has to send a complete request head",
    },
    TimeoutKey {
        key: "timeout_connect",
        flag: "timeout-connect",
        default: 30,
        help: "Seconds to connect to the agent socket, else 503",
    },
    TimeoutKey {
        key: "timeout_client",
        flag: "timeout-client",
        default: 32,
        help: "Client inactivity while reading a body or writing the answer",
    },
    TimeoutKey {
        key: "timeout_server",
        flag: "timeout-server",
        default: 32,
        help: "Agent inactivity before answering 504",
    },
    TimeoutKey {
        key: "timeout_http_keep_alive",
        flag: "timeout-keepalive",
        default: 30,
        help: "Idle seconds between requests on a kept-alive client connection",
    },
];

/// The proxy's timeouts; the default is Neutron's haproxy template (30/30/32/32/30 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub request: Duration,
    pub connect: Duration,
    pub client: Duration,
    pub server: Duration,
    pub keepalive: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        let d = |i: usize| Duration::from_secs(TIMEOUT_KEYS[i].default);
        Timeouts {
            request: d(0),
            connect: d(1),
            client: d(2),
            server: d(3),
            keepalive: d(4),
        }
    }
}

impl Timeouts {
    /// From seconds in [`TIMEOUT_KEYS`] order, each checked with [`check_seconds`].
    pub fn from_secs(s: [u64; 5]) -> Result<Timeouts, String> {
        for (v, k) in s.iter().zip(TIMEOUT_KEYS) {
            check_seconds(*v).map_err(|r| format!("{}: {r}", k.key))?;
        }
        let d = Duration::from_secs;
        Ok(Timeouts {
            request: d(s[0]),
            connect: d(s[1]),
            client: d(s[2]),
            server: d(s[3]),
            keepalive: d(s[4]),
        })
    }

    fn secs(&self) -> [u64; 5] {
        [
            self.request,
            self.connect,
            self.client,
            self.server,
            self.keepalive,
        ]
        .map(|d| d.as_secs())
    }

    /// The proxy flags for the timeouts that differ from the defaults (`--timeout-server 90`).
    pub fn args(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (v, k) in self.secs().into_iter().zip(TIMEOUT_KEYS) {
            if v != k.default {
                out.push(format!("--{}", k.flag));
                out.push(v.to_string());
            }
        }
        out
    }
}

/// A timeout or window in seconds: 1 ..= one day (Neutron's options have min=1).
pub fn check_seconds(v: u64) -> Result<(), String> {
    if v == 0 || v > MAX_SECONDS {
        Err(format!("{v} is out of range 1..={MAX_SECONDS} seconds"))
    } else {
        Ok(())
    }
}

/// At most `limit` requests per `window` from one source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub limit: u32,
    pub window: Duration,
}

impl Rate {
    /// A rate with a checked window (1 ..= one day) and a limit of at least 1.
    pub fn new(limit: u64, window_secs: u64) -> Result<Rate, String> {
        if limit == 0 || limit > u64::from(u32::MAX) {
            return Err(format!(
                "request count {limit} is out of range 1..={}",
                u32::MAX
            ));
        }
        check_seconds(window_secs).map_err(|r| format!("window: {r}"))?;
        Ok(Rate {
            limit: limit as u32,
            window: Duration::from_secs(window_secs),
        })
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.limit, self.window.as_secs())
    }
}

/// `N/SECONDS`, the proxy's `--rate-limit-base` / `--rate-limit-burst` format.
impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Rate, String> {
        let (n, secs) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected N/SECONDS, e.g. 10/10"))?;
        let limit = n
            .trim()
            .parse::<u64>()
            .map_err(|e| format!("{s:?}: request count: {e}"))?;
        let secs = secs
            .trim()
            .parse::<u64>()
            .map_err(|e| format!("{s:?}: window seconds: {e}"))?;
        Rate::new(limit, secs).map_err(|r| format!("{s:?}: {r}"))
    }
}

/// Which IP versions are limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versions {
    pub v4: bool,
    pub v6: bool,
}

impl Versions {
    /// Both: our default. Neutron's haproxy can limit only one version at a time (its default
    /// is `[4]`, and listing both disables limiting with a warning); we limit what is listed.
    pub const BOTH: Versions = Versions { v4: true, v6: true };

    /// From the items of an `ip_versions` list (`4`, `6`); empty or unknown items are errors.
    pub fn from_items<S: AsRef<str>>(items: &[S]) -> Result<Versions, String> {
        let mut v = Versions {
            v4: false,
            v6: false,
        };
        for item in items {
            match item.as_ref().trim() {
                "4" => v.v4 = true,
                "6" => v.v6 = true,
                other => return Err(format!("invalid IP version {other:?}: expected 4 and/or 6")),
            }
        }
        if !v.v4 && !v.v6 {
            return Err("no IP version given: expected 4 and/or 6".into());
        }
        Ok(v)
    }
}

impl std::fmt::Display for Versions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.v4, self.v6) {
            (true, true) => f.write_str("4,6"),
            (true, false) => f.write_str("4"),
            (false, true) => f.write_str("6"),
            (false, false) => Ok(()),
        }
    }
}

/// `4`, `6` or `4,6`: the proxy's `--rate-limit-ip-versions` format.
impl std::str::FromStr for Versions {
    type Err = String;
    fn from_str(s: &str) -> Result<Versions, String> {
        let items: Vec<&str> = s.split(',').filter(|i| !i.trim().is_empty()).collect();
        Versions::from_items(&items)
    }
}

/// Rate limiting as configured: two sliding windows per source address, as Neutron's two
/// stick tables (`base_rate_limiter`, `burst_rate_limiter`); over either gives 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub base: Rate,
    pub burst: Rate,
    pub versions: Versions,
}

/// `[metadata_rate_limiting]` keys with Neutron's defaults: (key, default).
pub const RATE_KEYS: [(&str, u64); 4] = [
    ("base_query_rate_limit", 10),
    ("base_window_duration", 10),
    ("burst_query_rate_limit", 10),
    ("burst_window_duration", 10),
];

impl RateLimit {
    /// The proxy flags that carry it.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--rate-limit-base".into(),
            self.base.to_string(),
            "--rate-limit-burst".into(),
            self.burst.to_string(),
            "--rate-limit-ip-versions".into(),
            self.versions.to_string(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_timeouts_need_no_flags() {
        assert_eq!(Timeouts::default().args(), Vec::<String>::new());
        let t = Timeouts::from_secs([30, 30, 32, 90, 30]).expect("valid");
        assert_eq!(t.args(), ["--timeout-server", "90"]);
        assert!(Timeouts::from_secs([0, 30, 32, 32, 30]).is_err());
        assert!(Timeouts::from_secs([30, 30, 32, 32, 86_401]).is_err());
    }

    #[test]
    fn rates_and_versions_round_trip_through_flags() {
        let r: Rate = "5/60".parse().expect("rate");
        assert_eq!(r.to_string(), "5/60");
        assert!("5".parse::<Rate>().is_err());
        assert!("5/0".parse::<Rate>().is_err());
        assert!("0/5".parse::<Rate>().is_err());
        assert!("5/86401".parse::<Rate>().is_err());
        for v in ["4", "6", "4,6"] {
            assert_eq!(v.parse::<Versions>().expect(v).to_string(), v);
        }
        assert_eq!("6, 4".parse::<Versions>(), Ok(Versions::BOTH));
        assert!("5".parse::<Versions>().is_err());
        assert!("".parse::<Versions>().is_err());
        let rl = RateLimit {
            base: r,
            burst: "2/1".parse().expect("rate"),
            versions: "6".parse().expect("v"),
        };
        assert_eq!(
            rl.args(),
            [
                "--rate-limit-base",
                "5/60",
                "--rate-limit-burst",
                "2/1",
                "--rate-limit-ip-versions",
                "6"
            ]
        );
    }
}
