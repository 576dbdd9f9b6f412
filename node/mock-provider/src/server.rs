//! The accept loop, per-connection serving, and the request path of every API route:
//! count → record → fault → wire-format handler → response shaped by stream faults.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::control::{self, Observations};
use crate::faults::{FaultTable, ResetMode, StreamFaults};
use crate::route::{ApiRoute, Dialect};
use crate::stream::Reply;
use crate::{anthropic, ollama, openai};

/// Largest request body the mock reads.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// Everything the routes share: faults, observations and the response id counter.
#[derive(Debug, Default)]
pub(crate) struct MockState {
    pub faults: FaultTable,
    pub observed: Observations,
    next_id: AtomicU64,
}

/// An API request as read off the wire: what handlers parse and `/_mock/last_request` shows.
#[derive(Debug)]
pub(crate) struct ApiRequest {
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Lets a request kill the connection it arrived on instead of answering.
#[derive(Debug, Default)]
pub(crate) struct ConnAbort {
    reset: AtomicBool,
    notify: Notify,
}

/// Serves the mock upstream on `listener` until `shutdown` resolves.
///
/// The caller binds the listener, so `127.0.0.1:0` works. On shutdown the mock stops accepting
/// and drops its open connections.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = Arc::new(MockState::default());
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new());
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "mock provider listening");
    }
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(serve_connection(Arc::clone(&state), builder.clone(), stream));
                }
                Err(error) => {
                    tracing::warn!(%error, "mock provider failed to accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    tracing::info!("mock provider shutting down");
    connections.shutdown().await;
    Ok(())
}

/// Serves one connection with keep-alive, until the client leaves or a fault kills it.
async fn serve_connection(state: Arc<MockState>, builder: http1::Builder, stream: TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "failed to set TCP_NODELAY");
    }
    let abort = Arc::new(ConnAbort::default());
    let service = {
        let abort = Arc::clone(&abort);
        service_fn(move |request| handle(Arc::clone(&state), Arc::clone(&abort), request))
    };
    let mut connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        result = &mut connection => {
            if let Err(error) = result {
                tracing::debug!(%error, "mock connection ended with an error");
            }
        }
        () = abort.notify.notified() => {
            let stream = connection.into_parts().io.into_inner();
            if abort.reset.load(Ordering::Acquire)
                && let Err(error) = stream.set_zero_linger()
            {
                tracing::debug!(%error, "failed to set SO_LINGER before a reset");
            }
            drop(stream);
        }
    }
}

async fn handle(
    state: Arc<MockState>,
    abort: Arc<ConnAbort>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path();
    let response = if let Some(route) = ApiRoute::from_path(path) {
        serve_api(&state, &abort, route, request).await
    } else if path.starts_with("/_mock/") {
        control::handle(&state, request).await
    } else {
        let message = format!("no mock route for {path}");
        openai::error(StatusCode::NOT_FOUND, &message).into_response()
    };
    Ok(response)
}

async fn serve_api(
    state: &MockState,
    abort: &Arc<ConnAbort>,
    route: ApiRoute,
    request: Request<Incoming>,
) -> Response<Body> {
    state.observed.count(route);
    let (parts, body) = request.into_parts();
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(message) => {
            return error_reply(route.dialect(), StatusCode::BAD_REQUEST, &message).into_response();
        }
    };
    let request = Arc::new(ApiRequest {
        headers: parts.headers,
        body,
    });
    state.observed.record(route, Arc::clone(&request));

    let mut stream_faults = StreamFaults::default();
    if let Some(fault) = state.faults.take(route) {
        if let Some(latency) = fault.latency() {
            crate::delay::sleep(latency).await;
        }
        if fault.hang {
            // Hyper drops this future when the client disconnects.
            return std::future::pending().await;
        }
        if fault.reset == Some(ResetMode::BeforeResponse) {
            abort.reset();
            return std::future::pending().await;
        }
        if let Some(status) = fault.status {
            return injected_error(route, status, fault.retry_after);
        }
        stream_faults = fault.stream_faults();
    }

    if parts.method != route.method() {
        let message = format!("{} {} is not supported", parts.method, route.path());
        return error_reply(route.dialect(), StatusCode::METHOD_NOT_ALLOWED, &message)
            .into_response();
    }
    let reply = match route {
        ApiRoute::ChatCompletions => openai::chat_completions(&request, state.next_id()),
        ApiRoute::Models => openai::models(),
        ApiRoute::Messages => anthropic::messages(&request, state.next_id()),
        ApiRoute::OllamaChat => ollama::chat(&request),
        ApiRoute::OllamaTags => ollama::tags(),
    };
    reply.into_faulty_response(stream_faults, abort)
}

fn injected_error(route: ApiRoute, status: u16, retry_after: Option<u64>) -> Response<Body> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let message = format!("mock provider injected fault: {status}");
    let mut response = error_reply(route.dialect(), status, &message).into_response();
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// An error body in the wire format of `dialect`.
pub(crate) fn error_reply(dialect: Dialect, status: StatusCode, message: &str) -> Reply {
    match dialect {
        Dialect::OpenAi => openai::error(status, message),
        Dialect::Anthropic => anthropic::error(status, message),
        Dialect::Ollama => ollama::error(status, message),
    }
}

/// Reads a whole request body, up to [`MAX_BODY_BYTES`].
pub(crate) async fn read_body(body: Incoming) -> Result<Bytes, String> {
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) => Err(format!("failed to read the request body: {error}")),
    }
}

// === impl MockState ===

impl MockState {
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }
}

// === impl ConnAbort ===

impl ConnAbort {
    /// Drops the connection with a TCP reset, writing nothing more.
    pub fn reset(&self) {
        self.reset.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    /// Drops the connection with a plain close, writing nothing more (a chunked body in
    /// progress stays unterminated).
    pub fn close(&self) {
        self.notify.notify_one();
    }
}
