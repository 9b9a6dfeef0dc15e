//! Figure 14 (issue 20): the shared proxy model beside the per-namespace model and haproxy,
//! rendered from the raw samples of `bench/shared.sh`.
//!
//! Variants are `MODEL-N` with MODEL `shared`, `per-namespace` or `haproxy`. Samples:
//! `sh_start_ms` (start → every namespace answering), `sh_start_cpu_ms` (the spawner's CPU
//! over it), `sh_pss_per_ns_b` (PSS of every process of the side / N), `sh_avail_per_ns_b`
//! (MemAvailable drop / N), `sh_load1`; at the smallest N for both models of ours:
//! `sh_busy_rps` / `sh_busy_cpu_us` / `sh_busy_errors` (one namespace under wrk c32; CPU of
//! the serving process per request), `sh_quiet_idle_p99_us` / `sh_quiet_flood_p99_us` /
//! `sh_quiet_flood_errors` (wrk c1 in a quiet namespace, idle and beside a 2,000-connection
//! flood), `sh_quiet_{idle,flood}_{whole,own}_p99_us` (the same from the quiet namespace's
//! access lines: the whole answer as the proxy saw it, and the proxy's own part of it, the
//! rest being the agent's), `sh_load_load1`; in the shared side at the smallest N,
//! `sh_pair_rps` / `sh_pair_cpu_us` / `sh_pair_errors` for `shared-N` and
//! `per-namespace-N` (the busy namespace with both models at once, the runs alternating: the
//! k-th sample of one model is paired with the other's k-th); shared only, every N: `sh_kill_answer_ms` (server kill -9 →
//! namespace N answering again), `sh_kill_all_ms` (→ every namespace handed to the new
//! server, from the spawner seeing the death), `sh_kill_failed` / `sh_kill_refused` / `sh_kill_total` (a
//! request loop over 10 other namespaces meanwhile: failed, of which refused), `sh_kill_load1`.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::report::{med, median, paired_ratio, Samples};

const MODELS: [&str; 3] = ["shared", "per-namespace", "haproxy"];

fn cell(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.digits$}"))
}

fn verdict(v: Option<f64>, ok: impl Fn(f64) -> bool, target: &str) -> String {
    match v {
        Some(v) if ok(v) => format!("{target} ✓"),
        Some(_) => format!("{target} ✗"),
        None => target.to_owned(),
    }
}

/// The N of a `MODEL-N` variant.
fn n_of(variant: &str) -> Option<u64> {
    variant.rsplit_once('-')?.1.parse().ok()
}

