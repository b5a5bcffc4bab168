//! `mqtt-load`: the brief's MQTT workloads against Axle and, in the same run, mosquitto and
//! rumqttd, with real clients (rumqttc, MQTT 3.1.1) over loopback. It starts each broker itself
//! (fresh data directory, its own free port, output kept under `--log-dir`) for every run.
//!
//! Workloads:
//! - `fan-in`: N publishers at QoS 1 (200-byte payloads) to `v/{i}/telemetry`, 2 consumers on
//!   the shared subscription `$share/bench/v/+/telemetry`. Prints received (end-to-end),
//!   published and acknowledged msgs/s, PUBACK p50/p99, lost and duplicated messages; medians
//!   over `--runs`.
//! - `fan-in-q0`: the same at QoS 0.
//! - `slow-subscriber`: one QoS 1 subscriber reading slowly while publishers push a backlog;
//!   broker RSS over time; then the subscriber catches up and every message is checked off.
//! - `offline-commands`: S persistent sessions subscribe to `v/{i}/cmd` and disconnect; 5
//!   commands each are published; broker RSS is sampled while they are offline; then all
//!   reconnect and the time until every command arrived is printed.
//!
//! Run: `cargo build --release -p axle-broker -p axle-benches && target/release/mqtt-load
//! --workload all`. mosquitto comes from Debian (`mosquitto`), rumqttd from `cargo install
//! rumqttd`; a broker that cannot be started is reported with its output and skipped. The peers
//! keep nothing on disk; Axle appends every message to its log (`--axle-fsync`, default 5ms).
//! `MQTT_LOAD_AXLE_LOG` sets Axle's `RUST_LOG` (default `warn`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use axle_benches::median;
use axle_benches::mqtt::brokers::{cpu_secs, machine_load, raise_nofile, Broker, BrokerSpec};
use axle_benches::mqtt::fan_in::{self, ClientKind, FanInParams, FanInResult};
use axle_benches::mqtt::offline::{self, OfflineParams, OfflineResult};
use axle_benches::mqtt::slow::{self, SlowParams};
use clap::Parser;
use rumqttc::QoS;

#[derive(Parser, Clone)]
struct Args {
    /// Comma-separated: fan-in, fan-in-q0, slow-subscriber, offline-commands, or all.
    #[arg(long, default_value = "all")]
    workload: String,
    /// Comma-separated: axle, mosquitto, rumqttd.
    #[arg(long, default_value = "axle,mosquitto,rumqttd")]
    brokers: String,
    /// Runs of fan-in / fan-in-q0 per broker (a fresh broker each; medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[arg(long, default_value_t = 1000)]
    publishers: usize,
    /// Messages each fan-in publisher sends.
    #[arg(long, default_value_t = 200)]
    messages: usize,
    #[arg(long, default_value_t = 200)]
    payload: usize,
    /// fan-in: limit the aggregate publish rate (msgs/s); default as fast as acknowledged.
    #[arg(long)]
    rate: Option<f64>,
    /// fan-in and fan-in-q0: the client the publishers and consumers use. `wire` (Axle's
    /// codec, one task and batched writes per connection) keeps the load tool's share of the
    /// two cores small; `rumqttc` is what the figures before 2026-12-02 17:00 UTC used.
    #[arg(long, value_enum, default_value_t = ClientKind::Wire)]
    client: ClientKind,
    /// Connection handshakes in progress at the same time (publishers and sessions); keep it
    /// below the brokers' listen backlog (`ss -ltn` shows 128 for axle's listener).
    #[arg(long, default_value_t = 100)]
    connect_concurrency: usize,
    /// Persistent sessions in offline-commands.
    #[arg(long, default_value_t = 100_000)]
    sessions: usize,
    /// Commands per session.
    #[arg(long, default_value_t = 5)]
    commands: usize,
    /// Sessions connecting at the same time (keep well below the open-file limit).
    #[arg(long, default_value_t = 2000)]
    session_concurrency: usize,
    #[arg(long, default_value_t = 1)]
    offline_runs: usize,
    /// offline-commands: stop waiting for the reconnected sessions after this many seconds
    /// and report what arrived by then.
    #[arg(long, default_value_t = 900)]
    deliver_deadline: u64,
    /// slow-subscriber: publishers, messages each, payload bytes, subscriber msgs/s.
    #[arg(long, default_value_t = 10)]
    slow_publishers: usize,
    #[arg(long, default_value_t = 20_000)]
    slow_messages: usize,
    #[arg(long, default_value_t = 1024)]
    slow_payload: usize,
    #[arg(long, default_value_t = 1000.0)]
    slow_rate: f64,
    /// Axle's fsync policy (`always`, `5ms`, `never`, ...).
    #[arg(long, default_value = "5ms")]
    axle_fsync: String,
    #[arg(long, default_value = "target/release/axle")]
    axle_bin: PathBuf,
    #[arg(long, default_value = "mosquitto")]
    mosquitto_bin: PathBuf,
    /// Default: $CARGO_HOME/bin/rumqttd (~/.cargo/bin/rumqttd).
    #[arg(long)]
    rumqttd_bin: Option<PathBuf>,
    /// Where the brokers' data directories are created (a real disk, not tmpfs).
    #[arg(long, default_value = "/var/tmp")]
    data_root: PathBuf,
    #[arg(long, default_value = "/tmp/mqtt-load-logs")]
    log_dir: PathBuf,
}

