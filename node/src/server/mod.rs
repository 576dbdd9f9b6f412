//! The HTTP front: the router (the request path as one visible chain of layers) and the
//! listeners: TCP (HTTP/1.1, or HTTP/1.1 and HTTP/2 over TLS) with header limits, read
//! timeouts, TCP_NODELAY and graceful shutdown, and HTTP/3 over QUIC ([`h3`]) into the same
//! router.

pub mod front;
pub mod gateway_headers;
mod guarded_body;
pub mod h3;
pub mod header_maps;
pub mod http1;
pub mod number_header;
pub mod observe;
pub mod overload;
pub mod request_id;
pub mod scope;
pub mod tls;
mod tls_front;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::TlsAcceptor;

use crate::api;
use crate::app::App;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::wire::headers::RequestHeaders;
use observe::ObservedRouter;
use overload::ConnectionLimit;

/// The whole API. Layers run outside-in: observe (request id, metrics, log; HTTP/3 0-RTT:
/// 425 for unsafe methods) -> admission of client-API calls (load shedding: 503 past the cap
/// on requests in flight, then auth) or auth per route group -> handler (body limits,
/// validation, rate limits, routing).
pub fn router(app: Arc<App>) -> ObservedRouter {
    let client_api = Router::new()
        .route("/v1/chat/completions", post(api::chat::chat_completions))
        .route("/v1/completions", post(api::completions::completions))
        .route("/v1/models", get(api::models::list_models))
        .route_layer(from_fn_with_state(Arc::clone(&app), admit_client));
    let admin_api = Router::new()
        .route("/admin/breakers", get(api::admin::list_breakers))
        .route(
            "/admin/breakers/{provider}/{action}",
            post(api::admin::force_breaker),
        )
        .route_layer(from_fn_with_state(Arc::clone(&app), require_admin));
    let mut health = Router::new()
        .route("/health", get(api::health::health))
        .route("/v1/health", get(api::health::node_health));
    if app.auth.protect_health {
        health = health.route_layer(from_fn_with_state(Arc::clone(&app), require_client));
    }
    let mut metrics = Router::new().route("/metrics", get(api::health::metrics));
    if app.auth.protect_metrics {
        metrics = metrics.route_layer(from_fn_with_state(Arc::clone(&app), require_client));
    }
    let routes = Router::new()
        .merge(client_api)
        .merge(admin_api)
        .merge(health)
        .merge(metrics)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(Arc::clone(&app));
    ObservedRouter::new(app, routes)
}

/// The client API's admission, in one layer: load shedding first (an overloaded node answers
/// 503 without spending a digest on the key), then the key.
async fn admit_client(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    let endpoint = observe::endpoint_label(request.uri().path());
    let (caller, permit) = match admit(&app, endpoint, request.headers()) {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal.into_response(),
    };
    request.extensions_mut().insert(caller);
    overload::hold_while_streaming(next.run(request).await, permit)
}

/// `POST /v1/chat/completions` without the router: the same admission and handler. `headers`
/// is the request's map, or the HTTP/1.1 head's own lines.
async fn chat_direct(app: &Arc<App>, headers: &impl RequestHeaders, body: Body) -> Response {
    let (caller, permit) = match admit(app, api::chat::ENDPOINT, headers) {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal.into_response(),
    };
    let response = api::chat::chat(app, &caller, headers, body).await;
    overload::hold_while_streaming(response.into_response(), permit)
}

/// Load shedding, then the client key (an overloaded node answers 503 without spending a
/// digest on the key): the caller and its place in flight, else the refusal.
fn admit(
    app: &App,
    endpoint: &'static str,
    headers: &impl RequestHeaders,
) -> Result<(Arc<Caller>, OwnedSemaphorePermit), ApiError> {
    let permit = app
        .inflight
        .try_acquire()
        .ok_or_else(|| overload::shed(app, endpoint))?;
    Ok((client_of(app, headers)?, permit))
}

async fn require_client(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    match client_of(&app, request.headers()) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(refusal) => refusal.into_response(),
    }
}

/// The caller of a valid client key (named in the request's log line), else the 401.
fn client_of(app: &App, headers: &impl RequestHeaders) -> Result<Arc<Caller>, ApiError> {
    let caller = app.auth.client(headers)?;
    let name = Arc::clone(&caller.name);
    scope::record(|outcome| outcome.client = Some(name));
    Ok(caller)
}

async fn require_admin(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    match app.auth.admin(request.headers()) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(error) => error.into_response(),
    }
}

async fn not_found(request: Request) -> ApiError {
    ApiError::NotFound(format!(
        "no such endpoint: {} {}",
        request.method(),
        request.uri().path()
    ))
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed(method.to_string())
}

/// Settings of the TCP listener.
#[derive(Debug, Clone, Copy)]
pub struct ListenerSettings {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub shutdown_timeout: Duration,
    /// Busy polling while waiting for upstreams that answer within it ([`crate::busy_poll`]); zero = off.
    pub busy_poll: Duration,
}

