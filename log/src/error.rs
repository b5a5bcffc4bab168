//! Errors returned by the log. Every variant is phrased so that an operator can act on it.

use std::path::PathBuf;

/// Result alias for the log crate.
pub type Result<T, E = LogError> = std::result::Result<T, E>;

/// Everything that can go wrong in the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "the disk holding {path} is full; the append was not written and the log is unchanged; free space and retry"
    )]
    DiskFull { path: PathBuf },

    #[error("offset {requested} is out of range for partition {partition}: readable offsets are {log_start}..{end} (log start inclusive, end exclusive)")]
    OffsetOutOfRange { partition: String, requested: u64, log_start: u64, end: u64 },

    #[error("corrupt data in {path} at byte {position}: {reason}; valid data follows, so the log refuses to open. Restore the file, or open with `repair = true` to truncate the partition at this position (records after it are lost)")]
    MidLogCorruption { path: PathBuf, position: u64, reason: String },

    #[error("corrupt batch in {path} at byte {position} while reading: {reason}")]
    CorruptBatch { path: PathBuf, position: u64, reason: String },

    #[error("a batch of {size} bytes exceeds the configured maximum of {max} bytes; split the append")]
    BatchTooLarge { size: usize, max: usize },

    #[error("an append must carry at least one record")]
    EmptyAppend,

    #[error("partition name {0:?} is invalid: use 1 to 200 characters from [A-Za-z0-9._-], not starting with '.'")]
    InvalidPartitionName(String),

    #[error("partition {0} does not exist in this log")]
    UnknownPartition(String),

    #[error("partition {partition} stopped accepting writes after an fsync failure ({reason}); the durability of recent writes is unknown. Restart the process so that recovery re-validates the log")]
    Poisoned { partition: String, reason: String },

    #[error("sealed batches for partition {partition} must continue at offset {expected}, but a batch starts at {got}; fetch from {expected} (or truncate to the batch boundary the leader reports) and retry. Nothing was written")]
    NotContiguous { partition: String, expected: u64, got: u64 },

    #[error("cannot truncate partition {partition} to offset {offset}: it lies inside the batch holding offsets {batch_start}..{batch_end}; truncate to a batch boundary ({batch_start} or {batch_end})")]
    NotBatchBoundary { partition: String, offset: u64, batch_start: u64, batch_end: u64 },

    #[error(
        "cannot truncate partition {partition} to offset {offset}: retention already removed offsets below {log_start}"
    )]
    TruncateBelowLogStart { partition: String, offset: u64, log_start: u64 },

    #[error("the log is closed")]
    Closed,

    #[error("invalid log configuration: {0}")]
    Config(String),
}

impl LogError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.raw_os_error() == Some(libc::ENOSPC) {
            LogError::DiskFull { path }
        } else {
            LogError::Io { path, source }
        }
    }
}
