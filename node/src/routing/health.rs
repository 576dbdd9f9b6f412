//! Provider health: active checks that spend no tokens mark a provider up or down; live
//! traffic is the passive side (its failures feed the circuit breaker, which ejects the
//! provider like an outlier detector) and is kept here as a recent error rate and latency.
//! Health feeds routing: a provider marked down gets no new traffic.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde::Serialize;

#[derive(Debug, Clone, Copy)]
pub struct HealthSettings {
    pub failure_threshold: u32,
    pub success_threshold: u32,
}

#[derive(Default)]
struct Counters {
    consecutive_failures: u32,
    consecutive_successes: u32,
    last_check_unix: Option<u64>,
    last_error: Option<String>,
    /// EWMA of live-traffic failures (alpha 0.1): 0 = all good, 1 = all failing.
    error_rate: f64,
}

/// One provider's health as this node sees it.
pub struct ProviderHealth {
    healthy: AtomicBool,
    settings: HealthSettings,
    counters: Mutex<Counters>,
    /// Latency EWMA in microseconds (0 = no sample yet).
    latency_ewma_us: AtomicU64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HealthSnapshot {
    pub healthy: bool,
    pub consecutive_failures: u32,
    pub last_check_unix: Option<u64>,
    pub last_error: Option<String>,
    pub latency_ewma_ms: Option<f64>,
    pub recent_error_rate: f64,
}

/// What a health change was, so the caller can log and export it.
#[derive(Debug, PartialEq, Eq)]
pub enum HealthChange {
    None,
    WentDown,
    CameUp,
}

impl ProviderHealth {
    pub fn new(settings: HealthSettings) -> Self {
        Self {
            healthy: AtomicBool::new(true),
            settings,
            counters: Mutex::new(Counters::default()),
            latency_ewma_us: AtomicU64::new(0),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Records a live request's outcome: error rate and last error, not the up/down mark.
    pub fn record_passive(&self, ok: bool, error: Option<&str>) {
        let mut c = self.counters.lock();
        c.error_rate = c.error_rate * 0.9 + if ok { 0.0 } else { 0.1 };
        if !ok {
            c.last_error = error.map(|e| e.chars().take(200).collect());
        }
    }

    /// Records an active check's outcome; thresholds decide the up/down mark.
    pub fn record(&self, ok: bool, error: Option<&str>) -> HealthChange {
        let mut c = self.counters.lock();
        c.last_check_unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs());
        if ok {
            c.consecutive_failures = 0;
            c.consecutive_successes = c.consecutive_successes.saturating_add(1);
            if !self.is_healthy() && c.consecutive_successes >= self.settings.success_threshold {
                c.last_error = None;
                self.healthy.store(true, Ordering::Release);
                return HealthChange::CameUp;
            }
        } else {
            c.consecutive_successes = 0;
            c.consecutive_failures = c.consecutive_failures.saturating_add(1);
            c.last_error = error.map(|e| e.chars().take(200).collect());
            if self.is_healthy() && c.consecutive_failures >= self.settings.failure_threshold {
                self.healthy.store(false, Ordering::Release);
                return HealthChange::WentDown;
            }
        }
        HealthChange::None
    }

    /// Folds one latency sample into the EWMA (alpha = 0.2).
    pub fn observe_latency(&self, latency: Duration) {
        let sample = latency.as_micros().min(u128::from(u64::MAX / 2)) as u64;
        let _ = self
            .latency_ewma_us
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                Some(if old == 0 {
                    sample.max(1)
                } else {
                    (old * 4 + sample) / 5
                })
            });
    }

    pub fn latency_ewma_us(&self) -> u64 {
        self.latency_ewma_us.load(Ordering::Acquire)
    }

    pub fn snapshot(&self) -> HealthSnapshot {
        let c = self.counters.lock();
        let ewma = self.latency_ewma_us();
        HealthSnapshot {
            healthy: self.is_healthy(),
            consecutive_failures: c.consecutive_failures,
            last_check_unix: c.last_check_unix,
            last_error: c.last_error.clone(),
            latency_ewma_ms: (ewma > 0).then(|| ewma as f64 / 1000.0),
            recent_error_rate: (c.error_rate * 1000.0).round() / 1000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goes_down_after_failure_threshold_and_up_after_success_threshold() {
        let h = ProviderHealth::new(HealthSettings {
            failure_threshold: 2,
            success_threshold: 2,
        });
        assert_eq!(h.record(false, Some("x")), HealthChange::None);
        assert_eq!(h.record(false, Some("x")), HealthChange::WentDown);
        assert!(!h.is_healthy());
        h.record_passive(true, None);
        assert!(!h.is_healthy(), "live traffic does not flip the mark");
        assert_eq!(h.record(true, None), HealthChange::None);
        assert_eq!(h.record(true, None), HealthChange::CameUp);
        assert!(h.is_healthy());
    }
}
