//! Tests of the framing (fixed header, remaining length, size limit, first-packet rule) and
//! properties of the codec as a whole: arbitrary bytes never panic, and whatever decodes
//! re-encodes to an equal packet.

use bytes::BytesMut;
use proptest::prelude::*;

use super::test_support::{self as ts, decode_all, decode_v};
use super::*;

const V5: Option<ProtocolVersion> = Some(ProtocolVersion::V5);
const V311: Option<ProtocolVersion> = Some(ProtocolVersion::V311);

/// Decodes `bytes` repeatedly until an error or a need for more bytes, re-encoding every
/// packet that decodes and checking it decodes back to itself.
fn decode_and_reencode(bytes: &[u8], version: Option<ProtocolVersion>, max: u32) {
    let mut buf = BytesMut::from(bytes);
    let mut version = version;
    while let Ok(Some(packet)) = decode(&mut buf, version, max) {
        if let Packet::Connect(c) = &packet {
            version = Some(c.protocol);
        }
        let v = version.unwrap_or_default();
        let mut out = BytesMut::new();
        if let Err(err) = encode(&packet, v, &mut out) {
            panic!("decoded {packet:?} but cannot re-encode it: {err}");
        }
        assert_eq!(encoded_len(&packet, v), Ok(out.len()));
        let again = decode(&mut out, if matches!(packet, Packet::Connect(_)) { None } else { Some(v) }, u32::MAX);
        assert_eq!(again, Ok(Some(packet)));
        assert!(out.is_empty());
    }
}

proptest! {
    #[test]
    fn decoding_arbitrary_bytes_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        max in prop_oneof![Just(u32::MAX), 0..512u32],
    ) {
        for version in [None, V311, V5] {
            decode_and_reencode(&bytes, version, max);
        }
    }

    #[test]
    fn mutated_valid_packets_never_panic(
        packet in ts::packet(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        v5 in any::<bool>(),
    ) {
        let version = if v5 { ProtocolVersion::V5 } else { ProtocolVersion::V311 };
        let Some(packet) = (if v5 { Some(packet) } else { ts::for_v311(packet) }) else { return Ok(()) };
        let mut bytes = ts::encode_vec(&packet, version);
        for (index, value) in flips {
            let i = index.index(bytes.len());
            if let Some(b) = bytes.get_mut(i) {
                *b ^= value;
            }
        }
        decode_and_reencode(&bytes, Some(version), u32::MAX);
        decode_and_reencode(&bytes, None, u32::MAX);
    }

    #[test]
    fn every_packet_type_round_trips_under_both_versions(packet in ts::packet(), v5 in any::<bool>()) {
        if v5 {
            ts::assert_round_trip(&packet, ProtocolVersion::V5)?;
        } else if let Some(packet) = ts::for_v311(packet) {
            ts::assert_round_trip(&packet, ProtocolVersion::V311)?;
        }
    }

    #[test]
    fn back_to_back_packets_decode_in_order(packets in prop::collection::vec(ts::packet(), 1..6)) {
        let packets: Vec<Packet> =
            packets.into_iter().filter(|p| !matches!(p, Packet::Connect(_))).collect();
        let mut bytes = Vec::new();
        for p in &packets {
            bytes.extend(ts::encode_vec(p, ProtocolVersion::V5));
        }
        prop_assert_eq!(decode_all(&bytes, V5), Ok(packets));
    }
}

#[test]
fn pings_are_two_bytes() {
    for (packet, byte) in [(Packet::PingReq, 0xC0), (Packet::PingResp, 0xD0)] {
        for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
            let bytes = ts::encode_vec(&packet, version);
            assert_eq!(bytes, vec![byte, 0]);
            assert_eq!(decode_v(&bytes, Some(version)), Ok(packet.clone()));
            ts::assert_prefixes_incomplete(&bytes, Some(version));
        }
    }
}

#[test]
fn ping_with_a_body_is_malformed() {
    let err = decode_v(&[0xC0, 1, 0], V5).unwrap_err();
    assert_eq!(err, DecodeError::TrailingBytes { packet: "PINGREQ", count: 1 });
    assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
}

