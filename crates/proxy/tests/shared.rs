//! The shared server (`--shared-server`, issue #20) through the real binary on loopback: the
//! test plays the spawner, opening listeners and handing them over on the control socket.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::socket::{
    bind, connect, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};
use ns_testkit::agent::{Behave, StandIn};
use ns_testkit::http::Blocking;
use ns_testkit::{bin_path, ChildGuard, TempDir};

const WAIT: Duration = Duration::from_secs(10);

/// The spawner's side of the control socket: a listening SOCK_SEQPACKET socket the server
/// inherits (CLOEXEC off), and connections to it.
struct ControlSocket {
    path: std::path::PathBuf,
    listener: OwnedFd,
}

impl ControlSocket {
    fn new(dir: &Path) -> ControlSocket {
        let path = dir.join("shared.sock");
        // No SOCK_CLOEXEC: the server process inherits it at this number.
        let listener = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::empty(),
            None,
        )
        .expect("socket");
        bind(
            listener.as_raw_fd(),
            &UnixAddr::new(&path).expect("unix addr"),
        )
        .expect("bind control socket");
        listen(&listener, Backlog::new(8).expect("backlog")).expect("listen");
        ControlSocket { path, listener }
    }

    fn connect(&self) -> Control {
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        connect(
            fd.as_raw_fd(),
            &UnixAddr::new(&self.path).expect("unix addr"),
        )
        .expect("connect control socket");
        let d = UnixDatagram::from(fd);
        d.set_read_timeout(Some(WAIT)).expect("timeout");
        Control(d)
    }
}

struct Control(UnixDatagram);

impl Control {
    fn ask(&self, msg: &str, fds: &[BorrowedFd<'_>]) -> String {
        ns_netns::send_fds(self.0.as_fd(), msg.as_bytes(), fds).expect("send");
        self.answer().0
    }

    fn answer(&self) -> (String, Vec<OwnedFd>) {
        let mut buf = [0u8; 1024];
        let (n, fds) = ns_netns::recv_fds(self.0.as_fd(), &mut buf).expect("answer");
        (String::from_utf8_lossy(&buf[..n]).into_owned(), fds)
    }
}

fn start_server(dir: &Path, control: &ControlSocket, agent: &Path, extra: &[&str]) -> ChildGuard {
    let child = Command::new(bin_path("ns-metadata-proxy"))
        .arg("--shared-server")
        .arg(dir)
        .args(["--control-fd", &control.listener.as_raw_fd().to_string()])
        .arg("--metadata-proxy-socket")
        .arg(agent)
        .args(extra)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn shared server");
    ChildGuard(child)
}

fn loopback_listener() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback")
}

fn get(addr: std::net::SocketAddr) -> Option<String> {
    let mut c = Blocking::tcp(addr, WAIT).ok()?;
    c.send(
        b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n",
    )
    .ok()?;
    c.read(false, WAIT).map(|r| r.text())
}

#[test]
fn namespaces_handed_over_are_served_with_their_own_id() {
    let dir = TempDir::new("shared");
    let agent = StandIn::start(Behave::Headers);
    let control = ControlSocket::new(dir.path());
    let _server = start_server(dir.path(), &control, agent.path(), &[]);
    let c = control.connect();

    let (a, b) = (loopback_listener(), loopback_listener());
    let (addr_a, addr_b) = (a.local_addr().expect("a"), b.local_addr().expect("b"));
    assert_eq!(c.ask("add router r-a qrouter-r-a", &[a.as_fd()]), "ok");
    assert_eq!(c.ask("add network n-b qdhcp-n-b", &[b.as_fd()]), "ok");
    // The same sockets again (a restarted spawner hands everything over): a no-op.
    assert_eq!(c.ask("add router r-a qrouter-r-a", &[a.as_fd()]), "ok");

    let body_a = get(addr_a).expect("answer through r-a");
    assert!(body_a.contains("router=r-a network=-"), "{body_a}");
    assert!(body_a.contains("xff=127.0.0.1"), "{body_a}");
    let body_b = get(addr_b).expect("answer through n-b");
    assert!(body_b.contains("router=- network=n-b"), "{body_b}");

    // `list` gives every socket back, tagged.
    ns_netns::send_fds(c.0.as_fd(), b"list", &[]).expect("list");
    let mut have = Vec::new();
    loop {
        let (line, fds) = c.answer();
        if line.starts_with("end ") {
            assert_eq!(line, "end 2");
            break;
        }
        assert_eq!(fds.len(), 1, "{line}");
        let l = std::net::TcpListener::from(fds.into_iter().next().expect("fd"));
        have.push((line, l.local_addr().expect("addr")));
    }
    have.sort();
    assert_eq!(
        have,
        vec![
            ("have network n-b qdhcp-n-b".to_owned(), addr_b),
            ("have router r-a qrouter-r-a".to_owned(), addr_a),
        ]
    );

    // Removed, and the spawner's copy closed: nothing listens there any more.
    assert_eq!(c.ask("remove router r-a", &[]), "ok");
    drop(a);
    drop(have);
    let refused = ns_testkit::wait_until(WAIT, || std::net::TcpStream::connect(addr_a).is_err());
    assert!(refused, "r-a's port still accepts after remove");
    assert!(get(addr_b).is_some_and(|t| t.contains("network=n-b")));
}

