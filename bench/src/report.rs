//! Turns the raw samples `run.sh` collects into the Markdown table and the JSON file.
//!
//! Raw format: one sample per line, `metric<TAB>variant<TAB>value`. Variants: `haproxy`,
//! `off` / `on` (ns-metadata-proxy with `--agent-keepalive off|on`), `ours` (proxies run by
//! ns-metadata-spawner), `close` / `keepalive` (agent ceiling), `dropin` (ns-metadata-proxy
//! run as `haproxy -f` by Neutron's driver, figure 8), `neutron` (Neutron 29's Southbound
//! replica, figure 9; `setup` holds that figure's database sizes). Every figure is the median
//! of its samples.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Map, Value};

mod shapes;

/// Samples keyed by metric, then variant.
pub type Samples = BTreeMap<String, BTreeMap<String, Vec<f64>>>;

/// Parse the raw sample lines; malformed lines are returned as errors with their number.
pub fn parse_raw(text: &str) -> Result<Samples, String> {
    let mut out = Samples::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split('\t');
        let (Some(metric), Some(variant), Some(value), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!(
                "line {}: expected metric<TAB>variant<TAB>value",
                i + 1
            ));
        };
        let value: f64 = value
            .trim()
            .parse()
            .map_err(|_| format!("line {}: value {value:?} is not a number", i + 1))?;
        out.entry(metric.to_owned())
            .or_default()
            .entry(variant.to_owned())
            .or_default()
            .push(value);
    }
    Ok(out)
}

/// Median (mean of the middle two for an even count); `None` for no samples.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

pub(crate) fn med(s: &Samples, metric: &str, variant: &str) -> Option<f64> {
    s.get(metric)
        .and_then(|m| m.get(variant))
        .and_then(|v| median(v))
}

/// How a value is shown.
#[derive(Clone, Copy)]
enum Unit {
    /// kB shown as MB.
    Mb,
    /// Plain count, no decimals.
    Count,
    /// One decimal.
    One,
    /// µs shown as ms with two decimals.
    UsAsMs,
}

fn fmt(v: Option<f64>, unit: Unit) -> String {
    match v {
        None => "–".to_owned(),
        Some(v) => match unit {
            Unit::Mb => format!("{:.2}", v / 1024.0),
            Unit::Count => format!("{v:.0}"),
            Unit::One => format!("{v:.1}"),
            Unit::UsAsMs => format!("{:.2}", v / 1000.0),
        },
    }
}

/// A ratio bound for a row: (reuse off bound, reuse on bound, higher is better).
type Bound = Option<(f64, f64, bool)>;

/// `ours / theirs`. With the same number of samples on both sides the samples are paired by
/// round (run.sh appends them in round order and runs the variants of a round back to back),
/// and the result is the median of the per-round ratios: background load that changes from
/// round to round then cancels instead of landing on one side. Otherwise a ratio of medians.
pub fn paired_ratio(s: &Samples, metric: &str, ours: &str, theirs: &str) -> Option<f64> {
    let m = s.get(metric)?;
    let (o, t) = (m.get(ours)?, m.get(theirs)?);
    if o.len() == t.len() && o.iter().chain(t).all(|v| *v != 0.0) {
        let ratios: Vec<f64> = o.iter().zip(t).map(|(a, b)| a / b).collect();
        median(&ratios)
    } else {
        let (o, t) = (median(o)?, median(t)?);
        (t != 0.0).then(|| o / t)
    }
}

fn ratio_of(ours: Option<f64>, theirs: Option<f64>) -> Option<f64> {
    match (ours, theirs) {
        (Some(o), Some(t)) if t != 0.0 => Some(o / t),
        _ => None,
    }
}

fn ratio_cell(ratio: Option<f64>, bound: Option<(f64, bool)>) -> String {
    match ratio {
        Some(r) => {
            let mark = match bound {
                Some((b, true)) => {
                    if r >= b {
                        " ✓"
                    } else {
                        " ✗"
                    }
                }
                Some((b, false)) => {
                    if r <= b {
                        " ✓"
                    } else {
                        " ✗"
                    }
                }
                None => "",
            };
            format!("{r:.2}×{mark}")
        }
        _ => "–".to_owned(),
    }
}

