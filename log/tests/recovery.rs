//! Recovery from hand-made damage: torn tails, flipped bytes at the tail and mid-log, lost
//! or garbled index files, clean and unclean shutdowns, a damaged checkpoint, and garbage
//! where segment data should be. Each case runs on both write paths where the write path
//! can matter.
//!
//! An unclean shutdown is simulated by copying the log directory while the log is open
//! (after the appends were acknowledged under `fsync = always`): the copy is what a crash of
//! the process at that instant leaves behind. Dropping a `Log` is not unclean (its writer
//! closes cleanly).

mod common;

use std::fs;

use axle_log::{FsyncPolicy, IoBackendKind, Log, LogConfig, LogError};
use common::*;
use rand::{Rng, RngCore, SeedableRng};

const P: &str = "p";

#[tokio::test]
async fn torn_tail_is_truncated_on_recovery() {
    for backend in BACKENDS {
        // Cut inside the header before the magic, inside the header after it, mid-body, and
        // one byte short of the end.
        for cut in [CutAt::Bytes(10), CutAt::Bytes(30), CutAt::Half, CutAt::OneShort] {
            let dir = tempfile::tempdir().unwrap();
            let log = open(dir.path(), config(backend));
            let p = log.partition(P).unwrap();
            append_recs(&p, 0, 40).await;
            // The last batch holds five records; all five must go.
            let last = p.append(&(40..45).map(rec).collect::<Vec<_>>()).await.unwrap();
            assert_eq!((last.base_offset, last.last_offset), (40, 44));
            log.close().unwrap();
            drop(p);
            drop(log);

            let files = segment_files(dir.path(), P);
            assert_eq!(files.len(), 1);
            let path = &files[0].1;
            let batches = batches_in(path);
            let tail = *batches.last().unwrap();
            assert_eq!((tail.base_offset, tail.record_count), (40, 5));
            assert_eq!(
                fs::metadata(path).unwrap().len(),
                tail.end(),
                "a clean close leaves the file at exactly its data length"
            );
            let keep = match cut {
                CutAt::Bytes(n) => n,
                CutAt::Half => tail.len / 2,
                CutAt::OneShort => tail.len - 1,
            };
            fs::OpenOptions::new().write(true).open(path).unwrap().set_len(tail.pos + keep).unwrap();

            let log = open(dir.path(), config(backend));
            let report = log.recovery_report(P).unwrap();
            assert!(!report.clean, "{backend:?} {cut:?}: {report:?}");
            assert_eq!(report.bytes_truncated, keep, "{backend:?} {cut:?}: exactly the torn bytes are cut");
            let p = log.partition(P).unwrap();
            assert_eq!(p.bounds().end, 40, "{backend:?} {cut:?}");
            assert_holds_recs(&p, 0, 40);
            assert!(p.read(40, 10, usize::MAX).unwrap().is_empty());
            // Appends continue where the surviving data ends, and overwrite the torn bytes.
            append_recs(&p, 40, 60).await;
            log.close().unwrap();

            let log = open(dir.path(), config(backend));
            assert!(log.recovery_report(P).unwrap().clean);
            let p = log.partition(P).unwrap();
            assert_eq!(p.bounds().end, 60);
            assert_holds_recs(&p, 0, 60);
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum CutAt {
    Bytes(u64),
    Half,
    OneShort,
}

#[tokio::test]
async fn flipped_byte_in_the_tail_batch_is_truncated() {
    for backend in BACKENDS {
        // The CRC covers [24, length): version, attributes, count, timestamps and records.
        for (what, rel) in [
            ("version", Rel::From(24)),
            ("record count", Rel::From(29)),
            ("first timestamp", Rel::From(33)),
            ("first record", Rel::From(50)),
            ("middle", Rel::Half),
            ("last byte", Rel::FromEnd(1)),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let crash = tempfile::tempdir().unwrap();
            let log = open(dir.path(), one_segment(backend));
            let p = log.partition(P).unwrap();
            append_recs(&p, 0, 30).await;
            p.append(&(30..34).map(rec).collect::<Vec<_>>()).await.unwrap();
            copy_log_dir(dir.path(), crash.path());
            log.close().unwrap();

            let path = segment_path(crash.path(), P, 0);
            let tail = *batches_in(&path).last().unwrap();
            assert_eq!(tail.base_offset, 30);
            let at = match rel {
                Rel::From(n) => tail.pos + n,
                Rel::Half => tail.pos + tail.len / 2,
                Rel::FromEnd(n) => tail.end() - n,
            };
            flip_byte(&path, at);

            let log = open(crash.path(), one_segment(backend));
            let report = log.recovery_report(P).unwrap();
            assert!(!report.clean && report.bytes_truncated > 0, "{backend:?} {what}: {report:?}");
            let p = log.partition(P).unwrap();
            assert_eq!(p.bounds().end, 30, "{backend:?} {what}: the damaged batch is gone");
            assert_holds_recs(&p, 0, 30);
            append_recs(&p, 30, 40).await;
            log.close().unwrap();
            let log = open(crash.path(), one_segment(backend));
            assert_holds_recs(&log.partition(P).unwrap(), 0, 40);
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Rel {
    From(u64),
    Half,
    FromEnd(u64),
}

/// After a clean shutdown nothing is scanned (by design), so damage there is found when the
/// batch is read: the read fails with a typed error and never returns the damaged bytes.
#[tokio::test]
async fn flipped_byte_after_clean_shutdown_fails_the_read_instead_of_returning_bad_data() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), config(BACKENDS[0]));
    let p = log.partition(P).unwrap();
    append_recs(&p, 0, 30).await;
    log.close().unwrap();
    let path = segment_path(dir.path(), P, 0);
    let tail = *batches_in(&path).last().unwrap();
    flip_byte(&path, tail.end() - 3);

    let log = open(dir.path(), config(BACKENDS[0]));
    assert!(log.recovery_report(P).unwrap().clean);
    let p = log.partition(P).unwrap();
    assert_holds_recs(&p, 0, 29);
    match p.read(29, 1, usize::MAX) {
        Err(LogError::CorruptBatch { path: bad, position, .. }) => {
            assert_eq!(bad, path);
            assert_eq!(position, tail.pos);
        }
        other => panic!("expected CorruptBatch, got {other:?}"),
    }
    match p.read(0, 100, usize::MAX) {
        Err(LogError::CorruptBatch { .. }) => {}
        other => panic!("a read running into the damage must fail, got {other:?}"),
    }
}

#[tokio::test]
async fn flipped_byte_mid_segment_refuses_to_open_then_repair_truncates() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let crash = tempfile::tempdir().unwrap();
        crashed_copy(dir.path(), crash.path(), one_segment(backend), 50).await;
        let path = segment_path(crash.path(), P, 0);
        let damaged = batches_in(&path)[20];
        assert_eq!(damaged.base_offset, 20);
        flip_byte(&path, damaged.pos + damaged.len - 2);
        let on_disk = fs::read(&path).unwrap();

        let err = match Log::open(crash.path(), one_segment(backend)) {
            Err(e) => e,
            Ok(_) => panic!("{backend:?}: a log with valid batches after damage must not open"),
        };
        let msg = err.to_string();
        match &err {
            LogError::MidLogCorruption { path: bad, position, reason } => {
                assert_eq!(bad, &path);
                assert_eq!(*position, damaged.pos);
                assert!(reason.contains("CRC"), "reason names the defect: {reason}");
            }
            other => panic!("expected MidLogCorruption, got {other:?}"),
        }
        assert!(msg.contains(&path.display().to_string()), "message names the file: {msg}");
        assert!(msg.contains(&format!("byte {}", damaged.pos)), "message names the position: {msg}");
        assert_eq!(fs::read(&path).unwrap(), on_disk, "refusing to open changes nothing");

        let log = open(crash.path(), repairing(one_segment(backend)));
        let report = log.recovery_report(P).unwrap();
        assert_eq!(report.segments_removed, 0, "{report:?}");
        let p = log.partition(P).unwrap();
        assert_eq!(p.bounds().end, 20);
        assert_holds_recs(&p, 0, 20);
        append_recs(&p, 20, 30).await;
        log.close().unwrap();

        // Repaired for good: a normal open is clean.
        let log = open(crash.path(), one_segment(backend));
        assert!(log.recovery_report(P).unwrap().clean);
        assert_holds_recs(&log.partition(P).unwrap(), 0, 30);
    }
}

#[tokio::test]
async fn garbage_segment_before_valid_segments_is_refused_with_a_clear_error() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_segments(backend, 4096);
        let log = open(dir.path(), cfg.clone());
        append_recs(&log.partition(P).unwrap(), 0, 300).await;
        log.close().unwrap();
        let files = segment_files(dir.path(), P);
        assert!(files.len() > 4);
        let (base, victim) = files[2].clone();
        let mut garbage = vec![0u8; 3000];
        rand::rngs::StdRng::seed_from_u64(1).fill_bytes(&mut garbage);
        fs::write(&victim, &garbage).unwrap();

        let err =
            Log::open(dir.path(), cfg.clone()).err().expect("a garbage segment followed by valid ones must not open");
        match &err {
            LogError::MidLogCorruption { path, position, .. } => {
                assert_eq!(path, &victim);
                assert_eq!(*position, 0);
            }
            other => panic!("expected MidLogCorruption, got {other:?}"),
        }
        assert!(err.to_string().contains(&victim.display().to_string()), "{err}");
        assert_eq!(fs::read(&victim).unwrap(), garbage, "refusing leaves the file alone");

        let log = open(dir.path(), repairing(cfg));
        let report = log.recovery_report(P).unwrap();
        assert_eq!(report.segments_removed, files.len() - 3, "{report:?}");
        let p = log.partition(P).unwrap();
        assert_eq!(p.bounds().end, base);
        assert_holds_recs(&p, 0, base);
        append_recs(&p, base, base + 10).await;
    }
}

