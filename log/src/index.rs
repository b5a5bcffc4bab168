//! Sparse per-segment indexes: the offset index (relative offset → byte position) and the
//! time index (timestamp bound → relative offset).
//!
//! Both are kept in memory for every segment and written to `<base>.index` and
//! `<base>.timeindex` when a segment is closed (rolled, or at clean shutdown). A file is
//! trusted only if its header matches the segment (base offset and exact segment length) and
//! its CRC is right; otherwise the index is rebuilt by scanning the segment.
//!
//! Invariants:
//! - Entries are added only at batch boundaries, in file order, so both vectors are sorted.
//! - An offset entry `(rel, pos)` means the batch whose base offset is `base + rel` starts at
//!   byte `pos`.
//! - A time entry `(t, rel)` means every record before relative offset `rel` in this segment
//!   has a timestamp `< t` (`t` is the largest timestamp seen before `rel`, plus one), so a
//!   search for the first record at or after `ts` may start at the last entry with `t <= ts`.

use std::fs;
use std::io::Write;
use std::path::Path;

/// An offset-index entry. Units: `rel_offset` in records from the segment's base offset,
/// `position` in bytes from the start of the segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    pub rel_offset: u32,
    pub position: u32,
}

/// A time-index entry: all records before `rel_offset` have timestamps `< bound` (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub bound: i64,
    pub rel_offset: u32,
}

/// Both sparse indexes of one segment, plus the running statistics they are built from.
#[derive(Debug, Clone)]
pub struct SegmentIndex {
    interval: u32,
    offsets: Vec<OffsetEntry>,
    times: Vec<TimeEntry>,
    bytes_since_entry: u32,
    /// Largest record timestamp in the segment so far (ms), `i64::MIN` when empty.
    max_timestamp: i64,
    /// Timestamp of the segment's first batch (ms), `None` when empty.
    first_timestamp: Option<i64>,
}

const MAGIC: &[u8; 4] = b"AXIX";
const VERSION: u8 = 1;
const KIND_OFFSET: u8 = 1;
const KIND_TIME: u8 = 2;
/// magic 4, version 1, kind 1, pad 2, base 8, segment_len 8, max_ts 8, first_ts 8, count 4, crc 4
const FILE_HEADER: usize = 48;

impl SegmentIndex {
    /// An empty index adding one entry per `interval` bytes of batches.
    pub fn new(interval: u32) -> Self {
        SegmentIndex {
            interval,
            offsets: Vec::new(),
            times: Vec::new(),
            bytes_since_entry: 0,
            max_timestamp: i64::MIN,
            first_timestamp: None,
        }
    }

