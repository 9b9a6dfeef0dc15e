//! Loopback tests (no root) of the relay against an agent stand-in: the header contract,
//! every error code, keep-alive, agent connection reuse and the retry rule.

mod common;

use common::{request, Behave, Client, Model, StandIn, TempDir};

crate::in_both_models!(
    relays_method_path_query_body_and_sets_identity_headers,
    underscore_spellings_of_identity_headers_are_stripped,
    xff_from_ipv6_peer_and_v4_mapped_written_plain,
    chunked_request_body_is_sent_with_content_length,
    keep_alive_to_client_and_head_and_http10,
    agent_missing_or_refusing_gives_503,
    agent_closing_without_reply_gives_502,
    concurrent_requests_get_their_own_whole_answers,
    slow_agent_gives_504,
    bad_requests_400_413_431,
    silent_client_is_closed_after_request_timeout,
    rate_limit_429_per_source,
    agent_keepalive_auto_reuses_only_when_advertised,
    pooled_failure_retried_once_only_for_idempotent,
    graceful_shutdown_finishes_in_flight_request,
    shutdown_lets_the_request_in_flight_finish,
    pooled_buffers_are_released_when_idle,
);

const ECHO: Behave = Behave::Echo {
    advertise: None,
    reuse: false,
};

fn count(haystack: &str, needle: &str) -> usize {
    haystack
        .to_ascii_lowercase()
        .matches(&needle.to_ascii_lowercase())
        .count()
}

async fn relays_method_path_query_body_and_sets_identity_headers(model: Model) {
    let agent = StandIn::start(ECHO);
    let p = model.start(&agent.path, "127.0.0.1:0", &[]);
    let r = request(
        p.addr,
        b"POST /openstack/latest/password?a=1&b=%20x HTTP/1.1\r\nHost: 169.254.169.254\r\n\
          x-forwarded-for: 6.6.6.6\r\nX-FORWARDED-FOR: 7.7.7.7\r\nX-Neutron-Router-ID: evil\r\n\
          x-neutron-network-id: evil\r\nX-OVN-Network-ID: evil\r\nx-instance-id: evil\r\n\
          X-Instance-ID-Signature: evil\r\nX-Tenant-ID: evil\r\nProxy-Authorization: x\r\n\
          Upgrade: h2c\r\nConnection: Upgrade, X-Hop\r\nX-Hop: 1\r\nX-Keep: yes\r\n\
          Content-Length: 11\r\n\r\nhello world",
    )
    .await
    .expect("response");
    assert_eq!(r.status, 200);
    let up = r.text();
    assert!(
        up.starts_with("POST /openstack/latest/password?a=1&b=%20x HTTP/1.1\r\n"),
        "{up}"
    );
    assert!(up.ends_with("\r\n\r\nhello world"), "{up}");
    assert_eq!(count(&up, "x-forwarded-for:"), 1, "{up}");
    assert!(up.contains("X-Forwarded-For: 127.0.0.1\r\n"), "{up}");
    assert_eq!(count(&up, "x-neutron-router-id:"), 1, "{up}");
    assert!(up.contains("X-Neutron-Router-ID: r-0001\r\n"), "{up}");
    for gone in [
        "x-neutron-network-id",
        "x-ovn-network-id",
        "x-instance-id",
        "x-tenant-id",
        "upgrade",
        "x-hop",
        "proxy-authorization",
    ] {
        assert_eq!(count(&up, &format!("\n{gone}")), 0, "{gone} in {up}");
    }
    assert!(up.contains("X-Keep: yes\r\n") && up.contains("Host: 169.254.169.254\r\n"));
    assert!(up.contains("Content-Length: 11\r\n"));
    // Head and body reached the agent in one read (Neutron's single recv(4096)).
    assert_eq!(
        *agent.seen.whole_in_first_read.lock().expect("lock"),
        vec![true]
    );
}

