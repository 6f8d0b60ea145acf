//! The Kubernetes controller: each Fleet becomes game-server Pods.
//!
//! [`reconcile`] makes the same decision embedded mode makes ([`gaia_controller::plan`]:
//! what to start, stop, drain or kill, never stopping a server that hosts worlds) from
//! the Fleet's spec, the registry's records and the Pods, and carries it out:
//! - *Start*: the record is scheduled in the registry, then its Pod created
//!   ([`crate::pods::game_server_pod`]) and a GameServer made to mirror it.
//! - *Stop* (an idle server on scale-down): retired in the registry (atomically: an
//!   allocation cannot land on it meanwhile), then its Pod deleted.
//! - *Drain* (a server hosting worlds on scale-down or rolling update): marked Draining;
//!   the server moves its worlds to other servers and exits, and its Pod ends Succeeded.
//! - *Kill*: the Pod of a server the registry gave up on is deleted at once.
//! - A Pod that ended (Failed, or Succeeded after a drain) is deleted, and its record,
//!   if still live, marked Unhealthy, so a replacement is started.
//!
//! Then it mirrors the registry into each GameServer's status and the Fleet's status.
//! It reads Pods and GameServers from reflector stores (no list per reconcile) and is
//! woken by changes to Fleets, their Pods and GameServers, by registry events, and every
//! `resync`. [`run`] wires it into a kube-runtime `Controller`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use gaia_api::fleet::{DesiredReplicas, TEMPLATE_LABEL};
use gaia_api::gameserver::{GameServer as Record, GameServerState};
use gaia_api::k8s::{
    COMPONENT_LABEL, FLEET_LABEL, Fleet, FleetRegionStatus, FleetStatus, GameServer, GameServerSpec, GameServerStatus,
};
use gaia_controller::{Action as Step, Rollout, Rollouts, plan};
use gaia_registry::{Registry, RegistryError};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::pods::{COMPONENT, PodSettings, game_server_pod};

/// The field manager of every write.
pub const MANAGER: &str = "gaia-controller";

#[derive(Clone)]
pub struct Settings {
    /// The namespace watched (one game per namespace).
    pub namespace: String,
    pub pods: PodSettings,
    /// Reconcile every Fleet at least this often (statuses follow the registry).
    pub resync: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self { namespace: "default".into(), pods: PodSettings::default(), resync: Duration::from_secs(2) }
    }
}

/// Names a new server: `{fleet}-{region}-{5 random hex digits}` (tests count instead).
pub type Namer = Box<dyn Fn(&str, &str) -> String + Send + Sync>;

pub struct Context {
    pub client: Client,
    pub registry: Arc<dyn Registry>,
    pub pods: Store<Pod>,
    pub game_servers: Store<GameServer>,
    pub settings: Settings,
    pub namer: Namer,
}

impl Context {
    pub fn new(
        client: Client,
        registry: Arc<dyn Registry>,
        pods: Store<Pod>,
        game_servers: Store<GameServer>,
        settings: Settings,
    ) -> Self {
        let namer: Namer = Box::new(gaia_controller::process::server_name);
        Self { client, registry, pods, game_servers, settings, namer }
    }
}

