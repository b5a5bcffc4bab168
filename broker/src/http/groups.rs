//! `/api/v1/consumer-groups`: gRPC consumer groups — members, lag, offset resets.

use axle_engine::groups::{GroupError, GroupInfo, GroupStoreError};
use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiError, ErrorBody, HttpState, Json, Path};

pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/consumer-groups", get(list))
        .route("/consumer-groups/{group}", get(describe))
        .route("/consumer-groups/{group}/offsets", post(reset))
}

/// A live member of a group.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberView {
    pub member_id: String,
    /// Partition numbers it owns in the current generation.
    pub partitions: Vec<u32>,
    /// Last join or heartbeat, ms since the Unix epoch.
    pub last_seen_ms: i64,
    pub session_timeout_ms: u64,
}

/// A group's position in one partition of its stream.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupPartitionView {
    pub partition: u32,
    /// Committed next offset; `null` if the group never committed here.
    pub committed: Option<u64>,
    pub end_offset: u64,
    /// Records from the committed offset (or the log start) to the end.
    pub lag: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GroupView {
    pub name: String,
    pub stream: Option<String>,
    pub generation: u64,
    /// `range` or `round_robin`; `null` without live members.
    pub strategy: Option<String>,
    pub members: Vec<MemberView>,
    pub partitions: Vec<GroupPartitionView>,
    /// Sum of the partitions' lag.
    pub lag: u64,
}

/// Where to move a group's committed offsets. Exactly one of the fields.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetOffsets {
    /// `earliest` or `latest`, for every partition of the stream.
    pub to: Option<String>,
    /// The first offset at or after this time (ms since the Unix epoch), per partition.
    pub timestamp_ms: Option<i64>,
    /// Explicit `(partition, offset)` pairs.
    pub offsets: Option<Vec<PartitionOffset>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PartitionOffset {
    pub partition: u32,
    pub offset: u64,
}

fn store_error(e: GroupStoreError) -> ApiError {
    match e {
        GroupStoreError::Group(g @ GroupError::Active { .. }) => ApiError::conflict(g.to_string()),
        GroupStoreError::Group(g) => ApiError::bad_request(g.to_string()),
        GroupStoreError::Meta(m) => ApiError::internal(m.to_string()),
    }
}

fn view(s: &HttpState, g: GroupInfo) -> GroupView {
    let engine = &s.hub.engine;
    let si = g.stream.as_ref().and_then(|n| engine.streams().streams().iter().position(|c| &c.name == n));
    let partitions: Vec<GroupPartitionView> = match si {
        Some(si) => engine
            .partitions()
            .iter()
            .filter(|p| p.stream == si)
            .enumerate()
            .map(|(n, p)| {
                let b = p.log.bounds();
                let committed = g.committed.iter().find(|(q, _)| *q as usize == n).map(|(_, o)| *o);
                let from = committed.unwrap_or(b.log_start).max(b.log_start);
                GroupPartitionView {
                    partition: n as u32,
                    committed,
                    end_offset: b.end,
                    lag: b.end.saturating_sub(from),
                }
            })
            .collect(),
        None => Vec::new(),
    };
    GroupView {
        lag: partitions.iter().map(|p| p.lag).sum(),
        name: g.name,
        stream: g.stream,
        generation: g.generation,
        strategy: g.strategy.map(|s| match s {
            axle_engine::groups::Strategy::Range => "range".to_string(),
            axle_engine::groups::Strategy::RoundRobin => "round_robin".to_string(),
        }),
        members: g
            .members
            .into_iter()
            .map(|m| MemberView {
                member_id: m.id,
                partitions: m.partitions,
                last_seen_ms: m.last_seen_ms,
                session_timeout_ms: m.session_timeout_ms,
            })
            .collect(),
        partitions,
    }
}

