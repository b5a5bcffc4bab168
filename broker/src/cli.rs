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
    /// Manage built-in users (the `users` authenticator). Opens the data directory, so the
    /// broker must be stopped.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage the ban list (client ids, usernames, IP networks). Opens the data directory, so
    /// the broker must be stopped.
    #[command(subcommand)]
    Ban(BanCommand),
    /// Export streams to Parquet up to their current end, then exit. Opens the data
    /// directory itself, so it runs while `axle serve` is stopped (a running server exports
    /// the streams whose `[streams.export]` has `enabled = true` by itself).
    Export(ExportArgs),
    /// Run SQL over the exported Parquet files, one table per stream.
    Query(QueryArgs),
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    // The streams exported are the configuration's `[[streams]]` with a `[streams.export]`.
    #[command(flatten)]
    pub files: ExportFilesArgs,
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
    #[command(flatten)]
    pub files: ExportFilesArgs,
}

/// Where the data is: the configuration file, and `--data-dir`, which overrides its
/// `data_dir`. Every command that opens the data directory takes these.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// TOML configuration file (see axle.toml.example); command-line flags override it.
    #[arg(long, env = "AXLE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory holding the log and metadata [default: ./data].
    #[arg(long, env = "AXLE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

impl StoreArgs {
    /// What every command that opens the data directory runs on: the `--config` file (or the
    /// defaults) with the `AXLE_…` environment overrides, then `--data-dir`. One loader, so
    /// that `serve`, `export`, `query`, `user` and `ban` never disagree about the data
    /// directory or the streams.
    pub fn load_config(&self) -> Result<crate::config::Config, crate::config::ConfigError> {
        let mut cfg = crate::config::Config::load_with_env(self.config.as_deref(), std::env::vars())?;
        if let Some(d) = &self.data_dir {
            cfg.data_dir = d.clone();
        }
        Ok(cfg)
    }
}

/// [`StoreArgs`] and where the exported Parquet files are, for `export` and `query`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportFilesArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Root of the exported files [default: `export.dir`, else <data dir>/export].
    #[arg(long, env = "AXLE_EXPORT_DIR")]
    pub export_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user or replace its password. The password is read from the terminal
    /// (twice, not echoed), or from standard input with --password-stdin; never from the
    /// command line.
    Add {
        name: String,
        /// Read the password from standard input (one line; a trailing newline is dropped).
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Delete a user.
    Del {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List usernames.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Exactly one ban target.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct BanTargetArgs {
    #[arg(long)]
    pub client_id: Option<String>,
    #[arg(long)]
    pub username: Option<String>,
    /// An address or CIDR network: 10.0.0.0/8, 192.0.2.7, fd00::/8.
    #[arg(long)]
    pub ip: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum BanCommand {
    /// Ban a client id, username or IP network.
    Add {
        #[command(flatten)]
        target: BanTargetArgs,
        /// How long: `90s`, `30m`, `1h`, `7d`, `1h 30m` [default: until removed].
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
        /// Shown in `ban list` and in the broker log when the ban refuses a client.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Lift a ban.
    Del {
        #[command(flatten)]
        target: BanTargetArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List the bans in force.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
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
    #[command(flatten)]
    pub store: StoreArgs,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ban_durations_take_a_unit() {
        let parse = |d: &str| match Cli::try_parse_from(["axle", "ban", "add", "--client-id", "c", "--for", d]) {
            Ok(Cli { command: Command::Ban(BanCommand::Add { duration, .. }), .. }) => duration.map(|d| d.as_secs()),
            _ => None,
        };
        assert_eq!(parse("90s"), Some(90));
        assert_eq!(parse("30m"), Some(1800));
        assert_eq!(parse("7d"), Some(604_800));
        assert_eq!(parse("1h 30m"), Some(5400));
        assert_eq!(parse("1w2"), None);
        assert_eq!(parse("soon"), None);
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        // Duplicate flag names across flattened argument groups would only fail at run time.
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_that_opens_the_data_directory_takes_config_and_data_dir() {
        for cmd in [&["serve"][..], &["export"], &["query", "SELECT 1"], &["user", "list"], &["ban", "list"]] {
            let mut argv = vec!["axle"];
            argv.extend_from_slice(cmd);
            argv.extend_from_slice(&["--config", "a.toml", "--data-dir", "d"]);
            assert!(Cli::try_parse_from(&argv).is_ok(), "{argv:?}");
        }
    }

    #[test]
    fn a_ban_needs_exactly_one_target() {
        assert!(Cli::try_parse_from(["axle", "ban", "add", "--client-id", "c", "--for", "1h"]).is_ok());
        assert!(Cli::try_parse_from(["axle", "ban", "add"]).is_err());
        assert!(Cli::try_parse_from(["axle", "ban", "add", "--client-id", "c", "--ip", "10.0.0.0/8"]).is_err());
    }
}
