//! Durability under SIGKILL: a child process appends from several tasks to two partitions
//! with `fsync = always` and prints every acknowledged record; the parent kills it at a random
//! moment, recovers the log itself, and checks that every acknowledged record is there, byte
//! for byte, with no gap in the offsets. The same directory is reused across iterations, so
//! each recovery runs on top of the previous ones, and segments are small so that kills land
//! during segment rolls too. The child runs each write path in turn: io_uring, `pwrite`,
//! and `auto` (`pwritev` writes; a round of one partition synced inline by its leader, a
//! round spanning both synced by the flusher through io_uring).
//!
//! The child is this test binary itself, running the `#[ignore]`d test [`CHILD`] with
//! [`ENV_DIR`] set; without that variable the child test does nothing.

mod common;

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use axle_log::{IoBackendKind, Log, LogConfig, Record, StoredRecord};
use common::*;
use rand::{Rng, SeedableRng};

const CHILD: &str = "crash_child_appends_until_killed";
const ENV_DIR: &str = "AXLE_CRASH_CHILD_DIR";
const ENV_BACKEND: &str = "AXLE_CRASH_CHILD_BACKEND";
const ENV_SEED: &str = "AXLE_CRASH_CHILD_SEED";
/// The partitions; task `t` appends to `PARTS[t % 2]`, so rounds span both.
const PARTS: [&str; 2] = ["p", "q"];
/// Write paths the child and the recovering parent take in turn.
const PATHS: [IoBackendKind; 3] = [IoBackendKind::IoUring, IoBackendKind::Pwrite, IoBackendKind::Auto];
const ITERATIONS: usize = 50;
const TASKS: u64 = 4;

fn crash_config(backend: IoBackendKind) -> LogConfig {
    // fsync = always (from `config`), 64 KiB segments.
    small_segments(backend, 64 * 1024)
}

fn backend_name(b: IoBackendKind) -> &'static str {
    match b {
        IoBackendKind::IoUring => "io_uring",
        IoBackendKind::Auto => "auto",
        _ => "pwrite",
    }
}

/// What the child prints and the parent compares: everything a reader gets back.
fn digest(timestamp: i64, key: Option<&[u8]>, value: &[u8], headers: &[(&str, &[u8])]) -> u64 {
    let mut h = DefaultHasher::new();
    h.write_i64(timestamp);
    match key {
        Some(k) => {
            h.write_u8(1);
            h.write_usize(k.len());
            h.write(k);
        }
        None => h.write_u8(0),
    }
    h.write_usize(value.len());
    h.write(value);
    h.write_usize(headers.len());
    for (k, v) in headers {
        h.write_usize(k.len());
        h.write(k.as_bytes());
        h.write_usize(v.len());
        h.write(v);
    }
    h.finish()
}

fn digest_record(r: &Record) -> u64 {
    let headers: Vec<(&str, &[u8])> = r.headers.iter().map(|h| (h.key.as_str(), &h.value[..])).collect();
    digest(r.timestamp.expect("explicit timestamp"), r.key.as_deref(), &r.value, &headers)
}

fn digest_stored(r: &StoredRecord) -> u64 {
    let headers: Vec<(&str, &[u8])> = r.headers.iter().map(|h| (h.key.as_str(), &h.value[..])).collect();
    digest(r.timestamp, r.key.as_deref(), &r.value, &headers)
}

/// A record of random size (so that batches straddle pages and segments roll often).
fn random_record(rng: &mut impl Rng, tag: &str) -> Record {
    let len = if rng.random_bool(0.1) { rng.random_range(1000..3000) } else { rng.random_range(1..300) };
    let mut value = vec![0u8; len];
    rng.fill(&mut value[..]);
    let mut r = Record::new(value).with_timestamp(axle_log::now_ms()).with_header("tag", tag.to_string());
    if rng.random_bool(0.7) {
        r = r.with_key(tag.to_string());
    }
    r
}

