//! The agent side of one request: parse the agent's response head (tolerating Neutron's
//! bare-`\n` and unterminated heads) and write the head the VM gets.

use std::io::Write as _;

use ns_contract::keepalive::HEADER as KEEPALIVE;

use crate::http1::{chunked_only, connection_tokens, content_length, name_is, named_in_connection};
/// Largest response head accepted from the agent; more is a 502.
pub const MAX_RESP_HEAD: usize = 16 * 1024;
const MAX_RESP_HEADERS: usize = 100;

/// Response headers never relayed (hop-by-hop, RFC 9110 §7.6.1) or re-created by us.
const STRIP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    KEEPALIVE.lower,
];

/// How the agent frames the response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Body runs until the agent closes.
    Close,
}

/// What the relay needs to know about a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RespInfo {
    pub status: u16,
    pub head_len: usize,
    pub framing: Framing,
    /// The agent allows another request on this connection (HTTP/1.1, no `close`, a body
    /// with a known end).
    pub agent_reusable: bool,
    /// Seconds from the agent's keep-alive signal ([`ns_contract::keepalive::HEADER`]) when
    /// present and valid.
    pub keepalive_hint: Option<u64>,
    /// The client connection must close after this response.
    pub client_close: bool,
    /// Strip chunked framing for an HTTP/1.0 client.
    pub decode_chunked: bool,
}

