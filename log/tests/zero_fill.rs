//! Zero-fill ahead of the tail under `fsync = always` (see `PartitionWriter::zero_ahead`):
//! the space past the data holds written zeros, unwritten preallocated extents or holes, in
//! any mix a crash can leave, and recovery finds the acknowledged end in every case.
//!
//! An unclean shutdown is simulated as in `recovery.rs`: the log directory is copied while
//! the log is open, after the appends were acknowledged.

mod common;

use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use axle_log::{IoBackendKind, LogConfig, Record};
use common::*;

const P: &str = "p";
/// Not a multiple of the zero-fill chunk or of a page: zero-fill must stop at the
/// preallocated length, never grow the file.
const SEGMENT: u64 = (3 << 20) + 1000;
/// Value bytes per record: 900 records fill the first segment and start a second.
const VALUE: usize = 4000;
const N: u64 = 900;

fn value(i: u64) -> Vec<u8> {
    format!("{i:08}").into_bytes().repeat(VALUE / 8)
}

fn cfg(backend: IoBackendKind) -> LogConfig {
    LogConfig { segment_bytes: SEGMENT, ..config(backend) }
}

/// Appends `from..to` with concurrent appenders (so rounds carry several batches), and
/// returns once every one is acknowledged.
async fn append(p: &axle_log::Partition, from: u64, to: u64) {
    let mut pending = Vec::new();
    for i in from..to {
        let p = p.clone();
        pending.push(tokio::spawn(async move { p.append(&[Record::new(value(i))]).await }));
        if pending.len() == 16 {
            for t in pending.drain(..) {
                t.await.unwrap().expect("append acknowledged");
            }
        }
    }
    for t in pending {
        t.await.unwrap().expect("append acknowledged");
    }
}

/// Every value `0..n` is present once, in some order of offsets `0..n`.
fn assert_holds(p: &axle_log::Partition, n: u64) {
    let got = p.read(0, usize::MAX, usize::MAX).expect("records read back");
    assert_eq!(got.len() as u64, n);
    let mut seen = vec![false; n as usize];
    for (k, r) in got.iter().enumerate() {
        assert_eq!(r.offset, k as u64);
        let i: u64 = std::str::from_utf8(&r.value[..8]).unwrap().parse().unwrap();
        assert_eq!(r.value, value(i), "value at offset {k}");
        assert!(!std::mem::replace(&mut seen[i as usize], true), "value {i} twice");
    }
}

/// Byte length of the batches at the start of a segment file.
fn data_end(path: &Path) -> u64 {
    batches_in(path).last().map_or(0, |b| b.end())
}

fn is_ext4(path: &Path) -> bool {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statfs into a zeroed struct with a valid path.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut s) == 0 && s.f_type == 0xEF53 }
}

#[tokio::test]
async fn zero_filled_tail_recovers_to_the_acknowledged_end() {
    for backend in BACKENDS {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, crash) = (tmp.path().join("log"), tmp.path().join("crash"));
        let log = open(&dir, cfg(backend));
        let p = log.partition(P).unwrap();
        append(&p, 0, N).await;
        let segs = segment_files(&dir, P);
        assert_eq!(segs.len(), 2, "{backend:?}: the first segment rolled");
        let active = &segs[1].1;
        // Before anything reads the file: on ext4, written zeros (in the page cache or on
        // disk) are data to SEEK_HOLE, while fallocated blocks never written or read are not.
        let f = std::fs::File::open(active).unwrap();
        // SAFETY: lseek on an owned descriptor.
        let hole = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_HOLE) };
        let end = data_end(active);
        assert!(end > 0);
        if is_ext4(active) {
            assert!(
                hole as u64 >= end + (512 << 10),
                "{backend:?}: first hole at {hole}, data ends at {end}: no zero-fill"
            );
        }
        copy_log_dir(&dir, &crash);
        log.close().unwrap();
        // The rolled segment was cut to its data; the active one keeps its preallocation.
        assert_eq!(std::fs::metadata(&segs[0].1).unwrap().len(), data_end(&segs[0].1));
        let crashed_active = segment_path(&crash, P, segs[1].0);
        assert_eq!(std::fs::metadata(&crashed_active).unwrap().len(), SEGMENT, "{backend:?}: zero-fill grew the file");
        let f = std::fs::File::open(&crashed_active).unwrap();
        let mut tail = vec![0u8; (SEGMENT - end) as usize];
        f.read_exact_at(&mut tail, end).unwrap();
        assert!(tail.iter().all(|&b| b == 0), "{backend:?}: non-zero bytes past the data");

        let log = open(&crash, cfg(backend));
        let p = log.partition(P).unwrap();
        assert_eq!(p.bounds().end, N, "{backend:?}");
        assert_holds(&p, N);
        append(&p, N, N + 50).await;
        assert_holds(&p, N + 50);
        log.close().unwrap();
    }
}

#[tokio::test]
async fn crash_mid_zero_fill_recovers_to_the_acknowledged_end() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, crash) = (tmp.path().join("log"), tmp.path().join("crash"));
    let log = open(&dir, cfg(IoBackendKind::Auto));
    let p = log.partition(P).unwrap();
    append(&p, 0, 300).await;
    copy_log_dir(&dir, &crash);
    log.close().unwrap();
    // What a crash part-way through writing the zeros can leave past the data: written
    // zeros, then extents still unwritten, then (on a filesystem that lost them) holes.
    let path = segment_path(&crash, P, 0);
    let end = data_end(&path);
    let page = end.div_ceil(4096) * 4096;
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let fd = f.as_raw_fd();
    let (a, b) = (page + (128 << 10), page + (640 << 10));
    // SAFETY: fallocate on an owned descriptor, inside the file.
    unsafe {
        if libc::fallocate(fd, libc::FALLOC_FL_ZERO_RANGE, a as i64, (b - a) as i64) != 0 {
            eprintln!("FALLOC_FL_ZERO_RANGE unsupported here: {}", std::io::Error::last_os_error());
        }
        if libc::fallocate(fd, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, b as i64, (256 << 10) as i64)
            != 0
        {
            eprintln!("FALLOC_FL_PUNCH_HOLE unsupported here: {}", std::io::Error::last_os_error());
        }
    }
    f.sync_all().unwrap();
    drop(f);
    let log = open(&crash, cfg(IoBackendKind::Auto));
    let p = log.partition(P).unwrap();
    assert_eq!(p.bounds().end, 300);
    assert_holds(&p, 300);
    append(&p, 300, 400).await;
    assert_holds(&p, 400);
    log.close().unwrap();
    let log = open(&crash, cfg(IoBackendKind::Auto));
    assert_holds(&log.partition(P).unwrap(), 400);
}
