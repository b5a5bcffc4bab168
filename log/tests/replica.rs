//! Replica primitives: whole-batch reads, appends of batches sealed elsewhere (copied byte
//! for byte, refused whole when they do not fit), and the leader-epoch queries.

mod common;

use axle_log::{IoBackendKind, Log, LogConfig, LogError, Partition, Record};
use bytes::Bytes;
use common::*;

const P: &str = "p";

/// Small segments, and no age-based retention: the records carry timestamps from 1970.
fn cfg(backend: IoBackendKind) -> LogConfig {
    LogConfig { retention_age: None, ..small_segments(backend, 4096) }
}

/// Copies `src` onto `dst` the way a follower does: read_batches from dst's log end, then
/// append_sealed, `max_bytes` at a time.
async fn replicate(src: &Partition, dst: &Partition, max_bytes: usize) -> usize {
    let mut rounds = 0;
    loop {
        let batches = src.read_batches(dst.log_end(), max_bytes).expect("leader batches");
        if batches.is_empty() {
            return rounds;
        }
        let first = u64::from_le_bytes(batches[0][0..8].try_into().unwrap());
        let a = dst.append_sealed(batches).await.expect("sealed append");
        assert_eq!(a.base_offset, first);
        rounds += 1;
    }
}

/// Records with epochs 1, 1, 2, 4 (set through `set_leader_epoch`), keys and timestamps.
async fn fill_source(p: &Partition, n: u64) {
    for i in 0..n {
        let epoch = [1, 1, 2, 4][(i * 4 / n) as usize];
        p.set_leader_epoch(epoch).unwrap();
        let batch: Vec<Record> = (0..(i % 3 + 1)).map(|j| rec(i * 3 + j).with_timestamp(10_000 + i as i64)).collect();
        let a = p.append(&batch).await.unwrap();
        assert_eq!(a.leader_epoch, epoch, "Appended carries the epoch the batch was written with");
    }
}

fn all_batches(p: &Partition) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut at = p.bounds().log_start;
    loop {
        let b = p.read_batches(at, 1 << 20).unwrap();
        let Some(last) = b.last() else { return out };
        at = u64::from_le_bytes(last[0..8].try_into().unwrap())
            + u64::from(u32::from_le_bytes(last[28..32].try_into().unwrap()));
        out.extend(b);
    }
}

fn assert_same_partition(a: &Partition, b: &Partition) {
    assert_eq!(a.log_end(), b.log_end());
    let (ba, bb) = (all_batches(a), all_batches(b));
    assert_eq!(ba.len(), bb.len(), "same number of batches");
    if let Some(i) = (0..ba.len()).find(|i| ba[*i] != bb[*i]) {
        panic!("batch {i} differs: {:?} vs {:?}", ba[i], bb[i]);
    }
    let ra = a.read(0, usize::MAX, usize::MAX).unwrap();
    let rb = b.read(0, usize::MAX, usize::MAX).unwrap();
    assert_eq!(ra, rb, "records identical (offsets, timestamps, keys, values, headers, epochs)");
    for k in 0..7 {
        let key = format!("key-{k}");
        let ka = a.read_key(key.as_bytes(), 0, usize::MAX, usize::MAX).unwrap();
        let kb = b.read_key(key.as_bytes(), 0, usize::MAX, usize::MAX).unwrap();
        assert!(!kb.records.is_empty(), "{key} readable through the key index");
        assert_eq!(ka.records, kb.records, "{key}");
    }
    for ts in [0, 10_000, 10_017, 10_050, 10_099, 99_999] {
        assert_eq!(a.offset_for_timestamp(ts).unwrap(), b.offset_for_timestamp(ts).unwrap(), "timestamp {ts}");
    }
    for e in 0..6 {
        assert_eq!(a.epoch_end_offset(e), b.epoch_end_offset(e), "epoch {e}");
    }
    assert_eq!(a.latest_epoch(), b.latest_epoch());
}

