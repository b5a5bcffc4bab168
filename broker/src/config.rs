//! Broker configuration: one TOML file, every key optional with a documented default, unknown
//! keys refused with their name.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axle_engine::{PartitionKey, StreamConfig};
use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub data_dir: PathBuf,
    pub log: LogSection,
    pub mqtt: MqttSection,
    pub listeners: ListenerSection,
    pub streams: Vec<StreamSection>,
    pub default_stream_partitions: u32,
    /// Filters every connecting client is subscribed to; `%c` is replaced by its client id
    /// and `%u` by its username.
    pub auto_subscribe: Vec<AutoSubscribe>,
    /// Path of an ACL file (see `docs/acl.md`); none allows everything.
    pub acl_file: Option<PathBuf>,
    /// This broker's name in cluster metadata (the partition leader in `DescribeStream`).
    pub node_id: String,
    /// Parquet export settings shared by every stream (`[export]`); which streams are
    /// exported is set per stream (`[streams.export]`).
    pub export: ExportSection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `always`, `never`, `<n>ms`, `<n>s`, or `<n>b|kib|mib|gib`.
    pub fsync: String,
    /// `auto`, `io_uring` or `pwrite`.
    pub io_backend: String,
    /// Bytes per segment.
    pub segment_bytes: u64,
    /// Bytes kept per partition (none = unbounded).
    pub retention_bytes: Option<u64>,
    /// Hours kept.
    pub retention_hours: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttSection {
    /// Largest keepalive a client may ask for, in seconds; larger requests are capped and
    /// the cap is returned as Server Keep Alive (MQTT 5).
    pub max_keepalive: u16,
    /// Largest packet accepted, in bytes.
    pub max_packet_size: u32,
    /// QoS 1/2 PUBLISH packets a client may have unacknowledged towards the broker.
    pub receive_maximum: u16,
    /// Upper bound on the QoS 1/2 messages in flight towards one client (the client's own
    /// Receive Maximum lowers it).
    pub max_inflight: u16,
    /// Largest session expiry interval granted, in seconds.
    pub max_session_expiry: u32,
    /// Topic aliases a client may use towards the broker.
    pub topic_alias_maximum: u16,
    /// Deliver with the subscription's QoS even when the message was published lower.
    pub upgrade_qos: bool,
    /// Allow clients without credentials from non-loopback addresses.
    pub allow_anonymous: bool,
    /// Messages kept per offline session before the oldest are dropped (0 = unbounded).
    pub max_offline_messages: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerSection {
    /// MQTT over TCP.
    pub tcp: SocketAddr,
    /// The gRPC consumer API.
    pub grpc: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSection {
    pub name: String,
    pub filters: Vec<String>,
    #[serde(default = "one")]
    pub partitions: u32,
    /// `levels:N` or `client_id`.
    #[serde(default = "levels2")]
    pub key: String,
    /// Parquet export of this stream (`[streams.export]`); none = not exported.
    #[serde(default)]
    pub export: Option<StreamExportSection>,
}

/// `[export]`: where and how exported Parquet files are written (see `docs/architecture.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportSection {
    /// Root of the exported files, one subdirectory per stream [default: `<data_dir>/export`].
    pub dir: Option<PathBuf>,
    /// Rows per Parquet row group, at most [default: 131072].
    pub row_group_rows: usize,
    /// zstd compression level, 1..=22 [default: 1].
    pub zstd_level: i32,
}

impl Default for ExportSection {
    fn default() -> Self {
        ExportSection {
            dir: None,
            row_group_rows: axle_query::DEFAULT_ROW_GROUP_ROWS,
            zstd_level: axle_query::DEFAULT_ZSTD_LEVEL,
        }
    }
}

/// `[streams.export]`: Parquet export of one stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamExportSection {
    /// Export this stream inside `axle serve` (`axle export` exports it either way when the
    /// table is present) [default: true].
    pub enabled: bool,
    /// Rows per file, at most [default: 1000000].
    pub roll_rows: u64,
    /// Approximate compressed bytes per file, at most [default: 134217728 = 128 MiB].
    pub roll_bytes: u64,
    /// Seconds a file stays open after its first row before it is closed and visible, also
    /// when the stream is idle [default: 300].
    pub roll_age_secs: u64,
    /// Typed columns, e.g. `{ name = "speed", type = "f64", from = "$.speed" }`. `type`:
    /// `utf8`, `f64`, `i64`, `bool`, `timestamp_ms`; `from`: `topic:N` (topic level, from 1),
    /// `prop:NAME` (MQTT 5 user property) or a JSON path `$.a.b` into the payload.
    pub columns: Vec<ExportColumn>,
}

