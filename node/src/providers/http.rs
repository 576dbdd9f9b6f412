//! The one pooled HTTP client and the helpers every HTTP provider shares.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::{RequestBuilder, Response, StatusCode};

use super::ProviderError;
use super::redact::redact;

/// One client for all upstreams: pooled keep-alive connections, rustls, TCP_NODELAY.
pub fn build_http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .user_agent(concat!("hapax/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Sends a request and turns transport failures and non-2xx answers into `ProviderError`.
pub async fn send(
    builder: RequestBuilder,
    secret: Option<&str>,
) -> Result<Response, ProviderError> {
    let response = builder.send().await.map_err(|e| transport_error(&e))?;
    if response.status().is_success() {
        return Ok(response);
    }
    Err(status_error(response, secret).await)
}

pub fn transport_error(error: &reqwest::Error) -> ProviderError {
    if error.is_timeout() {
        ProviderError::Timeout
    } else if error.is_connect() {
        ProviderError::Connect(describe(error))
    } else if error.is_body() || error.is_decode() {
        ProviderError::StreamBroken(describe(error))
    } else {
        ProviderError::Connect(describe(error))
    }
}

/// The error chain as one line (keys travel in headers, never in URLs).
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

async fn status_error(response: Response, secret: Option<&str>) -> ProviderError {
    let status = response.status();
    let retry_after = parse_retry_after(&response);
    let body = read_capped(response, 16 * 1024).await;
    let message = redact(&upstream_message(&body, status), secret.as_slice());
    ProviderError::Status {
        status: status.as_u16(),
        message,
        retry_after,
    }
}

fn parse_retry_after(response: &Response) -> Option<Duration> {
    let headers = response.headers();
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
    {
        return Some(Duration::from_secs_f64((ms / 1000.0).clamp(0.0, 3600.0)));
    }
    let secs = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()?;
    Some(Duration::from_secs_f64(secs.clamp(0.0, 3600.0)))
}

/// Reads at most `cap` bytes of a body; an error body is only for the message.
async fn read_capped(response: Response, cap: usize) -> Bytes {
    let mut out = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        let room = cap.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= cap {
            break;
        }
    }
    Bytes::from(out)
}

/// Pulls the human message out of the error shapes of OpenAI, Anthropic and Ollama.
fn upstream_message(body: &[u8], status: StatusCode) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let from_json = parsed.as_ref().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("error").filter(|e| e.is_string()))
            .or_else(|| v.get("message"))
            .and_then(|m| m.as_str())
            .map(str::to_owned)
    });
    let text = from_json.unwrap_or_else(|| {
        let raw = String::from_utf8_lossy(body);
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            status.canonical_reason().unwrap_or("error").to_owned()
        } else {
            trimmed.chars().take(300).collect()
        }
    });
    text.chars().take(500).collect()
}

/// Joins a base URL and a path without doubling slashes.
pub fn join(base: &str, path: &str) -> String {
    let mut url = String::with_capacity(base.len() + path.len());
    url.push_str(base.trim_end_matches('/'));
    url.push_str(path);
    url
}

/// Largest non-streamed upstream answer accepted: a broken or hostile upstream cannot make
/// the gateway buffer without bound.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

pub async fn read_json<T: serde::de::DeserializeOwned>(
    response: Response,
) -> Result<T, ProviderError> {
    let mut body = Vec::with_capacity(
        response
            .content_length()
            .unwrap_or(4096)
            .min(MAX_RESPONSE_BYTES as u64) as usize,
    );
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| transport_error(&e))?;
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(ProviderError::InvalidResponse(format!(
                "the response is larger than {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| ProviderError::InvalidResponse(e.to_string()))
}