/// Garbage of exactly the replaced segment's length matches the segment's index files, so
/// (below the checkpoint, which is trusted) the log opens; reads of that range then fail with
/// a typed error naming the file, and never return the garbage as records.
#[tokio::test]
async fn garbage_segment_below_the_checkpoint_fails_reads_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_segments(BACKENDS[1], 8192);
    let log = open(dir.path(), cfg.clone());
    append_recs(&log.partition(P).unwrap(), 0, 300).await;
    log.close().unwrap();
    let files = segment_files(dir.path(), P);
    let (base, victim) = files[1].clone();
    let next_base = files[2].0;
    let mut garbage = vec![0u8; fs::metadata(&victim).unwrap().len() as usize];
    rand::rngs::StdRng::seed_from_u64(2).fill_bytes(&mut garbage);
    fs::write(&victim, &garbage).unwrap();

    let log = open(dir.path(), cfg);
    let p = log.partition(P).unwrap();
    assert_holds_recs(&p, 0, base);
    assert_holds_recs(&p, next_base, 300);
    for at in [base, (base + next_base) / 2, next_base - 1] {
        match p.read(at, 1, usize::MAX) {
            Err(LogError::CorruptBatch { path, .. }) => assert_eq!(path, victim),
            other => panic!("read at {at}: expected CorruptBatch, got {other:?}"),
        }
    }
}

