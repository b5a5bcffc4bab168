//! The HTTP listener: Prometheus `/metrics` (no authentication, as scrapers expect) and the
//! REST admin API under `/api/v1` (JSON, bearer-token authentication), with its OpenAPI
//! document at `/api/v1/openapi.json`.
//!
//! Handlers are thin: they read the hub, the engine and the metadata store through the same
//! calls the broker uses, and answer every failure with a JSON `{"error": …}` body and the
//! status code the OpenAPI document lists.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::{header, request::Parts, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;

use crate::hub::Hub;

mod bans;
mod clients;
mod cluster;
mod groups;
mod logging;
mod openapi;
mod retained;
mod sessions;
mod streams;
mod subscriptions;
mod users;

pub use logging::LogLevelControl;

/// What the HTTP server needs besides the hub.
#[derive(Clone)]
pub struct HttpState {
    pub hub: Arc<Hub>,
    /// `None` when the admin API is off (`admin.enabled = false`): only `/metrics` is served.
    pub token: Option<Arc<str>>,
    pub log_level: LogLevelControl,
}

/// Binds `addr` and serves until the task is aborted. Returns the bound address.
pub async fn serve(state: HttpState, addr: SocketAddr) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = router(state);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok((local, task))
}

fn router(state: HttpState) -> Router {
    let mut app = Router::new().route("/metrics", get(metrics));
    if state.token.is_some() {
        let api = Router::new()
            .merge(clients::routes())
            .merge(sessions::routes())
            .merge(subscriptions::routes())
            .merge(retained::routes())
            .merge(streams::routes())
            .merge(groups::routes())
            .merge(logging::routes())
            .merge(bans::routes())
            .merge(users::routes())
            .merge(cluster::routes())
            .route_layer(axum::middleware::from_fn_with_state(state.clone(), require_token));
        app = app.nest("/api/v1", api).route("/api/v1/openapi.json", get(openapi::document));
    }
    app.fallback(|| async { ApiError::not_found("no such resource") }).with_state(state)
}

async fn metrics(State(s): State<HttpState>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let content_type = if openmetrics { crate::metrics::OPENMETRICS } else { crate::metrics::PROMETHEUS_TEXT };
    match crate::metrics::render(&s.hub, openmetrics) {
        Ok(body) => ([(header::CONTENT_TYPE, content_type)], body).into_response(),
        Err(_) => ApiError::internal("could not encode the metrics").into_response(),
    }
}

/// Refuses requests without `Authorization: Bearer <admin token>`.
async fn require_token(State(s): State<HttpState>, headers: HeaderMap, req: Request, next: Next) -> Response {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match (&s.token, given) {
        (Some(want), Some(got)) if constant_time_eq(want.as_bytes(), got.as_bytes()) => next.run(req).await,
        _ => {
            let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token").into_response();
            r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            r
        }
    }
}

/// Compares without an early exit on the first differing byte (length still leaks).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Every error body of the admin API.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, in a sentence.
    pub error: String,
}

/// An error response: status plus `{"error": …}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, message)
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(ErrorBody { error: self.message })).into_response()
    }
}

/// `axum::extract::Query` whose rejection is a JSON 400.
pub struct Query<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// `axum::extract::Path` whose rejection is a JSON 400.
pub struct Path<T>(pub T);

impl<T: serde::de::DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// `axum::Json` whose rejection is a JSON 400.
pub struct Json<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        axum::Json::<T>::from_request(req, state)
            .await
            .map(|j| Json(j.0))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// Paging of list endpoints.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// Items to skip.
    #[param(minimum = 0)]
    #[serde(default)]
    pub offset: usize,
    /// Items to return at most (1 to 1000) [default: 100].
    #[param(minimum = 1, maximum = 1000)]
    #[serde(default = "default_limit")]
    pub limit: usize,
}

fn default_limit() -> usize {
    100
}

impl Page {
    /// Checks `limit`; the range is the one the OpenAPI document states.
    pub fn validate(&self) -> Result<(), ApiError> {
        if !(1..=1000).contains(&self.limit) {
            return Err(ApiError::bad_request("limit must be between 1 and 1000"));
        }
        Ok(())
    }

    pub fn apply<T>(&self, items: impl IntoIterator<Item = T>) -> Vec<T> {
        items.into_iter().skip(self.offset).take(self.limit).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison_needs_every_byte() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
