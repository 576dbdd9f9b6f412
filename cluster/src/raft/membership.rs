//! Who is in the Raft group, driven by gossip.
//!
//! Bootstrap: when gossip shows `bootstrap_expect` live nodes with gRPC addresses, the one
//! with the smallest node name asks every other one (Status RPC) whether it already holds
//! Raft state; if none does, it calls `initialize()` once with all of them as voters. The
//! others wait. A node whose storage is not pristine never bootstraps.
//!
//! Afterwards the leader, one change at a time and only while the committed membership is
//! the effective one: updates addresses that gossip shows moved, adds new live nodes as
//! learners, promotes caught-up live learners to voters, and removes a voter that has not
//! been alive for `dead_node_removal_after` — only if at least 3 voters remain and a majority
//! of them is alive — and dead learners likewise.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::{ChangeMembers, ServerState};
use tokio::sync::watch;
use tokio::time::Instant;

use super::network::PeerNetwork;
use super::types::{Raft, RaftMetrics, RaftPeer, raft_id};
use crate::view::{ClusterView, Liveness};

const TICK: Duration = Duration::from_millis(300);
/// A learner this close to the leader's last log index counts as caught up.
const CATCH_UP_SLACK: u64 = 16;
/// Dead voters are never removed below this many voters.
const MIN_VOTERS: usize = 3;
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// What the leader sees, reduced to what the next membership change depends on.
#[derive(Debug, Default)]
pub(crate) struct Observed {
    pub voters: BTreeSet<u64>,
    pub nodes: BTreeMap<u64, RaftPeer>,
    /// Live nodes per gossip: name -> gRPC address (this node included).
    pub live: BTreeMap<String, String>,
    /// Replication progress per node (leader only).
    pub matched: BTreeMap<u64, u64>,
    pub last_log_index: u64,
    pub not_alive_for: BTreeMap<u64, Duration>,
    pub removal_after: Duration,
    pub self_id: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    SetAddresses(BTreeMap<u64, RaftPeer>),
    AddLearners(BTreeMap<u64, RaftPeer>),
    Promote(BTreeSet<u64>),
    RemoveVoter(u64),
    RemoveLearner(u64),
}

/// The next membership change, if any.
pub(crate) fn plan(o: &Observed) -> Option<Plan> {
    let moved: BTreeMap<u64, RaftPeer> = o
        .nodes
        .iter()
        .filter_map(|(id, peer)| {
            o.live
                .get(&peer.name)
                .filter(|addr| **addr != peer.addr)
                .map(|addr| {
                    (
                        *id,
                        RaftPeer {
                            name: peer.name.clone(),
                            addr: addr.clone(),
                        },
                    )
                })
        })
        .collect();
    if !moved.is_empty() {
        return Some(Plan::SetAddresses(moved));
    }
    let new: BTreeMap<u64, RaftPeer> = o
        .live
        .iter()
        .filter(|(name, _)| !o.nodes.contains_key(&raft_id(name)))
        .map(|(name, addr)| {
            (
                raft_id(name),
                RaftPeer {
                    name: name.clone(),
                    addr: addr.clone(),
                },
            )
        })
        .collect();
    if !new.is_empty() {
        return Some(Plan::AddLearners(new));
    }
    let is_live = |id: &u64| {
        o.nodes
            .get(id)
            .is_some_and(|peer| o.live.contains_key(&peer.name))
    };
    let learners: Vec<u64> = o
        .nodes
        .keys()
        .filter(|id| !o.voters.contains(id))
        .copied()
        .collect();
    let ready: BTreeSet<u64> = learners
        .iter()
        .filter(|id| {
            is_live(id)
                && o.matched
                    .get(id)
                    .is_some_and(|m| m + CATCH_UP_SLACK >= o.last_log_index)
        })
        .copied()
        .collect();
    if !ready.is_empty() {
        return Some(Plan::Promote(ready));
    }
    let dead = |id: &u64| {
        *id != o.self_id
            && o.not_alive_for
                .get(id)
                .is_some_and(|d| *d >= o.removal_after)
    };
    for id in o.voters.iter().filter(|id| dead(id)) {
        let remaining: Vec<&u64> = o.voters.iter().filter(|v| *v != id).collect();
        let live_remaining = remaining.iter().filter(|v| is_live(v)).count();
        if remaining.len() >= MIN_VOTERS && live_remaining * 2 > remaining.len() {
            return Some(Plan::RemoveVoter(*id));
        }
    }
    learners
        .into_iter()
        .find(|id| dead(id))
        .map(Plan::RemoveLearner)
}

pub(crate) struct MembershipDriver {
    pub raft: Raft,
    pub network: PeerNetwork,
    pub gossip: Arc<ArcSwap<ClusterView>>,
    pub self_name: String,
    pub self_addr: String,
    pub bootstrap_expect: Option<u32>,
    pub removal_after: Duration,
    pub initialized: bool,
    pub not_alive_since: HashMap<u64, Instant>,
}

