//! Routing and failover: ordered candidates from breaker state, health and preference;
//! retryable failures move on to the next candidate with backoff, inside an attempt budget
//! and an overall deadline, and only before the first byte reaches the client.

pub mod breaker;
pub mod checks;
pub mod entry;
pub mod health;
pub mod shared;
mod stream;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures_util::StreamExt;
use hapax_cluster::ClusterView;
use hapax_config::{RoutingConfig, RoutingStrategy};
use rand::Rng;

use self::entry::ProviderEntry;
pub use self::stream::CommittedStream;
use crate::metrics::Metrics;
use crate::providers::{ProviderError, UpstreamCall};
use crate::wire::answer::ChatAnswer;
use crate::wire::openai::ChatRequest;

/// Routing knobs, resolved from config once.
#[derive(Debug, Clone, Copy)]
pub struct RoutingSettings {
    pub strategy: RoutingStrategy,
    pub max_attempts: u32,
    pub request_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub backoff_multiplier: f64,
    pub first_token_timeout: Duration,
    pub stall_timeout: Duration,
}

impl From<&RoutingConfig> for RoutingSettings {
    fn from(c: &RoutingConfig) -> Self {
        Self {
            strategy: c.strategy,
            max_attempts: c.max_attempts.max(1),
            request_timeout: c.request_timeout.get(),
            backoff_initial: c.backoff_initial.get(),
            backoff_max: c.backoff_max.get(),
            backoff_multiplier: c.backoff_multiplier.max(1.0),
            first_token_timeout: c.first_token_timeout.get(),
            stall_timeout: c.stream_stall_timeout.get(),
        }
    }
}

/// A successful dispatch: the value and who served it after how many attempts.
pub struct Served<T> {
    pub value: T,
    pub provider: Arc<ProviderEntry>,
    pub attempts: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(
        "no provider is available for this request (all are down, open-circuited or not allowed)"
    )]
    NoProvider,
    #[error("the request's deadline passed after {attempts} attempt(s)")]
    Deadline { attempts: u32 },
    #[error("provider {provider} failed: {error}")]
    Upstream {
        provider: String,
        error: ProviderError,
        attempts: u32,
    },
}

/// Which providers a caller may use (from its API key).
#[derive(Clone, Copy, Default)]
pub struct RouteScope<'a> {
    pub allowed_providers: Option<&'a [String]>,
}

/// A request's providers in the order they will be tried.
pub type Candidates<'a> = smallvec::SmallVec<[&'a Arc<ProviderEntry>; 4]>;

pub struct Dispatcher {
    providers: Vec<Arc<ProviderEntry>>,
    settings: RoutingSettings,
    metrics: Arc<Metrics>,
    /// The cluster's snapshot, once this node has joined one (read lock-free).
    cluster: OnceLock<Arc<ArcSwap<ClusterView>>>,
    /// Cluster-wide breaker hooks, once consensus runs.
    shared: shared::SharedBreakersSlot,
}

impl Dispatcher {
    /// `providers` must already be in preference order.
    pub fn new(
        providers: Vec<Arc<ProviderEntry>>,
        settings: RoutingSettings,
        metrics: Arc<Metrics>,
        shared: shared::SharedBreakersSlot,
    ) -> Self {
        Self {
            providers,
            settings,
            metrics,
            cluster: OnceLock::new(),
            shared,
        }
    }

    pub fn providers(&self) -> &[Arc<ProviderEntry>] {
        &self.providers
    }

    pub fn settings(&self) -> &RoutingSettings {
        &self.settings
    }

    pub fn find(&self, name: &str) -> Option<&Arc<ProviderEntry>> {
        self.providers.iter().find(|p| p.name == name)
    }

