//! The metadata state machine: [`ClusterState::apply`] is a pure, deterministic function of
//! the state and one command, so every replica of the Raft log computes the same state and the
//! same [`MetaReply`]. Invalid commands are answered `Rejected` with a reason and change nothing;
//! applying never fails.

use super::{ClusterState, MetaCommand, MetaReply, NodeId, PartitionMeta};

impl ClusterState {
    /// Applies `cmd` (rules in [`MetaCommand`]'s docs) and says whether it took effect.
    pub fn apply(&mut self, cmd: &MetaCommand) -> MetaReply {
        match self.check_and_apply(cmd) {
            Ok(()) => MetaReply::Applied,
            Err(reason) => MetaReply::Rejected(reason),
        }
    }

    /// The node ids of every member, in id order.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    fn check_and_apply(&mut self, cmd: &MetaCommand) -> Result<(), String> {
        match cmd {
            MetaCommand::RegisterNode(info) => {
                if info.id == 0 {
                    return Err("node id 0 is reserved; node ids start at 1".into());
                }
                let new = self.nodes.insert(info.id, info.clone()).is_none();
                if new {
                    for p in self.partitions.values_mut() {
                        if !p.replicas.contains(&info.id) {
                            p.replicas.push(info.id);
                            p.replicas.sort_unstable();
                        }
                    }
                }
                Ok(())
            }
            MetaCommand::RemoveNode { id } => {
                if self.nodes.remove(id).is_none() {
                    return Err(format!("node {id} is not a member"));
                }
                for p in self.partitions.values_mut() {
                    p.replicas.retain(|r| r != id);
                    p.isr.retain(|r| r != id);
                    if p.leader == Some(*id) {
                        // Fence the removed leader: anything it still writes has a stale epoch.
                        p.leader = None;
                        p.epoch += 1;
                    }
                }
                Ok(())
            }
            MetaCommand::EnsurePartitions { names } => {
                if let Some(bad) = names.iter().find(|n| n.is_empty()) {
                    return Err(format!("invalid partition name {bad:?}"));
                }
                let mut new: Vec<&String> = names.iter().filter(|n| !self.partitions.contains_key(*n)).collect();
                new.sort();
                new.dedup();
                if new.is_empty() {
                    return Ok(());
                }
                let nodes = self.node_ids();
                if nodes.is_empty() {
                    return Err("no node is registered yet, so new partitions would have no replica".into());
                }
                for (i, name) in new.into_iter().enumerate() {
                    let meta = PartitionMeta {
                        replicas: nodes.clone(),
                        leader: Some(nodes[i % nodes.len()]),
                        epoch: 1,
                        isr: nodes.clone(),
                    };
                    self.partitions.insert(name.clone(), meta);
                }
                Ok(())
            }
            MetaCommand::SetIsr { partition, leader, epoch, isr } => {
                let p = self.partitions.get_mut(partition).ok_or_else(|| format!("no partition {partition:?}"))?;
                if p.leader != Some(*leader) || p.epoch != *epoch {
                    return Err(format!(
                        "stale SetIsr on {partition:?}: proposed by leader {leader} at epoch {epoch}, current leader {:?} at epoch {}",
                        p.leader, p.epoch
                    ));
                }
                let isr = dedup_keep_order(isr);
                if !isr.contains(leader) {
                    return Err(format!("ISR {isr:?} of {partition:?} must contain its leader {leader}"));
                }
                if let Some(r) = isr.iter().find(|r| !p.replicas.contains(r)) {
                    return Err(format!("node {r} is not a replica of {partition:?}"));
                }
                p.isr = isr;
                Ok(())
            }
            MetaCommand::ElectLeader { partition, expected_epoch, leader, isr } => {
                let registered = self.nodes.contains_key(leader);
                let p = self.partitions.get_mut(partition).ok_or_else(|| format!("no partition {partition:?}"))?;
                if p.epoch != *expected_epoch {
                    return Err(format!(
                        "stale ElectLeader on {partition:?}: expected epoch {expected_epoch}, current epoch {}",
                        p.epoch
                    ));
                }
                if !registered {
                    return Err(format!("node {leader} is not a member"));
                }
                if !p.isr.contains(leader) {
                    return Err(format!(
                        "node {leader} is not in the ISR {:?} of {partition:?}; unclean elections are not allowed",
                        p.isr
                    ));
                }
                let isr = dedup_keep_order(isr);
                if !isr.contains(leader) {
                    return Err(format!("ISR {isr:?} of {partition:?} must contain its leader {leader}"));
                }
                if let Some(r) = isr.iter().find(|r| !p.isr.contains(r)) {
                    return Err(format!("an election cannot add node {r} to the ISR of {partition:?}"));
                }
                p.leader = Some(*leader);
                p.epoch = expected_epoch + 1;
                p.isr = isr;
                Ok(())
            }
        }
    }
}

