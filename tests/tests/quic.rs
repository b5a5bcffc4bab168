//! MQTT over QUIC with a quinn client: single-stream mode (one bidirectional stream is the
//! MQTT connection), 0-RTT resumption (CONNECT sent as early data on the second connection),
//! and a client address change (the client endpoint rebinds to a new UDP socket mid-session).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::certs::{s, Ca};
use common::raw::{self, RawPacket};
use common::{Broker, WAIT};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

struct Setup {
    _dir: tempfile::TempDir,
    broker: Broker,
    addr: SocketAddr,
    client: quinn::ClientConfig,
    roots: rustls::RootCertStore,
}

/// A QUIC client configuration trusting `roots`, offering `alpn`, with 0-RTT enabled.
fn client_config(roots: rustls::RootCertStore, alpn: &[u8]) -> quinn::ClientConfig {
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls.enable_early_data = true;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC client config");
    quinn::ClientConfig::new(Arc::new(quic))
}

fn start() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "ca", "Axle Test CA");
    let server = ca.server(dir.path());
    let broker = Broker::with_config(&format!(
        "[[listeners.mqtt]]\nname = \"quic\"\nkind = \"quic\"\nbind = \"127.0.0.1:0\"\n[listeners.mqtt.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        s(&server.cert),
        s(&server.key)
    ));
    let addr = broker.listener("quic");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).expect("CA PEM")).expect("root");
    Setup { _dir: dir, broker, addr, client: client_config(roots.clone(), b"mqtt"), roots }
}

fn endpoint(cfg: &quinn::ClientConfig) -> quinn::Endpoint {
    let mut e = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
    e.set_default_client_config(cfg.clone());
    e
}

/// One bidirectional QUIC stream speaking MQTT.
struct Stream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    buf: Vec<u8>,
}

impl Stream {
    async fn open(conn: &quinn::Connection) -> Stream {
        let (send, recv) = conn.open_bi().await.expect("open a bidirectional stream");
        Stream { send, recv, buf: Vec::new() }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.expect("write to the stream");
    }

