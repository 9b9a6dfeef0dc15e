//! The spawner's side of a shared server's control socket (protocol in the proxy's
//! `src/shared.rs`): a fresh listening socket for a server to inherit, a connection to it,
//! one request and its answer, and the replay of every namespace to a restarted server in
//! `add-batch` messages (issue #20).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ns_metadata_proxy::shared::{batch_message, BatchItem, MAX_BATCH_MESSAGE, MAX_MESSAGE};
use tokio::io::Interest;
use tokio::net::UnixDatagram;

use crate::{Error, Result};

/// One request and its answer on the control connection.
pub(crate) async fn ask(
    conn: &UnixDatagram,
    msg: &str,
    fds: &[BorrowedFd<'_>],
    wait: Duration,
) -> std::io::Result<String> {
    conn.async_io(Interest::WRITABLE, || {
        ns_netns::send_fds(conn.as_fd(), msg.as_bytes(), fds)
    })
    .await?;
    let (line, _fds) = tokio::time::timeout(wait, answer(conn, MAX_MESSAGE))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
    Ok(line)
}

/// Requests sent on one control connection whose answers did not come in time, oldest first.
/// The server answers in order, so their late answers come before the next request's: they
/// are read and logged first, or every later answer would be taken for the one before it
/// (a server stopped with SIGSTOP for longer than the wait, then continued).
#[derive(Debug, Default)]
pub(crate) struct Owed {
    /// The control socket (its inode) they were sent on: a new connection owes nothing.
    conn: u64,
    asked: std::collections::VecDeque<String>,
}

/// How [`Owed::ask`] failed.
#[derive(Debug)]
pub(crate) enum AskError {
    /// Not sent (the server's queue stayed full for the wait), or the connection failed.
    NotSent(std::io::Error),
    /// Sent (with its descriptors: the server has them), its answer not in within the wait;
    /// it is read before the next request's.
    Unanswered(std::io::Error),
}

impl Owed {
    /// [`ask`] on a connection that may owe late answers: `msg` goes out (a request is never
    /// held back, so a `remove` reaches a stopped server for when it continues), then the
    /// owed answers are read and logged, then `msg`'s, all within `wait`.
    pub(crate) async fn ask(
        &mut self,
        conn: &UnixDatagram,
        msg: &str,
        fds: &[BorrowedFd<'_>],
        wait: Duration,
    ) -> std::result::Result<String, AskError> {
        let ino = rustix::fs::fstat(conn.as_fd()).map_or(0, |st| st.st_ino);
        if ino != self.conn {
            self.conn = ino;
            self.asked.clear();
        }
        let deadline = tokio::time::Instant::now() + wait;
        let sent = conn.async_io(Interest::WRITABLE, || {
            ns_netns::send_fds(conn.as_fd(), msg.as_bytes(), fds)
        });
        match tokio::time::timeout_at(deadline, sent).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(AskError::NotSent(e)),
            Err(_) => {
                return Err(AskError::NotSent(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the server's queue stayed full",
                )))
            }
        }
        self.asked.push_back(msg.to_owned());
        while let Some(what) = self.asked.front() {
            let late = self.asked.len() > 1;
            let a = match tokio::time::timeout_at(deadline, answer(conn, MAX_MESSAGE)).await {
                Ok(Ok((a, _fds))) => a,
                Ok(Err(e)) => return Err(AskError::Unanswered(e)),
                Err(_) => {
                    return Err(AskError::Unanswered(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no answer",
                    )))
                }
            };
            if !late {
                self.asked.clear();
                return Ok(a);
            }
            if a == "ok" {
                tracing::info!(request = %what, "the shared server answered a request late: ok");
            } else {
                tracing::warn!(request = %what, answer = %a, "the shared server answered a request late");
            }
            self.asked.pop_front();
        }
        Err(AskError::NotSent(std::io::Error::other("nothing asked")))
    }
}

/// One message of at most `max` bytes from the server, as text with no control character
/// but `\n` (the line separator of `add-batch` answers): the server runs unprivileged and
/// is not trusted, and its answers reach the log, `status` and `restart`'s output on an
/// operator's terminal, where an escape sequence would be obeyed.
pub(crate) async fn answer(
    conn: &UnixDatagram,
    max: usize,
) -> std::io::Result<(String, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; max];
    let (n, fds) = conn
        .async_io(Interest::READABLE, || {
            ns_netns::recv_fds(conn.as_fd(), &mut buf)
        })
        .await?;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the shared server closed the control connection",
        ));
    }
    Ok((
        crate::printable(&String::from_utf8_lossy(&buf[..n]), &['\n']),
        fds,
    ))
}

