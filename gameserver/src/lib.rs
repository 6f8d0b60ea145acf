//! The Gaia Fleet game server: hosts worlds in memory, ticks them and streams deltas to
//! clients over WebSocket.
//!
//! - [`world`]: the [`World`](world::World) trait a game implements. Start here.
//! - [`engine`]: one fixed step of one world, pure: events in, changes and results out.
//! - [`town`]: the reference AI-Town-style world.
//! - [`room`]: the runtime: one task per world, shared delta encoding, slow readers.
//! - [`conn`]: one client connection (Join with a token, inputs, limits, close reasons).
//! - [`agent`]: the town's agents; [`memory`]: the lane that keeps their memories.
//! - this file: [`bind`] and [`run`]/[`run_world`], which put a server together: the
//!   routes (`router.rs`: `/ws`, `/livez`, `/readyz`, `/metrics`), the checkpoint stores
//!   (`stores.rs`), the control plane through the SDK (`control_plane.rs`: register,
//!   world starts/ends, player counts, moves, drain), and the stop: [`Stop::shutdown`]
//!   checkpoints every world and lets clients go; [`Stop::drain`] (or the control plane
//!   marking the server Draining) first moves every world to another server.
//! - [`Config`] (`config.rs`): what a server is told; [`Error`] (`error.rs`).

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

mod config;
mod control_plane;
mod error;
mod router;
mod stores;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use gaia_api::token::TokenKey;
use gaia_sdk::SdkError;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use gaia_checkpoint::Tiers;

use crate::conn::Ctx;
use crate::control_plane::{SdkMover, connect, drain_when_told, report_players, report_worlds};
use crate::metrics::Metrics;
use crate::room::{Migration, Persistence, Rooms};
use crate::router::{AppState, router};
use crate::stores::open_tiers;
use crate::town::{Town, TownConfig};
use crate::unjoined::Unjoined;
use crate::world::{NewWorld, World, seed_of};

pub use config::{Config, Stop};
pub use error::Error;

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
    config.validate()?;
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
    let room_config = config.room_config();
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
