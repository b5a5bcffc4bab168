//! Keyed reads through the per-segment key index: a reader of one key gets exactly that key's
//! records, in order, across segments, after clean and unclean restarts, and with the
//! `.keys` files deleted or damaged (they are a cache, rebuilt by scanning).

mod common;

use std::path::Path;

use axle_log::{Log, LogConfig, Record};
use common::*;

const P: &str = "p";
const N: u64 = 700;

/// `rec(i)` has key `key-{i % 7}`.
fn expected_offsets(key: u64, from: u64, to: u64) -> Vec<u64> {
    (from..to).filter(|i| i % 7 == key).collect()
}

fn read_all_keyed(log: &Log, key: u64, from: u64, page: usize) -> Vec<u64> {
    let p = log.partition(P).unwrap();
    let k = format!("key-{key}");
    let mut at = from;
    let mut got = Vec::new();
    loop {
        let r = p.read_key(k.as_bytes(), at, page, usize::MAX).expect("keyed read");
        for rec in &r.records {
            assert_eq!(rec.key.as_deref(), Some(k.as_bytes()));
            assert_eq!(rec.value, expected_value(rec.offset).as_bytes(), "value at {}", rec.offset);
            got.push(rec.offset);
        }
        assert!(r.next >= at, "next never goes back");
        if r.records.is_empty() {
            assert_eq!(r.next, p.bounds().end, "an empty read covers everything up to the end");
            return got;
        }
        at = r.next;
    }
}

fn check_every_key(log: &Log, from: u64) {
    for key in 0..7 {
        for page in [1, 5, 1000] {
            assert_eq!(read_all_keyed(log, key, from, page), expected_offsets(key, from, N), "key {key} page {page}");
        }
    }
}

fn cfg(backend: axle_log::IoBackendKind) -> LogConfig {
    small_segments(backend, 8 * 1024)
}

fn key_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join(P))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "keys"))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn keyed_reads_return_exactly_the_keys_records_across_segments() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), cfg(backend));
        let p = log.partition(P).unwrap();
        append_recs(&p, 0, N).await;
        assert!(p.segment_count() > 5, "the test spans several segments");
        check_every_key(&log, 0);
        check_every_key(&log, 333);
        // A key that was never written, and a read at the end.
        let none = p.read_key(b"nobody", 0, 10, usize::MAX).unwrap();
        assert!(none.records.is_empty());
        assert_eq!(none.next, N);
        assert!(p.read_key(b"key-1", N, 10, usize::MAX).unwrap().records.is_empty());
        assert!(p.read_key(b"key-1", N + 1, 10, usize::MAX).is_err(), "past the end is a typed error");
        // The batch offsets the index lists for a key are that key's records (no collisions here).
        assert_eq!(p.key_batch_offsets(b"key-3", 100).unwrap(), expected_offsets(3, 100, N));
        log.close().unwrap();
    }
}

#[tokio::test]
async fn key_index_survives_clean_restart_and_is_rebuilt_when_deleted_or_damaged() {
    let backend = BACKENDS[1];
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path(), cfg(backend));
        append_recs(&log.partition(P).unwrap(), 0, N).await;
        log.close().unwrap();
    }
    let files = key_files(dir.path());
    assert!(files.len() > 5, "every closed segment has a key file: {files:?}");
    let log = open(dir.path(), cfg(backend));
    check_every_key(&log, 0);
    log.close().unwrap();

    // Damaged and deleted key files give the same answers.
    let files = key_files(dir.path());
    flip_byte(&files[0], 40);
    std::fs::remove_file(&files[1]).unwrap();
    std::fs::write(&files[2], b"AXKY garbage").unwrap();
    let log = open(dir.path(), cfg(backend));
    check_every_key(&log, 0);
    // Appends after the restart are indexed too.
    let p = log.partition(P).unwrap();
    let extra = p.append(&[Record::new("late").with_key("key-3")]).await.unwrap();
    let r = p.read_key(b"key-3", extra.base_offset, 10, usize::MAX).unwrap();
    assert_eq!(r.records.len(), 1);
    assert_eq!(r.records[0].value.as_ref(), b"late");
    log.close().unwrap();
}

#[tokio::test]
async fn key_index_is_correct_after_an_unclean_shutdown() {
    let backend = BACKENDS[0];
    let dir = tempfile::tempdir().unwrap();
    let crash = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path(), cfg(backend));
        let p = log.partition(P).unwrap();
        append_recs(&p, 0, N).await;
        copy_log_dir(dir.path(), crash.path());
        log.close().unwrap();
    }
    let log = open(crash.path(), cfg(backend));
    check_every_key(&log, 0);
    check_every_key(&log, 650);
    log.close().unwrap();
}
