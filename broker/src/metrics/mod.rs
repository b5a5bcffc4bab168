//! The broker's own counters, updated on the hot paths with relaxed atomic adds, and read by
//! the Prometheus endpoint (`exposition.rs`), the `$SYS` publisher and the admin API.
//!
//! Nothing here allocates per message. Per-listener and per-topic counters are looked up
//! once (per connection, resp. at start-up from `metrics.topics`); a publish is matched
//! against the monitored topic filters only when some are configured.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::RwLock;

mod exposition;
mod slow;

pub use exposition::{render, OPENMETRICS, PROMETHEUS_TEXT};
pub use slow::{slow_subscribers, SlowSubscriber};

/// Why a message was not delivered or not stored. The label values are stable (dashboards
/// use them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A publish (or will) refused by the ACL.
    AclDenied,
    /// Cut from an offline session's backlog by `mqtt.max_offline_messages`.
    OfflineQueueFull,
    /// Larger than the receiving client's Maximum Packet Size.
    TooLargeForClient,
    /// Its Message Expiry Interval passed before it could be delivered.
    Expired,
    /// The log refused the append (disk full, I/O error); the publisher got an error.
    AppendFailed,
    /// A client published to a `$` topic, which belongs to the broker.
    ReservedTopic,
}

impl DropReason {
    pub const ALL: [DropReason; 6] = [
        DropReason::AclDenied,
        DropReason::OfflineQueueFull,
        DropReason::TooLargeForClient,
        DropReason::Expired,
        DropReason::AppendFailed,
        DropReason::ReservedTopic,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::AclDenied => "acl_denied",
            DropReason::OfflineQueueFull => "offline_queue_full",
            DropReason::TooLargeForClient => "too_large_for_client",
            DropReason::Expired => "expired",
            DropReason::AppendFailed => "append_failed",
            DropReason::ReservedTopic => "reserved_topic",
        }
    }
}

/// Connections of one listener.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Open now (from accept to close).
    pub open: AtomicU64,
    /// Accepted since start.
    pub accepted: AtomicU64,
}

/// Holds one of a listener's open connections; gives it back when dropped.
pub struct OpenConnection(pub Arc<ListenerStats>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
    }
}

/// Messages in and out on the topics matching one monitored filter.
#[derive(Debug)]
pub struct TopicStats {
    pub filter: String,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
}

/// One connected client's delivery figures; shared by its connection and the hub.
#[derive(Debug, Default)]
pub struct ClientStats {
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Exponential moving average (weight 1/8) of the delivery latency, in microseconds:
    /// from the record's append timestamp to the moment its PUBLISH is written towards the
    /// client. A subscriber that falls behind reads from the log and its average rises.
    pub latency_ema_micros: AtomicU64,
}

impl ClientStats {
    /// Records one delivery `latency_micros` after the message was stored.
    pub fn observe_delivery(&self, latency_micros: u64) {
        let old = self.latency_ema_micros.load(Relaxed);
        let new = if old == 0 { latency_micros } else { old - old / 8 + latency_micros / 8 };
        self.latency_ema_micros.store(new.max(1), Relaxed);
    }
}

/// Broker-wide counters. All monotonic unless a field says otherwise.
#[derive(Debug)]
pub struct Metrics {
    pub started: Instant,
    /// Inbound PUBLISH packets, by QoS.
    pub received: [AtomicU64; 3],
    /// Payload bytes of inbound PUBLISH packets.
    pub received_bytes: AtomicU64,
    /// Outbound PUBLISH packets, by QoS (redeliveries included).
    pub sent: [AtomicU64; 3],
    pub sent_bytes: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
    listeners: RwLock<BTreeMap<Arc<str>, Arc<ListenerStats>>>,
    pub topics: Vec<TopicStats>,
    /// Persistent sessions in the metadata store; a gauge refreshed by the `$SYS` ticker.
    pub stored_sessions: AtomicU64,
}

