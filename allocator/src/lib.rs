//! The control-plane HTTP API.
//!
//! One axum router serves matchmakers (`POST /v1/allocations`), game servers' SDK calls
//! (`/v1/gameservers/{name}/...`, including drain, moving a world and watching the own
//! record), reads of the fleet (`GET /v1/gameservers`) and the operational endpoints
//! (`/livez`, `/readyz`, `/metrics`), the fleet's live feed (`GET /v1/events`,
//! [`events`](crate::events)) and the web console that shows it (`/`,
//! [`console`](crate::console)). Every handler is a thin shell over the [`Registry`];
//! errors become status codes in one place, [`ApiError`]. Bearer tokens guard the
//! matchmaker and SDK endpoints ([`auth`](crate::auth), docs/architecture.md); [`run`]
//! serves HTTPS instead of HTTP when given a certificate ([`TlsFiles`]).
//! Start with [`router`]; [`run`] serves it until shutdown.

mod allocate;
mod auth;
mod console;
mod error;
pub mod events;
mod json;
mod messages;
pub mod metrics;
pub mod openapi;
mod params;
mod spectate;
mod tls;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use gaia_api::allocation::{ErrorBody, MoveResponse};
use gaia_api::autoscaler::FleetAutoscalerStatus;
use gaia_api::fleet::check_name;
use gaia_api::gameserver::{
    GameServer, GameServerState, PlayerCountRequest, RegisterRequest, SetLabelRequest, WorldStartedRequest,
};
use gaia_api::token::TokenKey;
use gaia_registry::{Registry, RegistryEvent};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;
use json::JsonBody;
pub use metrics::Metrics;
use params::{PathParams, QueryParams};
pub use tls::{TlsConfig, TlsError, TlsFiles};

/// Largest request body accepted.
const MAX_BODY: usize = 64 * 1024;
/// Largest batch allocation body accepted.
const MAX_BATCH_BODY: usize = 2 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Config {
    /// Signs join tokens; game servers verify with the same secret.
    pub join_secret: String,
    /// Lifetime of a join token for a world that is already running (a new world's token
    /// lives as long as its lease).
    pub join_token_ttl: Duration,
    /// Bearer tokens matchmakers present on `/v1/allocations` and the fleet reads; any
    /// one of them is accepted. Empty: those endpoints are open.
    pub matchmaker_tokens: Vec<String>,
    /// Derives each game server's SDK token (`TokenKey::sdk_token`); the controller
    /// hands it out with the same secret. `None`: SDK endpoints are open.
    pub sdk_secret: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            join_secret: String::new(),
            join_token_ttl: Duration::from_secs(30),
            matchmaker_tokens: Vec::new(),
            sdk_secret: None,
        }
    }
}

/// Every autoscaled fleet's explained status, by fleet name.
pub type AutoscalerStatuses = std::collections::BTreeMap<String, FleetAutoscalerStatus>;

#[derive(Clone)]
pub struct AppState {
    pub(crate) registry: Arc<dyn Registry>,
    pub(crate) key: TokenKey,
    pub(crate) token_ttl: Duration,
    pub(crate) metrics: Arc<Metrics>,
    auth: Arc<auth::Auth>,
    /// Serve HTTPS with this instead of HTTP.
    tls: Option<TlsConfig>,
    /// Everything this process exports on /metrics.
    prometheus: Arc<prometheus_client::registry::Registry>,
    /// The autoscaler's explained status of each fleet it manages, when it runs in this
    /// process (`GET /v1/fleets/{fleet}/autoscaler`).
    autoscalers: Option<tokio::sync::watch::Receiver<AutoscalerStatuses>>,
    /// Ends long-lived responses (watch streams); [`run`] sets it to its own shutdown so
    /// a graceful shutdown does not wait for them.
    shutdown: CancellationToken,
    /// `GET /openapi.json`'s body: [`openapi::document`] for this configuration.
    openapi: Bytes,
    /// Permits for `GET /v1/events` streams ([`events::MAX_STREAMS`]).
    event_streams: Arc<tokio::sync::Semaphore>,
    /// The worlds' activity log (`GET /v1/worlds/{worldId}/messages`), when there is a
    /// durable store.
    messages: Option<Arc<dyn gaia_checkpoint::MessageLog>>,
}

