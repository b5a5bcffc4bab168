//! The `axle` binary.

mod export_commands;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use axle_broker::cli::{Cli, Command, ServeArgs};
use axle_broker::config::Config;
use axle_broker::hub::Hub;
use axle_engine::{Engine, EngineConfig};
use axle_log::{IoBackendKind, LogConfig};
use clap::Parser;

/// mimalloc instead of glibc malloc: the broker allocates many small, short-lived objects
/// across threads (messages, packets, records), where glibc's arenas cost ~18 % of CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Export(args) => export_commands::export(args),
        Command::Query(args) => export_commands::query(args),
    }
}

fn init_tracing(format: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        "text" => builder.init(),
        "json" => builder.json().init(),
        other => bail!("--log-format {other:?} is not supported: use `text` or `json`"),
    }
    Ok(())
}

/// The configuration file (if any) with the command-line overrides applied.
fn effective_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(d) = &args.data_dir {
        cfg.data_dir = d.clone();
    }
    if let Some(f) = &args.fsync {
        cfg.log.fsync = f.clone();
    }
    if let Some(b) = &args.io_backend {
        cfg.log.io_backend = b.clone();
    }
    if let Some(a) = args.mqtt_tcp {
        cfg.listeners.tcp = a;
    }
    if let Some(a) = args.grpc {
        cfg.listeners.grpc = a;
    }
    cfg.validate()?;
    Ok(cfg)
}

fn log_config(cfg: &Config, repair: bool) -> anyhow::Result<LogConfig> {
    let io_backend = match cfg.log.io_backend.as_str() {
        "auto" => IoBackendKind::Auto,
        "io_uring" => IoBackendKind::IoUring,
        "pwrite" => IoBackendKind::Pwrite,
        other => bail!("--io-backend / log.io_backend {other:?} is not supported: use auto, io_uring or pwrite"),
    };
    Ok(LogConfig {
        fsync: cfg.log.fsync.parse().map_err(anyhow::Error::msg).context("--fsync / log.fsync")?,
        io_backend,
        segment_bytes: cfg.log.segment_bytes,
        retention_bytes: cfg.log.retention_bytes,
        retention_age: cfg.log.retention_hours.map(|h| Duration::from_secs(h * 3600)),
        repair,
        ..LogConfig::default()
    })
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_tracing(&args.log_format)?;
    let cfg = effective_config(&args)?;
    let acl = match &cfg.acl_file {
        Some(p) => Some(axle_broker::acl::Acl::load(p)?),
        None => None,
    };
    let engine_cfg = EngineConfig {
        data_dir: cfg.data_dir.clone(),
        log: log_config(&cfg, args.repair)?,
        streams: cfg.stream_configs()?,
        default_partitions: cfg.default_stream_partitions,
    };
    let engine = Arc::new(
        Engine::open(engine_cfg).with_context(|| format!("opening the data directory {}", cfg.data_dir.display()))?,
    );
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    // Parquet export of the streams with `[streams.export] enabled = true`: one thread per
    // partition following the tail. `exports.stats()` holds its counters (for metrics).
    let export_configs = cfg.export_configs(true)?;
    let exports = axle_query::Export::plan(&engine, &export_configs, &cfg.export_settings())?
        .spawn(rt.handle().clone())
        .context("starting the Parquet exporters")?;
    if !export_configs.is_empty() {
        tracing::info!(streams = export_configs.len(), dir = %cfg.export_dir().display(), "Parquet export running");
    }
    let data_dir = cfg.data_dir.clone();
    let tcp = cfg.listeners.tcp;
    let grpc = cfg.listeners.grpc;
    let result = rt.block_on(async {
        let hub = Hub::new(engine.clone(), cfg, acl);
        hub.spawn_dispatchers();
        let (mqtt_addr, accept) =
            axle_broker::listener::tcp(hub.clone(), "tcp".into(), tcp).await.with_context(|| format!("binding MQTT/TCP on {tcp}"))?;
        let (grpc_addr, grpc_task) = axle_broker::grpc::serve(hub.clone(), grpc)
            .await
            .with_context(|| format!("binding the gRPC API on {grpc}"))?;
        tracing::info!(data_dir = %data_dir.display(), mqtt_tcp = %mqtt_addr, grpc = %grpc_addr, backend = engine.log().io_backend(), "axle serving");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM; shutting down"),
        }
        accept.abort();
        grpc_task.abort();
        let open = hub.shut_down_connections(Duration::from_secs(10)).await;
        if open > 0 {
            tracing::warn!(open, "connections still open after 10 s; their sessions keep their last saved state");
        }
        Ok::<_, anyhow::Error>(())
    });
    // Exporters commit their open files before the log closes.
    exports.stop();
    rt.shutdown_timeout(Duration::from_secs(5));
    engine.close().context("closing the log and metadata store")?;
    result?;
    tracing::info!("axle stopped cleanly");
    Ok(())
}
