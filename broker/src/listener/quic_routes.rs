//! Which QUIC stream an MQTT packet belongs on, for EMQX-style multi-stream MQTT over QUIC.
//! Sans-IO: fed the packets read from each stream and asked where each packet written by the
//! session layer goes.
//!
//! Stream 0 is the control stream (the first one the client opened: CONNECT, CONNACK, PING,
//! DISCONNECT, AUTH). Further client-opened bidirectional streams are data streams:
//! - the acknowledgements of a client's PUBLISH (PUBACK, PUBREC, PUBCOMP) go back on the
//!   stream its PUBLISH (or PUBREL) came on;
//! - SUBACK and UNSUBACK go back on the stream of their SUBSCRIBE or UNSUBSCRIBE;
//! - a message delivered to the client goes out on the stream that made the (most recent)
//!   matching subscription, and the broker's PUBREL for it follows the same stream;
//! - anything else, or anything unknown, goes on the control stream.
//!
//! With one stream everything maps to stream 0: single-stream mode is the same code.

use std::collections::HashMap;

use bytes::BytesMut;

use crate::codec::{self, Packet, ProtocolVersion};

/// A stream of one QUIC connection: 0 is the control stream, then in the order accepted.
pub type StreamIdx = usize;

/// The result of framing the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// More bytes are needed.
    Incomplete,
    /// A whole packet of this many bytes.
    Packet(usize),
    /// The fixed header (this many bytes) announces a packet larger than the maximum, or its
    /// remaining length is malformed; the session layer is given the header to refuse it.
    Refused(usize),
}

/// Frames one MQTT packet at the front of `buf`, checking `max_packet` (bytes, whole packet)
/// from the fixed header on, before the body is buffered.
pub fn frame(buf: &[u8], max_packet: u32) -> Frame {
    if buf.is_empty() {
        return Frame::Incomplete;
    }
    let mut remaining: u64 = 0;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else { return Frame::Incomplete };
        remaining |= u64::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            let total = remaining + 2 + i as u64;
            if total > u64::from(max_packet) {
                return Frame::Refused(2 + i);
            }
            return if (buf.len() as u64) < total { Frame::Incomplete } else { Frame::Packet(total as usize) };
        }
    }
    Frame::Refused(5)
}

/// The routing table of one connection.
#[derive(Debug, Default)]
pub struct Routes {
    version: Option<ProtocolVersion>,
    /// Client PUBLISH / PUBREL packet ids awaiting the broker's acknowledgement.
    inbound: HashMap<u16, StreamIdx>,
    /// Broker PUBLISH packet ids (QoS 1/2) awaiting the client's acknowledgement.
    outbound: HashMap<u16, StreamIdx>,
    /// SUBSCRIBE / UNSUBSCRIBE packet ids awaiting SUBACK / UNSUBACK.
    requests: HashMap<u16, StreamIdx>,
    /// Subscribed filters (shared ones by their inner filter), most recent last.
    filters: Vec<(String, StreamIdx)>,
    /// Topic aliases the broker set towards the client (MQTT 5).
    aliases: HashMap<u16, String>,
}

