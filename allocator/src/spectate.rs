//! `POST /v1/fleets/{fleet}/worlds/{worldId}/spectate`: a read-only seat in a running
//! world, for the web console or a stream overlay.
//!
//! The allocator looks the world up where the registry placed it and signs a spectate
//! token for that server ([`gaia_api::token::SpectateClaims`]). Nothing is allocated: no
//! slot, no lease, no epoch bump; a world that is not placed anywhere is 404, never
//! started. The game server lets a spectator watch only a world it runs, and refuses
//! its inputs.

use std::time::SystemTime;

use axum::Json;
use axum::extract::State;
use gaia_api::allocation::{ErrorBody, SpectateResponse, check_id};
use gaia_api::fleet::check_name;
use gaia_api::token::{SpectateClaims, unix_ms};

use crate::params::PathParams;
use crate::{ApiError, AppState};

/// A spectate token and where to use it, for a world that is placed on a server.
#[utoipa::path(
    post,
    path = "/v1/fleets/{fleet}/worlds/{worldId}/spectate",
    tag = "allocations",
    params(
        ("fleet" = String, Path, description = "Fleet name", example = "town"),
        ("worldId" = String, Path, description = "The world to watch"),
    ),
    responses(
        (status = 200, description = "A spectate token for the world's server", body = SpectateResponse),
        (status = 400, description = "`bad_request`: `fleet` is not a name or `worldId` not an id", body = ErrorBody),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, description = "`world_not_running`: the fleet has no such world placed on a server", body = ErrorBody),
        (status = 503, description = "`unavailable`: the registry cannot be reached, or `no_address`: the \
            world's server has no address yet", body = ErrorBody),
    ),
    security(("matchmaker" = [])),
)]
pub(crate) async fn spectate(
    State(s): State<AppState>,
    PathParams((fleet, world_id)): PathParams<(String, String)>,
) -> Result<Json<SpectateResponse>, ApiError> {
    let result = seat(&s, &fleet, &world_id).await;
    let label = result.as_ref().map_or_else(ApiError::metric_label, |_| "ok");
    s.metrics.spectates.get_or_create(&crate::metrics::ResultLabels { result: label }).inc();
    result.map(Json)
}

async fn seat(s: &AppState, fleet: &str, world_id: &str) -> Result<SpectateResponse, ApiError> {
    check_name("fleet", fleet)?;
    check_id("worldId", world_id)?;
    let not_running = || ApiError::WorldNotRunning { fleet: fleet.into(), world: world_id.into() };
    let hosted = s.registry.world(fleet, world_id).await?.ok_or_else(not_running)?;
    let server = s.registry.get(&hosted.server).await?;
    let address = server.address.ok_or_else(|| ApiError::NoAddress(server.name.clone()))?;
    let expires_at_ms = unix_ms(SystemTime::now() + s.token_ttl);
    let claims = SpectateClaims { world_id: world_id.into(), server: server.name.clone(), expires_at_ms };
    Ok(SpectateResponse {
        world_id: world_id.into(),
        fleet: server.fleet,
        token: s.key.sign_spectate(&claims),
        server: server.name,
        region: server.region,
        address,
        expires_at_ms,
    })
}
