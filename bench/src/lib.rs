//! Minimal HTTP/1.1 framing shared by the agent stand-in and the load tools.
//!
//! Only what the benchmark needs: find the end of a header block, read `Content-Length`,
//! `Connection: close` and the status code. Deliberately not a general HTTP parser, so the
//! agent stand-in stays cheap enough never to be the bottleneck.
#![forbid(unsafe_code)]

pub mod cold;
pub mod control;
pub mod load;
pub mod probe;
pub mod report;
pub mod shared;

/// The header a keep-alive agent sets to tell the proxy it may reuse the connection
/// (the signal `--agent-keepalive auto` waits for, issue 8).
pub const KEEPALIVE_HEADER: &str = "X-NS-Metadata-Keepalive";

/// What the framing code needs from one request or response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Head {
    /// Bytes of the header block including the final blank line.
    pub len: usize,
    /// `Content-Length`, 0 when absent.
    pub content_length: usize,
    /// `Connection: close` was present.
    pub close: bool,
    /// Status code when the head is a response, `None` for a request.
    pub status: Option<u16>,
}

/// Why a head could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// A header line without a colon, a bad status line or a bad length.
    Malformed,
    /// `Transfer-Encoding` (chunked) is not something either side of the bench sends.
    Unsupported,
}

/// Position just past `\r\n\r\n`, if the buffer holds a complete head.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Parse the head at the start of `buf` (which must hold a complete head, see [`head_end`]).
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let Some(len) = head_end(buf) else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..len - 4]).map_err(|_| HeadError::Malformed)?;
    let mut lines = text.split("\r\n");
    let first = lines.next().ok_or(HeadError::Malformed)?;
    let status = if let Some(rest) = first.strip_prefix("HTTP/1.") {
        let code = rest.get(2..5).ok_or(HeadError::Malformed)?;
        Some(code.parse::<u16>().map_err(|_| HeadError::Malformed)?)
    } else {
        None
    };
    let mut head = Head {
        len,
        status,
        ..Head::default()
    };
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(HeadError::Malformed)?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            head.content_length = value.parse().map_err(|_| HeadError::Malformed)?;
        } else if name.eq_ignore_ascii_case("connection") {
            head.close = value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("close"));
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HeadError::Unsupported);
        }
    }
    Ok(Some(head))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_head_is_none() {
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
    }

    #[test]
    fn request_with_body_and_close() {
        let raw =
            b"POST /x HTTP/1.1\r\nContent-Length: 3\r\nConnection: keep-alive, Close\r\n\r\nabc";
        let head = parse_head(raw).expect("valid").expect("complete");
        assert_eq!(head.len, raw.len() - 3);
        assert_eq!(head.content_length, 3);
        assert!(head.close);
        assert_eq!(head.status, None);
    }

    #[test]
    fn response_status() {
        let raw = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n";
        let head = parse_head(raw).expect("valid").expect("complete");
        assert_eq!(head.status, Some(503));
        assert!(!head.close);
    }

    #[test]
    fn garbage_is_an_error() {
        assert_eq!(
            parse_head(b"GET /\r\nno colon\r\n\r\n"),
            Err(HeadError::Malformed)
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 2x\r\n\r\n"),
            Err(HeadError::Malformed)
        );
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(HeadError::Unsupported)
        );
    }
}
