//! `POST /v1/chat/completions`: OpenAI-compatible, plain or streamed.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;

use super::body::{parse_chat_request, read_json_body};
use super::exec::{self, Settlement};
use super::sse::identity;
use super::validate::validate_chat;
use crate::app::App;
use crate::auth::Caller;
use crate::cache::CachedAnswer;
use crate::error::ApiError;
use crate::wire::headers::RequestHeaders;

pub const ENDPOINT: &str = "/v1/chat/completions";

/// The route's handler (the observing layer calls [`chat`] directly for `POST`).
pub async fn chat_completions(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Arc<Caller>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    chat(&app, &caller, &headers, body).await
}

/// The handler, whichever listener read the request: `headers` is a map, or the HTTP/1.1
/// head's own lines (`crate::server::http1::lines::HeadLines`).
pub async fn chat(
    app: &Arc<App>,
    caller: &Arc<Caller>,
    headers: &impl RequestHeaders,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_json_body(app, headers, body).await?;
    let mut request = parse_chat_request(&bytes)?;
    request.source = Some(bytes);
    validate_chat(&request)?;
    caller.check_model(request.model.as_deref())?;
    app.apply_system_prompt(&mut request);
    let admission = exec::admit(app, caller, ENDPOINT, &request).await?;
    let mut settlement = Settlement::new(app, admission);
    // A hit still counted as a request above; it settles with 0 tokens (no provider spent any).
    let mut cache = app.cache.plan(caller, ENDPOINT, &request, headers);
    let hit = cache.lookup().await;
    if request.is_stream() {
        // Boxed: the stream path's future (~1.2 KB) would otherwise size this one for every
        // non-streamed request too, and it is copied into its box per request.
        return Box::pin(exec::stream_response(
            app, caller, &request, settlement, &mut cache, hit, identity,
        ))
        .await;
    }
    let (served, shared) = match hit {
        Some(CachedAnswer::Complete(served)) => (served, false),
        _ => {
            // The request is not handed down by value on the unshared path: each async
            // function it went through kept its own copy in its future. The unshared call is
            // boxed (~600 bytes): inline, it would size this future for the default path
            // too, where the shared call's own box holds it, past glibc's per-thread cache.
            let (served, shared) = if exec::shares_answers(app, headers) {
                exec::complete_shared(app, caller, request, ENDPOINT)?.await?
            } else {
                (
                    Box::pin(exec::dispatch(app, caller, &request)).await?,
                    false,
                )
            };
            settlement.tokens = served.answer.usage.map(|u| u.total_tokens);
            settlement.served = true;
            if !shared {
                cache.store(&served).await;
            }
            (served, shared)
        }
    };
    exec::record_served(served.served, settlement.headers(), shared, false);
    cache.mark();
    Ok(json_response(served.answer.json))
}

/// A JSON body already encoded (a passed-through or cached completion).
pub fn json_response(json: bytes::Bytes) -> Response {
    let mut response = Response::new(Body::from(json));
    // Room for what the gateway adds on the TLS and HTTP/3 listeners (routing, rate-limit,
    // cache, request-id headers: the plain HTTP/1.1 one writes them into the head itself), so
    // the map is not rehashed as they arrive; a map kept for reuse when there is one.
    *response.headers_mut() = crate::server::header_maps::take();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub fn sse_response(body: Body) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}
