//! Test helpers shared by the codec's tests: proptest strategies that generate valid packets,
//! round-trip and partial-input assertions, and the MQTT 3.1.1 normalisation of a packet.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::reason::ReasonContext;
use super::*;

/// Encodes a packet that is known to be valid.
pub(crate) fn encode_vec(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut buf = BytesMut::new();
    if let Err(err) = encode(packet, version, &mut buf) {
        panic!("{packet:?} should encode under {version:?}: {err}");
    }
    buf.to_vec()
}

/// Decodes every packet in `bytes`; the bytes must hold whole packets only.
pub(crate) fn decode_all(bytes: &[u8], version: Option<ProtocolVersion>) -> Result<Vec<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let mut version = version;
    let mut out = Vec::new();
    while let Some(packet) = decode(&mut buf, version, u32::MAX)? {
        if let Packet::Connect(c) = &packet {
            version = Some(c.protocol);
        }
        out.push(packet);
    }
    assert!(buf.is_empty(), "{} bytes left undecoded", buf.len());
    Ok(out)
}

/// Decodes exactly one packet that fills `bytes`.
pub(crate) fn decode_v(bytes: &[u8], version: Option<ProtocolVersion>) -> Result<Packet, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let packet = decode(&mut buf, version, u32::MAX)?;
    assert!(buf.is_empty(), "{} bytes left undecoded", buf.len());
    Ok(packet.expect("a whole packet"))
}

/// Every strict prefix of `bytes` must decode to `Ok(None)` and leave the buffer alone.
pub(crate) fn assert_prefixes_incomplete(bytes: &[u8], version: Option<ProtocolVersion>) {
    for len in 0..bytes.len() {
        let mut buf = BytesMut::from(bytes.get(..len).expect("prefix"));
        let result = decode(&mut buf, version, u32::MAX);
        assert_eq!(result, Ok(None), "prefix of {len} bytes");
        assert_eq!(buf.len(), len, "prefix of {len} bytes was consumed");
    }
}

/// What a packet looks like after travelling through `version`: MQTT 3.1.1 drops
/// properties, most reason codes and the MQTT 5 subscription options.
pub(crate) fn normalise(packet: &Packet, version: ProtocolVersion) -> Packet {
    if version == ProtocolVersion::V5 {
        return packet.clone();
    }
    let mut p = packet.clone();
    match &mut p {
        Packet::Connect(c) => {
            c.properties = ConnectProperties::default();
            if let Some(will) = &mut c.will {
                will.properties = WillProperties::default();
            }
        }
        Packet::ConnAck(c) => {
            c.properties = ConnAckProperties::default();
            c.reason = c.reason.to_v311_connack().and_then(ReasonCode::from_v311_connack).expect("representable");
        }
        Packet::Publish(p) => p.properties = PublishProperties::default(),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            a.reason = ReasonCode::Success;
            a.properties = AckProperties::default();
        }
        Packet::Subscribe(s) => {
            s.properties = SubscribeProperties::default();
            for f in &mut s.filters {
                f.options = SubscriptionOptions { qos: f.options.qos, ..Default::default() };
            }
        }
        Packet::SubAck(s) => {
            s.properties = AckProperties::default();
            for r in &mut s.reasons {
                *r = r.to_v311_suback().and_then(ReasonCode::from_v311_suback).expect("representable");
            }
        }
        Packet::Unsubscribe(u) => u.properties = UnsubscribeProperties::default(),
        Packet::UnsubAck(u) => {
            u.reasons.clear();
            u.properties = AckProperties::default();
        }
        Packet::Disconnect(d) => *d = Disconnect::default(),
        Packet::PingReq | Packet::PingResp | Packet::Auth(_) => {}
    }
    p
}

/// Encodes under `version`, checks `encoded_len`, decodes, compares with the normalised
/// packet, and checks that every prefix of the encoding is incomplete.
pub(crate) fn assert_round_trip(packet: &Packet, version: ProtocolVersion) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::new();
    encode(packet, version, &mut buf).map_err(|e| TestCaseError::fail(format!("encode: {e}")))?;
    prop_assert_eq!(encoded_len(packet, version), Ok(buf.len()));
    let bytes = buf.to_vec();
    let context = match packet {
        Packet::Connect(_) => None,
        _ => Some(version),
    };
    let mut decoded_buf = buf;
    let decoded = decode(&mut decoded_buf, context, u32::MAX);
    prop_assert_eq!(decoded, Ok(Some(normalise(packet, version))));
    prop_assert!(decoded_buf.is_empty());
    assert_prefixes_incomplete(&bytes, context);
    Ok(())
}

