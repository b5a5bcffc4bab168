//! `/api/v1/cluster`: this node's view of the cluster (docs/replication.md): members, and per
//! partition the leader, epoch, replicas, in-sync set and this node's replica positions.

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, ErrorBody, HttpState};

pub fn routes() -> Router<HttpState> {
    Router::new().route("/cluster", get(describe))
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
