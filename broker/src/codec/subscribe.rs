//! SUBSCRIBE and UNSUBSCRIBE, subscription options, and their properties.

use super::error::{DecodeError, EncodeError};
use super::properties::{self as props, read_properties, Property, PropertyContext, PropertyList};
use super::topic::{parse_shared, validate_topic_filter};
use super::wire::{put_packet_id, put_string, read_packet_id, Reader, Sink};
use super::{ProtocolVersion, QoS, UserProperties};

/// SUBSCRIBE: one or more topic filters with their options.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Subscribe {
    pub packet_id: u16,
    /// Never empty.
    pub filters: Vec<SubscriptionRequest>,
    pub properties: SubscribeProperties,
}

/// One topic filter of a SUBSCRIBE, possibly shared (`$share/{group}/{filter}`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SubscriptionRequest {
    pub filter: String,
    pub options: SubscriptionOptions,
}

/// The options byte of a subscription. Under MQTT 3.1.1 only `qos` exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS the server may deliver with.
    pub qos: QoS,
    /// Do not deliver the client's own publications back to it. Not allowed on shared
    /// subscriptions.
    pub no_local: bool,
    /// Keep the RETAIN flag of forwarded messages as published.
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

/// When retained messages are sent for a new subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// 0: send retained messages at subscribe time.
    #[default]
    SendAtSubscribe = 0,
    /// 1: send them only if the subscription did not exist yet.
    SendIfNew = 1,
    /// 2: do not send them.
    DoNotSend = 2,
}

/// SUBSCRIBE properties (MQTT 5).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SubscribeProperties {
    /// 1 to 268435455.
    pub subscription_identifier: Option<u32>,
    pub user_properties: UserProperties,
}

/// UNSUBSCRIBE: one or more topic filters to remove.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Unsubscribe {
    pub packet_id: u16,
    /// Never empty.
    pub filters: Vec<String>,
    pub properties: UnsubscribeProperties,
}

/// UNSUBSCRIBE properties (MQTT 5).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UnsubscribeProperties {
    pub user_properties: UserProperties,
}

const NO_LOCAL: u8 = 0b0000_0100;
const RETAIN_AS_PUBLISHED: u8 = 0b0000_1000;
const RETAIN_HANDLING_SHIFT: u8 = 4;

impl SubscriptionOptions {
    fn decode(byte: u8, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let reserved = match version {
            ProtocolVersion::V311 => 0b1111_1100,
            ProtocolVersion::V5 => 0b1100_0000,
        };
        if byte & reserved != 0 {
            return Err(DecodeError::ReservedSubscriptionOptions(byte));
        }
        let qos = QoS::from_u8(byte & 0b11).ok_or(DecodeError::InvalidQoS { field: "subscription options" })?;
        let retain_handling = match (byte >> RETAIN_HANDLING_SHIFT) & 0b11 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(DecodeError::InvalidRetainHandling),
        };
        Ok(SubscriptionOptions {
            qos,
            no_local: byte & NO_LOCAL != 0,
            retain_as_published: byte & RETAIN_AS_PUBLISHED != 0,
            retain_handling,
        })
    }

    fn encode(self, version: ProtocolVersion) -> u8 {
        let mut byte = self.qos.as_u8();
        if version == ProtocolVersion::V5 {
            if self.no_local {
                byte |= NO_LOCAL;
            }
            if self.retain_as_published {
                byte |= RETAIN_AS_PUBLISHED;
            }
            byte |= (self.retain_handling as u8) << RETAIN_HANDLING_SHIFT;
        }
        byte
    }
}

impl SubscribeProperties {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = SubscribeProperties::default();
        read_properties(r, PropertyContext::Subscribe, |prop| match prop {
            Property::SubscriptionIdentifier(v) => p.subscription_identifier = Some(v),
            Property::UserProperty(k, v) => p.user_properties.push((k, v)),
            _ => {}
        })?;
        Ok(p)
    }
}

impl PropertyList for SubscribeProperties {
    fn write_properties<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        if let Some(id) = self.subscription_identifier {
            props::put_subscription_id(s, id)?;
        }
        props::put_user_properties(s, &self.user_properties)
    }
}

impl UnsubscribeProperties {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = UnsubscribeProperties::default();
        read_properties(r, PropertyContext::Unsubscribe, |prop| {
            if let Property::UserProperty(k, v) = prop {
                p.user_properties.push((k, v));
            }
        })?;
        Ok(p)
    }
}

impl PropertyList for UnsubscribeProperties {
    fn write_properties<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        props::put_user_properties(s, &self.user_properties)
    }
}

fn read_filter(r: &mut Reader) -> Result<String, DecodeError> {
    let filter = r.string("topic filter")?;
    match validate_topic_filter(&filter) {
        Ok(()) => Ok(filter),
        Err(source) => Err(DecodeError::InvalidTopicFilter { filter, source }),
    }
}

fn write_filter<S: Sink>(s: &mut S, filter: &str) -> Result<(), EncodeError> {
    validate_topic_filter(filter)
        .map_err(|source| EncodeError::InvalidTopicFilter { filter: filter.to_owned(), source })?;
    put_string(s, filter, "topic filter")
}

