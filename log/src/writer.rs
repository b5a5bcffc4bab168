//! The writer: it owns the write side of every partition of a log. Its rounds are run by
//! the writer thread, or under `fsync = always` with inline syncs by the appenders
//! themselves (`drive.rs`).
//!
//! A round: take the first queued command, gather every append queued behind it, stamp
//! offsets, and write each partition's batches with one vectored write (all partitions in
//! one io_uring submission). Then, by policy:
//! - `always`, one partition in the round and the flusher idle: write it with
//!   `pwritev2(RWF_DSYNC)` right here (write and range sync in one call, on already
//!   zero-filled blocks), then publish and acknowledge: no thread hand-off between the
//!   write, the sync and the acknowledgements. Appends arriving meanwhile queue up and form
//!   the next round (group commit); its leader first waits a little for the cohort the
//!   last inline round acknowledged ([`Cohort`], [`Writer::cohort_wait`]);
//! - `always` otherwise: hand the round to the flusher, which syncs, publishes and
//!   acknowledges;
//! - otherwise: publish and acknowledge now, and hand the flusher a sync when the interval
//!   or byte count is due.
//!
//! Except on the inline `always` path, the writer never waits on `fdatasync` but for segment
//! rolls and shutdown, so the next round is written while the previous one is being synced.
//! The inline path is taken only while no flusher job is in flight, so acknowledgements and
//! published ends still move forward in order.

use std::collections::VecDeque;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use tokio::sync::oneshot;

pub use crate::appender::Appended;
use crate::appender::PartitionWriter;
use crate::batch::EncodedBatch;
use crate::cohort::Cohort;
use crate::config::{FsyncPolicy, LogConfig};
use crate::error::{LogError, Result};
use crate::flusher::SyncJob;
use crate::io::{Backend, DsyncError, WriteOp};
use crate::memo::Memo;
use crate::queue::CommandQueue;
use crate::record::now_ms;
use crate::replica::SealedBatch;

/// Counters of the write path, shared with [`crate::Log::stats`]. All monotonic.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Rounds that wrote data.
    pub rounds: std::sync::atomic::AtomicU64,
    /// Batches (append calls) written.
    pub batches: std::sync::atomic::AtomicU64,
    /// Bytes written to segment files.
    pub bytes: std::sync::atomic::AtomicU64,
    /// `fdatasync` calls issued by the flusher (one per segment file per sync).
    pub fsyncs: std::sync::atomic::AtomicU64,
    /// Time the flusher spent in `fdatasync`, in microseconds.
    pub sync_micros: std::sync::atomic::AtomicU64,
    /// Duration of each sync round (the parallel `fdatasync` of every file it covers).
    pub sync_latency: crate::latency::LatencyHistogram,
}

/// Messages to the writer thread.
pub enum Command {
    Append {
        partition: usize,
        batch: EncodedBatch,
        /// The appender's in-memory form of the batch, filed in the partition's memo tail.
        memo: Option<Memo>,
        reply: oneshot::Sender<Result<Appended>>,
    },
    /// Batches sealed by another node (validated by the caller), appended as they are.
    AppendSealed {
        partition: usize,
        batches: Vec<SealedBatch>,
        reply: oneshot::Sender<Result<Appended>>,
    },
    /// Ends the round it arrives in: commands behind it see the truncated partition.
    Truncate {
        partition: usize,
        to: u64,
        reply: oneshot::Sender<Result<()>>,
    },
    AddPartition {
        writer: Box<PartitionWriter>,
        reply: Sender<usize>,
    },
    SetEpoch {
        partition: usize,
        epoch: u32,
    },
    Retention {
        reply: Sender<Result<usize>>,
    },
    Flush {
        reply: Sender<Result<()>>,
    },
    Shutdown {
        reply: Sender<Result<()>>,
    },
}

