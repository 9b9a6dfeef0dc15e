//! Root test of issue #17's per-proxy metrics: known traffic through a real proxy started by
//! the real daemon, in a real namespace (200s, 429 from rate limiting, 400 and 431 from bad
//! requests, 502 from an agent that closes without a reply, 503 with no agent), then the
//! daemon's `/metrics` shows those counts per status class and error code, a consistent
//! latency histogram, and the same counters after the proxy is killed with -9 and restarted
//! and after the daemon itself is restarted (the proxy adopted). And, in both models, that a
//! local user running as the proxies' user cannot grow a statistics file through a proxy or
//! a shared server (before and after a spawner restart), and that a server taken over is not
//! handed its slab again.

mod root_common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ns_netns::Netns;
use ns_testkit::http::Blocking;
use ns_testkit::netns::{unique_prefix, TestNs};
use ns_testkit::proc::{alive, kill9};
use ns_testkit::TempDir;
use ns_testkit::{require_root, wait_until, PidGuard};
use root_common::*;

const T: Duration = Duration::from_secs(15);

/// One raw request from inside `ns`; the status the proxy answered (0: no answer).
fn send_in(ns: &Netns, raw: Vec<u8>) -> u16 {
    ns.run(move || {
        let Ok(mut c) = Blocking::tcp(META, Duration::from_secs(2)) else {
            return 0;
        };
        if c.send(&raw).is_err() {
            return 0;
        }
        c.read(false, Duration::from_secs(5))
            .map_or(0, |r| r.status)
    })
    .unwrap_or(0)
}

fn get() -> Vec<u8> {
    b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n"
        .to_vec()
}

/// `GET /metrics` on the daemon's control socket.
fn scrape(dir: &Path) -> String {
    let mut c = Blocking::unix(&dir.join("control.sock")).expect("control socket");
    c.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send");
    let r = c.read(false, Duration::from_secs(5)).expect("metrics");
    assert_eq!(r.status, 200, "{}", r.head);
    let text = r.text();
    ns_contract::metrics::check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    text
}

