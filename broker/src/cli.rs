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
    /// Export streams to Parquet up to their current end, then exit. Opens the data
    /// directory itself, so it runs while `axle serve` is stopped (a running server exports
    /// the streams whose `[streams.export]` has `enabled = true` by itself).
    Export(ExportArgs),
    /// Run SQL over the exported Parquet files, one table per stream.
    Query(QueryArgs),
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// TOML configuration file: its `[[streams]]` with an `[streams.export]` table are exported.
    #[arg(long, env = "AXLE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory holding the log and metadata [default: ./data].
    #[arg(long, env = "AXLE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Root of the exported files [default: `export.dir`, else <data dir>/export].
    #[arg(long, env = "AXLE_EXPORT_DIR")]
    pub export_dir: Option<PathBuf>,
    /// Export only these streams (repeatable); a named stream without an export table is
    /// exported with the fixed columns only [default: every stream with an export table].
    #[arg(long = "stream")]
    pub streams: Vec<String>,
    /// Threads exporting partitions in parallel [default: the number of CPUs].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Log output format: `text` or `json`.
    #[arg(long, env = "AXLE_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    /// The SQL statement. Tables are named after the streams (`SELECT count(*) FROM telemetry`);
    /// `date` ('YYYY-MM-DD') and `hour` ('HH') are partition columns that prune files.
    pub sql: String,
    /// Output: `table` (aligned text), `csv`, `json` (one object per line) or `parquet`.
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Write the result to this file instead of standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// TOML configuration file (for `data_dir` and `export.dir`).
    #[arg(long, env = "AXLE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory holding the log and metadata [default: ./data].
    #[arg(long, env = "AXLE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Root of the exported files [default: `export.dir`, else <data dir>/export].
    #[arg(long, env = "AXLE_EXPORT_DIR")]
    pub export_dir: Option<PathBuf>,
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
    /// Truncate partitions at mid-log corruption instead of refusing to start.
    #[arg(long)]
    pub repair: bool,
    /// Log output format: `text` or `json`.
    #[arg(long, env = "AXLE_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}
