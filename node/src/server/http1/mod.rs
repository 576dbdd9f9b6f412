//! HTTP/1.1 over plain TCP: the gateway's own connection loop in front of the router.
//!
//! hyper's server cost ~13k instructions a request here (its dispatcher, the body channel, a
//! fresh 8 KB read buffer a request, the boxed service future); an LLM gateway's requests
//! are small JSON bodies that arrive with their heads. This loop reads into one buffer per
//! connection, takes the head's header values and a body that came with it as slices of that
//! buffer, and writes each answer's head and body in one write. TLS connections (HTTP/2 or
//! HTTP/1.1 by ALPN) stay on hyper.
//!
//! What it keeps of hyper's behaviour, as the hostile-input tests check:
//! - the head within `read_timeout` (an idle kept-alive connection too), else closed; heads
//!   over `max_header_bytes` or 100 fields are a 431, targets over 64 KiB a 414, malformed
//!   heads and framing a 400, each answered and the connection closed;
//! - bodies that do not come with their head are read as the handler polls them
//!   ([`body::SocketBody`]), so its size limit and read timeout answer (413, 408), and
//!   `100 Continue` goes out only when the handler asks for the body;
//! - a client that closes while its request is served (half-close included) cancels it;
//! - requests are answered in order (pipelining); `Connection: close`, HTTP/1.0 keep-alive,
//!   HEAD, 204/304 and bodies of unknown size (chunked, or until close for HTTP/1.0) as RFC
//!   9112 says; a body not read to its end closes the connection rather than being drained;
//! - graceful shutdown: idle connections close at once, a request in progress is answered
//!   with `Connection: close`.

mod body;
mod date;
pub mod head;
pub mod lines;

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::header::{ALT_SVC, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version};
use axum::response::Response;
use bytes::BytesMut;
use futures_util::future::BoxFuture;
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, Sleep};

use self::body::{ReadSide, SocketBody};
use self::head::{BodyFraming, ChatRequest, HeadError, HeadScratch, ParsedHead};
use super::gateway_headers::GatewayHeaders;
use super::observe::ObservedRouter;
use crate::wire::http1::Framing;

/// Read size for request heads (and bodies that come with them).
const READ_BYTES: usize = 4096;
/// A non-streamed body up to this size is copied after its head, for one write.
const COALESCE_BYTES: usize = 64 * 1024;
/// Buffers larger than this are given back between requests.
const KEPT_BUFFER_BYTES: usize = 16 * 1024;

/// What every connection of a listener shares.
pub struct Http1Settings {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    /// Added to every answer, e.g. `h3=":8443"; ma=86400` to announce HTTP/3.
    pub alt_svc: Option<HeaderValue>,
}

/// Serves requests on `stream` until the client closes, a request cannot be framed, the
/// connection idles past the read timeout, or `shutdown` turns true.
pub async fn serve_connection(
    stream: TcpStream,
    router: ObservedRouter,
    settings: Arc<Http1Settings>,
    shutdown: watch::Receiver<bool>,
) {
    let (reader, writer) = stream.into_split();
    let mut connection = Connection {
        reader: Some(reader),
        buf: BytesMut::new(),
        writer,
        out: Vec::new(),
        scratch: HeadScratch::default(),
        router,
        deadline: Box::pin(tokio::time::sleep(settings.header_read_timeout)),
        settings,
        shutdown,
    };
    if let Err(error) = connection.run().await {
        tracing::debug!(%error, "connection ended with an error");
    }
}

struct Connection {
    /// `None` while a [`SocketBody`] reads the request body, or once it kept it.
    reader: Option<OwnedReadHalf>,
    buf: BytesMut,
    writer: OwnedWriteHalf,
    /// The answer's head (and a small body) before it is written.
    out: Vec<u8>,
    /// What reading one head leaves for the next.
    scratch: HeadScratch,
    router: ObservedRouter,
    settings: Arc<Http1Settings>,
    /// One timer for the connection, reset for each head.
    deadline: std::pin::Pin<Box<Sleep>>,
    shutdown: watch::Receiver<bool>,
}

