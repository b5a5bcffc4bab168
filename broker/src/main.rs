//! The `axle` binary.

mod cluster_node;
mod export_commands;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use axle_broker::cli::{Cli, Command, ConfigCommand, ServeArgs};
mod admin;
use axle_broker::config::Config;
use axle_broker::http::{HttpState, LogLevelControl};
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
        Command::Config(ConfigCommand::Check { file }) => {
            Config::load(&file)?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::User(cmd) => admin::user(cmd),
        Command::Ban(cmd) => admin::ban(cmd),
        Command::Export(args) => export_commands::export(args),
        Command::Query(args) => export_commands::query(args),
    }
}

/// Installs the log subscriber; the returned control changes its filter at run time (the
/// admin API's `/api/v1/log-level`).
fn init_tracing(format: &str) -> anyhow::Result<LogLevelControl> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{fmt, reload, EnvFilter};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        "text" => registry.with(fmt::layer().with_writer(std::io::stderr)).init(),
        "json" => registry.with(fmt::layer().json().with_writer(std::io::stderr)).init(),
        other => bail!("--log-format {other:?} is not supported: use `text` or `json`"),
    }
    let getter = handle.clone();
    Ok(LogLevelControl::new(
        move || getter.with_current(|f| f.to_string()).unwrap_or_default(),
        move |spec| {
            let f = EnvFilter::try_new(spec).map_err(|e| e.to_string())?;
            handle.reload(f).map_err(|e| e.to_string())
        },
    ))
}

/// The admin API's bearer token: from config, else from the token file, else a new random
/// one written to the token file (mode 0600).
fn admin_token(cfg: &Config) -> anyhow::Result<String> {
    if let Some(t) = &cfg.admin.token {
        if t.len() < 16 {
            bail!("admin.token must be at least 16 characters");
        }
        return Ok(t.clone());
    }
    let path = cfg.admin.token_file.clone().unwrap_or_else(|| cfg.data_dir.join("admin.token"));
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => bail!("admin token file {} is empty: delete it to have a new token generated", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading the admin token file {}", path.display())),
    }
    let token: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating the admin token file {}", path.display()))?;
    f.write_all(token.as_bytes()).and_then(|_| f.sync_all()).with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(path = %path.display(), "generated an admin API token");
    Ok(token)
}

/// The configuration file (if any) with the command-line overrides applied.
fn effective_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut cfg = args.store.load_config()?;
    if let Some(f) = &args.fsync {
        // Name the flag, not the config key, when the flag's value is the bad one.
        f.parse::<axle_log::FsyncPolicy>().map_err(|e| anyhow::anyhow!("--fsync {f:?}: {e}"))?;
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
    if let Some(a) = args.http {
        cfg.listeners.http = a;
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
    let log_level = init_tracing(&args.log_format)?;
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
    // In a cluster, partitions go under their high watermark before anything reads them.
    let cluster = if cfg.cluster.enabled { Some(rt.block_on(cluster_node::start(&cfg, &engine))?) } else { None };
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
    let http = cfg.listeners.http;
    let token = if cfg.admin.enabled { Some(admin_token(&cfg)?) } else { None };
    let result = rt.block_on(async {
        let auth = axle_broker::auth::Auth::new(&cfg, engine.meta().clone()).context("setting up authentication")?;
        tracing::info!(chain = ?auth.chain_names(), "authentication");
        let hub = Hub::new(engine.clone(), cfg, acl, Arc::new(auth));
        *hub.exports.write() = exports.stats().to_vec();
        hub.spawn_dispatchers();
        let (mqtt_addr, accept) =
            axle_broker::listener::tcp(hub.clone(), "tcp".into(), tcp).await.with_context(|| format!("binding MQTT/TCP on {tcp}"))?;
        let mut listeners = Vec::new();
        for l in &hub.config.listeners.mqtt {
            let bound = axle_broker::listener::spawn(hub.clone(), l).await?;
            tracing::info!(listener = %l.name, kind = ?l.kind, addr = %bound.local, "listener bound");
            listeners.push(bound.task);
        }
        let (grpc_addr, grpc_task) = axle_broker::grpc::serve(hub.clone(), grpc)
            .await
            .with_context(|| format!("binding the gRPC API on {grpc}"))?;
        let http_state = HttpState { hub: hub.clone(), token: token.map(Into::into), log_level };
        let (http_addr, http_task) = axle_broker::http::serve(http_state, http)
            .await
            .with_context(|| format!("binding the HTTP (metrics and admin API) listener on {http}"))?;
        axle_broker::sys::spawn(hub.clone());
        tracing::info!(data_dir = %data_dir.display(), mqtt_tcp = %mqtt_addr, grpc = %grpc_addr, http = %http_addr, backend = engine.log().io_backend(), "axle serving");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM; shutting down"),
        }
        accept.abort();
        for l in &listeners {
            l.abort();
        }
        if let Some(c) = &cluster {
            c.hand_over().await;
        }
        grpc_task.abort();
        http_task.abort();
        let open = hub.shut_down_connections(Duration::from_secs(10)).await;
        if open > 0 {
            tracing::warn!(open, "connections still open after 10 s; their sessions keep their last saved state");
        }
        if let Some(c) = cluster {
            c.stop().await;
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
