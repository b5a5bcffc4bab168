//! Session state, and how a persistent session is kept in the metadata store.
//!
//! A session is a set of subscriptions, a cursor per log partition, and the QoS 1/2
//! messages in flight towards the client as (partition, offset, packet id) — never copies
//! of messages. The cursor `next` of a partition means: every record below `next` that
//! matches the session's subscriptions has been sent (the unacknowledged ones are in
//! `outbound`). Reading the log from `next` therefore resumes delivery exactly.
//!
//! Stored in the metadata store, per client id `c`:
//! - `sessions/c` → [`SessionRecord`] (expiry, disconnect time, inbound QoS 2 ids);
//! - `subscriptions/c\0filter` → [`Subscription`];
//! - `cursors/c\0partition` → `next` and the in-flight entries of that partition.
//!
//! In a cluster every write is instead the session's whole image, written through the
//! engine's session journal (`axle_engine::journal`) under the version this node claimed at
//! CONNECT: every node then holds the same rows, and a client can resume its session on any
//! node (docs/replication.md, "Sessions across nodes").

use std::collections::{BTreeMap, HashMap, HashSet};

use axle_engine::journal::{Image, Row, Scope, Version};
use axle_engine::{Engine, MetaOp, MetaStore};
use serde::{Deserialize, Serialize};

/// One subscription as the client made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// The filter as subscribed (with `$share/{group}/` when shared).
    pub filter: String,
    /// The filter matched against topics.
    pub inner: String,
    pub group: Option<String>,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
    pub id: Option<u32>,
}

/// A QoS 1/2 message sent to the client and not yet completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inflight {
    /// Partition id, or `None` for messages not read from a partition cursor: retained
    /// messages (persisted through `retained_inflight`) and shared-subscription deliveries
    /// (not persisted: they go back to the group when the member leaves).
    pub pid: Option<usize>,
    pub offset: u64,
    pub qos: u8,
    /// QoS 2: PUBREC received, PUBREL sent; waiting for PUBCOMP.
    pub released: bool,
}

/// Session-level fields of a persistent session.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Seconds the session outlives its connection.
    pub expiry_interval: u32,
    /// When the last connection ended (ms since the Unix epoch); 0 while connected.
    pub disconnected_at: i64,
    /// Inbound QoS 2 packet ids whose PUBREL has not arrived.
    pub awaiting_rel: Vec<u16>,
    /// Retained messages sent on SUBSCRIBE and not yet acknowledged.
    #[serde(default)]
    pub retained_inflight: Vec<RetainedInflight>,
}

/// An unacknowledged retained delivery: the retained message is found again by topic and
/// publish time (ms) when the session resumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetainedInflight {
    pub packet_id: u16,
    pub topic: String,
    pub timestamp: i64,
    pub qos: u8,
    pub released: bool,
}

/// Delivery position in one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub next: u64,
    /// The log may hold records for this session beyond what arrived live.
    pub catch_up: bool,
    /// Records below this offset may have been sent already (the session was resumed from a
    /// save made while it was connected: its node died, or another node took it over), so
    /// they go out with DUP set. 0 when none.
    pub dup_below: u64,
}

/// The state of one session.
#[derive(Debug, Default)]
pub struct SessionState {
    pub client_id: String,
    pub subscriptions: BTreeMap<String, Subscription>,
    pub cursors: HashMap<usize, Cursor>,
    /// By packet id.
    pub outbound: BTreeMap<u16, Inflight>,
    pub awaiting_rel: HashSet<u16>,
    /// Packet id → (topic, publish time) of retained deliveries in flight.
    pub retained_inflight: HashMap<u16, (String, i64)>,
    pub expiry_interval: u32,
    next_packet_id: u16,
    /// Cursors or in-flight entries changed since the last save.
    pub dirty: bool,
    /// In a cluster: the journal version this node claimed the session with (bumped by
    /// every save).
    pub journal: Option<Version>,
    /// In a cluster: tells whether the last save is committed in the journal.
    pub replicating: Option<tokio::sync::oneshot::Receiver<bool>>,
    /// Output must wait for `replicating`: it acknowledges what the last save holds.
    pub hold_output: bool,
}

fn key(client: &str, rest: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(client.len() + 1 + rest.len());
    k.extend_from_slice(client.as_bytes());
    k.push(0);
    k.extend_from_slice(rest.as_bytes());
    k
}

fn prefix(client: &str) -> Vec<u8> {
    key(client, "")
}

