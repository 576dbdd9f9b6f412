//! The one error type of the HTTP API, mapped once to a status and the one JSON shape:
//! `{"error": {"message", "type", "code", "request_id"}}`.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::providers::ProviderError;
use crate::ratelimit::RateLimitHeaders;
use crate::routing::DispatchError;
use crate::server::scope::current_request_id;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { message: String, code: &'static str },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("method {0} is not allowed on this path")]
    MethodNotAllowed(String),
    #[error("the request body was not received within {0:?}")]
    BodyTimeout(Duration),
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0} sent in TLS early data (0-RTT) could be a replay: retry after the handshake")]
    TooEarly(String),
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: Duration,
        headers: Option<RateLimitHeaders>,
    },
    #[error("{0}")]
    NoProvider(String),
    #[error("this node is at its limit of {limit} requests in flight: retry shortly")]
    Overloaded { limit: usize },
    #[error("{message}")]
    Upstream {
        status: StatusCode,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("{0}")]
    GatewayTimeout(String),
    #[error("internal error: {0}")]
    Internal(String),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
pub struct ErrorDetail<'a> {
    pub message: &'a str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub code: &'static str,
    pub request_id: &'a str,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
            code: "invalid_request",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooEarly(_) => StatusCode::TOO_EARLY,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::NoProvider(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Upstream { status, .. } => *status,
            Self::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI-style error type and a stable machine code.
    pub fn kind_and_code(&self) -> (&'static str, &'static str) {
        match self {
            Self::BadRequest { code, .. } => ("invalid_request_error", code),
            Self::Unauthorized(_) => ("authentication_error", "invalid_api_key"),
            Self::Forbidden(_) => ("permission_error", "forbidden"),
            Self::NotFound(_) => ("not_found_error", "not_found"),
            Self::MethodNotAllowed(_) => ("invalid_request_error", "method_not_allowed"),
            Self::BodyTimeout(_) => ("invalid_request_error", "body_timeout"),
            Self::PayloadTooLarge { .. } => ("invalid_request_error", "payload_too_large"),
            Self::UnsupportedMediaType(_) => ("invalid_request_error", "unsupported_media_type"),
            Self::TooEarly(_) => ("invalid_request_error", "too_early"),
            Self::RateLimited { .. } => ("rate_limit_error", "rate_limit_exceeded"),
            Self::NoProvider(_) => ("service_unavailable", "no_provider_available"),
            Self::Overloaded { .. } => ("service_unavailable", "overloaded"),
            Self::Upstream { status, .. } if *status == StatusCode::TOO_MANY_REQUESTS => {
                ("rate_limit_error", "upstream_rate_limited")
            }
            Self::Upstream { status, .. } if status.is_client_error() => {
                ("invalid_request_error", "upstream_rejected_request")
            }
            Self::Upstream { .. } => ("upstream_error", "upstream_error"),
            Self::GatewayTimeout(_) => ("timeout_error", "upstream_timeout"),
            Self::Internal(_) => ("internal_error", "internal_error"),
        }
    }

    /// The label for `hapax_errors_total{type}`.
    pub fn metric_type(&self) -> &'static str {
        self.kind_and_code().1
    }

    /// The JSON body with the given request id, for SSE error events too.
    pub fn body_json(&self, request_id: &str) -> String {
        let (kind, code) = self.kind_and_code();
        let message = self.to_string();
        let body = ErrorBody {
            error: ErrorDetail {
                message: &message,
                kind,
                code,
                request_id,
            },
        };
        serde_json::to_string(&body).unwrap_or_else(|_| {
            String::from(r#"{"error":{"message":"error","type":"internal_error"}}"#)
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let request_id = current_request_id();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match &self {
            Self::RateLimited {
                retry_after,
                headers: limits,
                ..
            } => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after.as_secs_f64().ceil().max(1.0) as u64),
                );
                if let Some(limits) = limits {
                    limits.apply(&mut headers);
                }
            }
            Self::Upstream {
                retry_after: Some(wait),
                ..
            } => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(wait.as_secs_f64().ceil().max(1.0) as u64),
                );
            }
            Self::Overloaded { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        let mut response = (self.status(), headers, self.body_json(&request_id)).into_response();
        response
            .extensions_mut()
            .insert(ErrorMarker(self.metric_type()));
        response
    }
}

/// Marks a response as an error for the observing middleware's metrics and log line.
#[derive(Clone, Copy)]
pub struct ErrorMarker(pub &'static str);

/// Set by a streamed body that ended with an error event after its 200 went out, so the
/// request's log line and `hapax_errors_total` still say it broke.
#[derive(Clone, Default)]
pub struct StreamFault(Arc<std::sync::OnceLock<&'static str>>);

impl StreamFault {
    pub fn set(&self, kind: &'static str) {
        let _ = self.0.set(kind);
    }

    pub fn get(&self) -> Option<&'static str> {
        self.0.get().copied()
    }
}

impl From<DispatchError> for ApiError {
    fn from(error: DispatchError) -> Self {
        match error {
            DispatchError::NoProvider => Self::NoProvider(error.to_string()),
            DispatchError::Deadline { attempts } => Self::GatewayTimeout(format!(
                "no provider answered within the request deadline ({attempts} attempt(s))"
            )),
            DispatchError::Upstream {
                provider,
                error,
                attempts,
            } => from_provider_error(&provider, error, attempts),
        }
    }
}

fn from_provider_error(provider: &str, error: ProviderError, attempts: u32) -> ApiError {
    match error {
        ProviderError::Timeout => ApiError::GatewayTimeout(format!(
            "provider {provider} timed out (after {attempts} attempt(s))"
        )),
        ProviderError::Status {
            status: 429,
            message,
            retry_after,
        } => ApiError::Upstream {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!("provider {provider} is rate limiting: {message}"),
            retry_after,
        },
        ProviderError::Status {
            status, message, ..
        } if (400..500).contains(&status) && !error_is_providers_fault(status) => {
            ApiError::Upstream {
                status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                message: format!("provider {provider} rejected the request: {message}"),
                retry_after: None,
            }
        }
        ProviderError::Unsupported(message) => ApiError::bad_request(message),
        other => ApiError::Upstream {
            status: StatusCode::BAD_GATEWAY,
            message: format!("provider {provider} failed after {attempts} attempt(s): {other}"),
            retry_after: None,
        },
    }
}

fn error_is_providers_fault(status: u16) -> bool {
    matches!(status, 401 | 403 | 408 | 409)
}
