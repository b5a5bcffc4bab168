//! Command-line interface of the `axle` binary.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Axle: a storage-first MQTT broker on one replicated write-ahead log.
#[derive(Debug, Parser)]
#[command(name = "axle", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker until SIGTERM or Ctrl-C.
    Serve(ServeArgs),
    /// Work with configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file (with the `AXLE_…__…` environment overrides applied)
    /// without starting the broker; exits non-zero naming the bad key, file and line.
    Check {
        /// The TOML file to check.
        file: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file (see axle.toml.example); flags below override it.
    #[arg(long, env = "AXLE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory holding the log and metadata [default: ./data].
    #[arg(long, env = "AXLE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// When appended data is fsynced: `always`, `never`, an interval such as `5ms`, or a byte
    /// count such as `1MiB` [default: always].
    #[arg(long, env = "AXLE_FSYNC")]
    pub fsync: Option<String>,
    /// Log write path: `auto` (io_uring, else pwritev), `io_uring` or `pwrite` [default: auto].
    #[arg(long, env = "AXLE_IO_BACKEND")]
    pub io_backend: Option<String>,
    /// MQTT over TCP listen address [default: 0.0.0.0:1883].
    #[arg(long, env = "AXLE_MQTT_TCP")]
    pub mqtt_tcp: Option<std::net::SocketAddr>,
    /// gRPC consumer API listen address [default: 0.0.0.0:50051].
    #[arg(long, env = "AXLE_GRPC")]
    pub grpc: Option<std::net::SocketAddr>,
    /// HTTP listen address: Prometheus `/metrics` and the admin API `/api/v1` [default: 0.0.0.0:18083].
    #[arg(long, env = "AXLE_HTTP")]
    pub http: Option<std::net::SocketAddr>,
    /// Truncate partitions at mid-log corruption instead of refusing to start.
    #[arg(long)]
    pub repair: bool,
    /// Log output format: `text` or `json`.
    #[arg(long, env = "AXLE_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}