const LOADS: [(&str, &str); 4] = [
    ("ka_c32", "c32 keep-alive"),
    ("close_c32", "c32 Connection: close"),
    ("ka_c1", "c1 keep-alive"),
    ("close_c1", "c1 Connection: close"),
];

/// Render the three Markdown tables.
pub fn markdown(s: &Samples) -> String {
    let mut md = String::new();
    if !s.is_empty() && s.keys().all(|k| k.starts_with("ovn_")) {
        // `run.sh --only-ovn`: figure 9 alone.
        ovn_southbound(s, &mut md);
        return md;
    }
    if !s.is_empty() && s.keys().all(|k| k.starts_with("cold_")) {
        // `run.sh --only-cold`: figure 11 alone.
        crate::cold::markdown(s, &mut md);
        return md;
    }
    if !s.is_empty() && s.keys().all(|k| k.starts_with("sh_")) {
        // `run.sh --only-shared`: figure 14 alone.
        crate::shared::markdown(s, &mut md);
        return md;
    }
    if !s.is_empty() && s.keys().all(|k| k.starts_with("shape_")) {
        // `run.sh --only-shapes`: figure 12 alone.
        shapes::table(s, &mut md);
        return md;
    }
    if !s.is_empty() && s.keys().all(|k| k.starts_with("mx_")) {
        // `run.sh --only-metrics`: figure 13 alone.
        proxy_metrics(s, &mut md);
        return md;
    }
    let _ = writeln!(md, "### One proxy, same agent stand-in, wrk from the vm namespace (figures 1, 3; issue 8 rows)\n");
    let _ = writeln!(
        md,
        "Values are medians over rounds; a ratio is the median of the per-round ratios \
         (the variants of a round run back to back), so it can differ from dividing the columns.\n"
    );
    let _ = writeln!(md, "| figure | ours, reuse off | ours, reuse on | haproxy | ratio off | ratio on | target (off / on) |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    let row =
        |md: &mut String, label: &str, metric: &str, unit: Unit, bound: Bound, target: &str| {
            let off = med(s, metric, "off");
            let on = med(s, metric, "on");
            let h = med(s, metric, "haproxy");
            let _ = writeln!(
                md,
                "| {label} | {} | {} | {} | {} | {} | {target} |",
                fmt(off, unit),
                fmt(on, unit),
                fmt(h, unit),
                ratio_cell(
                    paired_ratio(s, metric, "off", "haproxy"),
                    bound.map(|b| (b.0, b.2))
                ),
                ratio_cell(
                    paired_ratio(s, metric, "on", "haproxy"),
                    bound.map(|b| (b.1, b.2))
                ),
            );
        };
    row(
        &mut md,
        "1 PSS idle (MB)",
        "pss_idle_kb",
        Unit::Mb,
        None,
        "",
    );
    row(
        &mut md,
        "1 RSS idle (MB)",
        "rss_idle_kb",
        Unit::Mb,
        None,
        "",
    );
    row(
        &mut md,
        "1 PSS after load (MB)",
        "pss_load_kb",
        Unit::Mb,
        None,
        "",
    );
    row(
        &mut md,
        "1 RSS after load (MB)",
        "rss_load_kb",
        Unit::Mb,
        None,
        "",
    );
    row(
        &mut md,
        "1 PSS after load + idle (MB)",
        "pss_idle30_kb",
        Unit::Mb,
        None,
        "≤ 1.5× own idle PSS",
    );
    row(
        &mut md,
        "1 RSS after load + idle (MB)",
        "rss_idle30_kb",
        Unit::Mb,
        None,
        "",
    );
    row(
        &mut md,
        "1 requests before 'after load'",
        "load_requests",
        Unit::Count,
        None,
        "≥ 1M (full run)",
    );
    for (key, name) in LOADS {
        row(
            &mut md,
            &format!("3 req/s, {name}"),
            &format!("{key}_rps"),
            Unit::Count,
            Some((1.0, 1.2, true)),
            "≥ 1.0× / ≥ 1.2×",
        );
        row(
            &mut md,
            &format!("3 p50 ms, {name}"),
            &format!("{key}_p50_us"),
            Unit::UsAsMs,
            None,
            "",
        );
        row(
            &mut md,
            &format!("3 p99 ms, {name}"),
            &format!("{key}_p99_us"),
            Unit::UsAsMs,
            None,
            "",
        );
        row(
            &mut md,
            &format!("3 proxy CPU µs/req, {name}"),
            &format!("{key}_cpu_us"),
            Unit::One,
            Some((0.9, 0.7, false)),
            "≤ 0.9× / ≤ 0.7×",
        );
        row(
            &mut md,
            &format!("3 socket errors, {name}"),
            &format!("{key}_errors"),
            Unit::Count,
            None,
            "0",
        );
        row(
            &mut md,
            &format!("3 agent stand-in CPU µs/req, {name}"),
            &format!("{key}_agent_cpu_us"),
            Unit::One,
            None,
            "",
        );
    }
    row(
        &mut md,
        "1 PSS with 2,000 open connections, idle keep-alive (MB)",
        "hold_keepalive_pss_kb",
        Unit::Mb,
        None,
        "bounded by max connections",
    );
    row(
        &mut md,
        "1 PSS with 2,000 open connections, partial heads (MB)",
        "hold_partial_pss_kb",
        Unit::Mb,
        None,
        "bounded by max connections",
    );
    row(
        &mut md,
        "1 PSS 10 s after those connections closed (MB)",
        "hold_after_pss_kb",
        Unit::Mb,
        None,
        "",
    );
    // Bytes per held connection: PSS growth over the idle PSS, per accepted (≤ 1,024) connection.
    for (mode, name) in [
        ("keepalive", "idle keep-alive"),
        ("partial", "partial heads"),
    ] {
        let per = |v: &str| {
            let held = med(s, &format!("hold_{mode}_pss_kb"), v)?;
            let idle = med(s, "pss_idle30_kb", v)?;
            let opened = med(s, &format!("hold_{mode}_opened"), v)?.min(1024.0);
            (opened > 0.0).then(|| (held - idle) * 1024.0 / opened)
        };
        let (off, on, h) = (per("off"), per("on"), per("haproxy"));
        let _ = writeln!(
            md,
            "| 1 PSS bytes per open connection, {name} | {} | {} | {} | {} | {} |  |",
            fmt(off, Unit::Count),
            fmt(on, Unit::Count),
            fmt(h, Unit::Count),
            ratio_cell(ratio_of(off, h), None),
            ratio_cell(ratio_of(on, h), None),
        );
    }
    // Own-idle check of issue 8, stated separately because its reference is not haproxy.
    for mode in ["off", "on"] {
        if let (Some(idle), Some(after)) =
            (med(s, "pss_idle_kb", mode), med(s, "pss_idle30_kb", mode))
        {
            let _ = writeln!(
                md,
                "\nReuse {mode}: PSS after load + idle / idle PSS = {:.2}× (target ≤ 1.5×){}",
                after / idle,
                if after / idle <= 1.5 { " ✓" } else { " ✗" }
            );
        }
    }

    let _ = writeln!(
        md,
        "\n### Many proxies and supervision (figures 2, 4, 5, 6)\n"
    );
    let _ = writeln!(md, "| figure | ours | haproxy | ratio | target |");
    let _ = writeln!(md, "|---|---|---|---|---|");
    let n = med(s, "n_proxies", "haproxy")
        .or(med(s, "n_proxies", "ours"))
        .unwrap_or(0.0);
    let row2 =
        |md: &mut String, label: &str, metric: &str, unit: Unit, target: &str, abs: Option<f64>| {
            let o = med(s, metric, "ours");
            let h = med(s, metric, "haproxy");
            let mark = match (o, abs) {
                (Some(o), Some(b)) => {
                    if o <= b {
                        " ✓"
                    } else {
                        " ✗"
                    }
                }
                _ => "",
            };
            let _ = writeln!(
                md,
                "| {label} | {}{mark} | {} | {} | {target} |",
                fmt(o, unit),
                fmt(h, unit),
                ratio_cell(paired_ratio(s, metric, "ours", "haproxy"), None)
            );
        };
    row2(
        &mut md,
        &format!("2 PSS sum, {n:.0} proxies (MB)"),
        "many_pss_sum_kb",
        Unit::Mb,
        "",
        None,
    );
    row2(
        &mut md,
        "2 PSS per proxy (MB)",
        "many_pss_per_kb",
        Unit::Mb,
        "≤ 0.5 MB",
        Some(512.0),
    );
    row2(
        &mut md,
        "2 RSS per proxy (MB)",
        "many_rss_per_kb",
        Unit::Mb,
        "",
        None,
    );
    row2(
        &mut md,
        "2 USS (private pages) per proxy (MB)",
        "many_uss_per_kb",
        Unit::Mb,
        "",
        None,
    );
    row2(
        &mut md,
        "2 MemAvailable drop per proxy (MB)",
        "many_memavail_per_kb",
        Unit::Mb,
        "≤ 1 MB",
        Some(1024.0),
    );
    row2(
        &mut md,
        "2 anon + kernel memory per proxy (MB)",
        "many_accounted_per_kb",
        Unit::Mb,
        "≤ 1 MB",
        Some(1024.0),
    );
    row2(
        &mut md,
        "2 spawner PSS growth per proxy (MB)",
        "spawner_growth_per_kb",
        Unit::Mb,
        "",
        None,
    );
    row2(
        &mut md,
        "2 spawner PSS (MB)",
        "spawner_pss_kb",
        Unit::Mb,
        "",
        None,
    );
    row2(
        &mut md,
        &format!("4 {n:.0} announced/started → all answering (ms)"),
        "spawn_all_ms",
        Unit::One,
        "",
        None,
    );
    row2(
        &mut md,
        "4 after the last event → all answering (ms)",
        "spawn_after_last_ms",
        Unit::One,
        "≤ 1000 ms",
        Some(1000.0),
    );
    let kill_h = "n/a: no supervisor; Neutron's monitor polls every 60 s";
    let ko = med(s, "kill_answer_ms", "ours");
    let kmark = match ko {
        Some(v) if v <= 100.0 => " ✓",
        Some(_) => " ✗",
        None => "",
    };
    let _ = writeln!(
        md,
        "| 5 kill -9 → answering, median (ms) | {}{kmark} | {kill_h} | – | ≤ 100 ms |",
        fmt(ko, Unit::One)
    );
    let _ = writeln!(
        md,
        "| 5 kill -9 → answering, max (ms) | {} | | | |",
        fmt(
            s.get("kill_answer_ms")
                .and_then(|m| m.get("ours"))
                .and_then(|v| v.iter().copied().reduce(f64::max)),
            Unit::One
        )
    );
    let fo = med(s, "restart_failed", "ours");
    let fmark = match fo {
        Some(0.0) => " ✓",
        Some(_) => " ✗",
        None => "",
    };
    let _ = writeln!(
        md,
        "| 6 failed requests across a supervisor restart | {}{fmark} of {} | n/a: no supervisor process in the request path | – | 0 |",
        fmt(fo, Unit::Count),
        fmt(med(s, "restart_total", "ours"), Unit::Count)
    );

    control_and_dropin(s, &mut md);
    proxy_metrics(s, &mut md);
    ovn_southbound(s, &mut md);
    crate::cold::markdown(s, &mut md);
    shapes::table(s, &mut md);
    crate::shared::markdown(s, &mut md);

    let _ = writeln!(
        md,
        "\n### Agent stand-in ceiling (direct Unix-socket load, one core each)\n"
    );
    let _ = writeln!(md, "| agent mode | req/s, c32 |");
    let _ = writeln!(md, "|---|---|");
    for mode in ["close", "keepalive"] {
        let _ = writeln!(
            md,
            "| {mode} | {} |",
            fmt(med(s, "agent_ceiling_rps", mode), Unit::Count)
        );
    }
    md
}

/// Figure 10 (issue #17): the same proxy with its statistics block (`--stats-fd`, "on") and
/// without ("off"), in the same run, rounds alternating; and PSS per proxy with N running
/// under the spawner with `proxy_metrics` on and off. Only when the run measured it.
fn proxy_metrics(s: &Samples, md: &mut String) {
    if !s.contains_key("mx_ka_c32_rps") && !s.contains_key("mx_many_pss_per_kb") {
        return;
    }
    let _ = writeln!(
        md,
        "\n### Proxy metrics on and off, same run (figure 13)\n\n\
         | figure | metrics on | metrics off | ratio on ÷ off | target |\n|---|---|---|---|---|"
    );
    for (key, label) in LOADS.iter().take(2) {
        let rps = format!("mx_{key}_rps");
        let _ = writeln!(
            md,
            "| 13 req/s, {label} | {} | {} | {} | ≥ 0.97× |",
            fmt(med(s, &rps, "on"), Unit::Count),
            fmt(med(s, &rps, "off"), Unit::Count),
            ratio_cell(paired_ratio(s, &rps, "on", "off"), Some((0.97, true)))
        );
        for (what, suffix, unit) in [
            ("p99 (ms)", "p99_us", Unit::UsAsMs),
            ("proxy CPU per request (µs)", "cpu_us", Unit::One),
        ] {
            let m = format!("mx_{key}_{suffix}");
            let _ = writeln!(
                md,
                "| 13 {what}, {label} | {} | {} | {} | |",
                fmt(med(s, &m, "on"), unit),
                fmt(med(s, &m, "off"), unit),
                ratio_cell(paired_ratio(s, &m, "on", "off"), None)
            );
        }
    }
    let n = med(s, "mx_many_count", "on").unwrap_or(0.0);
    let on = med(s, "mx_many_pss_per_kb", "on");
    let _ = writeln!(
        md,
        "| 13 PSS per proxy, {n:.0} running under the spawner (MB) | {}{} | {} | {} | ≤ 0.35 MB |",
        fmt(on, Unit::Mb),
        at_most(on, 350.0),
        fmt(med(s, "mx_many_pss_per_kb", "off"), Unit::Mb),
        ratio_cell(paired_ratio(s, "mx_many_pss_per_kb", "on", "off"), None)
    );
}

/// `" ✓"` / `" ✗"` for a value against an upper bound, nothing without both.
fn at_most(v: Option<f64>, bound: f64) -> &'static str {
    match v {
        Some(v) if v <= bound => " ✓",
        Some(_) => " ✗",
        None => "",
    }
}

