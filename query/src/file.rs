//! One Parquet file being written: rows of one partition, one UTC hour, a contiguous range of
//! offsets. It is written under a temporary name and becomes visible only in
//! [`OpenFile::commit`]: close the Parquet footer, `fsync` the file, rename it into place,
//! `fsync` the directory. The caller advances the checkpoint after that.

use std::fs::{self, File};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use axle_log::StoredRecord;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::layout::{self, hour_of};
use crate::rows::{ExtractCounts, Extractor, RowBuilder};
use crate::ExportError;

/// Rows collected before they are handed to the Parquet writer as one Arrow batch.
const ARROW_BATCH_ROWS: usize = 8192;

/// Parquet writer settings shared by every file of an export.
pub fn writer_properties(row_group_rows: usize, zstd_level: i32) -> Result<WriterProperties, ExportError> {
    let level = ZstdLevel::try_new(zstd_level)
        .map_err(|e| ExportError::Config(format!("export.zstd_level = {zstd_level}: {e}")))?;
    Ok(WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_row_count(Some(row_group_rows.max(1)))
        .set_statistics_enabled(EnabledStatistics::Page)
        // Payloads rarely repeat; a dictionary attempt per page only costs time.
        .set_column_dictionary_enabled(ColumnPath::from("payload"), false)
        .set_column_dictionary_enabled(ColumnPath::from("offset"), false)
        .set_column_dictionary_enabled(ColumnPath::from("ts"), false)
        .set_created_by(format!("axle {}", env!("CARGO_PKG_VERSION")))
        .build())
}

/// What a committed file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub path: PathBuf,
    pub first_offset: u64,
    pub last_offset: u64,
    pub rows: u64,
    pub bytes: u64,
}

/// A file of one partition and hour being written.
pub struct OpenFile {
    hour: i64,
    first_offset: u64,
    last_offset: u64,
    rows: u64,
    opened: Instant,
    tmp: PathBuf,
    path: PathBuf,
    writer: ArrowWriter<BufWriter<File>>,
    rows_buf: RowBuilder,
}

impl OpenFile {
    /// Creates the temporary file for rows of `partition` starting with `first`.
    pub fn create(
        root: &Path,
        stream: &str,
        partition: u32,
        first: &StoredRecord,
        ex: &Arc<Extractor>,
        props: &WriterProperties,
    ) -> Result<OpenFile, ExportError> {
        let hour = hour_of(first.timestamp);
        let path = layout::file_path(root, stream, partition, hour, first.offset);
        let tmp = layout::tmp_path(&path);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| ExportError::io(dir, e))?;
        }
        let file = File::create(&tmp).map_err(|e| ExportError::io(&tmp, e))?;
        let writer =
            ArrowWriter::try_new(BufWriter::with_capacity(1 << 20, file), ex.schema().clone(), Some(props.clone()))?;
        Ok(OpenFile {
            hour,
            first_offset: first.offset,
            last_offset: first.offset,
            rows: 0,
            opened: Instant::now(),
            tmp,
            path,
            writer,
            rows_buf: RowBuilder::new(ex.clone(), partition),
        })
    }

    /// The UTC hour (hours since the epoch) every row of this file is in.
    pub fn hour(&self) -> i64 {
        self.hour
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn first_offset(&self) -> u64 {
        self.first_offset
    }

    /// When the file was opened (its first row was taken).
    pub fn opened(&self) -> Instant {
        self.opened
    }

    /// Bytes written to the file so far plus the encoded size of the row group in memory:
    /// about what the file would hold if it were closed now (before the footer).
    pub fn bytes(&self) -> u64 {
        (self.writer.bytes_written() + self.writer.in_progress_size()) as u64
    }

    /// Adds a record; it must be in this file's hour and follow the previous one.
    pub fn push(&mut self, rec: &StoredRecord) -> Result<(), ExportError> {
        self.rows_buf.push(rec);
        self.last_offset = rec.offset;
        self.rows += 1;
        if self.rows_buf.len() >= ARROW_BATCH_ROWS {
            self.flush_rows()?;
        }
        Ok(())
    }

    /// Hands the collected rows to the Parquet writer (which encodes them into its row group).
    pub fn flush_rows(&mut self) -> Result<(), ExportError> {
        if !self.rows_buf.is_empty() {
            let batch = self.rows_buf.finish()?;
            self.writer.write(&batch)?;
        }
        Ok(())
    }

    /// Extraction counters since the last call.
    pub fn take_counts(&mut self) -> ExtractCounts {
        std::mem::take(&mut self.rows_buf.counts)
    }

    /// Writes the footer, makes the file durable and renames it into place.
    pub fn commit(mut self) -> Result<Committed, ExportError> {
        self.flush_rows()?;
        let buf = self.writer.into_inner()?;
        let file = buf.into_inner().map_err(|e| ExportError::io(&self.tmp, e.into_error()))?;
        file.sync_all().map_err(|e| ExportError::io(&self.tmp, e))?;
        let bytes = file.metadata().map_err(|e| ExportError::io(&self.tmp, e))?.len();
        drop(file);
        fs::rename(&self.tmp, &self.path).map_err(|e| ExportError::io(&self.path, e))?;
        // The hour directory holds the new name; the date and stream directories may hold new
        // directory entries made by `create`.
        for dir in self.path.ancestors().skip(1).take(3) {
            sync_dir(dir)?;
        }
        Ok(Committed {
            path: self.path,
            first_offset: self.first_offset,
            last_offset: self.last_offset,
            rows: self.rows,
            bytes,
        })
    }

    /// Abandons the file and removes its temporary name.
    pub fn discard(self) {
        let tmp = self.tmp.clone();
        drop(self);
        let _ = fs::remove_file(tmp);
    }
}

/// `fsync`s a directory so that a rename in it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), ExportError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| ExportError::io(dir, e))
}
