//! CONNECT, its will message, and their properties.

use bytes::Bytes;

use super::error::{DecodeError, EncodeError};
use super::properties::{self as props, read_properties, Property, PropertyContext, PropertyList};
use super::topic::validate_topic_name;
use super::wire::{put_binary, put_string, Reader, Sink};
use super::{ProtocolVersion, QoS, UserProperties};

/// CONNECT: the first packet a client sends.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Connect {
    /// The protocol level the client asked for. CONNECT is always encoded at this level.
    pub protocol: ProtocolVersion,
    /// Clean Start (MQTT 5) or Clean Session (MQTT 3.1.1).
    pub clean_start: bool,
    /// Keep alive in seconds; 0 turns it off.
    pub keep_alive: u16,
    /// May be empty; whether an empty identifier is acceptable is the server's decision.
    pub client_id: String,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub properties: ConnectProperties,
}

/// The will message published if the client goes away without a normal DISCONNECT.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: WillProperties,
}

/// CONNECT properties (MQTT 5).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConnectProperties {
    pub session_expiry_interval: Option<u32>,
    /// Never 0.
    pub receive_maximum: Option<u16>,
    /// Never 0.
    pub maximum_packet_size: Option<u32>,
    pub topic_alias_maximum: Option<u16>,
    pub request_response_information: Option<bool>,
    pub request_problem_information: Option<bool>,
    pub user_properties: UserProperties,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
}

/// Will properties (MQTT 5).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WillProperties {
    pub will_delay_interval: Option<u32>,
    /// `Some(true)`: the payload is UTF-8 text.
    pub payload_format_indicator: Option<bool>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: UserProperties,
}

impl ConnectProperties {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = ConnectProperties::default();
        read_properties(r, PropertyContext::Connect, |prop| match prop {
            Property::SessionExpiryInterval(v) => p.session_expiry_interval = Some(v),
            Property::ReceiveMaximum(v) => p.receive_maximum = Some(v),
            Property::MaximumPacketSize(v) => p.maximum_packet_size = Some(v),
            Property::TopicAliasMaximum(v) => p.topic_alias_maximum = Some(v),
            Property::RequestResponseInformation(v) => p.request_response_information = Some(v),
            Property::RequestProblemInformation(v) => p.request_problem_information = Some(v),
            Property::UserProperty(k, v) => p.user_properties.push((k, v)),
            Property::AuthenticationMethod(v) => p.authentication_method = Some(v),
            Property::AuthenticationData(v) => p.authentication_data = Some(v),
            _ => {}
        })?;
        props::check_auth_decoded(&p.authentication_method, &p.authentication_data)?;
        Ok(p)
    }
}

impl PropertyList for ConnectProperties {
    fn write_properties<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        props::check_auth_encoded(&self.authentication_method, &self.authentication_data)?;
        props::put_u32(s, props::SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        props::put_nonzero_u16(s, props::RECEIVE_MAXIMUM, self.receive_maximum, "receive maximum")?;
        props::put_nonzero_u32(s, props::MAXIMUM_PACKET_SIZE, self.maximum_packet_size, "maximum packet size")?;
        props::put_u16(s, props::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        props::put_bool(s, props::REQUEST_RESPONSE_INFORMATION, self.request_response_information);
        props::put_bool(s, props::REQUEST_PROBLEM_INFORMATION, self.request_problem_information);
        props::put_user_properties(s, &self.user_properties)?;
        props::put_str(s, props::AUTHENTICATION_METHOD, &self.authentication_method, "authentication method")?;
        props::put_bin(s, props::AUTHENTICATION_DATA, &self.authentication_data, "authentication data")
    }
}

impl WillProperties {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = WillProperties::default();
        read_properties(r, PropertyContext::Will, |prop| match prop {
            Property::WillDelayInterval(v) => p.will_delay_interval = Some(v),
            Property::PayloadFormatIndicator(v) => p.payload_format_indicator = Some(v),
            Property::MessageExpiryInterval(v) => p.message_expiry_interval = Some(v),
            Property::ContentType(v) => p.content_type = Some(v),
            Property::ResponseTopic(v) => p.response_topic = Some(v),
            Property::CorrelationData(v) => p.correlation_data = Some(v),
            Property::UserProperty(k, v) => p.user_properties.push((k, v)),
            _ => {}
        })?;
        Ok(p)
    }
}

