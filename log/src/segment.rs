//! One segment file: `<base offset, 20 digits>.log` plus its index files (offset, time, keys).
//!
//! Invariants:
//! - Batches are contiguous from byte 0; the first batch's base offset is the segment's base.
//! - `committed_len` bytes (and `committed_next` offsets) are durable under the fsync policy
//!   and visible to readers; bytes past it may be in flight and are never read.
//! - The file may be longer than its data: space reserved with `fallocate` reads as zeros.
//!   A closed segment is truncated to its data length.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::RwLock;

use crate::batch::{self, BatchDefect, BatchHeader, HEADER_LEN, MAGIC, MAGIC_POS};
use crate::error::{LogError, Result};
use crate::index::SegmentIndex;
use crate::keys::{self, KeyEntry, SegmentKeys};

/// Bytes read at a time when walking batches: the first read of a walk takes
/// `FIRST_READ_CHUNK`, each further one twice the last, up to `READ_CHUNK`. Small reads (a
/// shared group's pull of a few records, a catch-up step) then copy kilobytes, not 256 KiB,
/// while a long scan still reads in large chunks after a few steps.
const READ_CHUNK: usize = 256 * 1024;
const FIRST_READ_CHUNK: usize = 16 * 1024;

/// File name of the segment whose first offset is `base`.
pub fn file_name(base: u64) -> String {
    format!("{base:020}.log")
}

/// Parses a segment file name back to its base offset.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".log")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Bytes read at a time when walking batch headers only.
const HEADER_CHUNK: usize = 64 * 1024;

/// Where an offset falls among a segment's committed batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchPosition {
    /// A batch starts at the offset, at byte `pos`.
    Start { pos: u64, header: BatchHeader },
    /// The offset lies inside (or, before the segment's base, ahead of) the batch at byte `pos`.
    Inside { pos: u64, header: BatchHeader },
    /// The offset is at or past the end of the committed data, which ends at byte `pos`.
    End { pos: u64 },
}

/// Consecutive whole batches as stored, in one buffer.
#[derive(Debug, Clone)]
pub struct Span {
    /// The batches, byte for byte as in the segment file.
    pub bytes: Bytes,
    /// Number of batches in `bytes` (at least 1).
    pub batches: u32,
    /// The offset after the last record of the last batch.
    pub next_offset: u64,
}

/// A segment shared by the writer (appends at its tail) and by readers.
#[derive(Debug)]
pub struct Segment {
    pub base_offset: u64,
    pub path: PathBuf,
    pub file: File,
    pub index: RwLock<SegmentIndex>,
    committed_len: AtomicU64,
    committed_next: AtomicU64,
    /// Set once the segment is deleted by retention; readers holding it may still finish.
    pub deleted: AtomicBool,
    /// Where each record key's batches are (see `keys.rs`).
    pub keys: SegmentKeys,
}