impl AppState {
    /// `metrics` must be registered in `prometheus` (see [`Metrics::new`]).
    pub fn new(
        config: &Config,
        registry: Arc<dyn Registry>,
        metrics: Metrics,
        prometheus: Arc<prometheus_client::registry::Registry>,
    ) -> Self {
        let auth = auth::Auth::new(&config.matchmaker_tokens, config.sdk_secret.as_deref());
        let openapi = serde_json::to_vec(&openapi::document(auth.has_matchmaker_tokens())).unwrap_or_default();
        Self {
            registry,
            key: TokenKey::new(config.join_secret.as_bytes()),
            token_ttl: config.join_token_ttl,
            metrics: Arc::new(metrics),
            auth: Arc::new(auth),
            tls: None,
            prometheus,
            autoscalers: None,
            shutdown: CancellationToken::new(),
            openapi: openapi.into(),
            event_streams: Arc::new(tokio::sync::Semaphore::new(events::MAX_STREAMS)),
            messages: None,
        }
    }

    /// Serves the worlds' activity log from `log` (the store the game servers write to).
    pub fn with_message_log(self, log: Arc<dyn gaia_checkpoint::MessageLog>) -> Self {
        Self { messages: Some(log), ..self }
    }

    /// Serves the autoscaler's explained status from `statuses` (the autoscaler's
    /// `Settings::status` channel).
    pub fn with_autoscaler_status(self, statuses: tokio::sync::watch::Receiver<AutoscalerStatuses>) -> Self {
        Self { autoscalers: Some(statuses), ..self }
    }

    /// [`run`] serves HTTPS only, with `tls` (see [`TlsFiles::load`]).
    pub fn with_tls(self, tls: TlsConfig) -> Self {
        Self { tls: Some(tls), ..self }
    }
}

pub fn router(state: AppState) -> Router {
    let sdk = Router::new()
        .route("/register", post(register))
        .route("/ready", post(|s, p| to_state(s, p, GameServerState::Ready, "ready")))
        .route("/reserve", post(|s, p| to_state(s, p, GameServerState::Reserved, "reserve")))
        .route("/allocate", post(|s, p| to_state(s, p, GameServerState::Allocated, "allocate")))
        .route("/shutdown", post(|s, p| to_state(s, p, GameServerState::Shutdown, "shutdown")))
        .route("/drain", post(drain))
        .route("/health", post(health))
        .route("/labels", put(set_label))
        .route("/players", put(set_players))
        .route("/watch", get(watch))
        .route("/worlds/{world}/started", post(world_started))
        .route("/worlds/{world}/ended", post(world_ended))
        .route("/worlds/{world}/move", post(move_world));
    Router::new()
        .route("/v1/allocations", post(allocate::allocate))
        // A matchmaker's whole cycle: up to MAX_BATCH requests of a few hundred bytes.
        .route("/v1/allocations:batch", post(allocate::batch).layer(DefaultBodyLimit::max(MAX_BATCH_BODY)))
        .route("/v1/events", get(events::events))
        .route("/v1/fleets/{fleet}/autoscaler", get(autoscaler_status))
        .route("/v1/fleets/{fleet}/worlds/{world}/spectate", post(spectate::spectate))
        .route("/v1/worlds/{world}/messages", get(messages::messages))
        .route("/v1/gameservers", get(list_servers))
        .route("/v1/gameservers/{name}", get(get_server))
        .nest("/v1/gameservers/{name}", sdk)
        .route("/openapi.json", get(openapi_json))
        .route("/", get(console::index))
        .route("/assets/{file}", get(console::asset))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/metrics", get(metrics_text))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::authorize))
        .with_state(state)
}

/// Sweeps the registry every `every` until `shutdown` (leases, health, old records; see
/// [`Registry::sweep`]), counting expired leases. Any number of processes may sweep one
/// shared registry.
pub async fn run_sweeper(state: AppState, every: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => match state.registry.sweep().await {
                Ok(report) => {
                    state.metrics.lease_expiries.inc_by(report.expired_leases.len() as u64);
                }
                Err(e) => tracing::warn!(error = %e, "registry sweep failed"),
            },
        }
    }
}

