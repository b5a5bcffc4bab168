//! A sans-IO codec for MQTT 3.1.1 and 5.0.
//!
//! [`decode`] takes one packet off the front of a byte buffer and checks it against the
//! specification; it never panics on untrusted input. [`encode`] writes a packet and refuses
//! to produce bytes that [`decode`] would reject. Under MQTT 3.1.1, fields that only exist in
//! MQTT 5 (properties, most reason codes, subscription options other than QoS) are dropped.

mod ack;
mod connack;
mod connect;
mod disconnect;
mod error;
mod properties;
mod publish;
mod reason;
mod subscribe;
pub mod topic;
mod wire;

#[cfg(test)]
mod test_support;

use bytes::{Bytes, BytesMut};

pub use ack::{AckProperties, PubAck, SubAck, UnsubAck};
pub use connack::{ConnAck, ConnAckProperties};
pub use connect::{Connect, ConnectProperties, Will, WillProperties};
pub use disconnect::{Auth, AuthProperties, Disconnect, DisconnectProperties};
pub use error::{DecodeError, EncodeError};
pub use properties::UserProperties;
pub use publish::{Publish, PublishProperties};
pub use reason::ReasonCode;
pub use subscribe::{
    RetainHandling, Subscribe, SubscribeProperties, SubscriptionOptions, SubscriptionRequest, Unsubscribe,
    UnsubscribeProperties,
};
pub use topic::{parse_shared, topic_matches, validate_topic_filter, validate_topic_name, TopicError};
pub use wire::MAX_VARINT as MAX_REMAINING_LENGTH;

use reason::ReasonContext;
use wire::{put_varint, varint_len, Counter, Reader, Sink};

/// The MQTT protocol revision a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ProtocolVersion {
    /// MQTT 3.1.1, protocol level 4.
    V311,
    /// MQTT 5.0, protocol level 5.
    #[default]
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte of CONNECT.
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V311 => 4,
            ProtocolVersion::V5 => 5,
        }
    }

    /// The version for a protocol level byte, if supported.
    pub fn from_level(level: u8) -> Option<ProtocolVersion> {
        match level {
            4 => Some(ProtocolVersion::V311),
            5 => Some(ProtocolVersion::V5),
            _ => None,
        }
    }
}

/// Quality of service of a message or subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum QoS {
    #[default]
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for 0, 1 or 2.
    pub fn from_u8(value: u8) -> Option<QoS> {
        match value {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }

    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// One MQTT control packet.
#[derive(Debug, Clone, PartialEq)]
pub enum Packet {
    Connect(Connect),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(PubAck),
    PubRec(PubAck),
    PubRel(PubAck),
    PubComp(PubAck),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

/// The control packet types, numbered as in the fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    Auth = 15,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Connect => "CONNECT",
            Kind::ConnAck => "CONNACK",
            Kind::Publish => "PUBLISH",
            Kind::PubAck => "PUBACK",
            Kind::PubRec => "PUBREC",
            Kind::PubRel => "PUBREL",
            Kind::PubComp => "PUBCOMP",
            Kind::Subscribe => "SUBSCRIBE",
            Kind::SubAck => "SUBACK",
            Kind::Unsubscribe => "UNSUBSCRIBE",
            Kind::UnsubAck => "UNSUBACK",
            Kind::PingReq => "PINGREQ",
            Kind::PingResp => "PINGRESP",
            Kind::Disconnect => "DISCONNECT",
            Kind::Auth => "AUTH",
        }
    }

    /// Checks the first byte of a fixed header: packet type, flags, and that the packet is
    /// acceptable at this point of the connection.
    fn from_header(byte: u8, version: Option<ProtocolVersion>) -> Result<Kind, DecodeError> {
        let kind = match byte >> 4 {
            1 => Kind::Connect,
            2 => Kind::ConnAck,
            3 => Kind::Publish,
            4 => Kind::PubAck,
            5 => Kind::PubRec,
            6 => Kind::PubRel,
            7 => Kind::PubComp,
            8 => Kind::Subscribe,
            9 => Kind::SubAck,
            10 => Kind::Unsubscribe,
            11 => Kind::UnsubAck,
            12 => Kind::PingReq,
            13 => Kind::PingResp,
            14 => Kind::Disconnect,
            15 if version != Some(ProtocolVersion::V311) => Kind::Auth,
            other => return Err(DecodeError::ReservedPacketType(other)),
        };
        if version.is_none() && kind != Kind::Connect {
            return Err(DecodeError::ExpectedConnect { packet: kind.name() });
        }
        let flags = byte & 0x0F;
        let expected = match kind {
            Kind::Publish => {
                publish::check_header_flags(flags)?;
                return Ok(kind);
            }
            Kind::PubRel | Kind::Subscribe | Kind::Unsubscribe => 0b0010,
            _ => 0,
        };
        if flags != expected {
            return Err(DecodeError::InvalidHeaderFlags { packet: kind.name(), flags, expected });
        }
        Ok(kind)
    }
}

