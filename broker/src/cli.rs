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
    /// Manage built-in users (the `users` authenticator). Opens the data directory, so the
    /// broker must be stopped.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage the ban list (client ids, usernames, IP networks). Opens the data directory, so
    /// the broker must be stopped.
    #[command(subcommand)]
    Ban(BanCommand),
}

/// Where the metadata store is: `--data-dir`, else the config file's `data_dir`.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// TOML configuration file; its `data_dir` is used unless --data-dir is given.
    #[arg(long, env = "AXLE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory holding the log and metadata [default: ./data].
    #[arg(long, env = "AXLE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
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
        /// How long: `90s`, `30m`, `1h`, `7d` [default: until removed].
        #[arg(long = "for", value_parser = parse_duration)]
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

/// Parses `<n>` followed by `s`, `m`, `h` or `d` (seconds without a unit).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("{text:?} is not a duration such as 90s, 30m, 1h or 7d"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("unknown unit {other:?} in {text:?}: use s, m, h or d")),
    };
    n.checked_mul(secs).map(std::time::Duration::from_secs).ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("90s").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("30m").unwrap().as_secs(), 1800);
        assert_eq!(parse_duration("1h").unwrap().as_secs(), 3600);
        assert_eq!(parse_duration("7d").unwrap().as_secs(), 604_800);
        assert_eq!(parse_duration("15").unwrap().as_secs(), 15);
        assert!(parse_duration("1w").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn a_ban_needs_exactly_one_target() {
        assert!(Cli::try_parse_from(["axle", "ban", "add", "--client-id", "c", "--for", "1h"]).is_ok());
        assert!(Cli::try_parse_from(["axle", "ban", "add"]).is_err());
        assert!(Cli::try_parse_from(["axle", "ban", "add", "--client-id", "c", "--ip", "10.0.0.0/8"]).is_err());
    }
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
