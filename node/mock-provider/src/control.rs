//! The `/_mock/` control API: set and clear faults, read counters and the last request seen.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::extract::Query;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::faults::{Fault, FaultRoute};
use crate::route::ApiRoute;
use crate::server::{ApiRequest, MockState, read_body};
use crate::stream::Reply;

/// What the mock has seen: request counts and the last request, per API route.
#[derive(Debug, Default)]
pub(crate) struct Observations {
    total: AtomicU64,
    counts: [AtomicU64; ApiRoute::ALL.len()],
    last: [Mutex<Option<Arc<ApiRequest>>>; ApiRoute::ALL.len()],
}

#[derive(Deserialize)]
struct RouteQuery {
    route: Option<String>,
}

#[derive(Serialize)]
struct Counters {
    total: u64,
    routes: Map<String, Value>,
}

#[derive(Serialize)]
struct FaultList {
    faults: Vec<Fault>,
}

#[derive(Serialize)]
struct Cleared {
    cleared: usize,
}

#[derive(Serialize)]
struct LastRequest {
    headers: Map<String, Value>,
    body: Value,
}

#[derive(Serialize)]
struct ControlError<'a> {
    error: &'a str,
}

/// Serves one request under `/_mock/`; these are never counted.
pub(crate) async fn handle(state: &MockState, request: Request<Incoming>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let method = &parts.method;
    match path {
        "/_mock/faults" if method == Method::POST => {
            let body = match read_body(body).await {
                Ok(body) => body,
                Err(message) => return error(StatusCode::BAD_REQUEST, &message),
            };
            let fault: Fault = match serde_json::from_slice(&body) {
                Ok(fault) => fault,
                Err(err) => {
                    return error(StatusCode::BAD_REQUEST, &format!("invalid fault: {err}"));
                }
            };
            if let Err(message) = fault.validate() {
                return error(StatusCode::BAD_REQUEST, &message);
            }
            state.faults.set(fault);
            tracing::debug!(route = fault.route.as_str(), "mock fault set");
            Reply::ok(&fault).into_response()
        }
        "/_mock/faults" if method == Method::GET => Reply::ok(&FaultList {
            faults: state.faults.list(),
        })
        .into_response(),
        "/_mock/faults" if method == Method::DELETE => {
            let route = match route_param(&parts.uri) {
                Ok(route) => route,
                Err(message) => return error(StatusCode::BAD_REQUEST, &message),
            };
            let route = match route
                .as_deref()
                .map(|route| (route, FaultRoute::parse(route)))
            {
                None => None,
                Some((_, Some(route))) => Some(route),
                Some((route, None)) => {
                    return error(StatusCode::BAD_REQUEST, &format!("unknown route `{route}`"));
                }
            };
            let cleared = state.faults.clear(route);
            Reply::ok(&Cleared { cleared }).into_response()
        }
        "/_mock/counters" if method == Method::GET => {
            Reply::ok(&state.observed.counters()).into_response()
        }
        "/_mock/reset" if method == Method::POST => {
            state.faults.clear(None);
            state.observed.clear();
            Reply::ok(&Cleared { cleared: 1 }).into_response()
        }
        "/_mock/last_request" if method == Method::GET => {
            let route = match route_param(&parts.uri) {
                Ok(Some(route)) => route,
                Ok(None) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "the `route` query parameter is required",
                    );
                }
                Err(message) => return error(StatusCode::BAD_REQUEST, &message),
            };
            let Some(route) = ApiRoute::from_path(&route) else {
                return error(StatusCode::BAD_REQUEST, &format!("unknown route `{route}`"));
            };
            match state.observed.last(route) {
                Some(request) => Reply::ok(&last_request_view(&request)).into_response(),
                None => error(
                    StatusCode::NOT_FOUND,
                    &format!("no request seen on {} yet", route.path()),
                ),
            }
        }
        "/_mock/faults" | "/_mock/counters" | "/_mock/reset" | "/_mock/last_request" => error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{method} is not supported on {path}"),
        ),
        _ => error(StatusCode::NOT_FOUND, &format!("no control route {path}")),
    }
}

fn route_param(uri: &http::Uri) -> Result<Option<String>, String> {
    match Query::<RouteQuery>::try_from_uri(uri) {
        Ok(Query(query)) => Ok(query.route),
        Err(rejection) => Err(rejection.body_text()),
    }
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    Reply::json(status, &ControlError { error: message }).into_response()
}

/// Headers as a name → value map (repeated headers joined by `, `); the body as JSON when it
/// parses, as a string when it does not, `null` when empty.
fn last_request_view(request: &ApiRequest) -> LastRequest {
    let mut headers = Map::new();
    for (name, value) in &request.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        match headers.get_mut(name.as_str()) {
            Some(Value::String(joined)) => {
                joined.push_str(", ");
                joined.push_str(&value);
            }
            _ => {
                headers.insert(name.as_str().to_owned(), Value::String(value.into_owned()));
            }
        }
    }
    let body = if request.body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&request.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&request.body).into_owned()))
    };
    LastRequest { headers, body }
}

// === impl Observations ===

impl Observations {
    pub fn count(&self, route: ApiRoute) {
        self.total.fetch_add(1, Ordering::Relaxed);
        self.counts[route.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn record(&self, route: ApiRoute, request: Arc<ApiRequest>) {
        let previous = self.last[route.index()].lock().replace(request);
        // The previous request is freed here, outside the lock.
        drop(previous);
    }

    fn last(&self, route: ApiRoute) -> Option<Arc<ApiRequest>> {
        self.last[route.index()].lock().clone()
    }

    fn counters(&self) -> Counters {
        let routes = ApiRoute::ALL
            .iter()
            .map(|route| {
                let count = self.counts[route.index()].load(Ordering::Relaxed);
                (route.path().to_owned(), Value::from(count))
            })
            .collect();
        Counters {
            total: self.total.load(Ordering::Relaxed),
            routes,
        }
    }

    fn clear(&self) {
        self.total.store(0, Ordering::Relaxed);
        for count in &self.counts {
            count.store(0, Ordering::Relaxed);
        }
        for last in &self.last {
            let previous = last.lock().take();
            drop(previous);
        }
    }
}