/// Figures 7 (control API latency with many records) and 8 (the haproxy drop-in under
/// Neutron's own driver, against haproxy under the same driver). Each table only when the
/// run measured it.
fn control_and_dropin(s: &Samples, md: &mut String) {
    if s.contains_key("put_p50_ms") {
        let fill = med(s, "put_fill_n", "ours").unwrap_or(0.0);
        let total = med(s, "put_records_n", "ours").unwrap_or(0.0);
        let _ = writeln!(
            md,
            "\n### Spawner control API with {fill:.0} records (figure 7)\n"
        );
        let _ = writeln!(md, "| figure | ours | Neutron | target |");
        let _ = writeln!(md, "|---|---|---|---|");
        let na = "n/a: no control API";
        let p50 = med(s, "put_p50_ms", "ours");
        let _ = writeln!(
            md,
            "| 7 PUT latency p50, {fill:.0} records or more (ms) | {}{} | {na} | ≤ 5 ms |",
            fmt2(p50),
            at_most(p50, 5.0)
        );
        for (label, metric) in [
            ("7 PUT latency p99 (ms)", "put_p99_ms"),
            ("7 PUT latency max (ms)", "put_max_ms"),
            ("7 the fill PUTs before them, mean (ms)", "put_fill_mean_ms"),
        ] {
            let label = label.replace("fill", &format!("{fill:.0}"));
            let _ = writeln!(md, "| {label} | {} | | |", fmt2(med(s, metric, "ours")));
        }
        let _ = writeln!(
            md,
            "| 7 spawner PSS with {total:.0} records (MB) | {} | | |",
            fmt(med(s, "put_spawner_pss_kb", "ours"), Unit::Mb)
        );
    }
    if s.contains_key("dropin_pss_per_kb") || s.contains_key("dropin_spawn_answer_ms") {
        let n = med(s, "dropin_n", "dropin")
            .or(med(s, "dropin_n", "haproxy"))
            .unwrap_or(0.0);
        let _ = writeln!(
            md,
            "\n### The haproxy drop-in, started by Neutron 29's own driver (figure 8)\n"
        );
        let _ = writeln!(
            md,
            "| figure | drop-in | haproxy | ratio | target |\n|---|---|---|---|---|"
        );
        let row = |md: &mut String, label: &str, metric: &str, unit: Unit, bound: Option<f64>| {
            let d = med(s, metric, "dropin");
            let (mark, target) = match bound {
                Some(b) => (at_most(d, b), format!("≤ {:.2} MB", b / 1024.0)),
                None => ("", String::new()),
            };
            let _ = writeln!(
                md,
                "| {label} | {}{mark} | {} | {} | {target} |",
                fmt(d, unit),
                fmt(med(s, metric, "haproxy"), unit),
                ratio_cell(paired_ratio(s, metric, "dropin", "haproxy"), None)
            );
        };
        row(
            md,
            "8 Neutron's spawn_monitored_metadata_proxy returns, median (ms)",
            "dropin_spawn_call_ms",
            Unit::One,
            None,
        );
        row(
            md,
            "8 Neutron's spawn → answering, median (ms)",
            "dropin_spawn_answer_ms",
            Unit::One,
            None,
        );
        row(
            md,
            &format!("8 {n:.0} spawned one after another → all answering (ms)"),
            "dropin_all_ms",
            Unit::One,
            None,
        );
        row(
            md,
            &format!("8 PSS per proxy, {n:.0} running (MB)"),
            "dropin_pss_per_kb",
            Unit::Mb,
            Some(0.35 * 1024.0),
        );
        row(
            md,
            &format!("8 PSS sum, {n:.0} proxies (MB)"),
            "dropin_pss_sum_kb",
            Unit::Mb,
            None,
        );
        row(
            md,
            "8 RSS per proxy (MB)",
            "dropin_rss_per_kb",
            Unit::Mb,
            None,
        );
        row(
            md,
            "8 USS (private pages) per proxy (MB)",
            "dropin_uss_per_kb",
            Unit::Mb,
            None,
        );
        row(
            md,
            "8 anon + kernel memory per proxy (MB)",
            "dropin_accounted_per_kb",
            Unit::Mb,
            None,
        );
    }
}

