//! MQTT over WebSocket with paho-mqtt (Python): `ws` and `wss` listeners at `/mqtt` with the
//! `mqtt` subprotocol; a wrong path or a missing subprotocol is refused at the upgrade.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::certs::{s, Ca};
use common::tools::run_python;
use common::{Broker, WAIT};

fn check_messages(out: &serde_json::Value, b: &Broker) {
    // The topics map to different partitions, so their relative order is not defined.
    let mut got: Vec<(String, u64, u64)> = out["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages in {out}\n{}", b.log()))
        .iter()
        .map(|m| {
            (
                m["topic"].as_str().unwrap_or("").to_string(),
                m["payload_len"].as_u64().unwrap_or(0),
                m["qos"].as_u64().unwrap_or(9),
            )
        })
        .collect();
    got.sort();
    let mut want = vec![
        ("ws/q0".to_string(), 4, 0),
        ("ws/q1".to_string(), 3, 1),
        ("ws/q2".to_string(), 3, 2),
        ("ws/big".to_string(), 200_000, 1),
    ];
    want.sort();
    assert_eq!(got, want, "{}", b.log());
}

#[test]
fn paho_over_websocket_publishes_and_subscribes_at_every_qos() {
    let b = Broker::with_config("[[listeners.mqtt]]\nname = \"ws\"\nkind = \"ws\"\nbind = \"127.0.0.1:0\"\n");
    let port = b.listener("ws").port().to_string();
    let out = run_python("websocket.py", &["--port", &port]);
    check_messages(&out, &b);
    let out = run_python("websocket.py", &["--port", &port, "--protocol", "311"]);
    check_messages(&out, &b);
    assert!(b.log().contains("peer=127.0.0.1:"), "{}", b.log());
}

#[test]
fn paho_over_secure_websocket_publishes_and_subscribes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "ca", "Axle Test CA");
    let server = ca.server(dir.path());
    let b = Broker::with_config(&format!(
        "[[listeners.mqtt]]\nname = \"wss\"\nkind = \"wss\"\nbind = \"127.0.0.1:0\"\n[listeners.mqtt.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        s(&server.cert),
        s(&server.key)
    ));
    let port = b.listener("wss").port().to_string();
    let out = run_python("websocket.py", &["--port", &port, "--tls-ca", s(&ca.path)]);
    check_messages(&out, &b);
}

/// Sends an HTTP upgrade request and returns the status line of the answer.
fn upgrade(port: u16, path: &str, protocol: Option<&str>) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let proto = protocol.map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n")).unwrap_or_default();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{proto}\r\n"
    );
    s.write_all(req.as_bytes()).expect("write");
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_string()
}

#[test]
fn websocket_upgrade_needs_the_path_and_the_mqtt_subprotocol() {
    let b = Broker::with_config("[[listeners.mqtt]]\nname = \"ws\"\nkind = \"ws\"\nbind = \"127.0.0.1:0\"\n");
    let port = b.listener("ws").port();
    assert!(upgrade(port, "/mqtt", Some("mqtt")).contains(" 101 "), "{}", b.log());
    assert!(upgrade(port, "/other", Some("mqtt")).contains(" 404 "), "{}", b.log());
    assert!(upgrade(port, "/mqtt", None).contains(" 400 "), "{}", b.log());
    assert!(upgrade(port, "/mqtt", Some("chat, superchat")).contains(" 400 "), "{}", b.log());
}
