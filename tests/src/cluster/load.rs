//! MQTT load against a cluster whose nodes come and go: QoS 1 publishers that move to another
//! node when theirs fails and resend what was not acknowledged (with DUP), and a persistent
//! subscriber that records every delivery. What they saw is kept in a [`Ledger`] and a list of
//! [`Delivery`]s for the checks in [`super::check`].
//!
//! Each rumqttc event loop runs in its own task and reports on a channel, so the control loops
//! never cancel a `poll` half-way through a write.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, Outgoing, Publish, QoS, Request};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::check::{encode, Delivery, Ledger, MsgId};

/// Where each node's MQTT listener is now: `None` while the node is down or paused. The
/// harness updates it; load tasks read it when they (re)connect. Node ids are 1-based.
#[derive(Clone, Debug, Default)]
pub struct Directory(Arc<RwLock<Vec<Option<SocketAddr>>>>);

impl Directory {
    pub fn new(nodes: usize) -> Directory {
        Directory(Arc::new(RwLock::new(vec![None; nodes])))
    }

    pub fn set(&self, node: u32, addr: Option<SocketAddr>) {
        let mut v = self.0.write().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = v.get_mut(node as usize - 1) {
            *slot = addr;
        }
    }

    pub fn mqtt(&self, node: u32) -> Option<SocketAddr> {
        let v = self.0.read().unwrap_or_else(|e| e.into_inner());
        v.get(node as usize - 1).copied().flatten()
    }

    pub fn len(&self) -> u32 {
        self.0.read().unwrap_or_else(|e| e.into_inner()).len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first available node trying `home`, then the next ids in turn, starting `skip`
    /// nodes after `home` (so that repeated failures rotate over the nodes).
    fn pick(&self, home: u32, skip: u32) -> Option<(u32, SocketAddr)> {
        let n = self.len();
        (0..n).map(|k| (home - 1 + skip + k) % n + 1).find_map(|node| self.mqtt(node).map(|a| (node, a)))
    }
}

/// Publisher stream ids are `client * STREAMS_PER_CLIENT + topic index`.
pub const STREAMS_PER_CLIENT: u32 = 100;

/// The topic of a publisher stream: `v/s{publisher}/telemetry` (one key, one partition, under
/// a stream keyed `levels:2`).
pub fn topic(publisher: u32) -> String {
    format!("v/s{publisher}/telemetry")
}

/// One MQTT 3.1.1 client of the load.
#[derive(Clone, Debug)]
pub struct PublisherSpec {
    /// Client index; its client id is `pub-{client}` and its streams are
    /// `client * STREAMS_PER_CLIENT + 0..topics`.
    pub client: u32,
    /// Topics it publishes to, round robin (at most `STREAMS_PER_CLIENT`).
    pub topics: u32,
    /// Node it connects to first, and first again after each failure.
    pub home: u32,
    /// Messages per second over all its topics.
    pub rate: f64,
    /// Most messages handed to MQTT and not yet acknowledged.
    pub window: usize,
    /// A connection whose oldest unacknowledged PUBLISH waits longer than this is abandoned
    /// and its messages are resent on a new one.
    pub ack_timeout: Duration,
    /// Payload bytes.
    pub payload: usize,
    /// MQTT keepalive: a connection to a node that answers nothing fails after about twice
    /// this (no PINGRESP).
    pub keep_alive: Duration,
    /// Stop producing after this many messages (all topics together); `None`: until stopped.
    pub max_messages: Option<u64>,
}

impl PublisherSpec {
    /// A client on `home` at `rate` msgs/s over 4 topics, 16 in flight, 10 s ack timeout, 5 s
    /// keepalive.
    pub fn new(client: u32, home: u32, rate: f64) -> PublisherSpec {
        PublisherSpec {
            client,
            topics: 4,
            home,
            rate,
            window: 16,
            ack_timeout: Duration::from_secs(10),
            payload: 64,
            keep_alive: Duration::from_secs(5),
            max_messages: None,
        }
    }
}

/// What one publisher client went through.
#[derive(Clone, Debug, Default)]
pub struct PublisherReport {
    pub client: u32,
    pub acked: u64,
    /// CONNACKs received.
    pub connections: u32,
    /// Connections given up because a PUBACK did not come within the ack timeout.
    pub ack_timeouts: u32,
    /// Connection attempts and connections that ended with an error (first few kept).
    pub failures: u32,
    pub errors: Vec<String>,
    /// PUBACKs received per node id.
    pub acked_by_node: BTreeMap<u32, u64>,
    /// Messages still unacknowledged when the publisher stopped.
    pub unacked_at_stop: usize,
}

struct Shared {
    ledger: Mutex<Ledger>,
    acked: AtomicU64,
}

/// Publishers running against a cluster.
pub struct Load {
    /// `Some(deadline)` once stopping: no new messages; unacknowledged ones are still retried
    /// until the deadline.
    stop: watch::Sender<Option<Instant>>,
    tasks: Vec<JoinHandle<PublisherReport>>,
    shared: Arc<Shared>,
}

impl Load {
    /// Starts one task per spec (within a tokio runtime).
    pub fn start(dir: &Directory, specs: Vec<PublisherSpec>) -> Load {
        let shared = Arc::new(Shared { ledger: Mutex::new(Ledger::default()), acked: AtomicU64::new(0) });
        let (stop, rx) = watch::channel(None);
        let tasks =
            specs.into_iter().map(|s| tokio::spawn(publish(s, dir.clone(), shared.clone(), rx.clone()))).collect();
        Load { stop, tasks, shared }
    }

