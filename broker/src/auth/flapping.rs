//! Flapping detection (sans-IO): a client id that connects `max_connects` times within
//! `window` is flapping, and the caller bans it for a while. Time is passed in, so the
//! detector is tested without clocks.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Recent CONNECT times per client id.
#[derive(Debug)]
pub struct Flapping {
    max_connects: usize,
    window: Duration,
    seen: HashMap<String, VecDeque<Instant>>,
    /// Records since the last sweep of idle client ids.
    since_sweep: usize,
}

/// Sweep idle client ids out of the map after this many records, bounding its memory to the
/// client ids seen within one window.
const SWEEP_EVERY: usize = 4096;

impl Flapping {
    /// `max_connects` is at least 1 (checked by the configuration).
    pub fn new(max_connects: u32, window: Duration) -> Flapping {
        Flapping { max_connects: max_connects.max(1) as usize, window, seen: HashMap::new(), since_sweep: 0 }
    }

    /// Records a CONNECT of `client_id` at `now`; true if that makes `max_connects` within
    /// the window (the client is flapping; its history is then cleared).
    pub fn record(&mut self, client_id: &str, now: Instant) -> bool {
        self.since_sweep += 1;
        if self.since_sweep >= SWEEP_EVERY {
            self.since_sweep = 0;
            let window = self.window;
            self.seen.retain(|_, times| times.back().is_some_and(|t| now.duration_since(*t) < window));
        }
        let times = self.seen.entry(client_id.to_string()).or_default();
        while times.front().is_some_and(|t| now.duration_since(*t) >= self.window) {
            times.pop_front();
        }
        times.push_back(now);
        if times.len() >= self.max_connects {
            self.seen.remove(client_id);
            return true;
        }
        false
    }

    /// Client ids currently tracked.
    pub fn tracked(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn n_connects_within_the_window_is_flapping() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut f = Flapping::new(3, Duration::from_secs(10));
        assert!(!f.record("car1", t0));
        assert!(!f.record("car1", t0 + s));
        assert!(!f.record("car2", t0 + s), "other client ids count apart");
        assert!(f.record("car1", t0 + 2 * s), "third connect within 10 s");
        assert!(!f.record("car1", t0 + 3 * s), "history restarts after a detection");
    }

    #[test]
    fn connects_spread_wider_than_the_window_are_not_flapping() {
        let t0 = Instant::now();
        let mut f = Flapping::new(3, Duration::from_secs(10));
        for i in 0..20u64 {
            assert!(!f.record("car1", t0 + Duration::from_secs(i * 6)), "connect {i}");
        }
    }

    #[test]
    fn idle_client_ids_are_swept() {
        let t0 = Instant::now();
        let mut f = Flapping::new(5, Duration::from_secs(1));
        for i in 0..SWEEP_EVERY - 1 {
            f.record(&format!("c{i}"), t0);
        }
        assert_eq!(f.tracked(), SWEEP_EVERY - 1);
        f.record("late", t0 + Duration::from_secs(5));
        assert_eq!(f.tracked(), 1, "only the client seen within the window is kept");
    }
}
