//! `/api/v1/bans`: the ban list while the broker runs (the same calls as `axle ban`). A new
//! ban also disconnects the connected clients it matches.

use std::net::IpAddr;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, ErrorBody, HttpState, Json, Query};
use crate::auth::bans::{Ban, BanTarget};
use crate::auth::now_ms;

pub fn routes() -> Router<HttpState> {
    Router::new().route("/bans", get(list).post(add).delete(remove))
}

/// One ban.
#[derive(Debug, Serialize, ToSchema)]
pub struct BanView {
    /// `client_id`, `username` or `ip`.
    pub kind: String,
    /// The client id, the username, or the network (`10.0.0.0/8`).
    pub value: String,
    /// When it ends, in ms since the Unix epoch; absent: until removed.
    pub until_ms: Option<i64>,
    pub reason: Option<String>,
    /// When it was added, in ms since the Unix epoch.
    pub created_ms: i64,
}

/// The answer to a new ban.
#[derive(Debug, Serialize, ToSchema)]
pub struct BanAdded {
    pub ban: BanView,
    /// Connected clients the ban disconnected.
    pub kicked: Vec<String>,
}

/// The longest timed ban, seconds (100 Julian years); longer ones are refused rather than
/// silently clamped. The schema's `maximum` on `duration_secs` says the same.
const MAX_BAN_SECS: u64 = 3_155_760_000;

/// A ban to add: exactly one of `client_id`, `username` and `ip`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBan {
    pub client_id: Option<String>,
    pub username: Option<String>,
    /// An address or CIDR network (`10.0.0.0/8`, `fd00::/8`).
    pub ip: Option<String>,
    /// How long, in seconds, at most 100 years; absent: until removed.
    #[schema(maximum = 3_155_760_000_u64)] // MAX_BAN_SECS: utoipa takes only a literal here
    pub duration_secs: Option<u64>,
    pub reason: Option<String>,
}

/// The ban to lift: exactly one of the three.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BanQuery {
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub ip: Option<String>,
}

fn target(client_id: Option<String>, username: Option<String>, ip: Option<String>) -> Result<BanTarget, ApiError> {
    match (client_id, username, ip) {
        (Some(c), None, None) => Ok(BanTarget::ClientId(c)),
        (None, Some(u), None) => Ok(BanTarget::Username(u)),
        (None, None, Some(ip)) => BanTarget::ip(&ip).map_err(|e| ApiError::bad_request(e.to_string())),
        _ => Err(ApiError::bad_request("give exactly one of client_id, username and ip")),
    }
}

fn view(b: &Ban) -> BanView {
    let (kind, value) = match &b.target {
        BanTarget::ClientId(c) => ("client_id", c.clone()),
        BanTarget::Username(u) => ("username", u.clone()),
        BanTarget::Ip(n) => ("ip", n.to_string()),
    };
    BanView { kind: kind.into(), value, until_ms: b.until_ms, reason: b.reason.clone(), created_ms: b.created_ms }
}

/// Bans in force, sorted by target.
#[utoipa::path(get, path = "/api/v1/bans", tag = "bans",
    responses((status = 200, body = [BanView]), (status = 401, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub(super) async fn list(State(s): State<HttpState>) -> Result<axum::Json<Vec<BanView>>, ApiError> {
    let hub = s.hub.clone();
    let bans = tokio::task::spawn_blocking(move || hub.auth.bans().list(now_ms()))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(axum::Json(bans.iter().map(view).collect()))
}

/// Adds (or replaces) a ban and disconnects the connected clients it matches.
#[utoipa::path(post, path = "/api/v1/bans", tag = "bans", request_body = NewBan,
    responses((status = 201, body = BanAdded), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub(super) async fn add(
    State(s): State<HttpState>,
    Json(b): Json<NewBan>,
) -> Result<(StatusCode, axum::Json<BanAdded>), ApiError> {
    let target = target(b.client_id, b.username, b.ip)?;
    if b.duration_secs.is_some_and(|d| d > MAX_BAN_SECS) {
        return Err(ApiError::bad_request(format!(
            "duration_secs must be at most {MAX_BAN_SECS} (100 years); omit it for a ban until removed"
        )));
    }
    let now = now_ms();
    let until_ms = b.duration_secs.map(|d| now.saturating_add(d as i64 * 1000));
    let ban = Ban { target, until_ms, reason: b.reason, created_ms: now };
    let hub = s.hub.clone();
    let stored = ban.clone();
    tokio::task::spawn_blocking(move || hub.auth.bans().add(stored))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| match e {
            crate::auth::bans::BansError::Empty => ApiError::bad_request(e.to_string()),
            other => ApiError::internal(other.to_string()),
        })?;
    let matching: Vec<String> = s
        .hub
        .sessions
        .read()
        .values()
        .filter(|h| {
            let info = h.info.lock();
            match &ban.target {
                BanTarget::ClientId(c) => &h.client_id == c,
                BanTarget::Username(u) => info.username.as_ref() == Some(u),
                BanTarget::Ip(n) => n.contains(&IpAddr::to_canonical(&info.peer.addr.ip())),
            }
        })
        .map(|h| h.client_id.clone())
        .collect();
    let kicked: Vec<String> = matching.into_iter().filter(|c| s.hub.kick(c)).collect();
    tracing::info!(target = %ban.target, ?kicked, "ban added through the admin API");
    Ok((StatusCode::CREATED, axum::Json(BanAdded { ban: view(&ban), kicked })))
}

/// Lifts a ban.
#[utoipa::path(delete, path = "/api/v1/bans", tag = "bans", params(BanQuery),
    responses((status = 204, description = "Lifted"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub(super) async fn remove(State(s): State<HttpState>, Query(q): Query<BanQuery>) -> Result<StatusCode, ApiError> {
    let target = target(q.client_id, q.username, q.ip)?;
    let hub = s.hub.clone();
    let t = target.clone();
    let existed = tokio::task::spawn_blocking(move || hub.auth.bans().remove(&t))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(e.to_string()))?;
    if existed {
        tracing::info!(%target, "ban lifted through the admin API");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no ban on {target}")))
    }
}
