//! DISCONNECT and AUTH, and their properties.

use bytes::Bytes;

use super::error::{DecodeError, EncodeError};
use super::properties::{self as props, read_properties, Property, PropertyContext, PropertyList};
use super::reason::{ReasonCode, ReasonContext};
use super::wire::{Reader, Sink};
use super::{ProtocolVersion, UserProperties};

/// DISCONNECT. Under MQTT 3.1.1 it carries nothing; the reason and properties are dropped.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Disconnect {
    /// `Success` is "Normal disconnection".
    pub reason: ReasonCode,
    pub properties: DisconnectProperties,
}

/// DISCONNECT properties (MQTT 5).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DisconnectProperties {
    pub session_expiry_interval: Option<u32>,
    pub reason_string: Option<String>,
    pub user_properties: UserProperties,
    pub server_reference: Option<String>,
}

/// AUTH: one step of an extended authentication exchange (MQTT 5 only).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Auth {
    /// `Success`, `ContinueAuthentication` or `ReAuthenticate`.
    pub reason: ReasonCode,
    pub properties: AuthProperties,
}

/// AUTH properties.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AuthProperties {
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub reason_string: Option<String>,
    pub user_properties: UserProperties,
}

impl DisconnectProperties {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = DisconnectProperties::default();
        read_properties(r, PropertyContext::Disconnect, |prop| match prop {
            Property::SessionExpiryInterval(v) => p.session_expiry_interval = Some(v),
            Property::ReasonString(v) => p.reason_string = Some(v),
            Property::UserProperty(k, v) => p.user_properties.push((k, v)),
            Property::ServerReference(v) => p.server_reference = Some(v),
            _ => {}
        })?;
        Ok(p)
    }
}

impl PropertyList for DisconnectProperties {
    fn write_properties<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        props::put_u32(s, props::SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        props::put_str(s, props::REASON_STRING, &self.reason_string, "reason string")?;
        props::put_user_properties(s, &self.user_properties)?;
        props::put_str(s, props::SERVER_REFERENCE, &self.server_reference, "server reference")
    }
}

impl AuthProperties {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = AuthProperties::default();
        read_properties(r, PropertyContext::Auth, |prop| match prop {
            Property::AuthenticationMethod(v) => p.authentication_method = Some(v),
            Property::AuthenticationData(v) => p.authentication_data = Some(v),
            Property::ReasonString(v) => p.reason_string = Some(v),
            Property::UserProperty(k, v) => p.user_properties.push((k, v)),
            _ => {}
        })?;
        props::check_auth_decoded(&p.authentication_method, &p.authentication_data)?;
        Ok(p)
    }
}

impl PropertyList for AuthProperties {
    fn write_properties<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        props::check_auth_encoded(&self.authentication_method, &self.authentication_data)?;
        props::put_str(s, props::AUTHENTICATION_METHOD, &self.authentication_method, "authentication method")?;
        props::put_bin(s, props::AUTHENTICATION_DATA, &self.authentication_data, "authentication data")?;
        props::put_str(s, props::REASON_STRING, &self.reason_string, "reason string")?;
        props::put_user_properties(s, &self.user_properties)
    }
}

fn read_reason(r: &mut Reader, ctx: ReasonContext) -> Result<ReasonCode, DecodeError> {
    let code = r.u8("reason code")?;
    ReasonCode::from_u8(code)
        .filter(|c| c.allowed_in(ctx))
        .ok_or(DecodeError::InvalidReasonCode { packet: ctx.packet(), code })
}

fn check_reason(reason: ReasonCode, ctx: ReasonContext) -> Result<(), EncodeError> {
    if reason.allowed_in(ctx) {
        Ok(())
    } else {
        Err(EncodeError::ReasonNotAllowed { packet: ctx.packet(), reason })
    }
}

pub(crate) fn decode_disconnect(r: &mut Reader, version: ProtocolVersion) -> Result<Disconnect, DecodeError> {
    let mut disconnect = Disconnect::default();
    // MQTT 5 lets the reason code and then the property length be left out.
    if version == ProtocolVersion::V5 && !r.is_empty() {
        disconnect.reason = read_reason(r, ReasonContext::Disconnect)?;
        if !r.is_empty() {
            disconnect.properties = DisconnectProperties::decode(r)?;
        }
    }
    Ok(disconnect)
}

impl Disconnect {
    pub(crate) fn write<S: Sink>(&self, version: ProtocolVersion, s: &mut S) -> Result<(), EncodeError> {
        if version == ProtocolVersion::V311 {
            return Ok(());
        }
        check_reason(self.reason, ReasonContext::Disconnect)?;
        let has_properties = props::properties_len(&self.properties)? > 0;
        if self.reason != ReasonCode::Success || has_properties {
            s.put_u8(self.reason.as_u8());
        }
        if has_properties {
            props::encode_properties(s, &self.properties)?;
        }
        Ok(())
    }
}

