//! Appends, reads, offsets across reopen, readers at many positions, tail-follow, reads by
//! timestamp, segment rolling and retention, on both write paths.

mod common;

use std::time::Duration;

use axle_log::{FsyncPolicy, Log, LogConfig, LogError, Record, TailChunk};
use common::*;

#[tokio::test]
async fn appended_records_read_back_byte_for_byte() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), config(backend));
        let p = log.partition("p-0").unwrap();
        for i in 0..200u64 {
            let a = p.append(&[rec(i)]).await.unwrap();
            assert_eq!(a.base_offset, i);
            assert_eq!(a.last_offset, i);
        }
        let got = p.read(0, 1000, usize::MAX).unwrap();
        assert_eq!(got.len(), 200);
        for (i, r) in got.iter().enumerate() {
            let i = i as u64;
            assert_eq!(r.offset, i);
            assert_eq!(r.value, expected_value(i).as_bytes());
            assert_eq!(r.key.as_deref(), Some(format!("key-{}", i % 7).as_bytes()));
            assert_eq!(r.headers[0].key, "n");
            assert_eq!(r.headers[0].value, i.to_string().as_bytes());
        }
        log.close().unwrap();
    }
}

#[tokio::test]
async fn multi_record_batches_get_contiguous_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), config(BACKENDS[0]));
    let p = log.partition("p").unwrap();
    let a = p.append(&(0..10).map(rec).collect::<Vec<_>>()).await.unwrap();
    let b = p.append(&(10..15).map(rec).collect::<Vec<_>>()).await.unwrap();
    assert_eq!((a.base_offset, a.last_offset), (0, 9));
    assert_eq!((b.base_offset, b.last_offset), (10, 14));
    let mid = p.read(7, 5, usize::MAX).unwrap();
    assert_eq!(mid.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![7, 8, 9, 10, 11]);
}

#[tokio::test]
async fn offsets_stay_monotonic_across_reopen() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let mut next = 0;
        for round in 0..4 {
            let log = open(dir.path(), small_segments(backend, 8192));
            let p = log.partition("p").unwrap();
            assert_eq!(p.bounds().end, next, "round {round}");
            for _ in 0..50 {
                let a = p.append(&[rec(next)]).await.unwrap();
                assert_eq!(a.base_offset, next);
                next += 1;
            }
            if round % 2 == 0 {
                log.close().unwrap();
            } else {
                drop(p);
                drop(log);
            }
        }
        let log = open(dir.path(), small_segments(backend, 8192));
        let p = log.partition("p").unwrap();
        let all = p.read(0, 10_000, usize::MAX).unwrap();
        assert_eq!(all.len() as u64, next);
        assert!(p.segment_count() > 1, "small segments rolled");
        for (i, r) in all.iter().enumerate() {
            assert_eq!(r.offset, i as u64);
            assert_eq!(r.value, expected_value(i as u64).as_bytes());
        }
    }
}

#[tokio::test]
async fn readers_at_every_position_see_the_same_records() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments(BACKENDS[0], 16 * 1024));
    let p = log.partition("p").unwrap();
    for chunk in (0..1000u64).collect::<Vec<_>>().chunks(13) {
        p.append(&chunk.iter().map(|i| rec(*i)).collect::<Vec<_>>()).await.unwrap();
    }
    assert!(p.segment_count() >= 3);
    for start in (0..1000u64).step_by(37) {
        let got = p.read(start, 25, usize::MAX).unwrap();
        assert_eq!(got.len() as u64, 25.min(1000 - start));
        for (k, r) in got.iter().enumerate() {
            assert_eq!(r.offset, start + k as u64);
            assert_eq!(r.value, expected_value(start + k as u64).as_bytes());
        }
    }
    // Byte limit: at least one record, and stops once the limit is reached.
    assert_eq!(p.read(5, 100, 1).unwrap().len(), 1);
}

