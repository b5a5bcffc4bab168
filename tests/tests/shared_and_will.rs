//! Shared subscriptions (round robin, redispatch when a member leaves) and will messages
//! (abnormal disconnect, normal disconnect, will delay) with rumqttc.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use common::mqtt::{opts, persistent, text, topic, V5};
use common::Broker;
use rumqttc::v5::mqttbytes::v5::{LastWill, LastWillProperties};
use rumqttc::v5::mqttbytes::QoS;

async fn publish_numbered(b: &Broker, topic: &str, n: usize) {
    let mut p = V5::connect(opts("pub", b.port)).await;
    for i in 0..n {
        p.publish_acked(topic, QoS::AtLeastOnce, false, format!("{i}")).await;
    }
    p.disconnect().await;
}

#[tokio::test]
async fn shared_subscription_round_robins_between_two_members() {
    let b = Broker::start();
    let mut a = V5::connect(opts("a", b.port)).await;
    a.subscribe("$share/g/sh/t", QoS::AtLeastOnce).await;
    let mut c = V5::connect(opts("c", b.port)).await;
    c.subscribe("$share/g/sh/t", QoS::AtLeastOnce).await;
    publish_numbered(&b, "sh/t", 10).await;
    let ga = a.publishes_within(Duration::from_secs(2)).await;
    let gc = c.publishes_within(Duration::from_millis(200)).await;
    let mut all: Vec<usize> = ga.iter().chain(gc.iter()).map(|p| text(p).parse().unwrap()).collect();
    all.sort();
    assert_eq!(all, (0..10).collect::<Vec<_>>(), "each message to exactly one member");
    assert_eq!((ga.len(), gc.len()), (5, 5), "round robin alternates between the two members");
    assert!(ga.iter().chain(gc.iter()).all(|p| topic(p) == "sh/t"), "delivered with the real topic");
}

#[tokio::test]
async fn shared_and_ordinary_subscriptions_both_receive() {
    let b = Broker::start();
    let mut member = V5::connect(opts("member", b.port)).await;
    member.subscribe("$share/g/both/t", QoS::AtLeastOnce).await;
    let mut plain = V5::connect(opts("plain", b.port)).await;
    plain.subscribe("both/t", QoS::AtLeastOnce).await;
    publish_numbered(&b, "both/t", 3).await;
    assert_eq!(member.publishes(3).await.len(), 3);
    assert_eq!(plain.publishes(3).await.len(), 3);
}

#[tokio::test]
async fn two_groups_each_get_every_message_once() {
    let b = Broker::start();
    let mut g1 = V5::connect(opts("g1", b.port)).await;
    g1.subscribe("$share/one/grp/t", QoS::AtLeastOnce).await;
    let mut g2 = V5::connect(opts("g2", b.port)).await;
    g2.subscribe("$share/two/grp/t", QoS::AtLeastOnce).await;
    publish_numbered(&b, "grp/t", 4).await;
    assert_eq!(g1.publishes(4).await.iter().map(text).collect::<Vec<_>>(), vec!["0", "1", "2", "3"]);
    assert_eq!(g2.publishes(4).await.iter().map(text).collect::<Vec<_>>(), vec!["0", "1", "2", "3"]);
}

#[tokio::test]
async fn unacked_shared_messages_are_redispatched_when_a_member_leaves() {
    let b = Broker::start();
    let mut o = opts("lazy", b.port);
    o.set_manual_acks(true);
    let mut lazy = V5::connect(o).await;
    lazy.subscribe("$share/g/rd/t", QoS::AtLeastOnce).await;
    let mut busy = V5::connect(opts("busy", b.port)).await;
    busy.subscribe("$share/g/rd/t", QoS::AtLeastOnce).await;
    publish_numbered(&b, "rd/t", 10).await;
    let held = lazy.publishes_within(Duration::from_secs(2)).await;
    assert!(!held.is_empty(), "round robin gave the lazy member some messages");
    let held: BTreeSet<String> = held.iter().map(text).collect();
    lazy.drop_connection().await;
    let mut got: BTreeSet<String> = BTreeSet::new();
    let mut count = 0;
    while got.len() < 10 {
        let p = busy.publishes(1).await.remove(0);
        got.insert(text(&p));
        count += 1;
    }
    assert_eq!(count, 10, "the remaining member got each message once (incl. {held:?} redispatched)");
    assert!(busy.publishes_within(Duration::from_millis(500)).await.is_empty());
}

