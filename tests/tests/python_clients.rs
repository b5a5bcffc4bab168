//! paho-mqtt 2.x clients (MQTT 5 and 3.1.1) against the real broker. The scripts live in
//! tests/python/ and print JSON; the interpreter is `AXLE_TEST_PYTHON` (scripts/test sets it to
//! its venv) or `python3`. A missing paho fails these tests; it never skips them.

mod common;

use common::tools::run_python;
use common::Broker;
use serde_json::Value;

fn features(b: &Broker, scenario: &str, extra: &[&str]) -> Value {
    let port = b.port.to_string();
    let mut args = vec![scenario, "--port", &port];
    args.extend_from_slice(extra);
    run_python("features.py", &args)
}

fn session(b: &Broker, phase: &str, id: &str, extra: &[&str]) -> Value {
    let port = b.port.to_string();
    let mut args = vec![phase, "--port", &port, "--id", id];
    args.extend_from_slice(extra);
    run_python("session.py", &args)
}

fn payloads(v: &Value) -> Vec<String> {
    v.as_array().expect("message list").iter().map(|m| m["payload"].as_str().unwrap().to_string()).collect()
}

fn numbered(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("m{i}")).collect()
}

fn pubsub(protocol: &str, qos: u8) {
    let b = Broker::start();
    let q = qos.to_string();
    let r = features(&b, "pubsub", &["--protocol", protocol, "--qos", &q]);
    assert_eq!(payloads(&r["messages"]), numbered(10), "{}", b.log());
    for m in r["messages"].as_array().unwrap() {
        assert_eq!(m["qos"], u64::from(qos), "{m}");
    }
}

#[test]
fn paho_v5_qos0_roundtrip() {
    pubsub("5", 0);
}

#[test]
fn paho_v5_qos1_roundtrip() {
    pubsub("5", 1);
}

#[test]
fn paho_v5_qos2_roundtrip() {
    pubsub("5", 2);
}

#[test]
fn paho_v311_qos0_roundtrip() {
    pubsub("311", 0);
}

#[test]
fn paho_v311_qos1_roundtrip() {
    pubsub("311", 1);
}

#[test]
fn paho_v311_qos2_roundtrip() {
    pubsub("311", 2);
}

fn offline_then_restart(protocol: &str, qos: &str, kill: bool) {
    let mut b = Broker::start();
    let id = format!("py-persist-{protocol}");
    let common = ["--protocol", protocol, "--qos", qos, "--n", "25"];
    let parked = session(&b, "park", &id, &common);
    assert_eq!(parked["session_present"], false);
    session(&b, "publish", "py-publisher", &common);
    if kill {
        b.kill_and_restart();
    } else {
        b.restart();
    }
    let r = session(&b, "collect", &id, &common);
    assert_eq!(r["session_present"], true, "{}", b.log());
    assert_eq!(payloads(&r["messages"]), numbered(25), "each message once, in order\n{}", b.log());
}

#[test]
fn paho_v5_qos1_session_survives_sigterm_restart() {
    offline_then_restart("5", "1", false);
}

#[test]
fn paho_v5_qos2_session_survives_sigkill_restart() {
    offline_then_restart("5", "2", true);
}

#[test]
fn paho_v311_qos1_session_survives_sigkill_restart() {
    offline_then_restart("311", "1", true);
}

#[test]
fn paho_unacked_messages_are_redelivered_with_dup_after_restart() {
    let mut b = Broker::start();
    let common = ["--n", "5", "--topic", "py/dup"];
    session(&b, "park", "py-dup", &common);
    session(&b, "publish", "py-publisher", &common);
    let held = session(&b, "hold", "py-dup", &common);
    assert_eq!(payloads(&held["messages"]), numbered(5));
    assert!(b.server.wait_for_output("client disconnected client_id=py-dup", common::WAIT), "{}", b.log());
    b.restart();
    let r = session(&b, "collect", "py-dup", &common);
    assert_eq!(payloads(&r["messages"]), numbered(5), "{}", b.log());
    for m in r["messages"].as_array().unwrap() {
        assert_eq!(m["dup"], true, "redelivery carries DUP: {m}");
    }
}

#[test]
fn paho_v5_properties_pass_through() {
    let b = Broker::start();
    let r = features(&b, "properties", &[]);
    let m = &r["messages"][0];
    assert_eq!(m["payload"], "héllo");
    let p = &m["properties"];
    assert_eq!(p["PayloadFormatIndicator"], 1, "{p}");
    assert_eq!(p["ContentType"], "text/plain; charset=utf-8");
    assert_eq!(p["ResponseTopic"], "py/reply");
    assert_eq!(p["CorrelationData"], "corr-1");
    assert_eq!(p["UserProperty"], serde_json::json!([["a", "1"], ["b", "2"], ["a", "3"]]));
    let left = p["MessageExpiryInterval"].as_u64().expect("expiry forwarded");
    assert!(left > 0 && left <= 3600, "{left}");
}

