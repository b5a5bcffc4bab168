//! Protocol flows around packet ids and subscriptions: QoS 2 inbound deduplication (also
//! across SIGKILL), unsubscribe, overlapping subscriptions, session expiry changed at
//! DISCONNECT, unknown inbound topic alias.

mod common;

use std::time::Duration;

use common::mqtt::{opts, text, V311, V5};
use common::raw::{self, disconnect_reason, Raw};
use common::Broker;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;

#[tokio::test]
async fn resent_qos2_publish_before_pubrel_is_delivered_once() {
    let b = Broker::start();
    let mut s = V5::connect(opts("s", b.port)).await;
    s.subscribe("q2/dedup", QoS::ExactlyOnce).await;
    let port = b.port;
    tokio::task::spawn_blocking(move || {
        let mut c = Raw::mqtt(port, 5, "q2pub", 60);
        c.send(&raw::publish(5, "q2/dedup", 2, 7, b"once"));
        assert_eq!(c.expect_kind(5).body[..2], [0, 7], "PUBREC 7");
        c.send(&raw::publish_dup_qos2(5, "q2/dedup", 7, b"once"));
        assert_eq!(c.expect_kind(5).body[..2], [0, 7], "PUBREC 7 again for the DUP");
        c.send(&raw::pubrel(7));
        assert_eq!(c.expect_kind(7).body[..2], [0, 7], "PUBCOMP 7");
    })
    .await
    .unwrap();
    let mut got = s.publishes(1).await;
    got.extend(s.publishes_within(Duration::from_secs(1)).await);
    assert_eq!(got.iter().map(text).collect::<Vec<_>>(), vec!["once"], "QoS 2: exactly once");
}

