//! `fan-in` / `fan-in-q0`: N publishers to `v/{i}/telemetry`, consumers on the shared
//! subscription `$share/bench/v/+/telemetry`. Every payload carries `publisher:seq`, so lost
//! and duplicated messages are counted exactly.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rumqttc::{Event, Incoming, Outgoing, QoS};
use tokio::sync::{mpsc, watch, Semaphore};

use super::client::{client_at, disconnect, host_for, parse_payload, payload, wait_connack, wait_suback};
use super::wire::WireConn;
use crate::percentile;

/// The client library the workload's connections use (the same for every broker in a run).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientKind {
    /// [`WireConn`]: one task per connection, batched writes; the tool stays small next to
    /// the broker.
    Wire,
    /// rumqttc 0.24: an event loop and a client handle per connection.
    Rumqttc,
}

/// Messages each connection keeps in flight (QoS 1), as rumqttc's `inflight` setting.
const IN_FLIGHT: usize = 100;

#[derive(Clone, Debug)]
pub struct FanInParams {
    pub port: u16,
    pub publishers: usize,
    pub messages: usize,
    pub payload: usize,
    pub qos: QoS,
    pub consumers: usize,
    /// Connections opened at the same time while connecting the publishers.
    pub connect_concurrency: usize,
    /// Aggregate publish rate (msgs/s) spread evenly over the publishers; `None` = as fast as
    /// the in-flight window allows.
    pub rate: Option<f64>,
    pub client: ClientKind,
}

/// Where the clients connect when not all to one broker: publisher `i` to
/// `publishers[i % len]`, every consumer to `consumers` (a shared subscription is per node).
#[derive(Clone, Debug)]
pub struct Targets {
    pub publishers: Vec<(String, u16)>,
    pub consumers: (String, u16),
}

#[derive(Clone, Debug, Default)]
pub struct FanInResult {
    pub total: u64,
    pub published_per_s: f64,
    pub acked_per_s: f64,
    /// Distinct messages received by the consumers per second, from the start signal to the
    /// last message received.
    pub received_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub lost: u64,
    pub duplicated: u64,
    pub secs: f64,
}

struct Shared {
    seen: Vec<AtomicU32>,
    received: AtomicU64,
    /// Nanoseconds since `base` of the latest message received.
    last_recv_ns: AtomicU64,
    base: Instant,
    messages: usize,
}

