//! The one owner of one proxy: start it (or adopt a running one), watch it, restart it at
//! once and then with backoff when it dies, and stop it (SIGTERM, grace, SIGKILL, pid file
//! and addresses removed) when the supervisor says so; while its interface (or namespace)
//! is missing it waits with a short re-check instead of the backoff; a supervisor that goes
//! away without saying so leaves its proxies running for the next one to adopt.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::adopt;
use crate::backoff::Backoff;
use crate::config::{Config, ProxyModel};
use crate::decide::ProxySpec;
use crate::hang;
use crate::launch::{launch_with, Running};
use crate::pidfile;
use crate::platform::{Opened, Platform};
use crate::status::{Status, PID_FILE_NOTE};

/// How often a proxy waiting for its namespace or interface looks again: one netlink link
/// lookup per proxy, so the proxy is up well under a second after the interface appears.
pub(crate) const WAITING_RECHECK: Duration = Duration::from_millis(250);

/// How a proxy task starts.
pub(crate) enum Start {
    Fresh,
    /// A proxy proven ours (see `pidfile::check`), its pidfd already open, and its argv.
    Adopt(Box<Running>, Vec<String>),
}

/// What one proxy task works with (its own copies).
pub(crate) struct Task<P: Platform> {
    pub platform: Arc<P>,
    pub spec: ProxySpec,
    pub args: Vec<String>,
    pub status: Arc<Status>,
    pub stop: oneshot::Receiver<()>,
    pub cfg: Arc<Config>,
    /// Starts in flight across all proxies ([`launch_slots`]).
    pub launches: Arc<tokio::sync::Semaphore>,
    /// `restart` requests ([`Supervisor::restart`](crate::supervisor::Supervisor::restart)),
    /// served while the proxy runs.
    pub restart: mpsc::UnboundedReceiver<RestartReply>,
    /// Shared servers of a previous run (the model was switched back to per-namespace): a
    /// proxy's first start takes its namespace's sockets from them instead of binding.
    pub handover: Option<crate::shared_model::RetiredServers>,
}

/// What `restart ID` did (the control API's answer).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Restarted {
    pub key: String,
    pub old_pid: Option<u32>,
    pub new_pid: Option<u32>,
    /// `takeover` (the new proxy serves the old one's sockets; nothing lost) or `stop-start`
    /// (the fallback: stopped, then started; connections arriving in between are refused).
    pub method: &'static str,
    /// Why the fallback was used.
    pub note: Option<String>,
}

/// Where a restart request's answer goes.
pub(crate) type RestartReply = oneshot::Sender<Result<Restarted, String>>;

/// How a restart request ended for the task.
enum AfterRestart<N> {
    /// The successor runs (the old proxy is gone), in this namespace: watch it.
    Replaced(Running, Restarted, N),
    /// The successor failed; the old proxy keeps serving.
    Kept(Running, String),
    /// No takeover possible (the reason): the old proxy was stopped; a plain start follows.
    Stopped(Option<u32>, String),
}

/// How many proxies may be between "open the namespace" and "READY" at once: enough to keep
/// every core busy (each start is mostly the new proxy's own exec and start-up, plus a few
/// netlink round trips here), few enough that a cold start of thousands does not have them
/// all compete at once, which would make each one's readiness wait (bounded by
/// `ready_timeout`) grow with their number (issue 19).
pub(crate) fn launch_slots() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from) * 16
}

