//! Upstream providers: one trait, one file per wire format.

pub(crate) mod anthropic;
pub(crate) mod h1;
mod http;
mod mock;
pub(crate) mod ollama;
mod openai;
mod pool;
pub mod redact;
mod request;
mod resend;
pub mod sse;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use futures_util::future::BoxFuture;
use hapax_config::{ProviderConfig, ProviderKind};
use prometheus::IntCounter;

use crate::wire::answer::ChatAnswer;
use crate::wire::openai::{ChatRequest, ChatResponse, Usage};

pub use self::http::{HttpClient, HttpClientError};

/// One item of a translated stream: the JSON text of an OpenAI `chat.completion.chunk`,
/// plus the usage it reports (if any) so the gateway can account for tokens without
/// parsing the chunk again.
#[derive(Debug, Clone)]
pub struct StreamItem {
    pub data: Bytes,
    pub usage: Option<Usage>,
}

pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<StreamItem, ProviderError>> + Send>>;

/// Where and with which key one call goes: a provider may have several deployments.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub base_url: String,
    pub api_key: Option<String>,
    /// Kept-alive connections when the base URL is plain HTTP (see [`pool`]).
    plain_pool: Option<Arc<pool::OriginPool>>,
    /// Counts requests sent again after the keep-alive race (`hapax_upstream_resends_total`).
    resent: Option<IntCounter>,
}

impl Endpoint {
    /// `resent` counts the requests its connection pool sends again (`hapax_upstream_resends_total`);
    /// a plain-HTTP endpoint's idle connections are reused for `pool_idle_timeout` at most.
    pub fn new(
        base_url: String,
        api_key: Option<String>,
        resent: Option<IntCounter>,
        pool_idle_timeout: Duration,
    ) -> Self {
        let plain_pool =
            pool::OriginPool::for_base_url(&base_url, resent.clone(), pool_idle_timeout);
        Self {
            base_url,
            api_key,
            plain_pool,
            resent,
        }
    }
}

/// Everything a provider needs for one upstream call.
pub struct UpstreamCall<'a> {
    pub request: &'a ChatRequest,
    /// The model name to send upstream.
    pub model: &'a str,
    pub endpoint: &'a Endpoint,
    /// For streams: ask upstream for usage even if the client did not.
    pub want_stream_usage: bool,
}

/// Why an upstream call failed; decides retry, failover and breaker accounting.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    #[error("could not connect to the provider: {0}")]
    Connect(String),
    #[error("the provider did not answer in time")]
    Timeout,
    #[error("the provider answered {status}: {message}")]
    Status {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("the provider sent a response the gateway could not read: {0}")]
    InvalidResponse(String),
    #[error("the provider's stream broke: {0}")]
    StreamBroken(String),
    /// The request uses a feature this provider's translation does not support; try another.
    #[error("{0}")]
    Unsupported(String),
}

impl ProviderError {
    /// Failures worth another candidate: the provider, not the request, is at fault.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect(_)
            | Self::Timeout
            | Self::InvalidResponse(_)
            | Self::StreamBroken(_)
            | Self::Unsupported(_) => true,
            Self::Status { status, .. } => {
                matches!(status, 401 | 403 | 408 | 409 | 429) || *status >= 500
            }
        }
    }

    /// Failures that count against the provider's health and breaker.
    pub fn counts_as_provider_failure(&self) -> bool {
        !matches!(self, Self::Unsupported(_)) && self.is_retryable()
    }

    /// A short, bounded label for metrics and logs.
    pub fn kind_label(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Timeout => "timeout",
            Self::Status { status: 429, .. } => "rate_limited",
            Self::Status { status, .. } if *status >= 500 => "server_error",
            Self::Status { .. } => "client_error",
            Self::InvalidResponse(_) => "invalid_response",
            Self::StreamBroken(_) => "stream_broken",
            Self::Unsupported(_) => "unsupported",
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The one interface every upstream implements.
pub trait Provider: Send + Sync + 'static {
    fn chat<'a>(
        &'a self,
        call: UpstreamCall<'a>,
    ) -> BoxFuture<'a, Result<ChatAnswer, ProviderError>>;

    /// Starts a stream; resolves once upstream accepted the request (status 200).
    fn chat_stream<'a>(
        &'a self,
        call: UpstreamCall<'a>,
    ) -> BoxFuture<'a, Result<ChunkStream, ProviderError>>;

    /// A check that spends no tokens (listing models, or the like).
    fn health_check<'a>(
        &'a self,
        endpoint: &'a Endpoint,
    ) -> BoxFuture<'a, Result<(), ProviderError>>;
}

/// A translated answer, encoded once for the client.
fn encoded(response: &ChatResponse) -> Result<ChatAnswer, ProviderError> {
    ChatAnswer::encode(response).map_err(|e| ProviderError::InvalidResponse(e.to_string()))
}

/// Builds the client for one configured provider.
pub fn build_provider(config: &ProviderConfig, http: &HttpClient) -> Arc<dyn Provider> {
    let http = &http.with_pool_idle_timeout(pool_idle_timeout(config));
    match config.kind {
        ProviderKind::Openai | ProviderKind::OpenaiCompatible => Arc::new(
            openai::OpenAiProvider::new(http.clone(), config.kind == ProviderKind::Openai),
        ),
        ProviderKind::Anthropic => Arc::new(anthropic::AnthropicProvider::new(
            http.clone(),
            config
                .default_max_tokens
                .unwrap_or(hapax_config::defaults::ANTHROPIC_DEFAULT_MAX_TOKENS),
        )),
        ProviderKind::Ollama => Arc::new(ollama::OllamaProvider::new(http.clone())),
        ProviderKind::Mock => Arc::new(mock::MockProvider),
    }
}

/// The endpoints (deployments) of a provider entry: its own base URL and key, or each
/// deployment's, inheriting what a deployment leaves out.
pub fn endpoints_of(config: &ProviderConfig, resent: &IntCounter) -> Vec<Endpoint> {
    let base = config.base_url.clone().unwrap_or_default();
    let key = config
        .api_key
        .as_ref()
        .map(|k| k.expose().to_owned())
        .filter(|k| !k.is_empty());
    let idle = pool_idle_timeout(config);
    if config.deployments.is_empty() {
        return vec![Endpoint::new(base, key, Some(resent.clone()), idle)];
    }
    config
        .deployments
        .iter()
        .map(|d| {
            let base_url = d
                .base_url
                .clone()
                .map(|u| u.trim_end_matches('/').to_owned())
                .unwrap_or_else(|| base.clone());
            let api_key = d
                .api_key
                .as_ref()
                .map(|k| k.expose().to_owned())
                .filter(|k| !k.is_empty())
                .or_else(|| key.clone());
            Endpoint::new(base_url, api_key, Some(resent.clone()), idle)
        })
        .collect()
}

/// How long the provider's idle upstream connections are reused at most.
pub fn pool_idle_timeout(config: &ProviderConfig) -> Duration {
    config
        .pool_idle_timeout
        .unwrap_or(hapax_config::defaults::PROVIDER_POOL_IDLE_TIMEOUT)
        .get()
}
