//! The controller's decisions, sans-IO: liveness from heartbeats and the leader elections that
//! follow from it. The caller feeds it heartbeats and the current time, asks for
//! [`Controller::decide`] and proposes the returned commands through Raft; every command is a
//! compare-and-set on the epoch, so a decision made on a stale view is rejected, not harmful.
//!
//! Rules (docs/replication.md):
//! - A node is live when it was seen less than `node_timeout` ago. A controller that takes
//!   over considers every node just seen, so a new Raft leader never fails partitions over
//!   before it has waited a full timeout itself.
//! - A partition whose leader is not live, or is no longer a member, gets the first live
//!   member of its ISR other than that leader, with `isr = old isr − old leader`.
//! - No unclean election: when no other ISR member is live the partition keeps its (dead)
//!   leader and waits. A partition with no leader at all (its leader was removed) gets the
//!   first live ISR member as soon as there is one, with its ISR unchanged.
//! - An ISR member that is not the leader dying is left to the partition leader, which shrinks
//!   the ISR with `SetIsr`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{ClusterState, MetaCommand, NodeId};

/// Liveness bookkeeping of the controller. Only meaningful while this node is the Raft leader.
#[derive(Debug)]
pub struct Controller {
    node_timeout: Duration,
    /// Last time each node was heard from; `None` of the map while not the controller.
    last_seen: Option<HashMap<NodeId, Instant>>,
}

impl Controller {
    /// A controller that considers a node dead `node_timeout` after its last heartbeat.
    pub fn new(node_timeout: Duration) -> Controller {
        Controller { node_timeout, last_seen: None }
    }

    /// True between [`Controller::take_over`] and [`Controller::step_down`].
    pub fn is_active(&self) -> bool {
        self.last_seen.is_some()
    }

    /// This node became the Raft leader at `now`: every member counts as just seen.
    pub fn take_over(&mut self, state: &ClusterState, now: Instant) {
        self.last_seen = Some(state.nodes.keys().map(|id| (*id, now)).collect());
    }

    /// This node is no longer the Raft leader; forget liveness.
    pub fn step_down(&mut self) {
        self.last_seen = None;
    }

    /// `node` was heard from at `now`. Ignored while not active.
    pub fn heartbeat(&mut self, node: NodeId, now: Instant) {
        if let Some(seen) = &mut self.last_seen {
            let at = seen.entry(node).or_insert(now);
            *at = (*at).max(now);
        }
    }

    /// Whether `node` was heard from less than the timeout before `now`. Nodes the controller
    /// has never heard of are not live.
    pub fn is_live(&self, node: NodeId, now: Instant) -> bool {
        match self.last_seen.as_ref().and_then(|s| s.get(&node)) {
            Some(at) => now.saturating_duration_since(*at) < self.node_timeout,
            None => false,
        }
    }