    /// PUBACKs received so far, all publishers together.
    pub fn acked(&self) -> u64 {
        self.shared.acked.load(Ordering::Relaxed)
    }

    /// A copy of the ledger so far.
    pub fn ledger(&self) -> Ledger {
        self.shared.ledger.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until at least `n` PUBACKs were received; false after `timeout`.
    pub async fn wait_acked(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.acked() < n {
            if Instant::now() > deadline || self.tasks.iter().all(|t| t.is_finished()) {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// Stops producing, keeps retrying unacknowledged messages for up to `drain`, and returns
    /// the ledger and each publisher's report.
    pub async fn stop(self, drain: Duration) -> (Ledger, Vec<PublisherReport>) {
        let _ = self.stop.send(Some(Instant::now() + drain));
        let mut reports = Vec::new();
        for t in self.tasks {
            match t.await {
                Ok(r) => reports.push(r),
                Err(e) => {
                    reports.push(PublisherReport { errors: vec![format!("task failed: {e}")], ..Default::default() })
                }
            }
        }
        let ledger = self.shared.ledger.lock().unwrap_or_else(|e| e.into_inner()).clone();
        (ledger, reports)
    }
}

/// A message handed to MQTT and not yet acknowledged.
struct Pending {
    id: MsgId,
    /// Connections (that got a CONNACK) it was handed to. Counted at hand-off, not at the
    /// write: rumqttc may lose the write event of a connection that fails, and a message
    /// handed to a failing connection may have reached the broker.
    handed: u32,
    written_at: Option<Instant>,
}

/// Runs a rumqttc event loop, forwarding every event and every error. Without `reconnect` the
/// first error ends it; with it, the loop waits 500 ms and polls again, which makes rumqttc
/// reconnect with the same options (and so the same session).
fn drive(mut el: EventLoop, reconnect: bool) -> (mpsc::UnboundedReceiver<Result<Event, String>>, JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(ev) => {
                    if tx.send(Ok(ev)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    if tx.send(Err(e.to_string())).is_err() || !reconnect {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    });
    (rx, task)
}

fn note(report: &mut PublisherReport, e: String) {
    report.failures += 1;
    if report.errors.len() < 10 {
        report.errors.push(e);
    }
}

async fn publish(
    spec: PublisherSpec,
    dir: Directory,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<Option<Instant>>,
) -> PublisherReport {
    let mut report = PublisherReport { client: spec.client, ..Default::default() };
    let topics = spec.topics.clamp(1, STREAMS_PER_CLIENT);
    let mut next_seq = vec![0u64; topics as usize];
    let mut produced = 0u64;
    // Hand-off number -> message; resends keep their number, so iteration order is hand-off order.
    let mut pending: BTreeMap<u64, Pending> = BTreeMap::new();
    let mut handoffs = 0u64;
    let interval = Duration::from_secs_f64(1.0 / spec.rate.max(0.1));
    let mut next_due = Instant::now();
    let mut skip = 0u32;
    loop {
        let deadline = *stop.borrow();
        if let Some(d) = deadline {
            if pending.is_empty() || Instant::now() >= d {
                break;
            }
        }
        let Some((node, addr)) = dir.pick(spec.home, skip) else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut o = MqttOptions::new(format!("pub-{}", spec.client), addr.ip().to_string(), addr.port());
        o.set_keep_alive(spec.keep_alive);
        o.set_clean_session(true);
        o.set_inflight(100);
        let (client, mut el) = AsyncClient::new(o, 1000);
        el.network_options.set_connection_timeout(5);
        // Everything unacknowledged goes first, in hand-off order; DUP if handed over before.
        let mut unwritten: VecDeque<u64> = VecDeque::new();
        for (k, m) in pending.iter_mut() {
            // The ack timeout runs from the write on this connection.
            m.written_at = None;
            let mut p = Publish::new(topic(m.id.publisher), QoS::AtLeastOnce, encode(m.id, spec.payload));
            p.dup = m.handed > 0;
            el.pending.push_back(Request::Publish(p));
            unwritten.push_back(*k);
        }
        let (mut events, task) = drive(el, false);
        let mut by_pkid: HashMap<u16, u64> = HashMap::new();
        let mut connected = false;
        let ended: Option<String> = loop {
            let stopping = stop.borrow().is_some();
            let done_producing = spec.max_messages.is_some_and(|m| produced >= m);
            let can_produce = connected && !stopping && !done_producing && pending.len() < spec.window;
            let oldest = pending.values().filter_map(|m| m.written_at).min();
            let stop_at = *stop.borrow();
            if stop_at.is_some() && pending.is_empty() {
                break None;
            }
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(Ok(Event::Incoming(Incoming::ConnAck(a)))) => {
                        if a.code != rumqttc::ConnectReturnCode::Success {
                            break Some(format!("node {node}: connection refused: {:?}", a.code));
                        }
                        connected = true;
                        skip = 0;
                        report.connections += 1;
                        // The resends queued above go out on this connection now.
                        let mut ledger = shared.ledger.lock().unwrap_or_else(|e| e.into_inner());
                        for m in pending.values_mut() {
                            m.handed += 1;
                            if m.handed > 1 {
                                ledger.retried.insert(m.id);
                            }
                        }
                    }
                    Some(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                        let Some(k) = unwritten.pop_front() else {
                            break Some(format!("node {node}: a PUBLISH went out that was not handed over"));
                        };
                        if let Some(m) = pending.get_mut(&k) {
                            m.written_at = Some(Instant::now());
                        }
                        by_pkid.insert(pkid, k);
                    }
                    Some(Ok(Event::Incoming(Incoming::PubAck(a)))) => {
                        if let Some(m) = by_pkid.remove(&a.pkid).and_then(|k| pending.remove(&k)) {
                            shared.ledger.lock().unwrap_or_else(|e| e.into_inner()).acked.push(m.id);
                            shared.acked.fetch_add(1, Ordering::Relaxed);
                            report.acked += 1;
                            *report.acked_by_node.entry(node).or_default() += 1;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break Some(format!("node {node}: {e}")),
                    None => break Some(format!("node {node}: event loop ended")),
                },
                _ = tokio::time::sleep_until(next_due), if can_produce => {
                    let t = (produced % u64::from(topics)) as usize;
                    let id = MsgId { publisher: spec.client * STREAMS_PER_CLIENT + t as u32, seq: next_seq[t] };
                    if let Err(e) = client.try_publish(topic(id.publisher), QoS::AtLeastOnce, false, encode(id, spec.payload)) {
                        break Some(format!("node {node}: handing a PUBLISH over: {e}"));
                    }
                    next_seq[t] += 1;
                    produced += 1;
                    shared.ledger.lock().unwrap_or_else(|e| e.into_inner()).sent.insert(id.publisher, next_seq[t]);
                    handoffs += 1;
                    pending.insert(handoffs, Pending { id, handed: 1, written_at: None });
                    unwritten.push_back(handoffs);
                    // After a stall, go on at the rate instead of bursting to catch up.
                    next_due = (next_due + interval).max(Instant::now() - interval);
                }
                _ = tokio::time::sleep_until(oldest.unwrap_or_else(Instant::now) + spec.ack_timeout), if oldest.is_some() => {
                    report.ack_timeouts += 1;
                    break Some(format!("node {node}: no PUBACK within {:?}", spec.ack_timeout));
                }
                _ = tokio::time::sleep_until(stop_at.unwrap_or_else(Instant::now)), if stop_at.is_some() => break None,
                // An error: the Load was dropped without `stop`, nobody reads the result.
                changed = stop.changed() => if changed.is_err() {
                    break None;
                },
            }
        };
        task.abort();
        match ended {
            None => break,
            Some(e) => {
                note(&mut report, e);
                skip += 1;
                // Give a restarting node or a new leader a moment.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    report.unacked_at_stop = pending.len();
    report
}

/// What a subscriber went through.
#[derive(Clone, Debug, Default)]
pub struct SubscriberReport {
    /// Connection errors (each followed by a reconnect to the same node).
    pub reconnects: u32,
    /// Reconnects whose CONNACK said the session was gone.
    pub sessions_lost: u32,
    pub errors: Vec<String>,
}

/// A subscriber to `v/+/telemetry` at QoS 1 on one node, acknowledging automatically.
pub struct Subscriber {
    /// What the first CONNACK said (a resumed persistent session: true).
    pub session_present: bool,
    stop: watch::Sender<bool>,
    task: JoinHandle<SubscriberReport>,
    got: Arc<Mutex<Vec<Delivery>>>,
}

impl Subscriber {
    /// Connects `client_id` to `addr` (persistent session when `persistent`), subscribes to
    /// `filter` and waits for the SUBACK; then records deliveries until stopped.
    pub async fn start(
        addr: SocketAddr,
        client_id: &str,
        filter: &str,
        persistent: bool,
    ) -> anyhow::Result<Subscriber> {
        Self::start_with(addr, client_id, filter, persistent, true).await
    }

    /// As [`Subscriber::start`]; without `reconnect` the subscriber stops at the first
    /// connection error (a take-over by another connection, say) instead of reconnecting.
    pub async fn start_with(
        addr: SocketAddr,
        client_id: &str,
        filter: &str,
        persistent: bool,
        reconnect: bool,
    ) -> anyhow::Result<Subscriber> {
        let mut o = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        o.set_keep_alive(Duration::from_secs(30));
        o.set_clean_session(!persistent);
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, el) = AsyncClient::new(o, 1000);
        let (mut events, driver) = drive(el, reconnect);
        client.subscribe(filter, QoS::AtLeastOnce).await?;
        let got = Arc::new(Mutex::new(Vec::new()));
        let until = Instant::now() + Duration::from_secs(30);
        let mut session_present = false;
        loop {
            match tokio::time::timeout_at(until, events.recv()).await {
                Ok(Some(Ok(Event::Incoming(Incoming::ConnAck(a))))) => session_present = a.session_present,
                // A resumed session's backlog can arrive before the SUBACK.
                Ok(Some(Ok(Event::Incoming(Incoming::Publish(p))))) => {
                    if let Some(id) = super::check::decode(&p.payload) {
                        got.lock().unwrap_or_else(|e| e.into_inner()).push(Delivery { id, dup: p.dup });
                    }
                }
                Ok(Some(Ok(Event::Incoming(Incoming::SubAck(s))))) => {
                    if s.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) {
                        anyhow::bail!("subscription to {filter} refused on {addr}");
                    }
                    break;
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => anyhow::bail!("subscriber {client_id} on {addr}: {e}"),
                Ok(None) => anyhow::bail!("subscriber {client_id} on {addr}: event loop ended"),
                Err(_) => anyhow::bail!("subscriber {client_id} on {addr}: no SUBACK within 30 s"),
            }
        }
        let (stop, mut stop_rx) = watch::channel(false);
        let sink = got.clone();
        let task = tokio::spawn(async move {
            let _keep = client;
            let mut report = SubscriberReport::default();
            loop {
                tokio::select! {
                    _ = stop_rx.changed() => break,
                    ev = events.recv() => match ev {
                        Some(Ok(Event::Incoming(Incoming::Publish(p)))) => match super::check::decode(&p.payload) {
                            Some(id) => sink.lock().unwrap_or_else(|e| e.into_inner()).push(Delivery { id, dup: p.dup }),
                            None => report.errors.push(format!("foreign payload on {}", p.topic)),
                        },
                        Some(Ok(Event::Incoming(Incoming::ConnAck(a)))) => {
                            if persistent && !a.session_present {
                                report.sessions_lost += 1;
                            }
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            report.reconnects += 1;
                            if report.errors.len() < 10 {
                                report.errors.push(e);
                            }
                        }
                        None => {
                            report.errors.push("event loop ended".into());
                            break;
                        }
                    },
                }
            }
            driver.abort();
            report
        });
        Ok(Subscriber { session_present, stop, task, got })
    }

    /// Deliveries so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.got.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops and returns every delivery, in arrival order, and the report.
    pub async fn stop(self) -> (Vec<Delivery>, SubscriberReport) {
        let _ = self.stop.send(true);
        let report = self.task.await.unwrap_or_else(|e| SubscriberReport {
            errors: vec![format!("subscriber task failed: {e}")],
            ..Default::default()
        });
        let got = self.got.lock().unwrap_or_else(|e| e.into_inner()).clone();
        (got, report)
    }
}
