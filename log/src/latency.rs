//! A lock-free latency histogram with fixed buckets, for the fsync path. Recording is two
//! relaxed atomic adds; readers (a metrics endpoint) take a snapshot at any time.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds; a last, unbounded bucket follows.
pub const BUCKET_BOUNDS_MICROS: [u64; 14] =
    [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000];

/// Counts of observations per bucket, plus their sum.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// `counts[i]` = observations `<= BUCKET_BOUNDS_MICROS[i]` and above the previous bound;
    /// the last entry counts those above every bound.
    counts: [AtomicU64; BUCKET_BOUNDS_MICROS.len() + 1],
    sum_micros: AtomicU64,
}

/// A consistent-enough copy of a histogram: cumulative counts per bound, as Prometheus wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencySnapshot {
    /// `(upper bound in microseconds, observations at or below it)`, ascending.
    pub cumulative: Vec<(u64, u64)>,
    /// All observations (the `+Inf` bucket).
    pub count: u64,
    pub sum_micros: u64,
}

impl LatencyHistogram {
    pub fn observe(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let i = BUCKET_BOUNDS_MICROS.iter().position(|&b| micros <= b).unwrap_or(BUCKET_BOUNDS_MICROS.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        let mut running = 0;
        let mut cumulative = Vec::with_capacity(BUCKET_BOUNDS_MICROS.len());
        for (i, &bound) in BUCKET_BOUNDS_MICROS.iter().enumerate() {
            running += self.counts[i].load(Relaxed);
            cumulative.push((bound, running));
        }
        let count = running + self.counts[BUCKET_BOUNDS_MICROS.len()].load(Relaxed);
        LatencySnapshot { cumulative, count, sum_micros: self.sum_micros.load(Relaxed) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_cumulative_buckets() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(40));
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(5));
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.sum_micros, 40 + 100 + 3_000 + 5_000_000);
        assert_eq!(s.cumulative[0], (50, 1));
        assert_eq!(s.cumulative[1], (100, 2));
        assert_eq!(s.cumulative.iter().find(|(b, _)| *b == 5_000).map(|x| x.1), Some(3));
        assert_eq!(s.cumulative.last().map(|x| x.1), Some(3), "5 s is only in +Inf");
    }
}
