//! `ns-metadata-spawner run`: load config and records, bind the control socket, adopt or
//! start proxies, tell systemd READY (then RELOADING/READY around each SIGHUP, STOPPING on
//! exit, and a one-line STATUS), then serve events (control API, SIGHUP reload of config and
//! records file, `/run/netns` watch) until SIGTERM/SIGINT.

use std::time::Duration;

use futures::StreamExt;
use ns_contract::notify::{self, State as Notify};
use ns_contract::{validate_id, Kind};
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{Config, Sources};
use crate::platform::Platform;
use crate::records::{RecordSet, Records};
use crate::supervisor::Supervisor;
use crate::{api, Error, Result};

/// How often the one-line status for systemd (and the agent probe) is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Tell systemd, if it is listening; a failure is logged, never fatal.
fn sd_notify(states: &[Notify]) {
    if let Err(e) = notify::notify(states) {
        tracing::warn!(err = %e, "sd_notify failed");
    }
}

/// "12 proxies running, 0 failing; agent socket ... reachable".
async fn status_line<P: Platform>(sup: &Supervisor<P>) -> String {
    let agent = sup.check_agent().await;
    match sup.records_state().summary() {
        Some(r) => format!("{}; {}; {r}", sup.summary(), agent.summary()),
        None => format!("{}; {}", sup.summary(), agent.summary()),
    }
}

/// While the OVN source starts, systemd's start timeout is pushed back by this much, this
/// often: waiting for a database has no time limit (the unit's `TimeoutStartSec=` still
/// bounds everything else of the start).
const EXTEND_BY: Duration = Duration::from_secs(60);
const EXTEND_EVERY: Duration = Duration::from_secs(20);

/// Start the OVN source: meanwhile the control socket answers 503 with what the start waits
/// for, which is also systemd's `STATUS=`, and SIGTERM/SIGINT end the wait (`None`).
async fn start_ovn<P: Platform>(
    sup: &Supervisor<P>,
    opts: &crate::ovn_source::OvnOptions,
    listener: &tokio::net::UnixListener,
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) -> Result<Option<crate::ovn_source::OvnSource>> {
    let (tx, mut rx) = tokio::sync::watch::channel(String::from("connecting to the OVN databases"));
    let start = crate::ovn_source::OvnSource::start_reporting(sup.clone(), opts, &tx);
    let answer = api::serve_starting(listener, rx.clone());
    tokio::pin!(start, answer);
    let mut extend = tokio::time::interval(EXTEND_EVERY);
    loop {
        tokio::select! {
            r = &mut start => return r.map(Some),
            _ = &mut answer => {}
            Ok(()) = rx.changed() => {
                let now = format!("starting: {}", *rx.borrow_and_update());
                sd_notify(&[Notify::Status(now)]);
            }
            _ = extend.tick() => sd_notify(&[Notify::ExtendTimeout(EXTEND_BY)]),
            _ = term.recv() => return Ok(None),
            _ = int.recv() => return Ok(None),
        }
    }
}

/// What `run` needs besides the platform.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Files, directories, flags and environment, read again on SIGHUP.
    pub sources: Sources,
    /// Stop every proxy when the supervisor exits (default: leave them running).
    pub stop_proxies_on_exit: bool,
    /// Watch `/run/netns` (off only for tests without namespaces).
    pub watch_netns: bool,
}

/// Load the configuration; each warning (unknown key, old name, option without effect) is
/// logged once per load, so again on every SIGHUP while it is not fixed.
pub fn load_config(opts: &RunOptions) -> Result<Config> {
    let (cfg, warnings) = opts.sources.load()?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    Ok(cfg)
}

/// `[spawner] records_file`'s records. An error names the option: at start it stops the
/// spawner (its proxies keep running, and are adopted once the file is mended); at a reload
/// the old records are kept.
fn load_file_records(cfg: &Config) -> Result<RecordSet> {
    match &cfg.records_file {
        Some(p) => RecordSet::load(p).map_err(|e| {
            Error::Invalid(format!(
                "[spawner] records_file: {e} (fix or remove the file; running proxies are left alone)"
            ))
        }),
        None => Ok(RecordSet::default()),
    }
}

