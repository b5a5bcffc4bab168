//! PUBLISH and its properties.

use bytes::Bytes;

use super::error::{DecodeError, EncodeError};
use super::properties::{self as props, read_properties, Property, PropertyContext, PropertyList};
use super::topic::{validate_topic_name, TopicError};
use super::wire::{put_string, read_packet_id, Reader, Sink};
use super::{ProtocolVersion, QoS, UserProperties};

/// PUBLISH: an application message.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Publish {
    /// Redelivery flag; never set with QoS 0.
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// May be empty under MQTT 5 when `properties.topic_alias` is set.
    pub topic: String,
    /// `Some` (1 to 65535) exactly when `qos` is 1 or 2.
    pub packet_id: Option<u16>,
    pub payload: Bytes,
    pub properties: PublishProperties,
}

/// PUBLISH properties (MQTT 5).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PublishProperties {
    /// `Some(true)`: the payload is UTF-8 text.
    pub payload_format_indicator: Option<bool>,
    pub message_expiry_interval: Option<u32>,
    /// Never 0.
    pub topic_alias: Option<u16>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: UserProperties,
    /// Each 1 to 268435455; only in PUBLISH sent by the server.
    pub subscription_identifiers: Vec<u32>,
    pub content_type: Option<String>,
}

impl PublishProperties {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = PublishProperties::default();
        read_properties(r, PropertyContext::Publish, |prop| match prop {
            Property::PayloadFormatIndicator(v) => p.payload_format_indicator = Some(v),
            Property::MessageExpiryInterval(v) => p.message_expiry_interval = Some(v),
            Property::TopicAlias(v) => p.topic_alias = Some(v),
            Property::ResponseTopic(v) => p.response_topic = Some(v),
            Property::CorrelationData(v) => p.correlation_data = Some(v),
            Property::UserProperty(k, v) => p.user_properties.push((k, v)),
            Property::SubscriptionIdentifier(v) => p.subscription_identifiers.push(v),
            Property::ContentType(v) => p.content_type = Some(v),
            _ => {}
        })?;
        Ok(p)
    }
}

impl PropertyList for PublishProperties {
    fn write_properties<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        props::put_bool(s, props::PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator);
        props::put_u32(s, props::MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        props::put_nonzero_u16(s, props::TOPIC_ALIAS, self.topic_alias, "topic alias")?;
        props::put_response_topic(s, &self.response_topic)?;
        props::put_bin(s, props::CORRELATION_DATA, &self.correlation_data, "correlation data")?;
        props::put_user_properties(s, &self.user_properties)?;
        for &id in &self.subscription_identifiers {
            props::put_subscription_id(s, id)?;
        }
        props::put_str(s, props::CONTENT_TYPE, &self.content_type, "content type")
    }
}

const DUP: u8 = 0b1000;
const RETAIN: u8 = 0b0001;

/// Checks the PUBLISH fixed header flags: QoS 3 and DUP with QoS 0 are malformed.
pub(crate) fn check_header_flags(flags: u8) -> Result<QoS, DecodeError> {
    let qos = QoS::from_u8((flags >> 1) & 0b11).ok_or(DecodeError::InvalidQoS { field: "PUBLISH fixed header" })?;
    if flags & DUP != 0 && qos == QoS::AtMostOnce {
        return Err(DecodeError::DupWithQoS0);
    }
    Ok(qos)
}

pub(crate) fn header_flags(p: &Publish) -> u8 {
    let mut flags = p.qos.as_u8() << 1;
    if p.dup {
        flags |= DUP;
    }
    if p.retain {
        flags |= RETAIN;
    }
    flags
}