impl Default for StreamExportSection {
    fn default() -> Self {
        StreamExportSection {
            enabled: true,
            roll_rows: 1_000_000,
            roll_bytes: 128 << 20,
            roll_age_secs: 300,
            columns: Vec::new(),
        }
    }
}

/// One typed column of an exported stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportColumn {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub from: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoSubscribe {
    pub filter: String,
    #[serde(default)]
    pub qos: u8,
}

fn one() -> u32 {
    1
}
fn levels2() -> String {
    "levels:2".into()
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            log: LogSection::default(),
            mqtt: MqttSection::default(),
            listeners: ListenerSection::default(),
            streams: Vec::new(),
            default_stream_partitions: 4,
            auto_subscribe: Vec::new(),
            acl_file: None,
            node_id: "axle-1".into(),
            export: ExportSection::default(),
        }
    }
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            fsync: "always".into(),
            io_backend: "auto".into(),
            segment_bytes: 128 << 20,
            retention_bytes: None,
            retention_hours: Some(168),
        }
    }
}

impl Default for MqttSection {
    fn default() -> Self {
        MqttSection {
            max_keepalive: 3600,
            max_packet_size: 1 << 20,
            receive_maximum: 1024,
            max_inflight: 128,
            max_session_expiry: 7 * 24 * 3600,
            topic_alias_maximum: 64,
            upgrade_qos: false,
            allow_anonymous: false,
            max_offline_messages: 0,
        }
    }
}

impl Default for ListenerSection {
    fn default() -> Self {
        ListenerSection { tcp: SocketAddr::from(([0, 0, 0, 0], 1883)), grpc: SocketAddr::from(([0, 0, 0, 0], 50051)) }
    }
}

