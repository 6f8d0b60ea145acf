//! The async shell: reads the registry, runs the pure policy and the stabilisers, and
//! publishes desired replicas on a watch channel.
//!
//! [`run`] recomputes every fleet that has an autoscaler when world slots are taken or
//! given back (registry events, debounced), every `sync_every`, and when a stabiliser's
//! window is due to let a higher count go. Fleets without an autoscaler keep whatever
//! the watch holds for them (their initial replicas).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gaia_api::fleet::{BufferPolicy, DesiredReplicas, FleetConfig, FleetSpec};
use gaia_registry::{Registry, RegistryEvent};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::error::AutoscalerError;
use crate::metrics::{DecisionLabels, ErrorLabels, Metrics};
use crate::policy::{self, RegionStatus, buffer_policy};
use crate::stabiliser::Stabiliser;

/// How often and how eagerly [`run`] recomputes.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Full recomputation on a timer, whatever happened (and the retry after a registry
    /// error).
    pub sync_every: Duration,
    /// After an allocation event, wait this long for the rest of a burst before
    /// recomputing once.
    pub debounce: Duration,
    pub metrics: Option<Arc<Metrics>>,
}

impl Default for Settings {
    fn default() -> Self {
        Self { sync_every: Duration::from_secs(1), debounce: Duration::from_millis(100), metrics: None }
    }
}

/// One autoscaled fleet: its spec, policy and a stabiliser per region.
struct Scaled {
    spec: FleetSpec,
    policy: BufferPolicy,
    scale_down_delay: Duration,
    stabilisers: BTreeMap<String, Stabiliser>,
}

/// One published change, logged after the watch lock is released.
struct Change {
    fleet: String,
    region: String,
    from: Option<u32>,
    to: u32,
    raw: u32,
    status: RegionStatus,
    buffer: u32,
    scale_down_delay: Duration,
}

/// Keeps desired replicas of every autoscaled fleet in `desired` up to date until
/// `shutdown`. Never fails: registry errors are logged and retried at the next sync.
///
/// The stabilisers start from the values `desired` holds when `run` starts (normally
/// [`crate::initial_desired`]), so a fleet started larger than it needs shrinks only after
/// its `scaleDownDelay`.
pub async fn run(
    config: FleetConfig,
    registry: Arc<dyn Registry>,
    desired: watch::Sender<DesiredReplicas>,
    settings: Settings,
    shutdown: CancellationToken,
) {
    // Subscribe before the first read so no change slips between the two.
    let mut events = registry.subscribe();
    let mut scaled = scaled_fleets(&config, &desired.borrow(), Instant::now());
    if let Some(metrics) = &settings.metrics {
        for ((fleet, region), replicas) in desired.borrow().iter() {
            metrics.set_desired(fleet, region, *replicas);
        }
    }

    let mut sync = tokio::time::interval(settings.sync_every.max(Duration::from_millis(1)));
    sync.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // When debounced events are due to be acted on.
    let mut pending: Option<Instant> = None;
    // When a stabiliser may let a higher count go.
    let mut fall: Option<Instant> = None;
    let mut events_open = true;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = sync.tick() => {}
            _ = sleep_until(pending), if pending.is_some() => {}
            _ = sleep_until(fall), if fall.is_some() => {}
            event = events.recv(), if events_open => {
                match event {
                    Ok(event) => {
                        if moves_slots(&event, &scaled) {
                            pending.get_or_insert_with(|| Instant::now() + settings.debounce);
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "autoscaler lagged behind registry events; recomputing");
                        pending.get_or_insert_with(|| Instant::now() + settings.debounce);
                    }
                    Err(RecvError::Closed) => {
                        tracing::warn!("registry events closed; the autoscaler continues on its sync timer");
                        events_open = false;
                    }
                }
                continue;
            }
        }
        pending = None;
        recompute(&mut scaled, registry.as_ref(), &desired, settings.metrics.as_deref()).await;
        let now = Instant::now();
        // A fall that is already due belongs to a fleet whose read failed: leave it to
        // the sync timer rather than spin.
        fall = scaled
            .iter()
            .flat_map(|s| s.stabilisers.values())
            .filter_map(Stabiliser::next_fall)
            .filter(|t| *t > now)
            .min();
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

