//! Acknowledgements: PUBACK, PUBREC, PUBREL, PUBCOMP (all [`PubAck`]), SUBACK and UNSUBACK.

use super::error::{DecodeError, EncodeError};
use super::properties::{self as props, read_properties, Property, PropertyContext, PropertyList};
use super::reason::{ReasonCode, ReasonContext};
use super::wire::{put_packet_id, read_packet_id, Reader, Sink};
use super::{ProtocolVersion, UserProperties};

/// PUBACK, PUBREC, PUBREL or PUBCOMP (the [`super::Packet`] variant says which). Under
/// MQTT 3.1.1 only the packet identifier travels.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PubAck {
    pub packet_id: u16,
    pub reason: ReasonCode,
    pub properties: AckProperties,
}

/// SUBACK: one reason code per topic filter of the SUBSCRIBE, in order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SubAck {
    pub packet_id: u16,
    /// Never empty. Under MQTT 3.1.1 every failure is sent as 0x80.
    pub reasons: Vec<ReasonCode>,
    pub properties: AckProperties,
}

/// UNSUBACK: one reason code per topic filter of the UNSUBSCRIBE (MQTT 5).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UnsubAck {
    pub packet_id: u16,
    /// Never empty under MQTT 5; always empty under MQTT 3.1.1.
    pub reasons: Vec<ReasonCode>,
    pub properties: AckProperties,
}

/// Properties of the acknowledgements (MQTT 5).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AckProperties {
    pub reason_string: Option<String>,
    pub user_properties: UserProperties,
}

impl AckProperties {
    fn decode(r: &mut Reader, ctx: PropertyContext) -> Result<Self, DecodeError> {
        let mut p = AckProperties::default();
        read_properties(r, ctx, |prop| match prop {
            Property::ReasonString(v) => p.reason_string = Some(v),
            Property::UserProperty(k, v) => p.user_properties.push((k, v)),
            _ => {}
        })?;
        Ok(p)
    }
}

