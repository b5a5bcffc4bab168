//! The server side of the cluster RPC (`axle.cluster.v1.Raft`): hands openraft's messages to
//! the local Raft node, runs proposals forwarded by other nodes and membership changes (on the
//! Raft leader), and records heartbeats for the controller. Mounted by the caller on the cluster
//! listener ([`Metadata::raft_service`]).

use std::sync::Arc;

use axle_proto::cluster::v1::raft_server::Raft as RaftRpc;
use axle_proto::cluster::v1::{HeartbeatRequest, HeartbeatResponse, RaftMessage};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use super::metadata::FORWARDED_PROPOSE_TIMEOUT;
use super::network::JoinRequest;
use super::{MetaCommand, Metadata, NodeId, TypeConfig};

/// The `Raft` gRPC service of one node.
pub struct RaftService {
    meta: Arc<Metadata>,
}

impl RaftService {
    pub fn new(meta: Arc<Metadata>) -> RaftService {
        RaftService { meta }
    }
}

fn decode<T: DeserializeOwned>(msg: Request<RaftMessage>) -> Result<T, Status> {
    serde_json::from_slice(&msg.into_inner().json).map_err(|e| {
        Status::invalid_argument(format!(
            "undecodable cluster RPC payload (are all nodes on the same Axle version?): {e}"
        ))
    })
}

fn encode<T: Serialize>(value: &T) -> Result<Response<RaftMessage>, Status> {
    let json = serde_json::to_vec(value).map_err(|e| Status::internal(format!("cannot encode the answer: {e}")))?;
    Ok(Response::new(RaftMessage { json: json.into() }))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(request)?;
        encode(&self.meta.raft().append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest<NodeId> = decode(request)?;
        encode(&self.meta.raft().vote(rpc).await)
    }

    async fn install_snapshot(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(request)?;
        encode(&self.meta.raft().install_snapshot(rpc).await)
    }

    async fn propose(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let cmd: MetaCommand = decode(request)?;
        encode(&self.meta.propose_local(cmd, FORWARDED_PROPOSE_TIMEOUT).await)
    }

    async fn join(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let req: JoinRequest = decode(request)?;
        encode(&self.meta.admit(req).await)
    }

    async fn remove_member(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let id: NodeId = decode(request)?;
        encode(&self.meta.evict(id).await)
    }

    async fn heartbeat(&self, request: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        let from = request.into_inner().node_id;
        let (recorded, leader) = self.meta.record_heartbeat(from);
        Ok(Response::new(HeartbeatResponse { recorded, leader_id: leader.unwrap_or(0) }))
    }
}
