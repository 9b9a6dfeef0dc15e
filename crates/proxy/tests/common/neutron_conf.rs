//! Neutron 29.0.0's haproxy templates, as its code holds them (tests/data/*.in: neutron/common/
//! metadata.py `METADATA_HAPROXY_GLOBAL` and `RATE_LIMITED_CONFIG_TEMPLATE`,
//! agent/metadata/driver_base.py `_UNLIMITED_CONFIG_TEMPLATE`, the ML2 and OVN
//! `_HEADER_CONFIG_TEMPLATE`s), filled in with Python's `%(name)s` rule. Shared by the unit
//! tests of the grammar (src/haproxy_tests.rs) and the integration tests.
#![allow(dead_code)]

pub const GLOBAL: &str = include_str!("../data/global.in");
pub const LISTEN: &str = include_str!("../data/listen.in");
pub const LISTEN_RATE_LIMITED: &str = include_str!("../data/listen-rate-limited.in");
pub const HEADERS_ML2: &str = include_str!("../data/headers-ml2.in");
pub const HEADERS_OVN: &str = include_str!("../data/headers-ovn.in");

/// Neutron's values for a router proxy on the l3 agent (defaults of every option).
pub const ROUTER_DEFAULTS: &[(&str, &str)] = &[
    ("log_level", "info"),
    ("user", "neutron"),
    ("group", "neutron"),
    ("timeout_http_request", "30"),
    ("timeout_connect", "30"),
    ("timeout_client", "32"),
    ("timeout_server", "32"),
    ("timeout_http_keep_alive", "30"),
    ("host", "0.0.0.0"),
    ("port", "9697"),
    ("bind_v6_line", ""),
    ("unix_socket_path", "/var/lib/neutron/metadata_proxy"),
    ("res_type_del", "Network"),
    ("res_type", "Router"),
    ("ip_version", "ip"),
    ("stick_table_expire", "10"),
    ("base_window_duration", "10"),
    ("burst_window_duration", "10"),
    ("base_query_rate_limit", "10"),
    ("burst_query_rate_limit", "10"),
];

/// The template `parts` joined and filled: `values` first, then `defaults` for the rest;
/// `%(log_tag)s` and `%(pidfile)s` follow `%(res_id)s` as Neutron derives them.
pub fn render(parts: &[&str], values: &[(&str, &str)], defaults: &[(&str, &str)]) -> String {
    let mut text = parts.concat();
    let get = |k: &str| {
        values
            .iter()
            .chain(defaults)
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    };
    let id = get("res_id").expect("res_id");
    let derived = [
        ("log_tag", format!("haproxy-metadata-proxy-{id}")),
        (
            "pidfile",
            format!("/var/lib/neutron/external/pids/{id}.pid.haproxy"),
        ),
    ];
    for (k, v) in values.iter().chain(defaults) {
        text = text.replace(&format!("%({k})s"), v);
    }
    for (k, v) in &derived {
        let v = get(k).unwrap_or_else(|| v.clone());
        text = text.replace(&format!("%({k})s"), &v);
    }
    assert!(!text.contains("%("), "a placeholder left: {text}");
    text
}
