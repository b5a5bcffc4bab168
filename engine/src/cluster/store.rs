//! The Raft log and the state machine of the metadata group, in one RocksDB database under
//! `<data_dir>/raft` (openraft storage v2: [`RaftLogStorage`] and [`RaftStateMachine`]).
//!
//! Column families:
//! - `log`: key = log index as 8 big-endian bytes (so key order is index order), value = the
//!   openraft `Entry` as JSON.
//! - `meta`: `vote`, `committed` and `last_purged` (JSON of openraft's types).
//! - `sm`: `applied` (last applied log id, last membership and the [`ClusterState`], written
//!   atomically after every applied batch), `snapshot_meta` and `snapshot_data` (the last
//!   snapshot: its metadata as JSON and the state as JSON bytes).
//!
//! Every write is synced before it is acknowledged: metadata changes are rare and small, and a
//! state machine that never moves backwards needs no replay from the log after a crash.

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership, Vote,
};
use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{ClusterError, ClusterState, MetaReply, NodeId, TypeConfig};

const CF_LOG: &str = "log";
const CF_META: &str = "meta";
const CF_SM: &str = "sm";

type StorageResult<T> = Result<T, StorageError<NodeId>>;
type Membership = StoredMembership<NodeId, openraft::BasicNode>;

/// The state machine's durable image: what was applied up to `last_applied`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct AppliedState {
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
    state: ClusterState,
}

/// Opens (creating if needed) the Raft store in `dir` and returns its two halves, which share
/// the database. The state machine publishes every applied state on `watch()`.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), ClusterError> {
    let path = dir.display().to_string();
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let cfs = [CF_LOG, CF_META, CF_SM].map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
    let db = DB::open_cf_descriptors(&opts, dir, cfs)
        .map_err(|source| ClusterError::Storage { path: path.clone(), source })?;
    let db = Arc::new(db);
    let corrupt = |detail: String| ClusterError::Corrupt { path: path.clone(), detail };
    let applied: AppliedState =
        get_json(&db, CF_SM, b"applied").map_err(|e| corrupt(e.to_string()))?.unwrap_or_default();
    let snapshot_seq = match get_json::<SnapshotMeta<NodeId, openraft::BasicNode>>(&db, CF_SM, b"snapshot_meta") {
        Ok(meta) => meta.map(|m| snapshot_seq_of(&m.snapshot_id)).unwrap_or(0),
        Err(e) => return Err(corrupt(e.to_string())),
    };
    let (tx, _) = watch::channel(Arc::new(applied.state.clone()));
    let sm = StateMachineStore { db: db.clone(), applied, tx, snapshot_seq };
    Ok((LogStore { db }, sm))
}

fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a rocksdb::ColumnFamily, std::io::Error> {
    db.cf_handle(name).ok_or_else(|| std::io::Error::other(format!("column family {name} is missing")))
}

fn get_json<T: DeserializeOwned>(db: &DB, family: &str, key: &[u8]) -> Result<Option<T>, std::io::Error> {
    match db.get_cf(cf(db, family)?, key).map_err(std::io::Error::other)? {
        Some(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(std::io::Error::other)?)),
        None => Ok(None),
    }
}

fn json<T: Serialize>(value: &T) -> Result<Vec<u8>, std::io::Error> {
    serde_json::to_vec(value).map_err(std::io::Error::other)
}

fn write_synced(db: &DB, batch: WriteBatch) -> Result<(), std::io::Error> {
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    db.write_opt(batch, &wo).map_err(std::io::Error::other)
}

/// Snapshot ids are `<term>-<index>-<seq>`; the sequence number keeps them unique.
fn snapshot_seq_of(id: &str) -> u64 {
    id.rsplit('-').next().and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// The Raft log and vote. Cheap to clone; clones share the database (the log reader is one).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
}

impl LogStore {
    fn put_meta<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), std::io::Error> {
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(&self.db, CF_META)?, key, json(value)?);
        write_synced(&self.db, batch)
    }

    fn last_entry(&self) -> Result<Option<Entry<TypeConfig>>, std::io::Error> {
        let mut it = self.db.iterator_cf(cf(&self.db, CF_LOG)?, IteratorMode::End);
        match it.next() {
            Some(kv) => {
                let (_, v) = kv.map_err(std::io::Error::other)?;
                Ok(Some(serde_json::from_slice(&v).map_err(std::io::Error::other)?))
            }
            None => Ok(None),
        }
    }

    /// Deletes every entry with index in `[from, to)`, and writes `extra` in the same batch.
    fn delete_range(&self, from: u64, to: u64, extra: Option<(&[u8], Vec<u8>)>) -> Result<(), std::io::Error> {
        let log = cf(&self.db, CF_LOG)?;
        let mut batch = WriteBatch::default();
        for kv in self.db.iterator_cf(log, IteratorMode::From(&from.to_be_bytes(), Direction::Forward)) {
            let (k, _) = kv.map_err(std::io::Error::other)?;
            if index_of(&k).is_none_or(|i| i >= to) {
                break;
            }
            batch.delete_cf(log, k);
        }
        if let Some((key, value)) = extra {
            batch.put_cf(cf(&self.db, CF_META)?, key, value);
        }
        write_synced(&self.db, batch)
    }
}

