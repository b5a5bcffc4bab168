//! Rule breaking that real clients will not do, over a raw TCP socket with hand-written
//! packets: the broker's DISCONNECT reason codes (0x93, 0x8D, 0x81, 0x95, 0x94, 0x82), 3.1.1
//! closes, keepalive 0, and the broker keeps serving other clients afterwards.

mod common;

use std::time::Duration;

use common::mqtt::{opts, text, V5};
use common::raw::{self, disconnect_reason, Raw};
use common::{Broker, WAIT};
use rumqttc::v5::mqttbytes::QoS;

/// A normal client still works after whatever happened to another connection.
async fn still_serving(b: &mut Broker) {
    assert!(b.alive(), "the broker died:\n{}", b.log());
    let mut s = V5::connect(opts("witness", b.port)).await;
    s.subscribe("alive/t", QoS::AtLeastOnce).await;
    s.publish_acked("alive/t", QoS::AtLeastOnce, false, "ok").await;
    assert_eq!(text(&s.publishes(1).await[0]), "ok");
}

#[tokio::test]
async fn exceeding_receive_maximum_gets_disconnect_0x93() {
    let mut b = Broker::with_config("[mqtt]\nreceive_maximum = 2\n");
    let mut c = Raw::mqtt(b.port, 5, "greedy", 60);
    // QoS 2 publishes count against the quota until PUBREL, which is never sent.
    for id in 1..=2u16 {
        c.send(&raw::publish(5, "rm/t", 2, id, b"x"));
        let p = c.read_packet(WAIT).expect("PUBREC for a publish within the quota");
        assert_eq!(p.kind(), 5, "PUBREC, got {p:?}");
    }
    c.send(&raw::publish(5, "rm/t", 2, 3, b"x"));
    let packets = c.read_until_closed();
    assert_eq!(disconnect_reason(&packets), Some(0x93), "Receive Maximum exceeded; got {packets:?}\n{}", b.log());
    still_serving(&mut b).await;
}

#[tokio::test]
async fn keepalive_timeout_gets_disconnect_0x8d() {
    let mut b = Broker::start();
    let mut c = Raw::mqtt(b.port, 5, "silent", 1);
    // Say nothing: after 1.5 x 1 s the broker gives up.
    let packets = c.read_until_closed();
    assert_eq!(disconnect_reason(&packets), Some(0x8D), "Keep Alive timeout; got {packets:?}");
    still_serving(&mut b).await;
}

#[tokio::test]
async fn v311_keepalive_timeout_closes_the_connection() {
    let b = Broker::start();
    let mut c = Raw::mqtt(b.port, 4, "silent311", 1);
    let packets = c.read_until_closed();
    assert!(packets.is_empty(), "3.1.1 has no DISCONNECT from the server: {packets:?}");
}

#[tokio::test]
async fn pings_keep_a_connection_alive_past_its_keepalive() {
    let b = Broker::start();
    let mut c = Raw::mqtt(b.port, 5, "pinger", 1);
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(500));
        c.send(&raw::packet(0xC0, &[]));
        let p = c.read_packet(WAIT).expect("PINGRESP, connection still open");
        assert_eq!(p.kind(), 13, "PINGRESP");
    }
}

#[tokio::test]
async fn keepalive_zero_means_no_timeout() {
    let b = Broker::start();
    let mut c = Raw::mqtt(b.port, 5, "forever", 0);
    // Longer than any keepalive the broker could apply by itself for a 1-2 s window.
    assert!(c.read_packet(Duration::from_secs(3)).is_none(), "nothing from the broker while idle");
    c.send(&raw::packet(0xC0, &[]));
    let p = c.read_packet(WAIT).expect("still connected after 3 s idle with keepalive 0");
    assert_eq!(p.kind(), 13);
}

#[tokio::test]
async fn malformed_packet_gets_disconnect_0x81_in_v5() {
    let mut b = Broker::start();
    let mut c = Raw::mqtt(b.port, 5, "broken", 60);
    // SUBSCRIBE with reserved flags 0000 instead of 0010 is malformed.
    let mut bad = raw::subscribe(5, 1, "a/b", 1);
    bad[0] = 0x80;
    c.send(&bad);
    let packets = c.read_until_closed();
    assert_eq!(disconnect_reason(&packets), Some(0x81), "Malformed Packet; got {packets:?}\n{}", b.log());
    still_serving(&mut b).await;
}

#[tokio::test]
async fn truncated_utf8_in_a_topic_gets_disconnect_0x81_or_0x82() {
    let mut b = Broker::start();
    let mut c = Raw::mqtt(b.port, 5, "badutf8", 60);
    // Topic length 2 with invalid UTF-8 bytes.
    let body = [0x00, 0x02, 0xC3, 0x28, 0x00, b'x'];
    c.send(&raw::packet(0x30, &body));
    let packets = c.read_until_closed();
    let reason = disconnect_reason(&packets);
    assert!(matches!(reason, Some(0x81) | Some(0x82)), "invalid UTF-8 topic: got {packets:?}");
    still_serving(&mut b).await;
}

