//! The stream layer between MQTT and the log. It owns the mapping from MQTT topics to
//! streams (named sets of log partitions with a partition key), the metadata kept beside
//! the log in RocksDB (sessions, subscriptions, cursors, retained messages, consumer-group
//! offsets, export checkpoints), replication, and the notification of tail readers. It speaks
//! in topics and messages, never in MQTT packets, and never touches segment files: those
//! belong to `axle-log`.

pub mod batch;
pub mod cluster;
pub mod groups;
pub mod journal;
pub mod message;
pub mod meta;
pub mod replica;
pub mod stream;
pub mod tail;
pub mod topic;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

pub use axle_log as log;
use axle_log::{Log, LogConfig};
pub use batch::MessageBatch;
pub use message::Message;
pub use meta::{MetaError, MetaOp, MetaStore};
pub use stream::{PartitionKey, StreamConfig, StreamSet};
pub use tail::MessageTail;

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Log(#[from] axle_log::LogError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Replica(#[from] replica::ReplicaError),
    #[error("invalid stream configuration: {0}")]
    Config(String),
}

/// A publish queued for appending; resolves with its offset once acknowledged (durable on
/// a single node; under the stream's `acks` in a cluster).
pub enum PendingPublish {
    Local(axle_log::PendingAppend),
    Replicated(replica::Publishing),
}

impl Future for PendingPublish {
    type Output = Result<u64, EngineError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            PendingPublish::Local(p) => Pin::new(p).poll(cx).map(|r| r.map(|a| a.base_offset).map_err(Into::into)),
            PendingPublish::Replicated(f) => f.as_mut().poll(cx).map_err(Into::into),
        }
    }
}

/// Everything the engine needs to open.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Holds `log/` and `meta/`.
    pub data_dir: PathBuf,
    pub log: LogConfig,
    /// Configured streams, in routing order (the default stream is added).
    pub streams: Vec<StreamConfig>,
    /// Partitions of the default stream.
    pub default_partitions: u32,
}

/// One partition of one stream.
#[derive(Clone)]
pub struct PartitionHandle {
    /// Index in [`Engine::partitions`]; stable while the configuration is.
    pub id: usize,
    /// Log partition name, `<stream>-<n>`: the stable identity persisted in cursors.
    pub name: String,
    /// Index of the stream in [`StreamSet::streams`].
    pub stream: usize,
    pub log: axle_log::Partition,
}

/// The open engine. Cheap to share behind an `Arc`.
pub struct Engine {
    log: Log,
    meta: Arc<MetaStore>,
    streams: StreamSet,
    partitions: Vec<PartitionHandle>,
    groups: groups::Groups,
    /// `first[s]` = id of partition 0 of stream `s`.
    first: Vec<usize>,
    /// Set once when the node runs in a cluster: appends then go through replication.
    replicator: OnceLock<Arc<replica::Replicator>>,
    /// Set once with the replicator: persistent sessions then go through it.
    journal: OnceLock<Arc<journal::Journal>>,
}

impl Engine {
    /// Opens the log and the metadata store under `data_dir` and every stream partition.
    pub fn open(cfg: EngineConfig) -> Result<Engine, EngineError> {
        let streams = StreamSet::new(cfg.streams, cfg.default_partitions).map_err(EngineError::Config)?;
        let log = Log::open(cfg.data_dir.join("log"), cfg.log)?;
        let meta = Arc::new(MetaStore::open(&cfg.data_dir.join("meta"))?);
        let mut partitions = Vec::new();
        let mut first = Vec::new();
        for (si, s) in streams.streams().iter().enumerate() {
            first.push(partitions.len());
            for n in 0..s.partitions {
                let name = s.partition_name(n);
                let log_part = log.partition(&name)?;
                partitions.push(PartitionHandle { id: partitions.len(), name, stream: si, log: log_part });
            }
        }
        let groups = groups::Groups::open(meta.clone())?;
        Ok(Engine {
            log,
            meta,
            streams,
            partitions,
            first,
            groups,
            replicator: OnceLock::new(),
            journal: OnceLock::new(),
        })
    }

    pub fn streams(&self) -> &StreamSet {
        &self.streams
    }

    pub fn partitions(&self) -> &[PartitionHandle] {
        &self.partitions
    }

    pub fn partition_by_name(&self, name: &str) -> Option<&PartitionHandle> {
        self.partitions.iter().find(|p| p.name == name)
    }

    /// Consumer groups and their committed offsets.
    pub fn groups(&self) -> &groups::Groups {
        &self.groups
    }

