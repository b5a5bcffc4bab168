//! `offline-commands`: S persistent sessions (`car-{i}`, clean session off) subscribe to
//! `v/{i}/cmd` at QoS 1 and disconnect; C commands each are published at QoS 1 while they are
//! offline (broker RSS sampled throughout); then all reconnect and the time until every command
//! arrived is measured. Commands carry `session:round`, so lost and duplicated ones are counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rumqttc::{Event, Incoming, Outgoing, QoS};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::client::{client, disconnect, parse_payload, payload, wait_connack, wait_suback};
use super::sampler::RssSampler;

#[derive(Clone, Debug)]
pub struct OfflineParams {
    pub port: u16,
    pub pid: u32,
    pub sessions: usize,
    pub commands: usize,
    /// Connections open at the same time while creating and reconnecting sessions.
    pub concurrency: usize,
    /// Connection handshakes in progress at the same time (below the brokers' listen backlog:
    /// beyond it the kernel falls back to SYN cookies and resets some connections).
    pub connect_concurrency: usize,
    /// Connections publishing the commands.
    pub publishers: usize,
    /// Give up on the reconnect phase after this long and report what arrived by then.
    pub deliver_deadline: Duration,
}

#[derive(Clone, Debug, Default)]
pub struct OfflineResult {
    pub expected: u64,
    pub rss_idle_mib: f64,
    pub rss_sessions_mib: f64,
    pub rss_offline_mib: f64,
    /// Largest RSS seen while the sessions were offline (publishing included).
    pub rss_offline_max_mib: f64,
    pub setup_secs: f64,
    pub publish_secs: f64,
    /// From the first reconnect to the last command received.
    pub deliver_secs: f64,
    pub delivered: u64,
    pub duplicated: u64,
    pub sessions_short: u64,
    pub sessions_not_present: u64,
    /// The reconnect phase hit the deadline (`delivered` is what arrived by then).
    pub timed_out: bool,
    /// Failed reconnect attempts (each retried up to 5 times) and the first one's error.
    pub connect_errors: u64,
    pub first_connect_error: String,
    pub offline_series: String,
}

pub async fn run(p: OfflineParams) -> anyhow::Result<OfflineResult> {
    let rss_idle = super::brokers::read_rss(p.pid).rss_mib;
    let t = Instant::now();
    create_sessions(&p).await?;
    let setup_secs = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_sessions = super::brokers::read_rss(p.pid).rss_mib;

    let sampler = RssSampler::start(p.pid, Duration::from_millis(500));
    let t = Instant::now();
    publish_commands(&p).await?;
    let publish_secs = t.elapsed().as_secs_f64();
    // Offline for a few more seconds, still sampling.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let samples = sampler.stop().await;
    let rss_offline = super::brokers::read_rss(p.pid).rss_mib;
    let rss_offline_max = samples.iter().map(|s| s.1).fold(rss_sessions, f64::max);

    let r = reconnect_all(&p).await?;
    Ok(OfflineResult {
        expected: (p.sessions * p.commands) as u64,
        rss_idle_mib: rss_idle,
        rss_sessions_mib: rss_sessions,
        rss_offline_mib: rss_offline,
        rss_offline_max_mib: rss_offline_max,
        setup_secs,
        publish_secs,
        deliver_secs: r.deliver_secs,
        delivered: r.delivered,
        duplicated: r.duplicated,
        sessions_short: r.short,
        sessions_not_present: r.not_present,
        connect_errors: r.connect_errors,
        first_connect_error: r.first_error,
        timed_out: r.timed_out,
        offline_series: super::sampler::series(&samples, 12),
    })
}

/// Runs `job(i)` for `0..n` with at most `limit` at a time; fails with the first error.
async fn bounded<F, Fut, T>(n: usize, limit: usize, job: F) -> anyhow::Result<Vec<T>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let mut set = JoinSet::new();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        if set.len() >= limit.max(1) {
            if let Some(r) = set.join_next().await {
                out.push(r.context("task panicked")??);
            }
        }
        set.spawn(job(i));
    }
    while let Some(r) = set.join_next().await {
        out.push(r.context("task panicked")??);
    }
    Ok(out)
}

