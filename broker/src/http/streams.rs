//! `/api/v1/streams`: streams and their partitions — offsets and sizes.

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, ErrorBody, HttpState, Path, Query};

pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/streams", get(list))
        .route("/streams/{name}", get(describe))
        .route("/streams/{name}/offsets", get(offsets))
}

/// One partition of a stream.
#[derive(Debug, Serialize, ToSchema)]
pub struct PartitionView {
    /// `<stream>-<n>`.
    pub name: String,
    pub number: u32,
    /// Oldest offset still readable.
    pub start_offset: u64,
    /// Offset the next record will get.
    pub end_offset: u64,
    pub size_bytes: u64,
    pub segments: usize,
}

/// A stream: which topics it takes, how it is keyed, and its partitions.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamView {
    pub name: String,
    pub filters: Vec<String>,
    /// `levels:N` or `client_id`.
    pub partition_key: String,
    pub partitions: Vec<PartitionView>,
}

/// Per partition, the first offset at or after a time.
#[derive(Debug, Serialize, ToSchema)]
pub struct OffsetAtTime {
    pub partition: String,
    /// `null` when no record is that recent.
    pub offset: Option<u64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AtTime {
    /// ms since the Unix epoch.
    pub timestamp_ms: i64,
}

fn stream_view(s: &HttpState, si: usize) -> StreamView {
    let cfg = &s.hub.engine.streams().streams()[si];
    let partitions = s
        .hub
        .engine
        .partitions()
        .iter()
        .filter(|p| p.stream == si)
        .enumerate()
        .map(|(n, p)| {
            let b = p.log.bounds();
            PartitionView {
                name: p.name.clone(),
                number: n as u32,
                start_offset: b.log_start,
                end_offset: b.end,
                size_bytes: p.log.size_bytes(),
                segments: p.log.segment_count(),
            }
        })
        .collect();
    StreamView { name: cfg.name.clone(), filters: cfg.filters.clone(), partition_key: cfg.key.to_string(), partitions }
}

fn find(s: &HttpState, name: &str) -> Result<usize, ApiError> {
    s.hub
        .engine
        .streams()
        .streams()
        .iter()
        .position(|c| c.name == name)
        .ok_or_else(|| ApiError::not_found(format!("no stream named {name}")))
}

/// Every stream, in routing order (the default stream last).
#[utoipa::path(get, path = "/api/v1/streams", tag = "streams",
    responses((status = 200, body = [StreamView]), (status = 401, body = ErrorBody)))]
pub(super) async fn list(State(s): State<HttpState>) -> axum::Json<Vec<StreamView>> {
    let n = s.hub.engine.streams().streams().len();
    axum::Json((0..n).map(|i| stream_view(&s, i)).collect())
}

/// One stream with its partitions' offsets and sizes.
#[utoipa::path(get, path = "/api/v1/streams/{name}", tag = "streams",
    params(("name" = String, Path, description = "The stream name")),
    responses((status = 200, body = StreamView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn describe(
    State(s): State<HttpState>,
    Path(name): Path<String>,
) -> Result<axum::Json<StreamView>, ApiError> {
    let si = find(&s, &name)?;
    Ok(axum::Json(stream_view(&s, si)))
}

/// The first offset at or after `timestamp_ms` in each partition of a stream.
#[utoipa::path(get, path = "/api/v1/streams/{name}/offsets", tag = "streams",
    params(("name" = String, Path, description = "The stream name"), AtTime),
    responses((status = 200, body = [OffsetAtTime]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub(super) async fn offsets(
    State(s): State<HttpState>,
    Path(name): Path<String>,
    Query(at): Query<AtTime>,
) -> Result<axum::Json<Vec<OffsetAtTime>>, ApiError> {
    let si = find(&s, &name)?;
    let mut out = Vec::new();
    for p in s.hub.engine.partitions().iter().filter(|p| p.stream == si) {
        let offset = p.log.offset_for_timestamp(at.timestamp_ms).map_err(|e| ApiError::internal(e.to_string()))?;
        out.push(OffsetAtTime { partition: p.name.clone(), offset });
    }
    Ok(axum::Json(out))
}
