//! The fleet autoscaler's Kubernetes side, for one namespace: Fleets and FleetAutoscalers
//! in, each autoscaled region's replicas out (written to its Fleet), and each
//! FleetAutoscaler's status back.
//!
//! The deciding is [`gaia_fleet_autoscaler::run`]'s, the same code embedded mode runs;
//! this module only moves data to and from it. Start with [`run`], then the pure parts it
//! is made of: [`fleet_config`] (what the reflectors hold, as the [`FleetConfig`] the
//! autoscaler takes, and which FleetAutoscalers cannot be used and why),
//! [`replicas_patch`] and [`write_replicas`] (a fleet's desired replicas as a merge patch
//! fenced by `resourceVersion`, retried on conflict), and [`autoscaler_status`] (the
//! explained status as a FleetAutoscaler's `status`).
//!
//! The Fleet is the hand-off: the controller sizes each region from the Fleet's own
//! `regions[].replicas`, so it never needs to know whether an autoscaler wrote them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::StreamExt;
use gaia_api::autoscaler::{
    BufferPolicy, FleetAutoscaler, FleetAutoscalerResourceStatus, FleetAutoscalerSpec, FleetAutoscalerStatus,
    IntOrPercent, RegionAutoscalerStatus, RegionScaleStatus,
};
use gaia_api::fleet::{DesiredReplicas, FleetConfig};
use gaia_api::k8s::{Fleet, FleetRegion};
use gaia_fleet_autoscaler::{Leaf, Reason, RegionStatus, Signals, Statuses};
use gaia_registry::Registry;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::leader::require_crd;
use crate::{Error, is_conflict, is_not_found};

/// Who the API server records as having written the replicas and statuses.
pub const FIELD_MANAGER: &str = "gaia-fleet-autoscaler";

/// Where [`run`] works and how the autoscaler inside it behaves.
#[derive(Debug, Clone)]
pub struct Settings {
    pub namespace: String,
    /// How often and how eagerly the autoscaler recomputes, and its metrics. Its `updates`
    /// channel is [`run`]'s own (the configuration comes from the reflectors); a `status`
    /// sender given here receives every explained status as well.
    pub autoscaler: gaia_fleet_autoscaler::Settings,
    /// A Fleet write that keeps meeting 409 Conflict is read again and retried this many
    /// times, then left to the next change or sync.
    pub max_conflict_retries: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            namespace: "default".into(),
            autoscaler: gaia_fleet_autoscaler::Settings::default(),
            max_conflict_retries: 5,
        }
    }
}

/// The configuration the autoscaler takes, from the Fleets and FleetAutoscalers of one
/// namespace, and the FleetAutoscalers it cannot use, each with why (a message that
/// names the field).
///
/// A Fleet whose spec is invalid is left out (the controller reports why in its status),
/// so a FleetAutoscaler of it is not usable. When two FleetAutoscalers scale one Fleet,
/// the older keeps it (then the first by name), so adding a second never takes a fleet
/// from the one already scaling it.
pub fn fleet_config(fleets: &[Fleet], autoscalers: &[FleetAutoscaler]) -> (FleetConfig, Vec<(String, String)>) {
    let mut config = FleetConfig { fleets: Vec::new(), autoscalers: Vec::new() };
    let mut invalid_fleets = BTreeMap::new();
    let mut fleets: Vec<&Fleet> = fleets.iter().collect();
    // The stores hold objects in no particular order; a stable order keeps equal
    // configurations equal.
    fleets.sort_by_key(|f| f.name_any());
    for fleet in fleets {
        let name = fleet.name_any();
        match fleet.spec.validate("spec", &name) {
            Ok(()) => config.fleets.push(fleet.spec.as_fleet_spec(&name)),
            Err(e) => {
                invalid_fleets.insert(name, e.to_string());
            }
        }
    }

    let mut autoscalers: Vec<&FleetAutoscaler> = autoscalers.iter().collect();
    autoscalers.sort_by_key(|a| (a.metadata.creation_timestamp.clone(), a.name_any()));
    let mut claimed: BTreeMap<&str, String> = BTreeMap::new();
    let mut unusable = Vec::new();
    for scaler in autoscalers {
        let name = scaler.name_any();
        let fleet_name = scaler.spec.fleet.as_str();
        let Some(fleet) = config.fleets.iter().find(|f| f.name == fleet_name) else {
            let why = match invalid_fleets.get(fleet_name) {
                Some(e) => format!("spec.fleetName: Fleet {fleet_name:?} is invalid ({e})"),
                None => format!("spec.fleetName: no Fleet {fleet_name:?} in this namespace"),
            };
            unusable.push((name, why));
            continue;
        };
        if let Err(e) = scaler.spec.validate("spec", fleet) {
            unusable.push((name, e.to_string()));
            continue;
        }
        if let Some(first) = claimed.get(fleet_name) {
            let why = format!("spec.fleetName: Fleet {fleet_name:?} is already scaled by FleetAutoscaler {first:?}");
            unusable.push((name, why));
            continue;
        }
        claimed.insert(fleet_name, name);
        config.autoscalers.push(scaler.spec.clone());
    }
    unusable.sort();
    (config, unusable)
}

