//! Delivery towards a client: live records from the dispatcher, catch-up reads from the log,
//! retained messages, and redelivery of what was in flight when the client last left.
//!
//! Every path goes through [`Outbound::offer`], which applies the cursor rule (see
//! `session.rs`): a record is sent only if nothing unseen lies between the cursor and it,
//! and the cursor moves past it only once it is sent or deliberately skipped. When the
//! client's receive window is full, the record is left in the log and read again later.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use axle_engine::Message;
use bytes::BytesMut;

use crate::codec::{self, Packet, ProtocolVersion, Publish, PublishProperties, QoS};
use crate::hub::{Delivery, UNKNOWN};
use crate::session::{Inflight, SessionState};

/// What [`Outbound::offer`] did with a record.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    Sent,
    /// Not for this session (no matching subscription, no-local, expired, too large) or
    /// already sent; the cursor moved past it if it was at it.
    Skipped,
    /// Not sent now; the cursor stays and the log will be read again.
    Deferred,
}

/// The outbound half of a connection's state.
pub struct Outbound {
    pub version: ProtocolVersion,
    /// Client's Receive Maximum bounded by the broker's `max_inflight`.
    pub window: usize,
    /// Client's Maximum Packet Size (bytes).
    pub max_packet: u32,
    pub alias_max: u16,
    pub aliases: HashMap<String, u16>,
    /// Shared-subscription deliveries waiting for window space, and those in flight.
    pub shared_waiting: VecDeque<Delivery>,
    pub shared_inflight: foldhash::HashMap<u16, Delivery>,
    /// Retained messages for new subscriptions waiting for window space: (message, QoS,
    /// subscription id). Bounded by the retained messages matching one SUBSCRIBE.
    pub retained_waiting: VecDeque<(Arc<Message>, u8, Option<u32>)>,
    pub upgrade_qos: bool,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// This client's figures, shared with its `SessionHandle`.
    pub client: Arc<crate::metrics::ClientStats>,
}

impl Outbound {
    /// Offers record `offset` of partition `pid`. `prev_end` is the dispatcher's gap marker
    /// (`UNKNOWN` for catch-up reads, which are contiguous by construction).
    #[allow(clippy::too_many_arguments)]
    pub fn offer(
        &mut self,
        s: &mut SessionState,
        pid: usize,
        offset: u64,
        prev_end: u64,
        msg: &Message,
        from_log: bool,
        out: &mut BytesMut,
    ) -> Offer {
        let Some(cursor) = s.cursors.get(&pid).copied() else { return Offer::Skipped };
        if offset < cursor.next {
            return Offer::Skipped;
        }
        if !from_log && offset != cursor.next && (prev_end == UNKNOWN || prev_end > cursor.next) {
            // Something between the cursor and this record was not handed to us.
            if let Some(c) = s.cursors.get_mut(&pid) {
                c.catch_up = true;
            }
            return Offer::Deferred;
        }
        if from_log && offset != cursor.next {
            // A catch-up read always starts at the cursor; anything else is a bug upstream.
            return Offer::Deferred;
        }
        let advance = |s: &mut SessionState| {
            if let Some(c) = s.cursors.get_mut(&pid) {
                c.next = offset + 1;
            }
            s.dirty = true;
        };
        let Some((qos, sub_ids, keep_retain)) = self.grant(s, msg) else {
            advance(s);
            return Offer::Skipped;
        };
        if qos > 0 && s.outbound.len() >= self.window {
            if let Some(c) = s.cursors.get_mut(&pid) {
                c.catch_up = true;
            }
            return Offer::Deferred;
        }
        let packet_id = if qos > 0 {
            match s.alloc_packet_id() {
                Some(id) => Some(id),
                None => return Offer::Deferred,
            }
        } else {
            None
        };
        let retain = keep_retain && msg.retain;
        let dup = qos > 0 && offset < cursor.dup_below;
        if !self.send_publish(msg, qos, retain, packet_id, dup, sub_ids, out) {
            advance(s);
            return Offer::Skipped;
        }
        if let Some(id) = packet_id {
            s.outbound.insert(id, Inflight { pid: Some(pid), offset, qos, released: false });
        }
        advance(s);
        Offer::Sent
    }

    /// QoS, subscription identifiers and retain-as-published for `msg`, from the session's
    /// non-shared subscriptions; `None` if none applies.
    fn grant(&self, s: &SessionState, msg: &Message) -> Option<(u8, Vec<u32>, bool)> {
        let mut best: Option<u8> = None;
        let mut ids = Vec::new();
        let mut keep_retain = false;
        for sub in s.subscriptions.values() {
            if sub.group.is_some() || !axle_engine::topic::matches(&sub.inner, &msg.topic) {
                continue;
            }
            if sub.no_local && msg.publisher == s.client_id {
                continue;
            }
            let q = if self.upgrade_qos { sub.qos } else { sub.qos.min(msg.qos) };
            best = Some(best.map_or(q, |b: u8| b.max(q)));
            ids.extend(sub.id);
            keep_retain |= sub.retain_as_published;
        }
        let best = best?;
        if msg.expires_at.is_some_and(|x| x <= axle_engine::log::now_ms()) {
            self.metrics.dropped(crate::metrics::DropReason::Expired, 1);
            return None;
        }
        Some((best, ids, keep_retain))
    }

