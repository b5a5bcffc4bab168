//! Membership changes of the metadata Raft group (docs/replication.md).
//!
//! - **Join.** Every node, at every start, asks the Raft leader to make it a voter (`Join` RPC
//!   to any seed; a node that is not the leader answers `NotLeader` with the leader's address,
//!   which the joining node follows). The leader answers `AlreadyVoter` for a voter (a seed, or
//!   a joined node restarting), so this is idempotent; otherwise it adds the node as a learner,
//!   waits until it has caught up, and makes it a voter. Only then does the node propose its
//!   `RegisterNode`, which makes it a replica of every partition. A join under a node id the
//!   membership already holds with another address is refused: two nodes never share an id.
//! - **Remove.** [`Metadata::remove_node`] (any node; forwarded to the Raft leader) first
//!   commits `MetaCommand::RemoveNode` (the node leaves every replica set and ISR; a partition
//!   it led is fenced, epoch + 1, and the controller elects another ISR member), then removes
//!   it from the Raft membership. The last voter is never removed. Going from 3 voters to 2
//!   keeps the group available but it then tolerates no failure (a quorum of 2 is 2).
//! - A removed node that is still running sees itself gone from the state: it stops its
//!   heartbeats and controller and refuses proposals ([`ClusterError::Removed`]). Restarted
//!   with its configuration, it joins again as a new member.
//!
//! Membership changes on the leader are serialised (one at a time), as openraft requires.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use tokio::sync::watch;

use super::metadata::FORWARDED_PROPOSE_TIMEOUT;
use super::network::{JoinRequest, Joined, MembershipFailure};
use super::{ClusterError, MetaCommand, MetaReply, Metadata, NodeId};

/// How long the Raft leader waits for a new learner to catch up before it gives up (the
/// joining node retries, and the learner keeps catching up meanwhile).
pub const LEARNER_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a joining node waits for the answer to one `Join` RPC.
const JOIN_RPC_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`Metadata::remove_node`] keeps trying (no leader, a change in progress).
pub const REMOVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between attempts of a join or removal that did not go through.
const RETRY_PAUSE: Duration = Duration::from_millis(300);
/// Pause before asking again after a refused join (an operator must act first).
const REFUSED_PAUSE: Duration = Duration::from_secs(5);

impl Metadata {
    /// The voters of the metadata group as this node last saw the Raft membership, in id
    /// order. During a membership change (a joint configuration) this is the union of the old
    /// and the new voters.
    pub fn voters(&self) -> Vec<NodeId> {
        self.raft.metrics().borrow().membership_config.membership().voter_ids().collect()
    }

    /// The learners (non-voting members still catching up) of the metadata group as this node
    /// last saw the Raft membership, in id order.
    pub fn learners(&self) -> Vec<NodeId> {
        self.raft.metrics().borrow().membership_config.membership().learner_ids().collect()
    }

