//! The write side of one partition: offset assignment, staging a round's batches, segment
//! rolls, clean close and retention. Owned by the writer thread; never shared.
//!
//! Invariants:
//! - Offsets are assigned only here, in queue order, with no gaps.
//! - `position` is the byte length written to the active segment; a failed write rolls
//!   `next_offset` back and cuts the file at `position`, so a later round rewrites the place.
//! - A partition poisoned by a failed `fdatasync` accepts no more appends.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::batch::EncodedBatch;
use crate::config::LogConfig;
use crate::error::{LogError, Result};
use crate::flusher::SyncItem;
use crate::memo::Memo;
use crate::partition::PartitionShared;
use crate::recovery::Checkpoint;
use crate::replica::SealedBatch;
use crate::segment::Segment;

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the first record.
    pub base_offset: u64,
    /// Offset of the last record.
    pub last_offset: u64,
    /// Leader epoch stamped on the batch (for a sealed append, that of its last batch).
    pub leader_epoch: u32,
}

/// Bytes zero-filled ahead of the tail at a time under `fsync = always` (see
/// [`PartitionWriter::zero_ahead`]); a new chunk is written once less than half remains.
pub const ZERO_CHUNK: u64 = 1 << 20;

/// A caller waiting for its append to be acknowledged.
pub struct Ack {
    pub reply: oneshot::Sender<Result<Appended>>,
    pub appended: Appended,
}

/// The write side of one partition.
pub struct PartitionWriter {
    pub shared: Arc<PartitionShared>,
    pub(crate) active: Arc<Segment>,
    /// Bytes written to the active segment (durable or not).
    pub(crate) position: u64,
    /// Offset the next record gets.
    pub(crate) next_offset: u64,
    pub(crate) epoch: u32,
    /// Epoch of the last batch staged (the epoch cache's last entry), so that the cache's
    /// lock is taken only when the epoch changes.
    pub(crate) last_epoch: Option<u32>,
    pub(crate) preallocated: bool,
    /// Bytes of the active segment from 0 known to be written, with data or with zeros by
    /// [`Self::zero_ahead`]; always >= `position` while zero-filling is on.
    pub(crate) zeroed_end: u64,
    /// Set when a zero-fill write failed: this segment is not zero-filled any further.
    pub(crate) zero_failed: bool,
    /// Written since the last sync handed to the flusher.
    pub(crate) unsynced: bool,
    pub(crate) round_bufs: Vec<Bytes>,
    pub(crate) round_acks: Vec<Ack>,
    /// (rel offset, position, length, first ts, max ts, key hashes) of each staged batch.
    round_index: Vec<(u32, u32, u32, i64, i64, Vec<u32>)>,
    pub(crate) round_len: u64,
}

impl PartitionWriter {
    pub fn new(
        shared: Arc<PartitionShared>,
        active: Arc<Segment>,
        position: u64,
        next_offset: u64,
        epoch: u32,
        preallocated: bool,
    ) -> Self {
        let last_epoch = shared.epochs.read().last_epoch();
        PartitionWriter {
            last_epoch,
            shared,
            active,
            position,
            next_offset,
            epoch,
            preallocated,
            zeroed_end: position,
            zero_failed: false,
            unsynced: false,
            round_bufs: Vec::new(),
            round_acks: Vec::new(),
            round_index: Vec::new(),
            round_len: 0,
        }
    }

    /// Records in the epoch cache that a batch of `epoch` starts at `base`.
    fn note_epoch(&mut self, epoch: u32, base: u64) {
        if self.last_epoch != Some(epoch) {
            self.shared.epochs.write().on_batch(epoch, base);
            self.last_epoch = Some(epoch);
        }
    }

    /// Forgets staged offsets from `offset` on in the epoch cache.
    pub(crate) fn forget_epochs_from(&mut self, offset: u64) {
        let mut epochs = self.shared.epochs.write();
        epochs.truncate_from(offset);
        self.last_epoch = epochs.last_epoch();
    }

    fn needs_roll(&self, cfg: &LogConfig, now: i64) -> bool {
        if self.position == 0 {
            return false;
        }
        if self.position >= cfg.segment_bytes {
            return true;
        }
        let first = self.active.index.read().first_timestamp();
        first.is_some_and(|t| now.saturating_sub(t) >= cfg.segment_max_age.as_millis() as i64)
    }

