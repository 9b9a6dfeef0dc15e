//! The client side of one request: parse the VM's request head, apply the header contract
//! (the header rules of the README's request path) and write the request for the agent into one buffer.

use std::io::Write as _;
use std::net::IpAddr;
use std::ops::Range;

use ns_contract::headers::{
    eq_wsgi, is_identity, CLIENT_FORWARDED_VALUE, X_FORWARDED_FOR, X_NS_METADATA_CLIENT_FORWARDED,
};

use crate::http1::{
    chunked_only, connection_tokens, content_length, is_idempotent, name_is, named_in_connection,
};

/// Largest request head accepted from a client; more gives 431 (as the issue asks).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header fields accepted in one head; more gives 431.
pub const MAX_HEADERS: usize = 100;
/// Neutron's agent reads the request with ONE `recv(4096)` (neutron/common/metadata.py
/// `handle`), so the whole upstream request must fit in that or it would be cut: 413.
pub const MAX_UPSTREAM: usize = 4096;

/// Asks the agent to close after its answer (`--agent-keepalive off`, and `auto` against an
/// agent that does not advertise reuse).
const CLOSE_LINE: &[u8] = b"Connection: close\r\n";

/// Other request headers never forwarded: the hop-by-hop set (RFC 9110 §7.6.1) and
/// framing we re-create. Compared ignoring case.
const STRIP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "expect",
    ns_contract::keepalive::HEADER.lower,
];

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    Length(usize),
    Chunked,
}

/// What the connection loop needs to know about a parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReqInfo {
    /// Bytes of the head in the input buffer (body follows).
    pub head_len: usize,
    /// Where method and target are in the input buffer (for the access log).
    pub method: Range<usize>,
    pub target: Range<usize>,
    /// HTTP/1.x minor version of the client.
    pub minor: u8,
    /// Whether the client wants the connection kept after this request.
    pub keep_alive: bool,
    pub body: Body,
    pub expect_continue: bool,
    /// RFC 9110 §9.2.2: safe to retry on a fresh agent connection.
    pub idempotent: bool,
    pub is_head: bool,
}

/// A request the proxy answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReqError {
    #[error("request header block too large")]
    HeadTooLarge,
    #[error("bad request: {0}")]
    Bad(&'static str),
    #[error("request larger than the agent accepts ({MAX_UPSTREAM} bytes)")]
    TooLarge,
}

impl ReqError {
    /// The status code the VM gets.
    pub fn status(self) -> u16 {
        match self {
            ReqError::HeadTooLarge => 431,
            ReqError::Bad(_) => 400,
            ReqError::TooLarge => 413,
        }
    }
}

/// Per-proxy constants that go into every upstream request.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// e.g. `X-Neutron-Router-ID: <id>\r\n`, prepared once.
    pub id_line: String,
    /// Ask the agent to close after the reply (`--agent-keepalive off`).
    pub close: bool,
}

