//! Figure 11 (issue 19): cold start of N namespaces, rendered from the raw samples.
//!
//! Samples (`metric<TAB>variant<TAB>value`, variants `ours-N` / `haproxy-N`):
//! `cold_all_ms` (start → every namespace answering), `cold_cpu_ms` (ours: the spawner's
//! user+system CPU over the start; haproxy: the starting loop's, `ip netns exec` included),
//! `cold_pss_per_kb` (ours: PSS per proxy with all N running), `cold_load1` (1-minute load
//! average when the row started).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::report::{med, paired_ratio, Samples};

fn cell(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.digits$}"))
}

/// The figure's table, or nothing without its samples.
pub fn markdown(s: &Samples, md: &mut String) {
    let Some(all) = s.get("cold_all_ms") else {
        return;
    };
    let ns: BTreeSet<u64> = all
        .keys()
        .filter_map(|v| v.split_once('-')?.1.parse().ok())
        .collect();
    let _ = writeln!(
        md,
        "\n### Cold start: N namespaces, start → every namespace answering (figure 11, issue 19)\n"
    );
    let _ = writeln!(
        md,
        "| N | ours: spawner + auto_enable_routers (s) | haproxy, Neutron's way, one after another (s) | ratio | ours per proxy (ms) | spawner CPU (s) | haproxy loop CPU (s) | ours PSS per proxy (MB) | load1 at start | target |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for n in ns {
        let (o, h) = (format!("ours-{n}"), format!("haproxy-{n}"));
        let ours = med(s, "cold_all_ms", &o);
        let target = if n == 2000 {
            match ours {
                Some(v) if v <= 10_000.0 => "≤ 10 s ✓",
                Some(_) => "≤ 10 s ✗",
                None => "≤ 10 s",
            }
        } else {
            ""
        };
        let ratio = paired_ratio(s, "cold_all_ms", &o, &h)
            .map_or_else(|| "–".to_owned(), |r| format!("{r:.2}×"));
        let _ = writeln!(
            md,
            "| {n} | {} | {} | {ratio} | {} | {} | {} | {} | {} | {target} |",
            cell(ours.map(|v| v / 1000.0), 2),
            cell(med(s, "cold_all_ms", &h).map(|v| v / 1000.0), 2),
            cell(ours.map(|v| v / n as f64), 2),
            cell(med(s, "cold_cpu_ms", &o).map(|v| v / 1000.0), 2),
            cell(med(s, "cold_cpu_ms", &h).map(|v| v / 1000.0), 2),
            cell(med(s, "cold_pss_per_kb", &o).map(|v| v / 1024.0), 2),
            cell(med(s, "cold_load1", &o), 1),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_per_n_with_ratio_and_target() {
        let raw = "cold_all_ms\tours-200\t500\ncold_all_ms\thaproxy-200\t2000\n\
                   cold_all_ms\tours-2000\t9000\ncold_all_ms\thaproxy-2000\t30000\n\
                   cold_cpu_ms\tours-2000\t4000\ncold_load1\tours-2000\t1.5\n";
        let s = crate::report::parse_raw(raw).expect("raw");
        let mut md = String::new();
        markdown(&s, &mut md);
        assert!(md.contains("| 200 | 0.50 | 2.00 | 0.25× | 2.50 |"), "{md}");
        assert!(
            md.contains("| 2000 | 9.00 | 30.00 | 0.30× | 4.50 | 4.00 |"),
            "{md}"
        );
        assert!(md.contains("≤ 10 s ✓"), "{md}");
        let mut none = String::new();
        markdown(&Samples::new(), &mut none);
        assert!(none.is_empty());
    }
}
