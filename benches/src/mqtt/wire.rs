//! A lean MQTT 3.1.1 client for load generation: one tokio task per connection, Axle's own
//! sans-IO codec (`axle_broker::codec`) for the bytes, and every packet that is ready queued
//! into one buffer and written with one `write` call.
//!
//! Why it exists: with rumqttc (two tasks and a channel hop per message, one `write` per
//! packet) the load tool took ~0.8 of the 2 cores in `fan-in`, so the broker under test got
//! ~1.2 and every broker's rate was mostly the tool's. The wire client leaves the broker more of
//! the machine; it is used for the same workloads against every broker, so ratios stay fair.
//! Interoperability is not its job: rumqttc, paho-mqtt and the mosquitto clients cover that in
//! `tests/`.

use std::time::Duration;

use anyhow::{bail, Context};
use axle_broker::codec::{
    self, Connect, Disconnect, Packet, ProtocolVersion, PubAck, Publish, QoS, Subscribe, SubscriptionOptions,
    SubscriptionRequest,
};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const VERSION: ProtocolVersion = ProtocolVersion::V311;

/// Keep-alive asked for in CONNECT, in seconds. Runs are far shorter and the client sends no
/// PINGREQ, so this only has to outlast a run.
const KEEP_ALIVE_SECS: u16 = 600;

/// One MQTT 3.1.1 connection. Packets are queued with [`WireConn::queue`] and leave together
/// with [`WireConn::flush`]; [`WireConn::read_packets`] returns every packet one `read` made
/// complete.
pub struct WireConn {
    stream: TcpStream,
    inbound: BytesMut,
    outbound: BytesMut,
}

impl WireConn {
    /// Connects to `host:port`, sends CONNECT and waits up to `secs` for a successful CONNACK.
    /// Returns the connection and CONNACK's `session present`.
    pub async fn connect(
        host: &str,
        port: u16,
        client_id: String,
        clean: bool,
        secs: u64,
    ) -> anyhow::Result<(Self, bool)> {
        let within = Duration::from_secs(secs);
        let stream = tokio::time::timeout(within, TcpStream::connect((host, port)))
            .await
            .with_context(|| format!("no TCP connection to {host}:{port} within {secs} s"))?
            .with_context(|| format!("connecting to {host}:{port}"))?;
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        let mut conn = WireConn {
            stream,
            inbound: BytesMut::with_capacity(64 << 10),
            outbound: BytesMut::with_capacity(32 << 10),
        };
        conn.queue(&Packet::Connect(Connect {
            protocol: VERSION,
            clean_start: clean,
            keep_alive: KEEP_ALIVE_SECS,
            client_id,
            ..Connect::default()
        }))?;
        conn.flush().await?;
        let packets = tokio::time::timeout(within, conn.read_packets())
            .await
            .with_context(|| format!("no CONNACK within {secs} s"))??;
        let present = match packets.first() {
            Some(Packet::ConnAck(a)) if a.reason.is_error() => bail!("connection refused: {:?}", a.reason),
            Some(Packet::ConnAck(a)) => a.session_present,
            other => bail!("expected CONNACK, got {other:?}"),
        };
        Ok((conn, present))
    }

    /// Subscribes to `filter` at `qos` (packet id 1) and waits up to `secs` for a SUBACK that
    /// grants it. Messages that arrive before the SUBACK are not expected and are an error.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS, secs: u64) -> anyhow::Result<()> {
        self.queue(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![SubscriptionRequest {
                filter: filter.to_string(),
                options: SubscriptionOptions { qos, ..SubscriptionOptions::default() },
            }],
            ..Subscribe::default()
        }))?;
        self.flush().await?;
        let packets = tokio::time::timeout(Duration::from_secs(secs), self.read_packets())
            .await
            .with_context(|| format!("no SUBACK within {secs} s"))??;
        match packets.as_slice() {
            [Packet::SubAck(s)] if s.reasons.iter().all(|r| !r.is_error()) => Ok(()),
            [Packet::SubAck(s)] => bail!("subscription to {filter} refused: {:?}", s.reasons),
            other => bail!("expected one SUBACK, got {other:?}"),
        }
    }

    /// Queues a PUBLISH of `payload` to `topic`; `packet_id` is required for QoS 1 and 2.
    pub fn queue_publish(
        &mut self,
        topic: &str,
        qos: QoS,
        packet_id: Option<u16>,
        payload: Bytes,
    ) -> anyhow::Result<()> {
        self.queue(&Packet::Publish(Publish {
            qos,
            topic: topic.to_string(),
            packet_id,
            payload,
            ..Publish::default()
        }))
    }

    /// Queues the PUBACK for `packet_id`.
    pub fn queue_puback(&mut self, packet_id: u16) -> anyhow::Result<()> {
        self.queue(&Packet::PubAck(PubAck { packet_id, ..PubAck::default() }))
    }

    /// Appends `packet` to the outbound buffer.
    pub fn queue(&mut self, packet: &Packet) -> anyhow::Result<()> {
        codec::encode(packet, VERSION, &mut self.outbound).context("encoding a packet")
    }

    /// Bytes queued and not yet flushed.
    pub fn queued(&self) -> usize {
        self.outbound.len()
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.outbound.is_empty() {
            self.stream.write_all(&self.outbound).await.context("writing to the broker")?;
            self.outbound.clear();
        }
        Ok(())
    }

    /// Waits for bytes from the broker and returns every packet that is complete (at least
    /// one). A closed connection or a packet that does not decode is an error.
    pub async fn read_packets(&mut self) -> anyhow::Result<Vec<Packet>> {
        let mut packets = Vec::new();
        loop {
            while let Some(p) =
                codec::decode(&mut self.inbound, Some(VERSION), u32::MAX).context("decoding a packet")?
            {
                packets.push(p);
            }
            if !packets.is_empty() {
                return Ok(packets);
            }
            if self.inbound.capacity() - self.inbound.len() < 4096 {
                self.inbound.reserve(64 << 10);
            }
            if self.stream.read_buf(&mut self.inbound).await.context("reading from the broker")? == 0 {
                bail!("the broker closed the connection");
            }
        }
    }

    /// Sends DISCONNECT and closes the write side.
    pub async fn disconnect(mut self) {
        if self.queue(&Packet::Disconnect(Disconnect::default())).is_ok() && self.flush().await.is_ok() {
            let _ = self.stream.shutdown().await;
        }
    }
}
