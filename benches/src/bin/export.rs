//! `export`: Parquet export of a large telemetry backlog, then one aggregate query over the
//! exported files with `axle query` and with DuckDB, in the same run.
//!
//! It builds the backlog offline (the engine, one MQTT message per batch as MQTT publishes
//! make them, ~200-byte JSON payloads from 10,000 vehicles over two hours, `fsync = never`),
//! then times the release `axle export` binary on it with 4 typed columns (`vin` from the
//! topic, `speed`, `soc`, `alarm` from the JSON). It prints rows/s, Parquet bytes per row next
//! to log bytes per record, and then the median wall time of the same `GROUP BY` query run by
//! `axle query` (DataFusion) and by DuckDB (Python `duckdb`, timed inside the interpreter and
//! as a whole process), with their ratio.
//!
//! Run: `cargo build --release -p axle-broker -p axle-benches && target/release/export`
//! (`--records 10000000`; `--records 2000000` for a shorter run). DuckDB comes from
//! `--python` (default: `$AXLE_TEST_PYTHON`, else the test venv, else `python3`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axle_engine::{Engine, EngineConfig, Message, StreamConfig};
use axle_log::{FsyncPolicy, LogConfig};
use bytes::Bytes;
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Records in the backlog.
    #[arg(long, default_value_t = 10_000_000)]
    records: u64,
    /// Partitions of the stream.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Timed runs of each query; the median is printed.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The axle binary (default: beside this one).
    #[arg(long)]
    axle_bin: Option<PathBuf>,
    /// Python interpreter with the `duckdb` package.
    #[arg(long)]
    python: Option<String>,
    /// Directory for the data (default: a temporary directory under ./target).
    #[arg(long)]
    dir: Option<PathBuf>,
}

const STREAM: &str = "telemetry";
/// 2026-12-01T08:00:00Z.
const T0: i64 = 1_796_112_000_000;
const SPAN_MS: i64 = 2 * 3_600_000;
const VEHICLES: u64 = 10_000;

const QUERY: &str = "SELECT vin, count(*) AS n, avg(speed) AS avg_speed, max(soc) AS max_soc, \
                     sum(CASE WHEN alarm THEN 1 ELSE 0 END) AS alarms FROM telemetry GROUP BY vin ORDER BY vin";

fn config(partitions: u32) -> String {
    format!(
        r#"
[[streams]]
name = "{STREAM}"
filters = ["v/+/telemetry"]
partitions = {partitions}
[streams.export]
enabled = false
columns = [
  {{ name = "vin", type = "utf8", from = "topic:2" }},
  {{ name = "speed", type = "f64", from = "$.speed" }},
  {{ name = "soc", type = "f64", from = "$.battery.soc" }},
  {{ name = "alarm", type = "bool", from = "$.alarm" }},
]
"#
    )
}

/// A ~200-byte telemetry payload of record `i`.
fn payload(i: u64, ts: i64) -> String {
    let v = i % VEHICLES;
    let speed = (i * 7919 % 13_000) as f64 / 100.0;
    let soc = (i * 104_729 % 1000) as f64 / 1000.0;
    format!(
        "{{\"vin\":\"VIN{v:08}\",\"ts\":{ts},\"speed\":{speed},\"rpm\":{},\"battery\":{{\"soc\":{soc},\"temp\":{}.5,\"voltage\":398.1}},\
         \"gps\":{{\"lat\":31.{:06},\"lon\":121.{:06}}},\"alarm\":{},\"gear\":\"D\",\"odo\":{}}}",
        800 + i % 4000,
        20 + i % 15,
        i % 999_999,
        (i * 31) % 999_999,
        i.is_multiple_of(97),
        100_000 + i / 10,
    )
}

fn build_backlog(data: &Path, records: u64, partitions: u32) -> anyhow::Result<u64> {
    let engine = Engine::open(EngineConfig {
        data_dir: data.to_path_buf(),
        log: LogConfig { fsync: FsyncPolicy::Never, ..LogConfig::default() },
        streams: vec![StreamConfig {
            name: STREAM.into(),
            filters: vec!["v/+/telemetry".into()],
            partitions,
            key: "levels:2".parse().map_err(anyhow::Error::msg)?,
            acks: Default::default(),
        }],
        default_partitions: 1,
    })?;
    let rt = tokio::runtime::Runtime::new()?;
    let mut payload_bytes = 0u64;
    rt.block_on(async {
        let mut pending = std::collections::VecDeque::new();
        for i in 0..records {
            let ts = T0 + (i as i64 * SPAN_MS) / records as i64;
            let body = payload(i, ts);
            payload_bytes += body.len() as u64;
            let topic = format!("v/VIN{:08}/telemetry", i % VEHICLES);
            let msg = Message {
                topic,
                payload: Bytes::from(body),
                qos: 1,
                publisher: format!("car{:08}", i % VEHICLES),
                timestamp: ts,
                ..Default::default()
            };
            let (pid, key) = engine.route(&msg.topic, &msg.publisher);
            let part = &engine.partitions()[pid].log;
            pending.push_back(part.append_start(&[msg.to_record(key)])?);
            if pending.len() >= 8192 {
                if let Some(p) = pending.pop_front() {
                    p.await?;
                }
            }
        }
        while let Some(p) = pending.pop_front() {
            p.await?;
        }
        anyhow::Ok(())
    })?;
    let log_bytes = engine.partitions().iter().map(|p| p.log.size_bytes()).sum();
    engine.close()?;
    println!("backlog: {records} records, mean payload {:.0} B", payload_bytes as f64 / records as f64);
    Ok(log_bytes)
}

