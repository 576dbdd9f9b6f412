//! HTTP/1.1 on the wire to a plain-HTTP upstream: the request written in one piece, the
//! answer's head parsed by httparse, its body framed by `content-length`, the chunked transfer
//! coding or the connection's end (RFC 9112 §6.3).
//!
//! The pool's connections went through hyper's client connection before: its dispatcher,
//! request encoder, header map and body channel cost ~13k instructions an exchange, for an
//! answer the gateway reads whole or passes on piece by piece. Pure functions on buffers, so
//! the fuzz target and the tests reach every state without a socket.

use std::time::Duration;

use bytes::{Buf, BytesMut};

use super::http::USER_AGENT as AGENT;
pub use crate::wire::http1::{BodyDecoder, Decoded, Framing};
use crate::wire::http1::{last_coding_is_chunked, lists_token, parse_length};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, TRANSFER_ENCODING, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

/// Largest answer head accepted (hyper's client allowed ~400 KB of buffer; no LLM server
/// sends a head near this).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header lines in an answer head (hyper's limit too).
const MAX_HEADERS: usize = 100;

/// A request for a plain-HTTP upstream, as [`encode_request`] writes it.
#[derive(Debug, Clone, Copy)]
pub struct PlainRequest<'a> {
    pub method: &'a Method,
    /// Origin form: `/v1/chat/completions`.
    pub target: &'a str,
    /// Sends `content-type: application/json`.
    pub json: bool,
    /// Fields besides the ones the encoder writes itself ([`WRITTEN_BY_THE_ENCODER`]), which
    /// are skipped here.
    pub fields: &'a [(HeaderName, HeaderValue)],
    pub body: &'a [u8],
}

/// The fields [`encode_request`] writes from the request's parts, whatever `fields` say.
pub const WRITTEN_BY_THE_ENCODER: [HeaderName; 5] = [
    HOST,
    USER_AGENT,
    CONTENT_TYPE,
    CONTENT_LENGTH,
    TRANSFER_ENCODING,
];

const JSON_FIELD: &[u8] = b"content-type: application/json\r\n";

/// Appends the request's bytes to `out`, head and body in one buffer so that it goes out in
/// one write, reserving exactly their length. `content-length` is always the body's. Header
/// values cannot hold CR or LF (`HeaderValue` refuses them), so no field can end the head
/// early.
pub fn encode_request(out: &mut Vec<u8>, request: &PlainRequest<'_>, host: &[u8]) {
    let PlainRequest {
        method,
        target,
        json,
        fields,
        body,
    } = *request;
    let fields = || {
        fields
            .iter()
            .filter(|(name, _)| !WRITTEN_BY_THE_ENCODER.contains(name))
    };
    let mut digits_buffer = itoa::Buffer::new();
    let length = (!body.is_empty() || !matches!(*method, Method::GET | Method::HEAD))
        .then(|| digits_buffer.format(body.len()));
    let head_len = method.as_str().len()
        + " ".len()
        + target.len()
        + " HTTP/1.1\r\nhost: ".len()
        + host.len()
        + "\r\nuser-agent: ".len()
        + AGENT.len()
        + "\r\n".len()
        + if json { JSON_FIELD.len() } else { 0 }
        + fields()
            .map(|(name, value)| name.as_str().len() + ": ".len() + value.len() + "\r\n".len())
            .sum::<usize>()
        + length.map_or(0, |digits| {
            "content-length: ".len() + digits.len() + "\r\n".len()
        })
        + "\r\n".len();
    out.reserve_exact(head_len + body.len());
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\nuser-agent: ");
    out.extend_from_slice(AGENT.as_bytes());
    out.extend_from_slice(b"\r\n");
    if json {
        out.extend_from_slice(JSON_FIELD);
    }
    for (name, value) in fields() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(digits) = length {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(digits.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
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
    /// How long the upstream keeps the connection open while idle, when its answer says
    /// (`Keep-Alive: timeout=5`, sent by Node's and cpp-httplib's servers, llama.cpp's among
    /// them): the pool stops reusing the connection before then.
    pub idle_timeout: Option<Duration>,
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
    let mut idle_timeout = None;
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
            chunked = Some(last_coding_is_chunked(line.value));
        } else if name.eq_ignore_ascii_case("connection") {
            close |= lists_token(line.value, b"close");
        } else if name.eq_ignore_ascii_case("keep-alive") {
            idle_timeout = keep_alive_timeout(line.value).or(idle_timeout);
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
        idle_timeout,
    })
}

/// The `timeout=N` (seconds) of a `Keep-Alive` value (`timeout=5, max=100`); `None` when it
/// has none or it is not a number. Values past a day are taken as a day.
fn keep_alive_timeout(value: &[u8]) -> Option<Duration> {
    const DAY: u64 = 24 * 60 * 60;
    value.split(|&b| b == b',').find_map(|parameter| {
        let equals = parameter.iter().position(|&b| b == b'=')?;
        let (name, seconds) = (&parameter[..equals], parameter[equals + 1..].trim_ascii());
        if !name.trim_ascii().eq_ignore_ascii_case(b"timeout") {
            return None;
        }
        let seconds = seconds
            .strip_prefix(b"\"")
            .and_then(|s| s.strip_suffix(b"\""))
            .unwrap_or(seconds);
        let seconds = parse_length(seconds)?;
        Some(Duration::from_secs(seconds.min(DAY)))
    })
}

#[cfg(test)]
#[path = "h1_tests.rs"]
mod tests;
