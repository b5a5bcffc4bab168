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
//! This module knows nothing of MQTT: entities, families and rows are opaque here.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axle_log::{LogError, Partition, Record, StoredRecord};
use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::{broadcast, watch};

use crate::meta::{MetaError, MetaOp, MetaStore};
use crate::replica::{ReplicaError, Replicator};

/// The log partition holding the journal on every node of a cluster.
pub const JOURNAL_PARTITION: &str = "__sessions-0";
/// Column family of the version each entity is at, on this node.
const OWNERS: &str = "owners";
/// Key, in the `replication` family, of the offset one past the last applied record.
const APPLIED_KEY: &[u8] = b"__sessions-0\0applied";
const FORMAT: u8 = 1;

/// Who owns an entity, and how far its owner's writes went. Ordered by generation, then
/// node id, then seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Version {
    /// Bumped by every claim.
    pub generation: u64,
    /// The node that made the claim.
    pub node: u64,
    /// Bumped by every write of the owner within its generation.
    pub seq: u64,
}

impl Version {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u64_le(self.generation);
        out.put_u64_le(self.node);
        out.put_u64_le(self.seq);
    }

    fn decode(v: &[u8]) -> Option<Version> {
        let n = |i: usize| v.get(i * 8..i * 8 + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
        Some(Version { generation: n(0)?, node: n(1)?, seq: n(2)? })
    }

    /// Whether `other` belongs to a later claim than `self` (another owner took over).
    pub fn superseded_by(&self, other: &Version) -> bool {
        (other.generation, other.node) > (self.generation, self.node)
    }
}

/// Rows an image replaces: after applying it, the scope holds exactly the image's rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// One key of a family.
    Key { family: String, key: Vec<u8> },
    /// Every key of a family starting with `prefix`.
    Prefix { family: String, prefix: Vec<u8> },
}

/// One metadata-store row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub family: String,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// The whole state of one entity. Rows outside every scope are ignored on apply. An image
/// with scopes and no rows deletes the entity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Image {
    pub scopes: Vec<Scope>,
    pub rows: Vec<Row>,
}

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

/// A journal record, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub entity: String,
    pub version: Version,
    /// `None` for a claim that changes no rows.
    pub image: Option<Image>,
}

fn put_str(out: &mut BytesMut, s: &[u8]) {
    out.put_u32_le(s.len() as u32);
    out.put_slice(s);
}

/// Encodes the value of a journal record (the key is the entity id).
pub fn encode(version: Version, image: Option<&Image>) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    out.put_u8(FORMAT);
    version.encode(&mut out);
    match image {
        None => out.put_u8(0),
        Some(img) => {
            out.put_u8(1);
            out.put_u32_le(img.scopes.len() as u32);
            for s in &img.scopes {
                let (kind, family, key) = match s {
                    Scope::Key { family, key } => (0u8, family, key),
                    Scope::Prefix { family, prefix } => (1u8, family, prefix),
                };
                out.put_u8(kind);
                put_str(&mut out, family.as_bytes());
                put_str(&mut out, key);
            }
            out.put_u32_le(img.rows.len() as u32);
            for r in &img.rows {
                put_str(&mut out, r.family.as_bytes());
                put_str(&mut out, &r.key);
                put_str(&mut out, &r.value);
            }
        }
    }
    out.freeze()
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes)
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        std::str::from_utf8(self.bytes()?).ok().map(str::to_string)
    }
}

/// Decodes a journal record; `None` if it is not one this version understands.
pub fn decode(entity: &[u8], value: &[u8]) -> Option<Entry> {
    let entity = std::str::from_utf8(entity).ok()?.to_string();
    let mut c = Cursor(value);
    if c.u8()? != FORMAT {
        return None;
    }
    let version = Version::decode(c.take(24)?)?;
    let image = match c.u8()? {
        0 => None,
        1 => {
            let n = c.u32()? as usize;
            let mut scopes = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                let kind = c.u8()?;
                let family = c.string()?;
                let key = c.bytes()?.to_vec();
                scopes.push(match kind {
                    0 => Scope::Key { family, key },
                    1 => Scope::Prefix { family, prefix: key },
                    _ => return None,
                });
            }
            let n = c.u32()? as usize;
            let mut rows = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                rows.push(Row { family: c.string()?, key: c.bytes()?.to_vec(), value: c.bytes()?.to_vec() });
            }
            Some(Image { scopes, rows })
        }
        _ => return None,
    };
    c.0.is_empty().then_some(Entry { entity, version, image })
}

