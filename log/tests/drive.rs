//! Under `fsync = always` appenders run the writer's rounds themselves (`drive.rs`): these
//! tests hold that every append is still acknowledged exactly once, in order, whoever runs
//! the round, that an append given up while leading strands nothing, and that a blocking
//! control never waits for a leader parked behind it.

mod common;

use std::collections::BTreeSet;

use axle_log::{IoBackendKind, Record};
use common::*;
use futures::FutureExt;

/// A log under `fsync = always` on `backend` in a fresh directory, and its partition "p".
fn one_partition(backend: IoBackendKind) -> (tempfile::TempDir, axle_log::Log, axle_log::Partition) {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), config(backend));
    let p = log.partition("p").unwrap();
    (dir, log, p)
}

/// Runs `tasks` appenders of `each` records on one current-thread runtime; returns every
/// offset they were given, after checking that each appender's offsets go up.
fn appenders_on_one_thread(p: &axle_log::Partition, tasks: u64, each: u64) -> Vec<u64> {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let p = p.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    for i in 0..each {
                        got.push(p.append(&[rec(t * 1000 + i)]).await.unwrap().base_offset);
                    }
                    got
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            let got = h.await.unwrap();
            assert!(got.windows(2).all(|w| w[0] < w[1]), "one appender's offsets go up");
            all.extend(got);
        }
        all
    })
}

#[test]
fn appenders_on_one_thread_share_syncs_and_get_every_offset_once() {
    let (_dir, log, p) = one_partition(IoBackendKind::Pwrite);
    let offsets = appenders_on_one_thread(&p, 32, 40);
    let set: BTreeSet<u64> = offsets.iter().copied().collect();
    assert_eq!(set.len(), 32 * 40);
    assert_eq!(set.iter().copied().collect::<Vec<_>>(), (0..32 * 40).collect::<Vec<_>>());
    let fsyncs = log.stats().fsyncs.load(std::sync::atomic::Ordering::Relaxed);
    assert!(fsyncs < 32 * 40, "appends waiting together share a sync ({fsyncs} syncs for {} appends)", 32 * 40);
    assert_eq!(p.read(0, 2000, usize::MAX).unwrap().len(), 32 * 40);
    log.close().unwrap();
}

#[test]
fn an_append_dropped_while_leading_its_round_is_still_written_by_the_writer_thread() {
    for backend in BACKENDS {
        let (_dir, log, p) = one_partition(backend);
        // Polled once: under `always` with inline syncs it becomes the leader and yields to
        // gather its cohort; dropping it then must hand the queued append on.
        let first = p.append_start(&[rec(0)]).unwrap();
        let polled = first.now_or_never();
        if let Some(result) = polled {
            // The thread-run path (io_uring) may have answered already.
            assert_eq!(result.unwrap().base_offset, 0);
        }
        let second = p.append_blocking(&[rec(1)]).unwrap();
        assert_eq!(second.base_offset, 1, "the dropped append was written first, in order");
        assert_holds_recs(&p, 0, 2);
        log.close().unwrap();
    }
}

#[test]
fn an_append_dropped_while_leading_does_not_stall_close_or_later_appends_from_other_threads() {
    let (_dir, log, p) = one_partition(IoBackendKind::Pwrite);
    for i in 0..3u64 {
        let _ = p.append_start(&[rec(i)]).unwrap().now_or_never();
    }
    let q = p.clone();
    let other = std::thread::spawn(move || q.append_blocking(&[Record::new(bytes::Bytes::from_static(b"x"))]));
    let got = other.join().unwrap().unwrap();
    assert_eq!(got.base_offset, 3);
    log.flush().unwrap();
    assert_eq!(p.read(0, 10, usize::MAX).unwrap().len(), 4);
    log.close().unwrap();
    assert!(p.append_blocking(&[rec(9)]).is_err(), "appends after close fail, they do not hang");
}

#[test]
fn a_blocking_control_does_not_wait_for_a_leader_parked_on_the_same_thread() {
    let (_dir, log, p) = one_partition(IoBackendKind::Pwrite);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut leading = p.append_start(&[rec(0)]).unwrap();
        // One poll: it leads and yields; the only thread that could poll it again is this one.
        assert!(futures::poll!(&mut leading).is_pending());
        log.flush().unwrap();
        let q = log.partition("q").unwrap();
        assert_eq!(q.append_blocking(&[rec(1)]).unwrap().base_offset, 0);
        assert_eq!(leading.await.unwrap().base_offset, 0);
    });
    assert_holds_recs(&p, 0, 1);
    log.close().unwrap();
}

