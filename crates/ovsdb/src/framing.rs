//! JSON-RPC 1.0 framing as OVSDB uses it: JSON values concatenated on the stream with no
//! delimiter. [`Splitter`] finds where each top-level value ends with a small scanner that
//! keeps its state across reads (so a large initial dump split over many reads is scanned
//! once, not re-parsed from the start on every read), tracking strings and escapes so braces
//! inside strings do not count. Each complete value is then parsed once with serde_json.
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, Result};

/// Buffer capacity kept between messages; more is released once a large message is done.
const SHRINK_ABOVE: usize = 1 << 20;

/// Bytes received but not yet returned as messages, and the scan position inside them.
#[derive(Debug)]
pub struct Splitter {
    buf: Vec<u8>,
    /// Where the current value starts in `buf` (bytes before it are consumed).
    start: usize,
    /// Bytes of `buf` already scanned.
    scanned: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
    max: usize,
}

impl Splitter {
    /// A splitter refusing any single message longer than `max` bytes.
    pub fn new(max: usize) -> Splitter {
        Splitter {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            depth: 0,
            in_string: false,
            escaped: false,
            max,
        }
    }

    /// Append bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The buffer to read into (for `read_buf`); call [`Splitter::next_message`] after.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Whether bytes of an unfinished message are pending (a stream ending here was cut).
    pub fn has_partial(&self) -> bool {
        self.buf[self.start..]
            .iter()
            .any(|b| !b.is_ascii_whitespace())
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Value>> {
        self.next_as()
    }

    /// The next complete message read as `T`, `Ok(None)` if more bytes are needed.
    pub fn next_as<T: DeserializeOwned>(&mut self) -> Result<Option<T>> {
        while self.scanned < self.buf.len() {
            let c = self.buf[self.scanned];
            self.scanned += 1;
            if self.depth == 0 {
                match c {
                    b' ' | b'\t' | b'\r' | b'\n' => {
                        // Whitespace between messages.
                        self.start = self.scanned;
                        continue;
                    }
                    // JSON-RPC messages are objects (RFC 7047 §4).
                    b'{' => {
                        self.depth = 1;
                        continue;
                    }
                    _ => {
                        return Err(Error::protocol(format!(
                            "message does not start with an object (byte {c:#04x})"
                        )))
                    }
                }
            }
            if self.in_string {
                match (self.escaped, c) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match c {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        if self.scanned - self.start > self.max {
                            return Err(self.too_long());
                        }
                        let parsed =
                            serde_json::from_slice::<T>(&self.buf[self.start..self.scanned]);
                        self.start = self.scanned;
                        return parsed
                            .map(Some)
                            .map_err(|e| Error::protocol(format!("malformed JSON: {e}")));
                    }
                }
                _ => {}
            }
        }
        // Everything before `start` is consumed: drop it once per read, not per message.
        self.buf.drain(..self.start);
        self.scanned -= self.start;
        self.start = 0;
        // Give back the room a large message (the initial view) needed.
        if self.buf.capacity() > SHRINK_ABOVE && self.buf.len() < SHRINK_ABOVE / 4 {
            self.buf.shrink_to(SHRINK_ABOVE / 4);
        }
        if self.scanned > self.max {
            return Err(self.too_long());
        }
        Ok(None)
    }

    fn too_long(&self) -> Error {
        Error::protocol(format!("message longer than {} bytes", self.max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn all(s: &mut Splitter) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(v) = s.next_message().expect("valid stream") {
            out.push(v);
        }
        out
    }

    #[test]
    fn two_messages_in_one_read() {
        let mut s = Splitter::new(1 << 20);
        s.push(br#"{"id":1,"result":[],"error":null}  {"id":null,"method":"update2","params":["m",{}]}"#);
        assert_eq!(
            all(&mut s),
            vec![
                json!({"id":1,"result":[],"error":null}),
                json!({"id":null,"method":"update2","params":["m",{}]})
            ]
        );
        assert!(!s.has_partial());
    }

    #[test]
    fn one_message_across_many_reads_byte_by_byte() {
        let msg = br#"{"id":"echo","method":"echo","params":["a}]\"{[\\",{"k":"\u007b"}]}"#;
        let mut s = Splitter::new(1 << 20);
        let mut got = Vec::new();
        for b in msg.iter().chain(b"\n{\"id\":2,") {
            s.push(&[*b]);
            got.extend(all(&mut s));
        }
        assert_eq!(
            got,
            vec![json!({"id":"echo","method":"echo","params":["a}]\"{[\\",{"k":"{"}]})]
        );
        assert!(s.has_partial(), "the second message is still incomplete");
        s.push(b"\"result\":null,\"error\":null}");
        assert_eq!(
            all(&mut s),
            vec![json!({"id":2,"result":null,"error":null})]
        );
    }

    #[test]
    fn strings_with_escaped_backslash_before_quote() {
        // "\\" ends the string; the brace after it closes the object.
        let mut s = Splitter::new(1 << 20);
        s.push(br#"{"a":"\\"}{"b":"}"}"#);
        assert_eq!(all(&mut s), vec![json!({"a":"\\"}), json!({"b":"}"})]);
    }

    #[test]
    fn malformed_input_is_an_error() {
        for bad in [
            &b"42"[..],
            b"\"str\"",
            b"nul",
            b"{\"a\":}",
            b"{\"a\" 1}",
            b"[1,]",
        ] {
            let mut s = Splitter::new(1 << 20);
            s.push(bad);
            assert!(
                s.next_message().is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // Invalid UTF-8 inside a string.
        let mut s = Splitter::new(1 << 20);
        s.push(b"{\"a\":\"\xff\"}");
        assert!(s.next_message().is_err());
    }

    #[test]
    fn oversized_message_is_refused() {
        let mut s = Splitter::new(16);
        s.push(b"{\"a\":\"0123456789abcdef\"");
        assert!(s.next_message().is_err());
        // Also when it arrives complete in one read.
        let mut s = Splitter::new(16);
        s.push(b"{\"a\":\"0123456789abcdef\"}");
        assert!(s.next_message().is_err());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let mut s = Splitter::new(1 << 20);
        s.push(b"{\"a\":");
        s.push(&[b'['; 10_000]);
        s.push(&[b']'; 10_000]);
        s.push(b"}");
        assert!(s.next_message().is_err());
    }
}
