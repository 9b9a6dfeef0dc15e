//! `GET /metrics`: the supervisor's state in Prometheus text exposition format (proxies by
//! state, records, reconcile passes, per-proxy up and restarts, agent reachability, the
//! shared server in the shared model, hangs) and what
//! the proxies counted in their statistics blocks (requests by class, errors by code,
//! connections, agent pool reuse, latency per kind).

use std::fmt::Write as _;

use crate::agent_probe::AgentStatus;
use crate::platform::Platform;
use crate::proxy_stats::Snapshot;
use crate::status::ProxyStatus;
use crate::supervisor::{State, Supervisor};

use ns_contract::metrics::label;

/// Prometheus text of the supervisor's state, with the agent as just probed.
pub fn render<P: Platform>(sup: &Supervisor<P>, agent: &AgentStatus) -> String {
    let status = sup.status();
    let rec = sup.records();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# HELP ns_metadata_proxies Proxies by state.\n# TYPE ns_metadata_proxies gauge"
    );
    for state in State::ALL {
        let n = status.iter().filter(|p| p.state == state).count();
        let _ = writeln!(s, "ns_metadata_proxies{{state=\"{}\"}} {n}", state.as_str());
    }
    let _ = writeln!(
        s,
        "# HELP ns_metadata_records Records known, by kind.\n# TYPE ns_metadata_records gauge"
    );
    let _ = writeln!(
        s,
        "ns_metadata_records{{kind=\"router\"}} {}",
        rec.routers().len()
    );
    let _ = writeln!(
        s,
        "ns_metadata_records{{kind=\"network\"}} {}",
        rec.networks().len()
    );
    let _ = writeln!(
        s,
        "ns_metadata_records{{kind=\"{}\"}} {}",
        ns_contract::Kind::OvnNetwork.as_str(),
        rec.ovn_networks.len()
    );
    let _ = writeln!(s, "# HELP ns_metadata_reconciles_total Reconcile passes.\n# TYPE ns_metadata_reconciles_total counter");
    let _ = writeln!(s, "ns_metadata_reconciles_total {}", sup.reconcile_count());
    let _ = writeln!(
        s,
        "# HELP ns_metadata_agent_up 1 if the agent socket accepts connections.\n# TYPE ns_metadata_agent_up gauge"
    );
    let _ = writeln!(
        s,
        "ns_metadata_agent_up{{socket=\"{}\"}} {}",
        label(&agent.socket.display().to_string()),
        u8::from(agent.reachable)
    );
    let _ = writeln!(
        s,
        "# HELP ns_metadata_proxy_up 1 if the proxy is running.\n# TYPE ns_metadata_proxy_up gauge"
    );
    for p in &status {
        let _ = writeln!(
            s,
            "ns_metadata_proxy_up{{key=\"{}\",netns=\"{}\",id=\"{}\"}} {}",
            label(&p.key),
            label(&p.netns),
            label(&p.id),
            u8::from(p.state == State::Running)
        );
    }
    let _ = writeln!(
        s,
        "# HELP ns_metadata_proxy_restarts_total Restarts of the proxy since the supervisor started.\n\
         # TYPE ns_metadata_proxy_restarts_total counter"
    );
    for p in &status {
        let _ = writeln!(
            s,
            "ns_metadata_proxy_restarts_total{{key=\"{}\",netns=\"{}\"}} {}",
            label(&p.key),
            label(&p.netns),
            p.restarts
        );
    }
    let cfg = sup.config();
    if cfg.proxy_model == crate::config::ProxyModel::Shared {
        let _ = writeln!(
            s,
            "# HELP ns_metadata_shared_server_up 1 if the shared proxy server (shard) is up and \
             serving (proxy_model = shared).\n# TYPE ns_metadata_shared_server_up gauge\n\
             # HELP ns_metadata_shared_server_namespaces Namespaces handed to the shared proxy \
             server (shard).\n# TYPE ns_metadata_shared_server_namespaces gauge\n\
             # HELP ns_metadata_shared_server_restarts_total Deaths and failed starts of the \
             shared proxy server (shard) since this supervisor started.\n\
             # TYPE ns_metadata_shared_server_restarts_total counter"
        );
        for st in sup.servers() {
            let shard = st.shard;
            let up = u8::from(st.pid.is_some());
            let _ = writeln!(
                s,
                "ns_metadata_shared_server_up{{shard=\"{shard}\"}} {up}\n\
                 ns_metadata_shared_server_namespaces{{shard=\"{shard}\"}} {}\n\
                 ns_metadata_shared_server_restarts_total{{shard=\"{shard}\"}} {}",
                st.namespaces, st.restarts
            );
        }
    }
    hangs(&mut s, cfg.proxy_model);
    if cfg.proxy_metrics {
        let keys: Vec<(String, ns_contract::Kind)> =
            status.iter().map(|p| (p.key.clone(), p.kind)).collect();
        let snap = crate::proxy_stats::read(&cfg.stats_dir(), &keys);
        proxy_counters(&mut s, &status, &snap);
    }
    ns_contract::metrics::build_info(&mut s, "ns-metadata-spawner", crate::VERSION);
    ns_contract::metrics::process(&mut s);
    s
}