/// The child: appends until killed, printing `ACK <partition> <offset> <digest>` for every record of
/// every acknowledged append, after the acknowledgement, one flushed line each.
#[test]
#[ignore = "child process of acknowledged_records_survive_sigkill_at_random_moments"]
fn crash_child_appends_until_killed() {
    let Ok(dir) = std::env::var(ENV_DIR) else {
        return;
    };
    let backend = match std::env::var(ENV_BACKEND).as_deref() {
        Ok("io_uring") => IoBackendKind::IoUring,
        Ok("auto") => IoBackendKind::Auto,
        _ => IoBackendKind::Pwrite,
    };
    let seed: u64 = std::env::var(ENV_SEED).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let log = Log::open(&dir, crash_config(backend)).expect("child opens the log");
        let parts: Vec<_> = PARTS.iter().map(|name| log.partition(name).expect("child opens the partition")).collect();
        // A safety net should the parent die without killing us: stop after a while.
        let stop_at = Instant::now() + Duration::from_secs(30);
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let part = (t % PARTS.len() as u64) as usize;
                let p = parts[part].clone();
                tokio::spawn(async move {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (t << 56));
                    let mut seq = 0u64;
                    while Instant::now() < stop_at {
                        let n = rng.random_range(1..=3);
                        let batch: Vec<Record> =
                            (0..n).map(|k| random_record(&mut rng, &format!("t{t}-{seq}-{k}"))).collect();
                        seq += 1;
                        let a = match p.append(&batch).await {
                            Ok(a) => a,
                            Err(e) => {
                                println!("APPEND-ERROR {e}");
                                std::process::exit(2);
                            }
                        };
                        let mut lines = String::new();
                        for (k, r) in batch.iter().enumerate() {
                            lines.push_str(&format!("ACK {part} {} {}\n", a.base_offset + k as u64, digest_record(r)));
                        }
                        let mut out = std::io::stdout().lock();
                        if out.write_all(lines.as_bytes()).and_then(|()| out.flush()).is_err() {
                            // The parent is gone.
                            std::process::exit(0);
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
}

/// One line of the child's stdout. libtest may print its own text on the same line before
/// ours, so the marker is searched for.
fn parse_line(line: &str, acked: &mut Vec<(usize, u64, u64)>) {
    if let Some(i) = line.find("APPEND-ERROR") {
        panic!("the child's append failed: {}", &line[i..]);
    }
    let Some(i) = line.find("ACK ") else {
        return;
    };
    let mut fields = line[i + 4..].split_whitespace();
    let part = fields.next().and_then(|s| s.parse().ok()).filter(|p: &usize| *p < PARTS.len());
    let offset = fields.next().and_then(|s| s.parse().ok());
    let hash = fields.next().and_then(|s| s.parse().ok());
    match (part, offset, hash) {
        (Some(p), Some(o), Some(h)) => acked.push((p, o, h)),
        _ => panic!("unparsable line from the child: {line:?}"),
    }
}

/// Runs the child on `dir` and SIGKILLs it `delay` after its first acknowledgement. Returns
/// every (partition index, offset, digest) it acknowledged.
fn run_and_kill(dir: &Path, backend: IoBackendKind, seed: u64, delay: Duration) -> Vec<(usize, u64, u64)> {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["--exact", CHILD, "--nocapture", "--ignored", "--test-threads=1"])
        .env(ENV_DIR, dir)
        .env(ENV_BACKEND, backend_name(backend))
        .env(ENV_SEED, seed.to_string())
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("child starts");
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                // A line cut short by the kill was never completely printed: not an ack.
                Ok(n) if n > 0 && line.ends_with('\n') => {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
                _ => return,
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut acked = Vec::new();
    // Wait for the first acknowledgement (generously: a hang here is a failure, not a timing).
    let waited = Instant::now();
    while acked.is_empty() {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => parse_line(&line, &mut acked),
            Err(mpsc::RecvTimeoutError::Timeout) if waited.elapsed() < Duration::from_secs(120) => {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!("the child exited with {status} before acknowledging: {}", err_reader.join().unwrap());
                }
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the child never acknowledged an append: {}", err_reader.join().unwrap());
            }
        }
    }
    std::thread::sleep(delay);
    child.kill().expect("SIGKILL");
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(SIGKILL),
        "the child died of the kill, not of its own accord ({status}): {}",
        err_reader.join().unwrap()
    );
    reader.join().unwrap();
    for line in rx.try_iter() {
        parse_line(&line, &mut acked);
    }
    acked
}

const SIGKILL: i32 = 9;

