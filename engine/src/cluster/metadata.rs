//! [`Metadata`]: one node's member of the metadata Raft group and its background loops.
//!
//! - Joining and registration ([`super::membership`]): this node asks the Raft leader to make
//!   it a voter (a no-op for a voter), then proposes `RegisterNode(me)` until it is applied here.
//! - Heartbeats: every `heartbeat_ms` this node tells the Raft leader it is alive (an RPC,
//!   not a Raft write).
//! - Controller: while this node is the Raft leader it keeps the heartbeats in a
//!   [`Controller`] and proposes the elections it decides, every `heartbeat_ms`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use axle_proto::cluster::v1::raft_server::RaftServer;
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, ServerState, SnapshotPolicy};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::controller::Controller;
use super::membership;
use super::network::{Network, Peers, ProposeFailure, Proposed};
use super::{
    store, ClusterConfig, ClusterError, ClusterState, MetaCommand, MetaReply, NodeId, NodeInfo, RaftService, TypeConfig,
};

/// How long [`Metadata::propose`] keeps trying (waiting for a leader, retrying forwards).
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a node waits for its own Raft node to commit a proposal another node forwarded.
pub const FORWARDED_PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Metadata::controlled_shutdown`] tries to move partition leadership away.
pub const CONTROLLED_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a node that forwarded a proposal waits to apply it itself before answering.
const READ_YOUR_WRITES_WAIT: Duration = Duration::from_secs(5);
/// Pause between attempts while there is no reachable leader.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The controller and the Raft term it took over in (a new term means a new take-over: the
/// liveness it had is stale).
struct ControllerSlot {
    controller: Controller,
    term: Option<u64>,
}

/// This node's view of, and voice in, the cluster metadata.
pub struct Metadata {
    pub(super) cfg: ClusterConfig,
    pub(super) me: NodeInfo,
    pub(super) raft: openraft::Raft<TypeConfig>,
    state: watch::Receiver<Arc<ClusterState>>,
    pub(super) peers: Peers,
    controller: Mutex<ControllerSlot>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    stopped: AtomicBool,
    /// Set once this node's registration was applied here in this run.
    pub(super) registered: AtomicBool,
    /// Set when, after registering, this node saw itself removed from the state.
    pub(super) removed: AtomicBool,
    /// Why the Raft leader last refused this node's join, until a join succeeds.
    pub(super) join_refused: Mutex<Option<String>>,
    /// Serialises the membership changes this node makes as the Raft leader.
    pub(super) membership_lock: tokio::sync::Mutex<()>,
}

fn validate(cfg: &ClusterConfig, me: &NodeInfo) -> Result<(), ClusterError> {
    let bad = |s: String| Err(ClusterError::Config(s));
    if cfg.node_id == 0 {
        return bad("cluster.node_id must be >= 1".into());
    }
    if me.id != cfg.node_id {
        return bad(format!("the node info's id {} differs from cluster.node_id {}", me.id, cfg.node_id));
    }
    if let Some((id, _)) = cfg.seeds.iter().find(|(id, _)| *id == 0) {
        return bad(format!("seed id {id} is invalid: node ids start at 1"));
    }
    let mut ids: Vec<_> = cfg.seeds.iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        return bad("cluster.seeds names a node id twice".into());
    }
    if ids.is_empty() {
        return bad("cluster.seeds is empty: list the initial voters (a new node joins through them)".into());
    }
    if cfg.heartbeat_ms == 0 || cfg.node_timeout_ms <= cfg.heartbeat_ms {
        return bad("cluster.heartbeat_ms must be > 0 and below cluster.node_timeout_ms".into());
    }
    Ok(())
}

fn raft_config(cfg: &ClusterConfig) -> Result<openraft::Config, ClusterError> {
    let hb = cfg.heartbeat_ms.max(20);
    openraft::Config {
        cluster_name: "axle".into(),
        heartbeat_interval: hb,
        election_timeout_min: hb * 4,
        election_timeout_max: hb * 8,
        install_snapshot_timeout: 5_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(1_000),
        max_in_snapshot_log_to_keep: 100,
        ..Default::default()
    }
    .validate()
    .map_err(|e| ClusterError::Config(format!("Raft timing from cluster.heartbeat_ms: {e}")))
}

impl Metadata {
    /// Opens the Raft store in `cfg.raft_dir`, starts the Raft node, initialises the group
    /// when this node is the lowest-id seed and the group has never been initialised, and
    /// starts the background loops (registration of `me`, heartbeats, controller). Serving the
    /// RPC is the caller's: mount [`Metadata::raft_service`] on `cfg.listen`.
    pub async fn start(cfg: ClusterConfig, me: NodeInfo) -> Result<Arc<Metadata>, ClusterError> {
        validate(&cfg, &me)?;
        let config = raft_config(&cfg)?;
        std::fs::create_dir_all(&cfg.raft_dir).map_err(|e| {
            ClusterError::Config(format!("cannot create the raft directory {}: {e}", cfg.raft_dir.display()))
        })?;
        let (log, sm) = store::open(&cfg.raft_dir)?;
        let state = sm.watch();
        let peers = Peers::default();
        let network = Network::new(cfg.node_id, peers.clone());
        let raft = openraft::Raft::new(cfg.node_id, Arc::new(config), network, log, sm)
            .await
            .map_err(|e| ClusterError::Stopped(e.to_string()))?;

        let lowest_seed = cfg.seeds.iter().map(|(id, _)| *id).min();
        if lowest_seed == Some(cfg.node_id)
            && !raft.is_initialized().await.map_err(|e| ClusterError::Stopped(e.to_string()))?
        {
            let members: BTreeMap<NodeId, BasicNode> =
                cfg.seeds.iter().map(|(id, addr)| (*id, BasicNode { addr: addr.clone() })).collect();
            match raft.initialize(members).await {
                Ok(()) => {
                    tracing::info!(node = cfg.node_id, "initialised the metadata Raft group with the seeds as voters")
                }
                // Already initialised (a vote or log exists): nothing to do.
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(ClusterError::Config(format!("cannot initialise the Raft group: {e}"))),
            }
        }

        let node_timeout = Duration::from_millis(cfg.node_timeout_ms);
        let period = Duration::from_millis(cfg.heartbeat_ms);
        let (stop, _) = watch::channel(false);
        let meta = Arc::new(Metadata {
            cfg,
            me,
            raft,
            state,
            peers,
            controller: Mutex::new(ControllerSlot { controller: Controller::new(node_timeout), term: None }),
            stop,
            tasks: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
            registered: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            join_refused: Mutex::new(None),
            membership_lock: tokio::sync::Mutex::new(()),
        });
        let weak = Arc::downgrade(&meta);
        let tasks =
            vec![
                tokio::spawn(membership::join_and_register(weak.clone(), meta.stop.subscribe())),
                tokio::spawn(every(weak.clone(), meta.stop.subscribe(), period, |m| async move {
                    m.send_heartbeat().await
                })),
                tokio::spawn(every(weak, meta.stop.subscribe(), period, |m| async move { m.control_once().await })),
            ];
        *meta.tasks.lock() = tasks;
        Ok(meta)
    }

    /// The gRPC service to mount on the cluster listener.
    pub fn raft_service(self: &Arc<Self>) -> RaftServer<RaftService> {
        RaftServer::new(RaftService::new(self.clone()))
    }

    /// The openraft node (for the RPC service and diagnostics).
    pub fn raft(&self) -> &openraft::Raft<TypeConfig> {
        &self.raft
    }

    /// The last applied state.
    pub fn state(&self) -> Arc<ClusterState> {
        self.state.borrow().clone()
    }

    /// A receiver of every applied state.
    pub fn watch(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.state.clone()
    }

    pub fn node_id(&self) -> NodeId {
        self.cfg.node_id
    }

    /// The Raft leader this node knows of.
    pub fn raft_leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// True while this node is the Raft leader, and so runs the controller.
    pub fn is_controller(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.cfg.node_id)
    }

    /// The cluster RPC address of `node`: from the Raft membership, else its registration.
    pub(super) fn addr_of(&self, node: NodeId) -> Option<String> {
        let from_membership =
            self.raft.metrics().borrow().membership_config.membership().get_node(&node).map(|n| n.addr.clone());
        from_membership.or_else(|| self.state().nodes.get(&node).map(|n| n.cluster_addr.clone()))
    }

    /// Proposes `cmd` through Raft and returns how it applied. On a node that is not the Raft
    /// leader the command is forwarded to the leader; this node's [`Metadata::state`] shows
    /// the result when this returns (unless applying here lags by more than a few seconds). Retries for up to [`PROPOSE_TIMEOUT`]
    /// while there is no reachable leader. A retried command may have been applied by an
    /// attempt whose answer was lost; every command is idempotent or a compare-and-set, so the
    /// retry then answers `Applied` or `Rejected` (stale), never applies twice.
    pub async fn propose(&self, cmd: MetaCommand) -> Result<MetaReply, ClusterError> {
        if self.is_removed() {
            return Err(ClusterError::Removed);
        }
        let start = Instant::now();
        let deadline = start + PROPOSE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClusterError::NoLeader { waited_ms: start.elapsed().as_millis() as u64 });
            }
            let leader = self.raft_leader();
            let remote = leader.filter(|l| *l != self.cfg.node_id).and_then(|l| self.addr_of(l).map(|a| (l, a)));
            match remote {
                Some((l, addr)) => match self.peers.propose(&addr, &cmd, left).await {
                    Ok(Ok(done)) => {
                        self.wait_applied(done.log_index, left.min(READ_YOUR_WRITES_WAIT)).await;
                        return Ok(done.reply);
                    }
                    Ok(Err(why)) => tracing::debug!(leader = l, ?why, "forwarded proposal not taken; retrying"),
                    Err(e) => tracing::debug!(leader = l, error = %e, "cannot forward a proposal; retrying"),
                },
                None => match self.propose_local(cmd.clone(), left).await {
                    Ok(done) => return Ok(done.reply),
                    Err(ProposeFailure::Stopped(why)) => return Err(ClusterError::Stopped(why)),
                    Err(why) => tracing::debug!(?why, "local proposal not taken; retrying"),
                },
            }
            tokio::time::sleep(RETRY_PAUSE.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }

    /// Proposes `cmd` to the local Raft node only (no forwarding), waiting up to `ttl` for it
    /// to be committed and applied here.
    pub async fn propose_local(&self, cmd: MetaCommand, ttl: Duration) -> Result<Proposed, ProposeFailure> {
        match tokio::time::timeout(ttl, self.raft.client_write(cmd)).await {
            Err(_) => Err(ProposeFailure::TimedOut),
            Ok(Ok(resp)) => Ok(Proposed { reply: resp.data, log_index: resp.log_id.index }),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(ProposeFailure::NotLeader { leader: f.leader_id })
            }
            Ok(Err(RaftError::APIError(e))) => Err(ProposeFailure::Stopped(e.to_string())),
            Ok(Err(RaftError::Fatal(e))) => Err(ProposeFailure::Stopped(e.to_string())),
        }
    }

    /// Waits up to `ttl` until this node has applied the log entry at `index`; a follower
    /// that lags is not an error (the state just shows the write a little later).
    async fn wait_applied(&self, index: u64, ttl: Duration) {
        let mut metrics = self.raft.metrics();
        let applied = metrics.wait_for(|m| m.last_applied.is_some_and(|l| l.index >= index));
        if tokio::time::timeout(ttl, applied).await.is_err() {
            tracing::debug!(index, "the forwarded proposal is not applied here yet");
        }
    }

    /// Waits until a Raft leader is known, this node is a voter (joined, for a node outside
    /// the seeds) and its registration of this run is applied. After `timeout` the error says
    /// why: [`ClusterError::JoinRefused`] when the leader refused the join (say, another node
    /// has this id), [`ClusterError::Removed`] when this node was removed, else
    /// [`ClusterError::NotReady`]. (It waits the whole `timeout` even then, so a caller that
    /// retries in a loop does not spin.)
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), ClusterError> {
        let start = Instant::now();
        loop {
            let removed = self.is_removed();
            if !removed && self.raft_leader().is_some() && self.registered.load(Ordering::SeqCst) {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                if removed {
                    return Err(ClusterError::Removed);
                }
                if let Some(why) = self.join_refused.lock().clone() {
                    return Err(ClusterError::JoinRefused(why));
                }
                return Err(ClusterError::NotReady { waited_ms: timeout.as_millis() as u64 });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Records a heartbeat from `node` if this node is the controller. Returns whether it was
    /// recorded and the Raft leader this node knows of.
    pub fn record_heartbeat(&self, node: NodeId) -> (bool, Option<NodeId>) {
        let leader = self.raft_leader();
        if !self.is_controller() {
            return (false, leader);
        }
        let mut slot = self.controller.lock();
        slot.controller.heartbeat(node, Instant::now());
        (slot.controller.is_active(), leader)
    }

    async fn send_heartbeat(&self) {
        if self.is_removed() {
            return;
        }
        let me = self.cfg.node_id;
        match self.raft_leader() {
            Some(l) if l == me => {
                self.record_heartbeat(me);
            }
            Some(l) => {
                let Some(addr) = self.addr_of(l) else { return };
                let ttl = Duration::from_millis(self.cfg.heartbeat_ms.max(500));
                if let Err(e) = self.peers.heartbeat(&addr, me, ttl).await {
                    tracing::debug!(leader = l, error = %e, "heartbeat to the controller failed");
                }
            }
            None => {}
        }
    }

    /// One controller round: take over or step down as Raft leadership says, then propose the
    /// elections the controller decides.
    async fn control_once(&self) {
        let now = Instant::now();
        let term = self.raft.metrics().borrow().current_term;
        let state = self.state();
        let commands = {
            let mut slot = self.controller.lock();
            if !self.is_controller() || self.is_removed() {
                if slot.controller.is_active() {
                    tracing::info!(node = self.cfg.node_id, "no longer the controller");
                    slot.controller.step_down();
                    slot.term = None;
                }
                return;
            }
            if slot.term != Some(term) {
                tracing::info!(node = self.cfg.node_id, term, "became the controller");
                slot.controller.take_over(&state, now);
                slot.controller.heartbeat(self.cfg.node_id, now);
                slot.term = Some(term);
            }
            slot.controller.decide(&state, now)
        };
        for cmd in commands {
            match self.propose_local(cmd.clone(), FORWARDED_PROPOSE_TIMEOUT).await.map(|p| p.reply) {
                Ok(MetaReply::Applied) => tracing::info!(?cmd, "controller moved partition leadership"),
                Ok(MetaReply::Rejected(why)) => tracing::debug!(?cmd, %why, "controller decision was stale"),
                Err(why) => {
                    tracing::warn!(?cmd, ?why, "controller could not commit a decision");
                    return;
                }
            }
        }
    }

    /// Whether `node` answers an RPC within a second (its cluster address is reachable).
    async fn probe(&self, node: NodeId) -> bool {
        match self.addr_of(node) {
            Some(addr) => self.peers.heartbeat(&addr, self.cfg.node_id, Duration::from_secs(1)).await.is_ok(),
            None => false,
        }
    }

    /// Moves the leadership of every partition this node leads to another live ISR member
    /// (epoch + 1, this node dropped from the ISR: it stops replicating), so that a rolling
    /// restart does not wait for `node_timeout_ms` failovers. Best effort within
    /// [`CONTROLLED_SHUTDOWN_TIMEOUT`]; partitions left (no other live ISR member, or no
    /// leader) fail over as usual once this node is gone.
    pub async fn controlled_shutdown(&self) -> Result<(), ClusterError> {
        let me = self.cfg.node_id;
        let start = Instant::now();
        let mut live: HashMap<NodeId, bool> = HashMap::new();
        loop {
            let state = self.state();
            let led: Vec<_> = state.partitions.iter().filter(|(_, p)| p.leader == Some(me)).collect();
            if led.is_empty() {
                return Ok(());
            }
            if start.elapsed() >= CONTROLLED_SHUTDOWN_TIMEOUT {
                return Err(ClusterError::HandOverIncomplete {
                    partitions: led.into_iter().map(|(n, _)| n.clone()).collect(),
                });
            }
            for (name, p) in led {
                let mut chosen = None;
                for c in p.isr.iter().filter(|n| **n != me && state.nodes.contains_key(n)) {
                    if let Some(up) = live.get(c) {
                        if *up {
                            chosen = Some(*c);
                            break;
                        }
                        continue;
                    }
                    let up = self.probe(*c).await;
                    live.insert(*c, up);
                    if up {
                        chosen = Some(*c);
                        break;
                    }
                }
                let Some(next) = chosen else {
                    tracing::warn!(partition = %name, "no other live ISR member to hand leadership to");
                    continue;
                };
                let cmd = MetaCommand::ElectLeader {
                    partition: name.clone(),
                    expected_epoch: p.epoch,
                    leader: next,
                    isr: p.isr.iter().copied().filter(|n| *n != me).collect(),
                };
                let left = CONTROLLED_SHUTDOWN_TIMEOUT.saturating_sub(start.elapsed());
                match tokio::time::timeout(left, self.propose(cmd)).await {
                    Ok(Ok(MetaReply::Applied)) => {
                        tracing::info!(partition = %name, leader = next, "handed over leadership")
                    }
                    Ok(Ok(MetaReply::Rejected(why))) => tracing::debug!(partition = %name, %why, "hand-over was stale"),
                    Ok(Err(e)) => tracing::warn!(partition = %name, error = %e, "hand-over not committed"),
                    Err(_) => break,
                }
            }
            // Probe again next round: a node may have come or gone.
            live.clear();
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Stops the background loops and the Raft node. The RocksDB store is closed once the
    /// caller has also dropped the RPC service (and every other `Arc<Metadata>`).
    pub async fn shutdown(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        self.stop.send_replace(true);
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for mut task in tasks {
            if tokio::time::timeout(Duration::from_secs(5), &mut task).await.is_err() {
                task.abort();
            }
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "the Raft node did not stop cleanly");
        }
    }
}

/// Runs `f` every `period` until `stop` fires or the [`Metadata`] is dropped.
async fn every<F, Fut>(weak: Weak<Metadata>, mut stop: watch::Receiver<bool>, period: Duration, f: F)
where
    F: Fn(Arc<Metadata>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        let Some(meta) = weak.upgrade() else { return };
        tokio::select! {
            _ = stop.changed() => return,
            _ = f(meta) => {}
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(period) => {}
        }
    }
}
