//! Helpers shared by the log's integration tests.
#![allow(dead_code)]

use std::path::Path;

use axle_log::{FsyncPolicy, IoBackendKind, Log, LogConfig, Record};

/// Both write paths; every behavioural test runs on each.
pub const BACKENDS: [IoBackendKind; 2] = [IoBackendKind::IoUring, IoBackendKind::Pwrite];

pub fn config(backend: IoBackendKind) -> LogConfig {
    LogConfig { io_backend: backend, fsync: FsyncPolicy::Always, ..LogConfig::default() }
}

pub fn small_segments(backend: IoBackendKind, segment_bytes: u64) -> LogConfig {
    LogConfig { segment_bytes, index_interval_bytes: 256, ..config(backend) }
}

pub fn open(dir: &Path, cfg: LogConfig) -> Log {
    Log::open(dir, cfg).expect("log opens")
}

/// A record whose value encodes `i`, so tests can check every byte.
pub fn rec(i: u64) -> Record {
    Record::new(format!("value-{i:08}-{}", "x".repeat((i % 50) as usize)))
        .with_key(format!("key-{}", i % 7))
        .with_header("n", i.to_string())
}

pub fn expected_value(i: u64) -> String {
    format!("value-{i:08}-{}", "x".repeat((i % 50) as usize))
}

/// `<dir>/<partition>/<20-digit base>.log`.
pub fn segment_path(dir: &Path, partition: &str, base: u64) -> std::path::PathBuf {
    dir.join(partition).join(format!("{base:020}.log"))
}

