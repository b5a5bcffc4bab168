//! The data path of replication (docs/replication.md): each partition's leader takes
//! appends and tracks its followers; followers pull sealed batches from the leader; a
//! `quorum` publish is acknowledged once its record is below the high watermark with the
//! epoch it was written under. Roles come from the metadata group ([`crate::cluster`]);
//! this module never decides leadership itself.
//!
//! Every node holds a replica of every partition. The log of each partition is put under a
//! high watermark, so that MQTT delivery, catch-up reads, gRPC `Fetch` and the exporter on
//! any node see committed records only.

mod follower;
mod forward;
pub mod leader;
mod service;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axle_log::{Partition, Record};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::cluster::{ClusterState, MetaCommand, MetaReply, Metadata, NodeId};
use crate::meta::MetaStore;
use leader::LeaderState;
pub use service::ReplicaService;

/// When a publish counts as acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acks {
    /// Once the leader has it durable. A leader failure can lose it.
    Leader,
    /// Once it is below the high watermark: on a majority of the replicas.
    #[default]
    Quorum,
}

impl std::str::FromStr for Acks {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "leader" => Ok(Acks::Leader),
            "quorum" => Ok(Acks::Quorum),
            _ => Err(format!("acks {s:?} is not \"leader\" or \"quorum\"")),
        }
    }
}

/// Why a replicated publish was not acknowledged. The client is not acknowledged either,
/// so it retries (with DUP): nothing acknowledged is lost.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(transparent)]
    Log(#[from] axle_log::LogError),
    #[error("partition {partition} has no leader right now (no in-sync replica is alive); retry later")]
    NoLeader { partition: String },
    #[error("partition {partition}: not committed within {timeout_ms} ms (too few in-sync replicas?); retry")]
    AckTimeout { partition: String, timeout_ms: u64 },
    #[error("partition {partition}: the record at offset {offset} was replaced after a leader change; retry")]
    Truncated { partition: String, offset: u64 },
    #[error("forwarding to the leader of {partition} (node {leader}) failed: {reason}")]
    Forward { partition: String, leader: NodeId, reason: String },
    #[error("partition {0} is not replicated by this node")]
    UnknownPartition(String),
}

/// Tunables of the data path.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// A follower not caught up for this long leaves the ISR (ms).
    pub lag_max_ms: u64,
    /// How long a `quorum` publish waits for the high watermark before it fails (ms).
    pub ack_timeout_ms: u64,
    /// Batch bytes per follower fetch.
    pub fetch_max_bytes: u32,
    /// How long a fetch at the tail may wait on the leader (ms).
    pub fetch_wait_ms: u32,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig { lag_max_ms: 3_000, ack_timeout_ms: 10_000, fetch_max_bytes: 1 << 20, fetch_wait_ms: 500 }
    }
}

/// This node's role for one partition.
#[derive(Debug, Clone)]
pub(crate) enum Role {
    Leader(LeaderState),
    Follower {
        leader: NodeId,
        epoch: u32,
    },
    /// No leader (or not yet known).
    Unassigned,
}

/// The public view of a role: who leads and under which epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Leadership {
    pub leader: Option<NodeId>,
    pub epoch: u32,
}

/// One partition's replication state on this node.
pub(crate) struct Replica {
    pub name: String,
    pub log: Partition,
    pub acks: Acks,
    /// An internal partition (name starting `__`, such as the session journal) whose records
    /// are not MQTT messages: forwarded as plain key and value.
    pub raw_records: bool,
    pub role: Mutex<Role>,
    /// Who leads under which epoch; changes with every role change (epochs never repeat),
    /// so a follower task exits as soon as it no longer matches.
    pub leadership: watch::Sender<Leadership>,
    /// The leader's log end after its last append: wakes fetches waiting at the tail.
    pub end: watch::Sender<u64>,
    pub forwarder: forward::Forwarder,
    /// High watermark last written to the metadata store.
    persisted_hw: Mutex<u64>,
}

/// The data path of one node. Shared behind an `Arc`.
pub struct Replicator {
    me: NodeId,
    meta: Arc<Metadata>,
    store: Arc<MetaStore>,
    cfg: ReplicaConfig,
    replicas: Vec<Arc<Replica>>,
    by_name: HashMap<String, usize>,
    peers: service::Peers,
    started: Instant,
}

/// A publish on its way: resolves with the first offset once acknowledged.
pub type Publishing = std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, ReplicaError>> + Send>>;

/// Column family of the metadata store holding high-watermark checkpoints.
const HW_FAMILY: &str = "replication";