/// The JSON merge patch that gives `fleet` the replicas of `desired` (by region), or
/// `None` when it has them already.
///
/// A merge patch replaces a list whole, so `regions` carries every region with all its
/// fields, as read; `spec.replicas` becomes their sum so the scale subresource agrees
/// (else the controller would spread the old total over the new regions). The
/// `resourceVersion` makes the API server refuse the patch (409) if the Fleet changed
/// since it was read: the list written back must be the current one.
pub fn replicas_patch(fleet: &Fleet, desired: &BTreeMap<String, u32>) -> Option<Value> {
    let regions: Vec<FleetRegion> = fleet
        .spec
        .regions
        .iter()
        .map(|r| FleetRegion { replicas: desired.get(&r.name).copied().unwrap_or(r.replicas), ..r.clone() })
        .collect();
    let sum = regions.iter().fold(0u32, |sum, r| sum.saturating_add(r.replicas));
    if regions == fleet.spec.regions && fleet.spec.replicas.is_none_or(|total| total == sum) {
        return None;
    }
    let mut patch = json!({ "spec": { "replicas": sum, "regions": regions } });
    if let Some(version) = &fleet.metadata.resource_version {
        patch["metadata"] = json!({ "resourceVersion": version });
    }
    Some(patch)
}

/// Writes `desired` (replicas by region) to `fleet`, if it differs. On 409 Conflict the
/// Fleet is read again and the patch remade from it, up to `retries` times; past them the
/// conflict is returned. Returns whether anything was written: a Fleet that is gone (404)
/// or already right is not.
pub async fn write_replicas(
    api: &Api<Fleet>,
    fleet: &Fleet,
    desired: &BTreeMap<String, u32>,
    retries: u32,
) -> Result<bool, Error> {
    Ok(write(api, fleet, desired, retries).await?.is_some())
}

