//! Big tables (unprivileged): a supervisor holding thousands of router records, each waiting
//! for a namespace that does not exist (the [`Host`](ns_metadata_spawner::platform::Host)
//! platform: nothing is started), read through the control socket by `status --json`,
//! `GET /metrics`, `check` and the `status` and `router list` tables, as monitoring polls a
//! node with thousands of namespaces. Every answer names every entry correctly, and its size
//! per entry stays the same from 1,000 to 3,000 entries: no part of an answer grows with the
//! table beyond its own entry.

mod common;
mod root_common;

use common::*;
use http::Method;
use ns_metadata_spawner::client::call;
use ns_metadata_spawner::records::Router;
use ns_testkit::{eventually_async, TempDir};
use root_common::{cli_code, write_ini};

const SIZES: [usize; 2] = [1_000, 3_000];
/// Largest answer per entry (bytes): a `status --json` proxy, its `/metrics` series, its
/// `check` line. Measured: 300, 154 and 88.
const STATUS_PER_ENTRY: usize = 400;
const METRICS_PER_ENTRY: usize = 300;
const CHECK_PER_ENTRY: usize = 200;
/// A line of the `status` and `router list` tables. Measured: 102 and 44.
const TABLE_PER_ENTRY: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_records_keep_status_metrics_and_check_correct_and_linear() {
    let dir = TempDir::new("big").reaping();
    let s = server(&dir);
    // The CLI finds the control socket from the state dir, as an operator's would.
    let ini = write_ini(dir.path(), "");
    let mut sizes = Vec::new();
    let mut added = 0;
    for n in SIZES {
        for i in added..n {
            let id = format!("big{i:05}");
            s.sup.put_router(Router {
                id: id.clone(),
                netns: Some(format!("missing-{id}")),
                ha_state: None,
                distributed: false,
            });
        }
        added = n;
        eventually_async(
            "every record waiting",
            std::time::Duration::from_secs(20),
            || (s.sup.status().len() == n).then_some(()),
        )
        .await;

        // status --json: every record once, waiting, with the reason; exit 3.
        let (code, status) = cli_code(&ini, &["status", "--json"]);
        assert_eq!(code, Some(3), "{}", &status[..status.len().min(500)]);
        let v: serde_json::Value = serde_json::from_str(&status).expect("status json");
        let proxies = v["proxies"].as_array().expect("proxies");
        assert_eq!(proxies.len(), n);
        for (i, p) in proxies.iter().enumerate() {
            assert_eq!(p["id"], format!("big{i:05}"), "sorted by key, each once");
            assert_eq!(p["state"], "waiting", "{p}");
            assert!(
                p["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("does not exist")),
                "{p}"
            );
        }

        // /metrics: valid exposition text, one up series per record, the state counts.
        let (st, body) = call(&s.sock, Method::GET, "/metrics", None)
            .await
            .expect("metrics");
        assert_eq!(st, 200);
        let metrics = String::from_utf8(body.to_vec()).expect("utf-8");
        ns_contract::metrics::check_exposition(&metrics).expect("exposition");
        let up = metrics
            .lines()
            .filter(|l| l.starts_with("ns_metadata_proxy_up{"))
            .count();
        assert_eq!(up, n);
        assert!(
            metrics.contains(&format!("ns_metadata_proxies{{state=\"waiting\"}} {n}\n")),
            "state counts"
        );

        // check: one line per record that is not running, exit 1.
        let (code, check) = cli_code(&ini, &["check"]);
        assert_eq!(code, Some(1));
        let waiting = check.lines().filter(|l| l.contains(" is waiting")).count();
        assert_eq!(waiting, n, "{}", &check[..check.len().min(500)]);

        // The tables an operator reads: a line per entry (after the headers).
        let (code, table) = cli_code(&ini, &["status"]);
        assert_eq!(code, Some(3));
        let rows = table.lines().filter(|l| l.contains(" waiting ")).count();
        assert_eq!(rows, n, "{}", &table[..table.len().min(500)]);
        let (code, list) = cli_code(&ini, &["router", "list"]);
        assert_eq!(code, Some(0), "{}", &list[..list.len().min(500)]);
        assert_eq!(list.lines().filter(|l| l.contains("big")).count(), n);

        sizes.push((
            n,
            [
                status.len(),
                metrics.len(),
                check.len(),
                table.len(),
                list.len(),
            ],
        ));
    }
    eprintln!(
        "big tables: (entries, bytes of status --json, /metrics, check, status, router list): {sizes:?}"
    );
    let [(n1, at1), (n2, at2)] = sizes[..] else {
        unreachable!("two sizes")
    };
    let what = [
        "status --json",
        "/metrics",
        "check",
        "status",
        "router list",
    ];
    let bounds = [
        STATUS_PER_ENTRY,
        METRICS_PER_ENTRY,
        CHECK_PER_ENTRY,
        TABLE_PER_ENTRY,
        TABLE_PER_ENTRY,
    ];
    for (((what, a), b), bound) in what.into_iter().zip(at1).zip(at2).zip(bounds) {
        // What the 2,000 more entries added, per entry, is what an entry costs at 1,000
        // (the fixed part, e.g. metrics' headers, spread over the first 1,000).
        let marginal = (b - a) / (n2 - n1);
        assert!(
            marginal <= bound && marginal <= a / n1 + 8,
            "{what}: {a} bytes for {n1} entries, {b} for {n2}: {marginal} bytes per added entry"
        );
    }
}
