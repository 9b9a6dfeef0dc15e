//! The shared proxy model's server (`--shared-server STATE_DIR --control-fd N`): one process
//! serving the listening sockets of many namespaces, which the spawner opens inside each
//! namespace and hands over (issue #20).
//!
//! The spawner keeps its own copies of every socket, so a server that dies loses only the
//! requests in flight: connections waiting in the kernel's accept queues stay there until the
//! restarted server is handed the same sockets. Each namespace gets its own relay state
//! ([`Shared`]: id header, rate limiter, agent pool, `max_connections`), so one VM flooding its
//! router cannot take another router's share; a process-wide cap
//! ([`GLOBAL_CONNECTIONS_PER_NAMESPACE`] times the namespaces, bounded by the descriptor limit)
//! contains them all.
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
//! | `remove KIND ID` | `ok` (stops accepting, lets its connections finish), or `error REASON` |
//! | `list` | one `have KIND ID NETNS` + its listeners per namespace, then `end COUNT` |
//!
//! `KIND` is `router`, `network` or `ovn-network` ([`Kind::as_str`]); `ID` follows the
//! contract's id rule; `NETNS` is the namespace's name, for logs only (the spawner checks a
//! socket's namespace itself with `SIOCGSKNS` when it takes sockets back). `add` for a
//! namespace already served replaces its sockets (the old ones drain), unless they are the
//! same sockets, which is a no-op: a restarted spawner may hand everything over again.
//!
//! With `stats=1` the last descriptor is the namespace's statistics block
//! ([`ns_contract::proxy_stats`], validated as `--stats-fd` is: a regular file, its size, its
//! magic), and that namespace's answers are counted into it as one proxy's would be. The
//! open-connections gauge is zeroed when a namespace is first served by this process, not
//! when its sockets are replaced (the old connections still count down into it). `list` gives
//! listeners only: the spawner reopens the block from its own file.
//!
//! [`Namespaces`] is the table itself, usable in-process (the proxy's behaviour tests serve
//! through it); the control connection is one caller of it.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ns_contract::{Kind, Resource};
use tokio::io::Interest;
use tokio::net::UnixDatagram;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::server;
use crate::state::Shared;
use crate::stats::Stats;

/// Longest control message (a request or an answer); a longer one is refused.
pub const MAX_MESSAGE: usize = 1024;

/// The process-wide connection cap grows by this much per namespace served (and never past
/// what the descriptor limit allows); each namespace keeps its own `max_connections` inside it.
pub const GLOBAL_CONNECTIONS_PER_NAMESPACE: usize = 64;

/// What `--shared-server` and `--control-fd` say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedServer {
    /// The spawner's state directory: names the server (its argv is its identity) and is
    /// where the spawner keeps its pid file and control socket.
    pub state_dir: PathBuf,
    /// The inherited listening control socket.
    pub control_fd: i32,
}

/// One request on the control socket, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Add {
        resource: Resource,
        netns: String,
        /// The last descriptor is the namespace's statistics block.
        stats: bool,
    },
    Remove {
        resource: Resource,
    },
    List,
}

impl Request {
    /// Parse one message's text: exact words, nothing left over.
    pub fn parse(msg: &[u8]) -> std::result::Result<Request, String> {
        let text = std::str::from_utf8(msg).map_err(|_| "not UTF-8".to_owned())?;
        let words: Vec<&str> = text.split(' ').collect();
        let resource = |kind: &str, id: &str| -> std::result::Result<Resource, String> {
            let kind = Kind::ALL
                .into_iter()
                .find(|k| k.as_str() == kind)
                .ok_or_else(|| format!("unknown kind {kind:?}"))?;
            Resource::new(kind, id).map_err(|e| e.to_string())
        };
        let add = |kind: &str, id: &str, netns: &str, stats: bool| {
            ns_contract::validate_netns(netns).map_err(|e| e.to_string())?;
            Ok(Request::Add {
                resource: resource(kind, id)?,
                netns: netns.to_owned(),
                stats,
            })
        };
        match words.as_slice() {
            ["add", kind, id, netns] => add(kind, id, netns, false),
            ["add", kind, id, netns, "stats=1"] => add(kind, id, netns, true),
            ["remove", kind, id] => Ok(Request::Remove {
                resource: resource(kind, id)?,
            }),
            ["list"] => Ok(Request::List),
            _ => Err(format!(
                "expected `add KIND ID NETNS [stats=1]`, `remove KIND ID` or `list`, got {:?}",
                text.chars().take(80).collect::<String>()
            )),
        }
    }
}

