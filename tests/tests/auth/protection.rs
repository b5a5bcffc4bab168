//! Bans (client id, username, IP/CIDR with a loopback source address), flapping detection
//! and inbound rate limits, through `axle ban` and real clients.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as V5Code;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::ConnectReturnCode as V3Code;

use super::*;
use common::mqtt::{Closed, V5};

/// `mosquitto_pub` from source address `bind` (MQTT 3.1.1); returns whether it got through.
fn publish_from(bind: &str, host: &str, port: u16, id: &str) -> (bool, String) {
    let out = Command::new("mosquitto_pub")
        .args(["-A", bind, "-h", host, "-p", &port.to_string(), "-i", id, "-q", "1", "-t", "t/x", "-m", "hi"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run mosquitto_pub (is mosquitto-clients installed?): {e}"));
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn banned_client_ids_and_usernames_get_0x8a_or_5_until_the_ban_is_lifted() {
    let site = Site::new();
    let text = ok(site.axle(&["ban", "add", "--client-id", "car666", "--reason", "stolen vehicle"], ""));
    assert!(text.contains("banned client:car666 until removed"), "{text}");
    ok(site.axle(&["ban", "add", "--username", "mallory", "--for", "1h"], ""));
    let list = ok(site.axle(&["ban", "list"], ""));
    assert!(list.contains("client:car666\tpermanent\tstolen vehicle"), "{list}");
    assert!(list.contains("user:mallory\texpires in 3"), "{list}");
    let (mut server, port) = site.start("");
    assert_eq!(v5_connack(v5_opts("car666", port, None, None)).await, V5Code::Banned);
    assert_eq!(v311_connack(v311_opts("car666", port, None, None)).await, V3Code::NotAuthorized);
    assert_eq!(v5_connack(v5_opts("car7", port, Some("mallory"), None)).await, V5Code::Banned);
    assert_eq!(v5_connack(v5_opts("car7", port, Some("alice"), None)).await, V5Code::Success);
    assert!(server.output().contains("banned (client:car666): stolen vehicle"), "{}", server.output());
    server.stop();
    ok(site.axle(&["ban", "del", "--client-id", "car666"], ""));
    assert!(fails(site.axle(&["ban", "del", "--client-id", "car666"], "")).contains("no ban"));
    let (_server, port) = site.start("");
    assert_eq!(v5_connack(v5_opts("car666", port, None, None)).await, V5Code::Success);
    assert_eq!(v5_connack(v5_opts("car7", port, Some("mallory"), None)).await, V5Code::Banned);
}

#[test]
fn ip_bans_match_cidr_networks_by_source_address() {
    let site = Site::new();
    ok(site.axle(&["ban", "add", "--ip", "127.0.0.2/31"], "")); // 127.0.0.2 and .3
    let (server, port) = site.start("");
    for (bind, through) in [("127.0.0.2", false), ("127.0.0.3", false), ("127.0.0.4", true), ("127.0.0.1", true)] {
        let (ok, err) = publish_from(bind, "127.0.0.1", port, &format!("from-{bind}"));
        assert_eq!(ok, through, "from {bind}: {err}");
    }
    assert!(server.output().contains("banned (ip:127.0.0.2/31)"), "{}", server.output());
}

#[test]
fn ip_bans_match_ipv6_networks() {
    let site = Site::new();
    ok(site.axle(&["ban", "add", "--ip", "::1/128"], ""));
    let (_server, port) = Server::start_ready(&site.data(), &["--mqtt-tcp", "[::1]:0"]).expect("starts on ::1");
    let (through, err) = publish_from("::1", "::1", port, "v6");
    assert!(!through, "::1 is banned: {err}");
}

#[tokio::test]
async fn a_client_id_that_connects_too_often_is_banned_for_a_while_and_the_ban_persists() {
    let site = Site::new();
    let cfg = "[protection.flapping]\nenabled = true\nmax_connects = 3\nwindow_secs = 300\nban_secs = 600\n";
    let (mut server, port) = site.start(cfg);
    for i in 0..2 {
        let c = V5::connect(v5_opts("flappy", port, None, None)).await;
        c.disconnect().await;
        assert_eq!(v5_connack(v5_opts(&format!("steady-{i}"), port, None, None)).await, V5Code::Success);
    }
    assert_eq!(v5_connack(v5_opts("flappy", port, None, None)).await, V5Code::Banned, "third connect in the window");
    assert_eq!(v5_connack(v5_opts("flappy", port, None, None)).await, V5Code::Banned);
    assert_eq!(v5_connack(v5_opts("steady-0", port, None, None)).await, V5Code::Success);
    assert!(server.output().contains("flapping: 3 connects within 300 s"), "{}", server.output());
    server.stop();
    let list = ok(site.axle(&["ban", "list"], ""));
    assert!(list.contains("client:flappy\texpires in 5") && list.contains("flapping"), "{list}");
}

#[tokio::test]
async fn a_client_over_its_message_rate_is_disconnected_with_0x96_when_so_configured() {
    let site = Site::new();
    let cfg = "[protection.rate_limit]\nmessages_per_sec = 1\nmessages_burst = 5\non_exceed = \"disconnect\"\n";
    let (server, port) = site.start(cfg);
    let mut c = V5::connect(v5_opts("chatty", port, None, None)).await;
    for i in 0..50 {
        if c.client.publish("t/chatty", QoS::AtMostOnce, false, format!("m{i}")).await.is_err() {
            break;
        }
    }
    match c.closed().await {
        Closed::ServerDisconnect(code) => assert_eq!(code, 0x96, "Message rate too high"),
        other => panic!("expected DISCONNECT 0x96, got {other:?}\n{}", server.output()),
    }
}

#[tokio::test]
async fn a_throttled_client_loses_nothing() {
    let site = Site::new();
    let cfg = "[protection.rate_limit]\nmessages_per_sec = 40\nmessages_burst = 5\nbytes_per_sec = 4000\n";
    let (server, port) = site.start(cfg);
    let mut sub = V5::connect(v5_opts("sink", port, None, None)).await;
    sub.subscribe("t/fast", QoS::AtLeastOnce).await;
    let p = V5::connect(v5_opts("fast", port, None, None)).await;
    for i in 0..60 {
        p.client.publish("t/fast", QoS::AtLeastOnce, false, format!("m{i:03}")).await.expect("queued");
    }
    let got: Vec<String> = sub.publishes(60).await.iter().map(common::mqtt::text).collect();
    let want: Vec<String> = (0..60).map(|i| format!("m{i:03}")).collect();
    assert_eq!(got, want, "every message, in order");
    assert!(server.output().contains("throttled"), "{}", server.output());
    assert!(sub.publishes_within(Duration::from_millis(200)).await.is_empty());
}
