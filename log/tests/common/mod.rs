//! Helpers shared by the log's integration tests.
#![allow(dead_code)]

use std::path::Path;

use axle_log::{FsyncPolicy, IoBackendKind, Log, LogConfig, Record};

/// Both write paths; every behavioural test runs on each.
pub const BACKENDS: [IoBackendKind; 2] = [IoBackendKind::IoUring, IoBackendKind::Pwrite];

pub fn config(backend: IoBackendKind) -> LogConfig {
    LogConfig { io_backend: backend, fsync: FsyncPolicy::Always, ..LogConfig::default() }
}

pub fn small_segments(backend: IoBackendKind, segment_bytes: u64) -> LogConfig {
    LogConfig { segment_bytes, index_interval_bytes: 256, ..config(backend) }
}

pub fn open(dir: &Path, cfg: LogConfig) -> Log {
    Log::open(dir, cfg).expect("log opens")
}

/// A record whose value encodes `i`, so tests can check every byte.
pub fn rec(i: u64) -> Record {
    Record::new(format!("value-{i:08}-{}", "x".repeat((i % 50) as usize)))
        .with_key(format!("key-{}", i % 7))
        .with_header("n", i.to_string())
}

pub fn expected_value(i: u64) -> String {
    format!("value-{i:08}-{}", "x".repeat((i % 50) as usize))
}
