//! The state journal: per-entity metadata (the broker keeps MQTT sessions in it) that one
//! node owns at a time and every node of a cluster holds a copy of. See docs/replication.md,
//! "Sessions across nodes".
//!
//! Changes travel as records of an internal, replicated log partition ([`JOURNAL_PARTITION`],
//! `acks = quorum`, outside every stream). A record is the whole **image** of one entity (key
//! = the entity id): the metadata-store rows it consists of, and the scopes those rows replace.
//! Every node applies the committed records in log order to its metadata store, so every node
//! ends up with the same rows; a record that was lost in transit is healed by the next one,
//! since each carries everything.
//!
//! Ownership is decided by [`Version`] = (generation, node, seq), compared in that order:
//! - a node that takes an entity over (an MQTT client connecting to it) **claims** it: it
//!   appends a record with generation + 1 and waits until that record is committed and
//!   applied locally; by then the local rows hold everything the previous owner committed
//!   before the claim;
//! - the owner's later writes keep the generation and bump `seq`;
//! - a node applies a record only if its version is greater than the one it holds for the
//!   entity, so writes of a deposed owner (a lower generation) are ignored everywhere, and
//!   two racing claims of the same generation are settled by node id, the same way on every
//!   node;
//! - the owner applies its own writes locally at once (with their version), so replaying its
//!   own records later changes nothing.
//!
//! The journal is a partition like any other, so the log's retention applies to it. So that
//! a node joining later (or back after longer than the retention) still finds every entity,
//! the journal's leader appends again, under its current version, the image of every entity
//! not written for a third of the retention age ([`image::refresh_record`]); on a node that
//! holds that version the record changes nothing.
//!
//! This module knows nothing of MQTT: entities, families and rows are opaque here.

mod image;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axle_log::{now_ms, LogError, Partition, Record, StoredRecord};
use parking_lot::Mutex;
use tokio::sync::{broadcast, oneshot, watch};

pub use image::{
    apply_record, decode, encode, owner_row, owner_rows, refresh_plan, refresh_record, stored_version, write_image,
    Applied, Entry, Image, OwnerRow, RefreshPlan, Row, Scope, Version,
};

use crate::meta::{MetaError, MetaOp, MetaStore};
use crate::replica::{ReplicaError, Replicator};

/// The log partition holding the journal on every node of a cluster.
pub const JOURNAL_PARTITION: &str = "__sessions-0";
/// Key, in the `replication` family, of the offset one past the last applied record.
const APPLIED_KEY: &[u8] = b"__sessions-0\0applied";
/// How often the journal's leader looks for entities to append again.
const REFRESH_EVERY: Duration = Duration::from_secs(3600);
/// Refresh records appended at a time (each waits for its commit).
const REFRESH_BATCH: usize = 256;

/// Why a journal operation failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{entity} is now owned by node {node} (generation {generation}); this connection's copy is stale")]
    Superseded { entity: String, node: u64, generation: u64 },
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("replicating the journal record: {0}")]
    Replica(#[from] ReplicaError),
    #[error("the journal record at offset {offset} was not applied on this node within {timeout_ms} ms; retry")]
    ApplyTimeout { offset: u64, timeout_ms: u64 },
}

/// The journal of one node. Shared behind an `Arc`.
pub struct Journal {
    me: u64,
    /// Index of [`JOURNAL_PARTITION`] among the replicator's partitions.
    pid: usize,
    log: Partition,
    rep: Arc<Replicator>,
    store: Arc<MetaStore>,
    /// Serialises version checks with the writes they guard (local writes and applies).
    lock: Mutex<()>,
    /// Generations this node is claiming right now, per entity (not yet applied).
    claiming: Mutex<HashMap<String, u64>>,
    /// One past the last applied offset.
    applied: watch::Sender<u64>,
    /// Entities another node took over: (entity, its new version).
    superseded: broadcast::Sender<(String, Version)>,
    timeout: Duration,
    /// Entities not written for this long are appended again (a third of the log's
    /// retention age); `None` without age retention.
    refresh_after: Option<Duration>,
}

