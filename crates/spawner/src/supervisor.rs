//! The supervisor: holds records and configuration, reconciles the running proxies with
//! the desired set (removals before additions, errors collected per namespace, idempotent),
//! owns one task per proxy that keeps it alive (immediate restart, then backoff), and
//! adopts live proxies from pid files at start.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{oneshot, Notify};

use crate::config::Config;
use crate::decide::{self, Kind, ProxySpec};
use crate::launch::{proxy_args, Running};
use crate::pidfile;
use crate::platform::Platform;
use crate::proxy_task::{proxy_task, Start};
use crate::records::{Network, Records, Router};

/// Lifecycle state of one proxy, as shown by `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Being prepared/spawned, waiting for READY.
    Starting,
    /// Ready and watched.
    Running,
    /// Died or failed to start; waiting before the next try.
    Backoff,
    /// Being stopped.
    Stopping,
    /// Wanted, but its namespace or its interface does not exist (yet); `last_error` says
    /// which. Re-checked often, not counted as a restart.
    Waiting,
}

/// One proxy as the control API reports it.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyStatus {
    pub key: String,
    pub netns: String,
    pub id: String,
    pub kind: Kind,
    pub interface: String,
    pub state: State,
    pub pid: Option<u32>,
    pub restarts: u64,
    pub last_error: Option<String>,
    pub adopted: bool,
}

impl ProxyStatus {
    fn new(spec: &ProxySpec, state: State) -> ProxyStatus {
        ProxyStatus {
            key: spec.key.clone(),
            netns: spec.netns.clone(),
            id: spec.id.clone(),
            kind: spec.kind,
            interface: spec.interface.clone(),
            state,
            pid: None,
            restarts: 0,
            last_error: None,
            adopted: false,
        }
    }
}

/// What a reconcile pass works from: specs to run (with argv), specs waiting for their
/// namespace, and the configuration they were computed with.
type Plan = (
    BTreeMap<String, (ProxySpec, Vec<String>)>,
    BTreeMap<String, ProxySpec>,
    Arc<Config>,
);

