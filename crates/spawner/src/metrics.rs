//! `GET /metrics`: the supervisor's state in Prometheus text exposition format (proxies by
//! state, records, reconcile passes, per-proxy up and restarts, agent reachability).

use std::fmt::Write as _;

use crate::agent_probe::AgentStatus;
use crate::platform::Platform;
use crate::supervisor::{State, Supervisor};

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

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
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