/// A namespace being served.
struct Served {
    netns: String,
    /// Our copies of its listeners, for `list` and to recognise a repeated `add`.
    listeners: Vec<OwnedFd>,
    /// (device, inode) of each listener: same set = same sockets.
    identity: Vec<(u64, u64)>,
    /// Its relay state (and statistics block); also read by the one housekeeping task of all
    /// namespaces.
    shared: Arc<Shared>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Every namespace served, by resource.
#[derive(Default)]
struct Table {
    served: HashMap<Resource, Served>,
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

    /// Grow the global cap to `namespaces` × [`GLOBAL_CONNECTIONS_PER_NAMESPACE`], at most
    /// `global_max`.
    fn size_global(&self, namespaces: usize) {
        let want = namespaces
            .saturating_mul(GLOBAL_CONNECTIONS_PER_NAMESPACE)
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
        let mut identity = Vec::with_capacity(fds.len());
        let mut listeners = Vec::with_capacity(fds.len());
        for fd in fds {
            let l = std::net::TcpListener::from(fd);
            let meta = listening_tcp(&l)?;
            identity.push(meta);
            listeners.push(l);
        }
        identity.sort_unstable();
        let mut table = self.table();
        if let Some(old) = table.served.get(&resource) {
            if old.identity == identity {
                return Ok(old.shared.clone());
            }
        }
        // Each listener is held twice here (served, and our copy for `list`).
        let held: u64 = table
            .served
            .values()
            .map(|s| 2 * s.listeners.len() as u64)
            .sum();
        let need = held + 2 * identity.len() as u64 + RESERVED_FDS;
        if need > self.nofile {
            return Err(format!(
                "no room for the sockets of another namespace: {} namespaces served, \
                 RLIMIT_NOFILE is {} (raise LimitNOFILE= or the hard limit)",
                table.served.len(),
                self.nofile
            ));
        }
        let mut copies = Vec::with_capacity(listeners.len());
        let mut tokio_listeners = Vec::with_capacity(listeners.len());
        for l in listeners {
            copies.push(OwnedFd::from(
                l.try_clone().map_err(|e| format!("dup listener: {e}"))?,
            ));
            l.set_nonblocking(true)
                .map_err(|e| format!("listener non-blocking: {e}"))?;
            tokio_listeners
                .push(tokio::net::TcpListener::from_std(l).map_err(|e| format!("listener: {e}"))?);
        }
        let mut cfg = self.base.clone();
        cfg.resource = Some(resource.clone());
        if !table.served.contains_key(&resource) {
            stats.reset_open_connections();
        }
        let shared = Arc::new(Shared::with_stats(&cfg, &resource, stats));
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let per_ns = self.base.max_connections;
        let global = self.global.clone();
        let task = tokio::spawn(server::serve_capped(
            shared.clone(),
            tokio_listeners,
            per_ns,
            Some(global),
            async move {
                let _ = stop_rx.await;
            },
            self.grace,
        ));
        let replaced = table.served.insert(
            resource.clone(),
            Served {
                netns: netns.clone(),
                listeners: copies,
                identity,
                shared: shared.clone(),
                stop: stop_tx,
                task,
            },
        );
        let count = table.served.len();
        drop(table);
        self.size_global(count);
        match replaced {
            Some(old) => {
                tracing::info!(%resource, %netns, "namespace's sockets replaced");
                let _ = old.stop.send(());
            }
            None => tracing::info!(%resource, %netns, namespaces = count, "serving namespace"),
        }
        Ok(shared)
    }

