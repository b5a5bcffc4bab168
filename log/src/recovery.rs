//! Opening a partition directory: the recovery-point checkpoint, CRC validation of what lies
//! after it, torn-tail truncation, refusal of mid-log corruption, and index rebuilding.
//!
//! The checkpoint (`recovery-point`) names a segment and a byte position below which all
//! data was fsynced and validated. It is rewritten when a segment is rolled, when the log is
//! opened (after recovery), and at clean shutdown, where it is marked `clean` so that the
//! next open does no scanning at all.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use crate::appender::PartitionWriter;
use crate::config::LogConfig;
use crate::epochs::EpochCache;
use crate::error::{LogError, Result};
use crate::index::SegmentIndex;
use crate::partition::PartitionShared;
use crate::segment::{self, ScanStop, Segment};

const CHECKPOINT: &str = "recovery-point";
const CP_MAGIC: &[u8; 4] = b"AXRP";
const CP_LEN: usize = 40;

/// The recovery-point checkpoint of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Base offset of the segment the position refers to.
    pub segment: u64,
    /// Bytes of that segment known good.
    pub position: u64,
    /// Offset after the last record below the position.
    pub next_offset: u64,
    /// Leader epoch to continue with.
    pub epoch: u32,
    /// Written at clean shutdown: the segment is exactly `position` bytes, indexes are on disk.
    pub clean: bool,
}

impl Checkpoint {
    pub fn write(dir: &Path, cp: &Checkpoint) -> Result<()> {
        let mut buf = Vec::with_capacity(CP_LEN);
        buf.extend_from_slice(CP_MAGIC);
        buf.push(1);
        buf.push(u8::from(cp.clean));
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&cp.segment.to_le_bytes());
        buf.extend_from_slice(&cp.position.to_le_bytes());
        buf.extend_from_slice(&cp.next_offset.to_le_bytes());
        buf.extend_from_slice(&cp.epoch.to_le_bytes());
        let crc = crc32fast::hash(&buf);
        buf.extend_from_slice(&crc.to_le_bytes());
        let tmp = dir.join("recovery-point.tmp");
        let path = dir.join(CHECKPOINT);
        (|| -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_data()?;
            fs::rename(&tmp, &path)
        })()
        .map_err(|e| LogError::io(&path, e))?;
        segment::sync_dir(dir)
    }

    /// Reads the checkpoint; `None` if it is missing or damaged (recovery then scans all).
    pub fn read(dir: &Path) -> Option<Checkpoint> {
        let b = fs::read(dir.join(CHECKPOINT)).ok()?;
        if b.len() != CP_LEN || &b[0..4] != CP_MAGIC || b[4] != 1 {
            return None;
        }
        let crc = u32::from_le_bytes(b[36..40].try_into().ok()?);
        if crc32fast::hash(&b[..36]) != crc {
            return None;
        }
        let u = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]));
        Some(Checkpoint {
            clean: b[5] == 1,
            segment: u(8),
            position: u(16),
            next_offset: u(24),
            epoch: u32::from_le_bytes(b[32..36].try_into().ok()?),
        })
    }
}

/// What opening a partition found, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// True when the last shutdown was clean and nothing was scanned.
    pub clean: bool,
    /// Bytes whose CRC was checked.
    pub bytes_scanned: u64,
    /// Bytes cut off a torn tail (zeros left by preallocation are not counted).
    pub bytes_truncated: u64,
    /// Segments whose index files were missing or invalid and were rebuilt.
    pub indexes_rebuilt: usize,
    /// Segments removed by `repair` after mid-log corruption.
    pub segments_removed: usize,
}

