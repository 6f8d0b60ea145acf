//! The Gaia Fleet game server: hosts worlds in memory, ticks them and streams deltas to
//! clients over WebSocket.
//!
//! - [`world`]: the [`World`](world::World) trait a game implements. Start here.
//! - [`engine`]: one fixed step of one world, pure: events in, changes and results out.
//! - [`town`]: the reference AI-Town-style world.
//! - [`room`]: the runtime: one task per world, shared delta encoding, slow readers.
//! - [`conn`]: one client connection (Join with a token, inputs, limits, close reasons).
//! - [`agent`]: the town's agents; [`memory`]: the lane that keeps their memories.
//! - this file: [`Config`], [`bind`] and [`run`]/[`run_world`], which serve the routes
//!   (`/ws`, `/livez`, `/readyz`, `/metrics`), register with the control plane through
//!   the SDK, report world starts/ends and player counts, open the checkpoint stores,
//!   and stop: [`Stop::shutdown`] checkpoints every world and lets clients go;
//!   [`Stop::drain`] (or the control plane marking the server Draining) first moves
//!   every world to another server.

pub mod agent;
pub mod closing;
pub mod conn;
pub mod engine;
pub mod farewell;
pub mod memory;
pub mod metrics;
mod recent;
pub mod room;
pub mod town;
pub mod unjoined;
pub mod world;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use gaia_api::gameserver::RegisterRequest;
use gaia_api::protocol::{Encoding, MAX_CLIENT_FRAME};
use gaia_api::server_env as var;
use gaia_api::token::TokenKey;
use gaia_sdk::{Sdk, SdkError};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conn::Ctx;
use crate::metrics::Metrics;
use crate::room::{Destination, Migration, Mover, Persistence, ResumeConfig, RoomConfig, Rooms, WorldEvent};
use crate::town::{Town, TownConfig};
use crate::unjoined::Unjoined;
use crate::world::{NewWorld, World, seed_of};
use gaia_checkpoint::{Tier, Tiers};

