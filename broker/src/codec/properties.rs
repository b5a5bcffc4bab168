//! MQTT 5 properties: identifiers, which packet may carry which, reading with duplicate and
//! value checks, and writing helpers. The per-packet property structs live next to their
//! packets and are built from the [`Property`] values read here.

use bytes::Bytes;

use super::error::{DecodeError, EncodeError};
use super::topic::validate_topic_name;
use super::wire::{put_binary, put_string, put_varint, Counter, Reader, Sink, MAX_VARINT};
use super::QoS;

/// Name/value pairs of the User Property, in the order they appeared.
pub type UserProperties = Vec<(String, String)>;

pub(crate) const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
pub(crate) const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
pub(crate) const CONTENT_TYPE: u8 = 0x03;
pub(crate) const RESPONSE_TOPIC: u8 = 0x08;
pub(crate) const CORRELATION_DATA: u8 = 0x09;
pub(crate) const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
pub(crate) const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
pub(crate) const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
pub(crate) const SERVER_KEEP_ALIVE: u8 = 0x13;
pub(crate) const AUTHENTICATION_METHOD: u8 = 0x15;
pub(crate) const AUTHENTICATION_DATA: u8 = 0x16;
pub(crate) const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
pub(crate) const WILL_DELAY_INTERVAL: u8 = 0x18;
pub(crate) const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
pub(crate) const RESPONSE_INFORMATION: u8 = 0x1A;
pub(crate) const SERVER_REFERENCE: u8 = 0x1C;
pub(crate) const REASON_STRING: u8 = 0x1F;
pub(crate) const RECEIVE_MAXIMUM: u8 = 0x21;
pub(crate) const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
pub(crate) const TOPIC_ALIAS: u8 = 0x23;
pub(crate) const MAXIMUM_QOS: u8 = 0x24;
pub(crate) const RETAIN_AVAILABLE: u8 = 0x25;
pub(crate) const USER_PROPERTY: u8 = 0x26;
pub(crate) const MAXIMUM_PACKET_SIZE: u8 = 0x27;
pub(crate) const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
pub(crate) const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
pub(crate) const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

/// The place a property list appears in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PropertyContext {
    Connect,
    Will,
    ConnAck,
    Publish,
    /// PUBACK, PUBREC, PUBREL or PUBCOMP, named for error messages.
    PubAck(&'static str),
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

const IN_CONNECT: u16 = 1 << 0;
const IN_WILL: u16 = 1 << 1;
const IN_CONNACK: u16 = 1 << 2;
const IN_PUBLISH: u16 = 1 << 3;
const IN_PUBACK: u16 = 1 << 4;
const IN_SUBSCRIBE: u16 = 1 << 5;
const IN_SUBACK: u16 = 1 << 6;
const IN_UNSUBSCRIBE: u16 = 1 << 7;
const IN_UNSUBACK: u16 = 1 << 8;
const IN_DISCONNECT: u16 = 1 << 9;
const IN_AUTH: u16 = 1 << 10;
const IN_ALL: u16 = (1 << 11) - 1;

impl PropertyContext {
    fn bit(self) -> u16 {
        match self {
            PropertyContext::Connect => IN_CONNECT,
            PropertyContext::Will => IN_WILL,
            PropertyContext::ConnAck => IN_CONNACK,
            PropertyContext::Publish => IN_PUBLISH,
            PropertyContext::PubAck(_) => IN_PUBACK,
            PropertyContext::Subscribe => IN_SUBSCRIBE,
            PropertyContext::SubAck => IN_SUBACK,
            PropertyContext::Unsubscribe => IN_UNSUBSCRIBE,
            PropertyContext::UnsubAck => IN_UNSUBACK,
            PropertyContext::Disconnect => IN_DISCONNECT,
            PropertyContext::Auth => IN_AUTH,
        }
    }

    fn packet(self) -> &'static str {
        match self {
            PropertyContext::Connect => "CONNECT",
            PropertyContext::Will => "the will properties of CONNECT",
            PropertyContext::ConnAck => "CONNACK",
            PropertyContext::Publish => "PUBLISH",
            PropertyContext::PubAck(name) => name,
            PropertyContext::Subscribe => "SUBSCRIBE",
            PropertyContext::SubAck => "SUBACK",
            PropertyContext::Unsubscribe => "UNSUBSCRIBE",
            PropertyContext::UnsubAck => "UNSUBACK",
            PropertyContext::Disconnect => "DISCONNECT",
            PropertyContext::Auth => "AUTH",
        }
    }
}