/// The one owner of one proxy: start (or adopt), watch, restart, stop. Detached (its stop
/// sender dropped without a stop) it leaves the proxy running and returns it, so a new task
/// for the same namespace with other arguments can take it over
/// ([`Supervisor::reconcile`](crate::supervisor::Supervisor::reconcile)).
pub(crate) async fn proxy_task<P: Platform>(t: Task<P>, start: Start) -> Option<Running> {
    let Task {
        platform,
        spec,
        args,
        status,
        mut stop,
        cfg,
        launches,
        mut restart,
        handover,
    } = t;
    // A restart that fell back to stop + start, answered by the start's outcome.
    let mut pending_restart: Option<(RestartReply, Option<u32>, String)> = None;
    let pid_dir = cfg.pid_dir();
    let cleanup = Cleanup {
        platform: &*platform,
        spec: &spec,
        status: &status,
        pid_dir: &pid_dir,
    };
    let mut backoff = Backoff::new(cfg.max_restart_delay);
    let mut current: Option<Running> = None;
    // The pid file of the running proxy could not be written (full state dir): retried.
    let mut pid_file_missing = false;
    // The namespace the running proxy was prepared in and entered, for its teardown.
    let mut ns: Option<P::Ns> = None;
    // The running proxy was started by this task (its heartbeat zeroed before), not adopted.
    let mut fresh = false;
    // A hung proxy's listeners (and their namespace's inode) for its successor, and its pid,
    // never adopted again (a frozen task with a pending SIGKILL may still hold the port).
    let mut kept: Option<(u64, Vec<OwnedFd>)> = None;
    let mut killed: Option<u32> = None;
    if let Start::Adopt(r, argv) = start {
        let pid = r.pid().unwrap_or_default();
        // The tail of the cmdline: argv[0] (and an interpreter's script path) may differ.
        if argv.ends_with(&args) {
            tracing::info!(key = %spec.key, pid, "adopted running proxy");
            status.adopted(pid);
            current = Some(*r);
        } else {
            // Other arguments (a changed configuration, or an upgrade that added a flag):
            // replaced by socket takeover, as `restart ID` does, so no connection is refused
            // meanwhile; without the sockets, or if the successor fails, stopped and started.
            tracing::info!(key = %spec.key, pid, "proxy runs with other arguments; replacing it");
            let restart = Restart {
                platform: &*platform,
                spec: &spec,
                cfg: &cfg,
                args: &args,
            };
            match restart.run(*r, &launches, &status, &stop).await {
                AfterRestart::Replaced(new, done, new_ns) => {
                    tracing::info!(key = %spec.key, old = ?done.old_pid, new = ?done.new_pid, "proxy with other arguments replaced by socket takeover");
                    ns = Some(new_ns);
                    current = Some(new);
                    fresh = true;
                }
                AfterRestart::Kept(mut old, why) => {
                    tracing::info!(key = %spec.key, pid, reason = %why, "no socket takeover; stopping it for a plain start");
                    old.stop(cfg.stop_timeout).await;
                    pidfile::remove_own(&pid_dir, &spec.key, Some(pid));
                }
                AfterRestart::Stopped(old_pid, why) => {
                    tracing::info!(key = %spec.key, pid, reason = %why, "no socket takeover; stopped it for a plain start");
                    pidfile::remove_own(&pid_dir, &spec.key, old_pid);
                }
            }
        }
    }
    loop {
        let mut running = match current.take() {
            Some(r) => r,
            None => {
                // Opened once for this start: prepared, entered and later cleaned up
                // through the same fd, even if the name is reused meanwhile.
                // Held until this attempt is over (ready or failed). The semaphore is never
                // closed, so no permit can only mean no limit.
                let slot = Arc::clone(&launches).acquire_owned().await.ok();
                let opened = match platform.open(&spec).await {
                    Ok(Opened::Ready(opened)) => Ok(opened),
                    // Not there yet (the DHCP tap is plugged after the network is
                    // announced): wait for it with a cheap re-check, not through the crash
                    // backoff, and without counting restarts.
                    Ok(Opened::Missing(reason)) => {
                        drop(slot);
                        if status.waiting(reason.clone()) {
                            tracing::info!(key = %spec.key, netns = %spec.netns, reason = %reason, "proxy waiting");
                        }
                        match wait_or_stop(WAITING_RECHECK, &mut stop).await {
                            Wake::Retry => continue,
                            Wake::Stop => {
                                // No process, and no addresses without the interface.
                                pidfile::remove_own(&pid_dir, &spec.key, None);
                                status.stopped();
                                return None;
                            }
                            Wake::Detached => return None,
                        }
                    }
                    Err(e) => Err(e),
                };
                status.starting();
                // Not raced against `stop`: dropping a launch half-way would leave a spawned
                // child unwatched. It is bounded by ready_timeout; a stop sent meanwhile is
                // seen right after (by the select below or by wait_or_stop).
                let attempt = match opened {
                    Ok(opened) => {
                        let listeners = match (kept.take(), &handover) {
                            (Some((ino, l)), _)
                                if platform.namespace_inode(&spec.netns) == Some(ino) =>
                            {
                                l
                            }
                            (_, Some(h)) => handed_over(&*platform, h, &spec).await,
                            _ => Vec::new(),
                        };
                        let r =
                            launch_with(&*platform, &opened, &spec, &cfg, &args, listeners).await;
                        ns = Some(opened);
                        r
                    }
                    Err(e) => Err(e),
                };
                drop(slot);
                match attempt {
                    Ok(r) => {
                        fresh = true;
                        let pid = r.pid();
                        // The proxy serves anyway; only adoption by a restarted
                        // supervisor needs the file, so the status says why it is missing.
                        let pid_error = pid.and_then(|pid| {
                            claim_pid_file(&stop, &pid_dir, &spec, pid).err().map(|e| {
                                tracing::warn!(key = %spec.key, err = %e, "cannot write pid file; retried every second");
                                format!("{PID_FILE_NOTE}: {e}")
                            })
                        });
                        pid_file_missing = pid_error.is_some();
                        tracing::info!(key = %spec.key, netns = %spec.netns, pid = ?pid, "proxy ready");
                        status.running(pid, pid_error);
                        if let Some((reply, old_pid, why)) = pending_restart.take() {
                            let _ = reply.send(Ok(Restarted {
                                key: spec.key.clone(),
                                old_pid,
                                new_pid: pid,
                                method: "stop-start",
                                note: Some(why),
                            }));
                        }
                        r
                    }
                    Err(e) => {
                        // A proxy of ours may hold the port (started before a pid file could
                        // be written, or by a change that was never saved): adopt it rather
                        // than crash-loop next to it; one with other arguments is restarted.
                        let found = adopt::find_for(&*platform, &cfg, &spec)
                            .filter(|(pid, _, _)| Some(*pid) != killed);
                        if let Some((pid, mut r, argv)) = found {
                            if argv.ends_with(&args) {
                                tracing::info!(key = %spec.key, pid, "start failed next to a running proxy of ours; adopted it");
                                if let Err(e) = claim_pid_file(&stop, &pid_dir, &spec, pid) {
                                    tracing::warn!(key = %spec.key, err = %e, "cannot write pid file");
                                }
                                status.adopted(pid);
                                current = Some(r);
                                fresh = false;
                                continue;
                            }
                            tracing::info!(key = %spec.key, pid, "start failed next to a proxy of ours with other arguments; restarting it");
                            r.stop(cfg.stop_timeout).await;
                            continue;
                        }
                        if let Some((reply, _, why)) = pending_restart.take() {
                            let _ = reply.send(Err(format!(
                                "stopped for a plain restart ({why}), but the new proxy failed: {e}"
                            )));
                        }
                        tracing::warn!(key = %spec.key, netns = %spec.netns, err = %e, "proxy start failed");
                        let delay = backoff.start_failed();
                        status.start_failed(e.to_string());
                        if !retry_after(delay, &mut stop, &cleanup, ns.as_ref()).await {
                            return None;
                        }
                        continue;
                    }
                }
            }
        };
        let since = Instant::now();
        let pid = running.pid();
        let hung = watch_for_hang(&cfg, &spec, pid, fresh);
        let rewrite = PidFileRetry {
            missing: &mut pid_file_missing,
            dir: &pid_dir,
            spec: &spec,
            pid,
            status: &status,
        };
        let mut unblocked = std::pin::pin!(block_file_made(&cfg, &spec, pid));
        let restart_asked = async {
            tokio::select! {
                r = restart.recv() => r,
                r = &mut unblocked => Some(r),
            }
        };
        tokio::select! {
            how = rewrite.while_waiting(running.wait()) => {
                pidfile::remove_own(&pid_dir, &spec.key, pid);
                let delay = backoff.died(since.elapsed());
                tracing::warn!(key = %spec.key, netns = %spec.netns, how = %how, restart_in = ?delay, "proxy died");
                status.died(format!("proxy {how}"), delay.is_zero());
                if !retry_after(delay, &mut stop, &cleanup, ns.as_ref()).await {
                    return None;
                }
            }
            still = hung => {
                let pid = pid.unwrap_or_default();
                tracing::error!(key = %spec.key, netns = %spec.netns, pid, still = ?still, "proxy hung: its heartbeat has not moved for longer than hang_timeout and it is not stopped; killing it and starting another on its sockets");
                hang::count(hang::Hung::Proxy(spec.kind));
                status.hung(format!("hung: heartbeat still for {} s; pid {pid} killed, being replaced", still.as_secs()));
                kept = take_for_successor(&*platform, &spec, &running, pid);
                // Not waited for: a frozen task cannot die before it is thawed (cgroup v1). A
                // child of ours is reaped whenever it dies (`Running`'s drop).
                running.signal(rustix::process::Signal::KILL);
                drop(running);
                killed = Some(pid);
                pidfile::remove_own(&pid_dir, &spec.key, Some(pid));
                let delay = backoff.died(since.elapsed());
                if !retry_after(delay, &mut stop, &cleanup, ns.as_ref()).await {
                    return None;
                }
            }
            Some(reply) = restart_asked => {
                if reply.is_closed() {
                    current = Some(running);
                    continue;
                }
                let r = Restart { platform: &*platform, spec: &spec, cfg: &cfg, args: &args };
                match r.run(running, &launches, &status, &stop).await {
                    AfterRestart::Replaced(new, done, new_ns) => {
                        tracing::info!(key = %spec.key, old = ?done.old_pid, new = ?done.new_pid, "proxy restarted by socket takeover");
                        let _ = reply.send(Ok(done));
                        ns = Some(new_ns);
                        current = Some(new);
                        fresh = true;
                    }
                    AfterRestart::Kept(old, e) => {
                        tracing::warn!(key = %spec.key, err = %e, "restart failed; the running proxy keeps serving");
                        let _ = reply.send(Err(e));
                        current = Some(old);
                    }
                    AfterRestart::Stopped(old_pid, why) => {
                        tracing::warn!(key = %spec.key, reason = %why, "no socket takeover; restarting by stop and start");
                        pidfile::remove_own(&pid_dir, &spec.key, old_pid);
                        pending_restart = Some((reply, old_pid, why));
                    }
                }
            }
            asked = &mut stop => {
                if asked.is_err() {
                    // The supervisor is gone without asking for a stop (its last handle was
                    // dropped, e.g. on exit or in a restart): the proxy must outlive it, and
                    // its pid file stays so the next supervisor adopts it.
                    tracing::debug!(key = %spec.key, pid = ?running.pid(), "supervisor gone; leaving the proxy running");
                    return Some(running);
                }
                status.stopping();
                let how = running.stop(cfg.stop_timeout).await;
                tracing::info!(key = %spec.key, netns = %spec.netns, how = %how, "proxy stopped");
                cleanup.finish(ns.as_ref()).await;
                return None;
            }
        }
    }
}

