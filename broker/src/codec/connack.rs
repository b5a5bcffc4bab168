//! CONNACK and its properties.

use bytes::Bytes;

use super::error::{DecodeError, EncodeError};
use super::properties::{self as props, read_properties, Property, PropertyContext, PropertyList};
use super::reason::{ReasonCode, ReasonContext};
use super::wire::{Reader, Sink};
use super::{ProtocolVersion, QoS, UserProperties};

/// CONNACK: the server's answer to CONNECT. Under MQTT 3.1.1 the reason travels as a
/// return code (see [`ReasonCode::to_v311_connack`]) and properties are dropped.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConnAck {
    pub session_present: bool,
    pub reason: ReasonCode,
    pub properties: ConnAckProperties,
}

/// CONNACK properties (MQTT 5).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConnAckProperties {
    pub session_expiry_interval: Option<u32>,
    /// Never 0.
    pub receive_maximum: Option<u16>,
    /// `AtMostOnce` or `AtLeastOnce`; absent means QoS 2 is supported.
    pub maximum_qos: Option<QoS>,
    pub retain_available: Option<bool>,
    /// Never 0.
    pub maximum_packet_size: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub topic_alias_maximum: Option<u16>,
    pub reason_string: Option<String>,
    pub user_properties: UserProperties,
    pub wildcard_subscription_available: Option<bool>,
    pub subscription_identifiers_available: Option<bool>,
    pub shared_subscription_available: Option<bool>,
    pub server_keep_alive: Option<u16>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
}

impl ConnAckProperties {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = ConnAckProperties::default();
        read_properties(r, PropertyContext::ConnAck, |prop| match prop {
            Property::SessionExpiryInterval(v) => p.session_expiry_interval = Some(v),
            Property::ReceiveMaximum(v) => p.receive_maximum = Some(v),
            Property::MaximumQoS(v) => p.maximum_qos = Some(v),
            Property::RetainAvailable(v) => p.retain_available = Some(v),
            Property::MaximumPacketSize(v) => p.maximum_packet_size = Some(v),
            Property::AssignedClientIdentifier(v) => p.assigned_client_identifier = Some(v),
            Property::TopicAliasMaximum(v) => p.topic_alias_maximum = Some(v),
            Property::ReasonString(v) => p.reason_string = Some(v),
            Property::UserProperty(k, v) => p.user_properties.push((k, v)),
            Property::WildcardSubscriptionAvailable(v) => p.wildcard_subscription_available = Some(v),
            Property::SubscriptionIdentifierAvailable(v) => p.subscription_identifiers_available = Some(v),
            Property::SharedSubscriptionAvailable(v) => p.shared_subscription_available = Some(v),
            Property::ServerKeepAlive(v) => p.server_keep_alive = Some(v),
            Property::ResponseInformation(v) => p.response_information = Some(v),
            Property::ServerReference(v) => p.server_reference = Some(v),
            Property::AuthenticationMethod(v) => p.authentication_method = Some(v),
            Property::AuthenticationData(v) => p.authentication_data = Some(v),
            _ => {}
        })?;
        props::check_auth_decoded(&p.authentication_method, &p.authentication_data)?;
        Ok(p)
    }
}

