//! `drain`: gRPC `Fetch` of a large backlog from the page cache, next to the ceiling of
//! reading the same segment files with plain sequential `read` calls, in the same run.
//!
//! It builds the backlog offline (the engine, one MQTT message per batch as MQTT publishes
//! make them, `fsync = never`), starts the release `axle` binary on it, warms the page cache
//! by reading the files once, then:
//! - ceiling: reads the partition's segment files sequentially in 1 MiB chunks (MB/s);
//! - loopback floor: the same reads written to a loopback TCP socket and drained by another
//!   thread, which is what any network protocol between two processes here costs at least;
//! - Axle: one `Fetch` stream from offset 0 to the end with 1000-record responses, decoding
//!   every record in the client (records/s, MB/s of the same file bytes);
//! - Axle: one `FetchBatches` stream (stored batches, 8 MiB responses), the client verifying
//!   every batch's CRC and decoding every record.
//!
//! The client asks for 1 MiB HTTP/2 frames and 32 MiB windows (`--frame-bytes`,
//! `--window-bytes`), as a bulk consumer should; hyper's defaults (16 KiB frames) cost
//! about a third of the throughput.
//!
//! Run: `cargo build --release -p axle-broker -p axle-benches && target/release/drain`
//! (`--records 10000000 --size 100`, then `--size 1024`; `--rpc batches` times one RPC).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axle_engine::{Engine, EngineConfig, Message, StreamConfig};
use axle_log::{FsyncPolicy, LogConfig};
use axle_proto::v1::consumer_client::ConsumerClient;
use axle_proto::v1::FetchRequest;
use bytes::Bytes;
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Records in the backlog.
    #[arg(long, default_value_t = 10_000_000)]
    records: u64,
    /// Payload bytes per record.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Records per Fetch response.
    #[arg(long, default_value_t = 1000)]
    max_records: u32,
    /// Most batch bytes per FetchBatches response.
    #[arg(long, default_value_t = 8 << 20)]
    batch_bytes: u32,
    /// Which RPCs to time.
    #[arg(long, value_enum, default_value_t = Rpc::Both)]
    rpc: Rpc,
    /// The client's HTTP/2 SETTINGS_MAX_FRAME_SIZE, bytes (16 KiB to 16 MiB - 1).
    #[arg(long, default_value_t = 1 << 20)]
    frame_bytes: u32,
    /// The client's HTTP/2 stream and connection windows, bytes.
    #[arg(long, default_value_t = 32 << 20)]
    window_bytes: u32,
    /// Timed passes of each reader; the median is printed.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The axle binary (default: beside this one).
    #[arg(long)]
    axle_bin: Option<PathBuf>,
    /// Directory for the data (default: a temporary directory under ./target).
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Rpc {
    Fetch,
    Batches,
    Both,
}

const STREAM: &str = "drain";

