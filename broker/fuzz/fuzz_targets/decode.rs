//! Feeds arbitrary bytes to the MQTT decoder under every connection state (before CONNECT,
//! MQTT 3.1.1, MQTT 5) and with a tight and a loose packet size limit. Every packet that
//! decodes must re-encode, report its encoded length truthfully, and decode back to itself.

#![no_main]

use axle_broker::codec::{decode, encode, encoded_len, Packet, ProtocolVersion};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fn check(data: &[u8], start: Option<ProtocolVersion>, max_packet_size: u32) {
    let mut buf = BytesMut::from(data);
    let mut version = start;
    while let Ok(Some(packet)) = decode(&mut buf, version, max_packet_size) {
        let is_connect = matches!(packet, Packet::Connect(_));
        if let Packet::Connect(connect) = &packet {
            version = Some(connect.protocol);
        }
        let v = version.unwrap_or_default();
        let mut out = BytesMut::new();
        if let Err(err) = encode(&packet, v, &mut out) {
            panic!("decoded {packet:?} under {v:?} but cannot encode it: {err}");
        }
        assert_eq!(encoded_len(&packet, v), Ok(out.len()), "encoded_len disagrees with encode");
        let context = if is_connect { None } else { Some(v) };
        let again = decode(&mut out, context, u32::MAX);
        assert_eq!(again, Ok(Some(packet)), "re-encoded packet decodes differently");
        assert!(out.is_empty(), "re-encoded packet left {} bytes behind", out.len());
    }
}

fuzz_target!(|data: &[u8]| {
    for start in [None, Some(ProtocolVersion::V311), Some(ProtocolVersion::V5)] {
        check(data, start, u32::MAX);
        check(data, start, 64);
    }
});
