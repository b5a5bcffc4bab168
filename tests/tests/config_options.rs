//! Broker options from the TOML configuration, seen from rumqttc clients: auto_subscribe
//! (with `%c` and `%u`) and upgrade_qos.

mod common;

use std::time::Duration;

use common::mqtt::{opts, persistent, text, topic, V5};
use common::Broker;
use rumqttc::v5::mqttbytes::QoS;

const AUTO: &str = "[[auto_subscribe]]\nfilter = \"v/%c/cmd\"\nqos = 1\n";

#[tokio::test]
async fn auto_subscribe_delivers_the_clients_own_topic_without_subscribe() {
    let b = Broker::with_config(AUTO);
    let mut car = V5::connect(opts("car1", b.port)).await;
    let mut p = V5::connect(opts("ops", b.port)).await;
    p.publish_acked("v/car2/cmd", QoS::AtLeastOnce, false, "not yours").await;
    p.publish_acked("v/car1/cmd", QoS::AtLeastOnce, false, "unlock").await;
    let got = car.publishes(1).await.remove(0);
    assert_eq!((topic(&got), text(&got), got.qos), ("v/car1/cmd".into(), "unlock".into(), QoS::AtLeastOnce));
    assert!(car.publishes_within(Duration::from_millis(500)).await.is_empty(), "only its own client id");
}

#[tokio::test]
async fn auto_subscription_of_a_persistent_session_keeps_messages_across_restart() {
    let mut b = Broker::with_config(AUTO);
    V5::connect(persistent("car9", b.port, 3600)).await.disconnect().await;
    let mut p = V5::connect(opts("ops", b.port)).await;
    for i in 0..5 {
        p.publish_acked("v/car9/cmd", QoS::AtLeastOnce, false, format!("c{i}")).await;
    }
    p.disconnect().await;
    b.restart();
    let mut car = V5::connect(persistent("car9", b.port, 3600)).await;
    assert!(car.connack.session_present);
    let got = car.publishes(5).await;
    assert_eq!(got.iter().map(text).collect::<Vec<_>>(), vec!["c0", "c1", "c2", "c3", "c4"], "{}", b.log());
    assert!(car.publishes_within(Duration::from_millis(500)).await.is_empty(), "once each");
}

#[tokio::test]
async fn auto_subscribe_substitutes_the_username() {
    let b = Broker::with_config("[[auto_subscribe]]\nfilter = \"u/%u/inbox\"\nqos = 1\n");
    let mut o = opts("whoever", b.port);
    o.set_credentials("alice", "secret");
    let mut alice = V5::connect(o).await;
    let mut p = V5::connect(opts("p", b.port)).await;
    p.publish_acked("u/alice/inbox", QoS::AtLeastOnce, false, "hi alice").await;
    assert_eq!(text(&alice.publishes(1).await[0]), "hi alice");
}

#[tokio::test]
async fn upgrade_qos_delivers_at_the_subscription_qos() {
    let b = Broker::with_config("[mqtt]\nupgrade_qos = true\n");
    let mut s = V5::connect(opts("s", b.port)).await;
    s.subscribe("up/t", QoS::ExactlyOnce).await;
    let mut p = V5::connect(opts("p", b.port)).await;
    p.publish_acked("up/t", QoS::AtMostOnce, false, "zero").await;
    p.publish_acked("up/t", QoS::AtLeastOnce, false, "one").await;
    let got = s.publishes(2).await;
    assert_eq!(
        got.iter().map(|m| (text(m), m.qos)).collect::<Vec<_>>(),
        vec![("zero".to_string(), QoS::ExactlyOnce), ("one".to_string(), QoS::ExactlyOnce)]
    );
}

#[tokio::test]
async fn without_upgrade_qos_delivery_keeps_the_publish_qos() {
    let b = Broker::start();
    let mut s = V5::connect(opts("s", b.port)).await;
    s.subscribe("up/t", QoS::ExactlyOnce).await;
    let mut p = V5::connect(opts("p", b.port)).await;
    p.publish_acked("up/t", QoS::AtLeastOnce, false, "one").await;
    assert_eq!(s.publishes(1).await[0].qos, QoS::AtLeastOnce);
}

#[tokio::test]
async fn messages_on_many_partitions_keep_per_topic_order_after_sigkill() {
    let mut b = Broker::with_config("default_stream_partitions = 8\n");
    let mut s = V5::connect(persistent("fan", b.port, 3600)).await;
    s.subscribe("fan/#", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let mut p = V5::connect(opts("p", b.port)).await;
    for i in 0..20 {
        for t in ["fan/a", "fan/b", "fan/c", "fan/d"] {
            p.publish_acked(t, QoS::AtLeastOnce, false, format!("{i}")).await;
        }
    }
    p.disconnect().await;
    b.kill_and_restart();
    let mut s = V5::connect(persistent("fan", b.port, 3600)).await;
    assert!(s.connack.session_present);
    let got = s.publishes(80).await;
    for t in ["fan/a", "fan/b", "fan/c", "fan/d"] {
        let seq: Vec<String> = got.iter().filter(|m| topic(m) == t).map(text).collect();
        assert_eq!(seq, (0..20).map(|i| i.to_string()).collect::<Vec<_>>(), "{t} in order, once each");
    }
    assert!(s.publishes_within(Duration::from_millis(500)).await.is_empty());
}
