//! A connection's side of shared subscriptions: it returns credit to the group as shared
//! deliveries finish, and pulls the group's backlog from the log when the group lags (see
//! `crate::shared`).

use std::sync::atomic::Ordering;

use bytes::BytesMut;

use super::Connection;
use crate::hub::Delivery;

impl Connection {
    /// Shared deliveries held by this connection: waiting for window space or in flight.
    fn shared_outstanding(&self) -> usize {
        self.outbound.shared_waiting.len() + self.outbound.shared_inflight.len()
    }

    fn return_credit(&self, n: usize) {
        if n > 0 {
            self.handle.shared_credit.fetch_add(n as i64, Ordering::AcqRel);
        }
    }

    /// Offers one shared delivery; one that finishes at once (QoS 0, or no longer wanted)
    /// gives its credit back.
    pub(super) fn offer_shared(&mut self, d: Delivery, out: &mut BytesMut) {
        let before = self.shared_outstanding();
        self.outbound.offer_shared(&mut self.session, d, out);
        if self.shared_outstanding() == before {
            self.return_credit(1);
        }
    }

    /// Sends waiting shared deliveries while the window has room.
    pub(super) fn drain_shared(&mut self, out: &mut BytesMut) {
        let before = self.shared_outstanding();
        self.outbound.drain_shared(&mut self.session, out);
        self.return_credit(before.saturating_sub(self.shared_outstanding()));
    }

    /// A shared delivery in flight under `packet_id` was acknowledged (or refused).
    pub(super) fn shared_finished(&mut self, packet_id: u16) {
        if self.outbound.shared_inflight.remove(&packet_id).is_some() {
            self.return_credit(1);
        }
    }

    /// Whether to pull now: a group may lag and enough credit came back to make a read
    /// worthwhile (a quarter of the window, or any when nothing is outstanding), so that a
    /// lagging group is read in batches rather than one record per acknowledgement.
    pub(super) fn shared_pull_ready(&self) -> bool {
        if !self.shared_pull {
            return false;
        }
        let credit = self.handle.shared_credit.load(Ordering::Acquire);
        let threshold = (self.outbound.window / 4).max(1) as i64;
        credit >= threshold || (credit > 0 && self.shared_outstanding() == 0)
    }

    /// Takes this member's share of every lagging group's backlog, up to its credit. Leaves
    /// `shared_pull` set while some group still lags.
    pub(super) fn pull_shared(&mut self, out: &mut BytesMut) {
        self.shared_pull = false;
        let keys: Vec<(String, String)> = self
            .session
            .subscriptions
            .values()
            .filter_map(|s| s.group.as_ref().map(|g| (crate::topic_tree::shared_key(g, &s.inner), s.inner.clone())))
            .collect();
        for (key, filter) in keys {
            if !self.hub.shared.needs_pull(&key) {
                continue;
            }
            if self.handle.shared_credit.load(Ordering::Acquire) > 0 {
                let t = std::time::Instant::now();
                let pulled = self.hub.shared.pull(&self.hub.engine, &key, &filter, &self.handle);
                tracing::debug!(
                    n = pulled.len(),
                    us = t.elapsed().as_micros() as u64,
                    credit = self.handle.shared_credit.load(Ordering::Acquire),
                    "pulled"
                );
                for d in pulled {
                    self.offer_shared(d, out);
                }
            }
            if self.hub.shared.needs_pull(&key) {
                self.shared_pull = true;
            }
        }
    }
}