impl Journal {
    /// Starts applying the journal partition `log` (index `pid` in `rep`) to `store`, from
    /// the last applied offset. `timeout` bounds a claim (commit plus local apply);
    /// `retention_age` is the log's (see the module's note on retention).
    pub fn start(
        rep: Arc<Replicator>,
        pid: usize,
        log: Partition,
        store: Arc<MetaStore>,
        timeout: Duration,
        retention_age: Option<Duration>,
    ) -> Arc<Journal> {
        let from = store
            .get("replication", APPLIED_KEY)
            .ok()
            .flatten()
            .and_then(|v| v.try_into().ok().map(u64::from_le_bytes))
            .unwrap_or(0);
        let j = Arc::new(Journal {
            me: rep.node_id(),
            pid,
            log,
            rep,
            store,
            lock: Mutex::new(()),
            claiming: Mutex::new(HashMap::new()),
            applied: watch::channel(from).0,
            superseded: broadcast::channel(1024).0,
            timeout,
            // At least a second: `retention_hours = 0` must not make a zero period.
            refresh_after: retention_age.filter(|a| !a.is_zero()).map(|a| (a / 3).max(Duration::from_secs(1))),
        });
        tokio::spawn(j.clone().apply_loop(from));
        tokio::spawn(j.clone().refresh_loop());
        j
    }

    /// Entities another node claimed, as they are applied here.
    pub fn superseded(&self) -> broadcast::Receiver<(String, Version)> {
        self.superseded.subscribe()
    }

    /// The version this node holds for `entity`.
    pub fn version(&self, entity: &str) -> Result<Option<Version>, MetaError> {
        stored_version(&self.store, entity)
    }

    /// Takes `entity` over for this node: appends a claim (with `image` applied by it, e.g.
    /// a deletion for a clean start), waits until it is committed and applied here, and
    /// returns the version to write with. Once it returns, the local rows hold everything
    /// the previous owner committed before the claim.
    pub async fn claim(&self, entity: &str, image: Option<Image>) -> Result<Version, JournalError> {
        let version = {
            let _g = self.lock.lock();
            let held = self.version(entity)?.map_or(0, |v| v.generation);
            let mut claiming = self.claiming.lock();
            let generation = held.max(claiming.get(entity).copied().unwrap_or(0)) + 1;
            claiming.insert(entity.to_string(), generation);
            Version { generation, node: self.me, seq: 0 }
        };
        let outcome = self.claim_inner(entity, version, image).await;
        // After a failure the entry stays: the claim may still be applied later, and a retry
        // must not reuse its version (its record would then change nothing).
        if outcome.is_ok() {
            let mut claiming = self.claiming.lock();
            if claiming.get(entity) == Some(&version.generation) {
                claiming.remove(entity);
            }
        }
        outcome
    }

    async fn claim_inner(&self, entity: &str, version: Version, image: Option<Image>) -> Result<Version, JournalError> {
        let record = Record::new(encode(version, image.as_ref())).with_key(entity.as_bytes().to_vec());
        let offset = self.rep.publish(self.pid, vec![record]).await?;
        let mut rx = self.applied.subscribe();
        let waited = tokio::time::timeout(self.timeout, rx.wait_for(|&a| a > offset)).await;
        if !matches!(waited, Ok(Ok(_))) {
            return Err(JournalError::ApplyTimeout { offset, timeout_ms: self.timeout.as_millis() as u64 });
        }
        match self.version(entity)? {
            Some(held) if held == version => Ok(version),
            Some(held) => {
                Err(JournalError::Superseded { entity: entity.into(), node: held.node, generation: held.generation })
            }
            None => Err(JournalError::Superseded { entity: entity.into(), node: 0, generation: 0 }),
        }
    }