impl Shared {
    fn record(&self, p: &[u8]) {
        if let Some((publisher, seq)) = parse_payload(p) {
            if let Some(slot) = self.seen.get(publisher * self.messages + seq) {
                slot.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.received.fetch_add(1, Ordering::Relaxed);
        self.last_recv_ns.fetch_max(self.base.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

pub(crate) struct PubStats {
    lat_ms: Vec<f64>,
    last_sent: Instant,
    last_ack: Instant,
}

/// Runs the workload against one broker on `p.port` (clients spread over 127.0.0.x by
/// [`host_for`]).
pub async fn run(p: FanInParams) -> anyhow::Result<FanInResult> {
    run_at(p, None).await
}

/// Runs the workload with the clients at `targets` (`None`: as [`run`]).
pub async fn run_at(p: FanInParams, targets: Option<Targets>) -> anyhow::Result<FanInResult> {
    let publisher_at = |i: usize| match &targets {
        Some(t) if !t.publishers.is_empty() => t.publishers[i % t.publishers.len()].clone(),
        _ => (host_for(i), p.port),
    };
    let consumer_at = |c: usize| targets.as_ref().map_or_else(|| (host_for(c), p.port), |t| t.consumers.clone());
    let total = (p.publishers * p.messages) as u64;
    let shared = Arc::new(Shared {
        seen: (0..total).map(|_| AtomicU32::new(0)).collect(),
        received: AtomicU64::new(0),
        last_recv_ns: AtomicU64::new(0),
        base: Instant::now(),
        messages: p.messages,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    // The consumers run on a runtime of their own: on the publishers' runtime a woken consumer
    // waited behind ~1,000 runnable publisher tasks, and the consumers, not the broker, set
    // the end-to-end rate.
    let consumer_rt = OwnRuntime(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fan-in-consumer")
            .enable_all()
            .build()
            .context("starting the consumers' runtime")?,
    ));
    let mut consumers = Vec::new();
    for c in 0..p.consumers {
        let (host, port) = consumer_at(c);
        let id = format!("consumer-{c}-{}", rand::random::<u32>());
        let (shared, stop) = (shared.clone(), stop_rx.clone());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
        let kind = p.client;
        consumers.push(consumer_rt.handle().spawn(async move {
            let subscribed = async {
                let mut client = Client::connect(kind, id, host, port, 100, 30).await?;
                client.subscribe_shared(30).await?;
                anyhow::Ok(client)
            };
            match subscribed.await {
                Ok(client) => {
                    let _ = ready_tx.send(Ok(()));
                    match client {
                        Client::Wire(conn) => consume_wire(c, conn, shared, stop).await,
                        Client::Rumqttc(b) => {
                            let (cl, el) = *b;
                            consume_rumqttc(c, cl, el, shared, stop).await
                        }
                    }
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    Ok(())
                }
            }
        }));
        ready_rx.await.context("a consumer task ended before subscribing")?.with_context(|| format!("consumer {c}"))?;
    }

    // Publishers connect in waves, report readiness, then wait for one start signal.
    let (start_tx, start_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::channel::<anyhow::Result<()>>(p.publishers.max(1));
    let connect_gate = Arc::new(Semaphore::new(p.connect_concurrency.max(1)));
    let mut publishers = Vec::new();
    for i in 0..p.publishers {
        let (ready, mut start, gate) = (ready_tx.clone(), start_rx.clone(), connect_gate.clone());
        let p = p.clone();
        let (host, port) = publisher_at(i);
        publishers.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await?;
            let id = format!("pub-{i}-{}", rand::random::<u32>());
            let connected =
                Client::connect(p.client, id, host, port, 200, 60).await.with_context(|| format!("publisher {i}"));
            drop(permit);
            let (publisher, ok) = match connected {
                Ok(c) => (Some(c), Ok(())),
                Err(e) => (None, Err(e)),
            };
            let _ = ready.send(ok).await;
            let Some(publisher) = publisher else {
                bail!("publisher {i} could not connect");
            };
            while !*start.borrow() {
                start.changed().await?;
            }
            match publisher {
                Client::Wire(conn) => publish_all_wire(i, conn, &p).await,
                Client::Rumqttc(c) => {
                    let (cl, el) = *c;
                    publish_all(i, cl, el, &p).await
                }
            }
        }));
    }
    drop(ready_tx);
    let connect_started = Instant::now();
    for _ in 0..p.publishers {
        match tokio::time::timeout(Duration::from_secs(300), ready_rx.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => {
                let _ = stop_tx.send(true);
                return Err(e.context("connecting the publishers"));
            }
            Ok(None) => bail!("a publisher task ended before connecting"),
            Err(_) => bail!("publishers not all connected after 300 s"),
        }
    }
    let connect_secs = connect_started.elapsed().as_secs_f64();
    if connect_secs > 10.0 {
        eprintln!("  (connecting {} publishers took {connect_secs:.1} s)", p.publishers);
    }

    let started = Instant::now();
    let start_ns = shared.base.elapsed().as_nanos() as u64;
    start_tx.send(true).context("starting the publishers")?;
    // `AXLE_LOAD_TRACE=1` prints the messages received in each second of the run, to show
    // whether delivery keeps pace with ingest or drains a backlog afterwards.
    let trace = std::env::var_os("AXLE_LOAD_TRACE").is_some().then(|| {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut prev = 0;
            for s in 1.. {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = shared.received.load(Ordering::Relaxed);
                eprintln!("    t={s:>3} s received {:>8} in the last second, {now} in all", now - prev);
                prev = now;
            }
        })
    });
    let mut lat = Vec::with_capacity(total as usize);
    let (mut last_sent, mut last_ack) = (started, started);
    let mut first_err = None;
    for t in publishers {
        match t.await.context("publisher task panicked")? {
            Ok(s) => {
                lat.extend(s.lat_ms);
                last_sent = last_sent.max(s.last_sent);
                last_ack = last_ack.max(s.last_ack);
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    // Drain: until every message arrived or nothing arrived for 5 s.
    let mut prev = u64::MAX;
    let mut idle_since = Instant::now();
    loop {
        let now = shared.received.load(Ordering::Relaxed);
        if now >= total || consumers.iter().all(|c| c.is_finished()) {
            break;
        }
        if now != prev {
            prev = now;
            idle_since = Instant::now();
        } else if idle_since.elapsed() > Duration::from_secs(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(t) = trace {
        t.abort();
    }
    // A late duplicate would show up right after the last message: give it a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop_tx.send(true);
    for c in consumers {
        if let Err(e) = c.await.context("consumer task panicked")? {
            first_err.get_or_insert(e);
        }
    }
    drop(consumer_rt);
    if let Some(e) = first_err {
        return Err(e);
    }
    let unique = shared.seen.iter().filter(|c| c.load(Ordering::Relaxed) > 0).count() as u64;
    let duplicated: u64 = shared.seen.iter().map(|c| u64::from(c.load(Ordering::Relaxed).saturating_sub(1))).sum();
    let last_recv_ns = shared.last_recv_ns.load(Ordering::Relaxed);
    let recv_secs = (last_recv_ns.saturating_sub(start_ns) as f64 / 1e9).max(1e-3);
    lat.sort_by(|a, b| a.total_cmp(b));
    let rate = |t: Instant| total as f64 / t.duration_since(started).as_secs_f64().max(1e-3);
    Ok(FanInResult {
        total,
        published_per_s: rate(last_sent),
        acked_per_s: if p.qos == QoS::AtMostOnce { f64::NAN } else { rate(last_ack) },
        received_per_s: unique as f64 / recv_secs,
        p50_ms: percentile(&lat, 50.0),
        p99_ms: percentile(&lat, 99.0),
        lost: total - unique,
        duplicated,
        secs: recv_secs,
    })
}

/// A runtime started from async code: dropping a `Runtime` blocks, which async code must not
/// do, so this one is shut down in the background when dropped (on every return path).
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl OwnRuntime {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("present until dropped").handle()
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// A connected client of either kind (clean session, [`IN_FLIGHT`] QoS 1 messages in flight).
enum Client {
    Wire(WireConn),
    Rumqttc(Box<(rumqttc::AsyncClient, rumqttc::EventLoop)>),
}

impl Client {
    /// Connects and waits up to `secs` for CONNACK; `cap` is rumqttc's request queue.
    async fn connect(
        kind: ClientKind,
        id: String,
        host: String,
        port: u16,
        cap: usize,
        secs: u64,
    ) -> anyhow::Result<Client> {
        Ok(match kind {
            ClientKind::Wire => Client::Wire(WireConn::connect(&host, port, id, true, secs).await?.0),
            ClientKind::Rumqttc => {
                let (cl, mut el) = client_at(id, host, port, true, IN_FLIGHT as u16, cap);
                wait_connack(&mut el, secs).await?;
                Client::Rumqttc(Box::new((cl, el)))
            }
        })
    }

    /// Subscribes to the workload's shared subscription at QoS 1 and waits up to `secs` for
    /// the SUBACK.
    async fn subscribe_shared(&mut self, secs: u64) -> anyhow::Result<()> {
        const FILTER: &str = "$share/bench/v/+/telemetry";
        match self {
            Client::Wire(conn) => conn.subscribe(FILTER, codec_qos(QoS::AtLeastOnce), secs).await,
            Client::Rumqttc(b) => {
                let (cl, el) = &mut **b;
                cl.subscribe(FILTER, QoS::AtLeastOnce).await?;
                wait_suback(el, secs).await
            }
        }
    }
}

fn codec_qos(q: QoS) -> axle_broker::codec::QoS {
    match q {
        QoS::AtMostOnce => axle_broker::codec::QoS::AtMostOnce,
        QoS::AtLeastOnce => axle_broker::codec::QoS::AtLeastOnce,
        QoS::ExactlyOnce => axle_broker::codec::QoS::ExactlyOnce,
    }
}

/// A consumer on rumqttc: records every PUBLISH until `stop`.
async fn consume_rumqttc(
    c: usize,
    cl: rumqttc::AsyncClient,
    mut el: rumqttc::EventLoop,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let _keep = cl;
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return Ok(()),
            ev = el.poll() => match ev {
                Ok(Event::Incoming(Incoming::Publish(m))) => shared.record(&m.payload),
                Ok(_) => {}
                Err(e) => bail!("consumer {c} lost its connection: {e}"),
            },
        }
    }
}

/// A consumer on [`WireConn`]: records every PUBLISH and acknowledges each QoS 1 one, all the
/// acknowledgements of one read in one write, until `stop`.
async fn consume_wire(
    c: usize,
    mut conn: WireConn,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    loop {
        let packets = tokio::select! {
            biased;
            _ = stop.changed() => {
                conn.disconnect().await;
                return Ok(());
            }
            r = conn.read_packets() => r.with_context(|| format!("consumer {c} lost its connection"))?,
        };
        for p in packets {
            if let axle_broker::codec::Packet::Publish(m) = p {
                shared.record(&m.payload);
                if let Some(id) = m.packet_id {
                    conn.queue_puback(id)?;
                }
            }
        }
        conn.flush().await.with_context(|| format!("consumer {c}"))?;
    }
}

/// [`publish_all`] on [`WireConn`]: keeps up to [`IN_FLIGHT`] QoS 1 messages outstanding,
/// writes every message the window (or the rate) allows in one `write`, and times each PUBACK
/// from that write. QoS 0 messages are written in runs of [`IN_FLIGHT`].
pub(crate) async fn publish_all_wire(i: usize, mut conn: WireConn, p: &FanInParams) -> anyhow::Result<PubStats> {
    let topic = format!("v/{i}/telemetry");
    let (messages, size, qos) = (p.messages, p.payload, codec_qos(p.qos));
    let acks = qos != axle_broker::codec::QoS::AtMostOnce;
    let per_publisher = p.rate.map(|r| r / p.publishers.max(1) as f64);
    let t0 = tokio::time::Instant::now();
    let due = |seq: usize| per_publisher.map(|r| t0 + Duration::from_secs_f64(seq as f64 / r));
    // Packet ids run 1..=ID_SPAN and are reused; slot `id` holds the send time of its
    // message. A small span keeps the table in cache (1,000 publishers with a 64 Ki-slot table
    // each zeroed and faulted in 1 GiB).
    const ID_SPAN: u16 = 2 * IN_FLIGHT as u16;
    let mut sent_at: Vec<Option<Instant>> = vec![None; usize::from(ID_SPAN) + 1];
    let next = |id: u16| if id >= ID_SPAN { 1 } else { id + 1 };
    let mut next_id: u16 = 1;
    let mut lat_ms = Vec::with_capacity(messages);
    let (mut seq, mut in_flight, mut acked) = (0usize, 0usize, 0usize);
    let (mut last_sent, mut last_ack) = (Instant::now(), Instant::now());
    loop {
        let now = tokio::time::Instant::now();
        let (mut ids, mut queued) = (Vec::new(), 0);
        while seq < messages && (!acks || in_flight < IN_FLIGHT) && queued < IN_FLIGHT {
            if due(seq).is_some_and(|d| d > now) {
                break;
            }
            let id = if acks {
                while sent_at[usize::from(next_id)].is_some() {
                    next_id = next(next_id);
                }
                let id = next_id;
                next_id = next(next_id);
                ids.push(id);
                Some(id)
            } else {
                None
            };
            conn.queue_publish(&topic, qos, id, bytes::Bytes::from(payload(i, seq, size)))?;
            queued += 1;
            seq += 1;
            in_flight += usize::from(acks);
        }
        if queued > 0 {
            conn.flush().await.with_context(|| format!("publisher {i}: {seq} queued, {acked} acked"))?;
            last_sent = Instant::now();
            for &id in &ids {
                sent_at[usize::from(id)] = Some(last_sent);
            }
        }
        if (!acks && seq >= messages) || (acks && acked >= messages) {
            break;
        }
        let next_due = if seq < messages && (!acks || in_flight < IN_FLIGHT) { due(seq) } else { None };
        if !acks {
            if let Some(d) = next_due {
                tokio::time::sleep_until(d).await;
            }
            continue;
        }
        let packets = tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(60), conn.read_packets()) => match r {
                Ok(r) => r.with_context(|| format!("publisher {i}: connection error after {seq} sent, {acked} acked"))?,
                Err(_) => bail!("publisher {i}: nothing happened for 60 s ({seq} sent, {acked} acked)"),
            },
            _ = tokio::time::sleep_until(next_due.unwrap_or(t0)), if next_due.is_some() => continue,
        };
        for packet in packets {
            if let axle_broker::codec::Packet::PubAck(a) = packet {
                if let Some(t) = sent_at.get_mut(usize::from(a.packet_id)).and_then(Option::take) {
                    acked += 1;
                    in_flight -= 1;
                    last_ack = Instant::now();
                    lat_ms.push(last_ack.duration_since(t).as_secs_f64() * 1e3);
                }
            }
        }
    }
    conn.disconnect().await;
    Ok(PubStats { lat_ms, last_sent, last_ack })
}

/// Publishes `messages` messages as fast as the client's in-flight window allows and times
/// each PUBACK from the moment the PUBLISH left the event loop.
pub(crate) async fn publish_all(
    i: usize,
    cl: rumqttc::AsyncClient,
    mut el: rumqttc::EventLoop,
    p: &FanInParams,
) -> anyhow::Result<PubStats> {
    let topic = format!("v/{i}/telemetry");
    let (messages, size, qos) = (p.messages, p.payload, p.qos);
    let per_publisher = p.rate.map(|r| r / p.publishers.max(1) as f64);
    let sender = {
        let cl = cl.clone();
        tokio::spawn(async move {
            let t0 = tokio::time::Instant::now();
            for seq in 0..messages {
                if let Some(r) = per_publisher {
                    tokio::time::sleep_until(t0 + Duration::from_secs_f64(seq as f64 / r)).await;
                }
                cl.publish(topic.clone(), qos, false, payload(i, seq, size)).await?;
            }
            Ok::<_, rumqttc::ClientError>(())
        })
    };
    // Packet ids are reused: the send time of the message under each id in flight.
    let mut sent_at: std::collections::HashMap<u16, Instant> = std::collections::HashMap::with_capacity(256);
    let mut lat_ms = Vec::with_capacity(messages);
    let (mut sent, mut acked) = (0usize, 0usize);
    let (mut last_sent, mut last_ack) = (Instant::now(), Instant::now());
    let done = |sent: usize, acked: usize| if qos == QoS::AtMostOnce { sent >= messages } else { acked >= messages };
    while !done(sent, acked) {
        match tokio::time::timeout(Duration::from_secs(60), el.poll()).await {
            Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                sent += 1;
                last_sent = Instant::now();
                sent_at.insert(pkid, last_sent);
            }
            Ok(Ok(Event::Incoming(Incoming::PubAck(a)))) => {
                acked += 1;
                last_ack = Instant::now();
                if let Some(t) = sent_at.remove(&a.pkid) {
                    lat_ms.push(last_ack.duration_since(t).as_secs_f64() * 1e3);
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("publisher {i}: connection error after {sent} sent, {acked} acked: {e}"),
            Err(_) => bail!("publisher {i}: nothing happened for 60 s ({sent} sent, {acked} acked)"),
        }
    }
    sender.await.context("sender task")?.with_context(|| format!("publisher {i}: queueing a publish"))?;
    disconnect(&cl, &mut el).await;
    Ok(PubStats { lat_ms, last_sent, last_ack })
}
