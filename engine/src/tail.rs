//! Following a partition as messages: the live path from an append to the hub.
//!
//! Every message appended through [`crate::Engine::publish_records_start`] is decoded
//! already: the caller made its record from it. The engine files those messages with the
//! batch as the log's memo ([`axle_log::Memo`]), and a [`MessageTail`] that reaches the batch
//! takes them from memory instead of reading the batch back from the file, decoding its
//! records and rebuilding each message from its headers. Batches without such a memo
//! (appended by a replica follower, by other appenders, or evicted from the memo tail) are
//! read from the file as before. Either way the tail yields the same messages, in offset
//! order.

use std::sync::Arc;

use axle_log::{LogError, Partition, TailChunk, TailReader};

use crate::message::Message;

/// The memo the engine files with a batch of messages: one per record, in record order.
pub(crate) struct MessageMemo(pub(crate) Vec<Arc<Message>>);

/// A tail reader of one partition that yields `(offset, message)` pairs. Records that are not
/// messages (written by something other than the engine) are skipped.
pub struct MessageTail {
    partition: Partition,
    reader: TailReader,
}

impl MessageTail {
    /// Follows `partition` from `from`; file reads return at most `max_records` records or
    /// `max_bytes` bytes of keys and values at a time.
    pub fn new(partition: Partition, from: u64, max_records: usize, max_bytes: usize) -> Self {
        let reader = partition.tail(from).with_limits(max_records, max_bytes);
        MessageTail { partition, reader }
    }

    /// The next messages, waiting until at least one record is available (the result is
    /// empty only if none of the records read was a message).
    pub async fn next(&mut self) -> Result<Vec<(u64, Arc<Message>)>, LogError> {
        match self.reader.next_chunk().await? {
            TailChunk::Memo(m) => match m.memo.downcast::<MessageMemo>() {
                Ok(memo) if memo.0.len() == m.count as usize => {
                    Ok(memo.0.iter().enumerate().map(|(i, msg)| (m.base + i as u64, msg.clone())).collect())
                }
                // Not the engine's memo: read the batch like any other.
                _ => {
                    let records = self.partition.read(m.base, m.count as usize, usize::MAX)?;
                    Ok(decode(&records))
                }
            },
            TailChunk::Records(records) => Ok(decode(&records)),
        }
    }
}

fn decode(records: &[axle_log::StoredRecord]) -> Vec<(u64, Arc<Message>)> {
    records.iter().filter_map(|r| Message::from_record(r).map(|m| (r.offset, Arc::new(m)))).collect()
}
