//! `ns-bench`: the measuring tool `run.sh` drives (agent ceiling, namespace probes,
//! kill -9 timing, request loop across a supervisor restart, control API latency, report
//! rendering).
//! Results go to stdout as one JSON object per call (report: Markdown).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use ns_bench::probe::{get, Netns, Probe};
use ns_bench::{control, load, report};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "Measuring tool for bench/run.sh")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Direct load on the agent's Unix socket: its ceiling.
    AgentLoad {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long, default_value_t = 32)]
        conns: usize,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// Keep connections open (for an agent in keepalive mode).
        #[arg(long)]
        reuse: bool,
    },
    /// Wait until every namespace answers 200 on ADDR; times are from --t0-ns / --t1-ns
    /// (CLOCK_REALTIME ns, e.g. `date +%s%N`).
    Wait {
        /// File with one namespace name per line.
        #[arg(long)]
        netns_file: PathBuf,
        #[arg(long, default_value = "169.254.169.254:80")]
        addr: SocketAddr,
        #[arg(long)]
        t0_ns: u128,
        #[arg(long)]
        t1_ns: Option<u128>,
        #[arg(long, default_value_t = 60_000)]
        timeout_ms: u64,
        /// Pause between passes over the namespaces not answering yet (a shorter one takes
        /// CPU from what is being measured).
        #[arg(long, default_value_t = 1)]
        pause_ms: u64,
    },
    /// SIGKILL PID (a proxy in NETNS) and time until NETNS answers 200 again.
    KillWait {
        #[arg(long)]
        netns: String,
        #[arg(long)]
        pid: i32,
        #[arg(long, default_value = "169.254.169.254:80")]
        addr: SocketAddr,
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
    },
    /// Request loop (fresh connection per request, round-robin over namespaces) for SECS;
    /// counts failures, and among them connections not made (refused).
    Loop {
        #[arg(long)]
        netns_file: PathBuf,
        #[arg(long, default_value = "169.254.169.254:80")]
        addr: SocketAddr,
        #[arg(long)]
        secs: f64,
    },
    /// Open CONNS client connections from inside NETNS and hold them for SECS (issue 8:
    /// memory under 2,000 open client connections). `--partial` sends an unfinished request
    /// head on each (the proxy must buffer it), otherwise a complete keep-alive request whose
    /// answer is left unread. Prints one JSON line once all are open, then holds.
    Hold {
        #[arg(long)]
        netns: String,
        #[arg(long, default_value = "169.254.169.254:80")]
        addr: SocketAddr,
        #[arg(long, default_value_t = 2000)]
        conns: usize,
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
        #[arg(long)]
        partial: bool,
    },
    /// PUT FILL routers (`{}` body, ids PREFIX-<12 digits>) through the spawner's control
    /// socket, then MEASURE more on top, one at a time, each on a fresh connection; prints the
    /// latency percentiles of the MEASURE ones (figure 7, issue 13 item 13). GAP_MS between
    /// the measured ones spreads them over many of the spawner's save windows (100 ms), so
    /// some meet a save in progress, as a steady stream of announcements does.
    ControlPut {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        prefix: String,
        #[arg(long, default_value_t = 5000)]
        fill: usize,
        #[arg(long, default_value_t = 1000)]
        measure: usize,
        #[arg(long, default_value_t = 0.0)]
        gap_ms: f64,
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
    },
    /// Render raw samples into Markdown (stdout and --md) and JSON (--json).
    Report {
        #[arg(long)]
        raw: PathBuf,
        #[arg(long)]
        json: PathBuf,
        #[arg(long)]
        md: PathBuf,
        /// key=value pairs stored in the JSON `meta` object.
        #[arg(long)]
        meta: Vec<String>,
    },
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn ms_since(t: u128, now: u128) -> f64 {
    now.saturating_sub(t) as f64 / 1e6
}

fn read_names(path: &PathBuf) -> anyhow::Result<Vec<Netns>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Netns::open(l.trim()))
        .collect()
}

