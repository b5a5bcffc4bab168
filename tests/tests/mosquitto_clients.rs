//! The mosquitto CLI clients (Debian mosquitto-clients) against the real broker. A
//! subscription is set up first with `mosquitto_sub -c ... -E` (persistent session, exit once
//! subscribed), so the later `mosquitto_sub -c -C N` collects deterministically.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::mqtt::{opts, text, V5};
use common::tools::{mosquitto_pub, mosquitto_sub, wait_output};
use common::Broker;
use rumqttc::v5::mqttbytes::QoS;

/// `mosquitto_sub` persistent-session arguments for `version` ("mqttv5" or "mqttv311").
fn session_args<'a>(id: &'a str, topic: &'a str, qos: &'a str, version: &'a str) -> Vec<&'a str> {
    let mut a = vec!["-V", version, "-c", "-i", id, "-t", topic, "-q", qos];
    if version == "mqttv5" {
        a.extend(["-x", "3600"]);
    }
    a
}

/// Subscribes with a persistent session and exits once the SUBACK came.
fn park(b: &Broker, id: &str, topic: &str, qos: &str, version: &str) {
    let mut args = session_args(id, topic, qos, version);
    args.push("-E");
    let out = wait_output(mosquitto_sub(b.port, &args), Duration::from_secs(30));
    assert!(out.status.success(), "mosquitto_sub -E failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Reconnects the persistent session and prints `count` messages with `format`.
fn collect(b: &Broker, id: &str, topic: &str, qos: &str, version: &str, count: usize, format: &str) -> Vec<String> {
    let count = count.to_string();
    let mut args = session_args(id, topic, qos, version);
    args.extend(["-C", &count, "-W", "30", "-F", format]);
    let out = wait_output(mosquitto_sub(b.port, &args), Duration::from_secs(40));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "mosquitto_sub -C {count} failed ({:?}); got:\n{stdout}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        b.log()
    );
    stdout.lines().map(str::to_string).collect()
}

/// Publishes each line of `lines` as one message with `mosquitto_pub -l`.
fn publish_lines(b: &Broker, topic: &str, qos: &str, version: &str, lines: &[String]) {
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &b.port.to_string(), "-V", version, "-t", topic, "-q", qos, "-l"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub");
    {
        let mut stdin = child.stdin.take().unwrap();
        for l in lines {
            writeln!(stdin, "{l}").unwrap();
        }
    }
    let out = wait_output(child, Duration::from_secs(60));
    assert!(out.status.success(), "mosquitto_pub -l failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn numbered(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("m{i}")).collect()
}

#[test]
fn mosquitto_pub_to_mosquitto_sub_qos0_1_2_v5_and_v311() {
    let b = Broker::start();
    for version in ["mqttv5", "mqttv311"] {
        for qos in ["0", "1", "2"] {
            let id = format!("msub-{version}-{qos}");
            let topic = format!("mq/{version}/{qos}");
            park(&b, &id, &topic, qos, version);
            mosquitto_pub(b.port, &["-V", version, "-t", &topic, "-q", qos, "-m", "hello"]);
            let got = collect(&b, &id, &topic, qos, version, 1, "%t %q %p");
            // Delivered at min(publish QoS, subscription QoS) = qos.
            assert_eq!(got, vec![format!("{topic} {qos} hello")], "{version} QoS {qos}");
        }
    }
}

#[tokio::test]
async fn mosquitto_pub_reaches_a_rumqttc_subscriber() {
    let b = Broker::start();
    let mut s = V5::connect(opts("rs", b.port)).await;
    s.subscribe("mq/live", QoS::ExactlyOnce).await;
    let port = b.port;
    tokio::task::spawn_blocking(move || mosquitto_pub(port, &["-t", "mq/live", "-q", "2", "-m", "from mosquitto"]))
        .await
        .unwrap();
    let got = s.publishes(1).await.remove(0);
    assert_eq!((text(&got), got.qos), ("from mosquitto".to_string(), QoS::ExactlyOnce));
}

#[test]
fn mosquitto_sub_session_survives_sigkill_restart() {
    let mut b = Broker::start();
    park(&b, "msub-kill", "mq/kill", "1", "mqttv5");
    publish_lines(&b, "mq/kill", "1", "mqttv5", &numbered(200));
    b.kill_and_restart();
    let got = collect(&b, "msub-kill", "mq/kill", "1", "mqttv5", 200, "%p");
    assert_eq!(got, numbered(200), "all 200, once, in order");
}

#[test]
fn mosquitto_v311_session_survives_sigterm_restart() {
    let mut b = Broker::start();
    park(&b, "msub-311", "mq/311", "2", "mqttv311");
    publish_lines(&b, "mq/311", "2", "mqttv311", &numbered(50));
    b.restart();
    let got = collect(&b, "msub-311", "mq/311", "2", "mqttv311", 50, "%p");
    assert_eq!(got, numbered(50));
}

#[test]
fn mosquitto_retained_message_set_and_cleared() {
    let b = Broker::start();
    mosquitto_pub(b.port, &["-t", "mq/ret", "-q", "1", "-r", "-m", "kept"]);
    let out = wait_output(
        mosquitto_sub(b.port, &["-t", "mq/ret", "-C", "1", "-W", "20", "-F", "%r %p"]),
        Duration::from_secs(30),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1 kept", "retained, with the retain flag");
    mosquitto_pub(b.port, &["-t", "mq/ret", "-q", "1", "-r", "-n"]);
    // -W 2 ends mosquitto_sub after 2 s with nothing received (exit status 27 = timeout).
    let out = wait_output(mosquitto_sub(b.port, &["-t", "mq/ret", "-C", "1", "-W", "2"]), Duration::from_secs(30));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "", "cleared retained message");
}

#[test]
fn mosquitto_v5_properties_pass_through() {
    let b = Broker::start();
    park(&b, "msub-props", "mq/props", "1", "mqttv5");
    mosquitto_pub(
        b.port,
        &[
            "-V",
            "mqttv5",
            "-t",
            "mq/props",
            "-q",
            "1",
            "-m",
            "{}",
            "-D",
            "publish",
            "user-property",
            "color",
            "blue",
            "-D",
            "publish",
            "content-type",
            "application/json",
            "-D",
            "publish",
            "response-topic",
            "mq/reply",
            "-D",
            "publish",
            "correlation-data",
            "abc123",
            "-D",
            "publish",
            "payload-format-indicator",
            "1",
        ],
    );
    let got = collect(&b, "msub-props", "mq/props", "1", "mqttv5", 1, "%p|%C|%R|%D|%F|%P");
    assert_eq!(got, vec!["{}|application/json|mq/reply|abc123|1|color:blue".to_string()]);
}

#[test]
fn mosquitto_sub_hash_does_not_receive_dollar_topics() {
    let b = Broker::start();
    park(&b, "msub-all", "#", "1", "mqttv5");
    mosquitto_pub(b.port, &["-t", "$SYS/mq", "-q", "1", "-m", "sys"]);
    mosquitto_pub(b.port, &["-t", "mq/plain", "-q", "1", "-m", "plain"]);
    let got = collect(&b, "msub-all", "#", "1", "mqttv5", 1, "%t %p");
    assert_eq!(got, vec!["mq/plain plain"]);
}