    /// Stages one append into this round.
    pub fn stage(
        &mut self,
        mut batch: EncodedBatch,
        memo: Option<Memo>,
        reply: oneshot::Sender<Result<Appended>>,
        cfg: &LogConfig,
        now: i64,
    ) {
        if let Some(reason) = self.shared.poisoned() {
            let _ = reply.send(Err(LogError::Poisoned { partition: self.shared.name.clone(), reason }));
            return;
        }
        if self.round_bufs.is_empty() && self.needs_roll(cfg, now) {
            if let Err(e) = self.roll(cfg) {
                let _ = reply.send(Err(e));
                return;
            }
        }
        let base = self.next_offset;
        let count = batch.record_count;
        let rel = (base - self.active.base_offset) as u32;
        let pos = (self.position + self.round_len) as u32;
        let len = batch.len() as u32;
        let hashes = std::mem::take(&mut batch.key_hashes);
        self.round_index.push((rel, pos, len, batch.first_timestamp, batch.max_timestamp, hashes));
        if let Some(memo) = memo {
            self.shared.memos.push(base, count, len as usize, memo);
        }
        self.round_bufs.push(batch.seal(base, self.epoch));
        self.round_len += u64::from(len);
        self.next_offset += u64::from(count);
        self.note_epoch(self.epoch, base);
        let appended =
            Appended { base_offset: base, last_offset: base + u64::from(count) - 1, leader_epoch: self.epoch };
        self.round_acks.push(Ack { reply, appended });
    }

    /// Stages batches sealed by another node (validated by the caller, contiguous among
    /// themselves), keeping their offsets and epochs, as one acknowledgement. Refused with
    /// `NotContiguous`, writing nothing, unless the first continues this partition.
    pub fn stage_sealed(
        &mut self,
        batches: Vec<SealedBatch>,
        reply: oneshot::Sender<Result<Appended>>,
        cfg: &LogConfig,
        now: i64,
    ) {
        if let Some(reason) = self.shared.poisoned() {
            let _ = reply.send(Err(LogError::Poisoned { partition: self.shared.name.clone(), reason }));
            return;
        }
        let (Some(first), Some(last)) = (batches.first(), batches.last()) else {
            let _ = reply.send(Err(LogError::EmptyAppend));
            return;
        };
        if first.header.base_offset != self.next_offset {
            let _ = reply.send(Err(LogError::NotContiguous {
                partition: self.shared.name.clone(),
                expected: self.next_offset,
                got: first.header.base_offset,
            }));
            return;
        }
        let appended = Appended {
            base_offset: first.header.base_offset,
            last_offset: last.header.next_offset() - 1,
            leader_epoch: last.header.leader_epoch,
        };
        if self.round_bufs.is_empty() && self.needs_roll(cfg, now) {
            if let Err(e) = self.roll(cfg) {
                let _ = reply.send(Err(e));
                return;
            }
        }
        for b in batches {
            let h = b.header;
            let rel = (h.base_offset - self.active.base_offset) as u32;
            let pos = (self.position + self.round_len) as u32;
            self.round_index.push((rel, pos, h.length, h.first_timestamp, h.max_timestamp, b.key_hashes));
            self.round_bufs.push(b.bytes);
            self.round_len += u64::from(h.length);
            self.next_offset = h.next_offset();
            self.note_epoch(h.leader_epoch, h.base_offset);
        }
        self.round_acks.push(Ack { reply, appended });
    }

    /// Bookkeeping once the round's bytes are in the file. Returns the sync item that makes
    /// them visible (carrying the acks when `with_acks`).
    pub fn written(&mut self, with_acks: bool) -> SyncItem {
        {
            let mut idx = self.active.index.write();
            for (rel, pos, len, first, max, hashes) in self.round_index.drain(..) {
                idx.on_batch(rel, pos, len, first, max);
                self.active.keys.add(rel, pos, &hashes);
            }
        }
        self.position += self.round_len;
        self.round_len = 0;
        self.round_bufs.clear();
        self.unsynced = true;
        let acks = if with_acks { std::mem::take(&mut self.round_acks) } else { Vec::new() };
        self.sync_item(acks, with_acks)
    }

    /// A sync item for everything written so far (call only when nothing is staged).
    pub fn sync_item(&self, acks: Vec<Ack>, publish: bool) -> SyncItem {
        SyncItem {
            shared: self.shared.clone(),
            segment: self.active.clone(),
            len: self.position,
            next: self.next_offset,
            acks,
            publish,
        }
    }