/// Most listeners one namespace has: `169.254.169.254:80` and `[fe80::a9fe:a9fe]:80`.
const MAX_LISTENERS: usize = 2;

/// What `list` gives back, by `KIND ID NETNS`: the namespace the server names and its listeners
/// (checked by the caller before any is used).
pub(crate) type Listed = std::collections::BTreeMap<String, (String, Vec<OwnedFd>)>;

/// Ask a running server (of a previous spawner) for every namespace it serves, with their
/// listeners. The server runs unprivileged and is not trusted: the whole answer must come
/// within `wait` (not each message: a server dribbling `have` lines would otherwise keep the
/// spawner's start waiting for ever) with listeners for at most half our descriptor limit
/// ([`listed_fds_max`]: one that never stops would otherwise fill our descriptor table and
/// memory); a line with a bad resource or namespace name, or more listeners than a
/// namespace has, is left out and its descriptors closed.
pub(crate) async fn take_list(conn: &UnixDatagram, wait: Duration) -> Result<Listed> {
    let fail = |why: String| Error::Spawn(format!("shared server list: {why}"));
    let max_fds = listed_fds_max();
    let mut held = 0usize;
    conn.async_io(Interest::WRITABLE, || {
        ns_netns::send_fds(conn.as_fd(), b"list", &[])
    })
    .await
    .map_err(|e| fail(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut taken = Listed::new();
    loop {
        let (line, fds) = tokio::time::timeout_at(deadline, answer(conn, MAX_MESSAGE))
            .await
            .map_err(|_| fail(format!("not finished within {wait:?}")))?
            .map_err(|e| fail(e.to_string()))?;
        if line.starts_with("end ") {
            return Ok(taken);
        }
        let ["have", kind, id, netns] = line.split(' ').collect::<Vec<_>>()[..] else {
            return Err(fail(format!(
                "unexpected {:?}",
                line.chars().take(80).collect::<String>()
            )));
        };
        let checked = ns_metadata_proxy::shared::resource(kind, id)
            .and_then(|_| ns_contract::validate_netns(netns).map_err(|e| e.to_string()))
            .and_then(|()| match fds.len() {
                1..=MAX_LISTENERS => Ok(()),
                n => Err(format!("{n} listeners")),
            });
        if let Err(why) = checked {
            tracing::warn!(line = %line.chars().take(80).collect::<String>(), %why, "shared server list: a namespace left out");
            continue;
        }
        held += fds.len();
        if held > max_fds {
            return Err(fail(format!(
                "more listeners than {max_fds}, half the spawner's descriptor limit"
            )));
        }
        if let Some((_, old)) =
            taken.insert(format!("{kind} {id} {netns}"), (netns.to_owned(), fds))
        {
            held -= old.len();
        }
    }
}

/// Half the soft `RLIMIT_NOFILE`: what the listeners a server lists may take of our
/// descriptors (2,000 namespaces take 2,000 to 4,000).
fn listed_fds_max() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    usize::try_from(soft / 2).unwrap_or(usize::MAX)
}

/// A connection to the control socket at `path`.
pub(crate) fn connect(path: &Path) -> std::io::Result<UnixDatagram> {
    let d = std::os::unix::net::UnixDatagram::from(ns_netns::seqpacket_connect(path)?);
    d.set_nonblocking(true)?;
    UnixDatagram::from_std(d)
}

/// A fresh listening control socket at `STATE_DIR/NAME` (a stale socket file there is
/// replaced; anything else is refused). The state dir is ours and 0700.
pub(crate) fn control_listener(state_dir: &Path, name: &str) -> Result<OwnedFd> {
    use std::os::unix::fs::FileTypeExt as _;
    let path = state_dir.join(name);
    let io = |op: &'static str, source: std::io::Error| Error::Io {
        op,
        path: path.clone(),
        source,
    };
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(&path).map_err(|e| io("remove stale", e))?
        }
        Ok(_) => {
            return Err(Error::Invalid(format!(
                "{} exists and is not a socket: move it away",
                path.display()
            )))
        }
        Err(_) => {}
    }
    let l = ns_netns::seqpacket_listen(&path, 16).map_err(|e| io("listen on", e))?;
    // Only root may connect, as to the control API's socket: the state dir may be 0755
    // (statedir::check allows it) and the umask anything. The server checks its peer too
    // (SO_PEERCRED); this keeps every other user from even queueing in its backlog.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io("chmod", e))?;
    Ok(l)
}

/// `add-batch` messages [`replay`] sends ahead of their answers.
const REPLAY_WINDOW: usize = 4;

