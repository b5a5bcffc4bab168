//! `[cluster]`: running as one node of a replicated cluster (docs/replication.md).

use std::net::SocketAddr;

use serde::Deserialize;

use super::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// Run as a cluster node. Off: a single broker, nothing replicated.
    pub enabled: bool,
    /// This node's id, unique in the cluster, at least 1.
    pub node_id: u64,
    /// Address of the cluster RPC (Raft and replication, gRPC).
    pub listen: SocketAddr,
    /// Address peers dial for the cluster RPC; empty = `listen`.
    pub advertise: String,
    /// The initial voters, as `id@host:port` of their cluster RPC. The lowest id
    /// initialises the group on its first start.
    pub seeds: Vec<String>,
    /// Interval of heartbeats to the controller, in milliseconds.
    pub heartbeat_ms: u64,
    /// A node not heard from for this long loses the partitions it leads (ms).
    pub node_timeout_ms: u64,
    /// A follower not caught up for this long leaves the in-sync set (ms).
    pub replica_lag_max_ms: u64,
    /// How long a `quorum` publish waits to be committed before it is refused (ms).
    pub ack_timeout_ms: u64,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            enabled: false,
            node_id: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], 9700)),
            advertise: String::new(),
            seeds: Vec::new(),
            heartbeat_ms: 300,
            node_timeout_ms: 3_000,
            replica_lag_max_ms: 3_000,
            ack_timeout_ms: 10_000,
        }
    }
}

impl ClusterSection {
    /// The seeds as (node id, address); errors name the offending entry.
    pub fn parsed_seeds(&self) -> Result<Vec<(u64, String)>, ConfigError> {
        self.seeds
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let bad = |why: &str| ConfigError::invalid(format!("cluster.seeds[{i}]"), format!("{s:?}: {why}"));
                let (id, addr) = s.split_once('@').ok_or_else(|| bad("expected `id@host:port`"))?;
                let id: u64 = id.parse().map_err(|_| bad("the id before `@` is not a number"))?;
                if id == 0 {
                    return Err(bad("node ids start at 1"));
                }
                if addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
                    return Err(bad("expected `host:port` after `@`"));
                }
                Ok((id, addr.to_string()))
            })
            .collect()
    }

    /// Checks the section as a whole (only when enabled).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        if self.node_id == 0 {
            return Err(ConfigError::invalid("cluster.node_id", "node ids start at 1"));
        }
        let seeds = self.parsed_seeds()?;
        if seeds.is_empty() {
            return Err(ConfigError::invalid(
                "cluster.seeds",
                "a cluster needs at least one seed (this node's own entry)",
            ));
        }
        for (key, v) in [
            ("cluster.heartbeat_ms", self.heartbeat_ms),
            ("cluster.node_timeout_ms", self.node_timeout_ms),
            ("cluster.replica_lag_max_ms", self.replica_lag_max_ms),
            ("cluster.ack_timeout_ms", self.ack_timeout_ms),
        ] {
            if v == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1 ms"));
            }
        }
        if self.node_timeout_ms <= self.heartbeat_ms {
            return Err(ConfigError::invalid("cluster.node_timeout_ms", "must be longer than cluster.heartbeat_ms"));
        }
        Ok(())
    }
}
