//! rumqttc clients (MQTT 5 and 3.1.1) whose event loop runs in a task and reports every
//! incoming packet, and the error that ended it, on a channel the test reads with timeouts.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{ConnAck, Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions, StateError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::WAIT;

/// How a client's event loop ended.
#[derive(Debug, Clone)]
pub enum Closed {
    /// The server sent DISCONNECT with this reason code (MQTT 5).
    ServerDisconnect(u8),
    /// Any other error (network closed, protocol error, ...).
    Other(String),
}

/// A connected MQTT 5 client.
pub struct V5 {
    pub client: AsyncClient,
    pub connack: ConnAck,
    rx: mpsc::Receiver<Result<Packet, Closed>>,
    /// PUBLISH packets that arrived while `wait_for` looked for something else.
    stash: std::collections::VecDeque<Packet>,
    task: JoinHandle<()>,
}

pub fn opts(id: &str, port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(Some(4 << 20));
    o
}

/// Options for a persistent session: clean start false, session expiry `expiry` seconds.
pub fn persistent(id: &str, port: u16, expiry: u32) -> MqttOptions {
    let mut o = opts(id, port);
    o.set_clean_start(false);
    let mut p = o.connect_properties().unwrap_or_default();
    p.session_expiry_interval = Some(expiry);
    p.max_packet_size = Some(4 << 20);
    o.set_connect_properties(p);
    o
}

fn classify(e: ConnectionError) -> Closed {
    match e {
        ConnectionError::MqttState(StateError::ServerDisconnect { reason_code, .. }) => {
            Closed::ServerDisconnect(reason_code as u8)
        }
        other => Closed::Other(format!("{other:?}")),
    }
}

impl V5 {
    /// Connects and waits for CONNACK; panics if the connection is refused.
    pub async fn connect(o: MqttOptions) -> V5 {
        V5::try_connect(o).await.unwrap_or_else(|e| panic!("connect failed: {e:?}"))
    }

    pub async fn try_connect(o: MqttOptions) -> Result<V5, Closed> {
        V5::try_connect_buffered(o, 100_000).await
    }

