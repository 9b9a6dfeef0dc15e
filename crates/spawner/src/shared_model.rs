//! The shared proxy model (`[spawner] proxy_model = shared`, issue #20): one
//! `ns-metadata-proxy --shared-server STATE_DIR` process serves every namespace. For each
//! wanted namespace the spawner prepares it as for a proxy (addresses), opens its listening
//! sockets inside it, keeps a copy and hands them to the server on the control socket
//! (`STATE_DIR/shared.sock`, protocol in the proxy's `src/shared.rs`).
//!
//! - The server is supervised like a proxy: restarted at once, then with backoff; a restarted
//!   server is handed every socket again, so connections that arrived while it was down wait
//!   in the kernel's accept queues instead of being refused.
//! - The server outlives the spawner (as proxies do). A restarted spawner proves the server
//!   is its own (pid file `STATE_DIR/shared-server.pid` with the start time, exe = the proxy
//!   binary, argv `--shared-server STATE_DIR`), takes every socket back with `list`, and a
//!   namespace uses a socket it got back only when the socket's own namespace
//!   (`SIOCGSKNS`) is the record's namespace now and its address is the metadata address;
//!   otherwise the server is told to drop it and the namespace binds afresh.
//! - A graceful restart ([`SharedServer::replace`]) starts a new server on a control socket
//!   of its own (`shared.sock.next`), waits for its READY, hands it every socket, and only
//!   then renames that socket over `shared.sock`, points the pid file at it and SIGTERMs the
//!   old one, which stops accepting and finishes what it has: both accept from the same
//!   listening sockets meanwhile, so no connection is refused or lost. A replacement that
//!   fails before that leaves the old server, its control socket path and pid file as they
//!   were (a restarted spawner still takes it over).
//! - With `shared_servers = N` there are N such servers ([`SharedServers`], shards), each
//!   with its own files ([`ShardFiles`]) and `--shard` in its argv; a namespace is served by
//!   the one [`shard_of`] its key picks. The control-socket client and the replay in
//!   `add-batch` messages are in `shared_control.rs`, the task per namespace in
//!   `shared_task.rs`.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::UnixDatagram;
use tokio::sync::{oneshot, watch};

use crate::backoff::Backoff;
use crate::config::Config;
use crate::decide::ProxySpec;
use crate::launch::{self, Running, READY_FD};
use crate::pidfile;
use crate::{Error, Result};

/// The (first) server's control socket in the state directory.
pub const CONTROL_SOCKET: &str = "shared.sock";
/// The (first) server's pid file in the state directory: `pid starttime`.
pub const PID_FILE: &str = "shared-server.pid";
/// Where the server finds the control socket (after the readiness pipe on 3).
const CONTROL_FD: i32 = 4;
use crate::shared_control::{ask, connect, control_listener, replay, take_list, AskError, Owed};
use ns_metadata_proxy::shared::{BatchItem, StatsRef};

/// A shard's files in the state directory. The first keeps a single server's names
/// (`shared.sock`, `shared-server.pid`), so raising `shared_servers` from 1 takes the running
/// server over as shard 0; shard N has `shared-N.sock` and `shared-server-N.pid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardFiles {
    /// The control socket.
    pub control: String,
    /// A replacement server's control socket until it has every socket.
    pub next: String,
    /// The pid file (`pid starttime`).
    pub pid: String,
    /// A server being started (or started as a replacement) until it has every socket: named
    /// here from its spawn on, so a spawner that dies before the pid file names it (a kill,
    /// a SIGTERM mid-start) leaves a server the next one can find ([`take_over`]).
    pub next_pid: String,
}

impl ShardFiles {
    pub fn of(shard: usize) -> ShardFiles {
        if shard == 0 {
            return ShardFiles {
                control: CONTROL_SOCKET.to_owned(),
                next: format!("{CONTROL_SOCKET}.next"),
                pid: PID_FILE.to_owned(),
                next_pid: format!("{PID_FILE}.next"),
            };
        }
        ShardFiles {
            control: format!("shared-{shard}.sock"),
            next: format!("shared-{shard}.sock.next"),
            pid: format!("shared-server-{shard}.pid"),
            next_pid: format!("shared-server-{shard}.pid.next"),
        }
    }
}

/// The shard serving the namespace keyed `key`, of `shards`: a fixed hash (FNV-1a), so a
/// restarted spawner (or another build) finds every namespace on the same shard.
pub fn shard_of(key: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    usize::try_from(h % shards.max(1) as u64).unwrap_or(0)
}

/// A server's arguments (without the program): the proxy options every proxy gets, no id
/// and no binds; `--shard N` for all but the first (argv is its identity).
pub fn server_args(cfg: &Config, shard: usize) -> Vec<String> {
    let mut a = vec![
        "--shared-server".to_owned(),
        cfg.state_dir.display().to_string(),
        "--control-fd".to_owned(),
        CONTROL_FD.to_string(),
    ];
    if shard > 0 {
        a.extend(["--shard".to_owned(), shard.to_string()]);
    }
    a.extend(launch::shared_args(cfg));
    a
}

/// A namespace's entry: what its `add` says and our copies of its sockets (shared with a
/// replay in progress, which borrows them: a message carries its own references).
struct Entry {
    item: BatchItem,
    fds: Arc<Vec<OwnedFd>>,
}

/// What `status` says of a shared server (`GET /v1/status` `servers`, one per server).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServerStatus {
    /// Which server (0 with one).
    pub shard: usize,
    /// `starting`, `running`, `restarting` (died; the next one is being started), `hung`
    /// (its heartbeat stopped: killed, the next one is being started), `backoff` (a start
    /// failed; retried after a delay) or `stopped`.
    pub state: String,
    pub pid: Option<u32>,
    /// Namespaces handed to it (the spawner's entries; one it refused is logged).
    pub namespaces: usize,
    /// Deaths and failed starts (a graceful `restart` is not counted).
    pub restarts: u64,
    pub last_error: Option<String>,
    /// Taken over from a previous spawner (not started by this one).
    pub adopted: bool,
}

/// The parts of [`ServerStatus`] the manager keeps.
#[derive(Default)]
struct Health {
    state: &'static str,
    restarts: u64,
    last_error: Option<String>,
    adopted: bool,
}

struct Inner {
    cfg: Arc<Config>,
    shard: usize,
    files: ShardFiles,
    health: Mutex<Health>,
    entries: Mutex<BTreeMap<String, Entry>>,
    /// The control connection while a server is up (one request at a time).
    control: tokio::sync::Mutex<Option<UnixDatagram>>,
    /// Requests on it whose answers are late (taken after `control`).
    owed: tokio::sync::Mutex<Owed>,
    /// The server's pid while it is up and has every entry.
    up: watch::Sender<Option<u32>>,
    /// Sockets a running server gave back at start, by `KIND ID`: (namespace name, sockets).
    taken: Mutex<BTreeMap<String, (String, Vec<OwnedFd>)>>,
    /// Set to stop the server for good (`--stop-proxies-on-exit`).
    stop: watch::Sender<bool>,
    /// The task that keeps the server running.
    manager: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Asks the manager for a graceful restart; answered with the new server's pid.
    replace: tokio::sync::mpsc::Sender<oneshot::Sender<Result<u32>>>,
    /// The statistics slab the running server has (`stats-slab`), by (device, inode).
    slab_sent: Mutex<Option<(u64, u64)>>,
    /// Whether "served uncounted" was logged (once per spawner).
    uncounted_said: AtomicBool,
    /// The arguments (after the program) the next server starts with: the proxy options of
    /// the latest configuration, who it runs as included ([`SharedServer::reconfigure`]).
    args: Mutex<Vec<String>>,
    /// The running server's (from its argv when taken over); `None` while none runs.
    running_args: Mutex<Option<Vec<String>>>,
    /// Arguments a graceful replace could not start a server with: not tried again on every
    /// pass, only once they change (or the server restarts for another reason).
    failed_args: Mutex<Option<Vec<String>>>,
}

