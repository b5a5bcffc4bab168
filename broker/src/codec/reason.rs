//! MQTT 5 reason codes, which packet may carry which, and the MQTT 3.1.1 return-code mappings.

use super::QoS;

macro_rules! reason_codes {
    ($($(#[$doc:meta])* $name:ident = $value:literal,)*) => {
        /// An MQTT 5 reason code. MQTT 3.1.1 CONNACK and SUBACK return codes map onto these.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        #[repr(u8)]
        pub enum ReasonCode {
            /// 0x00: Success, Normal disconnection, Granted QoS 0.
            #[default]
            Success = 0x00,
            $($(#[$doc])* $name = $value,)*
        }

        impl ReasonCode {
            /// The reason code with this value, if MQTT 5 defines one.
            pub fn from_u8(value: u8) -> Option<ReasonCode> {
                match value {
                    0x00 => Some(ReasonCode::Success),
                    $($value => Some(ReasonCode::$name),)*
                    _ => None,
                }
            }
        }
    };
}

reason_codes! {
    GrantedQoS1 = 0x01,
    GrantedQoS2 = 0x02,
    DisconnectWithWillMessage = 0x04,
    NoMatchingSubscribers = 0x10,
    NoSubscriptionExisted = 0x11,
    ContinueAuthentication = 0x18,
    ReAuthenticate = 0x19,
    UnspecifiedError = 0x80,
    MalformedPacket = 0x81,
    ProtocolError = 0x82,
    ImplementationSpecificError = 0x83,
    UnsupportedProtocolVersion = 0x84,
    ClientIdentifierNotValid = 0x85,
    BadUserNameOrPassword = 0x86,
    NotAuthorized = 0x87,
    ServerUnavailable = 0x88,
    ServerBusy = 0x89,
    Banned = 0x8A,
    ServerShuttingDown = 0x8B,
    BadAuthenticationMethod = 0x8C,
    KeepAliveTimeout = 0x8D,
    SessionTakenOver = 0x8E,
    TopicFilterInvalid = 0x8F,
    TopicNameInvalid = 0x90,
    PacketIdentifierInUse = 0x91,
    PacketIdentifierNotFound = 0x92,
    ReceiveMaximumExceeded = 0x93,
    TopicAliasInvalid = 0x94,
    PacketTooLarge = 0x95,
    MessageRateTooHigh = 0x96,
    QuotaExceeded = 0x97,
    AdministrativeAction = 0x98,
    PayloadFormatInvalid = 0x99,
    RetainNotSupported = 0x9A,
    QoSNotSupported = 0x9B,
    UseAnotherServer = 0x9C,
    ServerMoved = 0x9D,
    SharedSubscriptionsNotSupported = 0x9E,
    ConnectionRateExceeded = 0x9F,
    MaximumConnectTime = 0xA0,
    SubscriptionIdentifiersNotSupported = 0xA1,
    WildcardSubscriptionsNotSupported = 0xA2,
}

/// Which packet a reason code travels in; each allows a different set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReasonContext {
    ConnAck,
    PubAck,
    PubRec,
    PubRel,
    PubComp,
    SubAck,
    UnsubAck,
    Disconnect,
    Auth,
}

impl ReasonContext {
    pub(crate) fn packet(self) -> &'static str {
        match self {
            ReasonContext::ConnAck => "CONNACK",
            ReasonContext::PubAck => "PUBACK",
            ReasonContext::PubRec => "PUBREC",
            ReasonContext::PubRel => "PUBREL",
            ReasonContext::PubComp => "PUBCOMP",
            ReasonContext::SubAck => "SUBACK",
            ReasonContext::UnsubAck => "UNSUBACK",
            ReasonContext::Disconnect => "DISCONNECT",
            ReasonContext::Auth => "AUTH",
        }
    }
}

impl ReasonCode {
    /// `Success` under the name MQTT 5 uses in DISCONNECT.
    pub const NORMAL_DISCONNECTION: ReasonCode = ReasonCode::Success;
    /// `Success` under the name MQTT 5 uses in SUBACK.
    pub const GRANTED_QOS0: ReasonCode = ReasonCode::Success;

    /// The numeric value on the wire.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// True for 0x80 and above: the operation failed.
    pub fn is_error(self) -> bool {
        self.as_u8() >= 0x80
    }

    /// The SUBACK code granting `qos`.
    pub fn granted(qos: QoS) -> ReasonCode {
        match qos {
            QoS::AtMostOnce => ReasonCode::Success,
            QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
            QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
        }
    }

    /// Whether MQTT 5 allows this code in the given packet.
    pub(crate) fn allowed_in(self, ctx: ReasonContext) -> bool {
        use ReasonCode::*;
        match ctx {
            ReasonContext::ConnAck => matches!(
                self,
                Success
                    | UnspecifiedError
                    | MalformedPacket
                    | ProtocolError
                    | ImplementationSpecificError
                    | UnsupportedProtocolVersion
                    | ClientIdentifierNotValid
                    | BadUserNameOrPassword
                    | NotAuthorized
                    | ServerUnavailable
                    | ServerBusy
                    | Banned
                    | BadAuthenticationMethod
                    | TopicNameInvalid
                    | PacketTooLarge
                    | QuotaExceeded
                    | PayloadFormatInvalid
                    | RetainNotSupported
                    | QoSNotSupported
                    | UseAnotherServer
                    | ServerMoved
                    | ConnectionRateExceeded
            ),
            ReasonContext::PubAck | ReasonContext::PubRec => matches!(
                self,
                Success
                    | NoMatchingSubscribers
                    | UnspecifiedError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | TopicNameInvalid
                    | PacketIdentifierInUse
                    | QuotaExceeded
                    | PayloadFormatInvalid
            ),
            ReasonContext::PubRel | ReasonContext::PubComp => {
                matches!(self, Success | PacketIdentifierNotFound)
            }
            ReasonContext::SubAck => matches!(
                self,
                Success
                    | GrantedQoS1
                    | GrantedQoS2
                    | UnspecifiedError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | TopicFilterInvalid
                    | PacketIdentifierInUse
                    | QuotaExceeded
                    | SharedSubscriptionsNotSupported
                    | SubscriptionIdentifiersNotSupported
                    | WildcardSubscriptionsNotSupported
            ),
            ReasonContext::UnsubAck => matches!(
                self,
                Success
                    | NoSubscriptionExisted
                    | UnspecifiedError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | TopicFilterInvalid
                    | PacketIdentifierInUse
            ),
            ReasonContext::Disconnect => matches!(
                self,
                Success
                    | DisconnectWithWillMessage
                    | UnspecifiedError
                    | MalformedPacket
                    | ProtocolError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | ServerBusy
                    | ServerShuttingDown
                    | KeepAliveTimeout
                    | SessionTakenOver
                    | TopicFilterInvalid
                    | TopicNameInvalid
                    | ReceiveMaximumExceeded
                    | TopicAliasInvalid
                    | PacketTooLarge
                    | MessageRateTooHigh
                    | QuotaExceeded
                    | AdministrativeAction
                    | PayloadFormatInvalid
                    | RetainNotSupported
                    | QoSNotSupported
                    | UseAnotherServer
                    | ServerMoved
                    | SharedSubscriptionsNotSupported
                    | ConnectionRateExceeded
                    | MaximumConnectTime
                    | SubscriptionIdentifiersNotSupported
                    | WildcardSubscriptionsNotSupported
            ),
            ReasonContext::Auth => matches!(self, Success | ContinueAuthentication | ReAuthenticate),
        }
    }

    /// The MQTT 3.1.1 CONNACK return code for this reason. Error codes without an exact 3.1.1
    /// counterpart map to the closest one (0x03 Server unavailable when nothing fits better);
    /// non-error codes other than `Success` have none.
    pub fn to_v311_connack(self) -> Option<u8> {
        use ReasonCode::*;
        Some(match self {
            Success => 0x00,
            UnsupportedProtocolVersion => 0x01,
            ClientIdentifierNotValid => 0x02,
            BadUserNameOrPassword => 0x04,
            NotAuthorized | Banned | BadAuthenticationMethod => 0x05,
            code if code.is_error() => 0x03,
            _ => return None,
        })
    }

    /// The reason code for an MQTT 3.1.1 CONNACK return code (0 to 5).
    pub fn from_v311_connack(code: u8) -> Option<ReasonCode> {
        Some(match code {
            0x00 => ReasonCode::Success,
            0x01 => ReasonCode::UnsupportedProtocolVersion,
            0x02 => ReasonCode::ClientIdentifierNotValid,
            0x03 => ReasonCode::ServerUnavailable,
            0x04 => ReasonCode::BadUserNameOrPassword,
            0x05 => ReasonCode::NotAuthorized,
            _ => return None,
        })
    }

    /// The MQTT 3.1.1 SUBACK return code: granted QoS 0 to 2, or 0x80 for any failure.
    pub fn to_v311_suback(self) -> Option<u8> {
        match self {
            ReasonCode::Success | ReasonCode::GrantedQoS1 | ReasonCode::GrantedQoS2 => Some(self.as_u8()),
            code if code.is_error() => Some(0x80),
            _ => None,
        }
    }

    /// The reason code for an MQTT 3.1.1 SUBACK return code (0, 1, 2 or 0x80).
    pub fn from_v311_suback(code: u8) -> Option<ReasonCode> {
        match code {
            0x00 => Some(ReasonCode::Success),
            0x01 => Some(ReasonCode::GrantedQoS1),
            0x02 => Some(ReasonCode::GrantedQoS2),
            0x80 => Some(ReasonCode::UnspecifiedError),
            _ => None,
        }
    }
}

impl From<ReasonCode> for u8 {
    fn from(code: ReasonCode) -> u8 {
        code.as_u8()
    }
}

impl TryFrom<u8> for ReasonCode {
    type Error = u8;

    /// Fails with the value itself when MQTT 5 defines no such reason code.
    fn try_from(value: u8) -> Result<Self, u8> {
        ReasonCode::from_u8(value).ok_or(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_defined_code_round_trips_through_its_value() {
        let mut defined = 0;
        for value in 0..=u8::MAX {
            if let Some(code) = ReasonCode::from_u8(value) {
                assert_eq!(code.as_u8(), value);
                defined += 1;
            }
        }
        assert_eq!(defined, 43);
    }

    #[test]
    fn codes_from_0x80_are_errors() {
        assert!(!ReasonCode::Success.is_error());
        assert!(!ReasonCode::ReAuthenticate.is_error());
        assert!(ReasonCode::UnspecifiedError.is_error());
        assert!(ReasonCode::WildcardSubscriptionsNotSupported.is_error());
    }

    #[test]
    fn v311_connack_codes_round_trip() {
        for code in 0..=5u8 {
            let reason = ReasonCode::from_v311_connack(code).expect("defined");
            assert_eq!(reason.to_v311_connack(), Some(code));
        }
        assert_eq!(ReasonCode::from_v311_connack(6), None);
        assert_eq!(ReasonCode::Banned.to_v311_connack(), Some(0x05));
        assert_eq!(ReasonCode::QuotaExceeded.to_v311_connack(), Some(0x03));
        assert_eq!(ReasonCode::GrantedQoS1.to_v311_connack(), None);
    }

    #[test]
    fn v311_suback_failures_collapse_to_0x80() {
        assert_eq!(ReasonCode::NotAuthorized.to_v311_suback(), Some(0x80));
        assert_eq!(ReasonCode::GrantedQoS2.to_v311_suback(), Some(0x02));
        assert_eq!(ReasonCode::NoSubscriptionExisted.to_v311_suback(), None);
        assert_eq!(ReasonCode::from_v311_suback(0x81), None);
    }

    #[test]
    fn reason_sets_follow_the_specification() {
        assert!(ReasonCode::PacketIdentifierNotFound.allowed_in(ReasonContext::PubRel));
        assert!(!ReasonCode::NotAuthorized.allowed_in(ReasonContext::PubComp));
        assert!(ReasonCode::ContinueAuthentication.allowed_in(ReasonContext::Auth));
        assert!(!ReasonCode::ContinueAuthentication.allowed_in(ReasonContext::Disconnect));
        assert!(ReasonCode::DisconnectWithWillMessage.allowed_in(ReasonContext::Disconnect));
        assert!(!ReasonCode::GrantedQoS1.allowed_in(ReasonContext::ConnAck));
    }
}