/// The name of a property and the places it may appear in.
fn property_info(id: u32) -> Option<(&'static str, u16)> {
    const MESSAGE: u16 = IN_PUBLISH | IN_WILL;
    const ACKS: u16 = IN_CONNACK | IN_PUBACK | IN_SUBACK | IN_UNSUBACK | IN_DISCONNECT | IN_AUTH;
    let id = u8::try_from(id).ok()?;
    Some(match id {
        PAYLOAD_FORMAT_INDICATOR => ("payload format indicator", MESSAGE),
        MESSAGE_EXPIRY_INTERVAL => ("message expiry interval", MESSAGE),
        CONTENT_TYPE => ("content type", MESSAGE),
        RESPONSE_TOPIC => ("response topic", MESSAGE),
        CORRELATION_DATA => ("correlation data", MESSAGE),
        SUBSCRIPTION_IDENTIFIER => ("subscription identifier", IN_PUBLISH | IN_SUBSCRIBE),
        SESSION_EXPIRY_INTERVAL => ("session expiry interval", IN_CONNECT | IN_CONNACK | IN_DISCONNECT),
        ASSIGNED_CLIENT_IDENTIFIER => ("assigned client identifier", IN_CONNACK),
        SERVER_KEEP_ALIVE => ("server keep alive", IN_CONNACK),
        AUTHENTICATION_METHOD => ("authentication method", IN_CONNECT | IN_CONNACK | IN_AUTH),
        AUTHENTICATION_DATA => ("authentication data", IN_CONNECT | IN_CONNACK | IN_AUTH),
        REQUEST_PROBLEM_INFORMATION => ("request problem information", IN_CONNECT),
        WILL_DELAY_INTERVAL => ("will delay interval", IN_WILL),
        REQUEST_RESPONSE_INFORMATION => ("request response information", IN_CONNECT),
        RESPONSE_INFORMATION => ("response information", IN_CONNACK),
        SERVER_REFERENCE => ("server reference", IN_CONNACK | IN_DISCONNECT),
        REASON_STRING => ("reason string", ACKS),
        RECEIVE_MAXIMUM => ("receive maximum", IN_CONNECT | IN_CONNACK),
        TOPIC_ALIAS_MAXIMUM => ("topic alias maximum", IN_CONNECT | IN_CONNACK),
        TOPIC_ALIAS => ("topic alias", IN_PUBLISH),
        MAXIMUM_QOS => ("maximum QoS", IN_CONNACK),
        RETAIN_AVAILABLE => ("retain available", IN_CONNACK),
        USER_PROPERTY => ("user property", IN_ALL),
        MAXIMUM_PACKET_SIZE => ("maximum packet size", IN_CONNECT | IN_CONNACK),
        WILDCARD_SUBSCRIPTION_AVAILABLE => ("wildcard subscription available", IN_CONNACK),
        SUBSCRIPTION_IDENTIFIER_AVAILABLE => ("subscription identifier available", IN_CONNACK),
        SHARED_SUBSCRIPTION_AVAILABLE => ("shared subscription available", IN_CONNACK),
        _ => return None,
    })
}

