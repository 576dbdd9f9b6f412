//! The typed configuration schema. Every struct denies unknown keys; defaults live in
//! [`crate::defaults`] so that there is one place to read them.

use std::collections::BTreeMap;

use indexmap::IndexMap;

use serde::Deserialize;

use crate::defaults as d;
use crate::duration::ConfigDuration;

/// The whole configuration file, after `${VAR}` expansion and key normalisation.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    #[serde(alias = "circuitBreaker")]
    pub circuit_breaker: CircuitBreakerConfig,
    #[serde(alias = "providerPreference")]
    pub provider_preference: Vec<String>,
    pub providers: IndexMap<String, ProviderConfig>,
    pub logging: LoggingConfig,
    /// Hapax's legacy single-provider form; turned into a provider named after `llm.provider`.
    pub llm: Option<LegacyLlmConfig>,
    pub routing: RoutingConfig,
    pub auth: AuthConfig,
    #[serde(alias = "rateLimits")]
    pub rate_limits: RateLimitsConfig,
    pub dedup: DedupConfig,
    /// Hapax's `routes` list: accepted for compatibility, reported by `validate` as not used.
    pub routes: Option<serde_yaml::Value>,
    /// Accepted, not used yet (response cache arrives with its own issue).
    pub cache: Option<serde_yaml::Value>,
    /// Accepted, not used yet (load shedding arrives with its own issue).
    pub queue: Option<serde_yaml::Value>,
    /// Accepted, not used yet (clustering arrives with its own issue).
    pub cluster: Option<serde_yaml::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to bind; the embedded default binds loopback only.
    #[serde(alias = "bind_address")]
    pub host: String,
    pub port: u16,
    #[serde(alias = "readTimeout")]
    pub read_timeout: ConfigDuration,
    #[serde(alias = "writeTimeout")]
    pub write_timeout: ConfigDuration,
    #[serde(alias = "maxHeaderBytes")]
    pub max_header_bytes: usize,
    #[serde(alias = "maxBodyBytes")]
    pub max_body_bytes: usize,
    #[serde(alias = "shutdownTimeout")]
    pub shutdown_timeout: ConfigDuration,
    pub http3: Option<Http3Config>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: d::SERVER_HOST.to_owned(),
            port: d::SERVER_PORT,
            read_timeout: d::SERVER_READ_TIMEOUT,
            write_timeout: d::SERVER_WRITE_TIMEOUT,
            max_header_bytes: d::SERVER_MAX_HEADER_BYTES,
            max_body_bytes: d::SERVER_MAX_BODY_BYTES,
            shutdown_timeout: d::SERVER_SHUTDOWN_TIMEOUT,
            http3: None,
        }
    }
}

/// Hapax's `server.http3` block. Accepted now; served once HTTP/3 lands.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Http3Config {
    pub enabled: bool,
    pub port: u16,
    pub tls_cert_file: String,
    pub tls_key_file: String,
    pub idle_timeout: Option<ConfigDuration>,
    pub max_bi_streams_concurrent: Option<u64>,
    pub max_uni_streams_concurrent: Option<u64>,
    pub max_stream_receive_window: Option<u64>,
    pub max_connection_receive_window: Option<u64>,
    pub enable_0rtt: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakerConfig {
    /// Probes allowed while half-open.
    #[serde(alias = "maxRequests")]
    pub max_requests: u32,
    /// Window over which the optional failure ratio is computed (and counts reset while closed).
    pub interval: ConfigDuration,
    /// How long the breaker stays open before it lets probes through.
    pub timeout: ConfigDuration,
    /// Consecutive failures that trip the breaker.
    #[serde(alias = "failureThreshold")]
    pub failure_threshold: u32,
    /// Optional: trip when failures / requests within `interval` reach this ratio (0..=1).
    #[serde(alias = "failureRatio")]
    pub failure_ratio: Option<f64>,
    /// Minimum requests within `interval` before `failure_ratio` applies.
    #[serde(alias = "minRequests")]
    pub min_requests: u32,
    /// Hapax's test switch; accepted and ignored (reported as not used).
    #[serde(alias = "testMode")]
    pub test_mode: Option<bool>,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            max_requests: d::BREAKER_MAX_REQUESTS,
            interval: d::BREAKER_INTERVAL,
            timeout: d::BREAKER_TIMEOUT,
            failure_threshold: d::BREAKER_FAILURE_THRESHOLD,
            failure_ratio: None,
            min_requests: d::BREAKER_MIN_REQUESTS,
            test_mode: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Openai,
    Anthropic,
    Ollama,
    #[serde(alias = "openai-compatible")]
    OpenaiCompatible,
    Mock,
}