#[test]
fn paho_v5_empty_client_id_is_assigned_one() {
    let b = Broker::start();
    let r = features(&b, "assigned_id", &[]);
    let id = r["properties"]["AssignedClientIdentifier"].as_str().expect("Assigned Client Identifier");
    assert!(!id.is_empty());
}

#[test]
fn paho_v5_disconnect_with_will_message_publishes_the_will() {
    let b = Broker::start();
    let r = features(&b, "will_with_disconnect_reason_4", &[]);
    assert_eq!(payloads(&r["messages"]), vec!["bye"], "DISCONNECT 0x04 asks for the will\n{}", b.log());
}

#[test]
fn paho_v5_normal_disconnect_discards_the_will() {
    let b = Broker::start();
    let r = features(&b, "normal_disconnect_no_will", &[]);
    assert_eq!(payloads(&r["messages"]), Vec::<String>::new());
}

#[test]
fn paho_v5_session_takeover_gets_0x8e() {
    let b = Broker::start();
    let r = features(&b, "takeover", &[]);
    assert_eq!(r["first_disconnect_reason"], 0x8E, "{r}");
}

#[test]
fn paho_v5_subscription_identifiers_and_no_local() {
    let b = Broker::start();
    let r = features(&b, "sub_ids_and_no_local", &[]);
    // Its own publish on py/nl/x/y matches only the no-local py/nl/# and is not echoed; the
    // other client's py/nl/x matches both filters and carries both identifiers.
    assert_eq!(payloads(&r["messages"]), vec!["other"], "{r}");
    let mut ids: Vec<u64> = r["messages"][0]["properties"]["SubscriptionIdentifier"]
        .as_array()
        .expect("subscription identifiers")
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, vec![11, 12]);
}

#[test]
fn paho_v5_retain_handling_0_1_2() {
    let b = Broker::start();
    let r = features(&b, "retain_handling", &[]);
    let n = |k: &str| r[k].as_array().unwrap().len();
    assert_eq!((n("rh0"), n("rh1"), n("rh2")), (2, 1, 0), "retained sent per subscribe: {r}");
}

#[test]
fn paho_dollar_topics_are_not_matched_by_wildcards() {
    for protocol in ["5", "311"] {
        let b = Broker::start();
        let r = features(&b, "dollar_topics", &["--protocol", protocol]);
        assert_eq!(payloads(&r["messages"]), vec!["plain"], "protocol {protocol}: {r}");
    }
}

#[test]
fn paho_v5_shared_subscription_round_robin() {
    let b = Broker::start();
    let r = features(&b, "shared", &[]);
    let (m1, m2) = (payloads(&r["m1"]), payloads(&r["m2"]));
    let mut all: Vec<usize> = m1.iter().chain(m2.iter()).map(|s| s.parse().unwrap()).collect();
    all.sort();
    assert_eq!(all, (0..10).collect::<Vec<_>>(), "each once across the group: {r}");
    assert_eq!((m1.len(), m2.len()), (5, 5), "alternating members");
}

#[test]
fn paho_v5_client_topic_alias() {
    let b = Broker::start();
    let r = features(&b, "topic_alias", &[]);
    let topics: Vec<&str> = r["messages"].as_array().unwrap().iter().map(|m| m["topic"].as_str().unwrap()).collect();
    assert_eq!(topics, vec!["py/alias/one", "py/alias/one"]);
    assert_eq!(payloads(&r["messages"]), vec!["first", "second"]);
}

#[test]
fn paho_v5_server_assigns_a_topic_alias_and_then_sends_it_alone() {
    let b = Broker::start();
    let r = features(&b, "server_topic_alias", &[]);
    // paho does not resolve incoming aliases, so the wire form is visible: the first PUBLISH
    // carries the topic and sets the alias, later ones only the alias.
    let msgs = r["messages"].as_array().unwrap();
    assert_eq!(payloads(&r["messages"]), numbered(3));
    let alias = msgs[0]["properties"]["TopicAlias"].as_u64().expect("alias set on the first message");
    assert!((1..=4).contains(&alias), "within the client's Topic Alias Maximum (4): {alias}");
    assert_eq!(msgs[0]["topic"], "py/sta");
    for m in &msgs[1..] {
        assert_eq!(m["properties"]["TopicAlias"], alias, "{m}");
        assert_eq!(m["topic"], "", "topic omitted once the alias is set: {m}");
    }
}