    /// Connects with at most `buffer` incoming packets buffered between the client's event
    /// loop and the test: a test that reads slowly then makes a slow subscriber (the event
    /// loop stops reading the socket and, with automatic acks, stops acknowledging).
    pub async fn try_connect_buffered(o: MqttOptions, buffer: usize) -> Result<V5, Closed> {
        let (client, mut ev) = AsyncClient::new(o, 1000);
        let (tx, mut rx) = mpsc::channel(buffer);
        let task = tokio::spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(p)) => {
                        if tx.send(Ok(p)).await.is_err() {
                            return;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(e) => {
                        let _ = tx.send(Err(classify(e))).await;
                        return;
                    }
                }
            }
        });
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(Ok(Packet::ConnAck(connack)))) => Ok(V5 { client, connack, rx, stash: Default::default(), task }),
            Ok(Some(Ok(other))) => Err(Closed::Other(format!("expected CONNACK, got {other:?}"))),
            Ok(Some(Err(e))) => Err(e),
            Ok(None) => Err(Closed::Other("event loop ended".into())),
            Err(_) => Err(Closed::Other("no CONNACK in time".into())),
        }
    }

    /// The next incoming packet, or what ended the connection; panics after `WAIT`.
    pub async fn next(&mut self) -> Result<Packet, Closed> {
        if let Some(p) = self.stash.pop_front() {
            return Ok(p);
        }
        match tokio::time::timeout(WAIT, self.rx.recv()).await {
            Ok(Some(r)) => r,
            Ok(None) => Err(Closed::Other("event loop ended".into())),
            Err(_) => panic!("nothing received within {WAIT:?}"),
        }
    }

    /// The next packet within `d`, if any.
    pub async fn next_within(&mut self, d: Duration) -> Option<Result<Packet, Closed>> {
        if let Some(p) = self.stash.pop_front() {
            return Some(Ok(p));
        }
        tokio::time::timeout(d, self.rx.recv()).await.ok().flatten()
    }

    /// Waits for the next packet matching `pred`, skipping others; panics if the connection
    /// ends or nothing matches within `WAIT`.
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&Packet) -> bool) -> Packet {
        if let Some(i) = self.stash.iter().position(&pred) {
            return self.stash.remove(i).expect("index from position");
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Ok(p))) if pred(&p) => return p,
                Ok(Some(Ok(p @ Packet::Publish(_)))) => self.stash.push_back(p),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => panic!("connection ended while waiting for {what}: {e:?}"),
                Ok(None) => panic!("event loop ended while waiting for {what}"),
                Err(_) => panic!("no {what} within {WAIT:?}"),
            }
        }
    }

    /// Subscribes and waits for the SUBACK; returns its reason codes.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.client.subscribe(filter, qos).await.unwrap();
        self.wait_for("SUBACK", |p| matches!(p, Packet::SubAck(_))).await;
    }

    /// Publishes and waits for the PUBACK (QoS 1) or PUBCOMP (QoS 2).
    pub async fn publish_acked(&mut self, topic: &str, qos: QoS, retain: bool, payload: impl Into<Vec<u8>>) {
        self.client.publish(topic, qos, retain, payload.into()).await.unwrap();
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.wait_for("PUBACK", |p| matches!(p, Packet::PubAck(_))).await;
            }
            QoS::ExactlyOnce => {
                self.wait_for("PUBCOMP", |p| matches!(p, Packet::PubComp(_))).await;
            }
        }
    }

    /// Receives `n` PUBLISH packets, skipping other packets; panics on timeout or close.
    pub async fn publishes(&mut self, n: usize) -> Vec<Publish> {
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            match self.wait_for("PUBLISH", |p| matches!(p, Packet::Publish(_))).await {
                Packet::Publish(p) => got.push(p),
                _ => unreachable!(),
            }
        }
        got
    }

    /// PUBLISH packets received within `d` (to check that nothing, or nothing more, arrives).
    pub async fn publishes_within(&mut self, d: Duration) -> Vec<Publish> {
        let deadline = tokio::time::Instant::now() + d;
        let mut got: Vec<Publish> = self
            .stash
            .drain(..)
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p),
                _ => None,
            })
            .collect();
        while let Ok(Some(r)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            match r {
                Ok(Packet::Publish(p)) => got.push(p),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        got
    }

    /// Waits for the connection to end and returns why.
    pub async fn closed(&mut self) -> Closed {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => return e,
                Ok(None) => return Closed::Other("event loop ended".into()),
                Err(_) => panic!("the connection did not end within {WAIT:?}"),
            }
        }
    }

    /// Sends DISCONNECT (normal) and waits for the event loop to end.
    pub async fn disconnect(mut self) {
        self.client.disconnect().await.unwrap();
        let _ = tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = self.rx.recv().await {} }).await;
        self.task.abort();
    }

    /// Drops the network connection without DISCONNECT (an abnormal disconnect).
    pub async fn drop_connection(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for V5 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Topic of a PUBLISH as a string.
pub fn topic(p: &Publish) -> String {
    String::from_utf8_lossy(&p.topic).into_owned()
}

/// Payload of a PUBLISH as a string.
pub fn text(p: &Publish) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

/// An MQTT 3.1.1 client over rumqttc's v4 API.
pub struct V311 {
    pub client: rumqttc::AsyncClient,
    pub session_present: bool,
    rx: mpsc::UnboundedReceiver<Result<rumqttc::Packet, String>>,
    stash: std::collections::VecDeque<rumqttc::Packet>,
    task: JoinHandle<()>,
}

/// Options for an MQTT 3.1.1 client on loopback.
pub fn opts_v311(id: &str, port: u16, clean: bool) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(clean);
    o.set_max_packet_size(4 << 20, 4 << 20);
    o
}

impl V311 {
    pub async fn connect(id: &str, port: u16, clean: bool) -> V311 {
        match V311::try_connect(opts_v311(id, port, clean)).await {
            Ok(c) => c,
            Err(code) => panic!("CONNACK refused: {code:?}"),
        }
    }

