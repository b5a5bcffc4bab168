//! The replica primitives of a partition (the "Log primitives" of `docs/replication.md`):
//! a high watermark gating readers, whole-batch reads for followers, appends of batches
//! another node sealed, truncation, and the leader-epoch queries. The log knows nothing of
//! clusters: these are the mechanisms; `axle-engine` decides when to use them.

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::batch::{self, BatchHeader};
use crate::error::{LogError, Result};
use crate::writer::{Appended, Command};
use crate::{Partition, PendingAppend};

/// Largest total of one sealed append: positions in a segment are 32-bit, and a segment
/// holds at most 1 GiB before it rolls.
const MAX_SEALED_BYTES: usize = 1 << 30;

/// A batch sealed by another node, validated: its bytes exactly as received.
#[derive(Debug)]
pub struct SealedBatch {
    pub bytes: Bytes,
    pub header: BatchHeader,
    /// Distinct `key_hash`es of its records' keys, for the key index.
    pub key_hashes: Vec<u32>,
}

impl Partition {
    /// Puts the partition under a high watermark: from now on the reader-visible end (what
    /// [`Partition::bounds`], the reads, [`Partition::tail`] readers and
    /// [`Partition::wait_past`] see) is `min(log_end, hw)`. The first call may lower the
    /// visible end; later calls act as [`Partition::set_high_watermark`]. A partition never
    /// put under one keeps the visible end at `log_end`, at no cost.
    pub fn enable_high_watermark(&self, hw: u64) {
        self.shared.enable_high_watermark(hw);
    }

    /// Raises the high watermark to `hw` (a lower value is ignored; only
    /// [`Partition::truncate`] lowers it). A value past `log_end` is remembered: readers see
    /// `min(log_end, hw)` as the durable end grows. Wakes tail readers and `wait_past`
    /// waiters when the visible end grows. No effect on readers before
    /// [`Partition::enable_high_watermark`].
    pub fn set_high_watermark(&self, hw: u64) {
        self.shared.set_high_watermark(hw);
    }

    /// The effective high watermark, `min(requested, log_end)`; `log_end` when the partition
    /// is not under a high watermark.
    pub fn high_watermark(&self) -> u64 {
        self.shared.high_watermark()
    }

    /// The durable end, the LEO: the offset after the last record durable under the fsync
    /// policy, whatever the high watermark.
    pub fn log_end(&self) -> u64 {
        self.shared.log_end()
    }

    /// Whole sealed batches exactly as stored (header included), for followers: starting
    /// with the batch that holds `offset`, up to `log_end` (not gated by the high
    /// watermark). At least one batch if any exists at or after `offset`, then more while
    /// their total stays within `max_bytes`. `offset == log_end` returns nothing; outside
    /// `log_start..=log_end` is `OffsetOutOfRange`.
    pub fn read_batches(&self, offset: u64, max_bytes: usize) -> Result<Vec<Bytes>> {
        self.shared.read_batches(offset, max_bytes)
    }

    /// Validates `batches` (magic, length, version, CRC, records and their count, and that
    /// each continues the previous one) and queues them to the writer, which checks that the
    /// first starts at the partition's next offset (`log_end` once earlier appends are
    /// durable). On any violation nothing is written: `CorruptBatch` (its `position` is the
    /// byte offset of the bad batch within `batches`), `NotContiguous`, `BatchTooLarge` or
    /// `EmptyAppend`.
    pub fn append_sealed_start(&self, batches: Vec<Bytes>) -> Result<PendingAppend> {
        let batches = self.validate_sealed(batches)?;
        let (reply, rx) = oneshot::channel();
        self.drive.send_append(Command::AppendSealed { partition: self.index, batches, reply })?;
        Ok(PendingAppend::new(rx, &self.drive))
    }

    /// Appends batches sealed by another node, keeping their base offsets and leader epochs
    /// byte for byte (see [`Partition::append_sealed_start`] for the checks). Indexes are
    /// updated as for [`Partition::append`], and it resolves once the batches are durable
    /// under the fsync policy, with their offsets and the last batch's epoch. The epoch this
    /// node stamps on its own appends is not changed.
    pub async fn append_sealed(&self, batches: Vec<Bytes>) -> Result<Appended> {
        self.append_sealed_start(batches)?.await
    }

    /// [`Partition::append_sealed`] for threads outside an async runtime.
    pub fn append_sealed_blocking(&self, batches: Vec<Bytes>) -> Result<Appended> {
        let pending = self.append_sealed_start(batches)?;
        self.drive.nudge();
        futures::executor::block_on(pending)
    }