/// Failure to read or write session state.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Meta(#[from] axle_engine::MetaError),
    #[error("stored session of {client} is unreadable ({what}); it is discarded")]
    Corrupt { client: String, what: String },
    #[error(transparent)]
    Journal(#[from] axle_engine::journal::JournalError),
}

impl SessionError {
    /// Another node holds the session now: nothing was written, and this connection must go.
    pub fn is_superseded(&self) -> bool {
        matches!(self, SessionError::Journal(axle_engine::journal::JournalError::Superseded { .. }))
    }
}

impl SessionState {
    pub fn new(client_id: &str, expiry_interval: u32) -> Self {
        SessionState { client_id: client_id.to_string(), expiry_interval, next_packet_id: 1, ..Default::default() }
    }

    /// A free packet id for an outbound QoS 1/2 message, or `None` if all 65535 are in use.
    pub fn alloc_packet_id(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            let id = self.next_packet_id.max(1);
            self.next_packet_id = id.wrapping_add(1).max(1);
            if !self.outbound.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }

    /// The cursor of `pid`, created at `end` (new subscriptions see only new messages).
    pub fn cursor(&mut self, pid: usize, end: u64) -> &mut Cursor {
        self.cursors.entry(pid).or_insert(Cursor { next: end, catch_up: false, dup_below: 0 })
    }

    /// Whether a session with this expiry outlives its connection.
    pub fn is_persistent(&self) -> bool {
        self.expiry_interval > 0
    }

