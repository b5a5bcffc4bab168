//! The state of one partition that readers share with the writer, and the read path.
//!
//! Invariants:
//! - `segments` is sorted by base offset and never empty; the last one is the active segment.
//! - `log_end` is the durable end (the LEO): the offset after the last record durable under
//!   the fsync policy. `end` is the reader-visible end: `log_end`, or `min(log_end, high
//!   watermark)` once the partition is put under a high watermark (replication, see
//!   `docs/replication.md`). Records at or past `end` are never returned to readers; only
//!   [`PartitionShared::read_batches`] reads up to `log_end`. `log_start` is the base offset
//!   of the oldest segment.
//! - `end` and the watch channel's value change only inside the channel's lock
//!   ([`PartitionShared::refresh_end`]), so concurrent publishers and high-watermark updates
//!   never leave them apart or let `end` pass the high watermark.
//! - Readers take the segment list lock only to clone `Arc`s; file reads happen outside it, so
//!   a slow reader never blocks the writer. A segment deleted by retention stays readable by
//!   readers that already hold it (its file descriptor stays open).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;
use tokio::sync::watch;

use crate::batch::{self, BatchDefect, BatchHeader};
use crate::config::LogConfig;
use crate::epochs::EpochCache;
use crate::error::{LogError, Result};
use crate::memo::{MemoBatch, MemoTail};
use crate::record::{RecordView, StoredRecord};
use crate::segment::{BatchPosition, Segment, Span};

/// What [`PartitionShared::read_key`] found.
#[derive(Debug, Clone, Default)]
pub struct KeyedRead {
    /// Records with the key, in offset order.
    pub records: Vec<StoredRecord>,
    /// Offset to continue from.
    pub next: u64,
}

/// Readable range of a partition: `log_start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Oldest readable offset.
    pub log_start: u64,
    /// The reader-visible end: nothing at or past it is readable yet. Without a high
    /// watermark it is the offset the next appended record will get (once durable); under
    /// one it is `min(log end, high watermark)`.
    pub end: u64,
}

/// Shared between the writer thread and every reader of the partition.
#[derive(Debug)]
pub struct PartitionShared {
    pub name: String,
    pub dir: PathBuf,
    pub config: Arc<LogConfig>,
    pub segments: RwLock<Vec<Arc<Segment>>>,
    /// The reader-visible end (see the module invariants).
    end: AtomicU64,
    /// The durable end, the LEO.
    log_end: AtomicU64,
    /// Set by `enable_high_watermark`; from then on `end = min(log_end, hw)`.
    hw_enabled: AtomicBool,
    /// The requested high watermark (may exceed `log_end`; only truncation lowers it).
    hw: AtomicU64,
    log_start: AtomicU64,
    end_tx: watch::Sender<u64>,
    /// Epochs of the batches, written by the writer thread (see `epochs.rs`).
    pub epochs: RwLock<EpochCache>,
    closed: AtomicBool,
    /// Set by a failed `fdatasync`; the partition then refuses appends until reopened. Set
    /// once (the first reason wins) and read without a lock by every staged append.
    poisoned: std::sync::OnceLock<String>,
    /// The appenders' in-memory forms of the newest batches (see `memo.rs`).
    pub memos: MemoTail,
}

impl PartitionShared {
    pub fn new(
        name: String,
        dir: PathBuf,
        config: Arc<LogConfig>,
        segments: Vec<Arc<Segment>>,
        end: u64,
        epochs: EpochCache,
    ) -> Self {
        let log_start = segments.first().map_or(0, |s| s.base_offset);
        let (end_tx, _) = watch::channel(end);
        PartitionShared {
            name,
            dir,
            config,
            segments: RwLock::new(segments),
            end: AtomicU64::new(end),
            log_end: AtomicU64::new(end),
            hw_enabled: AtomicBool::new(false),
            hw: AtomicU64::new(0),
            log_start: AtomicU64::new(log_start),
            end_tx,
            epochs: RwLock::new(epochs),
            closed: AtomicBool::new(false),
            poisoned: std::sync::OnceLock::new(),
            memos: MemoTail::default(),
        }
    }

