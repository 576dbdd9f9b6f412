//! The upstream HTTP client and the helpers every HTTP provider shares.
//!
//! Plain `http://` endpoints go through their own [`super::pool::OriginPool`], which speaks
//! HTTP/1.1 itself (see [`super::h1`]). TLS endpoints share a thin layer over hyper-util's
//! pooled client rather than reqwest: on the request path it saves reqwest's three URL parses
//! per request (into the `Url`, in its redirect policy, and back from the response), its
//! redirect and retry layers, and their allocations; the gateway follows no redirects and does
//! its own retries and timeouts.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::uri::PathAndQuery;
use http::{Method, StatusCode};
use http_body_util::Full;
use hyper::body::{Body, Incoming};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_platform_verifier::BuilderVerifierExt;

use super::h1::PlainRequest;
use super::pool::PooledBody;
use super::redact::redact;
pub use super::request::UpstreamRequest;
use super::request::client_request;
use super::resend::request_resending;
use super::{Endpoint, ProviderError};
use hapax_config::defaults;

pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle keep-alive connections kept per upstream: above a busy node's concurrency, so a burst's
/// connections are kept for the next one rather than closed and opened again (nginx's
/// `keepalive` in the benchmark keeps 512). Idle ones close after the provider's
/// `pool_idle_timeout`.
pub(super) const POOL_MAX_IDLE_PER_HOST: usize = 1024;

/// Why the client could not be built (the platform's certificate store, most likely).
#[derive(Debug, thiserror::Error)]
#[error("TLS client setup: {0}")]
pub struct HttpClientError(#[from] rustls::Error);

/// One client for all upstreams: pooled keep-alive connections (HTTP/1.1, or HTTP/2 when a
/// TLS upstream offers it), rustls with the platform's roots, TCP_NODELAY. Plain-HTTP
/// endpoints use their own [`super::pool::OriginPool`] instead.
#[derive(Clone)]
pub struct HttpClient {
    pub(super) inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// Kept to build a client with another idle timeout over the same TLS configuration.
    connector: HttpsConnector<HttpConnector>,
    pool_idle_timeout: Duration,
    /// The clients built from this one, one per idle timeout, shared by every clone: providers
    /// with the same `pool_idle_timeout` share a pool, and so their connections to one host.
    siblings: Arc<std::sync::Mutex<Vec<HttpClient>>>,
}

impl HttpClient {
    pub fn new() -> Result<Self, HttpClientError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_platform_verifier()?
            .with_no_client_auth();
        Ok(Self::with_tls(tls))
    }

    fn with_tls(tls: rustls::ClientConfig) -> Self {
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
        tcp.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(tcp);
        Self::pooled(connector, defaults::PROVIDER_POOL_IDLE_TIMEOUT.get())
    }

    fn pooled(connector: HttpsConnector<HttpConnector>, pool_idle_timeout: Duration) -> Self {
        let inner = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(pool_idle_timeout)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            .build(connector.clone());
        Self {
            inner,
            connector,
            pool_idle_timeout,
            siblings: Arc::default(),
        }
    }

    /// The client whose pool reuses idle connections for `idle` (a provider's
    /// `pool_idle_timeout`): this one, or one built once per value over the same TLS
    /// configuration and shared by every provider that asks for that value.
    pub fn with_pool_idle_timeout(&self, idle: Duration) -> Self {
        if idle == self.pool_idle_timeout {
            return self.clone();
        }
        let mut siblings = self
            .siblings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(sibling) = siblings.iter().find(|c| c.pool_idle_timeout == idle) {
            return sibling.clone();
        }
        let mut sibling = Self::pooled(self.connector.clone(), idle);
        sibling.siblings = Arc::clone(&self.siblings);
        siblings.push(sibling.clone());
        sibling
    }

    /// A `POST` of `path` under the endpoint's base URL.
    pub fn post<'c>(&'c self, endpoint: &Endpoint, path: &str) -> UpstreamRequest<'c> {
        UpstreamRequest::new(self, Method::POST, endpoint, path)
    }

    pub fn get<'c>(&'c self, endpoint: &Endpoint, path: &str) -> UpstreamRequest<'c> {
        UpstreamRequest::new(self, Method::GET, endpoint, path)
    }
}

/// The `user-agent` every upstream request carries.
pub(super) const USER_AGENT: &str = concat!("hapax/", env!("CARGO_PKG_VERSION"));

/// An upstream's answer, headers read, body not yet.
pub struct UpstreamResponse {
    status: StatusCode,
    /// Every header of a TLS upstream's answer; a pooled answer keeps them only when it is not
    /// a success (see [`super::h1::AnswerHead`]).
    headers: http::HeaderMap,
    content_length: Option<u64>,
    body: AnswerBody,
}

enum AnswerBody {
    /// On a pooled plain-HTTP connection, which goes back once the body has been read.
    Pooled(PooledBody),
    /// From hyper-util's client (TLS upstreams).
    Client(Incoming),
}

