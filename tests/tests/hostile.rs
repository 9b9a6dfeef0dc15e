//! Hostile input to the real `ns-metadata-proxy` (on loopback, in front of a scriptable agent
//! stand-in) and to the real `ns-metadata-agent` (its Unix socket): smuggling, malformed and
//! oversized requests, non-HTTP preludes, slow and vanishing clients, broken agent answers.
//! After every case the proxy is the same process and still answers a normal request.
//! Unprivileged.
use std::io::Write;
use std::net::Shutdown;
use std::time::{Duration, Instant};

#[path = "common/agent_raw.rs"]
mod agent_raw;
#[path = "common/raw.rs"]
mod raw;

use ns_testkit::fuzz;
use ns_testkit::http::{answers, Blocking};
use raw::{assert_rejected_or_closed, show, status, statuses, Behave, Proxy};

const WAIT: Duration = Duration::from_secs(5);

#[test]
fn request_smuggling_attempts_are_rejected() {
    let mut p = Proxy::start("smuggle", &[]);
    let cases: &[(&str, &[u8])] = &[
        (
            "two different Content-Lengths",
            b"POST /cl2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc",
        ),
        (
            "Content-Length with a sign",
            b"POST /clsign HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\nabc",
        ),
        (
            "negative Content-Length",
            b"POST /clneg HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\nabc",
        ),
        (
            "Content-Length with inner space",
            b"POST /clspace HTTP/1.1\r\nHost: h\r\nContent-Length: 1 2\r\n\r\nabcdefghijkl",
        ),
        (
            "non-hex chunk size",
            b"POST /badchunk HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        ),
        (
            "overflowing chunk size",
            b"POST /ovfchunk HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
        ),
        (
            "Transfer-Encoding that is not chunked last",
            b"POST /teid HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ),
        (
            "chunked in two Transfer-Encoding lines",
            b"POST /te2 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ),
        (
            "chunked twice in one Transfer-Encoding line",
            b"POST /te2 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ),
        (
            "obs-fold header line",
            b"GET /fold HTTP/1.1\r\nHost: h\r\nX-Folded: a\r\n b\r\n\r\n",
        ),
    ];
    for (case, bytes) in cases {
        let r = p.exchange(bytes, WAIT);
        let s = status(&r);
        assert!(
            matches!(s, Some(400 | 411 | 413 | 501)) || r.is_empty(),
            "{case}: expected 400 (or close), got {}",
            show(&r)
        );
        p.assert_healthy(case);
    }
    // No malformed request above may have reached the agent.
    let leaked: Vec<_> = p
        .agent
        .received()
        .into_iter()
        .filter(|s| !s.head.starts_with("GET /health "))
        .collect();
    assert!(
        leaked.is_empty(),
        "malformed requests reached the agent: {leaked:?}"
    );
}

/// CL + TE: RFC 9112 §6.3 lets a server treat it as chunked but it must then close the
/// connection; it must never let the smuggled second request reach the agent as its own.
#[test]
fn content_length_plus_transfer_encoding_does_not_smuggle() {
    let mut p = Proxy::start("clte", &[]);
    let req = b"POST /clte HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n";
    let r = p.exchange(req, WAIT);
    let codes = statuses(&r);
    assert!(
        codes.len() <= 1 && codes.iter().all(|c| *c == 400),
        "CL+TE must get one 400 and a close, got {}",
        show(&r)
    );
    let seen = p.agent.received();
    assert!(
        !seen.iter().any(|s| s.head.contains("/smuggled")),
        "smuggled request reached the agent: {seen:?}"
    );
    p.assert_healthy("CL+TE");
}

#[test]
fn chunk_extensions_and_valid_chunked_bodies_are_relayed() {
    let mut p = Proxy::start("chunkext", &[]);
    let r = p.exchange(
        b"POST /ext HTTP/1.1\r\nHost: h\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n4;name=value\r\nabcd\r\n2\r\nef\r\n0\r\n\r\n",
        WAIT,
    );
    assert_eq!(status(&r), Some(200), "{}", show(&r));
    assert!(
        String::from_utf8_lossy(&r).contains("body=abcdef"),
        "the agent must get the de-chunked body: {}",
        show(&r)
    );
    p.assert_healthy("chunk extensions");
}

#[test]
fn malformed_request_lines_and_headers_get_well_formed_errors() {
    let mut p = Proxy::start("malformed", &[]);
    let cases: &[(&str, &[u8])] = &[
        (
            "NUL in the request line",
            b"GET /a\x00b HTTP/1.1\r\nHost: h\r\n\r\n",
        ),
        (
            "NUL in a header value",
            b"GET / HTTP/1.1\r\nHost: h\x00x\r\n\r\n",
        ),
        (
            "non-UTF-8 in the request line",
            b"GET /\xff\xfe HTTP/1.1\r\nHost: h\r\n\r\n",
        ),
        (
            "space in a header name",
            b"GET / HTTP/1.1\r\nHost: h\r\nBad Name: x\r\n\r\n",
        ),
        (
            "space before the colon",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-Space : x\r\n\r\n",
        ),
        (
            "header without a colon",
            b"GET / HTTP/1.1\r\nHost: h\r\nnocolon\r\n\r\n",
        ),
        ("bad version", b"GET / HTTP/9.9\r\nHost: h\r\n\r\n"),
        ("missing version", b"GET / \r\nHost: h\r\n\r\n"),
        ("garbage method", b"G\x01T / HTTP/1.1\r\nHost: h\r\n\r\n"),
        ("bare CR", b"GET / HTTP/1.1\rHost: h\r\n\r\n"),
    ];
    for (case, bytes) in cases {
        let r = p.exchange(bytes, WAIT);
        assert_rejected_or_closed(case, &r);
        p.assert_healthy(case);
    }
    // Tolerated by RFC 9112 (bare LF line ends; obs-text in a value): any well-formed answer.
    for (case, bytes) in [
        (
            "bare LF",
            &b"GET /lf HTTP/1.1\nHost: h\nConnection: close\n\n"[..],
        ),
        (
            "non-UTF-8 header value",
            b"GET /obs HTTP/1.1\r\nHost: h\r\nX-Bin: \xff\xfe\r\nConnection: close\r\n\r\n",
        ),
    ] {
        let r = p.exchange(bytes, WAIT);
        assert!(r.is_empty() || status(&r).is_some(), "{case}: {}", show(&r));
        p.assert_healthy(case);
    }
}

#[test]
fn oversized_request_heads_get_431_or_414() {
    let mut p = Proxy::start("oversized", &[]);
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: h\r\n\r\n", "a".repeat(20 * 1024));
    let long_method = format!("{} / HTTP/1.1\r\nHost: h\r\n\r\n", "A".repeat(20 * 1024));
    let mut many = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
    for i in 0..10_000 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let big_value = format!(
        "GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
        "v".repeat(64 * 1024)
    );
    for (case, req, ok) in [
        ("20 KiB URI", &long_uri, &[414, 431, 400][..]),
        ("20 KiB method", &long_method, &[400, 431, 501, 414][..]),
        ("10k headers", &many, &[431, 400][..]),
        ("64 KiB header value", &big_value, &[431, 400][..]),
    ] {
        let r = p.exchange(req.as_bytes(), WAIT);
        let s = status(&r);
        assert!(
            s.is_some_and(|s| ok.contains(&s)),
            "{case}: expected one of {ok:?} as a well-formed answer, got {}",
            show(&r)
        );
        p.assert_healthy(case);
    }
}

/// Bytes that are not HTTP/1.x get a 400, or at the latest the request timeout (here 3 s)
/// closes the connection.
#[test]
fn non_http_preludes_get_400_or_close() {
    let mut p = Proxy::start("prelude", &["--timeout-request", "3"]);
    // A TLS 1.2 ClientHello's first bytes.
    let hello: &[u8] = &[
        0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03, 0x5b, 0x90, 0x9d, 0x9b,
        0x72, 0x0b, 0xbc, 0x0c, 0xbc, 0x2b, 0x92, 0xa8, 0x48, 0x97, 0xcf, 0xbd, 0x39, 0x04, 0xcc,
        0x16, 0x0a, 0x85, 0x03, 0x90, 0x9f, 0x77, 0x04, 0x33, 0xd4, 0xde, 0x00, 0x00, 0x20, 0xcc,
    ];
    for (case, bytes) in [
        ("HTTP/0.9", &b"GET /\r\n\r\n"[..]),
        (
            "HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00",
        ),
        ("TLS ClientHello", hello),
        ("only CRLFs", b"\r\n\r\n\r\n\r\n"),
        ("random binary", b"\x00\x01\x02\x03\xff\xfe\xfd\r\n\r\n"),
    ] {
        let (r, closed) = p.exchange_closed(bytes, Duration::from_secs(15));
        assert!(
            closed,
            "{case}: still open 15 s later (request timeout 3 s)"
        );
        assert_rejected_or_closed(case, &r);
        p.assert_healthy(case);
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let mut p = Proxy::start("pipeline", &[]);
    let r = p.exchange(
        b"GET /p1 HTTP/1.1\r\nHost: h\r\n\r\nPOST /p2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nxyzGET /p3 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    );
    let text = String::from_utf8_lossy(&r);
    assert_eq!(statuses(&r), vec![200, 200, 200], "{}", show(&r));
    let at = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("{needle} missing: {text}"))
    };
    assert!(
        at("path=/p1") < at("path=/p2 body=xyz") && at("path=/p2") < at("path=/p3"),
        "answers out of order: {text}"
    );
    p.assert_healthy("pipelining");
}

#[test]
fn expect_continue_and_the_body_limit() {
    let mut p = Proxy::start("expect", &[]);
    let mut s = p.connect();
    s.write_all(
        b"POST /cont HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
    )
    .expect("send head");
    let first = raw::read_all(&mut s, Duration::from_millis(1500));
    // Either an interim 100 arrives, or (if the proxy waits for the body) nothing yet.
    assert!(
        first.is_empty() || status(&first) == Some(100),
        "before the body only 100 Continue may come: {}",
        show(&first)
    );
    s.write_all(b"hello").expect("send body");
    let rest = raw::read_all(&mut s, WAIT);
    let all = [first, rest].concat();
    assert!(
        statuses(&all).contains(&200) && String::from_utf8_lossy(&all).contains("body=hello"),
        "{}",
        show(&all)
    );

    let big = vec![b'x'; 5000];
    let mut req = format!(
        "POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
        big.len()
    )
    .into_bytes();
    req.extend_from_slice(&big);
    let r = p.exchange(&req, WAIT);
    assert_eq!(status(&r), Some(413), "5000-byte body: {}", show(&r));

    let mut req =
        b"POST /bigchunked HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..5 {
        req.extend_from_slice(format!("3e8\r\n{}\r\n", "y".repeat(1000)).as_bytes());
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = p.exchange(&req, WAIT);
    assert_eq!(
        status(&r),
        Some(413),
        "5000-byte chunked body: {}",
        show(&r)
    );

    let mut req = b"POST /bigexpect HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\nExpect: 100-continue\r\n\r\n".to_vec();
    req.extend_from_slice(b"");
    let r = p.exchange(&req, WAIT);
    assert_eq!(
        status(&r),
        Some(413),
        "a declared 100000-byte body with Expect gets 413 without sending it: {}",
        show(&r)
    );
    assert!(
        !p.agent.received().iter().any(|s| s.head.contains("/big")),
        "oversized bodies reached the agent"
    );
    p.assert_healthy("body limit");
}

/// The proxy closes a client that sends nothing, or dribbles a header forever, once the
/// request timeout (here 2 s) has passed; the closes do not flood the log.
#[test]
fn slow_and_silent_clients_are_closed_after_the_request_timeout() {
    let mut p = Proxy::start("slowloris", &["--timeout-request", "2"]);
    let log_before = p.log_text().lines().count();
    let silent: Vec<_> = (0..20).map(|_| p.connect()).collect();

    let mut slow = p.connect();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: h\r\nX-Slow: ")
        .expect("start slow request");
    let start = Instant::now();
    let mut closed_after = None;
    while start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
        if slow.write_all(b"a").is_err() {
            closed_after = Some(start.elapsed());
            break;
        }
        let mut buf = [0u8; 512];
        let _ = slow.set_nonblocking(true);
        let got = std::io::Read::read(&mut slow, &mut buf);
        let _ = slow.set_nonblocking(false);
        match got {
            Ok(0) => {
                closed_after = Some(start.elapsed());
                break;
            }
            Ok(n) => {
                // A 408 is fine; it must be well-formed.
                assert!(status(&buf[..n]).is_some(), "{}", show(&buf[..n]));
            }
            Err(_) => {}
        }
    }
    assert!(
        closed_after.is_some_and(|t| t < Duration::from_secs(12)),
        "a client dribbling one byte per 100 ms was not closed by the 2 s request timeout ({closed_after:?})"
    );
    for (i, mut s) in silent.into_iter().enumerate() {
        let r = raw::read_all(&mut s, Duration::from_secs(10));
        assert!(
            r.is_empty() || status(&r) == Some(408),
            "silent client {i}: {}",
            show(&r)
        );
    }
    let lines = p.log_text().lines().count() - log_before;
    assert!(
        lines <= 25,
        "21 timed-out clients logged {lines} lines:\n{}",
        p.log_text()
    );
    p.assert_healthy("slowloris");
}

/// With `--max-connections 50`, 200 idle clients neither grow the proxy without bound nor
/// lock it up: once the request timeout frees slots, a normal request is answered.
#[test]
fn connection_limit_keeps_the_proxy_bounded_and_responsive() {
    let mut p = Proxy::start(
        "maxconn",
        &["--max-connections", "50", "--timeout-request", "2"],
    );
    let idle: Vec<_> = (0..200).map(|_| p.connect()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let fds = p.fds();
    assert!(
        fds < 50 + 30,
        "200 idle clients with --max-connections 50: the proxy holds {fds} fds"
    );
    let start = Instant::now();
    let r = p.exchange(
        b"GET /during HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        Duration::from_secs(30),
    );
    assert_eq!(
        status(&r),
        Some(200),
        "a request while 200 idle clients wait ({:?}): {}",
        start.elapsed(),
        show(&r)
    );
    drop(idle);
    p.assert_healthy("connection limit");
}

/// Idle clients (connected within 1 s, else given up) at most `n`.
fn idle_clients(p: &Proxy, n: usize) -> Vec<std::net::TcpStream> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], p.port));
    (0..n)
        .filter_map(|_| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok())
        .collect()
}

