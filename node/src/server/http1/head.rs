//! Request heads in, response heads out: the pure part of the HTTP/1.1 listener, on buffers,
//! so that the fuzz target and the tests reach every case without a socket.
//!
//! The framing rules are RFC 9112's, strict where leniency lets requests be smuggled:
//! - `Transfer-Encoding` counts only with `chunked` as its last coding, and never in HTTP/1.0;
//! - every `Content-Length` must be the same number of digits only (no sign, no list);
//! - a request framed both ways is read by its chunked coding and its connection is closed
//!   after the answer (§6.3), so nothing hidden after the body is ever read;
//! - obsolete line folding, spaces before a header's colon and bare CR are refused (httparse).

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};

use super::lines::HeadLines;
use crate::server::gateway_headers::GatewayHeaders;
use crate::server::header_maps;
use crate::wire::http1::{Framing, last_coding_is_chunked, lists_token, parse_length};

/// Most header lines in a request head (hyper's limit too); past it, 431.
pub const MAX_HEADERS: usize = 100;
/// Longest request target; past it, 414 (hyper's limit too).
pub const MAX_URI_BYTES: usize = 65_534;

/// Why a request head is answered by the listener itself, then the connection closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("the request head is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the request head has more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("the request target is longer than {MAX_URI_BYTES} bytes")]
    UriTooLong,
    #[error("{0}")]
    Malformed(String),
}

impl HeadError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::TooLarge(_) | Self::TooManyHeaders => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::Malformed(_) => StatusCode::BAD_REQUEST,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge(_) | Self::TooManyHeaders => "headers_too_large",
            Self::UriTooLong => "uri_too_long",
            Self::Malformed(_) => "malformed_request",
        }
    }
}

/// A parsed request head: the request without its body (for the router, with its fields in
/// a map), and how the body and the connection go on.
#[derive(Debug)]
pub struct RequestHead<R = Request<()>> {
    pub request: R,
    pub framing: Framing,
    /// The client may send another request on this connection after this one's answer.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: the client waits for a `100 Continue` before the body.
    pub expect_continue: bool,
}

/// RFC 9112 §3.2: a server must refuse an HTTP/1.1 request without a Host, and any request
/// with more than one (a front proxy routing by Host might have read another). Shared with the
/// TLS listener, whose HTTP/1.1 server (hyper's) does not check it.
pub fn host_problem(http11: bool, hosts: usize) -> Option<HeadError> {
    if hosts > 1 {
        return Some(malformed("the request has more than one Host header"));
    }
    (http11 && hosts == 0).then(|| malformed("an HTTP/1.1 request needs a Host header"))
}

fn malformed(message: impl Into<String>) -> HeadError {
    HeadError::Malformed(message.into())
}

/// Longest header name a map takes (`http`'s limit), so a head read in place refuses what a
/// map would.
const MAX_NAME_BYTES: usize = 65_535;

/// Where a header line sits in the head: name start and length, value start and length.
pub type HeaderSpan = (usize, usize, usize, usize);

/// Parses the request head at the front of `buf` and removes it; `Ok(None)` while the head
/// is incomplete and within `max_head_bytes`. Header values and the target are slices of the
/// head's bytes, not copies.
pub fn parse_request_head(
    buf: &mut BytesMut,
    max_head_bytes: usize,
) -> Result<Option<RequestHead>, HeadError> {
    parse_request_head_with(buf, max_head_bytes, &mut HeadScratch::default())
}

/// What a connection keeps from one request head to the next, so that reading a head costs
/// less than reading the first one did.
#[derive(Default)]
pub struct HeadScratch {
    /// Where the head's header lines sit, while it is parsed (so a request allocates and
    /// zeroes none).
    spans: Vec<HeaderSpan>,
    /// The last head's header names, in order, as sent and as parsed (the first
    /// [`KNOWN_NAMES`], each up to [`KNOWN_NAME_BYTES`]). A client sends the same names in the
    /// same order on every request of a connection: a name sent as it was in its place last
    /// time is cloned instead of parsed again (and, for a name that is not a standard one,
    /// allocated again).
    names: Vec<KnownName>,
}

/// Longest name kept as sent (longer ones are parsed every time).
const KNOWN_NAME_BYTES: usize = 32;

/// Header lines whose names are kept (the first ones of a head; the rest are parsed every
/// time), so a connection never holds more than a few hundred bytes of them.
const KNOWN_NAMES: usize = 16;

/// A header name as a client sent it, and parsed; `None` for a name too long to keep.
struct KnownName(Option<([u8; KNOWN_NAME_BYTES], usize, HeaderName)>);

