//! The broker stopped or killed while clients are connected and messages are in flight:
//! nothing acknowledged to a publisher is lost, what a subscriber acknowledged before a clean
//! stop is not sent again, and what was unacknowledged comes back with DUP.

mod common;

use std::time::Duration;

use common::mqtt::{opts, persistent, text, V5};
use common::Broker;
use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;

const TOTAL: usize = 300;

/// Publishes m0..m{TOTAL-1} at `qos`, one at a time, each acknowledged.
async fn publish_all(port: u16, qos: QoS) {
    let mut p = V5::connect(opts("crash-pub", port)).await;
    for i in 0..TOTAL {
        p.publish_acked("crash/t", qos, false, format!("m{i}")).await;
    }
}

/// A subscriber connected during the crash, acknowledging by hand what the test has read:
/// it reads and acknowledges the first half, makes sure the broker has processed those
/// acknowledgements (a PUBACK for its own later publish), then the broker is killed (`kill`)
/// or stopped; after the restart the same session reconnects and drains the rest.
async fn crash_midstream(kill: bool) -> (Vec<Publish>, Vec<Publish>, Broker) {
    let mut b = Broker::start();
    let mut o = persistent("crash-sub", b.port, 3600);
    o.set_manual_acks(true);
    let mut s = V5::connect(o).await;
    s.subscribe("crash/t", QoS::AtLeastOnce).await;
    // Give the broker time to store the new session once (see
    // a_persistent_session_created_just_before_sigkill_survives_it for what happens otherwise).
    tokio::time::sleep(Duration::from_secs(1)).await;
    publish_all(b.port, QoS::AtLeastOnce).await;
    // Acknowledge while reading: the broker keeps at most 128 unacknowledged in flight.
    let mut before = Vec::new();
    for _ in 0..TOTAL / 2 {
        let p = s.publishes(1).await.remove(0);
        s.client.ack(&p).await.unwrap();
        before.push(p);
    }
    // Packets from one connection are handled in order: this PUBACK means every PUBACK above
    // was processed by the broker.
    s.publish_acked("crash/barrier", QoS::AtLeastOnce, false, "barrier").await;
    if kill {
        b.kill_and_restart();
    } else {
        b.restart();
    }
    drop(s);
    let mut s = V5::connect(persistent("crash-sub", b.port, 3600)).await;
    assert!(s.connack.session_present, "{}", b.log());
    // Read until every payload was seen at least once (bounded by WAIT per message).
    let mut after = Vec::new();
    let mut seen: std::collections::HashSet<String> = before.iter().map(text).collect();
    while seen.len() < TOTAL {
        let p = match s.next_within(common::WAIT).await {
            Some(Ok(rumqttc::v5::mqttbytes::v5::Packet::Publish(p))) => p,
            Some(Ok(_)) => continue,
            other => panic!(
                "after the restart: {} of {TOTAL} distinct messages seen, then {other:?}; received after: {:?}\n{}",
                seen.len(),
                after.iter().map(text).collect::<Vec<_>>(),
                b.log()
            ),
        };
        seen.insert(text(&p));
        after.push(p);
    }
    after.extend(s.publishes_within(Duration::from_secs(1)).await);
    (before, after, b)
}

fn index(p: &Publish) -> usize {
    text(p).trim_start_matches('m').parse().expect("numbered payload")
}

#[tokio::test]
async fn qos1_live_subscriber_loses_nothing_across_sigkill() {
    let (before, after, b) = crash_midstream(true).await;
    let firsts: Vec<usize> = {
        let mut seen = std::collections::HashSet::new();
        before.iter().chain(after.iter()).map(index).filter(|i| seen.insert(*i)).collect()
    };
    assert_eq!(
        firsts,
        (0..TOTAL).collect::<Vec<_>>(),
        "every message at least once, first copies in order\n{}",
        b.log()
    );
    // The session resumes from its last save, made while connected: whatever came after it
    // may have been sent already, and goes out again with DUP.
    let sent: std::collections::HashSet<usize> = before.iter().map(index).collect();
    let plain: Vec<usize> = after.iter().filter(|p| !p.dup && sent.contains(&index(p))).map(index).collect();
    assert!(plain.is_empty(), "delivered before the SIGKILL and again without DUP: {plain:?}\n{}", b.log());
}

#[tokio::test]
async fn qos1_live_subscriber_gets_the_rest_once_across_sigterm() {
    let (_before, after, b) = crash_midstream(false).await;
    // A clean stop keeps the session as it was: the first half was acknowledged (and the
    // broker had processed the acknowledgements), so only the second half comes, once each.
    let got: Vec<usize> = after.iter().map(index).collect();
    assert_eq!(got, (TOTAL / 2..TOTAL).collect::<Vec<_>>(), "the unacknowledged half, once, in order\n{}", b.log());
}