/// The handle on the shared server; cheap to clone.
#[derive(Clone)]
pub struct SharedServer {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The id a namespace is served with, `KIND ID` (a metadata network is served with its
/// router's: two namespaces may share it).
fn tag(spec: &ProxySpec) -> String {
    format!("{} {}", spec.kind.as_str(), spec.id)
}

/// A namespace as the server knows it, `KIND ID NETNS` (the keys of what `list` gave back).
fn ns_tag(spec: &ProxySpec) -> String {
    format!("{} {}", tag(spec), spec.netns)
}

/// The `remove` for namespace `netns` served as `kind_id`: `remove KIND ID NETNS`, or the
/// older `remove KIND ID` when no other namespace is served with that id (`others`): a
/// server of the previous release, taken over after an upgrade, knows only that form.
fn remove_msg(kind_id: &str, netns: &str, others: bool) -> String {
    if others {
        format!("remove {kind_id} {netns}")
    } else {
        format!("remove {kind_id}")
    }
}

/// Whether a `KIND ID NETNS` key among `keys` names `kind_id` in another namespace than
/// `netns`.
fn shares_id<'a>(mut keys: impl Iterator<Item = &'a String>, kind_id: &str, netns: &str) -> bool {
    keys.any(|k| {
        k.strip_prefix(kind_id)
            .and_then(|rest| rest.strip_prefix(' '))
            .is_some_and(|n| n != netns)
    })
}

impl SharedServer {
    /// Take over the server of a previous spawner of this state dir if one runs and is
    /// provably ours, else start one; then keep it running.
    pub async fn start(cfg: Arc<Config>, shard: usize) -> SharedServer {
        let (up, _) = watch::channel(None);
        let (replace, replace_rx) = tokio::sync::mpsc::channel(1);
        let inner = Arc::new(Inner {
            cfg: Arc::clone(&cfg),
            shard,
            files: ShardFiles::of(shard),
            health: Mutex::new(Health {
                state: "starting",
                ..Health::default()
            }),
            entries: Mutex::new(BTreeMap::new()),
            control: tokio::sync::Mutex::new(None),
            owed: tokio::sync::Mutex::new(Owed::default()),
            up,
            taken: Mutex::new(BTreeMap::new()),
            stop: watch::channel(false).0,
            manager: Mutex::new(None),
            replace,
            slab_sent: Mutex::new(None),
            uncounted_said: AtomicBool::new(false),
            // Who it runs as by Neutron's rule, as a proxy (`Config::for_proxies`): without
            // it a server left uid 0 could not reach an agent socket of another user, and
            // would own the root-owned state dir.
            args: Mutex::new(server_args(&cfg.for_proxies(), shard)),
            running_args: Mutex::new(None),
            failed_args: Mutex::new(None),
        });
        if cfg.stats_blocks() {
            // Opened now (a restarted spawner learns whose each record is before its first
            // reconcile frees the records of namespaces no longer wanted). Without
            // `proxy_metrics` it still carries the server's heartbeat (crate::hang).
            if let Err(e) = crate::proxy_stats::slab_fd(&cfg.stats_dir(), shard) {
                tracing::warn!(err = %e, shard, "cannot open the statistics slab; namespaces are served uncounted");
            }
        }
        let adopted = match take_over(&cfg, shard).await {
            Ok(Some((running, pid, conn, taken))) => {
                tracing::info!(
                    pid,
                    shard,
                    namespaces = taken.len(),
                    "took over the running shared server and its sockets"
                );
                *lock(&inner.taken) = taken;
                *lock(&inner.running_args) = pidfile::cmdline(pid).map(|argv| {
                    let from = argv.iter().position(|a| a == "--shared-server");
                    argv[from.unwrap_or(argv.len())..].to_vec()
                });
                *inner.control.lock().await = Some(conn);
                // A server that serves VMs is never handed a writable descriptor on the state
                // disk it could grow the file through (fallocate, write, ftruncate): it got
                // its slab before its first namespace, and it is not sent again when the
                // server maps it still (its `/proc/PID/maps`, our proof, not its word).
                if cfg.stats_blocks() {
                    if let Ok((_, id)) = crate::proxy_stats::slab_fd(&cfg.stats_dir(), shard) {
                        if crate::pidfile::maps_file(pid, id) {
                            *lock(&inner.slab_sent) = Some(id);
                        }
                    }
                }
                inner.up.send_replace(Some(pid));
                let mut h = lock(&inner.health);
                h.state = "running";
                h.adopted = true;
                Some(running)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(err = %e, shard, "cannot take over the shared server of the previous run (stopped if it was ours); starting a new one");
                None
            }
        };
        let task = tokio::spawn(manage(Arc::clone(&inner), adopted, replace_rx));
        *lock(&inner.manager) = Some(task);
        SharedServer { inner }
    }

    /// Stop the server for good (SIGTERM, grace, SIGKILL), with its pid file and control
    /// socket: for `--stop-proxies-on-exit`. Otherwise the server outlives the spawner.
    pub async fn stop(&self) {
        self.inner.stop.send_replace(true);
        let task = lock(&self.inner.manager).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Restart the server without losing a request: a new server on a fresh control socket
    /// gets every namespace's sockets and says READY, then the old one gets SIGTERM and
    /// drains (SIGKILL after `stop_timeout`). Requests to the server wait meanwhile. The new
    /// server's pid; on error the old server goes on serving.
    pub async fn replace(&self) -> Result<u32> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .replace
            .send(tx)
            .await
            .map_err(|_| Error::Spawn("the shared server is stopped".into()))?;
        rx.await
            .map_err(|_| Error::Spawn("the shared server stopped during the restart".into()))?
    }

    /// Take the latest configuration's proxy options (`for_proxies`: [`Config::for_proxies`]
    /// as the supervisor resolved it, who proxies run as included): the next start uses
    /// them, and a running server whose argv differs is replaced gracefully ([`Self::replace`],
    /// nothing refused), as a per-namespace proxy is on its sockets. A SIGHUP that changes a
    /// timeout, or an agent socket that appeared (or changed owner) after the server
    /// started, so reach it. A replace that fails leaves the old server serving and is not
    /// tried again until the options change once more.
    pub async fn reconfigure(&self, for_proxies: &Config) {
        let want = server_args(for_proxies, self.inner.shard);
        *lock(&self.inner.args) = want.clone();
        // Only a server that is up is replaced; one being restarted starts with `want`.
        let differs = self.pid().is_some()
            && lock(&self.inner.running_args)
                .as_ref()
                .is_some_and(|r| *r != want);
        if !differs || lock(&self.inner.failed_args).as_ref() == Some(&want) {
            return;
        }
        tracing::info!(shard = self.inner.shard, args = ?want, "the shared server's options changed: replacing it gracefully");
        match self.replace().await {
            Ok(pid) => {
                tracing::info!(
                    shard = self.inner.shard,
                    pid,
                    "shared server replaced with the new options"
                );
                *lock(&self.inner.failed_args) = None;
            }
            Err(e) => {
                tracing::warn!(shard = self.inner.shard, err = %e, "cannot replace the shared server with the new options; the running one goes on with the old");
                *lock(&self.inner.failed_args) = Some(want);
            }
        }
    }

    /// The server's line in `status`.
    pub fn status(&self) -> ServerStatus {
        let h = lock(&self.inner.health);
        ServerStatus {
            shard: self.inner.shard,
            state: h.state.to_owned(),
            pid: self.pid(),
            namespaces: lock(&self.inner.entries).len(),
            restarts: h.restarts,
            last_error: h.last_error.clone(),
            adopted: h.adopted,
        }
    }

    /// The server's pid while it is up.
    pub fn pid(&self) -> Option<u32> {
        *self.inner.up.borrow()
    }

    /// Changes of the server's pid (`None` while it restarts).
    pub fn watch(&self) -> watch::Receiver<Option<u32>> {
        self.inner.up.subscribe()
    }