pub(crate) fn decode_subscribe(r: &mut Reader, version: ProtocolVersion) -> Result<Subscribe, DecodeError> {
    let packet_id = read_packet_id(r, "SUBSCRIBE")?;
    let properties = match version {
        ProtocolVersion::V5 => SubscribeProperties::decode(r)?,
        ProtocolVersion::V311 => SubscribeProperties::default(),
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = read_filter(r)?;
        let options = SubscriptionOptions::decode(r.u8("subscription options")?, version)?;
        if options.no_local && parse_shared(&filter).is_some() {
            return Err(DecodeError::NoLocalOnSharedSubscription { filter });
        }
        filters.push(SubscriptionRequest { filter, options });
    }
    if filters.is_empty() {
        return Err(DecodeError::EmptyPayload { packet: "SUBSCRIBE", items: "topic filters" });
    }
    Ok(Subscribe { packet_id, filters, properties })
}

impl Subscribe {
    pub(crate) fn write<S: Sink>(&self, version: ProtocolVersion, s: &mut S) -> Result<(), EncodeError> {
        if self.filters.is_empty() {
            return Err(EncodeError::EmptyPayload { packet: "SUBSCRIBE", item: "topic filter" });
        }
        put_packet_id(s, self.packet_id, "SUBSCRIBE")?;
        if version == ProtocolVersion::V5 {
            props::encode_properties(s, &self.properties)?;
        }
        for request in &self.filters {
            write_filter(s, &request.filter)?;
            let options = request.options;
            if version == ProtocolVersion::V5 && options.no_local && parse_shared(&request.filter).is_some() {
                return Err(EncodeError::NoLocalOnSharedSubscription { filter: request.filter.clone() });
            }
            s.put_u8(options.encode(version));
        }
        Ok(())
    }
}

pub(crate) fn decode_unsubscribe(r: &mut Reader, version: ProtocolVersion) -> Result<Unsubscribe, DecodeError> {
    let packet_id = read_packet_id(r, "UNSUBSCRIBE")?;
    let properties = match version {
        ProtocolVersion::V5 => UnsubscribeProperties::decode(r)?,
        ProtocolVersion::V311 => UnsubscribeProperties::default(),
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(read_filter(r)?);
    }
    if filters.is_empty() {
        return Err(DecodeError::EmptyPayload { packet: "UNSUBSCRIBE", items: "topic filters" });
    }
    Ok(Unsubscribe { packet_id, filters, properties })
}