/// Hand every entry (`all`: what it says and our copies of its sockets) to a freshly started
/// server, as few `add-batch` messages as the
/// descriptor limit per message allows (at most [`ns_netns::SCM_MAX_FD`] descriptors and
/// [`MAX_BATCH_MESSAGE`] bytes each), pipelined [`REPLAY_WINDOW`] ahead of their answers: a
/// restarted server serves all of 2,000 namespaces again after ~25 messages, not 2,000
/// (issue #20). The entries' sockets are borrowed, not duplicated.
pub(crate) async fn replay(
    all: &[(BatchItem, Arc<Vec<OwnedFd>>)],
    conn: &UnixDatagram,
    wait: Duration,
) -> Result<usize> {
    let lost =
        |e: std::io::Error| Error::Spawn(format!("handing sockets to the shared server: {e}"));
    let mut pending = std::collections::VecDeque::with_capacity(REPLAY_WINDOW);
    let mut refused = 0usize;
    for batch in batches(all) {
        if pending.len() == REPLAY_WINDOW {
            let sent = pending.pop_front().unwrap_or_default();
            refused += replayed(conn, wait, sent).await.map_err(lost)?;
        }
        let items: Vec<BatchItem> = batch.iter().map(|(i, _)| i.clone()).collect();
        let msg = batch_message(&items);
        let borrowed: Vec<BorrowedFd<'_>> = batch
            .iter()
            .flat_map(|(_, fds)| fds.iter().map(AsFd::as_fd))
            .collect();
        conn.async_io(Interest::WRITABLE, || {
            ns_netns::send_fds(conn.as_fd(), msg.as_bytes(), &borrowed)
        })
        .await
        .map_err(lost)?;
        pending.push_back(batch.len());
    }
    while let Some(sent) = pending.pop_front() {
        refused += replayed(conn, wait, sent).await.map_err(lost)?;
    }
    Ok(all.len() - refused.min(all.len()))
}

/// `all` cut into `add-batch` messages: each within the descriptor and size limits.
fn batches<T>(all: &[(BatchItem, T)]) -> Vec<&[(BatchItem, T)]> {
    let mut out = Vec::new();
    let (mut start, mut fds, mut bytes) = (0, 0, 32);
    for (i, (item, _)) in all.iter().enumerate() {
        let (f, b) = (item.fds(), item.line().len() + 1);
        if i > start && (fds + f > ns_netns::SCM_MAX_FD || bytes + b > MAX_BATCH_MESSAGE) {
            out.push(&all[start..i]);
            (start, fds, bytes) = (i, 0, 32);
        }
        fds += f;
        bytes += b;
    }
    if start < all.len() {
        out.push(&all[start..]);
    }
    out
}