impl Segment {
    /// Creates a new, empty segment file and reserves `prealloc` bytes if asked.
    /// Returns the segment and whether the reservation succeeded.
    pub fn create(dir: &Path, base: u64, interval: u32, prealloc: Option<u64>) -> Result<(Segment, bool)> {
        let path = dir.join(file_name(base));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .map_err(|e| LogError::io(&path, e))?;
        let mut preallocated = false;
        if let Some(len) = prealloc {
            // SAFETY: fallocate on a valid, owned file descriptor.
            let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
            if rc == 0 {
                preallocated = true;
            } else {
                let err = std::io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => {}
                    _ => {
                        drop(file);
                        let _ = std::fs::remove_file(&path);
                        return Err(LogError::io(&path, err));
                    }
                }
            }
        }
        sync_dir(dir)?;
        Ok((Segment::from_parts(base, path, file, SegmentIndex::new(interval), 0, base), preallocated))
    }

    /// Opens an existing segment file for reading and appending.
    pub fn open_file(path: &Path) -> Result<File> {
        OpenOptions::new().read(true).write(true).open(path).map_err(|e| LogError::io(path, e))
    }

    pub fn from_parts(base: u64, path: PathBuf, file: File, index: SegmentIndex, len: u64, next: u64) -> Segment {
        Segment {
            base_offset: base,
            path,
            file,
            index: RwLock::new(index),
            committed_len: AtomicU64::new(len),
            committed_next: AtomicU64::new(next),
            deleted: AtomicBool::new(false),
            keys: SegmentKeys::new(len),
        }
    }

    /// Bytes of data readers may see.
    pub fn committed_len(&self) -> u64 {
        self.committed_len.load(Ordering::Acquire)
    }

    /// Offset one past the last record readers may see in this segment.
    pub fn committed_next(&self) -> u64 {
        self.committed_next.load(Ordering::Acquire)
    }

    /// Publishes data up to `len` bytes and `next` offset to readers.
    pub fn commit(&self, len: u64, next: u64) {
        self.committed_len.store(len, Ordering::Release);
        self.committed_next.store(next, Ordering::Release);
    }

    /// Reads up to `len` bytes at `pos`, never past `committed_len`.
    pub fn read_committed(&self, pos: u64, len: usize) -> Result<Bytes> {
        let limit = self.committed_len();
        if pos >= limit {
            return Ok(Bytes::new());
        }
        let len = len.min((limit - pos) as usize);
        read_exact_at(&self.file, &self.path, pos, len)
    }

    /// Reads the batch header at `pos`, and the whole batch if `whole`, verifying its CRC.
    pub fn read_batch(&self, pos: u64, max_batch: usize) -> Result<(BatchHeader, Bytes)> {
        let head = self.read_committed(pos, HEADER_LEN)?;
        let header = BatchHeader::parse(&head, max_batch).map_err(|d| self.corrupt(pos, d))?;
        let data = self.read_committed(pos, header.length as usize)?;
        batch::verify(&data, max_batch).map_err(|d| self.corrupt(pos, d))?;
        Ok((header, data))
    }

    /// Calls `f(position, header, batch)` for each batch from byte `from` (a batch start) up
    /// to `limit` or the committed length, whichever is smaller, verifying each CRC. Stops
    /// when `f` returns `false`.
    pub fn walk(
        &self,
        from: u64,
        limit: u64,
        max_batch: usize,
        mut f: impl FnMut(u64, BatchHeader, Bytes) -> Result<bool>,
    ) -> Result<()> {
        let limit = limit.min(self.committed_len());
        let mut pos = from;
        let mut chunk = Bytes::new();
        let mut chunk_start = pos;
        let mut chunk_len = FIRST_READ_CHUNK;
        while pos < limit {
            let mut at = (pos - chunk_start) as usize;
            if at + HEADER_LEN > chunk.len() {
                chunk = self.read_committed(pos, chunk_len)?;
                chunk_len = (chunk_len * 2).min(READ_CHUNK);
                chunk_start = pos;
                at = 0;
            }
            let header = BatchHeader::parse(&chunk[at..], max_batch).map_err(|d| self.corrupt(pos, d))?;
            let len = header.length as usize;
            let data = if at + len <= chunk.len() { chunk.slice(at..at + len) } else { self.read_committed(pos, len)? };
            batch::verify(&data, max_batch).map_err(|d| self.corrupt(pos, d))?;
            if !f(pos, header, data)? {
                return Ok(());
            }
            pos += len as u64;
        }
        Ok(())
    }

    /// Calls `f(position, header)` for each batch from byte `from` (a batch start) up to
    /// `limit` or the committed length, reading headers only (records are skipped by their
    /// length, CRCs are not checked). Stops when `f` returns `false`.
    pub fn walk_headers(
        &self,
        from: u64,
        limit: u64,
        max_batch: usize,
        mut f: impl FnMut(u64, BatchHeader) -> Result<bool>,
    ) -> Result<()> {
        let limit = limit.min(self.committed_len());
        let mut pos = from;
        let mut chunk = Bytes::new();
        let mut chunk_start = pos;
        while pos < limit {
            if pos + HEADER_LEN as u64 > chunk_start + chunk.len() as u64 {
                chunk = self.read_committed(pos, HEADER_CHUNK)?;
                chunk_start = pos;
            }
            let at = (pos - chunk_start) as usize;
            let header = BatchHeader::parse(&chunk[at..], max_batch).map_err(|d| self.corrupt(pos, d))?;
            let end = pos + u64::from(header.length);
            if end > limit {
                let have = (limit - pos) as usize;
                return Err(self.corrupt(pos, BatchDefect::Truncated { have, need: header.length as usize }));
            }
            if !f(pos, header)? {
                return Ok(());
            }
            pos = end;
        }
        Ok(())
    }

    /// Whole committed batches from byte `from` (a batch start), read with one `pread` into
    /// one buffer so that a bulk consumer's response needs no further copy: the first batch
    /// always (read on its own if it is larger than `max_bytes`), then the following ones
    /// while they lie wholly within the `max_bytes` read and `take` accepts their header.
    /// Every returned batch's CRC is verified and each continues the previous one's offsets:
    /// a damaged batch ends the span before it, and is the error when it comes first. `None`
    /// when `from` is at the committed end or `take` refuses the first batch.
    pub fn read_span(
        &self,
        from: u64,
        max_bytes: usize,
        max_batch: usize,
        mut take: impl FnMut(&BatchHeader) -> bool,
    ) -> Result<Option<Span>> {
        let limit = self.committed_len();
        if from >= limit {
            return Ok(None);
        }
        let mut buf = self.read_committed(from, max_bytes.max(HEADER_LEN))?;
        let first = BatchHeader::parse(&buf, max_batch).map_err(|d| self.corrupt(from, d))?;
        if !take(&first) {
            return Ok(None);
        }
        if first.length as usize > buf.len() {
            buf = self.read_committed(from, first.length as usize)?;
        }
        let (mut at, mut batches, mut last) = (0usize, 0u32, first);
        while at + HEADER_LEN <= buf.len() {
            // Damage after the first batch ends the span before it; the read that starts
            // there fails with the error.
            let header = match BatchHeader::parse(&buf[at..], max_batch) {
                Ok(h) => h,
                Err(d) if batches == 0 => return Err(self.corrupt(from + at as u64, d)),
                Err(_) => break,
            };
            if batches > 0 && header.base_offset != last.next_offset() {
                break; // a damaged base offset (outside the CRC)
            }
            let end = at + header.length as usize;
            if end > buf.len() || (batches > 0 && !take(&header)) {
                break;
            }
            if let Err(d) = batch::verify(&buf[at..end], max_batch) {
                if batches == 0 {
                    return Err(self.corrupt(from + at as u64, d));
                }
                break; // serve the good batches; the next read starts at the damage and fails
            }
            (at, batches, last) = (end, batches + 1, header);
        }
        if batches == 0 {
            // Only possible if the committed data ends inside the first batch.
            let defect = BatchDefect::Truncated { have: buf.len(), need: first.length as usize };
            return Err(self.corrupt(from, defect));
        }
        // A span cut well short of its read (at the high watermark, before damage) is copied
        // out, so a queued response does not pin a buffer of `max_bytes`.
        let bytes = if at < buf.len() / 2 { Bytes::copy_from_slice(&buf[..at]) } else { buf.slice(..at) };
        Ok(Some(Span { bytes, batches, next_offset: last.next_offset() }))
    }

    /// Finds the committed batch holding `offset` (which should be at or after the segment's
    /// base), starting from the offset index and walking headers.
    pub fn find_batch(&self, offset: u64, max_batch: usize) -> Result<BatchPosition> {
        let rel = offset.saturating_sub(self.base_offset).min(u64::from(u32::MAX)) as u32;
        let mut pos = u64::from(self.index.read().position_for(rel));
        let mut found = None;
        self.walk_headers(pos, u64::MAX, max_batch, |at, header| {
            if header.next_offset() > offset {
                found = Some(if header.base_offset == offset {
                    BatchPosition::Start { pos: at, header }
                } else {
                    BatchPosition::Inside { pos: at, header }
                });
                return Ok(false);
            }
            pos = at + u64::from(header.length);
            Ok(true)
        })?;
        Ok(found.unwrap_or(BatchPosition::End { pos }))
    }

    /// The key-index entries of bytes `[0, prefix_len)`: from `<base>.keys` where it covers
    /// them, the rest by scanning the segment.
    pub fn load_keys(&self, prefix_len: u64, max_batch: usize) -> std::io::Result<Vec<KeyEntry>> {
        let file = self.path.with_extension("keys");
        let (mut entries, from) = match keys::read_file(&file, self.base_offset) {
            Some((covered, entries)) if covered <= prefix_len => (entries, covered),
            _ => (Vec::new(), 0),
        };
        let mut hashes: Vec<u32> = Vec::new();
        self.walk(from, prefix_len, max_batch, |pos, header, data| {
            let records = batch::decode_records(&data, &header).map_err(|d| self.corrupt(pos, d))?;
            hashes.clear();
            hashes.extend(records.iter().filter_map(|r| r.key.as_deref().map(keys::key_hash)));
            hashes.sort_unstable();
            hashes.dedup();
            let rel = (header.base_offset - self.base_offset) as u32;
            entries.extend(hashes.iter().map(|h| KeyEntry { hash: *h, rel, pos: pos as u32 }));
            Ok(true)
        })
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        if from < prefix_len {
            tracing::debug!(path = %self.path.display(), from, prefix_len, "key index rebuilt by scanning");
        }
        Ok(entries)
    }

    pub fn corrupt(&self, position: u64, defect: BatchDefect) -> LogError {
        LogError::CorruptBatch { path: self.path.clone(), position, reason: defect.to_string() }
    }
}