impl PropertyList for WillProperties {
    fn write_properties<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        props::put_u32(s, props::WILL_DELAY_INTERVAL, self.will_delay_interval);
        props::put_bool(s, props::PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator);
        props::put_u32(s, props::MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        props::put_str(s, props::CONTENT_TYPE, &self.content_type, "content type")?;
        props::put_response_topic(s, &self.response_topic)?;
        props::put_bin(s, props::CORRELATION_DATA, &self.correlation_data, "correlation data")?;
        props::put_user_properties(s, &self.user_properties)
    }
}

const RESERVED: u8 = 0x01;
const CLEAN_START: u8 = 0x02;
const WILL_FLAG: u8 = 0x04;
const WILL_QOS_SHIFT: u8 = 3;
const WILL_RETAIN: u8 = 0x20;
const PASSWORD: u8 = 0x40;
const USERNAME: u8 = 0x80;

pub(crate) fn decode(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.string("protocol name")?;
    let level = r.u8("protocol level")?;
    let protocol = match (name.as_str(), level) {
        ("MQTT", 4) => ProtocolVersion::V311,
        ("MQTT", 5) => ProtocolVersion::V5,
        ("MQTT" | "MQIsdp", level) => return Err(DecodeError::UnsupportedProtocolVersion { level }),
        _ => return Err(DecodeError::UnsupportedProtocolName { name }),
    };
    let flags = r.u8("connect flags")?;
    if flags & RESERVED != 0 {
        return Err(DecodeError::ReservedConnectFlag);
    }
    let has_will = flags & WILL_FLAG != 0;
    let will_qos_bits = (flags >> WILL_QOS_SHIFT) & 0b11;
    let will_retain = flags & WILL_RETAIN != 0;
    if !has_will && (will_qos_bits != 0 || will_retain) {
        return Err(DecodeError::WillFlagsWithoutWill);
    }
    let will_qos = QoS::from_u8(will_qos_bits).ok_or(DecodeError::InvalidQoS { field: "will QoS" })?;
    let has_password = flags & PASSWORD != 0;
    let has_username = flags & USERNAME != 0;
    if protocol == ProtocolVersion::V311 && has_password && !has_username {
        return Err(DecodeError::PasswordWithoutUsername);
    }
    let keep_alive = r.u16("keep alive")?;
    let properties = match protocol {
        ProtocolVersion::V5 => ConnectProperties::decode(r)?,
        ProtocolVersion::V311 => ConnectProperties::default(),
    };
    let client_id = r.string("client identifier")?;
    let will = if has_will {
        let properties = match protocol {
            ProtocolVersion::V5 => WillProperties::decode(r)?,
            ProtocolVersion::V311 => WillProperties::default(),
        };
        let topic = r.string("will topic")?;
        validate_topic_name(&topic).map_err(|source| DecodeError::InvalidTopicName { field: "will topic", source })?;
        let payload = r.binary("will payload")?;
        Some(Will { topic, payload, qos: will_qos, retain: will_retain, properties })
    } else {
        None
    };
    let username = if has_username { Some(r.string("user name")?) } else { None };
    let password = if has_password { Some(r.binary("password")?) } else { None };
    Ok(Connect {
        protocol,
        clean_start: flags & CLEAN_START != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

impl Connect {
    pub(crate) fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        let v5 = self.protocol == ProtocolVersion::V5;
        if !v5 && self.password.is_some() && self.username.is_none() {
            return Err(EncodeError::PasswordWithoutUsername);
        }
        let mut flags = 0;
        if self.clean_start {
            flags |= CLEAN_START;
        }
        if let Some(will) = &self.will {
            flags |= WILL_FLAG | (will.qos.as_u8() << WILL_QOS_SHIFT);
            if will.retain {
                flags |= WILL_RETAIN;
            }
        }
        if self.password.is_some() {
            flags |= PASSWORD;
        }
        if self.username.is_some() {
            flags |= USERNAME;
        }
        put_string(s, "MQTT", "protocol name")?;
        s.put_u8(self.protocol.level());
        s.put_u8(flags);
        s.put_u16(self.keep_alive);
        if v5 {
            props::encode_properties(s, &self.properties)?;
        }
        put_string(s, &self.client_id, "client identifier")?;
        if let Some(will) = &self.will {
            if v5 {
                props::encode_properties(s, &will.properties)?;
            }
            validate_topic_name(&will.topic)
                .map_err(|source| EncodeError::InvalidTopicName { field: "will topic", source })?;
            put_string(s, &will.topic, "will topic")?;
            put_binary(s, &will.payload, "will payload")?;
        }
        if let Some(username) = &self.username {
            put_string(s, username, "user name")?;
        }
        if let Some(password) = &self.password {
            put_binary(s, password, "password")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use proptest::prelude::*;

    use super::super::test_support::{self as ts, decode_all, decode_v};
    use super::super::{decode, encode, DecodeError, Packet, ProtocolVersion, ReasonCode};
    use super::*;

    /// A v3.1.1 CONNECT with the given flags byte and payload after the client id "c".
    fn v311_connect(flags: u8, tail: &[u8]) -> Vec<u8> {
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 60, 0, 1, b'c'];
        body.extend_from_slice(tail);
        let mut out = vec![0x10, body.len() as u8];
        out.extend(body);
        out
    }

    fn decode_first(bytes: &[u8]) -> Result<Option<Packet>, DecodeError> {
        decode(&mut BytesMut::from(bytes), None, u32::MAX)
    }

    proptest! {
        #[test]
        fn connect_round_trips_under_both_versions(connect in ts::connect(), v5 in any::<bool>()) {
            let mut connect = connect;
            if !v5 {
                connect.protocol = ProtocolVersion::V311;
                if connect.password.is_some() && connect.username.is_none() {
                    connect.username = Some(String::new());
                }
            }
            let packet = Packet::Connect(connect);
            let version = if v5 { ProtocolVersion::V5 } else { ProtocolVersion::V311 };
            ts::assert_round_trip(&packet, version)?;
        }
    }

    #[test]
    fn every_prefix_of_a_connect_needs_more_bytes() {
        let bytes = v311_connect(0xC2, &[0, 1, b'u', 0, 1, b'p']);
        assert!(matches!(decode_first(&bytes), Ok(Some(Packet::Connect(_)))));
        ts::assert_prefixes_incomplete(&bytes, None);
    }

    #[test]
    fn mqisdp_level_3_is_an_unsupported_protocol_version() {
        let body = [0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 60, 0, 1, b'c'];
        let mut bytes = vec![0x10, body.len() as u8];
        bytes.extend_from_slice(&body);
        let err = decode_first(&bytes).unwrap_err();
        assert_eq!(err, DecodeError::UnsupportedProtocolVersion { level: 3 });
        assert_eq!(err.reason_code(), ReasonCode::UnsupportedProtocolVersion);
        assert_eq!(err.reason_code().to_v311_connack(), Some(0x01));
    }

    #[test]
    fn unknown_protocol_level_and_name_are_unsupported() {
        let mut bytes = v311_connect(0x02, &[]);
        bytes[8] = 6;
        assert_eq!(decode_first(&bytes).unwrap_err(), DecodeError::UnsupportedProtocolVersion { level: 6 });
        let mut bytes = v311_connect(0x02, &[]);
        bytes[4] = b'X';
        let err = decode_first(&bytes).unwrap_err();
        assert!(matches!(err, DecodeError::UnsupportedProtocolName { .. }));
        assert_eq!(err.reason_code(), ReasonCode::UnsupportedProtocolVersion);
    }

    #[test]
    fn reserved_connect_flag_is_malformed() {
        let err = decode_first(&v311_connect(0x03, &[])).unwrap_err();
        assert_eq!(err, DecodeError::ReservedConnectFlag);
        assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
    }

    #[test]
    fn will_qos_or_retain_without_will_flag_is_malformed() {
        for flags in [0x02 | 0x08, 0x02 | 0x20] {
            let err = decode_first(&v311_connect(flags, &[])).unwrap_err();
            assert_eq!(err, DecodeError::WillFlagsWithoutWill);
            assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
        }
    }

    #[test]
    fn will_qos_3_is_malformed() {
        let will = [0, 1, b't', 0, 0];
        let err = decode_first(&v311_connect(0x02 | 0x04 | 0x18, &will)).unwrap_err();
        assert_eq!(err, DecodeError::InvalidQoS { field: "will QoS" });
        assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
    }

    #[test]
    fn will_topic_with_wildcard_is_rejected() {
        let will = [0, 1, b'#', 0, 0];
        let err = decode_first(&v311_connect(0x02 | 0x04, &will)).unwrap_err();
        assert!(matches!(err, DecodeError::InvalidTopicName { field: "will topic", .. }));
        assert_eq!(err.reason_code(), ReasonCode::TopicNameInvalid);
    }

    #[test]
    fn password_without_username_is_malformed_in_v311_only() {
        let err = decode_first(&v311_connect(0x42, &[0, 1, b'p'])).unwrap_err();
        assert_eq!(err, DecodeError::PasswordWithoutUsername);
        assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
        let connect = Connect { password: Some(Bytes::from_static(b"p")), ..Connect::default() };
        let mut buf = BytesMut::new();
        encode(&Packet::Connect(connect.clone()), ProtocolVersion::V5, &mut buf).expect("v5 allows it");
        assert_eq!(decode_all(&buf, None), Ok(vec![Packet::Connect(connect.clone())]));
        let v3 = Connect { protocol: ProtocolVersion::V311, ..connect };
        assert_eq!(
            encode(&Packet::Connect(v3), ProtocolVersion::V311, &mut buf),
            Err(EncodeError::PasswordWithoutUsername)
        );
    }

    #[test]
    fn trailing_bytes_after_connect_are_malformed() {
        let err = decode_first(&v311_connect(0x02, &[0xAA])).unwrap_err();
        assert_eq!(err, DecodeError::TrailingBytes { packet: "CONNECT", count: 1 });
        assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
    }

    #[test]
    fn client_id_with_nul_is_malformed() {
        let mut bytes = v311_connect(0x02, &[]);
        let last = bytes.len() - 1;
        bytes[last] = 0;
        let err = decode_first(&bytes).unwrap_err();
        assert_eq!(err, DecodeError::NullCharacter { field: "client identifier" });
        assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
    }

    #[test]
    fn v5_connect_properties_are_read() {
        let connect = Connect {
            client_id: "car".into(),
            properties: ConnectProperties {
                session_expiry_interval: Some(3600),
                receive_maximum: Some(10),
                authentication_method: Some("SCRAM".into()),
                authentication_data: Some(Bytes::from_static(b"\x01")),
                ..ConnectProperties::default()
            },
            ..Connect::default()
        };
        let bytes = ts::encode_vec(&Packet::Connect(connect.clone()), ProtocolVersion::V5);
        assert_eq!(decode_v(&bytes, None), Ok(Packet::Connect(connect)));
    }

    #[test]
    fn authentication_data_without_method_is_a_protocol_error() {
        let connect = Connect {
            properties: ConnectProperties {
                authentication_data: Some(Bytes::from_static(b"x")),
                ..ConnectProperties::default()
            },
            ..Connect::default()
        };
        let packet = Packet::Connect(connect);
        let mut buf = BytesMut::new();
        assert_eq!(encode(&packet, ProtocolVersion::V5, &mut buf), Err(EncodeError::AuthenticationDataWithoutMethod));
        // Hand-built: header, name, level 5, flags, keep alive, properties (data only), id "".
        let bytes = [0x10, 16, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 0, 4, 0x16, 0, 1, b'x', 0, 0];
        let mut bytes = bytes.to_vec();
        bytes[1] = (bytes.len() - 2) as u8;
        let err = decode_first(&bytes).unwrap_err();
        assert_eq!(err, DecodeError::AuthenticationDataWithoutMethod);
        assert_eq!(err.reason_code(), ReasonCode::ProtocolError);
    }

    #[test]
    fn will_delay_is_only_allowed_in_will_properties() {
        // CONNECT properties carrying Will Delay Interval (0x18).
        let mut bytes = vec![0x10, 0, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 0, 5, 0x18, 0, 0, 0, 5, 0, 0];
        bytes[1] = (bytes.len() - 2) as u8;
        let err = decode_first(&bytes).unwrap_err();
        assert_eq!(err, DecodeError::PropertyNotAllowed { name: "will delay interval", packet: "CONNECT" });
        assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
    }
}
