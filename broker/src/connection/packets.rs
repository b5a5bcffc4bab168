//! Packets from the client once the connection runs: PUBLISH in (with its durable
//! acknowledgement), the acknowledgements of what the broker sent, SUBSCRIBE and UNSUBSCRIBE
//! (with the ACL), PING and DISCONNECT.

use std::sync::atomic::Ordering;

use axle_engine::Message;
use bytes::BytesMut;

use super::{Connection, End};
use crate::acl::Action;
use crate::codec::{
    self, AckProperties, Packet, ProtocolVersion, PubAck, Publish, QoS, ReasonCode, SubAck, Subscribe, UnsubAck,
    Unsubscribe,
};
use crate::session::Subscription;

impl Connection {
    pub(super) fn add_subscription(&mut self, sub: Subscription, out: &mut BytesMut) -> bool {
        self.cursor_keys.clear();
        let existed = self.session.subscriptions.contains_key(&sub.filter);
        let engine = self.hub.engine.clone();
        if sub.group.is_none() {
            for (pid, _key) in engine.partitions_for_filter(&sub.inner) {
                let end = engine.partitions()[pid].log.bounds().end;
                self.session.cursor(pid, end);
            }
        }
        self.hub.tree.write().insert(&sub.inner, sub.group.as_deref(), self.handle.id);
        if self.session.is_persistent() {
            if let Err(e) = self.session.save_subscription(&engine, &sub) {
                tracing::error!(client_id = %self.client_id, error = %e, "could not store a subscription");
            }
            self.session.dirty = true;
        }
        let send_retained = sub.group.is_none() && (sub.retain_handling == 0 || (sub.retain_handling == 1 && !existed));
        let (qos, id, inner) = (sub.qos, sub.id, sub.inner.clone());
        self.handle.info.lock().subscriptions.insert(sub.filter.clone(), sub.qos);
        self.session.subscriptions.insert(sub.filter.clone(), sub);
        if send_retained {
            for m in self.hub.retained_matching(&inner, axle_engine::log::now_ms()) {
                self.outbound.send_retained(&mut self.session, &m, qos, id, out);
            }
        }
        existed
    }

    /// An outbound QoS 1/2 delivery finished (PUBACK, PUBCOMP, or a PUBREC refusing it): its
    /// packet id is free, and whatever waited for window space may go.
    fn outbound_finished(&mut self, packet_id: u16, out: &mut BytesMut) {
        self.session.outbound.remove(&packet_id);
        self.session.retained_inflight.remove(&packet_id);
        self.shared_finished(packet_id);
        self.session.dirty = true;
        self.outbound.drain_retained(&mut self.session, out);
        self.drain_shared(out);
        self.shared_pull = true;
    }