/// The version `store` holds for `entity`.
pub fn stored_version(store: &MetaStore, entity: &str) -> Result<Option<Version>, MetaError> {
    Ok(store.get(OWNERS, entity.as_bytes())?.as_deref().and_then(Version::decode))
}

/// Writes `image` (if any) and `version` for `entity` to `store` in one atomic batch, plus
/// `extra` rows (the apply checkpoint). The scopes' rows not in the image are deleted.
pub fn write_image(
    store: &MetaStore,
    entity: &str,
    version: Version,
    image: Option<&Image>,
    extra: &[MetaOp<'_>],
) -> Result<(), MetaError> {
    let mut deletes: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(img) = image {
        let keep: HashSet<(&str, &[u8])> = img.rows.iter().map(|r| (r.family.as_str(), r.key.as_slice())).collect();
        for scope in &img.scopes {
            let (family, existing) = match scope {
                Scope::Key { family, key } => {
                    (family, store.get(family, key)?.map(|_| vec![key.clone()]).unwrap_or_default())
                }
                Scope::Prefix { family, prefix } => {
                    (family, store.scan_prefix(family, prefix)?.into_iter().map(|(k, _)| k).collect())
                }
            };
            for k in existing {
                if !keep.contains(&(family.as_str(), k.as_slice())) {
                    deletes.push((family.clone(), k));
                }
            }
        }
    }
    let mut v = BytesMut::with_capacity(24);
    version.encode(&mut v);
    let mut ops: Vec<MetaOp<'_>> = deletes.iter().map(|(f, k)| MetaOp::Delete { family: f, key: k }).collect();
    if let Some(img) = image {
        ops.extend(img.rows.iter().map(|r| MetaOp::Put { family: &r.family, key: &r.key, value: &r.value }));
    }
    ops.push(MetaOp::Put { family: OWNERS, key: entity.as_bytes(), value: &v });
    ops.extend(extra.iter().copied());
    store.write_batch(&ops, false)
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
}

impl Journal {
    /// Starts applying the journal partition `log` (index `pid` in `rep`) to `store`, from
    /// the last applied offset. `timeout` bounds a claim (commit plus local apply).
    pub fn start(
        rep: Arc<Replicator>,
        pid: usize,
        log: Partition,
        store: Arc<MetaStore>,
        timeout: Duration,
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
        });
        tokio::spawn(j.clone().apply_loop(from));
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
        {
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
            Some(held) if version.superseded_by(&held) => {
                Err(JournalError::Superseded { entity: entity.into(), node: held.node, generation: held.generation })
            }
            _ => Ok(version),
        }
    }

    /// Writes `image` as the owner holding `version` (bumping its seq): locally at once, and
    /// to the journal in the background (appends keep their call order). Fails with
    /// `Superseded`, writing nothing, once another node claimed the entity.
    pub fn write(&self, entity: &str, version: &mut Version, image: &Image) -> Result<(), JournalError> {
        {
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
            write_image(&self.store, entity, *version, Some(image), &[])?;
        }
        let record = Record::new(encode(*version, Some(image))).with_key(entity.as_bytes().to_vec());
        let pending = self.rep.publish(self.pid, vec![record]);
        let entity = entity.to_string();
        tokio::spawn(async move {
            if let Err(e) = pending.await {
                tracing::warn!(%entity, error = %e, "session journal write not replicated; the next write carries the whole image again");
            }
        });
        Ok(())
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
        let Some(entry) = r.key.as_deref().and_then(|k| decode(k, &r.value)) else {
            tracing::warn!(offset = r.offset, "unreadable session journal record skipped");
            return self.store.write_batch(&extra, false);
        };
        let _g = self.lock.lock();
        let held = self.version(&entry.entity)?;
        if held.is_some_and(|h| entry.version <= h) {
            return self.store.write_batch(&extra, false);
        }
        match write_image(&self.store, &entry.entity, entry.version, entry.image.as_ref(), &extra) {
            Ok(()) => {}
            Err(MetaError::UnknownFamily(f)) => {
                tracing::warn!(offset = r.offset, family = %f, "session journal record names an unknown family; skipped");
                return self.store.write_batch(&extra, false);
            }
            Err(e) => return Err(e),
        }
        // Another node's claim (or its first write seen here): a connection of this client on
        // this node, if any, must go.
        if entry.version.node != self.me && held.is_none_or(|h| h.superseded_by(&entry.version)) {
            let _ = self.superseded.send((entry.entity, entry.version));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(client: &str, subs: &[&str]) -> Image {
        Image {
            scopes: vec![
                Scope::Key { family: "sessions".into(), key: client.as_bytes().to_vec() },
                Scope::Prefix { family: "subscriptions".into(), prefix: format!("{client}\0").into_bytes() },
            ],
            rows: std::iter::once(Row { family: "sessions".into(), key: client.into(), value: b"rec".to_vec() })
                .chain(subs.iter().map(|s| Row {
                    family: "subscriptions".into(),
                    key: format!("{client}\0{s}").into_bytes(),
                    value: s.as_bytes().to_vec(),
                }))
                .collect(),
        }
    }

    #[test]
    fn records_round_trip_and_garbage_is_refused() {
        let v = Version { generation: 3, node: 2, seq: 9 };
        let img = image("c1", &["a/#", "b"]);
        let e = decode(b"c1", &encode(v, Some(&img))).unwrap();
        assert_eq!(e, Entry { entity: "c1".into(), version: v, image: Some(img.clone()) });
        assert_eq!(decode(b"c1", &encode(v, None)).unwrap().image, None);
        let raw = encode(v, Some(&img));
        for cut in 0..raw.len() {
            assert!(decode(b"c1", &raw[..cut]).is_none(), "prefix of {cut} bytes accepted");
        }
        let mut bad = raw.to_vec();
        bad[0] = 9;
        assert!(decode(b"c1", &bad).is_none());
    }

    #[test]
    fn versions_order_by_generation_then_node_then_seq() {
        let a = Version { generation: 2, node: 3, seq: 50 };
        assert!(a < Version { generation: 3, node: 1, seq: 0 });
        assert!(a < Version { generation: 2, node: 4, seq: 0 });
        assert!(a.superseded_by(&Version { generation: 2, node: 4, seq: 0 }));
        assert!(!a.superseded_by(&Version { generation: 2, node: 3, seq: 51 }));
    }

    #[test]
    fn an_image_replaces_exactly_its_scopes() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(dir.path()).unwrap();
        // A neighbour whose id extends this one's must be untouched.
        write_image(&store, "c10", Version::default(), Some(&image("c10", &["x"])), &[]).unwrap();
        let v1 = Version { generation: 1, node: 1, seq: 1 };
        write_image(&store, "c1", v1, Some(&image("c1", &["a", "b"])), &[]).unwrap();
        let v2 = Version { generation: 1, node: 1, seq: 2 };
        write_image(&store, "c1", v2, Some(&image("c1", &["b", "c"])), &[]).unwrap();
        let subs: Vec<Vec<u8>> =
            store.scan_prefix("subscriptions", b"c1\0").unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(subs, vec![b"c1\0b".to_vec(), b"c1\0c".to_vec()]);
        assert_eq!(stored_version(&store, "c1").unwrap(), Some(v2));
        // Deleting c1 leaves c10 whole.
        let delete = Image { rows: vec![], ..image("c1", &[]) };
        write_image(&store, "c1", Version { generation: 2, node: 1, seq: 0 }, Some(&delete), &[]).unwrap();
        assert!(store.get("sessions", b"c1").unwrap().is_none());
        assert!(store.scan_prefix("subscriptions", b"c1\0").unwrap().is_empty());
        assert!(store.get("sessions", b"c10").unwrap().is_some());
        assert_eq!(store.scan_prefix("subscriptions", b"c10\0").unwrap().len(), 1);
    }
}