/// Resolves when the running proxy `pid` hangs ([`crate::hang`]): how long its heartbeat was
/// still. Never without a pid, a block to read or a timeout. `fresh`: started by this task.
async fn watch_for_hang(cfg: &Config, spec: &ProxySpec, pid: Option<u32>, fresh: bool) -> Duration {
    let period = hang::period(cfg, ProxyModel::PerNamespace);
    let (Some(pid), true) = (pid, cfg.stats_blocks()) else {
        return std::future::pending().await;
    };
    // An adopted proxy beats at this spawner's pace from now on (not at all with 0).
    let arm = (!fresh).then(|| hang::period_ms(cfg, ProxyModel::PerNamespace));
    let beat = crate::proxy_stats::Beat::open(&cfg.stats_dir(), &spec.key, arm);
    if period.is_zero() {
        return std::future::pending().await;
    }
    let what = format!("proxy {} in {}", spec.id, spec.netns);
    hang::until_hung(cfg.hang_timeout, period, fresh, pid, &what, || {
        beat.as_ref().and_then(crate::proxy_stats::Beat::read)
    })
    .await
}

/// A hung proxy's listening sockets, taken as `restart` takes them (before it is killed), for
/// its successor: connections meanwhile wait in their accept queues. `None` (logged) when
/// they cannot be taken: the successor binds afresh.
fn take_for_successor<P: Platform>(
    platform: &P,
    spec: &ProxySpec,
    running: &Running,
    pid: u32,
) -> Option<(u64, Vec<OwnedFd>)> {
    let taken = match (running.pidfd(), platform.namespace_inode(&spec.netns)) {
        (Some(fd), Some(ino)) => {
            crate::takeover::take_listeners(fd, pid, spec.ipv6, ino).map(|l| (ino, l))
        }
        _ => Err(format!("namespace {} or the process is gone", spec.netns)),
    };
    taken
        .map_err(|why| {
            tracing::warn!(key = %spec.key, pid, reason = %why, "cannot take the hung proxy's sockets; its successor binds afresh");
        })
        .ok()
}

