//! The relay queue (`--max-agent-requests`, issue #20), on loopback: a namespace has at most N
//! requests with the agent at once and the others wait in order; a request that waits longer
//! than `timeout connect` gets 503; and in the shared server a namespace whose requests all
//! wait (held by the agent) does not hold up another namespace's request, and has a quarter of
//! its slots while another namespace asks the agent too, even when a request of it stalls
//! (one young request at a time while the agent is fast: `relayq`'s unit tests).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{request, Model, TempDir};
use ns_testkit::wait_until_async;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(10);
const GET: &str =
    "GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n";

/// An agent stand-in that holds every request for router `busy` until released, and answers
/// any other at once with `router=<id>`; it counts the held requests.
struct HoldingAgent {
    _dir: TempDir,
    path: std::path::PathBuf,
    /// Requests held now, and the most held at once.
    held: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    release: watch::Sender<bool>,
}

impl HoldingAgent {
    fn start() -> HoldingAgent {
        let dir = TempDir::new("queue-agent");
        let path = dir.path().join("agent.sock");
        let l = tokio::net::UnixListener::bind(&path).expect("agent socket");
        let (release, rx) = watch::channel(false);
        let (held, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (h, m) = (held.clone(), most.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(answer(s, h.clone(), m.clone(), rx.clone()));
            }
        });
        HoldingAgent {
            _dir: dir,
            path,
            held,
            most,
            release,
        }
    }

    fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }
}

/// One agent connection: one request, one answer, close (as Neutron's agent does).
async fn answer(
    mut s: tokio::net::UnixStream,
    held: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    mut release: watch::Receiver<bool>,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let router = text
        .lines()
        .find_map(|l| l.strip_prefix("x-neutron-router-id: "))
        .unwrap_or("-")
        .trim()
        .to_owned();
    if router == "busy" {
        let now = held.fetch_add(1, Ordering::SeqCst) + 1;
        most.fetch_max(now, Ordering::SeqCst);
        let _ = release.wait_for(|r| *r).await;
        held.fetch_sub(1, Ordering::SeqCst);
    }
    let body = format!("router={router}");
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(reply.as_bytes()).await;
}

/// `n` requests to `addr`, each on its own connection, running in the background.
type Flood = tokio::task::JoinHandle<Option<ns_testkit::http::Response>>;

fn requests(addr: std::net::SocketAddr, n: usize) -> Vec<Flood> {
    (0..n)
        .map(|_| tokio::spawn(async move { request(addr, GET).await }))
        .collect()
}

/// A shared server with routers `busy` and `quiet` on loopback listeners of their own.
struct Pair {
    table: Arc<ns_metadata_proxy::shared::Namespaces>,
    tending: watch::Sender<bool>,
    /// `busy`'s address, then `quiet`'s.
    addrs: Vec<std::net::SocketAddr>,
    busy_state: Arc<ns_metadata_proxy::state::Shared>,
}

impl Pair {
    fn serve(agent: &HoldingAgent) -> Pair {
        let (table, tending) = common::shared_table(&agent.path);
        let addrs = ["busy", "quiet"]
            .iter()
            .map(|id| common::add_on_loopback(&table, id))
            .collect();
        let busy_state = table
            .states()
            .into_iter()
            .find(|s| s.id == "busy")
            .expect("busy served");
        Pair {
            table,
            tending,
            addrs,
            busy_state,
        }
    }

    /// Wait until the agent holds `held` of `busy`'s requests and `waiting` more wait in its
    /// queue.
    async fn saturated(&self, agent: &HoldingAgent, held: usize, waiting: usize) {
        let q = &self.busy_state.queue;
        let saturated =
            wait_until_async(WAIT, || agent.held() == held && q.waiting() == waiting).await;
        assert!(saturated, "held {}, waiting {}", agent.held(), q.waiting());
    }

    /// Let the agent answer: every request of `flood` gets 200, the agent never held more
    /// than `most` at once; then the server stops.
    async fn release(self, agent: &HoldingAgent, flood: Vec<Flood>, most: usize) {
        let _ = agent.release.send(true);
        for r in flood {
            assert_eq!(r.await.expect("task").expect("answer").status, 200);
        }
        assert_eq!(agent.most.load(Ordering::SeqCst), most, "never more");
        let _ = self.tending.send(true);
        self.table.shutdown().await;
    }
}

crate::in_both_models!(
    at_most_n_requests_are_with_the_agent_and_the_rest_wait_their_turn,
    a_request_that_waits_longer_than_timeout_connect_gets_503,
);

async fn at_most_n_requests_are_with_the_agent_and_the_rest_wait_their_turn(model: Model) {
    let agent = HoldingAgent::start();
    let proxy = model.start(
        &agent.path,
        "127.0.0.1:0",
        &["--router-id", "busy", "--max-agent-requests", "2"],
    );
    let all = requests(proxy.addr, 5);
    // Two with the agent, three waiting in the proxy's queue.
    let queued = wait_until_async(WAIT, || {
        agent.held() == 2 && proxy.shared.queue.waiting() == 3
    })
    .await;
    assert!(
        queued,
        "held by the agent {}, waiting {}",
        agent.held(),
        proxy.shared.queue.waiting()
    );
    let _ = agent.release.send(true);
    for r in all {
        let r = r.await.expect("task").expect("an answer");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"router=busy");
    }
    assert_eq!(
        agent.most.load(Ordering::SeqCst),
        2,
        "never more than 2 at the agent"
    );
    assert_eq!(proxy.shared.queue.waiting(), 0);
    proxy.stop().await;
}

