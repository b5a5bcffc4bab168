//! Axle's benchmarks: load tools that print figures side by side with a peer or with the
//! machine's own limit, measured in the same run. Each workload of the brief is a binary in
//! `src/bin/`. Nothing here is used by the product.

/// The p-th percentile (0..=100) of `sorted`, which must be sorted ascending.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The median of `values` (unsorted).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    percentile(&v, 50.0)
}

pub mod cluster;
pub mod mqtt;
