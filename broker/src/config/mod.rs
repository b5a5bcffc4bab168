//! Broker configuration: one TOML file, every key optional with a documented default, unknown
//! keys refused with their name, file and line; `AXLE_SECTION__KEY` environment variables
//! override the file (see `load.rs`). `axle.toml.example` at the repository root lists every
//! key with its default and unit.

mod auth;
mod cluster;
mod export;
mod listeners;
mod load;

pub use auth::{
    AclDefault, AuthSection, AuthenticatorKind, CertField, FlappingSection, JwtAlgorithm, JwtSection,
    ProtectionSection, RateLimitAction, RateLimitSection, X509Section,
};
pub use cluster::ClusterSection;
pub use export::{ExportColumn, ExportSection, StreamExportSection};
pub use listeners::{ListenerKind, MqttListenerSection, PeerCertAsUsername, TlsSection};

use std::net::SocketAddr;
#[cfg(test)]
use std::path::Path;
use std::path::PathBuf;

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
    /// Path of an ACL file (see `docs/acl.md`); without one, `auth.acl_default` decides
    /// (allow, unless set to deny).
    pub acl_file: Option<PathBuf>,
    /// This broker's name in cluster metadata (the partition leader in `DescribeStream`)
    /// and in `$SYS/brokers/<node_id>/…`.
    pub node_id: String,
    /// Authentication chain and authorization defaults (`docs/auth.md`).
    pub auth: AuthSection,
    /// Bans, flapping detection and per-client rate limits (`docs/auth.md`).
    pub protection: ProtectionSection,
    /// Parquet export settings shared by every stream (`[export]`); which streams are
    /// exported is set per stream (`[streams.export]`).
    pub export: ExportSection,
    pub metrics: MetricsSection,
    pub admin: AdminSection,
    pub sys: SysSection,
    /// Running as one node of a replicated cluster (`docs/replication.md`).
    pub cluster: ClusterSection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Topic filters whose messages in and out are counted per filter
    /// (`axle_topic_messages_*_total{filter=…}`). Each costs a match per message.
    pub topics: Vec<String>,
    /// How many of the slowest subscribers `/metrics` and the admin API list.
    pub slow_subscribers: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Serve the REST admin API under `/api/v1` on `listeners.http`.
    pub enabled: bool,
    /// Bearer token for `/api/v1`. Unset: read from `token_file`, and when that file does
    /// not exist a random token is generated into it (mode 0600) at start-up.
    pub token: Option<String>,
    /// Where the token is kept [default: `<data_dir>/admin.token`].
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SysSection {
    /// Seconds between `$SYS/brokers/<node_id>/…` updates; 0 turns `$SYS` off.
    pub interval_secs: u64,
    /// Publish `$SYS/brokers/<node_id>/clients/<client_id>/connected|disconnected` events.
    pub client_events: bool,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection { topics: Vec::new(), slow_subscribers: 10 }
    }
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection { enabled: true, token: None, token_file: None }
    }
}

impl Default for SysSection {
    fn default() -> Self {
        SysSection { interval_secs: 30, client_events: true }
    }
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
    /// HTTP: Prometheus `/metrics` and the REST admin API `/api/v1`.
    pub http: SocketAddr,
    /// Further MQTT listeners, any number (`[[listeners.mqtt]]`), beside `tcp` above.
    pub mqtt: Vec<MqttListenerSection>,
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
    /// In a cluster: `quorum` (acknowledged once on a majority) or `leader`.
    #[serde(default = "quorum")]
    pub acks: String,
}

fn quorum() -> String {
    "quorum".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoSubscribe {
    pub filter: String,
    #[serde(default)]
    pub qos: u8,
}

/// `true`, for `#[serde(default)]` on flags that default to on.
fn yes() -> bool {
    true
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
            auth: AuthSection::default(),
            protection: ProtectionSection::default(),
            export: ExportSection::default(),
            metrics: MetricsSection::default(),
            admin: AdminSection::default(),
            sys: SysSection::default(),
            cluster: ClusterSection::default(),
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
        ListenerSection {
            tcp: SocketAddr::from(([0, 0, 0, 0], 1883)),
            grpc: SocketAddr::from(([0, 0, 0, 0], 50051)),
            http: SocketAddr::from(([0, 0, 0, 0], 18083)),
            mqtt: Vec::new(),
        }
    }
}

pub use load::ConfigError;