#[tokio::test]
async fn read_batches_and_append_sealed_copy_a_partition_byte_for_byte() {
    for backend in BACKENDS {
        let (sd, dd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let src_log = open(sd.path(), cfg(backend));
        let dst_log = open(dd.path(), cfg(backend));
        let (src, dst) = (src_log.partition(P).unwrap(), dst_log.partition(P).unwrap());
        fill_source(&src, 100).await;
        assert!(src.segment_count() > 3, "the copy crosses segment boundaries");
        let rounds = replicate(&src, &dst, 1500).await;
        assert!(rounds > 5, "several fetches of at most 1500 bytes");
        assert!(dst.segment_count() > 3);
        assert_same_partition(&src, &dst);
        assert_eq!(dst.latest_epoch(), Some(4));

        // Both survive a clean reopen and a crash identically.
        let crash = tempfile::tempdir().unwrap();
        copy_log_dir(dd.path(), crash.path());
        dst_log.close().unwrap();
        src_log.close().unwrap();
        let src_log = open(sd.path(), cfg(backend));
        for dir in [dd.path(), crash.path()] {
            let dst_log = open(dir, cfg(backend));
            assert_same_partition(&src_log.partition(P).unwrap(), &dst_log.partition(P).unwrap());
            dst_log.close().unwrap();
        }
        // A reopened partition stamps its own appends with the latest epoch in its log.
        let (src, dst_log) = (src_log.partition(P).unwrap(), open(dd.path(), cfg(backend)));
        let dst = dst_log.partition(P).unwrap();
        let own = dst.append(&[Record::new("mine")]).await.unwrap();
        assert_eq!(own.leader_epoch, 4);
        assert_eq!(own.base_offset, src.log_end());
        assert_eq!(src.append(&[Record::new("mine")]).await.unwrap().leader_epoch, 4);
        dst_log.close().unwrap();
        src_log.close().unwrap();
    }
}

#[tokio::test]
async fn read_batches_returns_whole_batches_up_to_the_log_end_regardless_of_the_high_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), config(IoBackendKind::Pwrite));
    let p = log.partition(P).unwrap();
    for i in 0..5u64 {
        p.append(&[rec(3 * i), rec(3 * i + 1), rec(3 * i + 2)]).await.unwrap();
    }
    p.enable_high_watermark(0);
    let bases = |v: &[Bytes]| v.iter().map(|b| u64::from_le_bytes(b[0..8].try_into().unwrap())).collect::<Vec<_>>();
    let all = p.read_batches(0, usize::MAX).unwrap();
    assert_eq!(bases(&all), vec![0, 3, 6, 9, 12], "not gated by the high watermark");
    assert_eq!(bases(&p.read_batches(7, usize::MAX).unwrap()), vec![6, 9, 12], "starts with the batch holding 7");
    assert_eq!(bases(&p.read_batches(4, 1).unwrap()), vec![3], "at least one batch");
    let two = all[1].len() + all[2].len();
    assert_eq!(bases(&p.read_batches(3, two).unwrap()), vec![3, 6], "stops once max_bytes is reached");
    assert_eq!(bases(&p.read_batches(3, two - 1).unwrap()), vec![3]);
    assert!(p.read_batches(15, 100).unwrap().is_empty(), "log_end reads nothing");
    assert!(matches!(p.read_batches(16, 100), Err(LogError::OffsetOutOfRange { end: 15, .. })));
    for b in &all {
        assert_eq!(u32::from_le_bytes(b[8..12].try_into().unwrap()) as usize, b.len(), "header included");
    }
    log.close().unwrap();
}

#[tokio::test]
async fn hand_sealed_batches_keep_their_offsets_epochs_keys_and_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), config(IoBackendKind::Pwrite));
    let p = log.partition(P).unwrap();
    let a = p
        .append_sealed(vec![
            sealed_batch(0, 7, &[(500, Some("car-1"), "a"), (490, None, "b")]),
            sealed_batch(2, 9, &[(600, Some("car-2"), "c")]),
        ])
        .await
        .unwrap();
    assert_eq!((a.base_offset, a.last_offset, a.leader_epoch), (0, 2, 9));
    let r = p.read(0, 10, usize::MAX).unwrap();
    let got: Vec<_> = r.iter().map(|r| (r.offset, r.timestamp, r.leader_epoch, &r.value[..])).collect();
    assert_eq!(got, vec![(0, 500, 7, &b"a"[..]), (1, 490, 7, b"b"), (2, 600, 9, b"c")]);
    assert_eq!(p.read_key(b"car-2", 0, 10, usize::MAX).unwrap().records[0].offset, 2);
    assert_eq!(p.offset_for_timestamp(550).unwrap(), Some(2));
    assert_eq!(p.epoch_at(1).unwrap(), Some(7));
    assert_eq!(p.epoch_at(2).unwrap(), Some(9));
    assert_eq!(p.epoch_at(3).unwrap(), None);
    let own = p.append(&[Record::new("own")]).await.unwrap();
    assert_eq!((own.base_offset, own.leader_epoch), (3, 0), "sealed appends leave the writer's epoch alone");
    assert_eq!(p.epoch_end_offset(8), Some((7, 2)));
    assert_eq!(p.epoch_end_offset(9), Some((9, 4)), "no later batch has an epoch above 9");
    log.close().unwrap();
}