impl Packet {
    fn kind(&self) -> Kind {
        match self {
            Packet::Connect(_) => Kind::Connect,
            Packet::ConnAck(_) => Kind::ConnAck,
            Packet::Publish(_) => Kind::Publish,
            Packet::PubAck(_) => Kind::PubAck,
            Packet::PubRec(_) => Kind::PubRec,
            Packet::PubRel(_) => Kind::PubRel,
            Packet::PubComp(_) => Kind::PubComp,
            Packet::Subscribe(_) => Kind::Subscribe,
            Packet::SubAck(_) => Kind::SubAck,
            Packet::Unsubscribe(_) => Kind::Unsubscribe,
            Packet::UnsubAck(_) => Kind::UnsubAck,
            Packet::PingReq => Kind::PingReq,
            Packet::PingResp => Kind::PingResp,
            Packet::Disconnect(_) => Kind::Disconnect,
            Packet::Auth(_) => Kind::Auth,
        }
    }

    /// The packet's name as the specification writes it, e.g. `"PUBLISH"`.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    fn header_byte(&self) -> u8 {
        let kind = self.kind();
        let flags = match self {
            Packet::Publish(p) => publish::header_flags(p),
            Packet::PubRel(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => 0b0010,
            _ => 0,
        };
        ((kind as u8) << 4) | flags
    }
}

/// The fixed header: first byte, remaining length and the header's own size.
struct FixedHeader {
    byte: u8,
    remaining: usize,
    len: usize,
}

/// Reads the fixed header at the front of `buf`; `Ok(None)` if more bytes are needed.
fn read_fixed_header(buf: &[u8]) -> Result<Option<FixedHeader>, DecodeError> {
    let Some(&byte) = buf.first() else {
        return Ok(None);
    };
    let mut remaining: usize = 0;
    for (i, shift) in [0usize, 7, 14, 21].into_iter().enumerate() {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= usize::from(b & 0x7F) << shift;
        if b & 0x80 == 0 {
            return Ok(Some(FixedHeader { byte, remaining, len: 2 + i }));
        }
    }
    Err(DecodeError::RemainingLengthTooLong)
}

/// Decodes one packet from the front of `buf`, consuming its bytes. `Ok(None)` means more
/// bytes are needed and nothing was consumed.
///
/// `version` is `None` before CONNECT was seen: only CONNECT is accepted then, and its own
/// protocol level decides how it is read (CONNECT is always read at its own level).
/// `max_packet_size` bounds the whole packet (fixed header included) in bytes; a larger
/// remaining length is an error as soon as the fixed header is readable. Pass `u32::MAX`
/// for no limit beyond the protocol's own.
///
/// On error the connection must be closed. A packet whose bytes had all arrived has been
/// consumed; otherwise `buf` is unchanged.
pub fn decode(
    buf: &mut BytesMut,
    version: Option<ProtocolVersion>,
    max_packet_size: u32,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let kind = Kind::from_header(first, version)?;
    let Some(header) = read_fixed_header(buf)? else {
        return Ok(None);
    };
    let total = header.len + header.remaining;
    if total as u64 > u64::from(max_packet_size) {
        return Err(DecodeError::PacketTooLarge { size: total as u64, max: max_packet_size });
    }
    if buf.len() < total {
        return Ok(None);
    }
    let mut frame = buf.split_to(total).freeze();
    let body = frame.split_off(header.len);
    decode_body(kind, header.byte & 0x0F, body, version).map(Some)
}

