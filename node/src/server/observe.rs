//! The observing layer: request id, active-request gauge, per-endpoint count and latency,
//! and one structured log line per request (never bodies or keys). The figures are taken when
//! the answer's body is done with: a stream's when it ends, a plain answer's once it is
//! written, so that recording them is not on the answer's path.

use std::sync::Arc;
use std::time::Instant;

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, Version};
use axum::response::Response;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use tower::ServiceExt;

use super::gateway_headers::GatewayHeaders;
use super::guarded_body::GuardedBody;
use super::header_maps;
use super::request_id;
use super::scope::{self, Outcome, RequestContext};
use crate::app::App;
use crate::error::{ErrorMarker, StreamFault};
use crate::logging::request_line::{self, RequestLine};
use crate::wire::headers::RequestHeaders;

/// Endpoint labels are a fixed set, so metric cardinality stays bounded.
pub fn endpoint_label(path: &str) -> &'static str {
    crate::metrics::ENDPOINTS[endpoint_index(path)]
}

/// Index of the endpoint in [`crate::metrics::ENDPOINTS`].
pub fn endpoint_index(path: &str) -> usize {
    match path {
        "/v1/chat/completions" => 0,
        "/v1/completions" => 1,
        "/v1/models" => 2,
        "/health" => 3,
        "/v1/health" => 4,
        "/metrics" => 5,
        p if p.starts_with("/admin/") => 6,
        _ => OTHER_ENDPOINT,
    }
}

fn protocol_index(version: Version) -> usize {
    match version {
        Version::HTTP_2 => 1,
        Version::HTTP_3 => 2,
        _ => 0,
    }
}

/// The `protocol` label: `h1`, `h2` or `h3` (HTTP/1.0 counts as `h1`).
pub fn protocol_label(version: Version) -> &'static str {
    match version {
        Version::HTTP_2 => "h2",
        Version::HTTP_3 => "h3",
        _ => "h1",
    }
}

/// The router behind the observing layer, as one service for every listener (TCP, HTTP/3).
///
/// A plain service rather than axum's `Router::layer(from_fn(..))`: that would wrap every
/// route and, per request, clone and box the inner service and box a `Next`; here a request
/// costs one boxed future.
#[derive(Clone)]
pub struct ObservedRouter {
    app: Arc<App>,
    router: Router,
}

impl ObservedRouter {
    pub fn new(app: Arc<App>, router: Router) -> Self {
        Self { app, router }
    }

    /// Records a request the listener refused before it had a request to route (a head too
    /// large, a target too long, malformed framing): counted under the `other` endpoint with
    /// its status and error type, logged like any answer; its id, for the refusal's
    /// `X-Request-ID`.
    pub fn record_refused_head(
        &self,
        method: Method,
        status: u16,
        error: &'static str,
    ) -> Arc<str> {
        let endpoint_index = OTHER_ENDPOINT;
        let id = request_id::generate();
        self.app.metrics.endpoints[endpoint_index].active.inc();
        Record {
            app: Arc::clone(&self.app),
            status,
            started: Instant::now(),
            endpoint_index,
            protocol_index: protocol_index(Version::HTTP_11),
            context: RequestContext {
                id: Arc::clone(&id),
                endpoint: crate::metrics::ENDPOINTS[endpoint_index],
                method,
                protocol: protocol_label(Version::HTTP_11),
            },
            error: Some(error),
            stream_fault: None,
            outcome: Outcome::default(),
        }
        .finish(false);
        id
    }
}

impl<B> tower::Service<http::Request<B>> for ObservedRouter
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    /// The answer with the gateway's headers in its map (the TLS listener, through hyper).
    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let app = Arc::clone(&self.app);
        let router = self.router.clone();
        Box::pin(async move {
            let (mut response, gateway) = observe(app, request.map(Body::new), router).await;
            gateway.insert_into(response.headers_mut());
            Ok(response)
        })
    }
}