fn packet_id(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

/// Offset of the body of a framed packet (past the fixed header).
fn body(packet: &[u8]) -> usize {
    1 + packet[1..].iter().take(4).position(|b| b & 0x80 == 0).map_or(4, |i| i + 1)
}

/// The packet id of a PUBLISH with QoS 1 or 2 (after the topic), if any.
fn publish_id(packet: &[u8]) -> Option<u16> {
    if (packet[0] >> 1) & 0x03 == 0 {
        return None;
    }
    let b = body(packet);
    let topic_len = usize::from(packet_id(packet, b)?);
    packet_id(packet, b + 2 + topic_len)
}

impl Routes {
    /// Notes a whole packet the client sent on `stream`.
    pub fn inbound(&mut self, stream: StreamIdx, packet: &[u8]) {
        let b = body(packet);
        match packet[0] >> 4 {
            1 => self.version = codec::peek_connect_version(packet),
            3 => {
                if let Some(id) = publish_id(packet) {
                    self.inbound.insert(id, stream);
                }
            }
            // PUBACK, PUBCOMP from the client: the broker's message is done.
            4 | 7 => {
                if let Some(id) = packet_id(packet, b) {
                    self.outbound.remove(&id);
                }
            }
            // PUBREL: the broker's PUBCOMP goes back where it came from.
            6 => {
                if let Some(id) = packet_id(packet, b) {
                    self.inbound.insert(id, stream);
                }
            }
            8 | 10 => self.request(stream, packet),
            _ => {}
        }
    }

    /// SUBSCRIBE and UNSUBSCRIBE: remember where the answer goes and which filters the
    /// stream now holds. Decoded with the codec (they are rare); a packet the codec refuses
    /// is left to the session layer, which closes the connection.
    fn request(&mut self, stream: StreamIdx, packet: &[u8]) {
        let mut buf = BytesMut::from(packet);
        match codec::decode(&mut buf, Some(self.version.unwrap_or(ProtocolVersion::V311)), u32::MAX) {
            Ok(Some(Packet::Subscribe(s))) => {
                self.requests.insert(s.packet_id, stream);
                for f in s.filters {
                    let inner = codec::parse_shared(&f.filter).map_or(f.filter.clone(), |(_, inner)| inner.to_string());
                    self.filters.retain(|(g, _)| *g != inner);
                    self.filters.push((inner, stream));
                }
            }
            Ok(Some(Packet::Unsubscribe(u))) => {
                self.requests.insert(u.packet_id, stream);
                for f in u.filters {
                    let inner = codec::parse_shared(&f).map_or(f.clone(), |(_, inner)| inner.to_string());
                    self.filters.retain(|(g, _)| *g != inner);
                }
            }
            _ => {}
        }
    }

    /// The stream a whole packet the broker writes goes on.
    pub fn outbound(&mut self, packet: &[u8]) -> StreamIdx {
        let b = body(packet);
        match packet[0] >> 4 {
            3 => self.delivery(packet),
            // PUBACK, PUBCOMP: the client's message is done; PUBREC keeps its entry for PUBREL.
            4 | 7 => packet_id(packet, b).and_then(|id| self.inbound.remove(&id)).unwrap_or(0),
            5 => packet_id(packet, b).and_then(|id| self.inbound.get(&id).copied()).unwrap_or(0),
            // PUBREL for the broker's QoS 2 message.
            6 => packet_id(packet, b).and_then(|id| self.outbound.get(&id).copied()).unwrap_or(0),
            9 | 11 => packet_id(packet, b).and_then(|id| self.requests.remove(&id)).unwrap_or(0),
            _ => 0,
        }
    }

    /// A PUBLISH to the client: the stream of the most recent subscription matching its topic.
    fn delivery(&mut self, packet: &[u8]) -> StreamIdx {
        let b = body(packet);
        let Some(topic_len) = packet_id(packet, b).map(usize::from) else { return 0 };
        let Some(topic) = packet.get(b + 2..b + 2 + topic_len).and_then(|t| std::str::from_utf8(t).ok()) else {
            return 0;
        };
        let mut topic = topic.to_string();
        let v5 = self.version == Some(ProtocolVersion::V5);
        let props_at = b + 2 + topic_len + if (packet[0] >> 1) & 0x03 == 0 { 0 } else { 2 };
        // MQTT 5 with properties: a topic alias may be set or used; decode a copy to see it.
        if v5 && packet.get(props_at).is_some_and(|&l| l != 0) {
            let mut buf = BytesMut::from(packet);
            if let Ok(Some(Packet::Publish(p))) = codec::decode(&mut buf, self.version, u32::MAX) {
                if let Some(alias) = p.properties.topic_alias {
                    if topic.is_empty() {
                        topic = self.aliases.get(&alias).cloned().unwrap_or_default();
                    } else {
                        self.aliases.insert(alias, topic.clone());
                    }
                }
            }
        }
        let stream = self.filters.iter().rev().find(|(f, _)| codec::topic_matches(f, &topic)).map_or(0, |(_, s)| *s);
        if let Some(id) = publish_id(packet) {
            self.outbound.insert(id, stream);
        }
        stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{encode, PubAck, Publish, QoS, SubAck, Subscribe, SubscriptionRequest};

    const V5: ProtocolVersion = ProtocolVersion::V5;

    fn bytes(p: &Packet) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode(p, V5, &mut out).expect("encode");
        out.to_vec()
    }

    fn connect() -> Vec<u8> {
        let c = crate::codec::Connect { protocol: V5, client_id: "c".into(), clean_start: true, ..Default::default() };
        bytes(&Packet::Connect(c))
    }

    fn publish(topic: &str, qos: QoS, id: Option<u16>) -> Vec<u8> {
        bytes(&Packet::Publish(Publish {
            qos,
            topic: topic.into(),
            packet_id: id,
            payload: bytes::Bytes::from_static(b"x"),
            ..Default::default()
        }))
    }

    fn subscribe(id: u16, filter: &str) -> Vec<u8> {
        bytes(&Packet::Subscribe(Subscribe {
            packet_id: id,
            filters: vec![SubscriptionRequest { filter: filter.into(), ..Default::default() }],
            properties: Default::default(),
        }))
    }

    fn ack(kind: fn(PubAck) -> Packet, id: u16) -> Vec<u8> {
        bytes(&kind(PubAck { packet_id: id, ..Default::default() }))
    }

    fn routes() -> Routes {
        let mut r = Routes::default();
        r.inbound(0, &connect());
        r
    }

    #[test]
    fn framing_checks_the_maximum_before_the_body() {
        assert_eq!(frame(&[0x30], 100), Frame::Incomplete);
        assert_eq!(frame(&[0x30, 3, 0, 1], 100), Frame::Incomplete);
        assert_eq!(frame(&[0x30, 3, 0, 1, b't', 0xFF], 100), Frame::Packet(5));
        assert_eq!(frame(&[0x30, 0xC8, 0x01], 100), Frame::Refused(3), "200-byte body announced, 100 allowed");
        assert_eq!(frame(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF], u32::MAX), Frame::Refused(5));
    }

    #[test]
    fn acknowledgements_go_back_on_the_publishing_stream() {
        let mut r = routes();
        r.inbound(2, &publish("a/b", QoS::AtLeastOnce, Some(7)));
        r.inbound(3, &publish("a/b", QoS::ExactlyOnce, Some(8)));
        assert_eq!(r.outbound(&ack(Packet::PubAck, 7)), 2);
        assert_eq!(r.outbound(&ack(Packet::PubRec, 8)), 3);
        r.inbound(3, &ack(Packet::PubRel, 8));
        assert_eq!(r.outbound(&ack(Packet::PubComp, 8)), 3);
        assert_eq!(r.outbound(&ack(Packet::PubAck, 99)), 0, "unknown ids go to the control stream");
    }

    #[test]
    fn deliveries_go_out_on_the_subscribing_stream() {
        let mut r = routes();
        r.inbound(1, &subscribe(1, "v/+/cmd"));
        r.inbound(2, &subscribe(2, "$share/g/ota/#"));
        let suback = bytes(&Packet::SubAck(SubAck {
            packet_id: 2,
            reasons: vec![crate::codec::ReasonCode::Success],
            properties: Default::default(),
        }));
        assert_eq!(r.outbound(&suback), 2);
        assert_eq!(r.outbound(&publish("v/car1/cmd", QoS::AtLeastOnce, Some(40))), 1);
        assert_eq!(r.outbound(&publish("ota/model/notice", QoS::AtMostOnce, None)), 2);
        assert_eq!(r.outbound(&publish("elsewhere", QoS::AtMostOnce, None)), 0);
        assert_eq!(r.outbound(&ack(Packet::PubRel, 40)), 1, "the broker's PUBREL follows its PUBLISH");
    }

    #[test]
    fn control_packets_stay_on_the_control_stream() {
        let mut r = routes();
        assert_eq!(r.outbound(&bytes(&Packet::PingResp)), 0);
        assert_eq!(r.outbound(&bytes(&Packet::ConnAck(Default::default()))), 0);
    }
}
