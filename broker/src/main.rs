//! The `axle` binary.

use anyhow::{bail, Context};
use axle_broker::cli::{Cli, Command, ServeArgs};
use axle_log::{IoBackendKind, Log, LogConfig};
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
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

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_tracing(&args.log_format)?;
    let mut config = LogConfig {
        fsync: args.fsync.parse().map_err(anyhow::Error::msg).context("--fsync")?,
        repair: args.repair,
        ..LogConfig::default()
    };
    config.io_backend = match args.io_backend.as_str() {
        "auto" => IoBackendKind::Auto,
        "io_uring" => IoBackendKind::IoUring,
        "pwrite" => IoBackendKind::Pwrite,
        other => bail!("--io-backend {other:?} is not supported: use auto, io_uring or pwrite"),
    };
    let log_dir = args.data_dir.join("log");
    let log = Log::open(&log_dir, config).with_context(|| format!("opening the log in {}", log_dir.display()))?;
    tracing::info!(data_dir = %args.data_dir.display(), backend = log.io_backend(), "axle serving");
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM; shutting down"),
        }
        Ok::<_, std::io::Error>(())
    })?;
    log.close().context("closing the log")?;
    tracing::info!("axle stopped cleanly");
    Ok(())
}