/// Every sample of `text` whose labels include `netns="<netns>"` or `kind="router"`, by
/// its full series text.
fn samples(text: &str, netns: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| l.starts_with("ns_metadata_proxy_"))
        // The supervisor's own per-lifetime figures, not the proxies' counts.
        .filter(|l| {
            !l.starts_with("ns_metadata_proxy_restarts_total")
                && !l.starts_with("ns_metadata_proxy_up")
        })
        .filter(|l| l.contains(&format!("netns=\"{netns}\"")) || l.contains("{kind=\"router\""))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_counts_by_class_and_error_survive_kill9_and_a_spawner_restart() {
    if !require_root("proxy_counts_by_class_and_error_survive_kill9_and_a_spawner_restart") {
        return;
    }
    let dir = TempDir::new("rt-pmetrics").reaping();
    let sock = dir.path().join("agent.sock");
    let agent_ok = StandIn::start_at(sock.clone(), Behave::Headers);
    let ini = write_ini(
        dir.path(),
        "[metadata_rate_limiting]\nrate_limit_enabled = true\nbase_query_rate_limit = 12\n\
         base_window_duration = 600\nburst_query_rate_limit = 12\nburst_window_duration = 600\n",
    );
    let p = unique_prefix();
    let id = format!("{p}m");
    let netns = format!("qrouter-{id}");
    let rns = TestNs::new(&netns).expect("router ns");
    let d = start_daemon(dir.path(), &ini, &[]);
    let st = Command::new(env!("CARGO_BIN_EXE_ns-metadata-spawner"))
        .arg("--config-file")
        .arg(&ini)
        .args(["router", "add", &id])
        .status()
        .expect("cli");
    assert!(st.success());
    assert!(wait_until(T, || pid_of(dir.path(), &id).is_some()));
    let pid = pid_of(dir.path(), &id).expect("pid");
    let mut guard = PidGuard(vec![pid]);
    let ns = rns.netns();

    // Known traffic; the statuses are what the client saw.
    let mut seen: BTreeMap<u16, u64> = BTreeMap::new();
    let send = |seen: &mut BTreeMap<u16, u64>, raw: Vec<u8>| {
        let s = send_in(ns, raw);
        *seen.entry(s).or_default() += 1;
        s
    };
    assert_eq!(send(&mut seen, b"NOT HTTP AT ALL\r\n\r\n".to_vec()), 400);
    // More headers than the proxy takes (its head limit, with all bytes read: no reset).
    let mut big = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..150 {
        big.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    big.extend_from_slice(b"\r\n");
    assert_eq!(send(&mut seen, big), 431);
    for _ in 0..3 {
        assert_eq!(send(&mut seen, get()), 200);
    }
    // The agent closes without a reply: 502.
    drop(agent_ok);
    let agent_bad = StandIn::start_at(sock.clone(), Behave::CloseNoReply);
    assert_eq!(send(&mut seen, get()), 502);
    // No agent: 503. The stand-in's accept thread closes its listener a moment after the
    // drop; until then a connect would still succeed (and be cut: a 502), so the socket file
    // goes now.
    drop(agent_bad);
    let _ = std::fs::remove_file(&sock);
    assert_eq!(send(&mut seen, get()), 503);
    // Over the rate limit: 429.
    let _agent = StandIn::start_at(sock.clone(), Behave::Headers);
    let mut n = 0;
    while send(&mut seen, get()) != 429 {
        n += 1;
        assert!(n < 30, "never rate limited: {seen:?}");
    }
    assert_eq!(seen.get(&0), None, "every request answered: {seen:?}");

    let lb = format!("netns=\"{netns}\",kind=\"router\",id=\"{id}\"");
    let want = |seen: &BTreeMap<u16, u64>| {
        let class = |c: u16| {
            seen.iter()
                .filter(|(s, _)| **s / 100 == c)
                .map(|(_, n)| *n)
                .sum::<u64>()
        };
        let own = |code: u16| seen.get(&code).copied().unwrap_or(0);
        let mut w = BTreeMap::new();
        for c in 2..=5u16 {
            w.insert(
                format!("ns_metadata_proxy_requests_total{{{lb},class=\"{c}xx\"}}"),
                class(c) as f64,
            );
        }
        for code in [400u16, 429, 431, 502, 503, 504] {
            w.insert(
                format!("ns_metadata_proxy_errors_total{{{lb},code=\"{code}\"}}"),
                own(code) as f64,
            );
        }
        w
    };
    let total: u64 = seen.values().sum();
    let check = |text: &str, seen: &BTreeMap<u16, u64>, total: u64| {
        let got = samples(text, &netns);
        for (k, v) in want(seen) {
            assert_eq!(got.get(&k), Some(&v), "{k}\n{text}");
        }
        // The histogram holds every request, cumulative buckets never decrease.
        let count = got
            .get("ns_metadata_proxy_request_duration_seconds_count{kind=\"router\"}")
            .copied()
            .unwrap_or(-1.0);
        assert!(count >= total as f64, "count {count} < {total}\n{text}");
        let buckets: Vec<f64> = text
            .lines()
            .filter(|l| {
                l.starts_with("ns_metadata_proxy_request_duration_seconds_bucket{kind=\"router\"")
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse().ok())
            .collect();
        assert_eq!(buckets.len(), 14, "{text}");
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
        assert_eq!(buckets.last().copied(), Some(count));
        got
    };
    // The proxy counts an answer once it has written it: a moment after the client read it.
    let settled = |total: u64| {
        let counted = |text: &str| {
            samples(text, &netns)
                .iter()
                .filter(|(k, _)| k.starts_with("ns_metadata_proxy_requests_total{"))
                .map(|(_, v)| *v)
                .sum::<f64>()
        };
        let mut text = String::new();
        wait_until(T, || {
            text = scrape(dir.path());
            counted(&text) >= total as f64
        });
        text
    };
    let first = check(&settled(total), &seen, total);
    assert_eq!(
        first.get(&format!(
            "ns_metadata_proxy_connections_accepted_total{{{lb}}}"
        )),
        Some(&(total as f64))
    );

    // kill -9: a new proxy, the same block; nothing goes down, and new traffic adds on.
    kill9(pid);
    assert!(wait_until(T, || pid_of(dir.path(), &id).is_some_and(|p| p != pid)));
    let pid2 = pid_of(dir.path(), &id).expect("pid");
    guard.0.push(pid2);
    assert_eq!(send(&mut seen, get()), 200, "a fresh rate limiter");
    let after = check(&settled(total + 1), &seen, total + 1);
    assert_eq!(
        after.get(&format!(
            "ns_metadata_proxy_requests_total{{{lb},class=\"2xx\"}}"
        )),
        first
            .get(&format!(
                "ns_metadata_proxy_requests_total{{{lb},class=\"2xx\"}}"
            ))
            .map(|v| v + 1.0)
            .as_ref()
    );
    for (k, v) in &first {
        if !k.contains("connections_open") {
            assert!(after.get(k).is_some_and(|a| a >= v), "{k} went down");
        }
    }
    // The client has closed; the proxy counts the close when it reads the EOF, a moment later.
    let open = format!("ns_metadata_proxy_connections_open{{{lb}}}");
    assert!(
        wait_until(T, || scrape(dir.path()).contains(&format!("{open} 0\n"))),
        "{open} never went back to 0"
    );
    // What the restarted spawner must read again: taken once the close is counted (`after`
    // may have been scraped before it, with the connection still open).
    let after = check(&scrape(dir.path()), &seen, total + 1);

    // The spawner restarts (SIGTERM leaves the proxies running); the new one adopts the
    // proxy and reads the same block.
    d.signal("TERM");
    let mut d = d;
    assert!(d.0.wait().expect("wait").success());
    assert!(alive(pid2));
    let d2 = start_daemon(dir.path(), &ini, &["--stop-proxies-on-exit"]);
    assert_eq!(pid_of(dir.path(), &id), Some(pid2), "adopted");
    let again = check(&scrape(dir.path()), &seen, total + 1);
    for (k, v) in &after {
        assert_eq!(again.get(k), Some(v), "{k} after the spawner restart");
    }
    d2.signal("TERM");
    let mut d2 = d2;
    assert!(d2.0.wait().expect("wait").success());
    assert!(!alive(pid2));
    drop(rns);
}

/// What a hostile local user running as the proxies' user tries on a process serving VMs:
/// take each of its descriptors (`pidfd_getfd`, then `/proc/PID/fd/N`) and grow any that is
/// one of the statistics files named by `dev:ino` (ftruncate, a write past the end,
/// `fallocate(FALLOC_FL_KEEP_SIZE)`, which `RLIMIT_FSIZE` does not stop). Prints one line per
/// file grown (`GREW`), and what it was refused.
const GROW: &str = r#"
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
pid = int(sys.argv[1]); files = set(sys.argv[2:])
def grow(fd, how):
    st = os.fstat(fd)
    if "%d:%d" % (st.st_dev, st.st_ino) not in files:
        return
    before = (st.st_size, st.st_blocks)
    for f in (lambda: os.ftruncate(fd, st.st_size + (64 << 20)),
              lambda: os.pwrite(fd, b"x" * 65536, st.st_size + 4096),
              lambda: libc.fallocate(fd, 1, ctypes.c_long(0), ctypes.c_long(64 << 20)) == 0 or 1 / 0):
        try: f()
        except Exception as e: print("refused", how, repr(e))
    st = os.fstat(fd)
    if (st.st_size, st.st_blocks) != before:
        print("GREW", how, before, (st.st_size, st.st_blocks))
pfd = libc.syscall(434, pid, 0)
if pfd < 0:
    print("pidfd_open", errno.errorcode.get(ctypes.get_errno()))
else:
    for n in range(1024):
        fd = libc.syscall(438, pfd, n, 0)
        if fd >= 0:
            grow(fd, "pidfd_getfd %d" % n); os.close(fd)
        elif ctypes.get_errno() != errno.EBADF:
            print("pidfd_getfd", n, errno.errorcode.get(ctypes.get_errno())); break
try: names = os.listdir("/proc/%d/fd" % pid)
except OSError as e: print("listdir", e.strerror); names = []
for n in names:
    try: fd = os.open("/proc/%d/fd/%s" % (pid, n), os.O_RDWR)
    except OSError: continue
    grow(fd, "/proc fd %s" % n); os.close(fd)
"#;

/// `dev:ino` of every statistics file under `stats` (blocks and slabs), with its size and
/// allocated 512-byte blocks.
fn stats_files(stats: &Path) -> BTreeMap<String, (u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::read_dir(stats)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let m = std::fs::symlink_metadata(e.path()).ok()?;
            Some((format!("{}:{}", m.dev(), m.ino()), (m.len(), m.blocks())))
        })
        .collect()
}