pub(crate) fn string() -> impl Strategy<Value = String> {
    "[^\\x00]{0,10}"
}

pub(crate) fn opt_string() -> impl Strategy<Value = Option<String>> {
    prop::option::of(string())
}

pub(crate) fn bytes() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

pub(crate) fn opt_bytes() -> impl Strategy<Value = Option<Bytes>> {
    prop::option::of(bytes())
}

pub(crate) fn user_properties() -> impl Strategy<Value = UserProperties> {
    prop::collection::vec((string(), string()), 0..3)
}

pub(crate) fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce), Just(QoS::ExactlyOnce)]
}

pub(crate) fn packet_id() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

pub(crate) fn topic_name() -> impl Strategy<Value = String> {
    "[^\\x00+#]{1,16}"
}

pub(crate) fn opt_topic_name() -> impl Strategy<Value = Option<String>> {
    prop::option::of(topic_name())
}

/// A valid filter, sometimes with wildcards, sometimes shared.
pub(crate) fn topic_filter() -> impl Strategy<Value = String> {
    let level = prop_oneof![Just("+".to_owned()), "[^\\x00+#/]{0,6}"];
    (prop::option::of("[^\\x00+#/]{1,5}"), prop::collection::vec(level, 1..4), any::<bool>()).prop_map(
        |(group, levels, hash)| {
            let mut filter = levels.join("/");
            if hash {
                filter.push_str("/#");
            }
            if filter.is_empty() {
                filter.push('a');
            }
            match group {
                Some(group) => format!("$share/{group}/{filter}"),
                None => filter,
            }
        },
    )
}

pub(crate) fn reason(ctx: ReasonContext) -> impl Strategy<Value = ReasonCode> {
    let allowed: Vec<ReasonCode> =
        (0..=u8::MAX).filter_map(ReasonCode::from_u8).filter(|c| c.allowed_in(ctx)).collect();
    prop::sample::select(allowed)
}

/// An authentication method with optional data, or neither.
fn auth_pair() -> impl Strategy<Value = (Option<String>, Option<Bytes>)> {
    prop_oneof![Just((None, None)), (string(), opt_bytes()).prop_map(|(m, d)| (Some(m), d))]
}

pub(crate) fn will() -> impl Strategy<Value = Will> {
    let props = (
        prop::option::of(any::<u32>()),
        prop::option::of(any::<bool>()),
        prop::option::of(any::<u32>()),
        opt_string(),
        opt_topic_name(),
        opt_bytes(),
        user_properties(),
    )
        .prop_map(|(delay, pfi, expiry, ct, rt, cd, up)| WillProperties {
            will_delay_interval: delay,
            payload_format_indicator: pfi,
            message_expiry_interval: expiry,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            user_properties: up,
        });
    (topic_name(), bytes(), qos(), any::<bool>(), props).prop_map(|(topic, payload, qos, retain, properties)| Will {
        topic,
        payload,
        qos,
        retain,
        properties,
    })
}

pub(crate) fn connect() -> impl Strategy<Value = Connect> {
    let props = (
        prop::option::of(any::<u32>()),
        prop::option::of(1..=u16::MAX),
        prop::option::of(1..=u32::MAX),
        prop::option::of(any::<u16>()),
        prop::option::of(any::<bool>()),
        prop::option::of(any::<bool>()),
        user_properties(),
        auth_pair(),
    )
        .prop_map(|(sei, rm, mps, tam, rri, rpi, up, (am, ad))| ConnectProperties {
            session_expiry_interval: sei,
            receive_maximum: rm,
            maximum_packet_size: mps,
            topic_alias_maximum: tam,
            request_response_information: rri,
            request_problem_information: rpi,
            user_properties: up,
            authentication_method: am,
            authentication_data: ad,
        });
    (any::<bool>(), any::<u16>(), string(), prop::option::of(will()), opt_string(), opt_bytes(), props).prop_map(
        |(clean_start, keep_alive, client_id, will, username, password, properties)| Connect {
            protocol: ProtocolVersion::V5,
            clean_start,
            keep_alive,
            client_id,
            will,
            username,
            password,
            properties,
        },
    )
}