    /// Connects with `o`; a refused CONNACK is the error (its return code). Panics if no
    /// CONNACK arrives.
    pub async fn try_connect(o: rumqttc::MqttOptions) -> Result<V311, rumqttc::ConnectReturnCode> {
        let (client, mut ev) = rumqttc::AsyncClient::new(o, 1000);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(rumqttc::Event::Incoming(p)) => {
                        if tx.send(Ok(p)).is_err() {
                            return;
                        }
                    }
                    Ok(rumqttc::Event::Outgoing(_)) => {}
                    Err(e) => {
                        let _ = tx.send(Err(format!("{e:?}")));
                        return;
                    }
                }
            }
        });
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(Ok(rumqttc::Packet::ConnAck(c)))) if c.code == rumqttc::ConnectReturnCode::Success => {
                Ok(V311 { client, session_present: c.session_present, rx, stash: Default::default(), task })
            }
            Ok(Some(Ok(rumqttc::Packet::ConnAck(c)))) => Err(c.code),
            Ok(Some(Err(e))) if e.contains("ConnectionRefused") => {
                let code = [
                    ("BadUserNamePassword", rumqttc::ConnectReturnCode::BadUserNamePassword),
                    ("NotAuthorized", rumqttc::ConnectReturnCode::NotAuthorized),
                    ("BadClientId", rumqttc::ConnectReturnCode::BadClientId),
                    ("RefusedProtocolVersion", rumqttc::ConnectReturnCode::RefusedProtocolVersion),
                ]
                .into_iter()
                .find(|(name, _)| e.contains(name))
                .map(|(_, c)| c)
                .unwrap_or(rumqttc::ConnectReturnCode::ServiceUnavailable);
                Err(code)
            }
            other => panic!("no CONNACK: {other:?}"),
        }
    }

    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&rumqttc::Packet) -> bool) -> rumqttc::Packet {
        if let Some(i) = self.stash.iter().position(&pred) {
            return self.stash.remove(i).expect("index from position");
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Ok(p))) if pred(&p) => return p,
                Ok(Some(Ok(p @ rumqttc::Packet::Publish(_)))) => self.stash.push_back(p),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => panic!("connection ended while waiting for {what}: {e}"),
                Ok(None) => panic!("event loop ended while waiting for {what}"),
                Err(_) => panic!("no {what} within {WAIT:?}"),
            }
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: rumqttc::QoS) {
        self.client.subscribe(filter, qos).await.unwrap();
        self.wait_for("SUBACK", |p| matches!(p, rumqttc::Packet::SubAck(_))).await;
    }

    pub async fn publish_acked(&mut self, topic: &str, qos: rumqttc::QoS, payload: impl Into<Vec<u8>>) {
        self.client.publish(topic, qos, false, payload.into()).await.unwrap();
        match qos {
            rumqttc::QoS::AtMostOnce => {}
            rumqttc::QoS::AtLeastOnce => {
                self.wait_for("PUBACK", |p| matches!(p, rumqttc::Packet::PubAck(_))).await;
            }
            rumqttc::QoS::ExactlyOnce => {
                self.wait_for("PUBCOMP", |p| matches!(p, rumqttc::Packet::PubComp(_))).await;
            }
        }
    }

    pub async fn publishes(&mut self, n: usize) -> Vec<rumqttc::Publish> {
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            if let rumqttc::Packet::Publish(p) =
                self.wait_for("PUBLISH", |p| matches!(p, rumqttc::Packet::Publish(_))).await
            {
                got.push(p);
            }
        }
        got
    }

    pub async fn publishes_within(&mut self, d: Duration) -> Vec<rumqttc::Publish> {
        let deadline = tokio::time::Instant::now() + d;
        let mut got: Vec<rumqttc::Publish> = self
            .stash
            .drain(..)
            .filter_map(|p| match p {
                rumqttc::Packet::Publish(p) => Some(p),
                _ => None,
            })
            .collect();
        while let Ok(Some(r)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            match r {
                Ok(rumqttc::Packet::Publish(p)) => got.push(p),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        got
    }

    pub async fn disconnect(mut self) {
        self.client.disconnect().await.unwrap();
        let _ = tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = self.rx.recv().await {} }).await;
        self.task.abort();
    }

    pub async fn drop_connection(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for V311 {
    fn drop(&mut self) {
        self.task.abort();
    }
}