impl Config {
    /// Checks values the types cannot: errors name the dotted key (`load.rs` adds the line).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |k: &str, m: &str| Err(ConfigError::invalid(k, m));
        if self.mqtt.receive_maximum == 0 {
            return bad("mqtt.receive_maximum", "must be at least 1");
        }
        if self.mqtt.max_inflight == 0 {
            return bad("mqtt.max_inflight", "must be at least 1");
        }
        if self.mqtt.max_packet_size < 64 {
            return bad("mqtt.max_packet_size", "must be at least 64 bytes");
        }
        if self.default_stream_partitions == 0 {
            return bad("default_stream_partitions", "must be at least 1");
        }
        if let Err(e) = self.log.fsync.parse::<axle_log::FsyncPolicy>() {
            return bad("log.fsync", &e.to_string());
        }
        if !["auto", "io_uring", "pwrite"].contains(&self.log.io_backend.as_str()) {
            return bad("log.io_backend", "must be auto, io_uring or pwrite");
        }
        for (i, a) in self.auto_subscribe.iter().enumerate() {
            if a.qos > 2 {
                return bad(&format!("auto_subscribe[{i}].qos"), "must be 0, 1 or 2");
            }
        }
        for (i, f) in self.metrics.topics.iter().enumerate() {
            if let Err(e) = crate::codec::topic::validate_topic_filter(f) {
                return bad(&format!("metrics.topics[{i}]"), &e.to_string());
            }
            if f.starts_with("$share/") {
                return bad(&format!("metrics.topics[{i}]"), "must be a plain topic filter, not a shared subscription");
            }
        }
        if self.node_id.is_empty() || self.node_id.contains(['/', '+', '#']) {
            return bad("node_id", "must be non-empty and free of `/`, `+` and `#` (it is a $SYS topic level)");
        }
        self.stream_configs()?;
        self.export_configs(false)?;
        if !(1..=22).contains(&self.export.zstd_level) {
            return bad("export.zstd_level", "must be 1..=22");
        }
        if self.export.row_group_rows == 0 {
            return bad("export.row_group_rows", "must be at least 1");
        }
        self.auth.validate()?;
        self.protection.validate()?;
        self.cluster.validate()?;
        let mut names = std::collections::HashSet::new();
        for (i, l) in self.listeners.mqtt.iter().enumerate() {
            if l.name == "tcp" || !names.insert(l.name.as_str()) {
                return bad(
                    &format!("listeners.mqtt[{i}].name"),
                    &format!("{:?} is used twice (\"tcp\" is the [listeners] tcp one)", l.name),
                );
            }
            l.validate(i)?;
        }
        Ok(())
    }

    /// The engine's view of `streams`.
    pub fn stream_configs(&self) -> Result<Vec<StreamConfig>, ConfigError> {
        self.streams
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let key: PartitionKey =
                    s.key.parse().map_err(|e: String| ConfigError::invalid(format!("streams[{i}].key"), e))?;
                if s.partitions == 0 {
                    return Err(ConfigError::invalid(format!("streams[{i}].partitions"), "must be at least 1"));
                }
                let acks = s.acks.parse().map_err(|e: String| ConfigError::invalid(format!("streams[{i}].acks"), e))?;
                Ok(StreamConfig {
                    name: s.name.clone(),
                    filters: s.filters.clone(),
                    partitions: s.partitions,
                    key,
                    acks,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_is_valid_and_states_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../axle.toml.example");
        let cfg = Config::load_with_env(Some(&path), std::iter::empty()).expect("axle.toml.example is valid");
        let d = Config::default();
        assert_eq!(cfg.mqtt.max_packet_size, d.mqtt.max_packet_size);
        assert_eq!(cfg.log.segment_bytes, d.log.segment_bytes);
        assert_eq!(cfg.listeners.http, d.listeners.http);
        assert_eq!(cfg.sys.interval_secs, d.sys.interval_secs);
        assert_eq!(cfg.mqtt.max_session_expiry, d.mqtt.max_session_expiry);
        assert_eq!(cfg.auth.chain, d.auth.chain);
        assert_eq!(cfg.protection.flapping.max_connects, d.protection.flapping.max_connects);
        assert_eq!(cfg.protection.rate_limit.on_exceed, d.protection.rate_limit.on_exceed);
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = toml::from_str::<Config>("[mqtt]\nmax_keepalive = 10\nmax_keep_alive = 5\n").unwrap_err();
        assert!(err.to_string().contains("max_keep_alive"), "{err}");
    }

    #[test]
    fn auth_sections_parse_and_are_checked() {
        let cfg: Config = toml::from_str(
            r#"
            [auth]
            chain = ["users", "jwt", "x509"]
            acl_default = "deny"
            [auth.jwt]
            algorithm = "HS256"
            secret = "s3cret"
            [protection.flapping]
            enabled = true
            max_connects = 3
            [protection.rate_limit]
            messages_per_sec = 10
            on_exceed = "disconnect"
            "#,
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.auth.chain.len(), 3);
        assert_eq!(cfg.protection.flapping.window_secs, 60);
        for (text, needle) in [
            ("[auth]\nchain = [\"jwt\"]\n", "no [auth.jwt]"),
            ("[auth]\nchain = [\"users\", \"users\"]\n", "twice"),
            ("[auth.jwt]\nalgorithm = \"RS256\"\nsecret = \"x\"\n", "public key"),
            ("[auth.jwt]\nalgorithm = \"HS256\"\n", "needs `secret`"),
            ("[protection.flapping]\nenabled = true\nmax_connects = 0\n", "at least 1"),
        ] {
            let cfg: Config = toml::from_str(text).unwrap();
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
        let e = toml::from_str::<Config>("[auth]\nchain = [\"ldap\"]\n").unwrap_err().to_string();
        assert!(e.contains("ldap"), "{e}");
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
