//! The supervisor: holds records and configuration, reconciles the running proxies with
//! the desired set (removals before additions, errors collected per namespace, idempotent),
//! owns one task per proxy that keeps it alive (immediate restart, then backoff), and
//! adopts live proxies from pid files at start.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

use crate::adopt::{has_pair, judge, open_proven, unmanaged, Stale, Verdict};
use crate::agent_probe::{self, AgentStatus};
use crate::config::{Config, ProxyModel};
use crate::decide::{self, ProxySpec};
use crate::journal::{self, Journal};
use crate::launch::{proxy_args, Running};
use crate::persist;
use crate::pidfile;
use crate::platform::Platform;
pub use crate::proxy_task::Restarted;
use crate::proxy_task::{proxy_task, RestartReply, Start, Task};
pub use crate::records::Change;
use crate::records::{Network, RecordSet, Records, Router};
use crate::shared_model::{RetiredServers, SharedServer, SharedServers};
use crate::shared_task::namespace_task;
use crate::status::Status;
pub use crate::status::{ProxyStatus, State};
use crate::Error;

/// What a change did: whether it found something (a removal of an unknown id does not),
/// and whether it was saved: its line written to the journal, or, for a supervisor without
/// a journal, the last `records.json` save good (the change is in effect either way;
/// unsaved, it is lost when the spawner restarts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub found: bool,
    pub saved: std::result::Result<(), String>,
}

/// `records.json` as the status shows it: fine when both are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordsState {
    /// Why the last save failed: changes since are in effect but lost at a restart.
    pub save_error: Option<String>,
    /// What was recovered at start (a damaged file set aside).
    pub recovery: Option<String>,
}

impl RecordsState {
    /// One line for `status` and `STATUS=`, `None` when all is well.
    pub fn summary(&self) -> Option<String> {
        match (&self.save_error, &self.recovery) {
            (None, None) => None,
            (Some(e), None) => Some(format!("records.json not saved: {e}")),
            (None, Some(r)) => Some(r.clone()),
            (Some(e), Some(r)) => Some(format!("records.json not saved: {e}; {r}")),
        }
    }
}

/// Proxies counted by how they are doing, for `systemctl status` and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub running: usize,
    /// In backoff (died or failed to start).
    pub failing: usize,
    /// Waiting for a namespace or interface, or starting.
    pub other: usize,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} proxies running, {} failing",
            self.running, self.failing
        )?;
        if self.other > 0 {
            write!(f, ", {} starting or waiting", self.other)?;
        }
        Ok(())
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
    status: Arc<Status>,
    stop: oneshot::Sender<()>,
    restart: tokio::sync::mpsc::UnboundedSender<RestartReply>,
    /// Ends with the proxy still running only when detached (see [`proxy_task`]).
    task: tokio::task::JoinHandle<Option<Running>>,
}

/// Why `restart ID` did not restart anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartError {
    /// No proxy has this key (404).
    Unknown(String),
    /// It has no running process to restart: waiting, starting, backoff (409).
    NotRunning(String),
    /// The shared model (`proxy_model = shared`) has no server to restart yet (501).
    Shared,
    /// It failed (500); the message says what runs now.
    Failed(String),
}

impl std::fmt::Display for RestartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestartError::Unknown(m) | RestartError::NotRunning(m) | RestartError::Failed(m) => {
                f.write_str(m)
            }
            RestartError::Shared => {
                f.write_str("the shared model (proxy_model = shared) has no server to restart yet")
            }
        }
    }
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
    agent: Mutex<Option<AgentStatus>>,
    /// The agent socket's owner and group as last seen (kept while the socket is missing:
    /// an agent restarting does not change who proxies run as); see [`Supervisor::for_proxies`].
    socket_owner: Mutex<Option<(u32, u32)>>,
    /// The debounced writer of `records.json`.
    saver: persist::Saver,
    /// The write-ahead journal of API changes (`journal.rs`), set by the daemon after
    /// loading; locked only while `records` is held, so lines are in the order of changes.
    journal: Mutex<Option<Journal>>,
    /// What loading `records.json` found at start.
    recovery: Mutex<persist::Recovery>,
    /// The shared server (`proxy_model = shared`), started by the first reconcile.
    shared: tokio::sync::OnceCell<SharedServers>,
    /// With `proxy_model = per-namespace`: the shared servers a previous run left (the model
    /// was switched), whose sockets the proxies take over, stopped after the first reconcile.
    retired: tokio::sync::OnceCell<RetiredServers>,
    /// Proxy starts in flight, shared by every proxy task (`proxy_task::launch_slots`).
    launches: Arc<tokio::sync::Semaphore>,
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data half-updated in a way
    // that matters more than stopping the supervisor would, so keep going.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Write a snapshot copy of the records; once written, with a journal (`journaled`), its