#[tokio::test]
async fn reads_outside_the_bounds_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), config(BACKENDS[0]));
    let p = log.partition("p").unwrap();
    p.append(&[rec(0), rec(1)]).await.unwrap();
    assert!(p.read(2, 10, usize::MAX).unwrap().is_empty(), "at the end: empty, not an error");
    match p.read(3, 10, usize::MAX) {
        Err(LogError::OffsetOutOfRange { requested: 3, log_start: 0, end: 2, .. }) => {}
        other => panic!("expected OffsetOutOfRange, got {other:?}"),
    }
}

#[tokio::test]
async fn tail_readers_wake_on_new_appends() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), config(BACKENDS[0]));
    let p = log.partition("p").unwrap();
    let mut readers: Vec<_> = (0..8).map(|_| p.tail(0)).collect();
    let handles: Vec<_> = readers
        .drain(..)
        .map(|mut r| {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while seen.len() < 300 {
                    for rec in r.next_batch().await.unwrap() {
                        seen.push(rec.offset);
                    }
                }
                seen
            })
        })
        .collect();
    let writer = p.clone();
    tokio::spawn(async move {
        for i in 0..300u64 {
            writer.append(&[rec(i)]).await.unwrap();
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    for h in handles {
        let seen = tokio::time::timeout(Duration::from_secs(30), h).await.unwrap().unwrap();
        assert_eq!(seen, (0..300).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn the_tail_reader_takes_memos_and_reads_only_batches_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), config(BACKENDS[0]));
    let p = log.partition("p").unwrap();
    let memo = |tag: &'static str| -> axle_log::Memo { std::sync::Arc::new(tag) };
    p.append_start_with(&[rec(0), rec(1)], memo("a")).unwrap().await.unwrap();
    p.append(&[rec(2), rec(3), rec(4)]).await.unwrap();
    p.append_start_with(&[rec(5)], memo("c")).unwrap().await.unwrap();
    let mut r = p.tail(0);
    let mut chunks = Vec::new();
    while r.position() < 6 {
        chunks.push(match r.next_chunk().await.unwrap() {
            TailChunk::Memo(m) => format!("memo {} x{} {}", m.base, m.count, m.memo.downcast::<&str>().unwrap()),
            TailChunk::Records(v) => format!("records {:?}", v.iter().map(|r| r.offset).collect::<Vec<_>>()),
        });
    }
    assert_eq!(chunks, ["memo 0 x2 a", "records [2, 3, 4]", "memo 5 x1 c"]);
    // Plain reads are unaffected by memos: the records are in the file.
    assert_holds_recs(&p, 0, 6);
    // A memo is taken once: a second reader reads the same batches from the file.
    let mut r = p.tail(0);
    match r.next_chunk().await.unwrap() {
        TailChunk::Records(v) => assert_eq!(v.iter().map(|r| r.offset).collect::<Vec<_>>(), [0, 1, 2, 3, 4, 5]),
        other => panic!("expected records, got {other:?}"),
    }
    // A reader that starts inside a memo'd batch reads it from the file, up to the next memo.
    p.append_start_with(&[rec(6), rec(7)], memo("d")).unwrap().await.unwrap();
    p.append_start_with(&[rec(8)], memo("e")).unwrap().await.unwrap();
    let mut r = p.tail(7);
    match r.next_chunk().await.unwrap() {
        TailChunk::Records(v) => assert_eq!(v.iter().map(|r| r.offset).collect::<Vec<_>>(), [7]),
        other => panic!("expected records, got {other:?}"),
    }
    assert!(matches!(r.next_chunk().await.unwrap(), TailChunk::Memo(m) if m.base == 8));
}

#[tokio::test]
async fn closing_the_log_ends_tail_readers() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), config(BACKENDS[0]));
    let p = log.partition("p").unwrap();
    let mut r = p.tail(0);
    let h = tokio::spawn(async move { r.next_batch().await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    log.close().unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), h).await.unwrap().unwrap();
    assert!(matches!(res, Err(LogError::Closed)));
    assert!(matches!(p.append(&[rec(0)]).await, Err(LogError::Closed)));
}

