//! Forwarding publishes to the partition leader from a node that does not lead it.
//!
//! One task per partition sends them in order: everything queued while a forward is in
//! flight goes out as the next batch, so messages one connection publishes keep their order
//! and a busy partition costs one round trip per batch, not per message. A forward is retried
//! only on "not leader", which guarantees nothing was appended; any other failure fails the
//! publishes (the client is not acknowledged and retries with DUP).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axle_log::Record;
use axle_proto::cluster::v1::{ForwardRequest, ForwardedMessage};
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use super::{Replica, ReplicaError, Replicator, Role};

/// Messages in one forward RPC, at most.
const MAX_BATCH: usize = 512;
/// Payload bytes in one forward RPC before no more are added (one message may exceed it):
/// the leader appends a forward as one batch, which must stay under the log's batch limit.
const MAX_BATCH_BYTES: usize = 1 << 20;

struct Item {
    records: Vec<Record>,
    reply: oneshot::Sender<Result<u64, ReplicaError>>,
}

/// The queue into a partition's forwarding task (started on first use).
#[derive(Default)]
pub(crate) struct Forwarder {
    tx: Mutex<Option<mpsc::UnboundedSender<Item>>>,
    /// Publishes queued and not yet answered. While there are any, a node that became the
    /// leader still sends new publishes through the queue, behind them, so that a publisher's
    /// messages keep their order across the change.
    pending: Arc<AtomicUsize>,
}

impl Forwarder {
    /// Queues `records` for the leader now; the receiver gets the first offset once the
    /// leader acknowledged them.
    pub(crate) fn enqueue(
        &self,
        rep: &Arc<Replicator>,
        r: &Arc<Replica>,
        records: Vec<Record>,
    ) -> oneshot::Receiver<Result<u64, ReplicaError>> {
        let (reply, rx) = oneshot::channel();
        let mut tx = self.tx.lock();
        let sender = tx.get_or_insert_with(|| {
            let (t, queue) = mpsc::unbounded_channel();
            tokio::spawn(run(rep.clone(), r.clone(), queue, self.pending.clone()));
            t
        });
        self.pending.fetch_add(1, Ordering::AcqRel);
        // A failed send drops `reply`: the receiver then reports the task stopped.
        if sender.send(Item { records, reply }).is_err() {
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
        rx
    }

    /// Nothing is queued or in flight: every forwarded publish was answered, so one
    /// appended here now cannot overtake it.
    pub(crate) fn idle(&self) -> bool {
        self.pending.load(Ordering::Acquire) == 0
    }
}

/// The error for a publish whose forwarding task went away (the node is shutting down).
pub(crate) fn stopped(partition: &str) -> ReplicaError {
    ReplicaError::Forward { partition: partition.into(), leader: 0, reason: "the forwarding task stopped".into() }
}

async fn run(
    rep: Arc<Replicator>,
    r: Arc<Replica>,
    mut queue: mpsc::UnboundedReceiver<Item>,
    pending: Arc<AtomicUsize>,
) {
    while let Some(first) = queue.recv().await {
        let size = |i: &Item| i.records.iter().map(|r| r.value.len()).sum::<usize>();
        let mut bytes = size(&first);
        let mut items = vec![first];
        while items.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match queue.try_recv() {
                Ok(item) => {
                    bytes += size(&item);
                    items.push(item);
                }
                Err(_) => break,
            }
        }
        let records: Vec<Record> = items.iter().flat_map(|i| i.records.iter().cloned()).collect();
        match send(&rep, &r, &records).await {
            Ok(base) => {
                let mut offset = base;
                for item in items {
                    let n = item.records.len() as u64;
                    pending.fetch_sub(1, Ordering::AcqRel);
                    let _ = item.reply.send(Ok(offset));
                    offset += n;
                }
            }
            Err(e) => {
                for item in items {
                    pending.fetch_sub(1, Ordering::AcqRel);
                    let _ = item.reply.send(Err(clone_err(&e, &r.name)));
                }
            }
        }
    }
}

fn clone_err(e: &ReplicaError, partition: &str) -> ReplicaError {
    match e {
        ReplicaError::NoLeader { partition } => ReplicaError::NoLeader { partition: partition.clone() },
        ReplicaError::Forward { partition, leader, reason } => {
            ReplicaError::Forward { partition: partition.clone(), leader: *leader, reason: reason.clone() }
        }
        other => ReplicaError::Forward { partition: partition.into(), leader: 0, reason: other.to_string() },
    }
}

/// Sends `records` to the current leader (or appends them here if this node became it).
async fn send(rep: &Arc<Replicator>, r: &Arc<Replica>, records: &[Record]) -> Result<u64, ReplicaError> {
    let deadline = Instant::now() + Duration::from_millis(rep.cfg.ack_timeout_ms);
    let mut leadership = r.leadership.subscribe();
    loop {
        let leader = match &*r.role.lock() {
            Role::Leader(_) => None,
            Role::Follower { leader, .. } => Some(*leader),
            Role::Unassigned => Some(0),
        };
        match leader {
            None => return rep.append_local(r, records).await,
            Some(0) => {}
            Some(leader) => match forward_once(rep, r, leader, records).await {
                Ok(offset) => return Ok(offset),
                Err(Retry::NotLeader) => {}
                Err(Retry::Failed(reason)) => {
                    return Err(ReplicaError::Forward { partition: r.name.clone(), leader, reason })
                }
            },
        }
        // Wait for the metadata to name a (new) leader.
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReplicaError::NoLeader { partition: r.name.clone() });
        }
        let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), leadership.changed()).await;
    }
}

enum Retry {
    NotLeader,
    Failed(String),
}

async fn forward_once(rep: &Replicator, r: &Replica, leader: u64, records: &[Record]) -> Result<u64, Retry> {
    let Some(mut client) = rep.peers.client(rep, leader) else {
        return Err(Retry::NotLeader);
    };
    let messages = records
        .iter()
        .map(|rec| {
            let key = rec.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
            if r.raw_records {
                ForwardedMessage {
                    key,
                    raw: true,
                    value: rec.value.clone(),
                    timestamp: rec.timestamp.unwrap_or(0),
                    ..Default::default()
                }
            } else {
                ForwardedMessage { key, message: Bytes::from(crate::Message::encode_record(rec)), ..Default::default() }
            }
        })
        .collect();
    match client.forward(ForwardRequest { partition: r.name.clone(), messages }).await {
        Ok(resp) => Ok(resp.into_inner().base_offset),
        Err(s) if s.code() == tonic::Code::FailedPrecondition => Err(Retry::NotLeader),
        Err(s) if s.code() == tonic::Code::Unavailable && s.message().contains("tcp connect") => {
            // Not connected: nothing was sent, the leader may be gone.
            Err(Retry::NotLeader)
        }
        Err(s) => Err(Retry::Failed(s.to_string())),
    }
}
