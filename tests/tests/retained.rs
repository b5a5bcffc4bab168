//! Retained messages with rumqttc: set, clear, sent on subscribe, kept across restarts,
//! retain handling 0/1/2 and retain-as-published.

mod common;

use std::time::Duration;

use common::mqtt::{opts, text, topic, V5};
use common::Broker;
use rumqttc::v5::mqttbytes::v5::{Filter, RetainForwardRule};
use rumqttc::v5::mqttbytes::QoS;

async fn retain(b: &Broker, topic: &str, payload: &str) {
    let mut p = V5::connect(opts("retainer", b.port)).await;
    p.publish_acked(topic, QoS::AtLeastOnce, true, payload).await;
    p.disconnect().await;
}

async fn subscribe_with(s: &mut V5, filter: Filter) {
    s.client.subscribe_many(vec![filter]).await.unwrap();
    s.wait_for("SUBACK", |p| matches!(p, rumqttc::v5::mqttbytes::v5::Packet::SubAck(_))).await;
}

fn filter(path: &str, rule: RetainForwardRule, rap: bool) -> Filter {
    let mut f = Filter::new(path, QoS::AtLeastOnce);
    f.retain_forward_rule = rule;
    f.preserve_retain = rap;
    f
}

#[tokio::test]
async fn retained_message_is_sent_to_a_new_subscriber_with_retain_set() {
    let b = Broker::start();
    retain(&b, "r/a", "hello").await;
    let mut s = V5::connect(opts("s", b.port)).await;
    s.subscribe("r/a", QoS::AtLeastOnce).await;
    let got = s.publishes(1).await;
    assert_eq!((topic(&got[0]), text(&got[0]), got[0].retain), ("r/a".into(), "hello".into(), true));
}

#[tokio::test]
async fn a_newer_retained_message_replaces_the_older_one() {
    let b = Broker::start();
    retain(&b, "r/a", "old").await;
    retain(&b, "r/a", "new").await;
    let mut s = V5::connect(opts("s", b.port)).await;
    s.subscribe("r/a", QoS::AtLeastOnce).await;
    let mut got = s.publishes(1).await;
    got.extend(s.publishes_within(Duration::from_millis(500)).await);
    assert_eq!(got.iter().map(text).collect::<Vec<_>>(), vec!["new"]);
}

#[tokio::test]
async fn empty_retained_payload_clears_the_retained_message() {
    let b = Broker::start();
    retain(&b, "r/c", "gone soon").await;
    retain(&b, "r/c", "").await;
    let mut s = V5::connect(opts("s", b.port)).await;
    s.subscribe("r/c", QoS::AtLeastOnce).await;
    let got = s.publishes_within(Duration::from_secs(1)).await;
    assert!(got.is_empty(), "cleared retained message still sent: {got:?}");
}

#[tokio::test]
async fn wildcard_subscription_receives_every_matching_retained_message() {
    let b = Broker::start();
    for t in ["w/1", "w/2", "w/3/x", "other/1"] {
        retain(&b, t, t).await;
    }
    let mut s = V5::connect(opts("s", b.port)).await;
    s.subscribe("w/#", QoS::AtLeastOnce).await;
    let mut got: Vec<String> = s.publishes(3).await.iter().map(topic).collect();
    got.extend(s.publishes_within(Duration::from_millis(500)).await.iter().map(topic));
    got.sort();
    assert_eq!(got, vec!["w/1", "w/2", "w/3/x"]);
}

#[tokio::test]
async fn retained_message_is_delivered_at_the_lower_qos() {
    let b = Broker::start();
    retain(&b, "r/q", "q1").await;
    let mut s = V5::connect(opts("s", b.port)).await;
    s.subscribe("r/q", QoS::AtMostOnce).await;
    let got = s.publishes(1).await;
    assert_eq!(got[0].qos, QoS::AtMostOnce);
}

#[tokio::test]
async fn retained_messages_survive_a_sigterm_restart() {
    let mut b = Broker::start();
    retain(&b, "r/keep", "kept").await;
    b.restart();
    let mut s = V5::connect(opts("s", b.port)).await;
    s.subscribe("r/keep", QoS::AtLeastOnce).await;
    let got = s.publishes(1).await;
    assert_eq!(text(&got[0]), "kept", "{}", b.log());
}

#[tokio::test]
async fn retained_messages_survive_a_sigkill_restart() {
    let mut b = Broker::start();
    retain(&b, "r/keep", "kept").await;
    b.kill_and_restart();
    let mut s = V5::connect(opts("s", b.port)).await;
    s.subscribe("r/keep", QoS::AtLeastOnce).await;
    let got = s.publishes_within(Duration::from_secs(2)).await;
    assert_eq!(got.iter().map(text).collect::<Vec<_>>(), vec!["kept"], "acked retained message lost\n{}", b.log());
}

#[tokio::test]
async fn retain_handling_0_sends_retained_on_every_subscribe() {
    let b = Broker::start();
    retain(&b, "rh/0", "x").await;
    let mut s = V5::connect(opts("s", b.port)).await;
    subscribe_with(&mut s, filter("rh/0", RetainForwardRule::OnEverySubscribe, false)).await;
    assert_eq!(s.publishes(1).await.len(), 1);
    subscribe_with(&mut s, filter("rh/0", RetainForwardRule::OnEverySubscribe, false)).await;
    assert_eq!(s.publishes(1).await.len(), 1, "sent again on re-subscribe");
}

