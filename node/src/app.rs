//! The node's shared state, built once from the configuration.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hapax_config::{Config, HealthCheckConfig, defaults};
use prometheus::IntCounterVec;

use crate::api::exec::ChatServed;
use crate::auth::Authenticator;
use crate::cache::{Cache, CacheBuildError};
use crate::dedup::Deduplicator;
use crate::metrics::Metrics;
use crate::providers::{HttpClient, HttpClientError, build_provider, endpoints_of};
use crate::ratelimit::{LocalRateLimiter, RateLimiter};
use crate::routing::breaker::{Breaker, BreakerPhase, BreakerSettings, TransitionObserver};
use crate::routing::checks::{CheckSchedule, spawn_health_check};
use crate::routing::entry::ProviderEntry;
use crate::routing::health::{HealthSettings, ProviderHealth};
use crate::routing::shared::SharedBreakersSlot;
use crate::routing::{Dispatcher, RoutingSettings};
use crate::server::overload::{ConnectionLimit, InflightLimit};
use crate::wire::openai::{ChatMessage, ChatRequest, Role};

/// Request-size and timing limits of the HTTP front.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub read_timeout: Duration,
}

pub struct App {
    pub metrics: Arc<Metrics>,
    pub dispatcher: Dispatcher,
    pub auth: Authenticator,
    /// This node's own limiter; replaced by the cluster-wide one once consensus runs.
    local_limiter: Arc<dyn RateLimiter>,
    cluster_limiter: std::sync::OnceLock<Arc<dyn RateLimiter>>,
    /// Raft, once this node runs it (for `/v1/health`).
    pub consensus: std::sync::OnceLock<Arc<hapax_cluster::Consensus>>,
    pub dedup: Deduplicator<ChatServed>,
    pub dedup_enabled: bool,
    pub cache: Cache,
    pub limits: Limits,
    /// Load shedding: the cap on client-API requests in flight.
    pub inflight: InflightLimit,
    /// The cap on open TCP connections, handed to the listener.
    pub connections: Arc<ConnectionLimit>,
    pub started: Instant,
    system_prompt: Option<String>,
    health_checks: Vec<(Arc<ProviderEntry>, CheckSchedule)>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("HTTP client: {0}")]
    HttpClient(#[from] HttpClientError),
    #[error("{0}")]
    Cache(#[from] CacheBuildError),
}

/// Logs and counts every breaker transition.
struct BreakerEvents {
    transitions: IntCounterVec,
    /// Where a local trip is proposed cluster-wide, once this node is in a cluster.
    shared: SharedBreakersSlot,
}

impl TransitionObserver for BreakerEvents {
    fn on_transition(&self, provider: &str, from: BreakerPhase, to: BreakerPhase, reason: &str) {
        if to == BreakerPhase::Open
            && let Some(shared) = self.shared.get()
        {
            shared.propose_trip(provider, reason);
        }
        self.on_local_sync(provider, from, to, reason);
    }

    fn on_local_sync(&self, provider: &str, from: BreakerPhase, to: BreakerPhase, reason: &str) {
        self.transitions
            .with_label_values(&[provider, to.as_str()])
            .inc();
        match to {
            BreakerPhase::Open => tracing::warn!(
                provider,
                from = from.as_str(),
                to = to.as_str(),
                reason,
                "circuit breaker opened"
            ),
            _ => tracing::info!(
                provider,
                from = from.as_str(),
                to = to.as_str(),
                reason,
                "circuit breaker transition"
            ),
        }
    }
}

impl App {
    pub fn build(config: &Config) -> Result<Arc<Self>, BuildError> {
        let metrics = Arc::new(Metrics::new()?);
        let http = HttpClient::new()?;
        let breaker_settings = BreakerSettings::from(&config.circuit_breaker);
        let shared_breakers = SharedBreakersSlot::default();
        let observer: Arc<dyn TransitionObserver> = Arc::new(BreakerEvents {
            transitions: metrics.breaker_transitions.clone(),
            shared: Arc::clone(&shared_breakers),
        });
        let legacy_health = config.llm.as_ref().and_then(|l| l.health_check.clone());
        let mut providers = Vec::new();
        let mut health_checks = Vec::new();
        for name in &config.provider_preference {
            let Some(provider) = config.providers.get(name) else {
                continue;
            };
            let check = provider
                .health_check
                .clone()
                .or_else(|| legacy_health.clone())
                .unwrap_or_default();
            let breaker = Breaker::new(
                name,
                breaker_settings,
                metrics.breaker_state.with_label_values(&[name]),
                Arc::clone(&observer),
            );
            let health = ProviderHealth::new(health_settings(&check));
            let entry = Arc::new(ProviderEntry::new(
                name.clone(),
                provider.kind,
                build_provider(provider, &http),
                provider.model.clone(),
                provider.models.clone(),
                endpoints_of(
                    provider,
                    &metrics.upstream_resends.with_label_values(&[name]),
                ),
                breaker,
                health,
                provider
                    .timeout
                    .map(|t| t.get())
                    .unwrap_or(defaults::PROVIDER_TIMEOUT.get()),
                &metrics,
            ));
            if check.enabled {
                health_checks.push((
                    Arc::clone(&entry),
                    CheckSchedule {
                        interval: check.interval.get(),
                        timeout: check.timeout.get(),
                    },
                ));
            }
            providers.push(entry);
        }
        let limiter: Arc<dyn RateLimiter> = Arc::new(LocalRateLimiter::new(
            &config.rate_limits,
            &Authenticator::client_limits(&config.auth),
        ));
        Ok(Arc::new(Self {
            dispatcher: Dispatcher::new(
                providers,
                RoutingSettings::from(&config.routing),
                Arc::clone(&metrics),
                shared_breakers,
            ),
            auth: Authenticator::new(&config.auth),
            local_limiter: limiter,
            cluster_limiter: std::sync::OnceLock::new(),
            consensus: std::sync::OnceLock::new(),
            dedup: Deduplicator::new(metrics.deduplicated.clone()),
            dedup_enabled: config.dedup.enabled,
            cache: Cache::build(config.response_cache(), &metrics)?,
            limits: Limits {
                max_body_bytes: config.server.max_body_bytes,
                read_timeout: config.server.read_timeout.get(),
            },
            inflight: InflightLimit::new(config.max_inflight_requests()),
            connections: Arc::new(ConnectionLimit::new(
                config.server.max_connections,
                metrics.tcp_connections.clone(),
                metrics.tcp_connections_refused.clone(),
            )),
            started: Instant::now(),
            system_prompt: config
                .llm
                .as_ref()
                .and_then(|l| l.system_prompt.clone())
                .filter(|p| !p.is_empty()),
            health_checks,
            metrics,
        }))
    }

    /// The limiter in force: cluster-wide (leases) in a cluster, else local token buckets.
    pub fn limiter(&self) -> &Arc<dyn RateLimiter> {
        self.cluster_limiter.get().unwrap_or(&self.local_limiter)
    }

    /// Switches rate limits to the cluster-wide ledger.
    pub fn use_cluster_limiter(&self, limiter: Arc<dyn RateLimiter>) {
        let _ = self.cluster_limiter.set(limiter);
    }

    /// Starts the background health checks and the memory trimmer; they stop when the handles are aborted.
    pub fn start_background(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks: Vec<_> = self
            .health_checks
            .iter()
            .map(|(entry, schedule)| {
                spawn_health_check(Arc::clone(entry), *schedule, Arc::clone(&self.metrics))
            })
            .collect();
        tasks.push(crate::memory::spawn_trimmer(Arc::clone(&self.metrics)));
        tasks
    }

    /// Hapax's `llm.system_prompt`: added when the request brings no system message.
    pub fn apply_system_prompt(&self, request: &mut ChatRequest) {
        if let Some(prompt) = &self.system_prompt
            && !request
                .messages
                .iter()
                .any(|m| matches!(m.role, Role::System | Role::Developer))
        {
            request
                .messages
                .insert(0, ChatMessage::new(Role::System, prompt.clone()));
            request.source = None;
        }
    }
}

fn health_settings(check: &HealthCheckConfig) -> HealthSettings {
    HealthSettings {
        failure_threshold: check.failure_threshold.max(1),
        success_threshold: check.success_threshold.max(1),
    }
}
