//! The ACL matrix over the wire, MQTT 5 and 3.1.1: publish, subscribe and both; `%c` and
//! `%u`; first match wins; the default with and without `auth.acl_default`.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, SubscribeReasonCode as Sub5};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::SubscribeReasonCode as Sub3;

use super::*;
use common::mqtt::{V311, V5};

const ACL: &str = "\
allow all          pubsub    v/%c/#
deny  all          subscribe v/+/secret
allow user:fleet   subscribe v/+/telemetry
allow all          publish   u/%u/out
allow user:fleet   subscribe u/+/out
";

fn config(site: &Site, extra: &str) -> String {
    let acl = site.path("acl");
    std::fs::write(&acl, ACL).expect("acl file");
    format!("acl_file = \"{}\"\n{extra}", acl.display())
}

/// (filter, granted?) for a subscriber with client id `car1` and username `fleet`.
const SUBSCRIPTIONS: &[(&str, bool)] = &[
    ("v/car1/#", true),      // %c, pubsub
    ("v/car1/secret", true), // first match: the pubsub rule comes before the deny
    ("v/car2/cmd", false),   // another client's subtree
    ("v/+/secret", false),   // deny before the fleet rule
    ("v/+/telemetry", true), // user:fleet
    ("v/#", false),          // wider than any allow
    ("u/+/out", true),       // user:fleet subscribe
    ("u/fleet/out", true),   // covered by u/+/out
    ("elsewhere", false),    // no rule: deny (a file is configured)
];

/// (publisher client id, username, topic, allowed?), received by the `car1`/`fleet`
/// subscriber on `v/+/telemetry` and `u/+/out`.
const PUBLISHES: &[(&str, &str, &str, bool)] = &[
    ("car2", "driver", "v/car2/telemetry", true), // %c
    ("car2", "driver", "v/car3/telemetry", false),
    ("svc", "bob", "u/bob/out", true), // %u
    ("svc", "bob", "u/alice/out", false),
    ("fleet-2", "fleet", "v/car9/telemetry", false), // fleet may only subscribe there
];

#[tokio::test]
async fn the_acl_matrix_over_mqtt5() {
    let site = Site::new();
    let (_server, port) = site.start(&config(&site, ""));
    // Refusals first, each on its own connection (the client id is the subscriber's own).
    for (filter, _) in SUBSCRIPTIONS.iter().filter(|s| !s.1) {
        let reason = v5_suback(v5_opts("car1", port, Some("fleet"), None), filter).await;
        assert_eq!(reason, Sub5::NotAuthorized, "subscribe {filter}");
    }
    let mut sub = V5::connect(v5_opts("car1", port, Some("fleet"), None)).await;
    for (filter, _) in SUBSCRIPTIONS.iter().filter(|s| s.1) {
        sub.client.subscribe(*filter, QoS::AtLeastOnce).await.expect("queued");
        let Packet::SubAck(s) = sub.wait_for("SUBACK", |p| matches!(p, Packet::SubAck(_))).await else {
            unreachable!()
        };
        assert_eq!(s.return_codes, vec![Sub5::Success(QoS::AtLeastOnce)], "subscribe {filter}");
    }
    for (id, user, topic, allowed) in PUBLISHES {
        let want = if *allowed { PubAckReason::Success } else { PubAckReason::NotAuthorized };
        assert_eq!(
            v5_puback(v5_opts(id, port, Some(user), None), topic, topic).await,
            want,
            "{user} publishes {topic}"
        );
    }
    let mut got: Vec<String> =
        sub.publishes_within(Duration::from_secs(1)).await.iter().map(common::mqtt::text).collect();
    got.sort();
    let mut want: Vec<&str> = PUBLISHES.iter().filter(|p| p.3).map(|p| p.2).collect();
    want.sort();
    assert_eq!(got, want, "exactly the allowed publishes arrive");
}

#[tokio::test]
async fn the_acl_matrix_over_mqtt311() {
    let site = Site::new();
    let (_server, port) = site.start(&config(&site, ""));
    let mut sub = V311::try_connect(v311_opts("car1", port, Some("fleet"), None)).await.expect("connects");
    for (filter, granted) in SUBSCRIPTIONS {
        sub.client.subscribe(*filter, rumqttc::QoS::AtLeastOnce).await.expect("queued");
        let rumqttc::Packet::SubAck(s) = sub.wait_for("SUBACK", |p| matches!(p, rumqttc::Packet::SubAck(_))).await
        else {
            unreachable!()
        };
        let want = if *granted { Sub3::Success(rumqttc::QoS::AtLeastOnce) } else { Sub3::Failure };
        assert_eq!(s.return_codes, vec![want], "subscribe {filter}");
    }
    for (id, user, topic, _) in PUBLISHES {
        let mut p = V311::try_connect(v311_opts(id, port, Some(user), None)).await.expect("connects");
        // 3.1.1 cannot refuse a publish: every one is acknowledged, the refused ones dropped.
        p.publish_acked(topic, rumqttc::QoS::AtLeastOnce, topic.to_string()).await;
        p.disconnect().await;
    }
    let mut got: Vec<String> = sub
        .publishes_within(Duration::from_secs(1))
        .await
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    got.sort();
    let mut want: Vec<&str> = PUBLISHES.iter().filter(|p| p.3).map(|p| p.2).collect();
    want.sort();
    assert_eq!(got, want, "exactly the allowed publishes arrive");
}

#[tokio::test]
async fn acl_default_allow_lets_through_what_no_rule_names_but_deny_rules_still_hold() {
    let site = Site::new();
    let (_server, port) = site.start(&config(&site, "[auth]\nacl_default = \"allow\"\n"));
    let denied = v5_suback(v5_opts("watcher", port, None, None), "v/car1/secret").await;
    assert_eq!(denied, Sub5::NotAuthorized, "deny rules still hold");
    let mut sub = V5::connect(v5_opts("watcher", port, None, None)).await;
    sub.subscribe("elsewhere/#", QoS::AtLeastOnce).await;
    let mut p = V5::connect(v5_opts("car5", port, None, None)).await;
    p.publish_acked("elsewhere/x", QoS::AtLeastOnce, false, "hello").await;
    let got = sub.publishes(1).await;
    assert_eq!(common::mqtt::text(&got[0]), "hello");
}
