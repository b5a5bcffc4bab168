//! The leader-epoch cache: which leader epoch wrote which offsets, for replicas to find where
//! their log diverges from a new leader's (Kafka's OffsetsForLeaderEpoch; see
//! `docs/replication.md`).
//!
//! In memory it is the run-length encoding of the `leader_epoch` field of the partition's
//! batches, in offset order: one `(epoch, start offset)` entry wherever the epoch differs from
//! the previous batch's. The writer updates it for every batch it stages (normal and sealed
//! appends) and trims it on truncation and failed writes, so its entries may run ahead of the
//! durable end; queries clamp every entry to `[log_start, log_end)` and so see exactly the
//! batches readers of the durable log see.
//!
//! On disk it is cached in `leader-epochs` (layout in `docs/log-format.md`), which says: "these
//! are the entries for every batch below `covered`". It is rewritten on roll, on clean close
//! and after an open that had to scan, best effort (an older file stays correct: it covers
//! less), and durably by every truncation *before* any data is cut, so no file on disk
//! ever describes offsets that were later rewritten. On open the entries are trimmed to the
//! recovered log, each entry's start is checked against the batch header there, and the batch
//! headers past `covered` are scanned; a missing or inconsistent file is replaced by a scan of
//! every batch header (48 bytes each, records skipped by length).

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use crate::error::{LogError, Result};
use crate::segment::{BatchPosition, Segment};

const FILE: &str = "leader-epochs";
const MAGIC: &[u8; 4] = b"AXLE";
const VERSION: u8 = 1;
/// magic 4, version 1, pad 3, covered 8, count 4, crc 4
const HEADER: usize = 24;
/// epoch u32, start offset u64
const ENTRY: usize = 12;

/// Epoch runs of a partition's batches: `(epoch, offset of the first batch of the run)`,
/// sorted by offset, no two neighbours with the same epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochCache {
    entries: Vec<(u32, u64)>,
}

impl EpochCache {
    /// A cache from `(epoch, start)` pairs; `None` unless starts strictly increase and
    /// neighbouring epochs differ.
    pub fn from_entries(entries: Vec<(u32, u64)>) -> Option<Self> {
        let ok = entries.windows(2).all(|w| w[0].1 < w[1].1 && w[0].0 != w[1].0);
        ok.then_some(EpochCache { entries })
    }

    pub fn entries(&self) -> &[(u32, u64)] {
        &self.entries
    }

    /// Records a batch with base offset `base` (after every batch recorded so far).
    pub fn on_batch(&mut self, epoch: u32, base: u64) {
        if self.entries.last().map(|e| e.0) != Some(epoch) {
            self.entries.push((epoch, base));
        }
    }

    /// Epoch of the last batch recorded, durable or not.
    pub fn last_epoch(&self) -> Option<u32> {
        self.entries.last().map(|e| e.0)
    }

    /// Forgets batches at offsets `>= offset`.
    pub fn truncate_from(&mut self, offset: u64) {
        let keep = self.entries.partition_point(|e| e.1 < offset);
        self.entries.truncate(keep);
    }

    /// Forgets batches below `log_start`: the run holding `log_start` now starts there.
    pub fn truncate_before(&mut self, log_start: u64) {
        let holding = self.entries.partition_point(|e| e.1 <= log_start);
        if holding > 0 {
            self.entries.drain(..holding - 1);
            self.entries[0].1 = self.entries[0].1.max(log_start);
        }
    }

    /// `(epoch, first offset, end offset)` of each run, clamped to `[log_start, log_end)`,
    /// empty runs left out.
    fn runs(&self, log_start: u64, log_end: u64) -> impl Iterator<Item = (u32, u64, u64)> + '_ {
        self.entries.iter().enumerate().filter_map(move |(i, &(epoch, start))| {
            let next = self.entries.get(i + 1).map_or(u64::MAX, |e| e.1);
            let (lo, hi) = (start.max(log_start), next.min(log_end));
            (lo < hi).then_some((epoch, lo, hi))
        })
    }

    /// OffsetsForLeaderEpoch: the largest epoch `e <= epoch` with batches in
    /// `[log_start, log_end)`, and the base offset of the first later batch with an epoch
    /// above `e` (or `log_end` if none).
    pub fn end_offset(&self, epoch: u32, log_start: u64, log_end: u64) -> Option<(u32, u64)> {
        let runs: Vec<(u32, u64, u64)> = self.runs(log_start, log_end).collect();
        let e = runs.iter().map(|r| r.0).filter(|e| *e <= epoch).max()?;
        let first = runs.iter().position(|r| r.0 == e)?;
        let end = runs[first + 1..].iter().find(|r| r.0 > e).map_or(log_end, |r| r.1);
        Some((e, end))
    }

    /// Epoch of the batch holding `offset`, if `offset` is in `[log_start, log_end)`.
    pub fn epoch_at(&self, offset: u64, log_start: u64, log_end: u64) -> Option<u32> {
        if offset < log_start || offset >= log_end {
            return None;
        }
        let i = self.entries.partition_point(|e| e.1 <= offset);
        i.checked_sub(1).map(|i| self.entries[i].0)
    }

    /// Epoch of the last batch in `[log_start, log_end)`.
    pub fn latest(&self, log_start: u64, log_end: u64) -> Option<u32> {
        self.runs(log_start, log_end).last().map(|r| r.0)
    }
}

