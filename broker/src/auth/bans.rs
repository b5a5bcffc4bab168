//! The ban list: client ids, usernames and IP networks refused at CONNECT (0x8A Banned under
//! MQTT 5, 5 Not authorized under 3.1.1), each with an optional expiry and reason.
//!
//! Bans live in the metadata store's `bans` column family (key: the target as text,
//! `client:<id>`, `user:<name>` or `ip:<network>`; value: JSON with `until_ms`, `reason`,
//! `created_ms`) and in memory; [`Bans`] writes both, so the CLI (broker stopped) and the REST
//! admin API (broker running, through `hub.auth.bans()`) use the same calls. Times are Unix
//! milliseconds (wall clock, because they are persisted). Expired bans are ignored at once
//! and deleted the next time the list is read.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use axle_engine::{MetaError, MetaStore};
use ipnet::IpNet;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

const FAMILY: &str = "bans";

/// What a ban matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BanTarget {
    ClientId(String),
    Username(String),
    /// Every address in the network (a single address is a /32 or /128).
    Ip(IpNet),
}

impl BanTarget {
    /// Parses an IP address or CIDR network (`10.0.0.0/8`, `::1`, `fd00::/8`).
    pub fn ip(text: &str) -> Result<BanTarget, BansError> {
        let net = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| BansError::BadNetwork(text.to_string()))?;
        Ok(BanTarget::Ip(net.trunc()))
    }

    fn key(&self) -> String {
        self.to_string()
    }

    fn from_key(key: &str) -> Option<BanTarget> {
        let (kind, value) = key.split_once(':')?;
        match kind {
            "client" => Some(BanTarget::ClientId(value.to_string())),
            "user" => Some(BanTarget::Username(value.to_string())),
            "ip" => BanTarget::ip(value).ok(),
            _ => None,
        }
    }
}

impl std::fmt::Display for BanTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BanTarget::ClientId(c) => write!(f, "client:{c}"),
            BanTarget::Username(u) => write!(f, "user:{u}"),
            BanTarget::Ip(n) => write!(f, "ip:{n}"),
        }
    }
}

/// One ban.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    pub target: BanTarget,
    /// Unix ms after which the ban no longer applies; `None` = until removed.
    pub until_ms: Option<i64>,
    pub reason: Option<String>,
    /// Unix ms when it was added.
    pub created_ms: i64,
}

impl Ban {
    pub fn is_active(&self, now_ms: i64) -> bool {
        self.until_ms.is_none_or(|u| u > now_ms)
    }
}

#[derive(Serialize, Deserialize)]
struct Stored {
    until_ms: Option<i64>,
    reason: Option<String>,
    created_ms: i64,
}

/// A ban-list failure.
#[derive(Debug, thiserror::Error)]
pub enum BansError {
    #[error(transparent)]
    Store(#[from] MetaError),
    #[error("{0:?} is not an IP address or CIDR network (examples: 10.0.0.0/8, 192.0.2.7, fd00::/8)")]
    BadNetwork(String),
    #[error("a banned client id or username must not be empty")]
    Empty,
}

/// The ban list on an open metadata store, with its in-memory copy.
pub struct Bans {
    meta: Arc<MetaStore>,
    live: RwLock<HashMap<BanTarget, Ban>>,
}

impl Bans {
    /// Loads every stored ban. Unreadable entries are logged and skipped.
    pub fn open(meta: Arc<MetaStore>) -> Result<Bans, BansError> {
        let mut live = HashMap::new();
        for (k, v) in meta.scan_prefix(FAMILY, b"")? {
            let key = String::from_utf8_lossy(&k).into_owned();
            match (BanTarget::from_key(&key), serde_json::from_slice::<Stored>(&v)) {
                (Some(target), Ok(s)) => {
                    live.insert(
                        target.clone(),
                        Ban { target, until_ms: s.until_ms, reason: s.reason, created_ms: s.created_ms },
                    );
                }
                _ => tracing::warn!(key = %key, "unreadable ban entry skipped"),
            }
        }
        Ok(Bans { meta, live: RwLock::new(live) })
    }

    /// Adds or replaces the ban on `ban.target`; durable when it returns.
    pub fn add(&self, ban: Ban) -> Result<(), BansError> {
        match &ban.target {
            BanTarget::ClientId(s) | BanTarget::Username(s) if s.is_empty() => return Err(BansError::Empty),
            _ => {}
        }
        let stored = Stored { until_ms: ban.until_ms, reason: ban.reason.clone(), created_ms: ban.created_ms };
        let value = serde_json::to_vec(&stored).unwrap_or_default();
        self.meta.put(FAMILY, ban.target.key().as_bytes(), &value, true)?;
        self.live.write().insert(ban.target.clone(), ban);
        Ok(())
    }

    /// Removes the ban on `target`; returns false if there was none.
    pub fn remove(&self, target: &BanTarget) -> Result<bool, BansError> {
        let existed = self.live.write().remove(target).is_some();
        if existed {
            self.meta.delete(FAMILY, target.key().as_bytes(), true)?;
        }
        Ok(existed)
    }

