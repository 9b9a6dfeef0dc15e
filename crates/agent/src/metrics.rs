//! The agent's Prometheus metrics (issue "the operator's view"): requests by who answered and
//! the status class, Nova's latency, the resolver's cache, the data generation (bumped by
//! every inventory reload or Southbound change), `build_info` and `process_*`. Served at
//! `GET /metrics` on `metrics_bind` (TCP, off by default).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ns_contract::metrics::{family, Histogram, LATENCY_BUCKETS};

/// Who answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Forwarded to Nova (its status, or 502/504 when Nova failed).
    Nova,
    /// The built-in responder.
    Builtin,
    /// No port matched the client (404), or several did.
    NotFound,
    /// The lookup could not be made (503).
    Unavailable,
    /// A malformed request from the proxy (400, 413).
    Rejected,
}

impl Answer {
    const ALL: [Answer; 5] = [
        Answer::Nova,
        Answer::Builtin,
        Answer::NotFound,
        Answer::Unavailable,
        Answer::Rejected,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Answer::Nova => "nova",
            Answer::Builtin => "builtin",
            Answer::NotFound => "not_found",
            Answer::Unavailable => "unavailable",
            Answer::Rejected => "rejected",
        }
    }
}

const CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

/// Counters updated on the request path without locks.
pub struct Metrics {
    /// [answer][status class]
    requests: [[AtomicU64; 4]; 5],
    nova: Histogram,
    /// The Southbound connection of the OVN resolver, when it is in use.
    southbound: std::sync::OnceLock<std::sync::Arc<ns_ovsdb::Client>>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            requests: Default::default(),
            nova: Histogram::new(LATENCY_BUCKETS),
            southbound: std::sync::OnceLock::new(),
        }
    }
}

impl Metrics {
    /// Count one answered request.
    pub fn answered(&self, answer: Answer, status: u16) {
        let a = Answer::ALL.iter().position(|x| *x == answer).unwrap_or(0);
        let c = usize::from((status / 100).clamp(2, 5) - 2);
        self.requests[a][c].fetch_add(1, Ordering::Relaxed);
    }

    /// Report the OVN resolver's Southbound connection from now on.
    pub fn watch_southbound(&self, client: std::sync::Arc<ns_ovsdb::Client>) {
        let _ = self.southbound.set(client);
    }

    /// How long Nova took to answer (or fail).
    pub fn nova_latency(&self, d: Duration) {
        self.nova.observe(d);
    }

    /// The Prometheus text: these counters plus the cache and data generation given.
    pub fn render(&self, cache: (u64, u64), generation: u64) -> String {
        let mut s = String::new();
        family(
            &mut s,
            "ns_metadata_agent_requests_total",
            "counter",
            "Requests answered, by who answered (nova, builtin, not_found, unavailable, rejected) and status class.",
        );
        for (a, answer) in Answer::ALL.iter().enumerate() {
            for (c, class) in CLASSES.iter().enumerate() {
                let _ = std::fmt::Write::write_fmt(
                    &mut s,
                    format_args!(
                        "ns_metadata_agent_requests_total{{answer=\"{}\",code=\"{class}\"}} {}\n",
                        answer.as_str(),
                        self.requests[a][c].load(Ordering::Relaxed)
                    ),
                );
            }
        }
        family(
            &mut s,
            "ns_metadata_agent_nova_seconds",
            "histogram",
            "Time Nova took to answer a forwarded request.",
        );
        self.nova
            .render(&mut s, "ns_metadata_agent_nova_seconds", "");
        family(
            &mut s,
            "ns_metadata_agent_lookups_total",
            "counter",
            "Instance lookups, by whether the resolver's cache answered.",
        );
        s.push_str(&format!(
            "ns_metadata_agent_lookups_total{{cache=\"hit\"}} {}\nns_metadata_agent_lookups_total{{cache=\"miss\"}} {}\n",
            cache.0, cache.1
        ));
        family(
            &mut s,
            "ns_metadata_agent_data_generation",
            "gauge",
            "Generation of the resolver's data: bumped by every inventory reload or Southbound change.",
        );
        s.push_str(&format!("ns_metadata_agent_data_generation {generation}\n"));
        if let Some(sb) = self.southbound.get() {
            let st = sb.status();
            family(
                &mut s,
                "ns_metadata_agent_southbound_up",
                "gauge",
                "1 while the OVN Southbound connection is up (answers come from the last view while it is down).",
            );
            s.push_str(&format!(
                "ns_metadata_agent_southbound_up {}\n",
                u8::from(st.connected.is_some())
            ));
            family(
                &mut s,
                "ns_metadata_agent_southbound_ready_total",
                "counter",
                "Times the Southbound view became ready: first connect, resumes and resyncs after a reconnect.",
            );
            s.push_str(&format!(
                "ns_metadata_agent_southbound_ready_total {}\n",
                st.ready_count
            ));
        }
        ns_contract::metrics::build_info(&mut s, "ns-metadata-agent", ns_contract::VERSION);
        ns_contract::metrics::process(&mut s);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_answer_and_class_in_valid_text() {
        let m = Metrics::default();
        m.answered(Answer::Nova, 200);
        m.answered(Answer::Nova, 200);
        m.answered(Answer::Nova, 502);
        m.answered(Answer::NotFound, 404);
        m.nova_latency(Duration::from_millis(3));
        let text = m.render((5, 2), 7);
        ns_contract::metrics::check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        for line in [
            "ns_metadata_agent_requests_total{answer=\"nova\",code=\"2xx\"} 2",
            "ns_metadata_agent_requests_total{answer=\"nova\",code=\"5xx\"} 1",
            "ns_metadata_agent_requests_total{answer=\"not_found\",code=\"4xx\"} 1",
            "ns_metadata_agent_nova_seconds_count 1",
            "ns_metadata_agent_lookups_total{cache=\"hit\"} 5",
            "ns_metadata_agent_data_generation 7",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
    }
}
