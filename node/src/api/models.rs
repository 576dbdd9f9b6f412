//! `GET /v1/models`: the models this gateway routes, in OpenAI's list format.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::app::App;
use crate::auth::Caller;

pub async fn list_models(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Arc<Caller>>,
) -> Json<Value> {
    let mut seen = std::collections::HashSet::new();
    let mut data = Vec::new();
    for provider in app.dispatcher.providers() {
        if caller
            .providers
            .as_ref()
            .is_some_and(|allowed| !allowed.iter().any(|p| *p == provider.name))
        {
            continue;
        }
        for id in provider.model.iter().chain(provider.models.iter()) {
            if (caller.models.is_empty() || caller.models.contains(id)) && seen.insert(id.clone()) {
                data.push(
                    json!({"id": id, "object": "model", "created": 0, "owned_by": provider.name}),
                );
            }
        }
    }
    Json(json!({"object": "list", "data": data}))
}