/// Nothing was written: the end, the bytes and the files are as before.
fn assert_unchanged(log: &Log, p: &Partition, end: u64) {
    assert_eq!(p.log_end(), end);
    assert_eq!(p.bounds().end, end);
    assert_eq!(scan_batches(p).iter().map(|b| b.1).sum::<u64>(), end);
    log.flush().unwrap();
    let on_disk: u64 =
        segment_files(log.dir(), P).iter().flat_map(|(_, path)| batches_in(path)).map(|b| b.record_count).sum();
    assert_eq!(on_disk, end, "no bytes reached the segment files");
}

#[tokio::test]
async fn sealed_batches_that_do_not_continue_the_log_are_refused_and_write_nothing() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), config(backend));
        let p = log.partition(P).unwrap();
        let b = |base| sealed_batch(base, 1, &[(1, Some("k"), "v"), (2, Some("k"), "w")]);
        match p.append_sealed(vec![b(5)]).await {
            Err(LogError::NotContiguous { expected: 0, got: 5, .. }) => {}
            other => panic!("expected NotContiguous, got {other:?}"),
        }
        match p.append_sealed(vec![b(0), b(3)]).await {
            Err(LogError::NotContiguous { expected: 2, got: 3, .. }) => {}
            other => panic!("a gap between batches: expected NotContiguous, got {other:?}"),
        }
        assert_unchanged(&log, &p, 0);
        p.append_sealed(vec![b(0), b(2)]).await.unwrap();
        match p.append_sealed(vec![b(2)]).await {
            Err(LogError::NotContiguous { expected: 4, got: 2, .. }) => {}
            other => panic!("a batch appended twice: expected NotContiguous, got {other:?}"),
        }
        assert!(matches!(p.append_sealed(Vec::new()).await, Err(LogError::EmptyAppend)));
        assert_unchanged(&log, &p, 4);
        log.close().unwrap();
    }
}

#[tokio::test]
async fn corrupt_sealed_batches_are_refused_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), config(IoBackendKind::Pwrite));
    let p = log.partition(P).unwrap();
    let good = sealed_batch(0, 1, &[(1, Some("k"), "value")]);
    let next = sealed_batch(1, 1, &[(1, Some("k"), "value")]);
    let damaged = |at: usize| {
        let mut v = next.to_vec();
        v[at] ^= 0x10;
        Bytes::from(v)
    };
    let cases: Vec<(&str, Bytes)> = vec![
        ("a flipped record byte", damaged(next.len() - 2)),
        ("a flipped record count", damaged(28)),
        ("a flipped timestamp", damaged(40)),
        ("a wrong magic", damaged(16)),
        ("a wrong length", damaged(8)),
        ("a cut batch", next.slice(..next.len() - 1)),
        ("a bare header", next.slice(..axle_log::BATCH_HEADER_LEN)),
        ("trailing bytes", Bytes::from([&next[..], &[0u8][..]].concat())),
    ];
    for (what, bad) in cases {
        match p.append_sealed(vec![good.clone(), bad]).await {
            Err(LogError::CorruptBatch { position, reason, .. }) => {
                assert_eq!(position, good.len() as u64, "{what}: the position names the second batch");
                assert!(reason.contains("sealed batch 1"), "{what}: {reason}");
            }
            other => panic!("{what}: expected CorruptBatch, got {other:?}"),
        }
        assert_unchanged(&log, &p, 0);
    }
    log.close().unwrap();
}

