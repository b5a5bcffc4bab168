//! `$SYS` topics: broker statistics published every `sys.interval_secs` as retained messages
//! under `$SYS/brokers/<node_id>/…`, and client connected/disconnected events.
//!
//! They are appended to the log like any publish (publisher client id empty), so live
//! subscribers, persistent sessions and gRPC consumers see them the same way. Per the MQTT
//! spec, `#` and `+` at the first level do not match `$SYS`; a client must subscribe to
//! `$SYS/…` explicitly, and the ACL decides whether it may (see `docs/acl.md`).
//!
//! Topics (values are decimal text unless noted):
//! - `version`, `uptime` (seconds), `datetime` (RFC 3339, UTC);
//! - `stats/clients.connected`, `stats/sessions.offline`, `stats/subscriptions.count`,
//!   `stats/retained.count`;
//! - `metrics/messages.received`, `metrics/messages.sent`, `metrics/messages.dropped`
//!   (totals since start), `metrics/messages.received.rate`, `metrics/messages.sent.rate`
//!   (messages per second over the last interval);
//! - events (not retained, JSON): `clients/<client_id>/connected`, `clients/<client_id>/disconnected`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use axle_engine::Message;
use bytes::Bytes;

use crate::hub::{ClientInfo, Hub};
use crate::metrics::DropReason;

fn topic(hub: &Hub, rest: &str) -> String {
    format!("$SYS/brokers/{}/{rest}", hub.config.node_id)
}

fn message(topic: String, payload: String, retain: bool) -> Message {
    Message {
        topic,
        payload: Bytes::from(payload),
        qos: 0,
        retain,
        publisher: String::new(),
        payload_format_utf8: None,
        expires_at: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
        timestamp: axle_engine::log::now_ms(),
    }
}

async fn publish(hub: &Hub, msg: Message) {
    hub.retain_on_publish(&msg);
    if let Err(e) = hub.engine.publish(&msg).await {
        tracing::warn!(topic = %msg.topic, error = %e, "could not publish a $SYS message");
    }
}

/// Counts persistent sessions whose client is away (a scan of the session store).
pub fn refresh_offline_sessions(hub: &Hub) {
    let Ok(stored) = hub.engine.meta().scan_prefix("sessions", b"") else { return };
    let online = hub.online.lock();
    let offline = stored.iter().filter(|(k, _)| !online.contains_key(String::from_utf8_lossy(k).as_ref())).count();
    hub.metrics.stored_sessions.store(offline as u64, Relaxed);
}

/// Publishes the statistics every `sys.interval_secs` until the runtime stops; with an
/// interval of 0 it only refreshes the offline-session gauge (every 30 s).
pub fn spawn(hub: Arc<Hub>) {
    let interval = hub.config.sys.interval_secs;
    tokio::spawn(async move {
        let period = Duration::from_secs(if interval == 0 { 30 } else { interval });
        let mut tick = tokio::time::interval(period);
        let (mut last_in, mut last_out) = (0u64, 0u64);
        publish(&hub, message(topic(&hub, "version"), env!("CARGO_PKG_VERSION").to_string(), true)).await;
        loop {
            tick.tick().await;
            refresh_offline_sessions(&hub);
            if interval == 0 {
                continue;
            }
            let m = &hub.metrics;
            let (rx, tx) = (m.received_total(), m.sent_total());
            let dropped: u64 = DropReason::ALL.iter().map(|r| m.dropped_count(*r)).sum();
            let secs = period.as_secs_f64();
            let stats = [
                ("uptime", m.started.elapsed().as_secs().to_string()),
                ("datetime", rfc3339(axle_engine::log::now_ms())),
                ("stats/clients.connected", hub.online.lock().len().to_string()),
                ("stats/sessions.offline", m.stored_sessions.load(Relaxed).to_string()),
                ("stats/subscriptions.count", hub.tree.read().len().to_string()),
                ("stats/retained.count", hub.retained.read().len().to_string()),
                ("metrics/messages.received", rx.to_string()),
                ("metrics/messages.sent", tx.to_string()),
                ("metrics/messages.dropped", dropped.to_string()),
                ("metrics/messages.received.rate", format!("{:.1}", rx.saturating_sub(last_in) as f64 / secs)),
                ("metrics/messages.sent.rate", format!("{:.1}", tx.saturating_sub(last_out) as f64 / secs)),
            ];
            (last_in, last_out) = (rx, tx);
            for (t, v) in stats {
                publish(&hub, message(topic(&hub, t), v, true)).await;
            }
        }
    });
}

/// Publishes `$SYS/brokers/<node>/clients/<client_id>/connected`.
pub fn client_connected(hub: &Arc<Hub>, client_id: &str, info: &ClientInfo) {
    if !hub.config.sys.client_events || client_id.contains(['/', '+', '#']) {
        return;
    }
    let body = serde_json::json!({
        "client_id": client_id,
        "username": info.username,
        "peer": info.peer.addr.to_string(),
        "listener": &*info.peer.listener,
        "protocol": info.protocol,
        "keep_alive_secs": info.keep_alive_secs,
        "clean_start": info.clean_start,
        "connected_at_ms": info.connected_at_ms,
    });
    let msg = message(topic(hub, &format!("clients/{client_id}/connected")), body.to_string(), false);
    let hub = hub.clone();
    tokio::spawn(async move { publish(&hub, msg).await });
}

/// Publishes `$SYS/brokers/<node>/clients/<client_id>/disconnected` with the reason.
pub fn client_disconnected(hub: &Arc<Hub>, client_id: &str, peer: &str, reason: &str) {
    if !hub.config.sys.client_events || client_id.contains(['/', '+', '#']) {
        return;
    }
    let body = serde_json::json!({
        "client_id": client_id,
        "peer": peer,
        "reason": reason,
        "disconnected_at_ms": axle_engine::log::now_ms(),
    });
    let msg = message(topic(hub, &format!("clients/{client_id}/disconnected")), body.to_string(), false);
    let hub = hub.clone();
    tokio::spawn(async move { publish(&hub, msg).await });
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC) for ms since the Unix epoch.
fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn datetime_is_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_083_200_000), "2026-12-01T00:00:00Z");
        assert_eq!(rfc3339(951_825_600_000 + 3_723_000), "2000-02-29T13:02:03Z");
    }
}
