//! The journal's records and how one is applied to the metadata store (sans-IO: the rules
//! of `super`, tested without a cluster).

use std::collections::HashSet;

use bytes::{BufMut, Bytes, BytesMut};

use crate::meta::{MetaError, MetaOp, MetaStore};

/// Column family of the version each entity is at on this node, with its latest image.
pub(super) const OWNERS: &str = "owners";
const FORMAT: u8 = 1;
/// Bytes of a record value before its image part: format, version.
const RECORD_HEAD: usize = 1 + 24;

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

/// What this node holds of an entity, in the `owners` family: `version` (24 bytes), the
/// time this node last wrote or re-read it (ms since the Unix epoch, 8 bytes), then the image
/// part of the last record that carried one (so that it can be appended again, see
/// [`refresh_record`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRow {
    pub version: Version,
    pub touched_ms: i64,
    /// From the image flag on, as in a record; `[0]` when no image was ever applied.
    pub image_part: Vec<u8>,
}

impl OwnerRow {
    fn encode(&self) -> Vec<u8> {
        let mut out = BytesMut::with_capacity(32 + self.image_part.len());
        self.version.encode(&mut out);
        out.put_i64_le(self.touched_ms);
        out.put_slice(&self.image_part);
        out.to_vec()
    }

    fn decode(v: &[u8]) -> Option<OwnerRow> {
        let version = Version::decode(v.get(..24)?)?;
        let touched_ms = i64::from_le_bytes(v.get(24..32)?.try_into().ok()?);
        let image_part = v.get(32..).filter(|p| !p.is_empty()).map_or_else(|| vec![0], <[u8]>::to_vec);
        Some(OwnerRow { version, touched_ms, image_part })
    }
}

/// What `store` holds of `entity`.
pub fn owner_row(store: &MetaStore, entity: &str) -> Result<Option<OwnerRow>, MetaError> {
    Ok(store.get(OWNERS, entity.as_bytes())?.as_deref().and_then(OwnerRow::decode))
}

/// The version `store` holds for `entity`.
pub fn stored_version(store: &MetaStore, entity: &str) -> Result<Option<Version>, MetaError> {
    Ok(owner_row(store, entity)?.map(|r| r.version))
}

/// Every entity `store` holds, with its row.
pub fn owner_rows(store: &MetaStore) -> Result<Vec<(String, OwnerRow)>, MetaError> {
    Ok(store
        .scan_prefix(OWNERS, b"")?
        .into_iter()
        .filter_map(|(k, v)| Some((String::from_utf8(k).ok()?, OwnerRow::decode(&v)?)))
        .collect())
}

/// The record that appends `row`'s image again under its own version: applying it changes
/// nothing on a node that holds that version, and gives a node that never saw the entity
/// (it joined after retention removed the older records) the entity whole.
pub fn refresh_record(row: &OwnerRow) -> Bytes {
    let mut out = BytesMut::with_capacity(RECORD_HEAD + row.image_part.len());
    out.put_u8(FORMAT);
    row.version.encode(&mut out);
    out.put_slice(&row.image_part);
    out.freeze()
}

/// What the periodic refresh does with the rows this node holds (see `super::refresh_loop`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RefreshPlan {
    /// Entities with rows, not written since `cutoff_ms`: appended again (by the leader).
    pub append: Vec<String>,
    /// Entities without rows (deleted sessions, claims of clean sessions) untouched for the
    /// whole retention age: their `owners` row is forgotten on this node. By then the log
    /// holds none of their records, and a deposed owner has long been told to go.
    pub forget: Vec<String>,
}

impl OwnerRow {
    /// Whether the last image holds no rows (a deletion), or there never was one.
    pub fn is_empty(&self, entity: &str) -> bool {
        decode(entity.as_bytes(), &refresh_record(self)).and_then(|e| e.image).is_none_or(|i| i.rows.is_empty())
    }
}

