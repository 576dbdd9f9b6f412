//! The server side of cluster RPC: Raft messages into the local `Raft`, forwarded proposals
//! (applied when this node leads, answered with a leader hint otherwise) and status.

use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use tonic::{Request, Response, Status, Streaming};

use super::proposal::{WriteFailure, leader_write};
use super::rpc::proto::cluster_rpc_server::ClusterRpc;
use super::rpc::proto::{
    Proposal, ProposalReply, RaftMessage, RaftReply, SnapshotChunk, StatusReply, StatusRequest,
    VoteMessage,
};
use super::state::ClusterCommand;
use super::store::{decode, encode};
use super::types::{HapaxRaft, Raft, Snapshot, SnapshotMeta, Vote};
use super::{RaftStatus, status_of};

/// A snapshot larger than this is refused (the replicated state is small facts).
const MAX_SNAPSHOT_BYTES: usize = 256 * 1024 * 1024;
/// Longest a forwarded proposal may ask the leader to wait.
const MAX_FORWARD_WAIT: Duration = Duration::from_secs(30);

pub struct ClusterService {
    raft: Raft,
    self_name: String,
}

impl ClusterService {
    pub fn new(raft: Raft, self_name: String) -> Self {
        Self { raft, self_name }
    }
}

fn bad_request(err: std::io::Error) -> Status {
    Status::invalid_argument(err.to_string())
}

fn stopped<E: std::fmt::Display>(err: E) -> Status {
    Status::unavailable(format!("raft is not running: {err}"))
}

fn reply<T: serde::Serialize>(value: &T) -> Result<Response<RaftReply>, Status> {
    Ok(Response::new(RaftReply {
        json: encode(value).map_err(|e| Status::internal(e.to_string()))?,
    }))
}

#[tonic::async_trait]
impl ClusterRpc for ClusterService {
    async fn vote(&self, request: Request<VoteMessage>) -> Result<Response<RaftReply>, Status> {
        let message = request.into_inner();
        let rpc: VoteRequest<HapaxRaft> = decode(&message.json).map_err(bad_request)?;
        let response = if message.pre_vote {
            self.raft.pre_vote(rpc).await
        } else {
            self.raft.vote(rpc).await
        };
        reply(&response.map_err(stopped)?)
    }

    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftReply>, Status> {
        let rpc: AppendEntriesRequest<HapaxRaft> =
            decode(&request.into_inner().json).map_err(bad_request)?;
        reply(&self.raft.append_entries(rpc).await.map_err(stopped)?)
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftReply>, Status> {
        let mut stream = request.into_inner();
        let mut header: Option<(Vote, SnapshotMeta)> = None;
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await? {
            if !chunk.header.is_empty() {
                header = Some(decode(&chunk.header).map_err(bad_request)?);
            }
            if data.len() + chunk.data.len() > MAX_SNAPSHOT_BYTES {
                return Err(Status::resource_exhausted("snapshot too large"));
            }
            data.extend_from_slice(&chunk.data);
        }
        let Some((vote, meta)) = header else {
            return Err(Status::invalid_argument("snapshot without a header"));
        };
        let response = self
            .raft
            .install_full_snapshot(
                vote,
                Snapshot {
                    meta,
                    snapshot: data,
                },
            )
            .await
            .map_err(stopped)?;
        reply(&response)
    }

    async fn forward_proposal(
        &self,
        request: Request<Proposal>,
    ) -> Result<Response<ProposalReply>, Status> {
        let proposal = request.into_inner();
        let command: ClusterCommand = decode(&proposal.command).map_err(bad_request)?;
        let wait = Duration::from_millis(proposal.timeout_ms).min(MAX_FORWARD_WAIT);
        tracing::debug!(origin = %proposal.origin, %command, "forwarded proposal");
        let mut answer = ProposalReply::default();
        match tokio::time::timeout(wait, leader_write(&self.raft, command)).await {
            Err(_) => return Err(Status::deadline_exceeded("not committed in time")),
            Ok(Ok((outcome, index))) => {
                answer.outcome = encode(&outcome).map_err(|e| Status::internal(e.to_string()))?;
                answer.log_index = index;
            }
            Ok(Err(WriteFailure::NotLeader(hint))) => {
                if let Some((_, peer)) = hint {
                    answer.leader_name = peer.name;
                    answer.leader_addr = peer.addr;
                }
            }
            Ok(Err(WriteFailure::Indeterminate(reason))) => answer.error = reason,
            Ok(Err(WriteFailure::Stopped)) => return Err(stopped("shutting down")),
        }
        Ok(Response::new(answer))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        let initialized = self.raft.is_initialized().await.map_err(stopped)?;
        let status: RaftStatus = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow_watched();
            status_of(&m, &self.self_name)
        };
        Ok(Response::new(StatusReply {
            status: encode(&status).map_err(|e| Status::internal(e.to_string()))?,
            initialized,
        }))
    }
}