impl PropertyList for AckProperties {
    fn write_properties<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
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

fn check_reason(reason: ReasonCode, ctx: ReasonContext) -> Result<u8, EncodeError> {
    if reason.allowed_in(ctx) {
        Ok(reason.as_u8())
    } else {
        Err(EncodeError::ReasonNotAllowed { packet: ctx.packet(), reason })
    }
}

pub(crate) fn decode_pub(r: &mut Reader, version: ProtocolVersion, ctx: ReasonContext) -> Result<PubAck, DecodeError> {
    let packet_id = read_packet_id(r, ctx.packet())?;
    let mut ack = PubAck { packet_id, ..PubAck::default() };
    // MQTT 5 lets the reason code and then the property length be left out.
    if version == ProtocolVersion::V5 && !r.is_empty() {
        ack.reason = read_reason(r, ctx)?;
        if !r.is_empty() {
            ack.properties = AckProperties::decode(r, PropertyContext::PubAck(ctx.packet()))?;
        }
    }
    Ok(ack)
}

impl PubAck {
    pub(crate) fn write<S: Sink>(
        &self,
        version: ProtocolVersion,
        ctx: ReasonContext,
        s: &mut S,
    ) -> Result<(), EncodeError> {
        put_packet_id(s, self.packet_id, ctx.packet())?;
        if version == ProtocolVersion::V311 {
            return Ok(());
        }
        let code = check_reason(self.reason, ctx)?;
        let has_properties = props::properties_len(&self.properties)? > 0;
        if code != 0 || has_properties {
            s.put_u8(code);
        }
        if has_properties {
            props::encode_properties(s, &self.properties)?;
        }
        Ok(())
    }
}

pub(crate) fn decode_suback(r: &mut Reader, version: ProtocolVersion) -> Result<SubAck, DecodeError> {
    let packet_id = read_packet_id(r, "SUBACK")?;
    let mut properties = AckProperties::default();
    if version == ProtocolVersion::V5 {
        properties = AckProperties::decode(r, PropertyContext::SubAck)?;
    }
    let mut reasons = Vec::new();
    while !r.is_empty() {
        let reason = match version {
            ProtocolVersion::V5 => read_reason(r, ReasonContext::SubAck)?,
            ProtocolVersion::V311 => {
                let code = r.u8("return code")?;
                ReasonCode::from_v311_suback(code).ok_or(DecodeError::InvalidReasonCode { packet: "SUBACK", code })?
            }
        };
        reasons.push(reason);
    }
    if reasons.is_empty() {
        return Err(DecodeError::EmptyPayload { packet: "SUBACK", items: "reason codes" });
    }
    Ok(SubAck { packet_id, reasons, properties })
}

impl SubAck {
    pub(crate) fn write<S: Sink>(&self, version: ProtocolVersion, s: &mut S) -> Result<(), EncodeError> {
        if self.reasons.is_empty() {
            return Err(EncodeError::EmptyPayload { packet: "SUBACK", item: "reason code" });
        }
        put_packet_id(s, self.packet_id, "SUBACK")?;
        if version == ProtocolVersion::V5 {
            props::encode_properties(s, &self.properties)?;
        }
        for &reason in &self.reasons {
            let code = match version {
                ProtocolVersion::V5 => check_reason(reason, ReasonContext::SubAck)?,
                ProtocolVersion::V311 => {
                    reason.to_v311_suback().ok_or(EncodeError::ReasonNotInV311 { packet: "SUBACK", reason })?
                }
            };
            s.put_u8(code);
        }
        Ok(())
    }
}

pub(crate) fn decode_unsuback(r: &mut Reader, version: ProtocolVersion) -> Result<UnsubAck, DecodeError> {
    let packet_id = read_packet_id(r, "UNSUBACK")?;
    let mut ack = UnsubAck { packet_id, ..UnsubAck::default() };
    if version == ProtocolVersion::V311 {
        return Ok(ack);
    }
    ack.properties = AckProperties::decode(r, PropertyContext::UnsubAck)?;
    while !r.is_empty() {
        ack.reasons.push(read_reason(r, ReasonContext::UnsubAck)?);
    }
    if ack.reasons.is_empty() {
        return Err(DecodeError::EmptyPayload { packet: "UNSUBACK", items: "reason codes" });
    }
    Ok(ack)
}

impl UnsubAck {
    pub(crate) fn write<S: Sink>(&self, version: ProtocolVersion, s: &mut S) -> Result<(), EncodeError> {
        put_packet_id(s, self.packet_id, "UNSUBACK")?;
        if version == ProtocolVersion::V311 {
            return Ok(());
        }
        if self.reasons.is_empty() {
            return Err(EncodeError::EmptyPayload { packet: "UNSUBACK", item: "reason code" });
        }
        props::encode_properties(s, &self.properties)?;
        for &reason in &self.reasons {
            s.put_u8(check_reason(reason, ReasonContext::UnsubAck)?);
        }
        Ok(())
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

    fn version(v5: bool) -> ProtocolVersion {
        if v5 {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V311
        }
    }

    proptest! {
        #[test]
        fn puback_family_round_trips_under_both_versions(
            ack in ts::pub_ack(ReasonContext::PubAck),
            rec in ts::pub_ack(ReasonContext::PubRec),
            rel in ts::pub_ack(ReasonContext::PubRel),
            comp in ts::pub_ack(ReasonContext::PubComp),
            v5 in any::<bool>(),
        ) {
            for packet in [Packet::PubAck(ack), Packet::PubRec(rec), Packet::PubRel(rel), Packet::PubComp(comp)] {
                ts::assert_round_trip(&packet, version(v5))?;
            }
        }

        #[test]
        fn suback_round_trips_under_both_versions(ack in ts::suback(), v5 in any::<bool>()) {
            ts::assert_round_trip(&Packet::SubAck(ack), version(v5))?;
        }

        #[test]
        fn unsuback_round_trips_under_both_versions(ack in ts::unsuback(), v5 in any::<bool>()) {
            ts::assert_round_trip(&Packet::UnsubAck(ack), version(v5))?;
        }
    }

    #[test]
    fn every_prefix_of_an_ack_needs_more_bytes() {
        for bytes in
            [&[0x40u8, 2, 0, 1][..], &[0x62, 3, 0, 1, 0x92], &[0x90, 4, 0, 1, 0, 0x01], &[0xB0, 4, 0, 1, 0, 0x11]]
        {
            assert!(decode_v(bytes, V5).is_ok(), "{bytes:?}");
            ts::assert_prefixes_incomplete(bytes, V5);
        }
    }

    #[test]
    fn success_without_properties_is_encoded_in_two_bytes() {
        let ack = PubAck { packet_id: 5, ..PubAck::default() };
        assert_eq!(ts::encode_vec(&Packet::PubAck(ack), ProtocolVersion::V5), vec![0x40, 2, 0, 5]);
        let rel = PubAck { packet_id: 5, reason: ReasonCode::PacketIdentifierNotFound, ..PubAck::default() };
        assert_eq!(ts::encode_vec(&Packet::PubRel(rel.clone()), ProtocolVersion::V5), vec![0x62, 3, 0, 5, 0x92]);
        assert_eq!(ts::encode_vec(&Packet::PubRel(rel), ProtocolVersion::V311), vec![0x62, 2, 0, 5]);
    }

    #[test]
    fn pubrel_with_wrong_flags_is_malformed() {
        let err = decode(&mut BytesMut::from(&[0x60u8, 2, 0, 1][..]), V5, u32::MAX).unwrap_err();
        assert_eq!(err, DecodeError::InvalidHeaderFlags { packet: "PUBREL", flags: 0, expected: 2 });
        assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
        let err = decode(&mut BytesMut::from(&[0x41u8, 2, 0, 1][..]), V5, u32::MAX).unwrap_err();
        assert_eq!(err, DecodeError::InvalidHeaderFlags { packet: "PUBACK", flags: 1, expected: 0 });
    }

    #[test]
    fn ack_packet_id_0_is_a_protocol_error() {
        let err = decode_v(&[0x50, 2, 0, 0], V311).unwrap_err();
        assert_eq!(err, DecodeError::ZeroPacketId { packet: "PUBREC" });
        assert_eq!(err.reason_code(), ReasonCode::ProtocolError);
        let mut buf = BytesMut::new();
        assert_eq!(
            encode(&Packet::PubAck(PubAck::default()), ProtocolVersion::V5, &mut buf),
            Err(EncodeError::MissingPacketId { packet: "PUBACK" })
        );
    }

    #[test]
    fn reason_code_not_allowed_in_the_packet_is_malformed() {
        // 0x87 Not authorized exists, but not in PUBCOMP.
        let err = decode_v(&[0x70, 3, 0, 1, 0x87], V5).unwrap_err();
        assert_eq!(err, DecodeError::InvalidReasonCode { packet: "PUBCOMP", code: 0x87 });
        assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
        let err = decode_v(&[0x90, 4, 0, 1, 0, 0x03], V5).unwrap_err();
        assert_eq!(err, DecodeError::InvalidReasonCode { packet: "SUBACK", code: 0x03 });
        let bad = PubAck { packet_id: 1, reason: ReasonCode::NotAuthorized, ..PubAck::default() };
        let mut buf = BytesMut::new();
        assert!(matches!(
            encode(&Packet::PubComp(bad), ProtocolVersion::V5, &mut buf),
            Err(EncodeError::ReasonNotAllowed { packet: "PUBCOMP", .. })
        ));
    }

    #[test]
    fn v311_suback_accepts_only_granted_qos_and_failure() {
        let ok = decode_v(&[0x90, 5, 0, 1, 0x00, 0x02, 0x80], V311);
        let reasons = vec![ReasonCode::Success, ReasonCode::GrantedQoS2, ReasonCode::UnspecifiedError];
        assert_eq!(ok, Ok(Packet::SubAck(SubAck { packet_id: 1, reasons, ..SubAck::default() })));
        let err = decode_v(&[0x90, 3, 0, 1, 0x87], V311).unwrap_err();
        assert_eq!(err, DecodeError::InvalidReasonCode { packet: "SUBACK", code: 0x87 });
    }

    #[test]
    fn suback_and_v5_unsuback_need_reason_codes() {
        let err = decode_v(&[0x90, 2, 0, 1], V311).unwrap_err();
        assert_eq!(err, DecodeError::EmptyPayload { packet: "SUBACK", items: "reason codes" });
        let err = decode_v(&[0xB0, 3, 0, 1, 0], V5).unwrap_err();
        assert_eq!(err.reason_code(), ReasonCode::ProtocolError);
        assert_eq!(decode_v(&[0xB0, 2, 0, 1], V311).map(|_| ()), Ok(()));
    }

    #[test]
    fn trailing_bytes_after_a_v311_ack_are_malformed() {
        let err = decode_v(&[0x40, 3, 0, 1, 0], V311).unwrap_err();
        assert_eq!(err, DecodeError::TrailingBytes { packet: "PUBACK", count: 1 });
        let err = decode_v(&[0xB0, 3, 0, 1, 0], V311).unwrap_err();
        assert_eq!(err, DecodeError::TrailingBytes { packet: "UNSUBACK", count: 1 });
    }

    #[test]
    fn ack_properties_are_read_after_the_reason() {
        let bytes = [0x40, 8, 0, 1, 0x10, 4, 0x1F, 0, 1, b'x'];
        let expected = PubAck {
            packet_id: 1,
            reason: ReasonCode::NoMatchingSubscribers,
            properties: AckProperties { reason_string: Some("x".into()), user_properties: vec![] },
        };
        assert_eq!(decode_v(&bytes, V5), Ok(Packet::PubAck(expected)));
        // Topic Alias is not an acknowledgement property.
        let err = decode_v(&[0x40, 7, 0, 1, 0, 3, 0x23, 0, 1], V5).unwrap_err();
        assert_eq!(err, DecodeError::PropertyNotAllowed { name: "topic alias", packet: "PUBACK" });
    }
}