impl ObservedRouter {
    /// The answer, and the gateway's headers apart, for a listener that writes them into the
    /// answer's head itself (the plain HTTP/1.1 one, and HTTP/3).
    pub fn answer(&self, request: Request) -> BoxFuture<'static, (Response, GatewayHeaders)> {
        Box::pin(observe(Arc::clone(&self.app), request, self.router.clone()))
    }

    /// [`Self::answer`] for a `POST /v1/chat/completions` whose header fields are read where
    /// the HTTP/1.1 listener parsed them (`headers`), not from a map built for the router.
    pub fn answer_chat<H>(
        &self,
        headers: H,
        version: Version,
        body: Body,
    ) -> BoxFuture<'static, (Response, GatewayHeaders)>
    where
        H: RequestHeaders + Send + 'static,
    {
        let started = Instant::now();
        let arrival = Arrival::new(
            started,
            CHAT_ENDPOINT,
            Method::POST,
            version,
            request_id::from_headers(&headers),
        );
        let app = Arc::clone(&self.app);
        let handler_app = Arc::clone(&app);
        let handle = async move {
            // Boxed, as on the map's path (see `observe`).
            Box::pin(super::chat_direct(&handler_app, &headers, body)).await
        };
        Box::pin(observed(app, arrival, handle))
    }
}

/// What the observing layer knows of a request before its handler runs.
struct Arrival {
    started: Instant,
    endpoint_index: usize,
    version: Version,
    context: RequestContext,
}

impl Arrival {
    fn new(
        started: Instant,
        endpoint_index: usize,
        method: Method,
        version: Version,
        id: Arc<str>,
    ) -> Self {
        Self {
            started,
            endpoint_index,
            version,
            context: RequestContext {
                id,
                endpoint: crate::metrics::ENDPOINTS[endpoint_index],
                method,
                protocol: protocol_label(version),
            },
        }
    }
}

/// [`observed`] for a request with its header map, through the router (the chat endpoint
/// straight to its handler); HTTP/3 early data with an unsafe method is refused here (425)
/// so the refusal is observed like any answer.
async fn observe(app: Arc<App>, request: Request, router: Router) -> (Response, GatewayHeaders) {
    let started = Instant::now();
    let endpoint_index = endpoint_index(request.uri().path());
    let arrival = Arrival::new(
        started,
        endpoint_index,
        request.method().clone(),
        request.version(),
        request_id::from_headers(request.headers()),
    );
    let handler_app = Arc::clone(&app);
    let handle = async move {
        if let Some(refusal) = super::h3::refuse_unsafe_early_data(&request) {
            return refusal;
        }
        if endpoint_index == CHAT_ENDPOINT && request.method() == Method::POST {
            // The hot endpoint skips the router's dispatch (route matching, boxed services
            // cloned per request, a copy of the headers for the extractor): same admission,
            // same handler. Boxed, as the router boxes its handlers: the handler's future is
            // large and would otherwise be copied with this one at every move.
            let (parts, body) = request.into_parts();
            let response = Box::pin(super::chat_direct(&handler_app, &parts.headers, body)).await;
            header_maps::give(parts.headers);
            return response;
        }
        match router.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    };
    observed(app, arrival, handle).await
}

/// Request id, metrics and the log line around one request's `handle`. The gateway's headers
/// (the request id, and what the handler recorded) come back apart.
async fn observed(
    app: Arc<App>,
    arrival: Arrival,
    handle: impl Future<Output = Response>,
) -> (Response, GatewayHeaders) {
    app.metrics.endpoints[arrival.endpoint_index].active.inc();
    // Until the handler answers, the request is recorded as cancelled if its future is dropped
    // (the client closed the connection): the active gauge comes back and the log says so.
    // What that needs is kept apart from the answer's record, so this future stays small.
    let context = arrival.context.clone();
    let mut cancelled = CancelOnDrop(Some(Pending { app, arrival }));
    let (response, outcome) = scope::run(context, handle).await;
    let Some(pending) = cancelled.0.take() else {
        // Unreachable: only this function takes the pending record.
        return (response, outcome.answer);
    };
    let gateway = GatewayHeaders {
        request_id: Some(Arc::clone(&pending.arrival.context.id)),
        ..outcome.answer.clone()
    };
    let streamed = outcome.streamed;
    let error = response.extensions().get::<ErrorMarker>().map(|m| m.0);
    let mut record = pending.into_record(response.status().as_u16(), error, outcome);
    if streamed {
        record.stream_fault = response.extensions().get::<StreamFault>().cloned();
    }
    // Recorded when the body is done with: a stream's when it ends, a plain answer's once it
    // is written (the listener drops it after its last write), so the metrics and the log
    // line are not on the answer's path, as nginx logs after it has answered.
    let (parts, body) = response.into_parts();
    let response = Response::from_parts(
        parts,
        GuardedBody::wrap(body, FinishOnDrop(Some(record), streamed)),
    );
    (response, gateway)
}