/// 1500 idle clients against the default `--max-connections 1024`: the proxy stays bounded
/// and, once the request timeout frees slots, answers a normal request.
#[test]
fn fifteen_hundred_idle_clients_with_the_default_limit() {
    let mut p = Proxy::start("idle1500", &["--timeout-request", "2"]);
    let idle = idle_clients(&p, 1500);
    assert!(idle.len() >= 1024, "only {} clients connected", idle.len());
    let fds = p.fds();
    assert!(
        fds < 1024 + 30,
        "1500 idle clients: the proxy holds {fds} fds"
    );
    let r = p.exchange(
        b"GET /during HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        Duration::from_secs(30),
    );
    assert_eq!(
        status(&r),
        Some(200),
        "during 1500 idle clients: {}",
        show(&r)
    );
    drop(idle);
    p.assert_healthy("1500 idle clients");
}

/// The default `--max-connections 1024` with only 256 files allowed (a small `ulimit -n`):
/// 400 idle clients run the proxy out of descriptors; it stays alive and answers once they
/// are gone.
#[test]
fn running_out_of_file_descriptors_is_survived() {
    let mut p = Proxy::start_limited("nofile", Some(256), &[]);
    let idle = idle_clients(&p, 320);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        p.alive(),
        "the proxy died at its fd limit:\n{}",
        p.log_text()
    );
    drop(idle);
    p.assert_healthy("fd exhaustion");
}

