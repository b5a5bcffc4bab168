//! Samples a process's RSS at a fixed interval in the background.

use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::brokers::read_rss;

pub struct RssSampler {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<(f64, f64)>>,
}

impl RssSampler {
    pub fn start(pid: u32, every: Duration) -> RssSampler {
        let (stop, mut rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut out = Vec::new();
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => out.push((start.elapsed().as_secs_f64(), read_rss(pid).rss_mib)),
                    _ = rx.changed() => break,
                }
            }
            out.push((start.elapsed().as_secs_f64(), read_rss(pid).rss_mib));
            out
        });
        RssSampler { stop, task }
    }

    /// Stops sampling; returns `(seconds since start, RSS MiB)` pairs.
    pub async fn stop(self) -> Vec<(f64, f64)> {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}

/// About `points` evenly spaced samples as `"0s:12 3s:14 ..."` (MiB).
pub fn series(samples: &[(f64, f64)], points: usize) -> String {
    if samples.is_empty() {
        return String::new();
    }
    let step = samples.len().div_ceil(points.max(1)).max(1);
    let mut picked: Vec<&(f64, f64)> = samples.iter().step_by(step).collect();
    if let Some(last) = samples.last() {
        if !std::ptr::eq(*picked.last().unwrap_or(&last), last) {
            picked.push(last);
        }
    }
    picked.iter().map(|(t, r)| format!("{t:.1}s:{r:.0}")).collect::<Vec<_>>().join(" ")
}
