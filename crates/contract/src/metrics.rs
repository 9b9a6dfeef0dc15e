//! What every binary's Prometheus text shares: the exposition format's escaping, a
//! histogram, `build_info`, the standard `process_*` metrics, and a checker of the text format
//! (the rules `promtool check metrics` applies that matter here) for the tests.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Most connections a `metrics_bind` listener (TCP, loopback: any local user can connect)
/// serves at once; one more is closed at once. Without a bound, a local user holding
/// connections open (or sending requests and never reading the answers) fills the
/// descriptor table of the process, the spawner's being root's supervisor of every proxy.
/// A Prometheus server needs one per target.
pub const MAX_SCRAPE_CONNECTIONS: usize = 16;

/// Longest life of one connection to a `metrics_bind` listener, whatever it does: a client
/// that asks and never reads the answer would otherwise keep its slot for ever (hyper has
/// no write timeout). A scraper's keep-alive connection is simply opened again.
pub const SCRAPE_CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);

/// A label value escaped for the text format (backslash, double quote, newline).
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `# HELP` and `# TYPE` lines of a metric family.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Latency buckets, seconds: 1 ms to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A fixed-bucket histogram of seconds, updated without locks.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One counter per bound (not cumulative), plus the overflow.
    counts: Vec<AtomicU64>,
    /// Sum of observations in microseconds.
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: std::time::Duration) {
        let s = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The family's sample lines (`_bucket` cumulative with `le`, `_sum`, `_count`); `labels`
    /// is `k="v",...` or empty.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut total = 0;
        for (i, b) in self.bounds.iter().enumerate() {
            total += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {total}");
        }
        total += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = |l: &str| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{{{l}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {total}", braces(labels));
    }
}

/// `ns_metadata_build_info{binary, version} 1`.
pub fn build_info(out: &mut String, binary: &str, version: &str) {
    family(
        out,
        "ns_metadata_build_info",
        "gauge",
        "The running binary and its version.",
    );
    let _ = writeln!(
        out,
        "ns_metadata_build_info{{binary=\"{}\",version=\"{}\"}} 1",
        label(binary),
        label(version)
    );
}

/// The standard `process_*` metrics of this process, from /proc: resident memory, open
/// descriptors, CPU seconds, start time. Missing values (no /proc) are left out.
pub fn process(out: &mut String) {
    let tick = 100.0; // USER_HZ: 100 on every Linux architecture we build for
    let page = 4096.0;
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name: state is field 3.
    let after: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| after.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    if let (Some(u), Some(s)) = (field(14), field(15)) {
        family(
            out,
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent in seconds.",
        );
        let _ = writeln!(out, "process_cpu_seconds_total {}", (u + s) / tick);
    }
    if let Some(rss) = field(24) {
        family(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
        );
        let _ = writeln!(out, "process_resident_memory_bytes {}", rss * page);
    }
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    if let (Some(start), Some(boot)) = (field(22), boot) {
        family(
            out,
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
        );
        let _ = writeln!(out, "process_start_time_seconds {}", boot + start / tick);
    }
    if let Ok(rd) = std::fs::read_dir("/proc/self/fd") {
        family(
            out,
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
        );
        // The directory handle itself is one of them.
        let _ = writeln!(out, "process_open_fds {}", rd.count().saturating_sub(1));
    }
}

/// Check Prometheus text exposition format: every sample belongs to a family declared once
/// with `# HELP` and `# TYPE` before its samples, names and label names are valid, label
/// values are quoted, values are numbers, a family's samples are contiguous, no sample
/// (name and labels) appears twice, and histograms have cumulative buckets ending in `+Inf`
/// equal to `_count`. The error names the line.
pub fn check_exposition(text: &str) -> Result<(), String> {
    use std::collections::{HashMap, HashSet};
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helped: HashSet<String> = HashSet::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut closed: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut buckets: HashMap<String, (f64, f64)> = HashMap::new(); // series -> (last le, last count)
    for (n, line) in text.lines().enumerate() {
        let at = |why: String| format!("line {}: {why}: {line}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut f = rest.splitn(3, ' ');
            let (kw, name) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
            match kw {
                "HELP" if !helped.insert(name.to_owned()) => {
                    return Err(at(format!("second HELP for {name}")));
                }
                "TYPE" => {
                    let t = f.next().unwrap_or("");
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&t) {
                        return Err(at(format!("unknown type {t:?}")));
                    }
                    if types.insert(name.to_owned(), t.to_owned()).is_some() {
                        return Err(at(format!("second TYPE for {name}")));
                    }
                }
                _ => {}
            }
            if !valid_name(name) {
                return Err(at("bad metric name".into()));
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| at("no value".into()))?;
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .map_err(|_| at(format!("value {v:?} is not a number")))?,
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (
                n,
                l.strip_suffix('}')
                    .ok_or_else(|| at("unclosed labels".into()))?,
            ),
            None => (series, ""),
        };
        if !valid_name(name) {
            return Err(at("bad metric name".into()));
        }
        let mut le = None;
        let mut rest = labels;
        while !rest.is_empty() {
            let (k, r) = rest
                .split_once("=\"")
                .ok_or_else(|| at("label without =\"".into()))?;
            if !valid_name(k) || k.contains(':') {
                return Err(at(format!("bad label name {k:?}")));
            }
            // The value runs to the first unescaped quote.
            let mut end = None;
            let mut esc = false;
            for (i, c) in r.char_indices() {
                match (esc, c) {
                    (true, _) => esc = false,
                    (false, '\\') => esc = true,
                    (false, '"') => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end.ok_or_else(|| at("unterminated label value".into()))?;
            if k == "le" {
                le = Some(&r[..end]);
            }
            rest = r[end + 1..].strip_prefix(',').unwrap_or(&r[end + 1..]);
        }
        let fam = ["_bucket", "_sum", "_count", "_total"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.contains_key(*f) && !types.contains_key(name))
            })
            .unwrap_or(name)
            .to_owned();
        let Some(t) = types.get(&fam) else {
            return Err(at(format!("no TYPE for {fam}")));
        };
        if !helped.contains(&fam) {
            return Err(at(format!("no HELP for {fam}")));
        }
        if current.as_deref() != Some(&fam) {
            if closed.contains(&fam) {
                return Err(at(format!("samples of {fam} are not together")));
            }
            if let Some(c) = current.take() {
                closed.insert(c);
            }
            current = Some(fam.clone());
        }
        if !seen.insert(series.to_owned()) {
            return Err(at("the same series twice".into()));
        }
        if t == "histogram" {
            let without_le: String = labels
                .split(',')
                .filter(|p| !p.starts_with("le="))
                .collect::<Vec<_>>()
                .join(",");
            let key = format!("{fam}{{{without_le}}}");
            if name.ends_with("_bucket") {
                let le = le.ok_or_else(|| at("bucket without le".into()))?;
                let bound: f64 = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().map_err(|_| at("bad le".into()))?
                };
                let (last_le, last) = buckets
                    .get(&key)
                    .copied()
                    .unwrap_or((f64::NEG_INFINITY, 0.0));
                if bound <= last_le || v < last {
                    return Err(at("buckets not cumulative in increasing le".into()));
                }
                buckets.insert(key, (bound, v));
            } else if name.ends_with("_count") {
                match buckets.get(&key) {
                    Some((inf, c)) if inf.is_infinite() && *c == v => {}
                    _ => return Err(at("_count is not the +Inf bucket".into())),
                }
            }
        } else if t == "counter" && !name.ends_with("_total") {
            return Err(at("a counter's name ends in _total".into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_renders_cumulative_buckets_and_checks() {
        let h = Histogram::new(&[0.01, 0.1]);
        h.observe(std::time::Duration::from_millis(5));
        h.observe(std::time::Duration::from_millis(50));
        h.observe(std::time::Duration::from_secs(3));
        let mut s = String::new();
        family(&mut s, "x_seconds", "histogram", "X.");
        h.render(&mut s, "x_seconds", "kind=\"router\"");
        assert!(
            s.contains("x_seconds_bucket{kind=\"router\",le=\"0.01\"} 1\n"),
            "{s}"
        );
        assert!(
            s.contains("x_seconds_bucket{kind=\"router\",le=\"0.1\"} 2\n"),
            "{s}"
        );
        assert!(
            s.contains("x_seconds_bucket{kind=\"router\",le=\"+Inf\"} 3\n"),
            "{s}"
        );
        assert!(s.contains("x_seconds_count{kind=\"router\"} 3\n"), "{s}");
        check_exposition(&s).expect("valid");
        process(&mut s);
        build_info(&mut s, "test", "1.0 (abc)");
        check_exposition(&s).expect("valid");
        assert!(s.contains("process_open_fds "), "{s}");
    }

    #[test]
    fn the_checker_names_what_is_wrong() {
        let bad = [
            ("x 1\n", "no TYPE"),
            ("# TYPE x gauge\nx 1\n", "no HELP"),
            ("# HELP x X.\n# TYPE x gauge\nx one\n", "not a number"),
            ("# HELP x X.\n# TYPE x gauge\nx{a=b} 1\n", "label without"),
            ("# HELP x X.\n# TYPE x gauge\nx 1\nx 2\n", "twice"),
            ("# HELP x X.\n# TYPE x counter\nx 1\n", "_total"),
            (
                "# HELP x X.\n# TYPE x gauge\n# HELP y Y.\n# TYPE y gauge\nx{a=\"1\"} 1\ny 1\nx{a=\"2\"} 1\n",
                "not together",
            ),
            (
                "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\n",
                "cumulative",
            ),
        ];
        for (text, why) in bad {
            let e = check_exposition(text).expect_err(text);
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }
}