async fn a_request_that_waits_longer_than_timeout_connect_gets_503(model: Model) {
    let agent = HoldingAgent::start();
    let proxy = model.start(
        &agent.path,
        "127.0.0.1:0",
        &[
            "--router-id",
            "busy",
            "--max-agent-requests",
            "1",
            "--timeout-connect",
            "1",
        ],
    );
    let first = requests(proxy.addr, 1);
    assert!(wait_until_async(WAIT, || agent.held() == 1).await);
    // The only slot stays taken: the second request gives up after `timeout connect`.
    let second = request(proxy.addr, GET).await.expect("an answer");
    assert_eq!(second.status, 503);
    let _ = agent.release.send(true);
    for r in first {
        assert_eq!(r.await.expect("task").expect("answer").status, 200);
    }
    proxy.stop().await;
}

/// The shared server: router `busy` floods with far more connections than it may have with
/// the agent, and the agent holds every one of them; router `quiet` is still answered, and
/// `busy`'s requests all complete, in the end, once the agent lets them go.
#[tokio::test]
async fn shared_server_answers_a_quiet_namespace_while_a_flooding_one_is_held() {
    // More connections than the process-wide cap once gave two namespaces (2 × 64), below
    // the flooded namespace's own max_connections (1,024): the quiet one keeps its room.
    const FLOOD: usize = 200;
    let agent = HoldingAgent::start();
    let pair = Pair::serve(&agent);
    let flood = requests(pair.addrs[0], FLOOD);
    // The default queue: N with the agent (held there), every other one waiting.
    const N: usize = ns_metadata_proxy::relayq::DEFAULT_MAX_AGENT_REQUESTS;
    pair.saturated(&agent, N, FLOOD - N).await;

    let quiet = request(pair.addrs[1], GET)
        .await
        .expect("the quiet router answered");
    assert_eq!(
        (quiet.status, quiet.body.as_slice()),
        (200, &b"router=quiet"[..])
    );
    assert_eq!(agent.held(), N, "the flood is still held");
    pair.release(&agent, flood, N).await;
}

/// The shared server: while router `quiet` keeps asking the agent, router `busy` floods and
/// the agent holds every one of its requests. In company `busy` has one young request at a
/// time while its agent answers fast (or has not answered yet), but a request held longer
/// than `COMPANY_SLOW_AFTER` gives its young place back, so the agent ends up holding a
/// quarter of `busy`'s N slots' worth: a stalled request does not hold up its namespace's
/// next ones. The rest wait; all complete once the agent lets them go.
#[tokio::test]
async fn shared_server_gives_a_stalled_namespace_in_company_a_quarter_of_its_slots() {
    const FLOOD: usize = 40;
    let agent = HoldingAgent::start();
    let pair = Pair::serve(&agent);
    // The quiet router asks every 10 ms (well within the company window of 1 s).
    let (stop, mut stopped) = watch::channel(false);
    let (quiet_addr, answered) = (pair.addrs[1], Arc::new(AtomicUsize::new(0)));
    let count = answered.clone();
    let asking = tokio::spawn(async move {
        loop {
            let r = request(quiet_addr, GET)
                .await
                .expect("the quiet router answered");
            assert_eq!((r.status, r.body.as_slice()), (200, &b"router=quiet"[..]));
            count.fetch_add(1, Ordering::SeqCst);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                _ = stopped.changed() => return,
            }
        }
    });
    // The flood starts once quiet has asked.
    assert!(wait_until_async(WAIT, || answered.load(Ordering::SeqCst) > 0).await);
    let flood = requests(pair.addrs[0], FLOOD);
    const QUARTER: usize = ns_metadata_proxy::relayq::DEFAULT_MAX_AGENT_REQUESTS
        / ns_metadata_proxy::relayq::COMPANY_QUARTER as usize;
    pair.saturated(&agent, QUARTER, FLOOD - QUARTER).await;
    let _ = stop.send(true);
    asking.await.expect("quiet's loop");
    pair.release(&agent, flood, QUARTER).await;
}

/// Two namespaces served with one id (a metadata network is served with its router's,
/// `enable_metadata_network`): both are served, `remove KIND ID NETNS` stops one, the older
/// `remove KIND ID` every one (before, the second `add` took the first one's place, and its
/// listener stayed bound with nobody accepting).
#[tokio::test]
async fn one_id_in_two_namespaces_is_served_in_both_and_removed_by_namespace() {
    let dir = TempDir::new("queue-sameid");
    let (table, _tending) = common::shared_table(&dir.path().join("agent.sock"));
    let r = ns_contract::Resource::new(ns_contract::Kind::Router, "r-1").expect("id");
    let add = |netns: &str| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        table
            .add(
                r.clone(),
                netns.into(),
                vec![l.into()],
                ns_metadata_proxy::stats::Stats::default(),
            )
            .expect("add");
    };
    add("qrouter-r-1");
    add("qdhcp-n-1");
    assert_eq!(table.len(), 2, "both served");
    table.remove_in(&r, Some("qdhcp-n-1")).expect("one removed");
    assert_eq!(table.len(), 1);
    let e = table.remove_in(&r, Some("qdhcp-n-1")).expect_err("gone");
    assert!(e.contains("not served in qdhcp-n-1"), "{e}");
    add("qdhcp-n-1");
    table.remove(&r).expect("every one");
    assert!(table.is_empty());
}