/// What the answer's framing needs to know of its request.
#[derive(Clone, Copy)]
struct Asked {
    head: bool,
    http10: bool,
    keep_alive: bool,
}

impl Connection {
    async fn run(&mut self) -> std::io::Result<()> {
        loop {
            let Some(head) = self.read_head().await? else {
                return Ok(());
            };
            let (asked, answer, returned) = match head {
                ParsedHead::Routed(head) => {
                    let asked = Asked {
                        head: head.request.method() == Method::HEAD,
                        http10: head.request.version() == Version::HTTP_10,
                        keep_alive: head.keep_alive,
                    };
                    let (body, returned) = self.take_body(head.framing, head.expect_continue);
                    let answer = self.router.answer(head.request.map(|()| body));
                    (asked, answer, returned)
                }
                ParsedHead::Chat(head) => {
                    let ChatRequest { version, fields } = head.request;
                    let asked = Asked {
                        head: false,
                        http10: version == Version::HTTP_10,
                        keep_alive: head.keep_alive,
                    };
                    // A body that came whole with its head is in `fields`.
                    let (body, returned) = if fields.holds_body() {
                        (Body::empty(), None)
                    } else {
                        self.take_body(head.framing, head.expect_continue)
                    };
                    let answer = self.router.answer_chat(fields, version, body);
                    (asked, answer, returned)
                }
            };
            let Some((response, gateway)) = self.call(answer).await else {
                return Ok(()); // the client went away: nobody to answer
            };
            let mut keep_alive = asked.keep_alive && !*self.shutdown.borrow();
            if let Some(returned) = returned {
                keep_alive &= self.take_back(returned);
            }
            if !self
                .write_response(
                    response,
                    &gateway,
                    Asked {
                        keep_alive,
                        ..asked
                    },
                )
                .await?
            {
                return Ok(());
            }
            self.shrink_buffers();
        }
    }

    /// The next request's head, within the read timeout; `None` when the connection ends
    /// without one (closed, idle, shutting down, or refused with an answer).
    async fn read_head(&mut self) -> std::io::Result<Option<ParsedHead>> {
        let mut armed = false;
        loop {
            let max = self.settings.max_header_bytes;
            match head::parse_routed_head(&mut self.buf, max, &mut self.scratch) {
                Ok(Some(head)) => return Ok(Some(head)),
                Ok(None) => {}
                Err(error) => {
                    self.refuse(&error).await;
                    return Ok(None);
                }
            }
            let Some(reader) = self.reader.as_mut() else {
                return Ok(None);
            };
            if !armed {
                let deadline = Instant::now() + self.settings.header_read_timeout;
                self.deadline.as_mut().reset(deadline);
                armed = true;
            }
            let idle = self.buf.is_empty();
            if idle && *self.shutdown.borrow() {
                return Ok(None);
            }
            if self.buf.capacity() - self.buf.len() < READ_BYTES / 4 {
                self.buf.reserve(READ_BYTES);
            }
            tokio::select! {
                biased;
                read = tokio::io::AsyncReadExt::read_buf(reader, &mut self.buf) => {
                    if read? == 0 {
                        return Ok(None);
                    }
                }
                () = self.deadline.as_mut() => {
                    tracing::debug!(partial = !idle, "no request head within the read timeout");
                    return Ok(None);
                }
                _ = self.shutdown.changed(), if idle => return Ok(None),
            }
        }
    }