/// The figure's tables, or nothing without its samples.
pub fn markdown(s: &Samples, md: &mut String) {
    let Some(start) = s.get("sh_start_ms") else {
        return;
    };
    let ns: BTreeSet<u64> = start.keys().filter_map(|v| n_of(v)).collect();
    let _ = writeln!(
        md,
        "\n### The shared proxy model: memory and start, N namespaces (figure 14, issue 20)\n"
    );
    let _ = writeln!(
        md,
        "| N | model | start → all answering (s) | spawner CPU (s) | PSS / N (kB) | MemAvailable drop / N (kB) | load1 at start | target |\n|---|---|---|---|---|---|---|---|"
    );
    for n in &ns {
        for m in MODELS {
            let v = format!("{m}-{n}");
            if !start.contains_key(&v) {
                continue;
            }
            let pss = med(s, "sh_pss_per_ns_b", &v).map(|b| b / 1000.0);
            let start_ms = med(s, "sh_start_ms", &v);
            let target = if m == "shared" && *n == 2000 {
                format!(
                    "{}; {}",
                    verdict(start_ms, |ms| ms <= 2000.0, "≤ 2 s"),
                    verdict(pss, |kb| kb <= 20.0, "≤ 20 kB")
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                md,
                "| {n} | {m} | {} | {} | {} | {} | {} | {target} |",
                cell(start_ms.map(|v| v / 1000.0), 2),
                cell(med(s, "sh_start_cpu_ms", &v).map(|v| v / 1000.0), 2),
                cell(pss, 1),
                cell(med(s, "sh_avail_per_ns_b", &v).map(|b| b / 1000.0), 1),
                cell(med(s, "sh_load1", &v), 1),
            );
        }
    }
    load(s, md);
}

/// Busy namespace, quiet namespace under a flood, server kill -9.
fn load(s: &Samples, md: &mut String) {
    let Some(busy) = s.get("sh_busy_rps") else {
        return;
    };
    let ns: BTreeSet<u64> = busy.keys().filter_map(|v| n_of(v)).collect();
    let _ = writeln!(
        md,
        "\n| N | model | busy namespace req/s (c32) | CPU per request (µs) | req/s shared ÷ per-namespace | quiet p99 idle (ms) | quiet p99 beside a 2,000-connection flood (ms) | flooded ÷ idle | load1 | target |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for n in ns {
        for m in ["shared", "per-namespace"] {
            let v = format!("{m}-{n}");
            if !busy.contains_key(&v) {
                continue;
            }
            let idle = med(s, "sh_quiet_idle_p99_us", &v);
            let flood = med(s, "sh_quiet_flood_p99_us", &v);
            let ratio = idle
                .zip(flood)
                .filter(|(i, _)| *i > 0.0)
                .map(|(i, f)| f / i);
            let (rps_ratio, target) = if m == "shared" {
                let r = paired_ratio(s, "sh_busy_rps", &v, &format!("per-namespace-{n}"));
                // With the pairs measured (both models at once), the busy target is judged
                // there: these two runs were a side apart.
                let busy = if pair_ratios(s, "sh_pair_rps", n).is_empty() {
                    format!("{}; ", verdict(r, |r| r >= 1.0, "≥ 1.0×"))
                } else {
                    String::new()
                };
                (
                    r,
                    format!("{busy}{}", verdict(ratio, |r| r <= 2.0, "≤ 2× idle")),
                )
            } else {
                (None, String::new())
            };
            let _ = writeln!(
                md,
                "| {n} | {m} | {} | {} | {} | {} | {} | {} | {} | {target} |",
                cell(med(s, "sh_busy_rps", &v), 0),
                cell(med(s, "sh_busy_cpu_us", &v), 1),
                rps_ratio.map_or_else(|| "–".to_owned(), |r| format!("{r:.2}×")),
                cell(idle.map(|v| v / 1000.0), 2),
                cell(flood.map(|v| v / 1000.0), 2),
                ratio.map_or_else(|| "–".to_owned(), |r| format!("{r:.2}×")),
                cell(med(s, "sh_load_load1", &v), 1),
            );
        }
    }
    quiet_at_the_proxy(s, md);
    pairs(s, md);
    let Some(kill) = s.get("sh_kill_answer_ms") else {
        return;
    };
    let _ = writeln!(
        md,
        "\n| N | shared server kill -9 → namespace N answering again (ms) | → every namespace handed over, from its death seen (ms) | connections refused meanwhile (loop over 10 other namespaces) | requests lost in flight | of | load1 | target |\n|---|---|---|---|---|---|---|---|"
    );
    let mut rows: Vec<(u64, &String)> = kill.keys().filter_map(|v| Some((n_of(v)?, v))).collect();
    rows.sort_unstable();
    for (n, v) in rows {
        let ms = med(s, "sh_kill_answer_ms", v);
        let refused = med(s, "sh_kill_refused", v);
        let lost = med(s, "sh_kill_failed", v).zip(refused).map(|(f, r)| f - r);
        let _ = writeln!(
            md,
            "| {n} | {} | {} | {} | {} | {} | {} | {}; {} |",
            cell(ms, 1),
            cell(med(s, "sh_kill_all_ms", v), 1),
            cell(refused, 0),
            cell(lost, 0),
            cell(med(s, "sh_kill_total", v), 0),
            cell(med(s, "sh_kill_load1", v), 1),
            verdict(ms, |ms| (0.0..=50.0).contains(&ms), "≤ 50 ms"),
            verdict(refused, |r| r == 0.0, "0 refused"),
        );
    }
}

/// The k-th shared sample of `metric` at N over the k-th per-namespace one, for every k
/// both have (the runs of a pair were made one after the other).
fn pair_ratios(s: &Samples, metric: &str, n: u64) -> Vec<f64> {
    let Some(m) = s.get(metric) else {
        return Vec::new();
    };
    let (Some(sh), Some(pn)) = (
        m.get(&format!("shared-{n}")),
        m.get(&format!("per-namespace-{n}")),
    ) else {
        return Vec::new();
    };
    sh.iter()
        .zip(pn)
        .filter(|(_, p)| **p != 0.0)
        .map(|(a, b)| a / b)
        .collect()
}

fn spread(v: &[f64]) -> String {
    let lo = v.iter().copied().reduce(f64::min);
    let hi = v.iter().copied().reduce(f64::max);
    match (median(v), lo, hi) {
        (Some(m), Some(lo), Some(hi)) => format!("{m:.2}× ({lo:.2}–{hi:.2})"),
        _ => "–".to_owned(),
    }
}

/// The busy namespace with both models at once: medians, and the median of the pairs'
/// ratios with their range. Targets: req/s shared ÷ per-namespace ≥ 1.0, CPU per request
/// shared ÷ per-namespace ≤ 1.0 (the "≥ 1.0×" for CPU: the shared server is no
/// costlier per request).
fn pairs(s: &Samples, md: &mut String) {
    let Some(rps) = s.get("sh_pair_rps") else {
        return;
    };
    let ns: BTreeSet<u64> = rps.keys().filter_map(|v| n_of(v)).collect();
    let _ = writeln!(
        md,
        "\n| N | pairs | busy namespace req/s, shared / per-namespace (c32, both running) | CPU per request (µs), shared / per-namespace | req/s shared ÷ per-namespace, median of pairs (range) | CPU per request shared ÷ per-namespace, median of pairs (range) | errors | target |\n|---|---|---|---|---|---|---|---|"
    );
    for n in ns {
        let (sh, pn) = (format!("shared-{n}"), format!("per-namespace-{n}"));
        let r = pair_ratios(s, "sh_pair_rps", n);
        let c = pair_ratios(s, "sh_pair_cpu_us", n);
        let errors: f64 = [&sh, &pn]
            .iter()
            .filter_map(|v| s.get("sh_pair_errors")?.get(*v))
            .flatten()
            .sum();
        let _ = writeln!(
            md,
            "| {n} | {} | {} / {} | {} / {} | {} | {} | {errors:.0} | {}; {} |",
            r.len(),
            cell(med(s, "sh_pair_rps", &sh), 0),
            cell(med(s, "sh_pair_rps", &pn), 0),
            cell(med(s, "sh_pair_cpu_us", &sh), 1),
            cell(med(s, "sh_pair_cpu_us", &pn), 1),
            spread(&r),
            spread(&c),
            verdict(median(&r), |r| r >= 1.0, "req/s ≥ 1.0×"),
            verdict(median(&c), |c| c <= 1.0, "CPU ≤ 1.0×"),
        );
    }
}

/// Where the quiet namespace's p99 goes: the same requests as the proxy's access lines saw
/// them, and the proxy's own part (the rest of the wrk figure is the client, the kernel and
/// the cores; the rest of the whole answer is the agent's).
fn quiet_at_the_proxy(s: &Samples, md: &mut String) {
    let Some(whole) = s.get("sh_quiet_flood_whole_p99_us") else {
        return;
    };
    let mut rows: Vec<(u64, &String)> = whole.keys().filter_map(|v| Some((n_of(v)?, v))).collect();
    rows.sort_unstable();
    let _ = writeln!(
        md,
        "\n| N | model | quiet p99 seen by wrk, idle → flooded (ms) | the whole answer at the proxy (access line), idle → flooded (ms) | the proxy's own part, idle → flooded (µs) |\n|---|---|---|---|---|"
    );
    let pair = |key: &str, v: &str, scale: f64, digits: usize| {
        let at = |phase: &str| med(s, &key.replace("PHASE", phase), v).map(|x| x / scale);
        format!(
            "{} → {}",
            cell(at("idle"), digits),
            cell(at("flood"), digits)
        )
    };
    for (n, v) in rows {
        let m = v.strip_suffix(&format!("-{n}")).unwrap_or(v);
        let _ = writeln!(
            md,
            "| {n} | {m} | {} | {} | {} |",
            pair("sh_quiet_PHASE_p99_us", v, 1000.0, 2),
            pair("sh_quiet_PHASE_whole_p99_us", v, 1000.0, 2),
            pair("sh_quiet_PHASE_own_p99_us", v, 1.0, 0),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_per_n_and_model_with_targets() {
        let raw = "sh_start_ms\tshared-2000\t1500\nsh_start_ms\tper-namespace-2000\t26000\n\
                   sh_start_ms\thaproxy-2000\t30000\nsh_pss_per_ns_b\tshared-2000\t25000\n\
                   sh_avail_per_ns_b\tshared-2000\t40000\nsh_load1\tshared-2000\t2.5\n\
                   sh_busy_rps\tshared-200\t12000\nsh_busy_rps\tper-namespace-200\t10000\n\
                   sh_quiet_idle_p99_us\tshared-200\t1000\nsh_quiet_flood_p99_us\tshared-200\t1500\n\
                   sh_kill_answer_ms\tshared-200\t12.5\nsh_kill_failed\tshared-200\t1\n\
                   sh_kill_refused\tshared-200\t0\nsh_kill_all_ms\tshared-200\t20.5\n\
                   sh_kill_total\tshared-200\t900\n\
                   sh_quiet_idle_whole_p99_us\tshared-200\t110\nsh_quiet_flood_whole_p99_us\tshared-200\t460\n\
                   sh_quiet_idle_own_p99_us\tshared-200\t2\nsh_quiet_flood_own_p99_us\tshared-200\t3\n";
        let s = crate::report::parse_raw(raw).expect("raw");
        let mut md = String::new();
        markdown(&s, &mut md);
        assert!(
            md.contains("| 2000 | shared | 1.50 | – | 25.0 | 40.0 | 2.5 | ≤ 2 s ✓; ≤ 20 kB ✗ |"),
            "{md}"
        );
        assert!(md.contains("| 2000 | per-namespace | 26.00 |"), "{md}");
        assert!(md.contains("| 2000 | haproxy | 30.00 |"), "{md}");
        assert!(
            md.contains("| 200 | shared | 12000 | – | 1.20× | 1.00 | 1.50 | 1.50× | – | ≥ 1.0× ✓; ≤ 2× idle ✓ |"),
            "{md}"
        );
        assert!(
            md.contains("| 200 | 12.5 | 20.5 | 0 | 1 | 900 | – | ≤ 50 ms ✓; 0 refused ✓ |"),
            "{md}"
        );
        assert!(
            md.contains("| 200 | shared | 1.00 → 1.50 | 0.11 → 0.46 | 2 → 3 |"),
            "{md}"
        );
    }

    #[test]
    fn busy_pairs_judge_the_busy_target() {
        let raw = "sh_busy_rps\tshared-200\t9000\nsh_busy_rps\tper-namespace-200\t10000\n\
                   sh_quiet_idle_p99_us\tshared-200\t1000\nsh_quiet_flood_p99_us\tshared-200\t1500\n\
                   sh_pair_rps\tshared-200\t11000\nsh_pair_rps\tper-namespace-200\t10000\n\
                   sh_pair_rps\tshared-200\t9900\nsh_pair_rps\tper-namespace-200\t11000\n\
                   sh_pair_rps\tshared-200\t10500\nsh_pair_rps\tper-namespace-200\t10000\n\
                   sh_pair_cpu_us\tshared-200\t20\nsh_pair_cpu_us\tper-namespace-200\t21\n\
                   sh_pair_cpu_us\tshared-200\t22\nsh_pair_cpu_us\tper-namespace-200\t20\n\
                   sh_pair_cpu_us\tshared-200\t20\nsh_pair_cpu_us\tper-namespace-200\t20\n\
                   sh_pair_errors\tshared-200\t0\nsh_pair_errors\tper-namespace-200\t2\n";
        let s = crate::report::parse_raw(raw).expect("raw");
        let mut md = String::new();
        load(&s, &mut md);
        // The runs a side apart keep their ratio, without a verdict on it.
        assert!(
            md.contains(
                "| 200 | shared | 9000 | – | 0.90× | 1.00 | 1.50 | 1.50× | – | ≤ 2× idle ✓ |"
            ),
            "{md}"
        );
        // Pairs 1.10, 0.90, 1.05 (median 1.05); CPU 0.95, 1.10, 1.00 (median 1.00).
        assert!(
            md.contains("| 200 | 3 | 10500 / 10000 | 20.0 / 20.0 | 1.05× (0.90–1.10) | 1.00× (0.95–1.10) | 2 | req/s ≥ 1.0× ✓; CPU ≤ 1.0× ✓ |"),
            "{md}"
        );
        let worse = raw.replace("shared-200\t11000", "shared-200\t9000");
        let mut md = String::new();
        load(&crate::report::parse_raw(&worse).expect("raw"), &mut md);
        assert!(
            md.contains("0.90× (0.90–1.05)") && md.contains("req/s ≥ 1.0× ✗"),
            "{md}"
        );
    }

    #[test]
    fn nothing_without_samples() {
        let mut md = String::new();
        markdown(&Samples::new(), &mut md);
        assert!(md.is_empty());
    }
}