/// Reads exactly `len` bytes (fewer only at end of file) into a new buffer, which is not
/// zeroed first: bulk reads of several MiB would otherwise pay a `memset` pass as large as
/// the read.
pub fn read_exact_at(file: &File, path: &Path, pos: u64, len: usize) -> Result<Bytes> {
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    while buf.len() < len {
        let done = buf.len();
        let at = pos + done as u64;
        let spare = &mut buf.spare_capacity_mut()[..len - done];
        // SAFETY: pread writes at most `spare.len()` bytes into memory owned by `buf`.
        let n = unsafe { libc::pread(file.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len(), at as libc::off_t) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(LogError::io(path, e));
        }
        if n == 0 {
            break;
        }
        // SAFETY: the kernel initialised the `n` bytes after the current length.
        unsafe { buf.set_len(buf.len() + n as usize) };
    }
    Ok(Bytes::from(buf))
}

/// Fsyncs a directory so that file creations, renames and deletions in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| LogError::io(dir, e))
}

/// Where a scan of a segment stopped.
#[derive(Debug)]
pub enum ScanStop {
    /// End of the file, or a region that holds no batch at all (zeros from preallocation).
    End,
    /// A damaged batch at `position`.
    Defect { defect: BatchDefect },
}

/// Outcome of scanning a segment during recovery.
#[derive(Debug)]
pub struct ScanResult {
    /// Byte length of the valid batches.
    pub valid_len: u64,
    /// Offset after the last valid record.
    pub next_offset: u64,
    pub stop: ScanStop,
}

