//! The one task per namespace of the shared model (`proxy_model = shared`, issue #20): it
//! opens and prepares the namespace, opens its listeners (or takes back the ones a previous
//! spawner's server had), hands them to its shard's server ([`crate::shared_model`]),
//! follows that server's restarts in the status, and on stop takes them back and tears the
//! namespace down.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::backoff::Backoff;
use crate::config::Config;
use crate::decide::ProxySpec;
use crate::launch::Running;
use crate::pidfile;
use crate::platform::{Opened, Platform};
use crate::proxy_task::{Start, Task};
use crate::shared_model::SharedServers;
use crate::status::Status;
use crate::Error;

/// The one owner of one namespace in the shared model: open and prepare it, open its
/// listeners (or take back the ones a previous spawner's server had), hand them to the
/// server, follow the server's restarts in the status, and on stop take them back and tear
/// the namespace down.
pub(crate) async fn namespace_task<P: Platform>(t: Task<P>, start: Start, servers: SharedServers) {
    let Task {
        platform,
        spec,
        status,
        mut stop,
        cfg,
        launches,
        ..
    } = t;
    let server = servers.for_key(&spec.key).clone();
    // A proxy of the per-namespace model serves the namespace (the model was switched): its
    // listening sockets go to the shared server, so nothing is refused while the model
    // changes, and it is stopped once the server serves them (or, if they cannot be taken,
    // just before the namespace binds afresh).
    let mut own = match start {
        Start::Adopt(r, _) => Some(r),
        Start::Fresh => None,
    };
    let mut backoff = Backoff::new(cfg.max_restart_delay);
    loop {
        // At most `launch_slots` namespaces between open and served at once: a cold start of
        // thousands would otherwise have every one's netlink and bind threads (and the
        // blocking pool's, with their stacks and malloc arenas) alive together (issue #20).
        // The semaphore is never closed, so no permit can only mean no limit.
        let slot = Arc::clone(&launches).acquire_owned().await.ok();
        // The start's futures are boxed: the task that then waits for a stop for as long as
        // the namespace is served keeps only its own small state (its start futures are freed once served).
        let opened = match Box::pin(platform.open(&spec)).await {
            Ok(Opened::Ready(ns)) => ns,
            Ok(Opened::Missing(reason)) => {
                drop(slot);
                if status.waiting(reason.clone()) {
                    tracing::info!(key = %spec.key, netns = %spec.netns, reason = %reason, "namespace waiting");
                }
                if !pause(crate::proxy_task::WAITING_RECHECK, &mut stop).await {
                    stop_own(&mut own, &spec, &cfg).await;
                    status.stopped();
                    return;
                }
                continue;
            }
            Err(e) => {
                drop(slot);
                if !failed(&status, &spec, e, &mut backoff, &mut stop).await {
                    stop_own(&mut own, &spec, &cfg).await;
                    return;
                }
                continue;
            }
        };
        status.starting();
        let served = Box::pin(async {
            platform.prepare(&opened, &spec).await?;
            let ino = platform.namespace_inode(&spec.netns);
            let fds = match servers.take_back(&spec, ino).await {
                Some(fds) => fds,
                None => match own.as_deref().map(|r| own_listeners(r, &spec, ino)) {
                    Some(Ok(fds)) => fds,
                    taken => {
                        if let Some(Err(why)) = taken {
                            tracing::warn!(key = %spec.key, err = %why, "cannot take the namespace's own proxy's sockets; stopping it to bind afresh");
                        }
                        stop_own(&mut own, &spec, &cfg).await;
                        platform
                            .listen(&opened, &spec, cfg_max_connections())
                            .await?
                    }
                },
            };
            server.add(&spec, fds).await
        });
        let served = served.await;
        drop(slot);
        match served {
            Ok(pid) => {
                tracing::info!(key = %spec.key, netns = %spec.netns, pid, "namespace served by the shared server");
                status.running(Some(pid), None);
                status.follow_server(server.watch());
                stop_own(&mut own, &spec, &cfg).await;
            }
            Err(e) => {
                // The namespace's own proxy (if any) serves on while this is retried.
                if !failed(&status, &spec, e, &mut backoff, &mut stop).await {
                    stop_own(&mut own, &spec, &cfg).await;
                    let _ = platform.teardown(&opened, &spec).await;
                    return;
                }
                continue;
            }
        }
        // Served until stopped; the status follows the server's restarts by itself.
        let asked = (&mut stop).await;
        if asked.is_err() {
            // The supervisor is gone: the server keeps serving for the next one.
            return;
        }
        status.stopping();
        server.remove(&spec).await;
        if let Err(e) = platform.teardown(&opened, &spec).await {
            tracing::warn!(key = %spec.key, err = %e, "teardown failed");
        }
        status.stopped();
        return;
    }
}

/// The listening sockets of the namespace's own proxy (the per-namespace model's), copied
/// out of it as `restart` does ([`crate::takeover`]): checked on the sockets themselves to be
/// listening, bound to what the namespace is served on and in its namespace now (`ino`).
fn own_listeners(
    own: &Running,
    spec: &ProxySpec,
    ino: Option<u64>,
) -> Result<Vec<std::os::fd::OwnedFd>, String> {
    let ino = ino.ok_or_else(|| format!("namespace {} is gone", spec.netns))?;
    match (own.pid(), own.pidfd()) {
        (Some(pid), Some(pidfd)) => {
            let fds = crate::takeover::take_listeners(pidfd, pid, spec.ipv6, ino)?;
            tracing::info!(key = %spec.key, pid, sockets = fds.len(), "the namespace's own proxy's sockets go to the shared server");
            Ok(fds)
        }
        _ => Err("the process is gone".to_owned()),
    }
}

/// Stop the namespace's own proxy, if one is left (SIGTERM: it stops accepting at once and
/// finishes what it holds), and remove its pid file.
async fn stop_own(own: &mut Option<Box<Running>>, spec: &ProxySpec, cfg: &Config) {
    if let Some(mut r) = own.take() {
        let pid = r.pid();
        let how = r.stop(cfg.stop_timeout).await;
        pidfile::remove(&cfg.pid_dir(), &spec.key);
        tracing::info!(key = %spec.key, pid = ?pid, how = %how, "the namespace's own proxy stopped: the shared server serves it");
    }
}

/// The connections one namespace may queue: the proxy's default `max_connections`.
fn cfg_max_connections() -> usize {
    ns_metadata_proxy::config::DEFAULT_MAXCONN
}

/// A failed attempt: status, backoff, and whether to go on (false: stopped or detached).
async fn failed(
    status: &Status,
    spec: &ProxySpec,
    e: Error,
    backoff: &mut Backoff,
    stop: &mut oneshot::Receiver<()>,
) -> bool {
    let delay = backoff.start_failed();
    tracing::warn!(key = %spec.key, netns = %spec.netns, err = %e, retry_in = ?delay, "namespace not served");
    status.start_failed(e.to_string());
    let go_on = pause(delay, stop).await;
    if go_on {
        status.restarting();
    } else {
        status.stopped();
    }
    go_on
}

/// Sleep unless stopped: true to go on.
async fn pause(delay: Duration, stop: &mut oneshot::Receiver<()>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = stop => false,
    }
}