/// The agent's response could not be understood: 502 to the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed response from the agent: {0}")]
pub struct RespError(pub &'static str);

/// About the client request being answered.
#[derive(Debug, Clone, Copy)]
pub struct ForClient {
    pub is_head: bool,
    pub minor: u8,
    pub keep_alive: bool,
}

/// Parse the agent's head at the start of `buf`; `Ok(None)` means read more. On success the
/// VM's head is in `out`.
pub fn parse(
    buf: &[u8],
    client: ForClient,
    out: &mut Vec<u8>,
) -> Result<Option<RespInfo>, RespError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESP_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_RESP_HEAD => {
            return Err(RespError("head too large"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(RespError("unparsable head")),
    };
    let (Some(status), Some(minor)) = (resp.code, resp.version) else {
        return Err(RespError("incomplete status line"));
    };
    if status < 200 {
        return Err(RespError("interim (1xx) response"));
    }
    let reason = resp.reason.unwrap_or("");
    let headers = resp.headers;

    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut close = minor == 0;
    let mut keepalive_hint = None;
    for h in headers.iter() {
        if name_is(h.name, "content-length") {
            let n = content_length(h.value).ok_or(RespError("invalid Content-Length"))?;
            if length.is_some_and(|m| m != n) {
                return Err(RespError("conflicting Content-Length"));
            }
            length = Some(n);
        } else if name_is(h.name, "transfer-encoding") {
            // Only one `chunked` can be relayed: another coding (gzip) would reach the VM
            // undecoded with its Transfer-Encoding gone (RFC 9112 §6.1), a second line is
            // chunked twice.
            if chunked || !chunked_only(h.value) {
                return Err(RespError("transfer coding other than one chunked"));
            }
            chunked = true;
        } else if name_is(h.name, "connection") {
            let c = connection_tokens(h.value);
            if c.close {
                close = true;
            } else if minor == 0 && c.keep_alive {
                close = false;
            }
        } else if KEEPALIVE.is(h.name) {
            keepalive_hint = std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok());
        }
    }
    let framing = if client.is_head || status == 204 || status == 304 {
        Framing::None
    } else {
        match (chunked, length) {
            (true, _) => Framing::Chunked,
            (false, Some(n)) => Framing::Length(n),
            (false, None) => Framing::Close,
        }
    };
    let decode_chunked = framing == Framing::Chunked && client.minor == 0;
    let client_close = !client.keep_alive || framing == Framing::Close || decode_chunked;
    // RFC 9112 §6.1, §6.3: Transfer-Encoding with Content-Length, or in HTTP/1.0, is read as
    // chunked, but such framing may be a smuggled second answer: never reuse that connection.
    let suspect = chunked && (length.is_some() || minor == 0);
    let agent_reusable = !close && !suspect && framing != Framing::Close;

    out.clear();
    let _ = write!(out, "HTTP/1.1 {status} {reason}\r\n");
    for h in headers.iter() {
        if STRIP.iter().any(|s| name_is(h.name, s)) || named_in_connection(headers, h.name) {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(n) => {
            let _ = write!(out, "Content-Length: {n}\r\n");
        }
        // HEAD: the length of what GET would return, as the agent said.
        Framing::None if client.is_head => {
            if let Some(n) = length {
                let _ = write!(out, "Content-Length: {n}\r\n");
            }
        }
        Framing::Chunked if !decode_chunked => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n")
        }
        _ => {}
    }
    if client_close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if client.minor == 0 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(RespInfo {
        status,
        head_len,
        framing,
        agent_reusable,
        keepalive_hint,
        client_close,
        decode_chunked,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const C11: ForClient = ForClient {
        is_head: false,
        minor: 1,
        keep_alive: true,
    };

    fn run(buf: &[u8], c: ForClient) -> (RespInfo, String) {
        let mut out = Vec::new();
        let info = parse(buf, c, &mut out).expect("valid").expect("complete");
        (info, String::from_utf8(out).expect("utf8"))
    }

    #[test]
    fn neutron_style_bare_lf_error_reply() {
        let raw = b"HTTP/1.1 404 Not Found\nContent-Type: text/html\nContent-Length: 3\n\nabc";
        let (i, out) = run(raw, C11);
        assert_eq!(i.status, 404);
        assert_eq!(i.framing, Framing::Length(3));
        assert_eq!(i.head_len, raw.len() - 3);
        assert_eq!(
            out,
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: 3\r\n\r\n"
        );
    }

    #[test]
    fn keepalive_signal_is_read_and_stripped_in_any_case() {
        let (i, out) = run(
            b"HTTP/1.1 200 OK\r\nx-ns-METADATA-keepalive: 15\r\nContent-Length: 0\r\n\r\n",
            C11,
        );
        assert_eq!(i.keepalive_hint, Some(15));
        assert!(i.agent_reusable && !i.client_close);
        assert!(!out.to_ascii_lowercase().contains("x-ns-metadata"), "{out}");
    }

    #[test]
    fn close_delimited_and_connection_close() {
        let (i, out) = run(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", C11);
        assert_eq!(i.framing, Framing::Close);
        assert!(!i.agent_reusable && i.client_close);
        assert!(out.ends_with("Connection: close\r\n\r\n"));
    }

    #[test]
    fn chunked_passthrough_or_decoded_for_http10() {
        let (i, out) = run(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            C11,
        );
        assert_eq!(i.framing, Framing::Chunked);
        assert!(out.contains("Transfer-Encoding: chunked"));
        let c10 = ForClient { minor: 0, ..C11 };
        let (i, out) = run(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            c10,
        );
        assert!(i.decode_chunked && i.client_close);
        assert!(!out.contains("chunked"));
    }

    /// RFC 9112 §6.1, §6.3: `Transfer-Encoding` with `Content-Length`, or on an HTTP/1.0
    /// answer, is read as chunked but the framing is suspect: that agent connection is not
    /// used again (a smuggled second answer would meet the next request).
    #[test]
    fn suspect_framing_is_relayed_but_the_agent_connection_not_reused() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            let (i, out) = run(raw, C11);
            assert_eq!(i.framing, Framing::Chunked);
            assert!(!i.agent_reusable, "{raw:?}");
            assert!(!out.contains("Content-Length"), "{out}");
        }
        let (i, _) = run(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            C11,
        );
        assert!(i.agent_reusable);
    }

    /// Only chunked can be relayed: a `gzip` transfer coding would reach the VM undecoded,
    /// its `Transfer-Encoding` gone (RFC 9112 §6.1), and `chunked` twice is chunked twice.
    #[test]
    fn transfer_codings_other_than_one_chunked_are_a_502() {
        let mut out = Vec::new();
        for raw in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        ] {
            assert!(parse(raw, C11, &mut out).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn bad_responses() {
        let mut out = Vec::new();
        assert!(parse(b"HTTP/1.1 100 Continue\r\n\r\n", C11, &mut out).is_err());
        assert!(parse(b"garbage\r\n\r\n", C11, &mut out).is_err());
        assert!(parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            C11,
            &mut out
        )
        .is_err());
        assert_eq!(parse(b"HTTP/1.1 200 OK\r\n", C11, &mut out), Ok(None));
    }
}
