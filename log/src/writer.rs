//! The writer thread: it owns the write side of every partition of a log and runs group
//! commit.
//!
//! A round: take the first queued command (or wake for a due interval sync), gather every
//! append queued behind it, stamp offsets, write each partition's batches with one vectored
//! write, `fdatasync` as the policy says, then acknowledge. Appends that arrive while a round
//! is on disk wait in the channel and make up the next round, so one `fdatasync` carries every
//! waiting append. When the policy syncs every round, the writer also waits briefly (bounded
//! by a fraction of the measured sync latency) for as many appends as the previous round
//! acknowledged, because those callers typically come straight back with their next append.
//!
//! Invariants:
//! - Offsets are assigned only here, in channel order per partition, with no gaps.
//! - A failed write assigns nothing: `next_offset` and the file position roll back and the
//!   bytes past the position are cut off, so a later round rewrites the same place.
//! - A failed `fdatasync` poisons the partition (the page cache state is unknown afterwards).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use tokio::sync::oneshot;

use crate::batch::EncodedBatch;
use crate::config::{FsyncPolicy, LogConfig};
use crate::error::{LogError, Result};
use crate::io::{Backend, WriteOp};
use crate::partition::PartitionShared;
use crate::record::now_ms;
use crate::recovery::Checkpoint;
use crate::segment::Segment;

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the first record.
    pub base_offset: u64,
    /// Offset of the last record.
    pub last_offset: u64,
}

/// Messages to the writer thread.
pub enum Command {
    Append {
        partition: usize,
        batch: EncodedBatch,
        reply: oneshot::Sender<Result<Appended>>,
    },
    AddPartition {
        writer: Box<PartitionWriter>,
        reply: crossbeam_channel::Sender<usize>,
    },
    SetEpoch {
        partition: usize,
        epoch: u32,
    },
    Retention {
        reply: crossbeam_channel::Sender<Result<usize>>,
    },
    Flush {
        reply: crossbeam_channel::Sender<Result<()>>,
    },
    Shutdown {
        reply: crossbeam_channel::Sender<Result<()>>,
    },
}

struct Ack {
    reply: oneshot::Sender<Result<Appended>>,
    appended: Appended,
}

/// The write side of one partition. Lives on the writer thread.
pub struct PartitionWriter {
    pub shared: Arc<PartitionShared>,
    active: Arc<Segment>,
    /// Bytes written to the active segment (durable or not).
    position: u64,
    /// Offset the next record gets.
    next_offset: u64,
    epoch: u32,
    preallocated: bool,
    /// Written, not yet fsynced, and so not yet visible.
    unsynced: bool,
    poisoned: Option<String>,
    round_bufs: Vec<Bytes>,
    round_acks: Vec<Ack>,
    /// (rel offset, position, length, first ts, max ts) of each staged batch.
    round_index: Vec<(u32, u32, u32, i64, i64)>,
    round_len: u64,
    waiting: Vec<Ack>,
}

impl PartitionWriter {
    pub fn new(
        shared: Arc<PartitionShared>,
        active: Arc<Segment>,
        position: u64,
        next_offset: u64,
        epoch: u32,
        preallocated: bool,
    ) -> Self {
        PartitionWriter {
            shared,
            active,
            position,
            next_offset,
            epoch,
            preallocated,
            unsynced: false,
            poisoned: None,
            round_bufs: Vec::new(),
            round_acks: Vec::new(),
            round_index: Vec::new(),
            round_len: 0,
            waiting: Vec::new(),
        }
    }

    fn name(&self) -> &str {
        &self.shared.name
    }

    fn needs_roll(&self, cfg: &LogConfig, now: i64) -> bool {
        if self.position == 0 {
            return false;
        }
        if self.position >= cfg.segment_bytes {
            return true;
        }
        let first = self.active.index.read().first_timestamp();
        first.is_some_and(|t| now.saturating_sub(t) >= cfg.segment_max_age.as_millis() as i64)
    }

    /// Makes everything written so far visible and acknowledges it.
    fn publish(&mut self) {
        self.active.commit(self.position, self.next_offset);
        self.shared.publish_end(self.next_offset);
        self.unsynced = false;
        for ack in self.waiting.drain(..).chain(self.round_acks.drain(..)) {
            let _ = ack.reply.send(Ok(ack.appended));
        }
    }

    fn poison(&mut self, reason: String) {
        tracing::error!(partition = %self.shared.name, %reason, "fdatasync failed; the partition refuses further writes");
        for ack in self.waiting.drain(..).chain(self.round_acks.drain(..)) {
            let _ = ack.reply.send(Err(LogError::Poisoned {
                partition: self.shared.name.clone(),
                reason: reason.clone(),
            }));
        }
        self.poisoned = Some(reason);
    }