    pub(super) fn handle_packet(&mut self, p: Packet, out: &mut BytesMut) -> Result<(), End> {
        match p {
            Packet::Publish(p) => self.inbound_publish(p, out),
            Packet::PubAck(a) => {
                if self.session.outbound.get(&a.packet_id).is_some_and(|i| i.qos == 1) {
                    self.outbound_finished(a.packet_id, out);
                }
                Ok(())
            }
            Packet::PubRec(a) => {
                let reason = match self.session.outbound.get_mut(&a.packet_id) {
                    Some(_) if a.reason.is_error() => {
                        self.outbound_finished(a.packet_id, out);
                        return Ok(());
                    }
                    Some(i) => {
                        i.released = true;
                        self.session.dirty = true;
                        ReasonCode::Success
                    }
                    None => ReasonCode::PacketIdentifierNotFound,
                };
                let _ = codec::encode(
                    &Packet::PubRel(PubAck { packet_id: a.packet_id, reason, ..Default::default() }),
                    self.version,
                    out,
                );
                if self.session.is_persistent() {
                    self.save_if_dirty();
                }
                Ok(())
            }
            Packet::PubComp(a) => {
                if self.session.outbound.contains_key(&a.packet_id) {
                    self.outbound_finished(a.packet_id, out);
                }
                Ok(())
            }
            Packet::PubRel(a) => {
                let reason = if self.session.awaiting_rel.remove(&a.packet_id) {
                    self.session.dirty = true;
                    ReasonCode::Success
                } else {
                    ReasonCode::PacketIdentifierNotFound
                };
                let _ = codec::encode(
                    &Packet::PubComp(PubAck { packet_id: a.packet_id, reason, ..Default::default() }),
                    self.version,
                    out,
                );
                Ok(())
            }
            Packet::Subscribe(s) => {
                self.subscribe(s, out);
                Ok(())
            }
            Packet::Unsubscribe(u) => {
                self.unsubscribe(u, out);
                Ok(())
            }
            Packet::PingReq => {
                let _ = codec::encode(&Packet::PingResp, self.version, out);
                Ok(())
            }
            Packet::Disconnect(d) => {
                if let Some(e) = d.properties.session_expiry_interval {
                    if self.session.expiry_interval == 0 && e > 0 {
                        return Err(End::Server(
                            ReasonCode::ProtocolError,
                            "session expiry set at DISCONNECT after 0 at CONNECT".into(),
                        ));
                    }
                    self.session.expiry_interval = e.min(self.hub.config.mqtt.max_session_expiry);
                }
                Err(End::Disconnect(d.reason == ReasonCode::DisconnectWithWillMessage))
            }
            Packet::Auth(_) => {
                Err(End::Server(ReasonCode::BadAuthenticationMethod, "enhanced authentication is not supported".into()))
            }
            other => {
                Err(End::Server(ReasonCode::ProtocolError, format!("{} is not valid from a client here", other.name())))
            }
        }
    }

    fn inbound_publish(&mut self, mut p: Publish, out: &mut BytesMut) -> Result<(), End> {
        // Topic alias (client → broker).
        if let Some(alias) = p.properties.topic_alias {
            if alias == 0 || alias > self.hub.config.mqtt.topic_alias_maximum {
                return Err(End::Server(ReasonCode::TopicAliasInvalid, format!("topic alias {alias} out of range")));
            }
            if p.topic.is_empty() {
                match self.in_aliases.get(&alias) {
                    Some(t) => p.topic = t.clone(),
                    None => return Err(End::Server(ReasonCode::ProtocolError, format!("unknown topic alias {alias}"))),
                }
            } else {
                self.in_aliases.insert(alias, p.topic.clone());
            }
        }
        if p.topic.is_empty() || p.topic.starts_with('$') {
            if p.topic.starts_with('$') {
                // `$` topics are the broker's; a client publish there is dropped.
                self.hub.metrics.dropped(crate::metrics::DropReason::ReservedTopic, 1);
                return self.ack_dropped(&p, out);
            }
            return Err(End::Server(ReasonCode::TopicNameInvalid, "empty topic name".into()));
        }
        if !self.permitted(Action::Publish, &p.topic) {
            tracing::debug!(client_id = %self.client_id, topic = %p.topic, "publish refused by the ACL");
            return self.ack_dropped(&p, out);
        }
        let qos = p.qos.as_u8();
        let inflight_in = self.inbound_unacked + self.session.awaiting_rel.len();
        if qos > 0 && inflight_in >= usize::from(self.hub.config.mqtt.receive_maximum) {
            return Err(End::Server(
                ReasonCode::ReceiveMaximumExceeded,
                "more unacknowledged QoS 1/2 publishes than Receive Maximum".into(),
            ));
        }
        let packet_id = p.packet_id.unwrap_or(0);
        if qos == 2 && self.session.awaiting_rel.contains(&packet_id) {
            // A resent QoS 2 PUBLISH we already hold: acknowledge, do not append twice.
            let _ = codec::encode(&Packet::PubRec(PubAck { packet_id, ..Default::default() }), self.version, out);
            return Ok(());
        }
        self.hub.metrics.message_in(&p.topic, qos, p.payload.len());
        self.handle.stats.messages_in.fetch_add(1, Ordering::Relaxed);
        self.handle.stats.bytes_in.fetch_add(p.payload.len() as u64, Ordering::Relaxed);
        let now = self.read_time_ms();
        let msg = Message {
            topic: p.topic,
            payload: p.payload,
            qos,
            retain: p.retain,
            publisher: self.client_id.clone(),
            payload_format_utf8: p.properties.payload_format_indicator,
            expires_at: p.properties.message_expiry_interval.map(|s| now + i64::from(s) * 1000),
            content_type: p.properties.content_type,
            response_topic: p.properties.response_topic,
            correlation_data: p.properties.correlation_data,
            user_properties: p.properties.user_properties,
            timestamp: now,
        };
        self.hub.retain_on_publish(&msg);
        self.stage(std::sync::Arc::new(msg), packet_id, qos);
        Ok(())
    }

