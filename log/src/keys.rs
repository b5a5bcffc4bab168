//! The per-segment key index: for each record key, where the batches holding it are, so a
//! reader interested in one key (one vehicle's commands, say) reads only those batches instead
//! of the whole partition.
//!
//! Keys are indexed by `crc32(key)`; a lookup can return batches of another key with the same
//! hash, so readers compare the real key. Records without a key are not indexed.
//!
//! Each segment's index has two parts:
//! - the *prefix*, covering bytes `[0, prefix_len)` of the segment: loaded lazily from
//!   `<base>.keys` on first use, or rebuilt by scanning those bytes when the file is missing,
//!   damaged or does not match (the file is a cache, never a source of truth);
//! - the *live* map, holding the batches appended by this process after the prefix.
//!
//! On roll and on clean shutdown the writer merges both and writes `<base>.keys`. The file
//! layout: magic `AXKY`, version u8, 3 pad bytes, base offset u64, covered length u64 (bytes of
//! segment), entry count u32, CRC32 of the entries u32; then the entries, each `hash u32,
//! relative offset u32, position u32` (little endian), sorted by (hash, relative offset).
//!
//! Invariants: entries point at batch starts; within one hash, relative offsets increase with
//! positions; readers ignore entries at or past the segment's committed length.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

/// Hash under which a key is indexed.
pub fn key_hash(key: &[u8]) -> u32 {
    crc32fast::hash(key)
}

/// One index entry: `rel` in records from the segment's base offset, `pos` in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyEntry {
    pub hash: u32,
    pub rel: u32,
    pub pos: u32,
}

const MAGIC: &[u8; 4] = b"AXKY";
const VERSION: u8 = 1;
const HEADER: usize = 32;
const ENTRY: usize = 12;

/// The key index of one segment.
#[derive(Debug)]
pub struct SegmentKeys {
    /// Bytes of the segment the prefix covers.
    prefix_len: Mutex<u64>,
    prefix: RwLock<Option<Arc<Vec<KeyEntry>>>>,
    /// hash → (rel, pos) of batches appended after the prefix, in append order.
    live: RwLock<HashMap<u32, Vec<(u32, u32)>>>,
}

impl SegmentKeys {
    /// An index whose first `prefix_len` bytes are already in the segment file.
    pub fn new(prefix_len: u64) -> Self {
        let prefix = (prefix_len == 0).then(|| Arc::new(Vec::new()));
        SegmentKeys { prefix_len: Mutex::new(prefix_len), prefix: RwLock::new(prefix), live: RwLock::default() }
    }

    /// Adds the batch at (`rel`, `pos`) under each of `hashes` (called by the writer after
    /// the bytes are written, before they are committed).
    pub fn add(&self, rel: u32, pos: u32, hashes: &[u32]) {
        if hashes.is_empty() {
            return;
        }
        let mut live = self.live.write();
        for h in hashes {
            live.entry(*h).or_default().push((rel, pos));
        }
    }

    /// Forgets the batches at byte positions `>= len` (the segment was cut there).
    pub fn truncate(&self, len: u64) {
        let mut prefix_len = self.prefix_len.lock();
        *prefix_len = (*prefix_len).min(len);
        let mut prefix = self.prefix.write();
        if let Some(p) = prefix.as_ref().filter(|p| p.iter().any(|e| u64::from(e.pos) >= len)) {
            let kept: Vec<KeyEntry> = p.iter().filter(|e| u64::from(e.pos) < len).copied().collect();
            *prefix = Some(Arc::new(kept));
        }
        let mut live = self.live.write();
        for v in live.values_mut() {
            v.retain(|(_, pos)| u64::from(*pos) < len);
        }
        live.retain(|_, v| !v.is_empty());
    }

