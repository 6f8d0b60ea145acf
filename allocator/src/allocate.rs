//! `POST /v1/allocations`: a matchmaker's request becomes a registry allocation and a
//! signed join token.

use std::time::{Instant, SystemTime};

use axum::Json;
use axum::extract::State;
use gaia_api::allocation::{AllocationRequest, AllocationResponse};
use gaia_api::token::{JoinClaims, unix_ms};

use crate::json::JsonBody;
use crate::{ApiError, AppState, metrics};

pub(crate) async fn allocate(
    State(s): State<AppState>,
    body: Result<JsonBody<AllocationRequest>, ApiError>,
) -> Result<Json<AllocationResponse>, ApiError> {
    let started = Instant::now();
    let result = allocate_inner(&s, body).await;
    let label = metrics::ResultLabels { result: result.as_ref().map_or_else(ApiError::metric_label, |_| "ok") };
    s.metrics.allocations.get_or_create(&label).inc();
    s.metrics.allocation_seconds.get_or_create(&label).observe(started.elapsed().as_secs_f64());
    result.map(Json)
}

async fn allocate_inner(
    s: &AppState,
    body: Result<JsonBody<AllocationRequest>, ApiError>,
) -> Result<AllocationResponse, ApiError> {
    let JsonBody(req) = body?;
    req.validate()?;
    let placement = s.registry.allocate(&req).await?;
    let server = placement.server;
    let address = server.address.ok_or_else(|| ApiError::NoAddress(server.name.clone()))?;
    let expires_at_ms = match &placement.lease {
        Some(lease) => lease.expires_at_ms,
        None => unix_ms(SystemTime::now() + s.token_ttl),
    };
    let join_token = s.key.sign(&JoinClaims {
        world_id: placement.world_id.clone(),
        server: server.name.clone(),
        player_id: placement.player_id.clone(),
        expires_at_ms,
        epoch: placement.epoch,
    });
    Ok(AllocationResponse {
        world_id: placement.world_id,
        player_id: placement.player_id,
        fleet: server.fleet,
        server: server.name,
        region: server.region,
        address,
        join_token,
        lease: placement.lease,
        epoch: placement.epoch,
    })
}