/// At the fd limit accept(2) fails again and again; the proxy must say so without a log
/// storm: one warning when it starts, rare summaries, one line when it clears.
#[test]
fn accept_errors_at_the_fd_limit_do_not_flood_the_log() {
    let p = Proxy::start_limited("nofilelog", Some(256), &[]);
    let idle = idle_clients(&p, 320);
    std::thread::sleep(Duration::from_millis(500));
    let before = p.log_text().lines().count();
    std::thread::sleep(Duration::from_secs(5));
    let lines = p.log_text().lines().count() - before;
    drop(idle);
    assert!(
        lines <= 5,
        "{lines} log lines in 5 s while at the fd limit:\n{}",
        p.log_text()
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn half_closed_and_reset_clients() {
    let mut p = Proxy::start("halfclose", &[]);
    let mut s = p.connect();
    s.write_all(b"GET /half HTTP/1.1\r\nHost: h\r\n\r\n")
        .expect("send");
    s.shutdown(Shutdown::Write).expect("half-close");
    let r = raw::read_all(&mut s, WAIT);
    assert_eq!(status(&r), Some(200), "half-closed client: {}", show(&r));
    p.assert_healthy("half-close");

    // Reset mid-response: read a little of a 1 MiB answer, then close with unread data
    // (the kernel sends RST).
    for _ in 0..5 {
        let mut s = p.connect();
        s.write_all(b"GET /agent-big HTTP/1.1\r\nHost: h\r\n\r\n")
            .expect("send");
        let mut buf = [0u8; 1024];
        let _ = std::io::Read::read(&mut s, &mut buf);
        std::thread::sleep(Duration::from_millis(100));
        drop(s);
    }
    // Reset before any answer.
    for _ in 0..5 {
        let mut s = p.connect();
        s.write_all(b"GET /agent-big HTTP/1.1\r\nHost: h\r\n\r\n")
            .expect("send");
        drop(s);
    }
    p.assert_healthy("reset mid-response");
}

#[test]
fn hostile_agent_answers_give_502_and_the_proxy_survives() {
    let mut p = Proxy::start("badagent", &["--timeout-server", "3"]);
    let r = p.exchange(
        b"GET /agent-silent HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        Duration::from_secs(15),
    );
    assert_eq!(
        status(&r),
        Some(504),
        "agent that never answers: {}",
        show(&r)
    );
    for path in [
        "/agent-close",
        "/agent-truncated",
        "/agent-badstatus",
        "/agent-garbage",
        "/agent-hugeheaders",
        "/agent-cl2",
        "/agent-clte",
        "/agent-negcl",
    ] {
        let r = p.exchange(
            format!("GET {path} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(10),
        );
        if path == "/agent-clte" && status(&r) == Some(200) {
            // Treated as chunked (RFC 9112 §6.3): the bad chunk then ends the relay, so the
            // client sees an incomplete chunked body and a close, never a complete answer.
            let body_at = r
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(0, |i| i + 4);
            assert!(
                !r[body_at..].ends_with(b"0\r\n\r\n"),
                "bad chunked answer relayed as complete: {}",
                show(&r)
            );
        } else if path == "/agent-truncated" && status(&r) == Some(200) {
            // Headers may already be relayed; then the client must see a short body and a close.
            let body = r
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(0, |i| r.len() - i - 4);
            assert!(
                body < 100,
                "truncated answer relayed as complete: {}",
                show(&r)
            );
        } else {
            assert_eq!(status(&r), Some(502), "{path}: {}", show(&r));
        }
        assert!(
            !String::from_utf8_lossy(&r).contains("X-Injected"),
            "{path}: a second response smuggled by the agent reached the client: {}",
            show(&r)
        );
        p.assert_healthy(path);
    }
    // Chunked with bare LFs, an extension and a control byte in a trailer: the VM gets the
    // data in strict CRLF chunks.
    let r = p.exchange(
        b"GET /agent-lfchunked HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    );
    let body_at = r
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(r.len(), |i| i + 4);
    assert_eq!(status(&r), Some(200), "{}", show(&r));
    assert_eq!(&r[body_at..], b"5\r\nhello\r\n0\r\n\r\n", "{}", show(&r));
    p.assert_healthy("/agent-lfchunked");
    // A never-ending chunked answer: the client reads some, then goes away; the proxy must
    // stop pulling from the agent.
    let mut s = p.connect();
    s.write_all(b"GET /agent-endless HTTP/1.1\r\nHost: h\r\n\r\n")
        .expect("send");
    let mut got = 0;
    let mut buf = [0u8; 65536];
    while got < 256 * 1024 {
        match std::io::Read::read(&mut s, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(got > 0, "no bytes of the endless answer");
    drop(s);
    let stopped = ns_e2e::wait_until(Duration::from_secs(15), || {
        p.agent
            .seen
            .endless_stopped
            .load(std::sync::atomic::Ordering::SeqCst)
    });
    assert!(
        stopped,
        "the proxy kept reading the endless agent answer after its client left"
    );
    p.assert_healthy("endless chunked agent answer");
}

#[test]
fn agent_socket_survives_hostile_requests() {
    agent_raw::run();
}

/// With short client/keep-alive timeouts: a body that never completes, an idle kept-alive
/// connection and a client that never reads a never-ending answer are all closed, and the
/// proxy lets go of the agent connection.
#[test]
fn stalled_bodies_idle_keepalives_and_non_reading_clients_are_closed() {
    let mut p = Proxy::start(
        "stalled",
        &[
            "--timeout-request",
            "2",
            "--timeout-client",
            "2",
            "--timeout-keepalive",
            "2",
        ],
    );
    let (r, closed) = p.exchange_closed(
        b"POST /partial HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nabc",
        Duration::from_secs(15),
    );
    assert!(
        closed,
        "a body stalled at 3 of 100 bytes kept the connection open"
    );
    assert!(
        r.is_empty() || status(&r).is_some_and(|s| s >= 400),
        "stalled body: {}",
        show(&r)
    );

    let mut s = p.connect();
    s.write_all(b"GET /ka HTTP/1.1\r\nHost: h\r\n\r\n")
        .expect("send");
    let (r, closed) = raw::read_until_closed(&mut s, Duration::from_secs(15));
    assert_eq!(status(&r), Some(200), "{}", show(&r));
    assert!(
        closed,
        "an idle kept-alive connection outlived the 2 s keep-alive timeout"
    );

    let mut s = p.connect();
    s.write_all(b"GET /agent-endless HTTP/1.1\r\nHost: h\r\n\r\n")
        .expect("send");
    let stopped = ns_e2e::wait_until(Duration::from_secs(20), || {
        p.agent
            .seen
            .endless_stopped
            .load(std::sync::atomic::Ordering::SeqCst)
    });
    assert!(
        stopped,
        "a client that never reads kept the proxy pulling the agent's endless answer"
    );
    drop(s);
    p.assert_healthy("stalled clients");
}

/// RFC 9112 §3.2: a server MUST answer 400 to a request with more than one Host line
/// (relaying both would let the two ends disagree about the request).
#[test]
fn two_host_headers_get_400() {
    let p = Proxy::start("twohost", &[]);
    let r = p.exchange(
        b"GET /twohost HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
        WAIT,
    );
    assert_eq!(status(&r), Some(400), "two Host lines: {}", show(&r));
}

/// Valid requests the wire mutations start from (no HEAD: the reader below frames bodies).
const WIRE: &[&[u8]] = &[
    b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\nAccept: */*\r\n\r\n",
    b"POST /openstack/latest/password HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
    b"PUT /latest/api/token HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: y\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /second HTTP/1.1\r\n\r\n",
];

/// Smuggling shapes the wire mutations splice in.
const WIRE_DICT: &[&[u8]] = &[
    b"Content-Length: 4\r\n",
    b"Content-Length: 40\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked, chunked\r\n",
    b"Transfer-Encoding : chunked\r\n",
    b"\r\n folded: x",
    b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
    b"ffffffffffffffffff\r\n",
    b";ext\n",
    b"Expect: 100-continue\r\n",
    b"Connection: close\r\n",
];

/// Seeded mutations of valid requests (truncations, flips, NUL, bare CR/LF, duplicated and
/// oversized fields, the smuggling shapes above; `NS_FUZZ_SEED` replays a run) over real
/// sockets: every case gets only well-formed answers and a close once the client has sent
/// everything; the agent (an echo stand-in that reads every request an agent connection
/// carries) sees exactly the requests whose answers the client got, so no smuggled request;
/// the same proxy then answers a normal request.
#[test]
fn mutated_requests_on_the_wire_get_well_formed_answers() {
    wire_mutations("wirefuzz", None, &[]);
}

/// The same with pooled agent connections (`--agent-keepalive on`, an agent that advertises
/// reuse): a mutated request never leaves a pooled connection out of step.
#[test]
fn mutated_requests_on_the_wire_with_pooled_agent_connections() {
    wire_mutations("wirepool", Some(10), &["--agent-keepalive", "on"]);
}

fn wire_mutations(test: &str, advertise: Option<u64>, extra: &[&str]) {
    let mut p = Proxy::start_behaving(
        test,
        None,
        Behave::Echo {
            advertise,
            reuse: true,
        },
        extra,
    );
    fuzz::run(test, 0x5eed_0101, 1000, |rng, case| {
        let before = p.agent.received().len();
        let valid = rng.pick(WIRE);
        let bytes = fuzz::mutate(rng, valid, WIRE_DICT);
        let (r, closed) = Blocking::new(p.connect()).send_last(&bytes, WAIT);
        let sent = String::from_utf8_lossy(&bytes[..bytes.len().min(400)]).into_owned();
        assert!(
            closed,
            "case {case}: not closed after the client's end: {sent:?} -> {}",
            show(&r)
        );
        let answers = answers(&r).unwrap_or_else(|e| panic!("case {case}: {sent:?}: {e}"));
        // Only the last answer may be framed by the close.
        let framed = &answers[..answers.len().saturating_sub(1)];
        assert!(
            framed.iter().all(|a| a.header("content-length").is_some()),
            "case {case}: an answer with neither a length nor the close: {}",
            show(&r)
        );
        let relayed = answers.iter().filter(|a| a.status == 200).count();
        let seen = p.agent.received().len() - before;
        assert_eq!(seen, relayed, "case {case}: the agent saw {seen} requests, the client got {relayed} answers from it: {sent:?} -> {}", show(&r));
    });
    p.assert_healthy("wire mutations");
}

/// Agent answers the mutations start from: each framing, bare-LF chunks, Neutron's bare-LF
/// error page, a head ended by the close.
const AGENT_ANSWERS: &[&[u8]] = &[
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;e\nhello\n0\nT: 1\n\n",
    b"HTTP/1.0 404 Not Found\nContent-Type: text/html\nContent-Length: 3\n\nabc",
    b"HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\n\r\nboom",
    b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain",
];

const AGENT_DICT: &[&[u8]] = &[
    b"Content-Length: 2\r\n",
    b"Transfer-Encoding: gzip\r\n",
    b"Content-Length: 99999999999999999999\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"HTTP/1.1 200 OK\r\nX-Injected: 1\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"ffffffffffffffffff\r\n",
    b"\r\n folded",
];

/// Seeded mutations of the agent's answer (`NS_FUZZ_SEED` replays): the VM gets one
/// well-formed answer (relayed, or the proxy's 502), or a relayed head whose body is cut short
/// and then the close; never a second answer; the same proxy then answers normally.
#[test]
fn mutated_agent_answers_reach_the_vm_well_formed() {
    let mut p = Proxy::start_behaving("agentfuzz", None, Behave::Canned, &[]);
    // HTTP/1.1, and HTTP/1.0 (a chunked answer is de-chunked and ends with the close).
    let gets: [&[u8]; 2] = [
        b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /x HTTP/1.0\r\n\r\n",
    ];
    fuzz::run("agent-answers", 0x5eed_0104, 500, |rng, case| {
        let valid = rng.pick(AGENT_ANSWERS);
        let answer = fuzz::mutate(rng, valid, AGENT_DICT);
        p.agent.set_answer(&answer);
        let get = *rng.pick(&gets);
        let (r, closed) = Blocking::new(p.connect()).send_last(get, WAIT);
        let said = String::from_utf8_lossy(&answer[..answer.len().min(300)]).into_owned();
        assert!(closed, "case {case}: not closed: {said:?} -> {}", show(&r));
        assert!(
            status(&r).is_some(),
            "case {case}: {said:?} -> {}",
            show(&r)
        );
        match answers(&r) {
            Ok(a) => assert_eq!(a.len(), 1, "case {case}: {said:?} -> {}", show(&r)),
            // Cut short after the head was relayed: the close says so.
            Err(e) => assert!(
                e.starts_with("incomplete answer")
                    && r.windows(4).any(|w| w == b"\r\n\r\n")
                    && !r.starts_with(b"HTTP/1.1 502"),
                "case {case}: {said:?} -> {e}"
            ),
        }
    });
    p.agent
        .set_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    p.assert_healthy("mutated agent answers");
}

/// A chunked body whose extension or trailers never end is refused once they pass 16 KiB:
/// 400 and a close, while the client still holds its side open (before, the proxy kept
/// reading them for as long as bytes came).
#[test]
fn endless_chunk_extensions_and_trailers_get_400() {
    let mut p = Proxy::start("chunkext-endless", &[]);
    let head = b"POST /ext HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut ext = head.to_vec();
    ext.extend_from_slice(b"1;");
    ext.resize(ext.len() + 20 * 1024, b'e');
    let mut trailers = head.to_vec();
    trailers.extend_from_slice(b"0\r\n");
    while trailers.len() < 24 * 1024 {
        trailers.extend_from_slice(b"X-Trailer: 0123456789\r\n");
    }
    for (case, bytes) in [("extension", ext), ("trailers", trailers)] {
        let mut c = Blocking::new(p.connect());
        let _ = c.send(&bytes);
        let (r, closed) = c.read_until_closed(WAIT);
        assert!(closed, "{case}: the proxy kept reading: {}", show(&r));
        assert_eq!(status(&r), Some(400), "{case}: {}", show(&r));
        p.assert_healthy(case);
    }
    assert!(
        p.agent
            .received()
            .iter()
            .all(|r| !r.head.starts_with("POST /ext")),
        "an endless chunked body reached the agent"
    );
}

/// Framing headers in their WSGI spellings (`Content_Length`, `Transfer_Encoding`), which the
/// agent's webob reads as the body's length, never reach it: only the proxy's own length.
#[test]
fn underscore_framing_headers_never_reach_the_agent() {
    let mut p = Proxy::start("wsgi-framing", &[]);
    let r = p.exchange(
        b"POST /wsgi HTTP/1.1\r\nHost: h\r\nContent_Length: 0\r\nTransfer_Encoding: chunked\r\nconnection_: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
        WAIT,
    );
    assert_eq!(status(&r), Some(200), "{}", show(&r));
    let seen = p.agent.received();
    let got = seen
        .iter()
        .find(|r| r.head.starts_with("POST /wsgi "))
        .expect("the request reached the agent");
    let head = got.head.to_ascii_lowercase();
    assert!(
        !head.contains("content_length") && !head.contains("transfer_encoding"),
        "{}",
        got.head
    );
    assert_eq!(head.matches("content-length").count(), 1, "{}", got.head);
    assert_eq!(got.body, b"hi");
    p.assert_healthy("underscore framing headers");
}