    /// `(rel, pos)` of every batch indexed under `hash` with relative offset `>= from_rel`,
    /// ordered by `rel`. `load` rebuilds the prefix when it is not in memory yet.
    pub fn lookup(
        &self,
        hash: u32,
        from_rel: u32,
        load: impl FnOnce(u64) -> std::io::Result<Vec<KeyEntry>>,
    ) -> std::io::Result<Vec<(u32, u32)>> {
        let prefix = self.prefix(load)?;
        let start = prefix.partition_point(|e| (e.hash, e.rel) < (hash, from_rel));
        let mut out: Vec<(u32, u32)> =
            prefix[start..].iter().take_while(|e| e.hash == hash).map(|e| (e.rel, e.pos)).collect();
        if let Some(v) = self.live.read().get(&hash) {
            let s = v.partition_point(|(rel, _)| *rel < from_rel);
            out.extend_from_slice(&v[s..]);
        }
        // A concurrent `seal` can show an entry in both parts for a moment.
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    fn prefix(&self, load: impl FnOnce(u64) -> std::io::Result<Vec<KeyEntry>>) -> std::io::Result<Arc<Vec<KeyEntry>>> {
        if let Some(p) = self.prefix.read().as_ref() {
            return Ok(p.clone());
        }
        // One loader at a time; the others wait and then find it loaded.
        let len = self.prefix_len.lock();
        if let Some(p) = self.prefix.read().as_ref() {
            return Ok(p.clone());
        }
        let mut entries = load(*len)?;
        entries.sort_unstable();
        let p = Arc::new(entries);
        *self.prefix.write() = Some(p.clone());
        Ok(p)
    }

    /// Merges prefix and live entries into a new prefix covering `len` bytes and writes it
    /// to `path` (best effort: a file that is not written is rebuilt later).
    pub fn seal(
        &self,
        path: &Path,
        base: u64,
        len: u64,
        load: impl FnOnce(u64) -> std::io::Result<Vec<KeyEntry>>,
    ) -> std::io::Result<()> {
        let prefix = self.prefix(load)?;
        let mut all: Vec<KeyEntry> = prefix.as_ref().clone();
        {
            let live = self.live.read();
            for (hash, v) in live.iter() {
                all.extend(v.iter().map(|(rel, pos)| KeyEntry { hash: *hash, rel: *rel, pos: *pos }));
            }
        }
        all.sort_unstable();
        all.dedup();
        let write = write_file(path, base, len, &all);
        *self.prefix_len.lock() = len;
        *self.prefix.write() = Some(Arc::new(all));
        self.live.write().clear();
        write
    }
}

/// Writes a `.keys` file atomically (temporary file + rename; no fsync: it is a cache).
pub fn write_file(path: &Path, base: u64, covered: u64, entries: &[KeyEntry]) -> std::io::Result<()> {
    let mut body = Vec::with_capacity(entries.len() * ENTRY);
    for e in entries {
        body.extend_from_slice(&e.hash.to_le_bytes());
        body.extend_from_slice(&e.rel.to_le_bytes());
        body.extend_from_slice(&e.pos.to_le_bytes());
    }
    let mut head = Vec::with_capacity(HEADER);
    head.extend_from_slice(MAGIC);
    head.push(VERSION);
    head.extend_from_slice(&[0; 3]);
    head.extend_from_slice(&base.to_le_bytes());
    head.extend_from_slice(&covered.to_le_bytes());
    head.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    head.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    let tmp = path.with_extension("keys.tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&head)?;
        f.write_all(&body)?;
    }
    fs::rename(&tmp, path)
}

/// Reads a `.keys` file written for segment `base`. Returns the bytes of segment it covers
/// and its entries, or `None` if it is missing, damaged or for another segment.
pub fn read_file(path: &Path, base: u64) -> Option<(u64, Vec<KeyEntry>)> {
    let data = fs::read(path).ok()?;
    if data.len() < HEADER || &data[0..4] != MAGIC || data[4] != VERSION {
        return None;
    }
    let u64_at = |i: usize| data.get(i..i + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    let u32_at = |i: usize| data.get(i..i + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
    if u64_at(8)? != base {
        return None;
    }
    let covered = u64_at(16)?;
    let count = u32_at(24)? as usize;
    let crc = u32_at(28)?;
    let body = data.get(HEADER..)?;
    if body.len() != count.checked_mul(ENTRY)? || crc32fast::hash(body) != crc {
        return None;
    }
    let entries = body
        .chunks_exact(ENTRY)
        .map(|c| KeyEntry {
            hash: u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
            rel: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            pos: u32::from_le_bytes([c[8], c[9], c[10], c[11]]),
        })
        .collect();
    Some((covered, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_merge_the_prefix_and_live_entries_in_offset_order() {
        let k = SegmentKeys::new(100);
        let prefix = vec![
            KeyEntry { hash: 7, rel: 0, pos: 0 },
            KeyEntry { hash: 9, rel: 1, pos: 40 },
            KeyEntry { hash: 7, rel: 2, pos: 80 },
        ];
        k.add(3, 100, &[7]);
        k.add(4, 140, &[9, 7]);
        let got = k.lookup(7, 1, |len| {
            assert_eq!(len, 100);
            Ok(prefix.clone())
        });
        assert_eq!(got.unwrap(), vec![(2, 80), (3, 100), (4, 140)]);
        let again = k.lookup(9, 0, |_| panic!("the prefix is loaded once")).unwrap();
        assert_eq!(again, vec![(1, 40), (4, 140)]);
    }

    #[test]
    fn key_files_round_trip_and_reject_damage_or_another_segment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000000000000010.keys");
        let entries: Vec<KeyEntry> = (0..100).map(|i| KeyEntry { hash: i % 7, rel: i, pos: i * 50 }).collect();
        write_file(&path, 10, 5000, &entries).unwrap();
        assert_eq!(read_file(&path, 10), Some((5000, entries)));
        assert_eq!(read_file(&path, 11), None);
        let mut data = fs::read(&path).unwrap();
        let last = data.len() - 1;
        data[last] ^= 1;
        fs::write(&path, &data).unwrap();
        assert_eq!(read_file(&path, 10), None);
        fs::write(&path, &data[..HEADER - 1]).unwrap();
        assert_eq!(read_file(&path, 10), None);
    }

    #[test]
    fn truncation_drops_entries_at_or_past_the_cut_in_both_parts() {
        let k = SegmentKeys::new(100);
        let prefix = vec![KeyEntry { hash: 7, rel: 0, pos: 0 }, KeyEntry { hash: 7, rel: 2, pos: 80 }];
        k.add(3, 100, &[7]);
        assert_eq!(k.lookup(7, 0, |_| Ok(prefix.clone())).unwrap().len(), 3);
        k.truncate(80);
        assert_eq!(k.lookup(7, 0, |_| unreachable!()).unwrap(), vec![(0, 0)]);
        k.add(2, 80, &[7]);
        assert_eq!(k.lookup(7, 0, |_| unreachable!()).unwrap(), vec![(0, 0), (2, 80)]);
        // Not loaded yet: the prefix is rebuilt over the bytes that remain.
        let lazy = SegmentKeys::new(500);
        lazy.truncate(120);
        let got = lazy.lookup(1, 0, |len| {
            assert_eq!(len, 120);
            Ok(vec![KeyEntry { hash: 1, rel: 0, pos: 0 }])
        });
        assert_eq!(got.unwrap(), vec![(0, 0)]);
    }

    #[test]
    fn sealing_merges_everything_into_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.keys");
        let k = SegmentKeys::new(0);
        k.add(0, 0, &[1]);
        k.add(1, 30, &[2]);
        k.seal(&path, 0, 60, |_| unreachable!()).unwrap();
        let (covered, entries) = read_file(&path, 0).unwrap();
        assert_eq!(covered, 60);
        assert_eq!(entries.len(), 2);
        assert_eq!(k.lookup(2, 0, |_| unreachable!()).unwrap(), vec![(1, 30)]);
    }
}