#[tokio::test]
async fn malformed_packet_closes_a_v311_connection_and_others_keep_working() {
    let mut b = Broker::start();
    let mut c = Raw::mqtt(b.port, 4, "broken311", 60);
    // A packet of type 0 is reserved.
    c.send(&raw::packet(0x00, &[1, 2, 3]));
    let packets = c.read_until_closed();
    assert!(packets.iter().all(|p| p.kind() != 14), "no DISCONNECT in 3.1.1: {packets:?}");
    still_serving(&mut b).await;
}

#[tokio::test]
async fn garbage_instead_of_connect_is_closed_and_others_keep_working() {
    let mut b = Broker::start();
    let mut c = Raw::connect(b.port);
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let _ = c.read_until_closed();
    still_serving(&mut b).await;
}

#[tokio::test]
async fn a_second_connect_is_a_protocol_error_0x82() {
    let b = Broker::start();
    let mut c = Raw::mqtt(b.port, 5, "twice", 60);
    c.send(&raw::connect(5, "twice", 60));
    let packets = c.read_until_closed();
    assert_eq!(disconnect_reason(&packets), Some(0x82), "Protocol Error; got {packets:?}");
}

#[tokio::test]
async fn packet_larger_than_maximum_packet_size_gets_disconnect_0x95() {
    let mut b = Broker::with_config("[mqtt]\nmax_packet_size = 1024\n");
    let mut c = Raw::mqtt(b.port, 5, "big", 60);
    c.send(&raw::publish(5, "big/t", 1, 1, &[b'x'; 4000]));
    let packets = c.read_until_closed();
    assert_eq!(disconnect_reason(&packets), Some(0x95), "Packet too large; got {packets:?}\n{}", b.log());
    still_serving(&mut b).await;
}

#[tokio::test]
async fn topic_alias_above_the_maximum_gets_disconnect_0x94() {
    let b = Broker::with_config("[mqtt]\ntopic_alias_maximum = 4\n");
    let mut c = Raw::mqtt(b.port, 5, "alias", 60);
    // PUBLISH QoS 0 "t/a" with property Topic Alias (0x23) = 9.
    let body = [0x00, 0x03, b't', b'/', b'a', 0x03, 0x23, 0x00, 0x09, b'x'];
    c.send(&raw::packet(0x30, &body));
    let packets = c.read_until_closed();
    assert_eq!(disconnect_reason(&packets), Some(0x94), "Topic Alias invalid; got {packets:?}");
}

#[tokio::test]
async fn messages_larger_than_the_clients_maximum_packet_size_are_not_sent_to_it() {
    let b = Broker::start();
    let mut o = opts("small", b.port);
    o.set_max_packet_size(Some(512));
    let mut small = V5::connect(o).await;
    small.subscribe("mps/t", QoS::AtLeastOnce).await;
    let mut p = V5::connect(opts("p", b.port)).await;
    p.publish_acked("mps/t", QoS::AtLeastOnce, false, vec![b'x'; 2000]).await;
    p.publish_acked("mps/t", QoS::AtLeastOnce, false, "fits").await;
    let got = small.publishes(1).await;
    assert_eq!(text(&got[0]), "fits", "the oversized message is skipped, the next one delivered");
}

#[tokio::test]
async fn v311_connect_with_empty_client_id_and_clean_session_0_is_refused() {
    let b = Broker::start();
    let mut c = Raw::connect(b.port);
    let mut pkt = raw::connect(4, "", 60);
    // Clear the clean session flag (byte after "MQTT" + level).
    let flags_at = 2 + 2 + 4 + 1;
    pkt[flags_at] = 0x00;
    c.send(&pkt);
    let p = c.read_packet(WAIT).expect("CONNACK");
    assert_eq!(p.kind(), 2);
    assert_eq!(p.body[1], 0x02, "identifier rejected");
}

#[tokio::test]
async fn a_packet_of_exactly_the_maximum_packet_size_is_accepted() {
    let mut b = Broker::with_config("[mqtt]\nmax_packet_size = 1024\n");
    let mut c = Raw::mqtt(b.port, 5, "edge", 60);
    // Fixed header 3 bytes (type + 2-byte length) + topic 2+6 + packet id 2 + properties 1.
    let payload = vec![b'x'; 1024 - 3 - 8 - 2 - 1];
    let pkt = raw::publish(5, "edge/t", 1, 1, &payload);
    assert_eq!(pkt.len(), 1024);
    c.send(&pkt);
    let p = c.read_packet(WAIT).expect("PUBACK for a packet of exactly max_packet_size");
    assert_eq!(p.kind(), 4, "PUBACK, got {p:?}\n{}", b.log());
    let one_more = raw::publish(5, "edge/t", 1, 2, &[payload.as_slice(), b"x"].concat());
    c.send(&one_more);
    let packets = c.read_until_closed();
    assert_eq!(disconnect_reason(&packets), Some(0x95), "1025 bytes is too large: {packets:?}");
    still_serving(&mut b).await;
}