    /// The stored session for a CONNECT of `client` (`None`: none, expired, unreadable or a
    /// clean start, which deletes it), and in a cluster the journal version this node now
    /// holds it with. In a cluster the session is first claimed from whichever node held it:
    /// once the claim is applied here, the local store holds all that node committed (a
    /// clean start's claim carries the deletion), and a connection of this client on another
    /// node is told to go.
    pub async fn open(
        engine: &Engine,
        client: &str,
        clean_start: bool,
    ) -> Result<(Option<Self>, Option<Version>), axle_engine::journal::JournalError> {
        let meta = engine.meta();
        let journal = match engine.journal() {
            Some(j) => Some(j.claim(client, clean_start.then(|| Self::deletion_image(client))).await?),
            None => None,
        };
        if clean_start {
            if journal.is_none() {
                if let Err(e) = Self::delete(meta, client) {
                    tracing::error!(client_id = client, error = %e, "could not delete the old session");
                }
            }
            return Ok((None, journal));
        }
        let stored = match Self::load(meta, engine, client, axle_engine::log::now_ms()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(client_id = client, error = %e, "stored session unreadable; starting fresh");
                if journal.is_none() {
                    let _ = Self::delete(meta, client);
                }
                None
            }
        };
        Ok((stored, journal))
    }

    /// Loads the stored session of `client`, or `None` if there is none or it expired.
    pub fn load(meta: &MetaStore, engine: &Engine, client: &str, now_ms: i64) -> Result<Option<Self>, SessionError> {
        let Some(raw) = meta.get("sessions", client.as_bytes())? else { return Ok(None) };
        let rec: SessionRecord = serde_json::from_slice(&raw)
            .map_err(|e| SessionError::Corrupt { client: client.into(), what: e.to_string() })?;
        if rec.disconnected_at > 0 && now_ms - rec.disconnected_at > i64::from(rec.expiry_interval) * 1000 {
            Self::delete(meta, client)?;
            return Ok(None);
        }
        let mut s = SessionState::new(client, rec.expiry_interval);
        s.awaiting_rel = rec.awaiting_rel.into_iter().collect();
        for r in rec.retained_inflight {
            s.outbound.insert(r.packet_id, Inflight { pid: None, offset: 0, qos: r.qos, released: r.released });
            s.retained_inflight.insert(r.packet_id, (r.topic, r.timestamp));
        }
        for (_, v) in meta.scan_prefix("subscriptions", &prefix(client))? {
            let sub: Subscription = serde_json::from_slice(&v)
                .map_err(|e| SessionError::Corrupt { client: client.into(), what: e.to_string() })?;
            s.subscriptions.insert(sub.filter.clone(), sub);
        }
        for (k, v) in meta.scan_prefix("cursors", &prefix(client))? {
            let name = String::from_utf8_lossy(&k[client.len() + 1..]).to_string();
            let Some(p) = engine.partition_by_name(&name) else {
                tracing::warn!(client, partition = %name, "cursor for a partition no longer configured; dropped");
                continue;
            };
            let (next, inflight) = decode_cursor(&v)
                .ok_or_else(|| SessionError::Corrupt { client: client.into(), what: format!("cursor {name}") })?;
            // A save made while connected may lag what was sent: the node died, or another
            // node took the session over. What follows the cursor goes out with DUP, up to
            // this replica's log end: past the high watermark any node could have sent from
            // while this one was in sync.
            let dup_below = if rec.disconnected_at == 0 { p.log.log_end() } else { 0 };
            s.cursors.insert(p.id, Cursor { next, catch_up: true, dup_below });
            for (packet_id, offset, qos, released) in inflight {
                s.outbound.insert(packet_id, Inflight { pid: Some(p.id), offset, qos, released });
            }
        }
        if let Some(max) = s.outbound.keys().max() {
            s.next_packet_id = max.wrapping_add(1).max(1);
        }
        Ok(Some(s))
    }

    /// The image that deletes `client`'s session (a journal claim for a clean start).
    pub fn deletion_image(client: &str) -> Image {
        Image { scopes: Self::scopes(client), rows: Vec::new() }
    }

    fn scopes(client: &str) -> Vec<Scope> {
        vec![
            Scope::Key { family: "sessions".into(), key: client.as_bytes().to_vec() },
            Scope::Prefix { family: "subscriptions".into(), prefix: prefix(client) },
            Scope::Prefix { family: "cursors".into(), prefix: prefix(client) },
        ]
    }

    /// Removes every stored trace of the session: through the journal when it holds a
    /// claim, else in the local store.
    pub fn discard(&mut self, engine: &Engine) -> Result<(), SessionError> {
        match (engine.journal(), self.journal.as_mut()) {
            (Some(j), Some(v)) => {
                j.write(&self.client_id, v, &Self::deletion_image(&self.client_id))?;
                Ok(())
            }
            _ => Self::delete(engine.meta(), &self.client_id),
        }
    }

    /// Removes every stored trace of `client` from the local store.
    pub fn delete(meta: &MetaStore, client: &str) -> Result<(), SessionError> {
        let mut keys: Vec<(&str, Vec<u8>)> = vec![("sessions", client.as_bytes().to_vec())];
        for fam in ["subscriptions", "cursors"] {
            for (k, _) in meta.scan_prefix(fam, &prefix(client))? {
                keys.push((fam, k));
            }
        }
        let ops: Vec<MetaOp> = keys.iter().map(|(f, k)| MetaOp::Delete { family: f, key: k }).collect();
        meta.write_batch(&ops, false)?;
        Ok(())
    }

    /// Stores a subscription change at once (in a cluster the next save carries it: the
    /// caller marks the session dirty).
    pub fn save_subscription(&self, engine: &Engine, sub: &Subscription) -> Result<(), SessionError> {
        if self.journal.is_some() {
            return Ok(());
        }
        let meta = engine.meta();
        let v = serde_json::to_vec(sub)
            .map_err(|e| SessionError::Corrupt { client: self.client_id.clone(), what: e.to_string() })?;
        meta.put("subscriptions", &key(&self.client_id, &sub.filter), &v, false)?;
        Ok(())
    }

    pub fn delete_subscription(&mut self, engine: &Engine, filter: &str) -> Result<(), SessionError> {
        if self.journal.is_some() {
            self.dirty = true;
            return Ok(());
        }
        engine.meta().delete("subscriptions", &key(&self.client_id, filter), false)?;
        Ok(())
    }

    /// Stores the session record, every cursor and every persisted in-flight entry in one
    /// atomic batch. Not fsynced: it survives a process crash; after a machine crash the
    /// log's own durability bounds what is redelivered.
    pub fn save(&mut self, engine: &Engine, disconnected_at: i64) -> Result<(), SessionError> {
        if let (Some(j), Some(version)) = (engine.journal(), self.journal) {
            let mut version = version;
            let image = self.image(engine, disconnected_at)?;
            self.replicating = Some(j.write(&self.client_id, &mut version, &image)?);
            self.journal = Some(version);
            self.dirty = false;
            return Ok(());
        }
        let (rec, owned) = self.rows(engine, disconnected_at)?;
        let mut ops = vec![MetaOp::Put { family: "sessions", key: self.client_id.as_bytes(), value: &rec }];
        ops.extend(owned.iter().map(|(k, v)| MetaOp::Put { family: "cursors", key: k, value: v }));
        engine.meta().write_batch(&ops, false)?;
        self.dirty = false;
        Ok(())
    }

    /// The session's whole image for the journal: record, subscriptions and cursors.
    fn image(&self, engine: &Engine, disconnected_at: i64) -> Result<Image, SessionError> {
        let (rec, cursors) = self.rows(engine, disconnected_at)?;
        let mut rows = vec![Row { family: "sessions".into(), key: self.client_id.as_bytes().to_vec(), value: rec }];
        for sub in self.subscriptions.values() {
            let v = serde_json::to_vec(sub)
                .map_err(|e| SessionError::Corrupt { client: self.client_id.clone(), what: e.to_string() })?;
            rows.push(Row { family: "subscriptions".into(), key: key(&self.client_id, &sub.filter), value: v });
        }
        rows.extend(cursors.into_iter().map(|(k, v)| Row { family: "cursors".into(), key: k, value: v }));
        Ok(Image { scopes: Self::scopes(&self.client_id), rows })
    }

    /// The encoded session record and the (key, value) of every cursor.
    #[allow(clippy::type_complexity)]
    fn rows(&self, engine: &Engine, disconnected_at: i64) -> Result<(Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>), SessionError> {
        let rec = SessionRecord {
            expiry_interval: self.expiry_interval,
            disconnected_at,
            awaiting_rel: self.awaiting_rel.iter().copied().collect(),
            retained_inflight: self
                .retained_inflight
                .iter()
                .filter_map(|(id, (topic, timestamp))| {
                    let i = self.outbound.get(id)?;
                    Some(RetainedInflight {
                        packet_id: *id,
                        topic: topic.clone(),
                        timestamp: *timestamp,
                        qos: i.qos,
                        released: i.released,
                    })
                })
                .collect(),
        };
        let rec = serde_json::to_vec(&rec)
            .map_err(|e| SessionError::Corrupt { client: self.client_id.clone(), what: e.to_string() })?;
        let mut per_pid: HashMap<usize, Vec<(u16, u64, u8, bool)>> = HashMap::new();
        for (id, i) in &self.outbound {
            if let Some(pid) = i.pid {
                per_pid.entry(pid).or_default().push((*id, i.offset, i.qos, i.released));
            }
        }
        let mut owned: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for (pid, c) in &self.cursors {
            let name = &engine.partitions()[*pid].name;
            let entries = per_pid.remove(pid).unwrap_or_default();
            owned.push((key(&self.client_id, name), encode_cursor(c.next, &entries)));
        }
        Ok((rec, owned))
    }
}

