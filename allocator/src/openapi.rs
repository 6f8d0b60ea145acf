//! The OpenAPI description of the matchmaker-facing API, served at `GET /openapi.json`.
//! Schemas come from the request and response types themselves (utoipa), so the
//! description cannot drift from what the allocator parses.

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Gaia Fleet allocator",
        description = "Allocations for matchmakers: a world slot on a ready game server, in the preferred \
            region, with an address and a join token. See docs/architecture.md."
    ),
    paths(
        crate::allocate::allocate,
        crate::allocate::batch,
        crate::autoscaler_status,
        crate::list_servers,
        crate::get_server
    ),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("matchmaker", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

pub(crate) async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