/// Writes `leader-epochs` for the batches below `covered`: temporary file, `fdatasync`,
/// rename. The caller syncs the directory.
pub fn write_file(dir: &Path, covered: u64, cache: &EpochCache) -> Result<()> {
    let mut buf = Vec::with_capacity(HEADER + cache.entries.len() * ENTRY);
    buf.extend_from_slice(MAGIC);
    buf.push(VERSION);
    buf.extend_from_slice(&[0; 3]);
    buf.extend_from_slice(&covered.to_le_bytes());
    buf.extend_from_slice(&(cache.entries.len() as u32).to_le_bytes());
    let mut body = Vec::with_capacity(cache.entries.len() * ENTRY);
    for (epoch, start) in &cache.entries {
        body.extend_from_slice(&epoch.to_le_bytes());
        body.extend_from_slice(&start.to_le_bytes());
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&buf);
    h.update(&body);
    buf.extend_from_slice(&h.finalize().to_le_bytes());
    buf.extend_from_slice(&body);
    let tmp = dir.join("leader-epochs.tmp");
    let path = dir.join(FILE);
    (|| -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_data()?;
        fs::rename(&tmp, &path)
    })()
    .map_err(|e| LogError::io(&path, e))
}

/// Reads `leader-epochs`: `(covered, cache)`, or `None` if it is missing or damaged.
pub fn read_file(dir: &Path) -> Option<(u64, EpochCache)> {
    let data = fs::read(dir.join(FILE)).ok()?;
    if data.len() < HEADER || &data[0..4] != MAGIC || data[4] != VERSION {
        return None;
    }
    let covered = u64::from_le_bytes(data[8..16].try_into().ok()?);
    let count = u32::from_le_bytes(data[16..20].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(data[20..24].try_into().ok()?);
    let body = &data[HEADER..];
    if body.len() != count.checked_mul(ENTRY)? {
        return None;
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&data[..20]);
    h.update(body);
    if h.finalize() != crc {
        return None;
    }
    let entries = body
        .chunks_exact(ENTRY)
        .map(|c| {
            (u32::from_le_bytes([c[0], c[1], c[2], c[3]]), u64::from_le_bytes(c[4..12].try_into().unwrap_or([0; 8])))
        })
        .collect();
    Some((covered, EpochCache::from_entries(entries)?))
}

/// Removes `leader-epochs` (a partition directory without segments starts afresh).
pub fn remove_file(dir: &Path) -> Result<()> {
    let path = dir.join(FILE);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(LogError::io(&path, e)),
        _ => Ok(()),
    }
}

/// Rebuilds the cache of a recovered partition whose `segments` hold offsets up to
/// `log_end`: from `leader-epochs` where it is consistent with them, scanning batch headers
/// for the rest. Returns the cache and whether the file should be rewritten.
pub fn recover(dir: &Path, segments: &[Arc<Segment>], log_end: u64, max_batch: usize) -> Result<(EpochCache, bool)> {
    let log_start = segments.first().map_or(log_end, |s| s.base_offset);
    let loaded = read_file(dir).and_then(|(covered, mut cache)| {
        let covered = covered.min(log_end);
        if covered <= log_start {
            return None;
        }
        cache.truncate_from(covered);
        cache.truncate_before(log_start);
        Some((cache, covered))
    });
    if let Some((mut cache, covered)) = loaded {
        if entries_match(&cache, segments, max_batch)? && scan(&mut cache, segments, covered, log_end, max_batch)? {
            let stale = covered != log_end;
            return Ok((cache, stale));
        }
        tracing::warn!(dir = %dir.display(), "leader-epochs does not match the log; rebuilding it from batch headers");
    }
    let mut cache = EpochCache::default();
    if log_start < log_end && !scan(&mut cache, segments, log_start, log_end, max_batch)? {
        return Err(LogError::CorruptBatch {
            path: dir.to_path_buf(),
            position: 0,
            reason: format!("no batch starts at the log start offset {log_start}"),
        });
    }
    Ok((cache, true))
}