#[test]
fn bad_requests_get_an_error_and_change_nothing() {
    let dir = TempDir::new("shared-bad");
    let agent = StandIn::start(Behave::Headers);
    let control = ControlSocket::new(dir.path());
    let _server = start_server(dir.path(), &control, agent.path(), &[]);
    let c = control.connect();
    let l = loopback_listener();
    let (r, w) = std::os::unix::net::UnixStream::pair().expect("pair");
    for (msg, fds, why) in [
        (
            "add router r-1 qrouter-r-1",
            vec![],
            "at least one listener",
        ),
        (
            "add router r-1 qrouter-r-1",
            vec![r.as_fd()],
            "listening TCP socket",
        ),
        ("add router r/1 qrouter-r-1", vec![l.as_fd()], "r/1"),
        ("add vpc r-1 qrouter-r-1", vec![l.as_fd()], "unknown kind"),
        ("remove router r-1", vec![], "not served"),
        ("remove router r-1", vec![l.as_fd()], "no descriptors"),
        ("hello", vec![], "expected"),
    ] {
        let answer = c.ask(msg, &fds);
        assert!(
            answer.starts_with("error ") && answer.contains(why),
            "{msg}: {answer}"
        );
    }
    drop(w);
    ns_netns::send_fds(c.0.as_fd(), b"list", &[]).expect("list");
    assert_eq!(c.answer().0, "end 0");
}

#[test]
fn one_namespace_at_its_limit_does_not_starve_another() {
    let dir = TempDir::new("shared-fair");
    let agent = StandIn::start(Behave::Headers);
    let control = ControlSocket::new(dir.path());
    let _server = start_server(
        dir.path(),
        &control,
        agent.path(),
        &["--max-connections", "2"],
    );
    let c = control.connect();
    let (busy, quiet) = (loopback_listener(), loopback_listener());
    assert_eq!(c.ask("add router busy qrouter-busy", &[busy.as_fd()]), "ok");
    assert_eq!(
        c.ask("add router quiet qrouter-quiet", &[quiet.as_fd()]),
        "ok"
    );
    // The busy router's VMs hold every connection it may serve (a request head never
    // finished), and more wait behind them.
    let addr = busy.local_addr().expect("addr");
    let held: Vec<_> = (0..6)
        .map(|_| {
            let mut s = Blocking::tcp(addr, WAIT).expect("connect busy");
            s.send(b"GET / HTTP/1.1\r\n").expect("partial head");
            s
        })
        .collect();
    let body = get(quiet.local_addr().expect("addr")).expect("quiet router answered");
    assert!(body.contains("router=quiet"), "{body}");
    drop(held);
    // And the busy one recovers once its connections are gone.
    assert!(get(addr).is_some_and(|t| t.contains("router=busy")));
}

#[test]
fn a_killed_server_loses_no_waiting_connection() {
    let dir = TempDir::new("shared-kill");
    let agent = StandIn::start(Behave::Headers);
    let control = ControlSocket::new(dir.path());
    let mut server = start_server(dir.path(), &control, agent.path(), &[]);
    let l = loopback_listener();
    let addr = l.local_addr().expect("addr");
    assert_eq!(
        control
            .connect()
            .ask("add router r-k qrouter-r-k", &[l.as_fd()]),
        "ok"
    );
    assert!(get(addr).is_some_and(|t| t.contains("router=r-k")));

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    let _ = server.0.wait();
    // While no server runs, the kernel still completes connections into the accept queue
    // of the socket we (the spawner) kept: a VM sees a slow answer, not a refusal.
    let waiting: Vec<_> = (0..3)
        .map(|_| std::thread::spawn(move || get(addr)))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let _server2 = start_server(dir.path(), &control, agent.path(), &[]);
    assert_eq!(
        control
            .connect()
            .ask("add router r-k qrouter-r-k", &[l.as_fd()]),
        "ok"
    );
    for w in waiting {
        let body = w
            .join()
            .expect("thread")
            .expect("answered after the restart");
        assert!(body.contains("router=r-k"), "{body}");
    }
}

