//! Agent connection reuse between proxy and agent: the proxy's mode and the agent's signal.
//! Neutron's agent reads one request per connection and ignores a second one, so reuse is
//! only safe with an agent that says it keeps connections open (ours does, with [`HEADER`]).

use crate::headers::Name;

/// Sent by our agent on every answer when it keeps the connection open:
/// `X-NS-Metadata-Keepalive: <idle seconds>`. Stripped from client requests like the
/// hop-by-hop headers, and never relayed to the VM.
pub const HEADER: Name = Name {
    wire: "X-NS-Metadata-Keepalive",
    lower: "x-ns-metadata-keepalive",
};

/// How the proxy reuses agent connections (`--agent-keepalive`, `agent_keepalive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeepaliveMode {
    /// One request per connection (what Neutron's agent handles).
    Off,
    /// Pool connections whose response did not say `Connection: close`.
    On,
    /// Pool only connections whose response carried [`HEADER`].
    #[default]
    Auto,
}

impl KeepaliveMode {
    /// Every mode with its name, for option tables and help text.
    pub const CHOICES: [(&'static str, KeepaliveMode); 3] = [
        ("off", KeepaliveMode::Off),
        ("on", KeepaliveMode::On),
        ("auto", KeepaliveMode::Auto),
    ];

    /// The flag and INI value.
    pub fn as_str(self) -> &'static str {
        match self {
            KeepaliveMode::Off => "off",
            KeepaliveMode::On => "on",
            KeepaliveMode::Auto => "auto",
        }
    }
}

impl std::fmt::Display for KeepaliveMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for KeepaliveMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let v = s.trim().to_ascii_lowercase();
        Self::CHOICES
            .iter()
            .find(|(n, _)| *n == v)
            .map(|(_, m)| *m)
            .ok_or_else(|| format!("invalid value {s:?}: expected off, on or auto"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for (name, m) in KeepaliveMode::CHOICES {
            assert_eq!(name.parse::<KeepaliveMode>(), Ok(m));
            assert_eq!(m.as_str(), name);
        }
        assert_eq!(" AUTO ".parse::<KeepaliveMode>(), Ok(KeepaliveMode::Auto));
        assert!("maybe".parse::<KeepaliveMode>().is_err());
    }
}