impl KnownName {
    fn new(sent: &[u8], name: &HeaderName) -> Self {
        let mut kept = [0; KNOWN_NAME_BYTES];
        let Some(place) = kept.get_mut(..sent.len()) else {
            return Self(None);
        };
        place.copy_from_slice(sent);
        Self(Some((kept, sent.len(), name.clone())))
    }

    /// The parsed name, if `sent` is the name kept.
    fn get(&self, sent: &[u8]) -> Option<&HeaderName> {
        let (kept, len, name) = self.0.as_ref()?;
        (kept.get(..*len) == Some(sent)).then_some(name)
    }
}

/// A `POST /v1/chat/completions` head: its fields are read where they sit in the head.
#[derive(Debug)]
pub struct ChatRequest {
    pub version: Version,
    pub fields: HeadLines,
}

/// A head as the listener routes it.
#[derive(Debug)]
pub enum ParsedHead {
    /// Through the router, with its fields in a map.
    Routed(RequestHead),
    /// Exactly `POST /v1/chat/completions` (no query): straight to the chat handler.
    Chat(RequestHead<ChatRequest>),
}

/// [`parse_request_head`] with what a connection keeps between heads ([`HeadScratch`]),
/// every head's fields in a map.
pub fn parse_request_head_with(
    buf: &mut BytesMut,
    max_head_bytes: usize,
    scratch: &mut HeadScratch,
) -> Result<Option<RequestHead>, HeadError> {
    let Some(parsed) = parse_head(buf, max_head_bytes, scratch, false)? else {
        return Ok(None);
    };
    parsed.into_routed(buf, scratch).map(Some)
}

/// [`parse_request_head_with`], but a chat completion's head keeps its fields in place
/// ([`ParsedHead::Chat`]), and its body too when all of it is in `buf`: the listener's way in.
pub fn parse_routed_head(
    buf: &mut BytesMut,
    max_head_bytes: usize,
    scratch: &mut HeadScratch,
) -> Result<Option<ParsedHead>, HeadError> {
    let Some(parsed) = parse_head(buf, max_head_bytes, scratch, true)? else {
        return Ok(None);
    };
    if parsed.method == Method::POST && parsed.target() == CHAT_TARGET.as_bytes() {
        return Ok(Some(ParsedHead::Chat(parsed.into_chat(scratch))));
    }
    parsed
        .into_routed(buf, scratch)
        .map(|head| Some(ParsedHead::Routed(head)))
}

/// The one target whose head is not put in a map.
const CHAT_TARGET: &str = crate::api::chat::ENDPOINT;

/// A head taken off the buffer, its framing read, its fields not yet put anywhere (their
/// places are in [`HeadScratch::spans`]).
struct ParsedParts {
    /// The head, and its body when [`parse_head`] took it along.
    head: Bytes,
    /// The head's length: where the body starts, if `head` holds it.
    body_at: usize,
    method: Method,
    /// Where the target sits in `head`.
    path: (usize, usize),
    version: Version,
    framing: Framing,
    keep_alive: bool,
    expect_continue: bool,
}

impl ParsedParts {
    fn target(&self) -> &[u8] {
        self.head
            .get(self.path.0..self.path.0 + self.path.1)
            .unwrap_or_default()
    }

    /// The request with its target and fields for the router. On a refusal the head goes back
    /// in front of what followed it, so the refusal reads this request's method, not a
    /// pipelined one's (the connection closes after it).
    fn into_routed(
        self,
        buf: &mut BytesMut,
        scratch: &mut HeadScratch,
    ) -> Result<RequestHead, HeadError> {
        let (uri, headers) = match assemble(&self.head, self.path, scratch) {
            Ok(parts) => parts,
            Err(error) => {
                let mut restored = BytesMut::from(&self.head[..]);
                restored.extend_from_slice(buf);
                *buf = restored;
                return Err(error);
            }
        };
        let mut request = Request::new(());
        *request.method_mut() = self.method;
        *request.uri_mut() = uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = headers;
        Ok(RequestHead {
            request,
            framing: self.framing,
            keep_alive: self.keep_alive,
            expect_continue: self.expect_continue,
        })
    }

    /// The chat request, its fields left where they are. Nothing left to refuse: httparse
    /// takes only the names and values a map would (the tests of `lines`, every byte), and
    /// `parse_head` refuses names longer than a map takes.
    fn into_chat(self, scratch: &HeadScratch) -> RequestHead<ChatRequest> {
        RequestHead {
            request: ChatRequest {
                version: self.version,
                fields: HeadLines::new(self.head, self.body_at, &scratch.spans),
            },
            framing: self.framing,
            keep_alive: self.keep_alive,
            expect_continue: self.expect_continue,
        }
    }
}