/// The segment files of a partition as `(base offset, path)`, sorted by base offset.
pub fn segment_files(dir: &Path, partition: &str) -> Vec<(u64, std::path::PathBuf)> {
    let mut out: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(dir.join(partition))
        .expect("partition directory exists")
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().to_string_lossy().to_string();
            let stem = name.strip_suffix(".log")?;
            if stem.len() != 20 {
                return None;
            }
            Some((stem.parse().ok()?, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Where one batch sits in a segment file, read straight from its header (see `batch.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchAt {
    /// Byte position of the batch in the file.
    pub pos: u64,
    /// Whole batch in bytes, header included.
    pub len: u64,
    pub base_offset: u64,
    pub record_count: u64,
}

impl BatchAt {
    pub fn end(&self) -> u64 {
        self.pos + self.len
    }

    pub fn next_offset(&self) -> u64 {
        self.base_offset + self.record_count
    }
}

/// Walks the batch headers of a segment file from byte 0 until the data ends (end of file,
/// zeros left by preallocation, or anything that is not a batch header).
pub fn batches_in(path: &Path) -> Vec<BatchAt> {
    let data = std::fs::read(path).expect("segment readable");
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos + axle_log::BATCH_HEADER_LEN <= data.len() {
        let h = &data[pos..pos + axle_log::BATCH_HEADER_LEN];
        if &h[16..20] != b"AXLB" {
            break;
        }
        let len = u32::from_le_bytes(h[8..12].try_into().unwrap()) as usize;
        if len < axle_log::BATCH_HEADER_LEN || pos + len > data.len() {
            break;
        }
        out.push(BatchAt {
            pos: pos as u64,
            len: len as u64,
            base_offset: u64::from_le_bytes(h[0..8].try_into().unwrap()),
            record_count: u64::from(u32::from_le_bytes(h[28..32].try_into().unwrap())),
        });
        pos += len;
    }
    out
}

/// XORs one byte of a file in place.
pub fn flip_byte(path: &Path, pos: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("file opens for writing");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, pos).expect("byte readable");
    b[0] ^= 0x5a;
    f.write_all_at(&b, pos).expect("byte writable");
    f.sync_all().unwrap();
}

/// Copies a log directory (one level of partition directories) byte for byte, including
/// preallocated tails. Taken while the log is open, the copy is what a crash of the process
/// at that instant would leave on disk: the page cache holds every completed write.
pub fn copy_log_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_log_dir(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
}

/// Asserts that `p` holds the records `rec(from)..rec(to)` at offsets `from..to`, byte for
/// byte (key, value, header). Reads nothing past `to`.
pub fn assert_holds_recs(p: &axle_log::Partition, from: u64, to: u64) {
    let got = p.read(from, (to - from) as usize, usize::MAX).expect("records read back");
    assert_eq!(got.len() as u64, to - from, "expected offsets {from}..{to}, got {:?}..", got.first().map(|r| r.offset));
    for (k, r) in got.iter().enumerate() {
        let i = from + k as u64;
        assert_eq!(r.offset, i);
        assert_eq!(r.value, expected_value(i).as_bytes(), "value at {i}");
        assert_eq!(r.key.as_deref(), Some(format!("key-{}", i % 7).as_bytes()), "key at {i}");
        assert_eq!(r.headers.len(), 1, "headers at {i}");
        assert_eq!(r.headers[0].value, i.to_string().as_bytes(), "header at {i}");
    }
}

/// Appends `rec(i)` for every `i` in `from..to`, one batch each, checking the offsets.
pub async fn append_recs(p: &axle_log::Partition, from: u64, to: u64) {
    for i in from..to {
        let a = p.append(&[rec(i)]).await.expect("append acknowledged");
        assert_eq!(a.base_offset, i, "offset of rec({i})");
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A batch sealed by hand, per `docs/log-format.md` (independently of the log's encoder):
/// base offset `base`, leader epoch `epoch`, one record per `(timestamp, key, value)`.
pub fn sealed_batch(base: u64, epoch: u32, records: &[(i64, Option<&str>, &str)]) -> bytes::Bytes {
    let first_ts = records[0].0;
    let max_ts = records.iter().map(|r| r.0).max().unwrap();
    let mut body = Vec::new();
    for (i, (ts, key, value)) in records.iter().enumerate() {
        let mut rec = Vec::new();
        put_varint(&mut rec, i as u64);
        let d = ts - first_ts;
        put_varint(&mut rec, ((d << 1) ^ (d >> 63)) as u64);
        match key {
            Some(k) => {
                put_varint(&mut rec, k.len() as u64 + 1);
                rec.extend_from_slice(k.as_bytes());
            }
            None => put_varint(&mut rec, 0),
        }
        put_varint(&mut rec, value.len() as u64);
        rec.extend_from_slice(value.as_bytes());
        put_varint(&mut rec, 0);
        put_varint(&mut body, rec.len() as u64);
        body.extend_from_slice(&rec);
    }
    let len = (axle_log::BATCH_HEADER_LEN + body.len()) as u32;
    let mut b = Vec::with_capacity(len as usize);
    b.extend_from_slice(&base.to_le_bytes());
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(&epoch.to_le_bytes());
    b.extend_from_slice(b"AXLB");
    b.extend_from_slice(&[0; 4]);
    b.push(1);
    b.push(0);
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&(records.len() as u32).to_le_bytes());
    b.extend_from_slice(&first_ts.to_le_bytes());
    b.extend_from_slice(&max_ts.to_le_bytes());
    b.extend_from_slice(&body);
    let crc = crc32fast::hash(&b[24..]);
    b[20..24].copy_from_slice(&crc.to_le_bytes());
    bytes::Bytes::from(b)
}

/// `(base offset, record count, leader epoch)` of every batch from the log start to the log
/// end, read with `read_batches` and decoded from the headers by hand.
pub fn scan_batches(p: &axle_log::Partition) -> Vec<(u64, u64, u32)> {
    let mut out = Vec::new();
    let mut at = p.bounds().log_start;
    loop {
        let batches = p.read_batches(at, 1 << 16).expect("batches read");
        if batches.is_empty() {
            return out;
        }
        for b in batches {
            let base = u64::from_le_bytes(b[0..8].try_into().unwrap());
            let count = u64::from(u32::from_le_bytes(b[28..32].try_into().unwrap()));
            let epoch = u32::from_le_bytes(b[12..16].try_into().unwrap());
            out.push((base, count, epoch));
            at = base + count;
        }
    }
}

/// OffsetsForLeaderEpoch computed from a list of batches `(base, count, epoch)` ending at
/// `log_end`: the model the epoch cache must agree with.
pub fn model_epoch_end(batches: &[(u64, u64, u32)], log_end: u64, epoch: u32) -> Option<(u32, u64)> {
    let e = batches.iter().map(|b| b.2).filter(|e| *e <= epoch).max()?;
    let first = batches.iter().position(|b| b.2 == e)?;
    let end = batches[first + 1..].iter().find(|b| b.2 > e).map_or(log_end, |b| b.0);
    Some((e, end))
}

/// Segments big enough that nothing rolls in these tests, small enough that copying a
/// preallocated segment is cheap.
pub fn one_segment(backend: IoBackendKind) -> LogConfig {
    small_segments(backend, 1 << 20)
}

pub fn repairing(cfg: LogConfig) -> LogConfig {
    LogConfig { repair: true, ..cfg }
}

/// Builds a log in `dir` holding `rec(0)..rec(n)` as single-record batches and copies it,
/// in partition `p`, while still open, to `crash`: the on-disk state after a process crash.
pub async fn crashed_copy(dir: &Path, crash: &Path, cfg: LogConfig, n: u64) {
    let log = open(dir, cfg);
    let p = log.partition("p").unwrap();
    append_recs(&p, 0, n).await;
    copy_log_dir(dir, crash);
    log.close().unwrap();
}