    /// The next packet, or `None` if the stream ended or `WAIT` passed.
    async fn next(&mut self) -> Option<RawPacket> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some((p, used)) = raw::parse(&self.buf) {
                self.buf.drain(..used);
                return Some(p);
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.recv.read(&mut chunk)).await {
                Ok(Ok(Some(n))) => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    async fn expect(&mut self, kind: u8, what: &str) -> RawPacket {
        match self.next().await {
            Some(p) if p.kind() == kind => p,
            other => panic!("expected {what} (type {kind}), got {other:?}"),
        }
    }
}

/// Connects, opens the MQTT stream, and checks that CONNACK says success.
async fn mqtt(e: &quinn::Endpoint, addr: SocketAddr, client_id: &str) -> (quinn::Connection, Stream) {
    let conn = e.connect(addr, "localhost").expect("connect").await.expect("QUIC handshake");
    let mut st = Stream::open(&conn).await;
    st.send(&raw::connect(5, client_id, 30)).await;
    let ack = st.expect(2, "CONNACK").await;
    assert_eq!(ack.body[1], 0, "CONNACK refused: {ack:?}");
    (conn, st)
}

#[tokio::test]
async fn quic_single_stream_publishes_and_subscribes() {
    let t = start();
    let e = endpoint(&t.client);
    let (_c1, mut sub) = mqtt(&e, t.addr, "q-sub").await;
    sub.send(&raw::subscribe(5, 1, "q/#", 1)).await;
    sub.expect(9, "SUBACK").await;
    let (_c2, mut publ) = mqtt(&e, t.addr, "q-pub").await;
    publ.send(&raw::publish(5, "q/one", 1, 7, b"over-quic")).await;
    let ack = publ.expect(4, "PUBACK").await;
    assert_eq!(&ack.body[..2], &7u16.to_be_bytes());
    let got = sub.expect(3, "PUBLISH").await;
    assert!(got.body.ends_with(b"over-quic"), "{got:?}");
    assert!(t.broker.log().contains("client_id=q-sub"), "{}", t.broker.log());
}

#[tokio::test]
async fn quic_zero_rtt_resumption_carries_connect_as_early_data() {
    let t = start();
    let e = endpoint(&t.client);
    // The first connection gets a session ticket that allows early data.
    let (c1, mut st1) = mqtt(&e, t.addr, "q-0rtt").await;
    st1.send(&[0xC0, 0]).await; // PINGREQ: the ticket has surely arrived once PINGRESP did
    st1.expect(13, "PINGRESP").await;
    c1.close(0u32.into(), b"bye");
    drop(st1);
    let connecting = e.connect(t.addr, "localhost").expect("connect");
    let (conn, accepted) = match connecting.into_0rtt() {
        Ok(x) => x,
        Err(_) => panic!("no 0-RTT: the client holds no resumable session with early data"),
    };
    // Opened and written before the handshake completes: this is 0-RTT data.
    let mut st = Stream::open(&conn).await;
    st.send(&raw::connect(5, "q-0rtt", 30)).await;
    assert!(accepted.await, "the server accepted the 0-RTT data");
    let ack = st.expect(2, "CONNACK").await;
    assert_eq!(ack.body[1], 0, "{ack:?}");
}

#[tokio::test]
async fn quic_connection_survives_a_client_address_change() {
    let t = start();
    let e = endpoint(&t.client);
    let (_c1, mut sub) = mqtt(&e, t.addr, "q-watch").await;
    sub.send(&raw::subscribe(5, 1, "mig/#", 1)).await;
    sub.expect(9, "SUBACK").await;
    let mover = endpoint(&t.client);
    let (conn, mut st) = mqtt(&mover, t.addr, "q-mover").await;
    let before = mover.local_addr().expect("local addr");
    mover.rebind(std::net::UdpSocket::bind("127.0.0.1:0").expect("new socket")).expect("rebind");
    let after = mover.local_addr().expect("local addr");
    assert_ne!(before.port(), after.port(), "the client moved to a new UDP port");
    for i in 0..3u16 {
        st.send(&raw::publish(5, "mig/t", 1, 100 + i, format!("after-move-{i}").as_bytes())).await;
        let ack = st.expect(4, "PUBACK after the address change").await;
        assert_eq!(&ack.body[..2], &(100 + i).to_be_bytes());
    }
    for i in 0..3 {
        let got = sub.expect(3, "PUBLISH").await;
        assert!(got.body.ends_with(format!("after-move-{i}").as_bytes()), "{got:?}");
    }
    assert!(conn.close_reason().is_none(), "the QUIC connection is still open");
    assert_eq!(
        t.broker.log().matches("client_id=q-mover").count(),
        1,
        "one MQTT session, no reconnect:\n{}",
        t.broker.log()
    );
}

#[tokio::test]
async fn quic_with_the_wrong_alpn_is_refused() {
    let t = start();
    let e = endpoint(&client_config(t.roots.clone(), b"h3"));
    let r = tokio::time::timeout(Duration::from_secs(10), e.connect(t.addr, "localhost").expect("connect")).await;
    assert!(matches!(r, Ok(Err(_))), "handshake fails");
    assert!(t.broker.server.wait_for_output("QUIC handshake failed", WAIT), "{}", t.broker.log());
}

/// EMQX-style multi-stream mode: the first stream is the control stream; SUBACKs and
/// deliveries go out on the stream that subscribed, acknowledgements on the stream that
/// published, PINGRESP on the control stream.
#[tokio::test]
async fn quic_multi_stream_routes_acks_and_deliveries_to_their_streams() {
    let t = start();
    let e = endpoint(&t.client);
    let (conn, mut control) = mqtt(&e, t.addr, "q-multi").await;
    let mut sub_a = Stream::open(&conn).await;
    sub_a.send(&raw::subscribe(5, 1, "ms/a/#", 1)).await;
    let mut sub_b = Stream::open(&conn).await;
    sub_b.send(&raw::subscribe(5, 2, "ms/b/#", 2)).await;
    let ack_a = sub_a.expect(9, "SUBACK on the stream that subscribed to ms/a/#").await;
    assert_eq!(&ack_a.body[..2], &1u16.to_be_bytes());
    let ack_b = sub_b.expect(9, "SUBACK on the stream that subscribed to ms/b/#").await;
    assert_eq!(&ack_b.body[..2], &2u16.to_be_bytes());

    let mut publ = Stream::open(&conn).await;
    publ.send(&raw::publish(5, "ms/a/x", 1, 10, b"for-a")).await;
    let ack = publ.expect(4, "PUBACK on the publishing stream").await;
    assert_eq!(&ack.body[..2], &10u16.to_be_bytes());
    publ.send(&raw::publish(5, "ms/b/y", 2, 11, b"for-b")).await;
    let rec = publ.expect(5, "PUBREC on the publishing stream").await;
    assert_eq!(&rec.body[..2], &11u16.to_be_bytes());
    publ.send(&raw::pubrel(11)).await;
    let comp = publ.expect(7, "PUBCOMP on the stream of the PUBREL").await;
    assert_eq!(&comp.body[..2], &11u16.to_be_bytes());

    let got_a = sub_a.expect(3, "ms/a/x delivered on stream A").await;
    assert!(got_a.body.ends_with(b"for-a"), "{got_a:?}");
    // Delivered at QoS 1 (the subscription's maximum); acknowledged on its own stream.
    let id = &got_a.body[2 + 6..2 + 6 + 2];
    sub_a.send(&raw::packet(0x40, &[id[0], id[1]])).await;
    let got_b = sub_b.expect(3, "ms/b/y delivered on stream B").await;
    assert!(got_b.body.ends_with(b"for-b"), "{got_b:?}");
    // QoS 2 towards the client: PUBREC from the client on B, the broker's PUBREL on B.
    let id_at = 2 + 6;
    let id_b = [got_b.body[id_at], got_b.body[id_at + 1]];
    sub_b.send(&raw::packet(0x50, &id_b)).await;
    let rel = sub_b.expect(6, "the broker's PUBREL on stream B").await;
    assert_eq!(&rel.body[..2], &id_b);
    sub_b.send(&raw::packet(0x70, &id_b)).await;

    control.send(&[0xC0, 0]).await;
    let first = control.next().await.expect("a packet on the control stream");
    assert_eq!(first.kind(), 13, "only PINGRESP on the control stream, nothing routed there: {first:?}");
}

#[tokio::test]
async fn quic_oversized_packet_on_a_data_stream_is_refused_before_buffering() {
    let t = start();
    let e = endpoint(&t.client);
    let (conn, mut control) = mqtt(&e, t.addr, "q-big").await;
    let mut data = Stream::open(&conn).await;
    // A PUBLISH announcing 2 MiB (the default maximum is 1 MiB); only the header is sent.
    data.send(&[0x30, 0x80, 0x80, 0x80, 0x01]).await;
    let d = control.expect(14, "DISCONNECT").await;
    assert_eq!(d.body[0], 0x95, "Packet too large: {d:?}");
}
