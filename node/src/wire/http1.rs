//! HTTP/1.1 body framing (RFC 9112 §6, §7.1), shared by the upstream client
//! ([`crate::providers::h1`]) and the gateway's own listener ([`crate::server::http1`]):
//! pure functions on buffers, so the fuzz targets and the tests reach every state without a
//! socket. Errors name the fault, not the side; callers say whose body it was.

use bytes::{Buf, Bytes, BytesMut};

/// Longest chunk-size line (size and extensions) or trailer line.
pub(crate) const MAX_LINE_BYTES: usize = 4096;
/// Most trailer lines after the last chunk.
const MAX_TRAILERS: usize = 100;

/// How a message's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (an answer to HEAD, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Read to the connection's end; the connection cannot be reused.
    UntilClose,
}

/// Whether a `Transfer-Encoding` value ends in `chunked`: only the last coding says how the
/// body ends (RFC 9112 §6.3).
pub fn last_coding_is_chunked(value: &[u8]) -> bool {
    let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
    last.trim_ascii().eq_ignore_ascii_case(b"chunked")
}

/// Whether a comma-separated header value (`Connection`) lists `token`, in any case.
pub fn lists_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|listed| listed.trim_ascii().eq_ignore_ascii_case(token))
}

/// A `content-length` value: digits only, no sign, no list, at most 19 digits.
pub fn parse_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// One step of reading a body out of the connection's buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// The buffer holds no more of the body: read from the connection.
    NeedMore,
    /// The body is complete.
    End,
}

/// Takes a body out of the connection's buffer, piece by piece, as it arrives.
#[derive(Debug)]
pub struct BodyDecoder {
    state: State,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers(usize),
    UntilClose,
    Done,
}

impl BodyDecoder {
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(length) => State::Length(length),
            Framing::Chunked => State::ChunkSize,
            Framing::UntilClose => State::UntilClose,
        };
        Self { state }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// The next piece of the body at the front of `buf`, which it removes.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, String> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::End),
                State::Length(left) => {
                    return Ok(self.counted(buf, left, State::Done, State::Length));
                }
                State::UntilClose => {
                    let Some(data) = take(buf, u64::MAX) else {
                        return Ok(Decoded::NeedMore);
                    };
                    return Ok(Decoded::Data(data));
                }
                // httparse takes a line without digits (`\r\n`, `;ext\r\n`) for size 0, the
                // last chunk; RFC 9112 §7.1 wants at least one.
                State::ChunkSize if buf.first().is_some_and(|b| !b.is_ascii_hexdigit()) => {
                    return Err("invalid chunk size".into());
                }
                State::ChunkSize => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((line, size))) => {
                        // httparse lets an extension hold any byte up to CRLF, a bare LF
                        // too; a peer that ends lines at LF would read other chunks.
                        if !ends_its_only_line(&buf[..line]) {
                            return Err("a chunk-size line has a bare CR or LF".into());
                        }
                        buf.advance(line);
                        self.state = if size == 0 {
                            State::Trailers(0)
                        } else {
                            State::ChunkData(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_LINE_BYTES => {
                        return Err("a chunk-size line is too long".into());
                    }
                    Ok(httparse::Status::Partial) => return Ok(Decoded::NeedMore),
                    Err(_) => {
                        return Err("invalid chunk size".into());
                    }
                },
                State::ChunkData(left) => {
                    return Ok(self.counted(buf, left, State::ChunkEnd, State::ChunkData));
                }
                State::ChunkEnd => match buf.get(..2) {
                    None if buf.first().is_none_or(|&b| b == b'\r') => {
                        return Ok(Decoded::NeedMore);
                    }
                    Some(b"\r\n") => {
                        buf.advance(2);
                        self.state = State::ChunkSize;
                    }
                    _ => return Err("a chunk has no CRLF after it".into()),
                },
                State::Trailers(seen) => {
                    let window = &buf[..buf.len().min(MAX_LINE_BYTES)];
                    let Some(end) = memchr::memchr(b'\n', window) else {
                        if buf.len() >= MAX_LINE_BYTES {
                            return Err("a trailer line is too long".into());
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    // CRLF only, and field lines only: a peer that ends lines at LF, or
                    // takes a request line for the end, must not see another message here.
                    let line = &buf[..=end];
                    if !ends_its_only_line(line) {
                        return Err("a trailer line does not end in CRLF".into());
                    }
                    let empty = end == 1;
                    if !empty && !is_field_line(&line[..end - 1]) {
                        return Err("a trailer line is not a header field".into());
                    }
                    buf.advance(end + 1);
                    if empty {
                        self.state = State::Done;
                    } else if seen >= MAX_TRAILERS {
                        return Err("too many trailer lines".into());
                    } else {
                        self.state = State::Trailers(seen + 1);
                    }
                }
            }
        }
    }

    /// Up to `left` bytes of a part whose length is known (the body, a chunk); then `after`, or
    /// `more` with what is still to come.
    fn counted(
        &mut self,
        buf: &mut BytesMut,
        left: u64,
        after: State,
        more: fn(u64) -> State,
    ) -> Decoded {
        let Some(data) = take(buf, left) else {
            return Decoded::NeedMore;
        };
        let left = left - data.len() as u64;
        self.state = if left == 0 { after } else { more(left) };
        Decoded::Data(data)
    }

    /// The connection ended: the end of a body read until close, a cut-short body otherwise.
    pub fn at_eof(&mut self) -> Result<(), String> {
        match self.state {
            State::UntilClose | State::Done => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err("the connection closed before the body's end".into()),
        }
    }
}

/// `line` ends in CRLF, and holds no other CR or LF.
fn ends_its_only_line(line: &[u8]) -> bool {
    line.len() >= 2
        && line.ends_with(b"\r\n")
        && memchr::memchr2(b'\r', b'\n', &line[..line.len() - 2]).is_none()
}

/// `name: value` (RFC 9110 §5.1, §5.5): a token, a colon, then visible characters, spaces,
/// tabs or obs-text; the CRLF already taken off.
fn is_field_line(line: &[u8]) -> bool {
    let Some(colon) = memchr::memchr(b':', line) else {
        return false;
    };
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    !name.is_empty()
        && name.iter().all(|&b| is_token_byte(b))
        && value
            .iter()
            .all(|&b| b == b'\t' || (b >= b' ' && b != 0x7f))
}

/// A `tchar` of RFC 9110 §5.6.2.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Up to `most` bytes from the front of `buf`; `None` when it is empty.
fn take(buf: &mut BytesMut, most: u64) -> Option<Bytes> {
    if buf.is_empty() {
        return None;
    }
    let n = usize::try_from(most).map_or(buf.len(), |most| most.min(buf.len()));
    Some(buf.split_to(n).freeze())
}
