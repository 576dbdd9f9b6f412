//! The client side of cluster RPC: one lazily connected `Channel` per peer, reused by every
//! Raft RPC and forwarded proposal, re-created only when the peer's address changes. A peer's
//! address comes from gossip first (it follows restarts) and from the Raft membership second.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use openraft::errors::{
    NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetworkFactory, RaftNetworkV2};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use super::rpc::ClusterSecret;
use super::rpc::proto::cluster_rpc_client::ClusterRpcClient;
use super::rpc::proto::{
    Proposal, ProposalReply, RaftMessage, RaftReply, SnapshotChunk, StatusReply, StatusRequest,
    VoteMessage,
};
use super::store::{decode, encode};
use super::types::{HapaxRaft, RaftPeer, Snapshot, Vote};
use crate::view::ClusterView;

/// Snapshot bytes per gRPC message: well under the 4 MiB default limit.
const SNAPSHOT_CHUNK: usize = 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Channels to every peer; clones share them.
#[derive(Clone)]
pub struct PeerNetwork {
    self_id: u64,
    secret: ClusterSecret,
    gossip: Arc<ArcSwap<ClusterView>>,
    channels: Arc<Mutex<HashMap<String, (String, Channel)>>>,
}

impl PeerNetwork {
    pub fn new(self_id: u64, secret: ClusterSecret, gossip: Arc<ArcSwap<ClusterView>>) -> Self {
        Self {
            self_id,
            secret,
            gossip,
            channels: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Where `peer` listens now: its gossiped gRPC address, else the one in the membership.
    pub fn address_of(&self, peer: &RaftPeer) -> String {
        let view = self.gossip.load();
        view.members
            .iter()
            .find(|m| m.node_id == peer.name)
            .and_then(|m| m.grpc.clone())
            .unwrap_or_else(|| peer.addr.clone())
    }

    fn client(&self, peer: &RaftPeer) -> Result<ClusterRpcClient<Channel>, String> {
        let addr = self.address_of(peer);
        if addr.is_empty() {
            return Err(format!("no gRPC address known for {}", peer.name));
        }
        let mut channels = self.channels.lock();
        if let Some((known, channel)) = channels.get(&peer.name)
            && *known == addr
        {
            return Ok(ClusterRpcClient::new(channel.clone()));
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad address {addr}: {e}"))?;
        let channel = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        channels.insert(peer.name.clone(), (addr, channel.clone()));
        Ok(ClusterRpcClient::new(channel))
    }

    fn request<T>(&self, message: T, timeout: Duration) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(timeout);
        self.secret.attach(&mut request);
        request
    }

    /// Hands a command to `peer` (believed to be the leader).
    pub async fn forward(
        &self,
        peer: &RaftPeer,
        proposal: Proposal,
        timeout: Duration,
    ) -> Result<ProposalReply, Status> {
        let mut client = self.client(peer).map_err(Status::unavailable)?;
        let request = self.request(proposal, timeout);
        let reply = tokio::time::timeout(timeout, client.forward_proposal(request))
            .await
            .map_err(|_| Status::deadline_exceeded("forward timed out"))??;
        Ok(reply.into_inner())
    }

    /// Asks `peer` for its Raft status.
    pub async fn status(&self, peer: &RaftPeer, timeout: Duration) -> Result<StatusReply, Status> {
        let mut client = self.client(peer).map_err(Status::unavailable)?;
        let request = self.request(StatusRequest {}, timeout);
        let reply = tokio::time::timeout(timeout, client.status(request))
            .await
            .map_err(|_| Status::deadline_exceeded("status timed out"))??;
        Ok(reply.into_inner())
    }
}

impl RaftNetworkFactory<HapaxRaft> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: u64, node: &RaftPeer) -> Self::Network {
        PeerConnection {
            target,
            peer: node.clone(),
            network: self.clone(),
        }
    }
}

/// Raft's view of one peer.
pub struct PeerConnection {
    target: u64,
    peer: RaftPeer,
    network: PeerNetwork,
}

