//! Exporting one stream partition: read records by offset from the checkpoint, append them to
//! the open file of their UTC hour, roll files by rows, bytes, age or hour change, and advance
//! the checkpoint after each file is durable under its final name.
//!
//! Invariants:
//! - A file holds a contiguous range of offsets `first..=last` of one partition, all with
//!   timestamps in one UTC hour, and is named after `first`.
//! - The checkpoint is always the first offset of the open file (or the next offset to read
//!   when none is open): rows before it are in committed files, none after it are.
//! - A record whose hour differs from the open file's closes that file and opens another, so
//!   out-of-order timestamps never make a file straddle hours; they only make files smaller.
//! - After a crash, export resumes at the checkpoint. Roll decisions by rows, bytes and hour
//!   depend only on the records, so the first file written again has the same name as the
//!   one that may already be in place and replaces it; a file cut by age may come out with a
//!   different length, but every later file still starts where the replaced one ended, so no
//!   offset is ever in two files.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axle_engine::MetaStore;
use axle_log::{LogError, Partition, StoredRecord};
use parquet::file::properties::WriterProperties;

use crate::file::{Committed, OpenFile};
use crate::layout::{hour_of, stray_tmp_files};
use crate::rows::Extractor;
use crate::stats::{ExportStats, PartitionExportStats};
use crate::{checkpoint, ExportError};

/// When an open file is closed and a new one started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollPolicy {
    /// Rows per file, at most.
    pub max_rows: u64,
    /// Approximate compressed bytes per file (checked every 8192 rows, so a file can exceed it
    /// by one batch).
    pub max_bytes: u64,
    /// Time a file stays open after its first row, so that a quiet stream's rows become
    /// visible; in serve mode an idle file is closed when this passes.
    pub max_age: Duration,
}

impl Default for RollPolicy {
    fn default() -> Self {
        RollPolicy { max_rows: 1_000_000, max_bytes: 128 << 20, max_age: Duration::from_secs(300) }
    }
}

/// Why a file was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollReason {
    Rows,
    Bytes,
    Age,
    /// The next record is in another UTC hour.
    Hour,
    /// The one-shot export reached the end of the partition, or the exporter is stopping.
    End,
}

impl RollPolicy {
    /// Whether a file with `rows`, `bytes` and open for `age` must be closed now.
    pub fn due(&self, rows: u64, bytes: u64, age: Duration) -> Option<RollReason> {
        if rows >= self.max_rows {
            Some(RollReason::Rows)
        } else if bytes >= self.max_bytes {
            Some(RollReason::Bytes)
        } else if age >= self.max_age {
            Some(RollReason::Age)
        } else {
            None
        }
    }
}

/// What a stream's export needs besides its partitions.
pub struct StreamExport {
    pub stream: String,
    pub root: PathBuf,
    pub roll: RollPolicy,
    pub extractor: Arc<Extractor>,
    pub props: WriterProperties,
    pub stats: Arc<ExportStats>,
}

/// Records read per step.
const READ_RECORDS: usize = 8192;
const READ_BYTES: usize = 8 << 20;

/// The export state of one partition.
pub struct PartitionExporter {
    stream: Arc<StreamExport>,
    meta: Arc<MetaStore>,
    part: Partition,
    number: u32,
    /// Next offset to read.
    next: u64,
    /// Offset up to which files are committed (the durable checkpoint).
    checkpoint: u64,
    file: Option<OpenFile>,
    pstats: Arc<PartitionExportStats>,
}

impl PartitionExporter {
    /// Loads the checkpoint of partition `number` (log partition `part`) and removes the
    /// temporary files an interrupted run left behind.
    pub fn open(
        stream: Arc<StreamExport>,
        meta: Arc<MetaStore>,
        part: Partition,
        number: u32,
        pstats: Arc<PartitionExportStats>,
    ) -> Result<PartitionExporter, ExportError> {
        let checkpoint = checkpoint::load(&meta, part.name())?;
        for tmp in stray_tmp_files(&stream.root, &stream.stream, number) {
            tracing::info!(file = %tmp.display(), "removing a temporary export file left by an interrupted run");
            std::fs::remove_file(&tmp).map_err(|e| ExportError::io(&tmp, e))?;
        }
        pstats.set_checkpoint(checkpoint);
        Ok(PartitionExporter { stream, meta, part, number, next: checkpoint, checkpoint, file: None, pstats })
    }

    /// Next offset to read.
    pub fn next_offset(&self) -> u64 {
        self.next
    }

    pub fn checkpoint(&self) -> u64 {
        self.checkpoint
    }

    pub fn partition(&self) -> &Partition {
        &self.part
    }