fn scaled_fleets(config: &FleetConfig, current: &DesiredReplicas, now: Instant) -> Vec<Scaled> {
    let mut scaled = Vec::new();
    for spec in &config.fleets {
        let (Some(policy), Some(scaler)) = (buffer_policy(config, &spec.name), config.autoscaler(&spec.name)) else {
            continue;
        };
        let stabilisers = spec
            .regions
            .iter()
            .map(|region| {
                let mut stabiliser = Stabiliser::new(scaler.scale_down_delay);
                if let Some(&start) = current.get(&(spec.name.clone(), region.name.clone())) {
                    stabiliser.update(now, start);
                }
                (region.name.clone(), stabiliser)
            })
            .collect();
        scaled.push(Scaled {
            spec: spec.clone(),
            policy: *policy,
            scale_down_delay: scaler.scale_down_delay,
            stabilisers,
        });
    }
    scaled
}

/// Only taken and freed world slots change the answer (a server changing state does
/// not, unless it frees slots, which comes as `Released`).
fn moves_slots(event: &RegistryEvent, scaled: &[Scaled]) -> bool {
    match event {
        RegistryEvent::Allocated { fleet, .. } | RegistryEvent::Released { fleet, .. } => {
            scaled.iter().any(|s| s.spec.name == *fleet)
        }
        RegistryEvent::StateChanged { .. } => false,
    }
}

async fn recompute(
    scaled: &mut [Scaled],
    registry: &dyn Registry,
    desired: &watch::Sender<DesiredReplicas>,
    metrics: Option<&Metrics>,
) {
    let mut wanted = Vec::new();
    for fleet in scaled.iter_mut() {
        let servers = match registry.list(Some(&fleet.spec.name)).await {
            Ok(servers) => servers,
            Err(source) => {
                let error = AutoscalerError::Registry { fleet: fleet.spec.name.clone(), source };
                tracing::warn!(%error, kind = error.metric_label(), "autoscaler keeps the fleet as it is until the next sync");
                if let Some(metrics) = metrics {
                    metrics.errors.get_or_create(&ErrorLabels { error: error.metric_label() }).inc();
                }
                continue;
            }
        };
        let now = Instant::now();
        for (region, stabiliser) in fleet.stabilisers.iter_mut() {
            let status = RegionStatus::observe(&servers, &fleet.spec, region);
            let raw = policy::desired(&fleet.policy, &status);
            let to = stabiliser.update(now, raw);
            wanted.push(Change {
                fleet: fleet.spec.name.clone(),
                region: region.clone(),
                from: None,
                to,
                raw,
                status,
                buffer: fleet.policy.free_world_slots,
                scale_down_delay: fleet.scale_down_delay,
            });
        }
    }

    let mut changes = Vec::new();
    desired.send_if_modified(|map| {
        for mut change in wanted {
            let from = map.insert((change.fleet.clone(), change.region.clone()), change.to);
            if from != Some(change.to) {
                change.from = from;
                changes.push(change);
            }
        }
        !changes.is_empty()
    });

    for change in changes {
        let up = change.from.is_none_or(|from| change.to > from);
        let reason = if up {
            format!(
                "{} world(s) in use + a buffer of {} need {} server(s) of {} slots",
                change.status.used_worlds, change.buffer, change.raw, change.status.world_capacity
            )
        } else {
            format!(
                "{} world(s) in use + a buffer of {} need {} server(s) of {} slots, and no higher need in the last {:?}",
                change.status.used_worlds,
                change.buffer,
                change.raw,
                change.status.world_capacity,
                change.scale_down_delay
            )
        };
        tracing::info!(
            fleet = %change.fleet,
            region = %change.region,
            from = change.from,
            to = change.to,
            live = change.status.replicas,
            %reason,
            "desired replicas changed"
        );
        if let Some(metrics) = metrics {
            metrics.set_desired(&change.fleet, &change.region, change.to);
            let direction = if up { "up" } else { "down" };
            let labels = DecisionLabels { fleet: change.fleet, region: change.region, direction };
            metrics.scale_decisions.get_or_create(&labels).inc();
        }
    }
}