/// A configuration problem, naming the file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let cfg: Config =
            toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.mqtt.receive_maximum == 0 || self.mqtt.max_inflight == 0 {
            return bad("mqtt.receive_maximum and mqtt.max_inflight must be at least 1".into());
        }
        if self.mqtt.max_packet_size < 64 {
            return bad("mqtt.max_packet_size must be at least 64 bytes".into());
        }
        for a in &self.auto_subscribe {
            if a.qos > 2 {
                return bad(format!("auto_subscribe {}: qos must be 0, 1 or 2", a.filter));
            }
        }
        self.stream_configs()?;
        self.export_configs(false)?;
        if !(1..=22).contains(&self.export.zstd_level) || self.export.row_group_rows == 0 {
            return bad("export.zstd_level must be 1..=22 and export.row_group_rows at least 1".into());
        }
        Ok(())
    }

    /// The export root: `export.dir`, or `<data_dir>/export`.
    pub fn export_dir(&self) -> PathBuf {
        self.export.dir.clone().unwrap_or_else(|| self.data_dir.join("export"))
    }

    /// Shared export settings.
    pub fn export_settings(&self) -> axle_query::ExportSettings {
        axle_query::ExportSettings {
            root: self.export_dir(),
            row_group_rows: self.export.row_group_rows,
            zstd_level: self.export.zstd_level,
        }
    }

    /// The streams with a `[streams.export]` table; with `enabled_only`, only those with
    /// `enabled = true` (what `axle serve` exports).
    pub fn export_configs(&self, enabled_only: bool) -> Result<Vec<axle_query::ExportConfig>, ConfigError> {
        let mut out = Vec::new();
        for s in &self.streams {
            let Some(e) = &s.export else { continue };
            if enabled_only && !e.enabled {
                continue;
            }
            let invalid = |m: String| ConfigError::Invalid(format!("stream {} export: {m}", s.name));
            if e.roll_rows == 0 || e.roll_bytes == 0 || e.roll_age_secs == 0 {
                return Err(invalid("roll_rows, roll_bytes and roll_age_secs must be at least 1".into()));
            }
            let columns = e
                .columns
                .iter()
                .map(|c| {
                    axle_query::TypedColumn::parse(&c.name, &c.ty, &c.from).map_err(|err| invalid(err.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            axle_query::schema::validate_columns(&columns).map_err(|err| invalid(err.to_string()))?;
            out.push(axle_query::ExportConfig {
                stream: s.name.clone(),
                roll: axle_query::RollPolicy {
                    max_rows: e.roll_rows,
                    max_bytes: e.roll_bytes,
                    max_age: Duration::from_secs(e.roll_age_secs),
                },
                columns,
            });
        }
        Ok(out)
    }

    /// The engine's view of `streams`.
    pub fn stream_configs(&self) -> Result<Vec<StreamConfig>, ConfigError> {
        self.streams
            .iter()
            .map(|s| {
                let key: PartitionKey =
                    s.key.parse().map_err(|e: String| ConfigError::Invalid(format!("stream {}: {e}", s.name)))?;
                Ok(StreamConfig { name: s.name.clone(), filters: s.filters.clone(), partitions: s.partitions, key })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = toml::from_str::<Config>("[mqtt]\nmax_keepalive = 10\nmax_keep_alive = 5\n").unwrap_err();
        assert!(err.to_string().contains("max_keep_alive"), "{err}");
    }

    #[test]
    fn streams_and_auto_subscriptions_parse() {
        let cfg: Config = toml::from_str(
            r#"
            [[streams]]
            name = "telemetry"
            filters = ["v/+/telemetry"]
            partitions = 8
            key = "levels:2"
            [[auto_subscribe]]
            filter = "v/%c/cmd"
            qos = 1
            "#,
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.stream_configs().unwrap()[0].partitions, 8);
        assert_eq!(cfg.auto_subscribe[0].qos, 1);
    }

    #[test]
    fn stream_export_tables_parse_and_bad_columns_are_named() {
        let cfg: Config = toml::from_str(
            r#"
            data_dir = "/d"
            [[streams]]
            name = "telemetry"
            filters = ["v/+/telemetry"]
            [streams.export]
            roll_rows = 500
            columns = [
              { name = "vin", type = "utf8", from = "topic:2" },
              { name = "speed", type = "f64", from = "$.speed" },
            ]
            "#,
        )
        .unwrap();
        cfg.validate().unwrap();
        let e = &cfg.export_configs(true).unwrap()[0];
        assert_eq!(e.roll.max_rows, 500);
        assert_eq!(e.roll.max_age, Duration::from_secs(300));
        assert_eq!(e.columns[1].name, "speed");
        assert_eq!(cfg.export_dir(), PathBuf::from("/d/export"));
        let bad: Config = toml::from_str(
            "[[streams]]\nname = \"t\"\nfilters = [\"#\"]\n[streams.export]\ncolumns = [{ name = \"x\", type = \"f32\", from = \"$.x\" }]\n",
        )
        .unwrap();
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("stream t export") && err.contains("f32"), "{err}");
        let unknown =
            toml::from_str::<Config>("[[streams]]\nname = \"t\"\nfilters = [\"#\"]\n[streams.export]\nroll_age = 5\n");
        assert!(unknown.unwrap_err().to_string().contains("roll_age"));
    }
}
