//! The flusher thread: it makes written data durable with `fdatasync` and, under
//! `fsync = always`, publishes it to readers and acknowledges the appends.
//!
//! The writer hands it one job per round and goes straight back to writing. The flusher
//! takes every job queued while its previous `fdatasync` ran and covers them all with one
//! `fdatasync` per file (issued in parallel through io_uring where available). So appends
//! arriving during a sync are written to the page cache meanwhile and ride the next sync:
//! group commit without the writer ever waiting on the disk.
//!
//! Invariants:
//! - Jobs are processed in order; a partition's end only moves forward.
//! - Data is published only after the `fdatasync` of its segment succeeded; a failed sync
//!   poisons the partition and fails its waiting appends.

use std::collections::HashMap;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{Relaxed, Release};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::appender::Ack;
use crate::cohort::Cohort;
use crate::error::{LogError, Result};
use crate::io::{Backend, WriteOp};
use crate::partition::PartitionShared;
use crate::segment::Segment;
use crate::writer::WriterStats;

/// Sync (and maybe publish) one partition's data up to `len` bytes of `segment`.
pub struct SyncItem {
    pub shared: Arc<PartitionShared>,
    pub segment: Arc<Segment>,
    /// Bytes of `segment` to make durable and, if `publish`, visible.
    pub len: u64,
    /// Partition end offset to publish.
    pub next: u64,
    pub acks: Vec<Ack>,
    pub publish: bool,
}

/// A unit of work for the flusher.
#[derive(Default)]
pub struct SyncJob {
    pub items: Vec<SyncItem>,
    /// Told once everything in this job (and before it) is durable.
    pub done: Option<Sender<Result<()>>>,
}

fn acks_in(jobs: &[SyncJob]) -> usize {
    jobs.iter().flat_map(|j| j.items.iter()).map(|i| i.acks.len()).sum()
}

/// Runs until every sender is dropped. `in_flight` counts jobs handed over and not yet
/// finished; it is decremented once a job's acknowledgements are sent.
///
/// Before each sync it may wait a little for more work (see [`Cohort`]).
pub fn run(rx: Receiver<SyncJob>, mut backend: Box<dyn Backend>, stats: Arc<WriterStats>, in_flight: Arc<AtomicUsize>) {
    crate::cohort::fine_timer_slack();
    let mut cohort = Cohort::default();
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        jobs.extend(rx.try_iter());
        let mut have = acks_in(&jobs);
        if cohort.wants_more(have) && jobs.iter().all(|j| j.done.is_none()) {
            // Appenders acknowledged by the last sync re-append over tens of microseconds
            // on a busy machine (each wakes, encodes, and the writer writes it), in bursts
            // with quiet gaps: so wait out gaps too, bounded by one sync's latency.
            let until = cohort.deadline();
            while cohort.wants_more(have) && Instant::now() < until {
                std::thread::sleep(crate::cohort::POLL);
                jobs.extend(rx.try_iter());
                have = acks_in(&jobs);
            }
        }
        cohort.gathered(have);
        // One sync per distinct segment file.
        let mut segments: Vec<(Arc<Segment>, u64)> = Vec::new();
        let mut seen = HashMap::new();
        for item in jobs.iter().flat_map(|j| j.items.iter()) {
            let key = Arc::as_ptr(&item.segment) as usize;
            match seen.entry(key) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(segments.len());
                    segments.push((item.segment.clone(), item.len));
                }
                std::collections::hash_map::Entry::Occupied(o) => {
                    let s = &mut segments[*o.get()];
                    s.1 = s.1.max(item.len);
                }
            }
        }
        // Only the bytes these jobs need: data appended meanwhile rides the next sync.
        let ops: Vec<WriteOp<'_>> = segments
            .iter()
            .map(|(s, len)| WriteOp { fd: s.file.as_raw_fd(), pos: 0, bufs: &[], sync: true, sync_len: (*len).max(1) })
            .collect();
        let started = Instant::now();
        let results = if ops.is_empty() { Vec::new() } else { backend.submit(&ops) };
        let took = started.elapsed();
        if !ops.is_empty() {
            cohort.synced(took);
            stats.sync_latency.observe(took);
        }
        stats.fsyncs.fetch_add(ops.len() as u64, Relaxed);
        stats.sync_micros.fetch_add(took.as_micros() as u64, Relaxed);
        drop(ops);
        let failures: HashMap<usize, String> = results
            .into_iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let err = match (r.write, r.sync) {
                    (Err(e), _) | (Ok(()), Some(Err(e))) => e.to_string(),
                    _ => return None,
                };
                Some((i, err))
            })
            .collect();
        for job in jobs {
            let mut job_err = None;
            for item in job.items {
                let i = seen[&(Arc::as_ptr(&item.segment) as usize)];
                if let Some(e) = finish_item(item, failures.get(&i).map(String::as_str)) {
                    job_err = Some(e);
                }
            }
            if let Some(done) = job.done {
                let _ = done.send(job_err.map_or(Ok(()), Err));
            }
            in_flight.fetch_sub(1, Release);
        }
    }
}

/// Completes one synced item: poisons its partition if its sync failed (`sync_failure`
/// says why), then publishes it and acknowledges its appends, or fails them if the
/// partition is poisoned. Returns the error its appends got, if any.
pub fn finish_item(item: SyncItem, sync_failure: Option<&str>) -> Option<LogError> {
    if let Some(reason) = sync_failure {
        item.shared.poison(format!("fdatasync of {} failed: {reason}", item.segment.path.display()));
    }
    match item.shared.poisoned() {
        Some(reason) => {
            let err = || LogError::Poisoned { partition: item.shared.name.clone(), reason: reason.clone() };
            for ack in item.acks {
                let _ = ack.reply.send(Err(err()));
            }
            Some(err())
        }
        None => {
            if item.publish {
                item.segment.commit(item.len, item.next);
                item.shared.publish_end(item.next);
            }
            for ack in item.acks {
                let _ = ack.reply.send(Ok(ack.appended));
            }
            None
        }
    }
}
