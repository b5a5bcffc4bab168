//! A full disk: the append that does not fit fails with `DiskFull` and leaves the log as it
//! was; once space is freed, appends go on at the next offset; everything acknowledged
//! survives a reopen. The disk is a 2 MiB tmpfs mounted for the test (this needs root; the
//! test fails loudly rather than pass without a disk to fill).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use axle_log::{IoBackendKind, LogConfig, LogError, Partition, Record};
use common::*;

const P: &str = "p";
const RECS_PER_BATCH: u64 = 10;

/// A tmpfs mounted on a temporary directory, unmounted on drop (also when a test fails).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        let ok = matches!(&out, Ok(o) if o.status.success());
        if !ok {
            let why = match &out {
                Ok(o) => format!("{}: {}", o.status, String::from_utf8_lossy(&o.stderr).trim()),
                Err(e) => e.to_string(),
            };
            panic!(
                "\n\n*** DISK-FULL TEST NOT RUN: could not mount a {size} tmpfs on {} ({why}).\n\
                 *** These tests fill a small filesystem and need root (CAP_SYS_ADMIN) to mount it.\n\n",
                dir.path().display()
            );
        }
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let umount = |lazy: bool| {
            let mut c = Command::new("umount");
            if lazy {
                c.arg("-l");
            }
            c.arg(self.dir.path()).status().is_ok_and(|s| s.success())
        };
        if !umount(false) && !umount(true) {
            eprintln!("could not unmount the tmpfs on {}", self.dir.path().display());
        }
    }
}

fn batch(first: u64) -> Vec<Record> {
    (first..first + RECS_PER_BATCH).map(rec).collect()
}

/// Appends batches until one fails; returns how many records were acknowledged and the error.
async fn append_until_failure(p: &Partition, mut next: u64) -> (u64, LogError) {
    loop {
        match p.append(&batch(next)).await {
            Ok(a) => {
                assert_eq!(a.base_offset, next, "acknowledged offsets are contiguous");
                next += RECS_PER_BATCH;
            }
            Err(e) => return (next, e),
        }
        assert!(next < 1_000_000, "the disk never filled up");
    }
}

fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir.join(P)).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

async fn fill_free_and_reopen(backend: IoBackendKind, preallocate: bool) {
    let ctx = format!("{backend:?}, preallocate {preallocate}");
    let disk = Tmpfs::mount("2m");
    let ballast = disk.path().join("ballast");
    fs::write(&ballast, vec![0xbbu8; 1536 * 1024]).unwrap();
    let dir = disk.path().join("log");
    let cfg = LogConfig {
        preallocate,
        // With preallocation the disk fills when a roll reserves the next segment; without,
        // segments are larger than the free space, so it fills inside a write.
        ..small_segments(backend, if preallocate { 64 * 1024 } else { 1 << 20 })
    };
    let log = open(&dir, cfg.clone());
    let p = log.partition(P).unwrap();

    let (mut acked, err) = append_until_failure(&p, 0).await;
    assert!(matches!(err, LogError::DiskFull { .. }), "{ctx}: expected DiskFull, got {err:?}");
    assert!(err.to_string().contains("full"), "{err}");
    assert!(acked > 100, "{ctx}: only {acked} records fitted");
    if preallocate {
        assert!(p.segment_count() > 2, "{ctx}: the disk filled at a roll");
    } else {
        assert_eq!(p.segment_count(), 1, "{ctx}: the disk filled inside a write");
    }
    assert_eq!(p.bounds().end, acked, "{ctx}: the failed append is not visible");
    // While the disk stays full, appends fail the same way or, where space is reserved,
    // succeed; offsets never skip.
    for _ in 0..5 {
        match p.append(&batch(acked)).await {
            Ok(a) => {
                assert_eq!(a.base_offset, acked, "{ctx}");
                acked += RECS_PER_BATCH;
            }
            Err(LogError::DiskFull { .. }) => {}
            Err(e) => panic!("{ctx}: expected DiskFull or success, got {e}"),
        }
        assert_eq!(p.bounds().end, acked, "{ctx}");
    }
    assert_holds_recs(&p, 0, acked);
    // No half-written batch sits at the end of the active segment, and no half-created
    // segment was left behind.
    let active = segment_files(&dir, P).last().unwrap().1.clone();
    let data_end = batches_in(&active).last().map_or(0, |b| b.end());
    let file_len = fs::metadata(&active).unwrap().len();
    assert!(
        file_len == data_end || (preallocate && file_len == 64 * 1024),
        "{ctx}: active segment is {file_len} bytes, its data {data_end}"
    );
    assert_eq!(segment_files(&dir, P).len(), p.segment_count(), "{ctx}: {:?}", log_files(&dir));

    fs::remove_file(&ballast).unwrap();
    let resumed_at = acked;
    // Enough to roll at least once more.
    let more = if preallocate { 1000 } else { 8000 };
    for first in (resumed_at..resumed_at + more).step_by(RECS_PER_BATCH as usize) {
        let a = p.append(&batch(first)).await.unwrap_or_else(|e| panic!("{ctx}: append after freeing space: {e}"));
        assert_eq!(a.base_offset, first, "{ctx}: offsets continue without a gap");
    }
    acked += more;
    assert_holds_recs(&p, 0, acked);
    log.close().unwrap();
    drop(p);
    drop(log);

    let log = open(&dir, cfg);
    let report = log.recovery_report(P).unwrap();
    assert!(report.clean, "{ctx}: {report:?}");
    let p = log.partition(P).unwrap();
    assert_eq!(p.bounds().end, acked, "{ctx}");
    assert_holds_recs(&p, 0, acked);
    log.close().unwrap();
}

#[tokio::test]
async fn disk_full_fails_the_append_and_recovers_when_space_is_freed() {
    for backend in BACKENDS {
        fill_free_and_reopen(backend, true).await;
    }
}

#[tokio::test]
async fn disk_full_inside_a_write_without_preallocation_fails_the_append_and_recovers() {
    for backend in BACKENDS {
        fill_free_and_reopen(backend, false).await;
    }
}