#[tokio::test]
async fn retain_handling_1_sends_retained_only_for_a_new_subscription() {
    let b = Broker::start();
    retain(&b, "rh/1", "x").await;
    let mut s = V5::connect(opts("s", b.port)).await;
    subscribe_with(&mut s, filter("rh/1", RetainForwardRule::OnNewSubscribe, false)).await;
    assert_eq!(s.publishes(1).await.len(), 1, "sent for the new subscription");
    subscribe_with(&mut s, filter("rh/1", RetainForwardRule::OnNewSubscribe, false)).await;
    let again = s.publishes_within(Duration::from_secs(1)).await;
    assert!(again.is_empty(), "not sent when the subscription already existed: {again:?}");
}

#[tokio::test]
async fn retain_handling_2_never_sends_retained() {
    let b = Broker::start();
    retain(&b, "rh/2", "x").await;
    let mut s = V5::connect(opts("s", b.port)).await;
    subscribe_with(&mut s, filter("rh/2", RetainForwardRule::Never, false)).await;
    let got = s.publishes_within(Duration::from_secs(1)).await;
    assert!(got.is_empty(), "retain handling 2: {got:?}");
}

#[tokio::test]
async fn live_retained_publish_keeps_retain_only_with_retain_as_published() {
    let b = Broker::start();
    let mut plain = V5::connect(opts("plain", b.port)).await;
    subscribe_with(&mut plain, filter("rap/t", RetainForwardRule::Never, false)).await;
    let mut rap = V5::connect(opts("rap", b.port)).await;
    subscribe_with(&mut rap, filter("rap/t", RetainForwardRule::Never, true)).await;
    retain(&b, "rap/t", "live").await;
    let p = plain.publishes(1).await.remove(0);
    let r = rap.publishes(1).await.remove(0);
    assert!(!p.retain, "without retain-as-published a live delivery has retain 0");
    assert!(r.retain, "with retain-as-published a live delivery keeps retain 1");
}

#[tokio::test]
async fn v311_retained_set_and_clear() {
    let b = Broker::start();
    let mut p = common::mqtt::V311::connect("p", b.port, true).await;
    p.client.publish("r3/t", rumqttc::QoS::AtLeastOnce, true, "v3").await.unwrap();
    p.wait_for("PUBACK", |p| matches!(p, rumqttc::Packet::PubAck(_))).await;
    let mut s = common::mqtt::V311::connect("s", b.port, true).await;
    s.subscribe("r3/t", rumqttc::QoS::AtLeastOnce).await;
    let got = s.publishes(1).await;
    assert!(got[0].retain && &got[0].payload[..] == b"v3");
    p.client.publish("r3/t", rumqttc::QoS::AtLeastOnce, true, "").await.unwrap();
    p.wait_for("PUBACK", |p| matches!(p, rumqttc::Packet::PubAck(_))).await;
    // The empty retained publish itself is forwarded to the live subscriber.
    let _ = s.publishes_within(Duration::from_millis(500)).await;
    let mut s2 = common::mqtt::V311::connect("s2", b.port, true).await;
    s2.subscribe("r3/t", rumqttc::QoS::AtLeastOnce).await;
    assert!(s2.publishes_within(Duration::from_secs(1)).await.is_empty(), "cleared");
}

#[tokio::test]
async fn unacked_retained_delivery_is_redelivered_to_a_resumed_session() {
    let b = Broker::start();
    retain(&b, "rr/t", "state").await;
    let mut o = common::mqtt::persistent("rr", b.port, 3600);
    o.set_manual_acks(true);
    let mut s = V5::connect(o).await;
    s.subscribe("rr/t", QoS::AtLeastOnce).await;
    let first = s.publishes(1).await.remove(0);
    assert!(first.retain && first.qos == QoS::AtLeastOnce);
    // Not acknowledged: it is in flight when the connection drops.
    s.drop_connection().await;
    let mut s = V5::connect(common::mqtt::persistent("rr", b.port, 3600)).await;
    assert!(s.connack.session_present);
    let again = s.publishes_within(Duration::from_secs(2)).await;
    assert_eq!(
        again.iter().map(text).collect::<Vec<_>>(),
        vec!["state"],
        "unacknowledged QoS 1 retained delivery redelivered\n{}",
        b.log()
    );
    assert!(again[0].dup, "with DUP");
}

#[tokio::test]
async fn retained_messages_on_subscribe_respect_the_clients_receive_maximum() {
    let b = Broker::start();
    for i in 0..10 {
        retain(&b, &format!("rmx/{i}"), "state").await;
    }
    let mut o = opts("rmx", b.port);
    o.set_manual_acks(true);
    o.set_receive_maximum(Some(3));
    let mut s = V5::connect(o).await;
    s.subscribe("rmx/#", QoS::AtLeastOnce).await;
    let first = s.publishes_within(Duration::from_secs(1)).await;
    assert_eq!(first.len(), 3, "at most Receive Maximum (3) unacknowledged QoS 1 publishes, got {}", first.len());
    for p in &first {
        s.client.ack(p).await.unwrap();
    }
    let mut all = first;
    while all.len() < 10 {
        let p = s.publishes(1).await.remove(0);
        s.client.ack(&p).await.unwrap();
        all.push(p);
    }
    assert!(s.publishes_within(Duration::from_millis(500)).await.is_empty());
}