#[test]
fn remaining_length_longer_than_four_bytes_is_malformed() {
    let mut buf = BytesMut::from(&[0x30u8, 0xFF, 0xFF, 0xFF, 0xFF, 0x01][..]);
    let err = decode(&mut buf, V5, u32::MAX).unwrap_err();
    assert_eq!(err, DecodeError::RemainingLengthTooLong);
    assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
    // Three continuation bytes still might be followed by a final one.
    let mut buf = BytesMut::from(&[0x30u8, 0xFF, 0xFF, 0xFF][..]);
    assert_eq!(decode(&mut buf, V5, u32::MAX), Ok(None));
}

#[test]
fn oversized_packet_is_rejected_before_its_bytes_arrive() {
    // PUBLISH announcing 200 bytes, only the header present, limit 100.
    let mut buf = BytesMut::from(&[0x30u8, 200, 1][..]);
    let err = decode(&mut buf, V5, 100).unwrap_err();
    assert_eq!(err, DecodeError::PacketTooLarge { size: 203, max: 100 });
    assert_eq!(err.reason_code(), ReasonCode::PacketTooLarge);
    assert_eq!(buf.len(), 3, "nothing consumed");
    // The limit counts the whole packet: 2 header bytes + 3 body bytes = 5.
    let publish = [0x30u8, 3, 0, 1, b't'];
    assert!(decode(&mut BytesMut::from(&publish[..]), V311, 5).is_ok());
    assert!(matches!(
        decode(&mut BytesMut::from(&publish[..]), V311, 4),
        Err(DecodeError::PacketTooLarge { size: 5, max: 4 })
    ));
}

#[test]
fn only_connect_is_accepted_before_connect() {
    let err = decode(&mut BytesMut::from(&[0xC0u8, 0][..]), None, u32::MAX).unwrap_err();
    assert_eq!(err, DecodeError::ExpectedConnect { packet: "PINGREQ" });
    assert_eq!(err.reason_code(), ReasonCode::ProtocolError);
    // The check needs only the first byte.
    let err = decode(&mut BytesMut::from(&[0x32u8][..]), None, u32::MAX).unwrap_err();
    assert_eq!(err, DecodeError::ExpectedConnect { packet: "PUBLISH" });
}

#[test]
fn packet_type_0_is_reserved() {
    let err = decode(&mut BytesMut::from(&[0x00u8, 0][..]), V5, u32::MAX).unwrap_err();
    assert_eq!(err, DecodeError::ReservedPacketType(0));
    assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
}

#[test]
fn subscribe_and_unsubscribe_need_flags_0010() {
    for (byte, packet) in [(0x80u8, "SUBSCRIBE"), (0xA0, "UNSUBSCRIBE"), (0x83, "SUBSCRIBE")] {
        let err = decode(&mut BytesMut::from(&[byte][..]), V5, u32::MAX).unwrap_err();
        assert_eq!(err, DecodeError::InvalidHeaderFlags { packet, flags: byte & 0x0F, expected: 2 });
        assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
    }
    for byte in [0x11u8, 0x24, 0xC8, 0xE1] {
        let err = decode(&mut BytesMut::from(&[byte][..]), V5, u32::MAX).unwrap_err();
        assert!(matches!(err, DecodeError::InvalidHeaderFlags { expected: 0, .. }), "{byte:#x}");
    }
}

#[test]
fn partial_input_leaves_the_buffer_alone_and_resumes() {
    let bytes = ts::encode_vec(&Packet::PingReq, ProtocolVersion::V5);
    let mut buf = BytesMut::new();
    for &b in &bytes {
        assert_eq!(decode(&mut buf, V5, u32::MAX), Ok(None));
        buf.extend_from_slice(&[b]);
    }
    assert_eq!(decode(&mut buf, V5, u32::MAX), Ok(Some(Packet::PingReq)));
    assert_eq!(decode(&mut buf, V5, u32::MAX), Ok(None));
}

