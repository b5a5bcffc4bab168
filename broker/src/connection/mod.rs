//! One MQTT connection: the CONNECT handshake, the inbound flows (PUBLISH at QoS 0/1/2,
//! SUBSCRIBE, UNSUBSCRIBE, PING, DISCONNECT), keepalive, takeover, and the end of the
//! connection (will message, session save or removal). Outbound delivery is in
//! `outbound.rs`; accepting CONNECT and starting the session in `accept.rs`. The transport
//! is any byte stream.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::stream::{FuturesOrdered, StreamExt};
use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

mod accept;
mod catch_up;
mod inbound;
mod packets;
pub mod peer;
mod shared;

pub use peer::{CertIdentity, PeerInfo, Transport};

use crate::codec::{
    self, ConnAck, Connect, DecodeError, Disconnect, DisconnectProperties, Packet, ProtocolVersion, ReasonCode,
};
use crate::hub::{Delivery, Hub, SessionHandle};
use crate::outbound::Outbound;
use crate::session::SessionState;

/// Time a client has to send CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a persistent session's cursors are saved while connected.
const SAVE_EVERY: Duration = Duration::from_millis(500);

type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = Inbound> + Send>>;

/// A completed inbound batch (see `inbound.rs`).
struct Inbound {
    /// (packet id, QoS) of its QoS 1/2 messages, in arrival order.
    acks: Vec<(u16, u8)>,
    /// Its QoS 0 messages.
    qos0: usize,
    result: Result<(), String>,
}

/// Why a connection ended.
enum End {
    /// DISCONNECT received; `true` if it asks for the will to be published (0x04).
    Disconnect(bool),
    /// The broker closes: send this DISCONNECT reason (v5) and close.
    Server(ReasonCode, String),
    /// The network connection ended or failed.
    Network,
}

/// Serves one connection until it ends; CONNECT must arrive within 10 s.
pub async fn serve<S>(hub: Arc<Hub>, io: S, peer: PeerInfo)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    serve_until(hub, io, peer, Instant::now() + CONNECT_TIMEOUT).await
}

/// Serves one connection until it ends; CONNECT must have been read by `connect_deadline`
/// (a listener's handshake timeout, counted from accept).
pub async fn serve_until<S>(hub: Arc<Hub>, mut io: S, peer: PeerInfo, connect_deadline: Instant)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    hub.connections.fetch_add(1, Ordering::AcqRel);
    let _counted = Counted(hub.clone());
    let listener = hub.metrics.listener(&peer.listener);
    listener.accepted.fetch_add(1, Ordering::Relaxed);
    listener.open.fetch_add(1, Ordering::Relaxed);
    let _open = crate::metrics::OpenConnection(listener);
    let mut rbuf = BytesMut::with_capacity(8 * 1024);
    let max_packet = hub.config.mqtt.max_packet_size;
    let connect = match tokio::time::timeout_at(connect_deadline, read_connect(&mut io, &mut rbuf, max_packet)).await {
        Ok(Ok(c)) => c,
        Ok(Err(reply)) => {
            if let Some((packet, version)) = reply {
                let mut out = BytesMut::new();
                if codec::encode(&packet, version, &mut out).is_ok() {
                    let _ = io.write_all(&out).await;
                }
            }
            tracing::debug!(%peer, "connection closed before a valid CONNECT");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, listener = %peer.listener, "no CONNECT within the handshake timeout; closed");
            return;
        }
    };
    let version = connect.protocol;
    let connect = peer::apply_cert_username(connect, &peer);
    let mut conn = match Connection::accept(hub.clone(), connect, peer).await {
        Ok(c) => c,
        Err(connack) => {
            let mut out = BytesMut::new();
            if codec::encode(&Packet::ConnAck(connack), version, &mut out).is_ok() {
                let _ = io.write_all(&out).await;
            }
            return;
        }
    };
    let mut out = BytesMut::with_capacity(16 * 1024);
    conn.start(&mut out);
    conn.replicated().await;
    let end = if io.write_all(&out).await.is_err() { End::Network } else { conn.run(&mut io, rbuf).await };
    conn.finish(&mut io, end).await;
}

