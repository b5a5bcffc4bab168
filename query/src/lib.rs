//! The Parquet exporter and the SQL front end. It owns reading stream partitions from a
//! checkpointed offset, writing them as Hive-partitioned Parquet files, and running SQL over
//! those files. It knows records and streams, not MQTT packets or segment files.
//!
//! Files live at `<root>/<stream>/date=YYYY-MM-DD/hour=HH/<partition>-<first offset>.parquet`
//! ([`layout`]); their columns are the fixed ones of [`schema::FIXED_COLUMNS`] and the typed
//! columns a stream declares ([`schema::TypedColumn`]). [`Export`] runs exports one-shot or
//! following the tail; [`ExportStats`] counts what they did. With the `sql` feature,
//! [`sql`] runs DataFusion over the files, one table per stream.

pub mod checkpoint;
pub mod exporter;
pub mod file;
pub mod json;
pub mod layout;
pub mod rows;
pub mod schema;
pub mod service;
#[cfg(feature = "sql")]
pub mod sql;
pub mod stats;

use std::path::{Path, PathBuf};

pub use exporter::{RollPolicy, RollReason};
pub use schema::{ColumnSource, ColumnType, TypedColumn};
pub use service::{Export, ExportService};
pub use stats::{ExportStats, PartitionExportStats};

/// How one stream is exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportConfig {
    pub stream: String,
    pub roll: RollPolicy,
    pub columns: Vec<TypedColumn>,
}

/// Settings shared by every exported stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSettings {
    /// Directory holding one subdirectory per stream.
    pub root: PathBuf,
    /// Rows per Parquet row group, at most.
    pub row_group_rows: usize,
    /// zstd compression level (1..=22).
    pub zstd_level: i32,
}

impl ExportSettings {
    pub fn new(root: PathBuf) -> ExportSettings {
        ExportSettings { root, row_group_rows: DEFAULT_ROW_GROUP_ROWS, zstd_level: DEFAULT_ZSTD_LEVEL }
    }
}

/// Default rows per row group: large enough for good compression and few footer entries,
/// small enough that the writer's in-memory row group stays a few tens of MB.
pub const DEFAULT_ROW_GROUP_ROWS: usize = 128 * 1024;
/// Default zstd level: level 1 compresses JSON telemetry about 4x at several hundred MB/s.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// Errors of export and query.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("export configuration: {0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("writing Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("building Arrow data: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(transparent)]
    Log(#[from] axle_log::LogError),
    #[error(transparent)]
    Meta(#[from] axle_engine::MetaError),
    #[error("the export checkpoint of partition {partition} is {len} bytes long, not 8: the metadata store is damaged; delete the key from the `exports` column family to export the partition again from its start")]
    BadCheckpoint { partition: String, len: usize },
    #[error("could not start an export thread: {0}")]
    Thread(std::io::Error),
    #[error("stream {0:?} is not configured; export names a stream from the `[[streams]]` tables")]
    UnknownStream(String),
}

impl ExportError {
    pub fn io(path: &Path, source: std::io::Error) -> ExportError {
        ExportError::Io { path: path.to_path_buf(), source }
    }
}
