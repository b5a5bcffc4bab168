//! `/api/v1/log-level`: read and change the log filter (per module) at run time.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiError, ErrorBody, HttpState, Json};

type Getter = Arc<dyn Fn() -> String + Send + Sync>;
type Setter = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Reads and replaces the process's log filter; built by the binary around its
/// `tracing-subscriber` reload handle, so this crate does not fix the subscriber's type.
#[derive(Clone)]
pub struct LogLevelControl {
    get: Getter,
    set: Setter,
}

impl LogLevelControl {
    pub fn new(
        get: impl Fn() -> String + Send + Sync + 'static,
        set: impl Fn(&str) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        LogLevelControl { get: Arc::new(get), set: Arc::new(set) }
    }
}

pub fn routes() -> Router<HttpState> {
    Router::new().route("/log-level", get(current).put(change))
}

/// A log filter in `RUST_LOG` syntax: `info,axle_broker::connection=debug`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogLevel {
    pub filter: String,
}

/// The log filter in force.
#[utoipa::path(get, path = "/api/v1/log-level", tag = "logging",
    responses((status = 200, body = LogLevel), (status = 401, body = ErrorBody)))]
pub(super) async fn current(State(s): State<HttpState>) -> axum::Json<LogLevel> {
    axum::Json(LogLevel { filter: (s.log_level.get)() })
}

/// Replaces the log filter; a filter that does not parse is refused and nothing changes.
#[utoipa::path(put, path = "/api/v1/log-level", tag = "logging", request_body = LogLevel,
    responses((status = 200, body = LogLevel), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(super) async fn change(
    State(s): State<HttpState>,
    Json(req): Json<LogLevel>,
) -> Result<axum::Json<LogLevel>, ApiError> {
    (s.log_level.set)(&req.filter).map_err(|e| ApiError::bad_request(format!("bad log filter: {e}")))?;
    tracing::info!(filter = %req.filter, "log filter changed through the admin API");
    Ok(axum::Json(LogLevel { filter: (s.log_level.get)() }))
}