/// lines moved aside to `.old` (at the copy, or left by a failed save) are removed: the
/// snapshot has them.
fn save_snapshot(dir: &std::path::Path, (set, journaled): (RecordSet, bool)) -> crate::Result<()> {
    persist::save(dir, &set)?;
    if journaled {
        journal::remove_old(dir);
    }
    Ok(())
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
                agent: Mutex::new(None),
                socket_owner: Mutex::new(None),
                saver: persist::Saver::default(),
                journal: Mutex::new(None),
                recovery: Mutex::new(persist::Recovery::Clean),
                shared: tokio::sync::OnceCell::new(),
                retired: tokio::sync::OnceCell::new(),
                launches: Arc::new(tokio::sync::Semaphore::new(
                    crate::proxy_task::launch_slots(),
                )),
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

    /// Change the records under the lock and trigger a reconcile; with `persist`, also have
    /// the API records saved (debounced, `persist.rs`); the second value is why the last save
    /// failed, if it did. Private: every change has a method below.
    fn update_records<T>(
        &self,
        persist: bool,
        f: impl FnOnce(&mut Records) -> T,
    ) -> (T, Option<String>) {
        let out = f(&mut lock(&self.inner.records));
        let failed = if persist {
            if let persist::Next::Spawn = self.inner.saver.mark() {
                self.spawn_saver();
            }
            self.inner.saver.error()
        } else {
            None
        };
        self.trigger();
        (out, failed)
    }

    /// Write the API records [`persist::SAVE_DELAY`] from now, and again while changes keep
    /// coming; on a runtime, from a blocking thread; without one (tests), right here.
    fn spawn_saver(&self) {
        let sup = self.clone();
        // The copy and the journal's rotation under the records lock: the lines moved to
        // `.old` are exactly the changes in this copy (journal.rs).
        let save_once = move |sup: &Supervisor<P>| {
            let gen = sup.inner.saver.begin();
            let records = lock(&sup.inner.records);
            let set = records.api_set();
            let rotated = lock(&sup.inner.journal)
                .as_mut()
                .map(Journal::rotate)
                .is_some();
            drop(records);
            (gen, (set, rotated), sup.config().state_dir.clone())
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move {
                    let mut wait = persist::SAVE_DELAY;
                    loop {
                        tokio::time::sleep(wait).await;
                        let (gen, set, dir) = save_once(&sup);
                        let r = tokio::task::spawn_blocking(move || save_snapshot(&dir, set))
                            .await
                            .unwrap_or_else(|e| Err(Error::Invalid(format!("save task: {e}"))));
                        wait = match sup.inner.saver.finish(gen, &r) {
                            persist::After::Done => break,
                            persist::After::Again => persist::SAVE_DELAY,
                            persist::After::Retry => persist::SAVE_RETRY,
                        };
                    }
                });
            }
            Err(_) => loop {
                let (gen, set, dir) = save_once(&sup);
                let r = save_snapshot(&dir, set);
                match sup.inner.saver.finish(gen, &r) {
                    persist::After::Done => break,
                    persist::After::Again => {}
                    persist::After::Retry => {
                        sup.inner.saver.stop_retrying();
                        break;
                    }
                }
            },
        }
    }

    /// Wait until every change so far is saved; the error of the last save, if it failed.
    /// Called before exit, so a change made just before SIGTERM is not lost.
    pub async fn flush_records(&self) -> std::result::Result<(), String> {
        self.inner.saver.settle().await
    }

    /// How many times `records.json` was written by this supervisor.
    pub fn records_writes(&self) -> u64 {
        self.inner.saver.writes()
    }

    /// What loading `records.json` found at start (recorded by the daemon).
    pub fn set_recovery(&self, r: persist::Recovery) {
        *lock(&self.inner.recovery) = r;
    }

    /// From now on every API change is written to `journal` before it is answered (the
    /// daemon, after loading; without one, only the debounced snapshot saves changes).
    pub fn set_journal(&self, journal: Journal) {
        let _records = lock(&self.inner.records);
        *lock(&self.inner.journal) = Some(journal);
    }

    /// The state of `records.json`, for the status.
    pub fn records_state(&self) -> RecordsState {
        let recovery = lock(&self.inner.recovery).note();
        let replay = lock(&self.inner.journal)
            .as_ref()
            .and_then(|j| j.note().map(str::to_owned));
        RecordsState {
            save_error: self.inner.saver.error(),
            recovery: match (recovery, replay) {
                (Some(a), Some(b)) => Some(format!("{a}; {b}")),
                (a, b) => a.or(b),
            },
        }
    }

    /// Apply a change to the API records, write it to the journal, have the snapshot saved,
    /// and trigger a reconcile.
    pub fn apply(&self, change: Change) -> Applied {
        let ((found, logged), failed) = self.update_records(true, |rec| {
            let line = change.clone();
            if !rec.apply(change) {
                return (false, None);
            }
            // Under the records lock: the journal's order is the order of the changes.
            let logged = lock(&self.inner.journal)
                .as_mut()
                .map(|j| j.append(&line).map(drop).map_err(|e| e.to_string()));
            (true, logged)
        });
        Applied {
            found,
            saved: logged.unwrap_or_else(|| failed.map_or(Ok(()), Err)),
        }
    }

    /// Add or replace a router made through the API.
    pub fn put_router(&self, r: Router) {
        self.apply(Change::PutRouter(r));
    }

    /// Remove an API router; false if unknown.
    pub fn remove_router(&self, id: &str) -> bool {
        self.apply(Change::RemoveRouter(id.to_owned())).found
    }

    /// Add or replace a network made through the API.
    pub fn put_network(&self, n: Network) {
        self.apply(Change::PutNetwork(n));
    }

    /// Remove an API network; false if unknown.
    pub fn remove_network(&self, id: &str) -> bool {
        self.apply(Change::RemoveNetwork(id.to_owned())).found
    }

    /// Replace the records of the static records file (start, SIGHUP).
    pub fn set_file_records(&self, set: RecordSet) {
        self.update_records(false, |r| r.file = set);
    }

    /// A `qrouter-<id>` namespace appeared (`true`) or vanished: its auto-enabled router.
    pub fn set_auto_router(&self, id: &str, present: bool) {
        self.update_records(false, |r| {
            if present {
                r.auto_routers.insert(id.to_owned());
            } else {
                r.auto_routers.remove(id);
            }
        });
    }

    /// Replace the OVN networks the OVN source provisioned (id → IPv6 on).
    pub fn set_ovn_networks(&self, nets: BTreeMap<String, bool>) {
        self.update_records(false, |r| r.ovn_networks = nets);
    }

    /// Replace every auto-enabled router (after a rescan of `/run/netns`).
    pub fn set_auto_routers(&self, ids: BTreeSet<String>) {
        self.update_records(false, |r| r.auto_routers = ids);
    }

    /// The configuration proxies and shared servers are started with
    /// ([`Config::for_proxies_owned`]): who they run as follows the agent socket's owner, the
    /// last one seen while the socket is missing.
    fn for_proxies(&self, cfg: &Config) -> Config {
        let seen = cfg.socket_owner();
        let owner = {
            let mut last = lock(&self.inner.socket_owner);
            if seen.is_some() {
                *last = seen;
            }
            *last
        };
        cfg.for_proxies_owned(owner)
    }

    /// Probe the agent socket now, remember the result (logged when it changes). A socket
    /// whose owner is not the one the last reconcile used (an agent started after the
    /// spawner, or as another user) asks for a pass, so proxies and shared servers run as its
    /// owner again (Neutron's rule; they could not connect otherwise).
    pub async fn check_agent(&self) -> AgentStatus {
        let cfg = self.config();
        let owner = cfg.socket_owner();
        if owner.is_some() && owner != *lock(&self.inner.socket_owner) {
            tracing::info!(socket = %cfg.metadata_proxy_socket.display(), owner = ?owner, "the agent socket has a new owner: proxies follow it");
            self.trigger();
        }
        let now = agent_probe::probe(&cfg.metadata_proxy_socket).await;
        let before = lock(&self.inner.agent).replace(now.clone());
        if before.as_ref() != Some(&now) {
            if now.reachable {
                tracing::info!(socket = %now.socket.display(), "agent socket reachable");
            } else {
                tracing::warn!(socket = %now.socket.display(), err = ?now.error, "agent socket unreachable: proxies run, but VMs get 503");
            }
        }
        now
    }

    /// The agent as last probed (`None` before the first probe).
    pub fn agent(&self) -> Option<AgentStatus> {
        lock(&self.inner.agent).clone()
    }

    /// Proxies counted by state.
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for p in self.status() {
            match p.state {
                State::Running => s.running += 1,
                State::Backoff | State::Hung => s.failing += 1,
                _ => s.other += 1,
            }
        }
        s
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
            self.check_agent().await;
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
            .map(|p| p.status.snapshot())
            .collect();
        let waiting: Vec<ProxySpec> = lock(&self.inner.waiting).values().cloned().collect();
        if !waiting.is_empty() {
            let served = self.served_namespaces();
            out.extend(
                waiting
                    .iter()
                    .map(|s| ProxyStatus::waiting(s, waiting_reason(s, &served))),
            );
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// Restart the proxy keyed `key` (a router or network id) without losing a request: its
    /// successor takes its listening sockets over (`takeover.rs`), or, when that is not
    /// possible, it is stopped and started (`method: stop-start`, with the reason). Returns
    /// once the successor is READY and the old process is gone. `restarts` is not counted:
    /// it counts deaths and failed starts.
    pub async fn restart(&self, key: &str) -> Result<Restarted, RestartError> {
        let cfg = self.config();
        if cfg.proxy_model == ProxyModel::Shared {
            return self.restart_shared(key).await;
        }
        let found = lock(&self.inner.proxies)
            .get(key)
            .map(|p| (p.status.snapshot(), p.restart.clone()));
        let Some((st, tx)) = found else {
            let waiting = lock(&self.inner.waiting).get(key).cloned();
            return Err(match waiting {
                Some(spec) => RestartError::NotRunning(format!(
                    "proxy {key} is not running: {}",
                    waiting_reason(&spec, &self.served_namespaces())
                )),
                None => RestartError::Unknown(format!("no proxy {key}: see `status`")),
            });
        };
        if st.state != State::Running {
            let why = st.last_error.map(|e| format!(": {e}")).unwrap_or_default();
            return Err(RestartError::NotRunning(format!(
                "proxy {key} is not running ({}){why}",
                st.state.as_str()
            )));
        }
        let (reply, rx) = oneshot::channel();
        if tx.send(reply).is_err() {
            return Err(RestartError::NotRunning(format!(
                "proxy {key} is being removed"
            )));
        }
        // Bounded: a successor's READY, the old one's stop, maybe a plain start after it.
        let limit = cfg.ready_timeout * 2 + cfg.stop_timeout * 2 + Duration::from_secs(5);
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(Ok(done))) => Ok(done),
            Ok(Ok(Err(e))) => Err(RestartError::Failed(format!("proxy {key}: {e}"))),
            Ok(Err(_)) => Err(RestartError::NotRunning(format!(
                "proxy {key} stopped before it could be restarted"
            ))),
            Err(_) => Err(RestartError::Failed(format!(
                "proxy {key}: no restart within {limit:?}; see `status`"
            ))),
        }
    }

    /// The desired proxies whose namespace exists, with their argv, and those waiting.
    fn plan(&self) -> Plan {
        let cfg = self.config();
        let d = decide::desired(&lock(&self.inner.records), &cfg);
        let mut warnings: BTreeSet<String> = d.warnings.into_iter().collect();
        let mut present = BTreeMap::new();
        let mut waiting = BTreeMap::new();
        // Who the proxies run as depends on the agent socket's owner: read once per pass.
        let for_proxies = self.for_proxies(&cfg);
        // One proxy per namespace, as Neutron has: a second record naming a namespace another
        // one is served in (a mistyped `--netns`) waits. Started, it would only fail to bind;
        // removed, its teardown took the address the first one answers on. A proxy running
        // now keeps its namespace; among the others the first key does.
        let claims = self.claims(&d.specs, &cfg.pid_dir());
        for (k, s) in d.specs {
            if let Some(owner) = claims.get(&s.netns).filter(|o| **o != k) {
                warnings.insert(format!(
                    "{} {k}: namespace {} is already served for {owner}; not started (one proxy per namespace)",
                    s.kind, s.netns
                ));
                waiting.insert(k, s);
            } else if self.inner.platform.namespace_exists(&s.netns) {
                let args = match cfg.proxy_model {
                    ProxyModel::PerNamespace => proxy_args(&s, &for_proxies),
                    // No process per namespace: the options are the shared server's argv
                    // (`SharedServer::reconfigure`), so a changed option does not stop and
                    // start every namespace (which took its address away meanwhile).
                    ProxyModel::Shared => Vec::new(),
                };
                present.insert(k, (s, args));
            } else {
                waiting.insert(k, s);
            }
        }
        {
            // Each said once while it lasts.
            let mut seen = lock(&self.inner.warnings);
            for w in warnings.difference(&seen) {
                tracing::warn!("{w}");
            }
            *seen = warnings;
        }
        (present, waiting, cfg)
    }

    /// Which key each namespace with a proxy is served for, read once for every waiting
    /// proxy's [`waiting_reason`].
    fn served_namespaces(&self) -> BTreeMap<String, String> {
        lock(&self.inner.proxies)
            .values()
            .map(|p| (p.spec.netns.clone(), p.spec.key.clone()))
            .collect()
    }

    /// Which key each namespace two or more wanted records name is served for: a key with a
    /// proxy there now first (it keeps its namespace; at a start, one with a pid file or one
    /// the previous spawner's shared server served it for), then the others in key order.
    /// Empty (nothing read) when every record has a namespace of its own.
    fn claims(
        &self,
        specs: &BTreeMap<String, ProxySpec>,
        pid_dir: &std::path::Path,
    ) -> BTreeMap<String, String> {
        let mut named: BTreeMap<&str, usize> = BTreeMap::new();
        for s in specs.values() {
            *named.entry(&s.netns).or_default() += 1;
        }
        let shared: BTreeMap<&String, &ProxySpec> = specs
            .iter()
            .filter(|(_, s)| named[s.netns.as_str()] > 1)
            .collect();
        let mut claims = BTreeMap::new();
        if shared.is_empty() {
            return claims;
        }
        let with_pid_file: BTreeSet<String> =
            pidfile::list(pid_dir).into_iter().map(|(k, _)| k).collect();
        {
            let proxies = lock(&self.inner.proxies);
            let server = self.inner.shared.get();
            let running = |k: &String, s: &ProxySpec| {
                proxies.get(k).map_or_else(
                    || with_pid_file.contains(k) || server.is_some_and(|sv| sv.hold(s)),
                    |p| p.spec.netns == s.netns,
                )
            };
            for (k, s) in &shared {
                if running(k, s) {
                    claims
                        .entry(s.netns.clone())
                        .or_insert_with(|| (*k).clone());
                }
            }
        }
        for (k, s) in shared {
            claims.entry(s.netns.clone()).or_insert_with(|| k.clone());
        }
        claims
    }

    /// One reconcile pass: stop what should not run (or runs with another argv), then start
    /// what is missing. Returns the errors of the stops (start errors show in the status).
    pub async fn reconcile(&self) -> Vec<String> {
        let _pass = self.inner.reconcile_lock.lock().await;
        self.inner
            .reconciles
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (mut present, waiting, cfg) = self.plan();
        self.ensure_shared(&cfg).await;
        self.reconfigure_shared(&cfg).await;
        let keep = stats_keys(&cfg, &present, &waiting);
        let (removed, handed): (Vec<Proxy>, Vec<Proxy>) = {
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
            stale
                .iter()
                .filter_map(|k| proxies.remove(k))
                .partition(|p| !replaceable(&cfg, p, &present))
        };
        *lock(&self.inner.waiting) = waiting;
        // Same namespace and addresses, other arguments (a changed option): the running
        // proxy is handed to a new task that replaces it by socket takeover, as an adopted
        // one with other arguments is, so no connection is refused meanwhile.
        let mut handovers = Vec::with_capacity(handed.len());
        for p in handed {
            let Some((spec, args)) = present.remove(&p.spec.key) else {
                continue;
            };
            drop(p.stop);
            handovers.push(async move {
                let running = p.task.await.ok().flatten();
                (spec, args, running, p.args)
            });
        }
        for (spec, args, running, old_args) in futures::future::join_all(handovers).await {
            let start = match running {
                Some(r) => Start::Adopt(Box::new(r), old_args),
                None => Start::Fresh,
            };
            let p = self.start_proxy(spec, args, start, &cfg);
            lock(&self.inner.proxies).insert(p.spec.key.clone(), p);
        }
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
        crate::proxy_stats::retain(&cfg.stats_dir(), &keep);
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

    /// The shared server (`proxy_model = shared`) once the first reconcile started it.
    /// `restart ID` in the shared model: one server serves every namespace, so it is the server
    /// that is replaced (`SharedServer::replace`: the new one gets every socket and says READY
    /// before the old one drains; nothing is lost), for every namespace at once.
    async fn restart_shared(&self, key: &str) -> Result<Restarted, RestartError> {
        let st = lock(&self.inner.proxies)
            .get(key)
            .map(|p| p.status.snapshot());
        let Some(st) = st else {
            return Err(RestartError::Unknown(format!(
                "no proxy {key}: see `status`"
            )));
        };
        if st.state != State::Running {
            return Err(RestartError::NotRunning(format!(
                "proxy {key} is not running ({})",
                st.state.as_str()
            )));
        }
        let server = self
            .shared_servers()
            .map(|s| s.for_key(key).clone())
            .ok_or(RestartError::Shared)?;
        let old_pid = server.pid();
        match server.replace().await {
            Ok(pid) => Ok(Restarted {
                key: key.to_owned(),
                old_pid,
                new_pid: Some(pid),
                method: "shared-server",
                note: Some(
                    "the shared server serves every namespace of its shard: it was replaced \
                     for all of them, each handing its sockets over (nothing lost)"
                        .into(),
                ),
            }),
            Err(e) => Err(RestartError::Failed(format!(
                "shared server: {e}; the old server goes on serving"
            ))),
        }
    }

    /// The first shared server (the only one with `shared_servers = 1`).
    pub fn shared_server(&self) -> Option<SharedServer> {
        self.shared_servers().and_then(|s| s.get(0).cloned())
    }

    /// Every shared server (`proxy_model = shared`) once the first reconcile started them.
    pub fn shared_servers(&self) -> Option<SharedServers> {
        self.inner.shared.get().cloned()
    }

    /// Every shared server's line in `status` (none in the per-namespace model).
    pub fn servers(&self) -> Vec<crate::shared_model::ServerStatus> {
        self.inner
            .shared
            .get()
            .map(|s| s.all().iter().map(SharedServer::status).collect())
            .unwrap_or_default()
    }

    /// Replace shared server `shard` without losing a request (`restart --all` in the shared
    /// model: each server once, not once per namespace it serves).
    pub async fn restart_server(&self, shard: usize) -> Result<Restarted, RestartError> {
        let servers = self.shared_servers().ok_or(RestartError::Shared)?;
        let server = servers
            .get(shard)
            .cloned()
            .ok_or_else(|| RestartError::Unknown(format!("no shared server {shard}")))?;
        let old_pid = server.pid();
        let namespaces = server.status().namespaces;
        match server.replace().await {
            Ok(pid) => Ok(Restarted {
                key: format!("shared-server-{shard}"),
                old_pid,
                new_pid: Some(pid),
                method: "shared-server",
                note: Some(format!(
                    "{namespaces} namespaces handed to the new server (nothing lost)"
                )),
            }),
            Err(e) => Err(RestartError::Failed(format!(
                "shared server {shard}: {e}; the old server goes on serving"
            ))),
        }
    }

    /// With `proxy_model = shared`: the shared server, taken over from a previous spawner or
    /// started, once (a later change of `proxy_model` takes effect at the next start).
    /// The shared servers take the options of `cfg` (a SIGHUP's, and who proxies run as
    /// now): one whose argv differs is replaced gracefully (`SharedServer::reconfigure`).
    async fn reconfigure_shared(&self, cfg: &Config) {
        if let Some(servers) = self.inner.shared.get() {
            servers.reconfigure(&self.for_proxies(cfg)).await;
        }
    }

    async fn ensure_shared(&self, cfg: &Arc<Config>) {
        if cfg.proxy_model == ProxyModel::Shared {
            self.inner
                .shared
                .get_or_init(|| SharedServers::start(Arc::clone(cfg)))
                .await;
        } else {
            // Switched back from the shared model: its servers hand their sockets over.
            self.inner
                .retired
                .get_or_init(|| RetiredServers::find(cfg, 0))
                .await;
        }
    }

    async fn stop_proxy(&self, p: Proxy) -> Result<(), String> {
        tracing::info!(key = %p.spec.key, netns = %p.spec.netns, "stopping proxy");
        let _ = p.stop.send(());
        p.task
            .await
            .map(drop)
            .map_err(|e| format!("{}: proxy task failed: {e}", p.spec.netns))
    }

    /// Stop every proxy, and the shared server if there is one (for `--stop-proxies-on-exit`).
    pub async fn stop_all(&self) {
        let _pass = self.inner.reconcile_lock.lock().await;
        let all: Vec<Proxy> = std::mem::take(&mut *lock(&self.inner.proxies))
            .into_values()
            .collect();
        futures::future::join_all(all.into_iter().map(|p| self.stop_proxy(p))).await;
        if let Some(server) = self.inner.shared.get() {
            server.stop().await;
        }
    }

    /// At start: adopt the proxies that are provably ours and wanted in the namespace they
    /// run in, stop (and tear down in their own namespace) the ones that are ours but not
    /// wanted there, remove every other pid file without signalling its process; then start
    /// the rest. Returns once every proxy had its first start attempt.
    pub async fn adopt_and_start(&self) {
        let _pass = self.inner.reconcile_lock.lock().await;
        self.inner
            .reconciles
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The shared server taken over first: who served a namespace decides who keeps it
        // when two records name it (`claims`).
        let now = self.config();
        if now.proxy_model == ProxyModel::Shared {
            self.ensure_shared(&now).await;
        }
        let (present, waiting, cfg) = self.plan();
        let keep = stats_keys(&cfg, &present, &waiting);
        // With the API records lost, "not wanted" may only mean "lost": nothing found running
        // is stopped, and nothing it counts into is removed.
        let lost = lock(&self.inner.recovery).records_lost();
        if !lost {
            crate::proxy_stats::retain(&cfg.stats_dir(), &keep);
        }
        let pid_dir = cfg.pid_dir();
        let platform = &*self.inner.platform;
        let mut adopt: BTreeMap<String, (Running, Vec<String>)> = BTreeMap::new();
        let mut stale: Vec<Stale<P::Ns>> = Vec::new();
        for (key, path) in pidfile::list(&pid_dir) {
            let spec = present.get(&key).map(|(s, _)| s);
            match judge(platform, &cfg, &key, &path, spec) {
                Verdict::Adopt(r, argv) => {
                    adopt.insert(key, (r, argv));
                }
                // records.json was damaged (no good copy left, or only the one before the last
                // save): "not wanted" may only mean "lost", so nothing is stopped (its pid
                // file stays for the next start).
                Verdict::Stop(s) if spec.is_none() && lost => {
                    tracing::warn!(key = %key, pid = s.pid, "left running: the API records were lost with a damaged records.json; announce it again to manage it, or stop it by hand");
                }
                Verdict::Stop(s) => stale.push(s),
                Verdict::Remove => pidfile::remove(&pid_dir, &key),
            }
        }
        // Proxies without a pid file (it could not be written: full or read-only state dir;
        // or the change that started them was never saved). A wanted one is found by the
        // same rule (our binary, the exact id pair, the record's namespace) and adopted, or
        // the new proxy would fail to bind next to it for ever; an unwanted one is stopped,
        // unless the API records were lost (issue "hardening", item 12). Only proxies this
        // state dir's spawner started (their environment says so, and they run as the
        // spawner or as the proxies' user) are considered; one started otherwise that holds
        // a wanted proxy's port is adopted when that start fails.
        let busy: BTreeSet<u32> = adopt
            .values()
            .filter_map(|(r, _)| r.pid())
            .chain(stale.iter().map(|s| s.pid))
            .collect();
        // Who proxies run as, as the proxies planned above were given it.
        let uids = self.for_proxies(&cfg).proxy_uids();
        for (pid, info) in pidfile::find_running(&cfg.proxy_binary) {
            if busy.contains(&pid) || !pidfile::started_by(pid, &cfg.state_dir, &uids) {
                continue;
            }
            // The wanted proxy this one serves (our binary, the exact id pair, the record's
            // namespace), if any.
            let wanted = present.iter().find(|(_, (spec, _))| {
                has_pair(&info.argv, spec)
                    && info.netns.is_some()
                    && info.netns == platform.namespace_inode(&spec.netns)
            });
            match wanted {
                Some((key, (spec, _))) if !adopt.contains_key(key) => {
                    let Some(r) = open_proven(pid, &info) else {
                        continue;
                    };
                    tracing::info!(key = %key, pid, "found a running proxy without a pid file");
                    if let Err(e) = pidfile::write(&pid_dir, key, pid, &spec.interface) {
                        tracing::warn!(key = %key, err = %e, "cannot write pid file");
                    }
                    adopt.insert(key.clone(), (r, info.argv));
                }
                // The other half of a restart the previous spawner did not finish (killed
                // while both proxies ran on the same sockets): the namespace is served by the
                // adopted one, so this one is stopped without a teardown, which would remove
                // the addresses the adopted proxy answers on.
                Some((_, (spec, _))) => {
                    let Some(r) = open_proven(pid, &info) else {
                        continue;
                    };
                    stale.push(Stale {
                        pid,
                        running: Some(r),
                        ns: None,
                        spec: spec.clone(),
                        why: "stopping the second proxy of an unfinished restart (the one of the pid file serves the namespace; no teardown)",
                    });
                }
                None if !lost => {
                    if let Some(s) = unmanaged(platform, &cfg, pid, &info) {
                        stale.push(s);
                    }
                }
                None => {}
            }
        }
        let grace = cfg.stop_timeout;
        let stops = stale.into_iter().map(|mut s| {
            let pid_dir = pid_dir.clone();
            async move {
                tracing::info!(key = %s.spec.key, pid = s.pid, "{}", s.why);
                if let Some(running) = s.running.as_mut() {
                    running.stop(grace).await;
                }
                // Teardown before the pid file goes: killed in between, the next start
                // still knows what to remove.
                if let Some(ns) = &s.ns {
                    if let Err(e) = platform.teardown(ns, &s.spec).await {
                        tracing::warn!(key = %s.spec.key, err = %e, "teardown failed");
                    }
                }
                pidfile::remove_own(&pid_dir, &s.spec.key, Some(s.pid));
            }
        });
        futures::future::join_all(stops).await;
        *lock(&self.inner.waiting) = waiting;
        self.ensure_shared(&cfg).await;
        let mut firsts = Vec::new();
        {
            let mut proxies = lock(&self.inner.proxies);
            for (k, (spec, args)) in present {
                let start = match adopt.remove(&k) {
                    Some((r, argv)) => Start::Adopt(Box::new(r), argv),
                    None => Start::Fresh,
                };
                let p = self.start_proxy(spec, args, start, &cfg);
                firsts.push(p.status.settled());
                proxies.insert(k, p);
            }
        }
        // Wait (bounded) until each proxy's first attempt is over: signalled by its status.
        let bound = cfg.ready_timeout + Duration::from_secs(1);
        let _ = tokio::time::timeout(bound, futures::future::join_all(firsts)).await;
        // Sockets a previous spawner's shared server gave back that no record wants now; with
        // the records lost they stay served (as unwanted proxies stay running), until announced
        // again (taken back then) or the next start with good records.
        if lost && (self.inner.shared.get().is_some() || self.inner.retired.get().is_some()) {
            tracing::warn!("the API records were lost with a damaged records.json: namespaces a previous shared server served that no record names are left served; announce them again to manage them");
        } else {
            if let Some(server) = self.inner.shared.get() {
                server.drop_unclaimed().await;
                // Their slab records too, now that the server stopped counting into them.
                crate::proxy_stats::retain(&cfg.stats_dir(), &keep);
            }
            if let Some(retired) = self.inner.retired.get() {
                retired.retire(&cfg).await;
            }
        }
        // A server taken over with other options (an upgrade, a changed file) is replaced
        // now that it was handed every namespace, as a proxy with other arguments is.
        self.reconfigure_shared(&cfg).await;
    }

    fn start_proxy(
        &self,
        spec: ProxySpec,
        args: Vec<String>,
        start: Start,
        cfg: &Arc<Config>,
    ) -> Proxy {
        let status = Arc::new(Status::new(&spec));
        let (stop_tx, stop_rx) = oneshot::channel();
        let (restart_tx, restart_rx) = tokio::sync::mpsc::unbounded_channel();
        let t = Task {
            platform: Arc::clone(&self.inner.platform),
            spec: spec.clone(),
            args: args.clone(),
            status: Arc::clone(&status),
            stop: stop_rx,
            cfg: Arc::clone(cfg),
            launches: Arc::clone(&self.inner.launches),
            restart: restart_rx,
            handover: self.inner.retired.get().cloned(),
        };
        // The shared model once its server exists (`ensure_shared` runs before any start).
        let shared = match cfg.proxy_model {
            ProxyModel::Shared => self.inner.shared.get(),
            ProxyModel::PerNamespace => None,
        };
        let task = match shared {
            Some(server) => {
                let server = server.clone();
                tokio::spawn(async move {
                    namespace_task(t, start, server).await;
                    None
                })
            }
            None => tokio::spawn(proxy_task(t, start)),
        };
        Proxy {
            spec,
            args,
            status,
            stop: stop_tx,
            restart: restart_tx,
            task,
        }
    }
}