/// Sorts `rows` for a refresh at: `stale_ms` (older is appended again) and `expired_ms`
/// (older and empty is forgotten), both in ms since the Unix epoch.
pub fn refresh_plan(rows: &[(String, OwnerRow)], stale_ms: i64, expired_ms: i64) -> RefreshPlan {
    let mut plan = RefreshPlan::default();
    for (entity, row) in rows {
        if row.touched_ms >= stale_ms {
            continue;
        }
        if !row.is_empty(entity) {
            plan.append.push(entity.clone());
        } else if row.touched_ms < expired_ms {
            plan.forget.push(entity.clone());
        }
    }
    plan
}

/// Writes `record` (an encoded journal record for `entity`, already decoded as `image`) to
/// `store` at `version` in one atomic batch, plus `extra` rows (the apply checkpoint). The
/// image's scopes lose the rows the image does not have; a record without an image (a
/// claim) changes only the version.
pub fn write_image(
    store: &MetaStore,
    entity: &str,
    version: Version,
    record: &[u8],
    image: Option<&Image>,
    extra: &[MetaOp<'_>],
    now_ms: i64,
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
    let image_part = match image {
        Some(_) => record.get(RECORD_HEAD..).unwrap_or(&[0]).to_vec(),
        None => owner_row(store, entity)?.map_or_else(|| vec![0], |r| r.image_part),
    };
    let row = OwnerRow { version, touched_ms: now_ms, image_part }.encode();
    let mut ops: Vec<MetaOp<'_>> = deletes.iter().map(|(f, k)| MetaOp::Delete { family: f, key: k }).collect();
    if let Some(img) = image {
        ops.extend(img.rows.iter().map(|r| MetaOp::Put { family: &r.family, key: &r.key, value: &r.value }));
    }
    ops.push(MetaOp::Put { family: OWNERS, key: entity.as_bytes(), value: &row });
    ops.extend(extra.iter().copied());
    store.write_batch(&ops, false)
}

/// What applying a record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Unreadable, or older than what this node holds: nothing changed (but the checkpoint).
    Skipped,
    /// The version this node holds (its own write, or a refresh): only its time moved.
    Touched,
    /// A newer version, written. `taken_over`: it is another node's claim (or write) that
    /// supersedes what this node held, so a local connection of the entity must go.
    Written { taken_over: bool },
}

