//! `axle-log` is Axle's segmented write-ahead log. It owns partitions of records on disk:
//! the record-batch format with CRC32, segment files with sparse offset and time indexes,
//! the group-commit append path on io_uring (with a `pwritev` + `fdatasync` fallback),
//! durability policies, recovery of torn tails, retention, and readers that follow the tail.
//! For replication it also offers replica primitives (a high watermark gating readers,
//! whole-batch reads and sealed appends, truncation, leader-epoch queries; see `replica.rs`
//! and `docs/replication.md`), with no notion of clusters or nodes.
//! It must not know about MQTT, topics, sessions or streams: to this crate a partition is a
//! named directory of records with keys, values and headers, and nothing more.
//!
//! ```no_run
//! # async fn demo() -> axle_log::Result<()> {
//! use axle_log::{Log, LogConfig, Record};
//! let log = Log::open("./data/log", LogConfig::default())?;
//! let p = log.partition("telemetry-0")?;
//! let at = p.append(&[Record::new("hello")]).await?; // durable under the fsync policy
//! let back = p.read(at.base_offset, 10, 1 << 20)?;
//! assert_eq!(&back[0].value[..], b"hello");
//! log.close()?;
//! # Ok(()) }
//! ```

mod appender;
mod batch;
mod builder;
mod cohort;
mod config;
mod drive;
mod epochs;
mod error;
mod flusher;
mod index;
mod io;
mod keys;
mod latency;
mod memo;
mod partition;
mod queue;
mod reader;
mod record;
mod recovery;
mod replica;
mod segment;
mod truncate;
mod writer;

use std::collections::HashMap;
use std::fs;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::oneshot;

pub use batch::{
    decode_records, for_each_record, verify as verify_batch, BatchDefect, BatchHeader, EncodedBatch,
    HEADER_LEN as BATCH_HEADER_LEN,
};
pub use builder::BatchBuilder;
pub use config::{FsyncPolicy, IoBackendKind, LogConfig};
pub use error::{LogError, Result};
pub use latency::{LatencyHistogram, LatencySnapshot, BUCKET_BOUNDS_MICROS};
pub use memo::{Memo, MemoBatch};
pub use partition::{Bounds, KeyedRead};
pub use reader::{TailChunk, TailReader};
pub use record::{now_ms, Header, HeaderIter, Record, RecordView, StoredRecord};
pub use recovery::RecoveryReport;
pub use segment::Span;
pub use writer::{Appended, WriterStats};

use drive::Drive;
use partition::PartitionShared;
use writer::{Command, Writer};

/// A log: a directory of partitions sharing one writer thread and one configuration.
/// Cloning is cheap; the writer stops at [`Log::close`] or when every handle is dropped.
#[derive(Clone)]
pub struct Log {
    inner: Arc<LogInner>,
}

struct LogInner {
    dir: PathBuf,
    config: Arc<LogConfig>,
    drive: Arc<Drive>,
    partitions: Mutex<HashMap<String, Partition>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    backend: &'static str,
    stats: Arc<WriterStats>,
    reports: Mutex<HashMap<String, RecoveryReport>>,
    /// Held while the writer runs; released by `close` so the directory can be reopened.
    lock: Mutex<Option<fs::File>>,
}