#[tokio::test]
async fn unacked_messages_of_a_connected_client_come_back_with_dup_after_sigterm() {
    let mut b = Broker::start();
    let mut o = persistent("held", b.port, 3600);
    o.set_manual_acks(true);
    let mut s = V5::connect(o).await;
    s.subscribe("held/t", QoS::AtLeastOnce).await;
    let mut p = V5::connect(opts("p", b.port)).await;
    for i in 0..5 {
        p.publish_acked("held/t", QoS::AtLeastOnce, false, format!("m{i}")).await;
    }
    assert_eq!(s.publishes(5).await.len(), 5);
    // Stop the broker while the five are still unacknowledged and the client is connected.
    b.restart();
    drop(s);
    let mut s = V5::connect(persistent("held", b.port, 3600)).await;
    assert!(s.connack.session_present);
    let got = s.publishes(5).await;
    assert_eq!(got.iter().map(text).collect::<Vec<_>>(), vec!["m0", "m1", "m2", "m3", "m4"], "{}", b.log());
    assert!(got.iter().all(|p| p.dup), "in-flight at the stop: redelivered with DUP: {got:?}\n{}", b.log());
}

/// Subscribes `id` persistently, reads and acknowledges `n` messages, idles `idle`, then
/// stops the broker (`kill` = SIGKILL) while still connected; returns what comes after.
async fn ack_then_stop(id: &str, n: usize, idle: Duration, kill: bool) -> (bool, Vec<String>, Broker) {
    let mut b = Broker::start();
    let mut s = V5::connect(persistent(id, b.port, 3600)).await;
    s.subscribe("acked/t", QoS::AtLeastOnce).await;
    let mut p = V5::connect(opts("p", b.port)).await;
    for i in 0..n {
        p.publish_acked("acked/t", QoS::AtLeastOnce, false, format!("m{i}")).await;
    }
    assert_eq!(s.publishes(n).await.len(), n);
    // Our own PUBACKed publish: the broker has processed our acknowledgements before it.
    s.publish_acked("acked/barrier", QoS::AtLeastOnce, false, "b").await;
    tokio::time::sleep(idle).await;
    if kill {
        b.kill_and_restart();
    } else {
        b.restart();
    }
    drop(s);
    let mut s = V5::connect(persistent(id, b.port, 3600)).await;
    let again = s.publishes_within(Duration::from_secs(2)).await.iter().map(text).collect();
    (s.connack.session_present, again, b)
}

#[tokio::test]
async fn acknowledged_messages_are_not_redelivered_after_sigterm_while_connected() {
    let (present, again, b) = ack_then_stop("idle-term", 10, Duration::from_secs(2), false).await;
    assert!(present, "{}", b.log());
    assert!(again.is_empty(), "acknowledged before the clean stop, delivered again: {again:?}\n{}", b.log());
}

#[tokio::test]
async fn a_persistent_session_created_just_before_sigkill_survives_it() {
    // No idle time: the kill comes right after SUBACK and one acknowledged publish.
    let mut b = Broker::start();
    let mut s = V5::connect(persistent("fresh", b.port, 3600)).await;
    // Subscribe a moment after CONNACK, as clients usually do.
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.subscribe("fresh/t", QoS::AtLeastOnce).await;
    let mut p = V5::connect(opts("p", b.port)).await;
    p.publish_acked("fresh/t", QoS::AtLeastOnce, false, "after-suback").await;
    b.kill_and_restart();
    drop(s);
    let mut s = V5::connect(persistent("fresh", b.port, 3600)).await;
    assert!(s.connack.session_present, "SUBACKed persistent session lost by SIGKILL\n{}", b.log());
    let got: Vec<String> = s.publishes_within(Duration::from_secs(2)).await.iter().map(text).collect();
    assert!(got.contains(&"after-suback".to_string()), "acknowledged message lost: {got:?}\n{}", b.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_persistent_session_survives_sigkill() {
    let mut b = Broker::with_config("[log]\nfsync = \"never\"\n");
    let mut s = V5::connect(persistent("busy", b.port, 3600)).await;
    s.subscribe("busy/t", QoS::AtLeastOnce).await;
    // Keep the session busy for a few seconds: a continuous stream, read and acknowledged.
    let port = b.port;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let publisher = tokio::spawn(async move {
        let mut p = V5::connect(opts("busy-pub", port)).await;
        let mut i = 0usize;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            p.publish_acked("busy/t", QoS::AtLeastOnce, false, format!("m{i}")).await;
            i += 1;
        }
        i
    });
    let mut received = 0usize;
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < until {
        received += s.publishes(1).await.len();
    }
    b.server.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let published = publisher.await.unwrap_or(0);
    b.kill_and_restart_after_death();
    drop(s);
    let s = V5::connect(persistent("busy", b.port, 3600)).await;
    assert!(
        s.connack.session_present,
        "persistent session lost by SIGKILL after 3 s of traffic ({received} of {published} received)\n{}",
        b.log()
    );
}