/// Everything a game server is told. The controller sets these as `GAIA_*` variables.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// This server's name in the registry.
    #[arg(long, env = var::SERVER_NAME)]
    pub name: String,
    #[arg(long, env = var::FLEET, default_value = "town")]
    pub fleet: String,
    #[arg(long, env = var::REGION, default_value = "local")]
    pub region: String,
    /// Control-plane URL for the SDK. Unset: run standalone, telling nobody.
    #[arg(long, env = var::SDK_URL)]
    pub sdk_url: Option<String>,
    /// This server's SDK token, sent on every SDK call (the controller sets it; a
    /// control plane with an SDK secret refuses calls without it).
    #[arg(long, env = var::SDK_TOKEN, hide_env_values = true)]
    pub sdk_token: Option<String>,
    /// A PEM certificate to trust for an `https://` control plane, besides the public
    /// roots (a private CA, or the control plane's self-signed certificate).
    #[arg(long, env = var::SDK_CA_FILE)]
    pub sdk_ca_file: Option<std::path::PathBuf>,
    /// Verifies join tokens; the allocator signs them with the same secret.
    #[arg(long, env = var::JOIN_SECRET, hide_env_values = true)]
    pub join_secret: String,
    #[arg(long, env = var::LISTEN, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Host clients are told to connect to; defaults to the listen address's IP
    /// (127.0.0.1 when that is unspecified).
    #[arg(long, env = var::ADVERTISE_HOST)]
    pub advertise_host: Option<String>,
    #[arg(long, env = var::WORLD_CAPACITY, default_value_t = 10)]
    pub world_capacity: u32,
    #[arg(long, env = var::PLAYER_CAPACITY, default_value_t = 300)]
    pub player_capacity: u32,
    #[arg(long, env = var::WORLD_PLAYER_CAPACITY, default_value_t = 30)]
    pub world_player_capacity: u32,
    /// Spectators (read-only connections, no player slot) one world takes besides its players.
    #[arg(long, env = "GAIA_WORLD_SPECTATOR_CAPACITY", default_value_t = 16)]
    pub world_spectator_capacity: u32,
    /// Lines said that a world's Welcome (and Resync) carry, its newest: a joining client
    /// shows the conversation so far. 0: none.
    #[arg(long, env = "GAIA_WORLD_RECENT_MESSAGES", default_value_t = 20)]
    pub world_recent_messages: u16,
    #[arg(long, env = var::HEALTH_PERIOD_SECONDS, default_value_t = 2)]
    pub health_period_seconds: u32,
    /// World ticks per second: inputs are applied and answered at each tick.
    #[arg(long, env = "GAIA_TICK_HZ", default_value_t = 20)]
    pub tick_hz: u32,
    /// Delta frames per second to each client; must divide GAIA_TICK_HZ.
    #[arg(long, env = "GAIA_DELTA_HZ", default_value_t = 10)]
    pub delta_hz: u32,
    /// Server-side bots in every world.
    #[arg(long, env = "GAIA_BOTS_PER_WORLD", default_value_t = 5)]
    pub bots_per_world: u16,
    /// The town's map, in cells.
    #[arg(long, env = "GAIA_TOWN_WIDTH", default_value_t = 48)]
    pub town_width: u16,
    #[arg(long, env = "GAIA_TOWN_HEIGHT", default_value_t = 32)]
    pub town_height: u16,
    /// How many of each world's bots think through the model (GAIA_LLM_URL): the first
    /// ones. Unset: all of them when there is a model, none without.
    #[arg(long, env = "GAIA_AGENTS_PER_WORLD")]
    pub agents_per_world: Option<u16>,
    /// How long an empty world lives on before it ends and frees its slot.
    #[arg(long, env = "GAIA_EMPTY_WORLD_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub empty_world_grace: Duration,
    /// How long a new connection has to send Join.
    #[arg(long, env = "GAIA_JOIN_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub join_timeout: Duration,
    /// How long a member whose connection broke (no close frame) stays in its world,
    /// for the client to `Resume` on a new connection; 0 turns resume off.
    #[arg(long, env = "GAIA_RESUME_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub resume_grace: Duration,
    /// Connections that may wait to join at once (they hold no player slot)...
    #[arg(long, env = "GAIA_UNJOINED_CAPACITY", default_value_t = 256)]
    pub unjoined_capacity: u32,
    /// ...and how many of them may come from one address. More are refused with 503.
    #[arg(long, env = "GAIA_UNJOINED_PER_ADDRESS", default_value_t = 64)]
    pub unjoined_per_address: u32,
    /// A joined client that sends nothing (not even a Ping) for this long is closed.
    #[arg(long, env = "GAIA_IDLE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Frames (inputs and pings) one client may send per second; more are refused.
    #[arg(long, env = "GAIA_CLIENT_FRAME_RATE", default_value_t = NonZeroU32::new(20).expect("20 > 0"))]
    pub client_frame_rate: NonZeroU32,
    /// Frames a client may send in a burst; refusing more than this many in a row closes it.
    #[arg(long, env = "GAIA_CLIENT_FRAME_BURST", default_value_t = NonZeroU32::new(40).expect("40 > 0"))]
    pub client_frame_burst: NonZeroU32,
    /// Frames queued for one client; a client whose queue fills falls behind.
    #[arg(long, env = "GAIA_CLIENT_QUEUE", default_value_t = 64)]
    pub client_queue: usize,
    /// How long a client may stay behind before it is dropped; until then it is
    /// resynced with a snapshot once it reads again.
    #[arg(long, env = "GAIA_MAX_BEHIND", default_value = "5s", value_parser = humantime::parse_duration)]
    pub max_behind: Duration,
    /// Hot checkpoint tier: `redis://host:port`. Unset: no hot tier.
    #[arg(long, env = var::REDIS_URL)]
    pub redis_url: Option<String>,
    /// Durable checkpoint tier: `postgres://…` or `sqlite:path`. Unset: no durable tier.
    /// With neither tier, worlds die with this process.
    #[arg(long, env = var::DATABASE_URL)]
    pub database_url: Option<String>,
    /// How often a world that changed is checkpointed, and the hot tier written.
    #[arg(long, env = "GAIA_CHECKPOINT_EVERY", default_value = "1s", value_parser = humantime::parse_duration)]
    pub checkpoint_every: Duration,
    /// How often the durable tier is written when there is a hot tier (without one, it
    /// is written every GAIA_CHECKPOINT_EVERY). Drain and shutdown write it at once.
    #[arg(long, env = "GAIA_DURABLE_EVERY", default_value = "30s", value_parser = humantime::parse_duration)]
    pub durable_every: Duration,
    /// How long a starting world waits for its checkpoint stores before its joins are
    /// refused (4012, retryable).
    #[arg(long, env = "GAIA_LOAD_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub load_timeout: Duration,
    /// How long a draining server tries to move each world before letting its clients
    /// go to find it through the allocator.
    #[arg(long, env = "GAIA_DRAIN_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// The worlds' operations: the model server and the limits (docs/agents.md).
    #[command(flatten)]
    pub ops: gaia_ops::OpsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            name: "gs-local".into(),
            fleet: "town".into(),
            region: "local".into(),
            sdk_url: None,
            sdk_token: None,
            sdk_ca_file: None,
            join_secret: String::new(),
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            advertise_host: None,
            world_capacity: 10,
            player_capacity: 300,
            world_player_capacity: 30,
            world_spectator_capacity: 16,
            world_recent_messages: 20,
            health_period_seconds: 2,
            tick_hz: 20,
            delta_hz: 10,
            bots_per_world: 5,
            agents_per_world: None,
            town_width: 48,
            town_height: 32,
            empty_world_grace: Duration::from_secs(5),
            join_timeout: Duration::from_secs(5),
            resume_grace: Duration::from_secs(10),
            unjoined_capacity: 256,
            unjoined_per_address: 64,
            idle_timeout: Duration::from_secs(30),
            client_frame_rate: NonZeroU32::new(20).expect("20 > 0"),
            client_frame_burst: NonZeroU32::new(40).expect("40 > 0"),
            client_queue: 64,
            max_behind: Duration::from_secs(5),
            redis_url: None,
            database_url: None,
            checkpoint_every: Duration::from_secs(1),
            durable_every: Duration::from_secs(30),
            load_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(5),
            ops: gaia_ops::OpsConfig::default(),
        }
    }
}

