//! `cluster-load`: the cost of replication. The `fan-in` workload of `mqtt-load` (N QoS 1
//! publishers of 200-byte messages to `v/{i}/telemetry`, 2 consumers on
//! `$share/bench/v/+/telemetry`) against three Axle nodes with `acks = "quorum"` and, in the
//! same run, against one node with the cluster disabled; fresh data directories every run,
//! runs interleaved. Prints acknowledged msgs/s (the PUBACK rate: on the cluster a PUBACK
//! means a majority holds the message), PUBACK p50/p99, end-to-end received msgs/s, lost and
//! duplicated messages, the nodes' CPU, medians over `--runs`, and the ratios 3 nodes ÷ 1 node.
//!
//! On the cluster, publisher `i` connects to node `i % 3 + 1` (as behind a load balancer), so
//! about two thirds of the publishes are forwarded to their partition's leader; the consumers
//! are on node 1 (a shared subscription is per node).
//!
//! Run: `cargo build --release -p axle-broker -p axle-benches && target/release/cluster-load`
//! (`--publishers 1000 --messages 200 --runs 3` by default). `CLUSTER_LOAD_AXLE_LOG` sets the
//! nodes' `RUST_LOG` (default `info`: the tool waits for the `cluster ready` line).

use std::path::PathBuf;

use anyhow::Context;
use axle_benches::cluster::{telemetry_stream, NodeSpec, Nodes};
use axle_benches::median;
use axle_benches::mqtt::brokers::{machine_load, raise_nofile};
use axle_benches::mqtt::fan_in::{self, ClientKind, FanInParams, FanInResult, Targets};
use clap::Parser;
use rumqttc::QoS;

#[derive(Parser, Clone)]
struct Args {
    /// Runs per setup (fresh nodes each; medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[arg(long, default_value_t = 1000)]
    publishers: usize,
    /// Messages each publisher sends.
    #[arg(long, default_value_t = 200)]
    messages: usize,
    #[arg(long, default_value_t = 200)]
    payload: usize,
    /// Limit the aggregate publish rate (msgs/s); default as fast as acknowledged.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value_t = 100)]
    connect_concurrency: usize,
    /// Nodes of the cluster setup.
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// Partitions of the telemetry stream (both setups).
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// `acks` of the stream on the cluster: `quorum` or `leader`.
    #[arg(long, default_value = "quorum")]
    acks: String,
    /// Every node's fsync policy (`always`, `5ms`, `never`, ...).
    #[arg(long, default_value = "5ms")]
    axle_fsync: String,
    #[arg(long, default_value = "target/release/axle")]
    axle_bin: PathBuf,
    /// Where the data directories are created (a real disk, not tmpfs).
    #[arg(long, default_value = "/var/tmp")]
    data_root: PathBuf,
    #[arg(long, default_value = "/tmp/cluster-load-logs")]
    log_dir: PathBuf,
}

/// One setup's results: per run, the fan-in figures and the nodes' CPU seconds.
#[derive(Default)]
struct Setup {
    name: String,
    runs: Vec<(FanInResult, f64)>,
    error: Option<String>,
}

impl Setup {
    fn m(&self, f: fn(&FanInResult) -> f64) -> f64 {
        median(&self.runs.iter().map(|(r, _)| f(r)).collect::<Vec<_>>())
    }
}

