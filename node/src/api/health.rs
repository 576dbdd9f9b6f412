//! `/health` (200 when at least one provider is usable, else 503) and `/v1/health` (the
//! node's status: version, uptime, each provider's health and breaker).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::app::App;

pub async fn health(State(app): State<Arc<App>>) -> Response {
    let usable = app
        .dispatcher
        .providers()
        .iter()
        .filter(|p| p.usable())
        .count();
    let status = if usable > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({"status": if usable > 0 { "ok" } else { "unavailable" }, "usable_providers": usable, "providers": app.dispatcher.providers().len()});
    (status, Json(body)).into_response()
}

pub async fn node_health(State(app): State<Arc<App>>) -> Response {
    let providers: Vec<_> = app
        .dispatcher
        .providers()
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "type": p.kind.as_str(),
                "model": p.model,
                "usable": p.usable(),
                "health": p.health.snapshot(),
                "circuit_breaker": p.breaker.snapshot(),
                "cooling_down": p.cooling_down(),
                "deployments": p.deployments.len(),
            })
        })
        .collect();
    let usable = app.dispatcher.providers().iter().any(|p| p.usable());
    let body = json!({
        "status": if usable { "ok" } else { "unavailable" },
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": app.started.elapsed().as_secs(),
        "auth": if app.auth.enabled() { "on" } else { "off" },
        "providers": providers,
        "cluster": app.dispatcher.cluster_view().map(|view| json!({
            "node_id": view.self_id,
            "cluster_id": view.cluster_id,
            "live_nodes": view.live_count(),
            "members": view.members,
            "provider_matrix": view.provider_matrix,
            "demoted_providers": view.demoted,
            "raft": app.consensus.get().map(|consensus| {
                let state = consensus.state().load_full();
                json!({
                    "status": consensus.status(),
                    "last_applied_index": state.last_applied_index,
                    "breakers": state.breakers,
                })
            }),
        })),
    });
    let status = if usable {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    for provider in app.dispatcher.providers() {
        provider.breaker.phase();
    }
    match app.metrics.render() {
        Ok(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => crate::error::ApiError::Internal(format!("could not render metrics: {e}"))
            .into_response(),
    }
}
