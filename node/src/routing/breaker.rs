//! A three-state circuit breaker per provider, with Hapax's semantics: `failure_threshold`
//! consecutive failures (or, optionally, a failure ratio within `interval`) trip it; it stays
//! open for `timeout`; then up to `max_requests` probes run half-open; a probe's success
//! closes it and a failure opens it again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant, SystemTime};

use hapax_config::CircuitBreakerConfig;
use parking_lot::Mutex;
use prometheus::IntGauge;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerPhase {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

impl BreakerPhase {
    fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::HalfOpen,
            2 => Self::Open,
            _ => Self::Closed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::HalfOpen => "half_open",
            Self::Open => "open",
        }
    }
}

/// What the breaker needs to know from config, resolved once.
#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    pub failure_threshold: u32,
    pub failure_ratio: Option<f64>,
    pub min_requests: u32,
    pub interval: Duration,
    pub open_timeout: Duration,
    pub max_probes: u32,
}

impl From<&CircuitBreakerConfig> for BreakerSettings {
    fn from(c: &CircuitBreakerConfig) -> Self {
        Self {
            failure_threshold: c.failure_threshold.max(1),
            failure_ratio: c.failure_ratio,
            min_requests: c.min_requests,
            interval: c.interval.get(),
            open_timeout: c.timeout.get(),
            max_probes: c.max_requests.max(1),
        }
    }
}

struct Inner {
    phase: BreakerPhase,
    consecutive_failures: u32,
    window_start: Instant,
    window_requests: u32,
    window_failures: u32,
    probes_in_flight: u32,
    open_until: Option<Instant>,
    opened_at: Option<SystemTime>,
    forced: bool,
    reason: String,
}

/// Observers of transitions (metrics, logs); called outside the lock.
pub trait TransitionObserver: Send + Sync {
    /// A transition this node decided (failures, probes, timeouts, admin).
    fn on_transition(&self, provider: &str, from: BreakerPhase, to: BreakerPhase, reason: &str);

    /// A transition that follows the cluster's decision (must not be proposed back).
    fn on_local_sync(&self, provider: &str, from: BreakerPhase, to: BreakerPhase, reason: &str) {
        self.on_transition(provider, from, to, reason);
    }
}

pub struct Breaker {
    provider: String,
    settings: BreakerSettings,
    phase: AtomicU8,
    /// The cluster-wide (Raft-replicated) phase; `Closed` on a single node.
    shared: AtomicU8,
    inner: Mutex<Inner>,
    gauge: IntGauge,
    observer: Arc<dyn TransitionObserver>,
}

