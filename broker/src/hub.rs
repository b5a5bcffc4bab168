//! The broker's shared state: the topic tree, the connected sessions, retained messages,
//! and one dispatcher per log partition that fans new records out to live subscribers.
//!
//! Live fan-out never loses a message: each delivery carries `prev_end`, the offset after
//! the previous record this dispatcher handed to the same session. A session accepts a
//! record only if nothing it has not seen lies between its cursor and the record; otherwise
//! (its queue overflowed, or it was catching up) it reads the gap from the log itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use axle_engine::{Engine, Message, MessageTail};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, Notify};

use crate::config::Config;
use crate::shared::SharedGroups;
use crate::topic_tree::{Match, SubscriberId, TopicTree};

/// `prev_end` value meaning "unknown": accept only an exact cursor match.
pub const UNKNOWN: u64 = u64::MAX;

/// A record handed to a connected session.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub pid: usize,
    pub offset: u64,
    pub prev_end: u64,
    pub msg: Arc<Message>,
    /// Chosen for the session by a shared-subscription group (not cursor-tracked).
    pub shared: Option<Arc<str>>,
}

/// What the hub knows of a connected session.
pub struct SessionHandle {
    pub id: SubscriberId,
    pub client_id: String,
    pub tx: mpsc::Sender<Delivery>,
    /// Per partition: offset after the last record dispatched to this session.
    pub last_dispatched: Vec<AtomicU64>,
    /// Set when a delivery was dropped because the queue was full.
    pub overflowed: AtomicBool,
    pub wake: Notify,
    /// Shared-subscription deliveries this session may still take (see `shared.rs`).
    pub shared_credit: AtomicI64,
    /// Who the client is, for the admin API; subscriptions kept current by the connection.
    pub info: Mutex<ClientInfo>,
    pub stats: Arc<crate::metrics::ClientStats>,
    /// Set by the admin API before it kicks the client: DISCONNECT 0x98, not 0x8E.
    pub admin_kick: AtomicBool,
}

/// What the admin API shows of a connected client.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub username: Option<String>,
    pub peer: crate::connection::PeerInfo,
    /// 4 for MQTT 3.1.1, 5 for MQTT 5.0.
    pub protocol: u8,
    /// When CONNACK was sent, in ms since the Unix epoch.
    pub connected_at_ms: i64,
    /// Effective keepalive, in seconds.
    pub keep_alive_secs: u64,
    pub clean_start: bool,
    /// Session expiry interval granted, in seconds (0: ends with the connection).
    pub expiry_secs: u32,
    /// Filter as subscribed → granted QoS.
    pub subscriptions: BTreeMap<String, u8>,
}

/// A connected client id: how to take it over and when it is gone.
pub struct Online {
    pub id: SubscriberId,
    pub kick: Arc<Notify>,
    pub gone: Arc<Notify>,
    pub gone_flag: Arc<AtomicBool>,
    /// In a cluster: the journal version the connection claimed its session with.
    pub journal: Option<axle_engine::journal::Version>,
}

pub struct Hub {
    pub engine: Arc<Engine>,
    pub config: Config,
    pub tree: RwLock<TopicTree>,
    pub sessions: RwLock<HashMap<SubscriberId, Arc<SessionHandle>>>,
    pub online: Mutex<HashMap<String, Online>>,
    pub retained: RwLock<BTreeMap<String, Arc<Message>>>,
    /// Shared-subscription groups' dispatch state.
    pub shared: SharedGroups,
    next_id: AtomicU64,
    /// Wills waiting out their delay, by client id: cancelled if the client reconnects.
    pub pending_wills: Mutex<HashMap<String, Arc<Notify>>>,
    /// Access rules from `acl_file`; without one, `auth.acl_default` decides.
    pub acl: Option<crate::acl::Acl>,
    /// Authentication chain, bans, flapping detection and rate limits.
    pub auth: Arc<crate::auth::Auth>,
    /// Counters read by the metrics endpoint, `$SYS` and the admin API.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The Parquet exporters' counters and checkpoints, set once they run (for `/metrics`).
    pub exports: RwLock<Vec<Arc<axle_query::ExportStats>>>,
    /// Set to `true` at shutdown: every connection ends with DISCONNECT 0x8B and saves its
    /// session.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// Connections being served (from accept to the end of `finish`).
    pub connections: std::sync::atomic::AtomicUsize,
}

