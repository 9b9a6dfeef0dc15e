//! The shared proxy model's server (`--shared-server STATE_DIR --control-fd N`): one process
//! serving the listening sockets of many namespaces, which the spawner opens inside each
//! namespace and hands over (issue #20).
//!
//! The spawner keeps its own copies of every socket, so a server that dies loses only the
//! requests in flight: connections waiting in the kernel's accept queues stay there until the
//! restarted server is handed the same sockets. Each namespace gets its own relay state
//! ([`Shared`]: id header, rate limiter, agent pool, `max_connections`), so one VM flooding its
//! router cannot take another router's share; a process-wide cap (`max_connections` times the
//! namespaces, bounded by the descriptor limit: [`global_cap`]) contains them all.
//!
//! ## The control protocol
//! `N` is a listening `AF_UNIX` `SOCK_SEQPACKET` socket the spawner created in its state
//! directory (0700, root's) and left to us; only uid 0 or our starting uid may talk on it
//! (`SO_PEERCRED`). One request per message, UTF-8 words separated by one space, listeners
//! attached with `SCM_RIGHTS` ([`ns_netns::send_fds`]); one answer per request:
//!
//! | request | answer |
//! |---|---|
//! | `add KIND ID NETNS` + 1..=[`ns_netns::MAX_FDS`] listeners | `ok`, or `error REASON` |
//! | `add KIND ID NETNS stats=1` + listeners + the namespace's statistics block last | as `add` |
//! | `stats-slab` + the statistics slab | `ok`, or `error REASON` |
//! | `add KIND ID NETNS stats=@RECORD` + listeners | as `add` |
//! | `add-batch COUNT` + COUNT lines `KIND ID NETNS LISTENERS [stats=1\|stats=@RECORD]` + their descriptors | `ok COUNT`, or `refused R of COUNT` and a line `KIND ID REASON` for each refused one, or `error REASON` |
//! | `remove KIND ID NETNS` | `ok` (stops accepting, lets its connections finish), or `error REASON` |
//! | `remove KIND ID` | the same for every namespace served as `KIND ID` (the older form) |
//! | `list` | one `have KIND ID NETNS` + its listeners per namespace, then `end COUNT` |
//!
//! `add-batch` is how a restarted server gets thousands of namespaces back in a few messages
//! (issue #20: kill -9 to answering again ≤ 50 ms at 2,000). Its lines are separated by `\n`;
//! each says how many listeners (1..=[`ns_netns::MAX_FDS`]) are its own, and the descriptors
//! come in line order (a line's listeners, then its statistics block with `stats=1`), at
//! most [`ns_netns::SCM_MAX_FD`] in all, the message at most [`MAX_BATCH_MESSAGE`] bytes. A
//! malformed batch (a bad line, a resource twice, descriptors that do not add up) is refused
//! whole (`error REASON`, every descriptor closed); a well-formed one is applied line by line,
//! each as `add` would, and the lines refused (no room, not a listening socket, a bad
//! statistics block) are named in the answer (reasons cut to [`MAX_REASON`] characters).
//!
//! `KIND` is `router`, `network` or `ovn-network` ([`Kind::as_str`]); `ID` follows the
//! contract's id rule; `NETNS` is the namespace's name (the spawner checks a socket's
//! namespace itself with `SIOCGSKNS` when it takes sockets back). A namespace is `KIND ID
//! NETNS`: two namespaces may be served with the same id (a metadata network is served with
//! its router's id, `enable_metadata_network`, beside the router's own namespace). `add` for
//! a namespace already served replaces its sockets (the old ones drain), unless they are the
//! same sockets, which is a no-op: a restarted spawner may hand everything over again.
//!
//! With `stats=1` the last descriptor is the namespace's statistics block
//! ([`ns_contract::proxy_stats`], validated as `--stats-fd` is: a regular file, its size, its
//! magic), and that namespace's answers are counted into it as one proxy's would be. The
//! open-connections gauge is zeroed when a namespace is first served by this process, not
//! when its sockets are replaced (the old connections still count down into it). `list` gives
//! listeners only: the spawner reopens the block from its own file.
//!
//! `stats-slab` hands over the spawner's slab of statistics records (one per server, issue
//! #20: a namespace's block is then a 512-byte record, not a page; validated as a file of
//! [`ns_contract::proxy_stats::SLAB_SIZE`] bytes with the slab's magic and capacity), before
//! the namespaces that count into it; a later one replaces it for the `add`s that follow.
//! `stats=@RECORD` counts the namespace into that record of it, with no descriptor: refused
//! unless a slab was handed over, the record is within it and in use (the block's magic).
//! An `add` of the same sockets is a no-op only if it counts into the same block too.
//!
//! [`Namespaces`] is the table itself, usable in-process (the proxy's behaviour tests serve
//! through it); the control connection is one caller of it.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ns_contract::{Kind, Resource};
use tokio::io::Interest;
use tokio::net::UnixDatagram;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::relayq::Company;
use crate::server;
use crate::state::Shared;
use crate::stats::{Slab, Stats};

/// Longest control message (a request or an answer) but an `add-batch` and its answer; a
/// longer one is refused.
pub const MAX_MESSAGE: usize = 1024;

/// Longest `add-batch` request or answer: room for [`ns_netns::SCM_MAX_FD`] namespaces' lines.
pub const MAX_BATCH_MESSAGE: usize = 64 * 1024;

/// Longest reason given for one refused line of an `add-batch`, in characters.
pub const MAX_REASON: usize = 120;

