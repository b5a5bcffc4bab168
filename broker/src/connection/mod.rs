//! One MQTT connection: the CONNECT handshake, the inbound flows (PUBLISH at QoS 0/1/2,
//! SUBSCRIBE, UNSUBSCRIBE, PING, DISCONNECT), keepalive, takeover, and the end of the
//! connection (will message, session save or removal). Outbound delivery is in
//! `outbound.rs`. The transport is any byte stream.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axle_engine::Message;
use bytes::BytesMut;
use futures::stream::{FuturesOrdered, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

mod catch_up;
mod packets;
pub mod peer;
mod shared;

pub use peer::{CertIdentity, PeerInfo, Transport};

use crate::acl::Action;
use crate::codec::{
    self, ConnAck, ConnAckProperties, Connect, DecodeError, Disconnect, DisconnectProperties, Packet, ProtocolVersion,
    PubAck, ReasonCode,
};
use crate::hub::{Delivery, Hub, Online, SessionHandle};
use crate::outbound::Outbound;
use crate::session::{SessionState, Subscription};

/// Time a client has to send CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a persistent session's cursors are saved while connected.
const SAVE_EVERY: Duration = Duration::from_millis(500);

type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = (u16, u8, Result<(), String>)> + Send>>;

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
    pending: FuturesOrdered<Pending>,
    clean_disconnect: bool,
    /// Per partition, the key all this session's records there carry (see `catch_up.rs`).
    cursor_keys: HashMap<usize, Option<String>>,
    /// A shared group of this session may lag: pull when credit allows (see `shared.rs`).
    shared_pull: bool,
}

fn refuse(version: ProtocolVersion, reason: ReasonCode) -> ConnAck {
    let reason = if version == ProtocolVersion::V311 && reason.to_v311_connack().is_none() {
        ReasonCode::UnspecifiedError
    } else {
        reason
    };
    ConnAck { session_present: false, reason, properties: Default::default() }
}