    /// The sockets the previous spawner's server served for `spec`, if they are still right
    /// for it: in the namespace named `spec.netns` now (`ino`) and bound to the metadata
    /// address. Sockets that are not right are dropped here and by the server.
    pub(crate) async fn take_back(
        &self,
        spec: &ProxySpec,
        ino: Option<u64>,
    ) -> Option<Vec<OwnedFd>> {
        let (netns, fds) = lock(&self.inner.taken).remove(&ns_tag(spec))?;
        if let Some(fds) = still_right(spec, ino, &netns, fds) {
            return Some(fds);
        }
        let _ = self.request(&self.remove_request(spec), &[]).await;
        None
    }

    /// The `remove` for `spec`'s namespace ([`remove_msg`]), the others served with its id
    /// known from the entries and from what the previous server gave back.
    fn remove_request(&self, spec: &ProxySpec) -> String {
        let (kind_id, netns) = (tag(spec), spec.netns.as_str());
        let others = self.entry_shares_id(&kind_id, netns)
            || shares_id(lock(&self.inner.taken).keys(), &kind_id, netns);
        remove_msg(&kind_id, netns, others)
    }

    /// Whether a namespace handed to the server other than `netns` is served as `kind_id`.
    fn entry_shares_id(&self, kind_id: &str, netns: &str) -> bool {
        lock(&self.inner.entries).values().any(|e| {
            e.item.netns != netns
                && kind_id.split_once(' ')
                    == Some((e.item.resource.kind().as_str(), e.item.resource.id()))
        })
    }

    /// Whether the previous spawner's server served `spec`'s namespace for it (its sockets
    /// were handed back and not claimed yet).
    fn holds(&self, spec: &ProxySpec) -> bool {
        lock(&self.inner.taken).contains_key(&ns_tag(spec))
    }

    /// Sockets handed back that no namespace claimed (their records are gone): dropped, and
    /// the server told to close its copies.
    pub async fn drop_unclaimed(&self) {
        let left: Vec<String> = std::mem::take(&mut *lock(&self.inner.taken))
            .into_keys()
            .collect();
        for t in &left {
            tracing::info!(namespace = %t, "not wanted any more: removed from the shared server");
            let Some((kind_id, netns)) = t.rsplit_once(' ') else {
                continue;
            };
            let others =
                shares_id(left.iter(), kind_id, netns) || self.entry_shares_id(kind_id, netns);
            let _ = self.request(&remove_msg(kind_id, netns, others), &[]).await;
        }
    }

    /// Serve `spec` with `fds` (kept here too): the server's pid once it serves them. With
    /// `proxy_metrics`, the namespace is counted into its record of the shard's slab
    /// (`stats=@N`; the server got the slab at its start), or, if it cannot have one, served
    /// uncounted with a sealed anonymous block that goes last (`stats=1`): never a file.
    pub(crate) async fn add(&self, spec: &ProxySpec, mut fds: Vec<OwnedFd>) -> Result<u32> {
        let mut request = format!("add {} {}", tag(spec), spec.netns);
        let listeners = fds.len();
        let stats = if self.inner.cfg.proxy_metrics {
            self.stats_for(spec, &mut fds).await?
        } else {
            StatsRef::None
        };
        if let Some(word) = stats.word() {
            request.push(' ');
            request.push_str(&word);
        }
        let item = BatchItem {
            resource: ns_contract::Resource::new(spec.kind, &spec.id)
                .map_err(|e| Error::Invalid(e.to_string()))?,
            netns: spec.netns.clone(),
            listeners,
            stats,
        };
        let fds = Arc::new(fds);
        lock(&self.inner.entries).insert(
            spec.key.clone(),
            Entry {
                item,
                fds: Arc::clone(&fds),
            },
        );
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
        match self.send(&request, &borrowed).await {
            Ok(pid) => Ok(pid),
            Err(Failed::Unanswered(pid, e)) => {
                // The sockets went with the message: the server serves them once it runs
                // again (stopped, not dead), and a replacement gets them from the entries.
                // Dropped instead, the namespace was served but unknown here, and its
                // retries could not bind the address the message holds.
                tracing::warn!(key = %spec.key, pid, err = %e, "the shared server did not answer in time; it has the namespace's sockets and serves them once it runs");
                Ok(pid)
            }
            Err(Failed::NotDone(e)) => {
                lock(&self.inner.entries).remove(&spec.key);
                Err(e)
            }
        }
    }

    /// Where `spec`'s answers are counted: its record of the slab the server has, else
    /// nowhere (a sealed anonymous block pushed on `fds`). A server that serves VMs may be
    /// compromised, so it is never handed a descriptor of a file on the state disk, which
    /// it could grow until the disk is full (`fallocate`, `write`, `ftruncate` need only a
    /// writable descriptor; `RLIMIT_FSIZE` stops neither `fallocate(FALLOC_FL_KEEP_SIZE)`
    /// nor a holder of another process): it gets the slab before its first namespace (or
    /// had it when taken over), and nothing more.
    async fn stats_for(&self, spec: &ProxySpec, fds: &mut Vec<OwnedFd>) -> Result<StatsRef> {
        let dir = self.inner.cfg.stats_dir();
        // A server being started (the first namespace starts it) or restarted gets the slab
        // before the entries are replayed, and is up only after: which slab it has is known
        // once it is up (the add waits for that anyway; not in time, it fails there).
        let mut up = self.inner.up.subscribe();
        let _ =
            tokio::time::timeout(self.inner.cfg.ready_timeout, up.wait_for(Option::is_some)).await;
        if let Some(rec) = crate::proxy_stats::record_for(&dir, self.inner.shard, &spec.key) {
            if *lock(&self.inner.slab_sent) == Some(rec.slab_id) {
                return Ok(StatsRef::Record(rec.record));
            }
            if !self.inner.uncounted_said.swap(true, Ordering::Relaxed) {
                tracing::warn!(key = %spec.key, "the shared server was not given this statistics slab when it started; its new namespaces are served uncounted until it is restarted");
            }
            crate::proxy_stats::release(&dir, self.inner.shard, &spec.key);
        }
        fds.push(
            crate::proxy_stats::anonymous()
                .map_err(|e| Error::Spawn(format!("statistics block: {e}")))?,
        );
        Ok(StatsRef::Block)
    }

    /// Stop serving `spec`: the server closes its copies, we close ours.
    pub(crate) async fn remove(&self, spec: &ProxySpec) {
        lock(&self.inner.entries).remove(&spec.key);
        if let Err(e) = self.request(&self.remove_request(spec), &[]).await {
            tracing::debug!(key = %spec.key, err = %e, "shared server: remove");
        }
    }