pub(crate) fn decode(flags: u8, r: &mut Reader, version: ProtocolVersion) -> Result<Publish, DecodeError> {
    let qos = check_header_flags(flags)?;
    let topic = r.string("topic name")?;
    let packet_id = match qos {
        QoS::AtMostOnce => None,
        _ => Some(read_packet_id(r, "PUBLISH")?),
    };
    let properties = match version {
        ProtocolVersion::V5 => PublishProperties::decode(r)?,
        ProtocolVersion::V311 => PublishProperties::default(),
    };
    if topic.is_empty() && version == ProtocolVersion::V5 {
        if properties.topic_alias.is_none() {
            return Err(DecodeError::EmptyTopicWithoutAlias);
        }
    } else {
        validate_topic_name(&topic).map_err(|source| DecodeError::InvalidTopicName { field: "topic name", source })?;
    }
    Ok(Publish {
        dup: flags & DUP != 0,
        qos,
        retain: flags & RETAIN != 0,
        topic,
        packet_id,
        payload: r.rest(),
        properties,
    })
}

impl Publish {
    pub(crate) fn write<S: Sink>(&self, version: ProtocolVersion, s: &mut S) -> Result<(), EncodeError> {
        if self.dup && self.qos == QoS::AtMostOnce {
            return Err(EncodeError::DupWithQoS0);
        }
        let v5 = version == ProtocolVersion::V5;
        if self.topic.is_empty() {
            if !v5 {
                return Err(EncodeError::InvalidTopicName { field: "topic name", source: TopicError::Empty });
            }
            if self.properties.topic_alias.is_none() {
                return Err(EncodeError::EmptyTopicWithoutAlias);
            }
        } else {
            validate_topic_name(&self.topic)
                .map_err(|source| EncodeError::InvalidTopicName { field: "topic name", source })?;
        }
        put_string(s, &self.topic, "topic name")?;
        match (self.qos, self.packet_id) {
            (QoS::AtMostOnce, None) => {}
            (QoS::AtMostOnce, Some(_)) => return Err(EncodeError::UnexpectedPacketId),
            (_, Some(id)) if id != 0 => s.put_u16(id),
            (_, _) => return Err(EncodeError::MissingPacketId { packet: "PUBLISH" }),
        }
        if v5 {
            props::encode_properties(s, &self.properties)?;
        }
        s.put_slice(&self.payload);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use proptest::prelude::*;

    use super::super::test_support::{self as ts, decode_v};
    use super::super::{decode, encode, Packet, ReasonCode};
    use super::*;

    const V5: Option<ProtocolVersion> = Some(ProtocolVersion::V5);
    const V311: Option<ProtocolVersion> = Some(ProtocolVersion::V311);

    proptest! {
        #[test]
        fn publish_round_trips_under_mqtt5(publish in ts::publish()) {
            ts::assert_round_trip(&Packet::Publish(publish), ProtocolVersion::V5)?;
        }

        #[test]
        fn publish_round_trips_under_mqtt311(publish in ts::publish()) {
            let packet = ts::for_v311(Packet::Publish(publish)).expect("PUBLISH exists in 3.1.1");
            ts::assert_round_trip(&packet, ProtocolVersion::V311)?;
        }
    }

    #[test]
    fn every_prefix_of_a_publish_needs_more_bytes() {
        // QoS 1, topic "a/b", id 7, properties: message expiry 60, payload "hi".
        let bytes = [0x32, 14, 0, 3, b'a', b'/', b'b', 0, 7, 5, 0x02, 0, 0, 0, 60, b'h', b'i'];
        let mut fixed = bytes.to_vec();
        fixed[1] = (fixed.len() - 2) as u8;
        assert!(matches!(decode_v(&fixed, V5), Ok(Packet::Publish(_))));
        ts::assert_prefixes_incomplete(&fixed, V5);
    }

    #[test]
    fn qos_3_is_malformed() {
        let err = decode(&mut BytesMut::from(&[0x36u8, 0][..]), V5, u32::MAX).unwrap_err();
        assert_eq!(err, DecodeError::InvalidQoS { field: "PUBLISH fixed header" });
        assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
    }

    #[test]
    fn dup_on_qos_0_is_malformed() {
        let err = decode_v(&[0x38, 4, 0, 1, b't', 0], V5).unwrap_err();
        assert_eq!(err, DecodeError::DupWithQoS0);
        assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
        let publish = Publish { dup: true, topic: "t".into(), ..Publish::default() };
        let mut buf = BytesMut::new();
        assert_eq!(encode(&Packet::Publish(publish), ProtocolVersion::V5, &mut buf), Err(EncodeError::DupWithQoS0));
    }

    #[test]
    fn packet_id_0_is_a_protocol_error() {
        let err = decode_v(&[0x32, 5, 0, 1, b't', 0, 0], V311).unwrap_err();
        assert_eq!(err, DecodeError::ZeroPacketId { packet: "PUBLISH" });
        assert_eq!(err.reason_code(), ReasonCode::ProtocolError);
    }

    #[test]
    fn topic_name_with_wildcard_is_invalid() {
        let err = decode_v(&[0x30, 4, 0, 2, b'a', b'+'], V311).unwrap_err();
        assert_eq!(err, DecodeError::InvalidTopicName { field: "topic name", source: TopicError::WildcardInName });
        assert_eq!(err.reason_code(), ReasonCode::TopicNameInvalid);
    }

    #[test]
    fn empty_topic_needs_a_topic_alias() {
        let err = decode_v(&[0x30, 2, 0, 0], V311).unwrap_err();
        assert_eq!(err, DecodeError::InvalidTopicName { field: "topic name", source: TopicError::Empty });
        let err = decode_v(&[0x30, 3, 0, 0, 0], V5).unwrap_err();
        assert_eq!(err, DecodeError::EmptyTopicWithoutAlias);
        assert_eq!(err.reason_code(), ReasonCode::ProtocolError);
        let with_alias = decode_v(&[0x30, 6, 0, 0, 3, 0x23, 0, 9], V5).expect("alias replaces topic");
        let Packet::Publish(p) = with_alias else { panic!("not a PUBLISH") };
        assert_eq!((p.topic.as_str(), p.properties.topic_alias), ("", Some(9)));
    }

    #[test]
    fn topic_alias_0_is_topic_alias_invalid() {
        let err = decode_v(&[0x30, 7, 0, 1, b't', 3, 0x23, 0, 0], V5).unwrap_err();
        assert_eq!(err, DecodeError::TopicAliasZero);
        assert_eq!(err.reason_code(), ReasonCode::TopicAliasInvalid);
    }

    #[test]
    fn topic_name_with_bad_utf8_is_malformed() {
        let err = decode_v(&[0x30, 4, 0, 2, 0xC3, 0x28], V311).unwrap_err();
        assert_eq!(err, DecodeError::InvalidUtf8 { field: "topic name" });
        assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
    }

    #[test]
    fn several_subscription_identifiers_are_kept_in_order() {
        let publish = Publish {
            topic: "t".into(),
            properties: PublishProperties { subscription_identifiers: vec![5, 300, 1], ..Default::default() },
            ..Publish::default()
        };
        let bytes = ts::encode_vec(&Packet::Publish(publish.clone()), ProtocolVersion::V5);
        assert_eq!(decode_v(&bytes, V5), Ok(Packet::Publish(publish)));
    }

    #[test]
    fn encoder_checks_packet_ids_against_qos() {
        let mut buf = BytesMut::new();
        let q0 = Publish { topic: "t".into(), packet_id: Some(1), ..Publish::default() };
        assert_eq!(encode(&Packet::Publish(q0), ProtocolVersion::V5, &mut buf), Err(EncodeError::UnexpectedPacketId));
        let q1 = Publish { topic: "t".into(), qos: QoS::AtLeastOnce, ..Publish::default() };
        let zero = Publish { packet_id: Some(0), ..q1.clone() };
        for p in [q1, zero] {
            assert_eq!(
                encode(&Packet::Publish(p), ProtocolVersion::V5, &mut buf),
                Err(EncodeError::MissingPacketId { packet: "PUBLISH" })
            );
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn payload_is_everything_after_the_properties() {
        let bytes = [0x31, 6, 0, 1, b't', 0, 0xFF, 0x00];
        let Ok(Packet::Publish(p)) = decode_v(&bytes, V5) else { panic!("not a PUBLISH") };
        assert!(p.retain);
        assert_eq!(&p.payload[..], &[0xFF, 0x00]);
    }
}