fn emit(value: &serde_json::Value) {
    #[allow(clippy::print_stdout)]
    {
        println!("{value}");
    }
}

fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // State is the field after the parenthesised comm; Z = exited, not yet reaped.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(true),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::AgentLoad {
            socket,
            conns,
            secs,
            reuse,
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("build runtime")?;
            let start = Instant::now();
            let t = rt.block_on(load::run(
                &socket,
                conns,
                Duration::from_secs_f64(secs),
                reuse,
            ));
            let el = start.elapsed().as_secs_f64();
            emit(&json!({"ok": t.ok, "errors": t.errors, "secs": el, "rps": t.ok as f64 / el}));
        }
        Cmd::Wait {
            netns_file,
            addr,
            t0_ns,
            t1_ns,
            timeout_ms,
            pause_ms,
        } => {
            let mut pending = read_names(&netns_file)?;
            let total = pending.len();
            let limit = Instant::now() + Duration::from_millis(timeout_ms);
            let mut last = now_ns();
            while !pending.is_empty() && Instant::now() < limit {
                let mut still = Vec::with_capacity(pending.len());
                for ns in pending {
                    ns.enter()?;
                    if get(addr, Duration::from_millis(500)) == Probe::Status(200) {
                        last = now_ns();
                    } else {
                        still.push(ns);
                    }
                }
                pending = still;
                if !pending.is_empty() {
                    std::thread::sleep(Duration::from_millis(pause_ms));
                }
            }
            emit(&json!({
                "total": total,
                "missing": pending.len(),
                "missing_names": pending.iter().take(5).map(|n| n.name.clone()).collect::<Vec<_>>(),
                "all_ms": ms_since(t0_ns, last),
                "after_last_ms": t1_ns.map(|t| ms_since(t, last)),
            }));
            if !pending.is_empty() {
                anyhow::bail!("{} of {total} namespaces never answered", pending.len());
            }
        }
        Cmd::KillWait {
            netns,
            pid,
            addr,
            timeout_ms,
        } => {
            let ns = Netns::open(&netns)?;
            ns.enter()?;
            match get(addr, Duration::from_secs(2)) {
                Probe::Status(200) => {}
                other => anyhow::bail!("{netns} does not answer before the kill: {other:?}"),
            }
            let start = Instant::now();
            let limit = start + Duration::from_millis(timeout_ms);
            kill(Pid::from_raw(pid), Signal::SIGKILL).with_context(|| format!("kill -9 {pid}"))?;
            // A connection must not land in the dying process's listen queue.
            while !process_gone(pid) && Instant::now() < limit {
                std::thread::sleep(Duration::from_micros(200));
            }
            let mut attempts = 0u64;
            let mut last = Probe::Failed("not tried".into());
            while Instant::now() < limit {
                attempts += 1;
                last = get(addr, Duration::from_millis(500));
                if last == Probe::Status(200) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let ms = start.elapsed().as_secs_f64() * 1e3;
            emit(&json!({"ms": ms, "attempts": attempts, "answered": last == Probe::Status(200)}));
            if last != Probe::Status(200) {
                anyhow::bail!("{netns} did not answer within {timeout_ms} ms: {last:?}");
            }
        }
        Cmd::Loop {
            netns_file,
            addr,
            secs,
        } => {
            let names = read_names(&netns_file)?;
            anyhow::ensure!(
                !names.is_empty(),
                "no namespaces in {}",
                netns_file.display()
            );
            let end = Instant::now() + Duration::from_secs_f64(secs);
            let (mut ok, mut failed, mut refused) = (0u64, 0u64, 0u64);
            let mut samples = Vec::new();
            let mut i = 0usize;
            while Instant::now() < end {
                let ns = &names[i % names.len()];
                i += 1;
                ns.enter()?;
                match get(addr, Duration::from_secs(5)) {
                    Probe::Status(200) => ok += 1,
                    other => {
                        failed += 1;
                        // Not connected at all (refused, or no answer to the SYN), as
                        // against a request lost in flight.
                        if matches!(&other, Probe::Failed(e) if e.starts_with("connect")) {
                            refused += 1;
                        }
                        if samples.len() < 10 {
                            samples.push(format!("{}: {other:?}", ns.name));
                        }
                    }
                }
            }
            emit(
                &json!({"ok": ok, "failed": failed, "refused": refused, "total": ok + failed, "failures": samples}),
            );
        }
        Cmd::Hold {
            netns,
            addr,
            conns,
            secs,
            partial,
        } => {
            Netns::open(&netns)?.enter()?;
            let req: &[u8] = if partial {
                b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\nUser-Agent: ns-bench-hold\r\n"
            } else {
                b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"
            };
            let mut held = Vec::with_capacity(conns);
            let (mut failed, mut in_a_row) = (0usize, 0usize);
            for i in 0..conns {
                // Past the proxy's connection limit the handshake still completes into the
                // listen backlog until that is full; then SYNs are dropped. The timeout covers
                // one SYN retransmission (1 s); a short pause every 64 lets the proxy accept.
                if i % 64 == 63 {
                    std::thread::sleep(Duration::from_millis(5));
                }
                match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(1500)) {
                    Ok(mut s) => {
                        use std::io::Write as _;
                        in_a_row = 0;
                        if s.write_all(req).is_err() {
                            failed += 1;
                        }
                        held.push(s);
                    }
                    Err(_) => {
                        failed += 1;
                        in_a_row += 1;
                        if in_a_row >= 3 {
                            break;
                        }
                    }
                }
            }
            emit(&json!({"opened": held.len(), "failed": failed}));
            std::thread::sleep(Duration::from_secs_f64(secs));
            drop(held);
        }
        Cmd::ControlPut {
            socket,
            prefix,
            fill,
            measure,
            gap_ms,
            timeout_ms,
        } => {
            let timeout = Duration::from_millis(timeout_ms);
            let id = |i: usize| format!("{prefix}-{i:012}");
            let start = Instant::now();
            for i in 0..fill {
                control::put_router(&socket, &id(i), timeout)?;
            }
            let fill_secs = start.elapsed().as_secs_f64();
            let start = Instant::now();
            let mut ms = Vec::with_capacity(measure);
            for i in fill..fill + measure {
                if gap_ms > 0.0 {
                    std::thread::sleep(Duration::from_secs_f64(gap_ms / 1e3));
                }
                let (_, took) = control::put_router(&socket, &id(i), timeout)?;
                ms.push(took.as_secs_f64() * 1e3);
            }
            emit(&json!({
                "fill": fill,
                "fill_secs": fill_secs,
                "fill_mean_ms": fill_secs * 1e3 / fill.max(1) as f64,
                "measured": measure,
                "measure_secs": start.elapsed().as_secs_f64(),
                "p50_ms": control::percentile(&ms, 50.0),
                "p99_ms": control::percentile(&ms, 99.0),
                "max_ms": control::percentile(&ms, 100.0),
                "last_id": id((fill + measure).saturating_sub(1)),
            }));
        }
        Cmd::Report {
            raw,
            json: json_path,
            md: md_path,
            meta,
        } => {
            let text =
                std::fs::read_to_string(&raw).with_context(|| format!("read {}", raw.display()))?;
            let samples =
                report::parse_raw(&text).map_err(|e| anyhow::anyhow!("{}: {e}", raw.display()))?;
            let meta: Vec<(String, String)> = meta
                .iter()
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
                    (k.to_owned(), v.to_owned())
                })
                .collect();
            let md = report::markdown(&samples);
            let doc = report::json(&samples, &meta);
            std::fs::write(
                &json_path,
                serde_json::to_string_pretty(&doc).context("encode json")? + "\n",
            )
            .with_context(|| format!("write {}", json_path.display()))?;
            std::fs::write(&md_path, &md)
                .with_context(|| format!("write {}", md_path.display()))?;
            #[allow(clippy::print_stdout)]
            {
                print!("{md}");
            }
        }
    }
    Ok(())
}
