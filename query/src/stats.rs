//! Export counters, readable while the export runs (for metrics: lag of a partition is its
//! end offset minus its checkpoint). All counters only grow, except checkpoints, which move
//! to where export resumed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::rows::ExtractCounts;

/// Counters of one stream's export.
#[derive(Debug, Default)]
pub struct ExportStats {
    pub stream: String,
    /// Rows in committed files (rows re-exported after a crash count again).
    pub rows_exported: AtomicU64,
    /// Files renamed into place.
    pub files_written: AtomicU64,
    /// Bytes of committed files.
    pub bytes_written: AtomicU64,
    /// Payloads that were not valid JSON while JSON columns are declared (their typed
    /// columns are null; the rows are kept).
    pub payload_parse_failures: AtomicU64,
    /// Values present but not convertible to their column's type (exported as null).
    pub type_mismatches: AtomicU64,
    /// Records removed by retention before they were exported.
    pub records_skipped: AtomicU64,
    /// Export attempts that failed (I/O, metadata store); each is retried from the checkpoint.
    pub errors: AtomicU64,
    pub partitions: Vec<Arc<PartitionExportStats>>,
}

/// The checkpoint of one partition.
#[derive(Debug, Default)]
pub struct PartitionExportStats {
    /// Log partition name, `<stream>-<n>`.
    pub partition: String,
    /// First offset not yet in a committed file.
    pub checkpoint: AtomicU64,
}

impl PartitionExportStats {
    pub fn new(partition: String) -> Arc<PartitionExportStats> {
        Arc::new(PartitionExportStats { partition, checkpoint: AtomicU64::new(0) })
    }

    pub fn set_checkpoint(&self, offset: u64) {
        self.checkpoint.store(offset, Ordering::Relaxed);
    }

    pub fn checkpoint(&self) -> u64 {
        self.checkpoint.load(Ordering::Relaxed)
    }
}

impl ExportStats {
    pub fn new(stream: String, partitions: Vec<Arc<PartitionExportStats>>) -> ExportStats {
        ExportStats { stream, partitions, ..ExportStats::default() }
    }

    pub fn add_counts(&self, c: ExtractCounts) {
        if c.parse_failures > 0 {
            self.payload_parse_failures.fetch_add(c.parse_failures, Ordering::Relaxed);
        }
        if c.type_mismatches > 0 {
            self.type_mismatches.fetch_add(c.type_mismatches, Ordering::Relaxed);
        }
    }

    pub fn add_file(&self, rows: u64, bytes: u64) {
        self.rows_exported.fetch_add(rows, Ordering::Relaxed);
        self.files_written.fetch_add(1, Ordering::Relaxed);
        self.bytes_written.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn add_skipped(&self, n: u64) {
        self.records_skipped.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn rows(&self) -> u64 {
        self.rows_exported.load(Ordering::Relaxed)
    }

    pub fn files(&self) -> u64 {
        self.files_written.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }

    pub fn parse_failures(&self) -> u64 {
        self.payload_parse_failures.load(Ordering::Relaxed)
    }
}
