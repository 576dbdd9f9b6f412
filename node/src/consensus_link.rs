//! The node's side of consensus: breakers and rate limits become cluster-wide. Routing keeps
//! reading lock-free snapshots; only rare events (a trip, a half-open probe, a lease refill,
//! an admin override) make a proposal, and none of them blocks a request for long.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use hapax_cluster::{
    BreakerStatus, ClusterCommand, ClusterView, CommandOutcome, Consensus, ReplicatedState,
};
use hapax_config::Config;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts};

use crate::app::App;
use crate::auth::Authenticator;
use crate::ratelimit::{LeaseError, LeasedRateLimiter, QuotaLedger};
use crate::routing::breaker::BreakerPhase;
use crate::routing::shared::SharedBreakers;

/// Bound on a proposal made for a breaker event (off the request path, except probes).
const BREAKER_PROPOSAL: Duration = Duration::from_secs(2);
/// Bound on a probe claim, which a request waits for.
const PROBE_CLAIM: Duration = Duration::from_millis(500);
const LEASE_PROPOSAL: Duration = Duration::from_millis(700);
/// How often the applied state is compared with what routing last saw.
const SYNC_EVERY: Duration = Duration::from_millis(20);

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn phase_of(status: &BreakerStatus) -> BreakerPhase {
    match status {
        BreakerStatus::Closed => BreakerPhase::Closed,
        BreakerStatus::Open { .. } => BreakerPhase::Open,
        BreakerStatus::HalfOpen { .. } => BreakerPhase::HalfOpen,
    }
}

pub struct ConsensusLink {
    consensus: Arc<Consensus>,
    sync: tokio::task::JoinHandle<()>,
}

impl ConsensusLink {
    /// Wires a running `Consensus` into routing and rate limiting.
    pub fn attach(
        app: &Arc<App>,
        config: &Config,
        consensus: Consensus,
        node_id: &str,
        gossip: Arc<ArcSwap<ClusterView>>,
    ) -> Result<Self, prometheus::Error> {
        let consensus = Arc::new(consensus);
        let registry = app.metrics.registry();
        let proposals = IntCounterVec::new(
            Opts::new(
                "hapax_cluster_breaker_proposals_total",
                "Breaker proposals made by this node, by kind and outcome",
            ),
            &["kind", "outcome"],
        )?;
        let leases = IntCounterVec::new(
            Opts::new(
                "hapax_rate_limit_lease_requests_total",
                "Rate-limit lease requests to the cluster ledger, by outcome",
            ),
            &["outcome"],
        )?;
        let propagation = Histogram::with_opts(
            HistogramOpts::new(
                "hapax_cluster_propagation_seconds",
                "Delay from a breaker proposal to its apply on this node",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )?;
        registry.register(Box::new(proposals.clone()))?;
        registry.register(Box::new(leases.clone()))?;
        registry.register(Box::new(propagation.clone()))?;
        let breakers = RaftBreakers {
            consensus: Arc::clone(&consensus),
            node: node_id.to_owned(),
            open_for: config.circuit_breaker.timeout.get(),
            max_probes: config.circuit_breaker.max_requests.max(1),
            proposals,
        };
        app.dispatcher
            .attach_shared_breakers(Arc::new(Arc::new(breakers)));
        let ledger = Arc::new(RaftLedger {
            consensus: Arc::clone(&consensus),
            node: node_id.to_owned(),
            gossip,
        });
        let keys = Authenticator::client_limits(&config.auth);
        let limiter = LeasedRateLimiter::new(
            &config.rate_limits,
            &keys,
            ledger,
            config.rate_limits.fail_open,
            leases,
        );
        app.use_cluster_limiter(Arc::new(limiter));
        let _ = app.consensus.set(Arc::clone(&consensus));
        let sync = tokio::spawn(sync_breakers(
            Arc::clone(app),
            consensus.state(),
            propagation,
        ));
        Ok(Self { consensus, sync })
    }

    pub fn consensus(&self) -> &Consensus {
        &self.consensus
    }

    pub async fn shutdown(self) {
        self.sync.abort();
        let _ = self.sync.await;
        match Arc::try_unwrap(self.consensus) {
            Ok(consensus) => consensus.shutdown().await,
            Err(_) => tracing::warn!("consensus still referenced at shutdown"),
        }
    }
}

/// Follows the applied state: each provider's cluster-wide phase reaches its breaker.
async fn sync_breakers(
    app: Arc<App>,
    state: Arc<ArcSwap<ReplicatedState>>,
    propagation: Histogram,
) {
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut last: Option<Arc<ReplicatedState>> = None;
    let mut ticker = tokio::time::interval(SYNC_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let current = state.load_full();
        if last.as_ref().is_some_and(|l| Arc::ptr_eq(l, &current)) {
            continue;
        }
        for entry in app.dispatcher.providers() {
            let Some(replicated) = current.breakers.get(&entry.name) else {
                continue;
            };
            if seen.insert(entry.name.clone(), replicated.generation) != Some(replicated.generation)
            {
                let reason = match &replicated.status {
                    BreakerStatus::Open {
                        reason, tripped_by, ..
                    } => format!("{reason} (tripped by {tripped_by})"),
                    _ => format!("changed by {}", replicated.changed_by),
                };
                entry
                    .breaker
                    .set_shared(phase_of(&replicated.status), &reason);
                if replicated.changed_at_unix_ms > 0 {
                    propagation.observe(
                        unix_ms().saturating_sub(replicated.changed_at_unix_ms) as f64 / 1000.0,
                    );
                }
            }
        }
        last = Some(current);
    }
}

struct RaftBreakers {
    consensus: Arc<Consensus>,
    node: String,
    open_for: Duration,
    max_probes: u32,
    proposals: IntCounterVec,
}

impl RaftBreakers {
    fn generation(&self, provider: &str) -> (u64, BreakerStatus) {
        let state = self.consensus.state().load();
        let breaker = state.breaker(provider);
        (breaker.generation, breaker.status)
    }

