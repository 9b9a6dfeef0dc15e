//! Who owns the socket path across restarts: an agent that is still serving keeps it (a second
//! one refuses to start, one line, exit 1), and an exiting agent never removes the socket a
//! successor bound while it was finishing its last requests.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use ns_metadata_agent::AnswererKind;
use ns_testkit::{wait_until_async, ChildGuard, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_ns-metadata-agent");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_refuses_while_the_first_serves() {
    let dir = TempDir::new("owner-busy");
    let first = start(config(&dir, INVENTORY)).await;
    let mut second = ChildGuard(
        Command::new(BIN)
            .arg("--metadata-proxy-socket")
            .arg(&first.socket)
            .arg("--inventory-file")
            .arg(&first.inventory)
            .stderr(Stdio::piped())
            .spawn()
            .expect("run agent"),
    );
    // Bounded, so a regression (the second agent taking over and serving) fails, not hangs.
    let status = ns_testkit::poll(Duration::from_secs(10), || {
        second.0.try_wait().ok().flatten()
    })
    .expect("the second agent exits at once");
    assert_eq!(status.code(), Some(1));
    let mut err = String::new();
    if let Some(mut e) = second.0.stderr.take() {
        e.read_to_string(&mut err).expect("read stderr");
    }
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains(&format!(
            "{}: another agent is serving this socket",
            first.socket.display()
        )),
        "{err}"
    );
    // The first agent still answers on its socket.
    let r = ask(
        &first.socket,
        get(
            "/openstack/latest/meta_data.json",
            "10.250.41.2",
            "X-Neutron-Network-ID",
            "n1",
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    first.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exiting_agent_leaves_its_successors_socket() {
    // The first agent forwards to a "Nova" the test controls, so one request stays in flight
    // through its shutdown grace, as a restart under load would.
    let nova = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind nova");
    let dir = TempDir::new("owner-overlap");
    let mut cfg = config(&dir, INVENTORY);
    cfg.answerer = AnswererKind::Nova;
    cfg.nova_metadata_host = "127.0.0.1".into();
    cfg.nova_metadata_port = nova.local_addr().expect("addr").port();
    cfg.metadata_proxy_shared_secret = "k".into();
    let first = start(cfg.clone()).await;
    let socket = first.socket.clone();
    let pending = tokio::spawn({
        let socket = socket.clone();
        async move {
            ns_testkit::http::request_unix(
                &socket,
                get("/openstack", "10.250.41.2", "X-Neutron-Network-ID", "n1"),
            )
            .await
        }
    });
    let (held, _) = tokio::time::timeout(Duration::from_secs(10), nova.accept())
        .await
        .expect("the request reaches nova")
        .expect("accept");

    // SIGTERM: the first stops accepting but waits for its request.
    let stopping = tokio::spawn(first.stop());
    assert!(
        wait_until_async(Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&socket).is_err()
        })
        .await,
        "the first agent stopped accepting"
    );

    // The successor finds a socket nobody answers on, replaces it and serves.
    let mut next = config(&dir, INVENTORY);
    next.metadata_proxy_socket = socket.clone();
    let second = start(next).await;

    // The first agent's last request ends; it exits.
    drop(held);
    let _ = pending.await;
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("the first agent exits")
        .expect("stop task");

    assert!(
        socket.exists(),
        "the first agent removed its successor's socket"
    );
    let r = ask(
        &socket,
        get(
            "/openstack/latest/meta_data.json",
            "10.250.41.2",
            "X-Neutron-Network-ID",
            "n1",
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    second.stop().await;
    assert!(!socket.exists(), "the second agent removes its own socket");
}