impl MembershipDriver {
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => break,
            }
            self.tick().await;
        }
    }

    /// Live nodes with a gRPC address: name -> address; this node always, at its own address.
    fn live_peers(&self) -> BTreeMap<String, String> {
        let view = self.gossip.load();
        let mut live: BTreeMap<String, String> = view
            .members
            .iter()
            .filter(|m| m.liveness == Liveness::Alive && m.node_id != self.self_name)
            .filter_map(|m| m.grpc.clone().map(|addr| (m.node_id.clone(), addr)))
            .collect();
        live.insert(self.self_name.clone(), self.self_addr.clone());
        live
    }

    async fn tick(&mut self) {
        if !self.initialized {
            match self.raft.is_initialized().await {
                Ok(true) => self.initialized = true,
                Ok(false) => return self.try_bootstrap().await,
                Err(_) => return,
            }
        }
        let metrics: RaftMetrics = self.raft.metrics().borrow_watched().clone();
        if metrics.state != ServerState::Leader {
            return;
        }
        let observed = self.observe(&metrics);
        if metrics.membership_config.log_id() != metrics.committed_membership_config.log_id() {
            return;
        }
        let Some(plan) = plan(&observed) else {
            return;
        };
        let (change, retain) = match &plan {
            Plan::SetAddresses(nodes) => (ChangeMembers::SetNodes(nodes.clone()), true),
            Plan::AddLearners(nodes) => (ChangeMembers::AddNodes(nodes.clone()), true),
            Plan::Promote(ids) => (ChangeMembers::AddVoterIds(ids.clone()), true),
            Plan::RemoveVoter(id) => (ChangeMembers::RemoveVoters([*id].into()), false),
            Plan::RemoveLearner(id) => (ChangeMembers::RemoveNodes([*id].into()), false),
        };
        let names = |ids: Vec<u64>| {
            ids.iter()
                .map(|id| {
                    observed
                        .nodes
                        .get(id)
                        .map(|p| p.name.clone())
                        .unwrap_or_else(|| format!("{id:016x}"))
                })
                .collect::<Vec<_>>()
        };
        let what = match &plan {
            Plan::SetAddresses(nodes) => format!(
                "updated addresses of {:?}",
                nodes.values().map(|p| p.to_string()).collect::<Vec<_>>()
            ),
            Plan::AddLearners(nodes) => format!(
                "added learners {:?}",
                nodes.values().map(|p| p.to_string()).collect::<Vec<_>>()
            ),
            Plan::Promote(ids) => format!(
                "promoted to voters {:?}",
                names(ids.iter().copied().collect())
            ),
            Plan::RemoveVoter(id) => format!("removed dead voter {:?}", names(vec![*id])),
            Plan::RemoveLearner(id) => format!("removed dead learner {:?}", names(vec![*id])),
        };
        match self.raft.change_membership(change, retain).await {
            Ok(_) => tracing::info!(change = %what, "raft membership changed"),
            Err(e) => tracing::warn!(change = %what, error = %e, "raft membership change failed"),
        }
    }

    fn observe(&mut self, metrics: &RaftMetrics) -> Observed {
        let live = self.live_peers();
        let membership = metrics.membership_config.membership();
        let nodes: BTreeMap<u64, RaftPeer> = membership
            .nodes()
            .map(|(id, peer)| (*id, peer.clone()))
            .collect();
        let now = Instant::now();
        self.not_alive_since.retain(|id, _| nodes.contains_key(id));
        for (id, peer) in &nodes {
            if live.contains_key(&peer.name) {
                self.not_alive_since.remove(id);
            } else {
                self.not_alive_since.entry(*id).or_insert(now);
            }
        }
        let matched = metrics
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, log)| (*id, log.as_ref().map(|l| l.index).unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        Observed {
            voters: membership.voter_ids().collect(),
            nodes,
            live,
            matched,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            not_alive_for: self
                .not_alive_since
                .iter()
                .map(|(id, since)| (*id, now.duration_since(*since)))
                .collect(),
            removal_after: self.removal_after,
            self_id: metrics.id,
        }
    }

    async fn try_bootstrap(&mut self) {
        let Some(expect) = self.bootstrap_expect else {
            return;
        };
        let live = self.live_peers();
        if live.len() < expect as usize || live.keys().next() != Some(&self.self_name) {
            return;
        }
        for (name, addr) in live.iter().filter(|(name, _)| **name != self.self_name) {
            let peer = RaftPeer {
                name: name.clone(),
                addr: addr.clone(),
            };
            match self.network.status(&peer, STATUS_TIMEOUT).await {
                Ok(status) if !status.initialized => {}
                Ok(_) => {
                    tracing::info!(peer = %name, "a peer already holds raft state: waiting to be added to its group");
                    self.initialized = true;
                    return;
                }
                Err(status) => {
                    tracing::debug!(peer = %name, error = %status.message(), "peer not ready for bootstrap");
                    return;
                }
            }
        }
        let members: BTreeMap<u64, RaftPeer> = live
            .iter()
            .map(|(name, addr)| {
                (
                    raft_id(name),
                    RaftPeer {
                        name: name.clone(),
                        addr: addr.clone(),
                    },
                )
            })
            .collect();
        let names: Vec<&String> = live.keys().collect();
        match self.raft.initialize(members).await {
            Ok(()) => tracing::info!(voters = ?names, "initialized the raft group"),
            Err(e) => tracing::warn!(voters = ?names, error = %e, "raft initialize refused"),
        }
        self.initialized = true;
    }
}

#[cfg(test)]
#[path = "membership_tests.rs"]
mod tests;
