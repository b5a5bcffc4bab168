//! Persistent sessions with rumqttc: clean start and session present, messages kept while the
//! client is away (across SIGTERM and SIGKILL restarts), DUP redelivery of what was in
//! flight, session expiry, and takeover.

mod common;

use std::time::Duration;

use common::mqtt::{opts, persistent, text, Closed, V311, V5};
use common::Broker;
use rumqttc::v5::mqttbytes::QoS;

const N: usize = 50;

/// Subscribes `id` persistently to `topic` at `qos` and disconnects normally.
async fn park_subscriber(b: &Broker, id: &str, topic: &str, qos: QoS) {
    let mut s = V5::connect(persistent(id, b.port, 3600)).await;
    s.subscribe(topic, qos).await;
    s.disconnect().await;
}

async fn publish_n(b: &Broker, topic: &str, qos: QoS, n: usize) {
    let mut p = V5::connect(opts("publisher", b.port)).await;
    for i in 0..n {
        p.publish_acked(topic, qos, false, format!("m{i}")).await;
    }
    p.disconnect().await;
}

/// Reconnects `id`, checks session present, and that exactly messages m0..m{n-1} arrive, in
/// order, and nothing more.
async fn expect_all_once(b: &Broker, id: &str, n: usize) {
    let mut s = V5::connect(persistent(id, b.port, 3600)).await;
    assert!(s.connack.session_present, "session present must be true after reconnect\n{}", b.log());
    let got = s.publishes(n).await;
    let payloads: Vec<String> = got.iter().map(text).collect();
    let want: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
    assert_eq!(payloads, want, "every message exactly once, in order\n{}", b.log());
    let extra = s.publishes_within(Duration::from_secs(1)).await;
    assert!(extra.is_empty(), "duplicates after the last message: {:?}", extra.iter().map(text).collect::<Vec<_>>());
    s.disconnect().await;
}

#[tokio::test]
async fn session_present_is_false_first_and_true_when_resuming() {
    let b = Broker::start();
    let s = V5::connect(persistent("sp", b.port, 3600)).await;
    assert!(!s.connack.session_present, "a brand new session is not present");
    s.disconnect().await;
    let s = V5::connect(persistent("sp", b.port, 3600)).await;
    assert!(s.connack.session_present, "the stored session is present on reconnect");
    s.disconnect().await;
}

#[tokio::test]
async fn clean_start_discards_the_stored_session_and_its_messages() {
    let b = Broker::start();
    park_subscriber(&b, "cs", "cs/t", QoS::AtLeastOnce).await;
    publish_n(&b, "cs/t", QoS::AtLeastOnce, 3).await;
    let mut o = opts("cs", b.port);
    o.set_clean_start(true);
    let mut s = V5::connect(o).await;
    assert!(!s.connack.session_present, "clean start never resumes a session");
    let got = s.publishes_within(Duration::from_secs(1)).await;
    assert!(got.is_empty(), "a clean session receives nothing stored: {got:?}");
}

#[tokio::test]
async fn qos1_messages_published_while_offline_are_delivered_on_reconnect() {
    let b = Broker::start();
    park_subscriber(&b, "off1", "off/1", QoS::AtLeastOnce).await;
    publish_n(&b, "off/1", QoS::AtLeastOnce, N).await;
    expect_all_once(&b, "off1", N).await;
}

#[tokio::test]
async fn qos1_messages_published_while_offline_are_delivered_after_sigterm_restart() {
    let mut b = Broker::start();
    park_subscriber(&b, "restart1", "rs/1", QoS::AtLeastOnce).await;
    publish_n(&b, "rs/1", QoS::AtLeastOnce, N).await;
    b.restart();
    expect_all_once(&b, "restart1", N).await;
}

#[tokio::test]
async fn qos1_messages_published_while_offline_are_delivered_after_sigkill_restart() {
    let mut b = Broker::start();
    park_subscriber(&b, "kill1", "kl/1", QoS::AtLeastOnce).await;
    publish_n(&b, "kl/1", QoS::AtLeastOnce, N).await;
    b.kill_and_restart();
    expect_all_once(&b, "kill1", N).await;
}

#[tokio::test]
async fn qos2_messages_published_while_offline_are_delivered_after_sigkill_restart() {
    let mut b = Broker::start();
    park_subscriber(&b, "kill2", "kl/2", QoS::ExactlyOnce).await;
    publish_n(&b, "kl/2", QoS::ExactlyOnce, N).await;
    b.kill_and_restart();
    let mut s = V5::connect(persistent("kill2", b.port, 3600)).await;
    assert!(s.connack.session_present, "{}", b.log());
    let got = s.publishes(N).await;
    assert!(got.iter().all(|p| p.qos == QoS::ExactlyOnce), "delivered at the subscription's QoS 2");
    let payloads: Vec<String> = got.iter().map(text).collect();
    assert_eq!(payloads, (0..N).map(|i| format!("m{i}")).collect::<Vec<_>>());
    assert!(s.publishes_within(Duration::from_secs(1)).await.is_empty(), "no duplicates");
}

