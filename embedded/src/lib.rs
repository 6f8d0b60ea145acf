//! Embedded mode: the whole control plane in one process, from one fleet YAML.
//!
//! [`run`] wires the in-memory registry, the allocator API (which also serves the
//! game servers' SDK calls), the registry sweeper, the fleet autoscaler and the local
//! controller, which starts game servers as child processes. No external service is
//! needed. If any part stops, every part stops. On shutdown the controller stops its
//! game servers first, so they can still tell the API goodbye, and the API stops last.
//!
//! Checkpoints: the game servers get [`Config::redis_url`] and [`Config::database_url`]
//! (`GAIA_REDIS_URL`, `GAIA_DATABASE_URL`). With neither set, worlds are checkpointed to
//! a SQLite file under [`Config::data_dir`], so the embedded fleet needs no service.
//!
//! Authentication: SDK calls always need the calling server's own token here: with no
//! [`Config::sdk_secret`] a random one is made at start and handed to the allocator and
//! the controller, which gives each game server its token. Matchmakers need a token only
//! when [`Config::matchmaker_tokens`] names some. With [`Config::tls`] the API serves
//! HTTPS only, and the game servers are told to trust its certificate.

use std::sync::Arc;
use std::time::Duration;

use gaia_api::fleet::FleetConfig;
use gaia_api::server_env as var;
use gaia_registry::{MemoryRegistry, Registry, RegistryConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use gaia_allocator::TlsFiles;

/// The fleet `gaia run` and `gaia loadgen` use when given no `--config`:
/// examples/fleet.yaml, one AI-Town-style fleet in two regions.
pub const EXAMPLE_FLEET: &str = include_str!("../../examples/fleet.yaml");

#[derive(Debug, Clone)]
pub struct Config {
    pub fleets: FleetConfig,
    /// Signs join tokens; handed to every game server. Random when empty.
    pub join_secret: String,
    /// Bearer tokens matchmakers present (`/v1/allocations`, the fleet reads); empty:
    /// those endpoints are open.
    pub matchmaker_tokens: Vec<String>,
    /// Derives each game server's SDK token; random when unset, so SDK calls are always
    /// authenticated. Set it to compute tokens outside (`gaia sdk-token`).
    pub sdk_secret: Option<String>,
    /// Serve the API over HTTPS only, with this certificate and key. The game servers
    /// reach it at `https://{listen address}` and trust the certificate
    /// (`GAIA_SDK_CA_FILE`), so it must name that address.
    pub tls: Option<TlsFiles>,
    pub registry: RegistryConfig,
    /// How often leases and health are checked.
    pub sweep_every: Duration,
    pub controller_reconcile: Duration,
    /// Hot checkpoint tier for the game servers (`redis://…`).
    pub redis_url: Option<String>,
    /// Durable checkpoint tier for the game servers (`postgres://…` or `sqlite:path`).
    pub database_url: Option<String>,
    /// Where the default SQLite checkpoint file lives (created if missing).
    pub data_dir: std::path::PathBuf,
    /// Reloaded fleet configs (`gaia run` sends them on SIGHUP): a fleet whose template
    /// changed is rolled, one server at a time; autoscalers take their new policies at
    /// once. Regions are read at start only.
    pub fleet_updates: Option<tokio::sync::watch::Receiver<FleetConfig>>,
}

impl Config {
    pub fn new(fleets: FleetConfig) -> Self {
        Self {
            fleets,
            join_secret: String::new(),
            matchmaker_tokens: Vec::new(),
            sdk_secret: None,
            tls: None,
            registry: RegistryConfig::default(),
            sweep_every: Duration::from_millis(250),
            controller_reconcile: Duration::from_millis(500),
            redis_url: None,
            database_url: None,
            data_dir: "gaia-data".into(),
            fleet_updates: None,
        }
    }

    /// The checkpoint settings every game server gets: the configured stores, or a SQLite
    /// file in `data_dir` (made absolute: the servers may run elsewhere).
    fn server_env(&self) -> Result<std::collections::BTreeMap<String, String>, Error> {
        let mut env = std::collections::BTreeMap::new();
        if let Some(url) = &self.redis_url {
            env.insert(var::REDIS_URL.to_string(), url.clone());
        }
        let database = match (&self.database_url, &self.redis_url) {
            (Some(url), _) => Some(url.clone()),
            (None, Some(_)) => None,
            (None, None) => {
                std::fs::create_dir_all(&self.data_dir).map_err(|e| Error::DataDir(self.data_dir.clone(), e))?;
                let dir =
                    std::fs::canonicalize(&self.data_dir).map_err(|e| Error::DataDir(self.data_dir.clone(), e))?;
                Some(format!("sqlite:{}", dir.join("checkpoints.sqlite").display()))
            }
        };
        if let Some(url) = database {
            env.insert(var::DATABASE_URL.to_string(), url);
        }
        if let Some(tls) = &self.tls {
            let cert = std::fs::canonicalize(&tls.cert).map_err(|e| {
                Error::Tls(gaia_allocator::TlsError::Cert { path: tls.cert.clone(), message: e.to_string() })
            })?;
            env.insert(var::SDK_CA_FILE.to_string(), cert.display().to_string());
        }
        Ok(env)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("control-plane API: {0}")]
    Api(std::io::Error),
    #[error("controller: {0}")]
    Controller(#[from] gaia_controller::ControllerError),
    #[error("a component stopped unexpectedly: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("data directory {0}: {1}")]
    DataDir(std::path::PathBuf, std::io::Error),
    #[error(transparent)]
    Tls(#[from] gaia_allocator::TlsError),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Api(_) => "api",
            Self::Controller(_) => "controller",
            Self::Join(_) => "join",
            Self::DataDir(..) => "data_dir",
            Self::Tls(_) => "tls",
        }
    }
}

/// Runs the embedded fleet on `listener` until `shutdown` (or until a part fails).
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) -> Result<(), Error> {
    // A bad certificate stops the fleet before anything starts.
    let tls = config.tls.as_ref().map(TlsFiles::load).transpose()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}", listener.local_addr().map_err(Error::Api)?);
    let server_env = config.server_env()?;
    let random = || uuid::Uuid::new_v4().simple().to_string();
    let join_secret = if config.join_secret.is_empty() { random() } else { config.join_secret.clone() };
    let sdk_secret = config.sdk_secret.clone().filter(|s| !s.is_empty()).unwrap_or_else(random);
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new(config.registry.clone()));
    let mut prometheus = prometheus_client::registry::Registry::default();
    let allocator_metrics = gaia_allocator::Metrics::new(&mut prometheus);
    let controller_metrics = Arc::new(gaia_controller::Metrics::new(&mut prometheus));
    let autoscaler_metrics = Arc::new(gaia_fleet_autoscaler::Metrics::new(&mut prometheus));
    let allocator_config = gaia_allocator::Config {
        join_secret: join_secret.clone(),
        matchmaker_tokens: config.matchmaker_tokens.clone(),
        sdk_secret: Some(sdk_secret.clone()),
        ..Default::default()
    };
    let mut state = gaia_allocator::AppState::new(
        &allocator_config,
        Arc::clone(&registry),
        allocator_metrics,
        Arc::new(prometheus),
    );
    if let Some(tls) = tls {
        state = state.with_tls(tls);
    }
    let (status_tx, status_rx) = tokio::sync::watch::channel(gaia_fleet_autoscaler::Statuses::new());
    state = state.with_autoscaler_status(status_rx);
    // The activity log the game servers write, read back for `GET /v1/worlds/{id}/messages`.
    if let Some(url) = server_env.get(var::DATABASE_URL) {
        match gaia_checkpoint::SqlStore::connect(url).await {
            Ok(store) => state = state.with_message_log(Arc::new(store)),
            Err(e) => {
                tracing::warn!(error = %e, "the activity log cannot be read: GET /v1/worlds/{{id}}/messages answers 404")
            }
        }
    }

    // Every part runs under `parts`, and the API or the controller ending for any reason
    // ends them all. The API has its own token so it outlives the controller's goodbyes.
    let parts = shutdown.child_token();
    let api_stop = CancellationToken::new();
    let sweeper = tokio::spawn(gaia_allocator::run_sweeper(state.clone(), config.sweep_every, parts.clone()));
    let api = tokio::spawn(stop_all_after(parts.clone(), gaia_allocator::run(listener, state, api_stop.clone())));
    let initial = gaia_fleet_autoscaler::initial_desired(&config.fleets, chrono::Utc::now());
    let (desired_tx, desired_rx) = tokio::sync::watch::channel(initial);
    let autoscaler = tokio::spawn(gaia_fleet_autoscaler::run(
        config.fleets.clone(),
        Arc::clone(&registry),
        desired_tx,
        gaia_fleet_autoscaler::Settings {
            metrics: Some(autoscaler_metrics),
            status: Some(status_tx),
            updates: config.fleet_updates.clone(),
            ..Default::default()
        },
        parts.clone(),
    ));
    let controller_config = gaia_controller::Config {
        sdk_url: url.clone(),
        join_secret,
        sdk_secret: Some(sdk_secret),
        reconcile_every: config.controller_reconcile,
        env: server_env,
        updates: config.fleet_updates.clone(),
        metrics: Some(controller_metrics),
        ..Default::default()
    };
    let controller = tokio::spawn(stop_all_after(
        parts.clone(),
        gaia_controller::run(
            controller_config,
            config.fleets.fleets.clone(),
            Arc::clone(&registry),
            desired_rx,
            parts.clone(),
        ),
    ));
    tracing::info!(%url, fleets = config.fleets.fleets.len(), "embedded fleet running");

    parts.cancelled().await;
    // The controller stops its game servers while the API can still hear them; then the API.
    let controller = controller.await.map_err(Error::from).and_then(|r| r.map_err(Error::from));
    api_stop.cancel();
    let api = api.await.map_err(Error::from).and_then(|r| r.map_err(Error::Api));
    let _ = tokio::join!(sweeper, autoscaler);
    for result in [&controller, &api] {
        if let Err(e) = result {
            tracing::error!(error = %e, "embedded fleet part failed");
        }
    }
    controller.and(api)
}

/// Runs `part`, then cancels `parts`: whichever part ends first ends the rest.
async fn stop_all_after<T>(parts: CancellationToken, part: impl std::future::Future<Output = T>) -> T {
    let out = part.await;
    parts.cancel();
    out
}
