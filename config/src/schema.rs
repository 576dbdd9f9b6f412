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
    /// The response cache (Hapax's `llm.cache` is read too; this block wins over it).
    pub cache: Option<CacheConfig>,
    /// Hapax's `queue:` block: its size is the cap on requests in flight (see
    /// [`Config::max_inflight_requests`]).
    pub queue: Option<QueueConfig>,
    /// Present = this node joins a cluster; absent = a single node.
    pub cluster: Option<ClusterConfig>,
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
    /// TLS on the TCP listener (HTTP/1.1 and HTTP/2 by ALPN); absent = plain HTTP.
    pub tls: Option<TlsConfig>,
    /// Client-API requests in flight on this node (streams until their last chunk) beyond
    /// which a new one is answered 503 `overloaded` at once. Unset: `queue.max_size` when a
    /// `queue:` block is on, else the default.
    #[serde(alias = "maxInflightRequests")]
    pub max_inflight_requests: Option<usize>,
    /// Open TCP connections beyond which a new one is accepted and closed at once.
    #[serde(alias = "maxConnections")]
    pub max_connections: usize,
    /// While a request waits for a plain-HTTP upstream whose answers lately came within this
    /// window, keep polling for I/O (for at most the window) instead of sleeping, so the answer
    /// is picked up without waking a halted CPU (0s = off; one-core processes only).
    #[serde(alias = "busyPoll")]
    pub busy_poll: ConfigDuration,
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
            tls: None,
            max_inflight_requests: None,
            max_connections: d::SERVER_MAX_CONNECTIONS,
            busy_poll: d::SERVER_BUSY_POLL,
        }
    }
}

/// Hapax's `queue:` block. Hapax's queue middleware answers 503 once `initial_size` requests
/// are being processed, i.e. it is a cap on requests in flight; here that size becomes the
/// load-shedding cap. Nothing waits in a queue: past the cap the answer is an immediate 503.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// On when the block is written, unless `false` (then the default cap applies).
    pub enabled: Option<bool>,
    /// The cap on requests in flight; `initial_size` is Hapax's spelling.
    #[serde(alias = "initial_size", alias = "initialSize", alias = "maxSize")]
    pub max_size: Option<u64>,
    /// Hapax persisted its queue size here: accepted, not used (the cap is configuration).
    #[serde(alias = "statePath")]
    pub state_path: Option<String>,
    /// Hapax's persistence interval: accepted, not used.
    #[serde(alias = "saveInterval")]
    pub save_interval: Option<ConfigDuration>,
}

impl QueueConfig {
    pub fn is_enabled(&self) -> bool {
        self.enabled.unwrap_or(true)
    }
}

/// Hapax's `server.http3` block: HTTP/3 (QUIC) on a UDP port, same routes as TCP.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Http3Config {
    pub enabled: bool,
    /// UDP port; required when enabled (`0` picks a free port, for tests).
    pub port: Option<u16>,
    /// PEM files; when empty, `server.tls`'s files are used.
    pub tls_cert_file: String,
    pub tls_key_file: String,
    pub idle_timeout: Option<ConfigDuration>,
    pub max_bi_streams_concurrent: Option<u64>,
    pub max_uni_streams_concurrent: Option<u64>,
    pub max_stream_receive_window: Option<u64>,
    pub max_connection_receive_window: Option<u64>,
    /// Accept 0-RTT early data; unsafe methods in it are refused with 425 Too Early.
    pub enable_0rtt: bool,
}

impl Http3Config {
    /// The certificate and key files HTTP/3 serves: its own, else `server.tls`'s.
    pub fn cert_and_key<'a>(&'a self, tls: Option<&'a TlsConfig>) -> (&'a str, &'a str) {
        let pick = |own: &'a str, shared: Option<&'a str>| match (own.trim().is_empty(), shared) {
            (true, Some(shared)) => shared,
            _ => own,
        };
        (
            pick(&self.tls_cert_file, tls.map(|t| t.cert_file.as_str())),
            pick(&self.tls_key_file, tls.map(|t| t.key_file.as_str())),
        )
    }
}