impl ProviderKind {
    /// The name used in YAML (`type: openai`) and for providers created from `llm:`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Anthropic => "anthropic",
            Self::Ollama => "ollama",
            Self::OpenaiCompatible => "openai_compatible",
            Self::Mock => "mock",
        }
    }

    /// The environment variable a provider of this type falls back to when it has no `api_key`.
    pub fn api_key_env(self) -> Option<&'static str> {
        match self {
            Self::Openai => Some("OPENAI_API_KEY"),
            Self::Anthropic => Some("ANTHROPIC_API_KEY"),
            _ => None,
        }
    }

    /// The `base_url` used when none is configured; `openai_compatible` must name its own.
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            Self::Openai => Some(d::OPENAI_BASE_URL),
            Self::Anthropic => Some(d::ANTHROPIC_BASE_URL),
            Self::Ollama => Some(d::OLLAMA_BASE_URL),
            Self::OpenaiCompatible | Self::Mock => None,
        }
    }
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    #[serde(rename = "type")]
    pub kind: ProviderKind,
    /// Upstream model name sent to the provider.
    #[serde(default)]
    pub model: Option<String>,
    /// Secret; falls back to OPENAI_API_KEY / ANTHROPIC_API_KEY for those types.
    #[serde(default)]
    pub api_key: Option<Secret>,
    #[serde(default, alias = "endpoint")]
    pub base_url: Option<String>,
    /// Per-attempt timeout for a call to this provider.
    #[serde(default)]
    pub timeout: Option<ConfigDuration>,
    /// Extra model names clients may ask for that this provider serves.
    #[serde(default)]
    pub models: Vec<String>,
    /// Several endpoints and/or keys for the same provider, spread by `routing.strategy`.
    #[serde(default)]
    pub deployments: Vec<DeploymentConfig>,
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// Anthropic needs `max_tokens`; used when the client sends none.
    #[serde(default)]
    pub default_max_tokens: Option<u32>,
    /// Extra headers sent upstream (e.g. OpenRouter's HTTP-Referer).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl ProviderConfig {
    /// A provider of `kind` with every optional setting left to its default.
    pub fn new(kind: ProviderKind) -> Self {
        Self {
            kind,
            model: None,
            api_key: None,
            base_url: None,
            timeout: None,
            models: Vec::new(),
            deployments: Vec::new(),
            health_check: None,
            default_max_tokens: None,
            headers: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    #[serde(default, alias = "endpoint")]
    pub base_url: Option<String>,
    #[serde(default)]
    pub api_key: Option<Secret>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    pub enabled: bool,
    pub interval: ConfigDuration,
    pub timeout: ConfigDuration,
    /// Consecutive failed checks before the provider is marked down.
    #[serde(alias = "threshold")]
    pub failure_threshold: u32,
    /// Consecutive good checks before a down provider is marked up again.
    pub success_threshold: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: d::HEALTH_INTERVAL,
            timeout: d::HEALTH_TIMEOUT,
            failure_threshold: d::HEALTH_FAILURE_THRESHOLD,
            success_threshold: d::HEALTH_SUCCESS_THRESHOLD,
        }
    }
}

/// A secret value; its `Debug` never prints the value.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// A tracing filter: `info`, `debug`, `hapax=debug,info`, ...
    pub level: String,
    pub format: LogFormat,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: d::LOG_LEVEL.to_owned(),
            format: LogFormat::Json,
        }
    }
}