/// How a game server is told to stop.
#[derive(Debug, Clone, Default)]
pub struct Stop {
    /// Stop now: every world runs its last tick and is checkpointed, clients are let go
    /// (`GOING_AWAY`) and find their worlds again through the allocator.
    pub shutdown: CancellationToken,
    /// Drain, then stop: every world is checkpointed and moved to another server, its
    /// clients are sent `Migrate`. The control plane marking this server Draining does
    /// the same.
    pub drain: CancellationToken,
}

impl From<CancellationToken> for Stop {
    fn from(shutdown: CancellationToken) -> Self {
        Self { shutdown, drain: CancellationToken::new() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("control plane: {0}")]
    Sdk(#[from] SdkError),
    #[error("checkpoint store {url}: {source}")]
    Store {
        url: String,
        #[source]
        source: gaia_checkpoint::StoreError,
    },
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Config(_) => "config",
            Self::Sdk(_) => "sdk",
            Self::Store { .. } => "store",
            Self::Io(_) => "io",
        }
    }
}

/// Where clients reach a server bound at `local`.
pub fn address(local: SocketAddr, advertise_host: Option<&str>) -> String {
    let host = match advertise_host {
        Some(host) => host.to_string(),
        None if local.ip().is_unspecified() => "127.0.0.1".to_string(),
        None => local.ip().to_string(),
    };
    format!("ws://{host}:{}/ws", local.port())
}

/// Binds a listener for a game server: a listen backlog of 4096, so a burst of
/// thousands of clients connecting at once is queued rather than refused (the kernel
/// caps it at `net.core.somaxconn`).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

