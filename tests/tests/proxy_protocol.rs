//! `proxy_protocol = true` listeners: HAProxy (Debian `haproxy`, started here on loopback)
//! terminates mutual TLS and forwards PROXY v2 with `send-proxy-v2-ssl-cn`; the client's
//! certificate CN becomes its username and its real address is the one logged. Raw sockets
//! check PROXY v1 and the refusal of a missing or malformed header.

mod common;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::certs::{s, Ca};
use common::raw::{self, Raw};
use common::tools::{mosquitto_sub, wait_output};
use common::{Broker, WAIT};

/// A broker with a `tcp` listener named `lb` expecting PROXY headers, and an ACL file.
fn broker(extra: &str) -> (Broker, u16) {
    let dir = tempfile::tempdir().expect("tempdir");
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "allow all pubsub u/%u/#\nallow all pubsub open/#\n").expect("acl");
    let toml = format!(
        "acl_file = \"{}\"\n{extra}\n[[listeners.mqtt]]\nname = \"lb\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\nproxy_protocol = true\npeer_cert_as_username = \"cn\"\n",
        s(&acl)
    );
    let b = Broker::with_config(&toml);
    // The ACL file is read at start-up; the directory may go.
    drop(dir);
    let port = b.listener("lb").port();
    (b, port)
}

/// A free loopback port (bound and released; HAProxy binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts HAProxy in the foreground: mutual TLS on `front`, PROXY v2 with the client CN to the
/// broker on `back`, connecting from 127.0.0.3 so that the balancer's address differs from the
/// client's (127.0.0.1).
/// With `mutual`, clients must present a certificate signed by `ca`.
fn haproxy(dir: &std::path::Path, ca: &Ca, front: u16, back: u16, mutual: bool) -> Haproxy {
    let verify = if mutual { format!("ca-file {} verify required", s(&ca.path)) } else { String::new() };
    let server = ca.server(dir);
    let pem = dir.join("haproxy.pem");
    std::fs::write(&pem, format!("{}{}", server.cert_pem, server.key_pem)).expect("crt");
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
             frontend mqtts\n  bind 127.0.0.1:{front} ssl crt {pem} {verify}\n  default_backend axle\n\
             backend axle\n  server axle 127.0.0.1:{back} send-proxy-v2-ssl-cn source 127.0.0.3\n",
            pem = s(&pem),
        ),
    )
    .expect("haproxy.cfg");
    let child = Command::new("haproxy")
        .args(["-db", "-f", s(&cfg)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy is installed (apt-get install haproxy; scripts/setup --tests does)");
    let h = Haproxy(child);
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", front)).is_err() {
        assert!(start.elapsed() < WAIT, "haproxy did not listen on {front}");
        std::thread::sleep(Duration::from_millis(20));
    }
    h
}

#[test]
fn haproxy_ssl_cn_becomes_the_username_and_the_real_address_is_logged() {
    let (b, port) = broker("");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "ca", "Axle Test CA");
    let car = ca.valid_client(dir.path(), "car42", "car-42", 42);
    let front = free_port();
    let _lb = haproxy(dir.path(), &ca, front, port, true);
    let tls = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> =
            ["--cafile", s(&ca.path), "--cert", s(&car.cert), "--key", s(&car.key), "-V", "mqttv5"]
                .iter()
                .map(|x| x.to_string())
                .collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    // `u/%u/#` with the CONNECT username "nobody" would be u/nobody/#: the CN must replace it.
    let sub_args = tls(&["-u", "nobody", "-t", "u/car-42/#", "-C", "1", "-W", "20", "-i", "behind-lb"]);
    let sub = mosquitto_sub(front, &sub_args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(b.server.wait_for_output("client_id=behind-lb", WAIT), "{}", b.log());
    let pub_args = tls(&["-u", "nobody", "-t", "u/car-42/state", "-m", "via-haproxy", "-q", "1", "-r", "-i", "pub-lb"]);
    let out = wait_output(
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &front.to_string()])
            .args(&pub_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto_pub"),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "mosquitto_pub via haproxy: {}", String::from_utf8_lossy(&out.stderr));
    let got = wait_output(sub, Duration::from_secs(30));
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        "via-haproxy",
        "{}\n{}",
        String::from_utf8_lossy(&got.stderr),
        b.log()
    );
    let log = b.log();
    let line = log
        .lines()
        .find(|l| l.contains("client connected") && l.contains("client_id=behind-lb"))
        .expect("connected line");
    assert!(line.contains("peer=127.0.0.1:"), "the client's address (127.0.0.1), not HAProxy's (127.0.0.3): {line}");
    assert!(!log.contains("peer=127.0.0.3"), "the balancer's address is never taken for the client's:\n{log}");
}