#[tokio::test]
async fn shared_subscription_gets_no_retained_messages() {
    let b = Broker::start();
    let mut p = V5::connect(opts("p", b.port)).await;
    p.publish_acked("shr/t", QoS::AtLeastOnce, true, "kept").await;
    let mut s = V5::connect(opts("s", b.port)).await;
    s.subscribe("$share/g/shr/t", QoS::AtLeastOnce).await;
    assert!(s.publishes_within(Duration::from_secs(1)).await.is_empty());
}

fn will(topic: &str, payload: &str, delay: Option<u32>) -> LastWill {
    let props = LastWillProperties {
        delay_interval: delay,
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: Some("text/plain".into()),
        response_topic: None,
        correlation_data: Some(Bytes::from_static(b"will-corr")),
        user_properties: vec![("why".into(), "gone".into())],
    };
    LastWill::new(topic, payload, QoS::AtLeastOnce, false, Some(props))
}

async fn watcher(b: &Broker, filter: &str) -> V5 {
    let mut w = V5::connect(opts("watcher", b.port)).await;
    w.subscribe(filter, QoS::AtLeastOnce).await;
    w
}

#[tokio::test]
async fn will_is_published_when_the_connection_drops_without_disconnect() {
    let b = Broker::start();
    let mut w = watcher(&b, "will/#").await;
    let mut o = opts("mortal", b.port);
    o.set_last_will(will("will/mortal", "bye", None));
    let c = V5::connect(o).await;
    c.drop_connection().await;
    let got = w.publishes(1).await.remove(0);
    assert_eq!((topic(&got), text(&got)), ("will/mortal".into(), "bye".into()));
    let props = got.properties.expect("will properties forwarded");
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));
    assert_eq!(props.correlation_data.as_deref(), Some(&b"will-corr"[..]));
    assert_eq!(props.user_properties, vec![("why".to_string(), "gone".to_string())]);
}

#[tokio::test]
async fn will_is_not_published_on_a_normal_disconnect() {
    let b = Broker::start();
    let mut w = watcher(&b, "will/#").await;
    let mut o = opts("polite", b.port);
    o.set_last_will(will("will/polite", "bye", None));
    V5::connect(o).await.disconnect().await;
    assert!(w.publishes_within(Duration::from_secs(1)).await.is_empty());
}

#[tokio::test]
async fn will_is_published_when_the_keepalive_expires() {
    let b = Broker::start();
    let mut w = watcher(&b, "will/#").await;
    // A raw client that sends CONNECT with a will and keepalive 1, then goes silent.
    let mut body = Vec::new();
    body.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0x02 | 0x04 | 0x08, 0, 1]);
    for s in ["silent-will", "will/silent", "timeout"] {
        body.extend_from_slice(&(s.len() as u16).to_be_bytes());
        body.extend_from_slice(s.as_bytes());
    }
    let mut c = common::raw::Raw::connect(b.port);
    c.send(&common::raw::packet(0x10, &body));
    let _ = c.read_until_closed();
    let got = w.publishes(1).await.remove(0);
    assert_eq!((topic(&got), text(&got)), ("will/silent".into(), "timeout".into()));
}

#[tokio::test]
async fn delayed_will_is_published_after_the_delay() {
    let b = Broker::start();
    let mut w = watcher(&b, "will/#").await;
    let mut o = persistent("slowdeath", b.port, 60);
    o.set_last_will(will("will/slow", "late", Some(3)));
    V5::connect(o).await.drop_connection().await;
    let early = w.publishes_within(Duration::from_secs(1)).await;
    assert!(early.is_empty(), "published before its 3 s delay: {early:?}");
    let got = w.publishes(1).await.remove(0);
    assert_eq!(text(&got), "late");
}

