//! Hostile input for the relay's parsers (seeded, deterministic: `NS_FUZZ_SEED` replays a
//! failure): the VM's request head and body framing, the chunked decoder, the agent's
//! response head and the proxy's own error pages. Each case asserts the documented outcome:
//! a request is 400, 413 or 431 or becomes exactly one well-formed request for the agent;
//! an agent answer is a 502 or exactly one well-formed answer for the VM; never a panic.

use std::net::IpAddr;

use ns_testkit::fuzz::{self, Rng};

use crate::http1::{self, Decoder};
use crate::request::{self, Body, ReqInfo, Upstream, MAX_HEAD};
use crate::response::{self, ForClient, Framing, MAX_RESP_HEAD};

/// Valid requests the mutations start from: every framing, both versions, `Expect`.
const REQUESTS: &[&[u8]] = &[
    b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\nUser-Agent: curl\r\nAccept: */*\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"POST /openstack/latest/password HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
    b"PUT /latest/api/token HTTP/1.1\r\nHost: h\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: y\r\n\r\n",
    b"POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\n\r\nabc",
    b"GET /a?b=c HTTP/1.1\nHost: h\nX-Forwarded-For: 1.2.3.4\nX-Neutron-Router-ID: evil\n\n",
];

/// Tokens the request mutations insert: framing headers in smuggling shapes.
const REQUEST_DICT: &[&[u8]] = &[
    b"Content-Length: 0\r\n",
    b"Content_Length: 0\r\n",
    b"transfer_encoding: chunked\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 18446744073709551616\r\n",
    b"Content-Length: +5\r\n",
    b"Content-Length: 5, 5\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked, chunked\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Transfer-Encoding : chunked\r\n",
    b"Transfer-Encoding:\x0bchunked\r\n",
    b"Transfer-Encoding: chunked\r\n X: y\r\n",
    b"Host: a\r\n",
    b"Connection: close\r\n",
    b"Connection: keep-alive, Content-Length\r\n",
    b"Expect: 100-continue\r\n",
    b"X-Forwarded-For: 6.6.6.6\r\n",
    b"X_Neutron_Router_ID: evil\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"\r\n\tfolded",
    b"ffffffffffffffffff\r\n",
    b"0\r\n\r\n",
    b";ext=\"x\"",
    b" HTTP/1.1",
    b"HTTP/2.0",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
];

fn upstream() -> Upstream {
    Upstream {
        id_line: "X-Neutron-Router-ID: r1\r\n".into(),
        close: false,
    }
}

/// Count the header lines named `name` (any case) in a parsed head.
fn count(headers: &[httparse::Header<'_>], name: &str) -> usize {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .count()
}

/// The body the connection loop would take after `info`'s head, or `None` when it would
/// close (incomplete body here, or a chunked body it answers 400/413).
fn body_of(buf: &[u8], info: &ReqInfo) -> Option<Vec<u8>> {
    let rest = &buf[info.head_len..];
    match info.body {
        Body::None => Some(Vec::new()),
        Body::Length(n) => rest.get(..n).map(<[u8]>::to_vec),
        Body::Chunked => {
            let mut d = Decoder::default();
            let mut out = Vec::new();
            d.feed(rest, |b| out.extend_from_slice(b)).ok()?;
            d.is_done().then_some(out)
        }
    }
}

/// One request through `parse` and `finish`, asserting the contract on what comes out.
fn check_request(buf: &[u8]) {
    let mut out = Vec::new();
    let peer: IpAddr = "10.250.0.7".parse().expect("ip");
    let info = match request::parse(buf, &upstream(), peer, &mut out) {
        Ok(None) => {
            assert!(buf.len() < MAX_HEAD, "a head over MAX_HEAD must be 431");
            return;
        }
        Err(e) => {
            assert!(matches!(e.status(), 400 | 413 | 431), "{e:?}");
            return;
        }
        Ok(Some(info)) => info,
    };
    assert!(info.head_len <= buf.len() && info.head_len <= MAX_HEAD);
    assert!(buf.get(info.method.clone()).is_some() && buf.get(info.target.clone()).is_some());
    let Some(body) = body_of(buf, &info) else {
        return;
    };
    if let Err(e) = request::finish(&mut out, info.body, &body) {
        assert_eq!(e.status(), 413);
        return;
    }
    assert!(out.len() <= request::MAX_UPSTREAM);
    assert_one_request(&out, buf, &info);
    // `auto` may add `Connection: close` to the finished request: still one request, the
    // line once, within the agent's one recv.
    let mut closing = out.clone();
    if request::ask_close(&mut closing, body.len()) {
        assert!(closing.len() <= request::MAX_UPSTREAM);
        let r = assert_one_request(&closing, buf, &info);
        assert_eq!(r, 1, "{closing:?}");
    }
}

/// The agent gets exactly one request: one strict parse, its own framing, the proxy's
/// identity headers once each, nothing the VM sent in their place. Returns how many
/// `Connection: close` lines it has.
fn assert_one_request(out: &[u8], buf: &[u8], info: &ReqInfo) -> usize {
    let mut h = [httparse::EMPTY_HEADER; 128];
    let mut r = httparse::Request::new(&mut h);
    let n = match r.parse(out) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("agent request does not parse ({other:?}): {:?}", out),
    };
    assert_eq!(count(r.headers, "transfer-encoding"), 0, "{out:?}");
    let cl = count(r.headers, "content-length");
    assert!(cl <= 1, "{out:?}");
    let declared = r
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| http1::content_length(h.value))
        .unwrap_or(0);
    assert_eq!(
        n as u64 + declared,
        out.len() as u64,
        "one request, whole: {out:?}"
    );
    assert_eq!(count(r.headers, "x-forwarded-for"), 1, "{out:?}");
    assert_eq!(count(r.headers, "x-neutron-router-id"), 1, "{out:?}");
    assert_eq!(count(r.headers, "x-neutron-network-id"), 0, "{out:?}");
    // Framing and hop-by-hop headers, in any WSGI spelling, are the proxy's own only.
    for h in r.headers.iter() {
        let wsgi = |n: &str| ns_contract::headers::eq_wsgi(h.name, n);
        if wsgi("content-length") || wsgi("connection") {
            assert!(
                h.name == "Content-Length" || (h.name == "Connection" && h.value == b"close"),
                "{}: {out:?}",
                h.name
            );
        }
        for n in [
            "transfer-encoding",
            "keep-alive",
            "te",
            "trailer",
            "upgrade",
            "expect",
        ] {
            assert!(!wsgi(n), "{}: {out:?}", h.name);
        }
    }
    // Every identity header (any spelling) is one the proxy wrote.
    for h in r.headers.iter() {
        if ns_contract::headers::is_identity(h.name) {
            let ours = (h.name == "X-Forwarded-For" && h.value == b"10.250.0.7")
                || (h.name == "X-Neutron-Router-ID" && h.value == b"r1")
                || (h.name == "X-NS-Metadata-Client-Forwarded" && h.value == b"1");
            assert!(ours, "{}: {out:?}", h.name);
        }
    }
    assert_eq!(r.method.map(str::as_bytes), buf.get(info.method.clone()));
    assert_eq!(r.path.map(str::as_bytes), buf.get(info.target.clone()));
    r.headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection") && h.value == b"close")
        .count()
}

#[test]
fn requests_truncated_and_substituted_at_every_offset() {
    for valid in REQUESTS {
        check_request(valid);
        for v in fuzz::truncations_and_substitutions(valid, b"\0\r\n \t:\xff\x7f") {
            check_request(&v);
        }
    }
}

#[test]
fn mutated_requests_are_one_request_or_an_error() {
    fuzz::run("request", 0x5eed_0001, 4000, |rng, _| {
        let valid = rng.pick(REQUESTS);
        check_request(&fuzz::mutate(rng, valid, REQUEST_DICT));
    });
    fuzz::run("request-random", 0x5eed_0002, 1000, |rng, _| {
        let n = rng.below(256);
        let mut v = b"GET / HTTP/1.1\r\n".to_vec();
        v.extend(rng.bytes(n));
        v.extend_from_slice(b"\r\n\r\n");
        check_request(&v);
    });
}

/// Smuggling shapes the request parser must refuse (never frame as something else).
#[test]
fn smuggling_shapes_get_400() {
    for (why, req) in [
        ("CL+TE", &b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..]),
        ("TE+CL", b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n"),
        ("chunked twice in one line", b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"),
        ("chunked twice in two lines", b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("empty TE then chunked", b"POST / HTTP/1.1\r\nTransfer-Encoding:\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("TE on HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("space before colon", b"POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
        ("obs-fold", b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n"),
        ("two lengths", b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
        ("length list", b"POST / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\nab"),
        ("signed length", b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\na"),
        ("overflowing length", b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\na"),
        ("NUL in a value", b"GET / HTTP/1.1\r\nX: a\0b\r\n\r\n"),
        ("bare CR in a value", b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n"),
        ("bare CR line end", b"GET / HTTP/1.1\rHost: h\r\r"),
        ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        ("HTTP/0.9", b"GET /\r\n\r\n"),
        ("unknown version", b"GET / HTTP/1.2\r\n\r\n"),
        ("unsupported Expect", b"GET / HTTP/1.1\r\nExpect: 200-ok\r\n\r\n"),
    ] {
        let mut out = Vec::new();
        let peer: IpAddr = "10.250.0.7".parse().expect("ip");
        let got = request::parse(req, &upstream(), peer, &mut out);
        assert!(
            matches!(got, Err(ref e) if e.status() == 400),
            "{why}: {got:?}"
        );
    }
}

/// The chunked decoder, fed whole or byte by byte, says the same: the same data, the same
/// end, the same error; it never reads past the end or emits more than it was given.
fn check_chunked(input: &[u8]) -> Result<(Vec<u8>, usize), http1::ChunkError> {
    let whole = {
        let mut d = Decoder::default();
        let mut data = Vec::new();
        let used = d.feed(input, |b| data.extend_from_slice(b));
        assert!(used.is_ok_and(|n| n <= input.len()) || used.is_err());
        used.map(|n| (data, n, d.is_done()))
    };
    let split = {
        let mut d = Decoder::default();
        let mut data = Vec::new();
        let mut used = 0;
        let mut err = None;
        for b in input.chunks(1) {
            match d.feed(b, |x| data.extend_from_slice(x)) {
                Ok(n) => used += n,
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
            if d.is_done() {
                break;
            }
        }
        match err {
            Some(e) => Err(e),
            None => Ok((data, used, d.is_done())),
        }
    };
    assert_eq!(whole, split, "{input:?}");
    let (data, used, done) = whole?;
    assert!(data.len() <= used);
    Ok((data, if done { used } else { usize::MAX }))
}

#[test]
fn chunked_bodies_decode_the_same_in_any_split_and_never_overflow() {
    const VALID: &[&[u8]] = &[
        b"5\r\nhello\r\n0\r\n\r\n",
        b"3;a=b;c\r\nabc\r\nA\r\n0123456789\r\n0\r\nX-T: y\r\nZ: 1\r\n\r\nNEXT",
        b"1\nx\n0\n\n",
    ];
    const DICT: &[&[u8]] = &[
        b"ffffffffffffffffff",
        b"fffffffffffffffff",
        b"00000000000000000000000000001",
        b";ext",
        b"0\r\n\r\n",
        b"\r\n0\r\n",
        b" ",
        b"0x5",
        b"-1",
    ];
    for v in VALID {
        check_chunked(v).expect("valid");
        for m in fuzz::truncations_and_substitutions(v, b"\0\r\n;gG") {
            let _ = check_chunked(&m);
        }
    }
    fuzz::run("chunked", 0x5eed_0003, 4000, |rng, _| {
        let v = rng.pick(VALID);
        let _ = check_chunked(&fuzz::mutate(rng, v, DICT));
    });
    for overflow in [&b"ffffffffffffffffff\r\n"[..], b"10000000000000000\r\n"] {
        assert!(check_chunked(overflow).is_err(), "{overflow:?}");
    }
    // The largest size that fits is a size, not an overflow: the body is just incomplete.
    assert!(check_chunked(b"ffffffffffffffff\r\nab").is_ok());
}

/// Bytes a chunked body spends on framing (extensions, trailers) are bounded: a client
/// cannot keep a connection reading an endless extension or trailer section.
#[test]
fn endless_chunk_extensions_and_trailers_are_refused() {
    let mut ext = b"1;".to_vec();
    ext.resize(64 * 1024, b'a');
    assert!(check_chunked(&ext).is_err(), "endless extension");
    let mut trailers = b"0\r\n".to_vec();
    while trailers.len() < 64 * 1024 {
        trailers.extend_from_slice(b"X-Trailer: 0123456789abcdef\r\n");
    }
    assert!(check_chunked(&trailers).is_err(), "endless trailers");
    let mut line = b"0\r\nX: ".to_vec();
    line.resize(64 * 1024, b'b');
    assert!(check_chunked(&line).is_err(), "endless trailer line");
    // Neutron-sized extensions and trailers stay fine.
    check_chunked(b"5;name=value;other=\"quoted\"\r\nhello\r\n0\r\nA: b\r\nC: d\r\n\r\n")
        .expect("ordinary framing");
}

const RESPONSES: &[&[u8]] = &[
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.0 404 Not Found\nContent-Type: text/html\nContent-Length: 3\n\nabc",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-NS-Metadata-Keepalive: 15\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\n\r\nboom",
    b"HTTP/1.1 204 No Content\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\r\n",
];

const RESPONSE_DICT: &[&[u8]] = &[
    b"Content-Length: 0\r\n",
    b"Content-Length: 99999999999999999999\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip\r\n",
    b"Connection: close\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\n",
    b"X-NS-Metadata-Keepalive: 18446744073709551616\r\n",
    b"\r\n folded",
];

/// One agent answer through `parse`: a 502 error, or a head the VM can parse with one
/// framing that matches what the relay will send.
fn check_response(buf: &[u8], client: ForClient) {
    let mut out = Vec::new();
    let info = match response::parse(buf, client, &mut out) {
        Ok(None) => {
            assert!(
                buf.len() < MAX_RESP_HEAD,
                "a head over the limit must be a 502"
            );
            return;
        }
        Err(_) => return,
        Ok(Some(info)) => info,
    };
    assert!((200..=999).contains(&info.status) && info.head_len <= buf.len());
    let mut h = [httparse::EMPTY_HEADER; 128];
    let mut r = httparse::Response::new(&mut h);
    let n = match r.parse(&out) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("VM's head does not parse ({other:?}): {out:?}"),
    };
    assert_eq!(n, out.len(), "exactly one head: {out:?}");
    assert_eq!(r.code, Some(info.status));
    let cl = count(r.headers, "content-length");
    let te = count(r.headers, "transfer-encoding");
    assert!(cl <= 1 && te <= 1 && cl + te <= 1, "one framing: {out:?}");
    match info.framing {
        Framing::Length(_) => assert_eq!(cl, 1, "{out:?}"),
        Framing::Chunked if !info.decode_chunked => assert_eq!(te, 1, "{out:?}"),
        Framing::Close => assert!(info.client_close, "{out:?}"),
        _ => assert_eq!(te, 0, "{out:?}"),
    }
    if info.client_close {
        assert_eq!(count(r.headers, "connection"), 1, "{out:?}");
    }
}

#[test]
fn mutated_agent_answers_are_one_answer_or_a_502() {
    let clients = [
        ForClient {
            is_head: false,
            minor: 1,
            keep_alive: true,
        },
        ForClient {
            is_head: true,
            minor: 1,
            keep_alive: true,
        },
        ForClient {
            is_head: false,
            minor: 0,
            keep_alive: false,
        },
    ];
    for valid in RESPONSES {
        for c in clients {
            check_response(valid, c);
            for v in fuzz::truncations_and_substitutions(valid, b"\0\r\n :\xff") {
                check_response(&v, c);
            }
        }
    }
    fuzz::run("response", 0x5eed_0004, 4000, |rng: &mut Rng, _| {
        let valid = rng.pick(RESPONSES);
        let c = *rng.pick(&clients);
        check_response(&fuzz::mutate(rng, valid, RESPONSE_DICT), c);
    });
}

#[test]
fn every_error_page_is_one_well_formed_answer() {
    for status in [400, 408, 413, 429, 431, 501, 502, 503, 504, 599] {
        for keep in [true, false] {
            let mut out = Vec::new();
            http1::error_page(status, keep, &mut out);
            let mut h = [httparse::EMPTY_HEADER; 16];
            let mut r = httparse::Response::new(&mut h);
            let Ok(httparse::Status::Complete(n)) = r.parse(&out) else {
                panic!("{status}: {out:?}");
            };
            let cl = r
                .headers
                .iter()
                .find(|h| h.name == "Content-Length")
                .and_then(|h| http1::content_length(h.value));
            assert_eq!(cl, Some((out.len() - n) as u64), "{status}");
            assert_eq!(r.code, Some(status));
        }
    }
}
