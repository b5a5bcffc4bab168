//! The cluster metadata layer of docs/replication.md: one Raft group (openraft 0.9) whose log
//! and state machine live in RocksDB under `<data_dir>/raft`, its network over the cluster gRPC
//! service (`axle.cluster.v1.Raft`), and the controller that runs on whichever node is the Raft
//! leader and moves partition leadership off nodes that stopped sending heartbeats.
//!
//! What goes through Raft is only the [`ClusterState`]: the members and, per partition, the
//! replicas, the leader, the leader epoch and the in-sync set (ISR). Record data never does.
//!
//! - [`state`]: the deterministic state machine ([`ClusterState::apply`]), pure and unit-tested.
//! - [`controller`]: the controller's decisions, sans-IO (time is passed in).
//! - [`store`]: the RocksDB Raft log and state machine (openraft storage v2).
//! - [`network`] and [`service`]: the gRPC client and server of the Raft RPC.
//! - [`metadata`]: [`Metadata`], which ties them together and runs the background loops.
//! - [`membership`]: joining the group (a node outside the seeds) and removing a node.

pub mod controller;
pub mod membership;
pub mod metadata;
pub mod network;
pub mod service;
pub mod state;
pub mod store;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use metadata::Metadata;
pub use service::RaftService;

/// A node's id in the cluster (`cluster.node_id`): unique, `>= 1`; 0 means "none" on the wire.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The openraft type configuration of the metadata group: commands are [`MetaCommand`]s,
    /// replies [`MetaReply`]s, and a node's address is its cluster RPC `host:port`.
    pub TypeConfig:
        D = MetaCommand,
        R = MetaReply,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The `[cluster]` settings the metadata layer needs.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub node_id: NodeId,
    /// The cluster RPC listener (served by the caller, see [`Metadata::raft_service`]).
    pub listen: SocketAddr,
    /// The address peers dial, `host:port`; empty = `listen`.
    pub advertise: String,
    /// The initial voters: (node id, `host:port` of its cluster RPC). A node not listed joins
    /// the running group through one of them (see [`membership`]).
    pub seeds: Vec<(NodeId, String)>,
    /// How often each node sends a liveness heartbeat to the controller, and the Raft
    /// heartbeat interval, in milliseconds.
    pub heartbeat_ms: u64,
    /// A partition leader not heard from for this many milliseconds is replaced.
    pub node_timeout_ms: u64,
    /// The RocksDB directory of the Raft log and state machine (`<data_dir>/raft`).
    pub raft_dir: PathBuf,
}

impl ClusterConfig {
    /// The address peers dial to reach this node: `advertise`, or `listen` when it is empty.
    pub fn advertised(&self) -> String {
        if self.advertise.is_empty() {
            self.listen.to_string()
        } else {
            self.advertise.clone()
        }
    }
}

/// A member's addresses, as it registered them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: NodeId,
    /// `host:port` of the cluster RPC (Raft, replication, forwarding).
    pub cluster_addr: String,
    /// `host:port` of the MQTT listener clients may be redirected to.
    pub mqtt_addr: String,
    /// `host:port` of the consumer gRPC API.
    pub grpc_addr: String,
}

/// The replication state of one partition.
///
/// Invariants kept by [`ClusterState::apply`]: `isr ⊆ replicas`; when `leader` is `Some(l)`,
/// `l ∈ isr`; `epoch` only grows, and grows with every change of leader.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct PartitionMeta {
    /// Every node holding a replica, in node id order.
    pub replicas: Vec<NodeId>,
    /// `None` while the partition has no leader (its leader was removed, or no ISR member
    /// was live): it is unavailable, never led by a node outside the ISR.
    pub leader: Option<NodeId>,
    /// The leader epoch, `>= 1`; a record batch carries the epoch it was written with.
    pub epoch: u32,
    /// The in-sync replicas, in preference order (elections take the first live one).
    pub isr: Vec<NodeId>,
}

/// The replicated metadata: the members and every partition, by log partition name.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ClusterState {
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    pub partitions: BTreeMap<String, PartitionMeta>,
}

/// A change to the [`ClusterState`], proposed through Raft. Each is validated when applied
/// (the compare-and-set rules are in [`ClusterState::apply`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum MetaCommand {
    /// Upserts a member's addresses. A new member becomes a replica (not yet an ISR member)
    /// of every existing partition.
    RegisterNode(NodeInfo),
    /// Drops a member from the nodes, every replica set and every ISR. A partition it led
    /// loses its leader (epoch + 1, leader `None`) and the controller elects a new one.
    RemoveNode { id: NodeId },
    /// Creates the missing partitions (idempotent): replicas = every known node, leaders spread
    /// round-robin (the i-th of the sorted new names is led by the i-th node, modulo the node
    /// count), epoch 1, isr = replicas.
    EnsurePartitions { names: Vec<String> },
    /// Replaces a partition's ISR. Compare-and-set: rejected unless `leader` and `epoch` are
    /// the partition's current ones; `isr` must contain `leader` and be a subset of replicas.
    SetIsr { partition: String, leader: NodeId, epoch: u32, isr: Vec<NodeId> },
    /// Makes `leader` the partition's leader with `epoch = expected_epoch + 1`. Compare-and-set
    /// on the epoch; `leader` must be a registered member of the current ISR (no unclean
    /// election), and `isr` must contain `leader` and be a subset of the current ISR.
    ElectLeader { partition: String, expected_epoch: u32, leader: NodeId, isr: Vec<NodeId> },
}

/// The outcome of applying one [`MetaCommand`]: every node computes the same one.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum MetaReply {
    Applied,
    /// The command was valid Raft input but broke a rule; nothing changed. The reason is for
    /// logs and operators.
    Rejected(String),
}

/// Errors of the metadata layer.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid cluster configuration: {0}")]
    Config(String),
    #[error("raft store at {path}: {source}; check the directory's permissions and free space")]
    Storage {
        path: String,
        #[source]
        source: rocksdb::Error,
    },
    #[error("raft store at {path} holds undecodable data ({detail}); it was written by an incompatible version or is damaged")]
    Corrupt { path: String, detail: String },
    #[error("the Raft node has stopped ({0}); restart the node")]
    Stopped(String),
    #[error("no Raft leader accepted the proposal within {waited_ms} ms; check that a majority of the cluster is up and that nodes reach each other's cluster.listen addresses")]
    NoLeader { waited_ms: u64 },
    #[error("controlled shutdown could not hand over {partitions:?} (no other live ISR member, or no leader to commit it); they fail over after cluster.node_timeout_ms")]
    HandOverIncomplete { partitions: Vec<String> },
    #[error("this node did not see a Raft leader and its own registration within {waited_ms} ms; check that a majority of cluster.seeds is up")]
    NotReady { waited_ms: u64 },
    #[error("the cluster refused this node's join: {0}")]
    JoinRefused(String),
    #[error("node {id} is not a member of the cluster (neither a Raft voter or learner nor registered); check the id against the admin API's members")]
    NotMember { id: NodeId },
    #[error("node {id} is the last voter of the metadata group and cannot be removed; add another node first")]
    LastVoter { id: NodeId },
    #[error("the membership change was refused: {0}")]
    MembershipRefused(String),
    #[error("the membership change did not complete within {waited_ms} ms (last attempt: {last}); check that a majority of the voters is up, then retry")]
    MembershipTimeout { waited_ms: u64, last: String },
    #[error(
        "this node was removed from the cluster and no longer takes part in it; stop it, or restart it to join again"
    )]
    Removed,
}
