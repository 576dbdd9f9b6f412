//! What both completion endpoints share: rate-limit admission, deduplication and dispatch.

use std::sync::Arc;

use futures_util::FutureExt;

use axum::http::HeaderName;
use axum::response::Response;

use super::chat::sse_response;
use super::sse::{Reframe, replay_body, sse_body};
use crate::app::App;
use crate::auth::Caller;
use crate::cache::{CachePlan, CachedAnswer};
use crate::dedup::KeyBody;
use crate::error::{ApiError, StreamFault};
use crate::ratelimit::{Admission, AdmissionRequest, RateLimitHeaders, RateLimiter};
use crate::routing::{CommittedStream, RouteScope, Served};
use crate::server::scope::{self, ServedBy, current_request_id};
use crate::wire::answer::ChatAnswer;
use crate::wire::headers::RequestHeaders;
use crate::wire::openai::ChatRequest;

/// `X-Hapax-Dedup: off` opts a request out of sharing an identical one's answer.
const DEDUP_HEADER: HeaderName = HeaderName::from_static("x-hapax-dedup");

/// Tokens assumed for a completion whose request sets no `max_tokens`.
const DEFAULT_COMPLETION_ESTIMATE: u64 = 256;

/// A non-streamed answer, shareable between deduplicated callers.
#[derive(Clone)]
pub struct ChatServed {
    pub answer: ChatAnswer,
    pub served: ServedBy,
}

/// Reserves the request (and its estimated tokens) against every applicable limit.
pub async fn admit(
    app: &App,
    caller: &Caller,
    endpoint: &'static str,
    request: &ChatRequest,
) -> Result<Admission, ApiError> {
    let estimated_tokens = request.prompt_chars() as u64 / 4
        + request
            .completion_limit()
            .unwrap_or(DEFAULT_COMPLETION_ESTIMATE);
    let request = AdmissionRequest {
        client: &caller.name,
        endpoint,
        estimated_tokens,
    };
    let admission = app.limiter().admit(&request).await;
    admission.map_err(|rejection| {
        app.metrics.rate_limit_hits.with_label_values(&[&caller.name]).inc();
        tracing::warn!(client = %caller.name, scope = rejection.scope, unit = rejection.unit, retry_after_ms = rejection.retry_after.as_millis() as u64, "rate limit rejected a request");
        ApiError::RateLimited {
            message: format!("rate limit exceeded ({} {} limit); retry after {:.1}s", rejection.scope, rejection.unit, rejection.retry_after.as_secs_f64()),
            retry_after: rejection.retry_after,
            headers: rejection.headers,
        }
    })
}

/// Settles an admission when dropped: with the real usage if one was seen; else the
/// estimate stays charged if an answer was served (a stream without usage, or cut short),
/// and is refunded if none was (an error, a cache hit).
pub struct Settlement {
    limiter: Arc<dyn RateLimiter>,
    admission: Option<Admission>,
    pub tokens: Option<u64>,
    /// A provider's answer (or part of one) reached the client.
    pub served: bool,
}

impl Settlement {
    pub fn new(app: &App, admission: Admission) -> Self {
        Self {
            limiter: Arc::clone(app.limiter()),
            admission: Some(admission),
            tokens: None,
            served: false,
        }
    }

    pub fn headers(&self) -> Option<RateLimitHeaders> {
        self.admission.as_ref().and_then(|a| a.headers)
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        if let Some(admission) = self.admission.take() {
            let tokens = match self.tokens {
                Some(tokens) => Some(tokens),
                None if self.served => None, // the estimate stands
                None => Some(0),
            };
            self.limiter.settle(admission, tokens);
        }
    }
}

/// A non-streamed completion, shared with identical concurrent requests unless opted out.
pub async fn complete(
    app: &Arc<App>,
    caller: &Arc<Caller>,
    request: ChatRequest,
    endpoint: &'static str,
    headers: &impl RequestHeaders,
) -> Result<(ChatServed, bool), ApiError> {
    if shares_answers(app, headers) {
        complete_shared(app, caller, request, endpoint)?.await
    } else {
        // Boxed, as in the chat handler: inline, it would size this future for the shared
        // path too.
        Ok((Box::pin(dispatch(app, caller, &request)).await?, false))
    }
}