    /// The elections `state` needs at `now`, at most one per partition. Members registered
    /// after the take-over are counted as seen when first noticed here. Empty while not active.
    pub fn decide(&mut self, state: &ClusterState, now: Instant) -> Vec<MetaCommand> {
        let Some(seen) = &mut self.last_seen else { return Vec::new() };
        for id in state.nodes.keys() {
            seen.entry(*id).or_insert(now);
        }
        let live = |n: &NodeId| state.nodes.contains_key(n) && self.is_live(*n, now);
        let mut out = Vec::new();
        for (name, p) in &state.partitions {
            match p.leader {
                Some(l) if live(&l) => {}
                Some(dead) => {
                    if let Some(next) = p.isr.iter().find(|n| **n != dead && live(n)) {
                        out.push(MetaCommand::ElectLeader {
                            partition: name.clone(),
                            expected_epoch: p.epoch,
                            leader: *next,
                            isr: p.isr.iter().copied().filter(|n| *n != dead).collect(),
                        });
                    }
                }
                None => {
                    if let Some(next) = p.isr.iter().find(|n| live(n)) {
                        out.push(MetaCommand::ElectLeader {
                            partition: name.clone(),
                            expected_epoch: p.epoch,
                            leader: *next,
                            isr: p.isr.clone(),
                        });
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{MetaReply, NodeInfo};

    const TIMEOUT: Duration = Duration::from_secs(3);

    fn state(nodes: &[NodeId], partitions: &[&str]) -> ClusterState {
        let mut s = ClusterState::default();
        for id in nodes {
            let info = NodeInfo {
                id: *id,
                cluster_addr: format!("n{id}:9700"),
                mqtt_addr: String::new(),
                grpc_addr: String::new(),
            };
            s.apply(&MetaCommand::RegisterNode(info));
        }
        s.apply(&MetaCommand::EnsurePartitions { names: partitions.iter().map(|p| p.to_string()).collect() });
        s
    }

    /// A controller that took over at `t0` and has since heard from `alive` at `t`.
    fn controller(s: &ClusterState, t0: Instant, alive: &[NodeId], t: Instant) -> Controller {
        let mut c = Controller::new(TIMEOUT);
        c.take_over(s, t0);
        for n in alive {
            c.heartbeat(*n, t);
        }
        c
    }

    #[test]
    fn dead_leader_is_replaced_by_the_first_live_isr_member_with_epoch_plus_one() {
        let mut s = state(&[1, 2, 3], &["a-0", "a-1"]);
        let t0 = Instant::now();
        let later = t0 + TIMEOUT + Duration::from_millis(1);
        let mut c = controller(&s, t0, &[2, 3], later);
        let cmds = c.decide(&s, later);
        assert_eq!(
            cmds,
            vec![MetaCommand::ElectLeader { partition: "a-0".into(), expected_epoch: 1, leader: 2, isr: vec![2, 3] }]
        );
        assert_eq!(s.apply(&cmds[0]), MetaReply::Applied);
        assert_eq!((s.partitions["a-0"].leader, s.partitions["a-0"].epoch), (Some(2), 2));
        assert!(c.decide(&s, later).is_empty(), "nothing left to do once applied");
    }

    #[test]
    fn a_new_controller_waits_a_full_timeout_before_failing_over() {
        let s = state(&[1, 2, 3], &["a-0"]);
        let t0 = Instant::now();
        let mut c = controller(&s, t0, &[2, 3], t0 + TIMEOUT);
        assert!(c.decide(&s, t0 + TIMEOUT - Duration::from_millis(1)).is_empty());
        assert_eq!(c.decide(&s, t0 + TIMEOUT).len(), 1, "node 1 has been silent since the take-over");
    }

    #[test]
    fn no_unclean_election_when_no_other_isr_member_is_live() {
        let mut s = state(&[1, 2, 3], &["a-0"]);
        s.apply(&MetaCommand::SetIsr { partition: "a-0".into(), leader: 1, epoch: 1, isr: vec![1] });
        let t0 = Instant::now();
        let later = t0 + TIMEOUT * 2;
        let mut c = controller(&s, t0, &[2, 3], later);
        assert!(c.decide(&s, later).is_empty(), "2 and 3 are live but not in the ISR");
        assert_eq!(s.partitions["a-0"].leader, Some(1));
    }

    #[test]
    fn the_isr_order_decides_and_dead_members_are_skipped() {
        let mut s = state(&[1, 2, 3], &["a-0"]);
        s.apply(&MetaCommand::SetIsr { partition: "a-0".into(), leader: 1, epoch: 1, isr: vec![1, 3, 2] });
        let t0 = Instant::now();
        let later = t0 + TIMEOUT * 2;
        let mut c = controller(&s, t0, &[2], later);
        assert_eq!(
            c.decide(&s, later),
            vec![MetaCommand::ElectLeader { partition: "a-0".into(), expected_epoch: 1, leader: 2, isr: vec![3, 2] }]
        );
    }

    #[test]
    fn partition_without_leader_gets_one_when_an_isr_member_returns() {
        let mut s = state(&[1, 2, 3], &["a-0"]);
        s.apply(&MetaCommand::RemoveNode { id: 1 });
        assert_eq!(s.partitions["a-0"].leader, None);
        let t0 = Instant::now();
        let later = t0 + TIMEOUT * 2;
        let mut c = controller(&s, t0, &[], later);
        assert!(c.decide(&s, later).is_empty(), "no ISR member is live");
        c.heartbeat(3, later);
        let cmds = c.decide(&s, later);
        assert_eq!(
            cmds,
            vec![MetaCommand::ElectLeader { partition: "a-0".into(), expected_epoch: 2, leader: 3, isr: vec![2, 3] }]
        );
        assert_eq!(s.apply(&cmds[0]), MetaReply::Applied);
        assert_eq!((s.partitions["a-0"].leader, s.partitions["a-0"].epoch), (Some(3), 3));
    }

    #[test]
    fn a_dead_follower_is_left_to_the_partition_leader() {
        let s = state(&[1, 2, 3], &["a-0"]);
        let t0 = Instant::now();
        let later = t0 + TIMEOUT * 2;
        let mut c = controller(&s, t0, &[1, 2], later);
        assert!(c.decide(&s, later).is_empty(), "3 is dead but only an ISR member");
    }

    #[test]
    fn an_inactive_controller_decides_nothing() {
        let s = state(&[1, 2], &["a-0"]);
        let mut c = Controller::new(TIMEOUT);
        let later = Instant::now() + TIMEOUT * 2;
        assert!(c.decide(&s, later).is_empty());
        c.take_over(&s, Instant::now());
        c.step_down();
        assert!(!c.is_active());
        assert!(c.decide(&s, later).is_empty());
    }

    #[test]
    fn a_member_registered_after_take_over_counts_as_seen_when_noticed() {
        let mut s = state(&[1, 2], &[]);
        let t0 = Instant::now();
        let mut c = controller(&s, t0, &[], t0);
        let t1 = t0 + TIMEOUT * 2;
        s.apply(&MetaCommand::RegisterNode(NodeInfo {
            id: 3,
            cluster_addr: "n3:9700".into(),
            mqtt_addr: String::new(),
            grpc_addr: String::new(),
        }));
        c.decide(&s, t1);
        assert!(c.is_live(3, t1));
        assert!(!c.is_live(1, t1));
    }
}
