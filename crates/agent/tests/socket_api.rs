//! The agent over its Unix socket, as a proxy sees it: identity header rules, 404s,
//! requests split over reads, keep-alive and its signal, the built-in responder, IMDSv2,
//! inventory reloads and the lookup cache.

mod common;

use std::time::Duration;

use common::*;
use ns_testkit::http::Conn;
use ns_testkit::TempDir;
use tokio::io::AsyncWriteExt;

const NET: &str = "X-Neutron-Network-ID";
const ROUTER: &str = "X-Neutron-Router-ID";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_are_checked() {
    let dir = TempDir::new("ids");
    let agent = start(config(&dir, INVENTORY)).await;
    let s = &agent.socket;

    let both = "GET /latest/meta-data/ HTTP/1.1\r\nX-Forwarded-For: 10.250.41.2\r\nX-Neutron-Network-ID: n1\r\nX-Neutron-Router-ID: r1\r\n\r\n";
    let r = ask(s, both).await;
    assert_eq!(r.status, 400);
    assert!(
        r.text().contains("Both network n1 and router r1 defined."),
        "{}",
        r.text()
    );

    let neither = "GET /latest/meta-data/ HTTP/1.1\r\nX-Forwarded-For: 10.250.41.2\r\n\r\n";
    assert_eq!(ask(s, neither).await.status, 400);

    let no_xff = "GET /latest/meta-data/ HTTP/1.1\r\nX-Neutron-Network-ID: n1\r\n\r\n";
    let r = ask(s, no_xff).await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("X-Forwarded-For is missing"));

    assert_eq!(
        ask(s, &get("/", "10.250.41.2, 10.0.0.9", NET, "n1"))
            .await
            .status,
        400
    );
    assert_eq!(ask(s, &get("/", "vm1", NET, "n1")).await.status, 400);
    let twice = "GET / HTTP/1.1\r\nX-Forwarded-For: 10.250.41.2\r\nX-Forwarded-For: 10.250.41.2\r\nX-Neutron-Network-ID: n1\r\n\r\n";
    assert_eq!(ask(s, twice).await.status, 400);
    // Not HTTP at all: hyper answers 400 and the agent keeps running.
    assert_eq!(ask(s, "\x16\x03\x01garbage\r\n\r\n").await.status, 400);
    assert_eq!(
        ask(
            s,
            &get("/latest/meta-data/hostname", "10.250.41.2", NET, "n1")
        )
        .await
        .status,
        200
    );
    agent.stop().await;
    assert!(!dir.join("agent.sock").exists(), "socket removed on stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_names_network_or_router_and_ip() {
    let dir = TempDir::new("404");
    let agent = start(config(&dir, INVENTORY)).await;
    let r = ask(&agent.socket, &get("/", "10.250.41.99", NET, "n1")).await;
    assert_eq!(r.status, 404);
    assert!(
        r.text()
            .contains("Instance was not found on network n1 for IP 10.250.41.99."),
        "{}",
        r.text()
    );
    let r = ask(&agent.socket, &get("/", "10.250.42.2", ROUTER, "r-other")).await;
    assert_eq!(r.status, 404);
    assert!(
        r.text().contains("router r-other for IP 10.250.42.2"),
        "{}",
        r.text()
    );
    // The right VM on the wrong network is not found either.
    assert_eq!(
        ask(&agent.socket, &get("/", "10.250.42.2", NET, "n1"))
            .await
            .status,
        404
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_answers_through_router_and_network() {
    let dir = TempDir::new("builtin");
    let agent = start(config(&dir, INVENTORY)).await;
    let s = &agent.socket;
    let r = ask(
        s,
        &get("/latest/meta-data/instance-id", "10.250.42.2", ROUTER, "r1"),
    )
    .await;
    assert_eq!((r.status, r.text().starts_with("i-")), (200, true));
    // v4-mapped IPv6 in X-Forwarded-For is read as IPv4 (haproxy on a dual-stack socket).
    let r = ask(
        s,
        &get(
            "/openstack/latest/meta_data.json",
            "::ffff:10.250.41.2",
            ROUTER,
            "r1",
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    let md: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(md["uuid"], "vm-uuid-1");
    assert_eq!(
        md["public_keys"]["demo"],
        "ssh-ed25519 AAAAC3Nz demo@example"
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    // Link-local IPv6 clients are found by the MAC in their EUI-64 address (LP#1460177).
    let r = ask(
        s,
        &get(
            "/openstack/latest/user_data",
            "fe80::f816:3eff:fe00:2",
            NET,
            "n1",
        ),
    )
    .await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "#cloud-config\nfqdn: vm1.example\n")
    );
    let r = ask(
        s,
        &get("/openstack/latest/user_data", "10.250.42.2", NET, "n2"),
    )
    .await;
    assert_eq!(r.status, 404, "vm2 has no user data");
    let r = ask(s, &get("/nowhere/at/all", "10.250.41.2", NET, "n1")).await;
    assert_eq!(r.status, 404);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_split_over_several_reads() {
    let dir = TempDir::new("split");
    let agent = start(config(&dir, INVENTORY)).await;
    let mut s = Conn::unix(&agent.socket).await;
    let body = "secret-password";
    let req = format!(
        "POST /openstack/latest/password HTTP/1.1\r\nX-Forwarded-For: 10.250.41.2\r\nX-Neutron-Network-ID: n1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    for piece in req.as_bytes().chunks(7) {
        s.stream.write_all(piece).await.expect("write");
        s.stream.flush().await.expect("flush");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let r = s.read(false).await.expect("reply");
    assert_eq!(r.status, 200);
    let r = ask(
        &agent.socket,
        &get("/openstack/latest/password", "10.250.41.2", NET, "n1"),
    )
    .await;
    assert_eq!(r.text(), body, "the whole body arrived");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_on_signals_and_reuses_the_connection() {
    let dir = TempDir::new("ka");
    let mut cfg = config(&dir, INVENTORY);
    cfg.keepalive_idle_timeout = Duration::from_secs(1);
    let agent = start(cfg).await;
    let mut s = Conn::unix(&agent.socket).await;
    for path in [
        "/latest/meta-data/hostname",
        "/nothing",
        "/openstack/latest/meta_data.json",
    ] {
        s.send(get(path, "10.250.41.2", NET, "n1").as_bytes()).await;
        let r = s.read(false).await.expect("reply on the same connection");
        assert_eq!(r.header("x-ns-metadata-keepalive"), Some("1"), "{path}");
    }
    // Errors carry the signal too, so a proxy in auto mode learns from any answer.
    let r = ask(&agent.socket, "GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(
        (r.status, r.header("x-ns-metadata-keepalive")),
        (400, Some("1"))
    );
    // Idle longer than the advertised time: the agent closes the connection.
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read(false)).await;
    assert!(
        matches!(closed, Ok(None)),
        "idle connection closed by the agent"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_off_is_one_request_per_connection() {
    let dir = TempDir::new("noka");
    let mut cfg = config(&dir, INVENTORY);
    cfg.keepalive = false;
    let agent = start(cfg).await;
    let mut s = Conn::unix(&agent.socket).await;
    s.send(get("/latest/meta-data/hostname", "10.250.41.2", NET, "n1").as_bytes())
        .await;
    let r = s.read(false).await.expect("reply");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ns-metadata-keepalive"), None);
    // The agent may already have closed: a failed write is the same answer as no answer.
    let _ = s
        .stream
        .write_all(get("/latest/meta-data/hostname", "10.250.41.2", NET, "n1").as_bytes())
        .await;
    assert!(
        s.read(false).await.is_none(),
        "a second request on the connection gets no answer"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_v2_over_the_socket() {
    let dir = TempDir::new("imds");
    let mut cfg = config(&dir, INVENTORY);
    cfg.imds_require_token = true;
    let agent = start(cfg).await;
    let s = &agent.socket;
    assert_eq!(
        ask(
            s,
            &get("/latest/meta-data/instance-id", "10.250.41.2", NET, "n1")
        )
        .await
        .status,
        401
    );
    let put = "PUT /latest/api/token HTTP/1.1\r\nX-Forwarded-For: 10.250.41.2\r\nX-Neutron-Network-ID: n1\r\nX-aws-ec2-metadata-token-ttl-seconds: 30\r\nContent-Length: 0\r\n\r\n";
    let r = ask(s, put).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-aws-ec2-metadata-token-ttl-seconds"), Some("30"));
    let token = r.text();
    let with = |t: &str| {
        format!("GET /latest/meta-data/hostname HTTP/1.1\r\nX-Forwarded-For: 10.250.41.2\r\nX-Neutron-Network-ID: n1\r\nX-aws-ec2-metadata-token: {t}\r\n\r\n")
    };
    let r = ask(s, &with(&token)).await;
    assert_eq!((r.status, r.text().as_str()), (200, "vm1.novalocal"));
    assert_eq!(ask(s, &with("not-a-token")).await.status, 401);
    // vm2 cannot use vm1's token.
    let other = with(&token)
        .replace("10.250.41.2", "10.250.42.2")
        .replace("n1", "n2");
    assert_eq!(ask(s, &other).await.status, 401);
    agent.stop().await;
}

const MOVED: &str = r#"{
  "ports": [{"id": "x", "network_id": "n1", "device_id": "vm-new", "project_id": "p9",
             "fixed_ips": [{"ip_address": "10.250.41.2"}]}],
  "instances": [{"uuid": "vm-new", "hostname": "newvm", "project_id": "p9"}]
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_reload_keeps_last_good_and_cache_follows() {
    let dir = TempDir::new("reload");
    let mut cfg = config(&dir, INVENTORY);
    // A long TTL: the cache must still never answer from an older inventory.
    cfg.cache_ttl = Duration::from_secs(3600);
    let agent = start(cfg).await;
    let hostname = || get("/latest/meta-data/hostname", "10.250.41.2", NET, "n1");
    assert_eq!(
        ask(&agent.socket, &hostname()).await.text(),
        "vm1.novalocal"
    );

    write_atomic(&agent.inventory, MOVED);
    let mut last = String::new();
    let socket = agent.socket.clone();
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < end {
        last = ask(&socket, &hostname()).await.text();
        if last == "newvm.novalocal" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        last, "newvm.novalocal",
        "good change applied despite the cached answer"
    );

    // A broken file is refused; the last good inventory keeps answering.
    write_atomic(&agent.inventory, "{\"ports\": [ oops");
    tokio::time::sleep(Duration::from_millis(400)).await; // several poll periods; nothing may change
    assert_eq!(
        ask(&agent.socket, &hostname()).await.text(),
        "newvm.novalocal"
    );
    let r = ask(&agent.socket, &get("/", "10.250.42.2", NET, "n2")).await;
    assert_eq!(
        r.status, 404,
        "still the last good inventory, which has no vm2"
    );

    // Back to the original: the same cached key flips back.
    write_atomic(&agent.inventory, INVENTORY);
    let ok = {
        let end = std::time::Instant::now() + Duration::from_secs(10);
        let mut ok = false;
        while std::time::Instant::now() < end && !ok {
            ok = ask(&socket, &hostname()).await.text() == "vm1.novalocal";
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ok
    };
    assert!(ok, "reverted inventory applied");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_an_answer_and_breaks_nothing() {
    let dir = TempDir::new("hostile");
    let agent = start(config(&dir, INVENTORY)).await;
    let s = &agent.socket;
    let big = "x".repeat(70 * 1024);
    let body = format!(
        "POST /openstack/latest/password HTTP/1.1\r\nX-Forwarded-For: 10.250.41.2\r\nX-Neutron-Network-ID: n1\r\nContent-Length: {}\r\n\r\n{big}",
        big.len()
    );
    assert_eq!(ask(s, &body).await.status, 413);
    let huge_header = format!("GET / HTTP/1.1\r\nX-Junk: {big}\r\n\r\n");
    let r = ask(s, &huge_header).await;
    assert!(r.status == 431 || r.status == 400, "{}", r.status);
    for junk in [
        "GET\r\n\r\n",
        "GET / HTTP/9.9\r\n\r\n",
        "GET /\0 HTTP/1.1\r\n\r\n",
        "HELLO WORLD\r\n\r\n",
    ] {
        let mut c = Conn::unix(s).await;
        c.send(junk.as_bytes()).await;
        // Either a 4xx or a close: never a hang, never a crash.
        if let Some(r) = c.read(false).await {
            assert!((400..500).contains(&r.status), "{junk:?} -> {}", r.status);
        }
    }
    let r = ask(
        s,
        &get("/openstack/latest/meta_data.json", "10.250.41.2", NET, "n1"),
    )
    .await;
    assert_eq!(r.status, 200, "still serving");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_the_oldest_idle_connection_makes_room() {
    let dir = TempDir::new("cap");
    let mut cfg = config(&dir, INVENTORY);
    cfg.metadata_max_connections = 2;
    let agent = start(cfg).await;
    let req = get("/openstack", "10.250.41.2", "X-Neutron-Network-ID", "n1");

    // Two pooled connections, each idle after one answer; the first is the older.
    let mut pooled = Vec::new();
    for _ in 0..2 {
        let mut c = Conn::unix(&agent.socket).await;
        c.send(req.as_bytes()).await;
        assert_eq!(c.read(false).await.expect("answer").status, 200);
        pooled.push(c);
    }
    // A newcomer is answered at once (not after the 60 s idle time) ...
    let mut third = Conn::unix(&agent.socket).await;
    third.send(req.as_bytes()).await;
    let r = tokio::time::timeout(Duration::from_secs(5), third.read(false))
        .await
        .expect("the newcomer is served without waiting for an idle timeout")
        .expect("answer");
    assert_eq!(r.status, 200);
    // ... because the oldest idle connection was closed; the younger one still serves.
    assert!(pooled[0].closed().await, "oldest idle connection closed");
    pooled[1].send(req.as_bytes()).await;
    assert_eq!(pooled[1].read(false).await.expect("answer").status, 200);

    // With every connection busy or not yet used, a newcomer waits for room instead of
    // taking a connection a proxy just opened, and is served as soon as one closes.
    drop(pooled);
    let fresh = Conn::unix(&agent.socket).await;
    let mut waiting = Conn::unix(&agent.socket).await;
    waiting.send(req.as_bytes()).await;
    drop(fresh);
    let r = tokio::time::timeout(Duration::from_secs(5), waiting.read(false))
        .await
        .expect("served once a slot frees")
        .expect("answer");
    assert_eq!(r.status, 200);
    drop(third);
    agent.stop().await;
}

/// A client that shuts its writing side down right after its request (an operator's
/// `nc -N` or `socat` probe) is answered, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_followed_by_a_half_close_is_answered() {
    use tokio::io::AsyncReadExt;
    let dir = TempDir::new("half-close");
    let agent = start(config(&dir, INVENTORY)).await;
    for _ in 0..8 {
        let mut c = tokio::net::UnixStream::connect(&agent.socket)
            .await
            .expect("connect");
        c.write_all(get("/latest/meta-data/hostname", "10.250.41.2", NET, "n1").as_bytes())
            .await
            .expect("write");
        c.shutdown().await.expect("half-close");
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut answer))
            .await
            .expect("in time")
            .expect("read");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    }
    agent.stop().await;
}