    /// One request once the server is up (waiting up to the ready timeout): the server's
    /// pid on `ok`.
    async fn request(&self, msg: &str, fds: &[BorrowedFd<'_>]) -> Result<u32> {
        self.send(msg, fds).await.map_err(|f| match f {
            Failed::Unanswered(_, e) | Failed::NotDone(e) => e,
        })
    }

    /// [`SharedServer::request`], telling a request sent but not answered in time apart.
    async fn send(&self, msg: &str, fds: &[BorrowedFd<'_>]) -> std::result::Result<u32, Failed> {
        let wait = self.inner.cfg.ready_timeout;
        let mut up = self.inner.up.subscribe();
        let pid = match tokio::time::timeout(wait, up.wait_for(Option::is_some)).await {
            Ok(Ok(pid)) => pid.unwrap_or_default(),
            _ => {
                return Err(Failed::NotDone(Error::Spawn(format!(
                    "the shared server is not up after {wait:?}"
                ))))
            }
        };
        let control = self.inner.control.lock().await;
        let conn = control.as_ref().ok_or_else(|| {
            Failed::NotDone(Error::Spawn("the shared server is restarting".into()))
        })?;
        let failed = |e: std::io::Error| Error::Spawn(format!("shared server control socket: {e}"));
        let mut owed = self.inner.owed.lock().await;
        match owed.ask(conn, msg, fds, wait).await {
            Ok(a) if a == "ok" => Ok(pid),
            Ok(a) => Err(Failed::NotDone(Error::Spawn(format!(
                "shared server: {}",
                a.strip_prefix("error ").unwrap_or(&a)
            )))),
            Err(AskError::Unanswered(e)) => Err(Failed::Unanswered(pid, failed(e))),
            Err(AskError::NotSent(e)) => Err(Failed::NotDone(failed(e))),
        }
    }
}

/// Why a request to the server failed.
enum Failed {
    /// Sent (with its descriptors) but not answered in time: the server has it, and its
    /// answer is read before the next one's ([`Owed`]).
    Unanswered(u32, Error),
    /// Not sent, or refused.
    NotDone(Error),
}

/// Every server of the shared model (`[spawner] shared_servers` shards, each namespace on
/// [`shard_of`] its key); cheap to clone.
#[derive(Clone)]
pub struct SharedServers {
    shards: Arc<Vec<SharedServer>>,
    /// Servers of shards no longer configured (`shared_servers` lowered), taken over at
    /// start: their sockets move to the shards that serve the namespaces now, then they stop.
    retired: RetiredServers,
}

/// Shared servers of a previous run that this one does not keep: shards beyond
/// `shared_servers`, or every one after a switch to `proxy_model = per-namespace`. Taken over
/// at start (proven ours) only to hand each namespace's sockets to what serves it now, and
/// stopped after the first reconcile ([`Retired`]); cheap to clone.
#[derive(Clone, Default)]
pub struct RetiredServers(Arc<Vec<Retired>>);

impl RetiredServers {
    /// The running servers of ours for shards `from` and up.
    pub async fn find(cfg: &Config, from: usize) -> RetiredServers {
        RetiredServers(Arc::new(Retired::find(cfg, from).await))
    }

    /// `spec`'s sockets, if one of them served it and they are still right for it; that
    /// server stops serving them.
    pub(crate) async fn take_back(
        &self,
        spec: &ProxySpec,
        ino: Option<u64>,
    ) -> Option<Vec<OwnedFd>> {
        for r in self.0.iter() {
            if let Some(fds) = r.take_back(spec, ino).await {
                return Some(fds);
            }
        }
        None
    }

    /// After the first reconcile: drop what no namespace claimed and stop them.
    pub async fn retire(&self, cfg: &Config) {
        for r in self.0.iter() {
            r.retire(cfg).await;
        }
    }
}

/// Shards a state dir can have had (`shared_servers` is 1..=64).
const MAX_SHARDS: usize = 64;

/// The server of a shard beyond `shared_servers` (the setting was lowered since it started),
/// proven ours and taken over like a shard's, but never restarted: each namespace it serves
/// is told to move (`remove` there, the sockets handed to the namespace's shard, as when
/// `shared_servers` is raised); after the first reconcile what is left is dropped and the
/// server stopped, its pid file and control socket removed. Without this its sockets would
/// stay bound and the namespaces' new shards could not bind theirs.
struct Retired {
    shard: usize,
    pid: u32,
    running: Mutex<Option<Running>>,
    conn: UnixDatagram,
    taken: Mutex<BTreeMap<String, (String, Vec<OwnedFd>)>>,
    /// Cleared when a `remove` goes unanswered: the server is not asked again (thousands of
    /// namespaces would each wait for it), only stopped after the first reconcile.
    answers: std::sync::atomic::AtomicBool,
}

impl Retired {
    /// Every shard file from `shards` up that names a running server of ours.
    async fn find(cfg: &Config, shards: usize) -> Vec<Retired> {
        let mut out = Vec::new();
        for shard in shards..MAX_SHARDS {
            let taken = match take_over(cfg, shard).await {
                Ok(Some(t)) => t,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(err = %e, shard, "a server of a shard no longer configured could not be taken over (stopped if it was ours)");
                    continue;
                }
            };
            let (running, pid, conn, taken) = taken;
            tracing::info!(
                pid,
                shard,
                namespaces = taken.len(),
                shards_kept = shards,
                "a shared server this run does not keep (shared_servers lowered, or proxy_model changed): its namespaces' sockets go to what serves them now, then it stops"
            );
            if cfg.proxy_metrics {
                // Open, so the counts of each namespace that moves go along with it.
                if let Err(e) = crate::proxy_stats::slab_fd(&cfg.stats_dir(), shard) {
                    tracing::warn!(err = %e, shard, "cannot open the retired shard's statistics slab; its namespaces' counts start again");
                }
            }
            out.push(Retired {
                shard,
                pid,
                running: Mutex::new(Some(running)),
                conn,
                taken: Mutex::new(taken),
                answers: std::sync::atomic::AtomicBool::new(true),
            });
        }
        out
    }

    /// `spec`'s sockets, if this server had them and they are still right for it (as
    /// [`SharedServer::take_back`]); either way the server stops serving them.
    async fn take_back(&self, spec: &ProxySpec, ino: Option<u64>) -> Option<Vec<OwnedFd>> {
        let (netns, fds) = lock(&self.taken).remove(&ns_tag(spec))?;
        self.forget(&tag(spec), &spec.netns).await;
        let fds = still_right(spec, ino, &netns, fds)?;
        tracing::info!(key = %spec.key, from = self.shard, "namespace's sockets taken from a shared server this run does not keep");
        Some(fds)
    }

    /// Tell the server to stop serving `tag` in `netns` (it drains; the sockets stay in the
    /// kernel).
    async fn forget(&self, tag: &str, netns: &str) {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.answers.load(Relaxed) {
            return;
        }
        let wait = Duration::from_secs(5);
        let others = shares_id(lock(&self.taken).keys(), tag, netns);
        match ask(&self.conn, &remove_msg(tag, netns, others), &[], wait).await {
            Ok(a) if a == "ok" => {}
            Ok(a) => {
                tracing::warn!(shard = self.shard, namespace = %tag, answer = %a, "retired shared server refused a remove")
            }
            Err(e) => {
                self.answers.store(false, Relaxed);
                tracing::warn!(shard = self.shard, pid = self.pid, namespace = %tag, err = %e, "retired shared server did not answer a remove; not asked again, it is stopped after the first reconcile")
            }
        }
    }

    /// Drop what no namespace claimed and stop the server (it drains its connections in
    /// the background); its pid file and control socket go once it is gone.
    async fn retire(&self, cfg: &Config) {
        let left: Vec<String> = std::mem::take(&mut *lock(&self.taken))
            .into_keys()
            .collect();
        for t in &left {
            tracing::info!(namespace = %t, shard = self.shard, "not wanted any more: dropped with its retired shared server");
        }
        let Some(mut running) = lock(&self.running).take() else {
            return;
        };
        let files = ShardFiles::of(self.shard);
        let (dir, grace, shard, pid) = (
            cfg.state_dir.clone(),
            cfg.stop_timeout,
            self.shard,
            self.pid,
        );
        tokio::spawn(async move {
            let how = running.stop(grace).await;
            for f in [&files.pid, &files.control, &files.next_pid] {
                let _ = std::fs::remove_file(dir.join(f));
            }
            tracing::info!(shard, pid, how = %how, "retired shared server stopped");
        });
    }
}

impl SharedServers {
    /// Whether a previous spawner's server of any shard served `spec`'s namespace for it.
    pub(crate) fn hold(&self, spec: &ProxySpec) -> bool {
        self.shards.iter().any(|s| s.holds(spec))
    }

    /// Take over or start every shard ([`SharedServer::start`]), at once.
    pub async fn start(cfg: Arc<Config>) -> SharedServers {
        let n = cfg.shared_servers.max(1);
        let shards = futures::future::join_all(
            (0..n).map(|shard| SharedServer::start(Arc::clone(&cfg), shard)),
        )
        .await;
        let retired = RetiredServers::find(&cfg, n).await;
        SharedServers {
            shards: Arc::new(shards),
            retired,
        }
    }

    /// Every shard, in order.
    pub fn all(&self) -> &[SharedServer] {
        &self.shards
    }

    /// Shard `shard`, if there is one.
    pub fn get(&self, shard: usize) -> Option<&SharedServer> {
        self.shards.get(shard)
    }

    /// The shard serving the namespace keyed `key`.
    pub fn for_key(&self, key: &str) -> &SharedServer {
        &self.shards[shard_of(key, self.shards.len())]
    }

