//! Inbound PUBLISHes gathered into log batches.
//!
//! A client that publishes fast sends many PUBLISHes per TCP segment, and one read decodes
//! them all. Appended one by one, each would be its own batch: its own write command to the
//! log writer, CRC, batch header, acknowledgement future and wake-up. Instead, consecutive
//! PUBLISHes from one read that go to the same partition are staged and appended as one
//! batch when the read is used up, when a message for another partition or a packet other
//! than PUBLISH arrives, or when the batch reaches [`MAX_RECORDS`] or [`MAX_BYTES`].
//!
//! Invariants:
//! - Appends keep arrival order: a batch is queued before anything that arrives after its
//!   messages is handled, and batches are queued in order.
//! - Acknowledgements keep arrival order (MQTT-4.6.0-2): batches complete in `pending` in the
//!   order they were queued, and a batch's PUBACK/PUBRECs are written in the order of its
//!   messages.
//! - No acknowledgement leaves before its message is durable: the batch's future resolves only
//!   once the whole batch is.

use std::sync::Arc;

use axle_engine::{Message, MessageBatch};
use bytes::BytesMut;

use super::{Connection, End, Inbound};

/// Most messages in one inbound batch.
pub(super) const MAX_RECORDS: usize = 128;
/// A batch is appended once its payloads and topics reach this many bytes; a larger message
/// goes alone.
pub(super) const MAX_BYTES: usize = 256 * 1024;

/// PUBLISHes staged for one partition, not yet queued to the log.
#[derive(Default)]
pub(super) struct Staged {
    /// The messages, encoded into their log batch as they arrive (`None`: nothing staged).
    batch: Option<MessageBatch>,
    /// (packet id, QoS) of the QoS 1/2 messages, in arrival order.
    acks: Vec<(u16, u8)>,
    /// QoS 0 messages in `batch`: counted as dropped if the append fails.
    qos0: usize,
}

/// Room a new batch's buffer starts with, in bytes; it grows up to [`MAX_BYTES`] and more.
const FIRST_BATCH_BYTES: usize = 4 * 1024;

impl Connection {
    /// Stages `msg` for its partition; queues the staged batch first if `msg` cannot join it.
    pub(super) fn stage(&mut self, msg: Arc<Message>, packet_id: u16, qos: u8) {
        // `key` borrows from `msg`, not from `self`.
        let (pid, key) = self.hub.engine.route(&msg.topic, &msg.publisher);
        let size = msg.payload.len() + msg.topic.len();
        let joins = self
            .staged
            .batch
            .as_ref()
            .is_none_or(|b| b.pid() == pid && b.len() < MAX_RECORDS && b.bytes() + size <= MAX_BYTES);
        if !joins {
            self.queue_staged();
        }
        let engine = &self.hub.engine;
        let batch = self.staged.batch.get_or_insert_with(|| engine.message_batch(pid, FIRST_BATCH_BYTES.max(size)));
        engine.push_message(batch, &msg, key);
        if qos > 0 {
            self.staged.acks.push((packet_id, qos));
            self.inbound_unacked += 1;
        } else {
            self.staged.qos0 += 1;
        }
    }

    /// Queues the staged messages to the log as one batch; their acknowledgements follow
    /// from `pending` once it is durable.
    pub(super) fn queue_staged(&mut self) {
        let Some(batch) = self.staged.batch.take() else { return };
        let acks = std::mem::take(&mut self.staged.acks);
        let qos0 = std::mem::take(&mut self.staged.qos0);
        let fut: super::Pending = match self.hub.engine.publish_batch_start(batch) {
            Ok(fut) => {
                Box::pin(
                    async move { Inbound { acks, qos0, result: fut.await.map(|_| ()).map_err(|e| e.to_string()) } },
                )
            }
            Err(e) => {
                let result = Err(e.to_string());
                Box::pin(async move { Inbound { acks, qos0, result } })
            }
        };
        self.pending.push_back(fut);
    }

    /// Acknowledges a completed batch: a PUBACK or PUBREC per QoS 1/2 message, in order.
    pub(super) fn batch_done(&mut self, done: Inbound, out: &mut BytesMut) -> Result<(), End> {
        let Inbound { acks, qos0, result } = done;
        self.inbound_unacked -= acks.len();
        if let Err(e) = &result {
            if qos0 > 0 {
                self.hub.metrics.dropped(crate::metrics::DropReason::AppendFailed, qos0 as u64);
                tracing::warn!(client_id = %self.client_id, error = %e, dropped = qos0, "QoS 0 append failed; messages dropped");
            }
        }
        for (packet_id, qos) in acks {
            // On an error the rest are not acknowledged; the client resends them.
            self.inbound_done(packet_id, qos, result.clone(), out)?;
        }
        Ok(())
    }
}