/// The writer thread's state.
pub struct Writer {
    queue: Arc<CommandQueue>,
    /// Commands taken off `queue` and not yet run, in order: always emptied before the
    /// next take, so that order holds across takes.
    local: VecDeque<Command>,
    backend: Box<dyn Backend>,
    cfg: Arc<LogConfig>,
    parts: Vec<PartitionWriter>,
    flusher: Option<Sender<SyncJob>>,
    flusher_thread: Option<JoinHandle<()>>,
    last_sync: Instant,
    unsynced_bytes: u64,
    next_retention: Instant,
    stats: Arc<WriterStats>,
    /// Jobs handed to the flusher and not yet finished by it.
    in_flight: Arc<AtomicUsize>,
    /// Whether `fsync = always` rounds may be written and synced inline (the writer's
    /// backend is `pwritev` and the kernel takes `RWF_DSYNC`).
    inline: bool,
    cohort: Cohort,
    /// Whether the last round that wrote appends synced them inline. Only then does a
    /// leader wait for its cohort ([`Writer::cohort_wait`]): a round the flusher syncs
    /// (several partitions, or the flusher busy) has its cohort gathered by the flusher,
    /// and the appenders of the round before it cannot re-append until the flusher
    /// acknowledges them, so waiting for them on the leader's side only delays the round.
    last_inline: bool,
    /// Commands sent and not yet taken off the queue by a finished round, counted only where
    /// appenders lead rounds (`appenders_lead`): senders add one before sending, and a round
    /// takes off the commands it received when it ends (one atomic step per round, not per
    /// append). Shared with [`crate::drive::Drive`].
    pending: Arc<AtomicUsize>,
    /// `fsync = always` with inline syncs at start: appenders lead rounds
    /// ([`crate::drive`]). Fixed for the writer's life, as the counting of `pending` is.
    appenders_lead: bool,
    /// Set by shutdown: files are closed, and commands are refused.
    closed: bool,
    /// Commands taken off the queue and not yet taken off `pending` ([`Writer::settle`]).
    taken: usize,
    /// Reused buffer an inline round's batches are copied into (at most [`GATHER_MAX`]).
    gather: Vec<u8>,
}

const RETENTION_EVERY: Duration = Duration::from_secs(30);

/// Largest inline round (bytes) copied into one buffer before its write, and the largest
/// mean batch (bytes) for which that pays: copying small batches costs less than the
/// kernel's walk over one vector per batch; copying large ones costs more.
const GATHER_MAX: u64 = 64 << 10;
const GATHER_MAX_MEAN: u64 = 1024;

impl Writer {
    /// Creates the writer and starts its flusher thread (with its own `flush_backend`).
    pub fn new(
        queue: Arc<CommandQueue>,
        backend: Box<dyn Backend>,
        flush_backend: Box<dyn Backend>,
        cfg: Arc<LogConfig>,
        parts: Vec<PartitionWriter>,
        stats: Arc<WriterStats>,
    ) -> std::io::Result<Self> {
        let (tx, frx) = crossbeam_channel::unbounded();
        let fstats = stats.clone();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let f_in_flight = in_flight.clone();
        let flusher_thread = std::thread::Builder::new()
            .name("axle-log-flusher".into())
            .spawn(move || crate::flusher::run(frx, flush_backend, fstats, f_in_flight))?;
        let inline = backend.name() == crate::io::PwriteBackend.name();
        let appenders_lead = inline && cfg.fsync == FsyncPolicy::Always;
        Ok(Writer {
            queue,
            local: VecDeque::new(),
            backend,
            cfg,
            parts,
            flusher: Some(tx),
            flusher_thread: Some(flusher_thread),
            last_sync: Instant::now(),
            unsynced_bytes: 0,
            next_retention: Instant::now() + RETENTION_EVERY,
            stats,
            in_flight,
            inline,
            cohort: Cohort::default(),
            last_inline: false,
            pending: Arc::new(AtomicUsize::new(0)),
            appenders_lead,
            closed: false,
            taken: 0,
            gather: Vec::new(),
        })
    }

