//! `/api/v1/sessions`: persistent sessions in the metadata store — list, inspect cursors and
//! backlog, delete.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use utoipa::ToSchema;

use super::clients::SubscriptionView;
use super::{ApiError, ErrorBody, HttpState, Page, Path, Query};
use crate::session::SessionState;

pub fn routes() -> Router<HttpState> {
    Router::new().route("/sessions", get(list)).route("/sessions/{client_id}", get(inspect).delete(remove))
}

/// A session's position in one partition.
#[derive(Debug, Serialize, ToSchema)]
pub struct CursorView {
    /// `<stream>-<n>`.
    pub partition: String,
    /// Next offset to deliver from.
    pub next_offset: u64,
    /// The partition's end offset.
    pub end_offset: u64,
    /// Records between the cursor and the end: an upper bound of what the session still
    /// has to receive from this partition (only those matching its subscriptions are sent).
    pub backlog: u64,
}

/// A persistent session as last saved.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    pub client_id: String,
    /// Whether its client is connected now (then the figures are the last saved ones).
    pub connected: bool,
    pub expiry_interval_secs: u32,
    pub subscriptions: Vec<SubscriptionView>,
    pub cursors: Vec<CursorView>,
    /// QoS 1/2 messages sent and not yet acknowledged.
    pub inflight: usize,
    /// Sum of the cursors' backlogs.
    pub backlog: u64,
}

/// A stored session's id and whether it is connected.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionSummary {
    pub client_id: String,
    pub connected: bool,
}

/// Persistent sessions, sorted by client id.
#[utoipa::path(get, path = "/api/v1/sessions", tag = "sessions", params(Page),
    responses((status = 200, body = [SessionSummary]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub(super) async fn list(
    State(s): State<HttpState>,
    Query(page): Query<Page>,
) -> Result<axum::Json<Vec<SessionSummary>>, ApiError> {
    page.validate()?;
    let keys = s.hub.engine.meta().scan_prefix("sessions", b"").map_err(|e| ApiError::internal(e.to_string()))?;
    let online = s.hub.online.lock().keys().cloned().collect::<std::collections::HashSet<_>>();
    let all = keys.into_iter().map(|(k, _)| {
        let client_id = String::from_utf8_lossy(&k).to_string();
        SessionSummary { connected: online.contains(&client_id), client_id }
    });
    Ok(axum::Json(page.apply(all)))
}

fn load(s: &HttpState, client_id: &str) -> Result<SessionState, ApiError> {
    let engine = &s.hub.engine;
    SessionState::load(engine.meta(), engine, client_id, axle_engine::log::now_ms())
        .map_err(|e| ApiError::internal(e.to_string()))?
        .ok_or_else(|| ApiError::not_found(format!("no persistent session for client {client_id}")))
}

/// One persistent session: subscriptions, cursors and backlog.
#[utoipa::path(get, path = "/api/v1/sessions/{client_id}", tag = "sessions",
    params(("client_id" = String, Path, description = "The client id")),
    responses((status = 200, body = SessionView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub(super) async fn inspect(
    State(s): State<HttpState>,
    Path(client_id): Path<String>,
) -> Result<axum::Json<SessionView>, ApiError> {
    let session = load(&s, &client_id)?;
    let parts = s.hub.engine.partitions();
    let mut cursors: Vec<CursorView> = session
        .cursors
        .iter()
        .filter_map(|(pid, c)| {
            let p = parts.get(*pid)?;
            let end = p.log.bounds().end;
            Some(CursorView {
                partition: p.name.clone(),
                next_offset: c.next,
                end_offset: end,
                backlog: end.saturating_sub(c.next),
            })
        })
        .collect();
    cursors.sort_by(|a, b| a.partition.cmp(&b.partition));
    Ok(axum::Json(SessionView {
        connected: s.hub.online.lock().contains_key(&client_id),
        expiry_interval_secs: session.expiry_interval,
        subscriptions: session
            .subscriptions
            .values()
            .map(|sub| SubscriptionView { filter: sub.filter.clone(), qos: sub.qos })
            .collect(),
        inflight: session.outbound.len(),
        backlog: cursors.iter().map(|c| c.backlog).sum(),
        cursors,
        client_id,
    }))
}

/// Deletes a persistent session (kicking its client first if it is connected).
#[utoipa::path(delete, path = "/api/v1/sessions/{client_id}", tag = "sessions",
    params(("client_id" = String, Path, description = "The client id")),
    responses((status = 204, description = "Deleted"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub(super) async fn remove(State(s): State<HttpState>, Path(client_id): Path<String>) -> Result<StatusCode, ApiError> {
    let meta = s.hub.engine.meta();
    let stored = meta.get("sessions", client_id.as_bytes()).map_err(|e| ApiError::internal(e.to_string()))?.is_some();
    if !stored {
        return Err(ApiError::not_found(format!("no persistent session for client {client_id}")));
    }
    if s.hub.kick(&client_id) {
        // Let the connection save and end before the session is removed under it.
        for _ in 0..100 {
            if !s.hub.online.lock().contains_key(&client_id) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    match s.hub.engine.journal() {
        // In a cluster the deletion is a claim of its own, so every node drops the session
        // (and a connection of this client on another node is told to go).
        Some(j) => {
            j.claim(&client_id, Some(SessionState::deletion_image(&client_id)))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
        }
        None => SessionState::delete(meta, &client_id).map_err(|e| ApiError::internal(e.to_string()))?,
    }
    tracing::info!(%client_id, "session deleted through the admin API");
    Ok(StatusCode::NO_CONTENT)
}