fn index_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let read = || -> Result<Vec<Entry<TypeConfig>>, std::io::Error> {
            let mut out = Vec::new();
            let mode = IteratorMode::From(&start.to_be_bytes(), Direction::Forward);
            for kv in self.db.iterator_cf(cf(&self.db, CF_LOG)?, mode) {
                let (k, v) = kv.map_err(std::io::Error::other)?;
                match index_of(&k) {
                    Some(i) if range.contains(&i) => {
                        out.push(serde_json::from_slice(&v).map_err(std::io::Error::other)?)
                    }
                    _ => break,
                }
            }
            Ok(out)
        };
        read().map_err(|e| StorageIOError::read_logs(&e).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let read = || -> Result<LogState<TypeConfig>, std::io::Error> {
            let last_purged_log_id: Option<LogId<NodeId>> = get_json(&self.db, CF_META, b"last_purged")?;
            let last_log_id = self.last_entry()?.map(|e| e.log_id).or(last_purged_log_id);
            Ok(LogState { last_purged_log_id, last_log_id })
        };
        read().map_err(|e| StorageIOError::read_logs(&e).into())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.put_meta(b"vote", vote).map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        get_json(&self.db, CF_META, b"vote").map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        self.put_meta(b"committed", &committed).map_err(|e| StorageIOError::write(&e).into())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        let committed: Option<Option<LogId<NodeId>>> =
            get_json(&self.db, CF_META, b"committed").map_err(|e| StorageIOError::read(&e))?;
        Ok(committed.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let write = || -> Result<(), std::io::Error> {
            let log = cf(&self.db, CF_LOG)?;
            let mut batch = WriteBatch::default();
            for entry in entries {
                batch.put_cf(log, entry.log_id.index.to_be_bytes(), json(&entry)?);
            }
            write_synced(&self.db, batch)
        };
        let result = write();
        let err = result.as_ref().err().map(|e| StorageIOError::write_logs(e).into());
        callback.log_io_completed(result);
        err.map_or(Ok(()), Err)
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.delete_range(log_id.index, u64::MAX, None).map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let purge = || -> Result<(), std::io::Error> {
            let marker = json(&Some(log_id))?;
            self.delete_range(0, log_id.index.saturating_add(1), Some((b"last_purged", marker)))
        };
        purge().map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

/// The state machine: the [`ClusterState`] as of `last_applied`, kept in memory and in RocksDB.
pub struct StateMachineStore {
    db: Arc<DB>,
    applied: AppliedState,
    tx: watch::Sender<Arc<ClusterState>>,
    snapshot_seq: u64,
}

impl StateMachineStore {
    /// A receiver of every state this machine applies, starting with the state it opened with.
    pub fn watch(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.tx.subscribe()
    }

    /// The last applied log id (`None` before the first entry).
    pub fn last_applied(&self) -> Option<LogId<NodeId>> {
        self.applied.last_applied
    }

    fn persist(
        &self,
        snapshot: Option<(&SnapshotMeta<NodeId, openraft::BasicNode>, &[u8])>,
    ) -> Result<(), std::io::Error> {
        let sm = cf(&self.db, CF_SM)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(sm, b"applied", json(&self.applied)?);
        if let Some((meta, data)) = snapshot {
            batch.put_cf(sm, b"snapshot_meta", json(meta)?);
            batch.put_cf(sm, b"snapshot_data", data);
        }
        write_synced(&self.db, batch)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<NodeId>>, Membership)> {
        Ok((self.applied.last_applied, self.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<MetaReply>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut replies = Vec::new();
        let before = self.applied.last_applied;
        for entry in entries {
            self.applied.last_applied = Some(entry.log_id);
            replies.push(match entry.payload {
                EntryPayload::Blank => MetaReply::Applied,
                EntryPayload::Normal(cmd) => self.applied.state.apply(&cmd),
                EntryPayload::Membership(m) => {
                    self.applied.membership = StoredMembership::new(Some(entry.log_id), m);
                    MetaReply::Applied
                }
            });
        }
        if let Some(at) = self.applied.last_applied.filter(|at| Some(*at) != before) {
            self.persist(None).map_err(|e| StorageIOError::apply(at, &e))?;
            self.tx.send_replace(Arc::new(self.applied.state.clone()));
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        SnapshotBuilder { db: self.db.clone(), applied: self.applied.clone(), seq: self.snapshot_seq }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let state: ClusterState =
            serde_json::from_slice(&data).map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        self.applied = AppliedState { last_applied: meta.last_log_id, membership: meta.last_membership.clone(), state };
        self.persist(Some((meta, &data))).map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        self.tx.send_replace(Arc::new(self.applied.state.clone()));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let read = || -> Result<Option<Snapshot<TypeConfig>>, std::io::Error> {
            let Some(meta) = get_json(&self.db, CF_SM, b"snapshot_meta")? else { return Ok(None) };
            let data = self.db.get_cf(cf(&self.db, CF_SM)?, b"snapshot_data").map_err(std::io::Error::other)?;
            Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(data.unwrap_or_default())) }))
        };
        read().map_err(|e| StorageIOError::read_snapshot(None, &e).into())
    }
}

/// Builds a snapshot of the state as it was when the builder was made.
pub struct SnapshotBuilder {
    db: Arc<DB>,
    applied: AppliedState,
    seq: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let data = json(&self.applied.state).map_err(|e| StorageIOError::read_state_machine(&e))?;
        let snapshot_id = match self.applied.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, self.seq),
            None => format!("0-0-{}", self.seq),
        };
        let meta = SnapshotMeta {
            last_log_id: self.applied.last_applied,
            last_membership: self.applied.membership.clone(),
            snapshot_id,
        };
        let save = || -> Result<(), std::io::Error> {
            let sm = cf(&self.db, CF_SM)?;
            let mut batch = WriteBatch::default();
            batch.put_cf(sm, b"snapshot_meta", json(&meta)?);
            batch.put_cf(sm, b"snapshot_data", &data);
            write_synced(&self.db, batch)
        };
        save().map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
