//! Configuration of a log. Units are in the field names or doc comments.

use std::time::Duration;

/// When appended data is forced to disk with `fdatasync`, and therefore what an
/// acknowledgement promises. Readers see a record once it is acknowledged.
///
/// | policy | append resolves after | process crash loses | machine crash loses |
/// |---|---|---|---|
/// | `Always` | its `fdatasync` | nothing | nothing |
/// | `Interval(d)` | its write (page cache) | nothing | up to `d` of acknowledged data |
/// | `Bytes(n)` | its write (page cache) | nothing | up to `n` bytes of acknowledged data |
/// | `Never` | its write (page cache) | nothing | whatever the kernel had not flushed |
///
/// `Always` is what Axle's broker uses by default: group commit makes one `fdatasync`
/// carry every append that queued up while the previous one ran, so it stays fast under
/// concurrency. The others are the classic "fsync every N ms / N bytes" trade (Kafka's
/// `flush.ms`/`flush.messages`, Redis's `appendfsync everysec`). Segment rolls and clean
/// shutdown always sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// `fdatasync` after every group-commit round, before acknowledging it.
    Always,
    /// At most one `fdatasync` per interval, in the background of acknowledgements.
    Interval(Duration),
    /// `fdatasync` once this many bytes are unsynced, or when no further append is queued.
    Bytes(u64),
    /// Never `fdatasync` on the append path.
    Never,
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;

    /// Parses `always`, `never`, `5ms`/`1s` (an interval), or `1MiB`/`65536b` style byte counts
    /// (`b`, `kib`, `mib`, `gib`; case-insensitive).
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "always" => return Ok(FsyncPolicy::Always),
            "never" => return Ok(FsyncPolicy::Never),
            _ => {}
        }
        let split = t
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("fsync policy {s:?} needs a unit (ms, s, b, kib, mib, gib)"))?;
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| format!("fsync policy {s:?}: {num:?} is not a number"))?;
        if n == 0 {
            return Err(format!("fsync policy {s:?}: use `always` instead of zero"));
        }
        match unit {
            "ms" => Ok(FsyncPolicy::Interval(Duration::from_millis(n))),
            "s" => Ok(FsyncPolicy::Interval(Duration::from_secs(n))),
            "b" => Ok(FsyncPolicy::Bytes(n)),
            "kib" | "kb" => Ok(FsyncPolicy::Bytes(n * 1024)),
            "mib" | "mb" => Ok(FsyncPolicy::Bytes(n * 1024 * 1024)),
            "gib" | "gb" => Ok(FsyncPolicy::Bytes(n * 1024 * 1024 * 1024)),
            _ => Err(format!(
                "fsync policy {s:?}: unknown unit {unit:?}; expected always, never, <n>ms, <n>s or <n>b/kib/mib/gib"
            )),
        }
    }
}

/// Which system-call path writes segment data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoBackendKind {
    /// io_uring if the kernel allows it, otherwise `pwritev` + `fdatasync` (logged once).
    Auto,
    /// io_uring; opening the log fails if it is unavailable.
    IoUring,
    /// `pwritev` + `fdatasync` system calls.
    Pwrite,
}

/// Settings of one log (all its partitions share them).
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub fsync: FsyncPolicy,
    pub io_backend: IoBackendKind,
    /// A segment is rolled once it holds at least this many bytes. Also the preallocation size.
    /// At least 4 KiB and at most 1 GiB (index entries store 32-bit positions).
    pub segment_bytes: u64,
    /// A non-empty segment is rolled once its first record is older than this.
    pub segment_max_age: Duration,
    /// Whole segments are deleted while the partition holds more than this many bytes.
    pub retention_bytes: Option<u64>,
    /// Whole segments are deleted once their newest record is older than this.
    pub retention_age: Option<Duration>,
    /// One offset-index and time-index entry per this many bytes of batches.
    pub index_interval_bytes: u32,
    /// Largest accepted batch, in bytes, header included.
    pub max_batch_bytes: usize,
    /// Reserve each new segment's space with `fallocate` (skipped where unsupported). Under
    /// `fsync = always` the reserved space is also zero-filled 1 MiB ahead of the tail, so
    /// that syncs flush data only (see `PartitionWriter::zero_ahead`).
    pub preallocate: bool,
    /// On open, truncate a partition at mid-log corruption instead of refusing to open.
    pub repair: bool,
    /// Most bytes one group-commit round gathers before it writes.
    pub max_round_bytes: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            fsync: FsyncPolicy::Always,
            io_backend: IoBackendKind::Auto,
            segment_bytes: 128 * 1024 * 1024,
            segment_max_age: Duration::from_secs(6 * 3600),
            retention_bytes: None,
            retention_age: Some(Duration::from_secs(7 * 24 * 3600)),
            index_interval_bytes: 4096,
            max_batch_bytes: 16 * 1024 * 1024,
            preallocate: true,
            repair: false,
            max_round_bytes: 32 * 1024 * 1024,
        }
    }
}

impl LogConfig {
    /// Checks the bounds documented on each field.
    pub fn validate(&self) -> Result<(), crate::LogError> {
        let bad = |m: String| Err(crate::LogError::Config(m));
        if !(4096..=1 << 30).contains(&self.segment_bytes) {
            return bad(format!("segment_bytes = {} must be between 4096 and 1073741824", self.segment_bytes));
        }
        if self.index_interval_bytes == 0 {
            return bad("index_interval_bytes must be at least 1".into());
        }
        if self.max_batch_bytes < crate::batch::HEADER_LEN + 16 || self.max_batch_bytes > 1 << 30 {
            return bad(format!("max_batch_bytes = {} must be between 64 and 1073741824", self.max_batch_bytes));
        }
        if self.segment_max_age.is_zero() {
            return bad("segment_max_age must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_policies_parse_from_config_strings() {
        assert_eq!("always".parse(), Ok(FsyncPolicy::Always));
        assert_eq!("NEVER".parse(), Ok(FsyncPolicy::Never));
        assert_eq!("5ms".parse(), Ok(FsyncPolicy::Interval(Duration::from_millis(5))));
        assert_eq!("1MiB".parse(), Ok(FsyncPolicy::Bytes(1 << 20)));
        assert!("5".parse::<FsyncPolicy>().is_err());
        assert!("0ms".parse::<FsyncPolicy>().is_err());
        assert!("5parsecs".parse::<FsyncPolicy>().is_err());
    }
}
