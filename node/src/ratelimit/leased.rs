//! Cluster-wide rate limits by quota leasing (after Doorman): the budget of each limit and
//! window lives in the replicated ledger; this node admits against a local lease and asks
//! for more in one proposal when it runs low, so the cluster never over-admits and the
//! typical request makes no network round trip. Windows are fixed (`floor(t / 60 s)`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Either};
use hapax_config::{RateLimitConfig, RateLimitsConfig};
use parking_lot::Mutex;
use prometheus::IntCounterVec;

use super::{
    Admission, AdmissionRequest, AdmitFuture, RateLimitHeaders, RateLimiter, Rejection,
    Reservation, ReservationTarget,
};

pub const WINDOW: Duration = Duration::from_secs(60);
/// Longest a request waits for a lease when this node's lease is empty.
const LEASE_WAIT: Duration = Duration::from_millis(750);

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LeaseError(pub String);

/// The replicated ledger, as the rate limiter needs it.
pub trait QuotaLedger: Send + Sync {
    /// Asks for `want` units of `key`'s budget in `window`; returns what was granted.
    fn lease<'a>(
        &'a self,
        key: &'a str,
        window: u64,
        limit: u64,
        want: u64,
    ) -> BoxFuture<'a, Result<u64, LeaseError>>;
    /// Budget of `key` in `window` not leased to any node yet (from the local snapshot).
    fn unleased(&self, key: &str, window: u64, limit: u64) -> u64;
    /// Live nodes, to size the first lease of a window.
    fn live_nodes(&self) -> usize;
}

#[derive(Default)]
struct LeaseState {
    window: u64,
    balance: u64,
    chunk: u64,
    /// The ledger had nothing left for this window.
    exhausted: bool,
    /// Admitted on this node's fair share while the ledger was unreachable (`fail_open`).
    fair_share_used: u64,
}

pub struct LeasedBucket {
    key: String,
    limit: u64,
    state: Mutex<LeaseState>,
    /// One lease request at a time per bucket.
    refill: tokio::sync::Mutex<()>,
}

impl LeasedBucket {
    fn new(key: String, limit: u64) -> Arc<Self> {
        Arc::new(Self {
            key,
            limit,
            state: Mutex::new(LeaseState::default()),
            refill: tokio::sync::Mutex::new(()),
        })
    }

    /// Returns `amount` to the lease if the window is still the same.
    pub(super) fn give_back(&self, window: u64, amount: u64) {
        let mut state = self.state.lock();
        if state.window == window {
            state.balance = state.balance.saturating_add(amount);
        }
    }

    /// Charges usage beyond the reservation (never below zero: leases cannot go into debt).
    pub(super) fn charge(&self, window: u64, amount: u64) {
        let mut state = self.state.lock();
        if state.window == window {
            state.balance = state.balance.saturating_sub(amount);
        }
    }
}

#[derive(Clone, Default)]
struct Pair {
    requests: Option<Arc<LeasedBucket>>,
    tokens: Option<Arc<LeasedBucket>>,
}

impl Pair {
    fn new(scope: &str, config: Option<&RateLimitConfig>) -> Self {
        let config = config.copied().unwrap_or_default();
        Self {
            requests: config
                .requests_per_minute
                .map(|l| LeasedBucket::new(format!("{scope}:requests"), l)),
            tokens: config
                .tokens_per_minute
                .map(|l| LeasedBucket::new(format!("{scope}:tokens"), l)),
        }
    }
}

pub struct LeasedRateLimiter {
    ledger: Arc<dyn QuotaLedger>,
    global: Pair,
    endpoints: HashMap<String, Pair>,
    keys: HashMap<String, Pair>,
    fail_open: bool,
    lease_requests: IntCounterVec,
}

fn now_window() -> (u64, Duration) {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let w = now.as_millis() as u64 / WINDOW.as_millis() as u64;
    let next = Duration::from_millis((w + 1) * WINDOW.as_millis() as u64).saturating_sub(now);
    (w, next)
}

