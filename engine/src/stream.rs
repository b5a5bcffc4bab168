//! Streams: named sets of log partitions that MQTT topics are routed to.
//!
//! A stream takes every topic matching one of its filters; the first stream (in config
//! order) whose filter matches wins, and the default stream takes the rest. Within a stream
//! the partition is chosen by hashing the partition key: the first N topic levels (so that
//! `v/VIN123/...` always lands on one partition) or the publisher's client id. The log
//! partition of stream `s`, partition `n` is named `s-n`.

use std::hash::Hasher;

use crate::topic;

/// What a stream hashes to choose a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionKey {
    /// The first N levels of the topic (topics with fewer levels use the whole topic).
    TopicLevels(usize),
    /// The publishing client's id.
    ClientId,
}

impl std::str::FromStr for PartitionKey {
    type Err = String;

    /// `levels:N` or `client_id`.
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "client_id" {
            return Ok(PartitionKey::ClientId);
        }
        if let Some(n) = s.strip_prefix("levels:") {
            let n: usize = n.parse().map_err(|_| format!("partition key {s:?}: {n:?} is not a number"))?;
            if n == 0 {
                return Err(format!("partition key {s:?}: use at least one level"));
            }
            return Ok(PartitionKey::TopicLevels(n));
        }
        Err(format!("partition key {s:?} is not `levels:N` or `client_id`"))
    }
}

impl std::fmt::Display for PartitionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PartitionKey::TopicLevels(n) => write!(f, "levels:{n}"),
            PartitionKey::ClientId => f.write_str("client_id"),
        }
    }
}

/// Configuration of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConfig {
    /// `[A-Za-z0-9_]{1,100}`.
    pub name: String,
    /// Topic filters routed to this stream.
    pub filters: Vec<String>,
    /// 1..=1024 partitions.
    pub partitions: u32,
    pub key: PartitionKey,
    /// When a publish is acknowledged in a cluster (ignored on a single node).
    pub acks: crate::replica::Acks,
}

/// Prefix of the names of Axle's own partitions (the session journal, `__sessions-0`): no
/// stream may take it, and their records are not MQTT messages.
pub const INTERNAL_PREFIX: &str = "__";

/// Name of the stream that takes topics no configured stream takes.
pub const DEFAULT_STREAM: &str = "default";

impl StreamConfig {
    /// The default stream: every topic, keyed by the first two levels.
    pub fn default_stream(partitions: u32) -> Self {
        StreamConfig {
            name: DEFAULT_STREAM.into(),
            filters: vec!["#".into()],
            partitions,
            key: PartitionKey::TopicLevels(2),
            acks: crate::replica::Acks::Quorum,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty()
            || self.name.len() > 100
            || !self.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(format!("stream name {:?} must be 1-100 characters of [A-Za-z0-9_]", self.name));
        }
        if self.name.starts_with(INTERNAL_PREFIX) {
            return Err(format!(
                "stream name {:?}: names starting with `__` are reserved for Axle's own partitions",
                self.name
            ));
        }
        if !(1..=1024).contains(&self.partitions) {
            return Err(format!("stream {}: partitions = {} must be 1..=1024", self.name, self.partitions));
        }
        if self.filters.is_empty() {
            return Err(format!("stream {}: needs at least one topic filter", self.name));
        }
        Ok(())
    }

    /// The partition key of a message, as bytes stored as the record key.
    pub fn key_of<'a>(&self, topic: &'a str, client_id: &'a str) -> &'a str {
        match self.key {
            PartitionKey::TopicLevels(n) => topic::first_levels(topic, n).unwrap_or(topic),
            PartitionKey::ClientId => client_id,
        }
    }

    /// The partition number for a key.
    pub fn partition_of(&self, key: &str) -> u32 {
        // FNV-1a: stable across releases and platforms, unlike `DefaultHasher`.
        let mut h = Fnv1a::default();
        h.write(key.as_bytes());
        (h.finish() % u64::from(self.partitions)) as u32
    }

    /// The log partition name of partition `n`.
    pub fn partition_name(&self, n: u32) -> String {
        format!("{}-{n}", self.name)
    }
}

#[derive(Default)]
struct Fnv1a(u64);

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// The streams of a broker, in routing order, the default stream last.
#[derive(Debug, Clone)]
pub struct StreamSet {
    streams: Vec<StreamConfig>,
}

impl StreamSet {
    /// Validates the configured streams and appends the default stream.
    pub fn new(mut configured: Vec<StreamConfig>, default_partitions: u32) -> Result<Self, String> {
        configured.retain(|s| s.name != DEFAULT_STREAM);
        configured.push(StreamConfig::default_stream(default_partitions));
        let mut names = std::collections::HashSet::new();
        for s in &configured {
            s.validate()?;
            if !names.insert(s.name.clone()) {
                return Err(format!("stream {} is configured twice", s.name));
            }
        }
        Ok(StreamSet { streams: configured })
    }

    pub fn streams(&self) -> &[StreamConfig] {
        &self.streams
    }

    /// Index of the stream that takes `topic`.
    pub fn stream_for(&self, topic: &str) -> usize {
        self.streams
            .iter()
            .position(|s| s.filters.iter().any(|f| topic::matches(f, topic)))
            .unwrap_or(self.streams.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn telemetry() -> StreamConfig {
        StreamConfig {
            name: "telemetry".into(),
            filters: vec!["v/+/telemetry".into()],
            partitions: 8,
            key: "levels:2".parse().unwrap(),
            acks: Default::default(),
        }
    }

    #[test]
    fn topics_route_to_the_first_matching_stream_else_default() {
        let set = StreamSet::new(vec![telemetry()], 4).unwrap();
        assert_eq!(set.streams()[set.stream_for("v/VIN1/telemetry")].name, "telemetry");
        assert_eq!(set.streams()[set.stream_for("v/VIN1/cmd")].name, "default");
        assert_eq!(set.streams()[set.stream_for("$SYS/x")].name, "default");
    }

    #[test]
    fn one_vehicle_always_lands_on_one_partition() {
        let s = telemetry();
        let k = s.key_of("v/VIN123/telemetry", "c1");
        assert_eq!(k, "v/VIN123");
        let p = s.partition_of(k);
        assert_eq!(p, s.partition_of(s.key_of("v/VIN123/telemetry", "other")));
        assert!(p < 8);
        // Spread: 1000 vehicles use every partition.
        let used: std::collections::HashSet<u32> = (0..1000).map(|i| s.partition_of(&format!("v/VIN{i}"))).collect();
        assert_eq!(used.len(), 8);
    }

    #[test]
    fn bad_stream_configs_are_refused_with_the_reason() {
        let mut s = telemetry();
        s.partitions = 0;
        assert!(StreamSet::new(vec![s], 1).unwrap_err().contains("partitions"));
        assert!("levels:x".parse::<PartitionKey>().is_err());
        assert!(StreamSet::new(vec![telemetry(), telemetry()], 1).unwrap_err().contains("twice"));
        let mut internal = telemetry();
        internal.name = "__sessions".into();
        assert!(StreamSet::new(vec![internal], 1).unwrap_err().contains("reserved"));
    }
}