#[test]
fn acknowledged_records_survive_sigkill_at_random_moments() {
    let seed: u64 =
        std::env::var("AXLE_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| rand::rng().random());
    // Printed with the failure output, to replay the kill schedule.
    eprintln!("AXLE_CRASH_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    // Per partition, every record ever acknowledged, or seen by a reader after a recovery:
    // offset -> digest.
    let mut known: Vec<BTreeMap<u64, u64>> = PARTS.iter().map(|_| BTreeMap::new()).collect();
    let mut acked_total = 0usize;
    let mut torn_tails = 0usize;
    for iteration in 0..ITERATIONS {
        let child_backend = PATHS[iteration % PATHS.len()];
        let parent_backend = PATHS[(iteration / PATHS.len()) % PATHS.len()];
        let delay = Duration::from_millis(rng.random_range(20..=300));
        let ctx = format!("seed {seed} iteration {iteration} (child {child_backend:?}, kill after {delay:?})");
        let acked = run_and_kill(dir.path(), child_backend, rng.random(), delay);
        assert!(!acked.is_empty(), "{ctx}");
        acked_total += acked.len();
        for (part, offset, hash) in &acked {
            if let Some(old) = known[*part].insert(*offset, *hash) {
                panic!(
                    "{ctx}: offset {offset} of {} acknowledged again (digest {old} before, {hash} now)",
                    PARTS[*part]
                );
            }
        }

        // Now and then the next child recovers straight from this kill, and is killed in turn.
        if iteration + 1 < ITERATIONS && rng.random_ratio(1, 4) {
            continue;
        }
        let log = Log::open(dir.path(), crash_config(parent_backend))
            .unwrap_or_else(|e| panic!("{ctx}: recovery after SIGKILL failed: {e}"));
        for (part, name) in PARTS.iter().enumerate() {
            let known = &mut known[part];
            let ctx = format!("{ctx}, partition {name}");
            let report = log.recovery_report(name).unwrap();
            assert!(!report.clean && report.segments_removed == 0, "{ctx}: {report:?}");
            torn_tails += usize::from(report.bytes_truncated > 0);
            let p = log.partition(name).unwrap();
            let b = p.bounds();
            assert_eq!(b.log_start, 0, "{ctx}");
            if let Some(last_known) = known.keys().next_back() {
                assert!(b.end > *last_known, "{ctx}: end {} but offset {last_known} was acknowledged", b.end);
            }
            // Every offset from the start, with no gap; every acknowledged one with its bytes.
            let mut next = 0u64;
            while next < b.end {
                let got = p.read(next, 5000, usize::MAX).unwrap_or_else(|e| panic!("{ctx}: read at {next}: {e}"));
                assert!(!got.is_empty(), "{ctx}: nothing readable at {next} below end {}", b.end);
                for r in &got {
                    assert_eq!(r.offset, next, "{ctx}: offsets must be contiguous");
                    let d = digest_stored(r);
                    match known.get(&r.offset) {
                        Some(want) => assert_eq!(d, *want, "{ctx}: record {} changed", r.offset),
                        // Written but not acknowledged before the kill: kept from now on.
                        None => {
                            known.insert(r.offset, d);
                        }
                    }
                    next += 1;
                }
            }
            assert_eq!(known.len() as u64, b.end, "{ctx}: known records beyond the end");
            // The partition takes appends right after what survived.
            let r = random_record(&mut rng, &format!("parent-{iteration}"));
            let a = p.append_blocking(std::slice::from_ref(&r)).unwrap_or_else(|e| panic!("{ctx}: append: {e}"));
            assert_eq!(a.base_offset, b.end, "{ctx}");
            known.insert(a.base_offset, digest_record(&r));
        }
        log.close().unwrap_or_else(|e| panic!("{ctx}: close: {e}"));
    }
    let segments: usize = PARTS.iter().map(|name| segment_files(dir.path(), name).len()).sum();
    let in_log: usize = known.iter().map(BTreeMap::len).sum();
    eprintln!(
        "{acked_total} acknowledged records, {in_log} in the log, {segments} segments, {torn_tails} torn tails cut"
    );
    assert!(segments >= 4, "segments should roll while the child is killed: only {segments} in both partitions");
}
