//! Churn drills (root): the spawner daemon, as operators run it for months, with routers
//! coming and going all day. In both proxy models, round after round: N `qrouter-`
//! namespaces are made and announced with the CLI, each answers as its router, two are
//! deleted from under the spawner, the daemon gets a SIGHUP (and, in the shared model, the
//! server a kill -9 mid-round), every router is removed and its namespace deleted. A variant
//! of each model kills the spawner itself with -9 between two batches of changes of a round
//! (a namespace deleted while it is down) and starts it again: it adopts what runs, serves the
//! second batch, and is held to the first spawner's baseline. After a
//! warm-up round, what a slow leak would grow must come back to the same values after every
//! round: the spawner's (and the shared server's) descriptors by kind and threads, the
//! entries of `status --json`, the files of `pids/` and `stats/`, the slab records in use;
//! no removed router keeps its address or a process. Memory is only bounded loosely (RSS
//! is noisy). Routers are added explicitly, never auto-enabled (other tests' namespaces
//! share `/run/netns`); names carry a per-run prefix, everything is removed on drop.

mod common;
mod root_common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use ns_testkit::netns::{unique_prefix, TestNs};
use ns_testkit::proc::{alive, fds_by_kind, kill9, pids_mentioning, signal, status_field};
use ns_testkit::{require_root, TempDir};
use root_common::*;

/// Routers per round and rounds (the first is the warm-up): a few seconds per model.
const N: usize = 40;
const ROUNDS: usize = 4;
const T: Duration = Duration::from_secs(15);

#[test]
fn per_namespace_model_returns_to_its_baseline_after_every_churn_round() {
    if !require_root("per_namespace_model_returns_to_its_baseline_after_every_churn_round") {
        return;
    }
    churn("churn-pn", 0, false);
}

/// The spawner killed -9 mid-round and started again: the restarted one adopts the running
/// proxies and comes back to the first one's baseline.
#[test]
fn per_namespace_model_returns_to_its_baseline_across_a_spawner_kill9_and_restart() {
    if !require_root(
        "per_namespace_model_returns_to_its_baseline_across_a_spawner_kill9_and_restart",
    ) {
        return;
    }
    churn("churn-pnr", 0, true);
}

/// The same in the shared model: the restarted spawner takes the running server over.
#[test]
fn shared_model_returns_to_its_baseline_across_a_spawner_kill9_and_restart() {
    if !require_root("shared_model_returns_to_its_baseline_across_a_spawner_kill9_and_restart") {
        return;
    }
    churn("churn-shr", 1, true);
}

#[test]
fn shared_model_returns_to_its_baseline_after_every_churn_round() {
    if !require_root("shared_model_returns_to_its_baseline_after_every_churn_round") {
        return;
    }
    churn("churn-sh", 1, false);
}

/// Two shards: namespaces spread over two servers, shard 0's killed mid-round.
#[test]
fn two_shards_return_to_their_baseline_after_every_churn_round() {
    if !require_root("two_shards_return_to_their_baseline_after_every_churn_round") {
        return;
    }
    churn("churn-sh2", 2, false);
}

/// Threads above the warm-up's that are not a leak: the runtimes' blocking pools keep an idle
/// thread for 10 s, so the count moves with how much blocking work the last seconds held (the
/// check waits up to `T`, past those 10 s). A thread leaked per router would add `N` (40)
/// per round.
const THREAD_SLACK: usize = 8;

/// What a leak would grow, read from outside the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Footprint {
    /// The spawner's open descriptors, by what they are (`socket`, `net`, `pidfd`, ...).
    spawner_fds: BTreeMap<String, usize>,
    spawner_threads: usize,
    /// The same for the shared servers, all shards together (empty in the per-namespace
    /// model).
    server_fds: BTreeMap<String, usize>,
    server_threads: usize,
    /// Entries of `status --json`: proxies, servers.
    status_proxies: usize,
    status_servers: usize,
    /// Namespaces the servers say they were handed (`servers[].namespaces`).
    server_namespaces: u64,
    /// `/metrics` lines naming a router of this test (per-namespace series).
    metrics_lines: usize,
    /// Entries of the state dir itself (records, sockets, pid files of servers).
    state_entries: usize,
    /// Files in `pids/`, in `stats/` (slabs aside), and slab records in use.
    pid_files: usize,
    stats_files: usize,
    slab_records: usize,
}