impl Replicator {
    /// Puts every partition under a high watermark (starting from its checkpoint), registers
    /// them with the metadata group and starts following the assignment. `partitions` are the
    /// engine's partitions in id order, each with its stream's acks.
    pub fn start(
        meta: Arc<Metadata>,
        store: Arc<MetaStore>,
        partitions: Vec<(Partition, Acks)>,
        cfg: ReplicaConfig,
    ) -> Arc<Replicator> {
        let me = meta.node_id();
        let mut replicas = Vec::new();
        let mut by_name = HashMap::new();
        for (i, (log, acks)) in partitions.into_iter().enumerate() {
            let name = log.name().to_string();
            let hw = store
                .get(HW_FAMILY, name.as_bytes())
                .ok()
                .flatten()
                .and_then(|v| v.try_into().ok().map(u64::from_le_bytes))
                .unwrap_or(0)
                .min(log.log_end());
            log.enable_high_watermark(hw);
            by_name.insert(name.clone(), i);
            replicas.push(Arc::new(Replica {
                raw_records: name.starts_with(crate::stream::INTERNAL_PREFIX),
                name,
                acks,
                role: Mutex::new(Role::Unassigned),
                leadership: watch::channel(Leadership::default()).0,
                end: watch::channel(log.log_end()).0,
                forwarder: forward::Forwarder::default(),
                persisted_hw: Mutex::new(hw),
                log,
            }));
        }
        let r = Arc::new(Replicator {
            me,
            meta,
            store,
            cfg,
            replicas,
            by_name,
            peers: service::Peers::default(),
            started: Instant::now(),
        });
        tokio::spawn(r.clone().follow_assignment());
        tokio::spawn(r.clone().tick());
        r
    }