    /// [`SharedServer::reconfigure`] on every shard.
    pub async fn reconfigure(&self, for_proxies: &Config) {
        for s in self.shards.iter() {
            s.reconfigure(for_proxies).await;
        }
    }

    /// Stop every shard for good (`--stop-proxies-on-exit`).
    pub async fn stop(&self) {
        futures::future::join_all(self.shards.iter().map(SharedServer::stop)).await;
    }

    /// [`SharedServer::drop_unclaimed`] on every shard; servers of shards no longer
    /// configured are stopped.
    pub async fn drop_unclaimed(&self) {
        for s in self.shards.iter() {
            s.drop_unclaimed().await;
        }
        self.retired.retire(&self.shards[0].inner.cfg).await;
    }

    /// The sockets a previous spawner's servers served for `spec` ([`SharedServer::take_back`]):
    /// from its own shard, or from another one (`shared_servers` changed): that one is told
    /// to stop serving them first, so they move (connections meanwhile wait in the kernel).
    pub(crate) async fn take_back(
        &self,
        spec: &ProxySpec,
        ino: Option<u64>,
    ) -> Option<Vec<OwnedFd>> {
        let own = shard_of(&spec.key, self.shards.len());
        if let Some(fds) = self.shards[own].take_back(spec, ino).await {
            return Some(fds);
        }
        for (i, other) in self.shards.iter().enumerate().filter(|(i, _)| *i != own) {
            if let Some(fds) = other.take_back(spec, ino).await {
                tracing::info!(key = %spec.key, from = i, to = own, "namespace moves to another shared server");
                let _ = other.request(&other.remove_request(spec), &[]).await;
                return Some(fds);
            }
        }
        self.retired.take_back(spec, ino).await
    }
}

/// The sockets a previous server served for `spec` (in `netns` then), if they are what it
/// would open now: exactly one listening TCP socket per address it binds, in its namespace
/// (inode `ino`), the same check as `restart`'s takeover (`takeover::which`), returned in
/// `--bind` order (a per-namespace proxy takes them in that order). `None`, logged,
/// otherwise: the namespace then binds afresh. A server runs unprivileged, so it may be
/// compromised: it also holds the namespace's accepted connections, which have that
/// namespace and local address (only `SO_ACCEPTCONN` tells them apart), and it could hand
/// one listener twice and leave another out; kept, either would leave the namespace (or its
/// IPv6 address) unserved once that server is gone.
fn still_right(
    spec: &ProxySpec,
    ino: Option<u64>,
    netns: &str,
    fds: Vec<OwnedFd>,
) -> Option<Vec<OwnedFd>> {
    let wanted = crate::takeover::wanted(spec.ipv6);
    let mut slots: Vec<Option<OwnedFd>> = wanted.iter().map(|_| None).collect();
    let mut right = netns == spec.netns && fds.len() == wanted.len();
    if let (true, Some(ino)) = (right, ino) {
        for fd in fds {
            match crate::takeover::which(fd.as_fd(), &wanted, ino) {
                Ok(Some(i)) if slots[i].is_none() => slots[i] = Some(fd),
                _ => right = false,
            }
        }
    }
    let taken: Option<Vec<OwnedFd>> = slots.into_iter().collect();
    if !right || taken.is_none() {
        tracing::info!(key = %spec.key, netns = %netns, "the sockets handed back are not the record's listeners now; binding afresh");
        return None;
    }
    taken
}

/// Start a server with `args` ([`server_args`]) on `listener` and wait for its READY.
async fn spawn_server(cfg: &Config, args: &[String], listener: &OwnedFd) -> Result<(Running, u32)> {
    let (rd, wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| Error::Spawn(format!("pipe: {e}")))?;
    let control = listener
        .try_clone()
        .map_err(|e| Error::Spawn(format!("dup control socket: {e}")))?;
    let mut cmd = ns_netns::Spawn::new(&cfg.proxy_binary);
    cmd.args(args);
    launch::proxy_env(&mut cmd, cfg);
    // The ready pipe on 3, the control socket on 4, nothing else of ours.
    cmd.fd(wr, READY_FD);
    cmd.fd(control, CONTROL_FD);
    let child = cmd
        .spawn()
        .map_err(|e| Error::Spawn(format!("spawn {}: {e}", cfg.proxy_binary.display())))
        .and_then(|s| Running::child(s).map_err(|e| Error::Spawn(format!("pidfd: {e}"))))?;
    let running = launch::wait_ready(child, rd, cfg.ready_timeout, "the shared server").await?;
    let pid = running.pid().unwrap_or_default();
    Ok((running, pid))
}

/// Name `pid` in the server's pid file (`pid starttime`): what a restarted spawner takes over.
/// The server it replaces (if any) is no longer named as the next one.
fn write_pid_file(cfg: &Config, files: &ShardFiles, pid: u32) {
    if let Err(e) = name_server(cfg, &files.pid, pid) {
        tracing::warn!(err = %e, "cannot write the shared server's pid file; a restarted spawner will not take it over");
    }
    let _ = std::fs::remove_file(cfg.state_dir.join(&files.next_pid));
}

/// Name a server just spawned as the next one (`files.next_pid`) until [`write_pid_file`].
fn write_next_pid_file(cfg: &Config, files: &ShardFiles, pid: u32) {
    if let Err(e) = name_server(cfg, &files.next_pid, pid) {
        tracing::warn!(err = %e, "cannot name the new shared server in its next pid file");
    }
}

/// `pid starttime` in the state dir's `file`, written atomically.
fn name_server(cfg: &Config, file: &str, pid: u32) -> Result<()> {
    let start = pidfile::start_time(pid).unwrap_or_default();
    crate::statedir::write_atomic(&cfg.state_dir, file, format!("{pid} {start}\n").as_bytes())
}

/// A `pid starttime` file in the state dir: the process, if it is provably this shard's
/// server ([`is_our_server`]), held by its pidfd.
fn proven_server(
    cfg: &Config,
    shard: usize,
    file: &str,
) -> Result<Option<(u32, pidfile::ProcInfo)>> {
    let path = cfg.state_dir.join(file);
    let Some(bytes) = crate::statedir::read_nofollow(&path, 64)? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&bytes);
    let mut f = text.split_ascii_whitespace();
    let (Some(Ok(pid)), Some(Ok(start))) = (
        f.next().map(str::parse::<u32>),
        f.next().map(str::parse::<u64>),
    ) else {
        return Err(Error::Invalid(format!(
            "{}: not `pid starttime`",
            path.display()
        )));
    };
    let Some(info) = pidfile::ProcInfo::read(pid) else {
        return Ok(None);
    };
    if let Err(why) = is_our_server(&info, start, cfg, shard) {
        tracing::info!(pid, file, why = %why, "a shared server's pid file names another process; not touched");
        return Ok(None);
    }
    Ok(Some((pid, info)))
}

/// A server the previous spawner started and died before naming in the pid file (killed, or
/// stopped by a signal, between the spawn and the end of the hand-over: issue #20's review).
/// Left alone it would hold the sockets it was handed, unmanaged, and the namespaces could
/// not bind theirs. If the server the pid file names is alive, the new one was its
/// replacement and never served alone: stopped (the old one keeps serving). Otherwise it was
/// the restart of a dead server: it takes the pid file's place (and a replacement's control
/// socket the control socket's), to be taken over like any.
async fn settle_next(cfg: &Config, shard: usize, files: &ShardFiles) {
    let next = match proven_server(cfg, shard, &files.next_pid) {
        Ok(Some(n)) => n,
        Ok(None) | Err(_) => {
            let _ = std::fs::remove_file(cfg.state_dir.join(&files.next_pid));
            return;
        }
    };
    let (pid, info) = next;
    let current = match proven_server(cfg, shard, &files.pid) {
        // Named in both: the previous spawner died between the two writes; nothing unfinished.
        Ok(Some((p, _))) if p == pid => {
            let _ = std::fs::remove_file(cfg.state_dir.join(&files.next_pid));
            return;
        }
        Ok(Some(_)) => true,
        _ => false,
    };
    if current {
        if let Some(mut running) = crate::adopt::open_proven(pid, &info) {
            let how = running.stop(cfg.stop_timeout).await;
            tracing::warn!(pid, shard, how = %how, "stopped a replacement shared server the previous spawner started but did not finish handing over; the server it was to replace serves on");
        }
        let _ = std::fs::remove_file(cfg.state_dir.join(&files.next));
        let _ = std::fs::remove_file(cfg.state_dir.join(&files.next_pid));
        return;
    }
    let dir = &cfg.state_dir;
    if dir.join(&files.next).exists() {
        if let Err(e) = std::fs::rename(dir.join(&files.next), dir.join(&files.control)) {
            tracing::warn!(shard, err = %e, "cannot move the unfinished server's control socket in place");
        }
    }
    match std::fs::rename(dir.join(&files.next_pid), dir.join(&files.pid)) {
        Ok(()) => tracing::warn!(pid, shard, "found a shared server the previous spawner started but did not name in its pid file; taking it over"),
        Err(e) => tracing::warn!(pid, shard, err = %e, "cannot name the unfinished shared server in the pid file"),
    }
}

/// What a previous spawner's server gave back.
type TakenOver = (
    Running,
    u32,
    UnixDatagram,
    BTreeMap<String, (String, Vec<OwnedFd>)>,
);

/// The server of a previous spawner of this state dir, if its pid file names a live process
/// that is provably it, with every socket it serves.
async fn take_over(cfg: &Config, shard: usize) -> Result<Option<TakenOver>> {
    let files = ShardFiles::of(shard);
    settle_next(cfg, shard, &files).await;
    let Some((pid, info)) = proven_server(cfg, shard, &files.pid)? else {
        return Ok(None);
    };
    let Some(mut running) = crate::adopt::open_proven(pid, &info) else {
        return Ok(None);
    };
    let listed = async {
        let conn = connect(&cfg.state_dir.join(&files.control)).map_err(|e| Error::Io {
            op: "connect",
            path: cfg.state_dir.join(&files.control),
            source: e,
        })?;
        let taken = take_list(&conn, cfg.ready_timeout).await?;
        Ok::<_, Error>((conn, taken))
    };
    match listed.await {
        Ok((conn, taken)) => Ok(Some((running, pid, conn, taken))),
        Err(e) => {
            // Ours (proven, held by its pidfd) but not answering as a server must (its
            // control socket gone or replaced, a hostile or broken answer): left running, it
            // would keep every namespace's port-80 sockets, unmanaged, and the next server
            // could bind none of them. Stopped, so the namespaces bind afresh.
            let how = running.stop(cfg.stop_timeout).await;
            tracing::warn!(pid, shard, err = %e, how = %how, "the previous run's shared server could not be taken over; stopped");
            Err(e)
        }
    }
}

/// The identity rule for the server: the proxy binary, started as `--shared-server` of this
/// state dir, at the start time its pid file recorded.
fn is_our_server(
    info: &pidfile::ProcInfo,
    start: u64,
    cfg: &Config,
    shard: usize,
) -> std::result::Result<(), String> {
    if !pidfile::runs(info, &cfg.proxy_binary) {
        return Err("not the proxy binary".into());
    }
    let dir = cfg.state_dir.display().to_string();
    if !info
        .argv
        .windows(2)
        .any(|w| w[0] == "--shared-server" && w[1] == dir)
    {
        return Err("not the shared server of this state dir".into());
    }
    let its_shard = info
        .argv
        .windows(2)
        .find(|w| w[0] == "--shard")
        .map_or(Some(0), |w| w[1].parse::<usize>().ok());
    if its_shard != Some(shard) {
        return Err(format!("not shared server {shard} (--shard)"));
    }
    if info.start != Some(start) {
        return Err("started after the pid file was written (recycled pid)".into());
    }
    Ok(())
}

/// Keep the server running: (re)start it, hand it every entry, restart it when it dies;
/// until asked to stop it.
async fn manage(
    inner: Arc<Inner>,
    mut current: Option<Running>,
    mut replace: tokio::sync::mpsc::Receiver<oneshot::Sender<Result<u32>>>,
) {
    let cfg = Arc::clone(&inner.cfg);
    let mut stop = inner.stop.subscribe();
    let mut backoff = Backoff::new(cfg.max_restart_delay);
    let mut listener: Option<OwnedFd> = None;
    // A server that died, not reaped yet: reaped once the next one is started (below).
    let mut dead: Option<Running> = None;
    // The running server was started by this task (its heartbeat zeroed first), not taken
    // over from a previous spawner.
    let mut fresh = current.is_none();
    loop {
        let mut running = match current.take() {
            Some(r) => r,
            None => {
                let started = async {
                    // A taken-over server keeps the old listener; a new one gets a fresh one.
                    if listener.is_none() {
                        listener = Some(control_listener(&cfg.state_dir, &inner.files.control)?);
                    }
                    let l = listener
                        .as_ref()
                        .ok_or_else(|| Error::Spawn("no control socket".into()))?;
                    let mut control = inner.control.lock().await;
                    let (running, _) =
                        start_and_replay(&inner, l, &inner.files.control, &mut control).await?;
                    Ok::<_, Error>(running)
                };
                let started = started.await;
                // Reaping a server that held thousands of sockets takes milliseconds of
                // kernel time (its `/proc` entries are pruned): after the restart, not before.
                drop(dead.take());
                match started {
                    Ok(r) => {
                        lock(&inner.health).adopted = false;
                        fresh = true;
                        r
                    }
                    Err(e) => {
                        let delay = backoff.start_failed();
                        tracing::warn!(err = %e, retry_in = ?delay, "shared server start failed");
                        inner.note("backoff", Some(e.to_string()), true);
                        if !sleep_unless_stopped(delay, &mut stop).await {
                            return;
                        }
                        continue;
                    }
                }
            }
        };
        inner.note("running", None, false);
        let since = Instant::now();
        let (how, hung) = loop {
            // The running server's, again after a graceful replace.
            let pid = running.pid();
            tokio::select! {
            how = running.exited() => break (how, false),
            still = watch_server(&inner, pid, fresh) => {
                let pid = pid.unwrap_or_default();
                tracing::error!(pid, shard = inner.shard, still = ?still, "shared server hung: its heartbeat has not moved for longer than hang_timeout and it is not stopped; killing it; its namespaces' connections wait in the kernel for the next one");
                crate::hang::count(crate::hang::Hung::SharedServer);
                // Not waited for: a frozen task cannot die before it is thawed (cgroup v1);
                // reaped when it does (`Running`'s drop). The next server gets a control
                // socket of its own, so the hung one can never answer for it.
                running.signal(rustix::process::Signal::KILL);
                listener = None;
                break (format!("hung: heartbeat still for {} s; pid {pid} killed, being replaced", still.as_secs()), true);
            }
            Some(reply) = replace.recv() => {
                // Transactional: the new server gets a control socket of its own at
                // `files.next`; only once it has every socket is that renamed over
                // the control socket's path and the pid file made to name it (the old
                // server keeps its now unlinked socket until it exits). If anything fails
                // before, the new server is stopped and its path removed: the old one
                // keeps serving, its path and pid file untouched, so a restarted spawner
                // still takes it over.
                let replaced = async {
                    let mut control = inner.control.lock().await;
                    let next = &inner.files.next;
                    let fresh = control_listener(&cfg.state_dir, next)?;
                    let started = start_and_replay(&inner, &fresh, next, &mut control).await;
                    match started {
                        Ok(new) => {
                            listener = Some(fresh);
                            Ok(new)
                        }
                        Err(e) => {
                            let _ = std::fs::remove_file(cfg.state_dir.join(next));
                            Err(e)
                        }
                    }
                };
                match replaced.await {
                    Ok((new, pid)) => {
                        fresh = true;
                        // Started by this spawner now, not taken over.
                        lock(&inner.health).adopted = false;
                        let mut old = std::mem::replace(&mut running, new);
                        let grace = cfg.stop_timeout;
                        tokio::spawn(async move {
                            let how = old.stop(grace).await;
                            tracing::info!(how = %how, "previous shared server drained and stopped");
                        });
                        let _ = reply.send(Ok(pid));
                    }
                    Err(e) => {
                        tracing::warn!(err = %e, "shared server restart failed; the running one goes on");
                        let _ = reply.send(Err(e));
                    }
                }
            }
            _ = stopped(&mut stop) => {
                inner.up.send_replace(None);
                *inner.control.lock().await = None;
                let how = running.stop(cfg.stop_timeout).await;
                tracing::info!(how = %how, "shared server stopped");
                inner.note("stopped", None, false);
                let _ = std::fs::remove_file(cfg.state_dir.join(&inner.files.pid));
                let _ = std::fs::remove_file(cfg.state_dir.join(&inner.files.control));
                return;
            }
            }
        };
        dead = Some(running);
        *lock(&inner.running_args) = None;
        inner.up.send_replace(None);
        *inner.control.lock().await = None;
        let delay = backoff.died(since.elapsed());
        if !hung {
            tracing::warn!(how = %how, restart_in = ?delay, "shared server died; its sockets wait in the kernel for the next one");
        }
        let state = if hung { "hung" } else { "restarting" };
        inner.note(state, Some(format!("shared server {how}")), true);
        if !sleep_unless_stopped(delay, &mut stop).await {
            return;
        }
    }
}

/// Resolves when the running server `pid` hangs ([`crate::hang`]): how long its heartbeat (in
/// its slab's header) was still. Never without a pid, a slab or a timeout. `fresh`: started
/// by this spawner.
async fn watch_server(inner: &Inner, pid: Option<u32>, fresh: bool) -> Duration {
    let cfg = &inner.cfg;
    let period = crate::hang::period(cfg, crate::config::ProxyModel::Shared);
    let (Some(pid), true) = (pid, cfg.stats_blocks()) else {
        return std::future::pending().await;
    };
    let dir = cfg.stats_dir();
    if !fresh {
        // A server taken over beats at this spawner's pace from now on (not at all with 0).
        let ms = crate::hang::period_ms(cfg, crate::config::ProxyModel::Shared);
        crate::proxy_stats::arm_server_heartbeat(&dir, inner.shard, ms, false);
    }
    if period.is_zero() {
        return std::future::pending().await;
    }
    let what = format!("shared server {}", inner.shard);
    crate::hang::until_hung(cfg.hang_timeout, period, fresh, pid, &what, || {
        crate::proxy_stats::server_beat(&dir, inner.shard)
    })
    .await
}

impl Inner {
    /// The manager's view of the server, for `status`; `failed` counts a restart.
    fn note(&self, state: &'static str, error: Option<String>, failed: bool) {
        let mut h = lock(&self.health);
        h.state = state;
        if failed {
            h.restarts += 1;
        }
        if error.is_some() {
            h.last_error = error;
        }
    }
}

/// Start a server on the control socket `listener` (bound at `STATE_DIR/name`), hand it every
/// entry, and make it the one requests go to (`control` is the held control slot): it and its
/// pid. Then, and only then, the pid file names it, and a `name` other than
/// the shard's control socket is renamed over that path (the commit of a graceful replace); on an
/// error the new server is stopped and neither is touched.
async fn start_and_replay(
    inner: &Inner,
    listener: &OwnedFd,
    name: &str,
    control: &mut Option<UnixDatagram>,
) -> Result<(Running, u32)> {
    let cfg = &inner.cfg;
    let args = lock(&inner.args).clone();
    let (mut running, pid) = spawn_server(cfg, &args, listener).await?;
    write_next_pid_file(cfg, &inner.files, pid);
    let handed = async {
        let conn = connect(&cfg.state_dir.join(name))
            .map_err(|e| Error::Spawn(format!("connect to the shared server: {e}")))?;
        let slab = hand_slab(inner, &conn).await?;
        let mut all: Vec<(BatchItem, Arc<Vec<OwnedFd>>)> = lock(&inner.entries)
            .values()
            .map(|e| (e.item.clone(), Arc::clone(&e.fds)))
            .collect();
        if slab.is_none() {
            // Served uncounted rather than refused.
            for (item, _) in &mut all {
                if matches!(item.stats, StatsRef::Record(_)) {
                    item.stats = StatsRef::None;
                }
            }
        }
        waiting_first(&mut all);
        let served = replay(&all, &conn, cfg.ready_timeout).await?;
        let control_path = cfg.state_dir.join(&inner.files.control);
        if name != inner.files.control {
            std::fs::rename(cfg.state_dir.join(name), &control_path).map_err(|e| Error::Io {
                op: "rename the new control socket over",
                path: control_path.clone(),
                source: e,
            })?;
        }
        write_pid_file(cfg, &inner.files, pid);
        Ok::<_, Error>((conn, served, slab))
    };
    let begun = Instant::now();
    match handed.await {
        Ok((conn, served, slab)) => {
            *lock(&inner.slab_sent) = slab;
            *lock(&inner.running_args) = Some(args);
            *lock(&inner.failed_args) = None;
            *control = Some(conn);
            inner.up.send_replace(Some(pid));
            tracing::info!(pid, namespaces = served, replay = ?begun.elapsed(), "shared server ready");
            Ok((running, pid))
        }
        Err(e) => {
            running.stop(cfg.stop_timeout).await;
            let _ = std::fs::remove_file(cfg.state_dir.join(&inner.files.next_pid));
            Err(e)
        }
    }
}

/// Namespaces with a connection waiting in a listener's accept queue first (in their order
/// otherwise): after a server died, the VMs already waiting are answered before the idle
/// namespaces are set up (issue #20; one `poll(2)` over every listener, no wait).
fn waiting_first(all: &mut Vec<(BatchItem, Arc<Vec<OwnedFd>>)>) {
    use rustix::event::{poll, PollFd, PollFlags};
    let waiting: Vec<bool> = {
        let mut fds: Vec<PollFd<'_>> = all
            .iter()
            .flat_map(|(_, fds)| fds.iter().map(|fd| PollFd::new(fd, PollFlags::IN)))
            .collect();
        if poll(&mut fds, Some(&rustix::event::Timespec::default())).is_err() {
            return;
        }
        let mut ready = fds.iter().map(|p| p.revents().contains(PollFlags::IN));
        all.iter()
            .map(|(_, own)| {
                // Every listener's flag is consumed (`|`, not `||`), so the next entry starts
                // at its own.
                own.iter()
                    .fold(false, |any, _| ready.next().unwrap_or(false) | any)
            })
            .collect()
    };
    let first = waiting.iter().filter(|w| **w).count();
    if first == 0 {
        return;
    }
    tracing::debug!(
        waiting = first,
        "namespaces with connections waiting go first"
    );
    let (mut ordered, rest): (Vec<_>, Vec<_>) = std::mem::take(all)
        .into_iter()
        .zip(waiting)
        .partition(|(_, w)| *w);
    ordered.extend(rest);
    *all = ordered.into_iter().map(|(entry, _)| entry).collect();
}

/// A new server's first request, before the replay: the shard's statistics slab
/// (`stats-slab`), so the replay's `stats=@N` count into it, and the server beats in its
/// header (without `proxy_metrics` for that alone: no namespace gets a record). Its identity
/// once taken; `None` when proxies have no block ([`Config::stats_blocks`]) or when the slab
/// cannot be opened (the namespaces counted in it are then served uncounted).
async fn hand_slab(inner: &Inner, conn: &UnixDatagram) -> Result<Option<(u64, u64)>> {
    let cfg = &inner.cfg;
    if !cfg.stats_blocks() {
        return Ok(None);
    }
    // The new server beats when it takes the slab, before its namespaces are handed over,
    // so it is watched for hangs from its first look (crate::hang).
    let ms = crate::hang::period_ms(cfg, crate::config::ProxyModel::Shared);
    crate::proxy_stats::arm_server_heartbeat(&cfg.stats_dir(), inner.shard, ms, true);
    let (fd, id) = match crate::proxy_stats::slab_fd(&cfg.stats_dir(), inner.shard) {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(err = %e, shard = inner.shard, "no statistics slab for the new shared server: its namespaces are served uncounted");
            return Ok(None);
        }
    };
    match ask(conn, "stats-slab", &[fd.as_fd()], cfg.ready_timeout).await {
        Ok(a) if a == "ok" => Ok(Some(id)),
        Ok(a) => {
            tracing::warn!(answer = %a, "the shared server refused the statistics slab: its namespaces are served uncounted");
            Ok(None)
        }
        Err(e) => Err(Error::Spawn(format!(
            "handing the statistics slab over: {e}"
        ))),
    }
}

