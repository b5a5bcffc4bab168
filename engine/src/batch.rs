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
//!   [`Engine::route`] and pushes with the key it got).
//! - `messages` holds the pushed messages in push order; the log gets them as the batch's
//!   memo only if each one's timestamp is the one its record was written with.

use std::sync::Arc;

use crate::{log, tail, Engine, EngineError, Message, PendingPublish};

/// Messages for one partition on their way into one log batch; see the module documentation.
#[derive(Debug)]
pub struct MessageBatch {
    pid: usize,
    body: Body,
    messages: Vec<Arc<Message>>,
    /// Payload and topic bytes pushed.
    bytes: usize,
    /// False once a message was encoded with a timestamp other than its own (it had none).
    memo_fits: bool,
}

/// How the batch holds its records; chosen when the batch is made (the replicator is set
/// once, before clients are served).
#[derive(Debug)]
enum Body {
    /// Single node: the batch, encoded as messages are pushed.
    Built(log::BatchBuilder),
    /// Replicated engine: the records, forwarded as they are.
    Records(Vec<log::Record>),
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
    /// An empty batch for partition `pid`, with room for about `bytes` of payload and topics.
    pub fn message_batch(&self, pid: usize, bytes: usize) -> MessageBatch {
        let body = if self.replicator.get().is_some() {
            Body::Records(Vec::new())
        } else {
            Body::Built(log::BatchBuilder::with_capacity(bytes))
        };
        MessageBatch { pid, body, messages: Vec::new(), bytes: 0, memo_fits: true }
    }

    /// Adds `msg` to `batch`; `key` is its partition key, as [`Engine::route`] gave it with
    /// the batch's partition.
    pub fn push_message(&self, batch: &mut MessageBatch, msg: &Arc<Message>, key: &str) {
        match &mut batch.body {
            Body::Records(records) => records.push(msg.to_record(key)),
            Body::Built(built) => {
                batch.memo_fits &= msg.timestamp != 0;
                let now = if msg.timestamp == 0 { log::now_ms() } else { msg.timestamp };
                msg.push_to(key, now, built);
            }
        }
        batch.bytes += msg.payload.len() + msg.topic.len();
        batch.messages.push(msg.clone());
    }

    /// Queues `batch` for appending now, as [`Engine::publish_records_start`] does; the future
    /// resolves with the first message's offset once the batch is acknowledged.
    pub fn publish_batch_start(&self, batch: MessageBatch) -> Result<PendingPublish, EngineError> {
        let MessageBatch { pid, body, messages, memo_fits, .. } = batch;
        match body {
            Body::Records(records) => self.publish_records_start(pid, records, messages),
            Body::Built(built) => {
                let log = &self.partitions[pid].log;
                let memo =
                    (memo_fits && !messages.is_empty()).then(|| Arc::new(tail::MessageMemo(messages)) as log::Memo);
                Ok(PendingPublish::Local(log.append_built_start(built, memo)?))
            }
        }
    }
}