impl LeasedRateLimiter {
    pub fn new(
        config: &RateLimitsConfig,
        keys: &[(String, Option<RateLimitConfig>)],
        ledger: Arc<dyn QuotaLedger>,
        fail_open: bool,
        lease_requests: IntCounterVec,
    ) -> Self {
        Self {
            ledger,
            global: Pair::new("global", config.global.as_ref()),
            endpoints: config
                .endpoints
                .iter()
                .map(|(path, l)| {
                    (
                        path.clone(),
                        Pair::new(&format!("endpoint:{path}"), Some(l)),
                    )
                })
                .collect(),
            keys: keys
                .iter()
                .map(|(name, own)| {
                    (
                        name.clone(),
                        Pair::new(
                            &format!("key:{name}"),
                            own.as_ref().or(config.per_key.as_ref()),
                        ),
                    )
                })
                .collect(),
            fail_open,
            lease_requests,
        }
    }

    fn buckets<'a>(
        &'a self,
        request: &AdmissionRequest<'_>,
    ) -> Vec<(&'static str, &'a Arc<LeasedBucket>, u64, bool)> {
        let mut out = Vec::new();
        for (scope, pair) in [
            ("global", Some(&self.global)),
            ("endpoint", self.endpoints.get(request.endpoint)),
            ("key", self.keys.get(request.client)),
        ] {
            let Some(pair) = pair else { continue };
            if let Some(b) = &pair.requests {
                out.push((scope, b, 1, false));
            }
            if let Some(b) = &pair.tokens {
                out.push((scope, b, request.estimated_tokens.clamp(1, b.limit), true));
            }
        }
        out
    }

    /// Takes `amount` from the bucket's lease, leasing more from the ledger when needed.
    async fn take(&self, bucket: &Arc<LeasedBucket>, amount: u64, window: u64) -> bool {
        enum Next {
            Taken { low: bool },
            Exhausted,
            NeedLease,
        }
        for _ in 0..3 {
            let next = {
                let mut state = bucket.state.lock();
                if state.window != window {
                    *state = LeaseState {
                        window,
                        chunk: self.first_chunk(bucket.limit),
                        ..LeaseState::default()
                    };
                }
                if state.balance >= amount {
                    state.balance -= amount;
                    Next::Taken {
                        low: state.balance < state.chunk / 4 && !state.exhausted,
                    }
                } else if state.exhausted {
                    Next::Exhausted
                } else {
                    Next::NeedLease
                }
            };
            match next {
                Next::Taken { low } => {
                    if low {
                        self.prefetch(bucket, window);
                    }
                    return true;
                }
                Next::Exhausted => return false,
                Next::NeedLease => {
                    if !self.lease(bucket, window, amount).await {
                        return self.fair_share(bucket, window, amount);
                    }
                }
            }
        }
        false
    }

    fn first_chunk(&self, limit: u64) -> u64 {
        (limit / (4 * self.ledger.live_nodes().max(1) as u64)).max(1)
    }

    /// One lease request (single-flight per bucket); `false` when the ledger is unreachable.
    async fn lease(&self, bucket: &Arc<LeasedBucket>, window: u64, need: u64) -> bool {
        let _one_at_a_time = bucket.refill.lock().await;
        let want = {
            let state = bucket.state.lock();
            if state.window != window || state.balance >= need || state.exhausted {
                return true;
            }
            state.chunk.max(need - state.balance)
        };
        let result = tokio::time::timeout(
            LEASE_WAIT,
            self.ledger.lease(&bucket.key, window, bucket.limit, want),
        )
        .await;
        match result {
            Ok(Ok(granted)) => {
                self.lease_requests
                    .with_label_values(&[if granted < want { "partial" } else { "granted" }])
                    .inc();
                let mut state = bucket.state.lock();
                if state.window == window {
                    state.balance += granted;
                    state.exhausted = granted < want;
                    state.chunk = (state.chunk * 2)
                        .min((bucket.limit / self.ledger.live_nodes().max(1) as u64).max(1));
                }
                true
            }
            Ok(Err(error)) => {
                self.lease_requests
                    .with_label_values(&["unavailable"])
                    .inc();
                tracing::warn!(key = %bucket.key, %error, "rate-limit lease refused: the cluster ledger is unreachable");
                false
            }
            Err(_) => {
                self.lease_requests.with_label_values(&["timeout"]).inc();
                tracing::warn!(key = %bucket.key, "rate-limit lease timed out");
                false
            }
        }
    }

    /// Without the ledger: admit within this node's fair share only if `fail_open`.
    fn fair_share(&self, bucket: &LeasedBucket, window: u64, amount: u64) -> bool {
        if !self.fail_open {
            return false;
        }
        let share = (bucket.limit / self.ledger.live_nodes().max(1) as u64).max(1);
        let mut state = bucket.state.lock();
        if state.window == window && state.fair_share_used + amount <= share {
            state.fair_share_used += amount;
            return true;
        }
        false
    }

    /// Refills in the background before the lease runs dry.
    fn prefetch(&self, bucket: &Arc<LeasedBucket>, window: u64) {
        if bucket.refill.try_lock().is_err() {
            return;
        }
        let this = PrefetchTask {
            ledger: Arc::clone(&self.ledger),
            bucket: Arc::clone(bucket),
            lease_requests: self.lease_requests.clone(),
        };
        tokio::spawn(this.run(window));
    }

    fn headers(
        &self,
        request: &AdmissionRequest<'_>,
        window: u64,
        reset: Duration,
    ) -> Option<RateLimitHeaders> {
        let remaining = |b: &Arc<LeasedBucket>| {
            let local = { b.state.lock().balance };
            local + self.ledger.unleased(&b.key, window, b.limit)
        };
        let buckets = self.buckets(request);
        let tightest = |tokens: bool| {
            buckets
                .iter()
                .filter(|(_, _, _, t)| *t == tokens)
                .map(|(_, b, _, _)| (b.limit, remaining(b)))
                .min_by_key(|(_, r)| *r)
        };
        let requests = tightest(false);
        let tokens = tightest(true);
        let (limit, remaining) = requests.or(tokens)?;
        Some(RateLimitHeaders {
            limit,
            remaining,
            reset_secs: reset.as_secs_f64().ceil() as u64,
            token_limit: tokens.map(|t| t.0),
            token_remaining: tokens.map(|t| t.1),
        })
    }
}