#[tokio::test]
async fn v311_persistent_session_survives_sigkill_restart() {
    let mut b = Broker::start();
    let mut s = V311::connect("v311kill", b.port, false).await;
    s.subscribe("v3/k", rumqttc::QoS::AtLeastOnce).await;
    s.disconnect().await;
    let mut p = V311::connect("v311pub", b.port, true).await;
    for i in 0..N {
        p.publish_acked("v3/k", rumqttc::QoS::AtLeastOnce, format!("m{i}")).await;
    }
    p.disconnect().await;
    b.kill_and_restart();
    let mut s = V311::connect("v311kill", b.port, false).await;
    assert!(s.session_present, "3.1.1 clean session 0 resumes the session\n{}", b.log());
    let got = s.publishes(N).await;
    let payloads: Vec<String> = got.iter().map(|p| String::from_utf8_lossy(&p.payload).into_owned()).collect();
    assert_eq!(payloads, (0..N).map(|i| format!("m{i}")).collect::<Vec<_>>(), "{}", b.log());
    assert!(s.publishes_within(Duration::from_secs(1)).await.is_empty(), "no duplicates");
}

/// Receives `n` messages without acknowledging them, then drops the connection.
async fn receive_without_acking(b: &Broker, id: &str, topic: &str, n: usize) {
    let mut o = persistent(id, b.port, 3600);
    o.set_manual_acks(true);
    let mut s = V5::connect(o).await;
    s.subscribe(topic, QoS::AtLeastOnce).await;
    publish_n(b, topic, QoS::AtLeastOnce, n).await;
    let got = s.publishes(n).await;
    assert!(got.iter().all(|p| !p.dup), "first deliveries are not DUP");
    s.drop_connection().await;
}

#[tokio::test]
async fn unacked_qos1_messages_are_redelivered_with_dup_on_reconnect() {
    let b = Broker::start();
    receive_without_acking(&b, "dup1", "dup/1", 5).await;
    let mut s = V5::connect(persistent("dup1", b.port, 3600)).await;
    assert!(s.connack.session_present);
    let got = s.publishes(5).await;
    assert_eq!(got.iter().map(text).collect::<Vec<_>>(), (0..5).map(|i| format!("m{i}")).collect::<Vec<_>>());
    assert!(got.iter().all(|p| p.dup), "redelivered in-flight messages carry DUP: {got:?}");
    assert!(s.publishes_within(Duration::from_secs(1)).await.is_empty(), "acked now: nothing more");
}

#[tokio::test]
async fn unacked_qos1_messages_are_redelivered_with_dup_after_sigkill_restart() {
    let mut b = Broker::start();
    receive_without_acking(&b, "dupk", "dup/k", 5).await;
    // Kill only once the broker has seen the connection end and saved the session (it logs
    // the disconnect after saving); a kill before that may lose the record of what was sent.
    assert!(
        b.server.wait_for_output("client disconnected client_id=dupk", common::WAIT),
        "the broker noticed the dropped connection\n{}",
        b.log()
    );
    b.kill_and_restart();
    let mut s = V5::connect(persistent("dupk", b.port, 3600)).await;
    assert!(s.connack.session_present, "{}", b.log());
    let got = s.publishes(5).await;
    assert_eq!(got.iter().map(text).collect::<Vec<_>>(), (0..5).map(|i| format!("m{i}")).collect::<Vec<_>>());
    assert!(got.iter().all(|p| p.dup), "redelivered in-flight messages carry DUP: {got:?}\n{}", b.log());
}

#[tokio::test]
async fn acknowledged_messages_are_not_redelivered_after_restart() {
    let mut b = Broker::start();
    let mut s = V5::connect(persistent("acked", b.port, 3600)).await;
    s.subscribe("ack/t", QoS::AtLeastOnce).await;
    publish_n(&b, "ack/t", QoS::AtLeastOnce, 10).await;
    assert_eq!(s.publishes(10).await.len(), 10);
    // rumqttc acknowledges on receipt; disconnecting normally flushes the acks first.
    s.disconnect().await;
    b.restart();
    let mut s = V5::connect(persistent("acked", b.port, 3600)).await;
    assert!(s.connack.session_present);
    let again = s.publishes_within(Duration::from_secs(2)).await;
    assert!(
        again.is_empty(),
        "acknowledged messages came again: {:?}\n{}",
        again.iter().map(text).collect::<Vec<_>>(),
        b.log()
    );
}

#[tokio::test]
async fn session_expires_after_its_expiry_interval() {
    let b = Broker::start();
    let mut s = V5::connect(persistent("exp", b.port, 1)).await;
    s.subscribe("exp/t", QoS::AtLeastOnce).await;
    s.disconnect().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    publish_n(&b, "exp/t", QoS::AtLeastOnce, 2).await;
    let mut s = V5::connect(persistent("exp", b.port, 3600)).await;
    assert!(!s.connack.session_present, "the session expired 1 s after disconnect\n{}", b.log());
    assert!(s.publishes_within(Duration::from_secs(1)).await.is_empty(), "an expired session keeps nothing");
}