#[tokio::test]
async fn offset_for_timestamp_finds_the_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    // Timestamps from 1970: age-based retention (every 30 s) must not delete them mid-test.
    let log = open(dir.path(), LogConfig { retention_age: None, ..small_segments(BACKENDS[0], 8192) });
    let p = log.partition("p").unwrap();
    for i in 0..500u64 {
        p.append(&[rec(i).with_timestamp(1_000_000 + (i as i64) * 10)]).await.unwrap();
    }
    assert!(p.segment_count() > 2);
    assert_eq!(p.offset_for_timestamp(0).unwrap(), Some(0));
    assert_eq!(p.offset_for_timestamp(1_000_000).unwrap(), Some(0));
    assert_eq!(p.offset_for_timestamp(1_000_001).unwrap(), Some(1));
    assert_eq!(p.offset_for_timestamp(1_002_345).unwrap(), Some(235));
    assert_eq!(p.offset_for_timestamp(1_004_990).unwrap(), Some(499));
    assert_eq!(p.offset_for_timestamp(1_004_991).unwrap(), None);
}

#[tokio::test]
async fn segments_roll_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { segment_max_age: Duration::from_millis(50), ..config(BACKENDS[0]) };
    let log = open(dir.path(), cfg);
    let p = log.partition("p").unwrap();
    p.append(&[rec(0)]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    p.append(&[rec(1)]).await.unwrap();
    assert_eq!(p.segment_count(), 2);
    assert_eq!(p.read(0, 10, usize::MAX).unwrap().len(), 2);
}

#[tokio::test]
async fn retention_by_size_deletes_whole_old_segments() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig { retention_bytes: Some(20 * 1024), ..small_segments(backend, 8192) };
        let log = open(dir.path(), cfg);
        let p = log.partition("p").unwrap();
        for i in 0..1000u64 {
            p.append(&[rec(i)]).await.unwrap();
        }
        let before = p.segment_count();
        let deleted = log.enforce_retention().unwrap();
        assert!(deleted > 0 && p.segment_count() == before - deleted);
        assert!(p.size_bytes() <= 20 * 1024 + 8192, "size {} over the limit", p.size_bytes());
        let b = p.bounds();
        assert!(b.log_start > 0);
        assert!(matches!(p.read(0, 1, usize::MAX), Err(LogError::OffsetOutOfRange { .. })));
        let rest = p.read(b.log_start, 10_000, usize::MAX).unwrap();
        assert_eq!(rest.len() as u64, 1000 - b.log_start);
        // log_start survives a reopen.
        log.close().unwrap();
        let log = open(dir.path(), small_segments(backend, 8192));
        assert_eq!(log.partition("p").unwrap().bounds(), b);
    }
}

#[tokio::test]
async fn retention_by_age_deletes_segments_whose_newest_record_is_old() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { retention_age: Some(Duration::from_secs(3600)), ..small_segments(BACKENDS[0], 4096) };
    let log = open(dir.path(), cfg);
    let p = log.partition("p").unwrap();
    let old = axle_log::now_ms() - 2 * 3600 * 1000;
    for i in 0..200u64 {
        p.append(&[rec(i).with_timestamp(old)]).await.unwrap();
    }
    for i in 200..210u64 {
        p.append(&[rec(i)]).await.unwrap();
    }
    log.enforce_retention().unwrap();
    let b = p.bounds();
    assert!(b.log_start > 150, "old segments deleted, log start {}", b.log_start);
    assert_eq!(p.read(b.log_start, 1000, usize::MAX).unwrap().last().unwrap().offset, 209);
}

