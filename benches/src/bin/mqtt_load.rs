//! `mqtt-load`: the brief's MQTT workloads against Axle and, in the same run, mosquitto and
//! rumqttd, with real clients (rumqttc) over loopback. It starts each broker itself.
//!
//! Workloads:
//! - `fan-in`: N publishers at QoS 1 (200-byte payloads) to `v/{i}/telemetry`, 2 consumers on
//!   the shared subscription `$share/bench/v/+/telemetry`. Prints published, acknowledged and
//!   received msgs/s, PUBACK p50/p99, lost and duplicated messages.
//! - `fan-in-q0`: the same at QoS 0.
//! - `offline-commands`: S persistent sessions subscribe to `v/{i}/cmd` and disconnect; 5
//!   commands each are published; broker RSS is read while they are offline; then all
//!   reconnect and the time until every command arrived is printed.
//!
//! Run: `cargo build --release -p axle-broker && cargo run --release -p axle-benches --bin
//! mqtt-load -- --workload all`. mosquitto comes from Debian (`mosquitto`), rumqttd from
//! `cargo install rumqttd`; a missing peer is reported and skipped. The peers keep nothing on
//! disk; Axle appends every message to its log with `fsync = always` unless `--axle-fsync`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axle_benches::percentile;
use clap::Parser;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, Outgoing, QoS};
use tokio::sync::Mutex;

#[derive(Parser, Clone)]
struct Args {
    /// fan-in, fan-in-q0, offline-commands or all.
    #[arg(long, default_value = "all")]
    workload: String,
    /// Comma-separated: axle, mosquitto, rumqttd.
    #[arg(long, default_value = "axle,mosquitto,rumqttd")]
    brokers: String,
    #[arg(long, default_value_t = 1000)]
    publishers: usize,
    /// Messages each publisher sends in fan-in.
    #[arg(long, default_value_t = 200)]
    messages: usize,
    #[arg(long, default_value_t = 200)]
    payload: usize,
    /// Persistent sessions in offline-commands.
    #[arg(long, default_value_t = 100_000)]
    sessions: usize,
    /// Axle's fsync policy.
    #[arg(long, default_value = "always")]
    axle_fsync: String,
    /// The axle binary (default: target/release/axle).
    #[arg(long)]
    axle_bin: Option<PathBuf>,
}

struct Broker {
    name: &'static str,
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Broker {
    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(18830)
}

fn wait_port(port: u16) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("broker did not listen on {port}")
}

