//! The slowest connected subscribers, ranked by their delivery-latency moving average.

use std::sync::atomic::Ordering::Relaxed;

use crate::hub::Hub;

/// One entry of the slow-subscriber ranking.
#[derive(Debug, Clone, PartialEq)]
pub struct SlowSubscriber {
    pub client_id: String,
    /// Moving average of the delivery latency, in microseconds (see `ClientStats`).
    pub latency_ema_micros: u64,
    pub messages_out: u64,
}

/// The `n` connected sessions with the highest delivery latency, slowest first. Sessions
/// that have not been sent anything are not ranked.
pub fn slow_subscribers(hub: &Hub, n: usize) -> Vec<SlowSubscriber> {
    let mut all: Vec<SlowSubscriber> = hub
        .sessions
        .read()
        .values()
        .filter_map(|h| {
            let ema = h.stats.latency_ema_micros.load(Relaxed);
            (ema > 0).then(|| SlowSubscriber {
                client_id: h.client_id.clone(),
                latency_ema_micros: ema,
                messages_out: h.stats.messages_out.load(Relaxed),
            })
        })
        .collect();
    all.sort_by(|a, b| b.latency_ema_micros.cmp(&a.latency_ema_micros).then_with(|| a.client_id.cmp(&b.client_id)));
    all.truncate(n);
    all
}
