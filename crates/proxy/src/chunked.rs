//! A streaming decoder for `Transfer-Encoding: chunked` (RFC 9112 §7.1): finds where a
//! chunked body ends and hands out its data bytes, without allocating.

/// Why a chunked body could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked encoding")]
pub struct ChunkError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
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

/// Decoder state; feed it bytes as they arrive.
#[derive(Debug, Clone)]
pub struct Decoder {
    state: State,
    remaining: u64,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            state: State::Size { any: false },
            remaining: 0,
        }
    }
}

impl Decoder {
    /// True once the terminating empty line has been consumed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
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
                State::Done => return Ok(i),
                State::Size { any } => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).ok_or(ChunkError)? as u64;
                        self.remaining = self
                            .remaining
                            .checked_mul(16)
                            .and_then(|r| r.checked_add(d))
                            .ok_or(ChunkError)?;
                        self.state = State::Size { any: true };
                    }
                    b';' | b' ' | b'\t' if any => self.state = State::Ext,
                    b'\r' if any => self.state = State::SizeLf,
                    b'\n' if any => self.end_size_line(),
                    _ => return Err(ChunkError),
                },
                State::Ext => match b {
                    b'\r' => self.state = State::SizeLf,
                    b'\n' => self.end_size_line(),
                    _ => {}
                },
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError);
                    }
                    self.end_size_line();
                }
                State::Data => {
                    let n = (input.len() - i)
                        .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                    on_data(&input[i..i + n]);
                    self.remaining -= n as u64;
                    i += n;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::DataCr => match b {
                    b'\r' => self.state = State::DataLf,
                    b'\n' => self.state = State::Size { any: false },
                    _ => return Err(ChunkError),
                },
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError);
                    }
                    self.state = State::Size { any: false };
                }
                State::TrailerStart => match b {
                    b'\r' => self.state = State::EndLf,
                    b'\n' => {
                        self.state = State::Done;
                        return Ok(i + 1);
                    }
                    _ => self.state = State::Trailer,
                },
                State::Trailer => match b {
                    b'\r' => self.state = State::TrailerLf,
                    b'\n' => self.state = State::TrailerStart,
                    _ => {}
                },
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError);
                    }
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError);
                    }
                    self.state = State::Done;
                    return Ok(i + 1);
                }
            }
            i += 1;
        }
        Ok(i)
    }

    fn end_size_line(&mut self) {
        self.state = if self.remaining == 0 {
            State::TrailerStart
        } else {
            State::Data
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
