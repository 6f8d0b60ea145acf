//! The async shell: feeds registry events and server records to the [`Autoscaler`],
//! calls webhooks, and publishes desired replicas (and the explained status) on watch
//! channels.
//!
//! [`run`] recomputes a fleet when world slots are taken or given back, a request finds
//! no slot, or a server stops taking worlds (registry events, debounced); every
//! `sync_every`; and when a stabiliser is due to let a higher count go. Fleets without
//! an autoscaler keep whatever the watch holds for them (their initial replicas).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use gaia_api::autoscaler::FleetAutoscalerStatus;
use gaia_api::fleet::{DesiredReplicas, FleetConfig};
use gaia_registry::Registry;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::core::{Autoscaler, Change, WebhookAnswers, WebhookCall};
use crate::error::AutoscalerError;
use crate::metrics::Metrics;
use crate::webhook::Webhooks;

/// Every autoscaled fleet's explained status, by fleet name.
pub type Statuses = BTreeMap<String, FleetAutoscalerStatus>;

/// How often and how eagerly [`run`] recomputes, and where it reports.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Full recomputation on a timer, whatever happened (and the retry after a registry
    /// error).
    pub sync_every: Duration,
    /// After an event, wait this long for the rest of a burst before recomputing once.
    pub debounce: Duration,
    pub metrics: Option<Arc<Metrics>>,
    /// Receives every fleet's explained status after each recomputation.
    pub status: Option<watch::Sender<Statuses>>,
    /// New configurations (a reloaded fleet YAML): autoscalers take their new policies
    /// at once, keeping what they measured ([`Autoscaler::reconfigure`]).
    pub updates: Option<watch::Receiver<FleetConfig>>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            sync_every: Duration::from_secs(1),
            debounce: Duration::from_millis(50),
            metrics: None,
            status: None,
            updates: None,
        }
    }
}

/// Keeps desired replicas of every autoscaled fleet in `desired` up to date until
/// `shutdown`. Never fails: registry and webhook errors are logged, counted and retried
/// at the next sync, and the regions concerned keep their replicas meanwhile.
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
    let mut scaler = Autoscaler::new(&config, &desired.borrow(), Instant::now());
    let webhooks = Webhooks::new();
    if let Some(metrics) = &settings.metrics {
        for ((fleet, region), replicas) in desired.borrow().iter() {
            metrics.set_desired(fleet, region, *replicas);
        }
    }

    let mut sync = tokio::time::interval(settings.sync_every.max(Duration::from_millis(1)));
    sync.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Fleets with events not yet acted on, and when to act.
    let mut dirty = BTreeSet::new();
    let mut pending: Option<Instant> = None;
    let mut wake: Option<Instant> = None;
    let mut events_open = true;
    let mut updates = settings.updates.clone();
    loop {
        let every: Vec<String>;
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = sync.tick() => every = scaler.fleets().map(str::to_string).collect(),
            _ = sleep_until(pending), if pending.is_some() => every = std::mem::take(&mut dirty).into_iter().collect(),
            _ = sleep_until(wake), if wake.is_some() => every = scaler.fleets().map(str::to_string).collect(),
            changed = async { updates.as_mut()?.changed().await.ok() }, if updates.is_some() => {
                match changed.and_then(|()| updates.as_mut().map(|u| u.borrow_and_update().clone())) {
                    Some(config) => {
                        tracing::info!(autoscalers = config.autoscalers.len(), "autoscaler policies reloaded");
                        scaler.reconfigure(&config, &desired.borrow(), Instant::now());
                    }
                    None => updates = None,
                }
                every = scaler.fleets().map(str::to_string).collect();
            }
            event = events.recv(), if events_open => {
                match event {
                    Ok(event) => {
                        if scaler.observe(Instant::now(), &event) {
                            dirty.insert(event.fleet().to_string());
                            pending.get_or_insert_with(|| Instant::now() + settings.debounce);
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "autoscaler lagged behind registry events; recomputing");
                        dirty.extend(scaler.fleets().map(str::to_string));
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
        for fleet in &every {
            dirty.remove(fleet);
            recompute(&mut scaler, fleet, registry.as_ref(), &webhooks, &desired, settings.metrics.as_deref()).await;
        }
        if let Some(status) = &settings.status {
            status.send_replace(scaler.statuses());
        }
        let now = Instant::now();
        // A wake that is already due belongs to a fleet whose read failed: leave it to
        // the sync timer rather than spin.
        wake = scaler.next_wake().filter(|t| *t > now);
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

async fn recompute(
    scaler: &mut Autoscaler,
    fleet: &str,
    registry: &dyn Registry,
    webhooks: &Webhooks,
    desired: &watch::Sender<DesiredReplicas>,
    metrics: Option<&Metrics>,
) {
    let servers = match registry.list(Some(fleet)).await {
        Ok(servers) => servers,
        Err(source) => {
            let error = AutoscalerError::Registry { fleet: fleet.to_string(), source };
            tracing::warn!(%error, kind = error.metric_label(), "autoscaler keeps the fleet as it is until the next sync");
            if let Some(metrics) = metrics {
                metrics.error(error.metric_label());
            }
            return;
        }
    };
    let wall = chrono::Utc::now();
    let calls = scaler.webhook_calls(fleet, &servers, wall);
    let answers = ask(webhooks, calls, metrics).await;
    let changes = scaler.decide(fleet, &servers, Instant::now(), wall, &answers);

    desired.send_if_modified(|map| {
        let mut modified = false;
        for change in &changes {
            modified |= map.insert((change.fleet.clone(), change.region.clone()), change.to) != Some(change.to);
        }
        modified
    });
    if let Some(metrics) = metrics {
        metrics.succeeded(fleet, wall);
        if let Some(status) = scaler.status(fleet) {
            metrics.observe(&status);
        }
    }
    for change in changes {
        log(&change, metrics);
    }
}

/// Calls every webhook of one recomputation at once.
async fn ask(webhooks: &Webhooks, calls: Vec<WebhookCall>, metrics: Option<&Metrics>) -> WebhookAnswers {
    let answers = futures_util::future::join_all(calls.into_iter().map(|call| async move {
        let answer = webhooks.review(&call.policy, call.request).await;
        (call.region, answer)
    }))
    .await;
    answers
        .into_iter()
        .map(|(region, answer)| {
            let answer = answer.map_err(|e| {
                tracing::warn!(%region, error = %e, "autoscaler webhook failed; the region keeps its replicas");
                if let Some(metrics) = metrics {
                    metrics.webhook_error(e.metric_label());
                }
                e.to_string()
            });
            (region, answer)
        })
        .collect()
}

fn log(change: &Change, metrics: Option<&Metrics>) {
    let direction = if change.to > change.from { "up" } else { "down" };
    tracing::info!(
        fleet = %change.fleet,
        region = %change.region,
        from = change.from,
        to = change.to,
        reason = change.reason.as_str(),
        why = %change.message,
        "desired replicas changed"
    );
    if let Some(metrics) = metrics {
        metrics.decision(&change.fleet, &change.region, direction, change.reason.as_str());
    }
}