impl Unsubscribe {
    pub(crate) fn write<S: Sink>(&self, version: ProtocolVersion, s: &mut S) -> Result<(), EncodeError> {
        if self.filters.is_empty() {
            return Err(EncodeError::EmptyPayload { packet: "UNSUBSCRIBE", item: "topic filter" });
        }
        put_packet_id(s, self.packet_id, "UNSUBSCRIBE")?;
        if version == ProtocolVersion::V5 {
            props::encode_properties(s, &self.properties)?;
        }
        for filter in &self.filters {
            write_filter(s, filter)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use proptest::prelude::*;

    use super::super::test_support::{self as ts, decode_v};
    use super::super::{encode, Packet, ReasonCode, TopicError};
    use super::*;

    const V5: Option<ProtocolVersion> = Some(ProtocolVersion::V5);
    const V311: Option<ProtocolVersion> = Some(ProtocolVersion::V311);

    fn version(v5: bool) -> ProtocolVersion {
        if v5 {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V311
        }
    }

    /// A SUBSCRIBE with packet id 1 and the given bytes after the id (and properties).
    fn subscribe(v5: bool, tail: &[u8]) -> Vec<u8> {
        let mut body = vec![0, 1];
        if v5 {
            body.push(0);
        }
        body.extend_from_slice(tail);
        let mut out = vec![0x82, body.len() as u8];
        out.extend(body);
        out
    }

    proptest! {
        #[test]
        fn subscribe_round_trips_under_both_versions(sub in ts::subscribe(), v5 in any::<bool>()) {
            ts::assert_round_trip(&Packet::Subscribe(sub), version(v5))?;
        }

        #[test]
        fn unsubscribe_round_trips_under_both_versions(unsub in ts::unsubscribe(), v5 in any::<bool>()) {
            ts::assert_round_trip(&Packet::Unsubscribe(unsub), version(v5))?;
        }
    }

    #[test]
    fn every_prefix_of_subscribe_and_unsubscribe_needs_more_bytes() {
        let bytes = subscribe(true, &[0, 3, b'a', b'/', b'+', 0x2E]);
        assert!(matches!(decode_v(&bytes, V5), Ok(Packet::Subscribe(_))));
        ts::assert_prefixes_incomplete(&bytes, V5);
        let bytes = [0xA2, 5, 0, 9, 0, 1, b'#'];
        assert!(matches!(decode_v(&bytes, V311), Ok(Packet::Unsubscribe(_))));
        ts::assert_prefixes_incomplete(&bytes, V311);
    }

    #[test]
    fn subscribe_without_filters_is_a_protocol_error() {
        let err = decode_v(&subscribe(true, &[]), V5).unwrap_err();
        assert_eq!(err, DecodeError::EmptyPayload { packet: "SUBSCRIBE", items: "topic filters" });
        assert_eq!(err.reason_code(), ReasonCode::ProtocolError);
        let err = decode_v(&[0xA2, 2, 0, 1], V311).unwrap_err();
        assert_eq!(err.reason_code(), ReasonCode::ProtocolError);
        let mut buf = BytesMut::new();
        let empty = Subscribe { packet_id: 1, ..Subscribe::default() };
        assert!(matches!(
            encode(&Packet::Subscribe(empty), ProtocolVersion::V5, &mut buf),
            Err(EncodeError::EmptyPayload { .. })
        ));
    }

    #[test]
    fn subscription_option_reserved_bits_are_malformed() {
        let err = decode_v(&subscribe(true, &[0, 1, b'a', 0x40]), V5).unwrap_err();
        assert_eq!(err, DecodeError::ReservedSubscriptionOptions(0x40));
        assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
        // No Local is a reserved bit under 3.1.1.
        let err = decode_v(&subscribe(false, &[0, 1, b'a', 0x04]), V311).unwrap_err();
        assert_eq!(err, DecodeError::ReservedSubscriptionOptions(0x04));
    }

    #[test]
    fn retain_handling_3_is_malformed() {
        let err = decode_v(&subscribe(true, &[0, 1, b'a', 0x30]), V5).unwrap_err();
        assert_eq!(err, DecodeError::InvalidRetainHandling);
        assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
    }

    #[test]
    fn subscription_qos_3_is_malformed() {
        let err = decode_v(&subscribe(false, &[0, 1, b'a', 0x03]), V311).unwrap_err();
        assert_eq!(err, DecodeError::InvalidQoS { field: "subscription options" });
        assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
    }

    #[test]
    fn invalid_topic_filters_are_rejected() {
        let err = decode_v(&subscribe(true, &[0, 3, b'a', b'#', b'b', 0]), V5).unwrap_err();
        assert_eq!(
            err,
            DecodeError::InvalidTopicFilter { filter: "a#b".into(), source: TopicError::MultiLevelWildcardMisplaced }
        );
        assert_eq!(err.reason_code(), ReasonCode::TopicFilterInvalid);
        let err = decode_v(&subscribe(true, &[0, 0, 0]), V5).unwrap_err();
        assert!(matches!(err, DecodeError::InvalidTopicFilter { source: TopicError::Empty, .. }));
        let err = decode_v(&[0xA2, 6, 0, 1, 0, 2, b'a', b'+'], V311).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::InvalidTopicFilter { source: TopicError::SingleLevelWildcardMisplaced, .. }
        ));
    }

    #[test]
    fn shared_subscription_filter_must_be_well_formed() {
        let filter = b"$share//a";
        let mut tail = vec![0, filter.len() as u8];
        tail.extend_from_slice(filter);
        tail.push(0x01);
        let err = decode_v(&subscribe(true, &tail), V5).unwrap_err();
        assert!(matches!(err, DecodeError::InvalidTopicFilter { source: TopicError::EmptyShareGroup, .. }));
    }

    #[test]
    fn no_local_on_shared_subscription_is_a_protocol_error() {
        let filter = b"$share/g/a";
        let mut tail = vec![0, filter.len() as u8];
        tail.extend_from_slice(filter);
        tail.push(0x04);
        let err = decode_v(&subscribe(true, &tail), V5).unwrap_err();
        assert_eq!(err, DecodeError::NoLocalOnSharedSubscription { filter: "$share/g/a".into() });
        assert_eq!(err.reason_code(), ReasonCode::ProtocolError);
    }

    #[test]
    fn subscribe_packet_id_0_is_a_protocol_error() {
        let err = decode_v(&[0x82, 6, 0, 0, 0, 1, b'a', 0], V311).unwrap_err();
        assert_eq!(err, DecodeError::ZeroPacketId { packet: "SUBSCRIBE" });
        assert_eq!(err.reason_code(), ReasonCode::ProtocolError);
    }

    #[test]
    fn subscribe_options_are_read() {
        let bytes = subscribe(true, &[0, 1, b'a', 0b0010_1110]);
        let Ok(Packet::Subscribe(sub)) = decode_v(&bytes, V5) else { panic!("not a SUBSCRIBE") };
        let expected = SubscriptionOptions {
            qos: QoS::ExactlyOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::DoNotSend,
        };
        assert_eq!(sub.filters, vec![SubscriptionRequest { filter: "a".into(), options: expected }]);
    }

    #[test]
    fn missing_options_byte_is_malformed() {
        let err = decode_v(&subscribe(false, &[0, 1, b'a']), V311).unwrap_err();
        assert_eq!(err, DecodeError::UnexpectedEnd { field: "subscription options" });
        assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
    }
}