    /// Stop serving `resource`: it stops accepting, its connections finish (up to the grace),
    /// our copies of its sockets close now.
    pub fn remove(&self, resource: &Resource) -> std::result::Result<(), String> {
        let old = self
            .table()
            .served
            .remove(resource)
            .ok_or_else(|| format!("{resource} is not served"))?;
        tracing::info!(%resource, netns = %old.netns, "namespace removed; its connections finish");
        // The task stops accepting and drains; our copies of its sockets close now.
        let _ = old.stop.send(());
        drop(old.listeners);
        drop(old.task);
        Ok(())
    }

    /// Stop every namespace and wait for their connections (up to the grace each).
    pub async fn shutdown(&self) {
        let all: Vec<Served> = self.table().served.drain().map(|(_, s)| s).collect();
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

/// A TCP socket in the listening state, by (device, inode) of its socket inode.
fn listening_tcp(l: &std::net::TcpListener) -> std::result::Result<(u64, u64), String> {
    use nix::sys::socket::{getsockopt, sockopt};
    let listening = getsockopt(l, sockopt::AcceptConn).map_err(|e| format!("not a socket: {e}"))?;
    let ty = getsockopt(l, sockopt::SockType).map_err(|e| format!("socket type: {e}"))?;
    if !listening || ty != nix::sys::socket::SockType::Stream {
        return Err("a listener must be a listening TCP socket".into());
    }
    l.local_addr()
        .map_err(|e| format!("not a TCP socket: {e}"))?;
    let meta = std::fs::File::from(
        l.as_fd()
            .try_clone_to_owned()
            .map_err(|e| format!("dup: {e}"))?,
    )
    .metadata()
    .map_err(|e| format!("fstat: {e}"))?;
    Ok((meta.dev(), meta.ino()))
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
    let mut buf = vec![0u8; MAX_MESSAGE];
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
        let answer = match Request::parse(&buf[..n]) {
            Err(e) => format!("error {e}"),
            Ok(Request::Add {
                resource,
                netns,
                stats,
            }) => match add(&server, resource, netns, fds, stats) {
                Ok(()) => "ok".to_owned(),
                Err(e) => format!("error {e}"),
            },
            Ok(Request::Remove { resource }) if fds.is_empty() => match server.remove(&resource) {
                Ok(()) => "ok".to_owned(),
                Err(e) => format!("error {e}"),
            },
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
    }
}

/// `add` as the control socket says it: with `stats`, the last descriptor is the block.
fn add(
    server: &Namespaces,
    resource: Resource,
    netns: String,
    mut fds: Vec<OwnedFd>,
    stats: bool,
) -> std::result::Result<(), String> {
    let stats = if stats {
        if fds.len() < 2 {
            return Err("add stats=1 needs the listeners and then the statistics block".into());
        }
        let block = fds.pop().map(std::fs::File::from);
        match block.as_ref().map(Stats::from_file) {
            Some(Ok(s)) => s,
            Some(Err(why)) => return Err(format!("statistics block of {resource}: {why}")),
            None => Stats::default(),
        }
    } else {
        Stats::default()
    };
    server.add(resource, netns, fds, stats).map(drop)
}

/// `list`: one `have` message with its listeners per namespace; returns how many.
async fn list(server: &Namespaces, conn: &UnixDatagram) -> io::Result<usize> {
    // Copies taken under the lock, sent without it.
    let mut all: Vec<(String, Vec<OwnedFd>)> = Vec::new();
    for (resource, s) in &server.table().served {
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
    conn.async_io(Interest::READABLE, || ns_netns::recv_fds(conn.as_fd(), buf))
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
                stats: false,
            })
        );
        assert_eq!(
            Request::parse(b"add router r-1 qrouter-r-1 stats=1"),
            Ok(Request::Add {
                resource: router("r-1"),
                netns: "qrouter-r-1".into(),
                stats: true,
            })
        );
        assert_eq!(
            Request::parse(b"remove ovn-network n-1"),
            Ok(Request::Remove {
                resource: Resource::new(Kind::OvnNetwork, "n-1").expect("id")
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
    fn the_global_cap_follows_the_descriptor_limit() {
        assert_eq!(global_cap(1024), 384);
        assert_eq!(global_cap(0), 1);
        assert_eq!(global_cap(1_048_576), 524_160);
    }
}
