//! The high watermark: once a partition is put under one, every reader (reads, keyed reads,
//! time lookups, tail readers, `wait_past`) sees only records below `min(log end, high
//! watermark)`, and continues as it advances. Offsets between the visible end and the log
//! end read as empty, not out of range.

mod common;

use std::time::Duration;

use axle_log::{IoBackendKind, LogError, Record};
use common::*;

const P: &str = "p";

/// A reader that must still be waiting: it has not finished after a generous pause. (A
/// wrong early wake-up fails; a slow machine only makes the check weaker, never flaky.)
async fn still_waiting<F: std::future::Future + Unpin>(f: &mut F) -> bool {
    tokio::time::timeout(Duration::from_millis(50), f).await.is_err()
}

#[tokio::test]
async fn readers_stop_at_the_high_watermark_and_continue_when_it_advances() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), config(backend));
        let p = log.partition(P).unwrap();
        append_recs(&p, 0, 10).await;
        p.enable_high_watermark(4);
        assert_eq!(p.bounds().end, 4);
        assert_eq!(p.high_watermark(), 4);
        assert_eq!(p.log_end(), 10);
        assert_holds_recs(&p, 0, 4);
        let all = p.read(0, 100, usize::MAX).unwrap();
        assert_eq!(all.len(), 4, "nothing above the high watermark is read");
        for at in [4, 7, 10] {
            assert!(p.read(at, 10, usize::MAX).unwrap().is_empty(), "offset {at} waits for the high watermark");
            let k = p.read_key(b"key-5", at, 10, usize::MAX).unwrap();
            assert!(k.records.is_empty());
            assert_eq!(k.next, at, "an empty keyed read continues where it was asked");
            assert!(p.key_batch_offsets(b"key-5", at).unwrap().is_empty());
        }
        assert!(matches!(p.read(11, 10, usize::MAX), Err(LogError::OffsetOutOfRange { .. })));
        // key-5 is at offset 5 only (below 10): hidden until the high watermark passes it.
        assert!(p.read_key(b"key-5", 0, 10, usize::MAX).unwrap().records.is_empty());
        assert!(p.key_batch_offsets(b"key-5", 0).unwrap().is_empty());

        let mut tail = p.tail(0);
        let first = tail.next_batch().await.unwrap();
        assert_eq!(first.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        let mut next = Box::pin(tail.next_batch());
        assert!(still_waiting(&mut next).await, "the tail reader waits at the high watermark");
        let mut past = Box::pin(p.wait_past(7));
        assert!(still_waiting(&mut past).await, "wait_past(7) waits while the visible end is 4");

        p.set_high_watermark(7);
        let more = next.await.unwrap();
        assert_eq!(more.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![4, 5, 6]);
        assert!(still_waiting(&mut past).await, "offset 7 is not below a visible end of 7");
        p.set_high_watermark(8);
        past.await.unwrap();
        let keyed = p.read_key(b"key-5", 0, 10, usize::MAX).unwrap();
        assert_eq!(keyed.records.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![5]);
        assert_eq!(keyed.next, 8);
        log.close().unwrap();
    }
}

#[tokio::test]
async fn time_lookups_do_not_find_records_above_the_high_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), config(IoBackendKind::Pwrite));
    let p = log.partition(P).unwrap();
    for i in 0..10i64 {
        p.append(&[Record::new("v").with_timestamp(1_000 + i * 10)]).await.unwrap();
    }
    p.enable_high_watermark(5);
    assert_eq!(p.offset_for_timestamp(1_030).unwrap(), Some(3));
    assert_eq!(p.offset_for_timestamp(1_060).unwrap(), None, "offset 6 is above the high watermark");
    p.set_high_watermark(10);
    assert_eq!(p.offset_for_timestamp(1_060).unwrap(), Some(6));
    log.close().unwrap();
}

#[tokio::test]
async fn a_high_watermark_above_the_durable_end_takes_effect_as_data_becomes_durable() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), config(backend));
        let p = log.partition(P).unwrap();
        append_recs(&p, 0, 5).await;
        p.enable_high_watermark(0);
        assert_eq!(p.bounds().end, 0);
        p.set_high_watermark(20);
        assert_eq!(p.bounds().end, 5, "clamped to the durable end");
        assert_eq!(p.high_watermark(), 5);
        let mut tail = p.tail(5);
        let mut next = Box::pin(tail.next_batch());
        assert!(still_waiting(&mut next).await);
        append_recs(&p, 5, 15).await;
        assert_eq!(p.bounds().end, 15, "the remembered high watermark lets durable data through");
        let got = next.await.unwrap();
        assert_eq!(got.first().map(|r| r.offset), Some(5));
        append_recs(&p, 15, 25).await;
        assert_eq!(p.log_end(), 25);
        assert_eq!(p.bounds().end, 20, "but never past the requested high watermark");
        assert_eq!(p.high_watermark(), 20);
        assert_eq!(p.read(15, 100, usize::MAX).unwrap().len(), 5);
        log.close().unwrap();
    }
}

#[tokio::test]
async fn the_high_watermark_never_moves_backwards() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), config(IoBackendKind::Pwrite));
    let p = log.partition(P).unwrap();
    append_recs(&p, 0, 10).await;
    p.enable_high_watermark(8);
    p.set_high_watermark(3);
    assert_eq!(p.high_watermark(), 8);
    assert_eq!(p.bounds().end, 8);
    p.enable_high_watermark(2);
    assert_eq!(p.bounds().end, 8, "enabling again acts as set_high_watermark");
    log.close().unwrap();
}

#[tokio::test]
async fn without_a_high_watermark_the_visible_end_is_the_log_end() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), config(IoBackendKind::Pwrite));
    let p = log.partition(P).unwrap();
    p.set_high_watermark(2);
    append_recs(&p, 0, 10).await;
    assert_eq!(p.bounds().end, 10, "set_high_watermark alone does not gate readers");
    assert_eq!(p.log_end(), 10);
    assert_eq!(p.high_watermark(), 10);
    assert!(matches!(p.read(11, 10, usize::MAX), Err(LogError::OffsetOutOfRange { end: 10, .. })));
    log.close().unwrap();
}