/// Resolves once the hub's shutdown flag is set (never if the hub is gone).
async fn shut_down(rx: &mut tokio::sync::watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Counts a connection out of `Hub::connections` when dropped.
struct Counted(Arc<Hub>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Reads the first packet; it must be CONNECT. On failure, maybe a CONNACK to send.
async fn read_connect<S: AsyncRead + Unpin>(
    io: &mut S,
    rbuf: &mut BytesMut,
    max_packet: u32,
) -> Result<Connect, Option<(Packet, ProtocolVersion)>> {
    loop {
        match codec::decode(rbuf, None, max_packet) {
            Ok(Some(Packet::Connect(c))) => return Ok(c),
            Ok(Some(_)) => return Err(None),
            Ok(None) => {}
            Err(e) => {
                let reason = e.reason_code();
                return Err(match codec::peek_connect_version(rbuf) {
                    Some(ProtocolVersion::V5) => Some((
                        Packet::ConnAck(ConnAck { session_present: false, reason, properties: Default::default() }),
                        ProtocolVersion::V5,
                    )),
                    _ if reason == ReasonCode::UnsupportedProtocolVersion => Some((
                        Packet::ConnAck(ConnAck { session_present: false, reason, properties: Default::default() }),
                        ProtocolVersion::V311,
                    )),
                    _ => None,
                });
            }
        }
        match io.read_buf(rbuf).await {
            Ok(0) | Err(_) => return Err(None),
            Ok(_) => {}
        }
    }
}

struct Connection {
    hub: Arc<Hub>,
    peer: PeerInfo,
    version: ProtocolVersion,
    client_id: String,
    /// The authenticated username (a JWT claim or certificate name may replace the CONNECT's).
    username: Option<String>,
    /// Claim ACL rules and inbound rate limits (`auth`).
    guard: crate::auth::SessionGuard,
    session: SessionState,
    session_present: bool,
    assigned_id: bool,
    keep_alive: Duration,
    server_keep_alive: Option<u16>,
    will: Option<codec::Will>,
    handle: Arc<SessionHandle>,
    rx: mpsc::Receiver<Delivery>,
    online: Arc<tokio::sync::Notify>,
    gone: Arc<tokio::sync::Notify>,
    gone_flag: Arc<std::sync::atomic::AtomicBool>,
    outbound: Outbound,
    in_aliases: std::collections::HashMap<u16, String>,
    /// Inbound batches queued to the log, in order, until durable.
    pending: FuturesOrdered<Pending>,
    /// PUBLISHes of the current read not yet queued (see `inbound.rs`).
    staged: inbound::Staged,
    /// QoS 1/2 PUBLISHes staged or in `pending`: counted against Receive Maximum.
    inbound_unacked: usize,
    clean_disconnect: bool,
    /// Per partition, the key all this session's records there carry (see `catch_up.rs`).
    cursor_keys: HashMap<usize, Option<String>>,
    /// A shared group of this session may lag: pull when credit allows (see `shared.rs`).
    shared_pull: bool,
    /// Wall-clock time (ms since the Unix epoch) of the read being handled, taken once per
    /// read: the PUBLISHes one read brings arrived together and share their timestamp.
    read_ms: Option<i64>,
}

impl Connection {
    /// The main loop. Returns why the connection ended.
    async fn run<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut S, mut rbuf: BytesMut) -> End {
        let mut out = BytesMut::with_capacity(16 * 1024);
        let mut last_recv = Instant::now();
        let mut save_tick = tokio::time::interval(SAVE_EVERY);
        let kick = self.online.clone();
        let wake = self.handle.clone();
        let mut shutdown = self.hub.shutdown.subscribe();
        loop {
            // Packets already buffered (e.g. sent right behind CONNECT).
            match self.drain_packets(&mut rbuf, &mut out) {
                Ok(()) => {}
                Err(end) => {
                    let _ = io.write_all(&out).await;
                    return end;
                }
            }
            if !out.is_empty() {
                self.replicated().await;
                if io.write_all(&out).await.is_err() {
                    return End::Network;
                }
                out.clear();
            }
            let catching_up =
                self.session.cursors.values().any(|c| c.catch_up) && self.session.outbound.len() < self.outbound.window;
            // A throttled client is not read, so its silence is ours: no keepalive meanwhile.
            let throttle = self.guard.throttled_until.map(Instant::from_std);
            let ka = if self.keep_alive.is_zero() || throttle.is_some() {
                None
            } else {
                Some(last_recv + self.keep_alive * 3 / 2)
            };
            tokio::select! {
                biased;
                _ = kick.notified() => {
                    if self.handle.admin_kick.load(Ordering::Acquire) {
                        return End::Server(ReasonCode::AdministrativeAction, "disconnected by an operator".into());
                    }
                    return End::Server(ReasonCode::SessionTakenOver, "another connection took over this client id".into());
                }
                _ = shut_down(&mut shutdown) => {
                    return End::Server(ReasonCode::ServerShuttingDown, "the broker is shutting down".into());
                }
                r = io.read_buf(&mut rbuf), if throttle.is_none() => match r {
                    Ok(0) | Err(_) => return End::Network,
                    Ok(_) => last_recv = Instant::now(),
                },
                _ = sleep_until_opt(throttle), if throttle.is_some() => {
                    self.guard.throttled_until = None;
                    last_recv = Instant::now();
                }
                Some(done) = self.pending.next(), if !self.pending.is_empty() => {
                    // Appends made durable by one sync complete together: acknowledge every
                    // ready one in this write, not one write (and one wake-up) each. Polling
                    // with a no-op waker is safe: the loop polls `pending` again with the
                    // task's own waker before it sleeps.
                    let mut next = Some(done);
                    while let Some(done) = next {
                        if let Err(end) = self.batch_done(done, &mut out) {
                            let _ = io.write_all(&out).await;
                            return end;
                        }
                        next = if out.len() < 64 * 1024 { self.pending.next().now_or_never().flatten() } else { None };
                    }
                }
                Some(d) = self.rx.recv() => {
                    self.deliver(d, &mut out);
                    // Take whatever else is queued without yielding.
                    while out.len() < 64 * 1024 {
                        match self.rx.try_recv() {
                            Ok(d) => self.deliver(d, &mut out),
                            Err(_) => break,
                        }
                    }
                }
                _ = wake.wake.notified() => {
                    if self.handle.overflowed.swap(false, Ordering::Relaxed) {
                        for c in self.session.cursors.values_mut() {
                            c.catch_up = true;
                        }
                    }
                    self.shared_pull = true;
                }
                _ = sleep_until_opt(ka) => {
                    return End::Server(ReasonCode::KeepAliveTimeout, "no packet within 1.5 x keepalive".into());
                }
                _ = save_tick.tick() => self.save_if_dirty(),
                _ = std::future::ready(()), if catching_up => self.catch_up_step(&mut out),
                _ = std::future::ready(()), if self.shared_pull_ready() => self.pull_shared(&mut out),
            }
        }
    }

    fn deliver(&mut self, d: Delivery, out: &mut BytesMut) {
        if d.shared.is_some() {
            self.offer_shared(d, out);
            return;
        }
        let before = self.session.outbound.len();
        self.outbound.offer(&mut self.session, d.pid, d.offset, d.prev_end, &d.msg, false, out);
        self.persist_qos2(before);
    }

    /// Persists at once when a QoS 2 message went out, so that its packet id survives a
    /// crash and it is never delivered twice.
    fn persist_qos2(&mut self, before: usize) {
        if self.session.outbound.len() > before
            && self.session.is_persistent()
            && self.session.outbound.values().any(|i| i.qos == 2 && i.pid.is_some())
        {
            self.save_durably();
        }
    }

    /// Saves the session before output that acknowledges its new state (CONNACK, SUBACK,
    /// PUBREC, a QoS 2 send) leaves: in a cluster that output then waits until the save is
    /// committed in the journal, so that another node resuming the session has it.
    fn save_durably(&mut self) {
        self.save_if_dirty();
        self.session.hold_output |= self.session.replicating.is_some();
    }

    /// Waits (at most 10 s) for the save that held output back; see [`Self::save_durably`].
    async fn replicated(&mut self) {
        if !std::mem::take(&mut self.session.hold_output) {
            return;
        }
        if let Some(rx) = self.session.replicating.take() {
            if !matches!(tokio::time::timeout(Duration::from_secs(10), rx).await, Ok(Ok(true))) {
                tracing::warn!(client_id = %self.client_id, "session save not committed in the cluster journal; acknowledging anyway");
            }
        }
    }

    fn save_if_dirty(&mut self) {
        if self.session.dirty && self.session.is_persistent() {
            let engine = self.hub.engine.clone();
            match self.session.save(&engine, 0) {
                Ok(()) => {}
                Err(e) if e.is_superseded() => {
                    // Another node took the session over; this connection must go.
                    tracing::info!(client_id = %self.client_id, reason = %e, "session taken over");
                    self.online.notify_one();
                }
                Err(e) => tracing::error!(client_id = %self.client_id, error = %e, "could not save the session"),
            }
        }
    }

    /// Handles every complete packet in `rbuf`; the PUBLISHes among them are queued to the
    /// log before this returns, whatever the outcome.
    fn drain_packets(&mut self, rbuf: &mut BytesMut, out: &mut BytesMut) -> Result<(), End> {
        let handled = self.handle_buffered(rbuf, out);
        self.queue_staged();
        handled
    }

    fn handle_buffered(&mut self, rbuf: &mut BytesMut, out: &mut BytesMut) -> Result<(), End> {
        self.read_ms = None;
        loop {
            if self.guard.throttled_until.is_some() {
                return Ok(()); // over its rate: the rest waits in the buffer
            }
            let before = rbuf.len();
            match codec::decode(rbuf, Some(self.version), self.hub.config.mqtt.max_packet_size) {
                Ok(Some(p)) => {
                    if matches!(p, Packet::Publish(_)) {
                        self.rate_check(before - rbuf.len())?;
                    } else {
                        // Anything else is handled after the PUBLISHes before it are queued.
                        self.queue_staged();
                    }
                    self.handle_packet(p, out)?
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.protocol_violation(e)),
            }
        }
    }

    /// The time of the read being handled (see `read_ms`), in ms since the Unix epoch.
    fn read_time_ms(&mut self) -> i64 {
        *self.read_ms.get_or_insert_with(axle_engine::log::now_ms)
    }

    fn protocol_violation(&self, e: DecodeError) -> End {
        tracing::info!(client_id = %self.client_id, peer = %self.peer, error = %e, "malformed packet; disconnecting");
        End::Server(e.reason_code(), e.to_string())
    }

    /// Ends the connection: DISCONNECT if the broker closes, subscriptions out of the tree,
    /// the will, and the session saved or removed.
    async fn finish<S: AsyncWrite + Unpin>(mut self, io: &mut S, end: End) {
        let (publish_will, why) = match &end {
            End::Disconnect(with_will) => (*with_will, "client disconnected".to_string()),
            End::Server(reason, why) => {
                if self.version == ProtocolVersion::V5 {
                    let d = Disconnect {
                        reason: *reason,
                        properties: DisconnectProperties { reason_string: Some(why.clone()), ..Default::default() },
                    };
                    let mut out = BytesMut::new();
                    if codec::encode(&Packet::Disconnect(d), self.version, &mut out).is_ok() {
                        // A client that stopped reading must not hold up the end.
                        let _ = tokio::time::timeout(Duration::from_secs(1), io.write_all(&out)).await;
                    }
                }
                (true, why.clone())
            }
            End::Network => (true, "network connection closed".to_string()),
        };
        self.clean_disconnect = matches!(end, End::Disconnect(false));
        let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
        // Let in-flight inbound appends finish so their records are not orphaned mid-flight.
        while self.pending.next().await.is_some() {}
        {
            let mut tree = self.hub.tree.write();
            for sub in self.session.subscriptions.values() {
                tree.remove(&sub.inner, sub.group.as_deref(), self.handle.id);
            }
        }
        self.hub.unregister(self.handle.id);
        // Shared deliveries this member did not finish: in flight, waiting, or still queued.
        self.rx.close();
        let mut shared: Vec<Delivery> = self
            .outbound
            .shared_inflight
            .drain()
            .map(|(_, d)| d)
            .chain(self.outbound.shared_waiting.drain(..))
            .collect();
        while let Ok(d) = self.rx.try_recv() {
            if d.shared.is_some() {
                shared.push(d);
            }
        }
        shared.sort_by_key(|d| (d.pid, d.offset));
        let groups: Vec<String> = self
            .session
            .subscriptions
            .values()
            .filter_map(|s| s.group.as_ref().map(|g| crate::topic_tree::shared_key(g, &s.inner)))
            .collect();
        self.hub.redispatch_shared(shared, &groups);
        let engine = self.hub.engine.clone();
        if self.session.is_persistent() {
            let retained = std::mem::take(&mut self.session.retained_inflight);
            self.session.outbound.retain(|id, i| i.pid.is_some() || retained.contains_key(id));
            self.session.retained_inflight = retained;
            match self.session.save(&engine, axle_engine::log::now_ms()) {
                Ok(()) => {}
                Err(e) if e.is_superseded() => {
                    tracing::info!(client_id = %self.client_id, reason = %e, "session not saved: another node holds it");
                }
                Err(e) => {
                    tracing::error!(client_id = %self.client_id, error = %e, "could not save the session at disconnect")
                }
            }
        } else {
            match self.session.discard(&engine) {
                Ok(()) => {}
                Err(e) if e.is_superseded() => {}
                Err(e) => tracing::error!(client_id = %self.client_id, error = %e, "could not remove the session"),
            }
        }
        if publish_will {
            if let Some(w) = self.will.take() {
                crate::will::schedule(&self.hub, &self.client_id, w, self.session.expiry_interval);
            }
        }
        {
            let mut online = self.hub.online.lock();
            if online.get(&self.client_id).is_some_and(|o| o.id == self.handle.id) {
                online.remove(&self.client_id);
            }
        }
        self.gone_flag.store(true, Ordering::Release);
        self.gone.notify_waiters();
        tracing::info!(client_id = %self.client_id, peer = %self.peer, reason = %why, "client disconnected");
        crate::sys::client_disconnected(&self.hub, &self.client_id, &self.peer.to_string(), &why.to_string());
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