/// One decoded property with its value already checked. Variants carry the specification's
/// property names, "User Property" included.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Property {
    PayloadFormatIndicator(bool),
    MessageExpiryInterval(u32),
    ContentType(String),
    ResponseTopic(String),
    CorrelationData(Bytes),
    SubscriptionIdentifier(u32),
    SessionExpiryInterval(u32),
    AssignedClientIdentifier(String),
    ServerKeepAlive(u16),
    AuthenticationMethod(String),
    AuthenticationData(Bytes),
    RequestProblemInformation(bool),
    WillDelayInterval(u32),
    RequestResponseInformation(bool),
    ResponseInformation(String),
    ServerReference(String),
    ReasonString(String),
    ReceiveMaximum(u16),
    TopicAliasMaximum(u16),
    TopicAlias(u16),
    MaximumQoS(QoS),
    RetainAvailable(bool),
    UserProperty(String, String),
    MaximumPacketSize(u32),
    WildcardSubscriptionAvailable(bool),
    SubscriptionIdentifierAvailable(bool),
    SharedSubscriptionAvailable(bool),
}

/// Reads a property length and the properties it covers, handing each to `apply`.
/// Unknown identifiers and properties not allowed in `ctx` are malformed; a second copy of a
/// property that may appear once is a protocol error.
pub(crate) fn read_properties(
    r: &mut Reader,
    ctx: PropertyContext,
    mut apply: impl FnMut(Property),
) -> Result<(), DecodeError> {
    let len = r.varint("property length")?;
    let mut props = Reader::new(r.bytes(len as usize, "properties")?);
    let mut seen: u64 = 0;
    while !props.is_empty() {
        let id = props.varint("property identifier")?;
        let (name, contexts) = property_info(id).ok_or(DecodeError::UnknownProperty { id })?;
        if contexts & ctx.bit() == 0 {
            return Err(DecodeError::PropertyNotAllowed { name, packet: ctx.packet() });
        }
        let repeatable = id == u32::from(USER_PROPERTY)
            || (id == u32::from(SUBSCRIPTION_IDENTIFIER) && ctx == PropertyContext::Publish);
        let bit = 1u64.checked_shl(id).unwrap_or(0);
        if !repeatable && seen & bit != 0 {
            return Err(DecodeError::DuplicateProperty { name });
        }
        seen |= bit;
        apply(read_value(id, name, &mut props)?);
    }
    Ok(())
}

fn read_bool(r: &mut Reader, name: &'static str) -> Result<bool, DecodeError> {
    match r.u8(name)? {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(DecodeError::InvalidPropertyValue { name, value: u32::from(value) }),
    }
}

fn read_nonzero_u16(r: &mut Reader, name: &'static str) -> Result<u16, DecodeError> {
    match r.u16(name)? {
        0 => Err(DecodeError::InvalidPropertyValue { name, value: 0 }),
        value => Ok(value),
    }
}