    /// Cuts off a failed round and fails its appends.
    fn fail_round(&mut self, err: std::io::Error) {
        let first = self.round_acks.first().map(|a| a.appended.base_offset);
        if let Some(first) = first {
            self.next_offset = first;
        }
        self.round_bufs.clear();
        self.round_index.clear();
        self.round_len = 0;
        // Drop whatever part of the round reached the file; preallocation is lost with it.
        if self.active.file.set_len(self.position).is_ok() {
            self.preallocated = false;
        }
        let path = self.active.path.clone();
        tracing::warn!(partition = %self.shared.name, error = %err, "append write failed; nothing was acknowledged");
        let kind = err.kind();
        let raw = err.raw_os_error();
        for ack in self.round_acks.drain(..) {
            let e = match raw {
                Some(code) => std::io::Error::from_raw_os_error(code),
                None => std::io::Error::from(kind),
            };
            let _ = ack.reply.send(Err(LogError::io(&path, e)));
        }
    }

    /// Closes the active segment and opens a new one at `next_offset`.
    fn roll(&mut self, cfg: &LogConfig) -> Result<()> {
        let prealloc = cfg.preallocate.then_some(cfg.segment_bytes);
        let (seg, preallocated) = Segment::create(
            &self.shared.dir,
            self.next_offset,
            cfg.index_interval_bytes,
            prealloc,
        )?;
        let old = self.active.clone();
        let len = self.position;
        let finish = || -> std::io::Result<()> {
            old.file.set_len(len)?;
            old.file.sync_all()?;
            Ok(())
        };
        if let Err(e) = finish() {
            let _ = std::fs::remove_file(&seg.path);
            if self.unsynced {
                self.poison(format!("sync before segment roll: {e}"));
            }
            return Err(LogError::io(&old.path, e));
        }
        if self.unsynced {
            self.publish();
        }
        if let Err(e) = old.index.read().persist(&old.path, old.base_offset, len) {
            // The index is rebuilt on the next open; losing it costs only time.
            tracing::warn!(path = %old.path.display(), error = %e, "could not write index files");
        }
        let seg = Arc::new(seg);
        self.shared.segments.write().push(seg.clone());
        self.active = seg;
        self.position = 0;
        self.preallocated = preallocated;
        Checkpoint::write(
            &self.shared.dir,
            &Checkpoint {
                segment: self.active.base_offset,
                position: 0,
                next_offset: self.next_offset,
                epoch: self.epoch,
                clean: false,
            },
        )?;
        tracing::debug!(partition = %self.shared.name, base = self.next_offset, "rolled segment");
        Ok(())
    }

    /// Stages one append into this round.
    fn stage(
        &mut self,
        batch: EncodedBatch,
        reply: oneshot::Sender<Result<Appended>>,
        cfg: &LogConfig,
        now: i64,
    ) {
        if let Some(reason) = &self.poisoned {
            let _ = reply.send(Err(LogError::Poisoned {
                partition: self.shared.name.clone(),
                reason: reason.clone(),
            }));
            return;
        }
        if self.round_bufs.is_empty() && self.needs_roll(cfg, now) {
            if let Err(e) = self.roll(cfg) {
                let _ = reply.send(Err(e));
                return;
            }
        }
        let base = self.next_offset;
        let count = batch.record_count;
        let rel = (base - self.active.base_offset) as u32;
        let pos = (self.position + self.round_len) as u32;
        let len = batch.len() as u32;
        self.round_index
            .push((rel, pos, len, batch.first_timestamp, batch.max_timestamp));
        self.round_bufs.push(batch.seal(base, self.epoch));
        self.round_len += u64::from(len);
        self.next_offset += u64::from(count);
        self.round_acks.push(Ack {
            reply,
            appended: Appended {
                base_offset: base,
                last_offset: base + u64::from(count) - 1,
            },
        });
    }

    /// Bookkeeping after the round's bytes are in the file.
    fn written(&mut self) {
        {
            let mut idx = self.active.index.write();
            for (rel, pos, len, first, max) in self.round_index.drain(..) {
                idx.on_batch(rel, pos, len, first, max);
            }
        }
        self.position += self.round_len;
        self.round_len = 0;
        self.round_bufs.clear();
        self.unsynced = true;
    }

    /// Clean shutdown: everything synced, active segment cut to its data, indexes written,
    /// checkpoint marked clean.
    fn close(&mut self) -> Result<()> {
        if self.poisoned.is_some() {
            return Ok(());
        }
        let seg = &self.active;
        seg.file
            .set_len(self.position)
            .map_err(|e| LogError::io(&seg.path, e))?;
        seg.file
            .sync_all()
            .map_err(|e| LogError::io(&seg.path, e))?;
        if self.unsynced {
            self.publish();
        }
        let seg = &self.active;
        seg.index
            .read()
            .persist(&seg.path, seg.base_offset, self.position)
            .map_err(|e| LogError::io(&seg.path, e))?;
        Checkpoint::write(
            &self.shared.dir,
            &Checkpoint {
                segment: seg.base_offset,
                position: self.position,
                next_offset: self.next_offset,
                epoch: self.epoch,
                clean: true,
            },
        )
    }

