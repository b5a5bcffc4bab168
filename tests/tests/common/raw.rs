//! A raw TCP MQTT client with hand-written packets, for the cases real clients refuse to
//! produce: breaking Receive Maximum, going silent past the keepalive, malformed packets.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::WAIT;

pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// A packet read from the server: first byte of the fixed header and the body.
#[derive(Debug, Clone)]
pub struct RawPacket {
    pub header: u8,
    pub body: Vec<u8>,
}

impl RawPacket {
    pub fn kind(&self) -> u8 {
        self.header >> 4
    }
}

fn varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn string(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A whole packet from a fixed-header byte and a body.
pub fn packet(header: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![header];
    varint(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

/// CONNECT, protocol level 5 or 4, clean start, no will, the given keepalive.
pub fn connect(level: u8, client_id: &str, keep_alive: u16) -> Vec<u8> {
    connect_with(level, client_id, keep_alive, true, None)
}

/// CONNECT with a choice of clean start and (v5) Session Expiry Interval.
pub fn connect_with(level: u8, client_id: &str, keep_alive: u16, clean: bool, expiry: Option<u32>) -> Vec<u8> {
    let mut b = Vec::new();
    string("MQTT", &mut b);
    b.push(level);
    b.push(if clean { 0x02 } else { 0x00 });
    b.extend_from_slice(&keep_alive.to_be_bytes());
    if level == 5 {
        match expiry {
            Some(e) => {
                b.push(5);
                b.push(0x11);
                b.extend_from_slice(&e.to_be_bytes());
            }
            None => b.push(0),
        }
    }
    string(client_id, &mut b);
    packet(0x10, &b)
}

/// PUBREL for `packet_id` (v5 short form: reason Success implied).
pub fn pubrel(packet_id: u16) -> Vec<u8> {
    packet(0x62, &packet_id.to_be_bytes())
}

/// PUBLISH QoS 2 with the DUP flag set.
pub fn publish_dup_qos2(level: u8, topic: &str, packet_id: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = publish(level, topic, 2, packet_id, payload);
    p[0] |= 0x08;
    p
}

/// PUBLISH with a packet id (QoS 1 or 2), no properties for v5.
pub fn publish(level: u8, topic: &str, qos: u8, packet_id: u16, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    string(topic, &mut b);
    if qos > 0 {
        b.extend_from_slice(&packet_id.to_be_bytes());
    }
    if level == 5 {
        b.push(0);
    }
    b.extend_from_slice(payload);
    packet(0x30 | (qos << 1), &b)
}

/// SUBSCRIBE to one filter at `qos` (v5 has an empty property block).
pub fn subscribe(level: u8, packet_id: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut b = packet_id.to_be_bytes().to_vec();
    if level == 5 {
        b.push(0);
    }
    string(filter, &mut b);
    b.push(qos);
    packet(0x82, &b)
}

impl Raw {
    pub fn connect(port: u16) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("tcp connect");
        stream.set_nodelay(true).unwrap();
        Raw { stream, buf: Vec::new() }
    }

    /// Opens a socket, sends CONNECT and checks that CONNACK says success.
    pub fn mqtt(port: u16, level: u8, client_id: &str, keep_alive: u16) -> Raw {
        Raw::mqtt_with(port, &connect(level, client_id, keep_alive)).0
    }

    /// Opens a socket, sends `connect`, checks CONNACK success; returns session present.
    pub fn mqtt_with(port: u16, connect: &[u8]) -> (Raw, bool) {
        let mut r = Raw::connect(port);
        r.send(connect);
        let p = r.read_packet(WAIT).expect("CONNACK");
        assert_eq!(p.kind(), 2, "expected CONNACK, got {p:?}");
        assert_eq!(p.body[1], 0, "CONNACK refused: {p:?}");
        let present = p.body[0] & 1 == 1;
        (r, present)
    }

    /// Reads packets until one of `kind` arrives; panics if the connection ends first.
    pub fn expect_kind(&mut self, kind: u8) -> RawPacket {
        loop {
            let p = self.read_packet(WAIT).unwrap_or_else(|| panic!("connection ended waiting for packet type {kind}"));
            if p.kind() == kind {
                return p;
            }
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the broker");
    }

    /// Reads one packet; `None` if the server closed the connection or `timeout` passed.
    pub fn read_packet(&mut self, timeout: Duration) -> Option<RawPacket> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((p, used)) = parse(&self.buf) {
                self.buf.drain(..used);
                return Some(p);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.stream.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return None
                }
                Err(_) => return None,
            }
        }
    }

    /// Reads packets until the server closes the connection; returns them all.
    /// Panics if the connection is still open after `WAIT`.
    pub fn read_until_closed(&mut self) -> Vec<RawPacket> {
        let deadline = Instant::now() + WAIT;
        let mut got = Vec::new();
        loop {
            if let Some((p, used)) = parse(&self.buf) {
                self.buf.drain(..used);
                got.push(p);
                continue;
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("the server kept the connection open; received {got:?}"));
            self.stream.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return got,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => return got,
            }
        }
    }
}

pub fn parse(buf: &[u8]) -> Option<(RawPacket, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let mut len = 0usize;
    let mut mul = 1usize;
    let mut i = 1;
    loop {
        let b = *buf.get(i)?;
        len += usize::from(b & 0x7f) * mul;
        mul *= 128;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
    }
    if buf.len() < i + len {
        return None;
    }
    Some((RawPacket { header: buf[0], body: buf[i..i + len].to_vec() }, i + len))
}

/// The reason code of the DISCONNECT among `packets`, if there is one.
pub fn disconnect_reason(packets: &[RawPacket]) -> Option<u8> {
    packets.iter().find(|p| p.kind() == 14).map(|p| p.body.first().copied().unwrap_or(0))
}