/// [`write_replicas`], returning the Fleet as the API server answered the patch.
async fn write(
    api: &Api<Fleet>,
    fleet: &Fleet,
    desired: &BTreeMap<String, u32>,
    retries: u32,
) -> Result<Option<Fleet>, Error> {
    let name = fleet.name_any();
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
    let mut fresh: Option<Fleet> = None;
    let mut conflicts = 0;
    loop {
        let Some(patch) = replicas_patch(fresh.as_ref().unwrap_or(fleet), desired) else { return Ok(None) };
        match api.patch(&name, &params, &Patch::Merge(&patch)).await {
            Ok(written) => return Ok(Some(written)),
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) if is_conflict(&e) && conflicts < retries => {
                conflicts += 1;
                tracing::debug!(fleet = %name, conflicts, "the Fleet changed since it was read; reading it again");
                match api.get(&name).await {
                    Ok(current) => fresh = Some(current),
                    Err(e) if is_not_found(&e) => return Ok(None),
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A FleetAutoscaler's status from the autoscaler's explained status of its fleet.
///
/// `scalingLimited` is true when a region's policy wanted more (or fewer) servers than
/// its min/max allows at the last recomputation. The explained status carries the
/// buffer the policy asked for (an Adaptive policy's size as well as a Buffer's, and a
/// percentage as the slots it came to) with the inputs it was applied to, so a Buffer
/// of that size, under the bounds of the policy in force then, reaches the same raw
/// count; [`gaia_fleet_autoscaler::decide`] says whether the bounds changed it. A
/// Webhook has no bounds. `lastScaleTime` is the newest decision's time (a decision is
/// recorded only when desired replicas changed); `None` when none is remembered.
pub fn autoscaler_status(spec: &FleetAutoscalerSpec, status: &FleetAutoscalerStatus) -> FleetAutoscalerResourceStatus {
    let wall = i64::try_from(status.updated_at_ms).ok().and_then(DateTime::from_timestamp_millis).unwrap_or_default();
    let mut out = FleetAutoscalerResourceStatus { able_to_scale: true, ..Default::default() };
    for region in &status.regions {
        out.current_replicas = out.current_replicas.saturating_add(region.current_replicas);
        out.desired_replicas = out.desired_replicas.saturating_add(region.desired_replicas);
        out.scaling_limited |= limited(spec, region, wall);
        out.regions.push(RegionScaleStatus {
            region: region.region.clone(),
            policy: region.policy.clone(),
            current_replicas: region.current_replicas,
            desired_replicas: region.desired_replicas,
            buffer_target: region.buffer.target,
            buffer_free: region.buffer.free,
        });
    }
    out.last_scale_time = status
        .regions
        .iter()
        .filter_map(|r| r.decisions.last())
        .map(|d| d.at_ms)
        .max()
        .and_then(|ms| DateTime::from_timestamp_millis(i64::try_from(ms).ok()?))
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true));
    out
}

fn limited(spec: &FleetAutoscalerSpec, region: &RegionAutoscalerStatus, wall: DateTime<Utc>) -> bool {
    let resolved = gaia_fleet_autoscaler::resolve(spec.policy_for(&region.region), wall);
    let (min_replicas, max_replicas) = match resolved.leaf {
        Some(Leaf::Buffer(b)) => (b.min_replicas, b.max_replicas),
        Some(Leaf::Adaptive(a)) => (a.min_replicas, a.max_replicas),
        Some(Leaf::Webhook(_)) | None => return false,
    };
    let same = BufferPolicy {
        buffer_size: IntOrPercent::Int(region.buffer.target),
        unit: region.buffer.unit,
        min_replicas,
        max_replicas,
    };
    let observed = RegionStatus {
        used_worlds: region.inputs.used_worlds,
        world_capacity: region.inputs.world_capacity,
        busy: region.inputs.busy_servers,
        ..Default::default()
    };
    let signals = Signals { waiting: region.inputs.waiting_requests, ..Default::default() };
    let decision = gaia_fleet_autoscaler::decide(Some(Leaf::Buffer(&same)), &observed, &signals);
    matches!(decision.reason, Reason::MinReplicas | Reason::MaxReplicas)
}

/// The status of a FleetAutoscaler the autoscaler cannot use.
pub fn unusable_status(message: &str) -> FleetAutoscalerResourceStatus {
    FleetAutoscalerResourceStatus { able_to_scale: false, message: Some(message.to_string()), ..Default::default() }
}

/// The merge patch of a FleetAutoscaler's `status`. A merge patch keeps what it does not
/// name, so `message` is written as `null` and `regions` as `[]` when there are none
/// (they must go); `lastScaleTime` is left out when unknown, keeping the time a previous
/// leader wrote.
pub fn status_patch(status: &FleetAutoscalerResourceStatus) -> Result<Value, Error> {
    let mut body = serde_json::to_value(status).map_err(|source| Error::Serialise { what: "status", source })?;
    body["message"] = json!(status.message);
    body["regions"] =
        serde_json::to_value(&status.regions).map_err(|source| Error::Serialise { what: "status", source })?;
    Ok(json!({ "status": body }))
}

/// Writes `status` to the FleetAutoscaler `name`; one that is gone (404) is skipped.
pub async fn write_status(
    api: &Api<FleetAutoscaler>,
    name: &str,
    status: &FleetAutoscalerResourceStatus,
) -> Result<(), Error> {
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
    match api.patch_status(name, &params, &Patch::Merge(&status_patch(status)?)).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Makes `desired` hold where each autoscaled region starts: a fleet that was not
/// autoscaled in `before` (or a region new to it) starts from its Fleet's current
/// replicas, clamped into its policy's bounds ([`gaia_fleet_autoscaler::initial_desired`]).
/// The autoscaler takes a new region's starting point from this map, and it may hold a
/// stale value from a time the fleet was autoscaled before. Regions no longer autoscaled
/// are dropped. Returns whether `desired` changed.
pub fn seed_desired(
    desired: &mut DesiredReplicas,
    before: &FleetConfig,
    after: &FleetConfig,
    now: DateTime<Utc>,
) -> bool {
    let scaled_before: BTreeSet<&str> = before.autoscalers.iter().map(|a| a.fleet.as_str()).collect();
    let start: DesiredReplicas = gaia_fleet_autoscaler::initial_desired(after, now)
        .into_iter()
        .filter(|((fleet, _), _)| after.autoscaler(fleet).is_some())
        .collect();
    let mut modified = false;
    desired.retain(|key, _| {
        let keep = start.contains_key(key);
        modified |= !keep;
        keep
    });
    for (key, replicas) in start {
        if !scaled_before.contains(key.0.as_str()) || !desired.contains_key(&key) {
            modified |= desired.insert(key, replicas) != Some(replicas);
        }
    }
    modified
}

/// Equal but for the regions' replicas: what a Fleet the autoscaler itself wrote
/// changes, and what the autoscaler need not be told again (it decides them).
fn same_but_replicas(a: &FleetConfig, b: &FleetConfig) -> bool {
    let shape = |c: &FleetConfig| {
        let mut c = c.clone();
        c.fleets.iter_mut().flat_map(|f| f.regions.iter_mut()).for_each(|r| r.replicas = 0);
        c
    };
    shape(a) == shape(b)
}

/// Runs the fleet autoscaler for the namespace of `settings` until `shutdown`: reflects
/// its Fleets and FleetAutoscalers, rebuilds the autoscaler's configuration on each
/// change, writes desired replicas to the Fleets and statuses to the FleetAutoscalers.
///
/// Fails only at start, when a CRD is missing ([`Error::MissingCrd`]); after that every
/// error is logged and retried on the next change or sync. Runs inside leader election
/// (the CLI's), so it does not elect.
pub async fn run(
    settings: Settings,
    client: Client,
    registry: Arc<dyn Registry>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let namespace = settings.namespace.clone();
    require_crd::<Fleet>(&client, &namespace).await?;
    require_crd::<FleetAutoscaler>(&client, &namespace).await?;

    let fleet_api: Api<Fleet> = Api::namespaced(client.clone(), &namespace);
    let scaler_api: Api<FleetAutoscaler> = Api::namespaced(client, &namespace);
    let (fleets, writer) = reflector::store();
    let fleet_events = watcher(fleet_api.clone(), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .map(|e| (Kind::Fleet, e.map(|e| Seen::from(&e))));
    let (scalers, writer) = reflector::store();
    let scaler_events = watcher(scaler_api.clone(), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .map(|e| (Kind::Autoscaler, e.map(|e| Seen::from(&e))));
    let mut events = std::pin::pin!(futures_util::stream::select(fleet_events, scaler_events));

    let (desired_tx, mut desired_rx) = watch::channel(DesiredReplicas::new());
    let (status_tx, mut status_rx) = watch::channel(Statuses::new());
    let mut shell = Shell {
        namespace,
        fleet_api,
        scaler_api,
        fleets,
        scalers,
        retries: settings.max_conflict_retries,
        config: FleetConfig { fleets: Vec::new(), autoscalers: Vec::new() },
        unusable: Vec::new(),
        written_fleets: BTreeMap::new(),
        written_statuses: BTreeMap::new(),
    };
    let stop = shutdown.child_token();
    let mut autoscaler: Option<(watch::Sender<FleetConfig>, tokio::task::JoinHandle<()>)> = None;
    let mut ready = (false, false);
    let user_status = settings.autoscaler.status.clone();

    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            changed = desired_rx.changed() => {
                if changed.is_err() {
                    break;
                }
                let desired = desired_rx.borrow_and_update().clone();
                shell.write_fleets(&desired).await;
            }
            changed = status_rx.changed() => {
                if changed.is_err() {
                    break;
                }
                let statuses = status_rx.borrow_and_update().clone();
                if let Some(user) = &user_status {
                    user.send_replace(statuses.clone());
                }
                shell.write_statuses(&statuses).await;
                // Each recomputation is also the sync that retries a Fleet write that
                // failed or lost to someone else's.
                let desired = desired_rx.borrow().clone();
                shell.write_fleets(&desired).await;
            }
            event = events.next() => {
                let Some((kind, event)) = event else {
                    tracing::warn!("the Fleet and FleetAutoscaler watches ended; the autoscaler stops");
                    break;
                };
                let seen = match event {
                    Ok(seen) => seen,
                    Err(error) => {
                        tracing::warn!(%error, kind = kind.name(), "watch failed; retrying with backoff");
                        continue;
                    }
                };
                match (kind, seen) {
                    (_, Seen::Partial) => continue,
                    (Kind::Fleet, Seen::Settled { init_done }) => ready.0 |= init_done,
                    (Kind::Autoscaler, Seen::Settled { init_done }) => ready.1 |= init_done,
                }
                // Nothing is decided from half a picture.
                if ready != (true, true) {
                    continue;
                }
                let before = shell.config.clone();
                shell.reload();
                desired_tx.send_if_modified(|d| seed_desired(d, &before, &shell.config, Utc::now()));
                match &autoscaler {
                    Some((updates, _)) => {
                        if !same_but_replicas(&before, &shell.config) {
                            updates.send_replace(shell.config.clone());
                        }
                    }
                    None => {
                        let (updates, updates_rx) = watch::channel(shell.config.clone());
                        let scaler_settings = gaia_fleet_autoscaler::Settings {
                            status: Some(status_tx.clone()),
                            updates: Some(updates_rx),
                            ..settings.autoscaler.clone()
                        };
                        let task = tokio::spawn(gaia_fleet_autoscaler::run(
                            shell.config.clone(),
                            Arc::clone(&registry),
                            desired_tx.clone(),
                            scaler_settings,
                            stop.clone(),
                        ));
                        tracing::info!(namespace = %shell.namespace, "fleet autoscaler started");
                        autoscaler = Some((updates, task));
                    }
                }
                // A Fleet someone else edited gets the autoscaler's replicas back, and
                // an autoscaler that became unusable says so.
                let desired = desired_rx.borrow().clone();
                shell.write_fleets(&desired).await;
                let statuses = status_rx.borrow().clone();
                shell.write_statuses(&statuses).await;
            }
        }
    }
    stop.cancel();
    if let Some((_, task)) = autoscaler
        && let Err(error) = task.await
    {
        tracing::error!(%error, "the autoscaler task failed");
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Fleet,
    Autoscaler,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Fleet => "Fleet",
            Self::Autoscaler => "FleetAutoscaler",
        }
    }
}

/// What a watch event means here: the store changed and is whole (after an object
/// changed, or a (re)list ended), or it is being relisted.
#[derive(Debug, Clone, Copy)]
enum Seen {
    Settled { init_done: bool },
    Partial,
}

impl<K> From<&watcher::Event<K>> for Seen {
    fn from(event: &watcher::Event<K>) -> Self {
        match event {
            watcher::Event::Apply(_) | watcher::Event::Delete(_) => Seen::Settled { init_done: false },
            watcher::Event::InitDone => Seen::Settled { init_done: true },
            watcher::Event::Init | watcher::Event::InitApply(_) => Seen::Partial,
        }
    }
}

/// [`run`]'s state between events.
struct Shell {
    namespace: String,
    fleet_api: Api<Fleet>,
    scaler_api: Api<FleetAutoscaler>,
    fleets: Store<Fleet>,
    scalers: Store<FleetAutoscaler>,
    retries: u32,
    config: FleetConfig,
    unusable: Vec<(String, String)>,
    /// Per Fleet: the resourceVersion we patched and the Fleet the API server answered.
    /// Until the watch delivers our write, the store still holds the version we patched,
    /// and the answer is the newer copy.
    written_fleets: BTreeMap<String, (Option<String>, Fleet)>,
    /// Per FleetAutoscaler uid: the status last written (or found there already).
    written_statuses: BTreeMap<String, FleetAutoscalerResourceStatus>,
}

impl Shell {
    fn reload(&mut self) {
        let fleets: Vec<Fleet> = self.fleets.state().iter().map(|f| Fleet::clone(f)).collect();
        let scalers: Vec<FleetAutoscaler> = self.scalers.state().iter().map(|a| FleetAutoscaler::clone(a)).collect();
        let (config, unusable) = fleet_config(&fleets, &scalers);
        for (name, why) in &unusable {
            if !self.unusable.iter().any(|(n, w)| n == name && w == why) {
                tracing::warn!(autoscaler = %name, why = %why, "FleetAutoscaler cannot be used");
            }
        }
        self.config = config;
        self.unusable = unusable;
    }

    /// The Fleet as we last know it: the store's, unless it has not seen our last write.
    fn fleet(&mut self, name: &str) -> Option<Fleet> {
        let stored = self.fleets.get(&ObjectRef::new(name).within(&self.namespace))?;
        match self.written_fleets.get(name) {
            Some((patched, answer)) if *patched == stored.metadata.resource_version => Some(answer.clone()),
            _ => {
                self.written_fleets.remove(name);
                Some(Fleet::clone(&stored))
            }
        }
    }

    async fn write_fleets(&mut self, desired: &DesiredReplicas) {
        let names: Vec<String> = self.config.autoscalers.iter().map(|a| a.fleet.clone()).collect();
        for name in names {
            let regions: BTreeMap<String, u32> =
                desired.iter().filter(|((f, _), _)| *f == name).map(|((_, r), n)| (r.clone(), *n)).collect();
            if regions.is_empty() {
                continue;
            }
            let Some(fleet) = self.fleet(&name) else { continue };
            match write(&self.fleet_api, &fleet, &regions, self.retries).await {
                Ok(Some(written)) => {
                    tracing::info!(fleet = %name, replicas = ?regions, "fleet replicas written");
                    self.written_fleets.insert(name, (fleet.metadata.resource_version.clone(), written));
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(
                    fleet = %name,
                    %error,
                    kind = error.metric_label(),
                    "could not write the fleet's replicas; retrying on the next change or sync"
                ),
            }
        }
    }

    async fn write_statuses(&mut self, statuses: &Statuses) {
        let scalers = self.scalers.state();
        let uids: BTreeSet<String> = scalers.iter().map(|a| key(a)).collect();
        self.written_statuses.retain(|uid, _| uids.contains(uid));
        for scaler in scalers {
            let name = scaler.name_any();
            let mut status = match self.unusable.iter().find(|(n, _)| *n == name) {
                Some((_, why)) => unusable_status(why),
                None => match statuses.get(&scaler.spec.fleet) {
                    Some(explained) => autoscaler_status(&scaler.spec, explained),
                    // Not decided yet: the first recomputation writes it.
                    None => continue,
                },
            };
            let uid = key(&scaler);
            let previous = self.written_statuses.get(&uid).or(scaler.status.as_ref());
            if status.last_scale_time.is_none() {
                status.last_scale_time = previous.and_then(|p| p.last_scale_time.clone());
            }
            if previous == Some(&status) {
                self.written_statuses.insert(uid, status);
                continue;
            }
            match write_status(&self.scaler_api, &name, &status).await {
                Ok(()) => {
                    self.written_statuses.insert(uid, status);
                }
                Err(error) => tracing::warn!(
                    autoscaler = %name,
                    %error,
                    kind = error.metric_label(),
                    "could not write the FleetAutoscaler's status; retrying on the next sync"
                ),
            }
        }
    }
}

/// Tells a FleetAutoscaler from an earlier one of the same name.
fn key(scaler: &FleetAutoscaler) -> String {
    scaler.metadata.uid.clone().unwrap_or_else(|| scaler.name_any())
}

#[cfg(test)]
mod tests {
    use gaia_api::autoscaler::{BufferStatus, BufferUnit, PolicyInputs, ScaleDecision};

    use super::*;

    fn fleet(name: &str, regions: &[(&str, u32)]) -> Fleet {
        let yaml = format!(
            "
apiVersion: gaia.dev/v1alpha1
kind: Fleet
metadata: {{ name: {name}, namespace: games, resourceVersion: '7' }}
spec:
  regions: []
  template:
    spec:
      containers: [{{ name: gameserver, image: 'ghcr.io/gaia-fleet/gaia:0.1.0' }}]
"
        );
        let mut fleet: Fleet = serde_norway::from_str(&yaml).expect("fleet parses");
        fleet.spec.regions = regions
            .iter()
            .map(|&(name, replicas)| FleetRegion {
                name: name.into(),
                replicas,
                node_selector: BTreeMap::new(),
                affinity: None,
                tolerations: Vec::new(),
            })
            .collect();
        fleet
    }

    fn autoscaler(name: &str, spec: &str) -> FleetAutoscaler {
        FleetAutoscaler::new(name, serde_norway::from_str(spec).expect("autoscaler parses"))
    }

    const BUFFER: &str = "{ fleetName: town, policy: { buffer: { bufferSize: 5, minReplicas: 1, maxReplicas: 4 } } }";

    #[test]
    fn usable_autoscalers_make_the_config_and_the_others_say_why() {
        let mut broken = fleet("broken", &[("eu", 1)]);
        broken.spec.template.spec.as_mut().expect("pod spec").containers.clear();
        let fleets = [fleet("town", &[("eu", 2), ("us", 0)]), broken];
        let scalers = [
            autoscaler("town-b", BUFFER),
            autoscaler("town-a", BUFFER),
            autoscaler("ghost", "{ fleetName: ghost, policy: { buffer: { bufferSize: 5, maxReplicas: 4 } } }"),
            autoscaler("bad", "{ fleetName: broken, policy: { buffer: { bufferSize: 5, maxReplicas: 4 } } }"),
            autoscaler(
                "bounds",
                "{ fleetName: town, policy: { buffer: { bufferSize: 5, minReplicas: 9, maxReplicas: 4 } } }",
            ),
            autoscaler(
                "region",
                "{ fleetName: town, policy: { buffer: { bufferSize: 5, maxReplicas: 4 } }, regions: { ap: { buffer: { bufferSize: 1, maxReplicas: 1 } } } }",
            ),
        ];
        let (config, unusable) = fleet_config(&fleets, &scalers);
        assert_eq!(config.fleets.len(), 1, "the invalid Fleet is left out");
        assert_eq!(config.fleets[0].name, "town");
        let regions: Vec<_> = config.fleets[0].regions.iter().map(|r| (r.name.as_str(), r.replicas)).collect();
        assert_eq!(regions, vec![("eu", 2), ("us", 0)]);
        assert_eq!(config.autoscalers.len(), 1);
        assert_eq!(config.autoscalers[0], scalers[1].spec, "with no creation times, the first by name wins");
        let unusable: BTreeMap<&str, &str> = unusable.iter().map(|(n, w)| (n.as_str(), w.as_str())).collect();
        assert_eq!(
            unusable,
            BTreeMap::from([
                (
                    "bad",
                    "spec.fleetName: Fleet \"broken\" is invalid (spec.template.spec.containers: must hold the game-server container)"
                ),
                ("bounds", "spec.policy.buffer.minReplicas: must not exceed maxReplicas"),
                ("ghost", "spec.fleetName: no Fleet \"ghost\" in this namespace"),
                ("region", "spec.regions.ap: fleet \"town\" has no region \"ap\""),
                ("town-b", "spec.fleetName: Fleet \"town\" is already scaled by FleetAutoscaler \"town-a\""),
            ])
        );
    }

    #[test]
    fn the_older_autoscaler_keeps_its_fleet() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let mut older = autoscaler("z-older", BUFFER);
        older.metadata.creation_timestamp = Some(Time("2026-01-01T00:00:00Z".parse().expect("time")));
        let mut newer = autoscaler("a-newer", BUFFER);
        newer.metadata.creation_timestamp = Some(Time("2026-02-01T00:00:00Z".parse().expect("time")));
        let (_, unusable) = fleet_config(&[fleet("town", &[("eu", 1)])], &[newer, older]);
        assert_eq!(unusable.len(), 1);
        assert_eq!(unusable[0].0, "a-newer");
    }

    #[test]
    fn a_patch_only_when_the_fleet_differs() {
        let town = fleet("town", &[("eu", 2), ("us", 0)]);
        let same = BTreeMap::from([("eu".to_string(), 2), ("us".to_string(), 0)]);
        assert_eq!(replicas_patch(&town, &same), None);
        assert_eq!(replicas_patch(&town, &BTreeMap::new()), None, "nothing desired, nothing to write");

        let mut total = town.clone();
        total.spec.replicas = Some(2);
        assert_eq!(replicas_patch(&total, &same), None, "a total that is the sum is right");
        total.spec.replicas = Some(6);
        let patch = replicas_patch(&total, &same).expect("a total that is not the sum is rewritten");
        assert_eq!(patch["spec"]["replicas"], 2);

        let mut placed = town.clone();
        placed.spec.regions[1].node_selector.insert("topology.kubernetes.io/region".into(), "us-east1".into());
        let up = BTreeMap::from([("eu".to_string(), 3)]);
        assert_eq!(
            replicas_patch(&placed, &up),
            Some(json!({
                "metadata": { "resourceVersion": "7" },
                "spec": {
                    "replicas": 3,
                    "regions": [
                        { "name": "eu", "replicas": 3 },
                        { "name": "us", "replicas": 0, "nodeSelector": { "topology.kubernetes.io/region": "us-east1" } },
                    ],
                },
            })),
            "every region is written, with its other fields, and a region not desired keeps its replicas"
        );
    }

    fn region(name: &str, desired: u32, current: u32, target: u32, free: u32, used: u32) -> RegionAutoscalerStatus {
        RegionAutoscalerStatus {
            region: name.into(),
            policy: "Buffer".into(),
            desired_replicas: desired,
            current_replicas: current,
            buffer: BufferStatus { unit: BufferUnit::Worlds, target, free },
            inputs: PolicyInputs {
                used_worlds: used,
                world_capacity: 10,
                busy_servers: used.div_ceil(10),
                waiting_requests: 0,
                allocation_rate: 0.0,
                server_start_seconds: 0.0,
                start_measured: false,
                webhook: None,
            },
            decisions: Vec::new(),
        }
    }

    fn decision(at_ms: u64, from: u32, to: u32, reason: &str) -> ScaleDecision {
        ScaleDecision { at_ms, from, to, reason: reason.into(), message: String::new() }
    }

    #[test]
    fn the_status_sums_regions_and_says_when_bounds_hold_a_region() {
        let spec: FleetAutoscalerSpec = serde_norway::from_str(BUFFER).expect("spec");
        // eu: 12 worlds in use + 5 free = 17 slots = 2 servers, within [1, 4].
        let mut eu = region("eu", 2, 2, 5, 8, 12);
        eu.decisions = vec![decision(1_700_000_000_000, 1, 2, "buffer")];
        // us: nothing in use wants 1 server, as minReplicas does: not limited.
        let mut us = region("us", 1, 1, 5, 10, 0);
        us.decisions = vec![decision(1_700_000_060_500, 0, 1, "buffer")];
        let status =
            FleetAutoscalerStatus { fleet: "town".into(), updated_at_ms: 1_700_000_100_000, regions: vec![eu, us] };
        let out = autoscaler_status(&spec, &status);
        assert_eq!(
            out,
            FleetAutoscalerResourceStatus {
                current_replicas: 3,
                desired_replicas: 3,
                able_to_scale: true,
                scaling_limited: false,
                last_scale_time: Some("2023-11-14T22:14:20Z".into()),
                regions: vec![
                    RegionScaleStatus {
                        region: "eu".into(),
                        policy: "Buffer".into(),
                        current_replicas: 2,
                        desired_replicas: 2,
                        buffer_target: 5,
                        buffer_free: 8,
                    },
                    RegionScaleStatus {
                        region: "us".into(),
                        policy: "Buffer".into(),
                        current_replicas: 1,
                        desired_replicas: 1,
                        buffer_target: 5,
                        buffer_free: 10,
                    },
                ],
                message: None,
            }
        );

        // 40 worlds in use + 5 = 5 servers, capped at 4.
        let capped = FleetAutoscalerStatus { regions: vec![region("eu", 4, 4, 5, 0, 40)], ..status.clone() };
        assert!(autoscaler_status(&spec, &capped).scaling_limited);
        // Nothing in use and a buffer of 0 wants 0, raised to 1.
        let zero: FleetAutoscalerSpec = serde_norway::from_str(
            "{ fleetName: town, policy: { buffer: { bufferSize: 0, minReplicas: 1, maxReplicas: 4 } } }",
        )
        .expect("spec");
        let raised = FleetAutoscalerStatus { regions: vec![region("eu", 1, 1, 0, 10, 0)], ..status.clone() };
        assert!(autoscaler_status(&zero, &raised).scaling_limited);
        // A webhook has no bounds.
        let webhook: FleetAutoscalerSpec =
            serde_norway::from_str("{ fleetName: town, policy: { webhook: { url: 'http://scaler' } } }").expect("spec");
        assert!(!autoscaler_status(&webhook, &capped).scaling_limited);
        // No decision remembered: no time.
        let fresh = FleetAutoscalerStatus { regions: vec![region("eu", 2, 2, 5, 8, 12)], ..status };
        assert_eq!(autoscaler_status(&spec, &fresh).last_scale_time, None);
    }

    #[test]
    fn a_status_patch_clears_what_is_gone() {
        let patch =
            status_patch(&unusable_status("spec.fleetName: no Fleet \"town\" in this namespace")).expect("serialises");
        assert_eq!(
            patch,
            json!({ "status": {
                "currentReplicas": 0,
                "desiredReplicas": 0,
                "ableToScale": false,
                "scalingLimited": false,
                "regions": [],
                "message": "spec.fleetName: no Fleet \"town\" in this namespace",
            }})
        );
        let able = FleetAutoscalerResourceStatus { able_to_scale: true, ..Default::default() };
        assert_eq!(patch_field(&able, "message"), Value::Null);
        assert_eq!(patch_field(&able, "regions"), json!([]));
        assert!(status_patch(&able).expect("serialises")["status"].get("lastScaleTime").is_none());
    }

    fn patch_field(status: &FleetAutoscalerResourceStatus, field: &str) -> Value {
        status_patch(status).expect("serialises")["status"][field].clone()
    }

    #[test]
    fn new_fleets_start_from_their_fleet_and_old_ones_keep_their_values() {
        let now: DateTime<Utc> = "2026-11-24T12:00:00Z".parse().expect("time");
        let empty = FleetConfig { fleets: Vec::new(), autoscalers: Vec::new() };
        let (scaled, _) = fleet_config(&[fleet("town", &[("eu", 0), ("us", 3)])], &[autoscaler("a", BUFFER)]);
        let key = |r: &str| ("town".to_string(), r.to_string());

        let mut desired = DesiredReplicas::new();
        assert!(seed_desired(&mut desired, &empty, &scaled, now));
        assert_eq!(desired, DesiredReplicas::from([(key("eu"), 1), (key("us"), 3)]), "eu raised to minReplicas 1");

        // The autoscaler moved on; the Fleet (not yet written) still says 0 and 3.
        desired.insert(key("us"), 2);
        assert!(!seed_desired(&mut desired, &scaled, &scaled, now));
        assert_eq!(desired[&key("us")], 2);

        // A region added to the Fleet starts from its replicas.
        let (grown, _) = fleet_config(&[fleet("town", &[("eu", 0), ("us", 3), ("ap", 2)])], &[autoscaler("a", BUFFER)]);
        assert!(seed_desired(&mut desired, &scaled, &grown, now));
        assert_eq!(desired, DesiredReplicas::from([(key("eu"), 1), (key("us"), 2), (key("ap"), 2)]));

        // The autoscaler goes: its regions go. It comes back: the Fleet's values again.
        let (unscaled, _) = fleet_config(&[fleet("town", &[("eu", 0), ("us", 3)])], &[]);
        assert!(seed_desired(&mut desired, &grown, &unscaled, now));
        assert!(desired.is_empty());
        desired.insert(key("us"), 9);
        assert!(seed_desired(&mut desired, &unscaled, &scaled, now));
        assert_eq!(desired, DesiredReplicas::from([(key("eu"), 1), (key("us"), 3)]), "a stale 9 is not kept");
    }

    #[test]
    fn the_autoscaler_is_not_told_of_replicas_it_wrote() {
        let (before, _) = fleet_config(&[fleet("town", &[("eu", 0)])], &[autoscaler("a", BUFFER)]);
        let (written, _) = fleet_config(&[fleet("town", &[("eu", 3)])], &[autoscaler("a", BUFFER)]);
        assert!(same_but_replicas(&before, &written));
        let (grown, _) = fleet_config(&[fleet("town", &[("eu", 3), ("us", 0)])], &[autoscaler("a", BUFFER)]);
        assert!(!same_but_replicas(&before, &grown));
    }
}