    /// Deletes whole segments past the retention limits; returns how many.
    fn enforce_retention(&mut self, cfg: &LogConfig, now: i64) -> Result<usize> {
        let segments = self.shared.segments.read().clone();
        let total: u64 = segments.iter().map(|s| s.committed_len()).sum();
        let mut remaining = total;
        let mut drop_count = 0;
        for seg in &segments[..segments.len().saturating_sub(1)] {
            let too_big = cfg.retention_bytes.is_some_and(|max| remaining > max);
            let too_old = cfg.retention_age.is_some_and(|age| {
                seg.index
                    .read()
                    .max_timestamp()
                    .is_none_or(|ts| now.saturating_sub(ts) > age.as_millis() as i64)
            });
            if !(too_big || too_old) {
                break;
            }
            remaining -= seg.committed_len();
            drop_count += 1;
        }
        if drop_count == 0 {
            return Ok(0);
        }
        let removed: Vec<Arc<Segment>> = {
            let mut segs = self.shared.segments.write();
            let removed = segs.drain(..drop_count).collect();
            self.shared.set_log_start(segs[0].base_offset);
            removed
        };
        for seg in &removed {
            seg.deleted
                .store(true, std::sync::atomic::Ordering::Release);
            for ext in ["log", "index", "timeindex"] {
                let p = seg.path.with_extension(ext);
                if let Err(e) = std::fs::remove_file(&p) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        return Err(LogError::io(&p, e));
                    }
                }
            }
        }
        crate::segment::sync_dir(&self.shared.dir)?;
        tracing::info!(partition = %self.name(), segments = drop_count, log_start = self.shared.bounds().log_start, "retention deleted segments");
        Ok(drop_count)
    }
}

/// The writer thread's state.
pub struct Writer {
    rx: Receiver<Command>,
    backend: Box<dyn Backend>,
    cfg: Arc<LogConfig>,
    parts: Vec<PartitionWriter>,
    last_sync: Instant,
    unsynced_bytes: u64,
    last_round_appends: usize,
    /// Moving average of recent `fdatasync` round latencies.
    sync_ewma: Duration,
    next_retention: Instant,
}

const RETENTION_EVERY: Duration = Duration::from_secs(30);
/// Longest pause between two arrivals while gathering a round.
const GATHER_GAP: Duration = Duration::from_micros(60);

impl Writer {
    pub fn new(
        rx: Receiver<Command>,
        backend: Box<dyn Backend>,
        cfg: Arc<LogConfig>,
        parts: Vec<PartitionWriter>,
    ) -> Self {
        Writer {
            rx,
            backend,
            cfg,
            parts,
            last_sync: Instant::now(),
            unsynced_bytes: 0,
            last_round_appends: 0,
            sync_ewma: Duration::from_micros(500),
            next_retention: Instant::now() + RETENTION_EVERY,
        }
    }

    fn any_unsynced(&self) -> bool {
        self.parts.iter().any(|p| p.unsynced)
    }