    /// The request's body: the bytes that came with the head when they are all there (the
    /// usual case), else a body read from the socket as the handler asks.
    fn take_body(
        &mut self,
        framing: Framing,
        expect_continue: bool,
    ) -> (Body, Option<oneshot::Receiver<ReadSide>>) {
        match framing {
            Framing::Length(0) | Framing::Empty => return (Body::empty(), None),
            Framing::Length(length) if self.buf.len() as u64 >= length => {
                // `length` fits: it is at most the buffer's length.
                let data = self.buf.split_to(length as usize).freeze();
                return (Body::from(data), None);
            }
            _ => {}
        }
        let Some(reader) = self.reader.take() else {
            // Not reached: without its read side a connection ends before reading another head
            // (`read_head`), so no request comes here without one.
            return (Body::empty(), None);
        };
        let side = ReadSide {
            reader,
            buf: std::mem::take(&mut self.buf),
            complete: false,
        };
        let (body, returned) = SocketBody::new(side, framing, expect_continue);
        (Body::new(body), Some(returned))
    }

    /// Whether the body came back read to its end (the connection can go on).
    fn take_back(&mut self, mut returned: oneshot::Receiver<ReadSide>) -> bool {
        let Ok(side) = returned.try_recv() else {
            return false; // still held past the answer: the connection ends with it
        };
        self.reader = Some(side.reader);
        self.buf = side.buf;
        side.complete
    }

    /// The router's `answer`; `None` if the client closed first (the request is cancelled).
    async fn call(
        &mut self,
        mut answer: BoxFuture<'static, (Response, GatewayHeaders)>,
    ) -> Option<(Response, GatewayHeaders)> {
        let answered = match self.reader.as_ref() {
            Some(reader) => tokio::select! {
                biased;
                answered = &mut answer => answered,
                () = client_gone(reader, &mut self.buf, self.settings.max_header_bytes) => {
                    tracing::debug!("client closed the connection before its answer");
                    return None;
                }
            },
            None => answer.await,
        };
        Some(answered)
    }

    /// Writes the answer; whether the connection can carry another request.
    async fn write_response(
        &mut self,
        response: Response,
        gateway: &GatewayHeaders,
        asked: Asked,
    ) -> std::io::Result<bool> {
        let (mut parts, body) = response.into_parts();
        if let Some(alt_svc) = &self.settings.alt_svc {
            parts.headers.insert(ALT_SVC, alt_svc.clone());
        }
        let status = parts.status;
        let bodiless = status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let exact = http_body::Body::size_hint(&body).exact();
        let framing = match exact {
            _ if bodiless => BodyFraming::None(None),
            // The router answers HEAD with GET's headers and no body: the length it set.
            size if asked.head => BodyFraming::None(declared_length(&parts.headers).or(size)),
            Some(length) => BodyFraming::Length(length),
            None if asked.http10 => BodyFraming::UntilClose,
            None => BodyFraming::Chunked,
        };
        let keep_alive = asked.keep_alive
            && framing != BodyFraming::UntilClose
            && !asks_to_close(&parts.headers);
        self.out.clear();
        date::with_now(|date| {
            head::encode_response_head(
                &mut self.out,
                status,
                &parts.headers,
                gateway,
                framing,
                keep_alive,
                asked.http10,
                date,
            );
        });
        // The answer's header map is done with: kept for the next request.
        super::header_maps::give(std::mem::take(&mut parts.headers));
        let complete = match framing {
            BodyFraming::None(_) => {
                self.writer.write_all(&self.out).await?;
                true
            }
            BodyFraming::Length(length) => self.write_sized(body, length).await?,
            BodyFraming::Chunked | BodyFraming::UntilClose => {
                self.write_stream(body, framing == BodyFraming::Chunked)
                    .await?
            }
        };
        Ok(keep_alive && complete)
    }

    /// A body of known size after the head in `out`; whether it was exactly that size. The
    /// body is dropped after the last write, not polled past its end first: what it holds
    /// until then (the request's record, see `observe`) is done with off the answer's path.
    async fn write_sized(&mut self, body: Body, length: u64) -> std::io::Result<bool> {
        let mut body = std::pin::pin!(body);
        let mut sent = 0u64;
        while !body.is_end_stream() {
            let Some(frame) = body.frame().await else {
                break;
            };
            let Ok(data) = frame.map_err(std::io::Error::other)?.into_data() else {
                continue;
            };
            sent += data.len() as u64;
            if !self.out.is_empty() && self.out.len() + data.len() <= COALESCE_BYTES {
                self.out.extend_from_slice(&data);
                continue;
            }
            self.flush_out().await?;
            self.writer.write_all(&data).await?;
        }
        self.flush_out().await?;
        if sent != length {
            tracing::warn!(length, sent, "an answer's body did not match its length");
        }
        Ok(sent == length)
    }