/// A pid file that could not be written when its proxy started (a full state dir), written
/// again every [`crate::persist::SAVE_RETRY`] while the proxy runs, so a spawner restarted
/// after there is room again adopts the proxy by its file.
struct PidFileRetry<'a> {
    missing: &'a mut bool,
    dir: &'a std::path::Path,
    spec: &'a ProxySpec,
    pid: Option<u32>,
    status: &'a Status,
}

impl PidFileRetry<'_> {
    /// `wait`'s outcome, the pid file written meanwhile when it is missing.
    async fn while_waiting<T>(self, wait: impl std::future::Future<Output = T>) -> T {
        let retry = async {
            let Some(pid) = self.pid.filter(|_| *self.missing) else {
                return std::future::pending().await;
            };
            loop {
                tokio::time::sleep(crate::persist::SAVE_RETRY).await;
                if pidfile::write(self.dir, &self.spec.key, pid, &self.spec.interface).is_ok() {
                    tracing::info!(key = %self.spec.key, pid, "pid file written");
                    *self.missing = false;
                    self.status.pid_file_written();
                    return std::future::pending().await;
                }
            }
        };
        tokio::select! {
            out = wait => out,
            never = retry => never,
        }
    }
}

/// For a proxy running without its statistics block file (the state dir was full or
/// read-only at its start: it got an anonymous block, so it is neither counted in `/metrics`
/// nor, after a spawner restart, watched for hangs): once the file can be made (tried every
/// [`crate::persist::SAVE_RETRY`]), a restart of its own by socket takeover, so its successor
/// gets the file (nothing lost). Never resolves for a proxy that has its file.
async fn block_file_made(cfg: &Config, spec: &ProxySpec, pid: Option<u32>) -> RestartReply {
    let path = crate::proxy_stats::path(&cfg.stats_dir(), &spec.key);
    if !cfg.stats_blocks() || pid.is_none() || path.exists() {
        return std::future::pending().await;
    }
    loop {
        tokio::time::sleep(crate::persist::SAVE_RETRY).await;
        // The stats directory made here, one level only: a state dir removed meanwhile (a
        // test's temporary one after its supervisor) is never made again.
        use std::os::unix::fs::DirBuilderExt as _;
        match std::fs::DirBuilder::new()
            .mode(0o700)
            .create(cfg.stats_dir())
        {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(_) => continue,
        }
        if crate::proxy_stats::for_handover(&cfg.stats_dir(), &spec.key).is_ok() {
            break;
        }
    }
    tracing::info!(key = %spec.key, pid = ?pid, "its statistics block can be made now; restarting the proxy on its sockets to give it the block");
    let (reply, answer) = oneshot::channel();
    let key = spec.key.clone();
    tokio::spawn(async move {
        if let Ok(Err(e)) = answer.await {
            tracing::warn!(key = %key, err = %e, "the restart that gives the proxy its statistics block failed");
        }
    });
    reply
}