/// WSGI (the Neutron agent's Python side) maps `X_Forwarded_For` and `X-Forwarded-For` to
/// the same environ key, so the underscore spellings must not reach the agent either.
async fn underscore_spellings_of_identity_headers_are_stripped(model: Model) {
    let agent = StandIn::start(ECHO);
    let p = model.start(&agent.path, "127.0.0.1:0", &[]);
    let r = request(
        p.addr,
        b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\
          X_Forwarded_For: 6.6.6.6\r\nx_forwarded-for: 6.6.6.7\r\nX_Neutron_Router_ID: evil\r\n\
          X_NEUTRON_NETWORK_ID: evil\r\nx_ovn_network_id: evil\r\nX_Instance_ID: evil\r\n\
          X_Instance_ID_Signature: evil\r\nX_Tenant_ID: evil\r\nX_Keep_Me: yes\r\n\r\n",
    )
    .await
    .expect("response");
    assert_eq!(r.status, 200);
    let up = r.text().replace('_', "-");
    assert!(!up.contains("evil") && !up.contains("6.6.6."), "{up}");
    assert_eq!(count(&up, "x-forwarded-for:"), 1, "{up}");
    assert_eq!(count(&up, "x-neutron-router-id:"), 1, "{up}");
    assert!(r.text().contains("X_Keep_Me: yes\r\n"), "{}", r.text());
}

async fn xff_from_ipv6_peer_and_v4_mapped_written_plain(model: Model) {
    let agent = StandIn::start(ECHO);
    let p6 = model.start(&agent.path, "[::1]:0", &[]);
    let r = request(p6.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("resp");
    assert!(
        r.text().contains("X-Forwarded-For: ::1\r\n"),
        "{}",
        r.text()
    );
    // A dual-stack [::] listener sees IPv4 clients as ::ffff:127.0.0.1.
    let pd = model.start(&agent.path, "[::]:0", &[]);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], pd.addr.port()));
    let r = request(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("resp");
    assert!(
        r.text().contains("X-Forwarded-For: 127.0.0.1\r\n"),
        "{}",
        r.text()
    );
}

