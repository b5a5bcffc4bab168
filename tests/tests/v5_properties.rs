//! MQTT 5 features with rumqttc: properties passed through to subscribers, subscription
//! identifiers, no-local, message expiry, topic aliases, assigned client id, server keep
//! alive, and `$` topics.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::mqtt::{opts, persistent, text, topic, V5};
use common::Broker;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, PublishProperties, SubscribeProperties};
use rumqttc::v5::mqttbytes::QoS;

#[tokio::test]
async fn publish_properties_are_passed_through_to_subscribers() {
    let b = Broker::start();
    let mut s = V5::connect(opts("s", b.port)).await;
    s.subscribe("props/t", QoS::AtLeastOnce).await;
    let p = V5::connect(opts("p", b.port)).await;
    let props = PublishProperties {
        payload_format_indicator: Some(1),
        response_topic: Some("props/reply".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
        user_properties: vec![("k1".into(), "v1".into()), ("k2".into(), "v2".into()), ("k1".into(), "again".into())],
        content_type: Some("application/json".into()),
        ..Default::default()
    };
    p.client.publish_with_properties("props/t", QoS::AtLeastOnce, false, "{}", props).await.unwrap();
    let got = s.publishes(1).await.remove(0);
    let gp = got.properties.expect("properties on the delivered PUBLISH");
    assert_eq!(gp.payload_format_indicator, Some(1));
    assert_eq!(gp.content_type.as_deref(), Some("application/json"));
    assert_eq!(gp.response_topic.as_deref(), Some("props/reply"));
    assert_eq!(gp.correlation_data.as_deref(), Some(&b"\x00\x01corr"[..]));
    let want: Vec<(String, String)> =
        vec![("k1".into(), "v1".into()), ("k2".into(), "v2".into()), ("k1".into(), "again".into())];
    assert_eq!(gp.user_properties, want, "user properties in order, duplicates kept");
}

#[tokio::test]
async fn request_response_round_trip_with_response_topic_and_correlation_data() {
    let b = Broker::start();
    let mut responder = V5::connect(opts("responder", b.port)).await;
    responder.subscribe("svc/req", QoS::AtLeastOnce).await;
    let mut requester = V5::connect(opts("requester", b.port)).await;
    requester.subscribe("svc/resp/requester", QoS::AtLeastOnce).await;
    let props = PublishProperties {
        response_topic: Some("svc/resp/requester".into()),
        correlation_data: Some(Bytes::from_static(b"req-42")),
        ..Default::default()
    };
    requester.client.publish_with_properties("svc/req", QoS::AtLeastOnce, false, "ping", props).await.unwrap();
    let req = responder.publishes(1).await.remove(0);
    let rp = req.properties.expect("request properties");
    let reply = PublishProperties { correlation_data: rp.correlation_data.clone(), ..Default::default() };
    let rt = rp.response_topic.expect("response topic");
    responder.client.publish_with_properties(rt, QoS::AtLeastOnce, false, "pong", reply).await.unwrap();
    let resp = requester.publishes(1).await.remove(0);
    assert_eq!(text(&resp), "pong");
    assert_eq!(resp.properties.and_then(|p| p.correlation_data).as_deref(), Some(&b"req-42"[..]));
}

#[tokio::test]
async fn subscription_identifiers_are_sent_with_matching_messages() {
    let b = Broker::start();
    let mut s = V5::connect(opts("s", b.port)).await;
    for (filter, id) in [("sid/+", 7), ("sid/#", 300)] {
        let props = SubscribeProperties { id: Some(id), user_properties: vec![] };
        s.client.subscribe_with_properties(filter, QoS::AtLeastOnce, props).await.unwrap();
        s.wait_for("SUBACK", |p| matches!(p, Packet::SubAck(_))).await;
    }
    let mut p = V5::connect(opts("p", b.port)).await;
    p.publish_acked("sid/a", QoS::AtLeastOnce, false, "x").await;
    p.publish_acked("sid/a/b", QoS::AtLeastOnce, false, "y").await;
    let got = s.publishes(2).await;
    assert!(s.publishes_within(Duration::from_millis(500)).await.is_empty(), "one copy per message");
    let mut ids0 = got[0].properties.clone().unwrap_or_default().subscription_identifiers;
    ids0.sort();
    assert_eq!(ids0, vec![7, 300], "both matching subscriptions' identifiers");
    assert_eq!(got[1].properties.clone().unwrap_or_default().subscription_identifiers, vec![300]);
}

#[tokio::test]
async fn no_local_subscription_does_not_receive_its_own_messages() {
    let b = Broker::start();
    let mut me = V5::connect(opts("me", b.port)).await;
    let mut f = Filter::new("nl/t", QoS::AtLeastOnce);
    f.nolocal = true;
    me.client.subscribe_many(vec![f]).await.unwrap();
    me.wait_for("SUBACK", |p| matches!(p, Packet::SubAck(_))).await;
    let mut other = V5::connect(opts("other", b.port)).await;
    other.subscribe("nl/t", QoS::AtLeastOnce).await;
    me.publish_acked("nl/t", QoS::AtLeastOnce, false, "mine").await;
    let mut p = V5::connect(opts("p", b.port)).await;
    p.publish_acked("nl/t", QoS::AtLeastOnce, false, "theirs").await;
    assert_eq!(other.publishes(2).await.iter().map(text).collect::<Vec<_>>(), vec!["mine", "theirs"]);
    let got = me.publishes(1).await;
    assert_eq!(text(&got[0]), "theirs");
    assert!(me.publishes_within(Duration::from_millis(500)).await.is_empty(), "own message not echoed");
}

#[tokio::test]
async fn expired_message_is_not_delivered_to_a_returning_session() {
    let b = Broker::start();
    let mut s = V5::connect(persistent("exp", b.port, 3600)).await;
    s.subscribe("me/t", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let mut p = V5::connect(opts("p", b.port)).await;
    for (payload, expiry) in [("short", 1u32), ("long", 3600)] {
        let props = PublishProperties { message_expiry_interval: Some(expiry), ..Default::default() };
        p.client.publish_with_properties("me/t", QoS::AtLeastOnce, false, payload, props).await.unwrap();
        p.wait_for("PUBACK", |p| matches!(p, Packet::PubAck(_))).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut s = V5::connect(persistent("exp", b.port, 3600)).await;
    let mut got = s.publishes(1).await;
    got.extend(s.publishes_within(Duration::from_millis(500)).await);
    assert_eq!(got.iter().map(text).collect::<Vec<_>>(), vec!["long"], "the 1 s message expired");
    let left = got[0].properties.clone().and_then(|p| p.message_expiry_interval).expect("expiry forwarded");
    assert!(left > 0 && left < 3600, "remaining lifetime is forwarded, decreased: {left}");
}

#[tokio::test]
async fn expired_retained_message_is_not_sent_on_subscribe() {
    let b = Broker::start();
    let mut p = V5::connect(opts("p", b.port)).await;
    let props = PublishProperties { message_expiry_interval: Some(1), ..Default::default() };
    p.client.publish_with_properties("mer/t", QoS::AtLeastOnce, true, "brief", props).await.unwrap();
    p.wait_for("PUBACK", |p| matches!(p, Packet::PubAck(_))).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut s = V5::connect(opts("s", b.port)).await;
    s.subscribe("mer/t", QoS::AtLeastOnce).await;
    assert!(s.publishes_within(Duration::from_secs(1)).await.is_empty());
}

#[tokio::test]
async fn client_topic_alias_is_resolved_by_the_server() {
    let b = Broker::start();
    let mut s = V5::connect(opts("s", b.port)).await;
    s.subscribe("alias/#", QoS::AtLeastOnce).await;
    let mut p = V5::connect(opts("p", b.port)).await;
    let set = PublishProperties { topic_alias: Some(3), ..Default::default() };
    p.client.publish_with_properties("alias/one", QoS::AtLeastOnce, false, "first", set).await.unwrap();
    p.wait_for("PUBACK", |p| matches!(p, Packet::PubAck(_))).await;
    let use_ = PublishProperties { topic_alias: Some(3), ..Default::default() };
    p.client.publish_with_properties("", QoS::AtLeastOnce, false, "second", use_).await.unwrap();
    p.wait_for("PUBACK", |p| matches!(p, Packet::PubAck(_))).await;
    let got = s.publishes(2).await;
    assert_eq!(
        got.iter().map(|m| (topic(m), text(m))).collect::<Vec<_>>(),
        vec![("alias/one".to_string(), "first".to_string()), ("alias/one".to_string(), "second".to_string())]
    );
}

#[tokio::test]
async fn server_assigns_topic_aliases_when_the_client_allows_them() {
    let b = Broker::start();
    let mut o = opts("s", b.port);
    o.set_topic_alias_max(Some(5));
    let mut s = V5::connect(o).await;
    s.subscribe("sa/t", QoS::AtLeastOnce).await;
    let mut p = V5::connect(opts("p", b.port)).await;
    for i in 0..3 {
        p.publish_acked("sa/t", QoS::AtLeastOnce, false, format!("m{i}")).await;
    }
    let got = s.publishes(3).await;
    for m in &got {
        let alias = m.properties.clone().and_then(|p| p.topic_alias);
        assert!(alias.is_some_and(|a| (1..=5).contains(&a)), "alias within the client's maximum: {m:?}");
        assert_eq!(topic(m), "sa/t", "rumqttc resolves the alias to the topic");
    }
}

#[tokio::test]
async fn server_sends_no_topic_alias_when_the_client_allows_none() {
    let b = Broker::start();
    let mut s = V5::connect(opts("s", b.port)).await;
    s.subscribe("na/t", QoS::AtLeastOnce).await;
    let mut p = V5::connect(opts("p", b.port)).await;
    p.publish_acked("na/t", QoS::AtLeastOnce, false, "a").await;
    p.publish_acked("na/t", QoS::AtLeastOnce, false, "b").await;
    for m in s.publishes(2).await {
        assert_eq!(m.properties.and_then(|p| p.topic_alias), None);
    }
}

#[tokio::test]
async fn empty_client_id_gets_an_assigned_client_identifier() {
    let b = Broker::start();
    let s = V5::connect(opts("", b.port)).await;
    let props = s.connack.properties.clone().expect("CONNACK properties");
    let id = props.assigned_client_identifier.expect("assigned client identifier");
    assert!(!id.is_empty());
    let s2 = V5::connect(opts("", b.port)).await;
    let id2 = s2.connack.properties.clone().and_then(|p| p.assigned_client_identifier).unwrap();
    assert_ne!(id, id2, "each connection gets its own id");
}

#[tokio::test]
async fn keepalive_above_the_maximum_is_capped_with_server_keep_alive() {
    let b = Broker::with_config("[mqtt]\nmax_keepalive = 30\n");
    let mut o = opts("ka", b.port);
    o.set_keep_alive(Duration::from_secs(120));
    let s = V5::connect(o).await;
    assert_eq!(s.connack.properties.clone().and_then(|p| p.server_keep_alive), Some(30));
    let mut o = opts("ka2", b.port);
    o.set_keep_alive(Duration::from_secs(20));
    let s = V5::connect(o).await;
    assert_eq!(s.connack.properties.clone().and_then(|p| p.server_keep_alive), None, "within the maximum");
}

#[tokio::test]
async fn connack_advertises_the_configured_limits() {
    let b = Broker::with_config("[mqtt]\nreceive_maximum = 17\ntopic_alias_maximum = 9\nmax_packet_size = 4096\n");
    let s = V5::connect(opts("lim", b.port)).await;
    let p = s.connack.properties.clone().expect("CONNACK properties");
    assert_eq!(p.receive_max, Some(17));
    assert_eq!(p.topic_alias_max, Some(9));
    assert_eq!(p.max_packet_size, Some(4096));
}

#[tokio::test]
async fn dollar_topics_are_not_matched_by_leading_wildcards() {
    let b = Broker::start();
    let mut s = V5::connect(opts("s", b.port)).await;
    s.subscribe("#", QoS::AtLeastOnce).await;
    s.subscribe("+/x", QoS::AtLeastOnce).await;
    let mut p = common::mqtt::V311::connect("p", b.port, true).await;
    p.publish_acked("$SYS/x", rumqttc::QoS::AtLeastOnce, "dollar").await;
    p.publish_acked("$foo/x", rumqttc::QoS::AtLeastOnce, "dollar").await;
    p.publish_acked("a/x", rumqttc::QoS::AtLeastOnce, "plain").await;
    let mut got = s.publishes(1).await;
    got.extend(s.publishes_within(Duration::from_millis(500)).await);
    assert_eq!(got.iter().map(topic).collect::<Vec<_>>(), vec!["a/x"], "once, and no $ topic");
}
