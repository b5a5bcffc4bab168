//! `slow-subscriber`: one QoS 1 subscriber on `v/+/telemetry` reads at a fixed slow rate while
//! publishers push a backlog as fast as they can; broker RSS is sampled throughout. Afterwards
//! the subscriber reads at full speed and every message is checked off (lost / duplicated).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rumqttc::{Event, Incoming, QoS};
use tokio::task::JoinSet;

use super::brokers::read_rss;
use super::client::{client, parse_payload, wait_connack, wait_suback};
use super::fan_in::{publish_all, ClientKind, FanInParams};
use super::sampler::{series, RssSampler};

#[derive(Clone, Debug)]
pub struct SlowParams {
    pub port: u16,
    pub pid: u32,
    pub publishers: usize,
    pub messages: usize,
    pub payload: usize,
    /// Messages per second the slow subscriber reads.
    pub rate: f64,
    /// Seconds the backlog is held (subscriber still slow) after the publishers finish.
    pub hold_secs: u64,
}

#[derive(Clone, Debug, Default)]
pub struct SlowResult {
    pub total: u64,
    pub backlog_mib: f64,
    pub published_per_s: f64,
    pub rss_start_mib: f64,
    pub rss_max_mib: f64,
    pub rss_end_mib: f64,
    pub read_while_slow: u64,
    pub drain_secs: f64,
    pub lost: u64,
    pub duplicated: u64,
    pub series: String,
}

pub async fn run(p: SlowParams) -> anyhow::Result<SlowResult> {
    let total = (p.publishers * p.messages) as u64;
    let seen: Arc<Vec<AtomicU32>> = Arc::new((0..total).map(|_| AtomicU32::new(0)).collect());
    let received = Arc::new(AtomicU64::new(0));
    let slow = Arc::new(AtomicBool::new(true));
    let (cl, mut el) = client(format!("slow-{}", rand::random::<u32>()), 0, p.port, true, 100, 10);
    cl.subscribe("v/+/telemetry", QoS::AtLeastOnce).await?;
    wait_connack(&mut el, 30).await.context("slow subscriber")?;
    wait_suback(&mut el, 30).await.context("slow subscriber")?;
    let rss_start = read_rss(p.pid).rss_mib;
    let subscriber = {
        let (seen, received, slow, messages, rate) = (seen.clone(), received.clone(), slow.clone(), p.messages, p.rate);
        tokio::spawn(async move {
            let _keep = cl;
            let started = Instant::now();
            while received.load(Ordering::Relaxed) < total {
                if slow.load(Ordering::Relaxed) {
                    let due = received.load(Ordering::Relaxed) as f64 / rate;
                    let now = started.elapsed().as_secs_f64();
                    if due > now {
                        tokio::time::sleep(Duration::from_secs_f64(due - now)).await;
                        continue;
                    }
                }
                match tokio::time::timeout(Duration::from_secs(60), el.poll()).await {
                    Ok(Ok(Event::Incoming(Incoming::Publish(m)))) => {
                        if let Some((pb, seq)) = parse_payload(&m.payload) {
                            if let Some(s) = seen.get(pb * messages + seq) {
                                s.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => bail!("slow subscriber lost its connection: {e}"),
                    Err(_) => return Ok(()),
                }
            }
            Ok(())
        })
    };

    let sampler = RssSampler::start(p.pid, Duration::from_millis(500));
    let fp = FanInParams {
        port: p.port,
        publishers: p.publishers,
        messages: p.messages,
        payload: p.payload,
        qos: QoS::AtLeastOnce,
        consumers: 0,
        connect_concurrency: 100,
        rate: None,

        client: ClientKind::Rumqttc,
    };
    let started = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..p.publishers {
        let fp = fp.clone();
        set.spawn(async move {
            let (cl, mut el) = client(format!("spub-{i}-{}", rand::random::<u32>()), i, fp.port, true, 100, 200);
            wait_connack(&mut el, 60).await.with_context(|| format!("publisher {i}"))?;
            publish_all(i, cl, el, &fp).await
        });
    }
    while let Some(r) = set.join_next().await {
        r.context("publisher task panicked")??;
    }
    let published_per_s = total as f64 / started.elapsed().as_secs_f64().max(1e-3);
    tokio::time::sleep(Duration::from_secs(p.hold_secs)).await;
    let samples = sampler.stop().await;
    let rss_end = read_rss(p.pid).rss_mib;
    let read_while_slow = received.load(Ordering::Relaxed);

    // Let the subscriber catch up and check every message off.
    slow.store(false, Ordering::Relaxed);
    let drain_start = Instant::now();
    match tokio::time::timeout(Duration::from_secs(600), subscriber).await {
        Ok(r) => r.context("subscriber task panicked")??,
        Err(_) => bail!("the subscriber did not catch up within 600 s"),
    }
    let drain_secs = drain_start.elapsed().as_secs_f64();
    let unique = seen.iter().filter(|c| c.load(Ordering::Relaxed) > 0).count() as u64;
    let duplicated = seen.iter().map(|c| u64::from(c.load(Ordering::Relaxed).saturating_sub(1))).sum();
    Ok(SlowResult {
        total,
        backlog_mib: (total as usize * p.payload) as f64 / (1024.0 * 1024.0),
        published_per_s,
        rss_start_mib: rss_start,
        rss_max_mib: samples.iter().map(|s| s.1).fold(rss_start, f64::max),
        rss_end_mib: rss_end,
        read_while_slow,
        drain_secs,
        lost: total - unique,
        duplicated,
        series: series(&samples, 12),
    })
}
