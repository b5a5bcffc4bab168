//! QoS 0/1/2 in both directions with rumqttc, the effective QoS, packet ids and the client's
//! Receive Maximum, and a slow subscriber that falls behind its in-memory bound.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::mqtt::{opts, persistent, text, V311, V5};
use common::Broker;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;

async fn roundtrip(pub_qos: QoS, sub_qos: QoS) -> Vec<rumqttc::v5::mqttbytes::v5::Publish> {
    let b = Broker::start();
    let mut s = V5::connect(opts("sub", b.port)).await;
    s.subscribe("q/t", sub_qos).await;
    let mut p = V5::connect(opts("pub", b.port)).await;
    for i in 0..5 {
        p.publish_acked("q/t", pub_qos, false, format!("m{i}")).await;
    }
    let got = s.publishes(5).await;
    assert_eq!(got.iter().map(text).collect::<Vec<_>>(), vec!["m0", "m1", "m2", "m3", "m4"], "{}", b.log());
    assert!(s.publishes_within(Duration::from_millis(500)).await.is_empty(), "no duplicates");
    got
}

#[tokio::test]
async fn qos0_publish_reaches_a_qos0_subscriber() {
    let got = roundtrip(QoS::AtMostOnce, QoS::AtMostOnce).await;
    assert!(got.iter().all(|p| p.qos == QoS::AtMostOnce));
}

#[tokio::test]
async fn qos1_publish_is_acked_and_delivered_at_qos1() {
    let got = roundtrip(QoS::AtLeastOnce, QoS::AtLeastOnce).await;
    assert!(got.iter().all(|p| p.qos == QoS::AtLeastOnce && p.pkid != 0), "{got:?}");
}

#[tokio::test]
async fn qos2_publish_completes_and_is_delivered_exactly_once_at_qos2() {
    let got = roundtrip(QoS::ExactlyOnce, QoS::ExactlyOnce).await;
    assert!(got.iter().all(|p| p.qos == QoS::ExactlyOnce && p.pkid != 0), "{got:?}");
}

#[tokio::test]
async fn delivery_qos_is_the_lower_of_publish_and_subscription() {
    let got = roundtrip(QoS::ExactlyOnce, QoS::AtLeastOnce).await;
    assert!(got.iter().all(|p| p.qos == QoS::AtLeastOnce), "QoS 2 publish, QoS 1 subscription: {got:?}");
    let got = roundtrip(QoS::AtMostOnce, QoS::ExactlyOnce).await;
    assert!(got.iter().all(|p| p.qos == QoS::AtMostOnce), "QoS 0 publish, QoS 2 subscription: {got:?}");
}

#[tokio::test]
async fn v311_qos1_and_qos2_roundtrip() {
    let b = Broker::start();
    let mut s = V311::connect("s311", b.port, true).await;
    s.subscribe("v3/q1", rumqttc::QoS::AtLeastOnce).await;
    s.subscribe("v3/q2", rumqttc::QoS::ExactlyOnce).await;
    let mut p = V311::connect("p311", b.port, true).await;
    p.publish_acked("v3/q1", rumqttc::QoS::AtLeastOnce, "one").await;
    p.publish_acked("v3/q2", rumqttc::QoS::ExactlyOnce, "two").await;
    let got = s.publishes(2).await;
    assert_eq!((got[0].qos, &got[0].payload[..]), (rumqttc::QoS::AtLeastOnce, &b"one"[..]));
    assert_eq!((got[1].qos, &got[1].payload[..]), (rumqttc::QoS::ExactlyOnce, &b"two"[..]));
    assert!(s.publishes_within(Duration::from_millis(500)).await.is_empty());
}