    fn ack_dropped(&mut self, p: &Publish, out: &mut BytesMut) -> Result<(), End> {
        let id = p.packet_id.unwrap_or(0);
        let reason = if self.version == ProtocolVersion::V5 { ReasonCode::NotAuthorized } else { ReasonCode::Success };
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let _ = codec::encode(
                    &Packet::PubAck(PubAck { packet_id: id, reason, ..Default::default() }),
                    self.version,
                    out,
                );
            }
            QoS::ExactlyOnce => {
                let _ = codec::encode(
                    &Packet::PubRec(PubAck { packet_id: id, reason, ..Default::default() }),
                    self.version,
                    out,
                );
            }
        }
        Ok(())
    }

    /// An inbound QoS 1/2 append finished: acknowledge it.
    pub(super) fn inbound_done(
        &mut self,
        packet_id: u16,
        qos: u8,
        result: Result<(), String>,
        out: &mut BytesMut,
    ) -> Result<(), End> {
        match result {
            Ok(()) if qos == 1 => {
                let _ = codec::encode(&Packet::PubAck(PubAck { packet_id, ..Default::default() }), self.version, out);
            }
            Ok(()) => {
                self.session.awaiting_rel.insert(packet_id);
                self.session.dirty = true;
                self.save_durably();
                let _ = codec::encode(&Packet::PubRec(PubAck { packet_id, ..Default::default() }), self.version, out);
            }
            Err(e) if self.version == ProtocolVersion::V5 => {
                self.hub.metrics.dropped(crate::metrics::DropReason::AppendFailed, 1);
                tracing::error!(client_id = %self.client_id, error = %e, "append failed; publish refused");
                let properties = AckProperties {
                    reason_string: Some("the broker could not store the message".into()),
                    ..Default::default()
                };
                let ack = PubAck { packet_id, reason: ReasonCode::UnspecifiedError, properties };
                let p = if qos == 1 { Packet::PubAck(ack) } else { Packet::PubRec(ack) };
                let _ = codec::encode(&p, self.version, out);
            }
            Err(e) => {
                self.hub.metrics.dropped(crate::metrics::DropReason::AppendFailed, 1);
                // MQTT 3.1.1 has no negative acknowledgement: close so the client retries.
                tracing::error!(client_id = %self.client_id, error = %e, "append failed; closing the 3.1.1 connection");
                return Err(End::Network);
            }
        }
        Ok(())
    }

    fn subscribe(&mut self, s: Subscribe, out: &mut BytesMut) {
        // The SUBACK goes before the retained messages the subscriptions send, but after
        // whatever was already queued for the client.
        let start = out.len();
        let mut reasons = Vec::with_capacity(s.filters.len());
        for req in s.filters {
            let (group, inner) = match codec::parse_shared(&req.filter) {
                Some((g, f)) => (Some(g.to_string()), f.to_string()),
                None => (None, req.filter.clone()),
            };
            if !self.permitted(Action::Subscribe, &inner) {
                tracing::info!(client_id = %self.client_id, filter = %req.filter, "subscription refused by the ACL");
                reasons.push(ReasonCode::NotAuthorized);
                continue;
            }
            let qos = req.options.qos.as_u8();
            let sub = Subscription {
                filter: req.filter.clone(),
                inner,
                group,
                qos,
                no_local: req.options.no_local,
                retain_as_published: req.options.retain_as_published,
                retain_handling: req.options.retain_handling as u8,
                id: s.properties.subscription_identifier,
            };
            self.add_subscription(sub, out);
            reasons.push(match qos {
                0 => ReasonCode::Success,
                1 => ReasonCode::GrantedQoS1,
                _ => ReasonCode::GrantedQoS2,
            });
        }
        let retained = out.split_off(start);
        let _ = codec::encode(
            &Packet::SubAck(SubAck { packet_id: s.packet_id, reasons, properties: Default::default() }),
            self.version,
            out,
        );
        out.unsplit(retained);
        // A new persistent subscription is stored before its SUBACK leaves, cursors included,
        // so a crash right after cannot lose the session or what is published next.
        self.save_durably();
        self.shared_pull = true;
    }

    /// Charges an inbound PUBLISH of `size` bytes to the rate limits: throttles the
    /// connection, or ends it with 0x96 under `on_exceed = "disconnect"`.
    pub(super) fn rate_check(&mut self, size: usize) -> Result<(), End> {
        if self.guard.is_unlimited() {
            return Ok(());
        }
        match self.guard.on_publish(size, std::time::Instant::now()) {
            crate::auth::RateDecision::Pass => Ok(()),
            crate::auth::RateDecision::Pause(until) => {
                if self.guard.throttles == 1 || self.guard.throttles.is_multiple_of(1000) {
                    let pause = until.saturating_duration_since(std::time::Instant::now());
                    tracing::info!(client_id = %self.client_id, throttles = self.guard.throttles, ?pause, "client over its publish rate; throttled");
                }
                Ok(())
            }
            crate::auth::RateDecision::Disconnect => {
                tracing::info!(client_id = %self.client_id, peer = %self.peer, "client over its publish rate; disconnected");
                Err(End::Server(ReasonCode::MessageRateTooHigh, "publish rate over the configured limit".into()))
            }
        }
    }

    /// Whether the client's claim rules, the ACL file or the default let it publish to /
    /// subscribe to `target`; counts refusals.
    fn permitted(&self, action: Action, target: &str) -> bool {
        let (file, claims) = (self.hub.acl.as_ref(), self.guard.claims.as_ref());
        let ok = self.hub.auth.permits(file, claims, &self.client_id, self.username.as_deref(), action, target);
        if !ok {
            self.hub.metrics.dropped(crate::metrics::DropReason::AclDenied, 1);
        }
        ok
    }

    fn unsubscribe(&mut self, u: Unsubscribe, out: &mut BytesMut) {
        let mut reasons = Vec::with_capacity(u.filters.len());
        for f in u.filters {
            match self.session.subscriptions.remove(&f) {
                Some(sub) => {
                    self.handle.info.lock().subscriptions.remove(&f);
                    self.cursor_keys.clear();
                    self.hub.tree.write().remove(&sub.inner, sub.group.as_deref(), self.handle.id);
                    if let Some(g) = &sub.group {
                        if self.hub.tree.read().shared_members(&sub.inner, g).is_empty() {
                            self.hub.shared.forget(&crate::topic_tree::shared_key(g, &sub.inner));
                        }
                    }
                    if self.session.is_persistent() {
                        let engine = self.hub.engine.clone();
                        let _ = self.session.delete_subscription(&engine, &f);
                    }
                    reasons.push(ReasonCode::Success);
                }
                None => reasons.push(ReasonCode::NoSubscriptionExisted),
            }
        }
        let reasons = if self.version == ProtocolVersion::V5 { reasons } else { Vec::new() };
        let _ = codec::encode(
            &Packet::UnsubAck(UnsubAck { packet_id: u.packet_id, reasons, properties: Default::default() }),
            self.version,
            out,
        );
        // In a cluster the removal travels with the next save: make it now.
        self.save_if_dirty();
    }
}