    fn send_job(&self, job: SyncJob) {
        if let Some(f) = &self.flusher {
            self.in_flight.fetch_add(1, AcqRel);
            if let Err(e) = f.send(job) {
                self.in_flight.fetch_sub(1, AcqRel);
                // Only after shutdown; fail whoever waits.
                for item in e.0.items {
                    for ack in item.acks {
                        let _ = ack.reply.send(Err(LogError::Closed));
                    }
                }
            }
        }
    }

    /// Runs until shutdown: the writer thread's loop when the writer thread runs every round
    /// (see [`crate::drive`] for when appenders do).
    pub fn run(&mut self) {
        loop {
            let deadline = match self.cfg.fsync {
                FsyncPolicy::Interval(d) if self.parts.iter().any(|p| p.unsynced) => {
                    (self.last_sync + d).min(self.next_retention)
                }
                _ => self.next_retention,
            };
            if let Some(first) = self.try_next() {
                if self.round(first) {
                    return;
                }
            } else if !self.queue.wait_until(deadline) {
                self.housekeeping();
            }
        }
    }

    /// Counts a command taken off the queue (see [`Writer::pending`]); [`Writer::round`]
    /// takes the round's count off `pending` in one step at its end.
    fn took_one(&mut self) {
        if self.appenders_lead {
            self.taken += 1;
        }
    }

    /// Takes the commands counted by [`Writer::took_one`] off `pending`. A round does so once
    /// it has gathered, before it writes (so a long write does not look to the writer
    /// thread's stall watch like appends left queued), and again at its end for commands
    /// taken by its controls; a leader settles before it steps down and reads `pending`, so a
    /// command it took is never counted as left in the queue then. Commands a round leaves
    /// in `local` (it stopped at `max_round_bytes` or at a truncation) stay counted until a
    /// later round takes them.
    fn settle(&mut self) {
        if self.taken > 0 {
            self.pending.fetch_sub(self.taken, SeqCst);
            self.taken = 0;
        }
    }

    /// The count of queued commands, including those the running round took and has not
    /// settled yet (see [`Writer::pending`]).
    pub fn pending(&self) -> Arc<AtomicUsize> {
        self.pending.clone()
    }

    /// The next queued command, if any, without waiting.
    pub fn try_next(&mut self) -> Option<Command> {
        if self.local.is_empty() {
            self.queue.take_all(&mut self.local);
        }
        let Some(c) = self.local.pop_front() else {
            // Nothing left: settle whatever a round that did not reach its end (a panic)
            // left counted.
            self.settle();
            return None;
        };
        self.took_one();
        Some(c)
    }

    /// Whether this writer has shut down (its files are closed; it takes no more commands).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether a round about to carry `have` acknowledgements should wait for more, and
    /// until when (see [`Cohort`]).
    pub fn cohort_wait(&self, have: usize) -> Option<Instant> {
        (self.last_inline && self.cohort.wants_more(have)).then(|| self.cohort.deadline())
    }

    /// Timed work: a due interval sync and retention.
    pub fn housekeeping(&mut self) {
        self.maybe_background_sync();
        if Instant::now() >= self.next_retention {
            self.retention_all();
        }
    }

    /// One round starting with `first`: gathers what is queued behind it, writes it, then
    /// runs the controls that came with it. Returns true once the writer has shut down.
    pub fn round(&mut self, first: Command) -> bool {
        let done = self.run_round(first);
        self.settle();
        done
    }

    fn run_round(&mut self, first: Command) -> bool {
        if self.closed {
            Self::refuse(first);
            return true;
        }
        let mut controls = Vec::new();
        let mut bytes = 0usize;
        let now = now_ms();
        let mut barrier = self.take(first, &mut controls, &mut bytes, now);
        while bytes < self.cfg.max_round_bytes && !barrier {
            match self.try_next() {
                Some(c) => barrier = self.take(c, &mut controls, &mut bytes, now),
                None => break,
            }
        }
        self.settle();
        if bytes > 0 {
            self.write_round();
            self.maybe_background_sync();
        }
        for c in controls {
            if self.control(c) {
                return true;
            }
        }
        if Instant::now() >= self.next_retention {
            self.retention_all();
        }
        false
    }

