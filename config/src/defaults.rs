//! Every default value of the configuration, in one place.

use crate::duration::ConfigDuration;

pub const SERVER_HOST: &str = "0.0.0.0";
pub const SERVER_PORT: u16 = 8080;
pub const SERVER_READ_TIMEOUT: ConfigDuration = ConfigDuration::from_secs(30);
pub const SERVER_WRITE_TIMEOUT: ConfigDuration = ConfigDuration::from_secs(45);
pub const SERVER_MAX_HEADER_BYTES: usize = 2 * 1024 * 1024;
pub const SERVER_MAX_BODY_BYTES: usize = 1024 * 1024;
pub const SERVER_SHUTDOWN_TIMEOUT: ConfigDuration = ConfigDuration::from_secs(30);
pub const SERVER_MAX_INFLIGHT_REQUESTS: usize = 1024;
pub const SERVER_MAX_CONNECTIONS: usize = 10_000;
/// Spin only for upstreams that lately answered within 200 µs, about what a few wake-ups of a
/// halted vCPU cost: never for a hosted LLM, so the default costs nothing there.
pub const SERVER_BUSY_POLL: ConfigDuration = ConfigDuration::from_micros(200);
/// The longest busy-poll window accepted: past it, spinning outlasts any wake-up it saves.
pub const SERVER_BUSY_POLL_MAX: ConfigDuration = ConfigDuration::from_millis(1);
/// Hapax's `queue.initial_size` default, the cap when `queue:` is on without a size.
pub const QUEUE_MAX_SIZE: u64 = 1000;

pub const BREAKER_MAX_REQUESTS: u32 = 1;
pub const BREAKER_INTERVAL: ConfigDuration = ConfigDuration::from_secs(30);
pub const BREAKER_TIMEOUT: ConfigDuration = ConfigDuration::from_secs(10);
pub const BREAKER_FAILURE_THRESHOLD: u32 = 5;
pub const BREAKER_MIN_REQUESTS: u32 = 10;

pub const HEALTH_INTERVAL: ConfigDuration = ConfigDuration::from_secs(60);
pub const HEALTH_TIMEOUT: ConfigDuration = ConfigDuration::from_secs(5);
pub const HEALTH_FAILURE_THRESHOLD: u32 = 2;
pub const HEALTH_SUCCESS_THRESHOLD: u32 = 1;

pub const PROVIDER_TIMEOUT: ConfigDuration = ConfigDuration::from_secs(60);
/// Idle upstream connections are reused this long (Go's and hyper's default).
pub const PROVIDER_POOL_IDLE_TIMEOUT: ConfigDuration = ConfigDuration::from_secs(90);
/// Longer idle connections are mostly ones a middlebox has long dropped.
pub const PROVIDER_POOL_IDLE_TIMEOUT_MAX: ConfigDuration = ConfigDuration::from_secs(3600);
pub const ANTHROPIC_DEFAULT_MAX_TOKENS: u32 = 4096;

pub const ROUTING_MAX_ATTEMPTS: u32 = 3;
pub const ROUTING_REQUEST_TIMEOUT: ConfigDuration = ConfigDuration::from_secs(120);
pub const ROUTING_BACKOFF_INITIAL: ConfigDuration = ConfigDuration::from_millis(25);
pub const ROUTING_BACKOFF_MAX: ConfigDuration = ConfigDuration::from_secs(2);
pub const ROUTING_BACKOFF_MULTIPLIER: f64 = 2.0;
pub const ROUTING_FIRST_TOKEN_TIMEOUT: ConfigDuration = ConfigDuration::from_secs(30);
pub const ROUTING_STREAM_STALL_TIMEOUT: ConfigDuration = ConfigDuration::from_secs(30);
pub const ROUTING_MAX_RETRY_AFTER: ConfigDuration = ConfigDuration::from_secs(5);

pub const LOG_LEVEL: &str = "info";

pub const CACHE_TTL: ConfigDuration = ConfigDuration::from_secs(3600);
pub const CACHE_MAX_ENTRIES: u64 = 10_000;
pub const CACHE_REDIS_TIMEOUT: ConfigDuration = ConfigDuration::from_millis(50);

pub const CLUSTER_ID: &str = "hapax";
pub const CLUSTER_GOSSIP_LISTEN: &str = "0.0.0.0:7946";
pub const CLUSTER_GRPC_LISTEN: &str = "0.0.0.0:7947";
pub const CLUSTER_GOSSIP_INTERVAL: ConfigDuration = ConfigDuration::from_millis(500);
pub const CLUSTER_PHI_THRESHOLD: f64 = 8.0;
pub const CLUSTER_FD_MAX_INTERVAL: ConfigDuration = ConfigDuration::from_secs(10);
pub const CLUSTER_DEAD_NODE_GRACE: ConfigDuration = ConfigDuration::from_secs(3600);
pub const CLUSTER_DEAD_NODE_REMOVAL_AFTER: ConfigDuration = ConfigDuration::from_secs(300);

pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
pub const ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";
pub const OLLAMA_BASE_URL: &str = "http://localhost:11434";

/// The configuration used when no file is given: one node on loopback:8080 whose only
/// provider is the in-process mock, auth off (logged loudly at start).
pub const EMBEDDED_CONFIG: &str = r#"# Hapax embedded default: no keys needed.
server:
  host: 127.0.0.1
  port: 8080
auth:
  enabled: false
providers:
  mock:
    type: mock
    model: mock-1
provider_preference: [mock]
"#;