    /// A body of unknown size (a stream), chunk by chunk as it is produced; the client closing
    /// ends it. Whether it was sent to its end.
    async fn write_stream(&mut self, body: Body, chunked: bool) -> std::io::Result<bool> {
        self.flush_out().await?;
        let mut body = std::pin::pin!(body);
        loop {
            let frame = match self.reader.as_ref() {
                Some(reader) => tokio::select! {
                    biased;
                    frame = body.frame() => frame,
                    () = client_gone(reader, &mut self.buf, self.settings.max_header_bytes) => {
                        return Ok(false);
                    }
                },
                None => body.frame().await,
            };
            let Some(frame) = frame else { break };
            let data = match frame {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => continue, // trailers are not sent
                },
                Err(error) => {
                    // The client sees a stream cut short, not a complete one.
                    tracing::debug!(%error, "an answer's stream failed");
                    return Ok(false);
                }
            };
            if data.is_empty() {
                continue;
            }
            if chunked {
                write!(self.out, "{:x}\r\n", data.len())?;
                self.out.extend_from_slice(&data);
                self.out.extend_from_slice(b"\r\n");
                self.flush_out().await?;
            } else {
                self.writer.write_all(&data).await?;
            }
        }
        if chunked {
            self.writer.write_all(b"0\r\n\r\n").await?;
        }
        Ok(chunked)
    }

    /// A large answer or body leaves its buffers behind; an idle kept-alive connection should
    /// not hold them (thousands of connections would).
    fn shrink_buffers(&mut self) {
        if self.out.capacity() > KEPT_BUFFER_BYTES {
            self.out = Vec::new();
        }
        if self.buf.is_empty() && self.buf.capacity() > KEPT_BUFFER_BYTES {
            self.buf = BytesMut::new();
        }
    }

    async fn flush_out(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.writer.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Answers a head that cannot be served (400, 414, 431); the connection then closes.
    async fn refuse(&mut self, error: &HeadError) {
        tracing::debug!(%error, status = error.status().as_u16(), "request head refused");
        let id = self.router.record_refused_head(
            head::method_of(&self.buf),
            error.status().as_u16(),
            error.code(),
        );
        let body = head::error_body(error);
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let gateway = GatewayHeaders {
            request_id: Some(id),
            ..GatewayHeaders::default()
        };
        self.out.clear();
        date::with_now(|date| {
            head::encode_response_head(
                &mut self.out,
                error.status(),
                &headers,
                &gateway,
                BodyFraming::Length(body.len() as u64),
                false,
                false,
                date,
            );
        });
        self.out.extend_from_slice(&body);
        if let Err(error) = self.flush_out().await {
            tracing::debug!(%error, "could not answer a refused head");
        }
    }
}

/// The `Content-Length` a handler set, if it is a valid one.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|value| crate::wire::http1::parse_length(value.as_bytes()))
}

/// Whether the handler's answer carries `Connection: close`.
fn asks_to_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .any(|value| crate::wire::http1::lists_token(value.as_bytes(), b"close"))
}

/// Resolves when the client closes its side (or the connection fails) while its request is
/// served. Bytes it sends meanwhile (a pipelined request) are kept in `buf`, up to `limit`;
/// past that, nothing more is read until the answer is written.
async fn client_gone(reader: &OwnedReadHalf, buf: &mut BytesMut, limit: usize) {
    loop {
        if buf.len() >= limit {
            std::future::pending::<()>().await;
        }
        if reader.readable().await.is_err() {
            return;
        }
        if buf.capacity() - buf.len() < READ_BYTES / 4 {
            buf.reserve(READ_BYTES);
        }
        match reader.try_read_buf(buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}
