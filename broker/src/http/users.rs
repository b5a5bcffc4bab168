//! `/api/v1/users`: built-in users while the broker runs (the same calls as `axle user`).
//! Passwords go in request bodies only, never in paths or query strings, and are never
//! returned.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::Router;
use serde::Deserialize;
use utoipa::ToSchema;

use super::{ApiError, ErrorBody, HttpState, Json, Path};
use crate::auth::users::UsersError;

pub fn routes() -> Router<HttpState> {
    Router::new().route("/users", get(list)).route("/users/{name}", put(set).delete(remove))
}

/// A new password.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Password {
    pub password: String,
}

fn failed(e: UsersError) -> ApiError {
    match e {
        UsersError::EmptyName | UsersError::EmptyPassword => ApiError::bad_request(e.to_string()),
        other => ApiError::internal(other.to_string()),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, UsersError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(e.to_string()))?.map_err(failed)
}

/// Usernames, sorted.
#[utoipa::path(get, path = "/api/v1/users", tag = "users",
    responses((status = 200, body = [String]), (status = 401, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub(super) async fn list(State(s): State<HttpState>) -> Result<axum::Json<Vec<String>>, ApiError> {
    let hub = s.hub.clone();
    Ok(axum::Json(blocking(move || hub.auth.users().list()).await?))
}

/// Creates a user or replaces its password (argon2id); in force at the next CONNECT.
#[utoipa::path(put, path = "/api/v1/users/{name}", tag = "users", request_body = Password,
    params(("name" = String, Path, description = "The username")),
    responses((status = 201, description = "Created"), (status = 204, description = "Password replaced"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub(super) async fn set(
    State(s): State<HttpState>,
    Path(name): Path<String>,
    Json(p): Json<Password>,
) -> Result<StatusCode, ApiError> {
    let hub = s.hub.clone();
    let who = name.clone();
    let existed = blocking(move || hub.auth.users().add(&who, p.password.as_bytes())).await?;
    tracing::info!(user = %name, replaced = existed, "user set through the admin API");
    Ok(if existed { StatusCode::NO_CONTENT } else { StatusCode::CREATED })
}

/// Deletes a user.
#[utoipa::path(delete, path = "/api/v1/users/{name}", tag = "users",
    params(("name" = String, Path, description = "The username")),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub(super) async fn remove(State(s): State<HttpState>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    let hub = s.hub.clone();
    let who = name.clone();
    if blocking(move || hub.auth.users().remove(&who)).await? {
        tracing::info!(user = %name, "user deleted through the admin API");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no user {name}")))
    }
}