impl UpstreamResponse {
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The body's data frames; a transport failure midway is `StreamBroken`.
    pub fn bytes_stream(
        self,
    ) -> impl Stream<Item = Result<Bytes, ProviderError>> + Send + Unpin + 'static {
        BodyFrames { body: self.body }
    }

    fn content_length(&self) -> Option<u64> {
        self.content_length
    }
}

/// The data frames of a body.
struct BodyFrames {
    body: AnswerBody,
}

impl Stream for BodyFrames {
    type Item = Result<Bytes, ProviderError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match &mut self.body {
            AnswerBody::Pooled(body) => body
                .poll_frame(cx)
                .map(|piece| piece.map(|piece| piece.map_err(ProviderError::StreamBroken))),
            AnswerBody::Client(body) => loop {
                match ready!(Pin::new(&mut *body).poll_frame(cx)) {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => return Poll::Ready(Some(Ok(data))),
                        Err(_trailers) => continue,
                    },
                    Some(Err(e)) => {
                        return Poll::Ready(Some(Err(ProviderError::StreamBroken(describe(&e)))));
                    }
                    None => return Poll::Ready(None),
                }
            },
        }
    }
}

/// Sends a request and turns transport failures and non-2xx answers into `ProviderError`.
///
/// Not an `async fn`: its parameters would be copied into the body's own locals, and this
/// future, boxed with every provider call, would hold the request twice.
#[allow(clippy::manual_async_fn)] // see above: the size of the future
pub fn send<'a>(
    request: UpstreamRequest<'a>,
    secret: Option<&'a str>,
) -> impl Future<Output = Result<UpstreamResponse, ProviderError>> + Send + 'a {
    async move {
        let connect_error =
            |problem: String| ProviderError::Connect(redact(&problem, secret.as_slice()));
        if let Some(problem) = request.problem {
            return Err(connect_error(problem));
        }
        // The request's parts are borrowed where a pooled connection writes them and taken apart
        // only for the TLS client: this future, boxed with every provider call, stays small.
        let response = match request.plain_pool {
            Some(pool) => {
                let plain = PlainRequest {
                    method: &request.method,
                    target: request
                        .uri
                        .path_and_query()
                        .map_or("/", PathAndQuery::as_str),
                    json: request.json,
                    fields: &request.fields,
                    body: &request.body,
                };
                let answer = pool.send(&plain).await.map_err(connect_error)?;
                UpstreamResponse {
                    status: answer.head.status,
                    content_length: answer.head.content_length(),
                    headers: answer.head.headers,
                    body: AnswerBody::Pooled(answer.body),
                }
            }
            None => {
                let UpstreamRequest {
                    client,
                    resent,
                    method,
                    uri,
                    json,
                    fields,
                    body,
                    ..
                } = request;
                let request = client_request(method, uri, json, fields, body);
                // Boxed: the plain path's future stays sized for the plain path.
                let response = Box::pin(request_resending(client, request, resent))
                    .await
                    .map_err(|e| connect_error(describe(&e)))?;
                let (head, body) = response.into_parts();
                UpstreamResponse {
                    status: head.status,
                    content_length: content_length(&head.headers),
                    headers: head.headers,
                    body: AnswerBody::Client(body),
                }
            }
        };
        if response.status().is_success() {
            return Ok(response);
        }
        // Boxed: the error path's future would otherwise size this one for every request.
        Err(Box::pin(status_error(response, secret)).await)
    }
}

/// The error chain as one line (keys travel in headers, never in URLs).
pub(super) fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

async fn status_error(response: UpstreamResponse, secret: Option<&str>) -> ProviderError {
    let status = response.status();
    let retry_after = parse_retry_after(&response.headers);
    let body = read_capped(response, 16 * 1024).await;
    let message = redact(&upstream_message(&body, status), secret.as_slice());
    ProviderError::Status {
        status: status.as_u16(),
        message,
        retry_after,
    }
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn parse_retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
    {
        return Some(Duration::from_secs_f64((ms / 1000.0).clamp(0.0, 3600.0)));
    }
    let secs = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()?;
    Some(Duration::from_secs_f64(secs.clamp(0.0, 3600.0)))
}

/// Reads at most `cap` bytes of a body; an error body is only for the message.
async fn read_capped(response: UpstreamResponse, cap: usize) -> Bytes {
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

/// Largest non-streamed upstream answer accepted: a broken or hostile upstream cannot make
/// the gateway buffer without bound.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// The whole body of a non-streamed answer, bounded by [`MAX_RESPONSE_BYTES`].
pub async fn read_body(response: UpstreamResponse) -> Result<Vec<u8>, ProviderError> {
    let mut body = Vec::with_capacity(
        response
            .content_length()
            .unwrap_or(4096)
            .min(MAX_RESPONSE_BYTES as u64) as usize,
    );
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(ProviderError::InvalidResponse(format!(
                "the response is larger than {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

pub async fn read_json<T: serde::de::DeserializeOwned>(
    response: UpstreamResponse,
) -> Result<T, ProviderError> {
    let body = read_body(response).await?;
    serde_json::from_slice(&body).map_err(|e| ProviderError::InvalidResponse(e.to_string()))
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
