//! `/api/v1/subscriptions`: every subscription — of connected clients (live) and of
//! persistent sessions whose client is away (from the metadata store).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, ErrorBody, HttpState, Page, Query};
use crate::session::Subscription;

pub fn routes() -> Router<HttpState> {
    Router::new().route("/subscriptions", get(list))
}

/// One subscription of one client.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionEntry {
    pub client_id: String,
    /// As subscribed (`$share/{group}/…` for shared subscriptions).
    pub filter: String,
    pub qos: u8,
    /// Whether the client is connected.
    pub connected: bool,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SubscriptionFilter {
    pub client_id: Option<String>,
    /// Only subscriptions whose filter is exactly this.
    pub filter: Option<String>,
}

/// Subscriptions sorted by client id, then filter.
#[utoipa::path(get, path = "/api/v1/subscriptions", tag = "subscriptions", params(SubscriptionFilter, Page),
    responses((status = 200, body = [SubscriptionEntry]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub(super) async fn list(
    State(s): State<HttpState>,
    Query(f): Query<SubscriptionFilter>,
    Query(page): Query<Page>,
) -> Result<axum::Json<Vec<SubscriptionEntry>>, ApiError> {
    page.validate()?;
    // (client id, filter) → (qos, connected); live entries override stored ones.
    let mut all: BTreeMap<(String, String), (u8, bool)> = BTreeMap::new();
    let prefix = f.client_id.as_ref().map(|c| [c.as_bytes(), b"\0"].concat()).unwrap_or_default();
    let stored =
        s.hub.engine.meta().scan_prefix("subscriptions", &prefix).map_err(|e| ApiError::internal(e.to_string()))?;
    for (k, v) in stored {
        let Some(nul) = k.iter().position(|b| *b == 0) else { continue };
        let Ok(sub) = serde_json::from_slice::<Subscription>(&v) else { continue };
        all.insert((String::from_utf8_lossy(&k[..nul]).to_string(), sub.filter), (sub.qos, false));
    }
    let handles: Vec<_> = s.hub.sessions.read().values().cloned().collect();
    for h in handles {
        if f.client_id.as_ref().is_some_and(|c| c != &h.client_id) {
            continue;
        }
        // A connected client's stored subscriptions are its own live ones.
        all.retain(|(c, _), _| c != &h.client_id);
        for (filter, qos) in &h.info.lock().subscriptions {
            all.insert((h.client_id.clone(), filter.clone()), (*qos, true));
        }
    }
    let entries = all
        .into_iter()
        .filter(|((_, filter), _)| f.filter.as_ref().is_none_or(|want| want == filter))
        .map(|((client_id, filter), (qos, connected))| SubscriptionEntry { client_id, filter, qos, connected });
    Ok(axum::Json(page.apply(entries)))
}