/// Permission to send one request; a probe permit returns its slot when dropped unused.
pub struct BreakerPermit {
    breaker: Arc<Breaker>,
    probe: bool,
    settled: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct BreakerSnapshot {
    /// What routing acts on: the stricter of `local_state` and `cluster_state`.
    pub state: BreakerPhase,
    pub local_state: BreakerPhase,
    pub cluster_state: BreakerPhase,
    pub consecutive_failures: u32,
    pub forced: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_for_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opened_at_unix: Option<u64>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

type Transition = (BreakerPhase, BreakerPhase, String);

impl Breaker {
    pub fn new(
        provider: &str,
        settings: BreakerSettings,
        gauge: IntGauge,
        observer: Arc<dyn TransitionObserver>,
    ) -> Arc<Self> {
        gauge.set(0);
        Arc::new(Self {
            provider: provider.to_owned(),
            settings,
            phase: AtomicU8::new(BreakerPhase::Closed as u8),
            shared: AtomicU8::new(BreakerPhase::Closed as u8),
            inner: Mutex::new(Inner {
                phase: BreakerPhase::Closed,
                consecutive_failures: 0,
                window_start: Instant::now(),
                window_requests: 0,
                window_failures: 0,
                probes_in_flight: 0,
                open_until: None,
                opened_at: None,
                forced: false,
                reason: String::new(),
            }),
            gauge,
            observer,
        })
    }

    /// The current phase, moving an expired open breaker to half-open first.
    pub fn phase(&self) -> BreakerPhase {
        let phase = BreakerPhase::from_u8(self.phase.load(Ordering::Acquire));
        if phase != BreakerPhase::Open {
            return phase;
        }
        let transition = {
            let mut inner = self.inner.lock();
            self.expire_open(&mut inner, Instant::now())
        };
        self.notify(transition);
        BreakerPhase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// Whether new traffic may go to this provider right now (without taking a permit).
    pub fn admits_traffic(&self) -> bool {
        if self.shared_phase() == BreakerPhase::Open {
            return false;
        }
        match self.phase() {
            BreakerPhase::Closed => true,
            BreakerPhase::Open => false,
            BreakerPhase::HalfOpen => self.inner.lock().probes_in_flight < self.settings.max_probes,
        }
    }

    pub fn try_acquire(self: &Arc<Self>) -> Option<BreakerPermit> {
        // Closed, the usual phase: a permit as the lock would give it, without the lock and
        // the clock (a phase changed just after this load is one changed just after a lock).
        if BreakerPhase::from_u8(self.phase.load(Ordering::Acquire)) == BreakerPhase::Closed {
            return Some(BreakerPermit {
                breaker: Arc::clone(self),
                probe: false,
                settled: false,
            });
        }
        let now = Instant::now();
        let (permit, transition) = {
            let mut inner = self.inner.lock();
            let transition = self.expire_open(&mut inner, now);
            let permit = match inner.phase {
                BreakerPhase::Closed => Some(false),
                BreakerPhase::Open => None,
                BreakerPhase::HalfOpen if inner.probes_in_flight < self.settings.max_probes => {
                    inner.probes_in_flight += 1;
                    Some(true)
                }
                BreakerPhase::HalfOpen => None,
            };
            (permit, transition)
        };
        self.notify(transition);
        permit.map(|probe| BreakerPermit {
            breaker: Arc::clone(self),
            probe,
            settled: false,
        })
    }

    /// Admin override: force open (until forced closed) or closed.
    pub fn force(&self, open: bool) {
        let transition = {
            let mut inner = self.inner.lock();
            inner.forced = open;
            if open {
                self.open(&mut inner, None, "forced open by an admin".to_owned())
            } else {
                self.close(&mut inner, "forced closed by an admin")
            }
        };
        self.notify(transition);
    }

    pub fn snapshot(&self) -> BreakerSnapshot {
        let state = self.phase();
        let effective = self.effective_phase();
        let cluster_state = self.shared_phase();
        let inner = self.inner.lock();
        let now = Instant::now();
        BreakerSnapshot {
            local_state: state,
            cluster_state,
            state: effective,
            consecutive_failures: inner.consecutive_failures,
            forced: inner.forced,
            open_for_ms: inner
                .open_until
                .filter(|_| state == BreakerPhase::Open)
                .map(|u| u.saturating_duration_since(now).as_millis() as u64),
            opened_at_unix: inner
                .opened_at
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
            reason: inner.reason.clone(),
        }
    }

    fn record(&self, probe: bool, success: bool, reason: &str) {
        let now = Instant::now();
        let transition = {
            let mut inner = self.inner.lock();
            if probe {
                inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
            }
            if now.duration_since(inner.window_start) >= self.settings.interval {
                inner.window_start = now;
                inner.window_requests = 0;
                inner.window_failures = 0;
            }
            inner.window_requests += 1;
            if success {
                inner.consecutive_failures = 0;
                match inner.phase {
                    BreakerPhase::HalfOpen if !inner.forced => {
                        self.close(&mut inner, "probe succeeded")
                    }
                    _ => None,
                }
            } else {
                inner.consecutive_failures += 1;
                inner.window_failures += 1;
                match inner.phase {
                    BreakerPhase::HalfOpen => self.open(
                        &mut inner,
                        Some(now + self.settings.open_timeout),
                        format!("probe failed: {reason}"),
                    ),
                    BreakerPhase::Closed if self.should_trip(&inner) => {
                        let why = format!(
                            "{} consecutive failures, last: {reason}",
                            inner.consecutive_failures
                        );
                        self.open(&mut inner, Some(now + self.settings.open_timeout), why)
                    }
                    _ => None,
                }
            }
        };
        self.notify(transition);
    }

    fn should_trip(&self, inner: &Inner) -> bool {
        if inner.consecutive_failures >= self.settings.failure_threshold {
            return true;
        }
        match self.settings.failure_ratio {
            Some(ratio) if inner.window_requests >= self.settings.min_requests.max(1) => {
                f64::from(inner.window_failures) / f64::from(inner.window_requests) >= ratio
            }
            _ => false,
        }
    }

    fn expire_open(&self, inner: &mut Inner, now: Instant) -> Option<Transition> {
        match inner.open_until {
            Some(until) if inner.phase == BreakerPhase::Open && !inner.forced && now >= until => {
                inner.probes_in_flight = 0;
                self.set(
                    inner,
                    BreakerPhase::HalfOpen,
                    "open timeout elapsed".to_owned(),
                )
            }
            _ => None,
        }
    }

    fn open(
        &self,
        inner: &mut Inner,
        until: Option<Instant>,
        reason: String,
    ) -> Option<Transition> {
        inner.open_until = until;
        inner.opened_at = Some(SystemTime::now());
        self.set(inner, BreakerPhase::Open, reason)
    }

    fn close(&self, inner: &mut Inner, reason: &str) -> Option<Transition> {
        inner.consecutive_failures = 0;
        inner.window_requests = 0;
        inner.window_failures = 0;
        inner.window_start = Instant::now();
        inner.open_until = None;
        self.set(inner, BreakerPhase::Closed, reason.to_owned())
    }

    fn set(&self, inner: &mut Inner, to: BreakerPhase, reason: String) -> Option<Transition> {
        let from = inner.phase;
        inner.reason = reason.clone();
        if from == to {
            return None;
        }
        inner.phase = to;
        self.phase.store(to as u8, Ordering::Release);
        self.gauge
            .set((to as i64).max(i64::from(self.shared.load(Ordering::Acquire))));
        Some((from, to, reason))
    }

    /// The cluster-wide phase last applied from the replicated log.
    pub fn shared_phase(&self) -> BreakerPhase {
        BreakerPhase::from_u8(self.shared.load(Ordering::Acquire))
    }

    /// The phase this node acts on and exports: the stricter of its own and the cluster's.
    pub fn effective_phase(&self) -> BreakerPhase {
        let local = self.phase();
        let shared = self.shared_phase();
        if (shared as u8) > (local as u8) {
            shared
        } else {
            local
        }
    }

    /// Applies the replicated phase; a cluster-wide close also resets this node's breaker.
    pub fn set_shared(&self, to: BreakerPhase, reason: &str) {
        let from = BreakerPhase::from_u8(self.shared.swap(to as u8, Ordering::AcqRel));
        if from == to {
            return;
        }
        tracing::info!(provider = %self.provider, from = from.as_str(), to = to.as_str(), reason, "cluster circuit breaker changed");
        let transition = if to == BreakerPhase::Closed {
            let mut inner = self.inner.lock();
            if inner.forced {
                None
            } else {
                self.close(&mut inner, "closed cluster-wide")
            }
        } else {
            None
        };
        self.notify_local_only(transition);
        let local = self.phase.load(Ordering::Acquire);
        self.gauge.set(i64::from(local.max(to as u8)));
    }

    fn notify_local_only(&self, transition: Option<Transition>) {
        if let Some((from, to, reason)) = transition {
            self.observer
                .on_local_sync(&self.provider, from, to, &reason);
        }
    }

    fn notify(&self, transition: Option<Transition>) {
        if let Some((from, to, reason)) = transition {
            self.observer
                .on_transition(&self.provider, from, to, &reason);
        }
    }
}

impl BreakerPermit {
    pub fn success(mut self) {
        self.settled = true;
        self.breaker.record(self.probe, true, "");
    }

    pub fn failure(mut self, reason: &str) {
        self.settled = true;
        self.breaker.record(self.probe, false, reason);
    }
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        if !self.settled && self.probe {
            let mut inner = self.breaker.inner.lock();
            inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "breaker_tests.rs"]
mod tests;
