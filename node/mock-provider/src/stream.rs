//! Replies and how their bodies go on the wire: whole JSON documents, or streams of frames
//! (SSE events, NDJSON lines) shaped by the stream faults.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;

use crate::faults::StreamFaults;
use crate::server::ConnAbort;

/// Pause before a mid-stream reset, so the chunks already handed to hyper reach the socket.
const RESET_GRACE: Duration = Duration::from_millis(5);

pub(crate) const JSON: &str = "application/json";
pub(crate) const EVENT_STREAM: &str = "text/event-stream";
pub(crate) const NDJSON: &str = "application/x-ndjson";

/// What an API handler answers, before stream faults and connection handling apply.
#[derive(Debug)]
pub(crate) enum Reply {
    /// A whole JSON document.
    Json { status: StatusCode, body: Vec<u8> },
    /// A stream of frames, each already framed for its wire format.
    Frames {
        content_type: &'static str,
        frames: Vec<Bytes>,
    },
}

// === impl Reply ===

impl Reply {
    pub fn json(status: StatusCode, value: &impl Serialize) -> Self {
        let mut body = Vec::with_capacity(256);
        write_json(&mut body, value);
        Reply::Json { status, body }
    }

    pub fn ok(value: &impl Serialize) -> Self {
        Reply::json(StatusCode::OK, value)
    }

    /// Turns the reply into a response with no stream faults.
    pub fn into_response(self) -> Response<Body> {
        self.respond(None)
    }

    /// Turns the reply into a response whose body `faults` shape. A successful JSON document
    /// then goes out as two chunks (its halves) so that chunk faults have something to cut.
    pub fn into_faulty_response(
        self,
        faults: StreamFaults,
        conn: &Arc<ConnAbort>,
    ) -> Response<Body> {
        if faults.is_none() {
            return self.respond(None);
        }
        self.respond(Some((faults, conn)))
    }

    fn respond(self, faults: Option<(StreamFaults, &Arc<ConnAbort>)>) -> Response<Body> {
        let (status, content_type, body) = match (self, faults) {
            (Reply::Json { status, body }, Some((faults, conn))) if status.is_success() => {
                let mut first = Bytes::from(body);
                let second = first.split_off(first.len() / 2);
                let body = faulty_body(vec![first, second], faults, conn);
                (status, JSON, body)
            }
            (Reply::Json { status, body }, _) => (status, JSON, Body::from(body)),
            (
                Reply::Frames {
                    content_type,
                    frames,
                },
                Some((faults, conn)),
            ) => (
                StatusCode::OK,
                content_type,
                faulty_body(frames, faults, conn),
            ),
            (
                Reply::Frames {
                    content_type,
                    frames,
                },
                None,
            ) => {
                let frames = frames.into_iter().map(Ok::<Bytes, Infallible>);
                let body = Body::from_stream(futures_util::stream::iter(frames));
                (StatusCode::OK, content_type, body)
            }
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if content_type != JSON {
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        }
        response
    }
}

/// A body that sends `frames` one by one, delaying, stalling or resetting as `faults` say.
/// Stalls and resets happen after `min(N, frames)` chunks: the body is never terminated.
fn faulty_body(frames: Vec<Bytes>, faults: StreamFaults, conn: &Arc<ConnAbort>) -> Body {
    struct State {
        frames: std::vec::IntoIter<Bytes>,
        sent: u32,
        faults: StreamFaults,
        conn: Arc<ConnAbort>,
    }
    let state = State {
        frames: frames.into_iter(),
        sent: 0,
        faults,
        conn: Arc::clone(conn),
    };
    let stream = futures_util::stream::unfold(state, |mut state| async move {
        let exhausted = state.frames.len() == 0;
        let reached = |limit: Option<u32>| limit.is_some_and(|n| state.sent >= n || exhausted);
        if reached(state.faults.reset_after) {
            tokio::time::sleep(RESET_GRACE).await;
            state.conn.close();
            std::future::pending::<()>().await;
        }
        if reached(state.faults.stall_after) {
            std::future::pending::<()>().await;
        }
        if state.faults.end_after.is_some_and(|n| state.sent >= n) {
            return None;
        }
        if let Some(delay) = state.faults.chunk_delay {
            crate::delay::sleep(delay).await;
        }
        let frame = state.frames.next()?;
        state.sent = state.sent.saturating_add(1);
        Some((Ok::<Bytes, Infallible>(frame), state))
    });
    Body::from_stream(stream)
}

// === framing ===

fn write_json(buf: &mut Vec<u8>, value: &impl Serialize) {
    if let Err(error) = serde_json::to_writer(&mut *buf, value) {
        tracing::error!(%error, "failed to serialize a mock response");
    }
}

/// An SSE frame with only a data line: `data: {json}\n\n`.
pub(crate) fn sse_data(value: &impl Serialize) -> Bytes {
    let mut buf = Vec::with_capacity(192);
    buf.extend_from_slice(b"data: ");
    write_json(&mut buf, value);
    buf.extend_from_slice(b"\n\n");
    Bytes::from(buf)
}

/// An SSE frame with an event name: `event: {name}\ndata: {json}\n\n`.
pub(crate) fn sse_event(name: &str, value: &impl Serialize) -> Bytes {
    let mut buf = Vec::with_capacity(192);
    buf.extend_from_slice(b"event: ");
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(b"\ndata: ");
    write_json(&mut buf, value);
    buf.extend_from_slice(b"\n\n");
    Bytes::from(buf)
}

/// One NDJSON line: `{json}\n`.
pub(crate) fn ndjson_line(value: &impl Serialize) -> Bytes {
    let mut buf = Vec::with_capacity(192);
    write_json(&mut buf, value);
    buf.push(b'\n');
    Bytes::from(buf)
}