fn start_broker(name: &str, args: &Args) -> anyhow::Result<Broker> {
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let child = match name {
        "axle" => {
            let bin = args.axle_bin.clone().unwrap_or_else(|| PathBuf::from("target/release/axle"));
            Command::new(&bin)
                .args(["serve", "--fsync", &args.axle_fsync, "--mqtt-tcp", &format!("0.0.0.0:{port}"), "--data-dir"])
                .arg(dir.path().join("data"))
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?
        }
        "mosquitto" => {
            let conf = dir.path().join("mosquitto.conf");
            std::fs::write(
                &conf,
                format!(
                    "listener {port}\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nmax_inflight_messages 100\nset_tcp_nodelay true\nlog_type error\n"
                ),
            )?;
            Command::new("mosquitto")
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting mosquitto")?
        }
        "rumqttd" => {
            let conf = dir.path().join("rumqttd.toml");
            std::fs::write(&conf, rumqttd_config(port))?;
            let bin = dirs_cargo_bin("rumqttd");
            Command::new(bin)
                .arg("--config")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting rumqttd")?
        }
        other => bail!("unknown broker {other}"),
    };
    let b = Broker { name: leak(name), child, port, _dir: dir };
    wait_port(port)?;
    Ok(b)
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

fn dirs_cargo_bin(name: &str) -> PathBuf {
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cargo"));
    home.join("bin").join(name)
}

fn rumqttd_config(port: u16) -> String {
    format!(
        r#"id = 0

[router]
id = 0
max_connections = 200000
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "0.0.0.0:{port}"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 100
    dynamic_filters = true
"#
    )
}

/// Raises the open-file limit (root may raise the hard limit too); children inherit it.
fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain getrlimit/setrlimit on this process.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        let target = libc::rlimit { rlim_cur: want, rlim_max: want.max(lim.rlim_max) };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &target) != 0 {
            let soft = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            libc::setrlimit(libc::RLIMIT_NOFILE, &soft);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

/// Loopback addresses to spread connections over (28k ephemeral ports each).
fn host_for(i: usize) -> String {
    format!("127.0.0.{}", 1 + (i / 20_000) % 250)
}

fn options(id: String, i: usize, port: u16, clean: bool) -> MqttOptions {
    let mut o = MqttOptions::new(id, host_for(i), port);
    o.set_keep_alive(Duration::from_secs(120));
    o.set_clean_session(clean);
    o.set_inflight(100);
    o.set_max_packet_size(1 << 20, 1 << 20);
    o
}

struct FanInResult {
    published_per_s: f64,
    acked_per_s: f64,
    received_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    lost: u64,
    duplicated: u64,
}

async fn fan_in(port: u16, args: &Args, qos: QoS) -> anyhow::Result<FanInResult> {
    let total = (args.publishers * args.messages) as u64;
    let seen = Arc::new(Mutex::new(vec![0u8; total as usize]));
    let received = Arc::new(AtomicU64::new(0));
    let last_recv = Arc::new(Mutex::new(Instant::now()));
    // Consumers on a shared subscription.
    let mut consumer_tasks = Vec::new();
    for c in 0..2 {
        let (client, mut el) =
            AsyncClient::new(options(format!("consumer-{c}-{}", rand::random::<u32>()), 0, port, true), 1000);
        client.subscribe("$share/bench/v/+/telemetry", QoS::AtLeastOnce).await?;
        wait_suback(&mut el).await?;
        let (seen, received, last_recv) = (seen.clone(), received.clone(), last_recv.clone());
        let per = args.messages;
        consumer_tasks.push(tokio::spawn(async move {
            let _client = client;
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let idx = parse_idx(&p.payload, per);
                        if let Some(i) = idx {
                            let mut s = seen.lock().await;
                            if let Some(slot) = s.get_mut(i) {
                                *slot = slot.saturating_add(1);
                            }
                        }
                        received.fetch_add(1, Ordering::Relaxed);
                        *last_recv.lock().await = Instant::now();
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }));
    }
    // Publishers: connect all, then start together.
    let start_gate = Arc::new(tokio::sync::Barrier::new(args.publishers + 1));
    let mut pub_tasks = Vec::new();
    for i in 0..args.publishers {
        let (client, mut el) =
            AsyncClient::new(options(format!("pub-{i}-{}", rand::random::<u32>()), i, port, true), 200);
        let gate = start_gate.clone();
        let (messages, payload) = (args.messages, args.payload);
        pub_tasks.push(tokio::spawn(async move {
            wait_connack(&mut el).await?;
            let topic = format!("v/{i}/telemetry");
            let sender = {
                let client = client.clone();
                let gate = gate.clone();
                tokio::spawn(async move {
                    gate.wait().await;
                    for seq in 0..messages {
                        let mut body = format!("{}:{}:", i, seq).into_bytes();
                        body.resize(payload, b'x');
                        if client.publish(topic.clone(), qos, false, body).await.is_err() {
                            break;
                        }
                    }
                })
            };
            let mut sent_at: HashMap<u16, Instant> = HashMap::new();
            let mut lat = Vec::with_capacity(messages);
            let mut sent = 0usize;
            let mut last_sent = Instant::now();
            let mut last_ack = Instant::now();
            while (qos == QoS::AtMostOnce && sent < messages) || (qos != QoS::AtMostOnce && lat.len() < messages) {
                match tokio::time::timeout(Duration::from_secs(60), el.poll()).await {
                    Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                        sent += 1;
                        last_sent = Instant::now();
                        sent_at.insert(pkid, last_sent);
                    }
                    Ok(Ok(Event::Incoming(Incoming::PubAck(a)))) => {
                        if let Some(t) = sent_at.remove(&a.pkid) {
                            last_ack = Instant::now();
                            lat.push(t.elapsed().as_secs_f64() * 1e3);
                        }
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(anyhow::anyhow!("publisher {i}: {e}")),
                    Err(_) => return Err(anyhow::anyhow!("publisher {i}: stalled for 60 s")),
                }
            }
            // Keep the event loop running until the sender is done so QoS 0 bytes leave.
            let _ = sender.await;
            let _ = client.disconnect().await;
            for _ in 0..10 {
                if tokio::time::timeout(Duration::from_millis(100), el.poll()).await.is_err() {
                    break;
                }
            }
            Ok::<_, anyhow::Error>((lat, last_sent, last_ack))
        }));
    }
    start_gate.wait().await;
    let started = Instant::now();
    let mut lat = Vec::new();
    let mut last_sent = started;
    let mut last_ack = started;
    for t in pub_tasks {
        let (l, s, a) = t.await??;
        lat.extend(l);
        last_sent = last_sent.max(s);
        last_ack = last_ack.max(a);
    }
    // Wait for the consumers to drain (no progress for 3 s ends the wait).
    let mut prev = received.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = received.load(Ordering::Relaxed);
        if now >= total || now == prev {
            break;
        }
        prev = now;
    }
    for t in consumer_tasks {
        t.abort();
    }
    let seen = seen.lock().await;
    let unique = seen.iter().filter(|c| **c > 0).count() as u64;
    let dup: u64 = seen.iter().map(|c| u64::from(c.saturating_sub(1))).sum();
    let recv_secs = last_recv.lock().await.duration_since(started).as_secs_f64().max(1e-3);
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok(FanInResult {
        published_per_s: total as f64 / last_sent.duration_since(started).as_secs_f64().max(1e-3),
        acked_per_s: if qos == QoS::AtMostOnce {
            f64::NAN
        } else {
            total as f64 / last_ack.duration_since(started).as_secs_f64().max(1e-3)
        },
        received_per_s: unique as f64 / recv_secs,
        p50_ms: percentile(&lat, 50.0),
        p99_ms: percentile(&lat, 99.0),
        lost: total - unique,
        duplicated: dup,
    })
}

