//! `/api/v1/cluster`: this node's view of the cluster (docs/replication.md): members, and per
//! partition the leader, epoch, replicas, in-sync set and this node's replica positions.

use axle_engine::cluster::ClusterError;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::Router;
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, ErrorBody, HttpState, Path};

pub fn routes() -> Router<HttpState> {
    Router::new().route("/cluster", get(describe)).route("/cluster/nodes/{id}", delete(remove_node))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NodeView {
    pub id: u64,
    /// Cluster RPC address (Raft and replication).
    pub cluster_addr: String,
    pub mqtt_addr: String,
    pub grpc_addr: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterPartitionView {
    /// Log partition name, `<stream>-<n>`.
    pub name: String,
    /// Node id of the leader; `null` while there is none.
    pub leader: Option<u64>,
    pub epoch: u32,
    pub replicas: Vec<u64>,
    pub isr: Vec<u64>,
    /// This node's high watermark: records below it are committed.
    pub high_watermark: u64,
    /// This node's log end, uncommitted records included.
    pub log_end: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterView {
    /// False on a single broker (`[cluster] enabled = false`); the lists are then empty.
    pub enabled: bool,
    /// This node's id (0 on a single broker).
    pub node_id: u64,
    /// The Raft leader of the metadata group, which is also the controller.
    pub controller: Option<u64>,
    pub nodes: Vec<NodeView>,
    pub partitions: Vec<ClusterPartitionView>,
}

/// This node's view of the cluster: members, partition leaders, epochs and in-sync sets.
#[utoipa::path(get, path = "/api/v1/cluster", tag = "cluster",
    responses((status = 200, body = ClusterView), (status = 401, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub(super) async fn describe(State(s): State<HttpState>) -> Result<axum::Json<ClusterView>, ApiError> {
    let engine = &s.hub.engine;
    let Some(rep) = engine.replicator() else {
        return Ok(axum::Json(ClusterView {
            enabled: false,
            node_id: 0,
            controller: None,
            nodes: Vec::new(),
            partitions: Vec::new(),
        }));
    };
    let meta = rep.metadata();
    let state = meta.state();
    let nodes = state
        .nodes
        .values()
        .map(|n| NodeView {
            id: n.id,
            cluster_addr: n.cluster_addr.clone(),
            mqtt_addr: n.mqtt_addr.clone(),
            grpc_addr: n.grpc_addr.clone(),
        })
        .collect();
    let partitions = engine
        .partitions()
        .iter()
        .map(|p| {
            let pm = state.partitions.get(&p.name).cloned().unwrap_or_default();
            ClusterPartitionView {
                name: p.name.clone(),
                leader: pm.leader,
                epoch: pm.epoch,
                replicas: pm.replicas,
                isr: pm.isr,
                high_watermark: p.log.high_watermark(),
                log_end: p.log.log_end(),
            }
        })
        .collect();
    Ok(axum::Json(ClusterView {
        enabled: true,
        node_id: rep.node_id(),
        controller: meta.raft_leader(),
        nodes,
        partitions,
    }))
}

/// Removes node `id` from the cluster: out of every partition's replicas and in-sync set
/// (partitions it led get a new leader with a higher epoch), then out of the metadata
/// group's voters. Going from 3 nodes to 2 loses fault tolerance. Stop the removed node
/// afterwards: restarted with its old configuration, it would join again.
#[utoipa::path(delete, path = "/api/v1/cluster/nodes/{id}", tag = "cluster",
    params(("id" = u64, Path, description = "The node id (`cluster.node_id`)")),
    responses((status = 204, description = "Removed"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 500, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn remove_node(State(s): State<HttpState>, Path(id): Path<u64>) -> Result<StatusCode, ApiError> {
    let Some(rep) = s.hub.engine.replicator() else {
        return Err(ApiError::conflict(
            "this broker runs alone ([cluster] enabled = false): there is no node to remove",
        ));
    };
    match rep.metadata().remove_node(id).await {
        Ok(()) => {
            tracing::info!(node = id, "node removed from the cluster through the admin API");
            Ok(StatusCode::NO_CONTENT)
        }
        Err(e @ ClusterError::NotMember { .. }) => Err(ApiError::not_found(e.to_string())),
        Err(e @ (ClusterError::LastVoter { .. } | ClusterError::MembershipRefused(_))) => {
            Err(ApiError::conflict(e.to_string()))
        }
        Err(e) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}