pub(crate) fn connack() -> impl Strategy<Value = ConnAck> {
    let first = (
        prop::option::of(any::<u32>()),
        prop::option::of(1..=u16::MAX),
        prop::option::of(prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce)]),
        prop::option::of(any::<bool>()),
        prop::option::of(1..=u32::MAX),
        opt_string(),
        prop::option::of(any::<u16>()),
        opt_string(),
        user_properties(),
    );
    let second = (
        prop::option::of(any::<bool>()),
        prop::option::of(any::<bool>()),
        prop::option::of(any::<bool>()),
        prop::option::of(any::<u16>()),
        opt_string(),
        opt_string(),
        auth_pair(),
    );
    let props = (first, second).prop_map(
        |((sei, rm, mq, ra, mps, aci, tam, rs, up), (wsa, sia, ssa, ska, ri, sr, (am, ad)))| ConnAckProperties {
            session_expiry_interval: sei,
            receive_maximum: rm,
            maximum_qos: mq,
            retain_available: ra,
            maximum_packet_size: mps,
            assigned_client_identifier: aci,
            topic_alias_maximum: tam,
            reason_string: rs,
            user_properties: up,
            wildcard_subscription_available: wsa,
            subscription_identifiers_available: sia,
            shared_subscription_available: ssa,
            server_keep_alive: ska,
            response_information: ri,
            server_reference: sr,
            authentication_method: am,
            authentication_data: ad,
        },
    );
    (any::<bool>(), reason(ReasonContext::ConnAck), props).prop_map(|(sp, reason, properties)| ConnAck {
        session_present: sp && !reason.is_error(),
        reason,
        properties,
    })
}

/// A PUBLISH; under MQTT 5 its topic is sometimes empty with a topic alias.
pub(crate) fn publish() -> impl Strategy<Value = Publish> {
    let props = (
        prop::option::of(any::<bool>()),
        prop::option::of(any::<u32>()),
        prop::option::of(1..=u16::MAX),
        opt_topic_name(),
        opt_bytes(),
        user_properties(),
        prop::collection::vec(1..=wire::MAX_VARINT, 0..3),
        opt_string(),
    )
        .prop_map(|(pfi, mei, ta, rt, cd, up, si, ct)| PublishProperties {
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            topic_alias: ta,
            response_topic: rt,
            correlation_data: cd,
            user_properties: up,
            subscription_identifiers: si,
            content_type: ct,
        });
    (qos(), any::<bool>(), any::<bool>(), topic_name(), any::<bool>(), packet_id(), bytes(), props).prop_map(
        |(qos, dup, retain, topic, empty, id, payload, properties)| {
            let topic = if empty && properties.topic_alias.is_some() { String::new() } else { topic };
            let at_most_once = qos == QoS::AtMostOnce;
            Publish {
                dup: dup && !at_most_once,
                qos,
                retain,
                topic,
                packet_id: if at_most_once { None } else { Some(id) },
                payload,
                properties,
            }
        },
    )
}

pub(crate) fn ack_properties() -> impl Strategy<Value = AckProperties> {
    (opt_string(), user_properties())
        .prop_map(|(reason_string, user_properties)| AckProperties { reason_string, user_properties })
}

pub(crate) fn pub_ack(ctx: ReasonContext) -> impl Strategy<Value = PubAck> {
    (packet_id(), reason(ctx), ack_properties()).prop_map(|(packet_id, reason, properties)| PubAck {
        packet_id,
        reason,
        properties,
    })
}

