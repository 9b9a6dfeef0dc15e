//! Header names of the proxy–agent–Nova contract, and the rule for which client headers are
//! identity headers (never forwarded, LP#1865036).

/// A header name in two spellings: `wire` as we write it (Neutron's casing, which the logs and
/// the tests of Neutron's agent show) and `lower` for hyper's `HeaderName::from_static` and for
/// comparisons. A unit test keeps them in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Name {
    pub wire: &'static str,
    pub lower: &'static str,
}

impl Name {
    /// Whether `name` is this header, ignoring ASCII case.
    pub fn is(&self, name: &str) -> bool {
        name.eq_ignore_ascii_case(self.lower)
    }
}

/// The VM's address, set by the proxy from the TCP peer.
pub const X_FORWARDED_FOR: Name = Name {
    wire: "X-Forwarded-For",
    lower: "x-forwarded-for",
};
/// The router whose namespace the request came through (l3 agent; metadata network).
pub const X_NEUTRON_ROUTER_ID: Name = Name {
    wire: "X-Neutron-Router-ID",
    lower: "x-neutron-router-id",
};
/// The isolated network whose `qdhcp-` namespace the request came through (dhcp agent).
pub const X_NEUTRON_NETWORK_ID: Name = Name {
    wire: "X-Neutron-Network-ID",
    lower: "x-neutron-network-id",
};
/// The network whose `ovnmeta-` namespace the request came through (ML2/OVN).
pub const X_OVN_NETWORK_ID: Name = Name {
    wire: "X-OVN-Network-ID",
    lower: "x-ovn-network-id",
};
/// Set by the agent for Nova: the resolved instance.
pub const X_INSTANCE_ID: Name = Name {
    wire: "X-Instance-ID",
    lower: "x-instance-id",
};
/// Set by the agent for Nova: lowercase hex HMAC-SHA256 of the instance id with the shared
/// secret (`metadata_proxy_shared_secret`).
pub const X_INSTANCE_ID_SIGNATURE: Name = Name {
    wire: "X-Instance-ID-Signature",
    lower: "x-instance-id-signature",
};
/// Set by the agent for Nova: the instance's project.
pub const X_TENANT_ID: Name = Name {
    wire: "X-Tenant-ID",
    lower: "x-tenant-id",
};

/// Set by the proxy (value [`CLIENT_FORWARDED_VALUE`]) when the VM's request carried an
/// `X-Forwarded-For` of its own, in any spelling: the request came through a reverse proxy
/// inside the guest. The proxy replaces the guest's `X-Forwarded-For` with the TCP peer, so
/// without this mark the agent could not apply AWS's IMDSv2 anti-SSRF rule (a token `PUT`
/// that carries `X-Forwarded-For` is refused with 403). An identity header: a copy sent by
/// the VM is stripped like the others, so only the proxy can set it.
pub const X_NS_METADATA_CLIENT_FORWARDED: Name = Name {
    wire: "X-NS-Metadata-Client-Forwarded",
    lower: "x-ns-metadata-client-forwarded",
};
/// The value the proxy writes in [`X_NS_METADATA_CLIENT_FORWARDED`].
pub const CLIENT_FORWARDED_VALUE: &str = "1";

/// Every header that carries identity between proxy, agent and Nova. A VM that sends one could
/// pose as another instance, so the proxy drops each of them from client requests, in any
/// spelling, before adding its own (LP#1865036).
pub const IDENTITY: [Name; 8] = [
    X_FORWARDED_FOR,
    X_NEUTRON_ROUTER_ID,
    X_NEUTRON_NETWORK_ID,
    X_OVN_NETWORK_ID,
    X_INSTANCE_ID,
    X_INSTANCE_ID_SIGNATURE,
    X_TENANT_ID,
    X_NS_METADATA_CLIENT_FORWARDED,
];

/// Whether a client header is an identity header. Compared ignoring case and with `_` taken as
/// `-`: WSGI servers (the Python side of Neutron's agent) turn `X-Forwarded-For` and
/// `X_Forwarded_For` into the same environ key `HTTP_X_FORWARDED_FOR`, so the underscore
/// spelling would spoof the identity as well.
pub fn is_identity(name: &str) -> bool {
    IDENTITY.iter().any(|h| eq_wsgi(name, h.lower))
}

/// Header names equal ignoring ASCII case, with `_` and `-` alike (the WSGI view).
pub fn eq_wsgi(a: &str, b: &str) -> bool {
    let norm = |c: u8| {
        if c == b'_' {
            b'-'
        } else {
            c.to_ascii_lowercase()
        }
    };
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| norm(x) == norm(y))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Kind;

    #[test]
    fn spellings_agree() {
        for h in IDENTITY.iter().chain([&crate::keepalive::HEADER]) {
            assert_eq!(h.lower, h.wire.to_ascii_lowercase());
        }
    }

    #[test]
    fn every_resource_header_is_an_identity_header() {
        for k in Kind::ALL {
            assert!(IDENTITY.contains(&k.header()), "{k:?}");
        }
    }

    #[test]
    fn identity_in_any_spelling() {
        for n in [
            "x-forwarded-for",
            "X_FORWARDED_FOR",
            "X-Neutron-Router_ID",
            "x-ovn-network-id",
            "X-Tenant-Id",
            "X_NS_Metadata_Client_Forwarded",
            "x-ns-metadata-client-forwarded",
        ] {
            assert!(is_identity(n), "{n}");
        }
        for n in ["x-forwarded-host", "forwarded", "x-instance", "host"] {
            assert!(!is_identity(n), "{n}");
        }
    }
}