    /// Answers a command that arrived after shutdown.
    fn refuse(c: Command) {
        match c {
            Command::Append { reply, .. } | Command::AppendSealed { reply, .. } => {
                let _ = reply.send(Err(LogError::Closed));
            }
            Command::Truncate { reply, .. } => {
                let _ = reply.send(Err(LogError::Closed));
            }
            // The other replies are dropped, which their callers read as `Closed`.
            _ => {}
        }
    }

    /// Stages an append into the round, applies an epoch change in place (so appends behind
    /// it get the new epoch), or sets a control aside for after the round. Returns true when
    /// the round must end here (a truncation).
    fn take(&mut self, c: Command, controls: &mut Vec<Command>, bytes: &mut usize, now: i64) -> bool {
        match c {
            Command::Append { partition, batch, memo, reply } => {
                *bytes += batch.len();
                match self.parts.get_mut(partition) {
                    Some(p) => p.stage(batch, memo, reply, &self.cfg, now),
                    None => {
                        let _ = reply.send(Err(LogError::UnknownPartition(partition.to_string())));
                    }
                }
            }
            Command::AppendSealed { partition, batches, reply } => {
                *bytes += batches.iter().map(|b| b.bytes.len()).sum::<usize>();
                match self.parts.get_mut(partition) {
                    Some(p) => p.stage_sealed(batches, reply, &self.cfg, now),
                    None => {
                        let _ = reply.send(Err(LogError::UnknownPartition(partition.to_string())));
                    }
                }
            }
            Command::SetEpoch { partition, epoch } => {
                if let Some(p) = self.parts.get_mut(partition) {
                    p.epoch = epoch;
                }
            }
            c @ Command::Truncate { .. } => {
                controls.push(c);
                return true;
            }
            other => controls.push(other),
        }
        false
    }