async fn create_sessions(p: &OfflineParams) -> anyhow::Result<()> {
    let port = p.port;
    let gate = Arc::new(Semaphore::new(p.connect_concurrency.max(1)));
    bounded(p.sessions, p.concurrency, move |i| {
        let gate = gate.clone();
        async move {
            let mut last = None;
            for _attempt in 0..3 {
                match create_one(i, port, &gate).await {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        last = Some(e);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt")).context(format!("creating session car-{i}")))
        }
    })
    .await?;
    Ok(())
}

async fn create_one(i: usize, port: u16, gate: &Semaphore) -> anyhow::Result<()> {
    let (cl, mut el) = client(format!("car-{i}"), i, port, false, 10, 10);
    cl.subscribe(format!("v/{i}/cmd"), QoS::AtLeastOnce).await?;
    {
        let _handshake = gate.acquire().await?;
        wait_connack(&mut el, 60).await?;
    }
    wait_suback(&mut el, 60).await?;
    disconnect(&cl, &mut el).await;
    Ok(())
}

async fn publish_commands(p: &OfflineParams) -> anyhow::Result<()> {
    let mut set = JoinSet::new();
    for k in 0..p.publishers.max(1) {
        let p = p.clone();
        set.spawn(async move {
            let mut attempt = 0;
            let (cl, mut el) = loop {
                let (cl, mut el) = client(format!("tsp-{k}-{}", rand::random::<u32>()), k, p.port, true, 100, 1000);
                match wait_connack(&mut el, 60).await {
                    Ok(_) => break (cl, el),
                    Err(e) if attempt >= 4 => return Err(e.context(format!("connecting command publisher {k}"))),
                    Err(_) => attempt += 1,
                }
            };
            let mine: Vec<usize> = (k..p.sessions).step_by(p.publishers.max(1)).collect();
            let expected = mine.len() * p.commands;
            let commands = p.commands;
            let sender = {
                let cl = cl.clone();
                tokio::spawn(async move {
                    for round in 0..commands {
                        for &i in &mine {
                            cl.publish(format!("v/{i}/cmd"), QoS::AtLeastOnce, false, payload(i, round, 32)).await?;
                        }
                    }
                    Ok::<_, rumqttc::ClientError>(())
                })
            };
            let mut acked = 0;
            // A broker busy with 100k session disconnects may take minutes to ack the first one.
            while acked < expected {
                match tokio::time::timeout(Duration::from_secs(300), el.poll()).await {
                    Ok(Ok(Event::Incoming(Incoming::PubAck(_)))) => acked += 1,
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => bail!("command publisher {k}: {e} after {acked}/{expected} acks"),
                    Err(_) => bail!("command publisher {k}: no ack for 300 s, stalled at {acked}/{expected} acks"),
                }
            }
            sender.await.context("sender task")??;
            disconnect(&cl, &mut el).await;
            Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r.context("publisher task panicked")??;
    }
    Ok(())
}

struct SessionOutcome {
    unique: u64,
    duplicated: u64,
    session_present: bool,
    connect_errors: u64,
    first_error: Option<String>,
}

struct Reconnected {
    delivered: u64,
    duplicated: u64,
    short: u64,
    not_present: u64,
    deliver_secs: f64,
    connect_errors: u64,
    first_error: String,
    timed_out: bool,
}

/// Reconnects every session and waits (up to 30 s of silence each) for its commands.
async fn reconnect_all(p: &OfflineParams) -> anyhow::Result<Reconnected> {
    let base = Instant::now();
    let last_ns = Arc::new(AtomicU64::new(0));
    let live = Arc::new(AtomicU64::new(0));
    let progress = {
        let (live, total) = (live.clone(), (p.sessions * p.commands) as u64);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            tick.tick().await;
            loop {
                tick.tick().await;
                let n = live.load(Ordering::Relaxed);
                let t = base.elapsed().as_secs_f64();
                eprintln!("    reconnect: {n}/{total} commands after {t:.0} s ({:.0}/s)", n as f64 / t);
            }
        })
    };
    let (port, commands) = (p.port, p.commands);
    let gate = Arc::new(Semaphore::new(p.connect_concurrency.max(1)));
    let outcomes = {
        let (last_ns, live) = (last_ns.clone(), live.clone());
        let all = bounded(p.sessions, p.concurrency, move |i| {
            let (last_ns, gate, live) = (last_ns.clone(), gate.clone(), live.clone());
            async move {
                // A refused or reset connection is retried (and counted), not fatal.
                let mut connect_errors = 0u64;
                let mut first_error = None;
                let mut connected = None;
                for _attempt in 0..5 {
                    let (cl, mut el) = client(format!("car-{i}"), i, port, false, 100, 10);
                    let handshake = gate.acquire().await?;
                    let r = wait_connack(&mut el, 60).await;
                    drop(handshake);
                    match r {
                        Ok(present) => {
                            connected = Some((cl, el, present));
                            break;
                        }
                        Err(e) => {
                            connect_errors += 1;
                            first_error.get_or_insert_with(|| format!("car-{i}: {e:#}"));
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
                let Some((cl, mut el, session_present)) = connected else {
                    return Ok(SessionOutcome {
                        unique: 0,
                        duplicated: 0,
                        session_present: false,
                        connect_errors,
                        first_error,
                    });
                };
                let mut seen = vec![0u32; commands];
                let mut unique = 0;
                let mut duplicated = 0;
                while unique < commands {
                    match tokio::time::timeout(Duration::from_secs(30), el.poll()).await {
                        Ok(Ok(Event::Incoming(Incoming::Publish(m)))) => {
                            last_ns.fetch_max(base.elapsed().as_nanos() as u64, Ordering::Relaxed);
                            match parse_payload(&m.payload) {
                                Some((s, round)) if s == i && round < commands => {
                                    seen[round] += 1;
                                    if seen[round] == 1 {
                                        unique += 1;
                                        live.fetch_add(1, Ordering::Relaxed);
                                    } else {
                                        duplicated += 1;
                                    }
                                }
                                _ => duplicated += 1,
                            }
                        }
                        Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => break,
                        Ok(Ok(_)) => {}
                        Ok(Err(_)) | Err(_) => break,
                    }
                }
                disconnect(&cl, &mut el).await;
                Ok(SessionOutcome { unique: unique as u64, duplicated, session_present, connect_errors, first_error })
            }
        });
        tokio::time::timeout(p.deliver_deadline, all).await
    };
    progress.abort();
    let outcomes = match outcomes {
        Ok(o) => o?,
        Err(_) => {
            let delivered = live.load(Ordering::Relaxed);
            return Ok(Reconnected {
                delivered,
                duplicated: 0,
                short: 0,
                not_present: 0,
                deliver_secs: base.elapsed().as_secs_f64(),
                connect_errors: 0,
                first_error: String::new(),
                timed_out: true,
            });
        }
    };
    let deliver_secs = last_ns.load(Ordering::Relaxed) as f64 / 1e9;
    let delivered = outcomes.iter().map(|o| o.unique).sum();
    let duplicated = outcomes.iter().map(|o| o.duplicated).sum();
    let short = outcomes.iter().filter(|o| o.unique < commands as u64).count() as u64;
    let not_present = outcomes.iter().filter(|o| !o.session_present).count() as u64;
    let connect_errors = outcomes.iter().map(|o| o.connect_errors).sum();
    let first_error = outcomes.iter().find_map(|o| o.first_error.clone()).unwrap_or_default();
    Ok(Reconnected {
        delivered,
        duplicated,
        short,
        not_present,
        deliver_secs,
        connect_errors,
        first_error,
        timed_out: false,
    })
}