/// Applies the committed record (`key`, `value`) to `store` with `extra` rows (the apply
/// checkpoint), by the rules of the module above. `me` is this node's id.
pub fn apply_record(
    store: &MetaStore,
    me: u64,
    key: &[u8],
    value: &[u8],
    extra: &[MetaOp<'_>],
    now_ms: i64,
) -> Result<(Applied, Option<Entry>), MetaError> {
    let Some(entry) = decode(key, value) else {
        store.write_batch(extra, false)?;
        return Ok((Applied::Skipped, None));
    };
    let held = owner_row(store, &entry.entity)?;
    match &held {
        Some(h) if entry.version < h.version => {
            store.write_batch(extra, false)?;
            return Ok((Applied::Skipped, Some(entry)));
        }
        Some(h) if entry.version == h.version => {
            let row = OwnerRow { touched_ms: now_ms, ..h.clone() }.encode();
            let mut ops = vec![MetaOp::Put { family: OWNERS, key, value: &row }];
            ops.extend(extra.iter().copied());
            store.write_batch(&ops, false)?;
            return Ok((Applied::Touched, Some(entry)));
        }
        _ => {}
    }
    write_image(store, &entry.entity, entry.version, value, entry.image.as_ref(), extra, now_ms)?;
    let taken_over = entry.version.node != me && held.as_ref().is_none_or(|h| h.version.superseded_by(&entry.version));
    Ok((Applied::Written { taken_over }, Some(entry)))
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

    fn put(store: &MetaStore, entity: &str, v: Version, img: &Image) {
        write_image(store, entity, v, &encode(v, Some(img)), Some(img), &[], 1).unwrap();
    }

    #[test]
    fn records_apply_by_version_and_refresh_as_no_ops() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(dir.path()).unwrap();
        let a1 = Version { generation: 1, node: 1, seq: 1 };
        let rec = encode(a1, Some(&image("c", &["x"])));
        let (applied, _) = apply_record(&store, 2, b"c", &rec, &[], 10).unwrap();
        assert_eq!(applied, Applied::Written { taken_over: true });
        // The same record again (a replay, or a refresh) only touches the row.
        assert_eq!(apply_record(&store, 2, b"c", &rec, &[], 20).unwrap().0, Applied::Touched);
        let row = owner_row(&store, "c").unwrap().unwrap();
        assert_eq!((row.version, row.touched_ms), (a1, 20));
        // Node 2 claims (no image): the rows stay, the version moves, the image is kept.
        let b = Version { generation: 2, node: 2, seq: 0 };
        assert_eq!(
            apply_record(&store, 2, b"c", &encode(b, None), &[], 30).unwrap().0,
            Applied::Written { taken_over: false }
        );
        assert_eq!(store.scan_prefix("subscriptions", b"c\0").unwrap().len(), 1);
        // A late write of the deposed owner is ignored.
        let late = encode(Version { seq: 2, ..a1 }, Some(&image("c", &[])));
        assert_eq!(apply_record(&store, 2, b"c", &late, &[], 40).unwrap().0, Applied::Skipped);
        assert_eq!(store.scan_prefix("subscriptions", b"c\0").unwrap().len(), 1);
        // The refresh record carries the current version and the last image: on a node that
        // never saw `c` it recreates it whole.
        let row = owner_row(&store, "c").unwrap().unwrap();
        let refresh = refresh_record(&row);
        let fresh_dir = tempfile::tempdir().unwrap();
        let fresh = MetaStore::open(fresh_dir.path()).unwrap();
        assert_eq!(apply_record(&fresh, 3, b"c", &refresh, &[], 50).unwrap().0, Applied::Written { taken_over: true });
        assert_eq!(stored_version(&fresh, "c").unwrap(), Some(b));
        assert_eq!(fresh.scan_prefix("subscriptions", b"c\0").unwrap().len(), 1);
        assert!(fresh.get("sessions", b"c").unwrap().is_some());
        // Garbage is skipped, never applied.
        assert_eq!(apply_record(&store, 2, b"c", b"\x07junk", &[], 60).unwrap().0, Applied::Skipped);
    }

    #[test]
    fn refresh_appends_live_images_and_forgets_old_deletions() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(dir.path()).unwrap();
        let v = Version { generation: 1, node: 1, seq: 1 };
        let at = |entity: &str, ms: i64, img: Option<&Image>| {
            write_image(&store, entity, v, &encode(v, img), img, &[], ms).unwrap();
        };
        at("live-old", 100, Some(&image("live-old", &["a"])));
        at("live-new", 900, Some(&image("live-new", &["a"])));
        at("gone-old", 100, Some(&Image { rows: vec![], ..image("gone-old", &[]) }));
        at("gone-mid", 400, Some(&Image { rows: vec![], ..image("gone-mid", &[]) }));
        at("claim-old", 100, None);
        let rows = owner_rows(&store).unwrap();
        let plan = refresh_plan(&rows, 500, 200);
        assert_eq!(plan.append, vec!["live-old".to_string()]);
        assert_eq!(plan.forget, vec!["claim-old".to_string(), "gone-old".to_string()]);
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
        put(&store, "c10", Version::default(), &image("c10", &["x"]));
        let v1 = Version { generation: 1, node: 1, seq: 1 };
        put(&store, "c1", v1, &image("c1", &["a", "b"]));
        let v2 = Version { generation: 1, node: 1, seq: 2 };
        put(&store, "c1", v2, &image("c1", &["b", "c"]));
        let subs: Vec<Vec<u8>> =
            store.scan_prefix("subscriptions", b"c1\0").unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(subs, vec![b"c1\0b".to_vec(), b"c1\0c".to_vec()]);
        assert_eq!(stored_version(&store, "c1").unwrap(), Some(v2));
        // Deleting c1 leaves c10 whole.
        let delete = Image { rows: vec![], ..image("c1", &[]) };
        put(&store, "c1", Version { generation: 2, node: 1, seq: 0 }, &delete);
        assert!(store.get("sessions", b"c1").unwrap().is_none());
        assert!(store.scan_prefix("subscriptions", b"c1\0").unwrap().is_empty());
        assert!(store.get("sessions", b"c10").unwrap().is_some());
        assert_eq!(store.scan_prefix("subscriptions", b"c10\0").unwrap().len(), 1);
    }
}
