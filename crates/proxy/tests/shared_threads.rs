//! Serving threads in the shared server (issue #20): with two allowed, a namespace's
//! connections stay on the main thread until it has more than
//! [`ns_metadata_proxy::workers::BUSY_NAMESPACE`] open; the busy namespace's next ones are
//! served by a helper, the ones it opened before move there between two requests, and a
//! quiet namespace's connection is still served by the main thread, beside the flood rather
//! than behind it in one event loop.
//!
//! Which thread serves a connection is read from the kernel: each serving thread's runtime
//! has its own epoll instance, and `/proc/self/fdinfo/<epoll fd>` lists the descriptors
//! registered with it (`tfd:`). The main thread's is the one the listeners are registered
//! with. Its own test binary: the serving threads are a process-wide setting.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use common::{Behave, Conn, StandIn};
use ns_metadata_proxy::workers::BUSY_NAMESPACE;

const WAIT: std::time::Duration = std::time::Duration::from_secs(10);
const GET: &[u8] = b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n";

/// Every epoll instance of this process: its descriptor and the inodes of the files
/// registered with it (`ino:`, hex).
fn epolls() -> Vec<(i32, BTreeSet<u64>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .flatten()
    {
        let is_epoll = std::fs::read_link(e.path())
            .is_ok_and(|t| t.to_string_lossy() == "anon_inode:[eventpoll]");
        let Some(fd) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if !is_epoll {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) else {
            continue;
        };
        let inodes = info
            .lines()
            .filter(|l| l.starts_with("tfd:"))
            .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("ino:")))
            .filter_map(|h| u64::from_str_radix(h, 16).ok())
            .collect();
        out.push((fd, inodes));
    }
    out
}

/// The inode of the socket of this process bound to `local` and connected to `peer` (the
/// server side of a client connection), from `/proc/net/tcp`.
fn socket_inode(local: SocketAddr, peer: SocketAddr) -> Option<u64> {
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(a) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(a.ip().octets()),
            a.port()
        ),
        SocketAddr::V6(_) => String::new(),
    };
    let (l, p) = (hex(local), hex(peer));
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.get(1) == Some(&l.as_str()) && f.get(2) == Some(&p.as_str()))
            .then(|| f.get(9)?.parse().ok())
            .flatten()
    })
}

/// A keep-alive client connection to `addr` that has had one answer: the connection and its
/// local address (the server side's peer).
async fn answered(addr: SocketAddr) -> (Conn<tokio::net::TcpStream>, SocketAddr) {
    let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let me = s.local_addr().expect("local addr");
    let mut c = Conn::new(s);
    c.send(GET).await;
    let r = c.read(false).await.expect("an answer");
    assert_eq!(r.status, 200, "{}", r.text());
    (c, me)
}

/// Which thread serves the server side of the client connection from `me` to `addr`:
/// `Some(true)` the main thread (its socket is registered with the epoll instance the
/// `listeners` are), `Some(false)` a helper (another instance), `None` neither or not
/// found. mio keeps a duplicate of each instance's descriptor: instances are told apart by
/// what is registered with them.
fn serving(addr: SocketAddr, me: SocketAddr, listeners: &[u64]) -> Option<bool> {
    let inode = socket_inode(addr, me)?;
    let sets: Vec<BTreeSet<u64>> = epolls()
        .into_iter()
        .map(|(_, inodes)| inodes)
        .filter(|inodes| inodes.contains(&inode))
        .collect();
    let main = sets.iter().any(|s| listeners.iter().all(|l| s.contains(l)));
    let helper = sets
        .iter()
        .any(|s| !listeners.iter().any(|l| s.contains(l)));
    match (main, helper) {
        (true, false) => Some(true),
        (false, true) => Some(false),
        _ => None,
    }
}

/// [`serving`], once the connection has been accepted and registered.
async fn on_main_thread(addr: SocketAddr, me: SocketAddr, listeners: &[u64]) -> bool {
    ns_testkit::eventually_async("the accepted socket served", WAIT, || {
        serving(addr, me, listeners)
    })
    .await
}

#[tokio::test]
async fn a_busy_namespace_is_served_by_a_helper_and_a_quiet_one_by_the_main_thread() {
    ns_metadata_proxy::workers::init(2);
    let agent = StandIn::start(Behave::Headers);
    let (table, tending) = common::shared_table(agent.path());
    let addrs: Vec<_> = ["busy", "quiet"]
        .iter()
        .map(|id| common::add_on_loopback(&table, id))
        .collect();
    // The listeners' sockets (a listener's row has no remote address).
    let listeners: Vec<u64> = addrs
        .iter()
        .map(|a| socket_inode(*a, "0.0.0.0:0".parse().expect("addr")).expect("listener"))
        .collect();
    // The accept loops register the listeners with the main thread's epoll instance.
    ns_testkit::eventually_async("the listeners registered", WAIT, || {
        epolls()
            .into_iter()
            .any(|(_, inodes)| listeners.iter().all(|l| inodes.contains(l)))
            .then_some(())
    })
    .await;

    // The busy namespace: its first connections on the main thread, then a helper.
    let mut busy = Vec::new();
    for n in 1..=3 * BUSY_NAMESPACE {
        let (c, me) = answered(addrs[0]).await;
        let main = on_main_thread(addrs[0], me, &listeners).await;
        if n <= BUSY_NAMESPACE {
            assert!(main, "busy connection {n}: not busy yet, the main thread");
        } else {
            assert!(!main, "busy connection {n}: a helper");
        }
        busy.push((c, me));
    }
    // The connections accepted before it got busy move to the helper after their next
    // request, idle between two.
    for (n, (c, me)) in busy.iter_mut().enumerate().take(BUSY_NAMESPACE) {
        c.send(GET).await;
        assert_eq!(c.read(false).await.expect("answer").status, 200);
        let moved = ns_testkit::wait_until_async(WAIT, || {
            serving(addrs[0], *me, &listeners) == Some(false)
        })
        .await;
        assert!(moved, "busy connection {}: moved to the helper", n + 1);
        // And served there.
        c.send(GET).await;
        assert_eq!(c.read(false).await.expect("answer").status, 200);
    }
    // A quiet namespace beside it: the main thread, not the flood's helper.
    let (mut quiet, me) = answered(addrs[1]).await;
    assert!(
        on_main_thread(addrs[1], me, &listeners).await,
        "the quiet namespace"
    );
    // And it keeps being answered there, on the same connection.
    quiet.send(GET).await;
    assert_eq!(quiet.read(false).await.expect("answer").status, 200);
    assert_eq!(
        serving(addrs[1], me, &listeners),
        Some(true),
        "the quiet one stays"
    );

    drop((busy, quiet));
    let _ = tending.send(true);
    table.shutdown().await;
}
