//! Generic HTTP/1 pieces the relay is built from (RFC 9110, RFC 9112): header-name
//! comparison, comma-separated tokens, `Connection` parsing, `Content-Length` parsing, the
//! end-of-head check, idempotent methods, status reasons and the proxy's own error page, and
//! a streaming `Transfer-Encoding: chunked` decoder. A leaf: nothing here knows about the
//! proxy, the agent or Neutron, and nothing here allocates.

use std::io::Write as _;

/// The interim answer to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Header names are case-insensitive (RFC 9110 §5.1).
#[inline]
pub fn name_is(name: &str, lower: &str) -> bool {
    name.eq_ignore_ascii_case(lower)
}

/// Comma-separated tokens of a header value, trimmed, empty ones skipped (RFC 9110 §5.6.1).
pub fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&c| c == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// What one `Connection` header value asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionTokens {
    pub close: bool,
    pub keep_alive: bool,
}

/// The `close` and `keep-alive` tokens of a `Connection` header value.
pub fn connection_tokens(v: &[u8]) -> ConnectionTokens {
    let mut c = ConnectionTokens::default();
    for t in tokens(v) {
        c.close |= t.eq_ignore_ascii_case(b"close");
        c.keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
    }
    c
}

/// Whether header `name` is listed in any `Connection` header, so it is hop-by-hop
/// (RFC 9110 §7.6.1).
pub fn named_in_connection(headers: &[httparse::Header<'_>], name: &str) -> bool {
    headers
        .iter()
        .filter(|h| name_is(h.name, "connection"))
        .flat_map(|h| tokens(h.value))
        .any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
}

/// A `Content-Length` value: digits only, surrounding whitespace allowed (RFC 9110 §8.6).
/// `None` for anything else, including a sign, a list, or a number over `u64`.
pub fn content_length(v: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(v).ok()?.trim();
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Whether a `Transfer-Encoding` value is exactly `chunked` (the only coding relayed, in
/// either direction: the proxy decodes no other).
pub fn chunked_only(v: &[u8]) -> bool {
    let mut it = tokens(v);
    matches!((it.next(), it.next()), (Some(t), None) if t.eq_ignore_ascii_case(b"chunked"))
}

/// RFC 9110 §9.2.2: methods safe to send again after a failure before any answer.
pub fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// A cheap pre-check before parsing a head: an empty line has arrived since byte `from`
/// (the bytes before it were searched already), or `max` bytes are there.
pub fn head_may_be_complete(b: &[u8], from: usize, max: usize) -> bool {
    // An end marker may straddle `from`: look back by its length less one.
    let new = b.get(from.saturating_sub(2)..).unwrap_or_default();
    b.len() >= max || new.windows(2).any(|w| w == b"\n\n") || new.windows(3).any(|w| w == b"\n\r\n")
}

/// The reason phrase of a status the proxy answers itself, and the sentence of its error
/// page (haproxy's wording, which the agents' operators know from Neutron).
pub fn reason(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => ("Bad Request", "Your browser sent an invalid request."),
        408 => (
            "Request Time-out",
            "Your browser didn't send a complete request in time.",
        ),
        413 => (
            "Payload Too Large",
            "The request is larger than the metadata agent accepts.",
        ),
        429 => (
            "Too Many Requests",
            "You have sent too many requests in a given amount of time.",
        ),
        431 => (
            "Request Header Fields Too Large",
            "The request header block is too large.",
        ),
        502 => (
            "Bad Gateway",
            "The metadata agent returned an invalid or no response.",
        ),
        503 => (
            "Service Unavailable",
            "No server is available to handle this request.",
        ),
        504 => (
            "Gateway Time-out",
            "The metadata agent didn't respond in time.",
        ),
        _ => ("Error", "Error."),
    }
}

/// The body of the proxy's own error page.
struct Page {
    status: u16,
    title: &'static str,
    text: &'static str,
}

impl std::fmt::Display for Page {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Page {
            status,
            title,
            text,
        } = self;
        write!(
            f,
            "<html><head><title>{status} {title}</title></head><body><h1>{status} {title}</h1>\n{text}\n</body></html>\n"
        )
    }
}

/// Counts bytes written through `fmt`, so a body's length is known before it is written.
struct Count(usize);

impl std::fmt::Write for Count {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0 += s.len();
        Ok(())
    }
}

