//! `/api/v1/clients`: connected clients — list with filters, inspect, kick.

use std::sync::atomic::Ordering::Relaxed;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, ErrorBody, HttpState, Page, Path, Query};
use crate::hub::SessionHandle;

pub fn routes() -> Router<HttpState> {
    Router::new().route("/clients", get(list)).route("/clients/{client_id}", get(inspect).delete(kick))
}

/// One subscription as the client made it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionView {
    /// The filter as subscribed (`$share/{group}/…` for shared subscriptions).
    pub filter: String,
    pub qos: u8,
}

/// A connected client.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClientView {
    pub client_id: String,
    pub username: Option<String>,
    /// The client's address (the one a PROXY header named, when the listener uses one).
    pub peer: String,
    /// Name of the listener that accepted it.
    pub listener: String,
    /// `tcp`, `tls`, `ws`, `wss` or `quic`.
    pub transport: String,
    /// 4 = MQTT 3.1.1, 5 = MQTT 5.0.
    pub protocol: u8,
    /// ms since the Unix epoch.
    pub connected_at_ms: i64,
    pub keep_alive_secs: u64,
    pub clean_start: bool,
    pub session_expiry_secs: u32,
    pub subscriptions: Vec<SubscriptionView>,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Moving average of delivery latency towards this client, in milliseconds.
    pub delivery_latency_ms: f64,
}

/// Filters of the client list; all given ones must match.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ClientFilter {
    /// Client ids starting with this.
    pub client_id_prefix: Option<String>,
    pub username: Option<String>,
    /// Peer IP address, exactly (e.g. `10.1.2.3`).
    pub ip: Option<String>,
    pub listener: Option<String>,
}

pub fn view(h: &SessionHandle) -> ClientView {
    let i = h.info.lock();
    ClientView {
        client_id: h.client_id.clone(),
        username: i.username.clone(),
        peer: i.peer.addr.to_string(),
        listener: i.peer.listener.to_string(),
        transport: i.peer.transport.as_str().to_string(),
        protocol: i.protocol,
        connected_at_ms: i.connected_at_ms,
        keep_alive_secs: i.keep_alive_secs,
        clean_start: i.clean_start,
        session_expiry_secs: i.expiry_secs,
        subscriptions: i.subscriptions.iter().map(|(f, q)| SubscriptionView { filter: f.clone(), qos: *q }).collect(),
        messages_in: h.stats.messages_in.load(Relaxed),
        messages_out: h.stats.messages_out.load(Relaxed),
        bytes_in: h.stats.bytes_in.load(Relaxed),
        bytes_out: h.stats.bytes_out.load(Relaxed),
        delivery_latency_ms: h.stats.latency_ema_micros.load(Relaxed) as f64 / 1000.0,
    }
}

fn matches(f: &ClientFilter, c: &ClientView) -> bool {
    f.client_id_prefix.as_ref().is_none_or(|p| c.client_id.starts_with(p.as_str()))
        && f.username.as_ref().is_none_or(|u| c.username.as_ref() == Some(u))
        && f.ip.as_ref().is_none_or(|ip| c.peer.rsplit_once(':').is_some_and(|(h, _)| h.trim_matches(['[', ']']) == ip))
        && f.listener.as_ref().is_none_or(|l| &c.listener == l)
}

/// Connected clients, sorted by client id.
#[utoipa::path(get, path = "/api/v1/clients", tag = "clients", params(ClientFilter, Page),
    responses((status = 200, body = [ClientView]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(super) async fn list(
    State(s): State<HttpState>,
    Query(filter): Query<ClientFilter>,
    Query(page): Query<Page>,
) -> Result<axum::Json<Vec<ClientView>>, ApiError> {
    page.validate()?;
    let handles: Vec<_> = s.hub.sessions.read().values().cloned().collect();
    let mut all: Vec<ClientView> = handles.iter().map(|h| view(h)).filter(|c| matches(&filter, c)).collect();
    all.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    Ok(axum::Json(page.apply(all)))
}

/// One connected client.
#[utoipa::path(get, path = "/api/v1/clients/{client_id}", tag = "clients",
    params(("client_id" = String, Path, description = "The client id")),
    responses((status = 200, body = ClientView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn inspect(
    State(s): State<HttpState>,
    Path(client_id): Path<String>,
) -> Result<axum::Json<ClientView>, ApiError> {
    let h = s
        .hub
        .connected(&client_id)
        .ok_or_else(|| ApiError::not_found(format!("client {client_id} is not connected")))?;
    Ok(axum::Json(view(&h)))
}

/// Disconnects a client (DISCONNECT 0x98 under MQTT 5). Its persistent session stays.
#[utoipa::path(delete, path = "/api/v1/clients/{client_id}", tag = "clients",
    params(("client_id" = String, Path, description = "The client id")),
    responses((status = 204, description = "Disconnected"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn kick(State(s): State<HttpState>, Path(client_id): Path<String>) -> Result<StatusCode, ApiError> {
    if s.hub.kick(&client_id) {
        tracing::info!(%client_id, "client kicked through the admin API");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("client {client_id} is not connected")))
    }
}
