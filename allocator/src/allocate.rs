//! `POST /v1/allocations` and `POST /v1/allocations:batch`: a matchmaker's request
//! becomes a registry allocation and a signed join token.
//!
//! With no free slot, a request that carries `deadlineMs` waits for capacity (a server
//! turning Ready, a slot or lease given back) instead of failing at once, and gets 429
//! only when its deadline passes. Nothing is held while it waits, so a request that times
//! out leaves nothing allocated.

use std::time::{Duration, Instant, SystemTime};

use axum::Json;
use axum::extract::State;
use gaia_api::allocation::{
    AllocationRequest, AllocationResponse, BatchAllocationRequest, BatchAllocationResponse, BatchResult, ErrorBody,
    MAX_BATCH,
};
use gaia_api::gameserver::GameServerState;
use gaia_api::token::{JoinClaims, unix_ms};
use gaia_registry::{Placement, RegistryError, RegistryEvent};
use tokio::sync::broadcast;

use crate::json::JsonBody;
use crate::{ApiError, AppState, metrics};

/// A waiting request re-checks at least this often, in case a capacity event was missed
/// (a lagged subscriber, another process's registry).
const RECHECK: Duration = Duration::from_millis(250);

/// Allocates a world slot (or finds where a world lives) and returns its address and a
/// join token.
#[utoipa::path(
    post,
    path = "/v1/allocations",
    tag = "allocations",
    request_body(content = AllocationRequest, example = json!({"fleet": "town", "regions": ["eu-west"]})),
    responses(
        (status = 200, description = "Allocated", body = AllocationResponse),
        (status = 400, description = "`bad_request`, `error.field` names the field: not JSON, not of the schema \
            (an unknown field, a wrong type, a number out of range or not an integer, a bad name or id, a bad \
            selector, too many entries), or a region the fleet does not have", body = ErrorBody),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, description = "`fleet_not_found`", body = ErrorBody),
        (status = 413, description = "`too_large`: a body over the limit", body = ErrorBody),
        (status = 429, description = "`no_capacity`: no free slot before the deadline, or the world's server \
            is draining", body = ErrorBody),
        (status = 503, description = "`unavailable`: the registry cannot be reached, or `no_address`: the \
            chosen server has no address yet", body = ErrorBody),
    ),
    security(("matchmaker" = [])),
)]
pub(crate) async fn allocate(
    State(s): State<AppState>,
    body: Result<JsonBody<AllocationRequest>, ApiError>,
) -> Result<Json<AllocationResponse>, ApiError> {
    let req = body.map(|JsonBody(req)| req);
    let asked = req.as_ref().ok().and_then(first_region);
    counted(&s, asked, async { allocate_one(&s, req?).await }).await.map(Json)
}

/// What the batch endpoint reads: each request stays JSON until its turn, so one that
/// does not fit [`AllocationRequest`] (an unknown field, `2.0` for an integer) fails on
/// its own like any other bad request. The OpenAPI document shows the typed form,
/// [`BatchAllocationRequest`].
#[derive(serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBatch {
    requests: Vec<serde_json::Value>,
}

/// A matchmaker's whole cycle: each request answered in order, on its own.
#[utoipa::path(
    post,
    path = "/v1/allocations:batch",
    tag = "allocations",
    request_body(
        content = BatchAllocationRequest,
        example = json!({"requests": [{"fleet": "town"}, {"fleet": "town", "regions": ["us-east"]}]})
    ),
    responses(
        (status = 200, description = "One result per request, in order, each with the status and error body \
            `POST /v1/allocations` would have answered. A request that does not fit `AllocationRequest` \
            fails alone, with its own 400 (`error.field` is `requests[i]` or `requests[i].<path>`)",
            body = BatchAllocationResponse),
        (status = 400, description = "`bad_request`: not `{requests: [...]}`, or more than the schema's \
            `maxItems` requests", body = ErrorBody),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 413, description = "`too_large`: a body over the limit", body = ErrorBody),
    ),
    security(("matchmaker" = [])),
)]
pub(crate) async fn batch(
    State(s): State<AppState>,
    body: Result<JsonBody<RawBatch>, ApiError>,
) -> Result<Json<BatchAllocationResponse>, ApiError> {
    let JsonBody(batch) = body?;
    if batch.requests.len() > MAX_BATCH {
        return Err(ApiError::BadRequest {
            field: Some("requests".into()),
            message: format!("at most {MAX_BATCH} requests per batch, not {}", batch.requests.len()),
        });
    }
    let mut results = Vec::with_capacity(batch.requests.len());
    for (i, req) in batch.requests.into_iter().enumerate() {
        let req: Result<AllocationRequest, ApiError> = crate::json::from_value(&req);
        let asked = req.as_ref().ok().and_then(first_region);
        let result = counted(&s, asked, async { allocate_one(&s, req?).await }).await;
        results.push(match result {
            Ok(allocation) => BatchResult { status: 200, allocation: Some(allocation), error: None },
            Err(e) => {
                let mut detail = e.detail();
                detail.field = match (&e, detail.field) {
                    (_, Some(field)) => Some(format!("requests[{i}].{field}")),
                    // A request that is not even an object.
                    (ApiError::BadRequest { .. }, None) => Some(format!("requests[{i}]")),
                    (_, None) => None,
                };
                BatchResult { status: e.status().as_u16(), allocation: None, error: Some(detail) }
            }
        });
    }
    Ok(Json(BatchAllocationResponse { results }))
}