fn parse_idx(payload: &[u8], per: usize) -> Option<usize> {
    let s = std::str::from_utf8(payload.get(..payload.len().min(32))?).ok()?;
    let mut it = s.split(':');
    let p: usize = it.next()?.parse().ok()?;
    let q: usize = it.next()?.parse().ok()?;
    Some(p * per + q)
}

async fn wait_connack(el: &mut EventLoop) -> anyhow::Result<()> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), el.poll()).await {
            Ok(Ok(Event::Incoming(Incoming::ConnAck(_)))) => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("connect failed: {e}"),
            Err(_) => bail!("no CONNACK within 30 s"),
        }
    }
}

async fn wait_suback(el: &mut EventLoop) -> anyhow::Result<()> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), el.poll()).await {
            Ok(Ok(Event::Incoming(Incoming::SubAck(_)))) => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("subscribe failed: {e}"),
            Err(_) => bail!("no SUBACK within 30 s"),
        }
    }
}

struct OfflineResult {
    rss_idle_mib: f64,
    rss_offline_mib: f64,
    deliver_secs: f64,
    delivered: u64,
    expected: u64,
}

async fn offline_commands(b: &Broker, sessions: usize) -> anyhow::Result<OfflineResult> {
    let rss_idle = b.rss_mib();
    let port = b.port;
    // 1. Create persistent sessions, subscribe, disconnect.
    let sem = Arc::new(tokio::sync::Semaphore::new(500));
    let mut tasks = Vec::new();
    for i in 0..sessions {
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await?;
            let (client, mut el) = AsyncClient::new(options(format!("car-{i}"), i, port, false), 10);
            client.subscribe(format!("v/car-{i}/cmd"), QoS::AtLeastOnce).await?;
            wait_connack(&mut el).await?;
            wait_suback(&mut el).await?;
            client.disconnect().await?;
            for _ in 0..20 {
                match tokio::time::timeout(Duration::from_secs(5), el.poll()).await {
                    Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) | Ok(Err(_)) | Err(_) => break,
                    _ => {}
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    // 2. Five commands each.
    let (client, mut el) = AsyncClient::new(options(format!("tsp-{}", rand::random::<u32>()), 0, port, true), 1000);
    let expected = sessions as u64 * 5;
    let publisher = tokio::spawn(async move {
        for round in 0..5 {
            for i in 0..sessions {
                client.publish(format!("v/car-{i}/cmd"), QoS::AtLeastOnce, false, format!("cmd {round}")).await?;
            }
        }
        Ok::<_, anyhow::Error>(client)
    });
    let mut acked = 0u64;
    while acked < expected {
        match tokio::time::timeout(Duration::from_secs(60), el.poll()).await {
            Ok(Ok(Event::Incoming(Incoming::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("command publisher: {e}"),
            Err(_) => bail!("command publisher stalled at {acked}/{expected}"),
        }
    }
    let _client = publisher.await??;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_offline = b.rss_mib();
    // 3. Everyone reconnects.
    let delivered = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..sessions {
        let (sem, delivered) = (sem.clone(), delivered.clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await?;
            let (client, mut el) = AsyncClient::new(options(format!("car-{i}"), i, port, false), 10);
            let mut got = 0;
            while got < 5 {
                match tokio::time::timeout(Duration::from_secs(60), el.poll()).await {
                    Ok(Ok(Event::Incoming(Incoming::Publish(_)))) => {
                        got += 1;
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) | Err(_) => break,
                }
            }
            let _ = client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_millis(200), el.poll()).await;
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(OfflineResult {
        rss_idle_mib: rss_idle,
        rss_offline_mib: rss_offline,
        deliver_secs: started.elapsed().as_secs_f64(),
        delivered: delivered.load(Ordering::Relaxed),
        expected,
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let limit = raise_nofile(1_100_000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let brokers: Vec<&str> = args.brokers.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    let workloads: Vec<&str> = match args.workload.as_str() {
        "all" => vec!["fan-in", "fan-in-q0", "offline-commands"],
        w => vec![w],
    };
    println!("mqtt-load: {} publishers x {} msgs ({} B) for fan-in; {} sessions for offline-commands; open-file limit {limit}", args.publishers, args.messages, args.payload, args.sessions);
    println!(
        "Axle appends every message to its log (fsync = {}); mosquitto and rumqttd keep nothing on disk.",
        args.axle_fsync
    );
    for w in workloads {
        println!("\n## {w}\n");
        match w {
            "fan-in" | "fan-in-q0" => {
                println!("| broker | published msg/s | acked msg/s | received msg/s | PUBACK p50 ms | p99 ms | lost | duplicated |");
                println!("|---|---:|---:|---:|---:|---:|---:|---:|");
            }
            _ => {
                println!(
                    "| broker | RSS idle MiB | RSS with sessions offline MiB | delivered | time to deliver all s |"
                );
                println!("|---|---:|---:|---:|---:|");
            }
        }
        let mut received_rates = Vec::new();
        for name in &brokers {
            let b = match start_broker(name, &args) {
                Ok(b) => b,
                Err(e) => {
                    println!("| {name} | not run: {e:#} |||||||");
                    continue;
                }
            };
            let out = match w {
                "fan-in" | "fan-in-q0" => {
                    let qos = if w == "fan-in" { QoS::AtLeastOnce } else { QoS::AtMostOnce };
                    rt.block_on(fan_in(b.port, &args, qos)).map(|r| {
                        received_rates.push((b.name, r.received_per_s));
                        format!(
                            "| {} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {} | {} |",
                            b.name,
                            r.published_per_s,
                            r.acked_per_s,
                            r.received_per_s,
                            r.p50_ms,
                            r.p99_ms,
                            r.lost,
                            r.duplicated
                        )
                    })
                }
                _ => rt.block_on(offline_commands(&b, args.sessions)).map(|r| {
                    format!(
                        "| {} | {:.0} | {:.0} | {}/{} | {:.1} |",
                        b.name, r.rss_idle_mib, r.rss_offline_mib, r.delivered, r.expected, r.deliver_secs
                    )
                }),
            };
            match out {
                Ok(line) => println!("{line}"),
                Err(e) => println!("| {} | failed: {e:#} |||||||", b.name),
            }
            drop(b);
        }
        if let Some((_, axle)) = received_rates.iter().find(|(n, _)| *n == "axle") {
            for (n, r) in &received_rates {
                if *n != "axle" {
                    println!("\nAxle / {n} received msg/s: {:.2}", axle / r);
                }
            }
        }
    }
    Ok(())
}