fn run_once(
    rt: &tokio::runtime::Runtime,
    args: &Args,
    spec: &NodeSpec,
    nodes: u32,
    tag: &str,
) -> anyhow::Result<(FanInResult, f64)> {
    let mut cluster = Nodes::start(spec, nodes, tag)?;
    let addrs = cluster.mqtt_addrs();
    let targets = Targets { publishers: addrs.clone(), consumers: addrs[0].clone() };
    let params = FanInParams {
        port: addrs[0].1,
        publishers: args.publishers,
        messages: args.messages,
        payload: args.payload,
        qos: QoS::AtLeastOnce,
        consumers: 2,
        connect_concurrency: args.connect_concurrency,
        rate: args.rate,

        client: ClientKind::Rumqttc,
    };
    let cpu0 = cluster.cpu_secs();
    let out = rt.block_on(fan_in::run_at(params, Some(targets)));
    let cpu = cluster.cpu_secs() - cpu0;
    // A crashed node explains a failure better than the clients' view of it.
    cluster.check_alive()?;
    match out {
        Ok(r) => Ok((r, cpu)),
        Err(e) => {
            eprintln!("  node output:\n{}", cluster.output_tails(10));
            Err(e)
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.acks != "quorum" && args.acks != "leader" {
        anyhow::bail!("--acks {:?}: use quorum or leader", args.acks);
    }
    let limit = raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let spec = |streams: String| NodeSpec {
        axle_bin: args.axle_bin.clone(),
        fsync: args.axle_fsync.clone(),
        data_root: args.data_root.clone(),
        log_dir: args.log_dir.clone(),
        rust_log: std::env::var("CLUSTER_LOAD_AXLE_LOG").unwrap_or_else(|_| "info".into()),
        streams,
    };
    let single_spec = spec(telemetry_stream(args.partitions, None));
    let cluster_spec = spec(telemetry_stream(args.partitions, Some(&args.acks)));
    let mut single = Setup { name: "1 node (cluster disabled)".into(), ..Default::default() };
    let mut cluster = Setup { name: format!("{} nodes, acks = {}", args.nodes, args.acks), ..Default::default() };
    println!(
        "# cluster-load\n\n{} publishers x {} msgs of {} B at QoS 1{}, 2 consumers on $share/bench/v/+/telemetry; \
         stream of {} partitions; fsync = {} on every node; medians of {} runs. Open-file limit {limit}; {} at start.\n",
        args.publishers,
        args.messages,
        args.payload,
        args.rate.map_or(String::new(), |r| format!(", publishing limited to {r:.0} msg/s in all")),
        args.partitions,
        args.axle_fsync,
        args.runs.max(1),
        machine_load()
    );
    for run in 0..args.runs.max(1) {
        let setups = [(&mut single, &single_spec, 1, "single"), (&mut cluster, &cluster_spec, args.nodes, "cluster")];
        for (setup, spec, nodes, kind) in setups {
            let tag = format!("{kind}-run{}", run + 1);
            match run_once(&rt, &args, spec, nodes, &tag) {
                Ok((r, cpu)) => {
                    eprintln!(
                        "  run {} {}: acked {:.0} msg/s, received {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, lost {}, dup {}, \
                         nodes' CPU {cpu:.1} s ({})",
                        run + 1,
                        setup.name,
                        r.acked_per_s,
                        r.received_per_s,
                        r.p50_ms,
                        r.p99_ms,
                        r.lost,
                        r.duplicated,
                        machine_load()
                    );
                    setup.runs.push((r, cpu));
                }
                Err(e) => {
                    eprintln!("  run {} {}: FAILED: {e:#}", run + 1, setup.name);
                    setup.error = Some(format!("{e:#}"));
                }
            }
        }
    }
    println!(
        "| setup | acked msg/s | per run | PUBACK p50 ms | PUBACK p99 ms | received msg/s (end to end) | lost | \
         duplicated | nodes' CPU s | CPU µs/msg |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for s in [&single, &cluster] {
        if s.runs.is_empty() {
            let e = s.error.as_deref().and_then(|e| e.lines().next()).unwrap_or("no result");
            println!("| {} | failed: {e} |||||||||", s.name);
            continue;
        }
        let per_run: Vec<String> = s.runs.iter().map(|(r, _)| format!("{:.0}", r.acked_per_s)).collect();
        let lost: u64 = s.runs.iter().map(|(r, _)| r.lost).sum();
        let dup: u64 = s.runs.iter().map(|(r, _)| r.duplicated).sum();
        let cpu = median(&s.runs.iter().map(|(_, c)| *c).collect::<Vec<_>>());
        println!(
            "| {}{} | {:.0} | {} | {:.2} | {:.2} | {:.0} | {lost} | {dup} | {cpu:.1} | {:.1} |",
            s.name,
            if s.error.is_some() { " (a run failed)" } else { "" },
            s.m(|r| r.acked_per_s),
            per_run.join(", "),
            s.m(|r| r.p50_ms),
            s.m(|r| r.p99_ms),
            s.m(|r| r.received_per_s),
            cpu * 1e6 / (args.publishers * args.messages).max(1) as f64,
        );
    }
    if !single.runs.is_empty() && !cluster.runs.is_empty() {
        let ratio = |f: fn(&FanInResult) -> f64| cluster.m(f) / single.m(f);
        println!(
            "\nRatios, {} ÷ 1 node: acked msg/s {:.2}, PUBACK p50 {:.2}, PUBACK p99 {:.2}, received msg/s {:.2}.",
            cluster.name,
            ratio(|r| r.acked_per_s),
            ratio(|r| r.p50_ms),
            ratio(|r| r.p99_ms),
            ratio(|r| r.received_per_s)
        );
    }
    println!(
        "- lost / duplicated are totals over all runs, counted by the consumers; all nodes and the load tool share \
         this machine ({} at the end); node output in {}.",
        machine_load(),
        args.log_dir.display()
    );
    Ok(())
}