#[test]
fn options_for_one_namespace_are_refused_with_the_shared_server() {
    let dir = TempDir::new("shared-opts");
    let control = ControlSocket::new(dir.path());
    for extra in [
        &["--router-id", "r-1"][..],
        &["--netns", "qrouter-r-1"],
        &["--bind", "127.0.0.1:9"],
        &["--daemonize"],
        &["--stats-fd", "5"],
    ] {
        let out = Command::new(bin_path("ns-metadata-proxy"))
            .arg("--shared-server")
            .arg(dir.path())
            .args(["--control-fd", &control.listener.as_raw_fd().to_string()])
            .args(extra)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains("--shared-server"), "{extra:?}: {err}");
    }
    // A control fd that is not a listening SOCK_SEQPACKET socket.
    let out = Command::new(bin_path("ns-metadata-proxy"))
        .arg("--shared-server")
        .arg(dir.path())
        .args(["--control-fd", "0"])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--control-fd 0"),
        "{err}"
    );
}

/// A statistics block as the spawner makes one: a page of zeros with the magic first.
fn stats_block(dir: &Path, name: &str, magic: u64) -> std::fs::File {
    use ns_contract::proxy_stats::BLOCK_SIZE;
    let p = dir.join(name);
    let mut page = vec![0u8; BLOCK_SIZE];
    page[..8].copy_from_slice(&magic.to_le_bytes());
    std::fs::write(&p, page).expect("write block");
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .expect("open block")
}

#[test]
fn a_namespace_handed_over_with_its_block_counts_its_answers_into_it() {
    use ns_contract::proxy_stats as layout;
    let dir = TempDir::new("shared-stats");
    let agent = StandIn::start(Behave::Headers);
    let control = ControlSocket::new(dir.path());
    let _server = start_server(dir.path(), &control, agent.path(), &[]);
    let c = control.connect();

    // Refused like a bad `--stats-fd`: the reason named, nothing served.
    let l = loopback_listener();
    let bad = stats_block(dir.path(), "bad.stats", 7);
    let a = c.ask(
        "add router r-s qrouter-r-s stats=1",
        &[l.as_fd(), bad.as_fd()],
    );
    assert!(a.starts_with("error ") && a.contains("magic"), "{a}");
    let a = c.ask("add router r-s qrouter-r-s stats=1", &[l.as_fd()]);
    assert!(
        a.starts_with("error ") && a.contains("statistics block"),
        "{a}"
    );
    let a = c.ask(
        "add router r-s qrouter-r-s stats=1",
        &[l.as_fd(), l.as_fd()],
    );
    assert!(a.starts_with("error ") && a.contains("regular file"), "{a}");

    // A block with a stale open-connections gauge: zeroed when first served.
    let block = stats_block(dir.path(), "r-s.stats", layout::MAGIC);
    let read = ns_netns::SharedCounters::map(&block, layout::SLOTS).expect("map");
    read.store(layout::SLOT_CONN_OPEN, 5);
    let addr = l.local_addr().expect("addr");
    assert_eq!(
        c.ask(
            "add router r-s qrouter-r-s stats=1",
            &[l.as_fd(), block.as_fd()]
        ),
        "ok"
    );
    for _ in 0..3 {
        assert!(get(addr).expect("answer").contains("router=r-s"));
    }
    let mut bad_req = Blocking::tcp(addr, WAIT).expect("connect");
    bad_req.send(b"NOT HTTP\r\n\r\n").expect("send");
    assert_eq!(bad_req.read(false, WAIT).expect("answer").status, 400);
    drop(bad_req);
    // Counted by the connection task after the answer is written: polled, not slept on.
    ns_testkit::eventually("counted", WAIT, || {
        (read.load(layout::class_slot(400)) == 1 && read.load(layout::SLOT_CONN_OPEN) == 0)
            .then_some(())
    });
    assert_eq!(read.load(layout::class_slot(200)), 3);
    assert_eq!(read.load(layout::error_slot(400).expect("400")), 1);
    assert_eq!(read.load(layout::SLOT_CONN_ACCEPTED), 4);
}

/// A slab as the spawner makes one: sparse, the slab's magic and capacity in record 0.
fn stats_slab(dir: &Path, name: &str) -> std::fs::File {
    use ns_contract::proxy_stats as layout;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(dir.join(name))
        .expect("create slab");
    f.set_len(layout::SLAB_SIZE as u64).expect("size");
    let m = ns_netns::SharedCounters::map(&f, 2).expect("map");
    m.store(0, layout::SLAB_MAGIC);
    m.store(layout::SLAB_SLOT_CAPACITY, layout::SLAB_RECORDS as u64);
    f
}