/// A handle to one partition: append, read, follow. Cheap to clone.
#[derive(Clone)]
pub struct Partition {
    shared: Arc<PartitionShared>,
    index: usize,
    drive: Arc<Drive>,
    max_batch: usize,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

impl Log {
    /// Opens the log in `dir` (created if missing), recovering every partition in it, and
    /// starts the writer thread. Fails if another process holds the directory.
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<Log> {
        config.validate()?;
        // Calibrate the timestamp clock here rather than in a first append.
        let _ = crate::record::counter_clock();
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| LogError::io(&dir, e))?;
        let lock_path = dir.join(".lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| LogError::io(&lock_path, e))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(LogError::Config(format!(
                "{} is in use by another process (lock held on {})",
                dir.display(),
                lock_path.display()
            )));
        }
        let (backend, flush_backend) = io::select_pair(config.io_backend)?;
        let backend_name = match (backend.name(), flush_backend.name()) {
            ("io_uring", _) => "io_uring",
            (_, "io_uring") => "pwritev+io_uring-fsync",
            _ => "pwritev",
        };
        let config = Arc::new(config);
        let mut names = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| LogError::io(&dir, e))? {
            let entry = entry.map_err(|e| LogError::io(&dir, e))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if entry.path().is_dir() && valid_name(&name) {
                names.push(name);
            }
        }
        names.sort();
        let mut writers = Vec::new();
        let mut reports = HashMap::new();
        for name in &names {
            let (w, report) = recovery::open_partition(&dir.join(name), name, &config)?;
            log_report(name, &report);
            reports.insert(name.clone(), report);
            writers.push(w);
        }
        let queue = Arc::new(queue::CommandQueue::default());
        let stats = Arc::new(WriterStats::default());
        let shared: Vec<_> = writers.iter().map(|w| w.shared.clone()).collect();
        let writer = Writer::new(queue.clone(), backend, flush_backend, config.clone(), writers, stats.clone())
            .map_err(|e| LogError::io(&dir, e))?;
        let (drive, thread) = Drive::start(queue, writer).map_err(|e| LogError::io(&dir, e))?;
        let mut partitions = HashMap::new();
        for (i, sh) in shared.into_iter().enumerate() {
            partitions.insert(
                sh.name.clone(),
                Partition { shared: sh, index: i, drive: drive.clone(), max_batch: config.max_batch_bytes },
            );
        }
        let recovered = reports.values().filter(|r| !r.clean).count();
        if names.is_empty() {
            tracing::info!(dir = %dir.display(), backend = backend_name, "log opened (empty)");
        } else if recovered == 0 {
            tracing::info!(dir = %dir.display(), backend = backend_name, partitions = names.len(), "log opened; previous shutdown was clean, no recovery needed");
        } else {
            tracing::warn!(dir = %dir.display(), backend = backend_name, partitions = names.len(), recovered, "log opened after an unclean shutdown; partitions recovered");
        }
        Ok(Log {
            inner: Arc::new(LogInner {
                dir,
                config,
                drive,
                partitions: Mutex::new(partitions),
                thread: Mutex::new(Some(thread)),
                backend: backend_name,
                stats,
                reports: Mutex::new(reports),
                lock: Mutex::new(Some(lock)),
            }),
        })
    }

    /// The partition named `name`, created if it does not exist.
    pub fn partition(&self, name: &str) -> Result<Partition> {
        if !valid_name(name) {
            return Err(LogError::InvalidPartitionName(name.to_string()));
        }
        let mut parts = self.inner.partitions.lock();
        if let Some(p) = parts.get(name) {
            return Ok(p.clone());
        }
        let (w, report) = recovery::open_partition(&self.inner.dir.join(name), name, &self.inner.config)?;
        let shared = w.shared.clone();
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.inner.drive.send(Command::AddPartition { writer: Box::new(w), reply })?;
        let index = rx.recv().map_err(|_| LogError::Closed)?;
        self.inner.reports.lock().insert(name.to_string(), report);
        let p =
            Partition { shared, index, drive: self.inner.drive.clone(), max_batch: self.inner.config.max_batch_bytes };
        parts.insert(name.to_string(), p.clone());
        Ok(p)
    }

    /// The partition named `name` if it exists.
    pub fn get(&self, name: &str) -> Option<Partition> {
        self.inner.partitions.lock().get(name).cloned()
    }

    /// Names of all partitions, sorted.
    pub fn partition_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inner.partitions.lock().keys().cloned().collect();
        v.sort();
        v
    }

    /// What recovery found when each partition was opened.
    pub fn recovery_report(&self, name: &str) -> Option<RecoveryReport> {
        self.inner.reports.lock().get(name).cloned()
    }

    /// `"io_uring"` (writes and syncs), `"pwritev+io_uring-fsync"` (the `Auto` choice where
    /// io_uring works) or `"pwritev"` (the fallback).
    pub fn io_backend(&self) -> &'static str {
        self.inner.backend
    }

    /// Write-path counters (rounds, batches, bytes, fsyncs).
    pub fn stats(&self) -> &WriterStats {
        &self.inner.stats
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.inner.config
    }

    /// Forces an `fdatasync` of everything written and acknowledges it.
    pub fn flush(&self) -> Result<()> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.inner.drive.send(Command::Flush { reply })?;
        rx.recv().map_err(|_| LogError::Closed)?
    }

    /// Applies the retention limits now; returns how many segments were deleted.
    pub fn enforce_retention(&self) -> Result<usize> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.inner.drive.send(Command::Retention { reply })?;
        rx.recv().map_err(|_| LogError::Closed)?
    }

    /// Flushes, writes indexes and a clean checkpoint, and stops the writer. Appends after
    /// this fail with `Closed`. Calling it twice is harmless.
    pub fn close(&self) -> Result<()> {
        let Some(thread) = self.inner.thread.lock().take() else {
            return Ok(());
        };
        let (reply, rx) = crossbeam_channel::bounded(1);
        let result = match self.inner.drive.send(Command::Shutdown { reply }) {
            Ok(()) => rx.recv().unwrap_or(Err(LogError::Closed)),
            Err(_) => Err(LogError::Closed),
        };
        let _ = thread.join();
        self.inner.lock.lock().take();
        result
    }
}