/// Opens (creating if needed) the partition in `dir`, recovering it.
pub fn open_partition(dir: &Path, name: &str, config: &Arc<LogConfig>) -> Result<(PartitionWriter, RecoveryReport)> {
    fs::create_dir_all(dir).map_err(|e| LogError::io(dir, e))?;
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| LogError::io(dir, e))? {
        let entry = entry.map_err(|e| LogError::io(dir, e))?;
        let fname = entry.file_name();
        let fname = fname.to_string_lossy();
        if fname.ends_with(".tmp") {
            let _ = fs::remove_file(entry.path());
        } else if let Some(base) = segment::parse_file_name(&fname) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    let interval = config.index_interval_bytes;
    let prealloc = config.preallocate.then_some(config.segment_bytes);
    let mut report = RecoveryReport::default();

    if bases.is_empty() {
        let (seg, preallocated) = Segment::create(dir, 0, interval, prealloc)?;
        let cp = Checkpoint { segment: 0, position: 0, next_offset: 0, epoch: 0, clean: false };
        crate::epochs::remove_file(dir)?;
        Checkpoint::write(dir, &cp)?;
        let seg = Arc::new(seg);
        let shared = Arc::new(PartitionShared::new(
            name.to_string(),
            dir.to_path_buf(),
            config.clone(),
            vec![seg.clone()],
            0,
            EpochCache::default(),
        ));
        return Ok((PartitionWriter::new(shared, seg, 0, 0, 0, preallocated), report));
    }

    let cp = Checkpoint::read(dir).filter(|c| bases.contains(&c.segment)).unwrap_or(Checkpoint {
        segment: bases[0],
        position: 0,
        next_offset: bases[0],
        epoch: 0,
        clean: false,
    });
    let last_base = *bases.last().unwrap_or(&0);
    let mut segments: Vec<Arc<Segment>> = Vec::with_capacity(bases.len());
    let mut next = bases[0];
    let mut epoch = cp.epoch;
    let mut end_len = 0u64;
    let mut i = 0;
    while i < bases.len() {
        let base = bases[i];
        let is_last = base == last_base;
        let path = dir.join(segment::file_name(base));
        let file = Segment::open_file(&path)?;
        let file_len = file.metadata().map_err(|e| LogError::io(&path, e))?.len();
        if base != next && i > 0 {
            let reason = format!("segment starts at offset {base} but the previous one ends at {next}");
            if !config.repair {
                return Err(LogError::MidLogCorruption { path, position: 0, reason });
            }
            report.segments_removed += remove_segments(dir, &bases[i..])?;
            break;
        }
        let mut index = SegmentIndex::new(interval);
        let (valid_len, seg_next, stop) = if base < cp.segment {
            // Below the checkpoint: trusted; only the index may need rebuilding.
            match SegmentIndex::load(&path, base, file_len, interval) {
                Some(idx) => {
                    index = idx;
                    let seg_next = bases.get(i + 1).copied().unwrap_or(next);
                    (file_len, seg_next, ScanStop::End)
                }
                None => {
                    report.indexes_rebuilt += 1;
                    let r = segment::scan(
                        &file,
                        &path,
                        base,
                        0,
                        base,
                        &mut index,
                        false,
                        config.max_batch_bytes,
                        u64::MAX,
                    )?;
                    (r.valid_len, r.next_offset, r.stop)
                }
            }
        } else if base == cp.segment && cp.clean && is_last && cp.position == file_len {
            report.clean = true;
            match SegmentIndex::load(&path, base, file_len, interval) {
                Some(idx) => {
                    index = idx;
                    (file_len, cp.next_offset, ScanStop::End)
                }
                None => {
                    report.clean = false;
                    report.indexes_rebuilt += 1;
                    let r = segment::scan(
                        &file,
                        &path,
                        base,
                        0,
                        base,
                        &mut index,
                        false,
                        config.max_batch_bytes,
                        u64::MAX,
                    )?;
                    (r.valid_len, r.next_offset, r.stop)
                }
            }
        } else {
            // At or after the checkpoint: headers up to it, then CRCs to the end.
            let mut from = (0, base);
            if base == cp.segment && cp.position > 0 {
                let r =
                    segment::scan(&file, &path, base, 0, base, &mut index, false, config.max_batch_bytes, cp.position)?;
                if r.valid_len == cp.position {
                    from = (cp.position, r.next_offset);
                } else {
                    // The checkpoint does not land on a batch boundary: validate everything.
                    index = SegmentIndex::new(interval);
                }
            }
            let r =
                segment::scan(&file, &path, base, from.0, from.1, &mut index, true, config.max_batch_bytes, u64::MAX)?;
            report.bytes_scanned += r.valid_len - from.0;
            (r.valid_len, r.next_offset, r.stop)
        };

        if valid_len < file_len {
            // Something other than batches follows. Decide: torn tail, or corruption with
            // valid data after it?
            let later_data = bases[i + 1..].iter().any(|b| starts_with_data(&dir.join(segment::file_name(*b))));
            let found = segment::find_valid_batch_after(&file, &path, valid_len, seg_next, config.max_batch_bytes)?;
            let defect = match &stop {
                ScanStop::Defect { defect, .. } => Some(defect.to_string()),
                ScanStop::End => None,
            };
            if found.is_some() || later_data {
                let reason = defect.clone().unwrap_or_else(|| "a zeroed region".to_string());
                let reason = match found {
                    Some(p) => format!("{reason}; a valid batch follows at byte {p}"),
                    None => format!("{reason}; later segments hold data"),
                };
                if !config.repair {
                    return Err(LogError::MidLogCorruption { path, position: valid_len, reason });
                }
                tracing::warn!(path = %path.display(), position = valid_len, %reason, "repair: truncating the partition at corrupt data");
                report.segments_removed += remove_segments(dir, &bases[i + 1..])?;
                bases.truncate(i + 1);
            } else if let Some(d) = &defect {
                report.bytes_truncated += file_len - valid_len;
                tracing::warn!(path = %path.display(), position = valid_len, bytes = file_len - valid_len, defect = %d, "truncating a torn tail");
            }
            file.set_len(valid_len).map_err(|e| LogError::io(&path, e))?;
            file.sync_all().map_err(|e| LogError::io(&path, e))?;
            // The key index may describe bytes that are gone; it is rebuilt on first use.
            let _ = fs::remove_file(path.with_extension("keys"));
        }
        let seg = Segment::from_parts(base, path, file, index, valid_len, seg_next);
        next = seg_next;
        end_len = valid_len;
        if i + 1 == bases.len() {
            if let Some(e) = last_epoch(&seg, config) {
                epoch = epoch.max(e);
            }
        }
        segments.push(Arc::new(seg));
        i += 1;
    }

    let active = segments.last().cloned().ok_or_else(|| LogError::Config("no segment survived recovery".into()))?;
    if !report.clean {
        active.file.sync_data().map_err(|e| LogError::io(&active.path, e))?;
    }
    let mut preallocated = false;
    if let Some(len) = prealloc.filter(|l| end_len < *l) {
        // SAFETY: fallocate on a valid descriptor. The file grows to `len` and reads as zeros
        // past the data, which recovery treats as the end.
        preallocated =
            unsafe { libc::fallocate(std::os::unix::io::AsRawFd::as_raw_fd(&active.file), 0, 0, len as libc::off_t) }
                == 0;
    }
    let (epochs, stale) = crate::epochs::recover(dir, &segments, next, config.max_batch_bytes)?;
    if stale {
        if let Err(e) = crate::epochs::write_file(dir, next, &epochs) {
            tracing::warn!(dir = %dir.display(), error = %e, "could not write the leader-epoch file; it is rebuilt on the next open");
        }
    }
    Checkpoint::write(
        dir,
        &Checkpoint { segment: active.base_offset, position: end_len, next_offset: next, epoch, clean: false },
    )?;
    let shared =
        Arc::new(PartitionShared::new(name.to_string(), dir.to_path_buf(), config.clone(), segments, next, epochs));
    Ok((PartitionWriter::new(shared, active, end_len, next, epoch, preallocated), report))
}