#[tokio::test]
async fn epoch_end_offsets_answer_offsets_for_leader_epoch_and_survive_truncation_and_reopen() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg(backend);
        let log = open(dir.path(), cfg.clone());
        let p = log.partition(P).unwrap();
        assert_eq!(p.epoch_end_offset(3), None, "empty partition");
        assert_eq!(p.latest_epoch(), None);
        // Batches of 3 records with epochs 1, 1, 2, 4: offsets 0..3, 3..6, 6..9, 9..12.
        for (i, epoch) in [1, 1, 2, 4].into_iter().enumerate() {
            p.set_leader_epoch(epoch).unwrap();
            let i = i as u64 * 3;
            p.append(&[rec(i), rec(i + 1), rec(i + 2)]).await.unwrap();
        }
        let expect = [None, Some((1, 6)), Some((2, 9)), Some((2, 9)), Some((4, 12)), Some((4, 12))];
        let check = |p: &Partition, expect: &[Option<(u32, u64)>]| {
            for (q, e) in expect.iter().enumerate() {
                assert_eq!(p.epoch_end_offset(q as u32), *e, "epoch {q}");
            }
        };
        check(&p, &expect);
        assert_eq!(p.latest_epoch(), Some(4));
        assert_eq!(p.epoch_at(0).unwrap(), Some(1));
        assert_eq!(p.epoch_at(7).unwrap(), Some(2));
        assert_eq!(p.epoch_at(11).unwrap(), Some(4));
        assert_eq!(p.epoch_at(12).unwrap(), None);

        // Reopen after a crash, and cleanly.
        let crash = tempfile::tempdir().unwrap();
        copy_log_dir(dir.path(), crash.path());
        let crashed = open(crash.path(), cfg.clone());
        check(&crashed.partition(P).unwrap(), &expect);
        crashed.close().unwrap();
        log.close().unwrap();
        let log = open(dir.path(), cfg.clone());
        let p = log.partition(P).unwrap();
        check(&p, &expect);

        p.truncate(9).await.unwrap();
        let after = [None, Some((1, 6)), Some((2, 9)), Some((2, 9)), Some((2, 9)), Some((2, 9))];
        check(&p, &after);
        assert_eq!(p.latest_epoch(), Some(2));
        // The writer's own epoch (4) continues after the cut.
        assert_eq!(p.append(&[rec(9)]).await.unwrap().leader_epoch, 4);
        let appended = [None, Some((1, 6)), Some((2, 9)), Some((2, 9)), Some((4, 10)), Some((4, 10))];
        check(&p, &appended);
        p.truncate(6).await.unwrap();
        let cut = [None, Some((1, 6)), Some((1, 6)), Some((1, 6))];
        check(&p, &cut);
        let crash = tempfile::tempdir().unwrap();
        copy_log_dir(dir.path(), crash.path());
        let crashed = open(crash.path(), cfg.clone());
        check(&crashed.partition(P).unwrap(), &cut);
        crashed.close().unwrap();
        log.close().unwrap();
        let log = open(dir.path(), cfg.clone());
        check(&log.partition(P).unwrap(), &cut);
        log.close().unwrap();
    }
}

#[tokio::test]
async fn a_missing_or_damaged_leader_epoch_file_is_rebuilt_from_batch_headers() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg(IoBackendKind::Pwrite);
    let log = open(dir.path(), cfg.clone());
    let p = log.partition(P).unwrap();
    fill_source(&p, 100).await;
    let expected: Vec<_> = (0..6).map(|e| p.epoch_end_offset(e)).collect();
    log.close().unwrap();
    let file = dir.path().join(P).join("leader-epochs");
    for damage in ["delete", "garbage", "lies"] {
        match damage {
            "delete" => std::fs::remove_file(&file).unwrap(),
            "garbage" => std::fs::write(&file, b"not an epoch file").unwrap(),
            _ => {
                // A well-formed file whose entries do not match the batches.
                let log = open(dir.path(), cfg.clone());
                log.close().unwrap();
                let mut raw = std::fs::read(&file).unwrap();
                raw[24] ^= 0x01; // first entry's epoch
                let crc = {
                    let mut h = crc32fast::Hasher::new();
                    h.update(&raw[..20]);
                    h.update(&raw[24..]);
                    h.finalize()
                };
                raw[20..24].copy_from_slice(&crc.to_le_bytes());
                std::fs::write(&file, raw).unwrap();
            }
        }
        let log = open(dir.path(), cfg.clone());
        let p = log.partition(P).unwrap();
        let got: Vec<_> = (0..6).map(|e| p.epoch_end_offset(e)).collect();
        assert_eq!(got, expected, "after {damage}");
        log.close().unwrap();
    }
}