    /// Writes `image` as the owner holding `version` (bumping its seq): locally at once, and
    /// to the journal in the background (appends keep their call order). Fails with
    /// `Superseded`, writing nothing, once another node claimed the entity. The receiver
    /// says, once known, whether the record is committed (on a majority of the nodes);
    /// callers that acknowledge something to a client on the strength of this write wait
    /// for it.
    pub fn write(
        &self,
        entity: &str,
        version: &mut Version,
        image: &Image,
    ) -> Result<oneshot::Receiver<bool>, JournalError> {
        let value = {
            let _g = self.lock.lock();
            if let Some(held) = self.version(entity)? {
                if version.superseded_by(&held) {
                    return Err(JournalError::Superseded {
                        entity: entity.into(),
                        node: held.node,
                        generation: held.generation,
                    });
                }
                version.seq = version.seq.max(held.seq);
            }
            version.seq += 1;
            let value = encode(*version, Some(image));
            write_image(&self.store, entity, *version, &value, Some(image), &[], now_ms())?;
            value
        };
        let record = Record::new(value).with_key(entity.as_bytes().to_vec());
        let pending = self.rep.publish(self.pid, vec![record]);
        let entity = entity.to_string();
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let committed = match pending.await {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(%entity, error = %e, "session journal write not replicated; the next write carries the whole image again");
                    false
                }
            };
            let _ = tx.send(committed);
        });
        Ok(rx)
    }

    async fn apply_loop(self: Arc<Self>, from: u64) {
        let mut reader = self.log.tail(from);
        loop {
            match reader.next_batch().await {
                Ok(records) => {
                    let mut next = reader.position();
                    for r in &records {
                        if let Err(e) = self.apply(r) {
                            // The store refused the write (full disk?): retry the same record
                            // later rather than skip state.
                            tracing::error!(offset = r.offset, error = %e, "applying a session journal record failed; retrying");
                            next = r.offset;
                            break;
                        }
                        self.applied.send_replace(r.offset + 1);
                    }
                    if next != reader.position() {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        reader = self.log.tail(next);
                    }
                }
                Err(LogError::OffsetOutOfRange { log_start, end, .. }) => {
                    let to = if reader.position() < log_start { log_start } else { end };
                    tracing::warn!(
                        from = reader.position(),
                        to,
                        "session journal position outside the log; continuing there"
                    );
                    reader = self.log.tail(to);
                }
                Err(LogError::Closed) => return,
                Err(e) => {
                    tracing::error!(error = %e, "reading the session journal failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    reader = self.log.tail(reader.position());
                }
            }
        }
    }

    /// Applies one committed record (see the module's rules) with the apply checkpoint.
    fn apply(&self, r: &StoredRecord) -> Result<(), MetaError> {
        let checkpoint = (r.offset + 1).to_le_bytes();
        let extra = [MetaOp::Put { family: "replication", key: APPLIED_KEY, value: &checkpoint }];
        let key = r.key.as_deref().unwrap_or_default();
        let _g = self.lock.lock();
        // Touched at the record's time, not now: a node replaying an old backlog must not
        // take old images for fresh ones (see `refresh_loop`).
        let outcome = match apply_record(&self.store, self.me, key, &r.value, &extra, r.timestamp) {
            Err(MetaError::UnknownFamily(f)) => {
                tracing::warn!(offset = r.offset, family = %f, "session journal record names an unknown family; skipped");
                return self.store.write_batch(&extra, false);
            }
            other => other?,
        };
        match outcome {
            (Applied::Skipped, None) => tracing::warn!(offset = r.offset, "unreadable session journal record skipped"),
            (Applied::Written { taken_over: true }, Some(entry)) => {
                let _ = self.superseded.send((entry.entity, entry.version));
            }
            _ => {}
        }
        Ok(())
    }

    /// Every [`REFRESH_EVERY`]: on the journal's leader, appends again the image of every
    /// entity not written for `refresh_after`; on every node, forgets the `owners` rows of
    /// deleted entities untouched for the whole retention age (see the module's note on
    /// retention).
    async fn refresh_loop(self: Arc<Self>) {
        let Some(after) = self.refresh_after else { return };
        let mut every = tokio::time::interval(REFRESH_EVERY.min(after));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            let now = now_ms();
            let rows = match owner_rows(&self.store) {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, "session journal refresh: reading the owners failed");
                    continue;
                }
            };
            let plan = refresh_plan(&rows, now - after.as_millis() as i64, now - 3 * after.as_millis() as i64);
            if !plan.forget.is_empty() {
                let _g = self.lock.lock();
                // Only rows still as planned: a claim may have arrived meanwhile.
                let ops: Vec<MetaOp<'_>> = plan
                    .forget
                    .iter()
                    .filter(|e| owner_row(&self.store, e).ok().flatten().is_some_and(|r| r.is_empty(e)))
                    .map(|e| MetaOp::Delete { family: image::OWNERS, key: e.as_bytes() })
                    .collect();
                if let Err(e) = self.store.write_batch(&ops, false) {
                    tracing::warn!(error = %e, "session journal refresh: forgetting deleted sessions failed");
                }
            }
            if plan.append.is_empty() || self.rep.leadership(self.pid).leader != Some(self.me) {
                continue;
            }
            let by_name: HashMap<&str, &OwnerRow> = rows.iter().map(|(e, r)| (e.as_str(), r)).collect();
            tracing::info!(
                entities = plan.append.len(),
                "session journal: appending unchanged sessions again ahead of retention"
            );
            for chunk in plan.append.chunks(REFRESH_BATCH) {
                let pending: Vec<_> = chunk
                    .iter()
                    .filter_map(|entity| by_name.get(entity.as_str()).map(|row| (entity, row)))
                    .map(|(entity, row)| {
                        let rec = Record::new(refresh_record(row)).with_key(entity.as_bytes().to_vec());
                        self.rep.publish(self.pid, vec![rec])
                    })
                    .collect();
                for p in pending {
                    if let Err(e) = p.await {
                        tracing::warn!(error = %e, "session journal refresh: an append failed; retried at the next round");
                    }
                }
            }
        }
    }
}