fn encode_cursor(next: u64, entries: &[(u16, u64, u8, bool)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + entries.len() * 12);
    v.extend_from_slice(&next.to_le_bytes());
    v.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (id, off, qos, rel) in entries {
        v.extend_from_slice(&id.to_le_bytes());
        v.extend_from_slice(&off.to_le_bytes());
        v.push(*qos);
        v.push(u8::from(*rel));
    }
    v
}

type CursorEntries = Vec<(u16, u64, u8, bool)>;

fn decode_cursor(v: &[u8]) -> Option<(u64, CursorEntries)> {
    let next = u64::from_le_bytes(v.get(0..8)?.try_into().ok()?);
    let n = u32::from_le_bytes(v.get(8..12)?.try_into().ok()?) as usize;
    let mut out = Vec::with_capacity(n.min(65535));
    let mut p = 12;
    for _ in 0..n {
        let e = v.get(p..p + 12)?;
        let id = u16::from_le_bytes(e[0..2].try_into().ok()?);
        let off = u64::from_le_bytes(e[2..10].try_into().ok()?);
        if e[10] > 2 {
            return None;
        }
        out.push((id, off, e[10], e[11] == 1));
        p += 12;
    }
    (p == v.len()).then_some((next, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_encode_and_reject_garbage() {
        let e = vec![(7u16, 42u64, 1u8, false), (8, 43, 2, true)];
        let v = encode_cursor(44, &e);
        assert_eq!(decode_cursor(&v), Some((44, e)));
        assert_eq!(decode_cursor(&v[..v.len() - 1]), None);
        assert_eq!(decode_cursor(b"short"), None);
    }

    #[test]
    fn packet_ids_skip_those_in_flight_and_wrap() {
        let mut s = SessionState::new("c", 0);
        s.next_packet_id = u16::MAX;
        assert_eq!(s.alloc_packet_id(), Some(u16::MAX));
        s.outbound.insert(1, Inflight { pid: None, offset: 0, qos: 1, released: false });
        assert_eq!(s.alloc_packet_id(), Some(2));
    }
}