/// One restart by socket takeover of a running proxy.
struct Restart<'a, P: Platform> {
    platform: &'a P,
    spec: &'a ProxySpec,
    cfg: &'a Config,
    args: &'a [String],
}

impl<P: Platform> Restart<'_, P> {
    /// Take the old proxy's listeners, start the successor with them, wait for its READY,
    /// write its pid file, then stop the old one (SIGTERM: it stops accepting at once and
    /// finishes what it holds). Without the listeners (no CAP_SYS_PTRACE, the process gone,
    /// the namespace replaced) the old proxy is stopped for a plain start.
    /// `stop`: the task's ([`claim_pid_file`]).
    async fn run(
        &self,
        mut old: Running,
        launches: &Arc<tokio::sync::Semaphore>,
        status: &Status,
        stop: &oneshot::Receiver<()>,
    ) -> AfterRestart<P::Ns> {
        let (spec, cfg) = (self.spec, self.cfg);
        let old_pid = old.pid();
        let stop_for_plain_start = |mut old: Running, why: String| async move {
            old.stop(cfg.stop_timeout).await;
            AfterRestart::Stopped(old_pid, why)
        };
        let (Some(pid), Some(ino)) = (old_pid, self.platform.namespace_inode(&spec.netns)) else {
            return stop_for_plain_start(
                old,
                format!("namespace {} or the process is gone", spec.netns),
            )
            .await;
        };
        let ns = match self.platform.open(spec).await {
            Ok(Opened::Ready(ns)) => ns,
            Ok(Opened::Missing(why)) => return AfterRestart::Kept(old, why),
            Err(e) => return AfterRestart::Kept(old, e.to_string()),
        };
        if self.platform.namespace_inode(&spec.netns) != Some(ino) {
            return AfterRestart::Kept(
                old,
                format!("namespace {} was replaced meanwhile", spec.netns),
            );
        }
        let taken = match old.pidfd() {
            Some(pidfd) => crate::takeover::take_listeners(pidfd, pid, spec.ipv6, ino),
            None => Err("the process is gone".to_owned()),
        };
        let listeners = match taken {
            Ok(l) => l,
            Err(why) => return stop_for_plain_start(old, why).await,
        };
        let slot = Arc::clone(launches).acquire_owned().await.ok();
        let started = launch_with(self.platform, &ns, spec, cfg, self.args, listeners).await;
        drop(slot);
        let new = match started {
            Ok(new) => new,
            Err(e) => {
                return AfterRestart::Kept(
                    old,
                    format!("the new proxy failed, pid {pid} keeps serving: {e}"),
                )
            }
        };
        let new_pid = new.pid();
        let pid_error = new_pid.and_then(|p| {
            claim_pid_file(stop, &cfg.pid_dir(), spec, p)
                .err()
                .map(|e| format!("cannot write pid file: {e}"))
        });
        status.running(new_pid, pid_error);
        let how = old.stop(cfg.stop_timeout).await;
        tracing::info!(key = %spec.key, pid, how = %how, "previous proxy stopped");
        AfterRestart::Replaced(
            new,
            Restarted {
                key: spec.key.clone(),
                old_pid,
                new_pid,
                method: "takeover",
                note: None,
            },
            ns,
        )
    }
}