/// What the TCP listener adds to plain HTTP/1.1.
#[derive(Clone, Default)]
pub struct TcpOptions {
    /// TLS with ALPN: HTTP/2 or HTTP/1.1 on the same port.
    pub tls: Option<TlsAcceptor>,
    /// Added to every response, e.g. `h3=":8443"; ma=86400` to announce HTTP/3.
    pub alt_svc: Option<HeaderValue>,
    /// The cap on open connections; past it a new one is accepted and closed at once.
    pub connections: Option<Arc<ConnectionLimit>>,
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains in-flight
/// requests and streams for at most `shutdown_timeout`.
pub async fn serve(
    listener: TcpListener,
    router: ObservedRouter,
    settings: ListenerSettings,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_tcp(listener, router, settings, TcpOptions::default(), shutdown).await
}

/// [`serve`] with TLS and/or an `Alt-Svc` header.
pub async fn serve_tcp(
    listener: TcpListener,
    router: ObservedRouter,
    settings: ListenerSettings,
    options: TcpOptions,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let plain = Arc::new(http1::Http1Settings {
        header_read_timeout: settings.header_read_timeout,
        max_header_bytes: settings.max_header_bytes,
        alt_svc: options.alt_svc.clone(),
    });
    crate::busy_poll::start(settings.busy_poll);
    let (closing, closing_seen) = tokio::sync::watch::channel(false);
    let mut secure = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    secure
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_header_bytes.max(8192))
        .keep_alive(true);
    secure
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX));
    let secure = Arc::new(secure);
    let secure_router = tls_front::TlsFront::new(router.clone(), options.alt_svc);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer): (TcpStream, SocketAddr) = match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                // Over the connection cap: closed at once, so the client fails fast.
                let slot = match options.connections.as_deref() {
                    Some(limit) => match limit.try_admit() {
                        Some(slot) => Some(slot),
                        None => {
                            drop(stream);
                            continue;
                        }
                    },
                    None => None,
                };
                let _ = stream.set_nodelay(true);
                let Some(acceptor) = options.tls.clone() else {
                    let connection = http1::serve_connection(
                        stream,
                        router.clone(),
                        Arc::clone(&plain),
                        closing_seen.clone(),
                    );
                    tokio::spawn(async move {
                        let _slot = slot;
                        connection.await;
                    });
                    continue;
                };
                let service = TowerToHyperService::new(secure_router.clone());
                let tls = TlsConnection {
                    acceptor,
                    router: router.clone(),
                    builder: Arc::clone(&secure),
                    watcher: graceful.watcher(),
                    handshake_timeout: settings.header_read_timeout,
                };
                tokio::spawn(async move {
                    let _slot = slot;
                    tls.serve(stream, service).await;
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    drop(closing_seen);
    let _ = closing.send(true);
    tracing::info!(
        timeout_ms = settings.shutdown_timeout.as_millis() as u64,
        "shutting down: draining in-flight requests"
    );
    tokio::select! {
        ((), ()) = async { tokio::join!(graceful.shutdown(), closing.closed()) } => tracing::info!("all connections drained"),
        () = tokio::time::sleep(settings.shutdown_timeout) => tracing::warn!("shutdown timeout reached with connections still open"),
    }
    Ok(())
}

/// One TLS connection: the handshake (bounded like a header read), then HTTP/2 or HTTP/1.1
/// as the client chose by ALPN (or by its first bytes when it sent no ALPN).
struct TlsConnection {
    acceptor: TlsAcceptor,
    /// For the heads hyper refuses itself, observed like the plain listener's refusals.
    router: ObservedRouter,
    builder: Arc<hyper_util::server::conn::auto::Builder<TokioExecutor>>,
    watcher: Watcher,
    handshake_timeout: Duration,
}

impl TlsConnection {
    async fn serve<S>(self, stream: TcpStream, service: TowerToHyperService<S>)
    where
        S: tower::Service<Request<Incoming>, Response = Response, Error = std::convert::Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let handshake = tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(stream));
        let stream = match handshake.await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                tracing::debug!(%error, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!("TLS handshake timed out");
                return;
            }
        };
        let connection = self.builder.serve_connection(TokioIo::new(stream), service);
        if let Err(error) = self.watcher.watch(connection).await {
            tracing::debug!(%error, "connection ended with an error");
            if let Some((status, code)) = error.downcast_ref().and_then(refused_by_hyper) {
                // hyper does not say which method the refused head had.
                let method = http1::head::unreadable_method();
                self.router.record_refused_head(method, status, code);
            }
        }
    }
}

/// The status and error type of a request head hyper's HTTP/1.1 server refused with an
/// answer of its own (400, 414, 431; see hyper's `Http1Transaction::on_error`), so the TLS
/// listener's refusals count and log like the plain listener's. hyper tells a long target
/// from a large head only in its message.
fn refused_by_hyper(error: &hyper::Error) -> Option<(u16, &'static str)> {
    if !error.is_parse() || error.is_parse_version_h2() || error.is_parse_status() {
        return None;
    }
    let message = error.to_string();
    if error.is_parse_too_large() {
        return Some(if message.starts_with("URI too long") {
            (414, "uri_too_long")
        } else {
            (431, "headers_too_large")
        });
    }
    // hyper's internal parse errors close the connection without an answer.
    (!message.starts_with("internal error")).then_some((400, "malformed_request"))
}
