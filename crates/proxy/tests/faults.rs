//! Faults of the agent under a request loop (loopback, no root), in both proxy models: the
//! agent killed (every connection it held closed at once, its socket file left behind, then
//! removed) and started again on a new socket file while the proxy holds pooled connections
//! to it; the agent's accept queue full (`connect` gives `EAGAIN`). What the VM should see
//! is what haproxy with Neutron's template answers: 503 when no connection to the agent can
//! be made (after `retries 3`), 502 for a request the dying agent had taken, and the agent's
//! answers again as soon as it is back, with no stale pooled connection reused.

mod common;

use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{request, Behave, Model, StandIn, TempDir};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixListener;
use tokio::task::JoinSet;

crate::in_both_models!(
    agent_killed_and_restarted_under_load,
    agent_accept_queue_full_is_retried_then_503,
    agent_cutting_its_head_short_is_502_and_the_next_is_answered,
);

/// Bounds of the waits below (each ends as soon as its condition holds).
const BOUND: Duration = Duration::from_secs(10);

/// Serve `listener` as a keep-alive agent answering every GET with `gen=<generation>`
/// (advertising reuse, as `ns-metadata-agent` does), each connection a task of `tasks`.
fn serve(listener: UnixListener, generation: u32, tasks: &mut JoinSet<()>) -> Arc<AtomicUsize> {
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tasks.spawn(async move {
        // Aborting this task drops the set: every connection task is aborted and its socket
        // closed, as a killed process's are.
        let mut conns = JoinSet::new();
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            conns.spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let body = format!("gen={generation}");
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\
                             X-NS-Metadata-Keepalive: 10\r\n\r\n{body}",
                            body.len()
                        );
                        if s.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                }
            });
        }
    });
    accepted
}

/// The agent stand-in that can be killed: its listener and connections all close at once.
struct Agent {
    path: PathBuf,
    tasks: JoinSet<()>,
    /// Connections accepted.
    accepted: Arc<AtomicUsize>,
}

impl Agent {
    /// Bind `path` afresh (a new inode, as a restarted agent does) and serve it.
    fn start(path: &Path, generation: u32) -> Agent {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).expect("bind the agent socket");
        let mut tasks = JoinSet::new();
        let accepted = serve(listener, generation, &mut tasks);
        Agent {
            path: path.to_owned(),
            tasks,
            accepted,
        }
    }

    /// kill -9: every socket closed, the socket file left behind (connects are refused).
    async fn kill(mut self) {
        self.tasks.shutdown().await;
        assert!(self.path.exists(), "a killed agent leaves its socket file");
    }
}

/// One answer the request loop saw.
#[derive(Debug, Clone)]
struct Sample {
    /// When the request was sent and when its answer (or the close) came.
    sent: Instant,
    done: Instant,
    /// 0: no answer at all.
    status: u16,
    body: String,
}

/// `n` clients asking the proxy in a loop (a connection per request, so every answer is
/// counted) until `stop`.
fn request_loop(addr: std::net::SocketAddr, n: usize, stop: Arc<AtomicBool>) -> LoopHandle {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let (samples, stop) = (samples.clone(), stop.clone());
        tasks.spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let sent = Instant::now();
                let req = format!("GET /latest/meta-data/{i} HTTP/1.1\r\nHost: x\r\n\r\n");
                let s = match request(addr, req).await {
                    Some(r) => Sample {
                        sent,
                        done: Instant::now(),
                        status: r.status,
                        body: r.text(),
                    },
                    None => Sample {
                        sent,
                        done: Instant::now(),
                        status: 0,
                        body: String::new(),
                    },
                };
                samples.lock().unwrap_or_else(|p| p.into_inner()).push(s);
                // Pace the loop: the machine is shared; the point is requests in flight
                // at every moment, not throughput.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
    }
    LoopHandle {
        samples,
        tasks,
        stop,
    }
}