async fn chunked_request_body_is_sent_with_content_length(model: Model) {
    let agent = StandIn::start(ECHO);
    let p = model.start(&agent.path, "127.0.0.1:0", &[]);
    let r = request(
        p.addr,
        b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await
    .expect("resp");
    let up = r.text();
    assert!(
        up.contains("Content-Length: 11\r\n") && up.ends_with("\r\n\r\nhello world"),
        "{up}"
    );
    assert_eq!(count(&up, "transfer-encoding"), 0);
}

async fn keep_alive_to_client_and_head_and_http10(model: Model) {
    let agent = StandIn::start(ECHO);
    let p = model.start(&agent.path, "127.0.0.1:0", &[]);
    let mut c = Client::tcp(p.addr).await;
    for i in 0..3 {
        c.send(format!("GET /n/{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await;
        let r = c.read(false).await.expect("kept alive");
        assert_eq!(r.status, 200);
        assert!(r.text().starts_with(&format!("GET /n/{i} ")));
        assert_eq!(r.header("connection"), None);
    }
    c.send(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let r = c.read(true).await.expect("head");
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    // Pipelined: two requests in one write, answered in order.
    c.send(b"GET /p1 HTTP/1.1\r\n\r\nGET /p2 HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await;
    assert!(c
        .read(false)
        .await
        .expect("p1")
        .text()
        .starts_with("GET /p1 "));
    let r = c.read(false).await.expect("p2");
    assert!(r.text().starts_with("GET /p2 "));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed().await);
    // HTTP/1.0 without keep-alive: answered, then closed.
    let mut c = Client::tcp(p.addr).await;
    c.send(b"GET /old HTTP/1.0\r\n\r\n").await;
    assert_eq!(c.read(false).await.expect("1.0").status, 200);
    assert!(c.closed().await);
    // Off mode (auto with an agent that never advertises): a connection per request.
    assert_eq!(agent.connections(), 7);
}

async fn agent_missing_or_refusing_gives_503(model: Model) {
    let dir = TempDir::new("missing");
    let p = model.start(&dir.path().join("nope.sock"), "127.0.0.1:0", &[]);
    let mut c = Client::tcp(p.addr).await;
    c.send(b"GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(c.read(false).await.expect("503").status, 503);
    // The VM connection stays usable after the proxy's own error.
    c.send(b"GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(c.read(false).await.expect("503 again").status, 503);

    let refused = dir.path().join("refused.sock");
    drop(std::os::unix::net::UnixListener::bind(&refused).expect("bind"));
    let p = model.start(&refused, "127.0.0.1:0", &[]);
    let r = request(p.addr, b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("resp");
    assert_eq!(r.status, 503);
}

async fn agent_closing_without_reply_gives_502(model: Model) {
    let agent = StandIn::start(Behave::CloseNoReply);
    let p = model.start(&agent.path, "127.0.0.1:0", &[]);
    let r = request(p.addr, b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("resp");
    assert_eq!(r.status, 502);
    assert_eq!(
        agent.connections(),
        1,
        "a fresh connection is never retried"
    );
}

/// Many requests at once, one agent connection each (what Neutron's agent needs): every
/// VM gets its own complete answer, whether the agent's answer arrives whole or in pieces.
async fn concurrent_requests_get_their_own_whole_answers(model: Model) {
    for behave in [ECHO, Behave::Split] {
        let agent = StandIn::start(behave);
        let p = model.start(&agent.path, "127.0.0.1:0", &["--agent-keepalive", "off"]);
        let mut tasks = Vec::new();
        for i in 0..24 {
            let addr = p.addr;
            tasks.push(tokio::spawn(async move {
                let mut c = Client::tcp(addr).await;
                for j in 0..5 {
                    let path = format!("/c/{i}/{j}");
                    c.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                        .await;
                    let r = c.read(false).await.expect("answer");
                    assert_eq!(r.status, 200, "{behave:?} {path}");
                    let body = r.text();
                    assert!(
                        body.starts_with(&format!("GET {path} ")),
                        "{behave:?}: {body}"
                    );
                    assert!(body.ends_with("\r\n\r\n"), "{behave:?} truncated: {body}");
                }
            }));
        }
        for t in tasks {
            t.await.expect("client task");
        }
        assert_eq!(agent.connections(), 24 * 5, "{behave:?}");
    }
}

async fn slow_agent_gives_504(model: Model) {
    let agent = StandIn::start(Behave::Slow);
    let p = model.start(&agent.path, "127.0.0.1:0", &["--timeout-server", "1"]);
    let r = request(p.addr, b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("resp");
    assert_eq!(r.status, 504);
}

async fn bad_requests_400_413_431(model: Model) {
    let agent = StandIn::start(ECHO);
    let p = model.start(&agent.path, "127.0.0.1:0", &[]);
    for raw in [
        &b"GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
    ] {
        let mut c = Client::tcp(p.addr).await;
        c.send(raw).await;
        assert_eq!(c.read(false).await.expect("400").status, 400);
        assert!(c.closed().await);
    }
    let body = vec![b'x'; 4000];
    let mut raw = b"POST /big HTTP/1.1\r\nContent-Length: 4000\r\n\r\n".to_vec();
    raw.extend_from_slice(&body);
    assert_eq!(request(p.addr, &raw).await.expect("413").status, 413);
    let huge = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(17 * 1024));
    assert_eq!(
        request(p.addr, huge.as_bytes()).await.expect("431").status,
        431
    );
    let many: String = (0..120).map(|i| format!("X-{i}: v\r\n")).collect();
    let raw = format!("GET / HTTP/1.1\r\n{many}\r\n");
    assert_eq!(
        request(p.addr, raw.as_bytes()).await.expect("431").status,
        431
    );
    assert_eq!(agent.connections(), 0, "nothing reached the agent");
    // A request that fits is still fine on the same proxy.
    assert_eq!(
        request(p.addr, b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("ok")
            .status,
        200
    );
}

async fn silent_client_is_closed_after_request_timeout(model: Model) {
    let agent = StandIn::start(ECHO);
    let p = model.start(&agent.path, "127.0.0.1:0", &["--timeout-request", "1"]);
    let mut c = Client::tcp(p.addr).await;
    assert!(c.closed().await, "closed without an answer");
    let mut c = Client::tcp(p.addr).await;
    c.send(b"GET / HT").await;
    assert_eq!(c.read(false).await.expect("408").status, 408);
}

async fn rate_limit_429_per_source(model: Model) {
    let agent = StandIn::start(ECHO);
    let p = model.start(&agent.path, "127.0.0.1:0", &["--rate-limit-base", "2/60"]);
    let mut c = Client::tcp(p.addr).await;
    for expect in [200, 200, 429, 429] {
        c.send(b"GET / HTTP/1.1\r\n\r\n").await;
        assert_eq!(c.read(false).await.expect("resp").status, expect);
    }
    assert_eq!(agent.connections(), 2);
    // Another source (IPv6 loopback) has its own count.
    let p6 = model.start(&agent.path, "[::1]:0", &["--rate-limit-base", "2/60"]);
    assert_eq!(
        request(p6.addr, b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("resp")
            .status,
        200
    );
}

async fn two_gets(model: Model, agent: &StandIn, mode: &str) -> (usize, Vec<String>) {
    let p = model.start(&agent.path, "127.0.0.1:0", &["--agent-keepalive", mode]);
    let mut c = Client::tcp(p.addr).await;
    for _ in 0..2 {
        c.send(b"GET / HTTP/1.1\r\n\r\n").await;
        let r = c.read(false).await.expect("resp");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ns-metadata-keepalive"), None, "signal stripped");
    }
    (agent.connections(), agent.requests())
}

async fn agent_keepalive_auto_reuses_only_when_advertised(model: Model) {
    let adv = Behave::Echo {
        advertise: Some(10),
        reuse: true,
    };
    let (conns, reqs) = two_gets(model, &StandIn::start(adv), "auto").await;
    assert_eq!(conns, 1, "auto + signal: reused");
    assert!(!reqs[0].contains("Connection: close"));
    let silent = Behave::Echo {
        advertise: None,
        reuse: true,
    };
    assert_eq!(
        two_gets(model, &StandIn::start(silent), "auto").await.0,
        2,
        "auto without signal == off"
    );
    assert_eq!(
        two_gets(model, &StandIn::start(silent), "on").await.0,
        1,
        "on: reused"
    );
    let (conns, reqs) = two_gets(model, &StandIn::start(adv), "off").await;
    assert_eq!(conns, 2, "off: never reused");
    assert!(reqs.iter().all(|r| r.contains("Connection: close\r\n")));
}

async fn pooled_failure_retried_once_only_for_idempotent(model: Model) {
    let agent = StandIn::start(Behave::DropSecond);
    let p = model.start(&agent.path, "127.0.0.1:0", &["--agent-keepalive", "on"]);
    let mut c = Client::tcp(p.addr).await;
    c.send(b"GET /1 HTTP/1.1\r\n\r\n").await;
    assert_eq!(c.read(false).await.expect("first").status, 200);
    // The pooled connection takes the request and closes: retried on a fresh one.
    c.send(b"GET /2 HTTP/1.1\r\n\r\n").await;
    assert_eq!(c.read(false).await.expect("retried").status, 200);
    assert_eq!(agent.connections(), 2);
    assert_eq!(agent.requests().len(), 3);
    // A POST with a body already delivered is not retried.
    c.send(b"POST /3 HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi")
        .await;
    assert_eq!(c.read(false).await.expect("502").status, 502);
    assert_eq!(agent.connections(), 2);
    assert_eq!(agent.requests().len(), 4);
}

async fn graceful_shutdown_finishes_in_flight_request(model: Model) {
    let agent = StandIn::start(ECHO);
    let p = model.start(&agent.path, "127.0.0.1:0", &[]);
    let addr = p.addr;
    let mut c = Client::tcp(addr).await;
    c.send(b"GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(c.read(false).await.expect("before").status, 200);
    p.stop().await;
    assert!(
        c.closed().await,
        "idle keep-alive connection closed on shutdown"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

async fn shutdown_lets_the_request_in_flight_finish(model: Model) {
    let agent = StandIn::start(Behave::Delay(300));
    let p = model.start(&agent.path, "127.0.0.1:0", &[]);
    let mut c = Client::tcp(p.addr).await;
    c.send(b"GET /slow HTTP/1.1\r\n\r\n").await;
    // Wait until the agent has the request, then stop the proxy.
    let seen = agent.seen.clone();
    let mut tries = 0;
    while seen.requests.lock().expect("lock").is_empty() && tries < 500 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        tries += 1;
    }
    let stopping = tokio::spawn(p.stop());
    let r = c.read(false).await.expect("in-flight answer");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed().await);
    stopping.await.expect("stopped");
}

/// Buffers kept for the next request are given back once no client connection has been
/// open for a moment (issue 8: memory returns after load), and not while one is open.
async fn pooled_buffers_are_released_when_idle(model: Model) {
    use ns_metadata_proxy::bufpool;
    let agent = StandIn::start(ECHO);
    let p = model.start(&agent.path, "127.0.0.1:0", &[]);
    let mut held = Client::tcp(p.addr).await;
    held.send(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert_eq!(held.read(false).await.expect("reply").status, 200);
    assert!(
        bufpool::pooled() > 0,
        "a served request leaves buffers pooled"
    );
    // A kept-alive connection is still open: nothing is released.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(
        bufpool::pooled() > 0,
        "released while a connection was open"
    );
    drop(held);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while bufpool::pooled() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "pooled buffers not released 15 s after the last connection closed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