    /// Makes everything written so far visible and acknowledges it (policies that do not
    /// wait for `fdatasync`).
    pub fn publish_now(&mut self) {
        self.active.commit(self.position, self.next_offset);
        self.shared.publish_end(self.next_offset);
        for ack in self.round_acks.drain(..) {
            let _ = ack.reply.send(Ok(ack.appended));
        }
    }

    /// Under `fsync = always`, overwrites the preallocated (unwritten) space just ahead of
    /// the round being staged with zeros, [`ZERO_CHUNK`] bytes at a time, and starts their
    /// writeback. Appends then land on blocks that are already written, so their
    /// `fdatasync` flushes only data instead of also committing the extent conversion of
    /// fallocated blocks to the journal (PostgreSQL's `wal_init_zero`).
    ///
    /// Call before writing the round: zeros go only at or past the end of the round's data
    /// (`position + round_len`), never over data. Zeros read exactly as unwritten
    /// preallocated space does, so recovery finds the end of data the same way, whether or
    /// not the zeros reached the disk. Never grows the file past its preallocated length.
    pub(crate) fn zero_ahead(&mut self, prealloc_len: u64) {
        if !self.preallocated || self.zero_failed {
            return;
        }
        let end = self.position + self.round_len;
        if self.zeroed_end >= end + ZERO_CHUNK / 2 {
            return;
        }
        let from = self.zeroed_end.max(end);
        let to = ((end + ZERO_CHUNK / 2) / ZERO_CHUNK + 1) * ZERO_CHUNK;
        let to = to.min(prealloc_len);
        if to <= from {
            return;
        }
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let file = &self.active.file;
        let mut at = from;
        while at < to {
            let n = ((to - at) as usize).min(ZEROS.len());
            if let Err(e) = std::os::unix::fs::FileExt::write_all_at(file, &ZEROS[..n], at) {
                tracing::warn!(path = %self.active.path.display(), error = %e, "zero-fill ahead failed; syncs of this segment also commit block allocation");
                self.zero_failed = true;
                return;
            }
            at += n as u64;
        }
        // Start writing the zeros back now, so the round synced next does not wait for them
        // (its sync covers only its own range). Advisory: a failure here costs only time.
        // SAFETY: plain syscall on a valid descriptor.
        unsafe {
            libc::sync_file_range(
                std::os::unix::io::AsRawFd::as_raw_fd(file),
                from as libc::off64_t,
                (to - from) as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        self.zeroed_end = to;
    }

    /// Cuts off a failed round and fails its appends.
    pub fn fail_round(&mut self, err: std::io::Error) {
        if let Some(first) = self.round_acks.first().map(|a| a.appended.base_offset) {
            self.next_offset = first;
            self.forget_epochs_from(first);
            self.shared.memos.forget_from(first);
        }
        self.round_bufs.clear();
        self.round_index.clear();
        self.round_len = 0;
        // Drop whatever part of the round reached the file; preallocation goes with it.
        if self.active.file.set_len(self.position).is_ok() {
            self.preallocated = false;
        }
        let path = self.active.path.clone();
        tracing::warn!(partition = %self.shared.name, error = %err, "append write failed; nothing was acknowledged");
        for ack in self.round_acks.drain(..) {
            let e = match err.raw_os_error() {
                Some(code) => std::io::Error::from_raw_os_error(code),
                None => std::io::Error::from(err.kind()),
            };
            let _ = ack.reply.send(Err(LogError::io(&path, e)));
        }
    }

    /// Closes the active segment and opens a new one at `next_offset`.
    pub(crate) fn roll(&mut self, cfg: &LogConfig) -> Result<()> {
        let prealloc = cfg.preallocate.then_some(cfg.segment_bytes);
        let (seg, preallocated) =
            Segment::create(&self.shared.dir, self.next_offset, cfg.index_interval_bytes, prealloc)?;
        let old = self.active.clone();
        let len = self.position;
        let finish = || -> std::io::Result<()> {
            old.file.set_len(len)?;
            old.file.sync_all()
        };
        if let Err(e) = finish() {
            let _ = std::fs::remove_file(&seg.path);
            return Err(LogError::io(&old.path, e));
        }
        if let Err(e) = old.index.read().persist(&old.path, old.base_offset, len) {
            // The index is rebuilt on the next open; losing it costs only time.
            tracing::warn!(path = %old.path.display(), error = %e, "could not write index files");
        }
        seal_keys(&old, len, cfg);
        let seg = Arc::new(seg);
        self.shared.segments.write().push(seg.clone());
        self.active = seg;
        self.position = 0;
        self.preallocated = preallocated;
        self.zeroed_end = 0;
        self.zero_failed = false;
        self.persist_epochs();
        Checkpoint::write(
            &self.shared.dir,
            &Checkpoint {
                segment: self.active.base_offset,
                position: 0,
                next_offset: self.next_offset,
                epoch: self.epoch,
                clean: false,
            },
        )?;
        tracing::debug!(partition = %self.shared.name, base = self.next_offset, "rolled segment");
        Ok(())
    }

    /// Clean shutdown, after the flusher has drained: the active segment is cut to its data
    /// and synced, indexes are written, and the checkpoint is marked clean.
    pub fn close(&mut self) -> Result<()> {
        if self.shared.poisoned().is_some() {
            return Ok(());
        }
        let seg = self.active.clone();
        seg.file.set_len(self.position).map_err(|e| LogError::io(&seg.path, e))?;
        seg.file.sync_all().map_err(|e| LogError::io(&seg.path, e))?;
        self.unsynced = false;
        seg.index.read().persist(&seg.path, seg.base_offset, self.position).map_err(|e| LogError::io(&seg.path, e))?;
        seal_keys(&seg, self.position, &self.shared.config);
        self.persist_epochs();
        Checkpoint::write(
            &self.shared.dir,
            &Checkpoint {
                segment: seg.base_offset,
                position: self.position,
                next_offset: self.next_offset,
                epoch: self.epoch,
                clean: true,
            },
        )
    }

    /// Writes `leader-epochs` for everything staged so far (best effort: an older file covers
    /// less and stays correct; see `epochs.rs`). The directory sync is the caller's.
    fn persist_epochs(&self) {
        let cache = self.shared.epochs.read().clone();
        if let Err(e) = crate::epochs::write_file(&self.shared.dir, self.next_offset, &cache) {
            tracing::warn!(partition = %self.shared.name, error = %e, "could not write the leader-epoch file; it is rebuilt on the next open");
        }
    }

    /// Deletes whole segments past the retention limits; returns how many.
    pub fn enforce_retention(&mut self, cfg: &LogConfig, now: i64) -> Result<usize> {
        let segments = self.shared.segments.read().clone();
        let mut remaining: u64 = segments.iter().map(|s| s.committed_len()).sum();
        let mut drop_count = 0;
        for seg in &segments[..segments.len().saturating_sub(1)] {
            let too_big = cfg.retention_bytes.is_some_and(|max| remaining > max);
            let too_old = cfg.retention_age.is_some_and(|age| {
                seg.index.read().max_timestamp().is_none_or(|ts| now.saturating_sub(ts) > age.as_millis() as i64)
            });
            if !(too_big || too_old) {
                break;
            }
            remaining -= seg.committed_len();
            drop_count += 1;
        }
        if drop_count == 0 {
            return Ok(0);
        }
        let removed: Vec<Arc<Segment>> = {
            let mut segs = self.shared.segments.write();
            let removed = segs.drain(..drop_count).collect();
            self.shared.set_log_start(segs[0].base_offset);
            self.shared.epochs.write().truncate_before(segs[0].base_offset);
            removed
        };
        for seg in &removed {
            seg.deleted.store(true, std::sync::atomic::Ordering::Release);
            for ext in ["log", "index", "timeindex", "keys"] {
                let p = seg.path.with_extension(ext);
                if let Err(e) = std::fs::remove_file(&p) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        return Err(LogError::io(&p, e));
                    }
                }
            }
        }
        crate::segment::sync_dir(&self.shared.dir)?;
        tracing::info!(partition = %self.shared.name, segments = drop_count, log_start = self.shared.bounds().log_start, "retention deleted segments");
        Ok(drop_count)
    }
}

/// Writes the segment's key index covering its first `len` bytes (best effort: a missing or
/// stale file is rebuilt by scanning when a key is next looked up).
fn seal_keys(seg: &Segment, len: u64, cfg: &LogConfig) {
    let path = seg.path.with_extension("keys");
    if let Err(e) = seg.keys.seal(&path, seg.base_offset, len, |prefix| seg.load_keys(prefix, cfg.max_batch_bytes)) {
        tracing::warn!(path = %path.display(), error = %e, "could not write the key index");
    }
}