/// A tonic failure in openraft's terms: refused connections back off, the rest retry.
fn rpc_error(status: Status) -> RPCError<HapaxRaft> {
    match status.code() {
        Code::Unavailable | Code::Unauthenticated | Code::Unimplemented => {
            RPCError::Unreachable(Unreachable::from_string(status.message()))
        }
        _ => RPCError::Network(NetworkError::from_string(format!(
            "{}: {}",
            status.code(),
            status.message()
        ))),
    }
}

impl PeerConnection {
    fn timeout(&self, action: RPCTypes, option: &RPCOption) -> Timeout<HapaxRaft> {
        Timeout {
            action,
            id: self.network.self_id,
            target: self.target,
            timeout: option.hard_ttl(),
        }
    }

    async fn call<Req, Msg, Resp, Fut>(
        &mut self,
        action: RPCTypes,
        option: &RPCOption,
        message: &Req,
        wrap: impl FnOnce(Vec<u8>) -> Msg,
        send: impl FnOnce(ClusterRpcClient<Channel>, Request<Msg>) -> Fut,
    ) -> Result<Resp, RPCError<HapaxRaft>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        Fut: Future<Output = Result<tonic::Response<RaftReply>, Status>>,
    {
        let json = encode(message).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let client = self
            .network
            .client(&self.peer)
            .map_err(|e| RPCError::Unreachable(Unreachable::from_string(e)))?;
        let ttl = option.hard_ttl();
        let request = self.network.request(wrap(json), ttl);
        let reply = match tokio::time::timeout(ttl, send(client, request)).await {
            Err(_) => return Err(RPCError::Timeout(self.timeout(action, option))),
            Ok(reply) => reply.map_err(rpc_error)?,
        };
        decode(&reply.into_inner().json).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }
}

impl RaftNetworkV2<HapaxRaft> for PeerConnection {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<HapaxRaft>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<HapaxRaft>, RPCError<HapaxRaft>> {
        self.call(
            RPCTypes::AppendEntries,
            &option,
            &rpc,
            |json| RaftMessage { json },
            |mut client, request| async move { client.append_entries(request).await },
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<HapaxRaft>,
        option: RPCOption,
    ) -> Result<VoteResponse<HapaxRaft>, RPCError<HapaxRaft>> {
        self.call(
            RPCTypes::Vote,
            &option,
            &rpc,
            |json| VoteMessage {
                json,
                pre_vote: false,
            },
            |mut client, request| async move { client.vote(request).await },
        )
        .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<HapaxRaft>,
        option: RPCOption,
    ) -> Result<VoteResponse<HapaxRaft>, RPCError<HapaxRaft>> {
        self.call(
            RPCTypes::Vote,
            &option,
            &rpc,
            |json| VoteMessage {
                json,
                pre_vote: true,
            },
            |mut client, request| async move { client.vote(request).await },
        )
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<HapaxRaft>, StreamingError<HapaxRaft>> {
        let header = encode(&(&vote, &snapshot.meta))
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let mut chunks = vec![SnapshotChunk {
            header,
            data: Vec::new(),
        }];
        chunks.extend(
            snapshot
                .snapshot
                .chunks(SNAPSHOT_CHUNK)
                .map(|data| SnapshotChunk {
                    header: Vec::new(),
                    data: data.to_vec(),
                }),
        );
        let mut client = self
            .network
            .client(&self.peer)
            .map_err(|e| StreamingError::Unreachable(Unreachable::from_string(e)))?;
        let ttl = option.hard_ttl();
        let request = self
            .network
            .request(futures_util::stream::iter(chunks), ttl);
        let send = tokio::time::timeout(ttl, client.install_snapshot(request));
        let reply = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            reply = send => reply,
        };
        let reply = match reply {
            Err(_) => {
                return Err(StreamingError::Timeout(
                    self.timeout(RPCTypes::InstallSnapshot, &option),
                ));
            }
            Ok(reply) => reply.map_err(|status| match rpc_error(status) {
                RPCError::Unreachable(e) => StreamingError::Unreachable(e),
                RPCError::Network(e) => StreamingError::Network(e),
                other => StreamingError::Network(NetworkError::from_string(other.to_string())),
            })?,
        };
        decode(&reply.into_inner().json).map_err(|e| StreamingError::Network(NetworkError::new(&e)))
    }
}
