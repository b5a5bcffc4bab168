//! Recovery of index files and checkpoints: deleted or garbled index files are rebuilt, a
//! clean shutdown needs no recovery, an unclean one scans only after the checkpoint, and a
//! damaged checkpoint falls back to validating everything. Damage to segment data is in
//! `recovery.rs`, whose notes on simulating a crash apply here too.

mod common;

use std::fs;
use std::path::Path;

use axle_log::{Log, LogConfig, LogError, RecoveryReport};
use common::*;
use rand::{RngCore, SeedableRng};

const P: &str = "p";

#[tokio::test]
async fn deleted_index_files_are_rebuilt() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        // Timestamps from 1970: age-based retention (every 30 s) must not delete them mid-test.
        let cfg = LogConfig { retention_age: None, ..small_segments(backend, 4096) };
        let ts = |i: u64| 1_000_000 + (i as i64) * 10;
        let n = 600u64;
        let log = open(dir.path(), cfg.clone());
        let p = log.partition(P).unwrap();
        for i in 0..n {
            p.append(&[rec(i).with_timestamp(ts(i))]).await.unwrap();
        }
        log.close().unwrap();
        let files = segment_files(dir.path(), P);
        assert!(files.len() >= 12, "{} segments", files.len());
        let idx = |k: usize, ext: &str| files[k].1.with_extension(ext);
        for (k, _) in files.iter().enumerate() {
            assert!(idx(k, "index").exists() && idx(k, "timeindex").exists());
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut garbage = |path: &Path, len: usize| {
            let mut b = vec![0u8; len];
            rng.fill_bytes(&mut b);
            fs::write(path, b).unwrap();
        };
        let last = files.len() - 1;
        fs::remove_file(idx(1, "index")).unwrap();
        fs::remove_file(idx(3, "timeindex")).unwrap();
        fs::remove_file(idx(5, "index")).unwrap();
        fs::remove_file(idx(5, "timeindex")).unwrap();
        // Garbage of the same length, and of another length.
        let len7 = fs::metadata(idx(7, "index")).unwrap().len() as usize;
        garbage(&idx(7, "index"), len7);
        garbage(&idx(8, "timeindex"), 5000);
        // A valid index file of another segment.
        fs::copy(idx(9, "index"), idx(10, "index")).unwrap();
        // The active segment's indexes, written at clean shutdown.
        fs::remove_file(idx(last, "index")).unwrap();
        garbage(&idx(last, "timeindex"), 100);
        let damaged = 7;

        let log = open(dir.path(), cfg.clone());
        let report = log.recovery_report(P).unwrap();
        assert_eq!(report.indexes_rebuilt, damaged, "{backend:?}: {report:?}");
        assert!(!report.clean, "a missing active index means the open was not clean");
        let p = log.partition(P).unwrap();
        assert_eq!(p.bounds().end, n);
        for start in (0..n).step_by(7) {
            let got = p.read(start, 3, usize::MAX).unwrap();
            assert_eq!(got.len() as u64, 3.min(n - start));
            for (k, r) in got.iter().enumerate() {
                let i = start + k as u64;
                assert_eq!((r.offset, r.timestamp), (i, ts(i)));
                assert_eq!(r.value, expected_value(i).as_bytes());
            }
        }
        assert_holds_recs(&p, 0, n);
        for i in (0..n).step_by(11) {
            assert_eq!(p.offset_for_timestamp(ts(i)).unwrap(), Some(i));
            assert_eq!(p.offset_for_timestamp(ts(i) - 5).unwrap(), Some(i));
            assert_eq!(p.offset_for_timestamp(ts(i) + 1).unwrap(), (i + 1 < n).then_some(i + 1));
        }
        assert_eq!(p.offset_for_timestamp(ts(n - 1) + 1).unwrap(), None);
        // The rebuilt active index takes new appends.
        for i in n..n + 20 {
            p.append(&[rec(i).with_timestamp(ts(i))]).await.unwrap();
        }
        assert_eq!(p.offset_for_timestamp(ts(n + 10)).unwrap(), Some(n + 10));
        log.close().unwrap();

        let log = open(dir.path(), cfg);
        let p = log.partition(P).unwrap();
        assert_holds_recs(&p, 0, n + 20);
        assert_eq!(p.offset_for_timestamp(ts(300)).unwrap(), Some(300));
    }
}

#[tokio::test]
async fn clean_shutdown_needs_no_recovery() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_segments(backend, 8192);
        let log = open(dir.path(), cfg.clone());
        let a = log.partition("a").unwrap();
        let b = log.partition("b").unwrap();
        append_recs(&a, 0, 300).await;
        append_recs(&b, 0, 20).await;
        assert!(a.segment_count() > 3);
        log.close().unwrap();

        let log = open(dir.path(), cfg.clone());
        for name in ["a", "b"] {
            assert_eq!(
                log.recovery_report(name).unwrap(),
                RecoveryReport { clean: true, ..RecoveryReport::default() },
                "{backend:?} {name}"
            );
        }
        let a = log.partition("a").unwrap();
        let b = log.partition("b").unwrap();
        assert_eq!((a.bounds().end, b.bounds().end), (300, 20));
        assert_holds_recs(&a, 0, 300);
        assert_holds_recs(&b, 0, 20);
        append_recs(&a, 300, 310).await;
        // Dropping the last handle closes cleanly too.
        drop((a, b));
        drop(log);
        let log = open(dir.path(), cfg);
        assert!(log.recovery_report("a").unwrap().clean);
        assert_holds_recs(&log.partition("a").unwrap(), 0, 310);
    }
}

