//! Accepting a connection: CONNECT validated and authenticated, an existing connection of the
//! same client id taken over, the session loaded or created (`accept`), then the CONNACK and
//! the session's first deliveries: resumed in-flight messages, retained messages, catch-up from
//! the log (`start`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axle_engine::Message;
use bytes::BytesMut;
use futures::stream::FuturesOrdered;

use super::{Connection, PeerInfo};
use crate::acl::Action;
use crate::codec::{self, ConnAck, ConnAckProperties, Connect, Packet, ProtocolVersion, PubAck, ReasonCode};
use crate::hub::{Hub, Online};
use crate::outbound::Outbound;
use crate::session::{SessionState, Subscription};

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
    pub(super) async fn accept(hub: Arc<Hub>, c: Connect, peer: PeerInfo) -> Result<Connection, ConnAck> {
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
            staged: Default::default(),
            inbound_unacked: 0,
            clean_disconnect: false,
            cursor_keys: HashMap::new(),
            shared_pull: false,
            read_ms: None,
        })
    }

    /// CONNACK, subscriptions into the tree, auto-subscriptions, and redelivery of what was
    /// in flight.
    pub(super) fn start(&mut self, out: &mut BytesMut) {
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
}
