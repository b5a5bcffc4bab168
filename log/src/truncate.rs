//! Truncating a partition's tail (a replica dropping records its new leader does not have).
//! Runs on the writer thread, after the flusher has drained, so no sync or publication of
//! the removed data is in flight.
//!
//! Crash safety, in the order of the steps: the `leader-epochs` file is trimmed first, so it
//! never describes removed offsets; the recovery point is moved to the cut (a valid batch
//! boundary whatever happens next); later segments are deleted last one first, so the
//! segments left are always contiguous; then the file is cut and synced. A crash at any step
//! leaves either the old tail or none of it, and once `truncate` returns, none.

use std::sync::atomic::Ordering;

use crate::appender::PartitionWriter;
use crate::error::{LogError, Result};
use crate::recovery::Checkpoint;
use crate::segment::{self, BatchPosition};

impl PartitionWriter {
    /// Removes every record at offset `>= to` (see [`crate::Partition::truncate`]).
    pub fn truncate(&mut self, to: u64) -> Result<()> {
        if let Some(reason) = self.shared.poisoned() {
            return Err(LogError::Poisoned { partition: self.shared.name.clone(), reason });
        }
        let log_start = self.shared.bounds().log_start;
        if to < log_start {
            return Err(LogError::TruncateBelowLogStart { partition: self.shared.name.clone(), offset: to, log_start });
        }
        if to >= self.next_offset {
            return Ok(());
        }
        let max_batch = self.shared.config.max_batch_bytes;
        let segments = self.shared.segments.read().clone();
        let i = segments.partition_point(|s| s.base_offset <= to).saturating_sub(1);
        let seg = segments[i].clone();
        let pos = match seg.find_batch(to, max_batch)? {
            BatchPosition::Start { pos, .. } | BatchPosition::End { pos } => pos,
            BatchPosition::Inside { header, .. } => {
                return Err(LogError::NotBatchBoundary {
                    partition: self.shared.name.clone(),
                    offset: to,
                    batch_start: header.base_offset,
                    batch_end: header.next_offset(),
                });
            }
        };
        let mut epochs = self.shared.epochs.read().clone();
        epochs.truncate_from(to);
        crate::epochs::write_file(&self.shared.dir, to, &epochs)?;
        // From here on the files change: a failure leaves the partition in an unknown state.
        let result = self.cut(i, pos, to);
        if let Err(e) = &result {
            self.shared.poison(format!("truncation to offset {to} failed: {e}"));
        }
        result
    }

    fn cut(&mut self, i: usize, pos: u64, to: u64) -> Result<()> {
        let dir = self.shared.dir.clone();
        self.shared.clamp_end(to);
        self.shared.memos.forget_from(to);
        let seg = self.shared.segments.read()[i].clone();
        Checkpoint::write(
            &dir,
            &Checkpoint { segment: seg.base_offset, position: pos, next_offset: to, epoch: self.epoch, clean: false },
        )?;
        let removed: Vec<_> = self.shared.segments.write().drain(i + 1..).collect();
        for s in removed.iter().rev() {
            s.deleted.store(true, Ordering::Release);
            for ext in ["log", "index", "timeindex", "keys"] {
                remove_if_present(&s.path.with_extension(ext))?;
            }
        }
        if !removed.is_empty() {
            segment::sync_dir(&dir)?;
        }
        seg.file.set_len(pos).map_err(|e| LogError::io(&seg.path, e))?;
        seg.file.sync_all().map_err(|e| LogError::io(&seg.path, e))?;
        // The cached index files describe the old length; the key file could even match a
        // later length with stale entries. They are rebuilt when needed.
        for ext in ["index", "timeindex", "keys"] {
            remove_if_present(&seg.path.with_extension(ext))?;
        }
        seg.index.write().truncate((to - seg.base_offset) as u32);
        seg.keys.truncate(pos);
        seg.commit(pos, to);
        self.active = seg;
        self.position = pos;
        self.next_offset = to;
        self.preallocated = false;
        self.unsynced = false;
        self.forget_epochs_from(to);
        segment::sync_dir(&dir)?;
        tracing::info!(partition = %self.shared.name, to, segments_removed = removed.len(), "truncated the partition");
        Ok(())
    }
}

fn remove_if_present(path: &std::path::Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(LogError::io(path, e)),
        _ => Ok(()),
    }
}
