//! Consensus on the facts every node must agree on — breaker state and rate-limit leases —
//! with openraft over tonic and a durable redb log. The node reads the applied state through
//! a lock-free snapshot ([`Consensus::state`]) and proposes changes rarely ([`Consensus::propose`]).

mod breaker_timer;
mod membership;
mod metrics;
mod network;
mod proposal;
pub mod rpc;
mod server;
pub mod state;
pub mod state_machine;
pub mod store;
pub mod types;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hapax_config::ClusterConfig;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::{ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use self::membership::MembershipDriver;
use self::metrics::{ConsensusMetrics, name_of};
use self::network::PeerNetwork;
pub use self::proposal::ConsensusError;
use self::proposal::Proposer;
use self::rpc::ClusterSecret;
use self::rpc::proto::cluster_rpc_server::ClusterRpcServer;
use self::server::ClusterService;
pub use self::state::{
    BreakerState, BreakerStatus, ClusterCommand, CommandOutcome, QuotaWindow, ReplicatedState,
};
use self::state_machine::StateMachineStore;
use self::store::LogStore;
use self::types::{Raft, RaftMetrics};
pub use self::types::{RaftPeer, raft_id};
use crate::ClusterError;
use crate::view::ClusterView;

/// Raft timing: heartbeats every 100 ms, elections after 0.5–1 s of silence.
const HEARTBEAT_MS: u64 = 100;
const ELECTION_MIN_MS: u64 = 500;
const ELECTION_MAX_MS: u64 = 1000;
/// A snapshot every this many applied entries; older entries are purged after it.
const SNAPSHOT_EVERY: u64 = 1000;
const SERVER_STOP_PATIENCE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RaftRole {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

/// This node's view of the Raft group, for `/v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftStatus {
    pub node_id: String,
    pub role: RaftRole,
    pub term: u64,
    pub leader_id: Option<String>,
    pub last_applied: Option<u64>,
    pub last_log: Option<u64>,
    pub committed: Option<u64>,
    pub voters: Vec<String>,
    pub learners: Vec<String>,
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

pub(crate) fn status_of(m: &RaftMetrics, self_name: &str) -> RaftStatus {
    let membership = m.membership_config.membership();
    let role = match m.state {
        ServerState::Leader => RaftRole::Leader,
        ServerState::Follower => RaftRole::Follower,
        ServerState::Candidate => RaftRole::Candidate,
        ServerState::Learner => RaftRole::Learner,
        ServerState::Shutdown => RaftRole::Shutdown,
    };
    RaftStatus {
        node_id: self_name.to_owned(),
        role,
        term: m.current_term,
        leader_id: m.current_leader.map(|id| name_of(m, id)),
        last_applied: m.last_applied.as_ref().map(|l| l.index),
        last_log: m.last_log_index,
        committed: m.cluster_committed.as_ref().map(|l| l.index),
        voters: sorted(membership.voter_ids().map(|id| name_of(m, id)).collect()),
        learners: sorted(membership.learner_ids().map(|id| name_of(m, id)).collect()),
    }
}

/// This node's part in the Raft group.
pub struct Consensus {
    raft: Raft,
    self_name: String,
    state: Arc<ArcSwap<ReplicatedState>>,
    proposer: Proposer,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    server_stop: oneshot::Sender<()>,
    server: JoinHandle<()>,
}

fn raft_config(cluster_id: &str) -> Result<openraft::Config, ClusterError> {
    openraft::Config {
        cluster_name: cluster_id.to_owned(),
        heartbeat_interval: HEARTBEAT_MS,
        election_timeout_min: ELECTION_MIN_MS,
        election_timeout_max: ELECTION_MAX_MS,
        install_snapshot_timeout: 10_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY),
        max_in_snapshot_log_to_keep: 100,
        ..Default::default()
    }
    .validate()
    .map_err(|e| ClusterError::Raft(e.to_string()))
}

impl Consensus {
    /// Opens storage under data_dir, starts Raft + the gRPC server on `listener`, and the membership driver.
    /// `request_timeout` (the routing deadline) bounds a half-open probe: a permit claimed past
    /// it plus a margin is freed by the leader.
    pub async fn start(
        config: &ClusterConfig,
        node_id: &str,
        listener: tokio::net::TcpListener,
        advertise_grpc: String,
        gossip: Arc<ArcSwap<ClusterView>>,
        registry: &prometheus::Registry,
        request_timeout: Duration,
    ) -> Result<Self, ClusterError> {
        let self_id = raft_id(node_id);
        let bound = listener
            .local_addr()
            .map_err(|e| ClusterError::Raft(format!("cluster.grpc_listen: {e}")))?;
        let metrics = Arc::new(ConsensusMetrics::register(registry)?);
        let data_dir = config
            .data_dir
            .as_ref()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("data").join(node_id));
        let db = {
            let dir = data_dir.clone();
            tokio::task::spawn_blocking(move || store::open_database(&dir))
                .await
                .map_err(|e| ClusterError::Raft(e.to_string()))?
        }
        .map_err(|e| ClusterError::Storage {
            path: data_dir.display().to_string(),
            reason: e.to_string(),
        })?;
        let secret = ClusterSecret::new(config.secret.as_ref().map(|s| s.expose()))
            .map_err(ClusterError::Raft)?;
        let network = PeerNetwork::new(self_id, secret.clone(), Arc::clone(&gossip));
        let state_machine = StateMachineStore::new(Arc::clone(&db));
        let state = state_machine.published();
        let applied = state_machine.applied_index();
        let raft = Raft::new(
            self_id,
            Arc::new(raft_config(&config.cluster_id)?),
            network.clone(),
            LogStore::new(db),
            state_machine,
        )
        .await
        .map_err(|e| ClusterError::Raft(e.to_string()))?;

        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let service = ClusterRpcServer::with_interceptor(
            ClusterService::new(raft.clone(), node_id.to_owned()),
            secret,
        );
        let (server_stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let serve = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "cluster gRPC server failed");
            }
        });

        let proposer = Proposer {
            raft: raft.clone(),
            network: network.clone(),
            self_id,
            self_name: node_id.to_owned(),
            applied,
            metrics: Arc::clone(&metrics),
        };
        let (stop, stopping) = watch::channel(false);
        let driver = MembershipDriver {
            raft: raft.clone(),
            network,
            gossip,
            self_name: node_id.to_owned(),
            self_addr: advertise_grpc.clone(),
            bootstrap_expect: config.effective_bootstrap_expect(),
            removal_after: config.dead_node_removal_after.get(),
            initialized: false,
            not_alive_since: HashMap::new(),
        };
        let tasks = vec![
            tokio::spawn(driver.run(stopping.clone())),
            tokio::spawn(breaker_timer::run(
                proposer.clone(),
                Arc::clone(&state),
                stopping.clone(),
                request_timeout + breaker_timer::PROBE_LEASE_MARGIN,
            )),
            tokio::spawn(metrics::follow(raft.clone(), metrics, self_id, stopping)),
        ];
        tracing::info!(
            node_id,
            raft_id = %format!("{self_id:016x}"),
            grpc = %bound,
            advertise = %advertise_grpc,
            data_dir = %data_dir.display(),
            bootstrap_expect = ?config.effective_bootstrap_expect(),
            "raft consensus started"
        );
        Ok(Self {
            raft,
            self_name: node_id.to_owned(),
            state,
            proposer,
            stop,
            tasks,
            server_stop,
            server,
        })
    }

    /// Lock-free snapshot of the applied state, refreshed on every apply.
    pub fn state(&self) -> Arc<ArcSwap<ReplicatedState>> {
        Arc::clone(&self.state)
    }

    /// Proposes through the leader (forwarding if needed); bounded by `timeout`; never call on a request's hot path except for rare events (trips, probes, lease refills).
    pub async fn propose(
        &self,
        command: ClusterCommand,
        timeout: Duration,
    ) -> Result<CommandOutcome, ConsensusError> {
        self.proposer.propose(command, timeout).await
    }

    /// Role, term, leader, log positions and members, by node name.
    pub fn status(&self) -> RaftStatus {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        status_of(&m, &self.self_name)
    }

    /// Stops the background work, Raft and the gRPC server; storage is closed when this returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
        drop(self.proposer);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        let _ = self.server_stop.send(());
        let mut server = self.server;
        if tokio::time::timeout(SERVER_STOP_PATIENCE, &mut server)
            .await
            .is_err()
        {
            server.abort();
            let _ = server.await;
        }
        tracing::info!(node_id = %self.self_name, "raft consensus stopped");
    }
}