fn read_value(id: u32, name: &'static str, r: &mut Reader) -> Result<Property, DecodeError> {
    use Property as P;
    let id = u8::try_from(id).map_err(|_| DecodeError::UnknownProperty { id })?;
    Ok(match id {
        PAYLOAD_FORMAT_INDICATOR => P::PayloadFormatIndicator(read_bool(r, name)?),
        MESSAGE_EXPIRY_INTERVAL => P::MessageExpiryInterval(r.u32(name)?),
        CONTENT_TYPE => P::ContentType(r.string(name)?),
        RESPONSE_TOPIC => {
            let topic = r.string(name)?;
            validate_topic_name(&topic).map_err(|source| DecodeError::InvalidTopicName { field: name, source })?;
            P::ResponseTopic(topic)
        }
        CORRELATION_DATA => P::CorrelationData(r.binary(name)?),
        SUBSCRIPTION_IDENTIFIER => match r.varint(name)? {
            0 => return Err(DecodeError::InvalidPropertyValue { name, value: 0 }),
            value => P::SubscriptionIdentifier(value),
        },
        SESSION_EXPIRY_INTERVAL => P::SessionExpiryInterval(r.u32(name)?),
        ASSIGNED_CLIENT_IDENTIFIER => P::AssignedClientIdentifier(r.string(name)?),
        SERVER_KEEP_ALIVE => P::ServerKeepAlive(r.u16(name)?),
        AUTHENTICATION_METHOD => P::AuthenticationMethod(r.string(name)?),
        AUTHENTICATION_DATA => P::AuthenticationData(r.binary(name)?),
        REQUEST_PROBLEM_INFORMATION => P::RequestProblemInformation(read_bool(r, name)?),
        WILL_DELAY_INTERVAL => P::WillDelayInterval(r.u32(name)?),
        REQUEST_RESPONSE_INFORMATION => P::RequestResponseInformation(read_bool(r, name)?),
        RESPONSE_INFORMATION => P::ResponseInformation(r.string(name)?),
        SERVER_REFERENCE => P::ServerReference(r.string(name)?),
        REASON_STRING => P::ReasonString(r.string(name)?),
        RECEIVE_MAXIMUM => P::ReceiveMaximum(read_nonzero_u16(r, name)?),
        TOPIC_ALIAS_MAXIMUM => P::TopicAliasMaximum(r.u16(name)?),
        TOPIC_ALIAS => match r.u16(name)? {
            0 => return Err(DecodeError::TopicAliasZero),
            alias => P::TopicAlias(alias),
        },
        MAXIMUM_QOS => match r.u8(name)? {
            0 => P::MaximumQoS(QoS::AtMostOnce),
            1 => P::MaximumQoS(QoS::AtLeastOnce),
            value => return Err(DecodeError::InvalidPropertyValue { name, value: u32::from(value) }),
        },
        RETAIN_AVAILABLE => P::RetainAvailable(read_bool(r, name)?),
        USER_PROPERTY => {
            let key = r.string("user property name")?;
            P::UserProperty(key, r.string("user property value")?)
        }
        MAXIMUM_PACKET_SIZE => match r.u32(name)? {
            0 => return Err(DecodeError::InvalidPropertyValue { name, value: 0 }),
            size => P::MaximumPacketSize(size),
        },
        WILDCARD_SUBSCRIPTION_AVAILABLE => P::WildcardSubscriptionAvailable(read_bool(r, name)?),
        SUBSCRIPTION_IDENTIFIER_AVAILABLE => P::SubscriptionIdentifierAvailable(read_bool(r, name)?),
        SHARED_SUBSCRIPTION_AVAILABLE => P::SharedSubscriptionAvailable(read_bool(r, name)?),
        _ => return Err(DecodeError::UnknownProperty { id: u32::from(id) }),
    })
}

/// Authentication data only makes sense together with a method.
pub(crate) fn check_auth_decoded(method: &Option<String>, data: &Option<Bytes>) -> Result<(), DecodeError> {
    if data.is_some() && method.is_none() {
        return Err(DecodeError::AuthenticationDataWithoutMethod);
    }
    Ok(())
}

pub(crate) fn check_auth_encoded(method: &Option<String>, data: &Option<Bytes>) -> Result<(), EncodeError> {
    if data.is_some() && method.is_none() {
        return Err(EncodeError::AuthenticationDataWithoutMethod);
    }
    Ok(())
}

/// A property list that can write its properties (without the length prefix).
pub(crate) trait PropertyList {
    fn write_properties<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError>;
}

/// Writes the property length followed by the properties.
pub(crate) fn encode_properties<S: Sink, P: PropertyList>(s: &mut S, props: &P) -> Result<(), EncodeError> {
    let mut counter = Counter::default();
    props.write_properties(&mut counter)?;
    put_varint(s, counter.len, "property length")?;
    props.write_properties(s)
}

/// Number of bytes the property list takes without its length prefix.
pub(crate) fn properties_len<P: PropertyList>(props: &P) -> Result<usize, EncodeError> {
    let mut counter = Counter::default();
    props.write_properties(&mut counter)?;
    Ok(counter.len)
}

pub(crate) fn put_bool<S: Sink>(s: &mut S, id: u8, value: Option<bool>) {
    if let Some(value) = value {
        s.put_u8(id);
        s.put_u8(u8::from(value));
    }
}

pub(crate) fn put_u16<S: Sink>(s: &mut S, id: u8, value: Option<u16>) {
    if let Some(value) = value {
        s.put_u8(id);
        s.put_u16(value);
    }
}

pub(crate) fn put_u32<S: Sink>(s: &mut S, id: u8, value: Option<u32>) {
    if let Some(value) = value {
        s.put_u8(id);
        s.put_u32(value);
    }
}

