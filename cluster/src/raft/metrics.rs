//! Consensus metrics, and the task that follows openraft's metrics into them and logs every
//! leader change.

use std::sync::Arc;

use openraft::ServerState;
use openraft::async_runtime::watch::WatchReceiver;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::watch;

use super::types::{Raft, RaftMetrics};

pub struct ConsensusMetrics {
    pub term: IntGauge,
    pub is_leader: IntGauge,
    pub leader_changes: IntCounter,
    pub commit_latency: Histogram,
    pub last_applied_index: IntGauge,
    pub proposals: IntCounterVec,
}

impl ConsensusMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let term = IntGauge::new("hapax_raft_term", "Current Raft term seen by this node")?;
        let is_leader = IntGauge::new(
            "hapax_raft_is_leader",
            "1 while this node is the Raft leader",
        )?;
        let leader_changes = IntCounter::new(
            "hapax_raft_leader_changes_total",
            "Times this node saw a new Raft leader",
        )?;
        let commit_latency = Histogram::with_opts(
            HistogramOpts::new(
                "hapax_raft_commit_latency_seconds",
                "From proposing a command to seeing it applied on this node",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )?;
        let last_applied_index = IntGauge::new(
            "hapax_raft_last_applied_index",
            "Index of the last Raft log entry applied here",
        )?;
        let proposals = IntCounterVec::new(
            Opts::new(
                "hapax_raft_proposals_total",
                "Commands proposed from this node, by outcome",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(term.clone()))?;
        registry.register(Box::new(is_leader.clone()))?;
        registry.register(Box::new(leader_changes.clone()))?;
        registry.register(Box::new(commit_latency.clone()))?;
        registry.register(Box::new(last_applied_index.clone()))?;
        registry.register(Box::new(proposals.clone()))?;
        Ok(Self {
            term,
            is_leader,
            leader_changes,
            commit_latency,
            last_applied_index,
            proposals,
        })
    }
}

/// The name of Raft node `id`, from the membership (its id in hex when unknown).
pub fn name_of(metrics: &RaftMetrics, id: u64) -> String {
    metrics
        .membership_config
        .membership()
        .get_node(&id)
        .map(|peer| peer.name.clone())
        .unwrap_or_else(|| format!("{id:016x}"))
}

/// Mirrors openraft's metrics into Prometheus until `stop` flips.
pub async fn follow(
    raft: Raft,
    metrics: Arc<ConsensusMetrics>,
    self_id: u64,
    mut stop: watch::Receiver<bool>,
) {
    let mut rx = raft.metrics();
    let mut leader: Option<u64> = None;
    loop {
        let change = {
            let m = rx.borrow_watched();
            metrics.term.set(m.current_term as i64);
            metrics.is_leader.set(i64::from(
                m.state == ServerState::Leader && m.current_leader == Some(self_id),
            ));
            metrics
                .last_applied_index
                .set(m.last_applied.as_ref().map(|l| l.index as i64).unwrap_or(0));
            (m.current_leader != leader).then(|| {
                (
                    m.current_leader,
                    m.current_leader.map(|id| name_of(&m, id)),
                    m.current_term,
                )
            })
        };
        if let Some((new, name, term)) = change {
            leader = new;
            match name {
                Some(name) => {
                    metrics.leader_changes.inc();
                    tracing::info!(leader = %name, term, is_self = new == Some(self_id), "raft leader changed");
                }
                None => tracing::info!(term, "raft leader lost"),
            }
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { break },
            _ = stop.changed() => break,
        }
    }
}
