//! The one owner of one proxy: start it (or adopt a running one), watch it, restart it at
//! once and then with backoff when it dies, and stop it (SIGTERM, grace, SIGKILL, pid file
//! and addresses removed) when the supervisor says so; while its interface (or namespace)
//! is missing it waits with a short re-check instead of the backoff; a supervisor that goes
//! away without saying so leaves its proxies running for the next one to adopt.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::adopt;
use crate::backoff::Backoff;
use crate::config::Config;
use crate::decide::ProxySpec;
use crate::launch::{launch, Running};
use crate::pidfile;
use crate::platform::{Opened, Platform};
use crate::status::Status;

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
}

/// How many proxies may be between "open the namespace" and "READY" at once: enough to keep
/// every core busy (each start is mostly the new proxy's own exec and start-up, plus a few
/// netlink round trips here), few enough that a cold start of thousands does not have them
/// all compete at once, which would make each one's readiness wait (bounded by
/// `ready_timeout`) grow with their number (issue 19).
pub(crate) fn launch_slots() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from) * 16
}

/// The one owner of one proxy: start (or adopt), watch, restart, stop.
pub(crate) async fn proxy_task<P: Platform>(t: Task<P>, start: Start) {
    let Task {
        platform,
        spec,
        args,
        status,
        mut stop,
        cfg,
        launches,
    } = t;
    let pid_dir = cfg.pid_dir();
    let cleanup = Cleanup {
        platform: &*platform,
        spec: &spec,
        status: &status,
        pid_dir: &pid_dir,
    };
    let mut backoff = Backoff::new(cfg.max_restart_delay);
    let mut current: Option<Running> = None;
    // The namespace the running proxy was prepared in and entered, for its teardown.
    let mut ns: Option<P::Ns> = None;
    if let Start::Adopt(mut r, argv) = start {
        let pid = r.pid().unwrap_or_default();
        // The tail of the cmdline: argv[0] (and an interpreter's script path) may differ.
        if argv.ends_with(&args) {
            tracing::info!(key = %spec.key, pid, "adopted running proxy");
            status.adopted(pid);
            current = Some(*r);
        } else {
            tracing::info!(key = %spec.key, pid, "proxy runs with other arguments; restarting it");
            r.stop(cfg.stop_timeout).await;
            pidfile::remove(&pid_dir, &spec.key);
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
                                return;
                            }
                            Wake::Detached => return,
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
                        let r = launch(&*platform, &opened, &spec, &cfg, &args).await;
                        ns = Some(opened);
                        r
                    }
                    Err(e) => Err(e),
                };
                drop(slot);
                match attempt {
                    Ok(r) => {
                        let pid = r.pid();
                        // The proxy serves anyway; only adoption by a restarted
                        // supervisor needs the file, so the status says why it is missing.
                        let pid_error = pid.and_then(|pid| {
                            pidfile::write(&pid_dir, &spec.key, pid, &spec.interface).err().map(|e| {
                                tracing::warn!(key = %spec.key, err = %e, "cannot write pid file");
                                format!("cannot write pid file: {e}")
                            })
                        });
                        tracing::info!(key = %spec.key, netns = %spec.netns, pid = ?pid, "proxy ready");
                        status.running(pid, pid_error);
                        r
                    }
                    Err(e) => {
                        // A proxy of ours may hold the port (started before a pid file could
                        // be written, or by a change that was never saved): adopt it rather
                        // than crash-loop next to it; one with other arguments is restarted.
                        if let Some((pid, mut r, argv)) = adopt::find_for(&*platform, &cfg, &spec) {
                            if argv.ends_with(&args) {
                                tracing::info!(key = %spec.key, pid, "start failed next to a running proxy of ours; adopted it");
                                if let Err(e) =
                                    pidfile::write(&pid_dir, &spec.key, pid, &spec.interface)
                                {
                                    tracing::warn!(key = %spec.key, err = %e, "cannot write pid file");
                                }
                                status.adopted(pid);
                                current = Some(r);
                                continue;
                            }
                            tracing::info!(key = %spec.key, pid, "start failed next to a proxy of ours with other arguments; restarting it");
                            r.stop(cfg.stop_timeout).await;
                            continue;
                        }
                        tracing::warn!(key = %spec.key, netns = %spec.netns, err = %e, "proxy start failed");
                        let delay = backoff.start_failed();
                        status.start_failed(e.to_string());
                        if !retry_after(delay, &mut stop, &cleanup, ns.as_ref()).await {
                            return;
                        }
                        continue;
                    }
                }
            }
        };
        let since = Instant::now();
        let pid = running.pid();
        tokio::select! {
            how = running.wait() => {
                pidfile::remove_own(&pid_dir, &spec.key, pid);
                let delay = backoff.died(since.elapsed());
                tracing::warn!(key = %spec.key, netns = %spec.netns, how = %how, restart_in = ?delay, "proxy died");
                status.died(format!("proxy {how}"), delay.is_zero());
                if !retry_after(delay, &mut stop, &cleanup, ns.as_ref()).await {
                    return;
                }
            }
            asked = &mut stop => {
                if asked.is_err() {
                    // The supervisor is gone without asking for a stop (its last handle was
                    // dropped, e.g. on exit or in a restart): the proxy must outlive it, and
                    // its pid file stays so the next supervisor adopts it.
                    tracing::debug!(key = %spec.key, pid = ?running.pid(), "supervisor gone; leaving the proxy running");
                    return;
                }
                status.stopping();
                let how = running.stop(cfg.stop_timeout).await;
                tracing::info!(key = %spec.key, netns = %spec.netns, how = %how, "proxy stopped");
                cleanup.finish(ns.as_ref()).await;
                return;
            }
        }
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
