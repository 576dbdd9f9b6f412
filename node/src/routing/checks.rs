//! Active health checks: one task per provider, on its own interval, spending no tokens.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::entry::ProviderEntry;
use super::health::HealthChange;
use crate::metrics::Metrics;
use crate::providers::ProviderError;

#[derive(Debug, Clone, Copy)]
pub struct CheckSchedule {
    pub interval: Duration,
    pub timeout: Duration,
}

/// Runs checks for `entry` until the returned handle is aborted; the first check runs at once.
pub fn spawn_health_check(
    entry: Arc<ProviderEntry>,
    schedule: CheckSchedule,
    metrics: Arc<Metrics>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(schedule.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let duration = metrics
            .health_check_duration
            .with_label_values(&[&entry.name]);
        loop {
            ticker.tick().await;
            let started = Instant::now();
            let mut result = Ok(());
            for deployment in &entry.deployments {
                let outcome = tokio::time::timeout(
                    schedule.timeout,
                    entry.client.health_check(&deployment.endpoint),
                )
                .await;
                result = outcome.unwrap_or(Err(ProviderError::Timeout));
                if result.is_ok() {
                    break;
                }
            }
            let elapsed = started.elapsed();
            duration.observe(elapsed.as_secs_f64());
            let error = result.as_ref().err().map(ToString::to_string);
            match entry.health.record(result.is_ok(), error.as_deref()) {
                HealthChange::WentDown => {
                    entry.metrics.healthy.set(0);
                    tracing::warn!(provider = %entry.name, error = error.as_deref().unwrap_or(""), "health check failed: provider marked down");
                }
                HealthChange::CameUp => {
                    entry.metrics.healthy.set(1);
                    tracing::info!(provider = %entry.name, "health check passed: provider marked up");
                }
                HealthChange::None => {
                    tracing::debug!(provider = %entry.name, ok = result.is_ok(), elapsed_ms = elapsed.as_millis() as u64, "health check")
                }
            }
        }
    })
}
