//! Will messages: published when a connection ends without a normal DISCONNECT, after the
//! will delay (capped by the session expiry), unless the client reconnects first.

use std::sync::Arc;
use std::time::Duration;

use axle_engine::Message;

use crate::codec::Will;
use crate::hub::Hub;

/// Publishes `will` now, or after its delay unless `client_id` reconnects meanwhile.
pub fn schedule(hub: &Arc<Hub>, client_id: &str, will: Will, session_expiry: u32) {
    let delay = will.properties.will_delay_interval.unwrap_or(0).min(session_expiry);
    let now = axle_engine::log::now_ms();
    let msg = Message {
        topic: will.topic,
        payload: will.payload,
        qos: will.qos.as_u8(),
        retain: will.retain,
        publisher: client_id.to_string(),
        payload_format_utf8: will.properties.payload_format_indicator,
        expires_at: will
            .properties
            .message_expiry_interval
            .map(|s| now + i64::from(s) * 1000 + i64::from(delay) * 1000),
        content_type: will.properties.content_type,
        response_topic: will.properties.response_topic,
        correlation_data: will.properties.correlation_data,
        user_properties: will.properties.user_properties,
        timestamp: 0,
    };
    let hub = hub.clone();
    if delay == 0 {
        tokio::spawn(async move { publish(&hub, msg).await });
        return;
    }
    let cancel = Arc::new(tokio::sync::Notify::new());
    hub.pending_wills.lock().insert(client_id.to_string(), cancel.clone());
    let client_id = client_id.to_string();
    tokio::spawn(async move {
        tokio::select! {
            _ = cancel.notified() => tracing::debug!(%client_id, "will cancelled: the client reconnected"),
            _ = tokio::time::sleep(Duration::from_secs(u64::from(delay))) => {
                let mine = hub.pending_wills.lock().get(&client_id).is_some_and(|c| Arc::ptr_eq(c, &cancel));
                if mine {
                    hub.pending_wills.lock().remove(&client_id);
                    publish(&hub, msg).await;
                }
            }
        }
    });
}

async fn publish(hub: &Hub, mut msg: Message) {
    msg.timestamp = axle_engine::log::now_ms();
    hub.retain_on_publish(&msg);
    if let Err(e) = hub.engine.publish(&msg).await {
        tracing::error!(topic = %msg.topic, error = %e, "could not publish a will message");
    }
}