#[tokio::test]
async fn server_respects_the_clients_receive_maximum() {
    let b = Broker::start();
    let mut o = opts("rm", b.port);
    o.set_manual_acks(true);
    o.set_receive_maximum(Some(5));
    let mut s = V5::connect(o).await;
    s.subscribe("rm/t", QoS::AtLeastOnce).await;
    let mut p = V5::connect(opts("rm-pub", b.port)).await;
    for i in 0..20 {
        p.publish_acked("rm/t", QoS::AtLeastOnce, false, format!("m{i}")).await;
    }
    let first = s.publishes(5).await;
    let ids: HashSet<u16> = first.iter().map(|p| p.pkid).collect();
    assert_eq!(ids.len(), 5, "distinct packet ids for messages in flight: {first:?}");
    assert!(!ids.contains(&0));
    let extra = s.publishes_within(Duration::from_secs(1)).await;
    assert!(extra.is_empty(), "more than Receive Maximum (5) unacknowledged: {} extra", extra.len());
    // Acknowledge and the rest flows, still never more than 5 at a time.
    let mut all = first;
    let mut next = 0;
    while all.len() < 20 {
        while next < all.len() {
            s.client.ack(&all[next]).await.unwrap();
            next += 1;
        }
        all.extend(s.publishes(1).await);
    }
    let payloads: Vec<String> = all.iter().map(text).collect();
    assert_eq!(payloads, (0..20).map(|i| format!("m{i}")).collect::<Vec<_>>());
}

/// Publishes `n` messages at `qos` on `topic` as fast as the client pipelines them and waits
/// for every acknowledgement.
async fn flood(port: u16, topic: &str, qos: QoS, n: usize) {
    let mut p = V5::connect(opts("flood", port)).await;
    let client = p.client.clone();
    let topic = topic.to_string();
    let sender = tokio::spawn(async move {
        for i in 0..n {
            client.publish(topic.as_str(), qos, false, format!("{i}:{PAD}")).await.unwrap();
        }
    });
    if qos == QoS::AtLeastOnce {
        let mut acked = 0;
        while acked < n {
            p.wait_for("PUBACK", |p| matches!(p, Packet::PubAck(_))).await;
            acked += 1;
        }
    }
    sender.await.unwrap();
    // A QoS 1 marker orders after every QoS 0 publish on this connection.
    p.publish_acked("flood/done", QoS::AtLeastOnce, false, "done").await;
    p.disconnect().await;
}

/// 1 KiB of padding per message, so 20k messages (20 MB) are far more than socket buffers.
const PAD: &str = concat!(
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
);

/// Missing runs in `seen` (which should be 0, 1, 2, ...), summarised.
fn gaps(seen: &[usize]) -> String {
    let mut runs = Vec::new();
    let mut expect = 0;
    for &v in seen {
        if v > expect {
            runs.push(format!("{expect}..{v}"));
        }
        expect = expect.max(v + 1);
    }
    format!("{} missing runs: {:?}", runs.len(), runs.iter().take(10).collect::<Vec<_>>())
}