#[tokio::test]
async fn unclean_shutdown_scans_only_after_the_checkpoint() {
    for backend in BACKENDS {
        // Within one segment: the checkpoint written when the log was last opened sits at the
        // end of what the previous session closed with; only later bytes are validated.
        let dir = tempfile::tempdir().unwrap();
        let crash = tempfile::tempdir().unwrap();
        let cfg = one_segment(backend);
        let log = open(dir.path(), cfg.clone());
        append_recs(&log.partition(P).unwrap(), 0, 100).await;
        log.close().unwrap();
        let first_session = fs::metadata(segment_path(dir.path(), P, 0)).unwrap().len();
        let log = open(dir.path(), cfg.clone());
        let p = log.partition(P).unwrap();
        append_recs(&p, 100, 200).await;
        let total = p.size_bytes();
        copy_log_dir(dir.path(), crash.path());
        log.close().unwrap();

        let log = open(crash.path(), cfg.clone());
        let report = log.recovery_report(P).unwrap();
        assert_eq!(
            report,
            RecoveryReport { clean: false, bytes_scanned: total - first_session, ..RecoveryReport::default() },
            "{backend:?}"
        );
        let p = log.partition(P).unwrap();
        assert_holds_recs(&p, 0, 200);
        append_recs(&p, 200, 210).await;
        log.close().unwrap();

        // Across rolls: the checkpoint moves to each new segment, so only the active segment
        // is validated and the older ones are taken from their index files.
        let dir = tempfile::tempdir().unwrap();
        let crash = tempfile::tempdir().unwrap();
        let cfg = small_segments(backend, 8192);
        let log = open(dir.path(), cfg.clone());
        let p = log.partition(P).unwrap();
        append_recs(&p, 0, 300).await;
        let total = p.size_bytes();
        copy_log_dir(dir.path(), crash.path());
        log.close().unwrap();
        let files = segment_files(crash.path(), P);
        assert!(files.len() > 3);
        let active = batches_in(&files.last().unwrap().1).last().unwrap().end();

        let log = open(crash.path(), cfg);
        let report = log.recovery_report(P).unwrap();
        assert_eq!(
            report,
            RecoveryReport { clean: false, bytes_scanned: active, ..RecoveryReport::default() },
            "{backend:?}"
        );
        assert!(report.bytes_scanned < total);
        let p = log.partition(P).unwrap();
        assert_holds_recs(&p, 0, 300);
        append_recs(&p, 300, 310).await;
    }
}

#[tokio::test]
async fn damaged_checkpoint_still_opens_and_validates_everything() {
    type Damage = fn(&Path);
    let damages: [(&str, Damage); 5] = [
        ("missing", |p| fs::remove_file(p).unwrap()),
        ("empty", |p| fs::write(p, b"").unwrap()),
        ("short", |p| {
            let b = fs::read(p).unwrap();
            fs::write(p, &b[..20]).unwrap();
        }),
        ("flipped byte", |p| flip_byte(p, 17)),
        ("garbage", |p| fs::write(p, [0xa5u8; 40]).unwrap()),
    ];
    for backend in BACKENDS {
        for (what, damage) in damages {
            let dir = tempfile::tempdir().unwrap();
            let cfg = small_segments(backend, 8192);
            let log = open(dir.path(), cfg.clone());
            append_recs(&log.partition(P).unwrap(), 0, 200).await;
            log.close().unwrap();
            let files = segment_files(dir.path(), P);
            assert!(files.len() > 2);
            let total: u64 = files.iter().map(|(_, f)| fs::metadata(f).unwrap().len()).sum();
            damage(&dir.path().join(P).join("recovery-point"));

            let log = open(dir.path(), cfg.clone());
            let report = log.recovery_report(P).unwrap();
            assert_eq!(
                report,
                RecoveryReport { clean: false, bytes_scanned: total, ..RecoveryReport::default() },
                "{backend:?} {what}: every segment is validated"
            );
            let p = log.partition(P).unwrap();
            assert_holds_recs(&p, 0, 200);
            append_recs(&p, 200, 210).await;
            log.close().unwrap();

            // Proof that the validation is real: with the checkpoint damaged, a flipped byte in
            // the oldest segment (trusted under a good checkpoint) is found at open.
            let oldest = &segment_files(dir.path(), P)[0].1;
            let b = batches_in(oldest)[2];
            flip_byte(oldest, b.pos + b.len - 1);
            damage(&dir.path().join(P).join("recovery-point"));
            match Log::open(dir.path(), cfg.clone()) {
                Err(LogError::MidLogCorruption { path, position, .. }) => {
                    assert_eq!(&path, oldest, "{what}");
                    assert_eq!(position, b.pos);
                }
                Err(e) => panic!("{what}: expected MidLogCorruption, got {e}"),
                Ok(_) => panic!("{what}: damage in the oldest segment went unnoticed"),
            }
            let log = open(dir.path(), repairing(cfg));
            let report = log.recovery_report(P).unwrap();
            assert!(report.segments_removed > 0, "{report:?}");
            let p = log.partition(P).unwrap();
            assert_eq!(p.bounds().end, b.base_offset);
            assert_holds_recs(&p, 0, b.base_offset);
            append_recs(&p, b.base_offset, b.base_offset + 5).await;
        }
    }
}