/// A segment that is garbage from its first byte, at the tail of the log and with no later
/// data, cannot be told from a torn first write: it is cut as a torn tail, and the report
/// says how many bytes went.
#[tokio::test]
async fn garbage_tail_segment_is_cut_and_reported() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_segments(backend, 8192);
        let log = open(dir.path(), cfg.clone());
        append_recs(&log.partition(P).unwrap(), 0, 100).await;
        log.close().unwrap();
        let files = segment_files(dir.path(), P);
        let (base, last) = files.last().unwrap().clone();
        assert!(base > 0);
        let mut garbage = vec![0u8; 2500];
        rand::rngs::StdRng::seed_from_u64(3).fill_bytes(&mut garbage);
        fs::write(&last, &garbage).unwrap();

        let log = open(dir.path(), cfg);
        let report = log.recovery_report(P).unwrap();
        assert_eq!(report.bytes_truncated, 2500, "{report:?}");
        let p = log.partition(P).unwrap();
        assert_eq!(p.bounds().end, base);
        assert_holds_recs(&p, 0, base);
        append_recs(&p, base, base + 10).await;
    }
}

/// Stray files in a partition directory (not named like segments) are ignored and kept.
#[tokio::test]
async fn stray_files_in_a_partition_directory_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), config(BACKENDS[0]));
    append_recs(&log.partition(P).unwrap(), 0, 10).await;
    log.close().unwrap();
    let pdir = dir.path().join(P);
    let strays = ["notes.txt", "42.log", "0000000000000000000x.log", "00000000000000000000.log.bak"];
    for s in strays {
        fs::write(pdir.join(s), b"not a batch at all").unwrap();
    }
    let log = open(dir.path(), config(BACKENDS[0]));
    assert!(log.recovery_report(P).unwrap().clean);
    let p = log.partition(P).unwrap();
    assert_holds_recs(&p, 0, 10);
    append_recs(&p, 10, 12).await;
    log.close().unwrap();
    for s in strays {
        assert_eq!(fs::read(pdir.join(s)).unwrap(), b"not a batch at all");
    }
}