/// `ids` without repeats, first occurrence kept (ISR order is the election preference).
fn dedup_keep_order(ids: &[NodeId]) -> Vec<NodeId> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if !out.contains(id) {
            out.push(*id);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::NodeInfo;

    fn node(id: NodeId) -> NodeInfo {
        NodeInfo {
            id,
            cluster_addr: format!("127.0.0.1:{}", 9700 + id),
            mqtt_addr: format!("127.0.0.1:{}", 1880 + id),
            grpc_addr: format!("127.0.0.1:{}", 9090 + id),
        }
    }

    fn three_nodes() -> ClusterState {
        let mut s = ClusterState::default();
        for id in 1..=3 {
            assert_eq!(s.apply(&MetaCommand::RegisterNode(node(id))), MetaReply::Applied);
        }
        s
    }

    fn ensure(s: &mut ClusterState, names: &[&str]) -> MetaReply {
        s.apply(&MetaCommand::EnsurePartitions { names: names.iter().map(|n| n.to_string()).collect() })
    }

    fn rejected(r: MetaReply) -> String {
        match r {
            MetaReply::Rejected(why) => why,
            MetaReply::Applied => panic!("expected a rejection"),
        }
    }

    #[test]
    fn register_node_upserts_addresses() {
        let mut s = three_nodes();
        let mut moved = node(2);
        moved.mqtt_addr = "10.0.0.2:1883".into();
        assert_eq!(s.apply(&MetaCommand::RegisterNode(moved.clone())), MetaReply::Applied);
        assert_eq!(s.nodes.len(), 3);
        assert_eq!(s.nodes[&2], moved);
        assert!(rejected(s.apply(&MetaCommand::RegisterNode(node(0)))).contains("reserved"));
    }

    #[test]
    fn ensure_partitions_spreads_leaders_round_robin_over_sorted_new_names() {
        let mut s = three_nodes();
        assert_eq!(ensure(&mut s, &["t-3", "t-0", "t-2", "t-1"]), MetaReply::Applied);
        let leaders: Vec<_> = ["t-0", "t-1", "t-2", "t-3"].iter().map(|n| s.partitions[*n].leader).collect();
        assert_eq!(leaders, vec![Some(1), Some(2), Some(3), Some(1)]);
        let p = &s.partitions["t-0"];
        assert_eq!((p.epoch, p.replicas.clone(), p.isr.clone()), (1, vec![1, 2, 3], vec![1, 2, 3]));
    }

    #[test]
    fn ensure_partitions_is_idempotent_and_keeps_existing_ones() {
        let mut s = three_nodes();
        ensure(&mut s, &["a-0"]);
        s.apply(&MetaCommand::SetIsr { partition: "a-0".into(), leader: 1, epoch: 1, isr: vec![1, 2] });
        let before = s.clone();
        assert_eq!(ensure(&mut s, &["a-0"]), MetaReply::Applied);
        assert_eq!(s, before);
        ensure(&mut s, &["a-0", "b-0"]);
        assert_eq!(s.partitions["a-0"], before.partitions["a-0"]);
        assert_eq!(s.partitions["b-0"].leader, Some(1), "the first of the new names takes the first node");
    }

    #[test]
    fn ensure_partitions_without_nodes_is_rejected() {
        let mut s = ClusterState::default();
        assert!(rejected(ensure(&mut s, &["a-0"])).contains("no node"));
        assert!(s.partitions.is_empty());
    }

    #[test]
    fn set_isr_is_a_compare_and_set_on_leader_and_epoch() {
        let mut s = three_nodes();
        ensure(&mut s, &["a-0"]);
        let shrink = |leader, epoch| MetaCommand::SetIsr { partition: "a-0".into(), leader, epoch, isr: vec![1, 3] };
        assert!(rejected(s.apply(&shrink(2, 1))).contains("stale"));
        assert!(rejected(s.apply(&shrink(1, 2))).contains("stale"));
        assert_eq!(s.apply(&shrink(1, 1)), MetaReply::Applied);
        assert_eq!(s.partitions["a-0"].isr, vec![1, 3]);
    }

    #[test]
    fn set_isr_must_contain_the_leader_and_only_replicas() {
        let mut s = three_nodes();
        ensure(&mut s, &["a-0"]);
        let set = |isr| MetaCommand::SetIsr { partition: "a-0".into(), leader: 1, epoch: 1, isr };
        assert!(rejected(s.apply(&set(vec![2, 3]))).contains("must contain its leader"));
        assert!(rejected(s.apply(&set(vec![1, 7]))).contains("not a replica"));
        assert!(rejected(s.apply(&MetaCommand::SetIsr {
            partition: "nope".into(),
            leader: 1,
            epoch: 1,
            isr: vec![1]
        }))
        .contains("no partition"));
        assert_eq!(s.partitions["a-0"].isr, vec![1, 2, 3]);
    }

    #[test]
    fn elect_leader_bumps_the_epoch_and_rejects_a_stale_epoch() {
        let mut s = three_nodes();
        ensure(&mut s, &["a-0"]);
        let elect = |e, leader| MetaCommand::ElectLeader {
            partition: "a-0".into(),
            expected_epoch: e,
            leader,
            isr: vec![leader, 3],
        };
        assert_eq!(s.apply(&elect(1, 2)), MetaReply::Applied);
        let p = &s.partitions["a-0"];
        assert_eq!((p.leader, p.epoch, p.isr.clone()), (Some(2), 2, vec![2, 3]));
        // A second controller acting on the same old view loses the race.
        assert!(rejected(s.apply(&elect(1, 3))).contains("stale"));
        assert_eq!(s.partitions["a-0"].leader, Some(2));
    }

    #[test]
    fn elect_leader_never_picks_a_node_outside_the_isr() {
        let mut s = three_nodes();
        ensure(&mut s, &["a-0"]);
        s.apply(&MetaCommand::SetIsr { partition: "a-0".into(), leader: 1, epoch: 1, isr: vec![1] });
        let why = rejected(s.apply(&MetaCommand::ElectLeader {
            partition: "a-0".into(),
            expected_epoch: 1,
            leader: 2,
            isr: vec![2],
        }));
        assert!(why.contains("unclean"), "{why}");
        let grow = MetaCommand::ElectLeader { partition: "a-0".into(), expected_epoch: 1, leader: 1, isr: vec![1, 2] };
        assert!(rejected(s.apply(&grow)).contains("cannot add"));
        assert_eq!(s.partitions["a-0"].epoch, 1);
    }

    #[test]
    fn remove_node_drops_it_everywhere_and_fences_its_leaderships() {
        let mut s = three_nodes();
        ensure(&mut s, &["a-0", "a-1"]);
        assert_eq!(s.apply(&MetaCommand::RemoveNode { id: 1 }), MetaReply::Applied);
        assert!(!s.nodes.contains_key(&1));
        let a0 = &s.partitions["a-0"];
        assert_eq!((a0.leader, a0.epoch, a0.replicas.clone(), a0.isr.clone()), (None, 2, vec![2, 3], vec![2, 3]));
        let a1 = &s.partitions["a-1"];
        assert_eq!((a1.leader, a1.epoch, a1.isr.clone()), (Some(2), 1, vec![2, 3]));
        assert!(rejected(s.apply(&MetaCommand::RemoveNode { id: 1 })).contains("not a member"));
    }

    #[test]
    fn a_new_node_becomes_a_replica_but_not_an_isr_member() {
        let mut s = three_nodes();
        ensure(&mut s, &["a-0"]);
        s.apply(&MetaCommand::RegisterNode(node(4)));
        let p = &s.partitions["a-0"];
        assert_eq!((p.replicas.clone(), p.isr.clone()), (vec![1, 2, 3, 4], vec![1, 2, 3]));
    }

    #[test]
    fn applying_the_same_commands_gives_the_same_state() {
        let cmds = [
            MetaCommand::RegisterNode(node(2)),
            MetaCommand::RegisterNode(node(1)),
            MetaCommand::EnsurePartitions { names: vec!["x-1".into(), "x-0".into()] },
            MetaCommand::ElectLeader { partition: "x-0".into(), expected_epoch: 1, leader: 2, isr: vec![2] },
            MetaCommand::RemoveNode { id: 1 },
        ];
        let run = || {
            let mut s = ClusterState::default();
            let replies: Vec<_> = cmds.iter().map(|c| s.apply(c)).collect();
            (s, replies)
        };
        assert_eq!(run(), run());
    }
}