    /// Takes the memo of the batch starting at `offset`, if one is kept and the batch is
    /// readable (see `memo.rs`).
    pub fn take_memo(&self, offset: u64) -> Option<MemoBatch> {
        let b = self.bounds();
        self.memos.take(offset, b.log_start, b.end)
    }

    pub fn bounds(&self) -> Bounds {
        // Load `log_start` after `end` so that a concurrent retention run can only make the
        // range look smaller, never include a deleted offset.
        let end = self.end.load(Ordering::Acquire);
        Bounds { log_start: self.log_start.load(Ordering::Acquire), end }
    }

    /// Records that everything below `end` is durable under the fsync policy: makes it
    /// visible (up to the high watermark, if any) and wakes tail readers.
    pub fn publish_end(&self, end: u64) {
        self.log_end.store(end, Ordering::Release);
        self.refresh_end();
    }

    /// The durable end (the LEO), regardless of the high watermark.
    pub fn log_end(&self) -> u64 {
        self.log_end.load(Ordering::Acquire)
    }

    /// Recomputes the visible end from `log_end` and the high watermark, and wakes tail
    /// readers and `wait_past` waiters if it moved. Runs inside the watch channel's lock, so
    /// the last caller always sees every store made before it.
    fn refresh_end(&self) {
        self.end_tx.send_if_modified(|visible| {
            let v = self.high_watermark();
            if *visible == v {
                return false;
            }
            *visible = v;
            self.end.store(v, Ordering::Release);
            true
        });
    }

    /// Puts the partition under a high watermark (see [`crate::Partition::enable_high_watermark`]).
    pub fn enable_high_watermark(&self, hw: u64) {
        if self.hw_enabled.load(Ordering::Acquire) {
            self.set_high_watermark(hw);
            return;
        }
        self.hw.store(hw, Ordering::Release);
        self.hw_enabled.store(true, Ordering::Release);
        self.refresh_end();
    }

    /// Raises the requested high watermark to `hw` (never lowers it).
    pub fn set_high_watermark(&self, hw: u64) {
        let before = self.hw.fetch_max(hw, Ordering::AcqRel);
        if hw > before && self.hw_enabled.load(Ordering::Acquire) {
            self.refresh_end();
        }
    }

    /// The effective high watermark, `min(requested, log_end)`; `log_end` without one. It is
    /// also what the visible end is recomputed to.
    pub fn high_watermark(&self) -> u64 {
        let durable = self.log_end();
        if self.hw_enabled.load(Ordering::Acquire) {
            durable.min(self.hw.load(Ordering::Acquire))
        } else {
            durable
        }
    }

    /// Truncation: the durable end, the high watermark and the visible end drop to `to` if
    /// they are above it.
    pub fn clamp_end(&self, to: u64) {
        self.log_end.fetch_min(to, Ordering::AcqRel);
        self.hw.fetch_min(to, Ordering::AcqRel);
        self.refresh_end();
    }

    pub fn set_log_start(&self, start: u64) {
        self.log_start.store(start, Ordering::Release);
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.end_tx.subscribe()
    }

    pub fn mark_closed(&self) {
        self.closed.store(true, Ordering::Release);
        self.end_tx.send_modify(|_| {});
    }

    /// Marks the partition failed (first reason wins).
    pub fn poison(&self, reason: String) {
        if self.poisoned.set(reason).is_ok() {
            let reason = self.poisoned.get().map_or("", String::as_str);
            tracing::error!(partition = %self.name, %reason, "the partition refuses further writes");
        }
    }

