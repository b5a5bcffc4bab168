//! The OpenAPI 3 document of the admin API, generated from the handlers' annotations.

use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{bans, clients, cluster, groups, logging, retained, sessions, streams, subscriptions, users, ErrorBody};

#[derive(OpenApi)]
#[openapi(
    info(title = "Axle admin API", description = "Clients, sessions, subscriptions, retained messages, streams, consumer groups, logging, bans, built-in users and the cluster view of one Axle broker. Every endpoint needs `Authorization: Bearer <admin token>`."),
    paths(
        clients::list, clients::inspect, clients::kick,
        sessions::list, sessions::inspect, sessions::remove,
        subscriptions::list,
        retained::list, retained::inspect, retained::remove,
        streams::list, streams::describe, streams::offsets,
        groups::list, groups::describe, groups::reset,
        logging::current, logging::change,
        bans::list, bans::add, bans::remove,
        users::list, users::set, users::remove,
        cluster::describe, cluster::remove_node,
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// `GET /api/v1/openapi.json` (no token needed: it holds no data).
pub(super) async fn document() -> impl IntoResponse {
    axum::Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_lists_every_resource() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/api/v1/clients/{client_id}",
            "/api/v1/sessions/{client_id}",
            "/api/v1/subscriptions",
            "/api/v1/retained/{topic}",
            "/api/v1/streams/{name}/offsets",
            "/api/v1/consumer-groups/{group}/offsets",
            "/api/v1/log-level",
            "/api/v1/bans",
            "/api/v1/users/{name}",
            "/api/v1/cluster",
        ] {
            assert!(paths.contains_key(p), "{p} missing from the OpenAPI document");
        }
    }
}