impl Drop for LogInner {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.lock().take() {
            let (reply, rx) = crossbeam_channel::bounded(1);
            if self.drive.send(Command::Shutdown { reply }).is_ok() {
                let _ = rx.recv();
            }
            let _ = thread.join();
        }
    }
}

fn log_report(name: &str, r: &RecoveryReport) {
    if r.clean {
        tracing::debug!(partition = name, "clean shutdown detected; no recovery needed");
    } else {
        tracing::info!(
            partition = name,
            bytes_scanned = r.bytes_scanned,
            bytes_truncated = r.bytes_truncated,
            indexes_rebuilt = r.indexes_rebuilt,
            segments_removed = r.segments_removed,
            "recovered partition"
        );
    }
}

/// An append already queued to the writer; resolves with its acknowledgement.
///
/// Under `fsync = always` the first poll may make this append the leader that runs the next
/// round on the polling thread (see `drive.rs`): it then yields while the cohort gathers,
/// for at most about one sync, and blocks the thread for the write and sync.
pub struct PendingAppend {
    rx: oneshot::Receiver<Result<Appended>>,
    lead: Lead,
}

/// Whether a [`PendingAppend`] runs a round.
enum Lead {
    /// Not polled yet: will try to lead.
    Untried(Arc<Drive>),
    /// Leads: gathers the cohort until the instant, then runs the round.
    Gathering(Arc<Drive>, Instant),
    /// Only waits.
    Waiting,
}

impl PendingAppend {
    fn new(rx: oneshot::Receiver<Result<Appended>>, drive: &Arc<Drive>) -> Self {
        let lead = if drive.by_appenders() { Lead::Untried(drive.clone()) } else { Lead::Waiting };
        PendingAppend { rx, lead }
    }
}

