//! `transport-load`: the cost of Axle's transports. One `axle` process serves plain TCP,
//! TLS (rustls, TLS 1.3) and QUIC (quinn, single-stream) at once; in the same run each is
//! measured for
//! - connection setup rate: full handshakes (no resumption) + CONNECT/CONNACK + DISCONNECT,
//!   by `--setup-workers` concurrent clients for `--secs` seconds;
//! - fan-in QoS 1 throughput: `--publishers` connections each keeping `--window` PUBLISHes of
//!   `--size` bytes in flight for `--secs` seconds, counted by PUBACKs received;
//!
//! and TLS/TCP and QUIC/TCP ratios are printed. The client speaks MQTT 3.1.1 with the broker's
//! own codec (`axle_broker::codec`) over any byte stream. Certificates are generated with rcgen.
//!
//! Run: `cargo build --release -p axle-broker -p axle-benches && target/release/transport-load`

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axle_broker::codec::{self, Connect, Packet, ProtocolVersion, Publish, QoS};
use bytes::{Bytes, BytesMut};
use clap::Parser;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Parser)]
struct Args {
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// Concurrent clients connecting and disconnecting in the setup measurement.
    #[arg(long, default_value_t = 16)]
    setup_workers: usize,
    /// Publishing connections in the fan-in measurement.
    #[arg(long, default_value_t = 16)]
    publishers: usize,
    /// QoS 1 PUBLISHes in flight per publisher.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// The broker's `--fsync` policy (`never` isolates the transport from the disk).
    #[arg(long, default_value = "never")]
    fsync: String,
    /// Runs of each measurement; the median is printed.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The axle binary (default: beside this one).
    #[arg(long)]
    axle_bin: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Tcp,
    Tls,
    Quic,
}

/// How to open one MQTT byte stream to the broker.
#[derive(Clone)]
struct Target {
    kind: Kind,
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
    /// One client UDP socket for all QUIC connections (quinn multiplexes them on it).
    quic: quinn::Endpoint,
}

type Io = Box<dyn AsyncReadWrite>;
trait AsyncReadWrite: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncReadWrite for T {}

/// A QUIC connection's MQTT stream; closes the connection when dropped.
struct QuicIo {
    io: tokio::io::Join<quinn::RecvStream, quinn::SendStream>,
    conn: quinn::Connection,
}

impl Drop for QuicIo {
    fn drop(&mut self) {
        self.conn.close(0u32.into(), b"");
    }
}

impl AsyncRead for QuicIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuicIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Target {
    async fn open(&self) -> anyhow::Result<Io> {
        Ok(match self.kind {
            Kind::Tcp => {
                let s = tokio::net::TcpStream::connect(self.addr).await?;
                s.set_nodelay(true)?;
                Box::new(s)
            }
            Kind::Tls => {
                let s = tokio::net::TcpStream::connect(self.addr).await?;
                s.set_nodelay(true)?;
                Box::new(self.tls.connect(ServerName::try_from("localhost")?, s).await?)
            }
            Kind::Quic => {
                let conn = self.quic.connect(self.addr, "localhost")?.await?;
                let (send, recv) = conn.open_bi().await?;
                Box::new(QuicIo { io: tokio::io::join(recv, send), conn })
            }
        })
    }
}

/// One MQTT 3.1.1 client over a byte stream.
struct Client {
    io: Io,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

impl Client {
    async fn connect(target: &Target, id: &str) -> anyhow::Result<Client> {
        let mut c =
            Client { io: target.open().await?, rbuf: BytesMut::with_capacity(16 * 1024), wbuf: BytesMut::new() };
        let connect = Connect {
            protocol: ProtocolVersion::V311,
            clean_start: true,
            keep_alive: 60,
            client_id: id.into(),
            ..Default::default()
        };
        c.send(&Packet::Connect(connect))?;
        c.flush().await?;
        match c.next().await? {
            Packet::ConnAck(a) if a.reason == codec::ReasonCode::Success => Ok(c),
            other => bail!("expected a successful CONNACK, got {other:?}"),
        }
    }

    fn send(&mut self, p: &Packet) -> anyhow::Result<()> {
        codec::encode(p, ProtocolVersion::V311, &mut self.wbuf).map_err(|e| anyhow::anyhow!("encode: {e}"))
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        self.io.write_all(&self.wbuf).await?;
        self.io.flush().await?;
        self.wbuf.clear();
        Ok(())
    }