fn dir_bytes(dir: &Path) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                files += 1;
                bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    (files, bytes)
}

fn run(cmd: &mut Command) -> anyhow::Result<(Duration, String)> {
    let start = Instant::now();
    let out = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).output()?;
    let took = start.elapsed();
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((took, String::from_utf8_lossy(&out.stdout).to_string()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

const DUCKDB_SCRIPT: &str = r#"
import sys, time, duckdb
root, sql, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
con = duckdb.connect()
con.execute(f"CREATE VIEW telemetry AS SELECT * FROM read_parquet('{root}/telemetry/**/*.parquet', hive_partitioning = true, hive_types = {{'date': DATE, 'hour': INTEGER}})")
times = []
for _ in range(runs):
    t = time.perf_counter()
    rows = con.execute(sql).fetchall()
    times.append(time.perf_counter() - t)
times.sort()
print(len(rows), times[len(times) // 2])
"#;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let axle = match &args.axle_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.parent().context("exe dir")?.join("axle"),
    };
    if !axle.exists() {
        bail!("{} is missing: cargo build --release -p axle-broker", axle.display());
    }
    let python = args.python.clone().unwrap_or_else(|| {
        std::env::var("AXLE_TEST_PYTHON").ok().unwrap_or_else(|| {
            let venv = std::env::var("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| "target".into())
                .join("pyenv/bin/python");
            if venv.exists() {
                venv.display().to_string()
            } else {
                "python3".into()
            }
        })
    });
    let tmp;
    let base = match &args.dir {
        Some(d) => d.clone(),
        None => {
            std::fs::create_dir_all("target")?;
            tmp = tempfile::tempdir_in("target")?;
            tmp.path().to_path_buf()
        }
    };
    let data = base.join("data");
    let cfg = base.join("axle.toml");
    std::fs::write(&cfg, config(args.partitions))?;
    let built = Instant::now();
    let log_bytes = build_backlog(&data, args.records, args.partitions)?;
    println!(
        "built the log in {:.1} s: {:.1} log bytes per record",
        built.elapsed().as_secs_f64(),
        log_bytes as f64 / args.records as f64
    );

    let (took, _) = run(Command::new(&axle).arg("export").arg("--config").arg(&cfg).arg("--data-dir").arg(&data))?;
    let root = data.join("export");
    let (files, bytes) = dir_bytes(&root);
    let secs = took.as_secs_f64();
    println!(
        "axle export: {} rows in {secs:.2} s = {:.0} rows/s ({files} files); {:.1} Parquet bytes per row vs {:.1} log bytes per record ({:.1}x smaller)",
        args.records,
        args.records as f64 / secs,
        bytes as f64 / args.records as f64,
        log_bytes as f64 / args.records as f64,
        log_bytes as f64 / bytes as f64,
    );

    let mut axle_times = Vec::new();
    let mut axle_rows = 0;
    for _ in 0..args.runs {
        let (t, out) = run(Command::new(&axle).args(["query", QUERY, "--format", "csv", "--export-dir"]).arg(&root))?;
        axle_times.push(t.as_secs_f64());
        axle_rows = out.lines().count().saturating_sub(1);
    }
    let mut duck_proc = Vec::new();
    let mut duck_inner = 0.0;
    let mut duck_rows = 0;
    for _ in 0..args.runs {
        let (t, out) = run(Command::new(&python).args(["-c", DUCKDB_SCRIPT]).arg(&root).arg(QUERY).arg("1"))
            .context("running DuckDB (pip install duckdb into the interpreter given by --python)")?;
        duck_proc.push(t.as_secs_f64());
        let mut it = out.split_whitespace();
        duck_rows = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        duck_inner = it.next().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
    }
    let (_, out) =
        run(Command::new(&python).args(["-c", DUCKDB_SCRIPT]).arg(&root).arg(QUERY).arg(args.runs.to_string()))?;
    if let Some(t) = out.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
        duck_inner = t;
    }
    if axle_rows != duck_rows {
        bail!("axle query returned {axle_rows} groups, DuckDB {duck_rows}");
    }
    let (a, dp) = (median(axle_times), median(duck_proc));
    println!("aggregate query ({axle_rows} groups), median of {} runs:", args.runs);
    println!("  axle query (process, DataFusion): {a:.3} s");
    println!("  duckdb (python process):          {dp:.3} s   (query alone inside the process: {duck_inner:.3} s)");
    println!(
        "  ratio axle/duckdb: {:.2}x (processes), {:.2}x (vs DuckDB's in-process query time)",
        a / dp,
        a / duck_inner
    );
    Ok(())
}