    /// A shared-subscription delivery: no cursor; waits in memory for window space.
    pub fn offer_shared(&mut self, s: &mut SessionState, d: Delivery, out: &mut BytesMut) {
        // The group key names the subscription exactly (`{group}\0{filter}`, and the record
        // matched that filter when it was dispatched or pulled): compare, do not match again.
        let key = d.shared.as_deref().unwrap_or("");
        let (group, filter) = crate::topic_tree::split_shared_key(key);
        let Some(sub) = s.subscriptions.values().find(|sub| sub.group.as_deref() == Some(group) && sub.inner == filter)
        else {
            return;
        };
        let qos = if self.upgrade_qos { sub.qos } else { sub.qos.min(d.msg.qos) };
        let ids: Vec<u32> = sub.id.into_iter().collect();
        if qos > 0 && s.outbound.len() >= self.window {
            self.shared_waiting.push_back(d);
            return;
        }
        let packet_id = if qos > 0 { s.alloc_packet_id() } else { None };
        if qos > 0 && packet_id.is_none() {
            self.shared_waiting.push_back(d);
            return;
        }
        if self.send_publish(&d.msg, qos, false, packet_id, false, ids, out) {
            if let Some(id) = packet_id {
                s.outbound.insert(id, Inflight { pid: None, offset: d.offset, qos, released: false });
                self.shared_inflight.insert(id, d);
            }
        }
    }

    /// Sends waiting shared deliveries while the window has room.
    pub fn drain_shared(&mut self, s: &mut SessionState, out: &mut BytesMut) {
        while s.outbound.len() < self.window {
            let Some(d) = self.shared_waiting.pop_front() else { break };
            self.offer_shared(s, d, out);
        }
    }

    /// A retained message for a new subscription (not cursor-tracked).
    pub fn send_retained(
        &mut self,
        s: &mut SessionState,
        msg: &Arc<Message>,
        sub_qos: u8,
        sub_id: Option<u32>,
        out: &mut BytesMut,
    ) {
        let qos = sub_qos.min(msg.qos);
        if qos > 0 && (s.outbound.len() >= self.window || !self.retained_waiting.is_empty()) {
            // The client's Receive Maximum holds: wait for acknowledgements (in order).
            self.retained_waiting.push_back((msg.clone(), qos, sub_id));
            return;
        }
        self.send_retained_now(s, msg, qos, sub_id, out);
    }

    fn send_retained_now(
        &mut self,
        s: &mut SessionState,
        msg: &Arc<Message>,
        qos: u8,
        sub_id: Option<u32>,
        out: &mut BytesMut,
    ) {
        let packet_id = if qos > 0 { s.alloc_packet_id() } else { None };
        if qos > 0 && packet_id.is_none() {
            return;
        }
        if self.send_publish(msg, qos, true, packet_id, false, sub_id.into_iter().collect(), out) {
            if let Some(id) = packet_id {
                s.outbound.insert(id, Inflight { pid: None, offset: 0, qos, released: false });
                s.retained_inflight.insert(id, (msg.topic.clone(), msg.timestamp));
                s.dirty = true;
            }
        }
    }

    /// Sends retained messages that waited for window space.
    pub fn drain_retained(&mut self, s: &mut SessionState, out: &mut BytesMut) {
        while s.outbound.len() < self.window {
            let Some((msg, qos, id)) = self.retained_waiting.pop_front() else { break };
            self.send_retained_now(s, &msg, qos, id, out);
        }
    }

    /// Encodes a PUBLISH into `out`. Returns false if the client could not accept it (larger
    /// than its Maximum Packet Size): the message is then skipped, as the spec requires.
    #[allow(clippy::too_many_arguments)]
    pub fn send_publish(
        &mut self,
        msg: &Message,
        qos: u8,
        retain: bool,
        packet_id: Option<u16>,
        dup: bool,
        subscription_identifiers: Vec<u32>,
        out: &mut BytesMut,
    ) -> bool {
        let now = axle_engine::log::now_ms();
        let mut properties = PublishProperties {
            payload_format_indicator: msg.payload_format_utf8,
            message_expiry_interval: msg.expires_at.map(|x| ((x - now).max(1000) / 1000) as u32),
            response_topic: msg.response_topic.clone(),
            correlation_data: msg.correlation_data.clone(),
            user_properties: msg.user_properties.clone(),
            subscription_identifiers,
            content_type: msg.content_type.clone(),
            topic_alias: None,
        };
        let mut topic = msg.topic.clone();
        if self.version == ProtocolVersion::V5 && self.alias_max > 0 {
            if let Some(a) = self.aliases.get(&msg.topic) {
                properties.topic_alias = Some(*a);
                topic.clear();
            } else if self.aliases.len() < usize::from(self.alias_max) {
                let a = self.aliases.len() as u16 + 1;
                self.aliases.insert(msg.topic.clone(), a);
                properties.topic_alias = Some(a);
            }
        }
        let packet = Packet::Publish(Publish {
            dup,
            qos: QoS::from_u8(qos).unwrap_or(QoS::AtMostOnce),
            retain,
            topic,
            packet_id,
            payload: msg.payload.clone(),
            properties,
        });
        match codec::encoded_len(&packet, self.version) {
            Ok(n) if n as u64 <= u64::from(self.max_packet) => {}
            _ => {
                self.metrics.dropped(crate::metrics::DropReason::TooLargeForClient, 1);
                tracing::debug!(topic = %msg.topic, "message larger than the client's maximum packet size; skipped");
                return false;
            }
        }
        if codec::encode(&packet, self.version, out).is_err() {
            return false;
        }
        let len = msg.payload.len();
        self.metrics.message_out(&msg.topic, qos, len);
        self.client.messages_out.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.client.bytes_out.fetch_add(len as u64, std::sync::atomic::Ordering::Relaxed);
        let latency_ms = u64::try_from(now - msg.timestamp).unwrap_or(0);
        self.client.observe_delivery(latency_ms * 1000);
        true
    }
}
