//! The controller's Prometheus metrics, under the prefix `gaia_controller`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegionLabels {
    pub fleet: String,
    pub region: String,
}

impl RegionLabels {
    pub fn new(fleet: &str, region: &str) -> Self {
        Self { fleet: fleet.to_string(), region: region.to_string() }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: &'static str,
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// Game-server processes spawned.
    pub started: Family<RegionLabels, Counter>,
    /// Idle servers retired and sent SIGTERM (scale-down).
    pub stopped: Family<RegionLabels, Counter>,
    /// Servers hosting worlds marked Draining (scale-down): they move their worlds and exit.
    pub drained: Family<RegionLabels, Counter>,
    /// Processes sent SIGKILL: their record ended or vanished, or they outlived the stop grace.
    pub killed: Family<RegionLabels, Counter>,
    /// Processes that exited while their server was live (crash, or killed from outside).
    pub exited: Family<RegionLabels, Counter>,
    /// Child processes not yet reaped.
    pub running: Family<RegionLabels, Gauge>,
    /// Failed operations, by [`crate::ControllerError::metric_label`].
    pub errors: Family<ErrorLabels, Counter>,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let registry = registry.sub_registry_with_prefix("gaia_controller");
        registry.register("processes_started", "Game-server processes spawned", metrics.started.clone());
        registry.register("processes_stopped", "Idle game servers retired and sent SIGTERM", metrics.stopped.clone());
        registry.register(
            "servers_drained",
            "Game servers hosting worlds drained for scale-down",
            metrics.drained.clone(),
        );
        registry.register("processes_killed", "Game-server processes sent SIGKILL", metrics.killed.clone());
        registry.register(
            "processes_exited",
            "Game-server processes that exited while their server was live",
            metrics.exited.clone(),
        );
        registry.register("processes_running", "Game-server child processes not yet reaped", metrics.running.clone());
        registry.register("errors", "Failed controller operations, by kind", metrics.errors.clone());
        metrics
    }
}
