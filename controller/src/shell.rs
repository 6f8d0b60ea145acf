//! The async shell: owns the child processes and carries out [`plan`]'s actions.
//!
//! [`run`] reconciles every `reconcile_every` and whenever desired replicas change:
//! reap children that exited (their server is marked Unhealthy), read the fleets'
//! records, [`plan`], execute. Nothing in a reconcile is fatal: a registry error skips
//! the round, a failed spawn marks its record Error, and the next round tries again.
//! On shutdown every child gets SIGINT (stop now: worlds are checkpointed, not moved,
//! since every server is going) and `stop_grace` to exit, then SIGKILL. A retired
//! server gets SIGTERM (drain).

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use gaia_api::fleet::{DesiredReplicas, FleetConfig, FleetSpec};
use gaia_api::gameserver::{GameServer, GameServerState};
use gaia_api::token::TokenKey;
use gaia_registry::{Registry, RegistryError};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::error::ControllerError;
use crate::metrics::{ErrorLabels, Metrics, RegionLabels};
use crate::plan::{Action, plan};
use crate::process::{self, ServerIdentity};

#[derive(Debug, Clone)]
pub struct Config {
    /// Where game servers reach the SDK API (`GAIA_SDK_URL`).
    pub sdk_url: String,
    /// Join-token secret handed to every game server (`GAIA_JOIN_SECRET`).
    pub join_secret: String,
    /// The control plane's SDK secret: each game server gets its own SDK token derived
    /// from it (`GAIA_SDK_TOKEN`), never the secret. `None`: no token (SDK auth off).
    pub sdk_secret: Option<String>,
    /// Reconcile at least this often.
    pub reconcile_every: Duration,
    /// How long a server asked to stop (scale-down, shutdown) has to exit before SIGKILL.
    pub stop_grace: Duration,
    /// Environment for every game server (e.g. its checkpoint stores); a fleet's
    /// template may override it.
    pub env: BTreeMap<String, String>,
    /// A reloaded config, whose fleets it takes. A fleet whose template changed is
    /// rolled: its servers are replaced one at a time ([`plan`]). Invalid specs are
    /// refused with an error logged, and the current ones kept.
    pub updates: Option<watch::Receiver<FleetConfig>>,
    pub metrics: Option<Arc<Metrics>>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            sdk_url: "http://127.0.0.1:7700".into(),
            join_secret: String::new(),
            sdk_secret: None,
            reconcile_every: Duration::from_millis(500),
            stop_grace: Duration::from_secs(10),
            env: BTreeMap::new(),
            updates: None,
            metrics: None,
        }
    }
}

/// Where a child process is in its life, as far as the controller is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Serving; an exit now is unexpected.
    Running,
    /// Retired and sent SIGTERM; SIGKILL at the deadline.
    Stopping { deadline: Instant },
    /// Sent SIGKILL; waiting to be reaped.
    Killed,
}

struct Child {
    fleet: String,
    region: String,
    process: tokio::process::Child,
    phase: Phase,
}

impl Child {
    fn labels(&self) -> RegionLabels {
        RegionLabels::new(&self.fleet, &self.region)
    }

    fn signal(&self, name: &str, signal: Signal) -> Result<(), ControllerError> {
        // No pid: tokio already reaped it; nothing to signal.
        let Some(pid) = self.process.id().and_then(|pid| i32::try_from(pid).ok()) else {
            return Ok(());
        };
        kill(Pid::from_raw(pid), signal).map_err(|source| ControllerError::Signal { name: name.to_string(), source })
    }
}