    /// Runs until shutdown or until every sender is gone.
    pub fn run(mut self) {
        loop {
            let deadline = match self.cfg.fsync {
                FsyncPolicy::Interval(d) if self.any_unsynced() => {
                    (self.last_sync + d).min(self.next_retention)
                }
                _ => self.next_retention,
            };
            let first = match self.rx.recv_deadline(deadline) {
                Ok(c) => c,
                Err(RecvTimeoutError::Timeout) => {
                    if self.any_unsynced() && matches!(self.cfg.fsync, FsyncPolicy::Interval(_)) {
                        self.write_round(true);
                    }
                    if Instant::now() >= self.next_retention {
                        self.retention_all();
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.shutdown();
                    return;
                }
            };
            let mut controls = Vec::new();
            let mut appends = 0usize;
            let mut bytes = 0usize;
            let now = now_ms();
            self.take(first, &mut controls, &mut appends, &mut bytes, now);
            loop {
                if bytes >= self.cfg.max_round_bytes {
                    break;
                }
                match self.rx.try_recv() {
                    Ok(c) => self.take(c, &mut controls, &mut appends, &mut bytes, now),
                    Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
                }
            }
            if self.syncs_every_round()
                && appends > 0
                && appends < self.last_round_appends
                && controls.is_empty()
            {
                let budget = (self.sync_ewma / 4)
                    .clamp(Duration::from_micros(20), Duration::from_micros(500));
                let until = Instant::now() + budget;
                while appends < self.last_round_appends && bytes < self.cfg.max_round_bytes {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match self.rx.recv_timeout(left.min(GATHER_GAP)) {
                        Ok(c) => {
                            let is_append = matches!(c, Command::Append { .. });
                            self.take(c, &mut controls, &mut appends, &mut bytes, now);
                            if !is_append {
                                break;
                            }
                        }
                        Err(_) => break,
                    }
                }
            }
            if appends > 0 {
                let sync = self.round_wants_sync(bytes);
                self.write_round(sync);
                self.last_round_appends = appends;
            }
            for c in controls {
                if self.control(c) {
                    return;
                }
            }
            if Instant::now() >= self.next_retention {
                self.retention_all();
            }
        }
    }

    fn take(
        &mut self,
        c: Command,
        controls: &mut Vec<Command>,
        appends: &mut usize,
        bytes: &mut usize,
        now: i64,
    ) {
        match c {
            Command::Append {
                partition,
                batch,
                reply,
            } => {
                *bytes += batch.len();
                *appends += 1;
                match self.parts.get_mut(partition) {
                    Some(p) => p.stage(batch, reply, &self.cfg, now),
                    None => {
                        let _ = reply.send(Err(LogError::UnknownPartition(partition.to_string())));
                    }
                }
            }
            other => controls.push(other),
        }
    }

    fn syncs_every_round(&self) -> bool {
        matches!(self.cfg.fsync, FsyncPolicy::Always | FsyncPolicy::Bytes(_))
    }

    fn round_wants_sync(&self, round_bytes: usize) -> bool {
        match self.cfg.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::Never => false,
            FsyncPolicy::Bytes(n) => {
                self.unsynced_bytes + round_bytes as u64 >= n || self.rx.is_empty()
            }
            FsyncPolicy::Interval(d) => self.last_sync.elapsed() >= d,
        }
    }

    /// Writes every staged batch, syncing if `sync`, and acknowledges what the policy allows.
    fn write_round(&mut self, sync: bool) {
        let mut ops = Vec::new();
        let mut who = Vec::new();
        for (i, p) in self.parts.iter().enumerate() {
            if p.poisoned.is_some() {
                continue;
            }
            if !p.round_bufs.is_empty() || (sync && p.unsynced) {
                ops.push(WriteOp {
                    fd: std::os::unix::io::AsRawFd::as_raw_fd(&p.active.file),
                    pos: p.position,
                    bufs: &p.round_bufs,
                    sync,
                });
                who.push(i);
            }
        }
        if ops.is_empty() {
            return;
        }
        let round_bytes: u64 = self.parts.iter().map(|p| p.round_len).sum();
        let started = Instant::now();
        let results = self.backend.submit(&ops);
        drop(ops);
        if sync {
            let took = started.elapsed();
            self.sync_ewma = (self.sync_ewma * 7 + took) / 8;
            self.last_sync = Instant::now();
            self.unsynced_bytes = 0;
        } else {
            self.unsynced_bytes += round_bytes;
        }
        for (i, r) in who.into_iter().zip(results) {
            let p = &mut self.parts[i];
            match r.write {
                Err(e) => p.fail_round(e),
                Ok(()) => {
                    let had_data = !p.round_bufs.is_empty();
                    if had_data {
                        p.written();
                    }
                    match r.sync {
                        Some(Ok(())) => p.publish(),
                        Some(Err(e)) => p.poison(e.to_string()),
                        None if self.cfg.fsync == FsyncPolicy::Never => p.publish(),
                        None => {
                            let acks: Vec<Ack> = p.round_acks.drain(..).collect();
                            p.waiting.extend(acks);
                        }
                    }
                }
            }
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
            Command::Append { .. } => unreachable_append(),
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
                self.write_round(true);
                let err = self.parts.iter().find_map(|p| {
                    p.poisoned.as_ref().map(|r| LogError::Poisoned {
                        partition: p.shared.name.clone(),
                        reason: r.clone(),
                    })
                });
                let _ = reply.send(err.map_or(Ok(()), Err));
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
        self.write_round(true);
        let mut result = Ok(());
        for p in &mut self.parts {
            if let Err(e) = p.close() {
                tracing::error!(partition = %p.shared.name, error = %e, "clean close failed; the next open will recover");
                result = Err(e);
            }
            p.shared.mark_closed();
        }
        // Fail whatever is still queued.
        while let Ok(c) = self.rx.try_recv() {
            if let Command::Append { reply, .. } = c {
                let _ = reply.send(Err(LogError::Closed));
            }
        }
        tracing::info!(backend = self.backend.name(), "log closed cleanly");
        result
    }
}

fn unreachable_append() {
    tracing::error!("append routed to the control path; this is a bug");
}