    /// Providers for this request in the order they will be tried: those serving the
    /// requested model (else all), in preference order, minus the unusable and the disallowed.
    /// Borrowed, and inline up to four: no allocation for a request.
    pub fn candidates(&self, model: Option<&str>, scope: RouteScope<'_>) -> Candidates<'_> {
        let allowed = |p: &ProviderEntry| {
            scope
                .allowed_providers
                .is_none_or(|list| list.contains(&p.name))
        };
        let matching =
            model.is_some_and(|m| self.providers.iter().any(|p| p.serves(m) && allowed(p)));
        let mut candidates: Candidates<'_> = self
            .providers
            .iter()
            .filter(|p| {
                allowed(p) && (!matching || model.is_some_and(|m| p.serves(m))) && p.usable()
            })
            .collect();
        if let Some(view) = self.cluster.get().map(|v| v.load())
            && !view.demoted.is_empty()
        {
            // Providers other nodes report down are tried last (stable: preference kept).
            candidates.sort_by_key(|p| view.is_demoted(&p.name));
        }
        candidates
    }

    /// Makes breakers cluster-wide (called once consensus runs).
    pub fn attach_shared_breakers(&self, shared: Arc<dyn shared::SharedBreakers>) {
        let _ = self.shared.set(shared);
    }

    pub fn shared_breakers(&self) -> Option<&Arc<dyn shared::SharedBreakers>> {
        self.shared.get()
    }

    /// Lets routing see what the rest of the cluster reports about providers.
    pub fn attach_cluster(&self, view: Arc<ArcSwap<ClusterView>>) {
        let _ = self.cluster.set(view);
    }

    pub fn cluster_view(&self) -> Option<Arc<ClusterView>> {
        self.cluster.get().map(|v| v.load_full())
    }

    /// A non-streamed completion with failover.
    pub async fn complete(
        &self,
        request: &ChatRequest,
        scope: RouteScope<'_>,
    ) -> Result<Served<ChatAnswer>, DispatchError> {
        let mut attempts = Attempts::new(self, request, scope);
        while let Some((entry, retry, permit, started)) = attempts.next().await? {
            let (deployment, _inflight) = entry.pick(self.settings.strategy, retry);
            let call = UpstreamCall {
                request,
                model: entry.upstream_model(request.model.as_deref()),
                endpoint: &deployment.endpoint,
                want_stream_usage: false,
            };
            let budget = entry.timeout.min(attempts.remaining_at(started));
            let cut_short = attempts.cut_short(budget, entry.timeout);
            // Timed from `started` (`timeout` would read the clock once more).
            let deadline = tokio::time::Instant::from_std(started + budget);
            let result = match tokio::time::timeout_at(deadline, entry.client.chat(call)).await {
                Ok(result) => result,
                Err(_) => Err(ProviderError::Timeout),
            };
            match result {
                Ok(response) => {
                    entry.record_success(permit, deployment, started.elapsed());
                    attempts.settle_probe(true, "");
                    if let Some(usage) = &response.usage {
                        entry.record_usage(usage);
                    }
                    return Ok(Served {
                        value: response,
                        provider: Arc::clone(&entry),
                        attempts: attempts.count,
                    });
                }
                Err(error) => attempts.failed(&entry, permit, error, cut_short, &self.metrics)?,
            }
        }
        Err(attempts.exhausted())
    }

    /// A streamed completion: failover is possible until the first chunk arrives; the
    /// returned stream already holds that chunk.
    pub async fn stream(
        &self,
        request: &ChatRequest,
        scope: RouteScope<'_>,
    ) -> Result<Served<CommittedStream>, DispatchError> {
        let mut attempts = Attempts::new(self, request, scope);
        while let Some((entry, retry, permit, started)) = attempts.next().await? {
            let (deployment, inflight) = entry.pick(self.settings.strategy, retry);
            let call = UpstreamCall {
                request,
                model: entry.upstream_model(request.model.as_deref()),
                endpoint: &deployment.endpoint,
                want_stream_usage: true,
            };
            let budget = entry.timeout.min(attempts.remaining_at(started));
            let first_budget = self
                .settings
                .first_token_timeout
                .min(attempts.remaining_at(started));
            let cut_short = attempts.cut_short(budget, entry.timeout)
                || attempts.cut_short(first_budget, self.settings.first_token_timeout);
            let opened = async {
                let deadline = tokio::time::Instant::from_std(started + budget);
                let mut upstream =
                    match tokio::time::timeout_at(deadline, entry.client.chat_stream(call)).await {
                        Ok(result) => result?,
                        Err(_) => return Err(ProviderError::Timeout),
                    };
                match tokio::time::timeout(first_budget, upstream.next()).await {
                    Ok(Some(Ok(first))) => Ok((first, upstream)),
                    Ok(Some(Err(error))) => Err(error),
                    Ok(None) => Err(ProviderError::StreamBroken(
                        "the stream ended before its first chunk".into(),
                    )),
                    Err(_) => Err(ProviderError::Timeout),
                }
            };
            match opened.await {
                Ok((first, rest)) => {
                    let ttft = started.elapsed();
                    entry.metrics.ttft.observe(ttft.as_secs_f64());
                    entry.metrics.duration.observe(ttft.as_secs_f64());
                    drop(inflight);
                    attempts.settle_probe(true, "");
                    let stream = CommittedStream::new(
                        Arc::clone(&entry),
                        permit,
                        first,
                        rest,
                        self.settings.stall_timeout,
                        Arc::clone(&self.metrics),
                    );
                    return Ok(Served {
                        value: stream,
                        provider: Arc::clone(&entry),
                        attempts: attempts.count,
                    });
                }
                Err(error) => attempts.failed(&entry, permit, error, cut_short, &self.metrics)?,
            }
        }
        Err(attempts.exhausted())
    }
}

/// The attempt plan of one request: cycles through the candidates within the attempt
/// budget and deadline, backing off between attempts.
struct Attempts<'a> {
    dispatcher: &'a Dispatcher,
    candidates: Candidates<'a>,
    deadline: Instant,
    cursor: usize,
    count: u32,
    last: Option<(String, ProviderError)>,
    /// The cluster-wide half-open probe permit this attempt holds (given back if dropped).
    probe: Option<shared::ProbeClaim>,
}