/// Scans batches from `from_pos` (a batch boundary whose batch should have base offset
/// `expected_offset`) to the first invalid byte, or to `until` bytes, feeding `index`. With
/// `verify_crc` every batch's CRC is checked; without it only headers are parsed (used below a
/// checkpoint).
#[allow(clippy::too_many_arguments)]
pub fn scan(
    file: &File,
    path: &Path,
    base: u64,
    from_pos: u64,
    expected_offset: u64,
    index: &mut SegmentIndex,
    verify_crc: bool,
    max_batch: usize,
    until: u64,
) -> Result<ScanResult> {
    let file_len = file.metadata().map_err(|e| LogError::io(path, e))?.len();
    let mut pos = from_pos;
    let mut next = expected_offset;
    const CHUNK: usize = 1 << 20;
    let mut window_start = pos;
    let mut window = Bytes::new();
    loop {
        if pos >= file_len || pos >= until {
            return Ok(ScanResult { valid_len: pos, next_offset: next, stop: ScanStop::End });
        }
        // Make sure the window holds the header at `pos`.
        if pos + HEADER_LEN as u64 > window_start + window.len() as u64 {
            window_start = pos;
            window = read_exact_at(file, path, pos, CHUNK.min((file_len - pos) as usize))?;
        }
        let at = (pos - window_start) as usize;
        let head = &window[at..];
        if head.len() >= HEADER_LEN && head[..HEADER_LEN].iter().all(|b| *b == 0) {
            return Ok(ScanResult { valid_len: pos, next_offset: next, stop: ScanStop::End });
        }
        let header = match BatchHeader::parse(head, max_batch) {
            Ok(h) => h,
            Err(defect) => {
                return Ok(ScanResult { valid_len: pos, next_offset: next, stop: ScanStop::Defect { defect } });
            }
        };
        let len = header.length as usize;
        if verify_crc {
            if at + len > window.len() {
                window_start = pos;
                window = read_exact_at(file, path, pos, CHUNK.max(len).min((file_len - pos) as usize))?;
            }
            let at = (pos - window_start) as usize;
            if let Err(defect) = batch::verify(&window[at..], max_batch) {
                return Ok(ScanResult { valid_len: pos, next_offset: next, stop: ScanStop::Defect { defect } });
            }
        } else if pos + len as u64 > file_len {
            let defect = BatchDefect::Truncated { have: (file_len - pos) as usize, need: len };
            return Ok(ScanResult { valid_len: pos, next_offset: next, stop: ScanStop::Defect { defect } });
        }
        if header.base_offset != next {
            let defect = BatchDefect::BadRecords("base offset does not follow the previous batch");
            return Ok(ScanResult { valid_len: pos, next_offset: next, stop: ScanStop::Defect { defect } });
        }
        let rel = header.base_offset - base;
        if rel + u64::from(header.record_count) > u64::from(u32::MAX) || pos + len as u64 > u64::from(u32::MAX) {
            let defect = BatchDefect::BadRecords("segment exceeds 32-bit index range");
            return Ok(ScanResult { valid_len: pos, next_offset: next, stop: ScanStop::Defect { defect } });
        }
        index.on_batch(rel as u32, pos as u32, header.length, header.first_timestamp, header.max_timestamp);
        next = header.next_offset();
        pos += len as u64;
    }
}