/// Realises `desired` for `fleets` as child processes of this process until `shutdown`,
/// then stops them all. Fails only on an invalid fleet spec, before starting anything.
///
/// Game servers get `GAIA_EXIT_WITH_PARENT=1`; a server that honours it with
/// `PR_SET_PDEATHSIG` dies with the *thread* that spawned it, so run this on a runtime
/// worker (as `tokio::spawn` does), never inside `spawn_blocking`.
pub async fn run(
    config: Config,
    fleets: Vec<FleetSpec>,
    registry: Arc<dyn Registry>,
    mut desired: watch::Receiver<DesiredReplicas>,
    shutdown: CancellationToken,
) -> Result<(), ControllerError> {
    for (i, fleet) in fleets.iter().enumerate() {
        fleet.validate(&format!("fleets[{i}]"))?;
    }
    let mut ticker = tokio::time::interval(config.reconcile_every.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut updates = config.updates.clone();
    let sdk_key = config.sdk_secret.as_deref().filter(|s| !s.is_empty()).map(TokenKey::new);
    let mut controller = Controller { config, sdk_key, fleets, registry, children: BTreeMap::new() };
    let mut watching = true;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            changed = desired.changed(), if watching => {
                if changed.is_err() {
                    tracing::debug!("desired replicas will not change any more; keeping the last value");
                    watching = false;
                }
            }
            changed = async { updates.as_mut()?.changed().await.ok() }, if updates.is_some() => {
                match changed.and_then(|()| updates.as_mut().map(|u| u.borrow_and_update().fleets.clone())) {
                    Some(fleets) => controller.update(fleets),
                    None => updates = None,
                }
            }
            _ = ticker.tick() => {}
        }
        let want = desired.borrow_and_update().clone();
        controller.reconcile(&want).await;
    }
    controller.shutdown().await;
    Ok(())
}

struct Controller {
    config: Config,
    /// Derives the SDK tokens of the servers started ([`Config::sdk_secret`]).
    sdk_key: Option<TokenKey>,
    fleets: Vec<FleetSpec>,
    registry: Arc<dyn Registry>,
    children: BTreeMap<String, Child>,
}

impl Controller {
    /// Takes new fleet specs if they are all valid.
    fn update(&mut self, fleets: Vec<FleetSpec>) {
        for (i, fleet) in fleets.iter().enumerate() {
            if let Err(error) = fleet.validate(&format!("fleets[{i}]")) {
                tracing::error!(%error, "refusing the new fleet specs; keeping the current ones");
                return;
            }
        }
        for fleet in &fleets {
            let before = self.fleets.iter().find(|f| f.name == fleet.name).map(FleetSpec::template_version);
            let after = fleet.template_version();
            if before.as_ref().is_some_and(|b| *b != after) {
                tracing::info!(fleet = %fleet.name, from = ?before, to = %after, "fleet template changed: rolling its servers");
            }
        }
        self.fleets = fleets;
    }

    async fn reconcile(&mut self, desired: &DesiredReplicas) {
        self.reap().await;
        match self.observe().await {
            Ok(observed) => {
                let running: BTreeSet<String> = self
                    .children
                    .iter()
                    .filter(|(_, c)| c.phase == Phase::Running)
                    .map(|(name, _)| name.clone())
                    .collect();
                let actions = plan(&crate::plan::rollouts(&self.fleets), desired, &observed, &running);
                self.execute(actions).await;
            }
            Err(error) => {
                self.count_error(&error);
                tracing::warn!(%error, "cannot read the fleets; skipping this reconcile");
            }
        }
        self.publish_running();
    }

    /// Every record of every fleet; all or nothing, as [`plan`] requires. Each fleet is
    /// declared first, so allocations know its regions before it has a server.
    async fn observe(&self) -> Result<Vec<GameServer>, ControllerError> {
        let mut observed = Vec::new();
        for fleet in &self.fleets {
            let regions: Vec<String> = fleet.regions.iter().map(|r| r.name.clone()).collect();
            self.registry.declare_fleet(&fleet.name, &regions).await?;
            observed.extend(self.registry.list(Some(&fleet.name)).await?);
        }
        Ok(observed)
    }

    /// Collects exited children and escalates stops that outlived their grace.
    async fn reap(&mut self) {
        let now = Instant::now();
        let mut exited: Vec<(String, ExitStatus)> = Vec::new();
        for (name, child) in &mut self.children {
            match child.process.try_wait() {
                Ok(Some(status)) => exited.push((name.clone(), status)),
                Ok(None) => {
                    if let Phase::Stopping { deadline } = child.phase
                        && now >= deadline
                    {
                        tracing::warn!(server = %name, grace = ?self.config.stop_grace, "game server did not stop in time; killing it");
                        if let Err(error) = child.process.start_kill() {
                            tracing::warn!(server = %name, %error, "cannot kill game server");
                        }
                        child.phase = Phase::Killed;
                        if let Some(metrics) = &self.config.metrics {
                            metrics.killed.get_or_create(&child.labels()).inc();
                        }
                    }
                }
                Err(error) => tracing::warn!(server = %name, %error, "cannot poll game-server process"),
            }
        }
        for (name, status) in exited {
            let Some(child) = self.children.remove(&name) else { continue };
            match child.phase {
                Phase::Running => self.exited_while_running(&name, &child, status).await,
                Phase::Stopping { .. } => tracing::info!(server = %name, %status, "game server stopped"),
                Phase::Killed => tracing::debug!(server = %name, %status, "killed game server reaped"),
            }
        }
    }