struct AppState<W: World> {
    ctx: Arc<Ctx<W>>,
    tiers: Option<Arc<Tiers>>,
    unjoined: Arc<Unjoined>,
    prometheus: Arc<prometheus_client::registry::Registry>,
    tasks: TaskTracker,
}

impl<W: World> Clone for AppState<W> {
    fn clone(&self) -> Self {
        Self {
            ctx: Arc::clone(&self.ctx),
            tiers: self.tiers.clone(),
            unjoined: Arc::clone(&self.unjoined),
            prometheus: Arc::clone(&self.prometheus),
            tasks: self.tasks.clone(),
        }
    }
}

fn router<W: World>(state: AppState<W>) -> Router {
    Router::new()
        .route("/ws", get(ws::<W>))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz::<W>))
        .route("/metrics", get(metrics_text::<W>))
        .with_state(state)
}

/// The WebSocket upgrade. The encoding is the first subprotocol the client names that
/// the server speaks (bincode when it names none; 400 when it names only others). A
/// connection that finds no place among those waiting to join is refused here (503,
/// `Retry-After: 1`), before it costs a WebSocket.
async fn ws<W: World>(
    State(s): State<AppState<W>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let encoding = match choose_encoding(&headers) {
        Ok(encoding) => encoding,
        Err(refusal) => return (StatusCode::BAD_REQUEST, refusal).into_response(),
    };
    let place = match s.unjoined.admit(peer.ip()) {
        Ok(place) => place,
        Err(refused) => {
            s.ctx.metrics.count_close("unjoined_full");
            let retry = [(axum::http::header::RETRY_AFTER, "1")];
            return (StatusCode::SERVICE_UNAVAILABLE, retry, refused.to_string()).into_response();
        }
    };
    let tasks = s.tasks.clone();
    upgrade
        // Client frames are small: small buffers keep connections cheap (tungstenite's
        // default read buffer is 128 KiB per connection).
        .read_buffer_size(4 * 1024)
        .write_buffer_size(4 * 1024)
        // The protocol's limit, enforced by the WebSocket layer before a frame is read.
        .max_message_size(MAX_CLIENT_FRAME)
        .max_frame_size(MAX_CLIENT_FRAME)
        .protocols(encoding.map(Encoding::subprotocol))
        .on_upgrade(move |socket| {
            tasks.track_future(conn::serve(socket, s.ctx, place, encoding.unwrap_or(Encoding::Bincode)))
        })
}

/// The encoding a handshake asks for: `None` when it names no subprotocol (bincode, and
/// no `Sec-WebSocket-Protocol` in the answer), else the first named that we speak.
fn choose_encoding(headers: &axum::http::HeaderMap) -> Result<Option<Encoding>, String> {
    let named: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .collect();
    if named.is_empty() {
        return Ok(None);
    }
    match named.iter().find_map(|name| Encoding::from_subprotocol(name)) {
        Some(encoding) => Ok(Some(encoding)),
        None => {
            let spoken: Vec<&str> = Encoding::ALL.iter().map(|e| e.subprotocol()).collect();
            Err(format!(
                "no subprotocol of {} is spoken here; this server speaks {} (bincode when none is named)",
                named.join(", "),
                spoken.join(", ")
            ))
        }
    }
}

/// 200 while the server takes worlds and its checkpoints are being written; 503 while it
/// drains or stops, or while a checkpoint tier fails. The body says which, with each
/// tier's backlog (worlds whose newest checkpoint it does not hold yet).
async fn readyz<W: World>(State(s): State<AppState<W>>) -> Response {
    let mut ready = true;
    let mut text = String::new();
    if s.ctx.rooms.is_draining() || s.ctx.shutdown.is_cancelled() {
        ready = false;
        text.push_str("draining\n");
    }
    for tier in s.tiers.iter().flat_map(|t| t.health()) {
        text.push_str(&format!("checkpoint {}: backlog {} worlds", tier.kind, tier.backlog));
        if let Some((since, error)) = &tier.failing {
            ready = false;
            text.push_str(&format!(", failing for {:.1}s: {error}", since.as_secs_f64()));
        }
        text.push('\n');
    }
    if ready {
        text.insert_str(0, "ok\n");
    }
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, text).into_response()
}

