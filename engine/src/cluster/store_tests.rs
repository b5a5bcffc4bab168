//! The RocksDB Raft store keeps the vote, the log, the purge point, the applied state and the
//! snapshot across a reopen.

use std::collections::{BTreeMap, BTreeSet};

use openraft::storage::RaftLogStorageExt;
use openraft::{BasicNode, CommittedLeaderId, Membership};

use super::*;
use crate::cluster::{MetaCommand, NodeInfo};

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn register(id: NodeId) -> MetaCommand {
    MetaCommand::RegisterNode(NodeInfo {
        id,
        cluster_addr: format!("127.0.0.1:{}", 9700 + id),
        mqtt_addr: String::new(),
        grpc_addr: String::new(),
    })
}

fn membership() -> Membership<NodeId, BasicNode> {
    let voters = BTreeSet::from([1, 2, 3]);
    let nodes: BTreeMap<NodeId, BasicNode> =
        (1..=3).map(|i| (i, BasicNode { addr: format!("127.0.0.1:{}", 9700 + i) })).collect();
    Membership::new(vec![voters], nodes)
}

fn entries() -> Vec<Entry<TypeConfig>> {
    vec![
        Entry { log_id: log_id(0, 0), payload: EntryPayload::Membership(membership()) },
        Entry { log_id: log_id(1, 1), payload: EntryPayload::Blank },
        Entry { log_id: log_id(1, 2), payload: EntryPayload::Normal(register(1)) },
        Entry { log_id: log_id(1, 3), payload: EntryPayload::Normal(register(2)) },
        Entry { log_id: log_id(2, 4), payload: EntryPayload::Normal(register(1)) },
    ]
}

fn indexes(entries: &[Entry<TypeConfig>]) -> Vec<u64> {
    entries.iter().map(|e| e.log_id.index).collect()
}

#[tokio::test]
async fn vote_log_and_purge_point_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _sm) = open(dir.path()).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), None);
        assert_eq!(log.get_log_state().await.unwrap(), LogState::default());
        log.save_vote(&Vote::new(2, 3)).await.unwrap();
        log.blocking_append(entries()).await.unwrap();
        log.save_committed(Some(log_id(1, 3))).await.unwrap();
        log.purge(log_id(1, 1)).await.unwrap();
    }
    let (mut log, _sm) = open(dir.path()).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(2, 3)));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 3)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1)));
    assert_eq!(state.last_log_id, Some(log_id(2, 4)));
    let read = log.try_get_log_entries(0..10).await.unwrap();
    assert_eq!(indexes(&read), vec![2, 3, 4]);
    assert!(matches!(&read[0].payload, EntryPayload::Normal(c) if *c == register(1)));
}

#[tokio::test]
async fn truncate_removes_the_tail_and_ranges_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _sm) = open(dir.path()).unwrap();
    log.blocking_append(entries()).await.unwrap();
    assert_eq!(indexes(&log.try_get_log_entries(1..=3).await.unwrap()), vec![1, 2, 3]);
    assert_eq!(indexes(&log.try_get_log_entries(3..).await.unwrap()), vec![3, 4]);
    log.truncate(log_id(1, 3)).await.unwrap();
    assert_eq!(log.get_log_state().await.unwrap().last_log_id, Some(log_id(1, 2)));
    assert_eq!(indexes(&log.try_get_log_entries(..).await.unwrap()), vec![0, 1, 2]);
}

#[tokio::test]
async fn purging_everything_keeps_the_purge_point_as_the_last_log_id() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _sm) = open(dir.path()).unwrap();
    log.blocking_append(entries()).await.unwrap();
    log.purge(log_id(2, 4)).await.unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(log_id(2, 4)), Some(log_id(2, 4))));
}

#[tokio::test]
async fn applied_state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let expected = {
        let (_log, mut sm) = open(dir.path()).unwrap();
        let mut rx = sm.watch();
        let replies = sm.apply(entries()).await.unwrap();
        assert_eq!(replies, vec![MetaReply::Applied; 5]);
        assert!(rx.has_changed().unwrap());
        let state = rx.borrow_and_update().clone();
        assert_eq!(state.node_ids(), vec![1, 2]);
        state
    };
    let (_log, mut sm) = open(dir.path()).unwrap();
    let (applied, membership) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(2, 4)));
    assert_eq!(membership.log_id(), &Some(log_id(0, 0)));
    assert_eq!(membership.voter_ids().collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(*sm.watch().borrow(), expected);
}

#[tokio::test]
async fn a_snapshot_installs_on_another_store_and_survives_reopen() {
    let source = tempfile::tempdir().unwrap();
    let (_log, mut sm) = open(source.path()).unwrap();
    sm.apply(entries()).await.unwrap();
    let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(2, 4)));

    let target = tempfile::tempdir().unwrap();
    {
        let (_log, mut other) = open(target.path()).unwrap();
        assert!(other.get_current_snapshot().await.unwrap().is_none());
        let mut incoming = other.begin_receiving_snapshot().await.unwrap();
        incoming.get_mut().extend_from_slice(snapshot.snapshot.get_ref());
        other.install_snapshot(&snapshot.meta, incoming).await.unwrap();
        assert_eq!(other.watch().borrow().node_ids(), vec![1, 2]);
    }
    let (_log, mut other) = open(target.path()).unwrap();
    assert_eq!(other.applied_state().await.unwrap().0, Some(log_id(2, 4)));
    assert_eq!(other.watch().borrow().node_ids(), vec![1, 2]);
    let current = other.get_current_snapshot().await.unwrap().expect("the installed snapshot is kept");
    assert_eq!(current.meta, snapshot.meta);
    assert_eq!(current.snapshot.get_ref(), snapshot.snapshot.get_ref());
}

#[tokio::test]
async fn snapshot_ids_stay_unique_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let (_log, mut sm) = open(dir.path()).unwrap();
        sm.apply(entries()).await.unwrap();
        sm.get_snapshot_builder().await.build_snapshot().await.unwrap().meta.snapshot_id
    };
    let (_log, mut sm) = open(dir.path()).unwrap();
    let second = sm.get_snapshot_builder().await.build_snapshot().await.unwrap().meta.snapshot_id;
    assert_ne!(first, second);
}