/// Serves [`router`] on `listener` until `shutdown` is cancelled: HTTPS only when the
/// state has TLS ([`AppState::with_tls`]), else HTTP.
pub async fn run(listener: TcpListener, state: AppState, shutdown: CancellationToken) -> std::io::Result<()> {
    let tls = state.tls.clone();
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(addr = ?listener.local_addr().ok(), scheme, "control-plane API listening");
    state.auth.warn_if_open();
    let app = router(AppState { shutdown: shutdown.clone(), ..state });
    match tls {
        Some(tls) => {
            let listener = tls::TlsListener::new(listener, tls)?;
            gaia_serve::serve(listener, app, shutdown).await
        }
        None => gaia_serve::serve(listener, app, shutdown).await,
    }
}

#[derive(Deserialize)]
struct ListQuery {
    fleet: Option<String>,
}

/// All game servers, or those of one fleet, sorted by name.
#[utoipa::path(
    get,
    path = "/v1/gameservers",
    tag = "gameservers",
    params(("fleet" = Option<String>, Query, description = "Only this fleet's servers", example = "town")),
    responses(
        (status = 200, description = "The servers", body = Vec<GameServer>),
        (status = 400, description = "`bad_request`: `fleet` is not a name (or not one value)", body = ErrorBody),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 503, description = "`unavailable`: the registry cannot be reached", body = ErrorBody),
    ),
    security(("matchmaker" = [])),
)]
async fn list_servers(
    State(s): State<AppState>,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<Vec<GameServer>>, ApiError> {
    if let Some(fleet) = &q.fleet {
        check_name("fleet", fleet)?;
    }
    Ok(Json(s.registry.list(q.fleet.as_deref()).await?))
}

/// What the fleet's autoscaler decided for each region, from what, and why.
#[utoipa::path(
    get,
    path = "/v1/fleets/{fleet}/autoscaler",
    tag = "autoscaler",
    params(("fleet" = String, Path, description = "Fleet name", example = "town")),
    responses(
        (status = 200, description = "Per region: desired and current replicas, buffer, policy inputs, last decisions", body = FleetAutoscalerStatus),
        (status = 400, description = "`bad_request`: `fleet` is not a name", body = ErrorBody),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, description = "`autoscaler_not_found`: no autoscaler manages this fleet here", body = ErrorBody),
    ),
    security(("matchmaker" = [])),
)]
async fn autoscaler_status(
    State(s): State<AppState>,
    PathParams(fleet): PathParams<String>,
) -> Result<Json<FleetAutoscalerStatus>, ApiError> {
    check_name("fleet", &fleet)?;
    let Some(statuses) = &s.autoscalers else {
        return Err(ApiError::NoAutoscaler("no autoscaler runs with this allocator".into()));
    };
    let status = statuses.borrow().get(&fleet).cloned();
    status.map(Json).ok_or_else(|| ApiError::NoAutoscaler(format!("no autoscaler manages fleet {fleet:?}")))
}

fn server_name(name: &str) -> Result<(), ApiError> {
    check_name("name", name).map_err(ApiError::from)
}

/// One game server's record.
#[utoipa::path(
    get,
    path = "/v1/gameservers/{name}",
    tag = "gameservers",
    params(("name" = String, Path, description = "Game-server name")),
    responses(
        (status = 200, description = "The server", body = GameServer),
        (status = 400, description = "`bad_request`: `name` is not a name", body = ErrorBody),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, description = "`forbidden`: another game server's SDK token", body = ErrorBody),
        (status = 404, description = "`not_found`: no such server", body = ErrorBody),
        (status = 503, description = "`unavailable`: the registry cannot be reached", body = ErrorBody),
    ),
    security(("matchmaker" = []), ("sdk" = [])),
)]
async fn get_server(
    State(s): State<AppState>,
    PathParams(name): PathParams<String>,
) -> Result<Json<GameServer>, ApiError> {
    server_name(&name)?;
    Ok(Json(s.registry.get(&name).await?))
}