    async fn exited_while_running(&self, name: &str, child: &Child, status: ExitStatus) {
        match self.registry.transition(name, GameServerState::Unhealthy).await {
            Ok(_) => {
                tracing::warn!(server = %name, fleet = %child.fleet, region = %child.region, %status, "game server exited; marked Unhealthy");
                if let Some(metrics) = &self.config.metrics {
                    metrics.exited.get_or_create(&child.labels()).inc();
                }
            }
            // Its record had already ended (it said goodbye, or was given up on) or is gone.
            Err(RegistryError::NotFound(_) | RegistryError::IllegalTransition(_)) => {
                tracing::info!(server = %name, %status, "game server exited after its record ended");
            }
            Err(error) => {
                let error = ControllerError::from(error);
                self.count_error(&error);
                tracing::warn!(server = %name, %status, %error, "game server exited; cannot mark it Unhealthy (the health sweep will)");
            }
        }
    }

    async fn execute(&mut self, actions: Vec<Action>) {
        // One failure to start per fleet per reconcile is enough: the next reconcile
        // tries again, and the log does not fill up with the same error.
        let mut failing: BTreeSet<String> = BTreeSet::new();
        for action in actions {
            match action {
                Action::Start { fleet, region } => {
                    if failing.contains(&fleet) {
                        continue;
                    }
                    if let Err(error) = self.start(&fleet, &region).await {
                        self.count_error(&error);
                        tracing::warn!(%fleet, %region, %error, "cannot start a game server; retrying at the next reconcile");
                        failing.insert(fleet);
                    }
                }
                Action::Stop { name } => self.stop(&name).await,
                Action::Drain { name } => self.drain(&name).await,
                Action::Kill { name } => self.kill(&name),
            }
        }
    }

    async fn start(&mut self, fleet: &str, region: &str) -> Result<(), ControllerError> {
        let Some(spec) = self.fleets.iter().find(|f| f.name == fleet) else {
            return Ok(());
        };
        let name = process::server_name(fleet, region);
        let mut record = GameServer::scheduled(&name, fleet, region, spec.world_capacity, spec.player_capacity);
        record.labels = spec.labels.clone();
        record.labels.insert(gaia_api::fleet::TEMPLATE_LABEL.to_string(), spec.template_version());
        record.health = spec.health;
        self.registry.schedule(record).await?;

        let sdk_token = self.sdk_key.as_ref().map(|key| key.sdk_token(&name));
        let id = ServerIdentity {
            name: &name,
            region,
            sdk_url: &self.config.sdk_url,
            join_secret: &self.config.join_secret,
            sdk_token: sdk_token.as_deref(),
            env: &self.config.env,
        };
        let spawned = match process::command(spec, id) {
            Some((program, mut command)) => command.spawn().map_err(|source| ControllerError::Spawn {
                name: name.clone(),
                program: program.display().to_string(),
                source,
            }),
            None => Err(ControllerError::Spawn {
                name: name.clone(),
                program: String::new(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "the template names no program"),
            }),
        };
        let process = match spawned {
            Ok(process) => process,
            Err(error) => {
                if let Err(e) = self.registry.transition(&name, GameServerState::Error).await {
                    tracing::debug!(server = %name, error = %e, "cannot mark the unstarted server Error");
                }
                return Err(error);
            }
        };
        tracing::info!(server = %name, %fleet, %region, pid = process.id(), "game server started");
        let child = Child { fleet: fleet.to_string(), region: region.to_string(), process, phase: Phase::Running };
        if let Some(metrics) = &self.config.metrics {
            metrics.started.get_or_create(&child.labels()).inc();
        }
        self.children.insert(name, child);
        Ok(())
    }