pub(crate) fn subscribe() -> impl Strategy<Value = Subscribe> {
    let retain_handling = prop_oneof![
        Just(RetainHandling::SendAtSubscribe),
        Just(RetainHandling::SendIfNew),
        Just(RetainHandling::DoNotSend),
    ];
    let request = (topic_filter(), qos(), any::<bool>(), any::<bool>(), retain_handling).prop_map(
        |(filter, qos, no_local, rap, rh)| SubscriptionRequest {
            options: SubscriptionOptions {
                qos,
                no_local: no_local && parse_shared(&filter).is_none(),
                retain_as_published: rap,
                retain_handling: rh,
            },
            filter,
        },
    );
    let props = (prop::option::of(1..=wire::MAX_VARINT), user_properties()).prop_map(
        |(subscription_identifier, user_properties)| SubscribeProperties { subscription_identifier, user_properties },
    );
    (packet_id(), prop::collection::vec(request, 1..4), props).prop_map(|(packet_id, filters, properties)| Subscribe {
        packet_id,
        filters,
        properties,
    })
}

pub(crate) fn suback() -> impl Strategy<Value = SubAck> {
    (packet_id(), prop::collection::vec(reason(ReasonContext::SubAck), 1..4), ack_properties())
        .prop_map(|(packet_id, reasons, properties)| SubAck { packet_id, reasons, properties })
}

pub(crate) fn unsubscribe() -> impl Strategy<Value = Unsubscribe> {
    let props = user_properties().prop_map(|user_properties| UnsubscribeProperties { user_properties });
    (packet_id(), prop::collection::vec(topic_filter(), 1..4), props)
        .prop_map(|(packet_id, filters, properties)| Unsubscribe { packet_id, filters, properties })
}

pub(crate) fn unsuback() -> impl Strategy<Value = UnsubAck> {
    (packet_id(), prop::collection::vec(reason(ReasonContext::UnsubAck), 1..4), ack_properties())
        .prop_map(|(packet_id, reasons, properties)| UnsubAck { packet_id, reasons, properties })
}

pub(crate) fn disconnect() -> impl Strategy<Value = Disconnect> {
    let props = (prop::option::of(any::<u32>()), opt_string(), user_properties(), opt_string()).prop_map(
        |(sei, rs, up, sr)| DisconnectProperties {
            session_expiry_interval: sei,
            reason_string: rs,
            user_properties: up,
            server_reference: sr,
        },
    );
    (reason(ReasonContext::Disconnect), props).prop_map(|(reason, properties)| Disconnect { reason, properties })
}

pub(crate) fn auth() -> impl Strategy<Value = Auth> {
    let props = (auth_pair(), opt_string(), user_properties()).prop_map(|((am, ad), rs, up)| AuthProperties {
        authentication_method: am,
        authentication_data: ad,
        reason_string: rs,
        user_properties: up,
    });
    (reason(ReasonContext::Auth), props).prop_map(|(reason, properties)| Auth { reason, properties })
}

/// Any valid packet, ready for MQTT 5.
pub(crate) fn packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        connect().prop_map(Packet::Connect),
        connack().prop_map(Packet::ConnAck),
        publish().prop_map(Packet::Publish),
        pub_ack(ReasonContext::PubAck).prop_map(Packet::PubAck),
        pub_ack(ReasonContext::PubRec).prop_map(Packet::PubRec),
        pub_ack(ReasonContext::PubRel).prop_map(Packet::PubRel),
        pub_ack(ReasonContext::PubComp).prop_map(Packet::PubComp),
        subscribe().prop_map(Packet::Subscribe),
        suback().prop_map(Packet::SubAck),
        unsubscribe().prop_map(Packet::Unsubscribe),
        unsuback().prop_map(Packet::UnsubAck),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        disconnect().prop_map(Packet::Disconnect),
        auth().prop_map(Packet::Auth),
    ]
}

/// Makes a valid MQTT 5 packet valid for MQTT 3.1.1 where the two differ in what is
/// allowed (rather than in what is dropped): the protocol level of CONNECT, a user name for
/// a password, a topic instead of an alias. Returns `None` for AUTH.
pub(crate) fn for_v311(packet: Packet) -> Option<Packet> {
    Some(match packet {
        Packet::Connect(mut c) => {
            c.protocol = ProtocolVersion::V311;
            if c.password.is_some() && c.username.is_none() {
                c.username = Some(String::new());
            }
            Packet::Connect(c)
        }
        Packet::Publish(mut p) => {
            if p.topic.is_empty() {
                p.topic = "t".to_owned();
            }
            Packet::Publish(p)
        }
        Packet::Auth(_) => return None,
        other => other,
    })
}
