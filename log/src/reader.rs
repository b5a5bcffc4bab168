//! Following a partition's tail: an async reader that returns records as soon as they are
//! acknowledged, and otherwise waits for the writer's notification. Any number of readers can
//! follow one partition; the writer never waits for them.

use futures::Stream;
use tokio::sync::watch;

use crate::error::{LogError, Result};
use crate::memo::MemoBatch;
use crate::partition::Bounds;
use crate::record::StoredRecord;
use crate::Partition;

/// What [`TailReader::next_chunk`] returns.
#[derive(Debug)]
pub enum TailChunk {
    /// One whole batch, as its appender's memo (`Partition::append_start_with`).
    Memo(MemoBatch),
    /// Records read from the file.
    Records(Vec<StoredRecord>),
}

/// Reads a partition from a position onwards, waiting at the tail.
pub struct TailReader {
    partition: Partition,
    next: u64,
    end_rx: watch::Receiver<u64>,
    max_records: usize,
    max_bytes: usize,
}

impl TailReader {
    pub(crate) fn new(partition: Partition, from: u64) -> Self {
        let end_rx = partition.shared.subscribe();
        TailReader { partition, next: from, end_rx, max_records: 1000, max_bytes: 1 << 20 }
    }

    /// Bounds each returned chunk (defaults: 1000 records, 1 MiB of keys and values).
    pub fn with_limits(mut self, max_records: usize, max_bytes: usize) -> Self {
        self.max_records = max_records.max(1);
        self.max_bytes = max_bytes.max(1);
        self
    }

    /// Offset of the next record this reader will return.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// The next records, waiting until at least one is available. Fails with
    /// `OffsetOutOfRange` if retention removed the position, and `Closed` once the log closes.
    pub async fn next_batch(&mut self) -> Result<Vec<StoredRecord>> {
        loop {
            let end = *self.end_rx.borrow_and_update();
            if self.next < end {
                let records = self.partition.read(self.next, self.max_records, self.max_bytes)?;
                if let Some(last) = records.last() {
                    self.next = last.offset + 1;
                    return Ok(records);
                }
            }
            if self.partition.shared.is_closed() {
                return Err(LogError::Closed);
            }
            if self.end_rx.changed().await.is_err() {
                return Err(LogError::Closed);
            }
        }
    }

    /// [`TailReader::next_batch`] that takes a batch's memo when the partition keeps one for
    /// the batch at the reader's position, and reads the file otherwise. Meant for the one
    /// reader per partition that follows the tail: taking memos retires them (`memo.rs`). Records read from
    /// the file stop before the next batch that has a memo, so a reader that keeps up reads
    /// nothing back from the file.
    pub async fn next_chunk(&mut self) -> Result<TailChunk> {
        loop {
            let end = *self.end_rx.borrow_and_update();
            if self.next < end {
                if let Some(m) = self.partition.shared.take_memo(self.next) {
                    self.next = m.base + u64::from(m.count);
                    return Ok(TailChunk::Memo(m));
                }
                let mut records = self.partition.read(self.next, self.max_records, self.max_bytes)?;
                if let Some(memo_base) = self.partition.shared.memos.next_base_after(self.next) {
                    records.retain(|r| r.offset < memo_base);
                }
                if let Some(last) = records.last() {
                    self.next = last.offset + 1;
                    return Ok(TailChunk::Records(records));
                }
            }
            if self.partition.shared.is_closed() {
                return Err(LogError::Closed);
            }
            if self.end_rx.changed().await.is_err() {
                return Err(LogError::Closed);
            }
        }
    }

    /// Current bounds of the partition being followed.
    pub fn bounds(&self) -> Bounds {
        self.partition.bounds()
    }

    /// The reader as a stream of single records; it ends after the first error.
    pub fn into_stream(self) -> impl Stream<Item = Result<StoredRecord>> {
        futures::stream::unfold((self, Vec::new().into_iter(), false), |(mut r, mut buf, failed)| async move {
            if failed {
                return None;
            }
            loop {
                if let Some(rec) = buf.next() {
                    return Some((Ok(rec), (r, buf, false)));
                }
                match r.next_batch().await {
                    Ok(v) => buf = v.into_iter(),
                    Err(e) => return Some((Err(e), (r, buf, true))),
                }
            }
        })
    }
}