fn first_region(req: &AllocationRequest) -> Option<String> {
    req.regions.first().cloned()
}

/// Runs one allocation and records its result, region and latency. `asked` is the
/// region a failure is counted in.
async fn counted(
    s: &AppState,
    asked: Option<String>,
    allocation: impl Future<Output = Result<AllocationResponse, ApiError>>,
) -> Result<AllocationResponse, ApiError> {
    let started = Instant::now();
    let result = allocation.await;
    let result_label = result.as_ref().map_or_else(ApiError::metric_label, |_| "ok");
    // The region it landed in; for a failure the first one asked for.
    let region = match &result {
        Ok(a) => a.region.clone(),
        Err(_) => asked.unwrap_or_else(|| "any".into()),
    };
    s.metrics.allocations.get_or_create(&metrics::AllocationLabels { result: result_label, region }).inc();
    let label = metrics::ResultLabels { result: result_label };
    s.metrics.allocation_seconds.get_or_create(&label).observe(started.elapsed().as_secs_f64());
    result
}

async fn allocate_one(s: &AppState, req: AllocationRequest) -> Result<AllocationResponse, ApiError> {
    req.validate()?;
    let placement = place(s, &req).await?;
    response(s, placement)
}

/// The registry's allocation, retried on capacity changes until the request's deadline.
async fn place(s: &AppState, req: &AllocationRequest) -> Result<Placement, ApiError> {
    let deadline = match req.deadline_ms {
        Some(ms) if ms > 0 => tokio::time::Instant::now() + Duration::from_millis(ms),
        _ => {
            let result = s.registry.allocate(req).await;
            if matches!(result, Err(RegistryError::NoCapacity(_))) {
                report_unmet(s, req).await;
            }
            return Ok(result?);
        }
    };
    // Subscribe before the first try, so capacity freed between the try and the wait
    // still wakes us.
    let mut events = s.registry.subscribe();
    let mut waiting = None;
    loop {
        match s.registry.allocate(req).await {
            Err(RegistryError::NoCapacity(why)) => {
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    let waited = req.deadline_ms.unwrap_or_default();
                    return Err(RegistryError::NoCapacity(format!("{why} (waited {waited} ms)")).into());
                }
                if waiting.is_none() {
                    waiting = Some(Waiting::new(s));
                    report_unmet(s, req).await;
                }
                // Woken by an event or the re-check: either way, try again.
                let wait = capacity_changed(&mut events, &req.fleet);
                let _ = tokio::time::timeout_at(deadline.min(now + RECHECK), wait).await;
            }
            result => return Ok(result?),
        }
    }
}

/// Tells the autoscaler (through the registry) that `req` found no free slot, once per
/// request. A failure to tell is logged: the request itself is not affected.
async fn report_unmet(s: &AppState, req: &AllocationRequest) {
    if let Err(e) = s.registry.report_unmet(&req.fleet, req.regions.first().map(String::as_str)).await {
        tracing::debug!(error = %e, fleet = %req.fleet, "could not report unmet demand");
    }
}

/// Returns when an event may have made room in `fleet`.
async fn capacity_changed(events: &mut broadcast::Receiver<RegistryEvent>, fleet: &str) {
    loop {
        match events.recv().await {
            Ok(RegistryEvent::Released { fleet: f, .. }) if f == fleet => return,
            Ok(RegistryEvent::StateChanged { fleet: f, state, .. })
                if f == fleet && matches!(state, GameServerState::Ready | GameServerState::Allocated) =>
            {
                return;
            }
            Ok(_) => {}
            // Missed events might have been ours: look again.
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            // No more events: the periodic re-check takes over.
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

/// Counts a request in the waiting-for-capacity gauge while it lives.
struct Waiting(AppState);

impl Waiting {
    fn new(s: &AppState) -> Self {
        s.metrics.waiting.inc();
        Self(s.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.metrics.waiting.dec();
    }
}

fn response(s: &AppState, placement: Placement) -> Result<AllocationResponse, ApiError> {
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