/// Run [`GROW`] against `pid` as uid/gid 65534 and check the statistics files did not grow;
/// also that `pid` holds no descriptor on one of them (a compromised process would need one).
fn hostile_user_cannot_grow(pid: u32, stats: &Path) {
    use std::os::unix::fs::MetadataExt as _;
    let files = stats_files(stats);
    assert!(
        !files.is_empty(),
        "no statistics file under {}",
        stats.display()
    );
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["/usr/bin/python3", "-c", GROW, &pid.to_string()])
        .args(files.keys())
        .output()
        .expect("run python3 as nobody");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("hostile user against pid {pid}: {text}");
    assert!(!text.contains("GREW"), "a statistics file grew: {text}");
    assert_eq!(stats_files(stats), files, "the statistics files changed");
    // From inside: the process serving VMs holds no descriptor of a statistics file.
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .flatten()
    {
        if let Ok(m) = std::fs::metadata(e.path()) {
            let id = format!("{}:{}", m.dev(), m.ino());
            assert!(
                !files.contains_key(&id),
                "pid {pid} holds fd {:?} on a statistics file",
                e.file_name()
            );
        }
    }
}

/// A hostile local user running as the proxies' user (the agent socket's owner, here
/// nobody) cannot grow a statistics file through a proxy or a shared server, in either
/// model and after a spawner restart took the server over and handed it new namespaces.
#[test]
fn the_proxies_user_cannot_grow_a_statistics_file() {
    if !require_root("the_proxies_user_cannot_grow_a_statistics_file") {
        return;
    }
    for shared in [false, true] {
        let dir = TempDir::new(if shared { "rt-grow-sh" } else { "rt-grow" }).reaping();
        let _agent = StandIn::start_at(dir.path().join("agent.sock"), Behave::Headers);
        std::os::unix::fs::chown(dir.path().join("agent.sock"), Some(65534), Some(65534))
            .expect("chown socket");
        // No metadata_proxy_user: proxies and the shared server run as the socket's owner.
        let ini = write_ini(dir.path(), "");
        if shared {
            let text = std::fs::read_to_string(&ini).expect("ini");
            std::fs::write(&ini, format!("{text}proxy_model = shared\n")).expect("ini");
        }
        let p = unique_prefix();
        let ids = [format!("{p}g1"), format!("{p}g2")];
        let nss: Vec<TestNs> = ids
            .iter()
            .map(|id| TestNs::new(&format!("qrouter-{id}")).expect("router ns"))
            .collect();
        let mut d = start_daemon(dir.path(), &ini, &[]);
        let (ok, out) = cli(&ini, &["router", "add", &ids[0]]);
        assert!(ok, "{out}");
        let serving = |id: &str| {
            if shared {
                let pidf = dir.path().join("shared-server.pid");
                std::fs::read_to_string(pidf)
                    .ok()?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            } else {
                pid_of(dir.path(), id)
            }
        };
        let answers = |ns: &TestNs| {
            let ok = wait_until(T, || send_in(ns.netns(), get()) == 200);
            if !ok {
                let log = std::fs::read_to_string(dir.path().join("daemon.log"));
                eprintln!("daemon.log:\n{}", log.unwrap_or_default());
            }
            ok
        };
        assert!(answers(&nss[0]));
        let pid: u32 = serving(&ids[0]).expect("serving pid");
        use std::os::unix::fs::MetadataExt as _;
        let uid = std::fs::metadata(format!("/proc/{pid}"))
            .expect("proc")
            .uid();
        assert_eq!(uid, 65534, "it runs as the agent socket's owner");
        hostile_user_cannot_grow(pid, &dir.path().join("stats"));
        // The spawner killed and started again: it adopts (or takes over) what runs and
        // hands it a new namespace.
        wait_until(T, || {
            std::fs::read_to_string(dir.path().join("records.json"))
                .is_ok_and(|t| t.contains(&ids[0]))
        });
        kill9(d.pid());
        let _ = d.0.wait();
        d = start_daemon(dir.path(), &ini, &[]);
        let (ok, out) = cli(&ini, &["router", "add", &ids[1]]);
        assert!(ok, "{out}");
        assert!(answers(&nss[1]));
        assert!(answers(&nss[0]));
        for id in &ids {
            let pid = serving(id).expect("serving pid");
            hostile_user_cannot_grow(pid, &dir.path().join("stats"));
        }
        if shared {
            // The server taken over was not handed its slab again: it serves VMs, and a
            // descriptor of the slab would let it grow the file (fallocate, write).
            let log = std::fs::read_to_string(dir.path().join("daemon.log")).expect("log");
            let handed = log.matches("statistics slab handed over").count();
            assert_eq!(handed, 1, "{log}");
        }
        drop(d);
    }
}
