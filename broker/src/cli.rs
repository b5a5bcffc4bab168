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
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Directory holding the log and metadata.
    #[arg(long, env = "AXLE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// When appended data is fsynced: `always`, `never`, an interval such as `5ms`, or a byte
    /// count such as `1MiB`.
    #[arg(long, env = "AXLE_FSYNC", default_value = "always")]
    pub fsync: String,
    /// Log write path: `auto` (io_uring, else pwritev), `io_uring` or `pwrite`.
    #[arg(long, env = "AXLE_IO_BACKEND", default_value = "auto")]
    pub io_backend: String,
    /// Truncate partitions at mid-log corruption instead of refusing to start.
    #[arg(long)]
    pub repair: bool,
    /// Log output format: `text` or `json`.
    #[arg(long, env = "AXLE_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}
