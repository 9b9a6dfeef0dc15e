//! The monitoring examples (examples/monitoring): the Grafana dashboard is valid JSON with a
//! query in every panel, the alert rules have a name and an expression each, and every metric
//! either names is one the binaries export (the names in their metrics sources), so a rename
//! breaks this test rather than an operator's alert.

use std::collections::BTreeSet;

const DASHBOARD: &str = include_str!("../../examples/monitoring/grafana-dashboard.json");
const ALERTS: &str = include_str!("../../examples/monitoring/ns-metadata-alerts.yml");
const SOURCES: [&str; 3] = [
    include_str!("../../crates/spawner/src/metrics.rs"),
    include_str!("../../crates/agent/src/metrics.rs"),
    include_str!("../../crates/contract/src/metrics.rs"),
];

/// Metric names (`ns_metadata_*`, `process_*`) in a text; histogram series reduced to their
/// family.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        let starts = (rest.starts_with("ns_metadata_") || rest.starts_with("process_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        if starts {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let name = &rest[..end];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.insert(family.to_owned());
            i += end;
        } else {
            i += rest.chars().next().map_or(1, char::len_utf8);
        }
    }
    out
}

fn exported() -> BTreeSet<String> {
    SOURCES.iter().flat_map(|s| metric_names(s)).collect()
}

#[test]
fn dashboard_queries_name_exported_metrics() {
    let d: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard is JSON");
    let panels = d["panels"].as_array().expect("panels");
    assert!(panels.len() >= 5, "{} panels", panels.len());
    let known = exported();
    for p in panels {
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            let used = metric_names(expr);
            assert!(!used.is_empty(), "{expr}");
            for m in used {
                assert!(
                    known.contains(&m),
                    "{m} (panel {}) is not exported",
                    p["title"]
                );
            }
        }
    }
}

#[test]
fn alert_rules_name_exported_metrics() {
    let known = exported();
    let alerts: Vec<&str> = ALERTS
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 6, "{alerts:?}");
    // Each rule's text runs from its `- alert:` to the next one.
    let rules: Vec<&str> = ALERTS.split("- alert: ").skip(1).collect();
    assert_eq!(rules.len(), alerts.len());
    for r in rules {
        let name = r.lines().next().unwrap_or_default();
        assert!(r.contains("expr:"), "{name} has no expr");
        let used = metric_names(r.split("annotations:").next().unwrap_or(r));
        assert!(!used.is_empty(), "{name}");
        for m in used {
            assert!(known.contains(&m), "{m} (alert {name}) is not exported");
        }
    }
    for needed in [
        "NsMetadataProxyDown",
        "NsMetadataProxyRestarting",
        "NsMetadataAgent5xxRatio",
        "NsMetadataNovaErrors",
        "NsMetadataProxy5xxRatio",
        "NsMetadataProxy5xxRatioByKind",
    ] {
        assert!(alerts.contains(&needed), "{needed}");
    }
    // Issue #17: the proxies' 5xx ratio per namespace and per kind, on their own counters.
    let rule = |name: &str| {
        ALERTS
            .split("- alert: ")
            .find(|r| r.lines().next() == Some(name))
            .unwrap_or_default()
    };
    assert!(rule("NsMetadataProxy5xxRatio").contains("by (instance, netns, kind, id)"));
    assert!(rule("NsMetadataProxy5xxRatioByKind").contains("by (instance, kind)"));
}

#[test]
fn the_dashboard_shows_the_proxies_counters() {
    let d: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard is JSON");
    let exprs: Vec<String> = d["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    for m in [
        "ns_metadata_proxy_requests_total",
        "ns_metadata_proxy_errors_total",
        "ns_metadata_proxy_request_duration_seconds",
        "ns_metadata_proxy_connections_open",
        "ns_metadata_proxy_agent_connections_total",
    ] {
        assert!(used.contains(m), "no panel shows {m}");
    }
}

#[test]
fn an_unexported_name_is_caught() {
    assert!(!exported().contains("ns_metadata_no_such_metric"));
    assert!(exported().contains("ns_metadata_proxy_up"));
    assert!(exported().contains("ns_metadata_agent_nova_seconds"));
}
