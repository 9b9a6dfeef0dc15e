//! What a proxy serves: a router, an isolated network, or an OVN network. The kind decides the
//! identity header the agent resolves with, the proxy flag, and the namespace prefix.

use crate::headers::{self, Name};
use crate::id::{validate_id, InvalidName};

/// The kind of resource a namespace belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `qrouter-<id>`, l3 agent; also a metadata network, served with its router's id.
    Router,
    /// `qdhcp-<id>`, dhcp agent, an isolated network.
    Network,
    /// `ovnmeta-<id>`, ML2/OVN's metadata agent, one per network on each compute node.
    OvnNetwork,
}

impl Kind {
    /// Every kind, in a stable order.
    pub const ALL: [Kind; 3] = [Kind::Router, Kind::Network, Kind::OvnNetwork];

    /// The header that carries the id to the agent.
    pub fn header(self) -> Name {
        match self {
            Kind::Router => headers::X_NEUTRON_ROUTER_ID,
            Kind::Network => headers::X_NEUTRON_NETWORK_ID,
            Kind::OvnNetwork => headers::X_OVN_NETWORK_ID,
        }
    }

    /// The proxy's flag that selects this kind (`--router-id ID`); the id stays in argv
    /// next to it, where Neutron's and our liveness checks look for it.
    pub fn flag(self) -> &'static str {
        match self {
            Kind::Router => "--router-id",
            Kind::Network => "--network-id",
            Kind::OvnNetwork => "--ovn-network-id",
        }
    }

    /// The INI key (and Neutron's underscore flag spelling) for the id.
    pub fn key(self) -> &'static str {
        match self {
            Kind::Router => "router_id",
            Kind::Network => "network_id",
            Kind::OvnNetwork => "ovn_network_id",
        }
    }

    /// The namespace prefix Neutron gives this kind.
    pub fn netns_prefix(self) -> &'static str {
        match self {
            Kind::Router => "qrouter-",
            Kind::Network => "qdhcp-",
            Kind::OvnNetwork => "ovnmeta-",
        }
    }

    /// A short lowercase name for logs, status and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Router => "router",
            Kind::Network => "network",
            Kind::OvnNetwork => "ovn-network",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A resource with a checked id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Resource {
    kind: Kind,
    id: String,
}

impl Resource {
    /// A resource whose id passed [`validate_id`].
    pub fn new(kind: Kind, id: impl Into<String>) -> Result<Resource, InvalidName> {
        let id = id.into();
        validate_id(&id)?;
        Ok(Resource { kind, id })
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The header line the proxy sends to the agent, e.g. `X-Neutron-Router-ID: <id>\r\n`.
    pub fn header_line(&self) -> String {
        format!("{}: {}\r\n", self.kind.header().wire, self.id)
    }

    /// The namespace Neutron would give it, e.g. `qrouter-<id>`.
    pub fn default_netns(&self) -> String {
        format!("{}{}", self.kind.netns_prefix(), self.id)
    }

    /// The proxy arguments that select it: `[--router-id, <id>]`.
    pub fn args(&self) -> [&str; 2] {
        [self.kind.flag(), &self.id]
    }
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind, self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_names() {
        let r = Resource::new(Kind::Router, "r1").expect("valid");
        assert_eq!(r.header_line(), "X-Neutron-Router-ID: r1\r\n");
        assert_eq!(r.default_netns(), "qrouter-r1");
        assert_eq!(r.args(), ["--router-id", "r1"]);
        let n = Resource::new(Kind::OvnNetwork, "n1").expect("valid");
        assert_eq!(n.header_line(), "X-OVN-Network-ID: n1\r\n");
        assert_eq!(n.default_netns(), "ovnmeta-n1");
        assert!(Resource::new(Kind::Network, "qdhcp-n1").is_err());
    }
}
