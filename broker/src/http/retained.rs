//! `/api/v1/retained`: retained messages — list, inspect, delete.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, ErrorBody, HttpState, Page, Path, Query};

pub fn routes() -> Router<HttpState> {
    Router::new().route("/retained", get(list)).route("/retained/{topic}", get(inspect).delete(remove))
}

/// A retained message.
#[derive(Debug, Serialize, ToSchema)]
pub struct RetainedView {
    pub topic: String,
    pub qos: u8,
    /// Publisher's client id.
    pub publisher: String,
    /// When it was published, in ms since the Unix epoch.
    pub timestamp_ms: i64,
    pub payload_bytes: usize,
    /// The payload as text when it is valid UTF-8.
    pub payload_text: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RetainedFilter {
    /// Only topics matching this MQTT topic filter (e.g. `v/+/config`).
    pub filter: Option<String>,
}

fn view(m: &axle_engine::Message) -> RetainedView {
    RetainedView {
        topic: m.topic.clone(),
        qos: m.qos,
        publisher: m.publisher.clone(),
        timestamp_ms: m.timestamp,
        payload_bytes: m.payload.len(),
        payload_text: std::str::from_utf8(&m.payload).ok().map(str::to_string),
    }
}

/// Retained messages sorted by topic.
#[utoipa::path(get, path = "/api/v1/retained", tag = "retained", params(RetainedFilter, Page),
    responses((status = 200, body = [RetainedView]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(super) async fn list(
    State(s): State<HttpState>,
    Query(f): Query<RetainedFilter>,
    Query(page): Query<Page>,
) -> Result<axum::Json<Vec<RetainedView>>, ApiError> {
    page.validate()?;
    if let Some(filter) = &f.filter {
        crate::codec::topic::validate_topic_filter(filter).map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    let retained = s.hub.retained.read();
    let all = retained
        .values()
        .filter(|m| f.filter.as_ref().is_none_or(|flt| axle_engine::topic::matches(flt, &m.topic)))
        .map(|m| view(m));
    Ok(axum::Json(page.apply(all)))
}

/// One retained message; the topic is percent-encoded in the path (`v%2F1%2Fconfig`).
#[utoipa::path(get, path = "/api/v1/retained/{topic}", tag = "retained",
    params(("topic" = String, Path, description = "The topic, percent-encoded")),
    responses((status = 200, body = RetainedView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn inspect(
    State(s): State<HttpState>,
    Path(topic): Path<String>,
) -> Result<axum::Json<RetainedView>, ApiError> {
    let retained = s.hub.retained.read();
    let m = retained.get(&topic).ok_or_else(|| ApiError::not_found(format!("no retained message on {topic}")))?;
    Ok(axum::Json(view(m)))
}

/// Clears the retained message of a topic.
#[utoipa::path(delete, path = "/api/v1/retained/{topic}", tag = "retained",
    params(("topic" = String, Path, description = "The topic, percent-encoded")),
    responses((status = 204, description = "Cleared"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn remove(State(s): State<HttpState>, Path(topic): Path<String>) -> Result<StatusCode, ApiError> {
    let existing = s.hub.retained.read().get(&topic).cloned();
    let Some(m) = existing else { return Err(ApiError::not_found(format!("no retained message on {topic}"))) };
    let mut clear = (*m).clone();
    clear.payload = bytes::Bytes::new();
    s.hub.set_retained(&clear);
    tracing::info!(%topic, "retained message cleared through the admin API");
    Ok(StatusCode::NO_CONTENT)
}