/// A two-byte property where 0 is not allowed.
pub(crate) fn put_nonzero_u16<S: Sink>(
    s: &mut S,
    id: u8,
    value: Option<u16>,
    name: &'static str,
) -> Result<(), EncodeError> {
    if value == Some(0) {
        return Err(EncodeError::InvalidPropertyValue { name, value: 0 });
    }
    put_u16(s, id, value);
    Ok(())
}

/// A four-byte property where 0 is not allowed.
pub(crate) fn put_nonzero_u32<S: Sink>(
    s: &mut S,
    id: u8,
    value: Option<u32>,
    name: &'static str,
) -> Result<(), EncodeError> {
    if value == Some(0) {
        return Err(EncodeError::InvalidPropertyValue { name, value: 0 });
    }
    put_u32(s, id, value);
    Ok(())
}

pub(crate) fn put_str<S: Sink>(
    s: &mut S,
    id: u8,
    value: &Option<String>,
    name: &'static str,
) -> Result<(), EncodeError> {
    if let Some(value) = value {
        s.put_u8(id);
        put_string(s, value, name)?;
    }
    Ok(())
}

pub(crate) fn put_bin<S: Sink>(
    s: &mut S,
    id: u8,
    value: &Option<Bytes>,
    name: &'static str,
) -> Result<(), EncodeError> {
    if let Some(value) = value {
        s.put_u8(id);
        put_binary(s, value, name)?;
    }
    Ok(())
}

pub(crate) fn put_response_topic<S: Sink>(s: &mut S, value: &Option<String>) -> Result<(), EncodeError> {
    if let Some(topic) = value {
        validate_topic_name(topic)
            .map_err(|source| EncodeError::InvalidTopicName { field: "response topic", source })?;
    }
    put_str(s, RESPONSE_TOPIC, value, "response topic")
}

/// A subscription identifier: 1 to 268435455.
pub(crate) fn put_subscription_id<S: Sink>(s: &mut S, value: u32) -> Result<(), EncodeError> {
    if value == 0 || value > MAX_VARINT {
        return Err(EncodeError::InvalidPropertyValue { name: "subscription identifier", value: u64::from(value) });
    }
    s.put_u8(SUBSCRIPTION_IDENTIFIER);
    put_varint(s, value as usize, "subscription identifier")
}

pub(crate) fn put_maximum_qos<S: Sink>(s: &mut S, value: Option<QoS>) -> Result<(), EncodeError> {
    match value {
        Some(QoS::ExactlyOnce) => Err(EncodeError::InvalidPropertyValue { name: "maximum QoS", value: 2 }),
        Some(qos) => {
            s.put_u8(MAXIMUM_QOS);
            s.put_u8(qos.as_u8());
            Ok(())
        }
        None => Ok(()),
    }
}

