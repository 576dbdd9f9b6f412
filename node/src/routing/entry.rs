//! A configured provider as routing sees it: its client, deployments, breaker and health.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hapax_config::{ProviderKind, RoutingStrategy};
use prometheus::{Histogram, IntCounter, IntGauge};

use super::breaker::{Breaker, BreakerPermit};
use super::health::ProviderHealth;
use crate::metrics::Metrics;
use crate::providers::{Endpoint, Provider, ProviderError};
use crate::wire::openai::Usage;

/// One endpoint/key of a provider, with the load figures the strategies read.
pub struct Deployment {
    pub endpoint: Endpoint,
    inflight: AtomicU32,
    latency_ewma_us: AtomicU64,
}

impl Deployment {
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            inflight: AtomicU32::new(0),
            latency_ewma_us: AtomicU64::new(0),
        }
    }

    fn enter(&self) -> InflightGuard<'_> {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        InflightGuard(self)
    }

    fn observe(&self, latency: Duration) {
        let sample = (latency.as_micros() as u64).max(1);
        let _ = self
            .latency_ewma_us
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                Some(if old == 0 {
                    sample
                } else {
                    (old * 4 + sample) / 5
                })
            });
    }
}

pub struct InflightGuard<'a>(&'a Deployment);

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Metric handles resolved once, so the hot path does no label look-ups on success.
pub struct ProviderMetrics {
    pub success: IntCounter,
    pub duration: Histogram,
    pub ttft: Histogram,
    pub tokens_in: IntCounter,
    pub tokens_out: IntCounter,
    pub healthy: IntGauge,
}

pub struct ProviderEntry {
    pub name: String,
    /// `name`, shared: what a served answer records (no copy per request).
    pub label: Arc<str>,
    pub kind: ProviderKind,
    pub client: Arc<dyn Provider>,
    /// The model sent upstream unless the client named one this provider serves.
    pub model: Option<String>,
    /// Extra model names this provider answers to.
    pub models: Vec<String>,
    pub deployments: Vec<Deployment>,
    pub breaker: Arc<Breaker>,
    pub health: ProviderHealth,
    pub timeout: Duration,
    pub metrics: ProviderMetrics,
    rr: AtomicUsize,
    /// Milliseconds since `epoch` until which a 429's Retry-After asks us to stay away.
    cooldown_until_ms: AtomicU64,
    epoch: Instant,
}