/// Why a wanted proxy waits: another record's proxy is served in its namespace (`served`:
/// namespace → key, [`Supervisor::plan`]), or its namespace is missing.
fn waiting_reason(spec: &ProxySpec, served: &BTreeMap<String, String>) -> String {
    match served.get(&spec.netns).filter(|k| **k != spec.key) {
        Some(o) => format!(
            "namespace {} is already served for {o} (one proxy per namespace)",
            spec.netns
        ),
        None => format!("namespace {} does not exist", spec.netns),
    }
}

/// Whether `p` can be replaced by socket takeover instead of stop and start: the
/// per-namespace model, the same spec (namespace, interface, addresses) wanted, only the
/// arguments differ.
fn replaceable(
    cfg: &Config,
    p: &Proxy,
    present: &BTreeMap<String, (ProxySpec, Vec<String>)>,
) -> bool {
    cfg.proxy_model == ProxyModel::PerNamespace
        && present
            .get(&p.spec.key)
            .is_some_and(|(s, a)| *s == p.spec && *a != p.args)
}

/// The keys whose statistics blocks stay: every wanted proxy's, running or waiting (none when
/// proxies have no block, [`Config::stats_blocks`]).
fn stats_keys<A, B>(
    cfg: &Config,
    present: &BTreeMap<String, A>,
    waiting: &BTreeMap<String, B>,
) -> BTreeSet<String> {
    if !cfg.stats_blocks() {
        return BTreeSet::new();
    }
    present.keys().chain(waiting.keys()).cloned().collect()
}