    async fn propose(
        &self,
        kind: &'static str,
        command: ClusterCommand,
        timeout: Duration,
    ) -> Option<CommandOutcome> {
        let provider = command.to_string();
        match self.consensus.propose(command, timeout).await {
            Ok(outcome) => {
                self.proposals
                    .with_label_values(&[kind, outcome.label()])
                    .inc();
                tracing::info!(kind, command = %provider, outcome = outcome.label(), "cluster breaker proposal");
                Some(outcome)
            }
            Err(error) => {
                self.proposals.with_label_values(&[kind, "failed"]).inc();
                tracing::warn!(kind, command = %provider, %error, "cluster breaker proposal failed; this node keeps its local breaker");
                None
            }
        }
    }

    fn spawn(self: &Arc<Self>, kind: &'static str, command: ClusterCommand) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            this.propose(kind, command, BREAKER_PROPOSAL).await;
        });
    }
}

impl SharedBreakers for Arc<RaftBreakers> {
    fn propose_trip(&self, provider: &str, reason: &str) {
        let (generation, status) = self.generation(provider);
        if matches!(status, BreakerStatus::Open { .. }) {
            return;
        }
        let command = ClusterCommand::TripBreaker {
            provider: provider.to_owned(),
            expected_generation: generation,
            reason: reason.to_owned(),
            node: self.node.clone(),
            now_unix_ms: unix_ms(),
            open_for_ms: self.open_for.as_millis() as u64,
        };
        self.spawn("trip", command);
    }

    fn claim_probe<'a>(&'a self, provider: &'a str) -> BoxFuture<'a, Option<u64>> {
        async move {
            let (generation, _) = self.generation(provider);
            let command = ClusterCommand::ClaimProbe {
                provider: provider.to_owned(),
                expected_generation: generation,
                node: self.node.clone(),
                max_probes: self.max_probes,
            };
            let granted = matches!(
                self.propose("probe", command, PROBE_CLAIM).await,
                Some(CommandOutcome::ProbeGranted(true))
            );
            granted.then_some(generation)
        }
        .boxed()
    }

    fn probe_finished(&self, provider: &str, success: bool, reason: &str) {
        let (generation, _) = self.generation(provider);
        let command = if success {
            ClusterCommand::CloseBreaker {
                provider: provider.to_owned(),
                expected_generation: generation,
                node: self.node.clone(),
                now_unix_ms: unix_ms(),
            }
        } else {
            ClusterCommand::TripBreaker {
                provider: provider.to_owned(),
                expected_generation: generation,
                reason: format!("probe failed: {reason}"),
                node: self.node.clone(),
                now_unix_ms: unix_ms(),
                open_for_ms: self.open_for.as_millis() as u64,
            }
        };
        self.spawn(if success { "close" } else { "trip" }, command);
    }

    fn probe_released(&self, provider: &str, generation: u64) {
        let command = ClusterCommand::ReleaseProbe {
            provider: provider.to_owned(),
            expected_generation: generation,
            node: self.node.clone(),
        };
        // Called from a drop, which may run where no runtime is (a process shutting down).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let this = Arc::clone(self);
            runtime.spawn(async move {
                this.propose("release_probe", command, BREAKER_PROPOSAL)
                    .await;
            });
        }
    }

    fn force<'a>(&'a self, provider: &'a str, open: bool) -> BoxFuture<'a, Result<(), String>> {
        async move {
            let command = ClusterCommand::ForceBreaker {
                provider: provider.to_owned(),
                open,
                node: self.node.clone(),
                now_unix_ms: unix_ms(),
            };
            match self.propose("force", command, BREAKER_PROPOSAL).await {
                Some(_) => Ok(()),
                None => Err(
                    "the cluster did not accept the change (no Raft majority reachable)".to_owned(),
                ),
            }
        }
        .boxed()
    }
}

struct RaftLedger {
    consensus: Arc<Consensus>,
    node: String,
    gossip: Arc<ArcSwap<ClusterView>>,
}

impl QuotaLedger for RaftLedger {
    fn lease<'a>(
        &'a self,
        key: &'a str,
        window: u64,
        limit: u64,
        want: u64,
    ) -> BoxFuture<'a, Result<u64, LeaseError>> {
        async move {
            let command = ClusterCommand::Lease {
                key: key.to_owned(),
                window,
                limit,
                node: self.node.clone(),
                want,
            };
            match self.consensus.propose(command, LEASE_PROPOSAL).await {
                Ok(CommandOutcome::Leased { granted }) => Ok(granted),
                Ok(other) => Err(LeaseError(format!(
                    "unexpected ledger outcome {}",
                    other.label()
                ))),
                Err(error) => Err(LeaseError(error.to_string())),
            }
        }
        .boxed()
    }

    fn unleased(&self, key: &str, window: u64, limit: u64) -> u64 {
        let state = self.consensus.state().load();
        limit.saturating_sub(
            state
                .quota(key, window)
                .map(|q| q.total_leased())
                .unwrap_or(0),
        )
    }

    fn live_nodes(&self) -> usize {
        self.gossip.load().live_count().max(1)
    }
}