struct PrefetchTask {
    ledger: Arc<dyn QuotaLedger>,
    bucket: Arc<LeasedBucket>,
    lease_requests: IntCounterVec,
}

impl PrefetchTask {
    async fn run(self, window: u64) {
        let _one_at_a_time = self.bucket.refill.lock().await;
        let want = {
            let state = self.bucket.state.lock();
            if state.window != window || state.exhausted || state.balance >= state.chunk / 4 {
                return;
            }
            state.chunk
        };
        if let Ok(Ok(granted)) = tokio::time::timeout(
            LEASE_WAIT,
            self.ledger
                .lease(&self.bucket.key, window, self.bucket.limit, want),
        )
        .await
        {
            self.lease_requests.with_label_values(&["prefetched"]).inc();
            let mut state = self.bucket.state.lock();
            if state.window == window {
                state.balance += granted;
                state.exhausted = granted < want;
            }
        }
    }
}

/// Reservations of an admission not decided yet: refunded when dropped.
struct Undecided(Vec<Reservation>);

impl Drop for Undecided {
    fn drop(&mut self) {
        for r in &self.0 {
            r.refund(r.amount);
        }
    }
}

impl RateLimiter for LeasedRateLimiter {
    fn admit<'a>(&'a self, request: &'a AdmissionRequest<'a>) -> AdmitFuture<'a> {
        let waiting = async move {
            let (window, reset) = now_window();
            // Given back if admission stops short: refused, or dropped while it waits for a
            // lease (its client gone).
            let mut taken = Undecided(Vec::new());
            for (scope, bucket, amount, is_tokens) in self.buckets(request) {
                if self.take(bucket, amount, window).await {
                    taken.0.push(Reservation {
                        target: ReservationTarget::Leased(Arc::clone(bucket), window),
                        amount: amount as f64,
                        is_tokens,
                    });
                    continue;
                }
                drop(taken);
                let unit = if is_tokens { "tokens" } else { "requests" };
                return Err(Rejection {
                    retry_after: reset.max(Duration::from_secs(1)),
                    scope,
                    unit,
                    headers: self.headers(request, window, reset),
                });
            }
            Ok(Admission {
                reservations: std::mem::take(&mut taken.0),
                headers: self.headers(request, window, reset),
            })
        };
        Either::Right(waiting.boxed())
    }

    fn settle(&self, admission: Admission, actual_tokens: Option<u64>) {
        super::settle_reservations(admission, actual_tokens);
    }
}