#[tokio::test]
async fn resent_qos2_publish_after_sigkill_restart_is_delivered_once() {
    let mut b = Broker::start();
    let mut s = V5::connect(common::mqtt::persistent("q2sub", b.port, 3600)).await;
    s.subscribe("q2/crash", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let port = b.port;
    tokio::task::spawn_blocking(move || {
        let (mut c, _) = Raw::mqtt_with(port, &raw::connect_with(5, "q2crash", 60, false, Some(3600)));
        c.send(&raw::publish(5, "q2/crash", 2, 9, b"one"));
        c.expect_kind(5);
    })
    .await
    .unwrap();
    // PUBREC went out, so the broker must remember packet id 9 across the crash.
    b.kill_and_restart();
    let port = b.port;
    tokio::task::spawn_blocking(move || {
        let (mut c, present) = Raw::mqtt_with(port, &raw::connect_with(5, "q2crash", 60, false, Some(3600)));
        assert!(present, "session with a pending PUBREL is present");
        c.send(&raw::publish_dup_qos2(5, "q2/crash", 9, b"one"));
        c.expect_kind(5);
        c.send(&raw::pubrel(9));
        let comp = c.expect_kind(7);
        assert_eq!(comp.body[..2], [0, 9]);
    })
    .await
    .unwrap();
    let mut s = V5::connect(common::mqtt::persistent("q2sub", b.port, 3600)).await;
    let mut got = s.publishes(1).await;
    got.extend(s.publishes_within(Duration::from_secs(1)).await);
    assert_eq!(got.iter().map(text).collect::<Vec<_>>(), vec!["one"], "stored once\n{}", b.log());
}

#[tokio::test]
async fn unsubscribe_stops_delivery_and_reports_missing_subscriptions() {
    let b = Broker::start();
    let mut s = V5::connect(opts("s", b.port)).await;
    s.subscribe("un/t", QoS::AtLeastOnce).await;
    s.client.unsubscribe("un/t").await.unwrap();
    let ack = s.wait_for("UNSUBACK", |p| matches!(p, Packet::UnsubAck(_))).await;
    let Packet::UnsubAck(ack) = ack else { unreachable!() };
    assert_eq!(ack.reasons.len(), 1);
    assert_eq!(ack.reasons[0] as u8, 0x00, "Success");
    let mut p = V5::connect(opts("p", b.port)).await;
    p.publish_acked("un/t", QoS::AtLeastOnce, false, "x").await;
    assert!(s.publishes_within(Duration::from_secs(1)).await.is_empty());
    // rumqttc turns an UNSUBACK reason 0x11 into an error that ends its event loop.
    s.client.unsubscribe("never/subscribed").await.unwrap();
    match s.closed().await {
        common::mqtt::Closed::Other(e) => assert!(e.contains("NoSubscriptionExisted"), "{e}"),
        other => panic!("expected UNSUBACK 0x11, got {other:?}"),
    }
}

#[tokio::test]
async fn overlapping_subscriptions_get_one_copy_at_the_highest_qos() {
    let b = Broker::start();
    let mut s = V5::connect(opts("s", b.port)).await;
    s.subscribe("ov/+", QoS::AtMostOnce).await;
    s.subscribe("ov/#", QoS::ExactlyOnce).await;
    s.subscribe("ov/t", QoS::AtLeastOnce).await;
    let mut p = V5::connect(opts("p", b.port)).await;
    p.publish_acked("ov/t", QoS::ExactlyOnce, false, "x").await;
    let mut got = s.publishes(1).await;
    got.extend(s.publishes_within(Duration::from_secs(1)).await);
    assert_eq!(got.len(), 1, "one copy: {got:?}");
    assert_eq!(got[0].qos, QoS::ExactlyOnce);
}

#[tokio::test]
async fn session_expiry_set_to_zero_at_disconnect_ends_the_session() {
    let b = Broker::start();
    let port = b.port;
    tokio::task::spawn_blocking(move || {
        let (mut c, _) = Raw::mqtt_with(port, &raw::connect_with(5, "shorten", 60, false, Some(3600)));
        c.send(&raw::subscribe(5, 1, "sh/t", 1));
        c.expect_kind(9);
        // DISCONNECT, reason 0, properties: Session Expiry Interval (0x11) = 0.
        c.send(&raw::packet(0xE0, &[0x00, 0x05, 0x11, 0, 0, 0, 0]));
        let _ = c.read_until_closed();
        let (_c, present) = Raw::mqtt_with(port, &raw::connect_with(5, "shorten", 60, false, Some(3600)));
        assert!(!present, "the session ended at DISCONNECT with expiry 0");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn session_expiry_raised_at_disconnect_after_zero_is_a_protocol_error() {
    let b = Broker::start();
    let mut c = Raw::mqtt(b.port, 5, "raise", 60);
    c.send(&raw::packet(0xE0, &[0x00, 0x05, 0x11, 0, 0, 0x0E, 0x10]));
    let packets = c.read_until_closed();
    assert_eq!(disconnect_reason(&packets), Some(0x82), "{packets:?}");
}

#[tokio::test]
async fn unknown_inbound_topic_alias_is_a_protocol_error() {
    let mut b = Broker::start();
    let mut c = Raw::mqtt(b.port, 5, "alias", 60);
    // PUBLISH QoS 0, empty topic, Topic Alias 1 never set.
    c.send(&raw::packet(0x30, &[0x00, 0x00, 0x03, 0x23, 0x00, 0x01, b'x']));
    let packets = c.read_until_closed();
    assert_eq!(disconnect_reason(&packets), Some(0x82), "{packets:?}");
    assert!(b.alive());
}

#[tokio::test]
async fn v311_clean_session_reconnect_has_no_session_present() {
    let b = Broker::start();
    let mut s = V311::connect("v3clean", b.port, false).await;
    s.subscribe("v3c/t", rumqttc::QoS::AtLeastOnce).await;
    s.disconnect().await;
    let s = V311::connect("v3clean", b.port, true).await;
    assert!(!s.session_present, "clean session 1 discards the stored session");
    s.disconnect().await;
    let s = V311::connect("v3clean", b.port, false).await;
    assert!(!s.session_present, "and it is gone afterwards");
}

#[tokio::test]
async fn v311_empty_client_id_with_clean_session_is_accepted() {
    let b = Broker::start();
    let mut c = V311::connect("", b.port, true).await;
    c.subscribe("v3e/t", rumqttc::QoS::AtLeastOnce).await;
    c.publish_acked("v3e/t", rumqttc::QoS::AtLeastOnce, "self").await;
    assert_eq!(&c.publishes(1).await[0].payload[..], b"self");
}

/// A raw persistent QoS 2 subscriber to `topic`; returns the socket after SUBACK.
fn raw_qos2_subscriber(port: u16, id: &str, topic: &str) -> Raw {
    let (mut c, _) = Raw::mqtt_with(port, &raw::connect_with(5, id, 60, false, Some(3600)));
    c.send(&raw::subscribe(5, 1, topic, 2));
    c.expect_kind(9);
    c
}

#[tokio::test]
async fn qos2_delivery_interrupted_after_pubrec_resumes_with_pubrel() {
    let b = Broker::start();
    let port = b.port;
    let mut c = tokio::task::spawn_blocking(move || raw_qos2_subscriber(port, "q2out", "q2out/t")).await.unwrap();
    let mut p = V5::connect(opts("p", b.port)).await;
    p.publish_acked("q2out/t", QoS::ExactlyOnce, false, "exactly").await;
    let (pid, present, first) = tokio::task::spawn_blocking(move || {
        let publish = c.expect_kind(3);
        let pid = [publish.body[9], publish.body[10]]; // topic "q2out/t" is 2 + 7 bytes
        c.send(&raw::packet(0x50, &pid)); // PUBREC
        let rel = c.expect_kind(6);
        assert_eq!(rel.body[..2], pid, "PUBREL for the same id");
        drop(c); // gone before PUBCOMP
        let (mut c, present) = Raw::mqtt_with(port, &raw::connect_with(5, "q2out", 60, false, Some(3600)));
        let first = c.read_packet(common::WAIT).expect("a resent packet after reconnect");
        if first.kind() == 6 {
            c.send(&raw::packet(0x70, &pid)); // PUBCOMP
        }
        (pid, present, first)
    })
    .await
    .unwrap();
    assert!(present);
    assert_eq!(first.kind(), 6, "PUBREL resent, not the PUBLISH again: {first:?}\n{}", b.log());
    assert_eq!(first.body[..2], pid);
}

#[tokio::test]
async fn qos2_delivery_interrupted_before_pubrec_is_resent_with_dup_and_the_same_id() {
    let b = Broker::start();
    let port = b.port;
    let mut c = tokio::task::spawn_blocking(move || raw_qos2_subscriber(port, "q2dup", "q2dup/t")).await.unwrap();
    let mut p = V5::connect(opts("p", b.port)).await;
    p.publish_acked("q2dup/t", QoS::ExactlyOnce, false, "exactly").await;
    let (first, again) = tokio::task::spawn_blocking(move || {
        let first = c.expect_kind(3);
        drop(c); // gone before PUBREC
        let (mut c, _) = Raw::mqtt_with(port, &raw::connect_with(5, "q2dup", 60, false, Some(3600)));
        let again = c.read_packet(common::WAIT).expect("the PUBLISH again");
        (first, again)
    })
    .await
    .unwrap();
    assert_eq!(again.kind(), 3, "{again:?}");
    assert_eq!(again.header & 0x08, 0x08, "DUP set on the resent PUBLISH");
    assert_eq!(first.body[9..11], again.body[9..11], "same packet id");
    assert_eq!(first.header & 0x08, 0, "first delivery without DUP");
}
