//! What a partition leader knows of its followers, as a pure state machine: replication
//! positions, the in-sync set, the high watermark, and when to propose an ISR change.
//! Time is passed in (ms on any monotonic clock), so tests drive it without sleeping.
//!
//! Rules (docs/replication.md):
//! - the high watermark is the smallest log end over the committed ISR (the leader's own log
//!   end included), and only moves while the ISR is a majority of the replicas: with fewer,
//!   nothing new is committed and `quorum` publishes wait;
//! - a follower is caught up at a fetch when its position reaches the leader's log end as it
//!   was at the follower's previous fetch (Kafka's rule); one not caught up for `lag_max_ms`
//!   is proposed out of the ISR;
//! - a follower outside the ISR that is caught up (within `lag_max_ms`) and whose position
//!   reaches the high watermark and the start of the leader's epoch is proposed back in;
//! - the high watermark never moves backwards.

use std::collections::BTreeMap;

use crate::cluster::{NodeId, PartitionMeta};

/// One follower as seen by the leader.
#[derive(Debug, Clone, Default)]
struct Follower {
    /// Its log end offset, from its last fetch (0 before any).
    position: u64,
    /// The leader's log end when this follower last fetched.
    end_at_last_fetch: u64,
    /// Last time (ms) the follower was caught up.
    caught_up_ms: u64,
}

/// The leader side of one partition under one epoch.
#[derive(Debug, Clone)]
pub struct LeaderState {
    me: NodeId,
    epoch: u32,
    /// Every replica, the leader included.
    replicas: Vec<NodeId>,
    /// The committed in-sync set (from the metadata group), the leader included.
    isr: Vec<NodeId>,
    followers: BTreeMap<NodeId, Follower>,
    /// Offset where this leader's epoch starts (its log end when it took over).
    epoch_start: u64,
    high_watermark: u64,
    lag_max_ms: u64,
    /// An ISR change was proposed and is not yet visible in the metadata.
    proposal_pending: bool,
}

impl LeaderState {
    /// A leader that took over at `now_ms` with its log ending at `log_end`. Followers start as
    /// caught up at `now_ms`, so that none is dropped before it had `lag_max_ms` to fetch.
    /// `pm` is the partition's metadata naming this node leader under `pm.epoch`.
    pub fn new(
        me: NodeId,
        pm: &PartitionMeta,
        log_end: u64,
        high_watermark: u64,
        lag_max_ms: u64,
        now_ms: u64,
    ) -> LeaderState {
        let (epoch, replicas, isr) = (pm.epoch, pm.replicas.clone(), pm.isr.clone());
        let followers = replicas
            .iter()
            .filter(|&&n| n != me)
            .map(|&n| (n, Follower { position: 0, end_at_last_fetch: 0, caught_up_ms: now_ms }))
            .collect();
        LeaderState {
            me,
            epoch,
            replicas,
            isr,
            followers,
            epoch_start: log_end,
            high_watermark: high_watermark.min(log_end),
            lag_max_ms,
            proposal_pending: false,
        }
    }

    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    pub fn isr(&self) -> &[NodeId] {
        &self.isr
    }

    pub fn replicas(&self) -> &[NodeId] {
        &self.replicas
    }

    pub fn high_watermark(&self) -> u64 {
        self.high_watermark
    }

    /// The follower's known position, if it is a replica.
    pub fn position(&self, node: NodeId) -> Option<u64> {
        self.followers.get(&node).map(|f| f.position)
    }

    /// A follower fetched from `position` (its log end) while the leader's log ends at
    /// `log_end`. Returns false for a node that is not a replica (the fetch is refused).
    pub fn on_fetch(&mut self, node: NodeId, position: u64, log_end: u64, now_ms: u64) -> bool {
        let Some(f) = self.followers.get_mut(&node) else {
            return false;
        };
        f.position = position.min(log_end);
        if f.position >= log_end || f.position >= f.end_at_last_fetch {
            f.caught_up_ms = now_ms;
        }
        f.end_at_last_fetch = log_end;
        true
    }

    /// Recomputes the high watermark for a leader log ending at `log_end`; returns it.
    pub fn advance(&mut self, log_end: u64) -> u64 {
        if self.isr.len() * 2 <= self.replicas.len() {
            return self.high_watermark;
        }
        let mut hw = log_end;
        for n in &self.isr {
            if *n == self.me {
                continue;
            }
            hw = hw.min(self.followers.get(n).map_or(0, |f| f.position));
        }
        if hw > self.high_watermark {
            self.high_watermark = hw;
        }
        self.high_watermark
    }

    /// The metadata group committed a new ISR or replica set for this epoch (a node that
    /// registered later joins the replicas; it must be able to fetch at once).
    pub fn set_isr(&mut self, isr: Vec<NodeId>, replicas: Vec<NodeId>, now_ms: u64) {
        for &n in &replicas {
            if n != self.me {
                self.followers.entry(n).or_insert(Follower { caught_up_ms: now_ms, ..Follower::default() });
            }
        }
        self.followers.retain(|n, _| replicas.contains(n));
        self.replicas = replicas;
        self.isr = isr;
        self.proposal_pending = false;
    }