fn build_backlog(data: &Path, records: u64, size: usize) -> anyhow::Result<()> {
    let engine = Engine::open(EngineConfig {
        data_dir: data.to_path_buf(),
        log: LogConfig { fsync: FsyncPolicy::Never, ..LogConfig::default() },
        streams: vec![StreamConfig {
            name: STREAM.into(),
            filters: vec!["bench/#".into()],
            partitions: 1,
            key: "levels:2".parse().map_err(anyhow::Error::msg)?,
            acks: Default::default(),
        }],
        default_partitions: 1,
    })?;
    let part = engine.partitions()[0].log.clone();
    let payload = Bytes::from(vec![b'x'; size]);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let mut pending = std::collections::VecDeque::new();
        for i in 0..records {
            let msg = Message {
                topic: format!("bench/v{}/telemetry", i % 1000),
                payload: payload.clone(),
                qos: 1,
                publisher: format!("car{}", i % 1000),
                timestamp: axle_log::now_ms(),
                ..Default::default()
            };
            let key = format!("bench/v{}", i % 1000);
            pending.push_back(part.append_start(&[msg.to_record(&key)])?);
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
    engine.close()?;
    Ok(())
}

fn segment_files(data: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let dir = data.join("log").join(format!("{STREAM}-0"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    Ok(files)
}

/// Plain sequential reads of the files in 1 MiB chunks, each handed to `sink`; returns
/// bytes read.
fn read_files(files: &[PathBuf], mut sink: impl FnMut(&[u8]) -> std::io::Result<()>) -> anyhow::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    for f in files {
        let mut file = std::fs::File::open(f)?;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            sink(&buf[..n])?;
            total += n as u64;
        }
    }
    Ok(total)
}

/// The same reads as [`read_files`] written to a loopback TCP socket, which another thread
/// drains with 1 MiB reads: the floor under any network protocol on this machine (two
/// user/kernel copies on each side, both cores busy). Returns bytes received.
fn read_files_over_loopback(files: &[PathBuf]) -> anyhow::Result<u64> {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let files = files.to_vec();
    let sender = std::thread::spawn(move || -> anyhow::Result<u64> {
        let (mut sock, _) = listener.accept()?;
        read_files(&files, |chunk| sock.write_all(chunk))
    });
    let mut sock = std::net::TcpStream::connect(addr)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = sock.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    sender.join().map_err(|_| anyhow::anyhow!("loopback sender panicked"))??;
    Ok(total)
}

struct Axle(Child);

impl Drop for Axle {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_axle(bin: &Path, data: &Path, config: &Path) -> anyhow::Result<(Axle, u16)> {
    let log = data.with_extension("stderr.log");
    let child = Command::new(bin)
        .args(["serve", "--mqtt-tcp", "127.0.0.1:0", "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0", "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let axle = Axle(child);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        let out = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = out.lines().find(|l| l.contains("axle serving")) {
            let at = line.find(" grpc=").context("grpc address in the start line")? + " grpc=".len();
            let addr: String = line[at..].chars().take_while(|c| !c.is_whitespace()).collect();
            let port = addr.rsplit(':').next().and_then(|p| p.parse().ok()).context("grpc port")?;
            return Ok((axle, port));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("axle did not start:\n{}", std::fs::read_to_string(&log).unwrap_or_default())
}

/// The consumer's HTTP/2 settings (bytes). A bulk consumer must raise them: with hyper's
/// defaults (16 KiB frames, 2 MiB stream window) the server writes an 8 MiB response as 512
/// frames and stalls on window updates.
struct H2 {
    frame: u32,
    window: u32,
}

async fn connect(port: u16, h2: &H2) -> anyhow::Result<ConsumerClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
        .max_frame_size(h2.frame)
        .initial_stream_window_size(h2.window)
        .initial_connection_window_size(h2.window)
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(ConsumerClient::new(channel).max_decoding_message_size(64 << 20))
}

/// One Fetch pass over the whole partition; returns (records, payload bytes).
async fn fetch_all(port: u16, h2: &H2, records: u64, max_records: u32) -> anyhow::Result<(u64, u64)> {
    let mut client = connect(port, h2).await?;
    let mut stream = client
        .fetch(FetchRequest {
            stream: STREAM.into(),
            partition: 0,
            offset: 0,
            max_records,
            max_bytes: 16 << 20,
            max_wait_ms: 1000,
        })
        .await?
        .into_inner();
    let (mut n, mut bytes, mut next) = (0u64, 0u64, 0u64);
    while n < records {
        let Some(resp) = stream.message().await? else { bail!("stream ended at {n}") };
        for r in &resp.records {
            if r.offset != next {
                bail!("offset {} where {next} was expected", r.offset);
            }
            next += 1;
            bytes += r.payload.len() as u64;
        }
        n += resp.records.len() as u64;
    }
    Ok((n, bytes))
}

/// One FetchBatches pass over the whole partition, verifying every batch's CRC and decoding
/// every record in the client (zero-copy `Bytes` slices); returns (records, payload bytes).
async fn fetch_batches_all(port: u16, h2: &H2, records: u64, max_bytes: u32) -> anyhow::Result<(u64, u64)> {
    let mut client = connect(port, h2).await?;
    let mut stream = client
        .fetch_batches(FetchRequest {
            stream: STREAM.into(),
            partition: 0,
            offset: 0,
            max_bytes,
            max_wait_ms: 1000,
            ..Default::default()
        })
        .await?
        .into_inner();
    let (mut n, mut bytes, mut next) = (0u64, 0u64, 0u64);
    while n < records {
        let Some(resp) = stream.message().await? else { bail!("stream ended at {n}") };
        let buf = resp.batches;
        let mut pos = 0;
        while pos < buf.len() {
            let header = axle_log::verify_batch(&buf[pos..], buf.len() - pos).map_err(|d| anyhow::anyhow!("{d}"))?;
            let batch = buf.slice(pos..pos + header.length as usize);
            for r in axle_log::decode_records(&batch, &header).map_err(|d| anyhow::anyhow!("{d}"))? {
                if r.offset != next {
                    bail!("offset {} where {next} was expected", r.offset);
                }
                next += 1;
                bytes += r.value.len() as u64;
            }
            pos += header.length as usize;
        }
        n = next;
    }
    Ok((n, bytes))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = match &args.axle_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("axle"),
    };
    let base = args.dir.clone().unwrap_or_else(|| PathBuf::from("target/bench-drain"));
    std::fs::create_dir_all(&base)?;
    let tmp = tempfile::tempdir_in(&base)?;
    let data = tmp.path().join("data");
    let config = tmp.path().join("axle.toml");
    std::fs::write(
        &config,
        format!(
            "[log]\nfsync = \"never\"\n[[streams]]\nname = \"{STREAM}\"\nfilters = [\"bench/#\"]\npartitions = 1\n"
        ),
    )?;
    eprintln!("drain: building a backlog of {} records of {} B ...", args.records, args.size);
    let t = Instant::now();
    build_backlog(&data, args.records, args.size)?;
    let files = segment_files(&data)?;
    let file_bytes = read_files(&files, |_| Ok(()))?; // also warms the page cache
    eprintln!("drain: {:.1} MB in {} segments, built in {:.1?}", file_bytes as f64 / 1e6, files.len(), t.elapsed());

    let mut ceiling = Vec::new();
    for _ in 0..args.runs {
        let t = Instant::now();
        read_files(&files, |_| Ok(()))?;
        ceiling.push(file_bytes as f64 / t.elapsed().as_secs_f64() / 1e6);
    }
    let mut loopback = Vec::new();
    for _ in 0..args.runs {
        let t = Instant::now();
        let n = read_files_over_loopback(&files)?;
        if n != file_bytes {
            bail!("loopback received {n} bytes of {file_bytes}");
        }
        loopback.push(file_bytes as f64 / t.elapsed().as_secs_f64() / 1e6);
    }
    let (_axle, port) = start_axle(&bin, &data, &config)?;
    let h2 = H2 { frame: args.frame_bytes, window: args.window_bytes };
    let rt = tokio::runtime::Runtime::new()?;
    let (fetch_runs, batch_runs) = match args.rpc {
        Rpc::Fetch => (args.runs, 0),
        Rpc::Batches => (0, args.runs),
        Rpc::Both => (args.runs, args.runs),
    };
    let mut rates = Vec::new();
    for _ in 0..fetch_runs {
        let t = Instant::now();
        let (n, _payload) = rt.block_on(fetch_all(port, &h2, args.records, args.max_records))?;
        let secs = t.elapsed().as_secs_f64();
        rates.push((n as f64 / secs, file_bytes as f64 / secs / 1e6));
    }
    let mut batch_rates = Vec::new();
    for _ in 0..batch_runs {
        let t = Instant::now();
        let (n, _payload) = rt.block_on(fetch_batches_all(port, &h2, args.records, args.batch_bytes))?;
        let secs = t.elapsed().as_secs_f64();
        batch_rates.push((n as f64 / secs, file_bytes as f64 / secs / 1e6));
    }
    let ceil = axle_benches::median(&ceiling);
    let tcp = axle_benches::median(&loopback);
    println!("\nsequential read: {ceil:.1} MB/s; the same read sent over loopback TCP: {tcp:.1} MB/s");
    println!("\n| RPC | records | payload | records/s | MB/s (file bytes) | fraction of sequential read | fraction of loopback TCP |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, r) in [("Fetch", &rates), ("FetchBatches", &batch_rates)] {
        if r.is_empty() {
            continue;
        }
        let rec = axle_benches::median(&r.iter().map(|r| r.0).collect::<Vec<_>>());
        let mb = axle_benches::median(&r.iter().map(|r| r.1).collect::<Vec<_>>());
        println!(
            "| {name} | {} | {} B | {:.0} | {:.1} | {:.2} | {:.2} |",
            args.records,
            args.size,
            rec,
            mb,
            mb / ceil,
            mb / tcp
        );
    }
    println!("\nmedian of {} runs; client and server on the same 2-core machine; page cache warm.", args.runs);
    Ok(())
}