impl PropertyList for ConnAckProperties {
    fn write_properties<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        use props::*;
        check_auth_encoded(&self.authentication_method, &self.authentication_data)?;
        put_u32(s, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_nonzero_u16(s, RECEIVE_MAXIMUM, self.receive_maximum, "receive maximum")?;
        put_maximum_qos(s, self.maximum_qos)?;
        put_bool(s, RETAIN_AVAILABLE, self.retain_available);
        put_nonzero_u32(s, MAXIMUM_PACKET_SIZE, self.maximum_packet_size, "maximum packet size")?;
        put_str(s, ASSIGNED_CLIENT_IDENTIFIER, &self.assigned_client_identifier, "assigned client identifier")?;
        put_u16(s, TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        put_str(s, REASON_STRING, &self.reason_string, "reason string")?;
        put_user_properties(s, &self.user_properties)?;
        put_bool(s, WILDCARD_SUBSCRIPTION_AVAILABLE, self.wildcard_subscription_available);
        put_bool(s, SUBSCRIPTION_IDENTIFIER_AVAILABLE, self.subscription_identifiers_available);
        put_bool(s, SHARED_SUBSCRIPTION_AVAILABLE, self.shared_subscription_available);
        put_u16(s, SERVER_KEEP_ALIVE, self.server_keep_alive);
        put_str(s, RESPONSE_INFORMATION, &self.response_information, "response information")?;
        put_str(s, SERVER_REFERENCE, &self.server_reference, "server reference")?;
        put_str(s, AUTHENTICATION_METHOD, &self.authentication_method, "authentication method")?;
        put_bin(s, AUTHENTICATION_DATA, &self.authentication_data, "authentication data")
    }
}

pub(crate) fn decode(r: &mut Reader, version: ProtocolVersion) -> Result<ConnAck, DecodeError> {
    let flags = r.u8("acknowledge flags")?;
    if flags & 0xFE != 0 {
        return Err(DecodeError::ReservedConnAckFlags(flags));
    }
    let code = r.u8("reason code")?;
    let invalid = DecodeError::InvalidReasonCode { packet: "CONNACK", code };
    let (reason, properties) = match version {
        ProtocolVersion::V311 => (ReasonCode::from_v311_connack(code).ok_or(invalid)?, Default::default()),
        ProtocolVersion::V5 => {
            let reason = ReasonCode::from_u8(code).filter(|c| c.allowed_in(ReasonContext::ConnAck)).ok_or(invalid)?;
            (reason, ConnAckProperties::decode(r)?)
        }
    };
    let session_present = flags & 0x01 != 0;
    if session_present && reason.is_error() {
        return Err(DecodeError::SessionPresentOnError);
    }
    Ok(ConnAck { session_present, reason, properties })
}

impl ConnAck {
    pub(crate) fn write<S: Sink>(&self, version: ProtocolVersion, s: &mut S) -> Result<(), EncodeError> {
        if self.session_present && self.reason.is_error() {
            return Err(EncodeError::SessionPresentOnError);
        }
        s.put_u8(u8::from(self.session_present));
        match version {
            ProtocolVersion::V311 => {
                let code = self
                    .reason
                    .to_v311_connack()
                    .ok_or(EncodeError::ReasonNotInV311 { packet: "CONNACK", reason: self.reason })?;
                s.put_u8(code);
                Ok(())
            }
            ProtocolVersion::V5 => {
                if !self.reason.allowed_in(ReasonContext::ConnAck) {
                    return Err(EncodeError::ReasonNotAllowed { packet: "CONNACK", reason: self.reason });
                }
                s.put_u8(self.reason.as_u8());
                props::encode_properties(s, &self.properties)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use proptest::prelude::*;

    use super::super::test_support::{self as ts, decode_v};
    use super::super::{encode, Packet};
    use super::*;

    proptest! {
        #[test]
        fn connack_round_trips_under_both_versions(connack in ts::connack(), v5 in any::<bool>()) {
            let version = if v5 { ProtocolVersion::V5 } else { ProtocolVersion::V311 };
            ts::assert_round_trip(&Packet::ConnAck(connack), version)?;
        }
    }

    #[test]
    fn every_prefix_of_a_connack_needs_more_bytes() {
        let connack = ConnAck {
            session_present: true,
            properties: ConnAckProperties { assigned_client_identifier: Some("id".into()), ..Default::default() },
            ..ConnAck::default()
        };
        let bytes = ts::encode_vec(&Packet::ConnAck(connack), ProtocolVersion::V5);
        ts::assert_prefixes_incomplete(&bytes, Some(ProtocolVersion::V5));
    }

    #[test]
    fn v311_return_codes_map_to_reason_codes() {
        let bytes = [0x20, 2, 0, 0x05];
        let packet = decode_v(&bytes, Some(ProtocolVersion::V311));
        assert_eq!(packet, Ok(Packet::ConnAck(ConnAck { reason: ReasonCode::NotAuthorized, ..ConnAck::default() })));
        let refused = ConnAck { reason: ReasonCode::UnsupportedProtocolVersion, ..ConnAck::default() };
        assert_eq!(ts::encode_vec(&Packet::ConnAck(refused), ProtocolVersion::V311), vec![0x20, 2, 0, 0x01]);
    }

    #[test]
    fn unknown_return_codes_are_malformed() {
        let err = decode_v(&[0x20, 2, 0, 0x06], Some(ProtocolVersion::V311)).unwrap_err();
        assert_eq!(err, DecodeError::InvalidReasonCode { packet: "CONNACK", code: 6 });
        assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
        // 0x8E (Session taken over) is a DISCONNECT code, not a CONNACK code.
        let err = decode_v(&[0x20, 3, 0, 0x8E, 0], Some(ProtocolVersion::V5)).unwrap_err();
        assert_eq!(err, DecodeError::InvalidReasonCode { packet: "CONNACK", code: 0x8E });
    }

    #[test]
    fn reserved_acknowledge_flags_are_malformed() {
        let err = decode_v(&[0x20, 2, 0x02, 0], Some(ProtocolVersion::V311)).unwrap_err();
        assert_eq!(err, DecodeError::ReservedConnAckFlags(0x02));
        assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
    }

    #[test]
    fn session_present_with_an_error_is_rejected() {
        let err = decode_v(&[0x20, 2, 0x01, 0x05], Some(ProtocolVersion::V311)).unwrap_err();
        assert_eq!(err, DecodeError::SessionPresentOnError);
        let bad = ConnAck { session_present: true, reason: ReasonCode::Banned, ..ConnAck::default() };
        let mut buf = BytesMut::new();
        assert_eq!(
            encode(&Packet::ConnAck(bad), ProtocolVersion::V5, &mut buf),
            Err(EncodeError::SessionPresentOnError)
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn maximum_qos_2_cannot_be_encoded() {
        let connack = ConnAck {
            properties: ConnAckProperties { maximum_qos: Some(QoS::ExactlyOnce), ..Default::default() },
            ..ConnAck::default()
        };
        let mut buf = BytesMut::new();
        assert!(matches!(
            encode(&Packet::ConnAck(connack), ProtocolVersion::V5, &mut buf),
            Err(EncodeError::InvalidPropertyValue { name: "maximum QoS", value: 2 })
        ));
    }

    #[test]
    fn connack_properties_are_dropped_under_v311() {
        let connack = ConnAck {
            properties: ConnAckProperties { server_keep_alive: Some(30), ..Default::default() },
            ..ConnAck::default()
        };
        assert_eq!(ts::encode_vec(&Packet::ConnAck(connack), ProtocolVersion::V311), vec![0x20, 2, 0, 0]);
    }
}