/// Brings one Fleet's Pods, registry records and statuses in line with its spec.
pub async fn reconcile(fleet: Arc<Fleet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = fleet.name_any();
    let namespace = fleet.namespace().unwrap_or_else(|| ctx.settings.namespace.clone());
    let fleets: Api<Fleet> = Api::namespaced(ctx.client.clone(), &namespace);
    if fleet.meta().deletion_timestamp.is_some() {
        // Its Pods and GameServers go with it (owner references); the sweep retires the
        // records once their heartbeats stop.
        return Ok(Action::await_change());
    }
    if let Err(invalid) = fleet.spec.validate("spec", &name) {
        let status = FleetStatus {
            label_selector: selector(&name),
            observed_generation: fleet.metadata.generation,
            message: Some(invalid.to_string()),
            ..FleetStatus::default()
        };
        write_status(&fleets, &fleet, status).await?;
        return Ok(Action::await_change());
    }
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let servers_api: Api<GameServer> = Api::namespaced(ctx.client.clone(), &namespace);
    let version = fleet.spec.template_version();
    let ours = |labels: &BTreeMap<String, String>| labels.get(FLEET_LABEL) == Some(&name);
    let pods: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(&namespace) && ours(p.labels()))
        .collect();
    // Allocations know the fleet's regions before it has a server.
    let regions: Vec<String> = fleet.spec.regions.iter().map(|r| r.name.clone()).collect();
    ctx.registry.declare_fleet(&name, &regions).await?;
    let mut records = ctx.registry.list(Some(&name)).await?;

    // Pods that ended: the server is gone, so is its Pod; a live record becomes Unhealthy
    // (a replacement follows).
    let mut running = BTreeSet::new();
    // Servers whose Pod and GameServer this round deleted: not mirrored.
    let mut removed = BTreeSet::new();
    for pod in &pods {
        let pod_name = pod.name_any();
        if pod.meta().deletion_timestamp.is_some() {
            continue;
        }
        if !ended(pod) {
            running.insert(pod_name);
            continue;
        }
        if let Some(record) = records.iter_mut().find(|r| r.name == pod_name && !r.state.is_terminal()) {
            tracing::warn!(server = pod_name, phase = ?phase(pod), "game-server pod ended while its server was live");
            match ctx.registry.transition(&pod_name, GameServerState::Unhealthy).await {
                Ok(updated) => *record = updated,
                Err(RegistryError::NotFound(_) | RegistryError::IllegalTransition(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        remove(&pods_api, &servers_api, &pod_name, None).await?;
        removed.insert(pod_name);
    }

    let desired: DesiredReplicas =
        fleet.spec.region_replicas().into_iter().map(|(region, n)| ((name.clone(), region), n)).collect();
    let rollouts: Rollouts =
        [(name.clone(), Rollout { version: version.clone(), strategy: fleet.spec.strategy.rolling_update })].into();
    for step in plan(&rollouts, &desired, &records, &running) {
        match step {
            Step::Start { region, .. } => start(&ctx, &fleet, &region, &version, &pods_api, &servers_api).await?,
            Step::Stop { name: server } => {
                match ctx.registry.retire(&server).await {
                    Ok(_) | Err(RegistryError::NotFound(_)) => {}
                    // It took a world since the read: it stays, and the next round decides again.
                    Err(RegistryError::Conflict(_) | RegistryError::IllegalTransition(_)) => continue,
                    Err(e) => return Err(e.into()),
                }
                remove(&pods_api, &servers_api, &server, None).await?;
                removed.insert(server);
            }
            Step::Drain { name: server } => match ctx.registry.transition(&server, GameServerState::Draining).await {
                Ok(_) => tracing::info!(server, "draining: its worlds move to other servers, then it exits"),
                Err(RegistryError::IllegalTransition(_) | RegistryError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            },
            Step::Kill { name: server } => {
                remove(&pods_api, &servers_api, &server, Some(0)).await?;
                removed.insert(server);
            }
        }
    }

    let records = ctx.registry.list(Some(&name)).await?;
    mirror(&ctx, &servers_api, &namespace, &name, &records, &pods, &removed).await?;
    let status = fleet_status(&fleet, &records, &desired, &version);
    write_status(&fleets, &fleet, status).await?;
    Ok(Action::requeue(ctx.settings.resync))
}

/// Logs a failed reconcile and tries again soon.
pub fn error_policy(fleet: Arc<Fleet>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(fleet = fleet.name_any(), error = %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(if matches!(error, Error::Kube(e) if crate::is_conflict(e)) { 1 } else { 5 }))
}

async fn start(
    ctx: &Context,
    fleet: &Fleet,
    region: &str,
    version: &str,
    pods: &Api<Pod>,
    servers: &Api<GameServer>,
) -> Result<(), Error> {
    let fleet_name = fleet.name_any();
    let Some(spec_region) = fleet.spec.regions.iter().find(|r| r.name == region) else {
        return Ok(());
    };
    let name = (ctx.namer)(&fleet_name, region);
    let spec = &fleet.spec;
    let mut record = Record::scheduled(&name, &fleet_name, region, spec.world_capacity, spec.player_capacity);
    record.labels = spec.labels.clone();
    record.labels.insert(TEMPLATE_LABEL.into(), version.into());
    record.health = spec.health;
    ctx.registry.schedule(record).await?;
    let pod = game_server_pod(fleet, spec_region, &name, version, &ctx.settings.pods);
    if let Err(e) =
        pods.create(&PostParams { field_manager: Some(MANAGER.into()), ..PostParams::default() }, &pod).await
    {
        // No Pod, no server: the record goes, and the next round starts another.
        if let Err(gone) = ctx.registry.transition(&name, GameServerState::Error).await {
            tracing::warn!(server = name, error = %gone, "could not mark the server whose pod failed");
        }
        return Err(e.into());
    }
    let server = GameServer {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: fleet.namespace(),
            labels: pod.metadata.labels.clone(),
            owner_references: fleet.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        spec: GameServerSpec { fleet: fleet_name, region: region.into(), template_version: version.into() },
        status: None,
    };
    match servers.create(&PostParams { field_manager: Some(MANAGER.into()), ..PostParams::default() }, &server).await {
        Ok(_) => {}
        // Left over from an earlier attempt with this name: the mirror keeps it.
        Err(e) if crate::is_conflict(&e) => {}
        Err(e) => return Err(e.into()),
    }
    tracing::info!(server = name, region, "game server scheduled");
    Ok(())
}

/// Deletes a server's Pod (with `grace` seconds to stop, the Pod's own when `None`) and
/// its GameServer; either being gone already is fine.
async fn remove(pods: &Api<Pod>, servers: &Api<GameServer>, name: &str, grace: Option<u32>) -> Result<(), Error> {
    let params = DeleteParams { grace_period_seconds: grace, ..DeleteParams::default() };
    for result in
        [pods.delete(name, &params).await.map(|_| ()), servers.delete(name, &DeleteParams::default()).await.map(|_| ())]
    {
        match result {
            Ok(()) => {}
            Err(e) if crate::is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Keeps each GameServer's status equal to its registry record, and deletes GameServers
/// left with neither a live record nor a Pod.
async fn mirror(
    ctx: &Context,
    servers: &Api<GameServer>,
    namespace: &str,
    fleet: &str,
    records: &[Record],
    pods: &[Arc<Pod>],
    removed: &BTreeSet<String>,
) -> Result<(), Error> {
    let mirrored: Vec<Arc<GameServer>> = ctx
        .game_servers
        .state()
        .into_iter()
        .filter(|s| s.namespace().as_deref() == Some(namespace) && s.spec.fleet == fleet)
        .filter(|s| !removed.contains(&s.name_any()))
        .collect();
    for server in mirrored {
        let name = server.name_any();
        match records.iter().find(|r| r.name == name) {
            Some(record) => {
                let status = GameServerStatus::from(record);
                if server.status.as_ref() != Some(&status) {
                    let patch = serde_json::json!({ "status": status });
                    match servers.patch_status(&name, &patch_params(), &Patch::Merge(&patch)).await {
                        Ok(_) => {}
                        Err(e) if crate::is_not_found(&e) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            None if !pods.iter().any(|p| p.name_any() == name) => {
                match servers.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(e) if crate::is_not_found(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            None => {}
        }
    }
    Ok(())
}

async fn write_status(fleets: &Api<Fleet>, fleet: &Fleet, status: FleetStatus) -> Result<(), Error> {
    if fleet.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let patch = serde_json::json!({ "status": status });
    fleets.patch_status(&fleet.name_any(), &patch_params(), &Patch::Merge(&patch)).await?;
    Ok(())
}

/// The Fleet's status from its servers' records.
pub fn fleet_status(fleet: &Fleet, records: &[Record], desired: &DesiredReplicas, version: &str) -> FleetStatus {
    let name = fleet.name_any();
    let live: Vec<&Record> = records.iter().filter(|r| !r.state.is_terminal()).collect();
    let count = |state: GameServerState| live.iter().filter(|r| r.state == state).count() as u32;
    let regions = fleet
        .spec
        .regions
        .iter()
        .map(|region| {
            let here: Vec<&&Record> = live.iter().filter(|r| r.region == region.name).collect();
            let count = |state| here.iter().filter(|r| r.state == state).count() as u32;
            FleetRegionStatus {
                name: region.name.clone(),
                desired_replicas: desired.get(&(name.clone(), region.name.clone())).copied().unwrap_or(0),
                replicas: here.len() as u32,
                ready_replicas: count(GameServerState::Ready),
                allocated_replicas: count(GameServerState::Allocated),
                worlds: here.iter().map(|r| r.worlds).sum(),
            }
        })
        .collect();
    FleetStatus {
        replicas: live.len() as u32,
        desired_replicas: desired.values().sum(),
        ready_replicas: count(GameServerState::Ready),
        allocated_replicas: count(GameServerState::Allocated),
        reserved_replicas: count(GameServerState::Reserved),
        draining_replicas: count(GameServerState::Draining),
        outdated_replicas: live
            .iter()
            .filter(|r| r.labels.get(TEMPLATE_LABEL).map(String::as_str) != Some(version))
            .count() as u32,
        worlds: live.iter().map(|r| r.worlds).sum(),
        world_capacity: live.iter().map(|r| r.world_capacity).sum(),
        players: live.iter().map(|r| r.players).sum(),
        label_selector: selector(&name),
        observed_generation: fleet.metadata.generation,
        regions,
        message: None,
    }
}

fn patch_params() -> PatchParams {
    PatchParams { field_manager: Some(MANAGER.into()), ..PatchParams::default() }
}

fn selector(fleet: &str) -> String {
    format!("{FLEET_LABEL}={fleet}")
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.phase.as_deref()
}

/// A Pod whose containers will not run again (`restartPolicy: Never`).
fn ended(pod: &Pod) -> bool {
    matches!(phase(pod), Some("Succeeded" | "Failed"))
}

/// Runs the controller for one namespace until `shutdown`. Fails at once, clearly, when
/// the Fleet or GameServer CRD is not installed.
pub async fn run(
    settings: Settings,
    client: Client,
    registry: Arc<dyn Registry>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let namespace = settings.namespace.clone();
    crate::leader::require_crd::<Fleet>(&client, &namespace).await?;
    crate::leader::require_crd::<GameServer>(&client, &namespace).await?;
    let fleets: Api<Fleet> = Api::namespaced(client.clone(), &namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let servers: Api<GameServer> = Api::namespaced(client.clone(), &namespace);

    let component = format!("{COMPONENT_LABEL}={COMPONENT}");
    let (pod_store, pod_writer) = reflector::store();
    let pod_events = reflector::reflector(pod_writer, watcher(pods, watcher::Config::default().labels(&component)))
        .default_backoff()
        .touched_objects();
    let (server_store, server_writer) = reflector::store();
    let server_events = reflector::reflector(server_writer, watcher(servers, watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    // Registry changes (a server became Ready, a world started or ended) wake the fleet.
    let registry_events = {
        let namespace = namespace.clone();
        fleets_of(registry.subscribe()).map(move |fleet| ObjectRef::<Fleet>::new(&fleet).within(&namespace))
    };
    let ctx = Arc::new(Context::new(client, registry, pod_store, server_store, settings));
    tracing::info!(namespace, "controller started");
    Controller::new(fleets, watcher::Config::default())
        .with_config(kube::runtime::controller::Config::default().debounce(Duration::from_millis(100)))
        .owns_stream(pod_events)
        .owns_stream(server_events)
        .reconcile_on(registry_events)
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
    Ok(())
}

/// The fleets named by registry events, as a stream (lagging just skips: every fleet is
/// resynced on a timer anyway).
fn fleets_of(
    events: tokio::sync::broadcast::Receiver<gaia_registry::RegistryEvent>,
) -> impl futures_util::Stream<Item = String> + Send + 'static {
    use tokio::sync::broadcast::error::RecvError;
    futures_util::stream::unfold(events, |mut events| async move {
        loop {
            match events.recv().await {
                Ok(event) => return Some((event.fleet().to_string(), events)),
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return None,
            }
        }
    })
}