#[tokio::test]
async fn delayed_will_is_cancelled_when_the_client_reconnects_in_time() {
    let b = Broker::start();
    let mut w = watcher(&b, "will/#").await;
    let mut o = persistent("phoenix", b.port, 60);
    o.set_last_will(will("will/phoenix", "dead", Some(3)));
    V5::connect(o).await.drop_connection().await;
    let back = V5::connect(persistent("phoenix", b.port, 60)).await;
    let got = w.publishes_within(Duration::from_secs(5)).await;
    assert!(got.is_empty(), "the client came back within the will delay: {got:?}");
    drop(back);
}

#[tokio::test]
async fn will_delay_is_capped_by_session_expiry() {
    let b = Broker::start();
    let mut w = watcher(&b, "will/#").await;
    // Session expiry 1 s, will delay 3600 s: the will goes when the session ends.
    let mut o = persistent("short", b.port, 1);
    o.set_last_will(will("will/short", "expired", Some(3600)));
    V5::connect(o).await.drop_connection().await;
    let got = w.publishes(1).await.remove(0);
    assert_eq!(text(&got), "expired");
}

#[tokio::test]
async fn retained_will_is_kept_as_the_retained_message() {
    let b = Broker::start();
    let mut o = opts("rw", b.port);
    o.set_last_will(LastWill::new("will/retained", "offline", QoS::AtLeastOnce, true, None));
    V5::connect(o).await.drop_connection().await;
    // Wait until the will is out, via a live watcher, then check the retained copy.
    let mut w = watcher(&b, "will/retained").await;
    let mut got = w.publishes_within(Duration::from_secs(2)).await;
    if got.is_empty() {
        got = w.publishes(1).await;
    }
    assert_eq!(text(&got[0]), "offline");
    let mut late = V5::connect(opts("late", b.port)).await;
    late.subscribe("will/retained", QoS::AtLeastOnce).await;
    let r = late.publishes(1).await.remove(0);
    assert!(r.retain && text(&r) == "offline");
}

#[tokio::test]
async fn delayed_will_is_not_published_on_session_takeover() {
    let b = Broker::start();
    let mut w = watcher(&b, "will/#").await;
    let mut o = persistent("taken", b.port, 60);
    o.set_last_will(will("will/taken", "dead", Some(2)));
    let mut first = V5::connect(o).await;
    let second = V5::connect(persistent("taken", b.port, 60)).await;
    let _ = first.closed().await;
    let got = w.publishes_within(Duration::from_secs(4)).await;
    assert!(got.is_empty(), "a new connection came before the will delay: {got:?}");
    drop(second);
}

#[tokio::test]
async fn will_without_delay_is_published_on_session_takeover() {
    let b = Broker::start();
    let mut w = watcher(&b, "will/#").await;
    let mut o = persistent("taken0", b.port, 60);
    o.set_last_will(will("will/taken0", "replaced", None));
    let mut first = V5::connect(o).await;
    let _second = V5::connect(persistent("taken0", b.port, 60)).await;
    let _ = first.closed().await;
    let got = w.publishes(1).await.remove(0);
    assert_eq!(text(&got), "replaced", "the old connection closed without DISCONNECT 0x00");
}

#[tokio::test]
async fn shared_membership_of_a_persistent_session_survives_a_restart() {
    let mut b = Broker::start();
    let mut m = V5::connect(persistent("member", b.port, 3600)).await;
    m.subscribe("$share/g/keep/t", QoS::AtLeastOnce).await;
    m.disconnect().await;
    b.restart();
    let mut m = V5::connect(persistent("member", b.port, 3600)).await;
    assert!(m.connack.session_present);
    publish_numbered(&b, "keep/t", 3).await;
    assert_eq!(m.publishes(3).await.iter().map(text).collect::<Vec<_>>(), vec!["0", "1", "2"], "{}", b.log());
}