pub(crate) fn put_user_properties<S: Sink>(s: &mut S, pairs: &[(String, String)]) -> Result<(), EncodeError> {
    for (key, value) in pairs {
        s.put_u8(USER_PROPERTY);
        put_string(s, key, "user property name")?;
        put_string(s, value, "user property value")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8], ctx: PropertyContext) -> Result<Vec<Property>, DecodeError> {
        let mut r = Reader::new(Bytes::copy_from_slice(bytes));
        let mut out = Vec::new();
        read_properties(&mut r, ctx, |p| out.push(p))?;
        Ok(out)
    }

    #[test]
    fn unknown_property_identifier_is_malformed() {
        let err = read(&[2, 0x7F, 0], PropertyContext::Publish).unwrap_err();
        assert_eq!(err, DecodeError::UnknownProperty { id: 0x7F });
        assert_eq!(err.reason_code(), super::super::ReasonCode::MalformedPacket);
    }

    #[test]
    fn property_outside_its_packets_is_malformed() {
        // Topic Alias (0x23) inside SUBSCRIBE.
        let err = read(&[3, TOPIC_ALIAS, 0, 1], PropertyContext::Subscribe).unwrap_err();
        assert!(matches!(err, DecodeError::PropertyNotAllowed { name: "topic alias", .. }));
        assert_eq!(err.reason_code(), super::super::ReasonCode::MalformedPacket);
    }

    #[test]
    fn duplicate_single_property_is_a_protocol_error() {
        let bytes = [10, MESSAGE_EXPIRY_INTERVAL, 0, 0, 0, 1, MESSAGE_EXPIRY_INTERVAL, 0, 0, 0, 2];
        let err = read(&bytes, PropertyContext::Publish).unwrap_err();
        assert_eq!(err, DecodeError::DuplicateProperty { name: "message expiry interval" });
        assert_eq!(err.reason_code(), super::super::ReasonCode::ProtocolError);
    }

    #[test]
    fn user_properties_and_publish_subscription_ids_repeat() {
        let bytes = [4, SUBSCRIPTION_IDENTIFIER, 1, SUBSCRIPTION_IDENTIFIER, 2];
        assert_eq!(read(&bytes, PropertyContext::Publish).map(|p| p.len()), Ok(2));
        let err = read(&bytes, PropertyContext::Subscribe).unwrap_err();
        assert!(matches!(err, DecodeError::DuplicateProperty { .. }));
        let users = [11, USER_PROPERTY, 0, 1, b'a', 0, 0, USER_PROPERTY, 0, 0, 0, 0];
        assert_eq!(read(&users, PropertyContext::Auth).map(|p| p.len()), Ok(2));
    }

    #[test]
    fn zero_receive_maximum_and_packet_size_are_protocol_errors() {
        let err = read(&[3, RECEIVE_MAXIMUM, 0, 0], PropertyContext::Connect).unwrap_err();
        assert_eq!(err, DecodeError::InvalidPropertyValue { name: "receive maximum", value: 0 });
        assert_eq!(err.reason_code(), super::super::ReasonCode::ProtocolError);
        let err = read(&[5, MAXIMUM_PACKET_SIZE, 0, 0, 0, 0], PropertyContext::Connect).unwrap_err();
        assert_eq!(err, DecodeError::InvalidPropertyValue { name: "maximum packet size", value: 0 });
        assert_eq!(err.reason_code(), super::super::ReasonCode::ProtocolError);
    }

    #[test]
    fn zero_topic_alias_and_subscription_id_are_rejected() {
        let err = read(&[3, TOPIC_ALIAS, 0, 0], PropertyContext::Publish).unwrap_err();
        assert_eq!(err.reason_code(), super::super::ReasonCode::TopicAliasInvalid);
        let err = read(&[2, SUBSCRIPTION_IDENTIFIER, 0], PropertyContext::Subscribe).unwrap_err();
        assert_eq!(err.reason_code(), super::super::ReasonCode::ProtocolError);
    }

    #[test]
    fn byte_flags_other_than_0_or_1_are_protocol_errors() {
        let err = read(&[2, REQUEST_PROBLEM_INFORMATION, 2], PropertyContext::Connect).unwrap_err();
        assert_eq!(err.reason_code(), super::super::ReasonCode::ProtocolError);
        let err = read(&[2, MAXIMUM_QOS, 2], PropertyContext::ConnAck).unwrap_err();
        assert_eq!(err.reason_code(), super::super::ReasonCode::ProtocolError);
    }

    #[test]
    fn property_length_beyond_the_packet_is_malformed() {
        let err = read(&[9, PAYLOAD_FORMAT_INDICATOR, 1], PropertyContext::Publish).unwrap_err();
        assert_eq!(err, DecodeError::UnexpectedEnd { field: "properties" });
        let err = read(&[2, MESSAGE_EXPIRY_INTERVAL, 0], PropertyContext::Publish).unwrap_err();
        assert!(matches!(err, DecodeError::UnexpectedEnd { .. }));
    }

    #[test]
    fn response_topic_with_wildcards_is_rejected() {
        let err = read(&[4, RESPONSE_TOPIC, 0, 1, b'#'], PropertyContext::Publish).unwrap_err();
        assert!(matches!(err, DecodeError::InvalidTopicName { field: "response topic", .. }));
    }
}