/// `server.tls`: the certificate chain and private key (PEM) for the TCP listener.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub cert_file: String,
    pub key_file: String,
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
    /// How long an idle kept-alive connection to this provider is reused. Set it below the
    /// upstream's own idle timeout when the upstream does not announce it (an AWS ALB closes
    /// idle connections after 60 s and says nothing).
    #[serde(default)]
    pub pool_idle_timeout: Option<ConfigDuration>,
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
            pool_idle_timeout: None,
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
    /// Hapax's response cache block; off unless `enable: true` (Hapax's default).
    pub cache: Option<CacheConfig>,
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
    /// In a cluster, when this node cannot reach the Raft majority: `false` (default) spends
    /// only the lease it holds, then answers 429; `true` admits up to a local fair share
    /// (limit / live nodes) per window.
    pub fail_open: bool,
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

/// How routing treats a provider that *other* nodes report down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RemoteHealthPolicy {
    /// Ignore other nodes' views.
    LocalOnly,
    /// Try a provider last as soon as any other live node reports it down.
    #[default]
    Any,
    /// Try it last once a majority of the live nodes (this one included) report it down.
    Majority,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailureDetectorSettings {
    /// Phi-accrual threshold above which a peer is considered dead.
    pub phi_threshold: f64,
    /// Assumed heartbeat interval before samples exist (defaults to `gossip_interval`).
    pub initial_interval: Option<ConfigDuration>,
    /// Heartbeat intervals longer than this are ignored as outliers.
    pub max_interval: ConfigDuration,
    /// How long a dead node stays listed before it is forgotten.
    pub dead_node_grace_period: ConfigDuration,
}

impl Default for FailureDetectorSettings {
    fn default() -> Self {
        Self {
            phi_threshold: d::CLUSTER_PHI_THRESHOLD,
            initial_interval: None,
            max_interval: d::CLUSTER_FD_MAX_INTERVAL,
            dead_node_grace_period: d::CLUSTER_DEAD_NODE_GRACE,
        }
    }
}

/// The `cluster:` section: gossip membership (chitchat) and the Raft group (openraft).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Unique, stable name of this node (default: the host name).
    pub node_id: Option<String>,
    /// Nodes with another cluster id are not admitted.
    pub cluster_id: String,
    /// UDP address gossip binds (not the HTTP/3 port).
    pub gossip_listen: String,
    /// `host:port` peers use to reach this node's gossip (default: the bound address;
    /// required when binding all interfaces). Host names are resolved at start-up.
    pub gossip_advertise: Option<String>,
    /// `host:port` of other nodes; DNS names are re-resolved (docker-compose friendly).
    pub seeds: Vec<String>,
    pub gossip_interval: ConfigDuration,
    pub failure_detector: FailureDetectorSettings,
    /// TCP address of the cluster gRPC service (Raft).
    pub grpc_listen: String,
    pub grpc_advertise: Option<String>,
    /// How other nodes' provider health changes routing here.
    pub remote_health: RemoteHealthPolicy,
    /// Shared secret: gossip datagrams and gRPC calls without it are dropped.
    pub secret: Option<Secret>,
    /// Directory of this node's Raft log and snapshots (default: `./data/<node_id>`).
    /// Keep it across restarts: a node that loses it must be removed and re-added.
    pub data_dir: Option<String>,
    /// How many nodes form the Raft group the first time the cluster starts. When gossip
    /// shows that many live nodes and none of them holds Raft data yet, the one with the
    /// smallest node id initializes the group with all of them as voters. Left out: `1` when
    /// `seeds` is empty (a lone node forms its own group), otherwise this node never forms a
    /// group itself and waits to be added by an existing one. Set the same value (e.g. 3) on
    /// every node of a fresh cluster.
    pub bootstrap_expect: Option<u32>,
    /// A voter that gossip reports dead (or gone) this long is removed from the Raft group,
    /// but only while the remaining voters keep a live majority and at least 3 voters.
    pub dead_node_removal_after: ConfigDuration,
}

