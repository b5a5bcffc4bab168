//! rumqttc helpers shared by the workloads.

use std::time::Duration;

use anyhow::bail;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, Outgoing};

/// Connections are spread over destination addresses 127.0.0.1..=127.0.0.250, 2,000 per address (every broker
/// listens on 0.0.0.0) so that 100k short-lived connections do not exhaust the ~28k ephemeral
/// ports of one address pair.
pub fn host_for(i: usize) -> String {
    format!("127.0.0.{}", 1 + (i / 2_000) % 250)
}

/// A client (MQTT 3.1.1) with `inflight` QoS 1 messages in flight and a 30 s connect timeout,
/// to `port` on [`host_for`]`(i)`.
pub fn client(id: String, i: usize, port: u16, clean: bool, inflight: u16, cap: usize) -> (AsyncClient, EventLoop) {
    client_at(id, host_for(i), port, clean, inflight, cap)
}

/// [`client`] to an explicit `host:port` (a cluster node on its own loopback address).
pub fn client_at(
    id: String,
    host: String,
    port: u16,
    clean: bool,
    inflight: u16,
    cap: usize,
) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(id, host, port);
    o.set_keep_alive(Duration::from_secs(120));
    o.set_clean_session(clean);
    o.set_inflight(inflight);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (c, mut el) = AsyncClient::new(o, cap);
    el.network_options.set_connection_timeout(30);
    (c, el)
}

/// Polls until CONNACK; fails on a refused connection or after `secs` without it.
pub async fn wait_connack(el: &mut EventLoop, secs: u64) -> anyhow::Result<bool> {
    loop {
        match tokio::time::timeout(Duration::from_secs(secs), el.poll()).await {
            Ok(Ok(Event::Incoming(Incoming::ConnAck(a)))) => {
                if a.code != rumqttc::ConnectReturnCode::Success {
                    bail!("connection refused: {:?}", a.code);
                }
                return Ok(a.session_present);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("connect failed: {e}"),
            Err(_) => bail!("no CONNACK within {secs} s"),
        }
    }
}

/// Polls until SUBACK; fails if the subscription was refused.
pub async fn wait_suback(el: &mut EventLoop, secs: u64) -> anyhow::Result<()> {
    loop {
        match tokio::time::timeout(Duration::from_secs(secs), el.poll()).await {
            Ok(Ok(Event::Incoming(Incoming::SubAck(s)))) => {
                if s.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) {
                    bail!("subscription refused: {:?}", s.return_codes);
                }
                return Ok(());
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("subscribe failed: {e}"),
            Err(_) => bail!("no SUBACK within {secs} s"),
        }
    }
}

/// Sends DISCONNECT and polls until it has been written (or the connection is gone).
pub async fn disconnect(client: &AsyncClient, el: &mut EventLoop) {
    if client.disconnect().await.is_err() {
        return;
    }
    for _ in 0..1000 {
        match tokio::time::timeout(Duration::from_secs(5), el.poll()).await {
            Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) | Ok(Err(_)) | Err(_) => return,
            _ => {}
        }
    }
}

/// Payload `"{publisher}:{seq}:"` padded with `x` to `size` bytes.
pub fn payload(publisher: usize, seq: usize, size: usize) -> Vec<u8> {
    let mut body = format!("{publisher}:{seq}:").into_bytes();
    if body.len() < size {
        body.resize(size, b'x');
    }
    body
}

/// The `(publisher, seq)` of a payload made by [`payload`].
pub fn parse_payload(p: &[u8]) -> Option<(usize, usize)> {
    let head = p.get(..p.len().min(24))?;
    let mut it = head.split(|b| *b == b':');
    let num = |s: &[u8]| std::str::from_utf8(s).ok()?.parse::<usize>().ok();
    let a = num(it.next()?)?;
    let b = num(it.next()?)?;
    Some((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips() {
        let p = payload(999, 12345, 200);
        assert_eq!(p.len(), 200);
        assert_eq!(parse_payload(&p), Some((999, 12345)));
        assert_eq!(parse_payload(&payload(3, 4, 2)), Some((3, 4)));
        assert_eq!(parse_payload(b"garbage"), None);
    }
}