/// What `--shared-server` and `--control-fd` say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedServer {
    /// The spawner's state directory: names the server (its argv is its identity) and is
    /// where the spawner keeps its pid file and control socket.
    pub state_dir: PathBuf,
    /// The inherited listening control socket.
    pub control_fd: i32,
    /// `--shard N`: which of the spawner's servers (0 for the first, which has no flag).
    pub shard: u16,
}

/// One request on the control socket, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Add {
        resource: Resource,
        netns: String,
        /// Where its answers are counted.
        stats: StatsRef,
    },
    /// The statistics slab, the one descriptor.
    StatsSlab,
    /// Several namespaces, their descriptors in line order.
    AddBatch(Vec<BatchItem>),
    Remove {
        resource: Resource,
        /// The namespace; `None`: every one served as `resource`.
        netns: Option<String>,
    },
    List,
}

/// One line of an `add-batch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchItem {
    pub resource: Resource,
    pub netns: String,
    /// How many of the message's descriptors are this namespace's listeners.
    pub listeners: usize,
    /// Where its answers are counted (a block file follows its listeners).
    pub stats: StatsRef,
}

/// Where a namespace's answers are counted, as its `add` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StatsRef {
    /// Not counted.
    #[default]
    None,
    /// `stats=1`: into the block file that is its last descriptor.
    Block,
    /// `stats=@N`: into record N of the slab handed over with `stats-slab`.
    Record(u32),
}

impl StatsRef {
    /// The word as a request carries it (none for [`StatsRef::None`]).
    pub fn word(&self) -> Option<String> {
        match self {
            StatsRef::None => None,
            StatsRef::Block => Some("stats=1".to_owned()),
            StatsRef::Record(n) => Some(format!("stats=@{n}")),
        }
    }

    /// How many descriptors it takes.
    pub fn fds(&self) -> usize {
        usize::from(*self == StatsRef::Block)
    }

    /// `stats=1` or `stats=@N` (N in decimal digits); `None` for anything else.
    fn parse(word: &str) -> Option<StatsRef> {
        if word == "stats=1" {
            return Some(StatsRef::Block);
        }
        let n = word.strip_prefix("stats=@")?;
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        n.parse().ok().map(StatsRef::Record)
    }
}

impl BatchItem {
    /// How many descriptors this line takes.
    pub fn fds(&self) -> usize {
        self.listeners + self.stats.fds()
    }

    /// The line as `add-batch` carries it.
    pub fn line(&self) -> String {
        let mut l = format!(
            "{} {} {} {}",
            self.resource.kind().as_str(),
            self.resource.id(),
            self.netns,
            self.listeners,
        );
        if let Some(w) = self.stats.word() {
            l.push(' ');
            l.push_str(&w);
        }
        l
    }
}

/// An `add-batch` message's text for `items` (lines in order).
pub fn batch_message(items: &[BatchItem]) -> String {
    let mut m = format!("add-batch {}", items.len());
    for i in items {
        m.push('\n');
        m.push_str(&i.line());
    }
    m
}

impl Request {
    /// Parse one message's text: exact words, nothing left over.
    pub fn parse(msg: &[u8]) -> std::result::Result<Request, String> {
        let text = std::str::from_utf8(msg).map_err(|_| "not UTF-8".to_owned())?;
        if let Some(rest) = text.strip_prefix("add-batch ") {
            return parse_batch(rest).map(Request::AddBatch);
        }
        let words: Vec<&str> = text.split(' ').collect();
        let expected = || {
            format!(
                "expected `add KIND ID NETNS [stats=1|stats=@RECORD]`, `add-batch COUNT`, \
                 `stats-slab`, `remove KIND ID [NETNS]` or `list`, got {:?}",
                text.chars().take(80).collect::<String>()
            )
        };
        let add = |kind: &str, id: &str, netns: &str, stats: StatsRef| {
            ns_contract::validate_netns(netns).map_err(|e| e.to_string())?;
            Ok(Request::Add {
                resource: resource(kind, id)?,
                netns: netns.to_owned(),
                stats,
            })
        };
        match words.as_slice() {
            ["add", kind, id, netns] => add(kind, id, netns, StatsRef::None),
            ["add", kind, id, netns, word] => match StatsRef::parse(word) {
                Some(stats) => add(kind, id, netns, stats),
                None => Err(expected()),
            },
            ["stats-slab"] => Ok(Request::StatsSlab),
            ["remove", kind, id] => Ok(Request::Remove {
                resource: resource(kind, id)?,
                netns: None,
            }),
            ["remove", kind, id, netns] => {
                ns_contract::validate_netns(netns).map_err(|e| e.to_string())?;
                Ok(Request::Remove {
                    resource: resource(kind, id)?,
                    netns: Some((*netns).to_owned()),
                })
            }
            ["list"] => Ok(Request::List),
            _ => Err(expected()),
        }
    }
}

/// A protocol line's `KIND ID`, checked: a known kind and an id that follows the id rule.
pub fn resource(kind: &str, id: &str) -> std::result::Result<Resource, String> {
    let kind = Kind::ALL
        .into_iter()
        .find(|k| k.as_str() == kind)
        .ok_or_else(|| format!("unknown kind {kind:?}"))?;
    Resource::new(kind, id).map_err(|e| e.to_string())
}

