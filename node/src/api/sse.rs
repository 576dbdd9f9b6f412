//! Server-sent-event bodies: each upstream chunk is framed and sent as it arrives; a broken
//! stream ends with a clear error event instead of a hang or a silent truncation.

use std::sync::Arc;

use axum::body::Body;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;

use super::exec::Settlement;
use crate::cache::{CachedStream, StreamRecorder};
use crate::error::{ApiError, StreamFault};
use crate::providers::StreamItem;
use crate::routing::CommittedStream;

/// Turns one translated chunk into the payload the client sees (`None` skips it).
pub type Reframe = fn(&StreamItem) -> Option<Bytes>;

pub fn identity(item: &StreamItem) -> Option<Bytes> {
    (!item.data.is_empty()).then(|| item.data.clone())
}

fn frame(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 8);
    out.put_slice(b"data: ");
    out.put_slice(payload);
    out.put_slice(b"\n\n");
    out.freeze()
}

/// The stream as SSE; `recorder` (when the answer is to be cached) sees every payload sent
/// and stores them before `[DONE]` goes out, only if the stream ended cleanly.
/// `fault` is set when the stream ends with an error event.
pub fn sse_body(
    stream: CommittedStream,
    request_id: Arc<str>,
    settlement: Settlement,
    reframe: Reframe,
    recorder: Option<StreamRecorder>,
    fault: StreamFault,
) -> Body {
    let state = (stream, settlement, recorder, false);
    let frames = futures_util::stream::unfold(
        state,
        move |(mut stream, mut settlement, mut recorder, finished)| {
            let request_id = Arc::clone(&request_id);
            let fault = fault.clone();
            async move {
                if finished {
                    return None;
                }
                loop {
                    match stream.next().await {
                        Some(Ok(item)) => {
                            if let Some(usage) = item.usage {
                                settlement.tokens = Some(usage.total_tokens);
                            }
                            if let Some(payload) = reframe(&item) {
                                settlement.served = true;
                                if let Some(r) = recorder.as_mut()
                                    && !r.push(&payload)
                                {
                                    recorder = None;
                                }
                                return Some((
                                    Ok::<_, std::convert::Infallible>(frame(&payload)),
                                    (stream, settlement, recorder, false),
                                ));
                            }
                        }
                        Some(Err(error)) => {
                            fault.set("stream_broken");
                            tracing::warn!(error = %error, "stream broke after it started; ending it with an error event");
                            let api_error = ApiError::Upstream {
                                status: axum::http::StatusCode::BAD_GATEWAY,
                                message: format!(
                                    "the stream was interrupted after it started: {error}"
                                ),
                                retry_after: None,
                            };
                            let event = frame(api_error.body_json(&request_id).as_bytes());
                            return Some((Ok(event), (stream, settlement, None, true)));
                        }
                        None => {
                            if let Some(recorder) = recorder.take() {
                                recorder.finish().await;
                            }
                            return Some((
                                Ok(Bytes::from_static(DONE)),
                                (stream, settlement, None, true),
                            ));
                        }
                    }
                }
            }
        },
    );
    Body::from_stream(frames)
}

const DONE: &[u8] = b"data: [DONE]\n\n";

/// A cached stream replayed: the same payloads, then `[DONE]`.
pub fn replay_body(stream: &CachedStream) -> Body {
    let frames = stream
        .events
        .iter()
        .map(|payload| frame(payload))
        .chain(std::iter::once(Bytes::from_static(DONE)))
        .map(Ok::<_, std::convert::Infallible>)
        .collect::<Vec<_>>();
    Body::from_stream(futures_util::stream::iter(frames))
}