    fn validate_sealed(&self, batches: Vec<Bytes>) -> Result<Vec<SealedBatch>> {
        if batches.is_empty() {
            return Err(LogError::EmptyAppend);
        }
        let total: usize = batches.iter().map(Bytes::len).sum();
        if total > MAX_SEALED_BYTES {
            return Err(LogError::BatchTooLarge { size: total, max: MAX_SEALED_BYTES });
        }
        let mut out: Vec<SealedBatch> = Vec::with_capacity(batches.len());
        let mut at = 0u64;
        for (i, bytes) in batches.into_iter().enumerate() {
            if bytes.len() > self.max_batch {
                return Err(LogError::BatchTooLarge { size: bytes.len(), max: self.max_batch });
            }
            let corrupt = |reason: String| LogError::CorruptBatch {
                path: self.shared.dir.clone(),
                position: at,
                reason: format!("sealed batch {i} handed to append_sealed: {reason}; nothing was written"),
            };
            let header = batch::verify(&bytes, self.max_batch).map_err(|d| corrupt(d.to_string()))?;
            if header.length as usize != bytes.len() {
                return Err(corrupt(format!(
                    "its length field says {} bytes, {} were given",
                    header.length,
                    bytes.len()
                )));
            }
            if header.base_offset.checked_add(u64::from(header.record_count)).is_none() {
                return Err(corrupt(format!("base offset {} overflows", header.base_offset)));
            }
            let records = batch::decode_records(&bytes, &header).map_err(|d| corrupt(d.to_string()))?;
            let max_ts = records.iter().map(|r| r.timestamp).max();
            if max_ts != Some(header.max_timestamp) {
                return Err(corrupt("max_timestamp does not match its records".into()));
            }
            if let Some(prev) = out.last() {
                let expected = prev.header.next_offset();
                if header.base_offset != expected {
                    return Err(LogError::NotContiguous {
                        partition: self.shared.name.clone(),
                        expected,
                        got: header.base_offset,
                    });
                }
            }
            let mut key_hashes: Vec<u32> =
                records.iter().filter_map(|r| r.key.as_deref().map(crate::keys::key_hash)).collect();
            key_hashes.sort_unstable();
            key_hashes.dedup();
            at += bytes.len() as u64;
            out.push(SealedBatch { bytes, header, key_hashes });
        }
        Ok(out)
    }

    fn truncate_start(&self, to: u64) -> Result<oneshot::Receiver<Result<()>>> {
        let (reply, rx) = oneshot::channel();
        self.drive.send(Command::Truncate { partition: self.index, to, reply })?;
        Ok(rx)
    }

    /// Removes every record at offset `>= to`, durably: once this returns, a crash never
    /// brings them back (the segment file is cut and synced, later segments deleted; offset,
    /// time and key indexes and the epoch cache are trimmed). The next append, normal or
    /// sealed, gets offset `to`. The visible end and the high watermark drop to `to` if above.
    ///
    /// `to` must be a batch boundary (a batch's base offset, or `log_end`), else
    /// `NotBatchBoundary`; below `log_start` is `TruncateBelowLogStart`; `to >= log_end` does
    /// nothing. Appends queued before this call are written (and made durable) first. Readers
    /// in flight across it may get an error or nothing, never a panic; a tail reader already
    /// past `to` resumes at its own position once the end passes it again (callers that
    /// truncate below what readers saw must reposition them). A failure once the files are
    /// being changed poisons the partition (reopen to recover).
    pub async fn truncate(&self, to: u64) -> Result<()> {
        self.truncate_start(to)?.await.map_err(|_| LogError::Closed)?
    }

    /// [`Partition::truncate`] for threads outside an async runtime.
    pub fn truncate_blocking(&self, to: u64) -> Result<()> {
        futures::executor::block_on(self.truncate_start(to)?).map_err(|_| LogError::Closed)?
    }

    /// Kafka's OffsetsForLeaderEpoch: the largest epoch `e <= epoch` that has batches in the
    /// (durable) log, and the end offset of `e`: the base offset of the first batch whose
    /// epoch is above `e`, or `log_end` if none. `None` if no batch has an epoch `<= epoch`
    /// (an empty partition included).
    pub fn epoch_end_offset(&self, epoch: u32) -> Option<(u32, u64)> {
        let (log_start, log_end) = self.durable_range();
        self.shared.epochs.read().end_offset(epoch, log_start, log_end)
    }

    /// Epoch of the last batch in the (durable) log; `None` when it is empty.
    pub fn latest_epoch(&self) -> Option<u32> {
        let (log_start, log_end) = self.durable_range();
        self.shared.epochs.read().latest(log_start, log_end)
    }

    /// Epoch of the batch holding `offset`; `None` unless `offset` is in
    /// `log_start..log_end`. Answered from memory.
    pub fn epoch_at(&self, offset: u64) -> Result<Option<u32>> {
        let (log_start, log_end) = self.durable_range();
        Ok(self.shared.epochs.read().epoch_at(offset, log_start, log_end))
    }

    fn durable_range(&self) -> (u64, u64) {
        let log_end = self.shared.log_end();
        (self.shared.bounds().log_start, log_end)
    }
}