/// Whether a client header is dropped instead of forwarded to the agent: an identity header
/// in any spelling (LP#1865036, [`ns_contract::headers::is_identity`]), a [`STRIP`] header
/// in any spelling too (the agent reads headers the WSGI way, where `Content_Length` is
/// `CONTENT_LENGTH`: a second length from the VM), or one named in `Connection`.
fn stripped(headers: &[httparse::Header<'_>], name: &str) -> bool {
    is_identity(name)
        || STRIP.iter().any(|s| eq_wsgi(name, s))
        || named_in_connection(headers, name)
}

/// Parse the head at the start of `buf`. `Ok(None)`: incomplete, read more. On success,
/// `out` holds the agent's request line and headers, without the final empty line (see
/// [`finish`]).
pub fn parse(
    buf: &[u8],
    up: &Upstream,
    peer: IpAddr,
    out: &mut Vec<u8>,
) -> Result<Option<ReqInfo>, ReqError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(ReqError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ReqError::HeadTooLarge),
        Err(_) => return Err(ReqError::Bad("malformed request head")),
    };
    if head_len > MAX_HEAD {
        return Err(ReqError::HeadTooLarge);
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(ReqError::Bad("incomplete request line"));
    };
    let headers = req.headers;

    let mut body = Body::None;
    let mut close = false;
    let mut keep = false;
    let mut expect_continue = false;
    let mut has_te = false;
    let mut hosts = 0;
    for h in headers.iter() {
        if name_is(h.name, "host") {
            // RFC 9112 §3.2: more than one Host line is a 400. A missing Host on HTTP/1.1
            // (which the RFC also makes a 400) is accepted on purpose: minimal IMDS
            // clients in VM images send none, and the agent does not use it.
            hosts += 1;
            if hosts > 1 {
                return Err(ReqError::Bad("more than one Host header"));
            }
        } else if name_is(h.name, "content-length") {
            let n = content_length(h.value).ok_or(ReqError::Bad("invalid Content-Length"))?;
            // Over usize: too large anyway (413 below).
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            match body {
                Body::Length(m) if m != n => {
                    return Err(ReqError::Bad("conflicting Content-Length"))
                }
                _ => body = Body::Length(n),
            }
        } else if name_is(h.name, "transfer-encoding") {
            // Two lines are one list (RFC 9110 §5.3): `chunked` twice, which a server
            // behind a proxy may read as something else, so a smuggling shape.
            if has_te {
                return Err(ReqError::Bad("more than one Transfer-Encoding"));
            }
            has_te = true;
            // Only `chunked` as the final (here: only) coding can be framed (RFC 9112 §6.3).
            if !chunked_only(h.value) {
                return Err(ReqError::Bad("unsupported Transfer-Encoding"));
            }
        } else if name_is(h.name, "connection") {
            let c = connection_tokens(h.value);
            close |= c.close;
            keep |= c.keep_alive;
        } else if name_is(h.name, "expect") {
            if h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            } else {
                return Err(ReqError::Bad("unsupported Expect"));
            }
        }
    }
    if has_te {
        // Request smuggling guard: both framings, or chunked from an HTTP/1.0 client.
        if body != Body::None || minor == 0 {
            return Err(ReqError::Bad(
                "Transfer-Encoding with Content-Length or HTTP/1.0",
            ));
        }
        body = Body::Chunked;
    }
    let keep_alive = if minor == 0 { keep && !close } else { !close };

    out.clear();
    for part in [method.as_bytes(), b" ", target.as_bytes(), b" HTTP/1.1\r\n"] {
        out.extend_from_slice(part);
    }
    // Whether the VM sent an X-Forwarded-For of its own (any spelling): only looked at for
    // headers already being stripped, so a request without one pays nothing for it.
    let mut client_forwarded = false;
    for h in headers.iter() {
        if stripped(headers, h.name) {
            client_forwarded |= eq_wsgi(h.name, X_FORWARDED_FOR.lower);
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    // The agent wants the VM's address, IPv4 written plainly (never ::ffff:a.b.c.d).
    out.extend_from_slice(X_FORWARDED_FOR.wire.as_bytes());
    out.extend_from_slice(b": ");
    crate::accesslog::push_ip(out, peer.to_canonical());
    out.extend_from_slice(b"\r\n");
    if client_forwarded {
        // A reverse proxy inside the guest: tell the agent, which refuses IMDSv2 token PUTs
        // that came that way (AWS's anti-SSRF rule).
        out.extend_from_slice(X_NS_METADATA_CLIENT_FORWARDED.wire.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(CLIENT_FORWARDED_VALUE.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(up.id_line.as_bytes());
    if up.close {
        out.extend_from_slice(CLOSE_LINE);
    }
    if let Body::Length(n) = body {
        // Fail before reading a body that cannot be sent anyway. `n` is the client's
        // number: compare without adding to it (usize::MAX must not overflow).
        if n.checked_add(out.len() + 32)
            .is_none_or(|t| t > MAX_UPSTREAM)
        {
            return Err(ReqError::TooLarge);
        }
    }
    if out.len() > MAX_UPSTREAM {
        return Err(ReqError::TooLarge);
    }

    let base = buf.as_ptr() as usize;
    let range = |s: &str| {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    Ok(Some(ReqInfo {
        head_len,
        method: range(method),
        target: range(target),
        minor,
        keep_alive,
        body,
        expect_continue,
        idempotent: is_idempotent(method),
        is_head: method == "HEAD",
    }))
}

/// Add `Connection: close` to a finished agent request in `out` (head and body, from
/// [`finish`]) that has none: `auto` found that the agent does not advertise reuse (issue
/// 19). False, and `out` unchanged, if the request already asks for it or the line would
/// take it over [`MAX_UPSTREAM`] (then the proxy ends the exchange itself, as before).
/// `body_len`: the body's bytes at the end of `out` (the request's own framing), so the
/// head's end is found without a scan; where no head ends there, it is scanned for.
pub fn ask_close(out: &mut Vec<u8>, body_len: usize) -> bool {
    // The head is ours: its first empty line is its end (no header value holds CR LF).
    let known = out
        .len()
        .checked_sub(body_len + 4)
        .filter(|&e| out.get(e..e + 4) == Some(b"\r\n\r\n"));
    let Some(end) = known.or_else(|| out.windows(4).position(|w| w == b"\r\n\r\n")) else {
        return false;
    };
    let head = &out[..end + 2];
    let asked = head
        .windows(CLOSE_LINE.len() + 2)
        .any(|w| w.starts_with(b"\r\n") && &w[2..] == CLOSE_LINE);
    if asked || out.len() + CLOSE_LINE.len() > MAX_UPSTREAM {
        return false;
    }
    out.splice(end + 2..end + 2, CLOSE_LINE.iter().copied());
    true
}

/// Complete the agent's request in `out` (from [`parse`]) with the body: head and body
/// go to the agent in one write, and must fit in [`MAX_UPSTREAM`].
pub fn finish(out: &mut Vec<u8>, body_kind: Body, body: &[u8]) -> Result<(), ReqError> {
    if body_kind != Body::None {
        let _ = write!(out, "Content-Length: {}\r\n", body.len());
    }
    out.extend_from_slice(b"\r\n");
    if out.len() + body.len() > MAX_UPSTREAM {
        return Err(ReqError::TooLarge);
    }
    out.extend_from_slice(body);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up() -> Upstream {
        Upstream {
            id_line: "X-Neutron-Router-ID: r1\r\n".into(),
            close: true,
        }
    }

    fn run(req: &[u8]) -> Result<(ReqInfo, String), ReqError> {
        let mut out = Vec::new();
        let peer: IpAddr = "::ffff:10.0.0.5".parse().expect("ip");
        let info = parse(req, &up(), peer, &mut out)?.expect("complete");
        let body = req[info.head_len..].to_vec();
        finish(&mut out, info.body, &body)?;
        Ok((info, String::from_utf8(out).expect("utf8")))
    }

    /// `auto` asks an agent that does not advertise reuse to close: the line goes at the end
    /// of the head, the body stays as it was; never twice, never over the agent's 4096 bytes.
    #[test]
    fn ask_close_adds_the_line_to_the_head_once() {
        let mut out =
            b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n\r\na\r\n\r\nb".to_vec();
        assert!(ask_close(&mut out, 6));
        assert_eq!(
            out,
            b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\nConnection: close\r\n\r\na\r\n\r\nb"
        );
        assert!(!ask_close(&mut out, 6), "already there");
        // A length where no head ends: the head's end is scanned for.
        let mut wrong =
            b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n\r\na\r\n\r\nb".to_vec();
        assert!(ask_close(&mut wrong, 3));
        assert_eq!(wrong, out);
        let mut big = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n".to_vec();
        big.resize(MAX_UPSTREAM - 10, b'x');
        let before = big.clone();
        assert!(!ask_close(&mut big, 0), "would not fit in one recv(4096)");
        assert_eq!(big, before);
        let mut no_head = b"GET / HTTP/1.1\r\n".to_vec();
        assert!(!ask_close(&mut no_head, 0));
    }

    #[test]
    fn strips_spoofed_headers_any_case_and_copies() {
        let (info, out) = run(b"GET /latest/meta-data?x=1 HTTP/1.1\r\nHost: h\r\nx-forwarded-for: 1.2.3.4\r\nX-FORWARDED-FOR: 5.6.7.8\r\nX-Neutron-Network-ID: evil\r\nx-neutron-router-id: evil\r\nX-OVN-Network-ID: e\r\nX-Instance-ID: i\r\nX-Instance-ID-Signature: s\r\nx-tenant-id: t\r\nKeep-Alive: 5\r\nConnection: keep-alive, X-Custom\r\nX-Custom: drop\r\nUser-Agent: ua\r\n\r\n").expect("ok");
        assert_eq!(
            out,
            "GET /latest/meta-data?x=1 HTTP/1.1\r\nHost: h\r\nUser-Agent: ua\r\nX-Forwarded-For: 10.0.0.5\r\nX-NS-Metadata-Client-Forwarded: 1\r\nX-Neutron-Router-ID: r1\r\nConnection: close\r\n\r\n"
        );
        assert!(info.keep_alive && info.idempotent);
    }

    #[test]
    fn strips_underscore_spellings_of_identity_headers() {
        let (_, out) = run(b"GET / HTTP/1.1\r\nHost: h\r\nX_Forwarded_For: 1.2.3.4\r\nx_neutron_router_id: evil\r\nX-Neutron_Network-ID: evil\r\nX_OVN_NETWORK_ID: e\r\nX_Instance_ID: i\r\nx_instance_id_signature: s\r\nX_Tenant_ID: t\r\nX_Custom_Thing: kept\r\n\r\n").expect("ok");
        assert_eq!(
            out,
            "GET / HTTP/1.1\r\nHost: h\r\nX_Custom_Thing: kept\r\nX-Forwarded-For: 10.0.0.5\r\nX-NS-Metadata-Client-Forwarded: 1\r\nX-Neutron-Router-ID: r1\r\nConnection: close\r\n\r\n"
        );
    }

    /// The agent reads headers the WSGI way (`_` and `-` alike, webob's `Content_Length` is
    /// `CONTENT_LENGTH`): framing and hop-by-hop headers in any spelling are not forwarded, or
    /// the VM could give the agent a second, conflicting length.
    #[test]
    fn strips_underscore_spellings_of_framing_headers() {
        let (_, out) = run(b"POST / HTTP/1.1\r\nHost: h\r\nContent_Length: 0\r\nTransfer_Encoding: chunked\r\ncontent_length: 9\r\nKeep_Alive: 1\r\nProxy_Connection: x\r\nX_NS_Metadata_Keepalive: 1\r\nContent-Length: 2\r\n\r\nhi").expect("ok");
        assert_eq!(
            out,
            "POST / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.5\r\nX-Neutron-Router-ID: r1\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi"
        );
    }

    #[test]
    fn client_forwarded_marked_only_when_the_vm_sent_xff() {
        // A reverse proxy in the guest: its X-Forwarded-For (any spelling) is replaced, and
        // the agent is told it was there.
        for xff in ["X-Forwarded-For: 192.168.0.9", "x_forwarded_for: 1.2.3.4"] {
            let req = format!("PUT /latest/api/token HTTP/1.1\r\nHost: h\r\n{xff}\r\n\r\n");
            let (_, out) = run(req.as_bytes()).expect("ok");
            assert_eq!(
                out,
                "PUT /latest/api/token HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.5\r\nX-NS-Metadata-Client-Forwarded: 1\r\nX-Neutron-Router-ID: r1\r\nConnection: close\r\n\r\n",
                "{xff}"
            );
        }
        // No X-Forwarded-For: no mark; a mark the VM sent itself is stripped, any spelling.
        let (_, out) = run(b"PUT /latest/api/token HTTP/1.1\r\nHost: h\r\nX-NS-Metadata-Client-Forwarded: 0\r\nx_ns_metadata_client_forwarded: 1\r\n\r\n").expect("ok");
        assert_eq!(
            out,
            "PUT /latest/api/token HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.5\r\nX-Neutron-Router-ID: r1\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn host_header_count() {
        let err = run(b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n").expect_err("two Hosts");
        assert_eq!(err.status(), 400);
        // No Host at all stays accepted (minimal IMDS clients).
        let (_, out) = run(b"GET / HTTP/1.1\r\n\r\n").expect("no Host is accepted");
        assert!(
            out.starts_with("GET / HTTP/1.1\r\nX-Forwarded-For"),
            "{out}"
        );
    }

    #[test]
    fn body_kept_and_framing_rewritten() {
        let (info, out) = run(b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello").expect("ok");
        assert_eq!(info.body, Body::Length(5));
        assert!(!info.idempotent);
        assert!(out.ends_with("Content-Length: 5\r\n\r\nhello"), "{out}");
    }

    #[test]
    fn errors_map_to_codes() {
        let bad = |r: &[u8]| run(r).expect_err("must fail").status();
        assert_eq!(bad(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"), 400);
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            400
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            400
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n"),
            400
        );
        assert_eq!(bad(b"GET\x01 / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(bad(b"POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n"), 413);
        // The largest number that parses must not overflow the size check.
        let huge = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", usize::MAX);
        assert_eq!(bad(huge.as_bytes()), 413);
        let many: String = (0..150).map(|i| format!("A{i}: b\r\n")).collect();
        assert_eq!(bad(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()), 431);
    }

    #[test]
    fn partial_and_oversized_heads() {
        let mut out = Vec::new();
        let peer: IpAddr = "10.0.0.1".parse().expect("ip");
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHo", &up(), peer, &mut out),
            Ok(None)
        );
        let big = vec![b'a'; MAX_HEAD];
        let mut req = b"GET / HTTP/1.1\r\nX: ".to_vec();
        req.extend_from_slice(&big);
        assert_eq!(
            parse(&req, &up(), peer, &mut out),
            Err(ReqError::HeadTooLarge)
        );
    }

    #[test]
    fn http10_keepalive_rules() {
        let (i, _) = run(b"GET / HTTP/1.0\r\n\r\n").expect("ok");
        assert!(!i.keep_alive);
        let (i, _) = run(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").expect("ok");
        assert!(i.keep_alive);
        let (i, _) = run(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").expect("ok");
        assert!(!i.keep_alive);
    }
}