fn decode_body(kind: Kind, flags: u8, body: Bytes, version: Option<ProtocolVersion>) -> Result<Packet, DecodeError> {
    // Only CONNECT gets here without a version, and it reads its own.
    let v = version.unwrap_or_default();
    let mut r = Reader::new(body);
    let packet = match kind {
        Kind::Connect => Packet::Connect(connect::decode(&mut r)?),
        Kind::ConnAck => Packet::ConnAck(connack::decode(&mut r, v)?),
        Kind::Publish => Packet::Publish(publish::decode(flags, &mut r, v)?),
        Kind::PubAck => Packet::PubAck(ack::decode_pub(&mut r, v, ReasonContext::PubAck)?),
        Kind::PubRec => Packet::PubRec(ack::decode_pub(&mut r, v, ReasonContext::PubRec)?),
        Kind::PubRel => Packet::PubRel(ack::decode_pub(&mut r, v, ReasonContext::PubRel)?),
        Kind::PubComp => Packet::PubComp(ack::decode_pub(&mut r, v, ReasonContext::PubComp)?),
        Kind::Subscribe => Packet::Subscribe(subscribe::decode_subscribe(&mut r, v)?),
        Kind::SubAck => Packet::SubAck(ack::decode_suback(&mut r, v)?),
        Kind::Unsubscribe => Packet::Unsubscribe(subscribe::decode_unsubscribe(&mut r, v)?),
        Kind::UnsubAck => Packet::UnsubAck(ack::decode_unsuback(&mut r, v)?),
        Kind::PingReq => Packet::PingReq,
        Kind::PingResp => Packet::PingResp,
        Kind::Disconnect => Packet::Disconnect(disconnect::decode_disconnect(&mut r, v)?),
        Kind::Auth => Packet::Auth(disconnect::decode_auth(&mut r)?),
    };
    r.finish(kind.name())?;
    Ok(packet)
}

fn write_body<S: Sink>(packet: &Packet, version: ProtocolVersion, s: &mut S) -> Result<(), EncodeError> {
    match packet {
        Packet::Connect(c) => c.write(s),
        Packet::ConnAck(c) => c.write(version, s),
        Packet::Publish(p) => p.write(version, s),
        Packet::PubAck(a) => a.write(version, ReasonContext::PubAck, s),
        Packet::PubRec(a) => a.write(version, ReasonContext::PubRec, s),
        Packet::PubRel(a) => a.write(version, ReasonContext::PubRel, s),
        Packet::PubComp(a) => a.write(version, ReasonContext::PubComp, s),
        Packet::Subscribe(x) => x.write(version, s),
        Packet::SubAck(x) => x.write(version, s),
        Packet::Unsubscribe(x) => x.write(version, s),
        Packet::UnsubAck(x) => x.write(version, s),
        Packet::PingReq | Packet::PingResp => Ok(()),
        Packet::Disconnect(d) => d.write(version, s),
        Packet::Auth(a) => match version {
            ProtocolVersion::V311 => Err(EncodeError::NotInV311 { packet: "AUTH" }),
            ProtocolVersion::V5 => a.write(s),
        },
    }
}

/// Measures the body and checks it fits a remaining length.
fn body_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    let mut counter = Counter::default();
    write_body(packet, version, &mut counter)?;
    if counter.len > MAX_REMAINING_LENGTH as usize {
        return Err(EncodeError::PacketTooLarge { size: counter.len });
    }
    Ok(counter.len)
}

/// Appends `packet` to `buf` as `version` frames it (CONNECT always uses its own
/// `protocol`). On error nothing is appended.
pub fn encode(packet: &Packet, version: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let len = body_len(packet, version)?;
    let start = buf.len();
    buf.reserve(1 + varint_len(len) + len);
    Sink::put_u8(buf, packet.header_byte());
    let written = put_varint(buf, len, "remaining length").and_then(|()| write_body(packet, version, buf));
    if written.is_err() {
        buf.truncate(start);
    }
    written
}

/// Size in bytes `encode` would append for this packet, fixed header included.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    let len = body_len(packet, version)?;
    Ok(1 + varint_len(len) + len)
}

/// The protocol version a CONNECT at the front of `buf` asks for, read without consuming
/// anything. Useful to pick the CONNACK format after [`decode`] rejected a CONNECT.
pub fn peek_connect_version(buf: &[u8]) -> Option<ProtocolVersion> {
    let header = read_fixed_header(buf).ok()??;
    if header.byte != 0x10 {
        return None;
    }
    let body = buf.get(header.len..)?;
    let name_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let name = body.get(2..2 + name_len)?;
    let level = *body.get(2 + name_len)?;
    match name {
        b"MQTT" => ProtocolVersion::from_level(level),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