pub(crate) fn decode_auth(r: &mut Reader) -> Result<Auth, DecodeError> {
    let mut auth = Auth::default();
    if !r.is_empty() {
        auth.reason = read_reason(r, ReasonContext::Auth)?;
        if !r.is_empty() {
            auth.properties = AuthProperties::decode(r)?;
        }
    }
    Ok(auth)
}

impl Auth {
    pub(crate) fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        check_reason(self.reason, ReasonContext::Auth)?;
        if self.reason == ReasonCode::Success && props::properties_len(&self.properties)? == 0 {
            return Ok(());
        }
        s.put_u8(self.reason.as_u8());
        props::encode_properties(s, &self.properties)
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use proptest::prelude::*;

    use super::super::test_support::{self as ts, decode_v};
    use super::super::{decode, encode, Packet};
    use super::*;

    const V5: Option<ProtocolVersion> = Some(ProtocolVersion::V5);
    const V311: Option<ProtocolVersion> = Some(ProtocolVersion::V311);

    proptest! {
        #[test]
        fn disconnect_round_trips_under_both_versions(d in ts::disconnect(), v5 in any::<bool>()) {
            let version = if v5 { ProtocolVersion::V5 } else { ProtocolVersion::V311 };
            ts::assert_round_trip(&Packet::Disconnect(d), version)?;
        }

        #[test]
        fn auth_round_trips_under_mqtt5(auth in ts::auth()) {
            ts::assert_round_trip(&Packet::Auth(auth), ProtocolVersion::V5)?;
        }
    }

    #[test]
    fn every_prefix_of_disconnect_and_auth_needs_more_bytes() {
        let disconnect = Disconnect {
            reason: ReasonCode::SessionTakenOver,
            properties: DisconnectProperties { reason_string: Some("bye".into()), ..Default::default() },
        };
        let bytes = ts::encode_vec(&Packet::Disconnect(disconnect), ProtocolVersion::V5);
        ts::assert_prefixes_incomplete(&bytes, V5);
        let auth = Auth {
            reason: ReasonCode::ContinueAuthentication,
            properties: AuthProperties { authentication_method: Some("SCRAM".into()), ..Default::default() },
        };
        let bytes = ts::encode_vec(&Packet::Auth(auth), ProtocolVersion::V5);
        ts::assert_prefixes_incomplete(&bytes, V5);
    }

    #[test]
    fn short_forms_mean_success_without_properties() {
        assert_eq!(decode_v(&[0xE0, 0], V5), Ok(Packet::Disconnect(Disconnect::default())));
        let keep_alive = Disconnect { reason: ReasonCode::KeepAliveTimeout, ..Default::default() };
        assert_eq!(decode_v(&[0xE0, 1, 0x8D], V5), Ok(Packet::Disconnect(keep_alive.clone())));
        assert_eq!(ts::encode_vec(&Packet::Disconnect(keep_alive), ProtocolVersion::V5), vec![0xE0, 1, 0x8D]);
        assert_eq!(decode_v(&[0xF0, 0], V5), Ok(Packet::Auth(Auth::default())));
    }

    #[test]
    fn v311_disconnect_is_empty() {
        let d = Disconnect { reason: ReasonCode::ServerShuttingDown, ..Default::default() };
        assert_eq!(ts::encode_vec(&Packet::Disconnect(d), ProtocolVersion::V311), vec![0xE0, 0]);
        let err = decode_v(&[0xE0, 1, 0x00], V311).unwrap_err();
        assert_eq!(err, DecodeError::TrailingBytes { packet: "DISCONNECT", count: 1 });
        assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
    }

    #[test]
    fn auth_does_not_exist_in_v311() {
        let err = decode(&mut BytesMut::from(&[0xF0u8, 0][..]), V311, u32::MAX).unwrap_err();
        assert_eq!(err, DecodeError::ReservedPacketType(15));
        assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
        let mut buf = BytesMut::new();
        assert_eq!(
            encode(&Packet::Auth(Auth::default()), ProtocolVersion::V311, &mut buf),
            Err(EncodeError::NotInV311 { packet: "AUTH" })
        );
    }

    #[test]
    fn disconnect_and_auth_reason_codes_are_checked() {
        let err = decode_v(&[0xE0, 1, 0x18], V5).unwrap_err();
        assert_eq!(err, DecodeError::InvalidReasonCode { packet: "DISCONNECT", code: 0x18 });
        let err = decode_v(&[0xF0, 2, 0x8E, 0], V5).unwrap_err();
        assert_eq!(err, DecodeError::InvalidReasonCode { packet: "AUTH", code: 0x8E });
        assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
    }

    #[test]
    fn duplicate_reason_string_in_disconnect_is_a_protocol_error() {
        let bytes = [0xE0, 10, 0x00, 8, 0x1F, 0, 1, b'a', 0x1F, 0, 1, b'b'];
        let err = decode_v(&bytes, V5).unwrap_err();
        assert_eq!(err, DecodeError::DuplicateProperty { name: "reason string" });
        assert_eq!(err.reason_code(), ReasonCode::ProtocolError);
    }
}