impl<'a> Attempts<'a> {
    fn new(dispatcher: &'a Dispatcher, request: &ChatRequest, scope: RouteScope<'_>) -> Self {
        Self {
            dispatcher,
            candidates: dispatcher.candidates(request.model.as_deref(), scope),
            deadline: Instant::now() + dispatcher.settings.request_timeout,
            cursor: 0,
            count: 0,
            last: None,
            probe: None,
        }
    }

    fn remaining(&self) -> Duration {
        self.remaining_at(Instant::now())
    }

    /// What is left of the request's time at `now` (the caller's clock read).
    fn remaining_at(&self, now: Instant) -> Duration {
        self.deadline.saturating_duration_since(now)
    }

    /// The next provider to try (with how many times it was tried before, its breaker permit,
    /// and the clock reading that found the deadline not yet passed: the attempt's start),
    /// `None` when the plan is exhausted.
    async fn next(
        &mut self,
    ) -> Result<Option<(Arc<ProviderEntry>, usize, breaker::BreakerPermit, Instant)>, DispatchError>
    {
        let settings = &self.dispatcher.settings;
        let n = self.candidates.len();
        let limit = n * settings.max_attempts as usize;
        while self.count < settings.max_attempts && self.cursor < limit {
            let entry = Arc::clone(self.candidates[self.cursor % n]);
            let retry = self.cursor / n;
            self.cursor += 1;
            if entry.cooling_down() || !entry.health.is_healthy() {
                continue;
            }
            let Some(permit) = entry.breaker.try_acquire() else {
                continue;
            };
            self.probe = None;
            if entry.breaker.shared_phase() == breaker::BreakerPhase::HalfOpen
                && let Some(shared) = self.dispatcher.shared.get()
            {
                let Some(generation) = shared.claim_probe(&entry.name).await else {
                    continue;
                };
                self.probe = Some(shared::ProbeClaim::new(
                    entry.name.clone(),
                    generation,
                    Arc::clone(shared),
                ));
            }
            if self.count > 0 {
                let pause = self.backoff().min(self.remaining());
                tokio::time::sleep(pause).await;
                if let Some((from, _)) = &self.last {
                    self.dispatcher
                        .metrics
                        .failovers
                        .with_label_values(&[from, &entry.name])
                        .inc();
                    tracing::warn!(from = %from, to = %entry.name, attempt = self.count + 1, "failing over to the next provider");
                }
            }
            let now = Instant::now();
            if self.remaining_at(now).is_zero() {
                return Err(DispatchError::Deadline {
                    attempts: self.count,
                });
            }
            self.count += 1;
            return Ok(Some((entry, retry, permit, now)));
        }
        Ok(None)
    }