#[test]
fn a_leader_that_is_never_polled_again_does_not_hold_back_other_appenders() {
    let (_dir, log, p) = one_partition(IoBackendKind::Pwrite);
    let mut parked = p.append_start(&[rec(0)]).unwrap();
    // One poll makes it the leader; it is then kept but never polled again, as by a task
    // that went on to await a socket write.
    assert!(futures::executor::block_on(async { futures::poll!(&mut parked) }).is_pending());
    let q = p.clone();
    let other = std::thread::spawn(move || futures::executor::block_on(q.append_start(&[rec(1)]).unwrap()));
    assert_eq!(other.join().unwrap().unwrap().base_offset, 1, "the writer thread took the round over");
    assert_eq!(futures::executor::block_on(parked).unwrap().base_offset, 0);
    log.close().unwrap();
}

#[test]
fn an_append_whose_future_is_never_polled_is_still_written() {
    let (_dir, log, p) = one_partition(IoBackendKind::Pwrite);
    let unpolled = p.append_start(&[rec(0)]).unwrap();
    // Not a timing assertion: wait as long as it takes for the record to become readable.
    while p.read(0, 1, usize::MAX).map(|r| r.is_empty()).unwrap_or(true) {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_holds_recs(&p, 0, 1);
    drop(unpolled);
    log.close().unwrap();
}

#[test]
fn appends_a_round_leaves_queued_at_its_byte_limit_are_run_by_later_rounds() {
    // Rounds of at most ~2 batches: every leader leaves most of the queue behind it, taken
    // off the shared queue but not yet run, and steps down.
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), axle_log::LogConfig { max_round_bytes: 300, ..config(backend) });
        let p = log.partition("p").unwrap();
        let offsets = appenders_on_one_thread(&p, 16, 20);
        let set: BTreeSet<u64> = offsets.iter().copied().collect();
        assert_eq!(set.iter().copied().collect::<Vec<_>>(), (0..16 * 20).collect::<Vec<_>>(), "{backend:?}");
        let rounds = log.stats().rounds.load(std::sync::atomic::Ordering::Relaxed);
        // Uncut, each round would carry all 16 appenders: about 20 rounds.
        assert!(rounds >= 50, "{backend:?}: rounds were cut at the byte limit ({rounds} rounds)");
        log.close().unwrap();
    }
}

#[test]
fn a_round_spanning_partitions_is_acknowledged_in_order_and_survives_reopen() {
    // `auto`: rounds of one partition are synced inline by their leader, rounds over both
    // by the flusher; acknowledgements must come in order either way.
    let dir = tempfile::tempdir().unwrap();
    let names = ["p", "q"];
    let per_task = 50u64;
    {
        let log = open(dir.path(), config(IoBackendKind::Auto));
        let parts: Vec<_> = names.iter().map(|n| log.partition(n).unwrap()).collect();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
        let got = rt.block_on(async {
            let handles: Vec<_> = (0..8u64)
                .map(|t| {
                    let p = parts[(t % 2) as usize].clone();
                    tokio::spawn(async move {
                        let mut got = Vec::new();
                        for i in 0..per_task {
                            got.push(p.append(&[rec(t * 1000 + i)]).await.unwrap().base_offset);
                        }
                        (t, got)
                    })
                })
                .collect();
            let mut all = Vec::new();
            for h in handles {
                all.push(h.await.unwrap());
            }
            all
        });
        for (part, _) in names.iter().enumerate() {
            let mut offsets: Vec<u64> =
                got.iter().filter(|(t, _)| (t % 2) as usize == part).flat_map(|(_, o)| o.iter().copied()).collect();
            offsets.sort_unstable();
            assert_eq!(offsets, (0..4 * per_task).collect::<Vec<_>>(), "partition {}", names[part]);
        }
        for (t, offsets) in &got {
            assert!(offsets.windows(2).all(|w| w[0] < w[1]), "task {t}'s offsets go up");
        }
        log.close().unwrap();
    }
    let log = open(dir.path(), config(IoBackendKind::Auto));
    for name in names {
        let p = log.partition(name).unwrap();
        let back = p.read(0, 1000, usize::MAX).unwrap();
        assert_eq!(back.len() as u64, 4 * per_task, "partition {name} after reopen");
    }
    log.close().unwrap();
}