    /// The ISR to propose now, if it should change: laggards out, caught-up followers in.
    /// Returns at most one proposal until [`LeaderState::set_isr`] or
    /// [`LeaderState::proposal_failed`] is called.
    pub fn isr_change(&mut self, now_ms: u64) -> Option<Vec<NodeId>> {
        if self.proposal_pending {
            return None;
        }
        let mut next: Vec<NodeId> = Vec::with_capacity(self.replicas.len());
        for &n in &self.replicas {
            let keep = if n == self.me {
                true
            } else {
                let Some(f) = self.followers.get(&n) else { continue };
                let recent = now_ms.saturating_sub(f.caught_up_ms) <= self.lag_max_ms;
                if self.isr.contains(&n) {
                    recent
                } else {
                    // Recently caught up too: a dead follower's last position may still reach
                    // the high watermark of an idle partition.
                    recent && f.position >= self.high_watermark && f.position >= self.epoch_start
                }
            };
            if keep {
                next.push(n);
            }
        }
        let mut current = self.isr.clone();
        current.sort_unstable();
        let mut sorted = next.clone();
        sorted.sort_unstable();
        if sorted == current {
            return None;
        }
        self.proposal_pending = true;
        Some(next)
    }

    /// A proposed ISR change was rejected or failed: allow another.
    pub fn proposal_failed(&mut self) {
        self.proposal_pending = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(isr: &[NodeId]) -> PartitionMeta {
        PartitionMeta { replicas: vec![1, 2, 3], leader: Some(1), epoch: 5, isr: isr.to_vec() }
    }

    fn leader() -> LeaderState {
        LeaderState::new(1, &meta(&[1, 2, 3]), 100, 100, 1_000, 0)
    }

    #[test]
    fn high_watermark_is_the_smallest_isr_position() {
        let mut l = leader();
        assert!(l.on_fetch(2, 120, 150, 10));
        assert!(l.on_fetch(3, 140, 150, 10));
        assert_eq!(l.advance(150), 120);
        assert!(l.on_fetch(2, 150, 150, 20));
        assert_eq!(l.advance(150), 140);
    }

    #[test]
    fn high_watermark_never_moves_backwards() {
        let mut l = leader();
        l.on_fetch(2, 150, 150, 10);
        l.on_fetch(3, 150, 150, 10);
        assert_eq!(l.advance(150), 150);
        l.on_fetch(3, 120, 150, 20);
        assert_eq!(l.advance(150), 150);
    }

    #[test]
    fn a_minority_isr_commits_nothing_new() {
        let mut l = LeaderState::new(1, &meta(&[1]), 100, 90, 1_000, 0);
        assert_eq!(l.advance(200), 90);
        l.set_isr(vec![1, 2], vec![1, 2, 3], 0);
        l.on_fetch(2, 200, 200, 1);
        assert_eq!(l.advance(200), 200);
    }

    #[test]
    fn a_follower_behind_for_longer_than_the_lag_is_proposed_out_once() {
        let mut l = leader();
        l.on_fetch(2, 100, 100, 10);
        l.on_fetch(3, 100, 100, 10);
        assert_eq!(l.isr_change(500), None);
        // Node 3 stops fetching; node 2 keeps up.
        l.on_fetch(2, 100, 180, 1_400);
        l.on_fetch(2, 180, 180, 1_500);
        assert_eq!(l.isr_change(1_500), Some(vec![1, 2]));
        assert_eq!(l.isr_change(1_600), None, "one proposal at a time");
        l.set_isr(vec![1, 2], vec![1, 2, 3], 1_600);
        assert_eq!(l.advance(180), 180, "the ISR without node 3 commits what node 2 has");
        assert_eq!(l.isr_change(1_700), None, "node 3 is behind the high watermark");
    }

    #[test]
    fn a_follower_that_catches_up_is_proposed_back_in() {
        let mut l = LeaderState::new(1, &meta(&[1, 2]), 100, 100, 1_000, 0);
        l.on_fetch(2, 150, 150, 10);
        assert_eq!(l.advance(150), 150);
        l.on_fetch(3, 120, 150, 20);
        assert_eq!(l.isr_change(30), None, "behind the high watermark");
        l.on_fetch(3, 150, 150, 40);
        assert_eq!(l.isr_change(50), Some(vec![1, 2, 3]));
    }

    #[test]
    fn a_follower_still_fetching_an_older_tail_counts_as_caught_up_to_its_last_fetch() {
        let mut l = leader();
        // The leader keeps appending: each fetch reaches the end seen at the previous one.
        l.on_fetch(2, 100, 110, 100);
        l.on_fetch(3, 100, 110, 100);
        for t in 1..30u64 {
            let end = 110 + t * 10;
            l.on_fetch(2, end - 10, end, 100 + t * 100);
            l.on_fetch(3, end - 10, end, 100 + t * 100);
        }
        assert_eq!(l.isr_change(3_000), None);
    }

    #[test]
    fn a_dead_follower_is_not_proposed_back_on_an_idle_partition() {
        let mut l = leader();
        l.on_fetch(2, 100, 100, 10);
        l.on_fetch(3, 100, 100, 10);
        assert_eq!(l.advance(100), 100);
        // Node 3 dies; nothing is appended, so its last position still equals the end.
        for t in (100..=2_000).step_by(100) {
            l.on_fetch(2, 100, 100, t);
        }
        assert_eq!(l.isr_change(2_000), Some(vec![1, 2]));
        l.set_isr(vec![1, 2], vec![1, 2, 3], 2_000);
        assert_eq!(l.isr_change(2_100), None, "node 3 has not fetched since it fell out");
        l.on_fetch(3, 100, 100, 2_200);
        assert_eq!(l.isr_change(2_300), Some(vec![1, 2, 3]));
    }

    #[test]
    fn fetches_from_non_replicas_are_refused() {
        let mut l = leader();
        assert!(!l.on_fetch(9, 0, 100, 0));
    }
}
