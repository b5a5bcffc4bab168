//! Messages for one partition gathered into one log batch.
//!
//! A connection that receives many PUBLISHes in one read appends them as one batch (one
//! write, one CRC, one acknowledgement). On a single node each message is encoded into the
//! batch as it is pushed ([`Message::push_to`]): no intermediate [`log::Record`], with its
//! allocated header names and copied header values, is built only to be copied again. A
//! replicated engine forwards records to other nodes, so there the batch keeps records.
//!
//! Invariants:
//! - Every message pushed belongs to the batch's partition (the caller routes with
//!   [`Engine::partition_of`]).
//! - `messages` holds the pushed messages in push order; the log gets them as the batch's
//!   memo only if each one's timestamp is the one its record was written with.

use std::sync::Arc;

use crate::{log, tail, Engine, EngineError, Message, PendingPublish};

/// Messages for one partition on their way into one log batch; see the module documentation.
#[derive(Debug)]
pub struct MessageBatch {
    pid: usize,
    /// Single node: the batch, encoded as messages are pushed.
    built: log::BatchBuilder,
    /// Replicated engine: the records, forwarded as they are.
    records: Vec<log::Record>,
    messages: Vec<Arc<Message>>,
    /// Payload and topic bytes pushed.
    bytes: usize,
    /// False once a message was encoded with a timestamp other than its own (it had none).
    memo_fits: bool,
}

impl MessageBatch {
    /// The partition the batch goes to.
    pub fn pid(&self) -> usize {
        self.pid
    }

    /// Messages pushed.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Payload and topic bytes of the messages pushed.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Engine {
    /// The partition `msg` is appended to.
    pub fn partition_of(&self, msg: &Message) -> usize {
        self.route(&msg.topic, &msg.publisher).0
    }

    /// An empty batch for partition `pid`, with room for about `bytes` of payload and topics.
    pub fn message_batch(&self, pid: usize, bytes: usize) -> MessageBatch {
        MessageBatch {
            pid,
            built: log::BatchBuilder::with_capacity(if self.replicator.get().is_some() { 0 } else { bytes }),
            records: Vec::new(),
            messages: Vec::new(),
            bytes: 0,
            memo_fits: true,
        }
    }

    /// Adds `msg` (routed to the batch's partition) to `batch`.
    pub fn push_message(&self, batch: &mut MessageBatch, msg: Arc<Message>) {
        let (_, key) = self.route(&msg.topic, &msg.publisher);
        if self.replicator.get().is_some() {
            batch.records.push(msg.to_record(key));
        } else {
            batch.memo_fits &= msg.timestamp != 0;
            let now = if msg.timestamp == 0 { log::now_ms() } else { msg.timestamp };
            msg.push_to(key, now, &mut batch.built);
        }
        batch.bytes += msg.payload.len() + msg.topic.len();
        batch.messages.push(msg);
    }

    /// Queues `batch` for appending now, as [`Engine::publish_records_start`] does; the future
    /// resolves with the first message's offset once the batch is acknowledged.
    pub fn publish_batch_start(&self, batch: MessageBatch) -> Result<PendingPublish, EngineError> {
        let MessageBatch { pid, built, mut records, messages, memo_fits, .. } = batch;
        if let Some(rep) = self.replicator.get() {
            if records.len() != messages.len() {
                // Pushed before the engine became replicated: make the records now.
                records = messages.iter().map(|m| self.record_for(m).1).collect();
            }
            return Ok(PendingPublish::Replicated(rep.publish(pid, records)));
        }
        if !records.is_empty() {
            return self.publish_records_start(pid, records, messages);
        }
        let log = &self.partitions[pid].log;
        let memo = (memo_fits && !messages.is_empty()).then(|| Arc::new(tail::MessageMemo(messages)) as log::Memo);
        Ok(PendingPublish::Local(log.append_built_start(built, memo)?))
    }
}
