//! HTTP/1.1 on the wire to a plain-HTTP upstream: the request written in one piece, the
//! answer's head parsed by httparse, its body framed by `content-length`, the chunked transfer
//! coding or the connection's end (RFC 9112 §6.3).
//!
//! The pool's connections went through hyper's client connection before: its dispatcher,
//! request encoder, header map and body channel cost ~13k instructions an exchange, for an
//! answer the gateway reads whole or passes on piece by piece. Pure functions on buffers, so
//! the fuzz target and the tests reach every state without a socket.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

/// Largest answer head accepted (hyper's client allowed ~400 KB of buffer; no LLM server
/// sends a head near this).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header lines in an answer head (hyper's limit too).
const MAX_HEADERS: usize = 100;
/// Longest chunk-size line (size and extensions) or trailer line.
const MAX_LINE_BYTES: usize = 4096;
/// Most trailer lines after the last chunk.
const MAX_TRAILERS: usize = 100;

/// The request's bytes, head and body in one buffer so that it goes out in one write.
/// `content-length` is always the body's; `host`, `content-length` and `transfer-encoding`
/// in `headers` are ignored. Header values cannot hold CR or LF (`HeaderValue` refuses them),
/// so nothing in `headers` can end the head early.
pub fn encode_request(
    method: &Method,
    target: &str,
    host: &[u8],
    headers: &HeaderMap,
    body: &[u8],
) -> Vec<u8> {
    let headers_len: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    let mut out = Vec::with_capacity(64 + target.len() + host.len() + headers_len + body.len());
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if name == HOST || name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() || !matches!(*method, Method::GET | Method::HEAD) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// How an answer's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Read to the connection's end; the connection cannot be reused.
    UntilClose,
}

/// What the gateway needs of an answer's head.
#[derive(Debug)]
pub struct AnswerHead {
    pub status: StatusCode,
    pub framing: Framing,
    /// Whether the connection may carry another exchange once this body is read.
    pub reusable: bool,
    /// The headers, kept only for answers that are not a success (the error path reads
    /// `retry-after`); a success's are not needed past this parse.
    pub headers: HeaderMap,
}

impl AnswerHead {
    pub fn content_length(&self) -> Option<u64> {
        match self.framing {
            Framing::Length(length) => Some(length),
            _ => None,
        }
    }
}

/// Parses the answer head at the front of `buf` and removes it (informational `1xx` heads
/// before it included); `Ok(None)` while the head is incomplete.
pub fn parse_head(buf: &mut BytesMut) -> Result<Option<AnswerHead>, String> {
    loop {
        let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut answer = httparse::Response::new(&mut lines);
        let head_len = match answer.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
                return Err(format!(
                    "the upstream's answer head is larger than {MAX_HEAD_BYTES} bytes"
                ));
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(error) => return Err(format!("the upstream's answer head is malformed: {error}")),
        };
        let code = answer.code.unwrap_or(0);
        let status = StatusCode::from_u16(code)
            .map_err(|_| format!("the upstream answered with status {code}"))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err("the upstream switched protocols, which the gateway never asks".into());
        }
        if status.is_informational() {
            buf.advance(head_len);
            continue;
        }
        let head = read_headers(status, answer.version == Some(1), answer.headers)?;
        buf.advance(head_len);
        return Ok(Some(head));
    }
}

fn read_headers(
    status: StatusCode,
    http11: bool,
    lines: &[httparse::Header<'_>],
) -> Result<AnswerHead, String> {
    let mut length: Option<u64> = None;
    let mut chunked: Option<bool> = None;
    let mut close = !http11;
    let mut headers = HeaderMap::new();
    let keep_headers = !status.is_success();
    for line in lines {
        let name = line.name;
        if name.eq_ignore_ascii_case("content-length") {
            let value = parse_length(line.value)
                .ok_or("the upstream's answer has an invalid content-length")?;
            if length.is_some_and(|seen| seen != value) {
                return Err("the upstream's answer has two different content-lengths".into());
            }
            length = Some(value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Only the last coding says how the body ends (RFC 9112 §6.3).
            let last = line.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            close |= line
                .value
                .split(|&b| b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
        if keep_headers
            && let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(line.value),
            )
        {
            headers.append(name, value);
        }
    }
    let framing = if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) | (None, None) => Framing::UntilClose,
            (None, Some(length)) => Framing::Length(length),
        }
    };
    // A body framed both ways is how requests get smuggled: read it by its coding, then close.
    let ambiguous = chunked.is_some() && length.is_some();
    let reusable = !close && !ambiguous && framing != Framing::UntilClose;
    Ok(AnswerHead {
        status,
        framing,
        reusable,
        headers,
    })
}

fn parse_length(value: &[u8]) -> Option<u64> {
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
                    return Err("the upstream's answer has an invalid chunk size".into());
                }
                State::ChunkSize => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((line, size))) => {
                        buf.advance(line);
                        self.state = if size == 0 {
                            State::Trailers(0)
                        } else {
                            State::ChunkData(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_LINE_BYTES => {
                        return Err("a chunk-size line of the upstream's answer is too long".into());
                    }
                    Ok(httparse::Status::Partial) => return Ok(Decoded::NeedMore),
                    Err(_) => {
                        return Err("the upstream's answer has an invalid chunk size".into());
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
                    _ => return Err("a chunk of the upstream's answer has no CRLF after it".into()),
                },
                State::Trailers(seen) => {
                    let window = &buf[..buf.len().min(MAX_LINE_BYTES)];
                    let Some(end) = memchr::memchr(b'\n', window) else {
                        if buf.len() >= MAX_LINE_BYTES {
                            return Err(
                                "a trailer line of the upstream's answer is too long".into()
                            );
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    let empty = end == 0 || (end == 1 && buf[0] == b'\r');
                    buf.advance(end + 1);
                    if empty {
                        self.state = State::Done;
                    } else if seen >= MAX_TRAILERS {
                        return Err("the upstream's answer has too many trailer lines".into());
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
            _ => Err("the upstream closed the connection before the answer's end".into()),
        }
    }
}

/// Up to `most` bytes from the front of `buf`; `None` when it is empty.
fn take(buf: &mut BytesMut, most: u64) -> Option<Bytes> {
    if buf.is_empty() {
        return None;
    }
    let n = usize::try_from(most).map_or(buf.len(), |most| most.min(buf.len()));
    Some(buf.split_to(n).freeze())
}

#[cfg(test)]
#[path = "h1_tests.rs"]
mod tests;