/// Append a complete HTML error answer (head and body) for `status` to `out`, with
/// `Connection: keep-alive` or `close`.
pub fn error_page(status: u16, keep: bool, out: &mut Vec<u8>) {
    use std::fmt::Write as _;
    let (title, text) = reason(status);
    let page = Page {
        status,
        title,
        text,
    };
    let mut len = Count(0);
    let _ = write!(len, "{page}");
    // Writes into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status} {title}\r\nContent-Type: text/html\r\nContent-Length: {}\r\nCache-Control: no-cache\r\nConnection: {}\r\n\r\n{page}",
        len.0,
        if keep { "keep-alive" } else { "close" }
    );
}

// Transfer-Encoding: chunked (RFC 9112 §7.1): where a chunked body ends and its data
// bytes, handed out without allocating.

/// Why a chunked body could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked encoding")]
pub struct ChunkError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading hex digits of a chunk size (`any` = at least one digit seen).
    Size {
        any: bool,
    },
    /// Skipping a chunk extension up to the line end.
    Ext,
    /// Saw `\r` after the size line, expect `\n`.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// After data: expect `\r` (or a bare `\n`).
    DataCr,
    DataLf,
    /// At the start of a trailer line (after the last chunk).
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    TrailerLf,
    /// Saw `\r` of the final empty line.
    EndLf,
    Done,
}

/// Most bytes of chunk extensions and trailer fields one body may carry. They are skipped,
/// not kept, so without a bound a peer could keep a connection reading an endless extension
/// or trailer section (hyper and Node bound them the same way).
pub const MAX_CHUNK_FRAMING: usize = 16 * 1024;

/// Decoder state; feed it bytes as they arrive.
#[derive(Debug, Clone)]
pub struct Decoder {
    state: ChunkState,
    remaining: u64,
    /// Extension and trailer bytes seen so far (bounded by [`MAX_CHUNK_FRAMING`]).
    skipped: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            state: ChunkState::Size { any: false },
            remaining: 0,
            skipped: 0,
        }
    }
}

