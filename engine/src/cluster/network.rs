//! The client side of the cluster RPC: openraft's [`RaftNetworkFactory`] over tonic, plus the
//! calls [`super::Metadata`] makes itself (forwarded proposals, heartbeats). Payloads are
//! openraft's serde types as JSON in `RaftMessage.json` (see `proto/axle/cluster/v1/raft.proto`).
//!
//! Channels are created lazily, one per peer address, and shared: tonic reconnects a channel
//! after its connection fails, so a restarted peer is reached again without any bookkeeping.

use std::collections::HashMap;
use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use axle_proto::cluster::v1::raft_client::RaftClient;
use axle_proto::cluster::v1::{HeartbeatRequest, HeartbeatResponse, RaftMessage};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{BasicNode, RPCTypes, RaftNetwork, RaftNetworkFactory};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};

use super::{MetaCommand, MetaReply, NodeId, TypeConfig};

/// Why a proposal did not produce a [`MetaReply`]; the JSON answer of the `Propose` RPC.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ProposeFailure {
    /// The receiver is not the Raft leader; `leader` is the one it knows of, if any.
    NotLeader { leader: Option<NodeId> },
    /// The leader did not commit the command in time (no quorum, or it lost leadership).
    TimedOut,
    /// The receiver's Raft node has stopped.
    Stopped(String),
}

/// A committed proposal: how it applied and the index of its Raft log entry (a node that
/// forwarded it waits until it has applied that index itself: read-your-writes).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Proposed {
    pub reply: MetaReply,
    pub log_index: u64,
}

/// A node's request to become a voter of the metadata group (the `Join` RPC).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct JoinRequest {
    pub id: NodeId,
    /// `host:port` of the joining node's cluster RPC, as the Raft membership will hold it:
    /// its own `cluster.seeds` entry for a seed, else its advertised address.
    pub addr: String,
}

/// A successful answer to a [`JoinRequest`].
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Joined {
    /// The node was added as a learner, caught up, and is now a voter.
    Added,
    /// The node already was a voter (a restart): nothing changed.
    AlreadyVoter,
}

/// Why a membership change (`Join`, `RemoveMember`) was not made.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum MembershipFailure {
    /// The receiver is not the Raft leader; `leader` and its cluster address, if known.
    NotLeader { leader: Option<NodeId>, addr: Option<String> },
    /// The node to remove is neither in the Raft membership nor registered.
    NotMember,
    /// The node to remove is the only voter left.
    LastVoter,
    /// The change will not be made as asked (say, a node id already taken by another address).
    Refused(String),
    /// The change did not complete (no quorum, another change in progress, a learner that did
    /// not catch up in time); retrying may succeed.
    Failed(String),
}