/// Resolves once a stop is asked (or the handle is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Sleep `delay` unless a stop is asked first: true to go on.
async fn sleep_unless_stopped(delay: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = stopped(stop) => false,
    }
}

/// Where a state dir's control socket is (for docs and `check`).
pub fn control_socket(state_dir: &Path) -> PathBuf {
    state_dir.join(CONTROL_SOCKET)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After a server died, namespaces whose listeners have a connection waiting are handed
    /// to the next one first; the others keep their order (and each keeps its listeners).
    #[test]
    fn namespaces_with_waiting_connections_go_first() {
        let entry = |i: usize, listeners: usize| {
            let fds: Vec<OwnedFd> = (0..listeners)
                .map(|_| OwnedFd::from(std::net::TcpListener::bind("127.0.0.1:0").expect("bind")))
                .collect();
            let item = BatchItem {
                resource: ns_contract::Resource::new(ns_contract::Kind::Router, format!("r-{i}"))
                    .expect("id"),
                netns: format!("qrouter-r-{i}"),
                listeners,
                stats: StatsRef::None,
            };
            (item, Arc::new(fds))
        };
        let mut all: Vec<_> = (0..5).map(|i| entry(i, 1 + i % 2)).collect();
        let addr = |i: usize, l: usize, all: &Vec<(BatchItem, Arc<Vec<OwnedFd>>)>| {
            let fd = all[i].1[l].try_clone().expect("dup");
            std::net::TcpListener::from(fd).local_addr().expect("addr")
        };
        // Connections waiting in namespace 3 (its second listener) and namespace 1.
        let _a = std::net::TcpStream::connect(addr(3, 1, &all)).expect("connect");
        let _b = std::net::TcpStream::connect(addr(1, 0, &all)).expect("connect");
        let before: Vec<(String, usize)> = all
            .iter()
            .map(|(i, f)| (i.netns.clone(), f.len()))
            .collect();
        waiting_first(&mut all);
        let order: Vec<&str> = all.iter().map(|(i, _)| i.netns.as_str()).collect();
        assert_eq!(
            order,
            [
                "qrouter-r-1",
                "qrouter-r-3",
                "qrouter-r-0",
                "qrouter-r-2",
                "qrouter-r-4"
            ]
        );
        for (item, fds) in &all {
            assert!(before.contains(&(item.netns.clone(), fds.len())));
        }
        // Nothing waiting: the order stays.
        let mut idle: Vec<_> = (0..3).map(|i| entry(i, 1)).collect();
        waiting_first(&mut idle);
        let order: Vec<&str> = idle.iter().map(|(i, _)| i.netns.as_str()).collect();
        assert_eq!(order, ["qrouter-r-0", "qrouter-r-1", "qrouter-r-2"]);
    }

    #[test]
    fn a_namespace_stays_on_its_shard() {
        // A fixed hash: these values are what every build computes (a restarted spawner
        // finds each namespace on the server that has it).
        assert_eq!(shard_of("r-1", 1), 0);
        assert_eq!(shard_of("", 4), shard_of("", 4));
        let keys: Vec<String> = (0..1000).map(|i| format!("router-{i}")).collect();
        let mut per = [0usize; 4];
        for k in &keys {
            per[shard_of(k, 4)] += 1;
        }
        assert!(per.iter().all(|&n| (180..=320).contains(&n)), "{per:?}");
        assert_eq!(shard_of("router-7", 4), shard_of("router-7", 4));
        assert_eq!(shard_of("a", 2), (0xaf63_dc4c_8601_ec8c_u64 % 2) as usize);
    }

    /// The older `remove KIND ID` (all a server of the previous release knows) unless the id
    /// is served in another namespace too (a metadata network beside its router).
    #[test]
    fn remove_names_the_namespace_only_when_the_id_is_served_twice() {
        let keys: Vec<String> = vec!["router r-1 qrouter-r-1".into(), "router r-10 x".into()];
        assert!(!shares_id(keys.iter(), "router r-1", "qrouter-r-1"));
        assert!(shares_id(keys.iter(), "router r-1", "qdhcp-n-1"));
        assert!(
            !shares_id(keys.iter(), "router r", "qdhcp-n-1"),
            "a prefix of an id"
        );
        assert_eq!(
            remove_msg("router r-1", "qdhcp-n-1", false),
            "remove router r-1"
        );
        assert_eq!(
            remove_msg("router r-1", "qdhcp-n-1", true),
            "remove router r-1 qdhcp-n-1"
        );
    }

    #[test]
    fn the_first_shard_keeps_a_single_servers_files() {
        assert_eq!(
            ShardFiles::of(0),
            ShardFiles {
                control: "shared.sock".into(),
                next: "shared.sock.next".into(),
                pid: "shared-server.pid".into(),
                next_pid: "shared-server.pid.next".into(),
            }
        );
        assert_eq!(ShardFiles::of(2).control, "shared-2.sock");
        assert_eq!(ShardFiles::of(2).pid, "shared-server-2.pid");
    }

    /// A server handing back one of the namespace's accepted connections as its listener
    /// (same namespace, same local address 169.254.169.254:80), or one listener twice for
    /// the two a namespace with IPv6 has: refused, as a listener in another namespace is;
    /// the namespace's real listener is taken.
    #[test]
    fn only_listening_sockets_in_the_namespace_are_taken_back() {
        if !ns_testkit::skip::require_root("only_listening_sockets_in_the_namespace_are_taken_back")
        {
            return;
        }
        let ns = ns_testkit::netns::metadata_netns("qrouter-back");
        let name = ns.name().to_owned();
        let (listener, accepted, _client) = ns
            .netns()
            .run(|| {
                let l = std::net::TcpListener::bind("169.254.169.254:80").expect("bind");
                let c = std::net::TcpStream::connect("169.254.169.254:80").expect("connect");
                let (a, _) = l.accept().expect("accept");
                (OwnedFd::from(l), OwnedFd::from(a), c)
            })
            .expect("in the namespace");
        let mut spec = ProxySpec {
            key: "r-1".into(),
            kind: ns_contract::Kind::Router,
            id: "r-1".into(),
            netns: name.clone(),
            interface: "lo".into(),
            ipv6: false,
        };
        let ino = Some(ns.netns().inode());
        let l = || listener.try_clone().expect("dup");
        let back = |spec: &ProxySpec, ino, netns: &str, fds| still_right(spec, ino, netns, fds);
        assert_eq!(back(&spec, ino, &name, vec![l()]).map(|v| v.len()), Some(1));
        let a = accepted.try_clone().expect("dup");
        assert!(
            back(&spec, ino, &name, vec![a]).is_none(),
            "a connection is no listener"
        );
        assert!(
            back(&spec, ino, &name, vec![l(), l()]).is_none(),
            "one listener twice"
        );
        assert!(
            back(&spec, Some(1), &name, vec![l()]).is_none(),
            "another namespace"
        );
        assert!(back(&spec, None, &name, vec![l()]).is_none());
        assert!(
            back(&spec, ino, "qrouter-other", vec![l()]).is_none(),
            "another name"
        );
        spec.ipv6 = true;
        assert!(
            back(&spec, ino, &name, vec![l()]).is_none(),
            "no IPv6 listener"
        );
        assert!(
            back(&spec, ino, &name, vec![l(), l()]).is_none(),
            "v4 twice, no IPv6"
        );
    }
}