/// Reads the head at the front of `buf` and takes it off: its request line and framing, and
/// where its fields sit. With `chat_body_along`, a chat completion's sized body that is all
/// in `buf` comes off with its head, in one piece (no body to poll later, nor a box for it).
fn parse_head(
    buf: &mut BytesMut,
    max_head_bytes: usize,
    scratch: &mut HeadScratch,
    chat_body_along: bool,
) -> Result<Option<ParsedParts>, HeadError> {
    // Uninitialised: httparse writes the lines it finds (an array of empty headers would be
    // 3 KB zeroed for every request).
    let mut lines =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    // Only the first `max_head_bytes` (and one more) are looked at, so a head is refused for
    // the same reason however its bytes arrived.
    let window = &buf[..buf.len().min(max_head_bytes.saturating_add(1))];
    let head_len = match parsed.parse_with_uninit_headers(window, &mut lines) {
        Ok(httparse::Status::Complete(len)) if len > max_head_bytes => {
            return Err(HeadError::TooLarge(max_head_bytes));
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if window.len() > max_head_bytes => {
            return Err(HeadError::TooLarge(max_head_bytes));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(error) => return Err(malformed(format!("malformed request head: {error}"))),
    };
    let base = buf.as_ptr() as usize;
    let offset = |part: &[u8]| part.as_ptr() as usize - base;
    let method = parsed.method.unwrap_or_default();
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| malformed(format!("invalid method `{method}`")))?;
    let path = parsed.path.unwrap_or_default();
    if path.len() > MAX_URI_BYTES {
        return Err(HeadError::UriTooLong);
    }
    let path = (offset(path.as_bytes()), path.len());
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let http11 = version == Version::HTTP_11;
    let mut framing = FramingHeaders::default();
    let mut keep_alive = http11;
    let mut close = false;
    let mut expect_continue = false;
    let mut hosts = 0usize;
    // Where each header line sits in the head: the head is frozen once it is parsed, and
    // names and values are built from it without copying the values.
    let spans = &mut scratch.spans;
    spans.clear();
    for line in parsed.headers.iter() {
        let name = line.name.as_bytes();
        if name.len() > MAX_NAME_BYTES {
            // What a map refuses (`HeaderName`), refused for a head read in place too.
            return Err(malformed("invalid header name"));
        } else if name.eq_ignore_ascii_case(b"content-length") {
            framing.length(line.value)?;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if !http11 {
                return Err(malformed("Transfer-Encoding is not allowed in HTTP/1.0"));
            }
            framing.chunked = Some(last_coding_is_chunked(line.value));
        } else if name.eq_ignore_ascii_case(b"connection") {
            // `close` anywhere wins; HTTP/1.0 stays open only when asked.
            close |= lists_token(line.value, b"close");
            keep_alive |= lists_token(line.value, b"keep-alive");
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case(b"expect") {
            expect_continue = http11
                && line
                    .value
                    .trim_ascii()
                    .eq_ignore_ascii_case(b"100-continue");
        }
        spans.push((
            offset(name),
            name.len(),
            offset(line.value),
            line.value.len(),
        ));
    }
    if let Some(error) = host_problem(http11, hosts) {
        return Err(error);
    }
    let (framing, ambiguous) = framing.resolve()?;
    let body_along = match framing {
        Framing::Length(length)
            if chat_body_along
                && method == Method::POST
                && buf.get(path.0..path.0 + path.1) == Some(CHAT_TARGET.as_bytes())
                && (buf.len() - head_len) as u64 >= length =>
        {
            // At most what `buf` holds past the head, so it fits.
            length as usize
        }
        _ => 0,
    };
    Ok(Some(ParsedParts {
        head: buf.split_to(head_len + body_along).freeze(),
        body_at: head_len,
        method,
        path,
        version,
        framing,
        keep_alive: keep_alive && !close && !ambiguous,
        expect_continue,
    }))
}

/// The target and the header map, built from slices of the parsed `head` (no copies).
fn assemble(
    head: &Bytes,
    path: (usize, usize),
    scratch: &mut HeadScratch,
) -> Result<(Uri, HeaderMap), HeadError> {
    let uri = Uri::from_maybe_shared(head.slice(path.0..path.0 + path.1))
        .map_err(|error| malformed(format!("invalid request target: {error}")))?;
    let spans = &scratch.spans;
    let mut headers = if spans.len() <= header_maps::ROOM {
        header_maps::take()
    } else {
        HeaderMap::with_capacity(spans.len())
    };
    let names = &mut scratch.names;
    names.truncate(spans.len());
    for (at, &(name_at, name_len, value_at, value_len)) in spans.iter().enumerate() {
        let raw = &head[name_at..name_at + name_len];
        let name = match names.get(at).and_then(|known| known.get(raw)) {
            Some(name) => name.clone(),
            None => {
                let name =
                    HeaderName::from_bytes(raw).map_err(|_| malformed("invalid header name"))?;
                if at < KNOWN_NAMES {
                    let known = KnownName::new(raw, &name);
                    match names.get_mut(at) {
                        Some(place) => *place = known,
                        None => names.push(known),
                    }
                }
                name
            }
        };
        let value = HeaderValue::from_maybe_shared(head.slice(value_at..value_at + value_len))
            .map_err(|_| malformed(format!("invalid value of header `{name}`")))?;
        headers.append(name, value);
    }
    Ok((uri, headers))
}

/// What `Content-Length` and `Transfer-Encoding` said, before they are reconciled.
#[derive(Default)]
struct FramingHeaders {
    length: Option<u64>,
    chunked: Option<bool>,
}

impl FramingHeaders {
    fn length(&mut self, value: &[u8]) -> Result<(), HeadError> {
        let length = parse_length(value).ok_or_else(|| {
            malformed(format!(
                "invalid Content-Length `{}`: send the body's size in bytes, digits only",
                String::from_utf8_lossy(value)
            ))
        })?;
        if self.length.is_some_and(|seen| seen != length) {
            return Err(malformed("two different Content-Length values"));
        }
        self.length = Some(length);
        Ok(())
    }

    /// The body's framing, and whether it was framed both ways (the connection then closes).
    fn resolve(self) -> Result<(Framing, bool), HeadError> {
        match (self.chunked, self.length) {
            (Some(false), _) => Err(malformed(
                "unsupported Transfer-Encoding: the last coding must be `chunked`",
            )),
            (Some(true), length) => Ok((Framing::Chunked, length.is_some())),
            (None, Some(length)) => Ok((Framing::Length(length), false)),
            (None, None) => Ok((Framing::Length(0), false)),
        }
    }
}

/// How a response's body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body may follow (HEAD, 1xx, 204, 304); `Content-Length` still says the size when known.
    None(Option<u64>),
    Length(u64),
    Chunked,
    /// Until the connection closes: a body of unknown size for an HTTP/1.0 client.
    UntilClose,
}

/// Appends the status line and headers to `out`: `headers`, then the gateway's own (which
/// replace any of the same name in `headers`). The framing headers and `Connection` are the
/// listener's: those in `headers` are dropped, so a handler cannot frame a body twice.
#[allow(clippy::too_many_arguments)]
pub fn encode_response_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    gateway: &GatewayHeaders,
    framing: BodyFraming,
    keep_alive: bool,
    http10: bool,
    date: &[u8],
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut dated = false;
    for (name, value) in headers {
        if name == CONTENT_LENGTH
            || name == TRANSFER_ENCODING
            || name == CONNECTION
            || gateway.overrides(name)
        {
            continue;
        }
        dated |= name == DATE;
        if name.as_str() == "keep-alive" {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    gateway.encode(out);
    match framing {
        BodyFraming::None(Some(length)) | BodyFraming::Length(length) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        BodyFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        BodyFraming::None(None) | BodyFraming::UntilClose => {}
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    if !dated {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(date);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Longest method [`method_of`] reads from a refused head.
const MAX_LOGGED_METHOD_BYTES: usize = 16;

/// The method a refused head starts with, for its log line: the request line's first word when
/// it is a method token, else `-` (what nginx logs for a request line it cannot read).
pub fn method_of(buf: &[u8]) -> Method {
    let start = &buf[..buf.len().min(MAX_LOGGED_METHOD_BYTES + 1)];
    let word = start
        .iter()
        .position(|&b| b == b' ')
        .map_or(&[][..], |end| &start[..end]);
    if (1..=MAX_LOGGED_METHOD_BYTES).contains(&word.len())
        && let Ok(method) = Method::from_bytes(word)
    {
        return method;
    }
    unreadable_method()
}

/// `-`, the method logged for a head whose method is unknown (what nginx logs).
pub fn unreadable_method() -> Method {
    // `-` is a token, so this never falls back.
    Method::from_bytes(b"-").unwrap_or(Method::GET)
}

/// The answer the listener gives itself to a head it cannot serve: the gateway's JSON error
/// shape, then the connection closes.
pub fn error_body(error: &HeadError) -> Bytes {
    let body = serde_json::json!({
        "error": {
            "message": error.to_string(),
            "type": "invalid_request_error",
            "code": error.code(),
        }
    });
    Bytes::from(body.to_string())
}

#[cfg(test)]
#[path = "head_tests.rs"]
mod tests;