    /// True once this node, after registering, saw itself removed from the cluster: it no
    /// longer heartbeats, runs the controller or takes proposals.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::SeqCst)
    }

    /// Removes node `id` from the cluster; callable on any node (forwarded to the Raft leader,
    /// retried for up to [`REMOVE_TIMEOUT`] while there is no leader or another change is in
    /// progress). First `MetaCommand::RemoveNode` is committed (the node leaves every replica
    /// set and ISR, a partition it led is fenced and the controller elects another ISR
    /// member), then the node leaves the Raft membership. Removing the Raft leader itself is
    /// allowed: it steps down once the change is committed.
    ///
    /// Refused with [`ClusterError::LastVoter`] when `id` is the only voter, and with
    /// [`ClusterError::NotMember`] when `id` is unknown. Removing one of 3 voters leaves a
    /// group that no longer tolerates a failure.
    pub async fn remove_node(&self, id: NodeId) -> Result<(), ClusterError> {
        let start = Instant::now();
        // Set once an attempt may have removed the node without its answer reaching us.
        let mut maybe_done = false;
        let mut last = String::from("no Raft leader known");
        let mut hint: Option<String> = None;
        while start.elapsed() < REMOVE_TIMEOUT {
            let left = REMOVE_TIMEOUT.saturating_sub(start.elapsed());
            let outcome = if self.is_raft_leader() {
                Ok(self.evict(id).await)
            } else {
                match hint.take().or_else(|| self.raft_leader().and_then(|l| self.addr_of(l))) {
                    Some(addr) => self.peers.remove_member(&addr, id, left).await,
                    None => Ok(Err(MembershipFailure::NotLeader { leader: None, addr: None })),
                }
            };
            match outcome {
                Ok(Ok(())) => return Ok(()),
                // A previous attempt may have removed it before its answer was lost.
                Ok(Err(MembershipFailure::NotMember)) if maybe_done => return Ok(()),
                Ok(Err(MembershipFailure::NotMember)) => return Err(ClusterError::NotMember { id }),
                Ok(Err(MembershipFailure::LastVoter)) => return Err(ClusterError::LastVoter { id }),
                Ok(Err(MembershipFailure::Refused(why))) => return Err(ClusterError::MembershipRefused(why)),
                Ok(Err(MembershipFailure::NotLeader { leader, addr })) => {
                    last = format!("asked a node that is not the Raft leader (leader: {leader:?})");
                    hint = addr;
                }
                Ok(Err(MembershipFailure::Failed(why))) | Err(why) => {
                    maybe_done = true;
                    last = why;
                }
            }
            tracing::debug!(node = id, %last, "removal not done yet; retrying");
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        Err(ClusterError::MembershipTimeout { waited_ms: start.elapsed().as_millis() as u64, last })
    }

    /// The address this node is known by in the Raft membership: its own `cluster.seeds`
    /// entry for a seed (the group was initialised with those), else its advertised address.
    fn membership_addr(&self) -> String {
        let seed = self.cfg.seeds.iter().find(|(id, _)| *id == self.cfg.node_id);
        seed.map(|(_, a)| a.clone()).unwrap_or_else(|| self.cfg.advertised())
    }

    fn is_raft_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.cfg.node_id)
    }

    fn not_leader(&self) -> MembershipFailure {
        let leader = self.raft_leader().filter(|l| *l != self.cfg.node_id);
        MembershipFailure::NotLeader { leader, addr: leader.and_then(|l| self.addr_of(l)) }
    }

    /// The Raft leader's side of `Join`: makes `req.id` a voter (learner first, caught up).
    pub(super) async fn admit(&self, req: JoinRequest) -> Result<Joined, MembershipFailure> {
        if req.id == 0 {
            return Err(MembershipFailure::Refused("node id 0 is reserved; node ids start at 1".into()));
        }
        let _one_at_a_time = self.membership_lock.lock().await;
        if !self.is_raft_leader() {
            return Err(self.not_leader());
        }
        let current = self.raft.metrics().borrow().membership_config.clone();
        let membership = current.membership();
        if let Some(node) = membership.get_node(&req.id) {
            if node.addr != req.addr {
                return Err(MembershipFailure::Refused(format!(
                    "node id {} is already a member at {}, so a node at {} cannot join with it; give the new node \
                     another cluster.node_id, or remove node {} first",
                    req.id, node.addr, req.addr, req.id
                )));
            }
            if membership.get_joint_config().iter().all(|voters| voters.contains(&req.id)) {
                return Ok(Joined::AlreadyVoter);
            }
        }
        tracing::info!(node = req.id, addr = %req.addr, "adding a node to the metadata group as a learner");
        let add = self.raft.add_learner(req.id, BasicNode { addr: req.addr.clone() }, true);
        match tokio::time::timeout(LEARNER_CATCH_UP_TIMEOUT, add).await {
            Err(_) => {
                return Err(MembershipFailure::Failed(format!(
                    "learner {} did not catch up within {} ms",
                    req.id,
                    LEARNER_CATCH_UP_TIMEOUT.as_millis()
                )))
            }
            Ok(Err(e)) => return Err(write_failure(e)),
            Ok(Ok(_)) => {}
        }
        let voters = ChangeMembers::AddVoterIds(BTreeSet::from([req.id]));
        self.raft.change_membership(voters, false).await.map_err(write_failure)?;
        tracing::info!(node = req.id, "the node is now a voter of the metadata group");
        Ok(Joined::Added)
    }

    /// The Raft leader's side of a removal (see [`Metadata::remove_node`]).
    pub(super) async fn evict(&self, id: NodeId) -> Result<(), MembershipFailure> {
        let _one_at_a_time = self.membership_lock.lock().await;
        if !self.is_raft_leader() {
            return Err(self.not_leader());
        }
        let current = self.raft.metrics().borrow().membership_config.clone();
        let membership = current.membership();
        let in_raft = membership.get_node(&id).is_some();
        let is_voter = membership.voter_ids().any(|v| v == id);
        let registered = self.state().nodes.contains_key(&id);
        if !in_raft && !registered {
            return Err(MembershipFailure::NotMember);
        }
        if is_voter {
            let latest = membership.get_joint_config().last().cloned().unwrap_or_default();
            if latest.iter().filter(|v| **v != id).count() < 1 {
                return Err(MembershipFailure::LastVoter);
            }
        }
        if registered {
            match self.propose_local(MetaCommand::RemoveNode { id }, FORWARDED_PROPOSE_TIMEOUT).await {
                Ok(p) if p.reply == MetaReply::Applied => {
                    tracing::info!(node = id, "removed the node from the metadata")
                }
                Ok(p) => tracing::debug!(node = id, reply = ?p.reply, "RemoveNode not applied (already gone)"),
                Err(why) => return Err(MembershipFailure::Failed(format!("RemoveNode was not committed: {why:?}"))),
            }
        }
        if in_raft {
            let ids = BTreeSet::from([id]);
            let change = if is_voter { ChangeMembers::RemoveVoters(ids) } else { ChangeMembers::RemoveNodes(ids) };
            self.raft.change_membership(change, false).await.map_err(write_failure)?;
            tracing::info!(node = id, "removed the node from the metadata Raft group");
        }
        Ok(())
    }

    /// Asks the Raft leader until this node is a voter (a no-op answer for a voter). Returns
    /// early when `stop` fires.
    async fn join(&self, stop: &mut watch::Receiver<bool>) {
        let req = JoinRequest { id: self.cfg.node_id, addr: self.membership_addr() };
        let seeds: Vec<&String> =
            self.cfg.seeds.iter().filter(|(id, _)| *id != self.cfg.node_id).map(|(_, a)| a).collect();
        let mut next_seed = 0usize;
        let mut hint: Option<String> = None;
        loop {
            let outcome = if self.is_raft_leader() {
                Ok(self.admit(req.clone()).await)
            } else {
                let target = hint.take().or_else(|| self.raft_leader().and_then(|l| self.addr_of(l))).or_else(|| {
                    next_seed += 1;
                    seeds.get(next_seed % seeds.len().max(1)).map(|a| a.to_string())
                });
                match target {
                    Some(addr) => self.peers.join(&addr, &req, JOIN_RPC_TIMEOUT).await,
                    None => Err("no seed to ask and no Raft leader known yet".into()),
                }
            };
            let pause = match outcome {
                Ok(Ok(joined)) => {
                    if joined == Joined::Added {
                        tracing::info!(node = req.id, "joined the metadata group as a voter");
                    }
                    *self.join_refused.lock() = None;
                    return;
                }
                Ok(Err(MembershipFailure::NotLeader { addr: Some(addr), .. })) => {
                    hint = Some(addr);
                    Duration::from_millis(20)
                }
                Ok(Err(MembershipFailure::Refused(why))) => {
                    tracing::error!(node = req.id, %why, "the cluster refused this node's join");
                    *self.join_refused.lock() = Some(why);
                    REFUSED_PAUSE
                }
                Ok(Err(why)) => {
                    tracing::debug!(?why, "join not done yet; retrying");
                    RETRY_PAUSE
                }
                Err(why) => {
                    tracing::debug!(%why, "cannot ask to join yet; retrying");
                    RETRY_PAUSE
                }
            };
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Proposes `RegisterNode(me)` until it is applied and seen here (once per run: a state
    /// read from disk may predate a removal), then marks this node registered.
    async fn register(&self, stop: &mut watch::Receiver<bool>) {
        let mut state = self.watch();
        loop {
            let cmd = MetaCommand::RegisterNode(self.me.clone());
            tokio::select! {
                _ = stop.changed() => return,
                r = self.propose(cmd) => match r {
                    Ok(MetaReply::Applied) => break,
                    Ok(MetaReply::Rejected(why)) => tracing::warn!(%why, "registration rejected"),
                    Err(e) => tracing::debug!(error = %e, "registration not committed yet; retrying"),
                },
            }
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        let me = self.cfg.node_id;
        tokio::select! {
            _ = stop.changed() => return,
            _ = state.wait_for(|s| s.nodes.get(&me) == Some(&self.me)) => {}
        }
        self.registered.store(true, Ordering::SeqCst);
        tracing::info!(node = me, "registered in the cluster metadata");
    }
}

/// openraft's write error as a [`MembershipFailure`] (a forward to the leader is `NotLeader`).
fn write_failure(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> MembershipFailure {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            MembershipFailure::NotLeader { leader: f.leader_id, addr: f.leader_node.map(|n| n.addr) }
        }
        other => MembershipFailure::Failed(other.to_string()),
    }
}

/// The membership task of a node: join (ask to be a voter), register, then watch the state
/// until this node is removed from it.
pub(super) async fn join_and_register(weak: Weak<Metadata>, mut stop: watch::Receiver<bool>) {
    let mut state = {
        let Some(meta) = weak.upgrade() else { return };
        meta.join(&mut stop).await;
        meta.register(&mut stop).await;
        if !meta.registered.load(Ordering::SeqCst) {
            return;
        }
        meta.watch()
    };
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            changed = state.changed() => if changed.is_err() { return },
        }
        let Some(meta) = weak.upgrade() else { return };
        if !state.borrow_and_update().nodes.contains_key(&meta.cfg.node_id) {
            meta.removed.store(true, Ordering::SeqCst);
            tracing::error!(
                node = meta.cfg.node_id,
                "this node was removed from the cluster; it stops taking part (restart it to join again)"
            );
            return;
        }
    }
}