    async fn next(&mut self) -> anyhow::Result<Packet> {
        loop {
            if let Some(p) = codec::decode(&mut self.rbuf, Some(ProtocolVersion::V311), u32::MAX)
                .map_err(|e| anyhow::anyhow!("decode: {e}"))?
            {
                return Ok(p);
            }
            if self.io.read_buf(&mut self.rbuf).await? == 0 {
                bail!("the broker closed the connection");
            }
        }
    }

    /// A packet already in the read buffer, without reading.
    fn buffered(&mut self) -> anyhow::Result<Option<Packet>> {
        codec::decode(&mut self.rbuf, Some(ProtocolVersion::V311), u32::MAX).map_err(|e| anyhow::anyhow!("decode: {e}"))
    }

    async fn disconnect(mut self) {
        if self.send(&Packet::Disconnect(Default::default())).is_ok() && self.flush().await.is_ok() {
            let _ = self.io.shutdown().await;
        }
    }
}

/// Completed connect + CONNACK + disconnect cycles per second.
async fn setup_rate(target: &Target, workers: usize, secs: u64) -> anyhow::Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (t, stop, done) = (target.clone(), stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let c = Client::connect(&t, &format!("setup-{w}-{i}")).await?;
                c.disconnect().await;
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            anyhow::Ok(())
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let n = done.load(Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    for t in tasks {
        t.await??;
    }
    Ok(n as f64 / elapsed)
}

/// PUBACKs per second from `publishers` clients with `window` QoS 1 messages in flight each.
async fn fan_in(target: &Target, a: &Args, run: usize) -> anyhow::Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let payload = Bytes::from(vec![b'x'; a.size]);
    let mut clients = Vec::new();
    for p in 0..a.publishers {
        clients.push(Client::connect(target, &format!("fan-in-{:?}-{run}-{p}", target.kind)).await?);
    }
    let mut tasks = Vec::new();
    for (p, mut c) in clients.into_iter().enumerate() {
        let (stop, acked, payload, window) = (stop.clone(), acked.clone(), payload.clone(), a.window);
        tasks.push(tokio::spawn(async move {
            let topic = format!("bench/{p}/telemetry");
            let mut next_id: u16 = 1;
            let mut inflight = 0usize;
            loop {
                let stopping = stop.load(Ordering::Relaxed);
                while !stopping && inflight < window {
                    let publish = Publish {
                        qos: QoS::AtLeastOnce,
                        topic: topic.clone(),
                        packet_id: Some(next_id),
                        payload: payload.clone(),
                        ..Default::default()
                    };
                    c.send(&Packet::Publish(publish))?;
                    next_id = next_id.checked_add(1).unwrap_or(1);
                    inflight += 1;
                }
                c.flush().await?;
                if inflight == 0 {
                    break;
                }
                // One acknowledgement awaited, then every one already received, then refill:
                // one write per batch, as a real client's event loop does.
                let mut p = Some(c.next().await?);
                while let Some(packet) = p {
                    if let Packet::PubAck(_) = packet {
                        inflight -= 1;
                        if !stop.load(Ordering::Relaxed) {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    p = c.buffered()?;
                }
            }
            c.disconnect().await;
            anyhow::Ok(())
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(a.secs)).await;
    let n = acked.load(Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    Ok(n as f64 / elapsed)
}

/// The broker process; killed on drop.
struct Axle(Child);

impl Drop for Axle {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bound(log: &Path, field: &str, timeout: Duration) -> anyhow::Result<SocketAddr> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(field)) {
            let key = if field.starts_with(" listener=") { " addr=" } else { " mqtt_tcp=" };
            if let Some(at) = line.find(key) {
                let addr: String = line[at + key.len()..].chars().take_while(|c| !c.is_whitespace()).collect();
                return addr.parse().with_context(|| format!("address in {line:?}"));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("axle did not log {field:?} within {timeout:?}:\n{}", std::fs::read_to_string(log).unwrap_or_default())
}

fn start_axle(bin: &Path, dir: &Path, fsync: &str) -> anyhow::Result<(Axle, [SocketAddr; 3])> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    std::fs::write(dir.join("cert.pem"), cert.cert.pem())?;
    std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem())?;
    let tls = format!(
        "[listeners.mqtt.tls]\ncert = \"{c}\"\nkey = \"{k}\"\n",
        c = dir.join("cert.pem").display(),
        k = dir.join("key.pem").display()
    );
    let cfg = format!(
        "[mqtt]\nallow_anonymous = true\n\
         [[listeners.mqtt]]\nname = \"tls\"\nkind = \"tls\"\nbind = \"127.0.0.1:0\"\n{tls}\
         [[listeners.mqtt]]\nname = \"quic\"\nkind = \"quic\"\nbind = \"127.0.0.1:0\"\n{tls}"
    );
    std::fs::write(dir.join("axle.toml"), cfg)?;
    let log = dir.join("axle.log");
    let child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(dir.join("axle.toml"))
        .args([
            "--mqtt-tcp",
            "127.0.0.1:0",
            "--grpc",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--fsync",
            fsync,
            "--data-dir",
        ])
        .arg(dir.join("data"))
        // The binary's own lines (bound addresses) only: per-connection logging is not measured.
        .env("RUST_LOG", "warn,axle=info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let axle = Axle(child);
    let t = Duration::from_secs(30);
    let addrs =
        [bound(&log, "axle serving", t)?, bound(&log, " listener=tls ", t)?, bound(&log, " listener=quic ", t)?];
    Ok((axle, addrs))
}

fn targets(dir: &Path, addrs: [SocketAddr; 3]) -> anyhow::Result<Vec<Target>> {
    let pem = std::fs::read(dir.join("cert.pem"))?;
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    roots.add(CertificateDer::from_pem_slice(&pem)?)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = |alpn: Option<&[u8]>| -> anyhow::Result<rustls::ClientConfig> {
        let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        // Every connection is a full handshake.
        c.resumption = rustls::client::Resumption::disabled();
        c.alpn_protocols = alpn.map(|a| vec![a.to_vec()]).unwrap_or_default();
        Ok(c)
    };
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client(None)?));
    let quic_cfg =
        quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(client(Some(b"mqtt"))?)?));
    let mut quic = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    quic.set_default_client_config(quic_cfg);
    let [tcp_addr, tls_addr, quic_addr] = addrs;
    Ok([(Kind::Tcp, tcp_addr), (Kind::Tls, tls_addr), (Kind::Quic, quic_addr)]
        .into_iter()
        .map(|(kind, addr)| Target { kind, addr, tls: tls.clone(), quic: quic.clone() })
        .collect())
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let bin = match &a.axle_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("axle"),
    };
    if !bin.is_file() {
        bail!("{} not found; build it: cargo build --release -p axle-broker", bin.display());
    }
    let dir = tempfile::Builder::new().prefix("transport-load-").tempdir_in(std::env::current_dir()?)?;
    let (_axle, addrs) = start_axle(&bin, dir.path(), &a.fsync)?;
    let rt = tokio::runtime::Runtime::new()?;
    let targets = {
        let _guard = rt.enter();
        targets(dir.path(), addrs)?
    };
    println!(
        "transport-load: median of {} runs of {} s; setup: {} workers; fan-in: {} publishers x {} in flight, {} B, fsync {}",
        a.runs, a.secs, a.setup_workers, a.publishers, a.window, a.size, a.fsync
    );
    let mut setups: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    let mut fans: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    // Runs interleave the transports, so a load change on the machine hits all of them.
    for run in 0..a.runs {
        for (i, t) in targets.iter().enumerate() {
            let setup =
                rt.block_on(setup_rate(t, a.setup_workers, a.secs)).with_context(|| format!("{:?} setup", t.kind))?;
            let fan = rt.block_on(fan_in(t, &a, run)).with_context(|| format!("{:?} fan-in", t.kind))?;
            println!("run {run} {:>5?}: setup {setup:>9.0} conn/s   fan-in {fan:>9.0} msg/s", t.kind);
            setups[i].push(setup);
            fans[i].push(fan);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut rows = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let (setup, fan) = (median(&mut setups[i]), median(&mut fans[i]));
        println!("median {:>5?}: setup {setup:>9.0} conn/s   fan-in {fan:>9.0} msg/s", t.kind);
        rows.push((t.kind, setup, fan));
    }
    let (_, tcp_setup, tcp_fan) = rows[0];
    for (kind, setup, fan) in &rows[1..] {
        println!("{kind:?}/TCP: setup {:.2}x   fan-in {:.2}x", setup / tcp_setup, fan / tcp_fan);
    }
    Ok(())
}