/// `ns_metadata_hangs_total{model,kind}` (`crate::hang`): per-namespace proxies by kind, and
/// the shared servers when that is the model.
fn hangs(s: &mut String, model: crate::config::ProxyModel) {
    use crate::hang::{hangs, Hung};
    let _ = writeln!(
        s,
        "# HELP ns_metadata_hangs_total Proxies and shared servers killed and replaced because \
         their heartbeat stopped for longer than hang_timeout, since this supervisor started.\n\
         # TYPE ns_metadata_hangs_total counter"
    );
    for k in ns_contract::Kind::ALL {
        let _ = writeln!(
            s,
            "ns_metadata_hangs_total{{model=\"per-namespace\",kind=\"{}\"}} {}",
            k.as_str(),
            hangs(Hung::Proxy(k))
        );
    }
    if model == crate::config::ProxyModel::Shared {
        let _ = writeln!(
            s,
            "ns_metadata_hangs_total{{model=\"shared\",kind=\"server\"}} {}",
            hangs(Hung::SharedServer)
        );
    }
}

/// A family of per-namespace series: name, type, help, and each series' extra labels and slot.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    Vec<(String, usize)>,
);

/// What the proxies counted in their statistics blocks ([`crate::proxy_stats`]): counters
/// per namespace (`netns`, `kind`, `id`), the latency histogram per kind, so 2,000 namespaces
/// stay about 17 series each.
fn proxy_counters(s: &mut String, status: &[ProxyStatus], snap: &Snapshot) {
    use ns_contract::metrics::{family, LATENCY_BUCKETS};
    use ns_contract::proxy_stats as l;
    let rows: Vec<(String, &[u64; l::SLOTS])> = status
        .iter()
        .filter_map(|p| {
            let v = snap.per_key.get(&p.key)?;
            let labels = format!(
                "netns=\"{}\",kind=\"{}\",id=\"{}\"",
                label(&p.netns),
                p.kind.as_str(),
                label(&p.id)
            );
            Some((labels, v))
        })
        .collect();
    let classes: Vec<(String, usize)> = l::CLASSES
        .iter()
        .enumerate()
        .map(|(i, c)| (format!(",class=\"{c}\""), l::SLOT_CLASS + i))
        .collect();
    let codes: Vec<(String, usize)> = l::ERROR_CODES
        .iter()
        .enumerate()
        .map(|(i, c)| (format!(",code=\"{c}\""), l::SLOT_ERROR + i))
        .collect();
    let one = |slot: usize| vec![(String::new(), slot)];
    let pools = vec![
        (",pool=\"new\"".to_owned(), l::SLOT_AGENT_NEW),
        (",pool=\"reused\"".to_owned(), l::SLOT_AGENT_REUSED),
    ];
    let families: [Family; 5] = [
        ("ns_metadata_proxy_requests_total", "counter",
         "Requests answered by the proxy, by status class (cumulative across proxy restarts).", classes),
        ("ns_metadata_proxy_errors_total", "counter",
         "The proxy's own error answers by code: 400/408/413/431 bad requests, 429 rate limited, 502/503/504 agent failures.", codes),
        ("ns_metadata_proxy_connections_accepted_total", "counter",
         "Client connections accepted.", one(l::SLOT_CONN_ACCEPTED)),
        ("ns_metadata_proxy_connections_open", "gauge",
         "Client connections open now.", one(l::SLOT_CONN_OPEN)),
        ("ns_metadata_proxy_agent_connections_total", "counter",
         "Requests sent to the agent on a new connection (pool=\"new\") or a pooled keep-alive one (pool=\"reused\").", pools),
    ];
    for (name, kind, help, series) in &families {
        family(s, name, kind, help);
        for (lb, v) in &rows {
            for (extra, slot) in series {
                let _ = writeln!(s, "{name}{{{lb}{extra}}} {}", v[*slot]);
            }
        }
    }
    family(
        s,
        "ns_metadata_proxy_request_duration_seconds",
        "histogram",
        "Time from a request's first byte to its answer written, every proxy of a kind together.",
    );
    for (kind, v) in &snap.per_kind {
        let mut total = 0u64;
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            total = total.saturating_add(v[l::SLOT_LATENCY + i]);
            let _ = writeln!(
                s,
                "ns_metadata_proxy_request_duration_seconds_bucket{{kind=\"{kind}\",le=\"{b}\"}} {total}"
            );
        }
        total = total.saturating_add(v[l::SLOT_LATENCY + LATENCY_BUCKETS.len()]);
        let _ = writeln!(
            s,
            "ns_metadata_proxy_request_duration_seconds_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {total}"
        );
        let _ = writeln!(
            s,
            "ns_metadata_proxy_request_duration_seconds_sum{{kind=\"{kind}\"}} {}",
            v[l::SLOT_LATENCY_SUM_US] as f64 / 1e6
        );
        let _ = writeln!(
            s,
            "ns_metadata_proxy_request_duration_seconds_count{{kind=\"{kind}\"}} {total}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_supervisors_metrics_are_valid_exposition_text() {
        use crate::records::{Records, Router};
        let dir = std::env::temp_dir().join(format!("spawner-metrics-{}", std::process::id()));
        let mut cfg = crate::config::Config::defaults().with_overrides(Some(&dir), None);
        cfg.proxy_binary = "/nonexistent".into();
        let mut records = Records::default();
        for id in ["r1", "r\"2"] {
            let r = Router {
                id: id.into(),
                netns: Some(format!("missing-{id}")),
                ha_state: None,
                distributed: false,
            };
            records.api_routers.insert(r.id.clone(), r);
        }
        let sup = crate::supervisor::Supervisor::new(crate::platform::Host, cfg, records);
        let agent = AgentStatus {
            socket: "/run/a\"b.sock".into(),
            reachable: false,
            error: Some("socket missing".into()),
        };
        // Waiting proxies (no such namespace) are listed after a pass.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(sup.reconcile());
        // One proxy's block with known counts.
        use ns_contract::proxy_stats as l;
        let fd = crate::proxy_stats::for_start(&sup.config().stats_dir(), "r1").expect("block");
        let w = ns_netns::SharedCounters::map(&std::fs::File::from(fd), l::SLOTS).expect("map");
        w.add(l::class_slot(200), 3);
        w.add(l::class_slot(429), 1);
        w.add(l::error_slot(429).expect("429"), 1);
        w.add(l::latency_slot(2_000), 4);
        w.add(l::SLOT_LATENCY_SUM_US, 8_000);
        let text = render(&sup, &agent);
        ns_contract::metrics::check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let r1 = "netns=\"missing-r1\",kind=\"router\",id=\"r1\"";
        for line in [
            format!("ns_metadata_proxy_requests_total{{{r1},class=\"2xx\"}} 3"),
            format!("ns_metadata_proxy_requests_total{{{r1},class=\"4xx\"}} 1"),
            format!("ns_metadata_proxy_errors_total{{{r1},code=\"429\"}} 1"),
            format!("ns_metadata_proxy_errors_total{{{r1},code=\"502\"}} 0"),
            "ns_metadata_proxy_request_duration_seconds_bucket{kind=\"router\",le=\"0.001\"} 0"
                .to_owned(),
            "ns_metadata_proxy_request_duration_seconds_bucket{kind=\"router\",le=\"0.0025\"} 4"
                .to_owned(),
            "ns_metadata_proxy_request_duration_seconds_count{kind=\"router\"} 4".to_owned(),
            "ns_metadata_proxy_request_duration_seconds_sum{kind=\"router\"} 0.008".to_owned(),
        ] {
            assert!(text.contains(&line), "{line}\n{text}");
        }
        // A hostile proxy writes the largest numbers everywhere, then goes back to small
        // ones: the text stays valid, nothing panics, no counter goes down.
        for i in 1..l::SLOTS {
            w.store(i, u64::MAX);
        }
        let text = render(&sup, &agent);
        ns_contract::metrics::check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let inf = "ns_metadata_proxy_request_duration_seconds_bucket{kind=\"router\",le=\"+Inf\"}";
        assert!(text.contains(&format!("{inf} {}", u64::MAX)), "{text}");
        for i in 1..l::SLOTS {
            w.store(i, 1);
        }
        let text = render(&sup, &agent);
        ns_contract::metrics::check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(
            text.contains(&format!(
                "ns_metadata_proxy_requests_total{{{r1},class=\"2xx\"}} {}",
                u64::MAX
            )),
            "saturated, never lower: {text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            text.contains("ns_metadata_build_info{binary=\"ns-metadata-spawner\""),
            "{text}"
        );
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.contains("socket=\"/run/a\\\"b.sock\""), "{text}");
    }
}
