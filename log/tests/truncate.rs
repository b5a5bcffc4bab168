//! Truncation: every record at or past the cut is gone, durably (a crash right after does
//! not bring it back), across segment boundaries, with indexes and the epoch cache trimmed;
//! only batch boundaries are accepted; appends continue at the cut.

mod common;

use std::path::Path;

use axle_log::{IoBackendKind, Log, LogConfig, LogError, Partition, Record};
use common::*;
use rand::{Rng, SeedableRng};

const P: &str = "p";

fn cfg(backend: IoBackendKind) -> LogConfig {
    LogConfig { retention_age: None, ..small_segments(backend, 4096) }
}

/// The offsets of key `key-{k}` a keyed read finds from 0.
fn keyed_offsets(p: &Partition, k: u64) -> Vec<u64> {
    let key = format!("key-{k}");
    p.read_key(key.as_bytes(), 0, usize::MAX, usize::MAX).unwrap().records.iter().map(|r| r.offset).collect()
}

/// `p` holds exactly `rec(0)..rec(end)`, through every read path.
fn assert_holds_exactly(dir: &Path, p: &Partition, end: u64) {
    assert_eq!(p.log_end(), end);
    assert_eq!(p.bounds().end, end);
    assert_holds_recs(p, 0, end);
    assert!(p.read(end, 10, usize::MAX).unwrap().is_empty());
    assert!(matches!(p.read(end + 1, 10, usize::MAX), Err(LogError::OffsetOutOfRange { .. })));
    for k in 0..7 {
        assert_eq!(keyed_offsets(p, k), (0..end).filter(|i| i % 7 == k).collect::<Vec<_>>(), "key-{k}");
    }
    let batches = scan_batches(p);
    assert_eq!(batches.iter().map(|b| b.1).sum::<u64>(), end);
    for (base, path) in segment_files(dir, P) {
        assert!(base <= end, "segment {} survives a cut at {end}", path.display());
        for b in batches_in(&path) {
            assert!(b.next_offset() <= end, "{} still holds offsets up to {}", path.display(), b.next_offset());
        }
    }
}

#[tokio::test]
async fn truncate_removes_the_tail_durably_across_a_crash_and_segment_boundaries() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), cfg(backend));
        let p = log.partition(P).unwrap();
        append_recs(&p, 0, 300).await;
        let segs = segment_files(dir.path(), P);
        assert!(segs.len() > 4);
        let to = segs[segs.len() / 2].0 + 3;
        p.truncate(to).await.unwrap();
        let part = dir.path().join(P);
        assert_holds_exactly(dir.path(), &p, to);

        // A crash right after truncate returns: the tail stays gone.
        let crash = tempfile::tempdir().unwrap();
        copy_log_dir(dir.path(), crash.path());
        let crashed = open(crash.path(), cfg(backend));
        let cp = crashed.partition(P).unwrap();
        assert_holds_exactly(crash.path(), &cp, to);
        // ... and a sealed append continues exactly at the cut.
        let sealed = sealed_batch(to, 3, &[(axle_log::now_ms(), Some("key-x"), "after the cut")]);
        assert_eq!(cp.append_sealed(vec![sealed]).await.unwrap().base_offset, to);
        assert_eq!(cp.read(to, 1, usize::MAX).unwrap()[0].value, "after the cut".as_bytes());
        crashed.close().unwrap();

        // In this process, appends continue at the cut with every index intact.
        append_recs(&p, to, to + 40).await;
        assert_holds_exactly(dir.path(), &p, to + 40);
        log.close().unwrap();
        let log = open(dir.path(), cfg(backend));
        assert_holds_exactly(dir.path(), &log.partition(P).unwrap(), to + 40);
        assert!(part.join("leader-epochs").exists());
        log.close().unwrap();
    }
}