#[test]
fn namespaces_count_into_their_records_of_the_slab_handed_over_once() {
    use ns_contract::proxy_stats as layout;
    use ns_metadata_proxy::shared::{batch_message, BatchItem, StatsRef};
    let dir = TempDir::new("shared-slab");
    let agent = StandIn::start(Behave::Headers);
    let control = ControlSocket::new(dir.path());
    let _server = start_server(dir.path(), &control, agent.path(), &[]);
    let c = control.connect();
    let l1 = loopback_listener();
    let l2 = loopback_listener();

    // A record before any slab, a bad slab, a slab with no descriptor: refused, said why.
    let a = c.ask("add router r-1 qrouter-r-1 stats=@1", &[l1.as_fd()]);
    assert!(
        a.starts_with("error ") && a.contains("no statistics slab"),
        "{a}"
    );
    let block = stats_block(dir.path(), "r.stats", layout::MAGIC);
    let a = c.ask("stats-slab", &[block.as_fd()]);
    assert!(a.starts_with("error ") && a.contains("4096 bytes"), "{a}");
    let a = c.ask("stats-slab", &[]);
    assert!(
        a.starts_with("error ") && a.contains("one descriptor"),
        "{a}"
    );

    let slab = stats_slab(dir.path(), "shared.slab");
    assert_eq!(c.ask("stats-slab", &[slab.as_fd()]), "ok");
    let all = ns_netns::SharedCounters::map(&slab, layout::SLAB_SIZE / 8).expect("map");
    let at = |r: usize, slot: usize| r * layout::RECORD_SLOTS + slot;
    // A record not in use, or past the end: refused.
    let a = c.ask("add router r-1 qrouter-r-1 stats=@1", &[l1.as_fd()]);
    assert!(a.starts_with("error ") && a.contains("not in use"), "{a}");
    let a = c.ask("add router r-1 qrouter-r-1 stats=@16384", &[l1.as_fd()]);
    assert!(a.starts_with("error ") && a.contains("record 16384"), "{a}");

    // Two namespaces, records 1 and 2 (a stale gauge zeroed when first served).
    all.store(at(1, 0), layout::MAGIC);
    all.store(at(2, 0), layout::MAGIC);
    all.store(at(2, layout::SLOT_CONN_OPEN), 5);
    assert_eq!(
        c.ask("add router r-1 qrouter-r-1 stats=@1", &[l1.as_fd()]),
        "ok"
    );
    let item = BatchItem {
        resource: ns_contract::Resource::new(ns_contract::Kind::Router, "r-2").expect("id"),
        netns: "qrouter-r-2".into(),
        listeners: 1,
        stats: StatsRef::Record(2),
    };
    assert_eq!(c.ask(&batch_message(&[item]), &[l2.as_fd()]), "ok 1");
    let (a1, a2) = (
        l1.local_addr().expect("addr"),
        l2.local_addr().expect("addr"),
    );
    for _ in 0..3 {
        assert!(get(a1).expect("answer").contains("router=r-1"));
    }
    assert!(get(a2).expect("answer").contains("router=r-2"));
    ns_testkit::eventually("counted", WAIT, || {
        (all.load(at(1, layout::class_slot(200))) == 3
            && all.load(at(2, layout::class_slot(200))) == 1
            && all.load(at(2, layout::SLOT_CONN_OPEN)) == 0)
            .then_some(())
    });
    assert_eq!(all.load(at(1, layout::SLOT_CONN_ACCEPTED)), 3);
    assert_eq!(
        all.load(layout::class_slot(200)),
        0,
        "the header is nobody's"
    );
    // The same sockets and record again: a no-op, counting goes on in the same place.
    assert_eq!(
        c.ask("add router r-1 qrouter-r-1 stats=@1", &[l1.as_fd()]),
        "ok"
    );
    assert!(get(a1).expect("answer").contains("router=r-1"));
    ns_testkit::eventually("counted on", WAIT, || {
        (all.load(at(1, layout::class_slot(200))) == 4).then_some(())
    });
}