/// Why a wait between tries ended.
enum Wake {
    /// The delay passed: try again.
    Retry,
    /// The supervisor asked for a stop.
    Stop,
    /// The supervisor is gone (its stop sender was dropped without sending): end the task
    /// and touch nothing; the next supervisor starts what it wants.
    Detached,
}

/// Sleep `delay` unless stopped (or detached) first.
async fn wait_or_stop(delay: Duration, stop: &mut oneshot::Receiver<()>) -> Wake {
    if delay.is_zero() {
        return match stop.try_recv() {
            Ok(()) => Wake::Stop,
            Err(oneshot::error::TryRecvError::Closed) => Wake::Detached,
            Err(oneshot::error::TryRecvError::Empty) => Wake::Retry,
        };
    }
    tokio::select! {
        _ = tokio::time::sleep(delay) => Wake::Retry,
        asked = stop => if asked.is_ok() { Wake::Stop } else { Wake::Detached },
    }
}

/// Write `pid` as `spec`'s pid file, for a proxy this task has just started or adopted,
/// unless the task was asked to stop meanwhile (the key moved to another namespace while this
/// proxy was starting): the successor for the key may have written the file already, and
/// this proxy is stopped next, so it does not claim the file. Its removal would then leave
/// the running successor without one, unadoptable by a restarted spawner
/// ([`pidfile::remove_own`] keeps a file that names another live proxy).
fn claim_pid_file(
    stop: &oneshot::Receiver<()>,
    dir: &std::path::Path,
    spec: &ProxySpec,
    pid: u32,
) -> crate::Result<()> {
    if !stop.is_empty() {
        return Ok(());
    }
    pidfile::write(dir, &spec.key, pid, &spec.interface)
}