/// An `add-batch` after its first word: `COUNT`, then COUNT lines, each resource once, at
/// most [`ns_netns::SCM_MAX_FD`] descriptors in all.
fn parse_batch(rest: &str) -> std::result::Result<Vec<BatchItem>, String> {
    let mut lines = rest.split('\n');
    let count = lines.next().unwrap_or_default();
    let count: usize = count
        .parse()
        .ok()
        .filter(|c| (1..=ns_netns::SCM_MAX_FD).contains(c))
        .ok_or_else(|| {
            format!(
                "add-batch: count {count:?} is not 1..={}",
                ns_netns::SCM_MAX_FD
            )
        })?;
    let mut items: Vec<BatchItem> = Vec::with_capacity(count);
    let mut seen = std::collections::HashSet::with_capacity(count);
    let mut fds = 0usize;
    for (n, line) in lines.enumerate() {
        let bad = |why: String| format!("add-batch line {}: {why}", n + 1);
        let words: Vec<&str> = line.split(' ').collect();
        let (words, stats) = match words.split_last() {
            Some((last, rest)) if rest.len() == 4 => (rest, StatsRef::parse(last)),
            _ => (&words[..], Some(StatsRef::None)),
        };
        let ([kind, id, netns, listeners], Some(stats)) = (words, stats) else {
            return Err(bad(format!(
                "expected `KIND ID NETNS LISTENERS [stats=1|stats=@RECORD]`, got {:?}",
                line.chars().take(80).collect::<String>()
            )));
        };
        let resource = resource(kind, id).map_err(bad)?;
        ns_contract::validate_netns(netns).map_err(|e| bad(e.to_string()))?;
        let listeners: usize = listeners
            .parse()
            .ok()
            .filter(|l| (1..=ns_netns::MAX_FDS).contains(l))
            .ok_or_else(|| {
                bad(format!(
                    "listeners {listeners:?} is not 1..={}",
                    ns_netns::MAX_FDS
                ))
            })?;
        if !seen.insert((resource.clone(), *netns)) {
            return Err(bad(format!("{resource} in {netns} twice")));
        }
        let item = BatchItem {
            resource,
            netns: (*netns).to_owned(),
            listeners,
            stats,
        };
        fds += item.fds();
        items.push(item);
    }
    if items.len() != count {
        return Err(format!(
            "add-batch: {} lines, the count says {count}",
            items.len()
        ));
    }
    if fds > ns_netns::SCM_MAX_FD {
        return Err(format!(
            "add-batch: {fds} descriptors, at most {}",
            ns_netns::SCM_MAX_FD
        ));
    }
    Ok(items)
}

/// A namespace being served.
struct Served {
    netns: String,
    /// Our copies of its listeners, for `list` and to recognise a repeated `add`.
    listeners: Vec<OwnedFd>,
    /// The block it counts into ([`Stats::identity`]), to recognise a repeated `add`.
    stats: Option<(u64, u64, usize)>,
    /// Its relay state (and statistics block); also read by the one housekeeping task of all
    /// namespaces.
    shared: Arc<Shared>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Every namespace served, by resource and namespace name.
#[derive(Default)]
struct Table {
    served: HashMap<(Resource, String), Served>,
    /// Descriptors the served namespaces hold: each listener twice (served, and our copy for
    /// `list`). Kept as a count, so an `add` costs the same at the 2,000th namespace as at the
    /// first (summing over the table made a replay O(N²)).
    held: u64,
}

/// The namespaces one process serves, each with its own relay state, under one global
/// connection cap: what the control socket's `add`/`remove` drive, and what the proxy's
/// behaviour tests serve through in-process.
pub struct Namespaces {
    base: Config,
    table: Mutex<Table>,
    global: Arc<Semaphore>,
    /// How many permits `global` has been given so far (it only grows).
    global_size: Mutex<usize>,
    global_max: usize,
    /// The descriptor limit: a namespace whose sockets would not fit is refused.
    nofile: u64,
    /// How long a stopped namespace's connections may take to finish.
    grace: std::time::Duration,
    /// The statistics slab handed over last (`stats-slab`).
    slab: Mutex<Option<Slab>>,
    /// Which namespaces asked the agent lately: in company a namespace gets a share of its
    /// relay queue's slots by the agent's speed (`relayq`).
    company: Arc<Company>,
}

impl Namespaces {
    /// An empty table: every namespace gets `base`'s options (its resource set per
    /// namespace); `nofile` is the descriptor limit the sockets must fit in.
    pub fn new(base: Config, nofile: u64) -> Namespaces {
        Namespaces {
            base,
            table: Mutex::new(Table::default()),
            global: Arc::new(Semaphore::new(0)),
            global_size: Mutex::new(0),
            global_max: global_cap(nofile),
            nofile,
            grace: server::GRACE,
            slab: Mutex::new(None),
            company: Company::new(),
        }
    }

    /// Count the namespaces added from now on with `stats=@N` into `slab`'s records.
    pub fn set_slab(&self, slab: Slab) {
        *self.slab.lock().unwrap_or_else(|p| p.into_inner()) = Some(slab);
    }

    /// Record `n` of the slab, if one was handed over and `n` is a record in use.
    pub fn record(&self, n: u32) -> std::result::Result<Stats, String> {
        match &*self.slab.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(slab) => slab.record(u64::from(n)),
            None => Err("no statistics slab was handed over (stats-slab)".to_owned()),
        }
    }

    /// The same, with another drain grace than [`server::GRACE`].
    pub fn with_grace(mut self, grace: std::time::Duration) -> Namespaces {
        self.grace = grace;
        self
    }