#[tokio::test]
async fn session_expiry_zero_ends_the_session_at_disconnect() {
    let b = Broker::start();
    let mut s = V5::connect(persistent("exp0", b.port, 0)).await;
    s.subscribe("exp0/t", QoS::AtLeastOnce).await;
    s.disconnect().await;
    publish_n(&b, "exp0/t", QoS::AtLeastOnce, 2).await;
    let mut s = V5::connect(persistent("exp0", b.port, 3600)).await;
    assert!(!s.connack.session_present, "expiry 0: the session ended with the connection");
    assert!(s.publishes_within(Duration::from_secs(1)).await.is_empty());
}

#[tokio::test]
async fn connack_returns_the_granted_session_expiry() {
    let b = Broker::with_config("[mqtt]\nmax_session_expiry = 60\n");
    let s = V5::connect(persistent("grant", b.port, 100_000)).await;
    let props = s.connack.properties.clone().expect("CONNACK properties");
    assert_eq!(props.session_expiry_interval, Some(60), "capped at max_session_expiry");
}

#[tokio::test]
async fn session_takeover_disconnects_the_old_connection_with_0x8e() {
    let b = Broker::start();
    let mut first = V5::connect(persistent("twin", b.port, 3600)).await;
    first.subscribe("twin/t", QoS::AtLeastOnce).await;
    let second = V5::connect(persistent("twin", b.port, 3600)).await;
    assert!(second.connack.session_present, "the taken-over session carries on");
    match first.closed().await {
        Closed::ServerDisconnect(code) => assert_eq!(code, 0x8E, "Session taken over"),
        other => panic!("expected DISCONNECT 0x8E, got {other:?}\n{}", b.log()),
    }
}

#[tokio::test]
async fn subscriptions_resume_after_takeover() {
    let b = Broker::start();
    let mut first = V5::connect(persistent("twin2", b.port, 3600)).await;
    first.subscribe("twin2/t", QoS::AtLeastOnce).await;
    let mut second = V5::connect(persistent("twin2", b.port, 3600)).await;
    let _ = first.closed().await;
    publish_n(&b, "twin2/t", QoS::AtLeastOnce, 3).await;
    let got = second.publishes(3).await;
    assert_eq!(got.iter().map(text).collect::<Vec<_>>(), vec!["m0", "m1", "m2"]);
}

#[tokio::test]
async fn subscription_options_and_identifiers_survive_a_restart() {
    use rumqttc::v5::mqttbytes::v5::{Filter, SubscribeProperties};
    let mut b = Broker::start();
    let mut s = V5::connect(persistent("opts", b.port, 3600)).await;
    let mut f = Filter::new("so/t", QoS::AtLeastOnce);
    f.nolocal = true;
    let props = SubscribeProperties { id: Some(42), user_properties: vec![] };
    s.client.subscribe_many_with_properties(vec![f], props).await.unwrap();
    s.wait_for("SUBACK", |p| matches!(p, rumqttc::v5::mqttbytes::v5::Packet::SubAck(_))).await;
    s.disconnect().await;
    b.restart();
    let mut s = V5::connect(persistent("opts", b.port, 3600)).await;
    assert!(s.connack.session_present);
    s.publish_acked("so/t", QoS::AtLeastOnce, false, "own").await;
    let mut p = V5::connect(opts("p", b.port)).await;
    p.publish_acked("so/t", QoS::AtLeastOnce, false, "other").await;
    let got = s.publishes(1).await.remove(0);
    assert_eq!(text(&got), "other", "no-local kept across the restart");
    assert_eq!(got.properties.map(|p| p.subscription_identifiers).unwrap_or_default(), vec![42], "identifier kept");
    assert!(s.publishes_within(Duration::from_millis(500)).await.is_empty());
}

#[tokio::test]
async fn session_expiry_counts_while_the_broker_is_down() {
    let mut b = Broker::start();
    let mut s = V5::connect(persistent("down", b.port, 2)).await;
    s.subscribe("down/t", QoS::AtLeastOnce).await;
    s.disconnect().await;
    b.server.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    b.restart_stopped();
    let s = V5::connect(persistent("down", b.port, 3600)).await;
    assert!(!s.connack.session_present, "2 s expiry passed while the broker was down\n{}", b.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_offline_messages_arrive_once_in_order_after_sigkill() {
    const MANY: usize = 3000;
    let mut b = Broker::start();
    park_subscriber(&b, "many", "many/t", QoS::AtLeastOnce).await;
    let mut p = V5::connect(opts("many-pub", b.port)).await;
    let client = p.client.clone();
    let sender = tokio::spawn(async move {
        for i in 0..MANY {
            client.publish("many/t", QoS::AtLeastOnce, false, format!("m{i}")).await.unwrap();
        }
    });
    for _ in 0..MANY {
        p.wait_for("PUBACK", |p| matches!(p, rumqttc::v5::mqttbytes::v5::Packet::PubAck(_))).await;
    }
    sender.await.unwrap();
    b.kill_and_restart();
    // More than the broker's in-flight window (128): delivery continues from the log as
    // acknowledgements free the window.
    expect_all_once(&b, "many", MANY).await;
}
