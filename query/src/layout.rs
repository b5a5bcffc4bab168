//! Where exported files live: the Hive-style layout
//! `<root>/<stream>/date=YYYY-MM-DD/hour=HH/<partition>-<first offset>.parquet`, with the date
//! and hour of the records' timestamps in UTC.
//!
//! The first offset is zero-padded to 20 digits so that names sort in offset order. A name is
//! a pure function of (stream, partition, hour, first offset): re-exporting after a crash
//! produces the same name and replaces the file instead of adding a second copy.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Datelike, Timelike};

/// Milliseconds per hour.
pub const HOUR_MS: i64 = 3_600_000;

/// Suffix of files being written; readers (`axle query`, DuckDB globs on `*.parquet`) skip them.
pub const TMP_SUFFIX: &str = ".parquet.tmp";

/// The UTC hour a timestamp (ms since the Unix epoch) falls in, as hours since the epoch.
pub fn hour_of(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(HOUR_MS)
}

/// `date=YYYY-MM-DD/hour=HH` of an hour since the epoch. Hours outside chrono's range (years
/// beyond ±262,000) are put in `date=1970-01-01/hour=00`.
pub fn hour_dir(hour: i64) -> String {
    let dt = hour.checked_mul(3600).and_then(|s| DateTime::from_timestamp(s, 0)).unwrap_or_default();
    format!("date={:04}-{:02}-{:02}/hour={:02}", dt.year(), dt.month(), dt.day(), dt.hour())
}

/// The file name of a partition's file starting at `first_offset`.
pub fn file_name(partition: u32, first_offset: u64) -> String {
    format!("{partition}-{first_offset:020}.parquet")
}

/// The final path of a file.
pub fn file_path(root: &Path, stream: &str, partition: u32, hour: i64, first_offset: u64) -> PathBuf {
    root.join(stream).join(hour_dir(hour)).join(file_name(partition, first_offset))
}

/// The temporary path a file is written under before it is renamed to `final_path`.
pub fn tmp_path(final_path: &Path) -> PathBuf {
    let mut s = final_path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Temporary files of `partition` left under `<root>/<stream>` by an interrupted export.
pub fn stray_tmp_files(root: &Path, stream: &str, partition: u32) -> Vec<PathBuf> {
    let prefix = format!("{partition}-");
    let mut out = Vec::new();
    let Ok(dates) = std::fs::read_dir(root.join(stream)) else { return out };
    for d in dates.flatten() {
        let Ok(hours) = std::fs::read_dir(d.path()) else { continue };
        for h in hours.flatten() {
            let Ok(files) = std::fs::read_dir(h.path()) else { continue };
            for f in files.flatten() {
                let name = f.file_name().to_string_lossy().to_string();
                if name.starts_with(&prefix) && name.ends_with(TMP_SUFFIX) {
                    out.push(f.path());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_hive_layout_in_utc() {
        // 2026-12-01T23:59:59.999Z and the next millisecond.
        let ts = 1_796_169_599_999;
        assert_eq!(hour_dir(hour_of(ts)), "date=2026-12-01/hour=23");
        assert_eq!(hour_dir(hour_of(ts + 1)), "date=2026-12-02/hour=00");
        assert_eq!(hour_dir(hour_of(-1)), "date=1969-12-31/hour=23");
        let p = file_path(Path::new("/x"), "telemetry", 3, hour_of(ts), 42);
        assert_eq!(p, Path::new("/x/telemetry/date=2026-12-01/hour=23/3-00000000000000000042.parquet"));
        assert_eq!(tmp_path(&p).to_string_lossy(), format!("{}.tmp", p.display()));
        assert_eq!(hour_dir(i64::MAX), "date=1970-01-01/hour=00");
    }
}
