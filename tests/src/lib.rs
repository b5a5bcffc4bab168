//! End-to-end test harness: it starts the real `axle` binary on loopback and drives it with
//! real clients. It owns process management for tests only and ships nothing.

pub mod cluster;
pub mod server;
