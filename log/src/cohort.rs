//! How long a group-commit sync waits for its cohort, shared by the flusher and by the
//! writer's inline `fsync = always` path.
//!
//! Callers acknowledged by one sync usually append again at once, and one sync carrying all
//! of them beats two syncs carrying half each. So before a sync that would carry fewer
//! acknowledgements than recent syncs did, wait a little for the rest: for at most the
//! recent sync latency, and only while fewer than `expected` (the largest recent cohort,
//! decaying by an eighth, rounded up, per sync) are in. A lone appender never waits; a
//! shrinking load stops waiting within a few syncs (from 64 to 1 in 20).

use std::time::{Duration, Instant};

/// Poll interval while waiting for a cohort.
pub const POLL: Duration = Duration::from_micros(10);

/// Adaptive cohort size and sync latency.
#[derive(Debug)]
pub struct Cohort {
    /// Acknowledgements recent syncs carried (decaying maximum).
    expected: usize,
    /// Exponentially weighted mean sync latency (weight 1/8).
    sync_ewma: Duration,
}

impl Default for Cohort {
    fn default() -> Self {
        Cohort { expected: 0, sync_ewma: Duration::from_micros(200) }
    }
}

impl Cohort {
    /// Whether a sync about to carry `have` acknowledgements should first wait for more.
    pub fn wants_more(&self, have: usize) -> bool {
        have > 0 && have < self.expected
    }

    /// Until when to wait for more, from now.
    pub fn deadline(&self) -> Instant {
        Instant::now() + self.sync_ewma
    }

    /// Notes the size of the cohort a sync carries (call once per sync, after waiting).
    pub fn gathered(&mut self, have: usize) {
        // Round the decay up: `expected / 8` is 0 below 8, which would keep a load that
        // shrank below 7 waiting for a cohort that never comes, every round.
        self.expected = have.max(self.expected - self.expected.div_ceil(8));
    }

    /// Notes how long a sync took.
    pub fn synced(&mut self, took: Duration) {
        self.sync_ewma = (self.sync_ewma * 7 + took) / 8;
    }
}

/// Sets the calling thread's timer slack to 1 µs: the default 50 µs would dwarf the
/// [`POLL`] sleeps.
pub fn fine_timer_slack() {
    // SAFETY: prctl on the calling thread with a plain integer argument.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_appender_stops_waiting_after_a_burst() {
        let mut c = Cohort::default();
        c.gathered(64);
        assert!(c.wants_more(1), "right after a burst of 64 a single append waits for more");
        for _ in 0..25 {
            c.gathered(1);
        }
        assert!(!c.wants_more(1), "after 25 syncs of one append each, one append does not wait");
        assert!(!c.wants_more(0), "nothing to sync never waits");
    }

    #[test]
    fn a_steady_cohort_is_waited_for() {
        let mut c = Cohort::default();
        for _ in 0..100 {
            c.gathered(32);
        }
        assert!(c.wants_more(31));
        assert!(!c.wants_more(32));
    }
}
