//! The state of one partition that readers share with the writer, and the read path.
//!
//! Invariants:
//! - `segments` is sorted by base offset and never empty; the last one is the active segment.
//! - `end` is the offset after the last acknowledged record; records at or past it are never
//!   returned. `log_start` is the base offset of the oldest segment.
//! - Readers take the segment list lock only to clone `Arc`s; file reads happen outside it, so
//!   a slow reader never blocks the writer. A segment deleted by retention stays readable by
//!   readers that already hold it (its file descriptor stays open).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;
use tokio::sync::watch;

use crate::batch::{self, BatchHeader, HEADER_LEN};
use crate::config::LogConfig;
use crate::error::{LogError, Result};
use crate::record::StoredRecord;
use crate::segment::Segment;

/// Readable range of a partition: `log_start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Oldest readable offset.
    pub log_start: u64,
    /// Offset the next appended record will get; nothing at or past it is readable yet.
    pub end: u64,
}

/// Shared between the writer thread and every reader of the partition.
#[derive(Debug)]
pub struct PartitionShared {
    pub name: String,
    pub dir: PathBuf,
    pub config: Arc<LogConfig>,
    pub segments: RwLock<Vec<Arc<Segment>>>,
    end: AtomicU64,
    log_start: AtomicU64,
    end_tx: watch::Sender<u64>,
    closed: AtomicBool,
    /// Set by a failed `fdatasync`; the partition then refuses appends until reopened.
    poisoned: parking_lot::Mutex<Option<String>>,
}

/// Bytes read ahead per `pread` when walking batches.
const READ_CHUNK: usize = 256 * 1024;

impl PartitionShared {
    pub fn new(name: String, dir: PathBuf, config: Arc<LogConfig>, segments: Vec<Arc<Segment>>, end: u64) -> Self {
        let log_start = segments.first().map_or(0, |s| s.base_offset);
        let (end_tx, _) = watch::channel(end);
        PartitionShared {
            name,
            dir,
            config,
            segments: RwLock::new(segments),
            end: AtomicU64::new(end),
            log_start: AtomicU64::new(log_start),
            end_tx,
            closed: AtomicBool::new(false),
            poisoned: parking_lot::Mutex::new(None),
        }
    }

    pub fn bounds(&self) -> Bounds {
        // Load `log_start` after `end` so that a concurrent retention run can only make the
        // range look smaller, never include a deleted offset.
        let end = self.end.load(Ordering::Acquire);
        Bounds { log_start: self.log_start.load(Ordering::Acquire), end }
    }

    /// Makes records below `end` visible and wakes tail readers.
    pub fn publish_end(&self, end: u64) {
        self.end.store(end, Ordering::Release);
        self.end_tx.send_replace(end);
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
        let mut p = self.poisoned.lock();
        if p.is_none() {
            tracing::error!(partition = %self.name, %reason, "the partition refuses further writes");
            *p = Some(reason);
        }
    }

    pub fn poisoned(&self) -> Option<String> {
        self.poisoned.lock().clone()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn out_of_range(&self, requested: u64, b: Bounds) -> LogError {
        LogError::OffsetOutOfRange { partition: self.name.clone(), requested, log_start: b.log_start, end: b.end }
    }

    /// Records from `offset` on: at most `max_records`, and stopping once the keys and values
    /// returned add up to `max_bytes` (at least one record is returned when one is readable).
    /// `offset == end` returns nothing; outside `log_start..=end` is `OffsetOutOfRange`.
    pub fn read(&self, offset: u64, max_records: usize, max_bytes: usize) -> Result<Vec<StoredRecord>> {
        let b = self.bounds();
        if offset < b.log_start || offset > b.end {
            return Err(self.out_of_range(offset, b));
        }
        let mut out = Vec::new();
        if offset == b.end || max_records == 0 {
            return Ok(out);
        }
        let mut bytes = 0usize;
        self.walk_batches(offset, b.end, |header, data| {
            if header.next_offset() <= offset {
                return Ok(true);
            }
            let records = batch::decode_records(&data, &header).map_err(|d| LogError::CorruptBatch {
                path: self.dir.clone(),
                position: 0,
                reason: format!("batch at offset {}: {d}", header.base_offset),
            })?;
            for r in records {
                if r.offset < offset {
                    continue;
                }
                if r.offset >= b.end || out.len() >= max_records || (bytes >= max_bytes && !out.is_empty()) {
                    return Ok(false);
                }
                bytes += r.value.len() + r.key.as_ref().map_or(0, Bytes::len);
                out.push(r);
            }
            Ok(out.len() < max_records && bytes < max_bytes)
        })?;
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
            let mut pos = if n == 0 {
                let rel = from.saturating_sub(seg.base_offset).min(u64::from(u32::MAX)) as u32;
                u64::from(seg.index.read().position_for(rel))
            } else {
                0
            };
            let limit = seg.committed_len();
            let mut chunk = Bytes::new();
            let mut chunk_start = pos;
            while pos < limit {
                let mut at = (pos - chunk_start) as usize;
                if at + HEADER_LEN > chunk.len() {
                    chunk = seg.read_committed(pos, READ_CHUNK)?;
                    chunk_start = pos;
                    at = 0;
                }
                let header = BatchHeader::parse(&chunk[at..], max_batch).map_err(|d| seg.corrupt(pos, d))?;
                let len = header.length as usize;
                let data =
                    if at + len <= chunk.len() { chunk.slice(at..at + len) } else { seg.read_committed(pos, len)? };
                batch::verify(&data, max_batch).map_err(|d| seg.corrupt(pos, d))?;
                if header.base_offset >= end {
                    return Ok(());
                }
                if !f(header, data)? {
                    return Ok(());
                }
                pos += len as u64;
            }
        }
        Ok(())
    }

    /// Total bytes of readable data.
    pub fn size_bytes(&self) -> u64 {
        self.segments.read().iter().map(|s| s.committed_len()).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.read().len()
    }
}
