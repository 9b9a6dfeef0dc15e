//! `GET /metrics`: the supervisor's state in Prometheus text exposition format (proxies by
//! state, records, reconcile passes, per-proxy up and restarts, agent reachability).

use std::fmt::Write as _;

use crate::agent_probe::AgentStatus;
use crate::platform::Platform;
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
    ns_contract::metrics::build_info(&mut s, "ns-metadata-spawner", crate::VERSION);
    ns_contract::metrics::process(&mut s);
    s
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
        let text = render(&sup, &agent);
        ns_contract::metrics::check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(
            text.contains("ns_metadata_build_info{binary=\"ns-metadata-spawner\""),
            "{text}"
        );
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.contains("socket=\"/run/a\\\"b.sock\""), "{text}");
    }
}