#[tokio::test]
async fn truncate_at_a_segment_base_or_the_log_start_leaves_an_empty_tail_to_append_to() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), cfg(backend));
        let p = log.partition(P).unwrap();
        append_recs(&p, 0, 200).await;
        let base = segment_files(dir.path(), P)[2].0;
        p.truncate(base).await.unwrap();
        assert_holds_exactly(dir.path(), &p, base);
        append_recs(&p, base, base + 5).await;
        assert_holds_exactly(dir.path(), &p, base + 5);
        p.truncate(0).await.unwrap();
        assert_holds_exactly(dir.path(), &p, 0);
        assert_eq!(p.latest_epoch(), None);
        let crash = tempfile::tempdir().unwrap();
        copy_log_dir(dir.path(), crash.path());
        let crashed = open(crash.path(), cfg(backend));
        assert_holds_exactly(crash.path(), &crashed.partition(P).unwrap(), 0);
        crashed.close().unwrap();
        append_recs(&p, 0, 20).await;
        assert_holds_exactly(dir.path(), &p, 20);
        log.close().unwrap();
    }
}

#[tokio::test]
async fn truncate_inside_a_batch_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), cfg(IoBackendKind::Pwrite));
    let p = log.partition(P).unwrap();
    for i in 0..4 {
        p.append(&[rec(3 * i), rec(3 * i + 1), rec(3 * i + 2)]).await.unwrap();
    }
    match p.truncate(4).await {
        Err(e @ LogError::NotBatchBoundary { offset: 4, batch_start: 3, batch_end: 6, .. }) => {
            assert!(e.to_string().contains("batch boundary"), "{e}");
        }
        other => panic!("expected NotBatchBoundary, got {other:?}"),
    }
    assert_holds_exactly(dir.path(), &p, 12);
    p.truncate(6).await.unwrap();
    assert_holds_exactly(dir.path(), &p, 6);
    log.close().unwrap();
}

#[tokio::test]
async fn truncate_at_or_past_the_end_does_nothing_and_below_the_log_start_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { retention_bytes: Some(8192), ..cfg(IoBackendKind::Pwrite) };
    let log = open(dir.path(), config);
    let p = log.partition(P).unwrap();
    append_recs(&p, 0, 200).await;
    p.truncate(200).await.unwrap();
    p.truncate(1_000).await.unwrap();
    assert_eq!(p.log_end(), 200);
    assert!(log.enforce_retention().unwrap() > 0);
    let start = p.bounds().log_start;
    assert!(start > 0);
    assert!(matches!(p.truncate(start - 1).await, Err(LogError::TruncateBelowLogStart { .. })));
    assert_eq!(p.log_end(), 200);
    // Epochs of retained data only.
    assert_eq!(p.epoch_end_offset(0), Some((0, 200)));
    assert_eq!(p.epoch_at(start - 1).unwrap(), None);
    p.truncate(start).await.unwrap();
    assert_eq!(p.bounds(), axle_log::Bounds { log_start: start, end: start });
    assert_eq!(p.epoch_end_offset(0), None);
    append_recs(&p, start, start + 3).await;
    assert_eq!(p.epoch_end_offset(0), Some((0, start + 3)));
    log.close().unwrap();
}

#[tokio::test]
async fn truncate_clamps_the_high_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), cfg(IoBackendKind::Pwrite));
    let p = log.partition(P).unwrap();
    append_recs(&p, 0, 60).await;
    p.enable_high_watermark(50);
    p.truncate(30).await.unwrap();
    assert_eq!((p.high_watermark(), p.bounds().end, p.log_end()), (30, 30, 30));
    append_recs(&p, 30, 60).await;
    assert_eq!(p.bounds().end, 30, "the old high watermark is not restored by new data");
    p.set_high_watermark(45);
    assert_eq!(p.bounds().end, 45);
    assert_holds_recs(&p, 0, 45);
    log.close().unwrap();
}

