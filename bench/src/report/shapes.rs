//! Figure 12 (issue 19): one proxy in front of each agent shape, ours against haproxy with
//! and without its log lines, req/s and CPU per request, all in the same run.
//!
//! Metrics `shape_<agent>_<load>_<what>`; agents `close` (the stand-in in close mode, like
//! Neutron's agent) and `nginx` (a plain keep-alive HTTP/1.1 server that never advertises
//! reuse); variants `off` and `auto` (ns-metadata-proxy `--agent-keepalive`), `haproxy`
//! (Neutron's template as rendered, with its `log` lines) and `haproxy_nolog` (the same
//! without them).

use std::fmt::Write as _;

use serde_json::{json, Map, Value};

use super::{fmt, med, paired_ratio, ratio_cell, Samples, Unit};

/// The agent shapes, in table order.
pub const AGENTS: [(&str, &str); 2] = [
    ("close", "stand-in, close mode (Neutron-like)"),
    ("nginx", "nginx, keep-alive without reuse advertisement"),
];
const LOADS: [(&str, &str); 2] = [
    ("ka_c32", "c32 keep-alive"),
    ("close_c32", "c32 Connection: close"),
];
/// (what, label, target for ours ÷ haproxy, higher is better)
const WHATS: [(&str, &str, f64, bool); 3] = [
    ("rps", "req/s", 1.0, true),
    ("cpu_us", "proxy CPU µs/req", 0.9, false),
    ("agent_cpu_us", "agent CPU µs/req", 0.0, false),
];
const OURS: [&str; 2] = ["off", "auto"];
const THEIRS: [&str; 2] = ["haproxy", "haproxy_nolog"];

fn key(agent: &str, load: &str, what: &str) -> String {
    format!("shape_{agent}_{load}_{what}")
}

/// The figure's table, when the run measured it.
pub fn table(s: &Samples, md: &mut String) {
    if !s.keys().any(|k| k.starts_with("shape_")) {
        return;
    }
    let _ = writeln!(
        md,
        "\n### Agent shapes: one proxy each, same agent per shape, wrk -t2 -c32 from the vm namespace (figure 12, issue 19)\n"
    );
    let _ = writeln!(md, "haproxy = Neutron's template as rendered (`log /dev/log`, `option httplog`); no log = the same without its `log` lines. Ratios: ours ÷ haproxy, paired per round; targets ≥ 1.0× req/s, ≤ 0.9× proxy CPU per request.\n");
    let _ = writeln!(md, "| agent | load | figure | ours off | ours auto | haproxy | haproxy, no log | off ÷ haproxy | off ÷ no log | auto ÷ haproxy | auto ÷ no log |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    for (agent, alabel) in AGENTS {
        for (load, llabel) in LOADS {
            for (what, wlabel, bound, higher) in WHATS {
                let k = key(agent, load, what);
                if !s.contains_key(&k) {
                    continue;
                }
                let unit = if what == "rps" {
                    Unit::Count
                } else {
                    Unit::One
                };
                let mut row = format!("| {alabel} | {llabel} | {wlabel} |");
                for v in OURS.iter().chain(&THEIRS) {
                    let _ = write!(row, " {} |", fmt(med(s, &k, v), unit));
                }
                let b = (bound > 0.0).then_some((bound, higher));
                for o in OURS {
                    for t in THEIRS {
                        let _ = write!(row, " {} |", ratio_cell(paired_ratio(s, &k, o, t), b));
                    }
                }
                let _ = writeln!(md, "{row}");
            }
            let e = key(agent, load, "errors");
            let errs: Vec<String> = OURS
                .iter()
                .chain(&THEIRS)
                .map(|v| fmt(med(s, &e, v), Unit::Count))
                .collect();
            if errs.iter().any(|x| x != "0" && x != "–") {
                let _ = writeln!(
                    md,
                    "| {alabel} | {llabel} | socket errors | {} | | | | |",
                    errs.join(" | ")
                );
            }
        }
    }
    if let Some(l) = s.get("shape_load1").and_then(|m| m.get("run")) {
        let lo = l.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let _ = writeln!(
            md,
            "\n1-minute load average after each wrk run: median {}, {lo:.2}–{hi:.2}.",
            fmt(med(s, "shape_load1", "run"), Unit::One)
        );
    }
    if let Some(skip) = s.get("shape_skipped").and_then(|m| m.get("nginx")) {
        if !skip.is_empty() {
            let _ = writeln!(md, "\nnginx: skipped: no nginx");
        }
    }
}

/// Every paired ratio of the figure: metric → "ours/theirs" → ratio.
pub fn ratios(s: &Samples) -> Value {
    let mut out = Map::new();
    for metric in s.keys().filter(|k| k.starts_with("shape_")) {
        let mut m = Map::new();
        for o in OURS {
            for t in THEIRS {
                if let Some(r) = paired_ratio(s, metric, o, t) {
                    m.insert(format!("{o}/{t}"), json!(r));
                }
            }
        }
        if !m.is_empty() {
            out.insert(metric.clone(), Value::Object(m));
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::super::parse_raw;
    use super::*;

    #[test]
    fn table_pairs_ours_with_both_haproxies() {
        let s = parse_raw(
            "shape_nginx_ka_c32_rps\toff\t110\nshape_nginx_ka_c32_rps\thaproxy\t100\n\
             shape_nginx_ka_c32_rps\thaproxy_nolog\t120\nshape_nginx_ka_c32_cpu_us\toff\t8\n\
             shape_nginx_ka_c32_cpu_us\thaproxy_nolog\t10\nshape_load1\trun\t2.5\n",
        )
        .expect("raw");
        let mut md = String::new();
        table(&s, &mut md);
        assert!(md.contains("| 1.10× ✓ | 0.92× ✗ |"), "{md}");
        assert!(md.contains("| – | 0.80× ✓ |"), "{md}");
        assert!(md.contains("median 2.5, 2.50–2.50"), "{md}");
        let r = ratios(&s);
        assert_eq!(r["shape_nginx_ka_c32_rps"]["off/haproxy"], json!(1.1));
    }
}