impl Decoder {
    /// True once the terminating empty line has been consumed.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consume bytes from `input`, calling `on_data` with each run of body data. Returns how
    /// many bytes were consumed: all of `input`, or fewer when the body ended inside it.
    pub fn feed(
        &mut self,
        input: &[u8],
        mut on_data: impl FnMut(&[u8]),
    ) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                ChunkState::Done => return Ok(i),
                ChunkState::Size { any } => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).ok_or(ChunkError)? as u64;
                        self.remaining = self
                            .remaining
                            .checked_mul(16)
                            .and_then(|r| r.checked_add(d))
                            .ok_or(ChunkError)?;
                        self.state = ChunkState::Size { any: true };
                    }
                    b';' | b' ' | b'\t' if any => self.state = ChunkState::Ext,
                    b'\r' if any => self.state = ChunkState::SizeLf,
                    b'\n' if any => self.end_size_line(),
                    _ => return Err(ChunkError),
                },
                ChunkState::Ext => match b {
                    b'\r' => self.state = ChunkState::SizeLf,
                    b'\n' => self.end_size_line(),
                    _ => self.skip()?,
                },
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError);
                    }
                    self.end_size_line();
                }
                ChunkState::Data => {
                    let n = (input.len() - i)
                        .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                    on_data(&input[i..i + n]);
                    self.remaining -= n as u64;
                    i += n;
                    if self.remaining == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::DataCr => match b {
                    b'\r' => self.state = ChunkState::DataLf,
                    b'\n' => self.state = ChunkState::Size { any: false },
                    _ => return Err(ChunkError),
                },
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError);
                    }
                    self.state = ChunkState::Size { any: false };
                }
                ChunkState::TrailerStart => match b {
                    b'\r' => self.state = ChunkState::EndLf,
                    b'\n' => {
                        self.state = ChunkState::Done;
                        return Ok(i + 1);
                    }
                    _ => {
                        self.skip()?;
                        self.state = ChunkState::Trailer;
                    }
                },
                ChunkState::Trailer => match b {
                    b'\r' => self.state = ChunkState::TrailerLf,
                    b'\n' => self.state = ChunkState::TrailerStart,
                    _ => self.skip()?,
                },
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError);
                    }
                    self.state = ChunkState::TrailerStart;
                }
                ChunkState::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError);
                    }
                    self.state = ChunkState::Done;
                    return Ok(i + 1);
                }
            }
            i += 1;
        }
        Ok(i)
    }

    /// Count one extension or trailer byte.
    fn skip(&mut self) -> Result<(), ChunkError> {
        self.skipped += 1;
        if self.skipped > MAX_CHUNK_FRAMING {
            return Err(ChunkError);
        }
        Ok(())
    }

    fn end_size_line(&mut self) {
        self.state = if self.remaining == 0 {
            ChunkState::TrailerStart
        } else {
            ChunkState::Data
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_connection() {
        let t: Vec<&[u8]> = tokens(b" keep-alive , ,X-Custom,").collect();
        assert_eq!(t, [&b"keep-alive"[..], b"X-Custom"]);
        assert_eq!(
            connection_tokens(b"Keep-Alive, CLOSE"),
            ConnectionTokens {
                close: true,
                keep_alive: true
            }
        );
        let h = [httparse::Header {
            name: "Connection",
            value: b"close, X-Hop",
        }];
        assert!(named_in_connection(&h, "x-hop"));
        assert!(!named_in_connection(&h, "x-other"));
        assert!(chunked_only(b" Chunked "));
        assert!(!chunked_only(b"gzip, chunked"));
    }

    #[test]
    fn content_lengths() {
        assert_eq!(content_length(b" 42 "), Some(42));
        assert_eq!(
            content_length(u64::MAX.to_string().as_bytes()),
            Some(u64::MAX)
        );
        for bad in [
            &b""[..],
            b"-1",
            b"+1",
            b"1,1",
            b"x",
            b"18446744073709551616",
        ] {
            assert_eq!(content_length(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn head_end_found_across_reads() {
        let head = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        // Whatever the split, searching only the new bytes finds the end, and not before.
        for cut in 0..head.len() {
            let first = head_may_be_complete(&head[..cut], 0, 1024);
            let second = head_may_be_complete(head, cut, 1024);
            assert!(first || second, "missed the end with the cut at {cut}");
            assert!(!first || cut >= head.len() - 1, "early end at {cut}");
        }
        assert!(head_may_be_complete(b"GET / HTTP/1.0\n\n", 15, 1024));
        assert!(!head_may_be_complete(
            b"GET / HTTP/1.0\n\nX: y\r\n",
            17,
            1024
        ));
        assert!(head_may_be_complete(b"GET", 0, 3));
    }

    #[test]
    fn error_page_length_matches_its_body() {
        let mut out = Vec::new();
        error_page(503, true, &mut out);
        let text = String::from_utf8(out).expect("utf8");
        let (head, body) = text.split_once("\r\n\r\n").expect("head");
        assert!(
            head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{head}"
        );
        assert!(head.ends_with("Connection: keep-alive"), "{head}");
        assert!(
            head.contains(&format!("Content-Length: {}\r\n", body.len())),
            "{head}"
        );
        assert!(is_idempotent("PUT") && !is_idempotent("POST"));
    }

    fn decode_all(input: &[u8], step: usize) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        let mut used = 0;
        for part in input.chunks(step) {
            used += d.feed(part, |b| out.extend_from_slice(b))?;
            if d.is_done() {
                break;
            }
        }
        assert!(d.is_done(), "not done");
        Ok((out, used))
    }

    #[test]
    fn decodes_in_any_split() {
        let body = b"5\r\nhello\r\nA;ext=1\r\n0123456789\r\n0\r\nX-T: y\r\n\r\nNEXT";
        for step in 1..body.len() {
            let (data, used) = decode_all(body, step).expect("valid");
            assert_eq!(data, b"hello0123456789");
            assert_eq!(&body[used..], b"NEXT");
        }
    }

    #[test]
    fn bare_lf_tolerated() {
        let (data, _) = decode_all(b"3\nabc\n0\n\n", 64).expect("valid");
        assert_eq!(data, b"abc");
    }

    #[test]
    fn rejects_garbage_and_overflow() {
        let mut d = Decoder::default();
        assert!(d.feed(b"zz\r\n", |_| {}).is_err());
        let mut d = Decoder::default();
        assert!(d.feed(b"fffffffffffffffffff\r\n", |_| {}).is_err());
        let mut d = Decoder::default();
        assert!(d.feed(b"\r\n", |_| {}).is_err());
        let mut d = Decoder::default();
        assert!(d.feed(b"1\r\nab\r\n", |_| {}).is_err());
    }
}
