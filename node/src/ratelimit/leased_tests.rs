//! The leasing arithmetic against an in-memory ledger with the replicated semantics.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use hapax_config::{RateLimitConfig, RateLimitsConfig};
use parking_lot::Mutex;
use prometheus::{IntCounterVec, Opts};

use super::{AdmissionRequest, LeaseError, LeasedRateLimiter, QuotaLedger, RateLimiter};

#[derive(Default)]
struct FakeLedger {
    leased: Mutex<HashMap<(String, u64), u64>>,
    down: AtomicBool,
    /// Leases of keys containing this never answer (a ledger that stalls).
    stalls: Mutex<Option<&'static str>>,
}

impl QuotaLedger for FakeLedger {
    fn lease<'a>(
        &'a self,
        key: &'a str,
        window: u64,
        limit: u64,
        want: u64,
    ) -> BoxFuture<'a, Result<u64, LeaseError>> {
        async move {
            if self.down.load(Ordering::SeqCst) {
                return Err(LeaseError("no quorum".into()));
            }
            if self.stalls.lock().is_some_and(|part| key.contains(part)) {
                std::future::pending::<()>().await;
            }
            tokio::task::yield_now().await;
            let mut leased = self.leased.lock();
            let used = leased.entry((key.to_owned(), window)).or_insert(0);
            let granted = want.min(limit - *used);
            *used += granted;
            Ok(granted)
        }
        .boxed()
    }

    fn unleased(&self, key: &str, window: u64, limit: u64) -> u64 {
        limit
            - self
                .leased
                .lock()
                .get(&(key.to_owned(), window))
                .copied()
                .unwrap_or(0)
    }

    fn live_nodes(&self) -> usize {
        3
    }
}

fn limiter(ledger: Arc<FakeLedger>, rpm: u64, fail_open: bool) -> LeasedRateLimiter {
    let config = RateLimitsConfig {
        global: Some(RateLimitConfig {
            requests_per_minute: Some(rpm),
            tokens_per_minute: None,
        }),
        ..Default::default()
    };
    let counter = IntCounterVec::new(Opts::new("l", "l"), &["outcome"]).unwrap();
    LeasedRateLimiter::new(&config, &[], ledger, fail_open, counter)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_never_admit_more_than_the_limit_and_strand_little() {
    let ledger = Arc::new(FakeLedger::default());
    let nodes: Vec<Arc<LeasedRateLimiter>> = (0..3)
        .map(|_| Arc::new(limiter(Arc::clone(&ledger), 300, false)))
        .collect();
    let mut tasks = Vec::new();
    for node in &nodes {
        for _ in 0..4 {
            let node = Arc::clone(node);
            tasks.push(tokio::spawn(async move {
                let mut admitted = 0u64;
                for _ in 0..100 {
                    let request = AdmissionRequest {
                        client: "c",
                        endpoint: "/x",
                        estimated_tokens: 1,
                    };
                    if node.admit(&request).await.is_ok() {
                        admitted += 1;
                    }
                }
                admitted
            }));
        }
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    // Each node's demand (400) exceeds the whole limit (300), so no node runs out of requests
    // while holding budget it leased: leases grow up to a third of the limit each, and a node
    // scheduled ahead of the others (60 requests each, as this test had) leased 275, spent
    // 240 and left 35 unspent: 265 in all. Here every leased unit has a request to spend it.
    // (The test cannot straddle a minute boundary often; when it does, two windows may each
    // admit up to 300.)
    assert!(total <= 600, "{total}");
    assert!(
        total >= 300,
        "the whole limit is admitted when every node's demand exceeds it: {total}"
    );
}

#[tokio::test]
async fn without_the_ledger_a_node_admits_only_its_fair_share_when_failing_open() {
    let ledger = Arc::new(FakeLedger::default());
    ledger.down.store(true, Ordering::SeqCst);
    let closed = limiter(Arc::clone(&ledger), 30, false);
    let request = AdmissionRequest {
        client: "c",
        endpoint: "/x",
        estimated_tokens: 1,
    };
    assert!(
        closed.admit(&request).await.is_err(),
        "fail closed by default"
    );
    let open = limiter(ledger, 30, true);
    let mut admitted = 0;
    for _ in 0..20 {
        admitted += u32::from(open.admit(&request).await.is_ok());
    }
    assert_eq!(admitted, 10, "30 per minute over 3 live nodes");
}

#[tokio::test]
async fn an_admission_dropped_while_it_waits_for_a_lease_gives_back_what_it_took() {
    let ledger = Arc::new(FakeLedger::default());
    let config = RateLimitsConfig {
        global: Some(RateLimitConfig {
            requests_per_minute: Some(12),
            tokens_per_minute: None,
        }),
        ..Default::default()
    };
    let key_limit = RateLimitConfig {
        requests_per_minute: Some(1000),
        tokens_per_minute: None,
    };
    let counter = IntCounterVec::new(Opts::new("l", "l"), &["outcome"]).unwrap();
    let keys = [("c".to_owned(), Some(key_limit))];
    let limiter = LeasedRateLimiter::new(&config, &keys, Arc::clone(&ledger) as _, false, counter);
    let request = AdmissionRequest {
        client: "c",
        endpoint: "/x",
        estimated_tokens: 1,
    };
    // The global request is taken, then the key's lease stalls and the client goes away.
    *ledger.stalls.lock() = Some("c");
    let waiting = tokio::time::timeout(
        std::time::Duration::from_millis(50),
        limiter.admit(&request),
    );
    assert!(
        waiting.await.is_err(),
        "admission waits on the stalled lease"
    );
    *ledger.stalls.lock() = None;
    let mut admitted = 0;
    while limiter.admit(&request).await.is_ok() {
        admitted += 1;
        assert!(admitted <= 12, "never more than the limit");
    }
    assert_eq!(
        admitted, 12,
        "the abandoned admission's global request came back"
    );
}