    /// When the open file must be closed by age, if one is open.
    pub fn age_deadline(&self) -> Option<Instant> {
        self.file.as_ref().map(|f| f.opened() + self.stream.roll.max_age)
    }

    /// Reads and exports the next records, up to `until` (exclusive). Returns how many were
    /// read; 0 means the partition has nothing more below `until` right now.
    pub fn step(&mut self, until: u64) -> Result<usize, ExportError> {
        if self.next >= until {
            return Ok(0);
        }
        let records = match self.part.read(self.next, READ_RECORDS, READ_BYTES) {
            Ok(r) => r,
            Err(LogError::OffsetOutOfRange { log_start, end, .. }) => return self.out_of_range(log_start, end, until),
            Err(e) => return Err(e.into()),
        };
        let mut n = 0;
        for rec in records.iter().take_while(|r| r.offset < until) {
            self.push(rec)?;
            n += 1;
        }
        if let Some(f) = &mut self.file {
            let counts = f.take_counts();
            self.stream.stats.add_counts(counts);
        }
        self.roll_if_due()?;
        Ok(n)
    }

    /// The read position fell outside the log: retention removed records before they were
    /// exported (skip to the log start, counting them), or the log lost its tail in a crash
    /// with a relaxed fsync policy (continue at its end).
    fn out_of_range(&mut self, log_start: u64, end: u64, until: u64) -> Result<usize, ExportError> {
        self.commit(RollReason::End)?;
        if self.next < log_start {
            let missed = log_start - self.next;
            tracing::warn!(
                stream = %self.stream.stream, partition = self.number, missed,
                "retention removed records before they were exported; continuing at the log start"
            );
            self.stream.stats.add_skipped(missed);
            self.next = log_start;
        } else {
            tracing::warn!(
                stream = %self.stream.stream, partition = self.number, checkpoint = self.next, end,
                "the export checkpoint is past the end of the log (records lost in a crash); continuing at the end"
            );
            self.next = end;
        }
        self.checkpoint = self.next;
        checkpoint::store(&self.meta, self.part.name(), self.next)?;
        self.pstats.set_checkpoint(self.next);
        self.step(until)
    }

    fn push(&mut self, rec: &StoredRecord) -> Result<(), ExportError> {
        if let Some(f) = &self.file {
            if f.hour() != hour_of(rec.timestamp) {
                self.commit(RollReason::Hour)?;
            }
        }
        if self.file.is_none() {
            let s = &self.stream;
            self.file = Some(OpenFile::create(&s.root, &s.stream, self.number, rec, &s.extractor, &s.props)?);
        }
        if let Some(f) = &mut self.file {
            f.push(rec)?;
            if f.rows() >= self.stream.roll.max_rows {
                self.commit(RollReason::Rows)?;
            }
        }
        self.next = rec.offset + 1;
        Ok(())
    }

    /// Closes the open file if a roll rule says so.
    pub fn roll_if_due(&mut self) -> Result<Option<Committed>, ExportError> {
        let Some(f) = &self.file else { return Ok(None) };
        match self.stream.roll.due(f.rows(), f.bytes(), f.opened().elapsed()) {
            Some(reason) => self.commit(reason),
            None => Ok(None),
        }
    }

    /// Commits the open file (if any) and advances the checkpoint past it.
    pub fn commit(&mut self, reason: RollReason) -> Result<Option<Committed>, ExportError> {
        let Some(mut f) = self.file.take() else {
            return Ok(None);
        };
        self.stream.stats.add_counts(f.take_counts());
        let done = f.commit()?;
        checkpoint::store(&self.meta, self.part.name(), done.last_offset + 1)?;
        self.checkpoint = done.last_offset + 1;
        self.pstats.set_checkpoint(self.checkpoint);
        self.stream.stats.add_file(done.rows, done.bytes);
        tracing::debug!(
            stream = %self.stream.stream, partition = self.number, file = %done.path.display(),
            rows = done.rows, bytes = done.bytes, ?reason, "export file committed"
        );
        Ok(Some(done))
    }

    /// Drops the open file without committing it and rewinds to the checkpoint (after an
    /// error: the next attempt rewrites the same file).
    pub fn rewind(&mut self) {
        if let Some(f) = self.file.take() {
            f.discard();
        }
        self.next = self.checkpoint;
    }

    /// Exports everything below `until` and commits the last file.
    pub fn run_to(&mut self, until: u64, mut progress: impl FnMut(usize)) -> Result<(), ExportError> {
        loop {
            let n = self.step(until)?;
            if n == 0 {
                break;
            }
            progress(n);
        }
        self.commit(RollReason::End)?;
        Ok(())
    }
}

#[cfg(test)]
#[path = "exporter_tests.rs"]
mod tests;