impl Footprint {
    /// Back to the warm-up's `base`: every count the same, threads within the slack.
    fn same_as(&self, base: &Footprint) -> bool {
        let strip = |f: &Footprint| Footprint {
            spawner_threads: 0,
            server_threads: 0,
            ..f.clone()
        };
        strip(self) == strip(base)
            && self.spawner_threads <= base.spawner_threads + THREAD_SLACK
            && self.server_threads <= base.server_threads + THREAD_SLACK
    }
}

/// The round in which the spawner is killed and started again (`restart`).
const RESTART_ROUND: usize = 1;

/// `shards`: 0 for the per-namespace model, else the shared model with that many servers.
/// `restart`: kill the spawner -9 in [`RESTART_ROUND`] after half its routers were added,
/// delete one of their namespaces while it is down, start it again, add the other half.
fn churn(tag: &str, shards: usize, restart: bool) {
    let shared = shards > 0;
    let dir = TempDir::new(tag).reaping();
    let _agent = agent(dir.path());
    let ini = write_ini(dir.path(), "");
    if shared {
        let text = std::fs::read_to_string(&ini).expect("ini");
        std::fs::write(
            &ini,
            format!("{text}proxy_model = shared\nshared_servers = {shards}\n"),
        )
        .expect("ini");
    }
    let mut daemon = start_daemon(dir.path(), &ini, &[]);
    let mut spawner = daemon.pid();
    let prefix = unique_prefix();
    let mut baseline: Option<Footprint> = None;
    // Servers running since before the spawner's restart: a spawner keeps the control
    // listener of each server it started (a server that dies gets the same one back) but not
    // of one it took over (the next server gets a fresh one), so until they are replaced it
    // holds one socket fewer per shard.
    let mut taken_over = 0;
    let mut rss = Vec::new();
    let mut server_rss = Vec::new();
    for round in 0..ROUNDS {
        let ids: Vec<String> = (0..N).map(|i| format!("{prefix}c{round}x{i}")).collect();
        let mut nss: Vec<Option<TestNs>> = ids
            .iter()
            .map(|id| Some(TestNs::new(&format!("qrouter-{id}")).expect("router ns")))
            .collect();
        let restart_now = restart && round == RESTART_ROUND;
        let first = if restart_now { N / 2 } else { N };
        for id in &ids[..first] {
            let (ok, out) = cli(&ini, &["router", "add", id]);
            assert!(ok, "round {round}: router add {id}: {out}");
        }
        if restart_now {
            for (id, ns) in ids.iter().zip(&nss).take(first) {
                answers(dir.path(), id, ns.as_ref().expect("ns"));
            }
            // A change is saved to records.json up to 100 ms after it is acknowledged
            // (persist::SAVE_DELAY, by design: no change waits for the disk); one killed
            // inside that window is lost and its proxy stopped by the next spawner. Killed
            // once the file holds the batch.
            let saved = ns_testkit::wait_until(T, || {
                let text = std::fs::read_to_string(dir.path().join("records.json"));
                let text = text.unwrap_or_default();
                ids[..first]
                    .iter()
                    .all(|id| text.contains(&format!("\"{id}\"")))
            });
            assert!(
                saved,
                "round {round}: records.json never held the first batch"
            );
            kill9(spawner);
            let _ = daemon.0.wait();
            // A namespace goes while no spawner watches (its router stays wanted).
            drop(nss[first - 1].take());
            daemon = start_daemon(dir.path(), &ini, &[]);
            spawner = daemon.pid();
            taken_over = shards;
            for id in &ids[first..] {
                let (ok, out) = cli(&ini, &["router", "add", id]);
                assert!(
                    ok,
                    "round {round}: router add {id} after the restart: {out}"
                );
            }
        }
        if shared && round == 2 {
            // The server killed while its namespaces are being handed to it.
            let server = server_pid(dir.path()).expect("a server");
            kill9(server);
            taken_over = taken_over.saturating_sub(1);
            ns_testkit::eventually("a new server", T, || {
                server_pid(dir.path()).filter(|&p| p != server && alive(p))
            });
        }
        for (id, ns) in ids.iter().zip(&nss) {
            let Some(ns) = ns else { continue };
            answers(dir.path(), id, ns);
        }
        // At the top of the round, for the log: what 40 namespaces hold.
        let busy = footprint(dir.path(), &ini, spawner, shards, &prefix);
        eprintln!(
            "churn {tag} round {round} with {N} routers: spawner descriptors {:?}, servers' {:?}",
            busy.spawner_fds, busy.server_fds
        );
        // Scraped while they serve: each namespace's series appear (and must go with it).
        let text = scrape(dir.path());
        for id in &ids {
            assert!(
                text.contains(&format!("id=\"{id}\"")),
                "round {round}: {id} not in /metrics"
            );
        }
        // Two namespaces vanish under the spawner (their records stay until removed).
        for ns in nss.iter_mut().take(2) {
            drop(ns.take());
        }
        signal(spawner, "HUP");
        for id in &ids {
            let (ok, out) = cli(&ini, &["router", "remove", id]);
            assert!(ok, "round {round}: router remove {id}: {out}");
        }
        // Every remaining namespace loses the address and stops answering.
        for (id, ns) in ids.iter().zip(&nss) {
            let Some(ns) = ns else { continue };
            let gone = ns_testkit::wait_until(T, || !has_metadata_address(ns.name()));
            assert!(gone, "round {round}: {id} keeps 169.254.169.254");
            assert!(get_in(ns.netns(), META).is_err(), "{id} still answers");
        }
        drop(nss);
        for id in &ids {
            let left = ns_testkit::poll(T, || {
                let p = pids_mentioning(id);
                p.is_empty().then_some(())
            });
            assert!(
                left.is_some(),
                "round {round}: a process of {id} is left: {:?}",
                pids_mentioning(id)
            );
        }
        let now = match &baseline {
            None => {
                // The warm-up round: wait for the daemon to settle (no entry left, and the
                // same descriptors twice in a row: no client connection still closing).
                let mut last: Option<Footprint> = None;
                let f = ns_testkit::eventually("settled", T, || {
                    let f = footprint(dir.path(), &ini, spawner, shards, &prefix);
                    let settled = f.status_proxies == 0
                        && last.as_ref().is_some_and(|l| l.same_as(&f) && f.same_as(l));
                    last = Some(f.clone());
                    settled.then_some(f)
                });
                baseline = Some(f.clone());
                f
            }
            Some(base) => {
                let mut want = base.clone();
                if let Some(n) = want.spawner_fds.get_mut("socket") {
                    *n -= taken_over;
                }
                let want = &want;
                let mut last = None;
                let same = ns_testkit::wait_until(T, || {
                    let f = footprint(dir.path(), &ini, spawner, shards, &prefix);
                    let same = f.same_as(want);
                    last = Some(f);
                    same
                });
                let last = last.expect("measured");
                assert!(
                    same,
                    "round {round}: not back to the baseline\n  after warm-up: {want:?}\n  now:           {last:?}"
                );
                last
            }
        };
        eprintln!("churn {tag} round {round}: {now:?}");
        rss.push(rss_kb(spawner));
        server_rss.push(server_pid(dir.path()).map_or(0, rss_kb));
    }
    // RSS is noisy (allocator arenas, lazily touched pages): only a generous bound over the
    // rounds after the warm-up.
    let (first, last) = (rss[0], rss[rss.len() - 1]);
    assert!(
        last <= first * 2 + 16 * 1024,
        "spawner RSS grew from {first} kB to {last} kB over {ROUNDS} rounds: {rss:?}"
    );
    // The server is replaced by the kill -9 of round 2: its last round against round 0.
    let (first, last) = (server_rss[0], server_rss[server_rss.len() - 1]);
    assert!(
        last <= first * 2 + 16 * 1024,
        "server RSS grew from {first} kB to {last} kB over {ROUNDS} rounds: {server_rss:?}"
    );
    eprintln!("churn {tag}: RSS kB per round, spawner {rss:?}, server {server_rss:?}");
    drop(daemon);
}

