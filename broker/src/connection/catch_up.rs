//! Reading a session's backlog from the log: after a reconnect, after falling behind the live
//! queue, or when the client's window reopens.
//!
//! A partition cursor whose subscriptions all pin one partition key (`v/VIN1/#` on a stream
//! keyed by two levels) reads through the log's key index and touches only that key's
//! records; any other cursor reads the partition in order and skips what does not match.
//!
//! The offline bound (`mqtt.max_offline_messages`) is applied when a stored session comes
//! back: per partition, the backlog is cut to the newest N messages and the cursor moves past
//! the rest (policy: drop oldest, counted in `offline_dropped`). For a key-pinned cursor N
//! counts the session's own messages; otherwise it counts the partition's records, an upper
//! bound on the session's. Nothing of an offline session is held in memory, so the bound
//! caps what a returning client is sent, not RAM.

use axle_engine::log::{LogError, StoredRecord};
use axle_engine::Message;
use bytes::BytesMut;

use super::Connection;
use crate::outbound::Offer;

/// Records read from the log per catch-up step and partition.
pub(super) const CATCH_UP_BATCH: usize = 256;
/// Bytes of keys and values read per catch-up step and partition.
const CATCH_UP_BYTES: usize = 1 << 20;

impl Connection {
    /// The partition key every record this session wants from partition `pid` carries, if
    /// its subscriptions pin one (cached until the subscriptions change).
    pub(super) fn cursor_key(&mut self, pid: usize) -> Option<String> {
        if let Some(k) = self.cursor_keys.get(&pid) {
            return k.clone();
        }
        let engine = self.hub.engine.clone();
        let mut key: Option<Option<String>> = None;
        for sub in self.session.subscriptions.values().filter(|s| s.group.is_none()) {
            for (p, k) in engine.partitions_for_filter(&sub.inner) {
                if p != pid {
                    continue;
                }
                key = match (key, k) {
                    (None, k) => Some(k),
                    (Some(Some(a)), Some(b)) if a == b => Some(Some(a)),
                    _ => Some(None),
                };
            }
        }
        let key = key.flatten();
        self.cursor_keys.insert(pid, key.clone());
        key
    }

    /// Applies `max_offline_messages` to a stored session that just came back.
    pub(super) fn bound_offline_backlog(&mut self) {
        let max = self.hub.config.mqtt.max_offline_messages;
        if max == 0 {
            return;
        }
        let engine = self.hub.engine.clone();
        let pids: Vec<usize> = self.session.cursors.keys().copied().collect();
        for pid in pids {
            let Some(next) = self.session.cursors.get(&pid).map(|c| c.next) else { continue };
            let part = &engine.partitions()[pid].log;
            let b = part.bounds();
            let next = next.clamp(b.log_start, b.end);
            let (to, dropped) = match self.cursor_key(pid) {
                Some(key) => match part.key_batch_offsets(key.as_bytes(), next) {
                    Ok(offsets) if offsets.len() as u64 > max => {
                        let cut = offsets.len() - max as usize;
                        (offsets[cut], cut as u64)
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::warn!(client_id = %self.client_id, partition = pid, error = %e, "offline bound: key index unreadable; backlog left whole");
                        continue;
                    }
                },
                None if b.end - next > max => (b.end - max, b.end - max - next),
                None => continue,
            };
            if let Some(c) = self.session.cursors.get_mut(&pid) {
                c.next = to;
                c.catch_up = true;
            }
            self.session.dirty = true;
            self.hub.metrics.dropped(crate::metrics::DropReason::OfflineQueueFull, dropped);
            tracing::info!(client_id = %self.client_id, partition = pid, dropped, max, "offline backlog over max_offline_messages; oldest dropped");
        }
    }

    /// Reads the log from the cursor of every partition that needs it, one batch each.
    pub(super) fn catch_up_step(&mut self, out: &mut BytesMut) {
        let engine = self.hub.engine.clone();
        let pids: Vec<usize> = self.session.cursors.iter().filter(|(_, c)| c.catch_up).map(|(p, _)| *p).collect();
        for pid in pids {
            let part = &engine.partitions()[pid].log;
            let Some(next) = self.session.cursors.get(&pid).map(|c| c.next) else { continue };
            let key = self.cursor_key(pid);
            let read = match &key {
                Some(k) => {
                    part.read_key(k.as_bytes(), next, CATCH_UP_BATCH, CATCH_UP_BYTES).map(|r| (r.records, r.next))
                }
                None => part.read(next, CATCH_UP_BATCH, CATCH_UP_BYTES).map(|r| {
                    let after = r.last().map_or(next, |l| l.offset + 1);
                    (r, after)
                }),
            };
            let (records, read_to) = match read {
                Ok(r) => r,
                Err(LogError::OffsetOutOfRange { log_start, end, .. }) => {
                    let to = if next < log_start { log_start } else { end };
                    tracing::warn!(client_id = %self.client_id, partition = pid, from = next, to, "cursor outside the log (retention); messages skipped");
                    if let Some(c) = self.session.cursors.get_mut(&pid) {
                        c.next = to;
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!(client_id = %self.client_id, partition = pid, error = %e, "catch-up read failed");
                    continue;
                }
            };
            if self.offer_from_log(pid, records, out) == Offer::Deferred {
                continue;
            }
            if let Some(c) = self.session.cursors.get_mut(&pid) {
                // A keyed read covered `read_to` even where it returned nothing: the records
                // in between belong to other keys.
                if read_to > c.next {
                    c.next = read_to;
                    self.session.dirty = true;
                }
                if read_to >= part.bounds().end || (key.is_none() && read_to == next) {
                    c.catch_up = false;
                }
            }
        }
    }

    /// Offers records read from the log in order; stops at the first one deferred.
    fn offer_from_log(&mut self, pid: usize, records: Vec<StoredRecord>, out: &mut BytesMut) -> Offer {
        for r in records {
            // Records skipped by a keyed read are not this session's: the cursor jumps them.
            if let Some(c) = self.session.cursors.get_mut(&pid) {
                if r.offset > c.next {
                    c.next = r.offset;
                }
            }
            let before = self.session.outbound.len();
            let offer = match Message::from_record(&r) {
                Some(m) => self.outbound.offer(&mut self.session, pid, r.offset, crate::hub::UNKNOWN, &m, true, out),
                None => {
                    if let Some(c) = self.session.cursors.get_mut(&pid) {
                        c.next = r.offset + 1;
                    }
                    Offer::Skipped
                }
            };
            self.persist_qos2(before);
            if offer == Offer::Deferred {
                return Offer::Deferred;
            }
        }
        Offer::Sent
    }
}