#[test]
fn peek_connect_version_reads_the_protocol_level() {
    let connect = Packet::Connect(Connect { protocol: ProtocolVersion::V311, ..Connect::default() });
    let bytes = ts::encode_vec(&connect, ProtocolVersion::V311);
    assert_eq!(peek_connect_version(&bytes), Some(ProtocolVersion::V311));
    let connect = Packet::Connect(Connect::default());
    assert_eq!(peek_connect_version(&ts::encode_vec(&connect, ProtocolVersion::V5)), Some(ProtocolVersion::V5));
    assert_eq!(peek_connect_version(&[0x10, 5, 0, 4, b'M']), None);
    assert_eq!(peek_connect_version(&[0xC0, 0]), None);
}

#[test]
fn connect_is_encoded_at_its_own_level() {
    let connect = Packet::Connect(Connect { protocol: ProtocolVersion::V311, ..Connect::default() });
    let as_v5 = ts::encode_vec(&connect, ProtocolVersion::V5);
    assert_eq!(as_v5, ts::encode_vec(&connect, ProtocolVersion::V311));
    assert_eq!(peek_connect_version(&as_v5), Some(ProtocolVersion::V311));
}

#[test]
fn encoded_len_matches_large_remaining_lengths() {
    for size in [0usize, 120, 127, 128, 16_383, 16_384, 2_097_152] {
        let publish = Publish { topic: "t".into(), payload: bytes::Bytes::from(vec![7u8; size]), ..Publish::default() };
        let packet = Packet::Publish(publish);
        let bytes = ts::encode_vec(&packet, ProtocolVersion::V311);
        assert_eq!(encoded_len(&packet, ProtocolVersion::V311), Ok(bytes.len()));
        assert_eq!(decode_v(&bytes, V311), Ok(packet));
    }
}

#[test]
fn packet_bigger_than_the_protocol_allows_cannot_be_encoded() {
    let publish = Publish {
        topic: "t".into(),
        payload: bytes::Bytes::from(vec![0u8; MAX_REMAINING_LENGTH as usize]),
        ..Publish::default()
    };
    let packet = Packet::Publish(publish);
    let mut buf = BytesMut::new();
    assert!(matches!(encode(&packet, ProtocolVersion::V311, &mut buf), Err(EncodeError::PacketTooLarge { .. })));
    assert!(matches!(encoded_len(&packet, ProtocolVersion::V311), Err(EncodeError::PacketTooLarge { .. })));
    assert!(buf.is_empty());
}

#[test]
fn decode_error_messages_name_the_problem() {
    let err = DecodeError::PacketTooLarge { size: 300, max: 100 };
    assert!(err.to_string().contains("300") && err.to_string().contains("100"));
    let err = DecodeError::InvalidTopicFilter { filter: "a#".into(), source: TopicError::MultiLevelWildcardMisplaced };
    assert!(err.to_string().contains("\"a#\""));
}

/// Writes valid packets, each after a CONNECT of its version, as a seed corpus for the
/// `decode` fuzz target. Run by hand:
/// `cargo test -p axle-broker codec::tests::write_fuzz_seed_corpus -- --ignored`.
#[test]
#[ignore = "writes files into broker/fuzz/corpus/decode; run by hand to seed the fuzzer"]
fn write_fuzz_seed_corpus() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/decode");
    std::fs::create_dir_all(dir).expect("corpus directory");
    let mut runner = TestRunner::deterministic();
    let strategy = ts::packet();
    for i in 0..400 {
        let packet = strategy.new_tree(&mut runner).expect("a packet").current();
        let (version, packet) = match i % 2 {
            0 => (ProtocolVersion::V5, Some(packet)),
            _ => (ProtocolVersion::V311, ts::for_v311(packet)),
        };
        let Some(packet) = packet else { continue };
        let connect = Connect { protocol: version, client_id: "seed".into(), ..Connect::default() };
        let mut bytes = ts::encode_vec(&Packet::Connect(connect), version);
        bytes.extend(ts::encode_vec(&packet, version));
        std::fs::write(format!("{dir}/seed-{i:03}"), bytes).expect("seed written");
    }
}
