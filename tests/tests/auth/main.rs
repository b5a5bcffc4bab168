//! Authentication, authorization and protection end to end: the real `axle` binary, its
//! `user` and `ban` commands, and real clients (rumqttc 3.1.1 and 5, mosquitto_pub).

#[path = "../common/mod.rs"]
mod common;

mod acl;
mod jwt;
mod protection;
mod rest;
mod users;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use axle_tests::server::{axle_bin, Server};
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, PubAckReason, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions, StateError};

use common::WAIT;

/// A temporary directory with a data directory inside, for a broker started later.
pub struct Site {
    pub dir: tempfile::TempDir,
}

impl Default for Site {
    fn default() -> Site {
        Site { dir: tempfile::tempdir().expect("tempdir") }
    }
}

impl Site {
    pub fn new() -> Site {
        Site::default()
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts `axle serve` on this site's data directory with `toml` as config.
    pub fn start(&self, toml: &str) -> (Server, u16) {
        Server::start_with_config(&self.data(), toml, &[]).expect("the broker starts")
    }

    /// Runs `axle <args> --data-dir <data>` with `stdin` as standard input.
    pub fn axle(&self, args: &[&str], stdin: &str) -> Output {
        axle_cmd(&self.data(), args, stdin)
    }
}

pub fn axle_cmd(data: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(axle_bin())
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("axle runs");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("stdin written");
    child.wait_with_output().expect("axle finishes")
}

/// Runs an `axle` admin command and panics with its output unless it succeeds.
pub fn ok(out: Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "axle failed: {text}");
    text
}

/// Runs an `axle` admin command that must fail; returns its stderr.
pub fn fails(out: Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "axle succeeded: {}{text}", String::from_utf8_lossy(&out.stdout));
    text
}

/// MQTT 5 options with credentials.
pub fn v5_opts(id: &str, port: u16, user: Option<&str>, password: Option<&str>) -> MqttOptions {
    let mut o = common::mqtt::opts(id, port);
    if let Some(u) = user {
        o.set_credentials(u, password.unwrap_or(""));
    }
    o
}

/// MQTT 3.1.1 options with credentials.
pub fn v311_opts(id: &str, port: u16, user: Option<&str>, password: Option<&str>) -> rumqttc::MqttOptions {
    let mut o = common::mqtt::opts_v311(id, port, true);
    if let Some(u) = user {
        o.set_credentials(u, password.unwrap_or(""));
    }
    o
}

/// The CONNACK reason an MQTT 5 connect gets (`Success` if accepted; the client is dropped).
pub async fn v5_connack(o: MqttOptions) -> ConnectReturnCode {
    let (_client, mut ev) = AsyncClient::new(o, 10);
    loop {
        match tokio::time::timeout(WAIT, ev.poll()).await.expect("a CONNACK in time") {
            Ok(Event::Incoming(Packet::ConnAck(c))) => return c.code,
            Ok(_) => {}
            Err(ConnectionError::ConnectionRefused(code)) => return code,
            Err(e) => panic!("no CONNACK: {e:?}"),
        }
    }
}

/// The CONNACK return code an MQTT 3.1.1 connect gets.
pub async fn v311_connack(o: rumqttc::MqttOptions) -> rumqttc::ConnectReturnCode {
    match common::mqtt::V311::try_connect(o).await {
        Ok(_) => rumqttc::ConnectReturnCode::Success,
        Err(code) => code,
    }
}

/// SUBSCRIBEs to `filter` at QoS 1 on a fresh MQTT 5 connection and returns the SUBACK
/// reason. (rumqttc ends its event loop on a refusal, reporting the code; the connection is
/// dropped either way.)
pub async fn v5_suback(o: MqttOptions, filter: &str) -> SubscribeReasonCode {
    let (client, mut ev) = AsyncClient::new(o, 10);
    client.subscribe(filter, QoS::AtLeastOnce).await.expect("queued");
    loop {
        match tokio::time::timeout(WAIT, ev.poll()).await.expect("a SUBACK in time") {
            Ok(Event::Incoming(Packet::SubAck(s))) => return s.return_codes[0],
            Ok(_) => {}
            Err(ConnectionError::MqttState(StateError::SubFail { reason })) => return reason,
            Err(e) => panic!("no SUBACK: {e:?}"),
        }
    }
}

/// PUBLISHes `payload` at QoS 1 on a fresh MQTT 5 connection and returns the PUBACK reason.
pub async fn v5_puback(o: MqttOptions, topic: &str, payload: &str) -> PubAckReason {
    let (client, mut ev) = AsyncClient::new(o, 10);
    client.publish(topic, QoS::AtLeastOnce, false, payload.to_string()).await.expect("queued");
    loop {
        match tokio::time::timeout(WAIT, ev.poll()).await.expect("a PUBACK in time") {
            Ok(Event::Incoming(Packet::PubAck(a))) => return a.reason,
            Ok(_) => {}
            Err(ConnectionError::MqttState(StateError::PubAckFail { reason })) => return reason,
            Err(e) => panic!("no PUBACK: {e:?}"),
        }
    }
}
