//! The one owner of one proxy: start it (or adopt a running one), watch it, restart it at
//! once and then with backoff when it dies, and stop it (SIGTERM, grace, SIGKILL, pid file
//! and addresses removed) when the supervisor says so; while its interface (or namespace)
//! is missing it waits with a short re-check instead of the backoff; a supervisor that goes
//! away without saying so leaves its proxies running for the next one to adopt.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::backoff::Backoff;
use crate::config::Config;
use crate::decide::ProxySpec;
use crate::launch::{launch, Running};
use crate::pidfile;
use crate::platform::Platform;
use crate::supervisor::{lock, ProxyStatus, State};

/// How often a proxy waiting for its namespace or interface looks again: one netlink link
/// lookup per proxy, so the proxy is up well under a second after the interface appears.
pub(crate) const WAITING_RECHECK: Duration = Duration::from_millis(250);

/// How a proxy task starts.
pub(crate) enum Start {
    Fresh,
    Adopt(u32, Vec<String>),
}

/// The one owner of one proxy: start (or adopt), watch, restart, stop.
pub(crate) async fn proxy_task<P: Platform>(
    platform: Arc<P>,
    spec: ProxySpec,
    args: Vec<String>,
    status: Arc<Mutex<ProxyStatus>>,
    mut stop: oneshot::Receiver<()>,
    start: Start,
    cfg: Arc<Config>,
) {
    let pid_dir = cfg.pid_dir();
    let mut backoff = Backoff::new(cfg.max_restart_delay);
    let mut current: Option<Running> = None;
    if let Start::Adopt(pid, argv) = start {
        match Running::adopt(pid) {
            // The tail of the cmdline: argv[0] (and an interpreter's script path) may differ.
            Ok(r) if argv.ends_with(&args) => {
                tracing::info!(key = %spec.key, pid, "adopted running proxy");
                let mut st = lock(&status);
                st.adopted = true;
                st.pid = Some(pid);
                st.state = State::Running;
                current = Some(r);
            }
            Ok(mut r) => {
                tracing::info!(key = %spec.key, pid, "proxy runs with other arguments; restarting it");
                r.stop(cfg.stop_timeout).await;
                pidfile::remove(&pid_dir, &spec.key);
            }
            Err(e) => {
                tracing::info!(key = %spec.key, pid, err = %e, "cannot adopt proxy; starting a new one")
            }
        }
    }
    loop {
        let mut running = match current.take() {
            Some(r) => r,
            None => {
                // Not there yet (the DHCP tap is plugged after the network is announced):
                // wait for it with a cheap re-check, not through the crash backoff, and
                // without counting restarts.
                if let Some(reason) = platform.missing(&spec).await {
                    {
                        let mut st = lock(&status);
                        if st.state != State::Waiting {
                            tracing::info!(key = %spec.key, netns = %spec.netns, reason = %reason, "proxy waiting");
                        }
                        st.state = State::Waiting;
                        st.last_error = Some(reason);
                        st.pid = None;
                    }
                    match wait_or_stop(WAITING_RECHECK, &mut stop).await {
                        Wake::Retry => continue,
                        Wake::Stop => {
                            // No process, and no addresses without the interface.
                            pidfile::remove_own(&pid_dir, &spec.key, None);
                            lock(&status).state = State::Stopping;
                            return;
                        }
                        Wake::Detached => return,
                    }
                }
                {
                    let mut st = lock(&status);
                    if st.state == State::Waiting {
                        // What it waited for is there now: the reason is stale.
                        st.last_error = None;
                    }
                    st.state = State::Starting;
                }
                // Not raced against `stop`: dropping a launch half-way would leave a spawned
                // child unwatched. It is bounded by ready_timeout; a stop sent meanwhile is
                // seen right after (by the select below or by wait_or_stop).
                let attempt = launch(&*platform, &spec, &cfg, &args).await;
                match attempt {
                    Ok(r) => {
                        let pid = r.pid();
                        // The proxy serves anyway; only adoption by a restarted
                        // supervisor needs the file, so the status says why it is missing.
                        let pid_error = pid.and_then(|pid| {
                            pidfile::write(&pid_dir, &spec.key, pid).err().map(|e| {
                                tracing::warn!(key = %spec.key, err = %e, "cannot write pid file");
                                format!("cannot write pid file: {e}")
                            })
                        });
                        tracing::info!(key = %spec.key, netns = %spec.netns, pid = ?pid, "proxy ready");
                        let mut st = lock(&status);
                        if pid_error.is_some() {
                            st.last_error = pid_error;
                        }
                        st.pid = pid;
                        st.state = State::Running;
                        st.adopted = false;
                        r
                    }
                    Err(e) => {
                        tracing::warn!(key = %spec.key, netns = %spec.netns, err = %e, "proxy start failed");
                        let delay = backoff.start_failed();
                        {
                            let mut st = lock(&status);
                            st.last_error = Some(e.to_string());
                            st.state = State::Backoff;
                            st.pid = None;
                        }
                        if !retry_after(delay, &mut stop, &*platform, &spec, &status, &pid_dir)
                            .await
                        {
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
                {
                    let mut st = lock(&status);
                    st.last_error = Some(format!("proxy {how}"));
                    st.pid = None;
                    st.state = if delay.is_zero() { State::Starting } else { State::Backoff };
                }
                if !retry_after(delay, &mut stop, &*platform, &spec, &status, &pid_dir).await {
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
                lock(&status).state = State::Stopping;
                let how = running.stop(cfg.stop_timeout).await;
                tracing::info!(key = %spec.key, netns = %spec.netns, how = %how, "proxy stopped");
                finish(&*platform, &spec, &status, &pid_dir).await;
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

/// Wait `delay` before the next start and count the restart: true to go on. A stop asked
/// meanwhile cleans up ([`finish`]); a detached task touches nothing. Either ends the task.
async fn retry_after<P: Platform>(
    delay: Duration,
    stop: &mut oneshot::Receiver<()>,
    platform: &P,
    spec: &ProxySpec,
    status: &Mutex<ProxyStatus>,
    pid_dir: &std::path::Path,
) -> bool {
    match wait_or_stop(delay, stop).await {
        Wake::Retry => {
            lock(status).restarts += 1;
            true
        }
        Wake::Stop => {
            finish(platform, spec, status, pid_dir).await;
            false
        }
        Wake::Detached => false,
    }
}

/// After the process is gone: pid file and addresses removed.
async fn finish<P: Platform>(
    platform: &P,
    spec: &ProxySpec,
    status: &Mutex<ProxyStatus>,
    pid_dir: &std::path::Path,
) {
    let pid = lock(status).pid;
    pidfile::remove_own(pid_dir, &spec.key, pid);
    if platform.namespace_exists(&spec.netns) {
        if let Err(e) = platform.teardown(spec).await {
            tracing::warn!(key = %spec.key, netns = %spec.netns, err = %e, "teardown failed");
        }
    }
    let mut st = lock(status);
    st.pid = None;
    st.state = State::Stopping;
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