fn last_epoch(seg: &Segment, config: &LogConfig) -> Option<u32> {
    let len = seg.committed_len();
    if len == 0 {
        return None;
    }
    let pos = u64::from(seg.index.read().position_for(u32::MAX));
    let mut p = pos;
    let mut epoch = None;
    while p < len {
        let (h, _) = seg.read_batch(p, config.max_batch_bytes).ok()?;
        epoch = Some(h.leader_epoch);
        p += u64::from(h.length);
    }
    epoch
}

/// Whether a segment file begins with anything but zeros. A segment whose roll crashed
/// before anything was written to it is empty, or preallocated and all zeros: not data.
fn starts_with_data(path: &Path) -> bool {
    fs::File::open(path)
        .ok()
        .and_then(|f| segment::read_exact_at(&f, path, 0, crate::batch::HEADER_LEN).ok())
        .is_some_and(|head| head.iter().any(|b| *b != 0))
}

fn remove_segments(dir: &Path, bases: &[u64]) -> Result<usize> {
    for b in bases {
        let p = dir.join(segment::file_name(*b));
        for ext in ["log", "index", "timeindex", "keys"] {
            let f = p.with_extension(ext);
            if f.exists() {
                fs::remove_file(&f).map_err(|e| LogError::io(&f, e))?;
            }
        }
    }
    segment::sync_dir(dir)?;
    Ok(bases.len())
}