/// Hapax's `llm` block (single provider, plus retry and backup providers).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LegacyLlmConfig {
    pub provider: Option<ProviderKind>,
    pub model: Option<String>,
    pub api_key: Option<Secret>,
    pub endpoint: Option<String>,
    pub system_prompt: Option<String>,
    pub max_context_tokens: Option<u64>,
    pub retry: Option<RetryConfig>,
    pub cache: Option<serde_yaml::Value>,
    pub options: Option<serde_yaml::Value>,
    pub backup_providers: Vec<LegacyBackupProvider>,
    pub health_check: Option<HealthCheckConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacyBackupProvider {
    pub provider: ProviderKind,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub api_key: Option<Secret>,
    #[serde(default)]
    pub endpoint: Option<String>,
}

/// Hapax's `llm.retry` keys; mapped onto `routing`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    pub max_retries: Option<u32>,
    pub initial_delay: Option<ConfigDuration>,
    pub max_delay: Option<ConfigDuration>,
    pub multiplier: Option<f64>,
    pub retryable_errors: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RoutingStrategy {
    #[default]
    Preference,
    RoundRobin,
    LeastInflight,
    Latency,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// How deployments within one provider are chosen.
    pub strategy: RoutingStrategy,
    /// Upstream attempts per request, failovers included.
    pub max_attempts: u32,
    /// Overall deadline for one request, all attempts included.
    pub request_timeout: ConfigDuration,
    pub backoff_initial: ConfigDuration,
    pub backoff_max: ConfigDuration,
    pub backoff_multiplier: f64,
    /// Longest wait for the first chunk of a stream before failing over.
    pub first_token_timeout: ConfigDuration,
    /// Longest silence between two chunks once a stream has started.
    pub stream_stall_timeout: ConfigDuration,
    /// Longest `Retry-After` from a 429 that the gateway waits out itself.
    pub max_retry_after: ConfigDuration,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            strategy: RoutingStrategy::Preference,
            max_attempts: d::ROUTING_MAX_ATTEMPTS,
            request_timeout: d::ROUTING_REQUEST_TIMEOUT,
            backoff_initial: d::ROUTING_BACKOFF_INITIAL,
            backoff_max: d::ROUTING_BACKOFF_MAX,
            backoff_multiplier: d::ROUTING_BACKOFF_MULTIPLIER,
            first_token_timeout: d::ROUTING_FIRST_TOKEN_TIMEOUT,
            stream_stall_timeout: d::ROUTING_STREAM_STALL_TIMEOUT,
            max_retry_after: d::ROUTING_MAX_RETRY_AFTER,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Auth is on unless this is explicitly `false`.
    pub enabled: Option<bool>,
    pub api_keys: Vec<ApiKeyConfig>,
    pub admin_keys: Vec<ApiKeyConfig>,
    /// Require a client key for `/metrics`.
    pub protect_metrics: bool,
    /// Require a client key for `/health` and `/v1/health`.
    pub protect_health: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Shown in logs and metrics instead of the key.
    pub name: String,
    /// The key itself (usually `${ENV_VAR}`).
    #[serde(default)]
    pub key: Option<Secret>,
    /// Hex sha256 of the key, so the config need not hold the key.
    #[serde(default)]
    pub key_sha256: Option<String>,
    /// Models this key may use; empty = all.
    #[serde(default)]
    pub models: Vec<String>,
    /// Providers this key may use; empty = all.
    #[serde(default)]
    pub providers: Vec<String>,
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    /// Applies to all traffic on this node.
    pub global: Option<RateLimitConfig>,
    /// Applies to each API key that has no limit of its own.
    pub per_key: Option<RateLimitConfig>,
    /// Per endpoint path, e.g. `/v1/chat/completions`.
    pub endpoints: BTreeMap<String, RateLimitConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupConfig {
    pub enabled: bool,
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}