/// The segment holding `offset` (the last one starting at or before it).
fn segment_for(segments: &[Arc<Segment>], offset: u64) -> usize {
    segments.partition_point(|s| s.base_offset <= offset).saturating_sub(1)
}

/// Whether a batch with each entry's epoch starts at each entry's offset.
fn entries_match(cache: &EpochCache, segments: &[Arc<Segment>], max_batch: usize) -> Result<bool> {
    for &(epoch, start) in cache.entries() {
        let seg = &segments[segment_for(segments, start)];
        match seg.find_batch(start, max_batch)? {
            BatchPosition::Start { header, .. } if header.leader_epoch == epoch => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}

/// Adds the epochs of the batches in `from..log_end` to `cache`, reading only headers.
/// Returns false if no batch starts at `from`.
fn scan(cache: &mut EpochCache, segments: &[Arc<Segment>], from: u64, log_end: u64, max_batch: usize) -> Result<bool> {
    if from >= log_end {
        return Ok(true);
    }
    let first = segment_for(segments, from);
    let mut pos = match segments[first].find_batch(from, max_batch)? {
        BatchPosition::Start { pos, .. } | BatchPosition::End { pos } => pos,
        BatchPosition::Inside { .. } => return Ok(false),
    };
    for seg in &segments[first..] {
        seg.walk_headers(pos, u64::MAX, max_batch, |_, h| {
            if h.base_offset >= log_end {
                return Ok(false);
            }
            if h.base_offset >= from {
                cache.on_batch(h.leader_epoch, h.base_offset);
            }
            Ok(true)
        })?;
        pos = 0;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Batches with epochs 1, 1, 2, 4 of three records each: offsets 0..12.
    fn sample() -> EpochCache {
        let mut c = EpochCache::default();
        for (epoch, base) in [(1, 0), (1, 3), (2, 6), (4, 9)] {
            c.on_batch(epoch, base);
        }
        c
    }

    #[test]
    fn epoch_end_offsets_follow_offsets_for_leader_epoch() {
        let c = sample();
        assert_eq!(c.entries(), &[(1, 0), (2, 6), (4, 9)]);
        assert_eq!(c.end_offset(0, 0, 12), None);
        assert_eq!(c.end_offset(1, 0, 12), Some((1, 6)));
        assert_eq!(c.end_offset(2, 0, 12), Some((2, 9)));
        assert_eq!(c.end_offset(3, 0, 12), Some((2, 9)));
        assert_eq!(c.end_offset(4, 0, 12), Some((4, 12)));
        assert_eq!(c.end_offset(5, 0, 12), Some((4, 12)));
        assert_eq!(c.latest(0, 12), Some(4));
        assert_eq!(EpochCache::default().end_offset(7, 0, 0), None);
    }

    #[test]
    fn entries_past_the_durable_end_are_invisible() {
        let c = sample();
        // Only offsets 0..9 durable: epoch 4 is not there yet.
        assert_eq!(c.end_offset(5, 0, 9), Some((2, 9)));
        assert_eq!(c.latest(0, 9), Some(2));
        assert_eq!(c.epoch_at(9, 0, 9), None);
        assert_eq!(c.epoch_at(8, 0, 9), Some(2));
    }

    #[test]
    fn trimming_either_end_keeps_the_runs_that_remain() {
        let mut c = sample();
        c.truncate_from(9);
        assert_eq!(c.entries(), &[(1, 0), (2, 6)]);
        c.truncate_before(7);
        assert_eq!(c.entries(), &[(2, 7)]);
        assert_eq!(c.end_offset(1, 7, 9), None);
        assert_eq!(c.end_offset(3, 7, 9), Some((2, 9)));
        let mut d = sample();
        d.truncate_before(6);
        assert_eq!(d.entries(), &[(2, 6), (4, 9)]);
        d.truncate_from(0);
        assert_eq!(d.entries(), &[]);
    }

    #[test]
    fn the_file_round_trips_and_rejects_damage() {
        let dir = tempfile::tempdir().unwrap();
        write_file(dir.path(), 12, &sample()).unwrap();
        assert_eq!(read_file(dir.path()), Some((12, sample())));
        let path = dir.path().join(FILE);
        let mut raw = fs::read(&path).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        fs::write(&path, &raw).unwrap();
        assert_eq!(read_file(dir.path()), None);
        assert!(EpochCache::from_entries(vec![(1, 5), (2, 5)]).is_none());
        assert!(EpochCache::from_entries(vec![(1, 5), (1, 6)]).is_none());
    }
}