/// Counts an SDK call by result and passes its outcome on.
fn sdk_call<T>(s: &AppState, call: &'static str, result: Result<T, ApiError>) -> Result<T, ApiError> {
    let label = metrics::SdkLabels { call, result: result.as_ref().map_or_else(ApiError::metric_label, |_| "ok") };
    s.metrics.sdk_calls.get_or_create(&label).inc();
    if let Err(e) = &result {
        tracing::debug!(call, error = %e, "SDK call refused");
    }
    result
}

async fn register(
    State(s): State<AppState>,
    PathParams(name): PathParams<String>,
    body: Result<JsonBody<RegisterRequest>, ApiError>,
) -> Result<Json<GameServer>, ApiError> {
    let result = async {
        server_name(&name)?;
        let JsonBody(req) = body?;
        check_name("fleet", &req.fleet)?;
        check_name("region", &req.region)?;
        Ok(s.registry.register(&name, req).await?)
    }
    .await;
    sdk_call(&s, "register", result).map(Json)
}

async fn to_state(
    State(s): State<AppState>,
    PathParams(name): PathParams<String>,
    to: GameServerState,
    call: &'static str,
) -> Result<Json<GameServer>, ApiError> {
    let result = async {
        server_name(&name)?;
        Ok(s.registry.transition(&name, to).await?)
    }
    .await;
    sdk_call(&s, call, result).map(Json)
}

/// Drains a game server: it takes no new world, moves its worlds to other servers (their
/// players follow `Migrate`), then shuts down. An operator's call (a matchmaker token), or
/// the server's own (its SDK token, as on SIGTERM).
#[utoipa::path(
    post,
    path = "/v1/gameservers/{name}/drain",
    tag = "gameservers",
    params(("name" = String, Path, description = "Game-server name")),
    responses(
        (status = 200, description = "The server, now `Draining`", body = GameServer),
        (status = 400, description = "`bad_request`: `name` is not a name", body = ErrorBody),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, description = "`forbidden`: another game server's SDK token", body = ErrorBody),
        (status = 404, description = "`not_found`: no such server", body = ErrorBody),
        (status = 409, description = "`illegal_transition`: the server cannot drain from its state (it is terminal)", body = ErrorBody),
        (status = 503, description = "`unavailable`: the registry cannot be reached", body = ErrorBody),
    ),
    security(("matchmaker" = []), ("sdk" = [])),
)]
async fn drain(s: State<AppState>, name: PathParams<String>) -> Result<Json<GameServer>, ApiError> {
    to_state(s, name, GameServerState::Draining, "drain").await
}

async fn health(State(s): State<AppState>, PathParams(name): PathParams<String>) -> Result<StatusCode, ApiError> {
    let result = async {
        server_name(&name)?;
        Ok(s.registry.health(&name).await?)
    }
    .await;
    sdk_call(&s, "health", result).map(|()| StatusCode::NO_CONTENT)
}

async fn set_label(
    State(s): State<AppState>,
    PathParams(name): PathParams<String>,
    body: Result<JsonBody<SetLabelRequest>, ApiError>,
) -> Result<Json<GameServer>, ApiError> {
    let result = async {
        server_name(&name)?;
        let JsonBody(req) = body?;
        gaia_api::gameserver::check_settable_key("key", &req.key)?;
        Ok(s.registry.set_label(&name, &req.key, &req.value).await?)
    }
    .await;
    sdk_call(&s, "set_label", result).map(Json)
}

async fn set_players(
    State(s): State<AppState>,
    PathParams(name): PathParams<String>,
    body: Result<JsonBody<PlayerCountRequest>, ApiError>,
) -> Result<StatusCode, ApiError> {
    let result = async {
        server_name(&name)?;
        let JsonBody(req) = body?;
        Ok(s.registry.set_players(&name, req.players).await?)
    }
    .await;
    sdk_call(&s, "set_players", result).map(|()| StatusCode::NO_CONTENT)
}

async fn world_started(
    State(s): State<AppState>,
    PathParams((name, world)): PathParams<(String, String)>,
    body: Result<JsonBody<WorldStartedRequest>, ApiError>,
) -> Result<StatusCode, ApiError> {
    let result = async {
        server_name(&name)?;
        let JsonBody(req) = body?;
        Ok(s.registry.world_started(&name, &world, req.epoch).await?)
    }
    .await;
    sdk_call(&s, "world_started", result).map(|()| StatusCode::NO_CONTENT)
}