impl Connection {
    /// Validates CONNECT, takes over an existing connection of the same client id, and
    /// loads or creates the session. Errors are the CONNACK to send.
    async fn accept(hub: Arc<Hub>, c: Connect, peer: PeerInfo) -> Result<Connection, ConnAck> {
        let cfg = &hub.config.mqtt;
        let v = c.protocol;
        let identity = crate::auth::admit(&hub.auth, &c, &peer).await.map_err(|reason| refuse(v, reason))?;
        let guard = hub.auth.guard(&identity);
        if let Some(w) = &c.will {
            let (claims, user) = (guard.claims.as_ref(), identity.username.as_deref());
            if !hub.auth.permits(hub.acl.as_ref(), claims, &c.client_id, user, Action::Publish, &w.topic) {
                tracing::info!(%peer, client_id = %c.client_id, topic = %w.topic, "will topic refused by the ACL");
                hub.metrics.dropped(crate::metrics::DropReason::AclDenied, 1);
                return Err(refuse(v, ReasonCode::NotAuthorized));
            }
        }
        let mut client_id = c.client_id.clone();
        let mut assigned_id = false;
        if client_id.is_empty() {
            if v == ProtocolVersion::V311 && !c.clean_start {
                return Err(refuse(v, ReasonCode::ClientIdentifierNotValid));
            }
            client_id = format!("axle-{:016x}", rand::random::<u64>());
            assigned_id = true;
        }
        let expiry = match v {
            ProtocolVersion::V5 => c.properties.session_expiry_interval.unwrap_or(0).min(cfg.max_session_expiry),
            ProtocolVersion::V311 if c.clean_start => 0,
            ProtocolVersion::V311 => cfg.max_session_expiry,
        };

        // Take over an existing connection with this client id and wait until it is gone.
        let kick = Arc::new(tokio::sync::Notify::new());
        let gone = Arc::new(tokio::sync::Notify::new());
        let gone_flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        loop {
            let previous = {
                let mut online = hub.online.lock();
                match online.get(&client_id) {
                    Some(o) => Some((o.kick.clone(), o.gone.clone(), o.gone_flag.clone())),
                    None => {
                        online.insert(
                            client_id.clone(),
                            Online {
                                id: 0,
                                kick: kick.clone(),
                                gone: gone.clone(),
                                gone_flag: gone_flag.clone(),
                                journal: None,
                            },
                        );
                        None
                    }
                }
            };
            let Some((old_kick, old_gone, old_flag)) = previous else { break };
            let waiting = old_gone.notified();
            old_kick.notify_one();
            if !old_flag.load(Ordering::Acquire) {
                let _ = tokio::time::timeout(Duration::from_secs(10), waiting).await;
            }
        }
        if let Some(w) = hub.pending_wills.lock().remove(&client_id) {
            w.notify_one();
        }

        let engine = hub.engine.clone();
        // The CONNECT is refused if the session cannot be claimed in the cluster.
        let give_up = || {
            let mut online = hub.online.lock();
            if online.get(&client_id).is_some_and(|o| o.id == 0 && Arc::ptr_eq(&o.kick, &kick)) {
                online.remove(&client_id);
            }
            refuse(v, ReasonCode::ServerUnavailable)
        };
        let (stored, journal) = match SessionState::open(&engine, &client_id, c.clean_start).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(%client_id, error = %e, "could not claim the session in the cluster");
                return Err(give_up());
            }
        };
        if let Some(mine) = journal {
            // Another node's claim applied after ours was checked is announced to connections
            // that have a version; set ours, then look again (under the same lock as the
            // announcement), so that one of the two sees it.
            let lost = {
                let mut online = hub.online.lock();
                if let Some(o) = online.get_mut(&client_id).filter(|o| Arc::ptr_eq(&o.kick, &kick)) {
                    o.journal = journal;
                }
                let held = engine.journal().and_then(|j| j.version(&client_id).ok().flatten());
                held.is_some_and(|h| mine.superseded_by(&h))
            };
            if lost {
                tracing::info!(%client_id, "session taken by another node while connecting");
                return Err(give_up());
            }
        }
        let now = axle_engine::log::now_ms();
        let session_present = stored.is_some();
        let mut session = stored.unwrap_or_else(|| SessionState::new(&client_id, expiry));
        session.expiry_interval = expiry;
        session.journal = journal;

        let requested = Duration::from_secs(u64::from(c.keep_alive));
        let (keep_alive, server_keep_alive) = if v == ProtocolVersion::V5 && c.keep_alive > cfg.max_keepalive {
            (Duration::from_secs(u64::from(cfg.max_keepalive)), Some(cfg.max_keepalive))
        } else {
            (requested, None)
        };
        let info = crate::hub::ClientInfo {
            username: identity.username.clone(),
            peer: peer.clone(),
            protocol: if v == ProtocolVersion::V5 { 5 } else { 4 },
            connected_at_ms: now,
            keep_alive_secs: keep_alive.as_secs(),
            clean_start: c.clean_start,
            expiry_secs: expiry,
            subscriptions: session.subscriptions.iter().map(|(f, s)| (f.clone(), s.qos)).collect(),
        };
        crate::sys::client_connected(&hub, &client_id, &info);
        let (handle, rx) = hub.register(&client_id, info);
        if let Some(o) = hub.online.lock().get_mut(&client_id) {
            o.id = handle.id;
        }
        let outbound = Outbound {
            version: v,
            window: usize::from(c.properties.receive_maximum.unwrap_or(u16::MAX).min(cfg.max_inflight)),
            max_packet: c.properties.maximum_packet_size.unwrap_or(u32::MAX),
            alias_max: c.properties.topic_alias_maximum.unwrap_or(0),
            aliases: Default::default(),
            shared_waiting: VecDeque::new(),
            shared_inflight: Default::default(),
            retained_waiting: VecDeque::new(),
            upgrade_qos: cfg.upgrade_qos,
            metrics: hub.metrics.clone(),
            client: handle.stats.clone(),
        };
        handle.shared_credit.store((outbound.window + crate::shared::MEMBER_QUEUE) as i64, Ordering::Release);
        tracing::info!(%peer, %client_id, version = ?v, clean_start = c.clean_start, session_present, "client connected");
        Ok(Connection {
            hub,
            peer,
            version: v,
            client_id,
            username: identity.username,
            guard,
            session,
            session_present,
            assigned_id,
            keep_alive,
            server_keep_alive,
            will: c.will,
            handle,
            rx,
            online: kick,
            gone,
            gone_flag,
            outbound,
            in_aliases: Default::default(),
            pending: FuturesOrdered::new(),
            clean_disconnect: false,
            cursor_keys: HashMap::new(),
            shared_pull: false,
        })
    }

    /// CONNACK, subscriptions into the tree, auto-subscriptions, and redelivery of what was
    /// in flight.
    fn start(&mut self, out: &mut BytesMut) {
        let cfg = &self.hub.config.mqtt;
        let properties = ConnAckProperties {
            session_expiry_interval: (self.version == ProtocolVersion::V5).then_some(self.session.expiry_interval),
            receive_maximum: Some(cfg.receive_maximum),
            maximum_packet_size: Some(cfg.max_packet_size),
            assigned_client_identifier: self.assigned_id.then(|| self.client_id.clone()),
            topic_alias_maximum: Some(cfg.topic_alias_maximum),
            server_keep_alive: self.server_keep_alive,
            retain_available: Some(true),
            wildcard_subscription_available: Some(true),
            subscription_identifiers_available: Some(true),
            shared_subscription_available: Some(true),
            ..Default::default()
        };
        let connack = ConnAck { session_present: self.session_present, reason: ReasonCode::Success, properties };
        let _ = codec::encode(&Packet::ConnAck(connack), self.version, out);
        if self.session_present {
            self.bound_offline_backlog();
        }
        {
            let mut tree = self.hub.tree.write();
            for sub in self.session.subscriptions.values() {
                tree.insert(&sub.inner, sub.group.as_deref(), self.handle.id);
            }
        }
        let autos: Vec<(String, u8)> = self
            .hub
            .config
            .auto_subscribe
            .iter()
            .map(|a| {
                let f = a.filter.replace("%c", &self.client_id).replace("%u", self.username.as_deref().unwrap_or(""));
                (f, a.qos)
            })
            .collect();
        for (filter, qos) in autos {
            if codec::validate_topic_filter(&filter).is_ok() {
                let sub = Subscription {
                    filter: filter.clone(),
                    inner: filter,
                    group: None,
                    qos,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: 0,
                    id: None,
                };
                self.add_subscription(sub, out);
            }
        }
        // Redeliver what was in flight, oldest offsets first.
        let mut inflight: Vec<(u16, crate::session::Inflight)> =
            self.session.outbound.iter().map(|(k, v)| (*k, *v)).collect();
        inflight.sort_by_key(|(_, i)| (i.pid, i.offset));
        for (id, i) in inflight {
            if i.released {
                let _ =
                    codec::encode(&Packet::PubRel(PubAck { packet_id: id, ..Default::default() }), self.version, out);
                continue;
            }
            let Some(pid) = i.pid else {
                self.redeliver_retained(id, i.qos, out);
                continue;
            };
            let part = &self.hub.engine.partitions()[pid].log;
            let msg = part
                .read(i.offset, 1, usize::MAX)
                .ok()
                .and_then(|r| r.into_iter().next())
                .and_then(|r| (r.offset == i.offset).then(|| Message::from_record(&r)).flatten());
            match msg {
                Some(m) => {
                    self.outbound.send_publish(&m, i.qos, false, Some(id), true, Vec::new(), out);
                }
                None => {
                    tracing::warn!(client_id = %self.client_id, partition = pid, offset = i.offset, "in-flight message no longer in the log (retention); dropped");
                    self.session.outbound.remove(&id);
                }
            }
        }
        // The session exists on disk from its CONNACK on, even if the broker dies at once.
        if self.session.is_persistent() {
            self.session.dirty = true;
            self.save_durably();
        }
        self.shared_pull = true;
    }

    /// Resends an unacknowledged retained delivery with DUP, if the same retained message
    /// (topic and publish time) is still there; otherwise forgets it.
    fn redeliver_retained(&mut self, id: u16, qos: u8, out: &mut BytesMut) {
        let found = self
            .session
            .retained_inflight
            .get(&id)
            .and_then(|(topic, ts)| self.hub.retained.read().get(topic).filter(|m| m.timestamp == *ts).cloned());
        match found {
            Some(m) => {
                self.outbound.send_publish(&m, qos, true, Some(id), true, Vec::new(), out);
            }
            None => {
                self.session.outbound.remove(&id);
                self.session.retained_inflight.remove(&id);
                self.session.dirty = true;
            }
        }
    }

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
                Some((packet_id, qos, result)) = self.pending.next(), if !self.pending.is_empty() => {
                    if let Err(end) = self.inbound_done(packet_id, qos, result, &mut out) {
                        let _ = io.write_all(&out).await;
                        return end;
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

    fn drain_packets(&mut self, rbuf: &mut BytesMut, out: &mut BytesMut) -> Result<(), End> {
        loop {
            if self.guard.throttled_until.is_some() {
                return Ok(()); // over its rate: the rest waits in the buffer
            }
            let before = rbuf.len();
            match codec::decode(rbuf, Some(self.version), self.hub.config.mqtt.max_packet_size) {
                Ok(Some(p)) => {
                    if matches!(p, Packet::Publish(_)) {
                        self.rate_check(before - rbuf.len())?;
                    }
                    self.handle_packet(p, out)?
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.protocol_violation(e)),
            }
        }
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
            .filter_map(|s| s.group.as_ref().map(|g| format!("{g}\u{0}{}", s.inner)))
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