fn cargo_bin(name: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo"));
    home.join("bin").join(name)
}

/// Runs `f` against a fresh broker; returns its result and the broker's CPU seconds.
fn with_broker<T>(
    name: &str,
    spec: &BrokerSpec,
    tag: &str,
    f: impl FnOnce(&Broker) -> anyhow::Result<T>,
) -> anyhow::Result<(T, f64)> {
    let mut b = Broker::start(name, spec, tag)?;
    let cpu0 = cpu_secs(b.pid());
    let out = f(&b);
    let cpu = cpu_secs(b.pid()) - cpu0;
    // A crash explains a failure better than the client's view of it.
    b.check_alive()?;
    match out {
        Ok(v) => Ok((v, cpu)),
        Err(e) => {
            eprintln!("  {name} output ({}):\n{}", b.log_path().display(), b.output_tail(10));
            Err(e)
        }
    }
}

fn ratio_line(label: &str, values: &BTreeMap<String, f64>) {
    let Some(axle) = values.get("axle") else { return };
    let parts: Vec<String> =
        values.iter().filter(|(n, _)| n.as_str() != "axle").map(|(n, v)| format!("{:.2} vs {n}", axle / v)).collect();
    if !parts.is_empty() {
        println!("- {label}, Axle ÷ peer: {}", parts.join(", "));
    }
}