async fn world_ended(
    State(s): State<AppState>,
    PathParams((name, world)): PathParams<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let result = async {
        server_name(&name)?;
        Ok(s.registry.world_ended(&name, &world).await?)
    }
    .await;
    sdk_call(&s, "world_ended", result).map(|()| StatusCode::NO_CONTENT)
}

async fn move_world(
    State(s): State<AppState>,
    PathParams((name, world)): PathParams<(String, String)>,
) -> Result<Json<MoveResponse>, ApiError> {
    let result = async {
        server_name(&name)?;
        let placement = s.registry.move_world(&name, &world).await?;
        let server = placement.server;
        let address = server.address.ok_or_else(|| ApiError::NoAddress(server.name.clone()))?;
        tracing::info!(world = %world, from = %name, to = %server.name, epoch = placement.epoch, "world moved");
        Ok(MoveResponse {
            world_id: placement.world_id,
            server: server.name,
            region: server.region,
            address,
            epoch: placement.epoch,
        })
    }
    .await;
    sdk_call(&s, "move_world", result).map(Json)
}

/// `GET /v1/gameservers/{name}/watch`: newline-delimited JSON records of the server, the
/// current one first, then one after each of its state changes. The stream ends after a
/// terminal record (nothing changes after it), when the record is gone, or at shutdown.
async fn watch(State(s): State<AppState>, PathParams(name): PathParams<String>) -> Result<Response, ApiError> {
    let result = async {
        server_name(&name)?;
        // Subscribe before the first read, so no change falls between the two.
        let events = s.registry.subscribe();
        let first = s.registry.get(&name).await?;
        Ok((events, first))
    }
    .await;
    let (events, first) = sdk_call(&s, "watch", result)?;
    let watch = Watch {
        registry: Arc::clone(&s.registry),
        name,
        events,
        shutdown: s.shutdown.clone(),
        next: Some(first),
        done: false,
    };
    let stream = futures_util::stream::unfold(watch, |mut w| async move {
        let record = w.next_record().await?;
        w.done = record.state.is_terminal();
        let mut line = serde_json::to_vec(&record).ok()?;
        line.push(b'\n');
        Some((Ok::<_, Infallible>(Bytes::from(line)), w))
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(stream)).into_response())
}

/// One watch stream's state. Nothing is buffered per watcher beyond the broadcast
/// receiver: a watcher that reads slowly lags, and then gets the current record.
struct Watch {
    pub(crate) registry: Arc<dyn Registry>,
    name: String,
    events: broadcast::Receiver<RegistryEvent>,
    shutdown: CancellationToken,
    /// The record to send next, without waiting for a change.
    next: Option<GameServer>,
    done: bool,
}

impl Watch {
    async fn next_record(&mut self) -> Option<GameServer> {
        if self.done {
            return None;
        }
        if let Some(record) = self.next.take() {
            return Some(record);
        }
        loop {
            let event = tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                event = self.events.recv() => event,
            };
            match event {
                Ok(RegistryEvent::StateChanged { name, .. }) if name == self.name => break,
                Ok(_) => {}
                // Some events were lost, maybe ours: send the record as it is now.
                Err(broadcast::error::RecvError::Lagged(_)) => break,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
        // Gone (removed) or the backend failed: end the stream; the watcher reconnects.
        self.registry.get(&self.name).await.ok()
    }
}

/// The OpenAPI document, made once per configuration ([`AppState::new`]).
async fn openapi_json(State(s): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], s.openapi)
}

/// `/metrics`: the fleet gauges are read from the registry now (one `list`), so they are
/// as fresh as the scrape; when the registry fails they keep their last values.
async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    let servers = s.registry.list(None).await;
    let _guard = s.metrics.fleets_lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    match &servers {
        Ok(servers) => s.metrics.observe_fleets(servers),
        Err(e) => tracing::warn!(error = %e, "registry unavailable: the fleet metrics keep their last values"),
    }
    gaia_serve::metrics(&s.prometheus)
}