#[test]
fn haproxy_in_front_of_a_websocket_listener_with_proxy_protocol() {
    let b = Broker::with_config(
        "[[listeners.mqtt]]\nname = \"ws-lb\"\nkind = \"ws\"\nbind = \"127.0.0.1:0\"\nproxy_protocol = true\n",
    );
    let port = b.listener("ws-lb").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "ca", "Axle Test CA");
    let front = free_port();
    let _lb = haproxy(dir.path(), &ca, front, port, false);
    // paho over wss to HAProxy, which forwards the WebSocket bytes behind a PROXY v2 header.
    let out = common::tools::run_python("websocket.py", &["--port", &front.to_string(), "--tls-ca", s(&ca.path)]);
    assert_eq!(out["messages"].as_array().map(Vec::len), Some(4), "{out}\n{}", b.log());
    let log = b.log();
    assert!(
        log.contains("client_id=ws-sub") && !log.contains("peer=127.0.0.3"),
        "the client's address is logged:\n{log}"
    );
}

#[test]
fn proxy_v1_source_address_is_the_peer() {
    let (b, port) = broker("[mqtt]\nallow_anonymous = true\n");
    let mut r = Raw::connect(port);
    let mut bytes = b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 1883\r\n".to_vec();
    bytes.extend(raw::connect(5, "v1-client", 30));
    r.send(&bytes);
    let p = r.read_packet(WAIT).expect("CONNACK");
    assert_eq!((p.kind(), p.body[1]), (2, 0), "CONNACK success: {p:?}\n{}", b.log());
    assert!(b.server.wait_for_output("peer=203.0.113.9:40000", WAIT), "{}", b.log());
}

#[test]
fn proxy_v1_non_loopback_source_counts_as_remote() {
    // Without allow_anonymous, an anonymous client from the PROXY source 203.0.113.9 is not
    // on loopback and is refused, although the socket itself is from 127.0.0.1.
    let (b, port) = broker("");
    let mut r = Raw::connect(port);
    let mut bytes = b"PROXY TCP4 203.0.113.9 127.0.0.1 40001 1883\r\n".to_vec();
    bytes.extend(raw::connect(5, "remote-anon", 30));
    r.send(&bytes);
    let p = r.read_packet(WAIT).expect("CONNACK");
    assert_eq!(p.kind(), 2);
    assert_ne!(p.body[1], 0, "refused: {p:?}\n{}", b.log());
}

#[test]
fn connection_without_proxy_header_is_refused_with_a_log_line() {
    let (b, port) = broker("");
    let mut r = Raw::connect(port);
    r.send(&raw::connect(5, "direct", 30));
    assert!(r.read_until_closed().is_empty(), "no CONNACK without a PROXY header");
    assert!(b.server.wait_for_output("PROXY header refused", WAIT), "{}", b.log());
    assert!(!b.log().contains("client_id=direct"), "{}", b.log());
}

#[test]
fn malformed_proxy_v2_header_is_refused() {
    let (b, port) = broker("");
    let mut r = Raw::connect(port);
    let mut bytes = vec![0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];
    bytes.extend([0x21, 0x11, 0x00, 0x04, 1, 2, 3, 4]); // TCP4 needs 12 address bytes, not 4
    bytes.extend(raw::connect(5, "broken", 30));
    r.send(&bytes);
    assert!(r.read_until_closed().is_empty());
    assert!(
        b.server.wait_for_output("PROXY header refused: the PROXY v2 address block is 4 bytes", WAIT),
        "{}",
        b.log()
    );
}

#[test]
fn silent_client_is_closed_at_the_handshake_timeout() {
    let b = Broker::with_config(
        "[[listeners.mqtt]]\nname = \"slow\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\nproxy_protocol = true\nhandshake_timeout_ms = 300\n",
    );
    let mut r = Raw::connect(b.listener("slow").port());
    assert!(r.read_until_closed().is_empty(), "closed without a word");
    assert!(b.server.wait_for_output("no handshake within the handshake timeout", WAIT), "{}", b.log());
}

#[test]
fn connections_over_the_listener_limit_are_closed() {
    let b = Broker::with_config(
        "[[listeners.mqtt]]\nname = \"small\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\nmax_connections = 2\n",
    );
    let port = b.listener("small").port();
    let _one = Raw::mqtt(port, 5, "one", 30);
    let _two = Raw::mqtt(port, 5, "two", 30);
    let mut third = Raw::connect(port);
    third.send(&raw::connect(5, "three", 30));
    assert!(third.read_until_closed().is_empty(), "the third connection gets no CONNACK");
    assert!(b.server.wait_for_output("connection limit reached", WAIT), "{}", b.log());
    drop(_one);
    // A slot frees when a connection ends.
    let start = Instant::now();
    loop {
        let mut again = Raw::connect(port);
        again.send(&raw::connect(5, "four", 30));
        match again.read_packet(Duration::from_secs(5)) {
            Some(p) if p.kind() == 2 => break,
            _ => assert!(start.elapsed() < WAIT, "no slot freed after a disconnect:\n{}", b.log()),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