    /// The tonic service followers and forwarding nodes call; mount it on the cluster listener.
    pub fn service(self: &Arc<Self>) -> axle_proto::cluster::v1::replica_server::ReplicaServer<ReplicaService> {
        axle_proto::cluster::v1::replica_server::ReplicaServer::new(ReplicaService::new(self.clone()))
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    /// Asks the metadata group to create any partition it does not know yet.
    pub async fn register_partitions(&self) -> Result<(), crate::cluster::ClusterError> {
        let names = self.replicas.iter().map(|r| r.name.clone()).collect();
        self.meta.propose(MetaCommand::EnsurePartitions { names }).await.map(|_| ())
    }

    /// Who leads partition `pid`, as this node last learned it.
    pub fn leadership(&self, pid: usize) -> Leadership {
        self.replicas.get(pid).map(|r| *r.leadership.borrow()).unwrap_or_default()
    }

    pub fn node_id(&self) -> NodeId {
        self.me
    }

    /// The local partitions, in engine id order.
    pub fn partition_names(&self) -> Vec<String> {
        self.replicas.iter().map(|r| r.name.clone()).collect()
    }

    pub fn metadata(&self) -> &Arc<Metadata> {
        &self.meta
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub(crate) fn replica(&self, name: &str) -> Option<&Arc<Replica>> {
        self.by_name.get(name).map(|&i| &self.replicas[i])
    }

    /// Queues `records` for partition `pid` as one batch now (here when this node leads it,
    /// on the leader otherwise), so that publishes queued one after another keep their order,
    /// and returns a future resolving with the first offset once acknowledged under the
    /// stream's acks.
    pub fn publish(self: &Arc<Self>, pid: usize, records: Vec<Record>) -> Publishing {
        let Some(r) = self.replicas.get(pid).cloned() else {
            return Box::pin(std::future::ready(Err(ReplicaError::UnknownPartition(pid.to_string()))));
        };
        let leads = matches!(*r.role.lock(), Role::Leader(_));
        // Publishes still queued for forwarding go first, even if this node leads now.
        if leads && r.forwarder.idle() {
            return self.append_local(&r, &records);
        }
        let rx = r.forwarder.enqueue(self, &r, records);
        let name = r.name.clone();
        Box::pin(async move { rx.await.unwrap_or_else(|_| Err(forward::stopped(&name))) })
    }

    /// The leader's append, queued now: durable here, then (for `quorum`) committed.
    pub(crate) fn append_local(self: &Arc<Self>, r: &Arc<Replica>, records: &[Record]) -> Publishing {
        let pending = match r.log.append_start(records) {
            Ok(p) => p,
            Err(e) => return Box::pin(std::future::ready(Err(e.into()))),
        };
        let (me, r) = (self.clone(), r.clone());
        Box::pin(async move {
            let appended = pending.await?;
            me.on_appended(&r);
            if r.acks == Acks::Quorum {
                me.wait_committed(&r, appended.last_offset, appended.leader_epoch).await?;
            }
            Ok(appended.base_offset)
        })
    }

    /// After a local append: wake tail fetches and move the high watermark if the ISR allows.
    fn on_appended(&self, r: &Replica) {
        let end = r.log.log_end();
        r.end.send_if_modified(|e| {
            let grew = end > *e;
            *e = (*e).max(end);
            grew
        });
        let hw = match &mut *r.role.lock() {
            Role::Leader(l) => Some(l.advance(end)),
            _ => None,
        };
        if let Some(hw) = hw {
            r.log.set_high_watermark(hw);
        }
    }

    /// Waits until `last` is below the high watermark and still holds a batch of `epoch`.
    async fn wait_committed(&self, r: &Replica, last: u64, epoch: u32) -> Result<(), ReplicaError> {
        let timeout = Duration::from_millis(self.cfg.ack_timeout_ms);
        match tokio::time::timeout(timeout, r.log.wait_past(last)).await {
            Err(_) => {
                return Err(ReplicaError::AckTimeout { partition: r.name.clone(), timeout_ms: self.cfg.ack_timeout_ms })
            }
            Ok(res) => res?,
        }
        match r.log.epoch_at(last)? {
            Some(e) if e == epoch => Ok(()),
            _ => Err(ReplicaError::Truncated { partition: r.name.clone(), offset: last }),
        }
    }

    /// Applies every metadata change to the roles of the local partitions.
    async fn follow_assignment(self: Arc<Self>) {
        let mut rx = self.meta.watch();
        loop {
            let state = rx.borrow_and_update().clone();
            self.apply(&state);
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    fn apply(self: &Arc<Self>, state: &ClusterState) {
        let now = self.now_ms();
        for r in &self.replicas {
            let Some(pm) = state.partitions.get(&r.name) else { continue };
            let mut role = r.role.lock();
            let current = match &*role {
                Role::Leader(l) => Leadership { leader: Some(self.me), epoch: l.epoch() },
                Role::Follower { leader, epoch } => Leadership { leader: Some(*leader), epoch: *epoch },
                Role::Unassigned => Leadership::default(),
            };
            let wanted = Leadership { leader: pm.leader, epoch: pm.epoch };
            if current == wanted {
                if let Role::Leader(l) = &mut *role {
                    if l.isr() != pm.isr.as_slice() || l.replicas() != pm.replicas.as_slice() {
                        l.set_isr(pm.isr.clone(), pm.replicas.clone(), now);
                        let hw = l.advance(r.log.log_end());
                        drop(role);
                        r.log.set_high_watermark(hw);
                    }
                }
                continue;
            }
            *role = match pm.leader {
                Some(l) if l == self.me => {
                    if let Err(e) = r.log.set_leader_epoch(pm.epoch) {
                        tracing::error!(partition = %r.name, error = %e, "cannot take leadership");
                        continue;
                    }
                    tracing::info!(partition = %r.name, epoch = pm.epoch, "leading");
                    Role::Leader(LeaderState::new(
                        self.me,
                        pm,
                        r.log.log_end(),
                        r.log.high_watermark(),
                        self.cfg.lag_max_ms,
                        now,
                    ))
                }
                Some(l) => {
                    tracing::info!(partition = %r.name, leader = l, epoch = pm.epoch, "following");
                    Role::Follower { leader: l, epoch: pm.epoch }
                }
                None => Role::Unassigned,
            };
            drop(role);
            r.leadership.send_replace(wanted);
            if let Some(l) = pm.leader.filter(|&l| l != self.me) {
                tokio::spawn(follower::run(self.clone(), r.clone(), l, pm.epoch));
            }
        }
    }

    /// Every 100 ms: ISR changes a leader should propose, and high-watermark checkpoints.
    async fn tick(self: Arc<Self>) {
        let mut every = tokio::time::interval(Duration::from_millis(100));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let now = self.now_ms();
            for r in &self.replicas {
                let proposal = match &mut *r.role.lock() {
                    Role::Leader(l) => l.isr_change(now).map(|isr| (isr, l.epoch())),
                    _ => None,
                };
                if let Some((isr, epoch)) = proposal {
                    let cmd =
                        MetaCommand::SetIsr { partition: r.name.clone(), leader: self.me, epoch, isr: isr.clone() };
                    let (me, r) = (self.clone(), r.clone());
                    tokio::spawn(async move {
                        let outcome = me.meta.propose(cmd).await;
                        let ok = matches!(outcome, Ok(MetaReply::Applied));
                        if !ok {
                            tracing::warn!(partition = %r.name, ?isr, ?outcome, "ISR change not applied");
                            if let Role::Leader(l) = &mut *r.role.lock() {
                                l.proposal_failed();
                            }
                        } else {
                            tracing::info!(partition = %r.name, ?isr, "ISR changed");
                        }
                    });
                }
                self.checkpoint_hw(r);
            }
        }
    }

    fn checkpoint_hw(&self, r: &Replica) {
        let hw = r.log.high_watermark();
        let mut last = r.persisted_hw.lock();
        if hw != *last {
            if let Err(e) = self.store.put(HW_FAMILY, r.name.as_bytes(), &hw.to_le_bytes(), false) {
                tracing::warn!(partition = %r.name, error = %e, "high-watermark checkpoint failed");
                return;
            }
            *last = hw;
        }
    }
}