    /// Reports the outcome of a cluster-wide probe this attempt held, if any.
    fn settle_probe(&mut self, success: bool, reason: &str) {
        if let Some(claim) = self.probe.take() {
            claim.settle(success, reason);
        }
    }

    /// Whether an attempt's `budget` for a wait of `wanted` was cut short by the time earlier
    /// attempts spent: less than half of what a fresh request would have given it.
    fn cut_short(&self, budget: Duration, wanted: Duration) -> bool {
        budget < wanted.min(self.dispatcher.settings.request_timeout) / 2
    }

    /// Records a failed attempt; a failure that is the request's own fault ends the plan.
    /// A timeout of an attempt `cut_short` is the request deadline's (earlier attempts spent
    /// the time): the provider is not charged with it, and the request ends (504).
    fn failed(
        &mut self,
        entry: &ProviderEntry,
        permit: breaker::BreakerPermit,
        error: ProviderError,
        cut_short: bool,
        metrics: &Metrics,
    ) -> Result<(), DispatchError> {
        if matches!(error, ProviderError::Timeout) && cut_short {
            drop(permit); // no verdict on the provider, nor on a probe it held
            self.probe = None;
            tracing::warn!(provider = %entry.name, attempt = self.count, "request deadline reached during the attempt: not counted against the provider");
            return Err(DispatchError::Deadline {
                attempts: self.count,
            });
        }
        entry.record_failure(permit, &error, metrics);
        if error.counts_as_provider_failure() {
            self.settle_probe(false, error.kind_label());
        } else {
            self.probe = None; // no verdict: the permit goes back
        }
        tracing::warn!(provider = %entry.name, error = %error, kind = error.kind_label(), attempt = self.count, "upstream attempt failed");
        if !error.is_retryable() {
            return Err(DispatchError::Upstream {
                provider: entry.name.clone(),
                error,
                attempts: self.count,
            });
        }
        self.last = Some((entry.name.clone(), error));
        Ok(())
    }

    fn exhausted(self) -> DispatchError {
        match self.last {
            Some((provider, error)) => DispatchError::Upstream {
                provider,
                error,
                attempts: self.count,
            },
            None if self.count > 0 || self.remaining().is_zero() => DispatchError::Deadline {
                attempts: self.count,
            },
            None => DispatchError::NoProvider,
        }
    }

    /// Exponential backoff with jitter in [d/2, d].
    fn backoff(&self) -> Duration {
        let s = &self.dispatcher.settings;
        let exp = s
            .backoff_multiplier
            .powi(self.count.saturating_sub(1) as i32);
        // In seconds first: a large multiplier to a high power would overflow a Duration.
        let full = (s.backoff_initial.as_secs_f64() * exp).min(s.backoff_max.as_secs_f64());
        let jitter = rand::rng().random_range(0.5..=1.0);
        Duration::try_from_secs_f64(full * jitter).unwrap_or(s.backoff_max)
    }
}