impl std::future::Future for PendingAppend {
    type Output = Result<Appended>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let this = &mut *self;
        match std::mem::replace(&mut this.lead, Lead::Waiting) {
            Lead::Untried(drive) => {
                if drive.try_lead() {
                    // Yield once in any case: the appenders the last round acknowledged
                    // may be queued behind this task on this thread, not yet re-appended.
                    let until = drive.cohort_wait().unwrap_or_else(Instant::now);
                    this.lead = Lead::Gathering(drive, until);
                    cx.waker().wake_by_ref();
                    return std::task::Poll::Pending;
                }
            }
            Lead::Gathering(drive, until) => {
                if Instant::now() < until && drive.cohort_wait().is_some() {
                    // Let the appenders just acknowledged run and re-append first.
                    this.lead = Lead::Gathering(drive, until);
                    cx.waker().wake_by_ref();
                    return std::task::Poll::Pending;
                }
                // Steps down even if the round panics: a leader left standing would keep
                // every later round on the writer thread's watch.
                let _down = StepDown(&drive);
                drive.run_queued(1);
            }
            Lead::Waiting => {}
        }
        std::pin::Pin::new(&mut this.rx).poll(cx).map(|r| r.unwrap_or(Err(LogError::Closed)))
    }
}

/// Steps its leader down when dropped.
struct StepDown<'a>(&'a Drive);

impl Drop for StepDown<'_> {
    fn drop(&mut self) {
        self.0.step_down();
    }
}

impl Drop for PendingAppend {
    fn drop(&mut self) {
        // Dropped while leading: hand the queue to the writer thread.
        if let Lead::Gathering(drive, _) = &self.lead {
            drive.step_down();
        }
    }
}

impl Partition {
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    fn submit(&self, records: &[Record], memo: Option<Memo>) -> Result<oneshot::Receiver<Result<Appended>>> {
        if records.is_empty() {
            return Err(LogError::EmptyAppend);
        }
        self.submit_encoded(EncodedBatch::encode(records), memo)
    }

    fn submit_encoded(&self, batch: EncodedBatch, memo: Option<Memo>) -> Result<oneshot::Receiver<Result<Appended>>> {
        if batch.len() > self.max_batch {
            return Err(LogError::BatchTooLarge { size: batch.len(), max: self.max_batch });
        }
        let (reply, rx) = oneshot::channel();
        self.drive.send_append(Command::Append { partition: self.index, batch, memo, reply })?;
        Ok(rx)
    }

    /// Submits `records` as one batch now (so appends submitted one after another keep their
    /// order) and returns a future for its acknowledgement. Encoding and queueing happen
    /// before this returns; the future only waits.
    pub fn append_start(&self, records: &[Record]) -> Result<PendingAppend> {
        Ok(PendingAppend::new(self.submit(records, None)?, &self.drive))
    }

    /// [`Partition::append_start`] that also files `memo`, the caller's in-memory form of
    /// `records`, in the partition's memo tail: the [`TailReader`] that reaches the batch
    /// first with [`TailReader::next_chunk`] takes the memo instead of reading the records
    /// back. The log never looks inside it; `memo.rs` has the rules and bounds.
    pub fn append_start_with(&self, records: &[Record], memo: Memo) -> Result<PendingAppend> {
        Ok(PendingAppend::new(self.submit(records, Some(memo))?, &self.drive))
    }

    /// [`Partition::append_start`] of a batch built record by record (see [`BatchBuilder`]),
    /// with an optional memo as for [`Partition::append_start_with`]. An empty builder is
    /// [`LogError::EmptyAppend`].
    pub fn append_built_start(&self, batch: BatchBuilder, memo: Option<Memo>) -> Result<PendingAppend> {
        let batch = batch.finish().ok_or(LogError::EmptyAppend)?;
        Ok(PendingAppend::new(self.submit_encoded(batch, memo)?, &self.drive))
    }

    /// Appends `records` as one batch. Resolves once the batch is durable under the fsync
    /// policy (and visible to readers), with the offsets it got.
    pub async fn append(&self, records: &[Record]) -> Result<Appended> {
        self.append_start(records)?.await
    }