/// Lazily connected, shared gRPC channels to peers, by `host:port`.
#[derive(Clone, Default)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Peers {
    /// A client for `addr` (`host:port`); an error when `addr` is not a valid address.
    pub fn client(&self, addr: &str) -> Result<RaftClient<Channel>, tonic::transport::Error> {
        let mut channels = self.channels.lock();
        if let Some(ch) = channels.get(addr) {
            return Ok(RaftClient::new(ch.clone()));
        }
        let ch = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(addr.to_string(), ch.clone());
        Ok(RaftClient::new(ch))
    }

    /// Proposes `cmd` on the node at `addr`; `Err` is a transport failure (say why, retry).
    pub async fn propose(
        &self,
        addr: &str,
        cmd: &MetaCommand,
        ttl: Duration,
    ) -> Result<Result<Proposed, ProposeFailure>, String> {
        let mut client = self.client(addr).map_err(|e| e.to_string())?;
        let json = serde_json::to_vec(cmd).map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(ttl, client.propose(RaftMessage { json: json.into() }))
            .await
            .map_err(|_| format!("no answer from {addr} within {} ms", ttl.as_millis()))?
            .map_err(|status| format!("{addr}: {status}"))?;
        serde_json::from_slice(&resp.into_inner().json).map_err(|e| format!("undecodable answer from {addr}: {e}"))
    }

    /// Asks the node at `addr` to make `req.id` a voter; `Err` is a transport failure.
    pub async fn join(
        &self,
        addr: &str,
        req: &JoinRequest,
        ttl: Duration,
    ) -> Result<Result<Joined, MembershipFailure>, String> {
        let mut client = self.client(addr).map_err(|e| e.to_string())?;
        let msg = RaftMessage { json: serde_json::to_vec(req).map_err(|e| e.to_string())?.into() };
        let resp = tokio::time::timeout(ttl, client.join(msg))
            .await
            .map_err(|_| format!("no answer from {addr} within {} ms", ttl.as_millis()))?
            .map_err(|status| format!("{addr}: {status}"))?;
        serde_json::from_slice(&resp.into_inner().json).map_err(|e| format!("undecodable answer from {addr}: {e}"))
    }

    /// Asks the node at `addr` (the Raft leader) to remove node `id`; `Err` is a transport
    /// failure.
    pub async fn remove_member(
        &self,
        addr: &str,
        id: NodeId,
        ttl: Duration,
    ) -> Result<Result<(), MembershipFailure>, String> {
        let mut client = self.client(addr).map_err(|e| e.to_string())?;
        let msg = RaftMessage { json: serde_json::to_vec(&id).map_err(|e| e.to_string())?.into() };
        let resp = tokio::time::timeout(ttl, client.remove_member(msg))
            .await
            .map_err(|_| format!("no answer from {addr} within {} ms", ttl.as_millis()))?
            .map_err(|status| format!("{addr}: {status}"))?;
        serde_json::from_slice(&resp.into_inner().json).map_err(|e| format!("undecodable answer from {addr}: {e}"))
    }

    /// Sends a liveness heartbeat from `me` to the node at `addr`.
    pub async fn heartbeat(&self, addr: &str, me: NodeId, ttl: Duration) -> Result<HeartbeatResponse, String> {
        let mut client = self.client(addr).map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(ttl, client.heartbeat(HeartbeatRequest { node_id: me }))
            .await
            .map_err(|_| format!("no answer from {addr} within {} ms", ttl.as_millis()))?
            .map_err(|status| format!("{addr}: {status}"))?;
        Ok(resp.into_inner())
    }
}

/// openraft's factory of per-peer network clients.
pub struct Network {
    me: NodeId,
    peers: Peers,
}

impl Network {
    pub fn new(me: NodeId, peers: Peers) -> Network {
        Network { me, peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        let client = self.peers.client(&node.addr).map_err(|e| std::io::Error::other(e.to_string()));
        PeerClient { me: self.me, target, client }
    }
}

/// The Raft RPCs to one peer.
pub struct PeerClient {
    me: NodeId,
    target: NodeId,
    client: Result<RaftClient<Channel>, std::io::Error>,
}

#[derive(Clone, Copy)]
enum Method {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl PeerClient {
    /// Sends `req` as JSON and decodes the peer's `Result<Resp, E>`, mapping transport
    /// failures to openraft's error kinds (refused or reset connections are `Unreachable`,
    /// which makes openraft back off).
    async fn call<Req, Resp, E>(
        &mut self,
        method: Method,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: Error + DeserializeOwned,
    {
        let json = serde_json::to_vec(req).map_err(|e| NetworkError::new(&e))?;
        let client = self.client.as_mut().map_err(|e| Unreachable::new(e))?;
        let msg = RaftMessage { json: json.into() };
        let call = async {
            match method {
                Method::AppendEntries => client.append_entries(msg).await,
                Method::Vote => client.vote(msg).await,
                Method::InstallSnapshot => client.install_snapshot(msg).await,
            }
        };
        let action = match method {
            Method::AppendEntries => RPCTypes::AppendEntries,
            Method::Vote => RPCTypes::Vote,
            Method::InstallSnapshot => RPCTypes::InstallSnapshot,
        };
        let resp = match tokio::time::timeout(ttl, call).await {
            Err(_) => {
                return Err(RPCError::Timeout(Timeout { action, id: self.me, target: self.target, timeout: ttl }))
            }
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                return Err(Unreachable::new(&status).into())
            }
            Ok(Err(status)) => return Err(NetworkError::new(&status).into()),
            Ok(Ok(resp)) => resp.into_inner(),
        };
        let answer: Result<Resp, E> = serde_json::from_slice(&resp.json).map_err(|e| NetworkError::new(&e))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Method::AppendEntries, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call(Method::InstallSnapshot, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Method::Vote, &rpc, option.hard_ttl()).await
    }
}