#[tokio::test]
async fn every_fsync_policy_acknowledges_and_persists() {
    for policy in [
        FsyncPolicy::Always,
        FsyncPolicy::Never,
        FsyncPolicy::Interval(Duration::from_millis(3)),
        FsyncPolicy::Bytes(4096),
    ] {
        for backend in BACKENDS {
            let dir = tempfile::tempdir().unwrap();
            let cfg = LogConfig { fsync: policy, ..config(backend) };
            let log = open(dir.path(), cfg.clone());
            let p = log.partition("p").unwrap();
            let tasks: Vec<_> = (0..16u64)
                .map(|t| {
                    let p = p.clone();
                    tokio::spawn(async move {
                        for i in 0..50u64 {
                            p.append(&[rec(t * 1000 + i)]).await.unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            assert_eq!(p.bounds().end, 800, "{policy:?}");
            log.close().unwrap();
            let log = open(dir.path(), cfg);
            assert!(log.recovery_report("p").unwrap().clean);
            assert_eq!(log.partition("p").unwrap().read(0, 1000, usize::MAX).unwrap().len(), 800);
        }
    }
}

#[tokio::test]
async fn bad_appends_and_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { max_batch_bytes: 1024, ..config(BACKENDS[0]) };
    let log = open(dir.path(), cfg);
    assert!(matches!(log.partition("../x"), Err(LogError::InvalidPartitionName(_))));
    assert!(matches!(log.partition(""), Err(LogError::InvalidPartitionName(_))));
    let p = log.partition("ok").unwrap();
    assert!(matches!(p.append(&[]).await, Err(LogError::EmptyAppend)));
    assert!(matches!(p.append(&[Record::new(vec![0u8; 2000])]).await, Err(LogError::BatchTooLarge { .. })));
    assert!(Log::open(dir.path(), config(BACKENDS[0])).is_err(), "a second opener is refused by the lock");
}

#[tokio::test]
async fn read_map_sees_the_records_read_returns_within_the_same_limits() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), config(BACKENDS[0]));
    let p = log.partition("p").unwrap();
    for chunk in (0..40u64).collect::<Vec<_>>().chunks(7) {
        p.append(&chunk.iter().map(|i| rec(*i)).collect::<Vec<_>>()).await.unwrap();
    }
    for (from, max_records, max_bytes) in
        [(0, 100, usize::MAX), (3, 10, usize::MAX), (12, 100, 200), (39, 5, 1), (40, 5, 1)]
    {
        let read = p.read(from, max_records, max_bytes).unwrap();
        let mapped = p.read_map(from, max_records, max_bytes, |r| r.to_stored()).unwrap();
        assert_eq!(mapped, read, "from {from}, {max_records} records, {max_bytes} bytes");
        let views = p
            .read_map(from, max_records, max_bytes, |r| {
                let headers: Vec<(String, Vec<u8>)> = r.headers().map(|(k, v)| (k.to_string(), v.to_vec())).collect();
                (r.offset, r.value().to_vec(), r.key().map(<[u8]>::to_vec), headers)
            })
            .unwrap();
        assert_eq!(views.len(), read.len());
        for (v, r) in views.iter().zip(&read) {
            assert_eq!(v.0, r.offset);
            assert_eq!(v.1, r.value.to_vec());
            assert_eq!(v.2, r.key.as_ref().map(|k| k.to_vec()));
            assert_eq!(v.3, [("n".to_string(), r.offset.to_string().into_bytes())]);
        }
    }
    // Bounds errors are those of `read`.
    assert!(matches!(p.read_map(41, 5, 1, |r| r.offset), Err(LogError::OffsetOutOfRange { .. })));
    // `share` copies bytes that are not from the record's batch.
    let foreign = b"elsewhere".to_vec();
    let shared = p.read_map(0, 1, usize::MAX, |r| r.share(&foreign)).unwrap();
    assert_eq!(shared[0].as_ref(), b"elsewhere");
}