    async fn stop(&mut self, name: &str) {
        let record = match self.registry.retire(name).await {
            Ok(record) => record,
            Err(RegistryError::Conflict(reason)) => {
                tracing::debug!(server = %name, %reason, "not stopping: an allocation landed first");
                return;
            }
            Err(error) => {
                let error = ControllerError::from(error);
                self.count_error(&error);
                tracing::warn!(server = %name, %error, "cannot retire game server");
                return;
            }
        };
        tracing::info!(server = %name, fleet = %record.fleet, region = %record.region, "scaling down: game server retired");
        if let Some(metrics) = &self.config.metrics {
            metrics.stopped.get_or_create(&RegionLabels::new(&record.fleet, &record.region)).inc();
        }
        let deadline = Instant::now() + self.config.stop_grace;
        let signalled = match self.children.get_mut(name) {
            Some(child) => {
                child.phase = Phase::Stopping { deadline };
                child.signal(name, Signal::SIGTERM)
            }
            // Not ours (started by hand, or by a controller before a restart): retiring
            // the record is all we can do.
            None => return,
        };
        if let Err(error) = signalled {
            self.count_error(&error);
            tracing::warn!(%error, "cannot ask game server to stop; it is killed at the end of its grace");
        }
    }

    /// Scale-down of a server that hosts worlds: it moves them away and exits by itself
    /// (it watches its record); if it has not within `stop_grace`, it is killed.
    async fn drain(&mut self, name: &str) {
        match self.registry.transition(name, GameServerState::Draining).await {
            Ok(record) => {
                tracing::info!(server = %name, worlds = record.worlds, "scaling down: draining a server that hosts worlds");
                if let Some(metrics) = &self.config.metrics {
                    metrics.drained.get_or_create(&RegionLabels::new(&record.fleet, &record.region)).inc();
                }
                if let Some(child) = self.children.get_mut(name) {
                    child.phase = Phase::Stopping { deadline: Instant::now() + self.config.stop_grace };
                }
            }
            Err(error) => {
                let error = ControllerError::from(error);
                self.count_error(&error);
                tracing::warn!(server = %name, %error, "cannot drain game server");
            }
        }
    }

    fn kill(&mut self, name: &str) {
        let Some(child) = self.children.get_mut(name) else { return };
        tracing::warn!(server = %name, "the server's record ended or vanished but its process runs; killing it");
        if let Err(error) = child.process.start_kill() {
            tracing::warn!(server = %name, %error, "cannot kill game server");
        }
        child.phase = Phase::Killed;
        if let Some(metrics) = &self.config.metrics {
            metrics.killed.get_or_create(&child.labels()).inc();
        }
    }

    fn publish_running(&self) {
        let Some(metrics) = &self.config.metrics else { return };
        let mut counts: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for fleet in &self.fleets {
            for region in &fleet.regions {
                counts.insert((&fleet.name, &region.name), 0);
            }
        }
        for child in self.children.values() {
            *counts.entry((&child.fleet, &child.region)).or_default() += 1;
        }
        for ((fleet, region), count) in counts {
            metrics.running.get_or_create(&RegionLabels::new(fleet, region)).set(count);
        }
    }

    fn count_error(&self, error: &ControllerError) {
        if let Some(metrics) = &self.config.metrics {
            metrics.errors.get_or_create(&ErrorLabels { error: error.metric_label() }).inc();
        }
    }

    /// SIGINT to every child still serving, then one shared deadline: waiting for the
    /// children one after another against it takes no longer than waiting for all at
    /// once. Whatever still runs at the deadline gets SIGKILL.
    async fn shutdown(mut self) {
        let deadline = Instant::now() + self.config.stop_grace;
        for (name, child) in &self.children {
            if child.phase == Phase::Running
                && let Err(error) = child.signal(name, Signal::SIGINT)
            {
                tracing::warn!(%error, "cannot ask game server to stop");
            }
        }
        let children = std::mem::take(&mut self.children);
        if !children.is_empty() {
            tracing::info!(children = children.len(), grace = ?self.config.stop_grace, "stopping game servers");
        }
        for (name, mut child) in children {
            match tokio::time::timeout_at(deadline, child.process.wait()).await {
                Ok(Ok(status)) => tracing::debug!(server = %name, %status, "game server exited"),
                Ok(Err(error)) => tracing::warn!(server = %name, %error, "cannot wait for game server"),
                Err(_) => {
                    tracing::warn!(server = %name, "game server did not stop in time; killing it");
                    if let Err(error) = child.process.kill().await {
                        tracing::warn!(server = %name, %error, "cannot kill game server");
                    }
                    if let Some(metrics) = &self.config.metrics {
                        metrics.killed.get_or_create(&child.labels()).inc();
                    }
                    // It could not say goodbye; do not leave its record looking live.
                    let _ = self.registry.transition(&name, GameServerState::Unhealthy).await;
                }
            }
        }
        self.publish_running();
    }
}
