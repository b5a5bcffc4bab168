//! Broker configuration: one TOML file, every key optional with a documented default, unknown
//! keys refused with their name.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
        Ok(())
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
}