/// Figure 9 (issue 15): our agent's OVN resolver vs Neutron 29's Southbound replica
/// (`MetadataAgentOvnSbIdl` with the metadata agent's tables and condition) on the same
/// ovsdb-server. The ratio column is Neutron ÷ ours (how many times less ours needs).
fn ovn_southbound(s: &Samples, md: &mut String) {
    if !s.contains_key("ovn_ready_ms") {
        return;
    }
    let setup = |m: &str| med(s, m, "setup").unwrap_or(0.0);
    let _ = writeln!(
        md,
        "\n### OVN Southbound with {:.0} Port_Binding rows, {:.0} bound here (figure 9)\n",
        setup("ovn_port_bindings"),
        setup("ovn_here")
    );
    let _ = writeln!(
        md,
        "Database: {:.0} Port_Binding rows ({:.0} bound to this chassis, {:.0} localport \
         metadata ports, one per network, the rest bound to {:.0} other chassis), filled in {:.1} s. \
         Ours: `ns-metadata-agent` (its conditional monitor); Neutron: Neutron 29's \
         `MetadataAgentOvnSbIdl` with its metadata agent's tables and chassis condition (full \
         replica of Port_Binding, Datapath_Binding, Encap, SB_Global). Ratio = Neutron ÷ ours.\n",
        setup("ovn_port_bindings"),
        setup("ovn_here"),
        setup("ovn_localports"),
        setup("ovn_chassis") - 1.0,
        setup("ovn_fill_s")
    );
    let _ = writeln!(
        md,
        "| figure | ours | Neutron | Neutron ÷ ours | target |\n|---|---|---|---|---|"
    );
    // `div` scales the samples (bytes to MB), `target`: Neutron ÷ ours ≥ 10×.
    let row = |md: &mut String, label: &str, metric: &str, div: f64, target: bool| {
        let v = |side: &str| med(s, metric, side).map(|v| v / div);
        let cell = |v: Option<f64>| match v {
            Some(v) if div > 1.0 => format!("{v:.2}"),
            Some(v) if v.fract() != 0.0 => format!("{v:.1}"),
            v => fmt(v, Unit::Count),
        };
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} |",
            cell(v("ours")),
            cell(v("neutron")),
            ratio_cell(
                paired_ratio(s, metric, "neutron", "ours"),
                target.then_some((10.0, true))
            ),
            if target { "≥ 10×" } else { "" }
        );
    };
    const MB_KB: f64 = 1024.0;
    const MB: f64 = 1024.0 * 1024.0;
    row(md, "9 start → ready (ms)", "ovn_ready_ms", 1.0, true);
    row(
        md,
        "9 peak RSS (VmHWM) at ready (MB)",
        "ovn_hwm_kb",
        MB_KB,
        true,
    );
    row(md, "9 RSS at ready (MB)", "ovn_rss_kb", MB_KB, false);
    row(md, "9 PSS at ready (MB)", "ovn_pss_kb", MB_KB, false);
    row(
        md,
        "9 Southbound bytes to the client, start → ready + 1 s (MB)",
        "ovn_sb_down_bytes",
        MB,
        false,
    );
    row(
        md,
        "9 Southbound bytes from the client (kB)",
        "ovn_sb_up_bytes",
        1024.0,
        false,
    );
    row(md, "9 Southbound connections", "ovn_sb_conns", 1.0, false);
    row(
        md,
        "9 ovsdb-server CPU, start → ready + 1 s (ms)",
        "ovn_server_cpu_ms",
        1.0,
        false,
    );
    let _ = writeln!(
        md,
        "| 9 Neutron: Python imports / replica load (ms) | – | {} / {} | | |",
        fmt(med(s, "ovn_neutron_import_ms", "neutron"), Unit::One),
        fmt(med(s, "ovn_neutron_replica_ms", "neutron"), Unit::One)
    );
}

