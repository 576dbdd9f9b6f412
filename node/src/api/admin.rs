//! Admin endpoints (admin key required): list the circuit breakers, force one open or closed.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use crate::app::App;
use crate::error::ApiError;

pub async fn list_breakers(State(app): State<Arc<App>>) -> Json<Value> {
    let breakers: Vec<_> = app
        .dispatcher
        .providers()
        .iter()
        .map(|p| json!({"provider": p.name, "breaker": p.breaker.snapshot()}))
        .collect();
    Json(json!({"breakers": breakers}))
}

pub async fn force_breaker(
    State(app): State<Arc<App>>,
    Path((provider, action)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let entry = app
        .dispatcher
        .find(&provider)
        .ok_or_else(|| ApiError::NotFound(format!("no provider named '{provider}'")))?;
    let open = match action.as_str() {
        "open" => true,
        "close" => false,
        other => {
            return Err(ApiError::NotFound(format!(
                "unknown breaker action '{other}': use open or close"
            )));
        }
    };
    match app.dispatcher.shared_breakers() {
        // In a cluster the override goes through the log and every node (this one included)
        // applies it from there.
        Some(shared) => shared
            .force(&provider, open)
            .await
            .map_err(ApiError::NoProvider)?,
        None => entry.breaker.force(open),
    }
    tracing::warn!(provider = %provider, action = %action, "circuit breaker forced by an admin");
    Ok(Json(
        json!({"provider": provider, "breaker": entry.breaker.snapshot()}),
    ))
}