/// Random damage to segment files, with the checkpoint gone so that everything is validated:
/// opening never panics; without `repair` it either opens or refuses with
/// `MidLogCorruption`; with `repair` it always opens. Whatever opens holds an intact run of
/// the original records, byte for byte, and takes new appends right after it.
#[tokio::test]
async fn random_damage_never_panics_and_leaves_an_intact_run_of_records() {
    let seed: u64 = std::env::var("AXLE_DAMAGE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed);
    let pristine = tempfile::tempdir().unwrap();
    let cfg = LogConfig { fsync: FsyncPolicy::Never, ..small_segments(IoBackendKind::Pwrite, 4096) };
    let n = 300u64;
    {
        let log = open(pristine.path(), cfg.clone());
        let p = log.partition(P).unwrap();
        for chunk in (0..n).collect::<Vec<_>>().chunks(3) {
            p.append(&chunk.iter().map(|i| rec(*i)).collect::<Vec<_>>()).await.unwrap();
        }
        log.close().unwrap();
    }
    assert!(segment_files(pristine.path(), P).len() >= 4);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut opened = [0usize; 2];
    for trial in 0..120 {
        let repair = trial % 2 == 1;
        let dir = tempfile::tempdir().unwrap();
        copy_log_dir(pristine.path(), dir.path());
        fs::remove_file(dir.path().join(P).join("recovery-point")).unwrap();
        let files = segment_files(dir.path(), P);
        let what = damage_randomly(&mut rng, &files);
        let ctx = format!("seed {seed} trial {trial} repair {repair}: {what}");
        let cfg = LogConfig { repair, ..cfg.clone() };
        let log = match Log::open(dir.path(), cfg) {
            Ok(log) => log,
            Err(LogError::MidLogCorruption { .. }) if !repair => continue,
            Err(e) => panic!("{ctx}: open failed with {e}"),
        };
        opened[usize::from(repair)] += 1;
        let p = log.partition(P).unwrap();
        let b = p.bounds();
        assert!(b.log_start <= b.end && b.end <= n, "{ctx}: bounds {b:?}");
        if b.end > b.log_start {
            let got = p.read(b.log_start, n as usize, usize::MAX).unwrap_or_else(|e| panic!("{ctx}: read failed: {e}"));
            assert_eq!(got.len() as u64, b.end - b.log_start, "{ctx}");
            for r in &got {
                assert_eq!(r.value, expected_value(r.offset).as_bytes(), "{ctx}");
                assert_eq!(r.headers[0].value, r.offset.to_string().as_bytes(), "{ctx}");
            }
        }
        let a = p.append(&[rec(b.end)]).await.unwrap_or_else(|e| panic!("{ctx}: append failed: {e}"));
        assert_eq!(a.base_offset, b.end, "{ctx}");
        log.close().unwrap();
    }
    assert_eq!(opened[1], 60, "repair always opens");
    // The damage is varied enough to take both ways out of a normal open.
    assert!(0 < opened[0] && opened[0] < 60, "{opened:?}");
}

fn damage_randomly(rng: &mut impl Rng, files: &[(u64, std::path::PathBuf)]) -> String {
    use std::os::unix::fs::FileExt;
    let (base, path) = &files[rng.random_range(0..files.len())];
    let len = fs::metadata(path).unwrap().len();
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    let at = rng.random_range(0..len);
    match rng.random_range(0..7) {
        0 => {
            flip_byte(path, at);
            format!("flipped byte {at} of segment {base}")
        }
        1 => {
            let mut b = vec![0u8; rng.random_range(1..200)];
            rng.fill_bytes(&mut b);
            f.write_all_at(&b, at).unwrap();
            format!("{} random bytes at {at} of segment {base}", b.len())
        }
        2 => {
            let n = rng.random_range(1..600);
            f.write_all_at(&vec![0u8; n], at).unwrap();
            format!("{n} zeros at {at} of segment {base}")
        }
        3 => {
            f.set_len(at).unwrap();
            format!("segment {base} cut to {at} bytes")
        }
        4 => {
            // Something that looks like a batch header: magic and a plausible length.
            let mut h = [0u8; 48];
            rng.fill_bytes(&mut h);
            h[16..20].copy_from_slice(b"AXLB");
            h[8..12].copy_from_slice(&rng.random_range(48u32..400).to_le_bytes());
            h[24] = 1;
            h[26] = 0;
            h[27] = 0;
            f.write_all_at(&h, at).unwrap();
            format!("fake header at {at} of segment {base}")
        }
        5 => {
            let mut b = vec![0u8; rng.random_range(1..5000)];
            rng.fill_bytes(&mut b);
            fs::write(path, &b).unwrap();
            format!("segment {base} replaced by {} random bytes", b.len())
        }
        _ => {
            fs::remove_file(path).unwrap();
            format!("segment {base} deleted")
        }
    }
}

/// A roll creates (and preallocates) the next segment before it cuts the old one to its data
/// length. A crash between the two leaves the old segment with a zero-filled tail followed by
/// a zero-filled new segment; no data is damaged, so recovery must open normally.
#[tokio::test]
async fn crash_in_the_middle_of_a_segment_roll_recovers() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let crash = tempfile::tempdir().unwrap();
        let cfg = small_segments(backend, 8192);
        let log = open(dir.path(), cfg.clone());
        let p = log.partition(P).unwrap();
        append_recs(&p, 0, 200).await;
        copy_log_dir(dir.path(), crash.path());
        log.close().unwrap();
        // The state right after `Segment::create` of the next segment: the active segment is
        // still preallocated, and the new one exists, preallocated, with nothing in it.
        let (_, active) = segment_files(crash.path(), P).last().unwrap().clone();
        assert_eq!(fs::metadata(&active).unwrap().len(), 8192, "preallocated");
        let next = segment_path(crash.path(), P, 200);
        fs::write(&next, vec![0u8; 8192]).unwrap();

        let log = Log::open(crash.path(), cfg.clone())
            .unwrap_or_else(|e| panic!("{backend:?}: a crash during a roll must recover: {e}"));
        let report = log.recovery_report(P).unwrap();
        assert_eq!((report.bytes_truncated, report.segments_removed), (0, 0), "{report:?}");
        let p = log.partition(P).unwrap();
        assert_eq!(p.bounds().end, 200);
        assert_holds_recs(&p, 0, 200);
        append_recs(&p, 200, 260).await;
        log.close().unwrap();
        let log = open(crash.path(), cfg);
        assert_holds_recs(&log.partition(P).unwrap(), 0, 260);
    }
}