#[test]
fn readers_in_flight_across_truncations_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), cfg(IoBackendKind::Pwrite));
    let p = log.partition(P).unwrap();
    for i in 0..150 {
        p.append_blocking(&[rec(i)]).unwrap();
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|n| {
            let (p, stop) = (p.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(n);
                let mut reads = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let at = rng.random_range(0..160);
                    // Any answer is fine, as long as it is an answer.
                    let _ = p.read(at, 50, usize::MAX);
                    let _ = p.read_key(b"key-3", at, 50, usize::MAX);
                    let _ = p.read_batches(at, 4096);
                    let _ = p.offset_for_timestamp(0);
                    let _ = p.epoch_end_offset(rng.random_range(0..3));
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    for _ in 0..30 {
        let end = p.log_end();
        p.truncate_blocking(rng.random_range(0..=end)).unwrap();
        for i in p.log_end()..150 {
            p.append_blocking(&[rec(i)]).unwrap();
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.join().expect("reader thread did not panic") > 0);
    }
    assert_holds_recs(&p, 0, 150);
    log.close().unwrap();
}

/// What one random step of the model test does.
enum Step {
    Append,
    Sealed,
    Truncate,
    Reopen,
    Crash,
}

#[tokio::test]
async fn random_appends_sealed_appends_and_truncations_keep_the_epoch_cache_equal_to_a_scan() {
    for seed in 0..4u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let backend = BACKENDS[seed as usize % 2];
        let mut dirs = vec![tempfile::tempdir().unwrap()];
        let mut log: Log = open(dirs[0].path(), cfg(backend));
        let mut p = log.partition(P).unwrap();
        // (base, count, epoch) of every batch: the model.
        let mut model: Vec<(u64, u64, u32)> = Vec::new();
        for step in 0..70 {
            let end = model.last().map_or(0, |b| b.0 + b.1);
            let pick = match rng.random_range(0..100) {
                0..40 => Step::Append,
                40..70 => Step::Sealed,
                70..88 => Step::Truncate,
                88..94 => Step::Reopen,
                _ => Step::Crash,
            };
            match pick {
                Step::Append => {
                    if rng.random_bool(0.3) {
                        p.set_leader_epoch(rng.random_range(0..6)).unwrap();
                    }
                    let n = rng.random_range(1..4);
                    let recs: Vec<Record> = (0..n).map(|i| rec(end + i)).collect();
                    let a = p.append(&recs).await.unwrap();
                    assert_eq!(a.base_offset, end);
                    model.push((end, n, a.leader_epoch));
                }
                Step::Sealed => {
                    let epoch = rng.random_range(0..8);
                    let mut batches = Vec::new();
                    let mut at = end;
                    for _ in 0..rng.random_range(1..4) {
                        let n = rng.random_range(1..4u64);
                        let recs: Vec<(i64, Option<&str>, &str)> =
                            (0..n).map(|_| (axle_log::now_ms(), Some("k"), "sealed value")).collect();
                        batches.push(sealed_batch(at, epoch, &recs));
                        model.push((at, n, epoch));
                        at += n;
                    }
                    p.append_sealed(batches).await.unwrap();
                }
                Step::Truncate => {
                    let keep = rng.random_range(0..=model.len());
                    let to = model.get(keep).map_or(end, |b| b.0);
                    p.truncate(to).await.unwrap();
                    model.truncate(keep);
                }
                Step::Reopen => {
                    log.close().unwrap();
                    log = open(dirs.last().unwrap().path(), cfg(backend));
                    p = log.partition(P).unwrap();
                }
                Step::Crash => {
                    let crash = tempfile::tempdir().unwrap();
                    copy_log_dir(dirs.last().unwrap().path(), crash.path());
                    log.close().unwrap();
                    log = open(crash.path(), cfg(backend));
                    p = log.partition(P).unwrap();
                    dirs.push(crash);
                }
            }
            let end = model.last().map_or(0, |b| b.0 + b.1);
            let ctx = format!("seed {seed}, step {step}");
            assert_eq!(scan_batches(&p), model, "{ctx}: the log holds the model's batches");
            assert_eq!(p.log_end(), end, "{ctx}");
            for q in 0..10 {
                assert_eq!(p.epoch_end_offset(q), model_epoch_end(&model, end, q), "{ctx}: epoch {q}");
            }
            assert_eq!(p.latest_epoch(), model.last().map(|b| b.2), "{ctx}");
            for b in &model {
                assert_eq!(p.epoch_at(b.0).unwrap(), Some(b.2), "{ctx}: offset {}", b.0);
                assert_eq!(p.epoch_at(b.0 + b.1 - 1).unwrap(), Some(b.2), "{ctx}");
            }
            assert_eq!(p.epoch_at(end).unwrap(), None, "{ctx}");
        }
        log.close().unwrap();
    }
}