/// Every consumer group, live or with committed offsets, sorted by name.
#[utoipa::path(get, path = "/api/v1/consumer-groups", tag = "consumer-groups",
    responses((status = 200, body = [GroupView]), (status = 401, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub(super) async fn list(State(s): State<HttpState>) -> Result<axum::Json<Vec<GroupView>>, ApiError> {
    let all = s.hub.engine.groups().describe_all().map_err(store_error)?;
    Ok(axum::Json(all.into_iter().map(|g| view(&s, g)).collect()))
}

/// One consumer group: members, assignment, committed offsets and lag.
#[utoipa::path(get, path = "/api/v1/consumer-groups/{group}", tag = "consumer-groups",
    params(("group" = String, Path, description = "The group name")),
    responses((status = 200, body = GroupView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub(super) async fn describe(
    State(s): State<HttpState>,
    Path(group): Path<String>,
) -> Result<axum::Json<GroupView>, ApiError> {
    let g = s.hub.engine.groups().describe(&group).map_err(store_error)?;
    let g = g.ok_or_else(|| ApiError::not_found(format!("no consumer group named {group}")))?;
    Ok(axum::Json(view(&s, g)))
}

/// Moves a group's committed offsets. Refused (409) while the group has live members.
#[utoipa::path(post, path = "/api/v1/consumer-groups/{group}/offsets", tag = "consumer-groups",
    params(("group" = String, Path, description = "The group name")), request_body = ResetOffsets,
    responses((status = 200, body = GroupView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub(super) async fn reset(
    State(s): State<HttpState>,
    Path(group): Path<String>,
    Json(req): Json<ResetOffsets>,
) -> Result<axum::Json<GroupView>, ApiError> {
    let groups = s.hub.engine.groups();
    let g = groups.describe(&group).map_err(store_error)?;
    let g = g.ok_or_else(|| ApiError::not_found(format!("no consumer group named {group}")))?;
    let stream = g.stream.clone().ok_or_else(|| {
        ApiError::conflict("the group's stream is unknown; reset with explicit offsets after it joins once")
    })?;
    let engine = &s.hub.engine;
    let si = engine
        .streams()
        .streams()
        .iter()
        .position(|c| c.name == stream)
        .ok_or_else(|| ApiError::conflict(format!("the group's stream {stream} is no longer configured")))?;
    let parts: Vec<_> = engine.partitions().iter().filter(|p| p.stream == si).collect();
    let chosen = [req.to.is_some(), req.timestamp_ms.is_some(), req.offsets.is_some()].iter().filter(|x| **x).count();
    if chosen != 1 {
        return Err(ApiError::bad_request("give exactly one of `to`, `timestamp_ms` and `offsets`"));
    }
    let mut offsets = Vec::new();
    if let Some(to) = &req.to {
        for (n, p) in parts.iter().enumerate() {
            let b = p.log.bounds();
            let o = match to.as_str() {
                "earliest" => b.log_start,
                "latest" => b.end,
                other => return Err(ApiError::bad_request(format!("`to` must be earliest or latest, not {other:?}"))),
            };
            offsets.push((n as u32, o));
        }
    } else if let Some(ts) = req.timestamp_ms {
        for (n, p) in parts.iter().enumerate() {
            let o = p.log.offset_for_timestamp(ts).map_err(|e| ApiError::internal(e.to_string()))?;
            offsets.push((n as u32, o.unwrap_or_else(|| p.log.bounds().end)));
        }
    } else if let Some(list) = &req.offsets {
        for po in list {
            let Some(p) = parts.get(po.partition as usize) else {
                return Err(ApiError::bad_request(format!("stream {stream} has no partition {}", po.partition)));
            };
            let b = p.log.bounds();
            if po.offset < b.log_start || po.offset > b.end {
                return Err(ApiError::bad_request(format!(
                    "offset {} of partition {} is outside {}..={}",
                    po.offset, po.partition, b.log_start, b.end
                )));
            }
            offsets.push((po.partition, po.offset));
        }
    }
    groups.reset_offsets(&group, &offsets).map_err(store_error)?;
    tracing::info!(%group, ?offsets, "consumer group offsets reset through the admin API");
    let g = groups.describe(&group).map_err(store_error)?.ok_or_else(|| ApiError::not_found("group vanished"))?;
    Ok(axum::Json(view(&s, g)))
}