    /// How many namespaces are served.
    pub fn len(&self) -> usize {
        self.table().served.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start the one housekeeping task of every namespace served here (agent pool pruning,
    /// memory given back when the whole table is idle; not one timer per namespace), on this
    /// runtime thread. It runs until the returned sender sends `true` or is dropped.
    pub fn housekeeping(self: &Arc<Self>) -> tokio::sync::watch::Sender<bool> {
        let (stop, rx) = tokio::sync::watch::channel(false);
        let tended = Arc::clone(self);
        tokio::spawn(server::housekeeping_all(move || tended.states(), rx));
        stop
    }

    /// Every namespace's relay state, for [`server::housekeeping_all`].
    pub fn states(&self) -> Vec<Arc<Shared>> {
        self.table()
            .served
            .values()
            .map(|s| s.shared.clone())
            .collect()
    }

    /// Grow the global cap to `namespaces` × `max_connections`, at most `global_max`: one
    /// namespace's flood (held to its own `max_connections`) can then not take the permits
    /// another namespace needs, unless the descriptor limit binds first. (It grew by 64 per
    /// namespace before: with two namespaces a flood of 128 connections starved the other.)
    fn size_global(&self, namespaces: usize) {
        let want = namespaces
            .saturating_mul(self.base.max_connections.max(1))
            .min(self.global_max);
        let mut size = self.global_size.lock().unwrap_or_else(|p| p.into_inner());
        if want > *size {
            self.global.add_permits(want - *size);
            *size = want;
        }
    }

    /// Serve `resource`'s listeners `fds` (listening TCP sockets), counting into `stats`;
    /// the namespace's relay state once served. The same sockets again are a no-op (the
    /// state already serving them is returned); other sockets replace the old ones, which
    /// drain.
    pub fn add(
        &self,
        resource: Resource,
        netns: String,
        fds: Vec<OwnedFd>,
        stats: Stats,
    ) -> std::result::Result<Arc<Shared>, String> {
        if fds.is_empty() {
            return Err("add needs at least one listener".into());
        }
        let mut listeners = Vec::with_capacity(fds.len());
        for fd in fds {
            let l = std::net::TcpListener::from(fd);
            listening_tcp(&l)?;
            listeners.push(l);
        }
        let mut table = self.table();
        let key = (resource.clone(), netns.clone());
        if let Some(old) = table.served.get(&key) {
            // Only a repeated `add` compares sockets: a fresh server's replay of thousands
            // of namespaces skips the fstats (issue #20: kill -9 to answering again).
            // The same sockets counting into another block (a namespace moved from its
            // block file into the slab) are served again, counting there.
            let new = identity(listeners.iter().map(AsFd::as_fd))?;
            if old.stats == stats.identity()
                && identity(old.listeners.iter().map(AsFd::as_fd))? == new
            {
                return Ok(old.shared.clone());
            }
        }
        // Each listener is held twice here (served, and our copy for `list`); a replaced
        // namespace's old sockets are still held until they drain.
        let need = table.held + 2 * listeners.len() as u64 + RESERVED_FDS;
        if need > self.nofile {
            return Err(format!(
                "no room for the sockets of another namespace: {} namespaces served, \
                 RLIMIT_NOFILE is {} (raise LimitNOFILE= or the hard limit)",
                table.served.len(),
                self.nofile
            ));
        }
        let mut copies = Vec::with_capacity(listeners.len());
        let mut serving = Vec::with_capacity(listeners.len());
        for l in listeners {
            copies.push(OwnedFd::from(
                l.try_clone().map_err(|e| format!("dup listener: {e}"))?,
            ));
            l.set_nonblocking(true)
                .map_err(|e| format!("listener non-blocking: {e}"))?;
            serving.push(l);
        }
        if !table.served.contains_key(&key) {
            stats.reset_open_connections();
        }
        let stats_id = stats.identity();
        // The namespace's state from the one configuration (no copy of it per namespace: the
        // replay of thousands after a kill -9 is on the clock).
        let shared = Arc::new(Shared::in_company(
            &self.base,
            &resource,
            stats,
            &self.company,
        ));
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let per_ns = self.base.max_connections;
        let global = self.global.clone();
        let task = tokio::spawn(server::serve_capped(
            shared.clone(),
            serving,
            per_ns,
            Some(global),
            async move {
                let _ = stop_rx.await;
            },
            self.grace,
        ));
        table.held += 2 * copies.len() as u64;
        let replaced = table.served.insert(
            key,
            Served {
                netns: netns.clone(),
                listeners: copies,
                stats: stats_id,
                shared: shared.clone(),
                stop: stop_tx,
                task,
            },
        );
        if let Some(old) = &replaced {
            table.held = table.held.saturating_sub(2 * old.listeners.len() as u64);
        }
        let count = table.served.len();
        drop(table);
        self.size_global(count);
        // One line per request is the caller's (a batch of hundreds logs once).
        match replaced {
            Some(old) => {
                tracing::debug!(%resource, %netns, "namespace's sockets replaced");
                let _ = old.stop.send(());
            }
            None => tracing::debug!(%resource, %netns, namespaces = count, "serving namespace"),
        }
        Ok(shared)
    }

    /// Stop serving `resource` in namespace `netns` (`None`: in every namespace it is served
    /// in): it stops accepting, its connections finish (up to the grace), our copies of its
    /// sockets close now.
    pub fn remove_in(
        &self,
        resource: &Resource,
        netns: Option<&str>,
    ) -> std::result::Result<(), String> {
        let gone: Vec<Served> = {
            let mut table = self.table();
            // By its key when the namespace is named; the older form looks at every one.
            let keys: Vec<(Resource, String)> = match netns {
                Some(n) => vec![(resource.clone(), n.to_owned())],
                None => table
                    .served
                    .keys()
                    .filter(|(r, _)| r == resource)
                    .cloned()
                    .collect(),
            };
            let gone: Vec<Served> = keys.iter().filter_map(|k| table.served.remove(k)).collect();
            for old in &gone {
                table.held = table.held.saturating_sub(2 * old.listeners.len() as u64);
            }
            gone
        };
        if gone.is_empty() {
            return Err(match netns {
                Some(n) => format!("{resource} is not served in {n}"),
                None => format!("{resource} is not served"),
            });
        }
        for old in gone {
            tracing::info!(%resource, netns = %old.netns, "namespace removed; its connections finish");
            // The task stops accepting and drains; our copies of its sockets close now.
            let _ = old.stop.send(());
            drop(old.listeners);
            drop(old.task);
        }
        Ok(())
    }

    /// [`Namespaces::remove_in`] every namespace served as `resource`.
    pub fn remove(&self, resource: &Resource) -> std::result::Result<(), String> {
        self.remove_in(resource, None)
    }

    /// Stop every namespace and wait for their connections (up to the grace each).
    pub async fn shutdown(&self) {
        let all: Vec<Served> = {
            let mut table = self.table();
            table.held = 0;
            table.served.drain().map(|(_, s)| s).collect()
        };
        let mut tasks = Vec::with_capacity(all.len());
        for s in all {
            let _ = s.stop.send(());
            tasks.push(s.task);
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// Whether `l` is a TCP socket in the listening state: listening (only stream sockets
/// listen) with an IPv4 or IPv6 address. Two system calls: a replay of thousands of
/// namespaces makes them for each (issue #20).
fn listening_tcp(l: &std::net::TcpListener) -> std::result::Result<(), String> {
    use nix::sys::socket::{getsockopt, sockopt};
    let listening = getsockopt(l, sockopt::AcceptConn).map_err(|e| format!("not a socket: {e}"))?;
    if !listening {
        return Err("a listener must be a listening TCP socket".into());
    }
    l.local_addr()
        .map_err(|e| format!("not a TCP socket: {e}"))?;
    Ok(())
}

/// The sockets `fds` are, as the sorted (device, inode) of their socket inodes: the same set
/// means the same sockets.
fn identity<'a>(
    fds: impl Iterator<Item = std::os::fd::BorrowedFd<'a>>,
) -> std::result::Result<Vec<(u64, u64)>, String> {
    let mut ids = fds
        .map(|fd| {
            nix::sys::stat::fstat(fd)
                .map(|st| (st.st_dev, st.st_ino))
                .map_err(|e| format!("fstat: {e}"))
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    ids.sort_unstable();
    Ok(ids)
}

/// Take the inherited control socket: a listening `SOCK_SEQPACKET` Unix socket.
pub fn take_control(fd: i32) -> Result<OwnedFd> {
    use nix::sys::socket::{getsockname, getsockopt, sockopt, SockType, UnixAddr};
    let bad = |why: String| Error::Config(format!("--control-fd {fd}: {why}"));
    let owned = ns_netns::take_inherited(fd).map_err(|e| bad(e.to_string()))?;
    let ty =
        getsockopt(&owned, sockopt::SockType).map_err(|e| bad(format!("not a socket ({e})")))?;
    let listening = getsockopt(&owned, sockopt::AcceptConn).map_err(|e| bad(e.to_string()))?;
    let unix = getsockname::<UnixAddr>(owned.as_raw_fd()).is_ok();
    if ty != SockType::SeqPacket || !listening || !unix {
        return Err(bad(
            "not a listening AF_UNIX SOCK_SEQPACKET socket (the spawner's control socket)".into(),
        ));
    }
    nix::fcntl::fcntl(
        &owned,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .map_err(|e| bad(format!("non-blocking: {e}")))?;
    Ok(owned)
}

/// Serve every namespace handed over on `control` until `shutdown` resolves, then stop
/// accepting everywhere and let connections finish (up to the grace).
pub async fn serve(
    base: Config,
    control: OwnedFd,
    starting_uid: u32,
    nofile: u64,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let control = std::os::unix::net::UnixListener::from(control);
    let control = tokio::net::UnixListener::from_std(control).map_err(|source| Error::Io {
        op: "control socket",
        source,
    })?;
    let server = Arc::new(Namespaces::new(base, nofile));
    let tend_stop = server.housekeeping();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            r = control.accept() => match r.and_then(|(c, _)| seqpacket(c)) {
                Ok(conn) => {
                    let server = server.clone();
                    tokio::spawn(async move { control_connection(server, starting_uid, conn).await });
                }
                Err(e) => {
                    tracing::warn!(err = %e, "control socket: accept failed");
                    // EMFILE and friends repeat at once: do not spin.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
        }
    }
    let _ = tend_stop.send(true);
    server.shutdown().await;
    Ok(())
}

/// Room kept in the descriptor table for everything but listeners and connections.
const RESERVED_FDS: u64 = 256;

/// The process-wide connection cap the descriptor limit allows: each connection holds a
/// client and an agent socket.
pub fn global_cap(nofile: u64) -> usize {
    usize::try_from(nofile.saturating_sub(RESERVED_FDS) / 2)
        .unwrap_or(usize::MAX)
        .max(1)
}

/// An accepted control connection as what it is: message-oriented (`SOCK_SEQPACKET`), so a
/// datagram socket's calls fit it (one message per receive, never merged).
fn seqpacket(c: tokio::net::UnixStream) -> io::Result<UnixDatagram> {
    let fd = OwnedFd::from(c.into_std()?);
    let d = std::os::unix::net::UnixDatagram::from(fd);
    d.set_nonblocking(true)?;
    UnixDatagram::from_std(d)
}

/// One control connection: requests in order, one answer each, until the peer closes.
async fn control_connection(server: Arc<Namespaces>, starting_uid: u32, conn: UnixDatagram) {
    use nix::sys::socket::{getsockopt, sockopt};
    match getsockopt(&conn, sockopt::PeerCredentials) {
        Ok(c) if c.uid() == 0 || c.uid() == starting_uid => {}
        Ok(c) => {
            tracing::warn!(
                uid = c.uid(),
                pid = c.pid(),
                "control socket: refused a peer that is neither root nor our starting user"
            );
            return;
        }
        Err(e) => {
            tracing::warn!(err = %e, "control socket: no peer credentials; closed");
            return;
        }
    }
    let mut buf = vec![0u8; MAX_BATCH_MESSAGE];
    loop {
        let (n, fds) = match recv(&conn, &mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(err = %e, "control connection: bad message; closed");
                return;
            }
        };
        if n == 0 {
            return; // the spawner went away; we keep serving
        }
        let request = Request::parse(&buf[..n]);
        let batch = matches!(request, Ok(Request::AddBatch(_)));
        let answer = match request {
            Err(e) => format!("error {e}"),
            Ok(Request::Add { .. })
            | Ok(Request::Remove { .. })
            | Ok(Request::List)
            | Ok(Request::StatsSlab)
                if n > MAX_MESSAGE =>
            {
                format!("error a request other than add-batch has at most {MAX_MESSAGE} bytes")
            }
            Ok(Request::Add {
                resource,
                netns,
                stats,
            }) => match add(&server, resource.clone(), netns.clone(), fds, stats) {
                Ok(()) => {
                    tracing::info!(%resource, %netns, namespaces = server.len(), "serving namespace");
                    "ok".to_owned()
                }
                Err(e) => format!("error {e}"),
            },
            Ok(Request::AddBatch(items)) => add_batch(&server, items, fds),
            Ok(Request::StatsSlab) => match stats_slab(&server, fds) {
                Ok(()) => "ok".to_owned(),
                Err(e) => format!("error {e}"),
            },
            Ok(Request::Remove { resource, netns }) if fds.is_empty() => {
                match server.remove_in(&resource, netns.as_deref()) {
                    Ok(()) => "ok".to_owned(),
                    Err(e) => format!("error {e}"),
                }
            }
            Ok(Request::Remove { .. }) => "error remove takes no descriptors".to_owned(),
            Ok(Request::List) => match list(&server, &conn).await {
                Ok(count) => format!("end {count}"),
                Err(e) => {
                    tracing::warn!(err = %e, "control connection: list failed; closed");
                    return;
                }
            },
        };
        if let Err(e) = send(&conn, answer.as_bytes(), &[]).await {
            tracing::warn!(err = %e, "control connection: cannot answer; closed");
            return;
        }
        if batch {
            // The namespaces just added start accepting before the next batch is read: the
            // spawner sends those with connections waiting first (issue #20), and the next
            // batches are already queued on this socket, so without a yield none of them
            // would accept until the whole replay was read.
            tokio::task::yield_now().await;
        }
    }
}

/// `stats-slab`: its one descriptor is the slab the following `stats=@N` count into.
fn stats_slab(server: &Namespaces, fds: Vec<OwnedFd>) -> std::result::Result<(), String> {
    let [fd] = <[OwnedFd; 1]>::try_from(fds)
        .map_err(|fds| format!("stats-slab takes one descriptor, got {}", fds.len()))?;
    let slab = Slab::from_file(&std::fs::File::from(fd))
        .map_err(|why| format!("statistics slab: {why}"))?;
    // The server's heartbeat, on the serving runtime (this is its control task).
    if let (Ok(rt), Some(beat)) = (
        tokio::runtime::Handle::try_current(),
        slab.heartbeat().start(None),
    ) {
        rt.spawn(beat);
    }
    server.set_slab(slab);
    // Once per server start (and never again while it serves: the spawner's rule).
    tracing::info!("statistics slab handed over");
    Ok(())
}

/// `add` as the control socket says it: with `stats=1`, the last descriptor is the block.
fn add(
    server: &Namespaces,
    resource: Resource,
    netns: String,
    mut fds: Vec<OwnedFd>,
    stats: StatsRef,
) -> std::result::Result<(), String> {
    if fds.len() > ns_netns::MAX_FDS + stats.fds() {
        return Err(format!(
            "{} descriptors, a namespace has at most {} listeners",
            fds.len(),
            ns_netns::MAX_FDS
        ));
    }
    let stats = match stats {
        StatsRef::None => Stats::default(),
        StatsRef::Block => {
            if fds.len() < 2 {
                return Err("add stats=1 needs the listeners and then the statistics block".into());
            }
            let block = fds.pop().map(std::fs::File::from);
            match block.as_ref().map(Stats::from_file) {
                Some(Ok(s)) => s,
                Some(Err(why)) => return Err(format!("statistics block of {resource}: {why}")),
                None => Stats::default(),
            }
        }
        StatsRef::Record(n) => server
            .record(n)
            .map_err(|why| format!("statistics of {resource}: {why}"))?,
    };
    server.add(resource, netns, fds, stats).map(drop)
}

/// `add-batch`: each line as `add` would, in order; the answer names the lines refused. A
/// batch whose descriptors do not add up is refused whole (they all close).
fn add_batch(server: &Namespaces, items: Vec<BatchItem>, fds: Vec<OwnedFd>) -> String {
    let want: usize = items.iter().map(BatchItem::fds).sum();
    if fds.len() != want {
        return format!(
            "error add-batch: {} descriptors attached, its lines name {want}",
            fds.len()
        );
    }
    let count = items.len();
    let mut fds = fds.into_iter();
    let mut refused = Vec::new();
    for item in items {
        let mine: Vec<OwnedFd> = fds.by_ref().take(item.fds()).collect();
        if let Err(why) = add(
            server,
            item.resource.clone(),
            item.netns.clone(),
            mine,
            item.stats,
        ) {
            tracing::warn!(resource = %item.resource, netns = %item.netns, err = %why, "add-batch: namespace refused");
            refused.push(format!(
                "{} {} {}",
                item.resource.kind().as_str(),
                item.resource.id(),
                why.chars().take(MAX_REASON).collect::<String>()
            ));
        }
    }
    tracing::debug!(
        batch = count,
        refused = refused.len(),
        namespaces = server.len(),
        "add-batch"
    );
    if refused.is_empty() {
        return format!("ok {count}");
    }
    let mut answer = format!("refused {} of {count}", refused.len());
    for line in refused {
        // Every line fits (SCM_MAX_FD lines of at most ~200 bytes); never send a longer one.
        if answer.len() + 1 + line.len() > MAX_BATCH_MESSAGE {
            break;
        }
        answer.push('\n');
        answer.push_str(&line);
    }
    answer
}

/// `list`: one `have` message with its listeners per namespace; returns how many.
async fn list(server: &Namespaces, conn: &UnixDatagram) -> io::Result<usize> {
    // Copies taken under the lock, sent without it.
    let mut all: Vec<(String, Vec<OwnedFd>)> = Vec::new();
    for ((resource, _), s) in &server.table().served {
        let fds = s
            .listeners
            .iter()
            .map(|fd| fd.try_clone())
            .collect::<io::Result<Vec<_>>>()?;
        all.push((
            format!(
                "have {} {} {}",
                resource.kind().as_str(),
                resource.id(),
                s.netns
            ),
            fds,
        ));
    }
    for (line, fds) in &all {
        let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
        send(conn, line.as_bytes(), &borrowed).await?;
    }
    Ok(all.len())
}

async fn recv(conn: &UnixDatagram, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    conn.async_io(Interest::READABLE, || {
        ns_netns::recv_fds_upto(conn.as_fd(), buf, ns_netns::SCM_MAX_FD)
    })
    .await
}

async fn send(
    conn: &UnixDatagram,
    msg: &[u8],
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> io::Result<()> {
    conn.async_io(Interest::WRITABLE, || {
        ns_netns::send_fds(conn.as_fd(), msg, fds)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(id: &str) -> Resource {
        Resource::new(Kind::Router, id).expect("id")
    }

    #[test]
    fn requests_parse_exactly() {
        assert_eq!(
            Request::parse(b"add router r-1 qrouter-r-1"),
            Ok(Request::Add {
                resource: router("r-1"),
                netns: "qrouter-r-1".into(),
                stats: StatsRef::None,
            })
        );
        assert_eq!(
            Request::parse(b"add router r-1 qrouter-r-1 stats=1"),
            Ok(Request::Add {
                resource: router("r-1"),
                netns: "qrouter-r-1".into(),
                stats: StatsRef::Block,
            })
        );
        assert_eq!(
            Request::parse(b"add router r-1 qrouter-r-1 stats=@17"),
            Ok(Request::Add {
                resource: router("r-1"),
                netns: "qrouter-r-1".into(),
                stats: StatsRef::Record(17),
            })
        );
        assert_eq!(Request::parse(b"stats-slab"), Ok(Request::StatsSlab));
        assert_eq!(
            Request::parse(b"remove ovn-network n-1"),
            Ok(Request::Remove {
                resource: Resource::new(Kind::OvnNetwork, "n-1").expect("id"),
                netns: None,
            })
        );
        assert_eq!(
            Request::parse(b"remove router r-1 qdhcp-n-1"),
            Ok(Request::Remove {
                resource: router("r-1"),
                netns: Some("qdhcp-n-1".into()),
            })
        );
        assert_eq!(Request::parse(b"list"), Ok(Request::List));
    }

    #[test]
    fn bad_requests_say_why() {
        for (msg, why) in [
            (&b"add router r-1"[..], "expected"),
            (b"add router r-1 qrouter-r-1 extra", "expected"),
            (b"add router r-1 qrouter-r-1 stats=0", "expected"),
            (b"add router r-1 qrouter-r-1 stats=@", "expected"),
            (b"add router r-1 qrouter-r-1 stats=@-1", "expected"),
            (b"add router r-1 qrouter-r-1 stats=@+1", "expected"),
            (b"add router r-1 qrouter-r-1 stats=@4294967296", "expected"),
            (b"add router r-1 qrouter-r-1 stats=1 stats=@1", "expected"),
            (b"stats-slab 1", "expected"),
            (b"add  router r-1 ns", "expected"),
            (b"add vpc r-1 ns", "unknown kind"),
            (b"add router r/1 ns", "r/1"),
            (b"add router r-1 ../x", ".."),
            (b"remove router", "expected"),
            (b"list ", "expected"),
            (b"\xff", "UTF-8"),
            (b"", "expected"),
        ] {
            let e = Request::parse(msg).expect_err("bad");
            assert!(e.contains(why), "{msg:?}: {e}");
        }
    }

    #[test]
    fn batches_parse_exactly_and_round_trip() {
        let items = vec![
            BatchItem {
                resource: router("r-1"),
                netns: "qrouter-r-1".into(),
                listeners: 2,
                stats: StatsRef::Block,
            },
            BatchItem {
                resource: Resource::new(Kind::Network, "n-1").expect("id"),
                netns: "qdhcp-n-1".into(),
                listeners: 1,
                stats: StatsRef::None,
            },
            BatchItem {
                resource: Resource::new(Kind::OvnNetwork, "n-2").expect("id"),
                netns: "ovnmeta-n-2".into(),
                listeners: 1,
                stats: StatsRef::Record(16_383),
            },
        ];
        let msg = batch_message(&items);
        assert_eq!(
            msg,
            "add-batch 3\nrouter r-1 qrouter-r-1 2 stats=1\nnetwork n-1 qdhcp-n-1 1\n\
             ovn-network n-2 ovnmeta-n-2 1 stats=@16383"
        );
        assert_eq!(items.iter().map(BatchItem::fds).sum::<usize>(), 5);
        assert_eq!(Request::parse(msg.as_bytes()), Ok(Request::AddBatch(items)));
    }

    #[test]
    fn bad_batches_say_why() {
        let many = (0..254)
            .map(|i| format!("\nrouter r-{i} qrouter-r-{i} 1"))
            .collect::<String>();
        let fds_over = (0..130)
            .map(|i| format!("\nrouter r-{i} qrouter-r-{i} 1 stats=1"))
            .collect::<String>();
        for (msg, why) in [
            ("add-batch 0".to_owned(), "count \"0\""),
            ("add-batch x\nrouter r-1 ns 1".into(), "count \"x\""),
            (
                "add-batch 2\nrouter r-1 ns 1".into(),
                "1 lines, the count says 2",
            ),
            ("add-batch 1\nrouter r-1 ns 1\n".into(), "line 2: expected"),
            ("add-batch 1\nrouter r-1 ns".into(), "line 1: expected"),
            ("add-batch 1\nrouter r-1 ns 0".into(), "listeners \"0\""),
            ("add-batch 1\nrouter r-1 ns 17".into(), "listeners \"17\""),
            ("add-batch 1\nrouter r-1 ns 1 stats=0".into(), "expected"),
            ("add-batch 1\nrouter r-1 ns 1 stats=@x".into(), "expected"),
            ("add-batch 1\nrouter r-1 ns 1 stats=@".into(), "expected"),
            ("add-batch 1\nrouter r-1 ns 1 stats=1 x".into(), "expected"),
            ("add-batch 1\nvpc r-1 ns 1".into(), "unknown kind"),
            ("add-batch 1\nrouter r/1 ns 1".into(), "r/1"),
            ("add-batch 1\nrouter r-1 ../x 1".into(), ".."),
            (
                "add-batch 2\nrouter r-1 a 1\nrouter r-1 a 1".into(),
                "line 2: router r-1 in a twice",
            ),
            (format!("add-batch 254{many}"), "count \"254\""),
            (
                format!("add-batch 130{fds_over}"),
                "260 descriptors, at most 253",
            ),
        ] {
            let e = Request::parse(msg.as_bytes()).expect_err("bad");
            assert!(e.contains(why), "{msg:.60}: {e}");
        }
    }

    /// Mutated control messages (seeded; `NS_FUZZ_SEED` replays): never a panic; an error is
    /// one line (it goes back as one `error ...` datagram); what parses renders back to a
    /// message that parses the same.
    #[test]
    fn mutated_control_messages_parse_exactly_or_say_why_in_one_line() {
        use ns_testkit::fuzz;
        const VALID: &[&[u8]] = &[
            b"add router r-1 qrouter-r-1 stats=@17",
            b"add-batch 2\nrouter r-1 qrouter-r-1 2 stats=1\nnetwork n-1 qdhcp-n-1 1",
            b"remove ovn-network n-1",
            b"stats-slab",
            b"list",
        ];
        const DICT: &[&[u8]] = &[
            b" stats=@4294967295",
            b" stats=@99999999999999999999",
            b"\nrouter r-2 qrouter-r-2 16",
            b"add-batch 253",
            b" ../..",
            b" ovn-network",
        ];
        let check = |m: &[u8]| match Request::parse(m) {
            Err(e) => assert!(!e.contains('\n') && !e.is_empty(), "{e:?}"),
            Ok(Request::AddBatch(items)) => {
                let again = batch_message(&items);
                assert_eq!(
                    Request::parse(again.as_bytes()),
                    Ok(Request::AddBatch(items))
                );
            }
            Ok(_) => {}
        };
        for v in VALID {
            for m in fuzz::truncations_and_substitutions(v, b"\0\n \xff@") {
                check(&m);
            }
        }
        fuzz::run("control", 0x5eed_0006, 3000, |rng, _| {
            let v = rng.pick(VALID);
            check(&fuzz::mutate(rng, v, DICT));
        });
    }

    #[test]
    fn the_global_cap_follows_the_descriptor_limit() {
        assert_eq!(global_cap(1024), 384);
        assert_eq!(global_cap(0), 1);
        assert_eq!(global_cap(1_048_576), 524_160);
    }
}