/// Depth of a session's live delivery queue; past it the session reads from the log.
pub const QUEUE_DEPTH: usize = 4096;

impl Hub {
    /// Creates the hub and loads retained messages from the metadata store.
    pub fn new(
        engine: Arc<Engine>,
        config: Config,
        acl: Option<crate::acl::Acl>,
        auth: Arc<crate::auth::Auth>,
    ) -> Arc<Hub> {
        let mut retained = BTreeMap::new();
        match engine.meta().scan_prefix("retained", b"") {
            Ok(all) => {
                for (k, v) in all {
                    match crate::retained::decode(&v) {
                        Some(m) => {
                            retained.insert(String::from_utf8_lossy(&k).to_string(), Arc::new(m));
                        }
                        None => {
                            tracing::warn!(topic = %String::from_utf8_lossy(&k), "unreadable retained message dropped")
                        }
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "could not load retained messages"),
        }
        let metrics = Arc::new(crate::metrics::Metrics::new(&config.metrics.topics));
        Arc::new(Hub {
            engine,
            config,
            tree: RwLock::new(TopicTree::default()),
            sessions: RwLock::new(HashMap::new()),
            online: Mutex::new(HashMap::new()),
            retained: RwLock::new(retained),
            shared: SharedGroups::default(),
            next_id: AtomicU64::new(1),
            pending_wills: Mutex::new(HashMap::new()),
            acl,
            auth,
            metrics,
            exports: RwLock::new(Vec::new()),
            shutdown: tokio::sync::watch::channel(false).0,
            connections: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Asks every connection to end and waits up to `timeout` for them to save their
    /// sessions. Returns how many were still open.
    pub async fn shut_down_connections(&self, timeout: std::time::Duration) -> usize {
        self.shutdown.send_replace(true);
        let until = tokio::time::Instant::now() + timeout;
        loop {
            let open = self.connections.load(Ordering::Acquire);
            if open == 0 || tokio::time::Instant::now() >= until {
                return open;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    pub fn next_subscriber_id(&self) -> SubscriberId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a connected session's delivery queue.
    pub fn register(&self, client_id: &str, info: ClientInfo) -> (Arc<SessionHandle>, mpsc::Receiver<Delivery>) {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let n = self.engine.partitions().len();
        let handle = Arc::new(SessionHandle {
            id: self.next_subscriber_id(),
            client_id: client_id.to_string(),
            tx,
            last_dispatched: (0..n).map(|_| AtomicU64::new(UNKNOWN)).collect(),
            overflowed: AtomicBool::new(false),
            wake: Notify::new(),
            shared_credit: AtomicI64::new(0),
            info: Mutex::new(info),
            stats: Arc::default(),
            admin_kick: AtomicBool::new(false),
        });
        self.sessions.write().insert(handle.id, handle.clone());
        (handle, rx)
    }

    /// Disconnects `client_id` with DISCONNECT 0x98 (administrative action). Returns false if
    /// it is not connected. Its session is kept or ends as its expiry says.
    pub fn kick(&self, client_id: &str) -> bool {
        let Some((id, kick)) = self.online.lock().get(client_id).map(|o| (o.id, o.kick.clone())) else { return false };
        if let Some(h) = self.sessions.read().get(&id) {
            h.admin_kick.store(true, Ordering::Release);
        }
        kick.notify_one();
        true
    }

    /// The handle of connected client `client_id`.
    pub fn connected(&self, client_id: &str) -> Option<Arc<SessionHandle>> {
        let id = self.online.lock().get(client_id).map(|o| o.id)?;
        self.sessions.read().get(&id).cloned()
    }

    pub fn unregister(&self, id: SubscriberId) {
        self.sessions.write().remove(&id);
    }

    /// Starts one dispatcher task per partition, each following its partition's tail (and,
    /// in a cluster, the task that disconnects clients whose session another node took).
    pub fn spawn_dispatchers(self: &Arc<Self>) {
        if let Some(j) = self.engine.journal() {
            let mut rx = j.superseded();
            let hub = self.clone();
            tokio::spawn(async move {
                loop {
                    let (client, version) = match rx.recv().await {
                        Ok(x) => x,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(
                                missed = n,
                                "session take-over notices missed; those clients are told at their next save"
                            );
                            continue;
                        }
                        Err(_) => return,
                    };
                    if let Some(o) = hub.online.lock().get(&client) {
                        if o.journal.is_some_and(|mine| mine.superseded_by(&version)) {
                            tracing::info!(client_id = %client, node = version.node, "session taken over by another node");
                            o.kick.notify_one();
                        }
                    }
                }
            });
        }
        self.spawn_partition_dispatchers();
    }

    /// Starts one dispatcher per partition, all on a thread of their own (`axle-dispatch`)
    /// with a single-threaded runtime.
    ///
    /// Why a thread of their own: on the shared runtime a dispatcher is one task among
    /// thousands of connection tasks and runs once per turn of the run queue, tens of
    /// milliseconds apart under a publish flood (measured: ~45 ms with 1,000 publishers on 2
    /// cores). Meanwhile the batches it has not reached lose their in-memory memos to the
    /// memo bound and must be read back from the file, which costs more CPU and lags it
    /// further. A thread that sleeps when caught up is woken by the scheduler as soon as
    /// there is work, so it keeps to the tail. The dispatchers stop when the log closes or
    /// when the runtime that called this shuts down.
    fn spawn_partition_dispatchers(self: &Arc<Self>) {
        // Dropped with the calling runtime's tasks: the dispatch thread then ends.
        let (alive_tx, alive_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _alive = alive_tx;
            std::future::pending::<()>().await
        });
        let hub = self.clone();
        let spawned = std::thread::Builder::new().name("axle-dispatch".into()).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "could not start the dispatch runtime; no live delivery");
                    return;
                }
            };
            rt.block_on(async move {
                let mut loops = tokio::task::JoinSet::new();
                for p in hub.engine.partitions() {
                    loops.spawn(dispatch_partition(hub.clone(), p.id, p.log.clone()));
                }
                tokio::select! {
                    _ = async { while loops.join_next().await.is_some() {} } => {}
                    _ = alive_rx => {}
                }
            });
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start the dispatch thread; dispatching on the shared runtime");
            for p in self.engine.partitions() {
                tokio::spawn(dispatch_partition(self.clone(), p.id, p.log.clone()));
            }
        }
    }

    /// Hands records of partition `pid` (in offset order) to every connected session that
    /// subscribes to their topics.
    ///
    /// A run of consecutive records with the same topic (what one connection's read usually
    /// brings) is matched against the subscription tree once. The tree's lock is released
    /// before the sessions' is taken, as everywhere else.
    pub fn dispatch_batch(&self, pid: usize, records: &[(u64, Arc<Message>)]) {
        let mut runs: Vec<MatchRun> = Vec::new();
        {
            let tree = self.tree.read();
            let mut at = 0;
            while at < records.len() {
                let topic = records[at].1.topic.as_str();
                let len = records[at..].iter().take_while(|(_, m)| m.topic == topic).count();
                let mut run = MatchRun { range: at..at + len, ids: Vec::new(), groups: Vec::new() };
                tree.for_each_match(topic, |m| match m {
                    Match::Subscriber(id) => run.ids.push(id),
                    Match::Shared { key, members } => run.groups.push((key.clone(), members.to_vec())),
                });
                if !run.ids.is_empty() || !run.groups.is_empty() {
                    run.ids.sort_unstable();
                    run.ids.dedup();
                    runs.push(run);
                }
                at += len;
            }
        }
        if runs.is_empty() {
            return;
        }
        let sessions = self.sessions.read();
        let mut handles: Vec<&Arc<SessionHandle>> = Vec::new();
        for run in runs {
            let records = &records[run.range];
            // Each subscriber looked up once per run, not once per record.
            handles.clear();
            handles.extend(run.ids.iter().filter_map(|id| sessions.get(id)));
            for (offset, msg) in records {
                for h in &handles {
                    let prev_end = h.last_dispatched[pid].load(Ordering::Relaxed);
                    let d = Delivery { pid, offset: *offset, prev_end, msg: msg.clone(), shared: None };
                    if h.tx.try_send(d).is_ok() {
                        h.last_dispatched[pid].store(offset + 1, Ordering::Relaxed);
                    } else {
                        // The session must not take its next queued delivery as contiguous
                        // with the last one: this record lies between them.
                        h.last_dispatched[pid].store(UNKNOWN, Ordering::Relaxed);
                        h.overflowed.store(true, Ordering::Relaxed);
                        h.wake.notify_one();
                    }
                }
            }
            for (key, members) in &run.groups {
                self.shared.dispatch_run(&sessions, key, members, pid, records);
            }
        }
    }

    /// Re-offers shared-subscription messages a departing member left unacknowledged, and
    /// forgets the groups it was the last member of.
    pub fn redispatch_shared(&self, deliveries: Vec<Delivery>, left_groups: &[String]) {
        let sessions = self.sessions.read();
        let tree = &self.tree;
        self.shared.redispatch(
            &sessions,
            |key| {
                let (group, filter) = crate::topic_tree::split_shared_key(key);
                tree.read().shared_members(filter, group)
            },
            deliveries,
        );
        for key in left_groups {
            let (group, filter) = crate::topic_tree::split_shared_key(key);
            if self.tree.read().shared_members(filter, group).is_empty() {
                self.shared.forget(key);
            }
        }
    }

    /// Stores or clears (empty payload) the retained message of `msg.topic`.
    /// Keeps a retained PUBLISH as it arrives, on a single node. In a cluster every node
    /// keeps retained messages from the committed records its dispatchers read instead, so
    /// that each node has them and none is kept that was not committed.
    pub fn retain_on_publish(&self, msg: &Message) {
        if msg.retain && self.engine.replicator().is_none() {
            self.set_retained(msg);
        }
    }

    pub fn set_retained(&self, msg: &Message) {
        let meta = self.engine.meta();
        let result = if msg.payload.is_empty() {
            self.retained.write().remove(&msg.topic);
            meta.delete("retained", msg.topic.as_bytes(), false)
        } else {
            let mut m = msg.clone();
            m.retain = true;
            let enc = crate::retained::encode(&m);
            self.retained.write().insert(m.topic.clone(), Arc::new(m));
            meta.put("retained", msg.topic.as_bytes(), &enc, false)
        };
        if let Err(e) = result {
            tracing::error!(topic = %msg.topic, error = %e, "could not store the retained message");
        }
    }

    /// Retained messages whose topic matches `filter`, skipping expired ones.
    pub fn retained_matching(&self, filter: &str, now_ms: i64) -> Vec<Arc<Message>> {
        self.retained
            .read()
            .values()
            .filter(|m| axle_engine::topic::matches(filter, &m.topic) && m.expires_at.is_none_or(|x| x > now_ms))
            .cloned()
            .collect()
    }
}

/// Follows partition `pid`'s tail and hands each chunk of messages to [`Hub::dispatch_batch`]
/// until the log closes.
async fn dispatch_partition(hub: Arc<Hub>, pid: usize, part: axle_engine::log::Partition) {
    let replicated = hub.engine.replicator().is_some();
    let tail = |from| MessageTail::new(part.clone(), from, 1024, 4 << 20);
    let mut reader = tail(part.bounds().end);
    loop {
        match reader.next().await {
            Ok(messages) => {
                if replicated {
                    for (_, m) in messages.iter().filter(|(_, m)| m.retain) {
                        hub.set_retained(m);
                    }
                }
                hub.dispatch_batch(pid, &messages);
            }
            Err(axle_engine::log::LogError::Closed) => return,
            Err(e) => {
                // Retention overtook the dispatcher, or a read failed: skip to the end.
                // Sessions notice the gap and read the log themselves.
                tracing::warn!(partition = pid, error = %e, "dispatcher skips to the partition end");
                reader = tail(part.bounds().end);
            }
        }
    }
}

/// Consecutive records with one topic, and the subscribers that topic matches.
struct MatchRun {
    /// Indexes of the run's records in the batch.
    range: std::ops::Range<usize>,
    /// Non-shared subscribers, sorted, once each.
    ids: Vec<SubscriberId>,
    /// Shared groups: key and members.
    groups: Vec<(Arc<str>, Vec<SubscriberId>)>,
}