async fn metrics_text<W: World>(State(s): State<AppState<W>>) -> impl IntoResponse {
    s.ctx.metrics.observe_process();
    gaia_serve::metrics(&s.prometheus)
}

/// Runs a game server of the reference world ([`Town`]); see [`run_world`].
pub async fn run(config: Config, listener: TcpListener, stop: impl Into<Stop>) -> Result<(), Error> {
    let model = config.ops.llm_url.is_some();
    let agents = config.agents_per_world.unwrap_or(if model { config.bots_per_world } else { 0 });
    if agents > 0 && !model {
        tracing::warn!(
            agents,
            "GAIA_AGENTS_PER_WORLD without GAIA_LLM_URL: the agents' model calls fail, and they say their scripted lines"
        );
    }
    if config.town_width == 0 || config.town_height == 0 {
        return Err(Error::Config("GAIA_TOWN_WIDTH and GAIA_TOWN_HEIGHT must be at least 1".into()));
    }
    let (width, height) = (config.town_width, config.town_height);
    let town = TownConfig { width, height, bots: config.bots_per_world, agents, ..TownConfig::default() };
    let new_world: NewWorld<Town> =
        Arc::new(move |world_id: &str| Town::new(town, seed_of(world_id)).in_world(world_id));
    run_world(config, listener, new_world, stop).await
}

/// Opens the checkpoint tiers the config names: hot first, then durable. An empty URL
/// counts as unset, so a fleet template can turn off a store its deployment sets. Also
/// answers the durable tier's SQL store, when it is one, for the activity log to share.
async fn open_tiers(config: &Config) -> Result<(Vec<Tier>, Option<gaia_checkpoint::SqlStore>), Error> {
    let mut tiers = Vec::new();
    let mut sql = None;
    let set = |url: &Option<String>| url.clone().filter(|u| !u.is_empty());
    let hot = set(&config.redis_url).is_some();
    for (url, every) in [
        (set(&config.redis_url), config.checkpoint_every),
        (set(&config.database_url), if hot { config.durable_every } else { config.checkpoint_every }),
    ] {
        let Some(url) = url else { continue };
        let failed = |source| Error::Store { url: gaia_checkpoint::redact(&url), source };
        let store: Arc<dyn gaia_checkpoint::Store> = if url.starts_with("postgres") || url.starts_with("sqlite:") {
            let store = gaia_checkpoint::SqlStore::connect(&url).await.map_err(failed)?;
            sql = Some(store.clone());
            Arc::new(store)
        } else {
            // Redis, or a URL `open` refuses with its reason.
            gaia_checkpoint::open(&url).await.map_err(failed)?
        };
        tiers.push(Tier { store, every });
    }
    Ok((tiers, sql))
}