/// `id`'s namespace answers as its router (within `T`); else the daemons' log's tail in the
/// failure.
fn answers(dir: &Path, id: &str, ns: &TestNs) {
    let Some(body) = ns_testkit::poll(T, || get_in(ns.netns(), META).ok()) else {
        let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "{id} never answered; the daemon's log ends:\n{}",
            tail.join("\n")
        );
    };
    assert!(body.starts_with(&format!("router={id} ")), "{body}");
}

fn server_pid(dir: &Path) -> Option<u32> {
    shard_pid(dir, 0)
}

fn shard_pid(dir: &Path, shard: usize) -> Option<u32> {
    let name = ns_metadata_spawner::shared_model::ShardFiles::of(shard).pid;
    let text = std::fs::read_to_string(dir.join(name)).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Descriptors and threads are read before this function's own connections to the control
/// socket (`status`, `/metrics`), which the daemon closes a moment after the client does.
fn footprint(dir: &Path, ini: &Path, spawner: u32, shards: usize, prefix: &str) -> Footprint {
    let servers: Vec<u32> = (0..shards).filter_map(|s| shard_pid(dir, s)).collect();
    let (spawner_fds, spawner_threads) = (fds_by_kind(spawner), threads(spawner));
    let mut server_fds = BTreeMap::new();
    for pid in &servers {
        for (kind, n) in fds_by_kind(*pid) {
            *server_fds.entry(kind).or_insert(0) += n;
        }
    }
    let server_threads = servers.iter().map(|&p| threads(p)).sum();
    let (code, out) = cli_code(ini, &["status", "--json"]);
    assert!(matches!(code, Some(0) | Some(3)), "status: {out}");
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json: {e}: {out}"));
    let len = |k: &str| v[k].as_array().map_or(0, |a| a.len());
    Footprint {
        spawner_fds,
        spawner_threads,
        server_fds,
        server_threads,
        status_proxies: len("proxies"),
        status_servers: len("servers"),
        server_namespaces: v["servers"].as_array().map_or(0, |a| {
            a.iter().filter_map(|s| s["namespaces"].as_u64()).sum()
        }),
        metrics_lines: scrape(dir).lines().filter(|l| l.contains(prefix)).count(),
        // The test's own notify sockets (one per daemon started) aside.
        state_entries: count_files(dir, |n| !n.starts_with("notify-")),
        pid_files: count_files(&dir.join("pids"), |_| true),
        stats_files: count_files(&dir.join("stats"), |n| !n.ends_with(".slab")),
        slab_records: (0..shards)
            .map(|s| {
                slab_records(&ns_metadata_spawner::stats_slab::path(
                    &dir.join("stats"),
                    s,
                ))
            })
            .sum(),
    }
}

fn threads(pid: u32) -> usize {
    status_field(pid, "Threads")
}

fn rss_kb(pid: u32) -> usize {
    status_field(pid, "VmRSS")
}

fn count_files(dir: &Path, keep: impl Fn(&str) -> bool) -> usize {
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.flatten()
            .filter(|e| keep(&e.file_name().to_string_lossy()))
            .count()
    })
}

/// Records of the slab at `p` holding a block (slot 0 is the block's magic), read from the
/// file without mapping it (the layout of `ns_contract::proxy_stats`).
fn slab_records(p: &Path) -> usize {
    use ns_contract::proxy_stats::{MAGIC, RECORD_SIZE, SLAB_RECORDS};
    let Ok(bytes) = std::fs::read(p) else {
        return 0;
    };
    (1..SLAB_RECORDS)
        .filter_map(|r| bytes.get(r * RECORD_SIZE..r * RECORD_SIZE + 8))
        .filter(|s| u64::from_ne_bytes((*s).try_into().expect("8 bytes")) == MAGIC)
        .count()
}

/// Whether 169.254.169.254 is on any link of namespace `ns` (`ip -n NS addr`).
fn has_metadata_address(ns: &str) -> bool {
    let out = std::process::Command::new("ip")
        .args(["-n", ns, "-o", "addr", "show"])
        .output()
        .expect("run ip");
    String::from_utf8_lossy(&out.stdout).contains("169.254.169.254")
}
