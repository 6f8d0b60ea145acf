//! `gaia controller` and `gaia fleet-autoscaler`: the Kubernetes components (see
//! docs/kubernetes.md). Each watches one namespace (one game), shares the Redis registry
//! with the allocators, runs only while it holds its Lease (so two replicas can run, one
//! acting), and serves `/livez`, `/readyz` and `/metrics` on its admin port. `gaia crdgen`
//! writes the CRDs they need.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use gaia_registry::{Registry, RegistryConfig};
use tokio_util::sync::CancellationToken;

/// What both components take.
#[derive(clap::Args)]
pub struct ClusterArgs {
    /// The namespace watched: one game per namespace.
    #[arg(long, env = "GAIA_NAMESPACE", default_value = "default")]
    namespace: String,
    /// This replica's name in leader election (the Pod's name); a random one when unset.
    #[arg(long, env = "GAIA_POD_NAME")]
    identity: Option<String>,
    /// The registry the allocators share (`redis://host:port`).
    #[arg(long, env = "GAIA_REGISTRY_REDIS_URL")]
    redis_url: String,
    #[arg(long, env = "GAIA_REGISTRY_PREFIX", default_value = "gaia:")]
    redis_prefix: String,
    /// How long the Lease holds after its holder's last renewal (a standby takes over
    /// after this when the leader dies).
    #[arg(long, env = "GAIA_LEADER_LEASE", default_value = "15s", value_parser = humantime::parse_duration)]
    leader_lease: Duration,
}

#[derive(clap::Args)]
pub struct CrdgenArgs {
    /// Where to write them: one file per kind and a kustomization.yaml.
    #[arg(long, default_value = "manifests/crds")]
    out: std::path::PathBuf,
}

/// Writes the CRDs, naming each file written.
pub fn crdgen(args: &CrdgenArgs) -> anyhow::Result<()> {
    for path in gaia_k8s::crds::write(&args.out)? {
        println!("wrote {}", path.display());
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct ControllerArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Serves /livez, /readyz and /metrics.
    #[arg(long, env = "GAIA_ADMIN_LISTEN", default_value = "0.0.0.0:7710")]
    admin_listen: SocketAddr,
    /// Where game servers reach the SDK API (the allocator Service).
    #[arg(long, env = "GAIA_SDK_URL", default_value = "http://gaia-allocator:7700")]
    sdk_url: String,
    /// Each game server's SDK token is derived from it; the allocators check them.
    #[arg(long, env = "GAIA_SDK_SECRET", hide_env_values = true)]
    sdk_secret: Option<String>,
    /// Every Fleet is reconciled at least this often.
    #[arg(long, env = "GAIA_RESYNC", default_value = "2s", value_parser = humantime::parse_duration)]
    resync: Duration,
}

#[derive(clap::Args)]
pub struct AutoscalerArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Serves /livez, /readyz and /metrics.
    #[arg(long, env = "GAIA_ADMIN_LISTEN", default_value = "0.0.0.0:7720")]
    admin_listen: SocketAddr,
}

pub async fn controller(args: ControllerArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let prometheus = prometheus_client::registry::Registry::default();
    let settings = gaia_k8s::controller::Settings {
        namespace: args.cluster.namespace.clone(),
        pods: gaia_k8s::pods::PodSettings {
            sdk_url: args.sdk_url,
            sdk_key: args.sdk_secret.filter(|s| !s.is_empty()).map(gaia_api::token::TokenKey::new),
            ..Default::default()
        },
        resync: args.resync,
    };
    serve(args.cluster, args.admin_listen, "gaia-controller", prometheus, shutdown, move |client, registry, lost| {
        let settings = settings.clone();
        async move { gaia_k8s::controller::run(settings, client, registry, lost).await }
    })
    .await
}

pub async fn fleet_autoscaler(args: AutoscalerArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut prometheus = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(gaia_fleet_autoscaler::Metrics::new(&mut prometheus));
    let namespace = args.cluster.namespace.clone();
    serve(
        args.cluster,
        args.admin_listen,
        "gaia-fleet-autoscaler",
        prometheus,
        shutdown,
        move |client, registry, lost| {
            let settings = gaia_k8s::autoscaler::Settings {
                namespace: namespace.clone(),
                autoscaler: gaia_fleet_autoscaler::Settings { metrics: Some(metrics.clone()), ..Default::default() },
                ..Default::default()
            };
            async move { gaia_k8s::autoscaler::run(settings, client, registry, lost).await }
        },
    )
    .await
}

/// Connects to the cluster and the registry, serves the admin endpoints, and runs `work`
/// whenever this replica holds the Lease `lease`. A start-up error of `work` (a missing
/// CRD) ends the process with it.
async fn serve<F, Fut>(
    cluster: ClusterArgs,
    admin: SocketAddr,
    lease: &str,
    prometheus: prometheus_client::registry::Registry,
    shutdown: CancellationToken,
    work: F,
) -> anyhow::Result<()>
where
    F: Fn(kube::Client, Arc<dyn Registry>, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), gaia_k8s::Error>>,
{
    let client = kube::Client::try_default().await.context("connecting to the Kubernetes API")?;
    let registry: Arc<dyn Registry> = Arc::new(
        gaia_registry::redis::RedisRegistry::connect(
            &cluster.redis_url,
            &cluster.redis_prefix,
            RegistryConfig::default(),
        )
        .await
        .with_context(|| format!("connecting to the registry at {}", gaia_checkpoint::redact(&cluster.redis_url)))?,
    );
    let listener = tokio::net::TcpListener::bind(admin).await.with_context(|| format!("binding {admin}"))?;
    let admin_server = tokio::spawn(admin_endpoints(listener, prometheus, shutdown.clone()));
    let identity = cluster.identity.clone().unwrap_or_else(|| format!("{lease}-{}", uuid::Uuid::new_v4().simple()));
    let error: Arc<std::sync::Mutex<Option<gaia_k8s::Error>>> = Arc::default();
    let stop = shutdown.child_token();
    let elected = gaia_k8s::leader::run_as_leader(
        client.clone(),
        &cluster.namespace,
        lease,
        &identity,
        cluster.leader_lease,
        stop.clone(),
        |lost| {
            let work = work(client.clone(), registry.clone(), lost);
            let (error, stop) = (error.clone(), stop.clone());
            async move {
                if let Err(e) = work.await {
                    // Nothing a standby could do better: stop this replica with the reason.
                    if let Ok(mut slot) = error.lock() {
                        *slot = Some(e);
                    }
                    stop.cancel();
                }
            }
        },
    )
    .await;
    shutdown.cancel();
    admin_server.await.context("admin endpoints")??;
    if let Some(e) = error.lock().ok().and_then(|mut slot| slot.take()) {
        return Err(e).context(lease.to_string());
    }
    elected.with_context(|| format!("leader election ({lease})"))
}

async fn admin_endpoints(
    listener: tokio::net::TcpListener,
    prometheus: prometheus_client::registry::Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let prometheus = Arc::new(prometheus);
    let app = Router::new().route("/livez", get(|| async { "ok" })).route("/readyz", get(|| async { "ok" })).route(
        "/metrics",
        get(move || {
            let prometheus = prometheus.clone();
            async move { gaia_serve::metrics(&prometheus) }
        }),
    );
    gaia_serve::serve(listener, app, shutdown).await.context("serving")
}
