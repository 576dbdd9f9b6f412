//! Proposing a command: written locally on the leader, forwarded to the leader otherwise,
//! and answered once the outcome is applied on this node too.

use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use tokio::sync::watch;
use tokio::time::Instant;

use super::metrics::ConsensusMetrics;
use super::network::PeerNetwork;
use super::rpc::proto::Proposal;
use super::state::{ClusterCommand, CommandOutcome};
use super::store::{decode, encode};
use super::types::{Raft, RaftPeer, raft_id};

/// Why a proposal did not produce an outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsensusError {
    #[error("no consensus within {0:?}")]
    Timeout(Duration),
    #[error("no raft leader is known")]
    NoLeader,
    #[error("the raft leader is unreachable: {0}")]
    Unavailable(String),
    /// The command may or may not have been applied (e.g. the leader changed mid-write).
    #[error("the proposal's fate is unknown: {0}")]
    Indeterminate(String),
    #[error("consensus is shutting down")]
    Shutdown,
}

impl ConsensusError {
    /// The label of `hapax_raft_proposals_total{outcome}`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::NoLeader => "no_leader",
            Self::Unavailable(_) => "unavailable",
            Self::Indeterminate(_) => "indeterminate",
            Self::Shutdown => "shutdown",
        }
    }
}

/// What a local write on a would-be leader came to.
pub(crate) enum WriteFailure {
    NotLeader(Option<(u64, RaftPeer)>),
    Indeterminate(String),
    Stopped,
}

/// `client_write` on this node: the outcome and its log index, or why not.
pub(crate) async fn leader_write(
    raft: &Raft,
    command: ClusterCommand,
) -> Result<(CommandOutcome, u64), WriteFailure> {
    match raft.client_write(command).await {
        Ok(response) => match response.data {
            Some(outcome) => Ok((outcome, response.log_id.index)),
            None => Err(WriteFailure::Indeterminate(
                "applied without an outcome".into(),
            )),
        },
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => Err(
            WriteFailure::NotLeader(forward.leader_id.zip(forward.leader_node)),
        ),
        Err(RaftError::APIError(other)) => Err(WriteFailure::Indeterminate(other.to_string())),
        Err(RaftError::Fatal(_)) => Err(WriteFailure::Stopped),
    }
}

/// Shared by `Consensus::propose`, the breaker timer and nothing on the hot path.
#[derive(Clone)]
pub(crate) struct Proposer {
    pub raft: Raft,
    pub network: PeerNetwork,
    pub self_id: u64,
    pub self_name: String,
    pub applied: watch::Receiver<u64>,
    pub metrics: Arc<ConsensusMetrics>,
}

const RETRY_PAUSE: Duration = Duration::from_millis(25);

impl Proposer {
    pub async fn propose(
        &self,
        command: ClusterCommand,
        timeout: Duration,
    ) -> Result<CommandOutcome, ConsensusError> {
        let started = Instant::now();
        let result = self
            .propose_until(command, started + timeout, timeout)
            .await;
        let label = match &result {
            Ok((outcome, _)) => outcome.label(),
            Err(e) => e.label(),
        };
        self.metrics.proposals.with_label_values(&[label]).inc();
        if let Ok((_, true)) = &result {
            self.metrics
                .commit_latency
                .observe(started.elapsed().as_secs_f64());
        }
        result.map(|(outcome, _)| outcome)
    }

    /// The leader this node knows of, with its address.
    fn known_leader(&self) -> Option<(u64, RaftPeer)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let id = m.current_leader?;
        let peer = m.membership_config.membership().get_node(&id).cloned()?;
        Some((id, peer))
    }

    /// The outcome, and whether it was seen applied here before the deadline.
    async fn propose_until(
        &self,
        command: ClusterCommand,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(CommandOutcome, bool), ConsensusError> {
        let mut hint: Option<(u64, RaftPeer)> = None;
        let mut last_error: Option<ConsensusError> = None;
        loop {
            if Instant::now() >= deadline {
                return Err(last_error.unwrap_or(ConsensusError::Timeout(timeout)));
            }
            let Some((leader, peer)) = hint.take().or_else(|| self.known_leader()) else {
                last_error = Some(ConsensusError::NoLeader);
                tokio::time::sleep_until((Instant::now() + RETRY_PAUSE * 2).min(deadline)).await;
                continue;
            };
            if leader == self.self_id {
                let written =
                    tokio::time::timeout_at(deadline, leader_write(&self.raft, command.clone()))
                        .await;
                match written {
                    Err(_) => return Err(ConsensusError::Timeout(timeout)),
                    Ok(Ok((outcome, index))) => {
                        return Ok((outcome, self.seen_applied(index, deadline).await));
                    }
                    Ok(Err(WriteFailure::NotLeader(next))) => hint = next,
                    Ok(Err(WriteFailure::Indeterminate(reason))) => {
                        return Err(ConsensusError::Indeterminate(reason));
                    }
                    Ok(Err(WriteFailure::Stopped)) => return Err(ConsensusError::Shutdown),
                }
            } else {
                let left = deadline.saturating_duration_since(Instant::now());
                let proposal = Proposal {
                    command: encode(&command)
                        .map_err(|e| ConsensusError::Indeterminate(e.to_string()))?,
                    origin: self.self_name.clone(),
                    timeout_ms: left.as_millis() as u64,
                };
                match self.network.forward(&peer, proposal, left).await {
                    Ok(reply) if !reply.outcome.is_empty() => {
                        let outcome: CommandOutcome = decode(&reply.outcome)
                            .map_err(|e| ConsensusError::Indeterminate(e.to_string()))?;
                        return Ok((outcome, self.seen_applied(reply.log_index, deadline).await));
                    }
                    Ok(reply) if !reply.error.is_empty() => {
                        return Err(ConsensusError::Indeterminate(format!(
                            "{}: {}",
                            peer.name, reply.error
                        )));
                    }
                    Ok(reply) => {
                        // Not the leader (any more): follow its hint, or our own metrics.
                        hint = (!reply.leader_name.is_empty()).then(|| {
                            (
                                raft_id(&reply.leader_name),
                                RaftPeer {
                                    name: reply.leader_name,
                                    addr: reply.leader_addr,
                                },
                            )
                        });
                        if hint.as_ref().is_some_and(|(id, _)| *id == leader) {
                            hint = None;
                        }
                    }
                    Err(status) if status.code() == tonic::Code::DeadlineExceeded => {
                        return Err(ConsensusError::Timeout(timeout));
                    }
                    Err(status) => {
                        last_error = Some(ConsensusError::Unavailable(format!(
                            "{}: {}",
                            peer.name,
                            status.message()
                        )))
                    }
                }
            }
            tokio::time::sleep_until((Instant::now() + RETRY_PAUSE).min(deadline)).await;
        }
    }

    /// Waits (until `deadline`) for log `index` to be applied on this node.
    async fn seen_applied(&self, index: u64, deadline: Instant) -> bool {
        let mut applied = self.applied.clone();
        matches!(
            tokio::time::timeout_at(deadline, applied.wait_for(|i| *i >= index)).await,
            Ok(Ok(_))
        )
    }
}