impl Metrics {
    /// `monitored` are the topic filters of `metrics.topics`.
    pub fn new(monitored: &[String]) -> Metrics {
        Metrics {
            started: Instant::now(),
            received: Default::default(),
            received_bytes: AtomicU64::new(0),
            sent: Default::default(),
            sent_bytes: AtomicU64::new(0),
            dropped: Default::default(),
            listeners: RwLock::new(BTreeMap::new()),
            topics: monitored
                .iter()
                .map(|f| TopicStats {
                    filter: f.clone(),
                    messages_in: AtomicU64::new(0),
                    messages_out: AtomicU64::new(0),
                })
                .collect(),
            stored_sessions: AtomicU64::new(0),
        }
    }

    pub fn dropped(&self, why: DropReason, n: u64) {
        self.dropped[why as usize].fetch_add(n, Relaxed);
    }

    pub fn dropped_count(&self, why: DropReason) -> u64 {
        self.dropped[why as usize].load(Relaxed)
    }

    /// The counters of listener `name`, created on first use.
    pub fn listener(&self, name: &Arc<str>) -> Arc<ListenerStats> {
        if let Some(s) = self.listeners.read().get(name) {
            return s.clone();
        }
        self.listeners.write().entry(name.clone()).or_default().clone()
    }

    pub fn listeners(&self) -> Vec<(Arc<str>, Arc<ListenerStats>)> {
        self.listeners.read().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Counts an inbound PUBLISH.
    pub fn message_in(&self, topic: &str, qos: u8, payload_len: usize) {
        self.received[usize::from(qos.min(2))].fetch_add(1, Relaxed);
        self.received_bytes.fetch_add(payload_len as u64, Relaxed);
        for t in &self.topics {
            if axle_engine::topic::matches(&t.filter, topic) {
                t.messages_in.fetch_add(1, Relaxed);
            }
        }
    }

    /// Counts an outbound PUBLISH.
    pub fn message_out(&self, topic: &str, qos: u8, payload_len: usize) {
        self.sent[usize::from(qos.min(2))].fetch_add(1, Relaxed);
        self.sent_bytes.fetch_add(payload_len as u64, Relaxed);
        for t in &self.topics {
            if axle_engine::topic::matches(&t.filter, topic) {
                t.messages_out.fetch_add(1, Relaxed);
            }
        }
    }

    pub fn received_total(&self) -> u64 {
        self.received.iter().map(|c| c.load(Relaxed)).sum()
    }

    pub fn sent_total(&self) -> u64 {
        self.sent.iter().map(|c| c.load(Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitored_topics_count_only_matching_messages() {
        let m = Metrics::new(&["v/+/telemetry".to_string()]);
        m.message_in("v/1/telemetry", 1, 10);
        m.message_in("v/1/cmd", 0, 10);
        m.message_out("v/2/telemetry", 2, 5);
        assert_eq!(m.topics[0].messages_in.load(Relaxed), 1);
        assert_eq!(m.topics[0].messages_out.load(Relaxed), 1);
        assert_eq!((m.received_total(), m.sent_total()), (2, 1));
        assert_eq!(m.received[1].load(Relaxed), 1);
        assert_eq!(m.received_bytes.load(Relaxed), 20);
    }

    #[test]
    fn delivery_latency_average_follows_the_trend() {
        let c = ClientStats::default();
        c.observe_delivery(800);
        assert_eq!(c.latency_ema_micros.load(Relaxed), 800);
        for _ in 0..64 {
            c.observe_delivery(80_000);
        }
        let ema = c.latency_ema_micros.load(Relaxed);
        assert!(ema > 70_000 && ema <= 80_000, "{ema}");
    }

    #[test]
    fn listener_counters_are_shared_by_name() {
        let m = Metrics::new(&[]);
        let name: Arc<str> = "tcp".into();
        m.listener(&name).open.fetch_add(1, Relaxed);
        assert_eq!(m.listener(&name).open.load(Relaxed), 1);
        assert_eq!(m.listeners().len(), 1);
    }
}