/// Runs a game server of worlds made by `new_world` on `listener` until told to stop.
/// On [`Stop::shutdown`] it stops accepting, every world finishes its tick, sends it and
/// is checkpointed, clients are closed with `GOING_AWAY`, the checkpoints are written,
/// and the control plane hears `shutdown`. On [`Stop::drain`] (or when the control
/// plane marks it Draining) it first moves every world to another server.
pub async fn run_world<W: World>(
    config: Config,
    listener: TcpListener,
    new_world: NewWorld<W>,
    stop: impl Into<Stop>,
) -> Result<(), Error> {
    let stop = stop.into();
    if config.join_secret.is_empty() {
        return Err(Error::Config("GAIA_JOIN_SECRET must not be empty".into()));
    }
    if config.tick_hz == 0 || config.tick_hz > 1000 {
        return Err(Error::Config("GAIA_TICK_HZ must be 1 to 1000".into()));
    }
    if config.delta_hz == 0 || !config.tick_hz.is_multiple_of(config.delta_hz) {
        let (tick, delta) = (config.tick_hz, config.delta_hz);
        return Err(Error::Config(format!("GAIA_DELTA_HZ ({delta}) must divide GAIA_TICK_HZ ({tick})")));
    }
    let address = address(listener.local_addr()?, config.advertise_host.as_deref());
    let mut prometheus = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::new(&mut prometheus));
    metrics::register_info(&mut prometheus, &config.name, &config.fleet, &config.region);
    // Everything that serves stops on this: at once on shutdown, after the worlds moved
    // on a drain.
    let shutdown = stop.shutdown.child_token();
    let tiers_stop = CancellationToken::new();
    let (tiers, sql) = open_tiers(&config).await?;
    if tiers.is_empty() {
        tracing::warn!("no GAIA_REDIS_URL or GAIA_DATABASE_URL: worlds are not checkpointed and die with this server");
    }
    let tiers = (!tiers.is_empty()).then(|| {
        let metrics = Arc::new(gaia_checkpoint::Metrics::new(&mut prometheus));
        Tiers::start(tiers, metrics, tiers_stop.clone())
    });
    // The activity log lives in the durable SQL store, beside the checkpoints.
    let log_stop = CancellationToken::new();
    // So do the agents' memories; without a durable store, an index in this process.
    let sql = sql.map(Arc::new);
    let memory_store = sql.clone().map(|store| store as Arc<dyn gaia_checkpoint::MemoryStore>);
    let log = sql.map(|store| {
        let metrics = gaia_checkpoint::LogMetrics::new(&mut prometheus);
        gaia_checkpoint::LogWriter::start(store, metrics, log_stop.clone())
    });
    let (world_events, world_events_rx) = mpsc::unbounded_channel();
    let room_config = RoomConfig {
        tick: Duration::from_secs(1) / config.tick_hz,
        send_every: config.tick_hz / config.delta_hz,
        max_players: config.world_player_capacity as usize,
        max_spectators: config.world_spectator_capacity as usize,
        max_worlds: config.world_capacity as usize,
        empty_grace: config.empty_world_grace,
        member_queue: config.client_queue.max(2),
        max_behind: config.max_behind,
        recent_messages: usize::from(config.world_recent_messages),
        resume: (!config.resume_grace.is_zero()).then(|| ResumeConfig {
            key: TokenKey::new(config.join_secret.as_bytes()),
            server: config.name.clone(),
            grace: config.resume_grace,
            keep_results: config.idle_timeout,
        }),
    };
    let persistence = tiers.as_ref().map(|tiers| Persistence {
        tiers: Arc::clone(tiers),
        every_ticks: (config.checkpoint_every.as_secs_f64() * f64::from(config.tick_hz)).round().max(1.0) as u64,
        load_timeout: config.load_timeout,
        log: log.as_ref().map(|(writer, _)| writer.clone()),
    });
    let sdk = match &config.sdk_url {
        Some(url) => Some(connect(&config, url, &address).await?),
        None => {
            tracing::warn!("no GAIA_SDK_URL: running standalone, the control plane hears nothing");
            None
        }
    };
    let migration = sdk.as_ref().map(|sdk| Migration {
        mover: Arc::new(SdkMover(sdk.clone())),
        key: TokenKey::new(config.join_secret.as_bytes()),
        token_ttl: Duration::from_secs(30),
        timeout: config.drain_timeout,
    });
    let ops_metrics = Arc::new(gaia_ops::Metrics::new(&mut prometheus));
    let lanes = config.ops.lanes(&ops_metrics).map_err(|e| Error::Config(format!("operations: {e}")))?;
    let memories = Arc::new(memory::Memories::over(memory_store));
    let ops = Arc::new(lanes.lane(gaia_ops::Kind::Memory, memories, memory::Memories::lane()).build(ops_metrics));
    let rooms = Rooms::new(
        room_config.clone(),
        new_world,
        world_events,
        Arc::clone(&metrics),
        shutdown.clone(),
        persistence,
        migration,
        ops,
    );
    let ctx = Arc::new(Ctx {
        server_name: config.name.clone(),
        key: TokenKey::new(config.join_secret.as_bytes()),
        rooms: Arc::clone(&rooms),
        metrics,
        shutdown: shutdown.clone(),
        join_timeout: config.join_timeout,
        idle_timeout: config.idle_timeout,
        // Longer than the world's own patience, so a slow reader is resynced or dropped
        // by its world first; this catches one that stopped reading altogether.
        write_timeout: config.max_behind * 2,
        member_queue: room_config.member_queue,
        frame_rate: config.client_frame_rate,
        frame_burst: config.client_frame_burst,
        players: Default::default(),
        slots: Arc::new(Semaphore::new(config.player_capacity as usize)),
        player_capacity: config.player_capacity,
    });
    let tasks = TaskTracker::new();
    let state = AppState {
        ctx: Arc::clone(&ctx),
        tiers: tiers.clone(),
        unjoined: Arc::new(Unjoined::new(config.unjoined_capacity as usize, config.unjoined_per_address)),
        prometheus: Arc::new(prometheus),
        tasks: tasks.clone(),
    };

    let background = CancellationToken::new();
    let mut reporters = Vec::new();
    let mut record = None;
    if let Some(sdk) = &sdk {
        let period = Duration::from_secs(config.health_period_seconds.max(1).into());
        reporters.push(sdk.spawn_health(period, background.clone()));
        reporters.push(tokio::spawn(report_worlds(sdk.clone(), world_events_rx)));
        reporters.push(tokio::spawn(report_players(sdk.clone(), Arc::clone(&ctx), period, background.clone())));
        record = Some(sdk.spawn_watch(background.clone()));
    }
    reporters.push(tokio::spawn(drain_when_told(
        stop.drain.clone(),
        record,
        sdk.clone(),
        Arc::clone(&rooms),
        config.drain_timeout,
        shutdown.clone(),
    )));
    tracing::info!(name = %config.name, %address, "game server serving");

    // Small frames must not wait for Nagle's algorithm.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let served = gaia_serve::serve(listener, router(state), shutdown.clone()).await;
    // Connections and worlds see the same token; give them a moment to say goodbye.
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(5), async {
        tasks.wait().await;
        rooms.closed().await;
    })
    .await
    .is_err()
    {
        tracing::warn!("connections did not close within 5 s");
    }
    // The worlds' last checkpoints are pending: write them before saying goodbye.
    if let Some(tiers) = &tiers {
        match tokio::time::timeout(Duration::from_secs(5), tiers.flush()).await {
            Ok(Ok(())) => tracing::info!("final checkpoints written"),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "final checkpoints not written; worlds lose what changed since the last one")
            }
            Err(_) => {
                tracing::error!("final checkpoints not written within 5 s; worlds lose what changed since the last one")
            }
        }
        tiers_stop.cancel();
    }
    if let Some((_, task)) = log {
        log_stop.cancel();
        if tokio::time::timeout(Duration::from_secs(5), task).await.is_err() {
            tracing::warn!("the activity log's last messages not written within 5 s");
        }
    }
    background.cancel();
    if let Some(sdk) = &sdk {
        match sdk.shutdown().await {
            // Already Shutdown (the controller retired us) or gone: nothing to say.
            Ok(_) | Err(SdkError::Refused { status: 404 | 409, .. }) => {}
            Err(e) => tracing::warn!(error = %e, "could not tell the control plane we shut down"),
        }
    }
    for task in reporters {
        task.abort();
    }
    served?;
    Ok(())
}