    /// Records that a batch of `len` bytes with base `rel_offset` starts at `position`.
    pub fn on_batch(&mut self, rel_offset: u32, position: u32, len: u32, first_ts: i64, max_ts: i64) {
        if self.offsets.is_empty() || self.bytes_since_entry >= self.interval {
            self.offsets.push(OffsetEntry { rel_offset, position });
            let bound = self.max_timestamp.saturating_add(1);
            if self.max_timestamp != i64::MIN && self.times.last().is_none_or(|t| t.bound < bound) {
                self.times.push(TimeEntry { bound, rel_offset });
            }
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry = self.bytes_since_entry.saturating_add(len);
        self.max_timestamp = self.max_timestamp.max(max_ts).max(first_ts);
        if self.first_timestamp.is_none() {
            self.first_timestamp = Some(first_ts);
        }
    }

    /// Forgets the batches at relative offsets `>= rel` (the segment was cut at that batch
    /// boundary). The maximum timestamp is kept unless the segment is now empty: it stays an
    /// upper bound, which only makes time lookups and age-based retention look at the segment
    /// a little longer.
    pub fn truncate(&mut self, rel: u32) {
        self.offsets.retain(|e| e.rel_offset < rel);
        self.times.retain(|e| e.rel_offset < rel);
        if self.offsets.is_empty() {
            self.times.clear();
            self.max_timestamp = i64::MIN;
            self.first_timestamp = None;
        }
        // The next batch gets an entry of its own.
        self.bytes_since_entry = self.interval;
    }

    /// Byte position at which to start scanning for `rel_offset`.
    pub fn position_for(&self, rel_offset: u32) -> u32 {
        let i = self.offsets.partition_point(|e| e.rel_offset <= rel_offset);
        if i == 0 {
            0
        } else {
            self.offsets[i - 1].position
        }
    }

    /// The relative offset of the last indexed batch start at or before `rel_offset` (0 if
    /// none): the batch holding `rel_offset` starts there or later.
    pub fn rel_offset_at_or_before(&self, rel_offset: u32) -> u32 {
        let i = self.offsets.partition_point(|e| e.rel_offset <= rel_offset);
        if i == 0 {
            0
        } else {
            self.offsets[i - 1].rel_offset
        }
    }

    /// Relative offset at which to start scanning for the first record with timestamp `>= ts`.
    pub fn rel_offset_for_time(&self, ts: i64) -> u32 {
        let i = self.times.partition_point(|e| e.bound <= ts);
        if i == 0 {
            0
        } else {
            self.times[i - 1].rel_offset
        }
    }

    /// Largest record timestamp in the segment (ms), `None` when the segment is empty.
    pub fn max_timestamp(&self) -> Option<i64> {
        (self.max_timestamp != i64::MIN).then_some(self.max_timestamp)
    }

    /// Timestamp of the first batch (ms), `None` when the segment is empty.
    pub fn first_timestamp(&self) -> Option<i64> {
        self.first_timestamp
    }

    /// Writes both index files for a segment of exactly `segment_len` bytes and fsyncs them.
    pub fn persist(&self, log_path: &Path, base: u64, segment_len: u64) -> std::io::Result<()> {
        let mut body = Vec::with_capacity(self.offsets.len() * 8);
        for e in &self.offsets {
            body.extend_from_slice(&e.rel_offset.to_le_bytes());
            body.extend_from_slice(&e.position.to_le_bytes());
        }
        write_file(&log_path.with_extension("index"), KIND_OFFSET, base, segment_len, self, self.offsets.len(), &body)?;
        let mut body = Vec::with_capacity(self.times.len() * 12);
        for e in &self.times {
            body.extend_from_slice(&e.bound.to_le_bytes());
            body.extend_from_slice(&e.rel_offset.to_le_bytes());
        }
        write_file(&log_path.with_extension("timeindex"), KIND_TIME, base, segment_len, self, self.times.len(), &body)
    }

    /// Loads both index files of a segment. Returns `None` (the caller rebuilds) unless both
    /// exist, match `base` and `segment_len`, pass their CRC and hold sorted entries within
    /// the segment.
    pub fn load(log_path: &Path, base: u64, segment_len: u64, interval: u32) -> Option<Self> {
        let (stats, offs) = read_file(&log_path.with_extension("index"), KIND_OFFSET, base, segment_len)?;
        let (stats2, times) = read_file(&log_path.with_extension("timeindex"), KIND_TIME, base, segment_len)?;
        if stats != stats2 {
            return None;
        }
        let mut idx = SegmentIndex::new(interval);
        for c in offs.chunks_exact(8) {
            let rel_offset = u32::from_le_bytes(c[0..4].try_into().ok()?);
            let position = u32::from_le_bytes(c[4..8].try_into().ok()?);
            if u64::from(position) >= segment_len
                || idx.offsets.last().is_some_and(|l| l.rel_offset >= rel_offset || l.position >= position)
            {
                return None;
            }
            idx.offsets.push(OffsetEntry { rel_offset, position });
        }
        for c in times.chunks_exact(12) {
            let bound = i64::from_le_bytes(c[0..8].try_into().ok()?);
            let rel_offset = u32::from_le_bytes(c[8..12].try_into().ok()?);
            if idx.times.last().is_some_and(|l| l.bound >= bound || l.rel_offset > rel_offset) {
                return None;
            }
            idx.times.push(TimeEntry { bound, rel_offset });
        }
        if segment_len > 0 && idx.offsets.first().map(|e| e.position) != Some(0) {
            return None;
        }
        idx.max_timestamp = stats.0;
        idx.first_timestamp = (stats.1 != i64::MIN).then_some(stats.1);
        // Resume appends (after a clean shutdown) with a fresh entry on the next batch.
        idx.bytes_since_entry = idx.interval;
        Some(idx)
    }
}

fn write_file(
    path: &Path,
    kind: u8,
    base: u64,
    segment_len: u64,
    idx: &SegmentIndex,
    count: usize,
    body: &[u8],
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(FILE_HEADER + body.len());
    buf.extend_from_slice(MAGIC);
    buf.push(VERSION);
    buf.push(kind);
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(&base.to_le_bytes());
    buf.extend_from_slice(&segment_len.to_le_bytes());
    buf.extend_from_slice(&idx.max_timestamp.to_le_bytes());
    buf.extend_from_slice(&idx.first_timestamp.unwrap_or(i64::MIN).to_le_bytes());
    buf.extend_from_slice(&(count as u32).to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&buf);
    h.update(body);
    buf.extend_from_slice(&h.finalize().to_le_bytes());
    buf.extend_from_slice(body);
    let tmp = path.with_extension(format!("{}.tmp", path.extension().and_then(|e| e.to_str()).unwrap_or("idx")));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(&buf)?;
    f.sync_data()?;
    fs::rename(&tmp, path)
}

/// Returns ((max_ts, first_ts), entry bytes).
fn read_file(path: &Path, kind: u8, base: u64, segment_len: u64) -> Option<((i64, i64), Vec<u8>)> {
    let data = fs::read(path).ok()?;
    if data.len() < FILE_HEADER || &data[0..4] != MAGIC || data[4] != VERSION || data[5] != kind {
        return None;
    }
    let u64_at = |at: usize| u64::from_le_bytes(data[at..at + 8].try_into().unwrap_or([0; 8]));
    if u64_at(8) != base || u64_at(16) != segment_len {
        return None;
    }
    let max_ts = u64_at(24) as i64;
    let first_ts = u64_at(32) as i64;
    let count = u32::from_le_bytes(data[40..44].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(data[44..48].try_into().ok()?);
    let entry = if kind == KIND_OFFSET { 8 } else { 12 };
    let body = &data[FILE_HEADER..];
    if body.len() != count.checked_mul(entry)? {
        return None;
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&data[..44]);
    h.update(body);
    if h.finalize() != crc {
        return None;
    }
    Some(((max_ts, first_ts), body.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_return_the_entry_at_or_before_the_target() {
        let mut idx = SegmentIndex::new(100);
        // 10 batches of 10 records, 60 bytes each, timestamps 1000, 1010, ...
        for b in 0..10u32 {
            idx.on_batch(b * 10, b * 60, 60, 1000 + i64::from(b) * 10, 1000 + i64::from(b) * 10 + 5);
        }
        assert_eq!(idx.position_for(0), 0);
        assert_eq!(idx.position_for(5), 0);
        // entries at batches 0, 2, 4, 6, 8 (every >= 100 bytes)
        assert_eq!(idx.position_for(25), 120);
        assert_eq!(idx.position_for(99), 480);
        assert_eq!(idx.rel_offset_for_time(0), 0);
        // batch 4 starts after max ts 1035 -> bound 1036
        assert_eq!(idx.rel_offset_for_time(1040), 40);
        assert_eq!(idx.max_timestamp(), Some(1095));
    }

    #[test]
    fn truncation_forgets_entries_at_or_past_the_cut() {
        let mut idx = SegmentIndex::new(100);
        for b in 0..10u32 {
            idx.on_batch(b * 10, b * 60, 60, 1000 + i64::from(b) * 10, 1000 + i64::from(b) * 10 + 5);
        }
        idx.truncate(40);
        assert_eq!(idx.position_for(99), 120, "the entry at batch 4 is gone");
        assert_eq!(idx.rel_offset_for_time(5000), 20);
        idx.on_batch(40, 240, 60, 7000, 7000);
        assert_eq!(idx.position_for(45), 240, "the next batch gets an entry of its own");
        idx.truncate(0);
        assert_eq!((idx.max_timestamp(), idx.first_timestamp()), (None, None));
        assert_eq!(idx.position_for(5), 0);
    }

    #[test]
    fn index_files_round_trip_and_reject_a_length_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("00000000000000000100.log");
        let mut idx = SegmentIndex::new(1);
        for b in 0..5u32 {
            idx.on_batch(b, b * 70, 70, 5, 6 + i64::from(b));
        }
        idx.persist(&log, 100, 350).unwrap();
        let back = SegmentIndex::load(&log, 100, 350, 1).expect("loads");
        assert_eq!(back.offsets, idx.offsets);
        assert_eq!(back.times, idx.times);
        assert_eq!(back.max_timestamp(), Some(10));
        assert!(SegmentIndex::load(&log, 100, 351, 1).is_none());
        assert!(SegmentIndex::load(&log, 101, 350, 1).is_none());
        let mut raw = fs::read(log.with_extension("index")).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 0xff;
        fs::write(log.with_extension("index"), raw).unwrap();
        assert!(SegmentIndex::load(&log, 100, 350, 1).is_none());
    }
}
