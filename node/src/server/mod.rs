//! The HTTP front: the router (the request path as one visible chain of layers) and the
//! listener with header limits, read timeouts, TCP_NODELAY and graceful shutdown.

pub mod observe;
pub mod request_id;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::api;
use crate::app::App;
use crate::error::ApiError;
use observe::ClientName;

/// The whole API. Layers run outside-in: observe (request id, metrics, log) -> auth
/// (per route group) -> handler (body limits, validation, admission, routing).
pub fn router(app: Arc<App>) -> Router {
    let client_api = Router::new()
        .route("/v1/chat/completions", post(api::chat::chat_completions))
        .route("/v1/completions", post(api::completions::completions))
        .route("/v1/models", get(api::models::list_models))
        .route_layer(from_fn_with_state(Arc::clone(&app), require_client));
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
    Router::new()
        .merge(client_api)
        .merge(admin_api)
        .merge(health)
        .merge(metrics)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn_with_state(Arc::clone(&app), observe::observe))
        .with_state(app)
}

async fn require_client(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    match app.auth.client(request.headers()) {
        Ok(caller) => {
            let name = Arc::clone(&caller.name);
            request.extensions_mut().insert(caller);
            let mut response = next.run(request).await;
            response.extensions_mut().insert(ClientName(name));
            response
        }
        Err(error) => error.into_response(),
    }
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
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains in-flight
/// requests and streams for at most `shutdown_timeout`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: ListenerSettings,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_header_bytes.max(8192))
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer): (tokio::net::TcpStream, SocketAddr) = match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(router.clone());
                let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!(
        timeout_ms = settings.shutdown_timeout.as_millis() as u64,
        "shutting down: draining in-flight requests"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(settings.shutdown_timeout) => tracing::warn!("shutdown timeout reached with connections still open"),
    }
    Ok(())
}