    /// Waits until the flusher has finished every job handed to it (their data durable and
    /// published), syncing whatever is unsynced along the way.
    fn drain_flusher(&mut self) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.sync_unsynced(Some(tx));
        let _ = rx.recv();
    }

    /// Whether appenders lead `fsync = always` rounds: they are synced by the thread that
    /// runs them (`RWF_DSYNC`), so a leader acknowledges its cohort without a thread hop.
    pub fn appenders_lead(&self) -> bool {
        self.appenders_lead
    }

    /// Whether the next `always` round may be written and synced on this thread.
    fn inline_possible(&self) -> bool {
        self.inline && self.cfg.fsync == FsyncPolicy::Always && self.in_flight.load(Acquire) == 0
    }

    /// Writes partition `i`'s staged round with `RWF_DSYNC`, then publishes and acknowledges
    /// it (or fails its appends). Returns false, having done nothing, where the kernel does
    /// not support `RWF_DSYNC`; inline writes are then off for good.
    fn write_inline(&mut self, i: usize) -> bool {
        let p = &mut self.parts[i];
        p.zero_ahead(self.cfg.segment_bytes);
        let round_bytes = p.round_len;
        let batches = p.round_bufs.len() as u64;
        let cohort = p.round_acks.len();
        let started = Instant::now();
        let fd = p.active.file.as_raw_fd();
        let result = if batches > 1 && round_bytes <= GATHER_MAX && round_bytes / batches <= GATHER_MAX_MEAN {
            // One vector instead of one per batch: copying 64 small batches here costs less
            // than the kernel's walk over 64 vectors (1-1.5 µs of a 48 µs `RWF_DSYNC` write
            // of 64 × 154 B measured on 2026-12-07).
            self.gather.clear();
            for b in &p.round_bufs {
                self.gather.extend_from_slice(b);
            }
            crate::io::pwritev_dsync(fd, p.position, &[&self.gather[..]])
        } else {
            crate::io::pwritev_dsync(fd, p.position, &p.round_bufs)
        };
        let took = started.elapsed();
        if matches!(result, Err(DsyncError::Unsupported)) {
            tracing::warn!("pwritev2(RWF_DSYNC) is unsupported here; fsync = always syncs on the flusher thread");
            self.inline = false;
            return false;
        }
        self.stats.rounds.fetch_add(1, Relaxed);
        self.stats.batches.fetch_add(batches, Relaxed);
        self.stats.bytes.fetch_add(round_bytes, Relaxed);
        self.stats.fsyncs.fetch_add(1, Relaxed);
        self.stats.sync_micros.fetch_add(took.as_micros() as u64, Relaxed);
        self.stats.sync_latency.observe(took);
        self.cohort.synced(took);
        self.cohort.gathered(cohort);
        self.last_inline = true;
        self.last_sync = Instant::now();
        match result {
            Ok(()) => {
                let item = p.written(true);
                p.unsynced = false;
                let _ = crate::flusher::finish_item(item, None);
            }
            Err(DsyncError::Space(e)) => p.fail_round(e),
            Err(DsyncError::Other(e)) => {
                // It may have been the sync that failed: the page cache can no longer be
                // trusted to match the disk, as after a failed fdatasync.
                p.shared.poison(format!("write with RWF_DSYNC to {} failed: {e}", p.active.path.display()));
                p.fail_round(e);
            }
            Err(DsyncError::Unsupported) => {}
        }
        true
    }

    /// Writes every staged batch and acknowledges, or queues for the flusher, by policy.
    fn write_round(&mut self) {
        if self.inline_possible() {
            let mut staged = self.parts.iter().enumerate().filter(|(_, p)| !p.round_bufs.is_empty());
            if let (Some((i, _)), None) = (staged.next(), staged.next()) {
                if self.write_inline(i) {
                    return;
                }
            }
        }
        let always = self.cfg.fsync == FsyncPolicy::Always;
        if always {
            for p in self.parts.iter_mut().filter(|p| !p.round_bufs.is_empty()) {
                p.zero_ahead(self.cfg.segment_bytes);
            }
        }
        let mut ops = Vec::new();
        let mut who = Vec::new();
        for (i, p) in self.parts.iter().enumerate() {
            if !p.round_bufs.is_empty() {
                ops.push(WriteOp {
                    fd: p.active.file.as_raw_fd(),
                    pos: p.position,
                    bufs: &p.round_bufs,
                    sync: false,
                    sync_len: 0,
                });
                who.push(i);
            }
        }
        if ops.is_empty() {
            return;
        }
        self.last_inline = false;
        let round_bytes: u64 = self.parts.iter().map(|p| p.round_len).sum();
        let batches: usize = ops.iter().map(|o| o.bufs.len()).sum();
        let results = self.backend.submit(&ops);
        drop(ops);
        self.stats.rounds.fetch_add(1, Relaxed);
        self.stats.batches.fetch_add(batches as u64, Relaxed);
        self.stats.bytes.fetch_add(round_bytes, Relaxed);
        self.unsynced_bytes += round_bytes;
        let mut job = SyncJob::default();
        for (i, r) in who.into_iter().zip(results) {
            let p = &mut self.parts[i];
            match r.write {
                Err(e) => p.fail_round(e),
                Ok(()) if always => {
                    job.items.push(p.written(true));
                    p.unsynced = false;
                }
                Ok(()) => {
                    let _ = p.written(false);
                    p.publish_now();
                }
            }
        }
        if !job.items.is_empty() {
            self.last_sync = Instant::now();
            self.unsynced_bytes = 0;
            self.send_job(job);
        }
    }

    /// Under `Interval` and `Bytes`, hands the flusher a sync of every unsynced partition
    /// when one is due.
    fn maybe_background_sync(&mut self) {
        let due = match self.cfg.fsync {
            FsyncPolicy::Interval(d) => self.last_sync.elapsed() >= d,
            FsyncPolicy::Bytes(n) => self.unsynced_bytes >= n || (self.local.is_empty() && self.queue.is_empty()),
            FsyncPolicy::Always | FsyncPolicy::Never => false,
        };
        if due {
            self.sync_unsynced(None);
        }
    }

    fn sync_unsynced(&mut self, done: Option<Sender<Result<()>>>) {
        let mut job = SyncJob { items: Vec::new(), done };
        for p in &mut self.parts {
            if p.unsynced {
                job.items.push(p.sync_item(Vec::new(), false));
                p.unsynced = false;
            }
        }
        self.last_sync = Instant::now();
        self.unsynced_bytes = 0;
        if !job.items.is_empty() || job.done.is_some() {
            self.send_job(job);
        }
    }

    fn retention_all(&mut self) {
        self.next_retention = Instant::now() + RETENTION_EVERY;
        let now = now_ms();
        for p in &mut self.parts {
            if let Err(e) = p.enforce_retention(&self.cfg, now) {
                tracing::warn!(partition = %p.shared.name, error = %e, "retention failed");
            }
        }
    }

    /// Handles a control command; returns true when the thread must exit.
    fn control(&mut self, c: Command) -> bool {
        match c {
            Command::Append { reply, .. } | Command::AppendSealed { reply, .. } => {
                let _ = reply.send(Err(LogError::Closed));
            }
            Command::Truncate { partition, to, reply } => {
                let result = if partition < self.parts.len() {
                    self.drain_flusher();
                    self.parts[partition].truncate(to)
                } else {
                    Err(LogError::UnknownPartition(partition.to_string()))
                };
                let _ = reply.send(result);
            }
            Command::AddPartition { writer, reply } => {
                self.parts.push(*writer);
                let _ = reply.send(self.parts.len() - 1);
            }
            Command::SetEpoch { partition, epoch } => {
                if let Some(p) = self.parts.get_mut(partition) {
                    p.epoch = epoch;
                }
            }
            Command::Retention { reply } => {
                let now = now_ms();
                let mut total = 0;
                let mut result = Ok(());
                for p in &mut self.parts {
                    match p.enforce_retention(&self.cfg, now) {
                        Ok(n) => total += n,
                        Err(e) => result = Err(e),
                    }
                }
                let _ = reply.send(result.map(|_| total));
            }
            Command::Flush { reply } => {
                // Everything written (and everything queued before it) is durable once the
                // flusher answers.
                for p in &mut self.parts {
                    p.unsynced = true;
                }
                self.sync_unsynced(Some(reply));
            }
            Command::Shutdown { reply } => {
                let r = self.shutdown();
                let _ = reply.send(r);
                return true;
            }
        }
        false
    }

    fn shutdown(&mut self) -> Result<()> {
        // Drain the flusher: every queued acknowledgement is answered before files close.
        self.drain_flusher();
        self.flusher.take();
        if let Some(t) = self.flusher_thread.take() {
            let _ = t.join();
        }
        let mut result = Ok(());
        for p in &mut self.parts {
            if let Err(e) = p.close() {
                tracing::error!(partition = %p.shared.name, error = %e, "clean close failed; the next open will recover");
                result = Err(e);
            }
            p.shared.mark_closed();
        }
        self.closed = true;
        // Close the queue: sends from now on fail with `Closed` at once instead of waiting
        // for a writer that is gone; what was queued is refused.
        let left = self.queue.close();
        self.local.extend(left);
        while let Some(c) = self.local.pop_front() {
            self.took_one();
            Self::refuse(c);
        }
        tracing::info!(backend = self.backend.name(), "log closed cleanly");
        result
    }
}