/// What the end of a proxy needs to clean up.
struct Cleanup<'a, P: Platform> {
    platform: &'a P,
    spec: &'a ProxySpec,
    status: &'a Status,
    pid_dir: &'a std::path::Path,
}

impl<P: Platform> Cleanup<'_, P> {
    /// After the process is gone: addresses removed, in the namespace the proxy was started
    /// in (`ns`; an adopted proxy's namespace is opened by name, if still there), then the
    /// pid file: killed in between, the next start still finds the record of what to tear
    /// down (issue "hardening", item 11).
    async fn finish(&self, ns: Option<&P::Ns>) {
        let spec = self.spec;
        let opened;
        let ns = match ns {
            Some(ns) => Some(ns),
            None if self.platform.namespace_exists(&spec.netns) => {
                opened = self.platform.open(spec).await;
                match &opened {
                    Ok(Opened::Ready(ns)) => Some(ns),
                    _ => None,
                }
            }
            None => None,
        };
        if let Some(ns) = ns {
            if let Err(e) = self.platform.teardown(ns, spec).await {
                tracing::warn!(key = %spec.key, netns = %spec.netns, err = %e, "teardown failed");
            }
        }
        pidfile::remove_own(self.pid_dir, &spec.key, self.status.pid());
        self.status.stopped();
    }
}

/// Wait `delay` before the next start and count the restart: true to go on. A stop asked
/// meanwhile cleans up ([`Cleanup::finish`]); a detached task touches nothing. Either ends
/// the task.
async fn retry_after<P: Platform>(
    delay: Duration,
    stop: &mut oneshot::Receiver<()>,
    cleanup: &Cleanup<'_, P>,
    ns: Option<&P::Ns>,
) -> bool {
    match wait_or_stop(delay, stop).await {
        Wake::Retry => {
            cleanup.status.restarting();
            true
        }
        Wake::Stop => {
            cleanup.finish(ns).await;
            false
        }
        Wake::Detached => false,
    }
}

/// The listening sockets a shared server of a previous run served `spec`'s namespace with,
/// in `--bind` order (the metadata address, then its IPv6 one), when they are all the
/// proxy binds: it takes them over (nothing refused while the model changes). Anything else
/// is dropped and the proxy binds afresh (the server has been told to close its copies).
async fn handed_over<P: Platform>(
    platform: &P,
    from: &crate::shared_model::RetiredServers,
    spec: &ProxySpec,
) -> Vec<OwnedFd> {
    let ino = platform.namespace_inode(&spec.netns);
    let Some(mut fds) = from.take_back(spec, ino).await else {
        return Vec::new();
    };
    let v6 = |fd: &OwnedFd| {
        rustix::net::getsockname(fd)
            .is_ok_and(|a| a.address_family() == rustix::net::AddressFamily::INET6)
    };
    fds.sort_by_key(v6);
    let want = 1 + usize::from(spec.ipv6);
    if fds.len() != want || fds.iter().skip(1).any(|fd| !v6(fd)) || v6(&fds[0]) {
        tracing::info!(key = %spec.key, sockets = fds.len(), "the shared server's sockets are not the ones this proxy binds; binding afresh");
        return Vec::new();
    }
    fds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dropped_sender_detaches_sent_stop_stops() {
        for delay in [Duration::ZERO, Duration::from_secs(60)] {
            let (tx, mut rx) = oneshot::channel::<()>();
            drop(tx);
            assert!(matches!(wait_or_stop(delay, &mut rx).await, Wake::Detached));
            let (tx, mut rx) = oneshot::channel();
            tx.send(()).expect("receiver alive");
            assert!(matches!(wait_or_stop(delay, &mut rx).await, Wake::Stop));
        }
        let (_tx, mut rx) = oneshot::channel::<()>();
        assert!(matches!(
            wait_or_stop(Duration::ZERO, &mut rx).await,
            Wake::Retry
        ));
    }
}