/// The status logged for a request whose client closed the connection before the answer
/// (nginx's 499): no answer was sent.
const CLIENT_CLOSED: u16 = 499;

/// [`crate::metrics::ENDPOINTS`] index of `POST /v1/chat/completions`.
const CHAT_ENDPOINT: usize = 0;

/// [`crate::metrics::ENDPOINTS`] index of every path that is not one of ours.
const OTHER_ENDPOINT: usize = 7;

struct Record {
    app: Arc<App>,
    status: u16,
    started: Instant,
    endpoint_index: usize,
    protocol_index: usize,
    context: RequestContext,
    error: Option<&'static str>,
    /// A stream's: set if it ended with an error event after its 200.
    stream_fault: Option<StreamFault>,
    outcome: Outcome,
}

impl Record {
    fn finish(mut self, streamed: bool) {
        let broke = self.stream_fault.as_ref().and_then(StreamFault::get);
        self.error = self.error.or(broke);
        let elapsed = self.started.elapsed();
        let metrics = &self.app.metrics;
        let handles = &metrics.endpoints[self.endpoint_index];
        handles.active.dec();
        if self.status == 200 {
            handles.ok[self.protocol_index].inc();
        } else {
            metrics
                .http_requests
                .with_label_values(&[
                    self.context.endpoint,
                    status_label(self.status),
                    self.context.protocol,
                ])
                .inc();
        }
        handles.duration.observe(elapsed.as_secs_f64());
        if let Some(kind) = self.error {
            metrics.errors.with_label_values(&[kind]).inc();
        }
        let served = self.outcome.answer.served.as_ref();
        let provider = served.map(|s| &*s.provider).unwrap_or("");
        let attempts = served.map(|s| s.attempts).unwrap_or(0);
        let client = self.outcome.client.as_deref().unwrap_or("");
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        let failed = self.status >= 500 || broke.is_some();
        let enabled = if failed {
            tracing::enabled!(tracing::Level::WARN)
        } else {
            tracing::enabled!(tracing::Level::INFO)
        };
        if !enabled {
            return;
        }
        let line = RequestLine {
            level: if failed {
                tracing::Level::WARN
            } else {
                tracing::Level::INFO
            },
            status: self.status,
            latency_ms,
            provider,
            attempts,
            client,
            streamed,
            error: self.error.unwrap_or(""),
            context: &self.context,
        };
        if request_line::write(&line) {
            return;
        }
        // Text logs: the same line through tracing.
        let error = self.error.unwrap_or("");
        macro_rules! finished {
            ($level:ident) => {
                tracing::$level!(
                    status = self.status,
                    latency_ms,
                    provider,
                    attempts,
                    client,
                    streamed,
                    error,
                    "request finished"
                )
            };
        }
        scope::run_sync(self.context, || {
            if failed {
                finished!(warn)
            } else {
                finished!(info)
            }
        });
    }
}

fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        413 => "413",
        414 => "414",
        415 => "415",
        425 => "425",
        429 => "429",
        431 => "431",
        499 => "499",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

/// A request whose handler has not answered yet.
struct Pending {
    app: Arc<App>,
    arrival: Arrival,
}

impl Pending {
    fn into_record(self, status: u16, error: Option<&'static str>, outcome: Outcome) -> Record {
        let Arrival {
            started,
            endpoint_index,
            version,
            context,
        } = self.arrival;
        Record {
            app: self.app,
            status,
            started,
            endpoint_index,
            protocol_index: protocol_index(version),
            context,
            error,
            stream_fault: None,
            outcome,
        }
    }
}

/// Records a request as cancelled by its client (499) when dropped before its handler answers.
struct CancelOnDrop(Option<Pending>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(pending) = self.0.take() {
            let error = Some("client_closed");
            let record = pending.into_record(CLIENT_CLOSED, error, Outcome::default());
            record.finish(false);
        }
    }
}

/// Records a request's figures when dropped: a stream's when its body is done with (`true`:
/// streamed), or a plain answer's once it is written.
struct FinishOnDrop(Option<Record>, bool);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        if let Some(record) = self.0.take() {
            record.finish(self.1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chat_fast_path_index_names_the_chat_endpoint() {
        assert_eq!(
            crate::metrics::ENDPOINTS[CHAT_ENDPOINT],
            crate::api::chat::ENDPOINT
        );
        assert_eq!(endpoint_index(crate::api::chat::ENDPOINT), CHAT_ENDPOINT);
        assert_eq!(endpoint_index("/not-ours"), OTHER_ENDPOINT);
    }
}