/// Registers with the control plane and marks the server Ready. Retries for a while:
/// the control plane may still be starting.
async fn connect(config: &Config, url: &str, address: &str) -> Result<Sdk, Error> {
    let mut sdk = Sdk::new(url, &config.name)?.with_token(config.sdk_token.clone())?;
    if let Some(path) = &config.sdk_ca_file {
        let pem =
            std::fs::read(path).map_err(|e| Error::Config(format!("GAIA_SDK_CA_FILE {}: {e}", path.display())))?;
        sdk = sdk.with_root_certificate(&pem)?;
    }
    let req = RegisterRequest {
        fleet: config.fleet.clone(),
        region: config.region.clone(),
        address: address.to_string(),
        world_capacity: config.world_capacity,
        player_capacity: config.player_capacity,
        labels: Default::default(),
        health: gaia_api::fleet::HealthSpec { period_seconds: config.health_period_seconds, ..Default::default() },
    };
    let mut delay = Duration::from_millis(100);
    for attempt in 1.. {
        match sdk.register(&req).await {
            Ok(_) => break,
            Err(SdkError::Transport(e)) if attempt < 10 => {
                tracing::warn!(error = %e, "control plane not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e.into()),
        }
    }
    sdk.ready().await?;
    Ok(sdk)
}

/// Tells the control plane about world starts and ends, in order. A call that fails for
/// lack of a connection is retried a few times: a lost `ended` would hold a slot.
async fn report_worlds(sdk: Sdk, mut events: mpsc::UnboundedReceiver<WorldEvent>) {
    while let Some(event) = events.recv().await {
        for attempt in 1..=5u32 {
            let result = match &event {
                WorldEvent::Started { world_id, epoch } => sdk.world_started(world_id, *epoch).await,
                WorldEvent::Ended(id) => sdk.world_ended(id).await,
            };
            match result {
                Ok(()) => break,
                Err(SdkError::Transport(e)) if attempt < 5 => {
                    tracing::warn!(?event, error = %e, "world report failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200) * attempt).await;
                }
                Err(e) => {
                    tracing::warn!(?event, error = %e, "world report refused");
                    break;
                }
            }
        }
    }
}

/// The control plane's side of a move, through the SDK.
struct SdkMover(Sdk);

#[async_trait::async_trait]
impl Mover for SdkMover {
    async fn move_world(&self, world_id: &str) -> Result<Destination, String> {
        let moved = self.0.move_world(world_id).await.map_err(|e| e.to_string())?;
        Ok(Destination { server: moved.server, address: moved.address, epoch: moved.epoch })
    }
}

/// Waits for a drain (`drain`, or the control plane marking this server Draining), moves
/// every world away, then stops the server through `shutdown`.
async fn drain_when_told<W: World>(
    drain: CancellationToken,
    record: Option<tokio::sync::watch::Receiver<Option<gaia_api::gameserver::GameServer>>>,
    sdk: Option<Sdk>,
    rooms: Arc<Rooms<W>>,
    timeout: Duration,
    shutdown: CancellationToken,
) {
    let marked_draining = async {
        match record {
            Some(mut record) => {
                let draining = |r: &Option<gaia_api::gameserver::GameServer>| {
                    r.as_ref().is_some_and(|s| s.state == gaia_api::gameserver::GameServerState::Draining)
                };
                if record.wait_for(draining).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = marked_draining => tracing::info!("the control plane marked this server Draining"),
        _ = drain.cancelled() => {
            tracing::info!("asked to drain");
            // No new world may land here while the old ones move away.
            if let Some(sdk) = &sdk {
                match sdk.drain().await {
                    // Refused when retired already (Shutdown): nothing can land here anyway.
                    Ok(_) | Err(SdkError::Refused { status: 404 | 409, .. }) => {}
                    Err(e) => tracing::warn!(error = %e, "could not mark this server Draining"),
                }
            }
        }
    }
    let started = tokio::time::Instant::now();
    let worlds = rooms.worlds();
    rooms.drain();
    // Each world gives up on its move at `timeout`; the margin covers its last writes.
    if tokio::time::timeout(timeout + Duration::from_secs(2), rooms.closed()).await.is_err() {
        tracing::warn!("worlds still running after the drain timeout; stopping anyway");
    }
    tracing::info!(worlds, took = ?started.elapsed(), "drained");
    shutdown.cancel();
}

/// Reports the player count every `period` when it changed.
async fn report_players<W: World>(sdk: Sdk, ctx: Arc<Ctx<W>>, period: Duration, stop: CancellationToken) {
    let mut last = 0;
    let mut ticker = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = ctx.players.load(Ordering::Relaxed);
        if now != last {
            match sdk.set_players(now).await {
                Ok(()) => last = now,
                Err(e) => tracing::debug!(error = %e, "player count report failed"),
            }
        }
    }
}