    /// The bans in force at `now_ms`, sorted by target; expired ones are deleted.
    pub fn list(&self, now_ms: i64) -> Result<Vec<Ban>, BansError> {
        let expired: Vec<BanTarget> =
            self.live.read().values().filter(|b| !b.is_active(now_ms)).map(|b| b.target.clone()).collect();
        for t in &expired {
            self.remove(t)?;
        }
        let mut all: Vec<Ban> = self.live.read().values().cloned().collect();
        all.sort_by_key(|b| b.target.key());
        Ok(all)
    }

    /// The ban in force at `now_ms` that matches any of the client's client id, username or
    /// address, if one does.
    pub fn find(&self, client_id: &str, username: Option<&str>, ip: IpAddr, now_ms: i64) -> Option<Ban> {
        let live = self.live.read();
        let active = |t: &BanTarget| live.get(t).filter(|b| b.is_active(now_ms)).cloned();
        if !client_id.is_empty() {
            if let Some(b) = active(&BanTarget::ClientId(client_id.to_string())) {
                return Some(b);
            }
        }
        if let Some(b) = username.and_then(|u| active(&BanTarget::Username(u.to_string()))) {
            return Some(b);
        }
        // A v4 client on a dual-stack socket appears as ::ffff:a.b.c.d.
        let ip = ip.to_canonical();
        live.values().find(|b| matches!(&b.target, BanTarget::Ip(n) if n.contains(&ip)) && b.is_active(now_ms)).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(target: BanTarget, until_ms: Option<i64>) -> Ban {
        Ban { target, until_ms, reason: Some("test".into()), created_ms: 0 }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn bans_match_client_id_username_and_networks_v4_and_v6() {
        let dir = tempfile::tempdir().unwrap();
        let bans = Bans::open(Arc::new(MetaStore::open(dir.path()).unwrap())).unwrap();
        bans.add(ban(BanTarget::ClientId("car1".into()), None)).unwrap();
        bans.add(ban(BanTarget::Username("mallory".into()), None)).unwrap();
        bans.add(ban(BanTarget::ip("10.0.0.0/8").unwrap(), None)).unwrap();
        bans.add(ban(BanTarget::ip("fd00:1::/32").unwrap(), None)).unwrap();
        bans.add(ban(BanTarget::ip("192.0.2.7").unwrap(), None)).unwrap();
        let ok = ip("192.0.2.8");
        assert!(bans.find("car1", None, ok, 1).is_some());
        assert!(bans.find("car2", None, ok, 1).is_none());
        assert!(bans.find("car2", Some("mallory"), ok, 1).is_some());
        assert!(bans.find("car2", Some("alice"), ok, 1).is_none());
        assert!(bans.find("x", None, ip("10.200.3.4"), 1).is_some());
        assert!(bans.find("x", None, ip("11.0.0.1"), 1).is_none());
        assert!(bans.find("x", None, ip("192.0.2.7"), 1).is_some(), "a single address is a /32");
        assert!(bans.find("x", None, ip("fd00:1:ffff::9"), 1).is_some());
        assert!(bans.find("x", None, ip("fd00:2::9"), 1).is_none());
        assert!(bans.find("x", None, ip("::ffff:10.1.1.1"), 1).is_some(), "v4-mapped v6 matches the v4 network");
        assert!(bans.find("", None, ok, 1).is_none(), "an empty client id matches no client-id ban");
    }

    #[test]
    fn bans_expire_and_persist_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let bans = Bans::open(Arc::new(MetaStore::open(dir.path()).unwrap())).unwrap();
            bans.add(ban(BanTarget::ClientId("short".into()), Some(1_000))).unwrap();
            bans.add(ban(BanTarget::ClientId("forever".into()), None)).unwrap();
            let any = ip("127.0.0.1");
            assert!(bans.find("short", None, any, 999).is_some());
            assert!(bans.find("short", None, any, 1_000).is_none(), "expired at until_ms");
        }
        let bans = Bans::open(Arc::new(MetaStore::open(dir.path()).unwrap())).unwrap();
        let listed: Vec<String> = bans.list(500).unwrap().iter().map(|b| b.target.to_string()).collect();
        assert_eq!(listed, vec!["client:forever", "client:short"]);
        let listed: Vec<String> = bans.list(2_000).unwrap().iter().map(|b| b.target.to_string()).collect();
        assert_eq!(listed, vec!["client:forever"], "expired bans are dropped when listed");
        assert!(bans.remove(&BanTarget::ClientId("forever".into())).unwrap());
        assert!(!bans.remove(&BanTarget::ClientId("forever".into())).unwrap());
        assert!(bans.list(0).unwrap().is_empty());
    }

    #[test]
    fn bad_networks_and_empty_names_are_refused() {
        assert!(matches!(BanTarget::ip("10.0.0.0/33"), Err(BansError::BadNetwork(_))));
        assert!(matches!(BanTarget::ip("example.com"), Err(BansError::BadNetwork(_))));
        assert_eq!(BanTarget::ip("10.1.2.3/8").unwrap().to_string(), "ip:10.0.0.0/8");
        let dir = tempfile::tempdir().unwrap();
        let bans = Bans::open(Arc::new(MetaStore::open(dir.path()).unwrap())).unwrap();
        assert!(matches!(bans.add(ban(BanTarget::Username(String::new()), None)), Err(BansError::Empty)));
    }
}