    pub fn poisoned(&self) -> Option<String> {
        self.poisoned.get().cloned()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn out_of_range(&self, requested: u64, b: Bounds) -> LogError {
        LogError::OffsetOutOfRange { partition: self.name.clone(), requested, log_start: b.log_start, end: b.end }
    }

    /// Whether `offset` past the visible end `b.end` is still in range: at most `log_end`
    /// (records there wait for the high watermark). Otherwise the out-of-range error.
    fn past_visible_end(&self, offset: u64, b: Bounds) -> Result<()> {
        if offset <= self.log_end() {
            Ok(())
        } else {
            Err(self.out_of_range(offset, b))
        }
    }

    /// Records from `offset` on: at most `max_records`, and stopping once the keys and values
    /// returned add up to `max_bytes` (at least one record is returned when one is readable).
    /// `offset == end`, and offsets above the high watermark up to `log_end`, return nothing;
    /// otherwise outside `log_start..=end` is `OffsetOutOfRange`.
    pub fn read(&self, offset: u64, max_records: usize, max_bytes: usize) -> Result<Vec<StoredRecord>> {
        self.read_map(offset, max_records, max_bytes, |r| r.to_stored())
    }

    /// [`Self::read`] through `f` (see `Partition::read_map`).
    pub fn read_map<T>(
        &self,
        offset: u64,
        max_records: usize,
        max_bytes: usize,
        mut f: impl FnMut(RecordView<'_>) -> T,
    ) -> Result<Vec<T>> {
        let b = self.bounds();
        if offset < b.log_start {
            return Err(self.out_of_range(offset, b));
        }
        if offset > b.end {
            return self.past_visible_end(offset, b).map(|()| Vec::new());
        }
        if offset == b.end || max_records == 0 {
            return Ok(Vec::new());
        }
        // Room for what the read can return, up to a bound (a read with no record limit
        // grows the vector as usual).
        let mut out = Vec::with_capacity(max_records.min((b.end - offset) as usize).min(1024));
        let mut bytes = 0usize;
        self.walk_batches(offset, b.end, |header, data| {
            if header.next_offset() <= offset {
                return Ok(true);
            }
            let mut full = false;
            batch::for_each_record(&data, &header, |r| {
                if r.offset < offset {
                    return true;
                }
                if r.offset >= b.end || out.len() >= max_records || (bytes >= max_bytes && !out.is_empty()) {
                    full = true;
                    return false;
                }
                bytes += r.value().len() + r.key().map_or(0, <[u8]>::len);
                out.push(f(r));
                true
            })
            .map_err(|d| LogError::CorruptBatch {
                path: self.dir.clone(),
                position: 0,
                reason: format!("batch at offset {}: {d}", header.base_offset),
            })?;
            Ok(!full && out.len() < max_records && bytes < max_bytes)
        })?;
        Ok(out)
    }

    /// Records whose key equals `key`, from `offset` on, found through the per-segment key
    /// index: only the batches holding the key are read. Limits as in [`Self::read`].
    /// `next` is where to continue: one past the last record returned when a limit was hit,
    /// otherwise the end the read covered (records with other keys before it were skipped).
    pub fn read_key(&self, key: &[u8], offset: u64, max_records: usize, max_bytes: usize) -> Result<KeyedRead> {
        let b = self.bounds();
        if offset < b.log_start {
            return Err(self.out_of_range(offset, b));
        }
        if offset > b.end {
            return self.past_visible_end(offset, b).map(|()| KeyedRead { records: Vec::new(), next: offset });
        }
        let mut out = KeyedRead { records: Vec::new(), next: b.end };
        if max_records == 0 {
            out.next = offset;
            return Ok(out);
        }
        let mut bytes = 0usize;
        for (seg, rel, pos) in self.key_batches(key, offset, b.end)? {
            let (header, data) = seg.read_batch(u64::from(pos), self.config.max_batch_bytes)?;
            if header.base_offset != seg.base_offset + u64::from(rel) {
                return Err(LogError::CorruptBatch {
                    path: seg.path.clone(),
                    position: u64::from(pos),
                    reason: format!(
                        "the key index points at a batch of offset {}, expected {}",
                        header.base_offset,
                        seg.base_offset + u64::from(rel)
                    ),
                });
            }
            let records = batch::decode_records(&data, &header).map_err(|d| seg.corrupt(u64::from(pos), d))?;
            for r in records {
                if r.offset < offset || r.offset >= b.end || r.key.as_deref() != Some(key) {
                    continue;
                }
                if out.records.len() >= max_records || (bytes >= max_bytes && !out.records.is_empty()) {
                    out.next = r.offset;
                    return Ok(out);
                }
                bytes += r.value.len() + key.len();
                out.records.push(r);
            }
        }
        Ok(out)
    }

    /// Base offsets of the batches at or after `offset` that the key index lists under
    /// `key`'s hash (a batch of another key with the same hash is listed too). With one
    /// record per batch this counts the key's records cheaply.
    pub fn key_batch_offsets(&self, key: &[u8], offset: u64) -> Result<Vec<u64>> {
        let b = self.bounds();
        if offset < b.log_start {
            return Err(self.out_of_range(offset, b));
        }
        if offset > b.end {
            return self.past_visible_end(offset, b).map(|()| Vec::new());
        }
        Ok(self
            .key_batches(key, offset, b.end)?
            .into_iter()
            .map(|(s, rel, _)| s.base_offset + u64::from(rel))
            .collect())
    }

    /// (segment, relative offset, position) of each batch indexed under `key`'s hash that can
    /// hold records in `offset..end`, in offset order.
    fn key_batches(&self, key: &[u8], offset: u64, end: u64) -> Result<Vec<(Arc<Segment>, u32, u32)>> {
        let hash = crate::keys::key_hash(key);
        let segments = self.segments.read().clone();
        let first = segments.partition_point(|s| s.base_offset <= offset).saturating_sub(1);
        let max_batch = self.config.max_batch_bytes;
        let mut out = Vec::new();
        for seg in &segments[first..] {
            if seg.base_offset >= end {
                break;
            }
            let committed = seg.committed_len();
            // A batch starting before `offset` can still hold records at `offset`.
            let from_rel = offset.saturating_sub(seg.base_offset).min(u64::from(u32::MAX)) as u32;
            let from_rel = seg.index.read().rel_offset_at_or_before(from_rel);
            let found = seg
                .keys
                .lookup(hash, from_rel, |prefix| seg.load_keys(prefix, max_batch))
                .map_err(|e| LogError::io(&seg.path, e))?;
            out.extend(
                found
                    .into_iter()
                    .filter(|(rel, pos)| u64::from(*pos) < committed && seg.base_offset + u64::from(*rel) < end)
                    .map(|(rel, pos)| (seg.clone(), rel, pos)),
            );
        }
        Ok(out)
    }

    /// The first offset whose record has a timestamp `>= ts_ms`, or `None` if every readable
    /// record is older (the caller then starts at `end`).
    pub fn offset_for_timestamp(&self, ts_ms: i64) -> Result<Option<u64>> {
        let b = self.bounds();
        let segments = self.segments.read().clone();
        for seg in &segments {
            let (max_ts, rel) = {
                let idx = seg.index.read();
                (idx.max_timestamp(), idx.rel_offset_for_time(ts_ms))
            };
            if max_ts.is_none_or(|m| m < ts_ms) {
                continue;
            }
            let start = (seg.base_offset + u64::from(rel)).max(b.log_start);
            let mut found = None;
            let seg_end = seg.committed_next().min(b.end);
            if start >= seg_end {
                continue;
            }
            self.walk_batches(start, seg_end, |header, data| {
                if header.max_timestamp < ts_ms {
                    return Ok(true);
                }
                let records = batch::decode_records(&data, &header).map_err(|d| LogError::CorruptBatch {
                    path: seg.path.clone(),
                    position: 0,
                    reason: d.to_string(),
                })?;
                found = records.iter().find(|r| r.offset >= start && r.timestamp >= ts_ms).map(|r| r.offset);
                Ok(found.is_none())
            })?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// Calls `f` for every CRC-verified batch that may hold offsets in `from..end`, in order,
    /// until it returns `Ok(false)`.
    fn walk_batches(&self, from: u64, end: u64, mut f: impl FnMut(BatchHeader, Bytes) -> Result<bool>) -> Result<()> {
        let segments = self.segments.read().clone();
        let first = segments.partition_point(|s| s.base_offset <= from).saturating_sub(1);
        let max_batch = self.config.max_batch_bytes;
        for (n, seg) in segments[first..].iter().enumerate() {
            if seg.base_offset >= end {
                break;
            }
            let pos = if n == 0 {
                let rel = from.saturating_sub(seg.base_offset).min(u64::from(u32::MAX)) as u32;
                u64::from(seg.index.read().position_for(rel))
            } else {
                0
            };
            let mut more = true;
            seg.walk(pos, u64::MAX, max_batch, |_, header, data| {
                if header.base_offset >= end {
                    more = false;
                    return Ok(false);
                }
                more = f(header, data)?;
                Ok(more)
            })?;
            if !more {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Whole batches as stored, from the one holding `offset` up to `log_end` (not gated by
    /// the high watermark): at least one if any, then more while their total stays within
    /// `max_bytes`. `offset == log_end` returns nothing; outside `log_start..=log_end` is
    /// `OffsetOutOfRange`.
    pub fn read_batches(&self, offset: u64, max_bytes: usize) -> Result<Vec<Bytes>> {
        let end = self.log_end();
        let b = Bounds { log_start: self.log_start.load(Ordering::Acquire), end };
        if offset < b.log_start || offset > end {
            return Err(self.out_of_range(offset, b));
        }
        if offset == end {
            return Ok(Vec::new());
        }
        self.batches_until(offset, end, max_bytes)
    }

    /// Whole batches from the one holding `offset`, each ending at or below `end`: at least
    /// one if any, then more while their total stays within `max_bytes`.
    fn batches_until(&self, offset: u64, end: u64, max_bytes: usize) -> Result<Vec<Bytes>> {
        let mut out = Vec::new();
        let mut total = 0usize;
        self.walk_batches(offset, end, |header, data| {
            if header.next_offset() <= offset {
                return Ok(true);
            }
            if header.next_offset() > end || (!out.is_empty() && total.saturating_add(data.len()) > max_bytes) {
                return Ok(false);
            }
            total += data.len();
            out.push(data);
            Ok(total < max_bytes)
        })?;
        Ok(out)
    }

    /// Whole batches as stored, for consumers, in one buffer read with one `pread` (see
    /// [`Segment::read_span`]): from the batch holding `offset` (it may start before it), then
    /// following batches of the same segment while they fit in `max_bytes`, all ending at or
    /// below the high watermark (which always falls on a batch boundary: it is some replica's
    /// log end). A span never crosses a segment. `None` when `offset >= end` within
    /// `log_end`; outside `log_start..=log_end` is `OffsetOutOfRange`.
    pub fn read_committed_span(&self, offset: u64, max_bytes: usize) -> Result<Option<Span>> {
        let b = self.bounds();
        if offset < b.log_start {
            return Err(self.out_of_range(offset, b));
        }
        if offset >= b.end {
            return self.past_visible_end(offset, b).map(|()| None);
        }
        let segments = self.segments.read().clone();
        let first = segments.partition_point(|s| s.base_offset <= offset).saturating_sub(1);
        let max_batch = self.config.max_batch_bytes;
        for seg in &segments[first..] {
            if seg.base_offset >= b.end {
                break;
            }
            let (pos, first) = match seg.find_batch(offset, max_batch)? {
                BatchPosition::Start { pos, header } | BatchPosition::Inside { pos, header } => (pos, header),
                BatchPosition::End { .. } => continue,
            };
            // The batch found must hold `offset` (or start the segment): one starting after it
            // means a damaged base offset, and serving it would skip or repeat records.
            let expected = offset.max(seg.base_offset);
            if first.base_offset > expected {
                return Err(seg.corrupt(pos, BatchDefect::OffsetGap { expected, found: first.base_offset }));
            }
            return seg.read_span(pos, max_bytes, max_batch, |h| h.next_offset() <= b.end);
        }
        Ok(None)
    }

    /// Total bytes of readable data.
    pub fn size_bytes(&self) -> u64 {
        self.segments.read().iter().map(|s| s.committed_len()).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.read().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> PartitionShared {
        let config = Arc::new(LogConfig::default());
        PartitionShared::new("p".into(), PathBuf::from("/nonexistent"), config, Vec::new(), 0, EpochCache::default())
    }

    #[test]
    fn a_partition_is_healthy_until_poisoned_and_keeps_the_first_reason() {
        let p = shared();
        assert_eq!(p.poisoned(), None);
        p.poison("fdatasync failed: EIO".into());
        assert_eq!(p.poisoned().as_deref(), Some("fdatasync failed: EIO"));
        p.poison("a later failure".into());
        assert_eq!(p.poisoned().as_deref(), Some("fdatasync failed: EIO"), "the first reason wins");
    }
}
