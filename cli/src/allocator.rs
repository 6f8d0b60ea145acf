//! `gaia allocator`: the control-plane API on its own (services mode), over the in-memory
//! registry or, with `--redis-url`, a Redis registry that any number of allocator
//! processes share. Each process also sweeps the registry (leases, health); sweeps are
//! atomic, so several sweepers are safe. With `--database-url` it serves the worlds'
//! activity log from the store the game servers write it to.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gaia_registry::{MemoryRegistry, Registry, RegistryConfig};
use tokio_util::sync::CancellationToken;

use crate::auth::{ApiAuthArgs, TlsArgs};

#[derive(clap::Args)]
pub struct AllocatorArgs {
    #[arg(long, env = "GAIA_API_LISTEN", default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// Registry shared by every allocator process (`redis://host:port`); in this process's
    /// memory when unset (then run only one allocator).
    #[arg(long, env = "GAIA_REGISTRY_REDIS_URL")]
    redis_url: Option<String>,
    /// Prefix of every registry key in Redis: one per deployment sharing a Redis.
    #[arg(long, env = "GAIA_REGISTRY_PREFIX", default_value = "gaia:")]
    redis_prefix: String,
    /// Join-token secret; the game servers must have the same (`GAIA_JOIN_SECRET`).
    #[arg(long, env = "GAIA_JOIN_SECRET", hide_env_values = true)]
    join_secret: String,
    #[command(flatten)]
    leases: LeaseArgs,
    /// How often this process sweeps the registry.
    #[arg(long, env = "GAIA_SWEEP_EVERY", default_value = "250ms", value_parser = humantime::parse_duration)]
    sweep_every: Duration,
    /// The durable store the game servers keep their activity log in (their
    /// `GAIA_DATABASE_URL`, `postgres://...`), read for `GET /v1/worlds/{worldId}/messages`.
    /// Unset: that endpoint answers 404 `no_activity_log`.
    #[arg(long, env = "GAIA_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    #[command(flatten)]
    auth: ApiAuthArgs,
    #[command(flatten)]
    tls: TlsArgs,
}

/// How long an allocation holds its slot (`gaia run` and `gaia allocator`).
#[derive(clap::Args)]
pub struct LeaseArgs {
    /// How long an allocation holds its world slot until the first player joins; then
    /// the slot returns.
    #[arg(long, env = "GAIA_LEASE_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    lease_ttl: Duration,
}

impl LeaseArgs {
    pub fn ttl(&self) -> anyhow::Result<Duration> {
        anyhow::ensure!(!self.lease_ttl.is_zero(), "--lease-ttl (GAIA_LEASE_TTL) must be more than 0");
        Ok(self.lease_ttl)
    }
}

pub async fn run(args: AllocatorArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    anyhow::ensure!(!args.join_secret.is_empty(), "--join-secret (GAIA_JOIN_SECRET) must not be empty");
    // Load the certificate before anything else starts, so a bad file fails at once.
    let tls = args.tls.files().map(|files| files.load()).transpose()?;
    let registry_config = RegistryConfig { lease_ttl: args.leases.ttl()?, ..Default::default() };
    let registry: Arc<dyn Registry> = match &args.redis_url {
        Some(url) => Arc::new(
            gaia_registry::redis::RedisRegistry::connect(url, &args.redis_prefix, registry_config)
                .await
                .with_context(|| format!("connecting to the registry at {}", gaia_checkpoint::redact(url)))?,
        ),
        None => Arc::new(MemoryRegistry::new(registry_config)),
    };
    let mut prometheus = prometheus_client::registry::Registry::default();
    let metrics = gaia_allocator::Metrics::new(&mut prometheus);
    let config = gaia_allocator::Config {
        join_secret: args.join_secret,
        matchmaker_tokens: args.auth.allocator_tokens,
        sdk_secret: args.auth.sdk_secret,
        ..Default::default()
    };
    let mut state = gaia_allocator::AppState::new(&config, registry, metrics, Arc::new(prometheus));
    if let Some(tls) = tls {
        state = state.with_tls(tls);
    }
    if let Some(url) = &args.database_url {
        let store = gaia_checkpoint::SqlStore::connect(url)
            .await
            .with_context(|| format!("connecting to the activity log at {}", gaia_checkpoint::redact(url)))?;
        state = state.with_message_log(Arc::new(store));
    }
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let sweeper = tokio::spawn(gaia_allocator::run_sweeper(state.clone(), args.sweep_every, shutdown.clone()));
    let served = gaia_allocator::run(listener, state, shutdown.clone()).await;
    shutdown.cancel();
    sweeper.await.context("registry sweeper")?;
    served.context("allocator API")
}
