//! The stream layer between MQTT and the log. It owns the mapping from MQTT topics to
//! streams (named sets of log partitions with a partition key), the metadata kept beside
//! the log in RocksDB (sessions, subscriptions, cursors, retained messages, consumer-group
//! offsets, export checkpoints), replication, and the notification of tail readers. It speaks
//! in topics and records, never in MQTT packets, and never touches segment files: those
//! belong to `axle-log`.

pub mod meta;

pub use axle_log as log;