struct LoopHandle {
    samples: Arc<Mutex<Vec<Sample>>>,
    tasks: JoinSet<()>,
    stop: Arc<AtomicBool>,
}

impl LoopHandle {
    fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Wait until `n` answers sent at or after `since` satisfy `ok`.
    async fn wait_for(&self, since: Instant, n: usize, ok: impl Fn(&Sample) -> bool) -> bool {
        let end = Instant::now() + BOUND;
        while Instant::now() < end {
            let got = self
                .samples()
                .iter()
                .filter(|s| s.sent >= since && ok(s))
                .count();
            if got >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    async fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        while let Some(r) = self.tasks.join_next().await {
            r.expect("client task");
        }
        self.samples()
    }
}

/// What the VM saw, compactly, for failure messages.
fn show(samples: &[Sample], t0: Instant) -> String {
    samples
        .iter()
        .map(|s| {
            format!(
                "{:.3}s:{}",
                s.sent.saturating_duration_since(t0).as_secs_f64(),
                s.status
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

const CLIENTS: usize = 4;

/// The agent killed under a request loop while the proxy pools connections to it, then its
/// socket file removed, then a new agent bound on the same path (a new inode): while it is
/// down the VM gets 503 (502 only for the few requests the dying agent had taken); once it is
/// back every request sent gets its answer (200 from the new agent): no pooled connection to
/// the dead one is reused, and nothing is restarted.
async fn agent_killed_and_restarted_under_load(model: Model) {
    let dir = TempDir::new("killed");
    let path = dir.path().join("agent.sock");
    let agent = Agent::start(&path, 1);
    let p = model.start(&path, "127.0.0.1:0", &["--agent-keepalive", "on"]);
    let t0 = Instant::now();
    let lp = request_loop(p.addr, CLIENTS, Arc::new(AtomicBool::new(false)));
    assert!(
        lp.wait_for(t0, 20, |s| s.status == 200).await,
        "the loop runs: {}",
        show(&lp.samples(), t0)
    );
    let answered = lp.samples().len();
    let accepted = agent.accepted.load(Ordering::SeqCst);
    assert!(
        accepted < answered,
        "the proxy reuses pooled agent connections: {accepted} for {answered} requests"
    );

    // 1. Killed: its socket file stays (refused), then is removed (missing).
    let killed = Instant::now();
    agent.kill().await;
    let refused = lp.wait_for(killed, 5, |s| s.status == 503).await;
    let removed = Instant::now();
    std::fs::remove_file(&path).expect("remove the dead agent's socket");
    let missing = lp.wait_for(removed, 5, |s| s.status == 503).await;

    // 2. Back, on a new socket file.
    let agent = Agent::start(&path, 2);
    let back = Instant::now();
    let answered = lp.wait_for(back, 20, |s| s.status == 200).await;
    let samples = lp.finish().await;
    let seen = show(&samples, t0);
    assert!(refused, "503 while the socket refuses: {seen}");
    assert!(missing, "503 while the socket is missing: {seen}");
    assert!(answered, "answers again once the agent is back: {seen}");

    for s in samples.iter().filter(|s| s.done < killed) {
        assert_eq!(
            (s.status, s.body.as_str()),
            (200, "gen=1"),
            "before the kill: {seen}"
        );
    }
    // In flight at the kill, or sent while it was down.
    let down: Vec<u16> = samples
        .iter()
        .filter(|s| s.done >= killed && s.sent < back)
        .map(|s| s.status)
        .collect();
    assert!(
        down.iter().all(|s| matches!(s, 502 | 503 | 200)),
        "while the agent is down only 503 (or 502 for a request it had taken): {seen}"
    );
    assert!(
        down.iter().filter(|s| **s == 502).count() <= CLIENTS,
        "502 only for requests in flight at the kill: {seen}"
    );
    assert_eq!(
        samples.iter().filter(|s| s.status == 0).count(),
        0,
        "every request gets an answer: {seen}"
    );
    // Every request sent once the new agent listens gets its answer (a request sent before
    // may still have been retrying its connect when it came, and be answered too).
    for s in samples.iter().filter(|s| s.sent >= back) {
        assert_eq!(
            (s.status, s.body.as_str()),
            (200, "gen=2"),
            "after the agent is back, every request is answered by it: {seen}"
        );
    }
    drop(agent);
}

/// A non-blocking Unix stream socket.
fn stream_socket() -> OwnedFd {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
    socket(AddressFamily::Unix, SockType::Stream, flags, None).expect("socket")
}

/// An agent whose accept queue is full (it stopped accepting; every `connect` gives
/// `EAGAIN`): the proxy retries as haproxy's `retries 3` does, then answers 503, long before
/// `timeout connect`; once the agent accepts again the next request is answered, with the same
/// proxy.
async fn agent_accept_queue_full_is_retried_then_503(model: Model) {
    use nix::sys::socket::{bind, connect, listen, Backlog, UnixAddr};
    let dir = TempDir::new("backlog");
    let path = dir.path().join("agent.sock");
    let listener = stream_socket();
    let addr = UnixAddr::new(&path).expect("address");
    bind(listener.as_raw_fd(), &addr).expect("bind");
    listen(&listener, Backlog::new(0).expect("backlog 0")).expect("listen");
    // Fill the queue: connections nobody accepts, until the kernel says EAGAIN.
    let mut queued: Vec<OwnedFd> = Vec::new();
    let full = loop {
        let fd = stream_socket();
        match connect(fd.as_raw_fd(), &addr) {
            Ok(()) => queued.push(fd),
            Err(nix::errno::Errno::EAGAIN) => break true,
            Err(e) => panic!("filling the accept queue: {e}"),
        }
        if queued.len() > 64 {
            break false;
        }
    };
    assert!(
        full,
        "the accept queue fills with {} connections",
        queued.len()
    );

    // `timeout connect` far above the test's bound: the 503 comes from the retries running
    // out, not from the timeout.
    let p = model.start(&path, "127.0.0.1:0", &["--timeout-connect", "300"]);
    let r = tokio::time::timeout(BOUND, request(p.addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
        .await
        .expect("answered after the retries, not after timeout connect")
        .expect("an answer");
    assert_eq!(r.status, 503, "{}", r.text());

    // The agent accepts again (the queued connections were given up by their clients).
    drop(queued);
    let std_l = std::os::unix::net::UnixListener::from(listener);
    let mut tasks = JoinSet::new();
    let _ = serve(
        UnixListener::from_std(std_l).expect("register"),
        1,
        &mut tasks,
    );
    let r = request(p.addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("an answer");
    assert_eq!((r.status, r.text().as_str()), (200, "gen=1"));
}

/// The agent answers half a head and closes (a crash mid-answer): 502, as haproxy answers
/// a server that closes before its headers are complete; with pooled connections on, the
/// same proxy answers the next request with the agent's whole answer.
async fn agent_cutting_its_head_short_is_502_and_the_next_is_answered(model: Model) {
    let agent = StandIn::start(Behave::Canned);
    let p = model.start(&agent.path, "127.0.0.1:0", &["--agent-keepalive", "on"]);
    let get = "GET /x HTTP/1.1\r\nHost: x\r\n\r\n";
    for half in [
        &b"HTTP/1.1 200 OK\r\nContent-Le"[..],
        b"HTTP/1.1 20",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n",
    ] {
        agent.set_answer(half);
        let what = String::from_utf8_lossy(half);
        let r = request(p.addr, get)
            .await
            .unwrap_or_else(|| panic!("no answer to the VM after {what:?}"));
        assert_eq!(r.status, 502, "{what:?}");
    }
    agent.set_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let r = request(p.addr, get).await.expect("an answer");
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
}