fn fan_in_workload(rt: &tokio::runtime::Runtime, args: &Args, spec: &BrokerSpec, brokers: &[String], qos: QoS) {
    let w = if qos == QoS::AtMostOnce { "fan-in-q0" } else { "fan-in" };
    let mut results: BTreeMap<String, Vec<(FanInResult, f64)>> = BTreeMap::new();
    let mut errors: BTreeMap<String, String> = BTreeMap::new();
    for run in 0..args.runs.max(1) {
        for name in brokers {
            let params = FanInParams {
                port: 0,
                publishers: args.publishers,
                messages: args.messages,
                payload: args.payload,
                qos,
                consumers: 2,
                connect_concurrency: args.connect_concurrency,
                rate: args.rate,
                client: args.client,
            };
            let out = with_broker(name, spec, &format!("{w}-{run}"), |b| {
                rt.block_on(fan_in::run(FanInParams { port: b.port, ..params }))
            });
            match out {
                Ok((r, cpu)) => {
                    eprintln!(
                        "  {w} run {} {name}: received {:.0} msg/s, acked {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, \
                            lost {}, dup {}, broker CPU {cpu:.1} s ({})",
                        run + 1,
                        r.received_per_s,
                        r.acked_per_s,
                        r.p50_ms,
                        r.p99_ms,
                        r.lost,
                        r.duplicated,
                        machine_load()
                    );
                    results.entry(name.clone()).or_default().push((r, cpu));
                }
                Err(e) => {
                    eprintln!("  {w} run {} {name}: FAILED: {e:#}", run + 1);
                    errors.insert(name.clone(), format!("{e:#}"));
                }
            }
        }
    }
    println!("\n## {w}\n");
    println!(
        "{} publishers x {} msgs of {} B at QoS {}{}, 2 consumers on $share/bench/v/+/telemetry; medians of {} runs.\n",
        args.publishers,
        args.messages,
        args.payload,
        qos as u8,
        args.rate.map_or(String::new(), |r| format!(", publishing limited to {r:.0} msg/s in all")),
        args.runs.max(1)
    );
    println!(
        "| broker | received msg/s (end to end) | per run | published msg/s | acked msg/s | PUBACK p50 ms \
        | PUBACK p99 ms | lost | duplicated | broker CPU s | CPU µs/msg |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut recv = BTreeMap::new();
    let mut p50 = BTreeMap::new();
    let mut p99 = BTreeMap::new();
    for name in brokers {
        let Some(rs) = results.get(name) else {
            let e = errors.get(name).map_or("no result", String::as_str);
            println!("| {name} | failed: {} |||||||||", e.replace('\n', " "));
            continue;
        };
        let m = |f: fn(&FanInResult) -> f64| median(&rs.iter().map(|(r, _)| f(r)).collect::<Vec<_>>());
        let per_run: Vec<String> = rs.iter().map(|(r, _)| format!("{:.0}", r.received_per_s)).collect();
        let lost: u64 = rs.iter().map(|(r, _)| r.lost).sum();
        let dup: u64 = rs.iter().map(|(r, _)| r.duplicated).sum();
        let cpu = median(&rs.iter().map(|(_, c)| *c).collect::<Vec<_>>());
        let failed = if errors.contains_key(name) { " (a run failed)" } else { "" };
        println!(
            "| {name}{failed} | {:.0} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {lost} | {dup} | {cpu:.1} | {:.1} |",
            m(|r| r.received_per_s),
            per_run.join(", "),
            m(|r| r.published_per_s),
            m(|r| r.acked_per_s),
            m(|r| r.p50_ms),
            m(|r| r.p99_ms),
            cpu * 1e6 / (args.publishers * args.messages).max(1) as f64,
        );
        recv.insert(name.clone(), m(|r| r.received_per_s));
        p50.insert(name.clone(), m(|r| r.p50_ms));
        p99.insert(name.clone(), m(|r| r.p99_ms));
    }
    println!();
    ratio_line("received msg/s", &recv);
    if qos != QoS::AtMostOnce {
        ratio_line("PUBACK p50", &p50);
        ratio_line("PUBACK p99", &p99);
    }
    println!("- lost / duplicated are totals over all runs; mosquitto and rumqttd keep nothing on disk.");
}

fn slow_workload(rt: &tokio::runtime::Runtime, args: &Args, spec: &BrokerSpec, brokers: &[String]) {
    let mut rows = Vec::new();
    let mut growth = BTreeMap::new();
    for name in brokers {
        let out = with_broker(name, spec, "slow-subscriber", |b| {
            rt.block_on(slow::run(SlowParams {
                port: b.port,
                pid: b.pid(),
                publishers: args.slow_publishers,
                messages: args.slow_messages,
                payload: args.slow_payload,
                rate: args.slow_rate,
                hold_secs: 5,
            }))
        });
        match out {
            Ok((r, _)) => {
                eprintln!(
                    "  slow-subscriber {name}: RSS {:.0} -> max {:.0} MiB ({})",
                    r.rss_start_mib,
                    r.rss_max_mib,
                    machine_load()
                );
                growth.insert(name.clone(), r.rss_max_mib - r.rss_start_mib);
                rows.push((name.clone(), Ok(r)));
            }
            Err(e) => {
                eprintln!("  slow-subscriber {name}: FAILED: {e:#}");
                rows.push((name.clone(), Err(e)));
            }
        }
    }
    println!("\n## slow-subscriber\n");
    println!(
        "{} publishers x {} msgs of {} B at QoS 1 as fast as acknowledged; one QoS 1 subscriber on \
            v/+/telemetry reading {} msg/s; backlog held 5 s, then drained at full speed.\n",
        args.slow_publishers, args.slow_messages, args.slow_payload, args.slow_rate
    );
    println!(
        "| broker | backlog MiB | published msg/s | RSS start MiB | RSS max MiB | RSS end of backlog MiB | \
        growth MiB | read while slow | drain s | lost | duplicated |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut series = Vec::new();
    for (name, r) in &rows {
        match r {
            Ok(r) => {
                println!(
                    "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.1} | {} | {} |",
                    r.backlog_mib,
                    r.published_per_s,
                    r.rss_start_mib,
                    r.rss_max_mib,
                    r.rss_end_mib,
                    r.rss_max_mib - r.rss_start_mib,
                    r.read_while_slow,
                    r.drain_secs,
                    r.lost,
                    r.duplicated
                );
                series.push(format!("- {name} RSS MiB over time (t:MiB): {}", r.series));
            }
            Err(e) => println!("| {name} | failed: {} ||||||||||", format!("{e:#}").replace('\n', " ")),
        }
    }
    println!();
    for s in series {
        println!("{s}");
    }
    ratio_line("RSS growth while the subscriber is slow", &growth);
}

fn offline_workload(rt: &tokio::runtime::Runtime, args: &Args, spec: &BrokerSpec, brokers: &[String]) {
    let mut rows: Vec<(String, anyhow::Result<OfflineResult>)> = Vec::new();
    for run in 0..args.offline_runs.max(1) {
        for name in brokers {
            let out = with_broker(name, spec, &format!("offline-{run}"), |b| {
                rt.block_on(offline::run(OfflineParams {
                    port: b.port,
                    pid: b.pid(),
                    sessions: args.sessions,
                    commands: args.commands,
                    concurrency: args.session_concurrency,
                    connect_concurrency: args.connect_concurrency,
                    publishers: 10,
                    deliver_deadline: std::time::Duration::from_secs(args.deliver_deadline),
                }))
            })
            .map(|(r, _)| r);
            match &out {
                Ok(r) => eprintln!(
                    "  offline-commands run {} {name}: delivered {}/{} in {:.1} s{} ({})",
                    run + 1,
                    r.delivered,
                    r.expected,
                    r.deliver_secs,
                    if r.timed_out { " (deadline hit)" } else { "" },
                    machine_load()
                ),
                Err(e) => eprintln!("  offline-commands run {} {name}: FAILED: {e:#}", run + 1),
            }
            rows.push((name.clone(), out));
        }
    }
    println!("\n## offline-commands\n");
    println!(
        "{} persistent sessions (clean session off) subscribe to v/{{i}}/cmd at QoS 1 and disconnect ({} at a \
            time); {} commands each at QoS 1 from 10 publishers; then all reconnect.\n",
        args.sessions, args.session_concurrency, args.commands
    );
    println!(
        "| broker | RSS idle MiB | RSS sessions offline MiB | RSS offline + commands MiB | RSS max offline MiB | \
        setup s | publish s | delivered | duplicated | sessions short | session not present | reconnect errors | \
        time to deliver all s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut time = BTreeMap::new();
    let mut rss = BTreeMap::new();
    let mut series = Vec::new();
    for (name, r) in &rows {
        match r {
            Ok(r) => {
                println!(
                    "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {}/{} | {} | {} | {} | {} | {} |",
                    r.rss_idle_mib,
                    r.rss_sessions_mib,
                    r.rss_offline_mib,
                    r.rss_offline_max_mib,
                    r.setup_secs,
                    r.publish_secs,
                    r.delivered,
                    r.expected,
                    r.duplicated,
                    r.sessions_short,
                    r.sessions_not_present,
                    r.connect_errors,
                    if r.timed_out {
                        format!("> {:.0} (deadline)", r.deliver_secs)
                    } else {
                        format!("{:.1}", r.deliver_secs)
                    }
                );
                if r.connect_errors > 0 {
                    series.push(format!("- {name}: first reconnect error: {}", r.first_connect_error));
                }
                if !r.timed_out {
                    time.insert(name.clone(), r.deliver_secs);
                }
                rss.insert(name.clone(), r.rss_offline_mib);
                series.push(format!(
                    "- {name} RSS MiB while offline, from the first command (t:MiB): {}",
                    r.offline_series
                ));
            }
            Err(e) => println!("| {name} | failed: {} |||||||||||", format!("{e:#}").replace('\n', " ")),
        }
    }
    println!();
    ratio_line("time to deliver all", &time);
    ratio_line("RSS offline + commands", &rss);
    for s in series {
        println!("{s}");
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let limit = raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let spec = BrokerSpec {
        axle_bin: args.axle_bin.clone(),
        axle_fsync: args.axle_fsync.clone(),
        mosquitto_bin: args.mosquitto_bin.clone(),
        rumqttd_bin: args.rumqttd_bin.clone().unwrap_or_else(|| cargo_bin("rumqttd")),
        data_root: args.data_root.clone(),
        log_dir: args.log_dir.clone(),
    };
    let brokers: Vec<String> =
        args.brokers.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
    let all = ["fan-in", "fan-in-q0", "slow-subscriber", "offline-commands"];
    let workloads: Vec<String> = if args.workload == "all" {
        all.iter().map(|s| s.to_string()).collect()
    } else {
        args.workload.split(',').map(|s| s.trim().to_string()).collect()
    };
    if let Some(bad) = workloads.iter().find(|w| !all.contains(&w.as_str())) {
        anyhow::bail!("unknown workload {bad:?}: use {} or all", all.join(", "));
    }
    if args.session_concurrency as u64 + 200 > limit {
        anyhow::bail!(
            "--session-concurrency {} needs more open files than the limit {limit}",
            args.session_concurrency
        );
    }
    println!(
        "# mqtt-load\n\nbrokers {}; Axle fsync = {} (every message appended to its log on disk); mosquitto \
            (persistence false) and rumqttd keep nothing on disk. Open-file limit {limit}; {} at start.",
        brokers.join(", "),
        args.axle_fsync,
        machine_load()
    );
    for w in &workloads {
        match w.as_str() {
            "fan-in" => fan_in_workload(&rt, &args, &spec, &brokers, QoS::AtLeastOnce),
            "fan-in-q0" => fan_in_workload(&rt, &args, &spec, &brokers, QoS::AtMostOnce),
            "slow-subscriber" => slow_workload(&rt, &args, &spec, &brokers),
            _ => offline_workload(&rt, &args, &spec, &brokers),
        }
    }
    println!("\n{} at the end; broker output in {}.", machine_load(), args.log_dir.display());
    Ok(())
}
