//! Errors raised while decoding untrusted bytes or encoding packets.
//!
//! Every decode error maps to the MQTT 5 reason code a server should put in its CONNACK or
//! DISCONNECT before closing the connection ([`DecodeError::reason_code`]).

use super::reason::ReasonCode;
use super::topic::TopicError;

/// Why a sequence of bytes is not an acceptable MQTT packet.
///
/// After any decode error the connection must be closed: the byte stream can no longer be
/// trusted to be aligned on packet boundaries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "the remaining length field is longer than 4 bytes; the peer is not speaking MQTT or the stream is corrupt"
    )]
    RemainingLengthTooLong,
    #[error(
        "a {size}-byte packet exceeds the maximum packet size of {max} bytes; send smaller packets or raise the limit"
    )]
    PacketTooLarge { size: u64, max: u32 },
    #[error("packet type {0} is reserved in this protocol version; the peer is not speaking this MQTT version")]
    ReservedPacketType(u8),
    #[error("fixed header flags {flags:#06b} are invalid for {packet}; they must be {expected:#06b}")]
    InvalidHeaderFlags { packet: &'static str, flags: u8, expected: u8 },
    #[error("expected CONNECT as the first packet but got {packet}; a client must send CONNECT first")]
    ExpectedConnect { packet: &'static str },
    #[error("the packet ended inside the {field}; the remaining length is shorter than the fields it declares")]
    UnexpectedEnd { field: &'static str },
    #[error("{count} unexpected byte(s) after the last field of {packet}; the remaining length is too long")]
    TrailingBytes { packet: &'static str, count: usize },
    #[error("the variable byte integer in the {field} is longer than 4 bytes")]
    VarIntTooLong { field: &'static str },
    #[error("the {field} is not well-formed UTF-8")]
    InvalidUtf8 { field: &'static str },
    #[error("the {field} contains the null character U+0000, which MQTT forbids in strings")]
    NullCharacter { field: &'static str },
    #[error("protocol name {name:?} is not supported; use \"MQTT\" (MQTT 3.1.1 or 5.0)")]
    UnsupportedProtocolName { name: String },
    #[error("protocol level {level} is not supported; connect with MQTT 3.1.1 (level 4) or 5.0 (level 5)")]
    UnsupportedProtocolVersion { level: u8 },
    #[error("the reserved bit 0 of the CONNECT flags is set; it must be 0")]
    ReservedConnectFlag,
    #[error("the will QoS or will retain flag is set while the will flag is 0; clear them or send a will")]
    WillFlagsWithoutWill,
    #[error("the password flag is set without the username flag, which MQTT 3.1.1 forbids; send a username too")]
    PasswordWithoutUsername,
    #[error("QoS 3 in the {field} is not a valid quality of service; use 0, 1 or 2")]
    InvalidQoS { field: &'static str },
    #[error("the DUP flag is set on a QoS 0 PUBLISH; DUP is only meaningful for QoS 1 and 2")]
    DupWithQoS0,
    #[error("{packet} carries packet identifier 0; packet identifiers must be 1 to 65535")]
    ZeroPacketId { packet: &'static str },
    #[error("the {field} is not a valid topic name: {source}")]
    InvalidTopicName { field: &'static str, source: TopicError },
    #[error("the PUBLISH has an empty topic name and no topic alias; send a topic name or an alias")]
    EmptyTopicWithoutAlias,
    #[error("topic filter {filter:?} is invalid: {source}")]
    InvalidTopicFilter { filter: String, source: TopicError },
    #[error("No Local is set on shared subscription {filter:?}, which MQTT 5 forbids; clear No Local")]
    NoLocalOnSharedSubscription { filter: String },
    #[error("{packet} contains no {items}; send at least one")]
    EmptyPayload { packet: &'static str, items: &'static str },
    #[error("subscription options byte {0:#010b} sets reserved bits; they must be 0")]
    ReservedSubscriptionOptions(u8),
    #[error("retain handling 3 is not defined; use 0, 1 or 2")]
    InvalidRetainHandling,
    #[error("property identifier {id:#04x} is unknown")]
    UnknownProperty { id: u32 },
    #[error("the {name} property is not allowed in {packet}")]
    PropertyNotAllowed { name: &'static str, packet: &'static str },
    #[error("the {name} property appears more than once; it may appear at most once")]
    DuplicateProperty { name: &'static str },
    #[error("the {name} property has the invalid value {value}")]
    InvalidPropertyValue { name: &'static str, value: u32 },
    #[error("topic alias 0 is not allowed; topic aliases start at 1")]
    TopicAliasZero,
    #[error("authentication data is present without an authentication method; send the method too")]
    AuthenticationDataWithoutMethod,
    #[error("reason code {code:#04x} is not allowed in {packet}")]
    InvalidReasonCode { packet: &'static str, code: u8 },
    #[error("the CONNACK acknowledge flags {0:#010b} set reserved bits; only bit 0 (session present) may be set")]
    ReservedConnAckFlags(u8),
    #[error("the CONNACK has session present set with an error reason code; session present must be 0 on failure")]
    SessionPresentOnError,
}

impl DecodeError {
    /// The reason code to report to the peer (in CONNACK or DISCONNECT) before closing.
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            UnsupportedProtocolName { .. } | UnsupportedProtocolVersion { .. } => {
                ReasonCode::UnsupportedProtocolVersion
            }
            InvalidTopicName { .. } => ReasonCode::TopicNameInvalid,
            InvalidTopicFilter { .. } => ReasonCode::TopicFilterInvalid,
            TopicAliasZero => ReasonCode::TopicAliasInvalid,
            ExpectedConnect { .. }
            | ZeroPacketId { .. }
            | EmptyTopicWithoutAlias
            | NoLocalOnSharedSubscription { .. }
            | EmptyPayload { .. }
            | DuplicateProperty { .. }
            | InvalidPropertyValue { .. }
            | AuthenticationDataWithoutMethod
            | SessionPresentOnError => ReasonCode::ProtocolError,
            RemainingLengthTooLong
            | ReservedPacketType(_)
            | InvalidHeaderFlags { .. }
            | UnexpectedEnd { .. }
            | TrailingBytes { .. }
            | VarIntTooLong { .. }
            | InvalidUtf8 { .. }
            | NullCharacter { .. }
            | ReservedConnectFlag
            | WillFlagsWithoutWill
            | PasswordWithoutUsername
            | InvalidQoS { .. }
            | DupWithQoS0
            | ReservedSubscriptionOptions(_)
            | InvalidRetainHandling
            | UnknownProperty { .. }
            | PropertyNotAllowed { .. }
            | InvalidReasonCode { .. }
            | ReservedConnAckFlags(_) => ReasonCode::MalformedPacket,
        }
    }
}

/// Why a packet cannot be encoded. The encoder refuses to produce bytes that a conforming
/// decoder (including [`super::decode`]) would reject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("the encoded packet would need a remaining length of {size} bytes; MQTT allows at most 268435455")]
    PacketTooLarge { size: usize },
    #[error("the {field} is {len} bytes long; MQTT strings and binary fields hold at most 65535 bytes")]
    FieldTooLong { field: &'static str, len: usize },
    #[error("the {field} contains the null character U+0000, which MQTT forbids in strings")]
    NullCharacter { field: &'static str },
    #[error("the value {value} of the {field} does not fit a variable byte integer (at most 268435455)")]
    VarIntTooLarge { field: &'static str, value: u64 },
    #[error("{packet} needs a packet identifier from 1 to 65535")]
    MissingPacketId { packet: &'static str },
    #[error("a QoS 0 PUBLISH must not carry a packet identifier; set packet_id to None")]
    UnexpectedPacketId,
    #[error("the DUP flag must not be set on a QoS 0 PUBLISH")]
    DupWithQoS0,
    #[error("the {field} is not a valid topic name: {source}")]
    InvalidTopicName { field: &'static str, source: TopicError },
    #[error("an empty topic name needs a topic alias (MQTT 5 only)")]
    EmptyTopicWithoutAlias,
    #[error("topic filter {filter:?} is invalid: {source}")]
    InvalidTopicFilter { filter: String, source: TopicError },
    #[error("No Local must not be set on shared subscription {filter:?}")]
    NoLocalOnSharedSubscription { filter: String },
    #[error("{packet} must contain at least one {item}")]
    EmptyPayload { packet: &'static str, item: &'static str },
    #[error("reason code {reason:?} is not allowed in {packet}")]
    ReasonNotAllowed { packet: &'static str, reason: ReasonCode },
    #[error("reason code {reason:?} has no MQTT 3.1.1 equivalent in {packet}")]
    ReasonNotInV311 { packet: &'static str, reason: ReasonCode },
    #[error("{packet} does not exist in MQTT 3.1.1")]
    NotInV311 { packet: &'static str },
    #[error("MQTT 3.1.1 does not allow a password without a username; set a username")]
    PasswordWithoutUsername,
    #[error("the {name} property has the invalid value {value}")]
    InvalidPropertyValue { name: &'static str, value: u64 },
    #[error("authentication data needs an authentication method")]
    AuthenticationDataWithoutMethod,
    #[error("a CONNACK with an error reason code must not set session present")]
    SessionPresentOnError,
}