    /// [`Partition::append`] for threads outside an async runtime.
    pub fn append_blocking(&self, records: &[Record]) -> Result<Appended> {
        let pending = self.append_start(records)?;
        self.drive.nudge();
        futures::executor::block_on(pending)
    }

    /// Records from `offset` on; see [`Bounds`] for the readable range. At most `max_records`
    /// records, and stops once keys and values reach `max_bytes` (at least one is returned).
    pub fn read(&self, offset: u64, max_records: usize, max_bytes: usize) -> Result<Vec<StoredRecord>> {
        self.shared.read(offset, max_records, max_bytes)
    }

    /// [`Partition::read`] that hands each record to `f` as a [`RecordView`] borrowed from
    /// the read buffer, and returns what `f` made of them: no record is built unless `f`
    /// builds it. Limits count every record read, whatever `f` returns. On an error nothing
    /// is returned, although `f` may have seen some records. Every record handed to `f` is
    /// fully validated; records of a batch past the last one needed are not parsed (its CRC
    /// was checked), so a read that stops early does not report a defect further on.
    pub fn read_map<T>(
        &self,
        offset: u64,
        max_records: usize,
        max_bytes: usize,
        f: impl FnMut(RecordView<'_>) -> T,
    ) -> Result<Vec<T>> {
        self.shared.read_map(offset, max_records, max_bytes, f)
    }

    /// Whole record batches as stored (format: `docs/log-format.md`), in one buffer read with
    /// one `pread`: from the batch holding `offset`, all below the high watermark and within
    /// one segment; the first always, then more while they fit in `max_bytes` (bytes of batch
    /// data). `None` at the visible end. Every batch's CRC has been verified.
    pub fn read_committed_span(&self, offset: u64, max_bytes: usize) -> Result<Option<Span>> {
        self.shared.read_committed_span(offset, max_bytes)
    }

    /// Records whose key is `key` from `offset` on, reading only the batches the key index
    /// lists for it; see [`KeyedRead`] for where to continue.
    pub fn read_key(&self, key: &[u8], offset: u64, max_records: usize, max_bytes: usize) -> Result<KeyedRead> {
        self.shared.read_key(key, offset, max_records, max_bytes)
    }

    /// Base offsets of the batches at or after `offset` that may hold records with `key`
    /// (from the key index; hash collisions included). Cheap: reads no record data.
    pub fn key_batch_offsets(&self, key: &[u8], offset: u64) -> Result<Vec<u64>> {
        self.shared.key_batch_offsets(key, offset)
    }

    /// The first offset with a timestamp `>= ts_ms` (ms since the Unix epoch), if any.
    pub fn offset_for_timestamp(&self, ts_ms: i64) -> Result<Option<u64>> {
        self.shared.offset_for_timestamp(ts_ms)
    }

    pub fn bounds(&self) -> Bounds {
        self.shared.bounds()
    }

    /// A reader that follows the partition from `from`.
    pub fn tail(&self, from: u64) -> TailReader {
        TailReader::new(self.clone(), from)
    }

    /// Sets the leader epoch stamped on later batches (appends queued after this call get it;
    /// sealed appends keep their own).
    pub fn set_leader_epoch(&self, epoch: u32) -> Result<()> {
        self.drive.send(Command::SetEpoch { partition: self.index, epoch })
    }

    /// Bytes of readable data.
    pub fn size_bytes(&self) -> u64 {
        self.shared.size_bytes()
    }

    pub fn segment_count(&self) -> usize {
        self.shared.segment_count()
    }

    /// A future that resolves once the partition's end moves past `offset`.
    pub async fn wait_past(&self, offset: u64) -> Result<()> {
        let mut rx = self.shared.subscribe();
        loop {
            if *rx.borrow_and_update() > offset {
                return Ok(());
            }
            if self.shared.is_closed() {
                return Err(LogError::Closed);
            }
            rx.changed().await.map_err(|_| LogError::Closed)?;
        }
    }
}