/// Looks for a CRC-valid batch starting after `from` whose base offset is at least
/// `min_offset`: evidence that damage at `from` is not a torn tail but mid-log corruption.
/// Returns its position.
pub fn find_valid_batch_after(
    file: &File,
    path: &Path,
    from: u64,
    min_offset: u64,
    max_batch: usize,
) -> Result<Option<u64>> {
    let file_len = file.metadata().map_err(|e| LogError::io(path, e))?.len();
    let magic = MAGIC.to_le_bytes();
    let finder = memchr::memmem::Finder::new(&magic);
    const CHUNK: u64 = 4 << 20;
    // Candidate batch starts are p > from, so the magic sits at p + 16 > from + 16.
    let mut chunk_start = from + 1 + MAGIC_POS as u64;
    while chunk_start < file_len {
        let len = CHUNK.min(file_len - chunk_start) as usize;
        let chunk = read_exact_at(file, path, chunk_start, len + 3)?;
        let mut search_from = 0;
        while let Some(i) = finder.find(&chunk[search_from..]) {
            let magic_at = chunk_start + (search_from + i) as u64;
            search_from += i + 1;
            let p = magic_at - MAGIC_POS as u64;
            let head = read_exact_at(file, path, p, HEADER_LEN)?;
            let Ok(h) = BatchHeader::parse(&head, max_batch) else {
                continue;
            };
            if h.base_offset < min_offset {
                continue;
            }
            let whole = read_exact_at(file, path, p, h.length as usize)?;
            if batch::verify(&whole, max_batch).is_ok() {
                return Ok(Some(p));
            }
        }
        chunk_start += len as u64;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_file_names_round_trip() {
        assert_eq!(file_name(42), "00000000000000000042.log");
        assert_eq!(parse_file_name("00000000000000000042.log"), Some(42));
        assert_eq!(parse_file_name("42.log"), None);
        assert_eq!(parse_file_name("0000000000000000004x.log"), None);
        assert_eq!(parse_file_name("00000000000000000042.index"), None);
    }
}