impl ClusterConfig {
    /// The `bootstrap_expect` in force: the configured one, else 1 for a node without seeds;
    /// `None` means this node never initializes a Raft group itself.
    pub fn effective_bootstrap_expect(&self) -> Option<u32> {
        self.bootstrap_expect
            .or(if self.seeds.is_empty() { Some(1) } else { None })
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_id: None,
            cluster_id: d::CLUSTER_ID.to_owned(),
            gossip_listen: d::CLUSTER_GOSSIP_LISTEN.to_owned(),
            gossip_advertise: None,
            seeds: Vec::new(),
            gossip_interval: d::CLUSTER_GOSSIP_INTERVAL,
            failure_detector: FailureDetectorSettings::default(),
            grpc_listen: d::CLUSTER_GRPC_LISTEN.to_owned(),
            grpc_advertise: None,
            remote_health: RemoteHealthPolicy::Any,
            secret: None,
            data_dir: None,
            bootstrap_expect: None,
            dead_node_removal_after: d::CLUSTER_DEAD_NODE_REMOVAL_AFTER,
        }
    }
}

impl Config {
    /// The cap on client-API requests in flight: `server.max_inflight_requests`, else the
    /// size of an enabled `queue:` block, else the default.
    pub fn max_inflight_requests(&self) -> usize {
        self.server
            .max_inflight_requests
            .or_else(|| {
                self.queue
                    .as_ref()
                    .filter(|q| q.is_enabled())
                    .map(|q| q.max_size.unwrap_or(d::QUEUE_MAX_SIZE))
                    .map(|size| usize::try_from(size).unwrap_or(usize::MAX))
            })
            .unwrap_or(d::SERVER_MAX_INFLIGHT_REQUESTS)
    }

    /// The response cache to run, if any: `cache`, else `llm.cache`, when enabled.
    pub fn response_cache(&self) -> Option<&CacheConfig> {
        self.cache
            .as_ref()
            .or_else(|| self.llm.as_ref().and_then(|l| l.cache.as_ref()))
            .filter(|c| c.is_enabled())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheKind {
    /// In-process, one node.
    Memory,
    /// Shared by every node that points at the same Redis.
    Redis,
    /// Hapax's file cache: accepted, served by the in-memory cache.
    File,
}

/// Whose requests may share an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CacheScope {
    /// Entries belong to the caller's API key (by its name).
    #[default]
    Key,
    /// One entry serves every key that sends the same request.
    Shared,
}

/// `cache:` (or Hapax's `llm.cache`): the response cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// On when the block is written, unless `false`; `enable` is Hapax's spelling.
    #[serde(alias = "enable")]
    pub enabled: Option<bool>,
    /// `memory` or `redis`; when left out, `redis` if a `redis` block is given, else `memory`.
    #[serde(rename = "type")]
    pub kind: Option<CacheKind>,
    /// How long an entry is served.
    pub ttl: ConfigDuration,
    /// Memory cache: the most entries kept (least recently used go first).
    #[serde(alias = "maxSize")]
    pub max_size: u64,
    pub scope: CacheScope,
    pub redis: Option<RedisCacheConfig>,
    /// Hapax's file-cache directory: accepted, not used.
    pub dir: Option<String>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: None,
            kind: None,
            ttl: d::CACHE_TTL,
            max_size: d::CACHE_MAX_ENTRIES,
            scope: CacheScope::Key,
            redis: None,
            dir: None,
        }
    }
}

impl CacheConfig {
    pub fn is_enabled(&self) -> bool {
        self.enabled.unwrap_or(true)
    }

    /// The backend in use: `type`, else `redis` when a `redis` block is given, else `memory`.
    pub fn kind(&self) -> CacheKind {
        self.kind.unwrap_or(if self.redis.is_some() {
            CacheKind::Redis
        } else {
            CacheKind::Memory
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisCacheConfig {
    /// `host:port`, or a `redis://` / `rediss://` URL.
    pub address: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub db: i64,
    /// Connect with TLS (as a `rediss://` address does).
    pub tls: bool,
    /// Bound on every Redis operation; past it the request goes on without the cache.
    pub timeout: ConfigDuration,
}

impl Default for RedisCacheConfig {
    fn default() -> Self {
        Self {
            address: String::new(),
            username: None,
            password: None,
            db: 0,
            tls: false,
            timeout: d::CACHE_REDIS_TIMEOUT,
        }
    }
}