/// The answer to one `add-batch` of `sent` namespaces: how many it refused (each logged, not
/// fatal: the others are served; a batch refused whole counts all of its namespaces).
async fn replayed(conn: &UnixDatagram, wait: Duration, sent: usize) -> std::io::Result<usize> {
    let (a, _) = tokio::time::timeout(wait, answer(conn, MAX_BATCH_MESSAGE))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
    if a.starts_with("ok ") {
        return Ok(0);
    }
    let mut lines = a.lines();
    let head = lines.next().unwrap_or_default();
    if !head.starts_with("refused ") {
        // Refused whole (a bug on one side): those namespaces are missing, the rest served.
        tracing::warn!(answer = %head, namespaces = sent, "shared server refused a batch of namespaces");
        return Ok(sent);
    }
    let mut n = 0;
    for line in lines {
        tracing::warn!(namespace = %line, "shared server refused a namespace");
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ns_contract::{Kind, Resource};
    use ns_metadata_proxy::shared::StatsRef;

    fn item(i: usize, listeners: usize, stats: StatsRef) -> (BatchItem, ()) {
        let item = BatchItem {
            resource: Resource::new(Kind::Router, format!("r-{i}")).expect("id"),
            netns: format!("qrouter-r-{i}"),
            listeners,
            stats,
        };
        (item, ())
    }

    /// A server (unprivileged, perhaps compromised) that answers `list` without end, or
    /// with lines the spawner must not keep: the spawner's start is not held for ever, and
    /// nothing but well-formed namespaces with one or two listeners is kept.
    #[tokio::test]
    async fn a_hostile_list_answer_is_bounded_and_checked() {
        use std::os::fd::AsFd as _;
        let pair = seqpacket_pair;
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        // Well-formed lines, then bad ones (each left out), then the end.
        let (server, conn) = pair();
        let send = |msg: &str, n: usize| {
            let fds: Vec<_> = (0..n).map(|_| l.as_fd()).collect();
            ns_netns::send_fds(server.as_fd(), msg.as_bytes(), &fds).expect("send");
        };
        send("have router r-1 qrouter-r-1", 2);
        send("have router r-2 qrouter-r-2", 3);
        send("have router r-3 qrouter-r-3", 0);
        send("have vpc r-4 qrouter-r-4", 1);
        send("have router r/5 qrouter-r-5", 1);
        send("have router r-6 ../etc", 1);
        send("end 6", 0);
        let taken = take_list(&conn, Duration::from_secs(30))
            .await
            .expect("listed");
        assert_eq!(taken.keys().collect::<Vec<_>>(), ["router r-1 qrouter-r-1"]);
        assert_eq!(taken["router r-1 qrouter-r-1"].1.len(), 2);
        let mut buf = [0u8; 8];
        assert_eq!(
            server.recv(&mut buf).expect("request"),
            4,
            "`list` was asked"
        );
        // A server that names namespaces for ever, as fast as we read them.
        let (server, conn) = pair();
        let endless = std::thread::spawn(move || {
            let mut i = 0u64;
            while ns_netns::send_fds(
                server.as_fd(),
                format!("have router r-{i} qrouter-r-{i}").as_bytes(),
                &[l.as_fd()],
            )
            .is_ok()
            {
                i += 1;
            }
            i
        });
        let e = tokio::time::timeout(
            Duration::from_secs(120),
            take_list(&conn, Duration::from_secs(100)),
        )
        .await
        .expect("the list must end")
        .expect_err("endless");
        assert!(e.to_string().contains("descriptor limit"), "{e}");
        drop(conn);
        assert!(endless.join().expect("thread") as usize > listed_fds_max());
    }

    /// A server's answer that carries terminal escape sequences (a compromised server
    /// writing to root's terminal through `status` or `restart`) arrives without them.
    #[tokio::test]
    async fn a_servers_answer_carries_no_control_characters() {
        let (server, conn) = seqpacket_pair();
        let hostile = "error \x1b]0;owned\x07\x1b[2J\rgone\nrouter r-1 \x1b[8mhidden";
        ns_netns::send_fds(server.as_fd(), hostile.as_bytes(), &[]).expect("send");
        let a = ask(&conn, "list", &[], Duration::from_secs(10))
            .await
            .expect("answer");
        assert!(!a.chars().any(|c| c.is_control() && c != '\n'), "{a:?}");
        assert_eq!(a.lines().count(), 2, "{a:?}");
        assert!(a.contains("owned") && a.contains("hidden"), "{a:?}");
    }

    /// A SOCK_SEQPACKET pair, as the control socket is: the server's end (blocking) and ours.
    fn seqpacket_pair() -> (std::os::unix::net::UnixDatagram, UnixDatagram) {
        use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
        let (a, b) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("socketpair");
        let b = std::os::unix::net::UnixDatagram::from(b);
        b.set_nonblocking(true).expect("nonblocking");
        (
            std::os::unix::net::UnixDatagram::from(a),
            UnixDatagram::from_std(b).expect("tokio"),
        )
    }

    /// A shared server's control socket is root's alone, whatever the umask and even in a
    /// state dir others may enter (0755 is allowed).
    #[test]
    fn the_control_socket_is_0600() {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let dir = ns_testkit::TempDir::new("shared-sock-mode");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let _l = control_listener(dir.path(), "shared.sock").expect("listen");
        let mode = std::fs::symlink_metadata(dir.path().join("shared.sock"))
            .expect("stat")
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }

    #[test]
    fn a_replay_is_cut_at_the_descriptor_limit_per_message() {
        // 2,000 namespaces of two listeners and a statistics block: 84 per message.
        let all: Vec<_> = (0..2000).map(|i| item(i, 2, StatsRef::Block)).collect();
        let cut = batches(&all);
        assert_eq!(cut.len(), 24);
        assert!(cut.iter().all(|b| b.len() <= 84));
        assert_eq!(cut.iter().map(|b| b.len()).sum::<usize>(), 2000);
        for b in &cut {
            let items: Vec<_> = b.iter().map(|(i, _)| i.clone()).collect();
            let msg = batch_message(&items);
            assert!(msg.len() <= MAX_BATCH_MESSAGE);
            let fds: usize = items.iter().map(BatchItem::fds).sum();
            assert!(fds <= ns_netns::SCM_MAX_FD, "{fds}");
        }
        assert!(batches::<()>(&[]).is_empty());
        assert_eq!(batches(&[item(1, 1, StatsRef::None)]).len(), 1);
    }
}
