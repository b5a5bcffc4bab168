//! Running exports: one-shot (`axle export`: everything up to the end each partition has when
//! it starts, then exit) and following (inside `axle serve`: one thread per exported
//! partition follows the tail and closes idle files when their age is up).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use axle_engine::{Engine, MetaStore};
use axle_log::{LogError, Partition};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::exporter::{PartitionExporter, RollReason, StreamExport};
use crate::file::writer_properties;
use crate::rows::Extractor;
use crate::schema::validate_columns;
use crate::stats::{ExportStats, PartitionExportStats};
use crate::{ExportConfig, ExportError, ExportSettings};

/// Pause before retrying a partition whose export failed (disk full, permissions).
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// A partition to export: its log partition, its number in the stream, its counters.
type Planned = (Partition, u32, Arc<PartitionExportStats>);

/// The exports of a set of streams, ready to run.
pub struct Export {
    meta: Arc<MetaStore>,
    streams: Vec<(Arc<StreamExport>, Vec<Planned>)>,
}

impl Export {
    /// Matches each configuration with the engine's stream of that name.
    pub fn plan(engine: &Engine, configs: &[ExportConfig], settings: &ExportSettings) -> Result<Export, ExportError> {
        let props = writer_properties(settings.row_group_rows, settings.zstd_level)?;
        let mut streams = Vec::new();
        for cfg in configs {
            validate_columns(&cfg.columns)?;
            let si = engine
                .streams()
                .streams()
                .iter()
                .position(|s| s.name == cfg.stream)
                .ok_or_else(|| ExportError::UnknownStream(cfg.stream.clone()))?;
            let parts: Vec<Planned> = engine
                .partitions()
                .iter()
                .filter(|p| p.stream == si)
                .enumerate()
                .map(|(n, p)| (p.log.clone(), n as u32, PartitionExportStats::new(p.name.clone())))
                .collect();
            let stats = Arc::new(ExportStats::new(cfg.stream.clone(), parts.iter().map(|p| p.2.clone()).collect()));
            let export = StreamExport {
                stream: cfg.stream.clone(),
                root: settings.root.clone(),
                roll: cfg.roll,
                extractor: Arc::new(Extractor::new(cfg.columns.clone())),
                props: props.clone(),
                stats,
            };
            streams.push((Arc::new(export), parts));
        }
        Ok(Export { meta: engine.meta().clone(), streams })
    }

    /// Counters of every planned stream.
    pub fn stats(&self) -> Vec<Arc<ExportStats>> {
        self.streams.iter().map(|(s, _)| s.stats.clone()).collect()
    }

    /// Records still to export: per partition, its end minus its checkpoint.
    pub fn backlog(&self) -> Result<u64, ExportError> {
        let mut total = 0;
        for (_, parts) in &self.streams {
            for (p, _, _) in parts {
                let cp = crate::checkpoint::load(&self.meta, p.name())?;
                total += p.bounds().end.saturating_sub(cp);
            }
        }
        Ok(total)
    }

    fn open_all(&self) -> Result<Vec<(PartitionExporter, Arc<ExportStats>)>, ExportError> {
        let mut out = Vec::new();
        for (s, parts) in &self.streams {
            for (p, n, ps) in parts {
                let px = PartitionExporter::open(s.clone(), self.meta.clone(), p.clone(), *n, ps.clone())?;
                out.push((px, s.stats.clone()));
            }
        }
        Ok(out)
    }

    /// Exports every partition up to the end it has now, committing the last files, on up to
    /// `workers` threads. `progress` is called with the number of records read as they are.
    pub fn run_once(&self, workers: usize, progress: &(dyn Fn(u64) + Sync)) -> Result<(), ExportError> {
        let jobs = Mutex::new(self.open_all()?);
        let first_error = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..workers.max(1) {
                s.spawn(|| loop {
                    let Some((mut px, _)) = jobs.lock().pop() else { break };
                    let until = px.partition().bounds().end;
                    if let Err(e) = px.run_to(until, |n| progress(n as u64)) {
                        px.rewind();
                        first_error.lock().get_or_insert(e);
                        break;
                    }
                });
            }
        });
        match first_error.into_inner() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Starts following every partition on its own thread. Waiting uses `runtime`'s timers
    /// and the log's notifications.
    pub fn spawn(self, runtime: tokio::runtime::Handle) -> Result<ExportService, ExportError> {
        let stats = self.stats();
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut threads = Vec::new();
        for (px, st) in self.open_all()? {
            let rt = runtime.clone();
            let stop = stop_rx.clone();
            let name = format!("axle-export-{}", px.partition().name());
            let t = std::thread::Builder::new()
                .name(name)
                .spawn(move || follow(px, st, rt, stop))
                .map_err(ExportError::Thread)?;
            threads.push(t);
        }
        Ok(ExportService { stats, stop: stop_tx, threads })
    }
}

/// Exports that follow their partitions until stopped.
pub struct ExportService {
    stats: Vec<Arc<ExportStats>>,
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
}

impl ExportService {
    /// Counters of every exported stream, for metrics.
    pub fn stats(&self) -> &[Arc<ExportStats>] {
        &self.stats
    }

    /// Stops every partition exporter after it commits its open file, and waits for them.
    /// Call before closing the engine.
    pub fn stop(mut self) {
        let _ = self.stop.send(true);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for ExportService {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn follow(
    mut px: PartitionExporter,
    stats: Arc<ExportStats>,
    rt: tokio::runtime::Handle,
    mut stop: watch::Receiver<bool>,
) {
    let name = px.partition().name().to_string();
    loop {
        if *stop.borrow() {
            break;
        }
        match px.step(u64::MAX) {
            Ok(0) => {}
            Ok(_) => continue,
            Err(e) => {
                tracing::error!(partition = %name, error = %e, "export failed; retrying from the checkpoint in 5 s");
                stats.add_error();
                px.rewind();
                rt.block_on(async {
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY_AFTER) => {}
                        _ = stop.changed() => {}
                    }
                });
                continue;
            }
        }
        let next = px.next_offset();
        let deadline = px.age_deadline();
        let part = px.partition().clone();
        let closed = rt.block_on(async {
            let age = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = part.wait_past(next) => matches!(r, Err(LogError::Closed)),
                _ = age => false,
                _ = stop.changed() => false,
            }
        });
        if closed {
            break;
        }
        if let Err(e) = px.roll_if_due() {
            tracing::error!(partition = %name, error = %e, "export failed; retrying from the checkpoint");
            stats.add_error();
            px.rewind();
        }
    }
    if let Err(e) = px.commit(RollReason::End) {
        tracing::error!(partition = %name, error = %e, "could not commit the last export file; it is re-exported at the next start");
        px.rewind();
    }
}
