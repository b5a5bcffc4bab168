//! Experiment: the `log-append --quick` target-2 case (fsync = always, 64 appenders of
//! 100 B records on one partition) and its ceiling, built with only the log crate's deps.
//! `cargo run --release -p axle-log --example always_bench -- DIR SECONDS RUNS`
mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use axle_log::{FsyncPolicy, Log, LogConfig, Record};
use bytes::Bytes;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn run_axle(dir: &Path, secs: f64, zero: bool) -> (f64, f64, f64, f64) {
    let _ = std::fs::remove_dir_all(dir);
    let cfg = LogConfig { fsync: FsyncPolicy::Always, retention_age: None, ..LogConfig::default() };
    let log = Log::open(dir, cfg).expect("open");
    let nparts: usize = std::env::var("PARTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let size: usize = std::env::var("SIZE").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let parts: Vec<_> = (0..nparts).map(|i| log.partition(&format!("p-{i}")).expect("partition")).collect();
    let part = parts[0].clone();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let value = Bytes::from(vec![b'v'; size]);
    rt.block_on(part.append(&[Record::new(value.clone())])).expect("warm");
    if zero {
        // Experiment: zero-fill the active segment past its data, synced, before the run.
        for e in std::fs::read_dir(dir.join("p-0")).expect("ls") {
            let path = e.expect("entry").path();
            if path.extension().is_some_and(|x| x == "log") {
                let f = OpenOptions::new().write(true).open(&path).expect("open seg");
                let z = vec![0u8; 1 << 20];
                for i in 0..64u64 {
                    f.write_all_at(
                        &z[..if i == 0 { (1 << 20) - 4096 } else { 1 << 20 }],
                        if i == 0 { 4096 } else { i << 20 },
                    )
                    .expect("zero");
                }
                f.sync_all().expect("sync");
            }
        }
    }
    let stats = log.stats();
    let (f0, s0) = (stats.fsyncs.load(Relaxed), stats.sync_micros.load(Relaxed));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let n: Vec<f64> = rt.block_on(async {
        let mut tasks = Vec::new();
        for a in 0..64 {
            let ps = parts.clone();
            let value = value.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = a;
                while Instant::now() < deadline {
                    let p = &ps[i % ps.len()];
                    i += 1;
                    let t = Instant::now();
                    p.append(&[Record::new(value.clone())]).await.expect("append");
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("join"));
        }
        all
    });
    let mut lat = n;
    let n = lat.len();
    let p50 = median(&mut lat);
    let el = started.elapsed().as_secs_f64();
    let fsyncs = (stats.fsyncs.load(Relaxed) - f0) as f64;
    let sync_ms = (stats.sync_micros.load(Relaxed) - s0) as f64 / 1e3 / fsyncs.max(1.0);
    log.close().expect("close");
    let _ = std::fs::remove_dir_all(dir);
    (n as f64 / el, fsyncs / el, sync_ms, p50)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).cloned().unwrap_or_else(|| "target/exp".into());
    let secs: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let runs: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(3);
    let base = Path::new(&dir);
    let mut ratios = Vec::new();
    for r in 0..runs {
        let zero = std::env::var("ZERO").is_ok_and(|v| v == "1")
            || (std::env::var("ZERO").is_ok_and(|v| v == "alt") && r % 2 == 1);
        let (rps, fps, sync_ms, p50) = run_axle(&base.join("axle"), secs, zero);
        let lat = common::fdatasync_p50_ms(base, 1.0);
        let ratio = rps / (64.0 / (lat / 1e3));
        println!(
            "run {r} zero={zero}: {rps:.0} records/s, {fps:.0} syncs/s ({:.1}/sync), sync {sync_ms:.3} ms, append p50 {p50:.3} ms, ceiling fdatasync p50 {lat:.3} ms, ratio {ratio:.2}",
            rps / fps.max(1.0)
        );
        ratios.push(ratio);
    }
    println!("median ratio {:.2}", median(&mut ratios));
}