#[test]
fn a_batch_serves_many_namespaces_in_one_message_and_names_what_it_refused() {
    use ns_metadata_proxy::shared::{batch_message, BatchItem};
    let dir = TempDir::new("shared-batch");
    let agent = StandIn::start(Behave::Headers);
    let control = ControlSocket::new(dir.path());
    let _server = start_server(dir.path(), &control, agent.path(), &[]);
    let c = control.connect();
    let item = |i: usize| BatchItem {
        resource: ns_contract::Resource::new(ns_contract::Kind::Router, format!("r-{i}"))
            .expect("id"),
        netns: format!("qrouter-r-{i}"),
        listeners: 1,
        stats: ns_metadata_proxy::shared::StatsRef::None,
    };
    let listeners: Vec<_> = (0..100).map(|_| loopback_listener()).collect();
    let items: Vec<_> = (0..100).map(item).collect();
    // Line 7 gets a socket that is not listening: refused alone, named in the answer.
    let (not_listening, _peer) = std::os::unix::net::UnixStream::pair().expect("pair");
    let mut fds: Vec<BorrowedFd<'_>> = listeners.iter().map(AsFd::as_fd).collect();
    fds[7] = not_listening.as_fd();

    // Descriptors that do not add up: the whole batch refused, nothing served.
    let a = c.ask(&batch_message(&items), &fds[..99]);
    assert!(
        a.starts_with("error ") && a.contains("99 descriptors"),
        "{a}"
    );
    ns_netns::send_fds(c.0.as_fd(), b"list", &[]).expect("list");
    assert_eq!(c.answer().0, "end 0");

    let a = c.ask(&batch_message(&items), &fds);
    let mut lines = a.lines();
    assert_eq!(lines.next(), Some("refused 1 of 100"), "{a}");
    let line = lines.next().expect("the refused line");
    assert!(
        line.starts_with("router r-7 ") && line.contains("listening TCP socket"),
        "{line}"
    );
    assert_eq!(lines.next(), None);
    for i in [0, 6, 8, 99] {
        let body = get(listeners[i].local_addr().expect("addr")).expect("answered");
        assert!(body.contains(&format!("router=r-{i} ")), "{body}");
    }
    // The same batch again (a restarted spawner): a no-op but for the line now right.
    fds[7] = listeners[7].as_fd();
    assert_eq!(c.ask(&batch_message(&items), &fds), "ok 100");
    assert!(
        get(listeners[7].local_addr().expect("addr")).is_some_and(|t| t.contains("router=r-7 "))
    );
    ns_netns::send_fds(c.0.as_fd(), b"list", &[]).expect("list");
    let mut n = 0;
    while !c.answer().0.starts_with("end ") {
        n += 1;
    }
    assert_eq!(n, 100);
    // Other sockets for a namespace served: they replace its old ones.
    let other = loopback_listener();
    assert_eq!(c.ask("add router r-0 qrouter-r-0", &[other.as_fd()]), "ok");
    assert!(get(other.local_addr().expect("addr")).is_some_and(|t| t.contains("router=r-0 ")));
}

/// Issue #13 for the shared model: a local user who reaches the control socket (here it is
/// made reachable on purpose: a state dir left 0755 and a socket 0777) and hands the server
/// a listener of their own tagged with another tenant's router id gets nothing: the server
/// checks its peer (`SO_PEERCRED`: root or its own starting uid only) and closes the
/// connection unanswered, so no request to that listener would ever carry
/// `X-Neutron-Router-ID: r-victim`.
#[test]
fn a_local_user_cannot_hand_the_server_a_socket_under_another_routers_id() {
    use std::os::unix::fs::PermissionsExt as _;
    if !ns_testkit::require_root(
        "a_local_user_cannot_hand_the_server_a_socket_under_another_routers_id",
    ) {
        return;
    }
    let dir = TempDir::new("shared-peer");
    let agent = StandIn::start(Behave::Headers);
    let control = ControlSocket::new(dir.path());
    let open = |p: &Path, mode| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    open(dir.path(), 0o755);
    open(&control.path, 0o777);
    let _server = start_server(dir.path(), &control, agent.path(), &[]);
    // As uid nobody: a listener of its own, handed over as router r-victim's.
    const THIEF: &str = r#"
import socket, sys
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect(sys.argv[1])
s.settimeout(10)
try:
    socket.send_fds(s, [b"add router r-victim qrouter-r-victim"], [l.fileno()])
    a = s.recv(1024)
    print("answered " + a.decode() if a else "closed")
except OSError as e:
    print("closed " + str(e))
"#;
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        // The system python: a per-user one (pyenv under /root) is not nobody's to run.
        .args(["/usr/bin/python3", "-c", THIEF])
        .arg(&control.path)
        .stderr(Stdio::inherit())
        .output()
        .expect("run python3 as nobody");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.starts_with("closed"), "nobody's add: {said}");
    // Nothing was added under r-victim.
    let c = control.connect();
    ns_netns::send_fds(c.0.as_fd(), b"list", &[]).expect("list");
    assert_eq!(c.answer().0, "end 0");
}