/// Whether a non-streamed request may share an identical one's answer: deduplication is on
/// and the request did not opt out.
pub fn shares_answers(app: &App, headers: &impl RequestHeaders) -> bool {
    let opted_out = headers
        .first_str(&DEDUP_HEADER)
        .is_some_and(|v| v.eq_ignore_ascii_case("off"));
    app.dedup_enabled && !opted_out
}

/// A non-streamed completion shared with identical concurrent requests; the future also says
/// whether this request shared another's call.
///
/// Not an `async fn`: the request goes into the shared call's box at once, so the caller's
/// future holds a pointer to the call, not a copy of the request.
pub fn complete_shared(
    app: &Arc<App>,
    caller: &Arc<Caller>,
    request: ChatRequest,
    endpoint: &'static str,
) -> Result<impl Future<Output = Result<(ChatServed, bool), ApiError>> + use<>, ApiError> {
    let body = match &request.source {
        Some(source) => KeyBody::AsSent(source.clone()),
        None => KeyBody::Encoded {
            model: request.model.as_deref(),
            body: serde_json::to_vec(&request).map_err(|e| ApiError::Internal(e.to_string()))?,
        },
    };
    let key = app.dedup.key(&caller.name, endpoint, body);
    let (owned_app, owned_caller) = (Arc::clone(app), Arc::clone(caller));
    let shared_call = app.dedup.run(key, async move {
        dispatch(&owned_app, &owned_caller, &request).await
    });
    // `map`, not an `async` block: a block would hold the call twice (captured and awaited).
    Ok(shared_call.map(|(outcome, shared)| {
        outcome
            .map(|served| (served, shared))
            .map_err(|e| (*e).clone())
    }))
}

/// A non-streamed completion for this request alone.
pub async fn dispatch(
    app: &App,
    caller: &Caller,
    request: &ChatRequest,
) -> Result<ChatServed, ApiError> {
    let scope = RouteScope {
        allowed_providers: caller.providers.as_deref(),
    };
    let served = app.dispatcher.complete(request, scope).await?;
    Ok(ChatServed {
        answer: served.value,
        served: ServedBy {
            provider: Arc::clone(&served.provider.label),
            attempts: served.attempts,
        },
    })
}

pub async fn start_stream(
    app: &App,
    caller: &Caller,
    request: &ChatRequest,
) -> Result<Served<CommittedStream>, ApiError> {
    let scope = RouteScope {
        allowed_providers: caller.providers.as_deref(),
    };
    Ok(app.dispatcher.stream(request, scope).await?)
}

/// Records who served a successful answer and the rate-limit figures, for its headers (see
/// `server::gateway_headers`) and its log line.
pub fn record_served(
    served: ServedBy,
    limits: Option<RateLimitHeaders>,
    shared: bool,
    streamed: bool,
) {
    scope::record(|outcome| {
        outcome.answer.served = Some(served);
        outcome.answer.deduplicated = shared;
        outcome.answer.limits = limits;
        outcome.streamed = streamed;
    });
}

/// A streamed answer: replayed from the cache on a hit, else started upstream (failover is
/// possible until the first chunk) and recorded for the cache; `reframe` shapes each chunk
/// for the endpoint.
pub async fn stream_response(
    app: &App,
    caller: &Caller,
    request: &ChatRequest,
    settlement: Settlement,
    cache: &mut CachePlan,
    hit: Option<CachedAnswer>,
    reframe: Reframe,
) -> Result<Response, ApiError> {
    let limits = settlement.headers();
    let response = if let Some(CachedAnswer::Stream(stored)) = hit {
        let by = ServedBy {
            provider: Arc::clone(&stored.provider),
            attempts: 0,
        };
        record_served(by, limits, false, true);
        sse_response(replay_body(&stored))
    } else {
        let served = start_stream(app, caller, request).await?;
        let by = ServedBy {
            provider: Arc::clone(&served.provider.label),
            attempts: served.attempts,
        };
        let recorder = cache.recorder(&by.provider);
        let fault = StreamFault::default();
        let mut response = sse_response(sse_body(
            served.value,
            current_request_id(),
            settlement,
            reframe,
            recorder,
            fault.clone(),
        ));
        response.extensions_mut().insert(fault);
        record_served(by, limits, false, true);
        response
    };
    cache.mark();
    Ok(response)
}