    pub fn meta(&self) -> &Arc<MetaStore> {
        &self.meta
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    /// The partition id and partition key for a message on `topic` from `client_id`.
    pub fn route<'a>(&self, topic: &'a str, client_id: &'a str) -> (usize, &'a str) {
        let si = self.streams.stream_for(topic);
        let s = &self.streams.streams()[si];
        let key = s.key_of(topic, client_id);
        (self.first[si] + s.partition_of(key) as usize, key)
    }

    /// Appends `msg` to its partition. Resolves once it is acknowledged (see
    /// [`PendingPublish`]); returns (partition id, offset).
    pub async fn publish(&self, msg: &Message) -> Result<(usize, u64), EngineError> {
        let (pid, pending) = self.publish_start(msg)?;
        Ok((pid, pending.await?))
    }

    /// Queues `msg` for appending now and returns (partition id, a future resolving to its
    /// offset once acknowledged). On a single node, messages queued one after another keep
    /// their order; in a cluster they keep it per partition as long as leadership does not
    /// move.
    pub fn publish_start(&self, msg: &Message) -> Result<(usize, PendingPublish), EngineError> {
        let (pid, key) = self.route(&msg.topic, &msg.publisher);
        let record = msg.to_record(key);
        Ok((pid, self.publish_records_start(pid, vec![record], Vec::new())?))
    }

    /// Queues `records` (made by [`Message::to_record`] with the key [`Engine::route`] gave,
    /// all for partition `pid`) as one batch now; the future resolves with the first
    /// record's offset once the batch is acknowledged. The records keep their order, and order with earlier and later batches
    /// as for [`Engine::publish_start`]. One batch is one write, one CRC and one
    /// acknowledgement instead of one each per message.
    ///
    /// `messages` are the messages the records were made from, in the same order, each with
    /// its `timestamp` set (so that it equals what the record holds), or empty. On a single
    /// node they are kept with the batch, and [`MessageTail`]s take them from memory instead
    /// of reading the batch back (see `tail.rs`).
    pub fn publish_records_start(
        &self,
        pid: usize,
        records: Vec<log::Record>,
        messages: Vec<Arc<Message>>,
    ) -> Result<PendingPublish, EngineError> {
        if let Some(rep) = self.replicator.get() {
            return Ok(PendingPublish::Replicated(rep.publish(pid, records)));
        }
        let log = &self.partitions[pid].log;
        let memo_fits = !messages.is_empty()
            && messages.len() == records.len()
            && messages.iter().zip(&records).all(|(m, r)| r.timestamp == Some(m.timestamp));
        let pending = if memo_fits {
            log.append_start_with(&records, Arc::new(tail::MessageMemo(messages)))?
        } else {
            log.append_start(&records)?
        };
        Ok(PendingPublish::Local(pending))
    }

    /// Switches the engine to replicated appends. Call once, before serving clients.
    pub fn set_replicator(&self, r: Arc<replica::Replicator>) {
        let _ = self.replicator.set(r);
    }

    /// Sets the session journal (a cluster node). Call once, before serving clients.
    pub fn set_journal(&self, j: Arc<journal::Journal>) {
        let _ = self.journal.set(j);
    }

    /// The session journal, when the node runs in a cluster.
    pub fn journal(&self) -> Option<&Arc<journal::Journal>> {
        self.journal.get()
    }

    /// The replicator, when the node runs in a cluster.
    pub fn replicator(&self) -> Option<&Arc<replica::Replicator>> {
        self.replicator.get()
    }

    /// The partitions that can hold messages matching `filter`, each with the partition key
    /// that every such message has, when the filter pins one (`v/VIN1/#` on a stream keyed
    /// by two levels): a reader then needs only that key's records.
    pub fn partitions_for_filter(&self, filter: &str) -> Vec<(usize, Option<String>)> {
        let mut out = Vec::new();
        let mut taken: Vec<&str> = Vec::new();
        let default = self.streams.streams().len() - 1;
        for (si, s) in self.streams.streams().iter().enumerate() {
            // The default stream takes every topic no other stream takes, `$` topics too
            // (its `#` does not match them, but routing sends them there).
            let reachable = si == default || s.filters.iter().any(|f| topic::overlaps(f, filter));
            taken.extend(s.filters.iter().map(String::as_str));
            if !reachable {
                continue;
            }
            let pinned = match s.key {
                PartitionKey::TopicLevels(n) => topic::pinned_prefix(filter, n),
                PartitionKey::ClientId => None,
            };
            match pinned {
                Some(key) => out.push((self.first[si] + s.partition_of(key) as usize, Some(key.to_string()))),
                None => out.extend((0..s.partitions as usize).map(|n| (self.first[si] + n, None))),
            }
        }
        out
    }

    /// Flushes the log and the metadata store and closes the log.
    pub fn close(&self) -> Result<(), EngineError> {
        self.meta.flush()?;
        self.log.close()?;
        Ok(())
    }
}