impl ProviderEntry {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        kind: ProviderKind,
        client: Arc<dyn Provider>,
        model: Option<String>,
        models: Vec<String>,
        endpoints: Vec<Endpoint>,
        breaker: Arc<Breaker>,
        health: ProviderHealth,
        timeout: Duration,
        metrics: &Metrics,
    ) -> Self {
        let n = name.as_str();
        let provider_metrics = ProviderMetrics {
            success: metrics.provider_requests.with_label_values(&[n, "success"]),
            duration: metrics.provider_duration.with_label_values(&[n]),
            ttft: metrics.provider_ttft.with_label_values(&[n]),
            tokens_in: metrics.provider_tokens.with_label_values(&[n, "input"]),
            tokens_out: metrics.provider_tokens.with_label_values(&[n, "output"]),
            healthy: metrics.provider_healthy.with_label_values(&[n]),
        };
        provider_metrics.healthy.set(1);
        Self {
            deployments: endpoints.into_iter().map(Deployment::new).collect(),
            label: Arc::from(n),
            name,
            kind,
            client,
            model,
            models,
            breaker,
            health,
            timeout,
            metrics: provider_metrics,
            rr: AtomicUsize::new(0),
            cooldown_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Whether a client's `model` names this provider or a model it serves.
    pub fn serves(&self, model: &str) -> bool {
        self.name == model
            || self.model.as_deref() == Some(model)
            || self.models.iter().any(|m| m == model)
    }

    /// The model name to send upstream for a client's requested model.
    pub fn upstream_model<'a>(&'a self, requested: Option<&'a str>) -> &'a str {
        match requested {
            Some(m)
                if m != self.name
                    && (self.model.as_deref() == Some(m) || self.models.iter().any(|x| x == m)) =>
            {
                m
            }
            Some(m) if m == self.name => self.model.as_deref().unwrap_or(m),
            other => self.model.as_deref().or(other).unwrap_or(""),
        }
    }

    pub fn cooling_down(&self) -> bool {
        let until = self.cooldown_until_ms.load(Ordering::Acquire);
        until != 0 && (self.epoch.elapsed().as_millis() as u64) < until
    }

    pub fn cool_down(&self, wait: Duration) {
        let until = self.epoch.elapsed().as_millis() as u64 + wait.as_millis() as u64;
        self.cooldown_until_ms.fetch_max(until, Ordering::AcqRel);
    }

    /// Usable for new traffic: breaker admits, health is up, no Retry-After pending.
    pub fn usable(&self) -> bool {
        self.health.is_healthy() && !self.cooling_down() && self.breaker.admits_traffic()
    }

    /// Picks the deployment for this attempt; `retry` > 0 moves past earlier choices.
    pub fn pick(
        &self,
        strategy: RoutingStrategy,
        retry: usize,
    ) -> (&Deployment, InflightGuard<'_>) {
        let n = self.deployments.len().max(1);
        let index = match strategy {
            RoutingStrategy::Preference => retry % n,
            RoutingStrategy::RoundRobin => self.rr.fetch_add(1, Ordering::Relaxed) % n,
            RoutingStrategy::LeastInflight => min_index(
                &self.deployments,
                |d| u64::from(d.inflight.load(Ordering::Acquire)),
                retry,
            ),
            RoutingStrategy::Latency => min_index(
                &self.deployments,
                |d| d.latency_ewma_us.load(Ordering::Acquire),
                retry,
            ),
        };
        let deployment = &self.deployments[index.min(self.deployments.len().saturating_sub(1))];
        (deployment, deployment.enter())
    }

    pub fn record_success(
        &self,
        permit: BreakerPermit,
        deployment: &Deployment,
        latency: Duration,
    ) {
        permit.success();
        deployment.observe(latency);
        self.health.observe_latency(latency);
        self.metrics.success.inc();
        self.metrics.duration.observe(latency.as_secs_f64());
        self.health.record_passive(true, None);
    }

    pub fn record_failure(&self, permit: BreakerPermit, error: &ProviderError, metrics: &Metrics) {
        metrics
            .provider_requests
            .with_label_values(&[self.name.as_str(), error.kind_label()])
            .inc();
        if error.counts_as_provider_failure() {
            permit.failure(error.kind_label());
            self.health.record_passive(false, Some(&error.to_string()));
        } else {
            drop(permit);
        }
        if let Some(wait) = error.retry_after() {
            self.cool_down(wait);
        }
    }

    pub fn record_usage(&self, usage: &Usage) {
        self.metrics.tokens_in.inc_by(usage.prompt_tokens);
        self.metrics.tokens_out.inc_by(usage.completion_tokens);
    }
}

fn min_index(deployments: &[Deployment], key: impl Fn(&Deployment) -> u64, retry: usize) -> usize {
    let n = deployments.len().max(1);
    let best = deployments
        .iter()
        .enumerate()
        .min_by_key(|(_, d)| key(d))
        .map(|(i, _)| i)
        .unwrap_or(0);
    (best + retry) % n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(inflight: u32, latency_us: u64) -> Deployment {
        let d = Deployment::new(Endpoint::new(
            String::new(),
            None,
            None,
            std::time::Duration::from_secs(90),
        ));
        d.inflight.store(inflight, Ordering::Relaxed);
        d.latency_ewma_us.store(latency_us, Ordering::Relaxed);
        d
    }

    #[test]
    fn least_inflight_and_latency_pick_the_lightest_deployment_and_retries_move_on() {
        let ds = vec![deployment(5, 900), deployment(1, 300), deployment(3, 100)];
        let by_inflight = |d: &Deployment| u64::from(d.inflight.load(Ordering::Acquire));
        let by_latency = |d: &Deployment| d.latency_ewma_us.load(Ordering::Acquire);
        assert_eq!(min_index(&ds, by_inflight, 0), 1);
        assert_eq!(min_index(&ds, by_latency, 0), 2);
        assert_eq!(
            min_index(&ds, by_latency, 1),
            0,
            "a retry takes the next deployment"
        );
        let guard = ds[1].enter();
        assert_eq!(ds[1].inflight.load(Ordering::Acquire), 2);
        drop(guard);
        assert_eq!(ds[1].inflight.load(Ordering::Acquire), 1);
    }

    #[test]
    fn deployment_latency_is_an_ewma() {
        let d = deployment(0, 0);
        d.observe(Duration::from_micros(1000));
        d.observe(Duration::from_micros(2000));
        assert_eq!(d.latency_ewma_us.load(Ordering::Acquire), 1200);
    }
}