struct Proxy {
    spec: ProxySpec,
    args: Vec<String>,
    status: Arc<Mutex<ProxyStatus>>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

struct Inner<P> {
    platform: Arc<P>,
    cfg: Mutex<Arc<Config>>,
    records: Mutex<Records>,
    proxies: Mutex<BTreeMap<String, Proxy>>,
    waiting: Mutex<BTreeMap<String, ProxySpec>>,
    warnings: Mutex<BTreeSet<String>>,
    reconcile_lock: tokio::sync::Mutex<()>,
    wake: Notify,
    reconciles: std::sync::atomic::AtomicU64,
}

/// The supervisor; cheap to clone (shared state).
pub struct Supervisor<P> {
    inner: Arc<Inner<P>>,
}

impl<P> Clone for Supervisor<P> {
    fn clone(&self) -> Self {
        Supervisor {
            inner: Arc::clone(&self.inner),
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data half-updated in a way
    // that matters more than stopping the supervisor would, so keep going.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<P: Platform> Supervisor<P> {
    /// A supervisor with the given records (API records and file records already loaded).
    pub fn new(platform: P, cfg: Config, records: Records) -> Supervisor<P> {
        Supervisor {
            inner: Arc::new(Inner {
                platform: Arc::new(platform),
                cfg: Mutex::new(Arc::new(cfg)),
                records: Mutex::new(records),
                proxies: Mutex::new(BTreeMap::new()),
                waiting: Mutex::new(BTreeMap::new()),
                warnings: Mutex::new(BTreeSet::new()),
                reconcile_lock: tokio::sync::Mutex::new(()),
                wake: Notify::new(),
                reconciles: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// The current configuration.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&lock(&self.inner.cfg))
    }

    /// Replace the configuration (SIGHUP); proxies whose argv changes are restarted by the
    /// next reconcile.
    pub fn set_config(&self, cfg: Config) {
        *lock(&self.inner.cfg) = Arc::new(cfg);
        self.trigger();
    }

    /// A copy of the records.
    pub fn records(&self) -> Records {
        lock(&self.inner.records).clone()
    }

    /// Change the records under the lock, persist the API records, and trigger a reconcile.
    pub fn update_records<T>(&self, f: impl FnOnce(&mut Records) -> T) -> T {
        self.update_records_checked(f).0
    }

    /// [`Supervisor::update_records`], also saying whether `records.json` was saved (the
    /// change is in effect either way; unsaved, it is lost when the spawner restarts).
    pub fn update_records_checked<T>(
        &self,
        f: impl FnOnce(&mut Records) -> T,
    ) -> (T, std::result::Result<(), String>) {
        let path = self.config().records_json();
        let out = {
            let mut rec = lock(&self.inner.records);
            let out = f(&mut rec);
            // Saved under the lock, so concurrent changes reach the file in order.
            let saved = rec.api_set().save(&path).map_err(|e| {
                tracing::error!(err = %e, "cannot persist records");
                e.to_string()
            });
            (out, saved)
        };
        self.trigger();
        out
    }

    /// Add or replace a router made through the API.
    pub fn put_router(&self, r: Router) {
        self.update_records(|rec| rec.api_routers.insert(r.id.clone(), r));
    }

    /// Remove an API router; false if unknown.
    pub fn remove_router(&self, id: &str) -> bool {
        self.update_records(|rec| rec.api_routers.remove(id).is_some())
    }

    /// Add or replace a network made through the API.
    pub fn put_network(&self, n: Network) {
        self.update_records(|rec| rec.api_networks.insert(n.id.clone(), n));
    }

    /// Remove an API network; false if unknown.
    pub fn remove_network(&self, id: &str) -> bool {
        self.update_records(|rec| rec.api_networks.remove(id).is_some())
    }

    /// Ask the reconcile loop for a pass.
    pub fn trigger(&self) {
        self.inner.wake.notify_one();
    }

    /// Run reconcile passes whenever triggered, forever.
    pub async fn run_loop(&self) {
        loop {
            self.inner.wake.notified().await;
            let errors = self.reconcile().await;
            for e in errors {
                tracing::warn!(err = %e, "reconcile");
            }
        }
    }

    /// Number of reconcile passes so far.
    pub fn reconcile_count(&self) -> u64 {
        self.inner
            .reconciles
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every proxy, running or waiting for its namespace, by key.
    pub fn status(&self) -> Vec<ProxyStatus> {
        let mut out: Vec<ProxyStatus> = lock(&self.inner.proxies)
            .values()
            .map(|p| lock(&p.status).clone())
            .collect();
        out.extend(lock(&self.inner.waiting).values().map(|s| ProxyStatus {
            last_error: Some(format!("namespace {} does not exist", s.netns)),
            ..ProxyStatus::new(s, State::Waiting)
        }));
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// The desired proxies whose namespace exists, with their argv, and those waiting.
    fn plan(&self) -> Plan {
        let cfg = self.config();
        let d = decide::desired(&lock(&self.inner.records), &cfg);
        {
            let mut seen = lock(&self.inner.warnings);
            let now: BTreeSet<String> = d.warnings.into_iter().collect();
            for w in now.difference(&seen) {
                tracing::warn!("{w}");
            }
            *seen = now;
        }
        let mut present = BTreeMap::new();
        let mut waiting = BTreeMap::new();
        for (k, s) in d.specs {
            if self.inner.platform.namespace_exists(&s.netns) {
                let args = proxy_args(&s, &cfg);
                present.insert(k, (s, args));
            } else {
                waiting.insert(k, s);
            }
        }
        (present, waiting, cfg)
    }

    /// One reconcile pass: stop what should not run (or runs with another argv), then start
    /// what is missing. Returns the errors of the stops (start errors show in the status).
    pub async fn reconcile(&self) -> Vec<String> {
        let _pass = self.inner.reconcile_lock.lock().await;
        self.inner
            .reconciles
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (present, waiting, cfg) = self.plan();
        let removed: Vec<Proxy> = {
            let mut proxies = lock(&self.inner.proxies);
            let stale: Vec<String> = proxies
                .iter()
                .filter(|(k, p)| {
                    present
                        .get(*k)
                        .is_none_or(|(s, a)| *s != p.spec || *a != p.args)
                })
                .map(|(k, _)| k.clone())
                .collect();
            stale.iter().filter_map(|k| proxies.remove(k)).collect()
        };
        *lock(&self.inner.waiting) = waiting;
        // Removals before additions, per namespace: a proxy replacing one in the same
        // namespace (same port, same address) starts only after the old one is gone; the
        // others start right away instead of waiting for unrelated stops' grace periods.
        let stopping: BTreeSet<String> = removed.iter().map(|p| p.spec.netns.clone()).collect();
        let (later, now): (BTreeMap<_, _>, BTreeMap<_, _>) = present
            .into_iter()
            .partition(|(_, (s, _))| stopping.contains(&s.netns));
        self.start_missing(now, &cfg);
        let mut errors = Vec::new();
        let stops = removed.into_iter().map(|p| self.stop_proxy(p));
        for r in futures::future::join_all(stops).await {
            if let Err(e) = r {
                errors.push(e);
            }
        }
        self.start_missing(later, &cfg);
        errors
    }

    fn start_missing(&self, specs: BTreeMap<String, (ProxySpec, Vec<String>)>, cfg: &Arc<Config>) {
        let mut proxies = lock(&self.inner.proxies);
        for (k, (spec, args)) in specs {
            if let std::collections::btree_map::Entry::Vacant(slot) = proxies.entry(k) {
                slot.insert(self.start_proxy(spec, args, Start::Fresh, cfg));
            }
        }
    }

    async fn stop_proxy(&self, p: Proxy) -> Result<(), String> {
        tracing::info!(key = %p.spec.key, netns = %p.spec.netns, "stopping proxy");
        let _ = p.stop.send(());
        p.task
            .await
            .map_err(|e| format!("{}: proxy task failed: {e}", p.spec.netns))
    }

    /// Stop every proxy (for `--stop-proxies-on-exit`).
    pub async fn stop_all(&self) {
        let _pass = self.inner.reconcile_lock.lock().await;
        let all: Vec<Proxy> = std::mem::take(&mut *lock(&self.inner.proxies))
            .into_values()
            .collect();
        futures::future::join_all(all.into_iter().map(|p| self.stop_proxy(p))).await;
    }

    /// At start: adopt live proxies from pid files (alive and cmdline holds the id), stop
    /// live proxies that are no longer wanted, remove stale pid files; then start the rest.
    /// Returns once every proxy had its first start attempt.
    pub async fn adopt_and_start(&self) {
        let _pass = self.inner.reconcile_lock.lock().await;
        self.inner
            .reconciles
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (present, waiting, cfg) = self.plan();
        let pid_dir = cfg.pid_dir();
        let mut adopt: BTreeMap<String, (u32, Vec<String>)> = BTreeMap::new();
        let mut stale = Vec::new();
        for (key, path) in pidfile::list(&pid_dir) {
            let Some(pid) = pidfile::read(&path) else {
                pidfile::remove(&pid_dir, &key);
                continue;
            };
            match present.get(&key) {
                Some((spec, _)) => match pidfile::is_proxy_for(pid, &spec.id) {
                    Some(argv) => {
                        adopt.insert(key, (pid, argv));
                    }
                    None => pidfile::remove(&pid_dir, &key),
                },
                // Not wanted any more: stop it if it is our proxy (its argv holds the key,
                // or, for a metadata network's proxy that carries a router id, it runs
                // our proxy binary); otherwise the pid was reused: leave that process be.
                None if pidfile::is_proxy_for(pid, &key).is_some()
                    || pidfile::runs_binary(pid, &cfg.proxy_binary) =>
                {
                    stale.push((key, pid))
                }
                None => pidfile::remove(&pid_dir, &key),
            }
        }
        // A wanted proxy without a pid file (it could not be written: full or read-only
        // state dir) is still running somewhere: find it by its argv, or the new proxy
        // would fail to bind next to it for ever.
        if present.keys().any(|k| !adopt.contains_key(k)) {
            for (pid, argv) in pidfile::find_running(&cfg.proxy_binary) {
                let owner = present
                    .iter()
                    .find(|(k, (spec, _))| !adopt.contains_key(*k) && argv.contains(&spec.id));
                if let Some((key, _)) = owner {
                    tracing::info!(key = %key, pid, "found a running proxy without a pid file");
                    if let Err(e) = pidfile::write(&pid_dir, key, pid) {
                        tracing::warn!(key = %key, err = %e, "cannot write pid file");
                    }
                    adopt.insert(key.clone(), (pid, argv));
                }
            }
        }
        let grace = cfg.stop_timeout;
        let stops = stale.into_iter().map(|(key, pid)| {
            let pid_dir = pid_dir.clone();
            async move {
                tracing::info!(key = %key, pid, "stopping a proxy that is no longer wanted");
                if let Ok(mut r) = Running::adopt(pid) {
                    r.stop(grace).await;
                }
                pidfile::remove(&pid_dir, &key);
            }
        });
        futures::future::join_all(stops).await;
        *lock(&self.inner.waiting) = waiting;
        let mut firsts = Vec::new();
        {
            let mut proxies = lock(&self.inner.proxies);
            for (k, (spec, args)) in present {
                let start = match adopt.remove(&k) {
                    Some((pid, argv)) => Start::Adopt(pid, argv),
                    None => Start::Fresh,
                };
                let p = self.start_proxy(spec, args, start, &cfg);
                firsts.push(Arc::clone(&p.status));
                proxies.insert(k, p);
            }
        }
        // Wait (bounded) until each proxy left Starting once.
        let deadline = Instant::now() + cfg.ready_timeout + Duration::from_secs(1);
        while Instant::now() < deadline
            && firsts.iter().any(|s| {
                lock(s).state == State::Starting
                    && lock(s).restarts == 0
                    && lock(s).last_error.is_none()
            })
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn start_proxy(
        &self,
        spec: ProxySpec,
        args: Vec<String>,
        start: Start,
        cfg: &Arc<Config>,
    ) -> Proxy {
        let status = Arc::new(Mutex::new(ProxyStatus::new(&spec, State::Starting)));
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(proxy_task(
            Arc::clone(&self.inner.platform),
            spec.clone(),
            args.clone(),
            Arc::clone(&status),
            stop_rx,
            start,
            Arc::clone(cfg),
        ));
        Proxy {
            spec,
            args,
            status,
            stop: stop_tx,
            task,
        }
    }
}