/// A subscriber that reads slowly (its client buffers only 64 packets, the test pauses every
/// 500): with 20 MB to deliver it falls behind the broker's live bound (4096 queued
/// deliveries) and must get everything from the log.
async fn slow_subscriber_gets_everything(sub_qos: QoS, pub_qos: QoS) {
    const TOTAL: usize = 20_000;
    let b = Broker::with_config("[log]\nfsync = \"never\"\n");
    let mut s = V5::try_connect_buffered(persistent("slow", b.port, 3600), 64).await.unwrap();
    s.subscribe("slow/t", sub_qos).await;
    let port = b.port;
    let publisher = tokio::spawn(async move { flood(port, "slow/t", pub_qos, TOTAL).await });
    let mut seen = Vec::with_capacity(TOTAL);
    while seen.len() < TOTAL {
        let p = match s.next_within(common::WAIT).await {
            Some(Ok(Packet::Publish(p))) => p,
            Some(Ok(_)) => continue,
            other => panic!(
                "stalled after {} of {TOTAL} messages (last {:?}, {}): {other:?}\n{}",
                seen.len(),
                seen.last(),
                gaps(&seen),
                b.log()
            ),
        };
        let t = text(&p);
        seen.push(t.split(':').next().and_then(|n| n.parse::<usize>().ok()).expect("numbered payload"));
        if seen.len() % 500 == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    publisher.await.unwrap();
    let extra = s.publishes_within(Duration::from_secs(1)).await;
    assert!(extra.is_empty(), "duplicates after the last message: {} extra", extra.len());
    let first_bad = seen.iter().enumerate().find(|(i, v)| *i != **v);
    assert!(first_bad.is_none(), "lost, duplicated or reordered at position {first_bad:?}\n{}", b.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_qos1_subscriber_behind_the_live_bound_gets_every_message_once_in_order() {
    slow_subscriber_gets_everything(QoS::AtLeastOnce, QoS::AtLeastOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_qos0_subscriber_behind_the_live_bound_gets_every_message_once_in_order() {
    slow_subscriber_gets_everything(QoS::AtMostOnce, QoS::AtLeastOnce).await;
}

/// One write carrying 300 PUBLISHes (QoS 1 with a QoS 0 every tenth, runs on one topic and
/// runs that change topic, and so partition, at every message, a PINGREQ in the middle): the
/// broker gathers them into log batches. Every QoS 1 message is acknowledged once, in the
/// order sent, and every message reaches the subscriber once, in order per topic.
#[tokio::test]
async fn publishes_in_one_write_are_acknowledged_and_delivered_in_order() {
    let b = Broker::start();
    let mut s = V5::connect(opts("burst-sub", b.port)).await;
    s.subscribe("burst/#", QoS::AtLeastOnce).await;
    let topics: Vec<String> = (0..8).map(|t| format!("burst/t{t}")).collect();
    let mut sent: Vec<(String, String)> = Vec::new();
    let mut bytes = Vec::new();
    let mut acked_ids = Vec::new();
    for i in 0..300u16 {
        let topic = match i {
            0..100 => topics[0].clone(),
            100..200 => topics[usize::from(i) % topics.len()].clone(),
            _ => topics[1].clone(),
        };
        let payload = format!("m{i}");
        if i == 150 {
            bytes.extend_from_slice(&common::raw::packet(0xC0, &[])); // PINGREQ
        }
        if i % 10 == 9 {
            bytes.extend_from_slice(&common::raw::publish(5, &topic, 0, 0, payload.as_bytes()));
        } else {
            let id = i + 1;
            bytes.extend_from_slice(&common::raw::publish(5, &topic, 1, id, payload.as_bytes()));
            acked_ids.push(id);
        }
        sent.push((topic, payload));
    }
    let port = b.port;
    let acks = tokio::task::spawn_blocking(move || {
        let mut c = common::raw::Raw::mqtt(port, 5, "burst-pub", 60);
        c.send(&bytes);
        let mut acks = Vec::new();
        let mut pings = 0;
        while acks.len() < 270 {
            let Some(p) = c.read_packet(common::WAIT) else { break };
            match p.kind() {
                4 => acks.push(u16::from_be_bytes([p.body[0], p.body[1]])),
                13 => pings += 1,
                k => panic!("unexpected packet type {k}"),
            }
        }
        (acks, pings)
    })
    .await
    .unwrap();
    assert_eq!(acks.1, 1, "one PINGRESP");
    assert_eq!(acks.0, acked_ids, "every QoS 1 PUBLISH acknowledged once, in the order sent\n{}", b.log());
    let got = s.publishes(300).await;
    assert!(s.publishes_within(Duration::from_millis(500)).await.is_empty(), "no duplicates");
    for t in &topics {
        let want: Vec<&str> = sent.iter().filter(|(topic, _)| topic == t).map(|(_, p)| p.as_str()).collect();
        let have: Vec<String> = got.iter().filter(|p| p.topic == t.as_bytes()).map(text).collect();
        assert_eq!(have, want, "{t}: every message once, in order");
    }
}