fn fmt2(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.2}"))
}

/// The JSON document: metadata, every median, every paired ratio against haproxy, every sample.
pub fn json(s: &Samples, meta: &[(String, String)]) -> Value {
    let mut medians = Map::new();
    for (metric, variants) in s {
        let mut m = Map::new();
        for (variant, values) in variants {
            m.insert(variant.clone(), json!(median(values)));
        }
        medians.insert(metric.clone(), Value::Object(m));
    }
    let mut ratios = Map::new();
    for metric in s.keys() {
        let mut m = Map::new();
        for ours in ["off", "on", "ours", "dropin"] {
            if let Some(r) = paired_ratio(s, metric, ours, "haproxy") {
                m.insert(ours.to_owned(), json!(r));
            }
        }
        if !m.is_empty() {
            ratios.insert(metric.clone(), Value::Object(m));
        }
    }
    // Figure 9: Neutron ÷ ours (how many times less ours needs).
    let mut ovn = Map::new();
    for metric in s.keys().filter(|m| m.starts_with("ovn_")) {
        if let Some(r) = paired_ratio(s, metric, "neutron", "ours") {
            ovn.insert(metric.clone(), json!(r));
        }
    }
    let meta: Map<String, Value> = meta
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({ "meta": meta, "medians": medians, "ratios_vs_haproxy": ratios,
            "ratios_neutron_over_ours": ovn, "ratios_agent_shapes": shapes::ratios(s),
            "samples": s })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn raw_lines_and_errors() {
        let s =
            parse_raw("# c\nka_c32_rps\thaproxy\t100\nka_c32_rps\ton\t150\nka_c32_rps\ton\t130\n")
                .expect("valid");
        assert_eq!(med(&s, "ka_c32_rps", "on"), Some(140.0));
        assert!(parse_raw("a\tb\n").is_err());
        assert!(parse_raw("a\tb\tx\n").is_err());
    }

    #[test]
    fn ratio_pairs_rounds() {
        // Round 2 was slow for everyone: paired ratios 1.2, 1.2, 1.2 -> 1.2.
        let s = parse_raw(
            "x\thaproxy\t100\nx\thaproxy\t50\nx\thaproxy\t100\nx\ton\t120\nx\ton\t60\nx\ton\t120\n",
        )
        .expect("valid");
        let r = paired_ratio(&s, "x", "on", "haproxy").expect("ratio");
        assert!((r - 1.2).abs() < 1e-9, "{r}");
        // Unequal counts fall back to the ratio of medians.
        let s = parse_raw("x\thaproxy\t100\nx\ton\t150\nx\ton\t130\n").expect("valid");
        assert_eq!(paired_ratio(&s, "x", "on", "haproxy"), Some(1.4));
    }

    #[test]
    fn proxy_metrics_table_alone_or_in_the_full_report() {
        let s = parse_raw(
            "mx_ka_c32_rps\ton\t970\nmx_ka_c32_rps\toff\t1000\n\
             mx_many_pss_per_kb\ton\t300\nmx_many_pss_per_kb\toff\t298\nmx_many_count\ton\t200\n",
        )
        .expect("valid");
        let md = markdown(&s);
        assert!(md.contains("figure 13"), "{md}");
        assert!(!md.contains("figure 1,"), "alone: {md}");
        assert!(
            md.contains("| 13 req/s, c32 keep-alive | 970 | 1000 | 0.97× ✓ | ≥ 0.97× |"),
            "{md}"
        );
        assert!(
            md.contains("| 13 PSS per proxy, 200 running under the spawner (MB) | 0.29 ✓ | 0.29 |"),
            "{md}"
        );
        assert!(!markdown(&parse_raw("x\thaproxy\t1\n").expect("valid")).contains("figure 13"));
    }

    #[test]
    fn control_and_dropin_tables() {
        let s = parse_raw(
            "put_fill_n\tours\t5000\nput_records_n\tours\t6000\nput_p50_ms\tours\t0.8\n\
             dropin_n\tdropin\t200\ndropin_pss_per_kb\tdropin\t300\n\
             dropin_pss_per_kb\thaproxy\t3000\n",
        )
        .expect("valid");
        let md = markdown(&s);
        assert!(
            md.contains("| 7 PUT latency p50, 5000 records or more (ms) | 0.80 ✓ |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| 8 PSS per proxy, 200 running (MB) | 0.29 ✓ | 2.93 | 0.10× | ≤ 0.35 MB |"
            ),
            "{md}"
        );
        assert!(!markdown(&parse_raw("x\thaproxy\t1\n").expect("valid")).contains("figure 8"));
    }

    #[test]
    fn ovn_table() {
        let s = parse_raw(
            "ovn_port_bindings\tsetup\t50000\novn_here\tsetup\t500\n\
             ovn_ready_ms\tours\t500\novn_ready_ms\tneutron\t40000\n\
             ovn_hwm_kb\tours\t8192\novn_hwm_kb\tneutron\t40960\n\
             ovn_sb_down_bytes\tours\t1048576\novn_sb_down_bytes\tneutron\t41943040\n",
        )
        .expect("valid");
        let md = markdown(&s);
        assert!(
            md.contains("50000 Port_Binding rows, 500 bound here"),
            "{md}"
        );
        assert!(
            md.contains("| 9 start → ready (ms) | 500 | 40000 | 80.00× ✓ | ≥ 10× |"),
            "{md}"
        );
        assert!(
            md.contains("| 9 peak RSS (VmHWM) at ready (MB) | 8.00 | 40.00 | 5.00× ✗ | ≥ 10× |"),
            "{md}"
        );
        assert!(md.contains("| 1.00 | 40.00 | 40.00× |"), "{md}");
        // --only-ovn: nothing of the other figures.
        assert!(!md.contains("figures 1, 3"), "{md}");
    }

    #[test]
    fn table_shows_ratio_and_target_mark() {
        let s = parse_raw("ka_c32_rps\thaproxy\t100\nka_c32_rps\ton\t130\nka_c32_rps\toff\t90\n")
            .expect("valid");
        let md = markdown(&s);
        assert!(
            md.contains("| 3 req/s, c32 keep-alive | 90 | 130 | 100 | 0.90× ✗ | 1.30× ✓ |"),
            "{md}"
        );
    }
}