fn router_of_netns(name: &str) -> Option<String> {
    name.strip_prefix(Kind::Router.netns_prefix())
        .filter(|id| validate_id(id).is_ok())
        .map(str::to_owned)
}

/// Run the supervisor until SIGTERM or SIGINT.
pub async fn run<P: Platform>(platform: P, opts: RunOptions) -> Result<()> {
    let cfg = load_config(&opts)?;
    // Every namespace holds a descriptor here (its namespace, and in the shared model its
    // listening sockets, 2 or 3 each): at the 1,024 systemd and shells start us with, the
    // shared model could serve ~500 namespaces and a takeover of a bigger server would fail.
    // Proxies and shared servers inherit it (issue #20).
    match ns_contract::rlimit::raise_nofile_to_hard() {
        Ok((soft, hard)) => tracing::debug!(soft, hard, "open-files limit"),
        Err(e) => tracing::warn!(err = %e, "cannot raise the open-files limit to the hard one"),
    }
    // Handlers first: a SIGHUP during start-up must not kill us (its default action).
    let sig = |k: SignalKind| signal(k).map_err(|e| Error::io("install signal handler", "", e));
    let (mut hup, mut term, mut int) = (
        sig(SignalKind::hangup())?,
        sig(SignalKind::terminate())?,
        sig(SignalKind::interrupt())?,
    );
    // 0700, ours alone: pid files there name processes we may signal (statedir.rs).
    for dir in [cfg.state_dir.clone(), cfg.pid_dir()] {
        crate::statedir::prepare(&dir)?;
    }
    let listener = api::bind(&cfg.control_socket)?;
    let metrics = match cfg.metrics_bind {
        Some(addr) => Some(api::bind_metrics(addr).await?),
        None => None,
    };
    let mut records = Records::default();
    // A damaged records.json is set aside and recovered from, never a crash loop; then the
    // journal's changes not yet in it are replayed.
    let loaded = crate::persist::load(&cfg.state_dir)?;
    records.set_api(loaded.set);
    records.file = load_file_records(&cfg)?;
    // Start the watch before listing, so no namespace falls between the two.
    let mut watch = if opts.watch_netns {
        Some(ns_netns::watch().map_err(|e| Error::Netns(e.to_string()))?)
    } else {
        None
    };
    let auto = cfg.auto_enable_routers && opts.watch_netns;
    if auto {
        records.auto_routers = ns_netns::list()
            .map_err(|e| Error::Netns(e.to_string()))?
            .iter()
            .filter_map(|n| router_of_netns(n))
            .collect();
    }
    if !proxy_binary_found(&cfg.proxy_binary) {
        tracing::warn!(path = %cfg.proxy_binary.display(), "proxy binary not found; proxies will fail to start (set [spawner] proxy_binary)");
    }
    let control_socket = cfg.control_socket.clone();
    let ovn = cfg.ovn.clone();
    let sup = Supervisor::new(platform, cfg, records);
    sup.set_recovery(loaded.recovery);
    sup.set_journal(loaded.journal);
    // The OVN source builds its namespaces and hands over their records before adoption, so
    // running proxies are adopted, not rebuilt. Held until exit (dropping it stops it).
    let _ovn = match &ovn {
        Some(o) => match start_ovn(&sup, o, &listener, &mut term, &mut int).await? {
            Some(source) => Some(source),
            // SIGTERM/SIGINT while starting: nothing was adopted yet.
            None => {
                sd_notify(&[Notify::Stopping]);
                return Ok(());
            }
        },
        None => None,
    };
    sup.adopt_and_start().await;
    tracing::info!(proxies = sup.status().len(), socket = %control_socket.display(), "first reconcile done");
    // READY alone first: a watcher that reads one datagram sees exactly it.
    sd_notify(&[Notify::Ready]);
    let mut last_status = status_line(&sup).await;
    sd_notify(&[Notify::Status(last_status.clone())]);
    let mut tick = tokio::time::interval(STATUS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    tokio::spawn(api::serve(sup.clone(), listener));
    if let Some(m) = metrics {
        tracing::info!(addr = ?m.local_addr().ok(), "serving GET /metrics over TCP");
        tokio::spawn(api::serve_metrics(sup.clone(), m));
    }
    let looper = sup.clone();
    tokio::spawn(async move { looper.run_loop().await });

    loop {
        tokio::select! {
            _ = hup.recv() => {
                sd_notify(&[Notify::Reloading]);
                reload(&sup, &opts);
                sd_notify(&[Notify::Ready]);
            }
            _ = tick.tick() => {
                let now = status_line(&sup).await;
                if now != last_status {
                    sd_notify(&[Notify::Status(now.clone())]);
                    last_status = now;
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            ev = async { match watch.as_mut() { Some(w) => w.next().await, None => std::future::pending().await } } => {
                match ev {
                    Some(Ok(ns_netns::NetnsEvent::Added(name))) => {
                        tracing::debug!(netns = %name, "namespace added");
                        match router_of_netns(&name).filter(|_| auto) {
                            Some(id) => sup.set_auto_router(&id, true),
                            None => sup.trigger(),
                        }
                    }
                    Some(Ok(ns_netns::NetnsEvent::Removed(name))) => {
                        tracing::debug!(netns = %name, "namespace removed");
                        match router_of_netns(&name).filter(|_| auto) {
                            Some(id) => sup.set_auto_router(&id, false),
                            None => sup.trigger(),
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(err = %e, "netns watch: rescanning");
                        if auto {
                            if let Ok(names) = ns_netns::list() {
                                let ids = names.iter().filter_map(|n| router_of_netns(n)).collect();
                                sup.set_auto_routers(ids);
                            }
                        }
                        sup.trigger();
                    }
                    None => {
                        tracing::error!("netns watch ended; vanished namespaces are now noticed only on reconcile");
                        watch = None;
                    }
                }
            }
        }
    }
    sd_notify(&[Notify::Stopping]);
    // A change made just before SIGTERM is still in the save delay (and in the journal):
    // write the snapshot now, so the next start has nothing to replay.
    if let Err(e) = sup.flush_records().await {
        tracing::error!(err = %e, "records.json not saved at exit; the next start replays the API changes since the last good save from records.journal (those answered 500, not saved, are lost)");
    }
    if opts.stop_proxies_on_exit {
        tracing::info!("stopping every proxy (--stop-proxies-on-exit)");
        sup.stop_all().await;
    } else {
        tracing::info!("exiting; proxies keep running and will be adopted on the next start");
    }
    let _ = std::fs::remove_file(&control_socket);
    Ok(())
}

/// Whether the proxy binary exists (a bare name is looked up in `PATH`).
fn proxy_binary_found(p: &std::path::Path) -> bool {
    if p.components().count() > 1 {
        return p.is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(p).is_file()))
}

/// SIGHUP: re-read every configuration layer (same files, directories, flags and
/// environment) and the records file; proxies whose argv changes restart. A bad value keeps
/// the old configuration.
fn reload<P: Platform>(sup: &Supervisor<P>, opts: &RunOptions) {
    let old = sup.config();
    let mut cfg = match load_config(opts) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(err = %e, "reload failed; keeping the old configuration");
            return;
        }
    };
    let kept = cfg.keep_restart_only(&old);
    if !kept.is_empty() {
        tracing::warn!(keys = %kept.join(", "), "these change only on restart; their old values are kept");
    }
    match load_file_records(&cfg) {
        Ok(set) => sup.set_file_records(set),
        Err(e) => {
            tracing::error!(err = %e, "reload of the records file failed; keeping the old records")
        }
    }
    tracing::info!("configuration reloaded");
    sup.set_config(cfg);
}
