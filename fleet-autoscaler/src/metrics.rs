//! The autoscaler's Prometheus metrics, under the prefix `gaia_autoscaler`.

use gaia_api::autoscaler::FleetAutoscalerStatus;
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FleetLabels {
    pub fleet: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub fleet: String,
    pub region: String,
    /// `up` or `down`.
    pub direction: &'static str,
    /// The policy's reason: `buffer`, `unmet_demand`, `min_replicas`, `max_replicas`,
    /// `webhook`, `webhook_keep`, `webhook_error`, `inactive`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: &'static str,
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// Desired replicas as last published, by fleet and region.
    pub desired_replicas: Family<RegionLabels, Gauge>,
    /// Live servers (Scheduled included) at the last decision.
    pub current_replicas: Family<RegionLabels, Gauge>,
    /// What the policy keeps free, in its unit (world slots or servers).
    pub buffer: Family<RegionLabels, Gauge>,
    /// Free world slots at the last decision.
    pub free_world_slots: Family<RegionLabels, Gauge>,
    /// Requests waiting for a slot, as the autoscaler counts them.
    pub waiting_requests: Family<RegionLabels, Gauge>,
    /// Allocations per second over the rate window.
    pub allocation_rate: Family<RegionLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Changes of desired replicas, by fleet, region, direction and reason.
    pub scale_decisions: Family<DecisionLabels, Counter>,
    /// Failed registry reads, by error kind (retried at the next sync).
    pub errors: Family<ErrorLabels, Counter>,
    /// Failed webhook calls, by error kind (the region keeps its replicas).
    pub webhook_errors: Family<ErrorLabels, Counter>,
    /// When the fleet was last recomputed from a good registry read (Unix seconds): an
    /// autoscaler that stops deciding shows as this falling behind the clock.
    pub last_success: Family<FleetLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let registry = registry.sub_registry_with_prefix("gaia_autoscaler");
        registry.register(
            "desired_replicas",
            "Desired game servers, by fleet and region",
            metrics.desired_replicas.clone(),
        );
        registry.register(
            "current_replicas",
            "Live game servers (Scheduled included), by fleet and region",
            metrics.current_replicas.clone(),
        );
        registry.register(
            "buffer",
            "What the policy keeps free, in its unit (world slots or servers), by fleet and region",
            metrics.buffer.clone(),
        );
        registry.register(
            "free_world_slots",
            "Free world slots at the last decision, by fleet and region",
            metrics.free_world_slots.clone(),
        );
        registry.register(
            "waiting_requests",
            "Allocation requests waiting for a slot, by fleet and region",
            metrics.waiting_requests.clone(),
        );
        registry.register(
            "allocation_rate",
            "Allocations (and unmet requests) per second, by fleet and region",
            metrics.allocation_rate.clone(),
        );
        registry.register(
            "scale_decisions",
            "Changes of desired replicas, by fleet, region, direction (up, down) and reason",
            metrics.scale_decisions.clone(),
        );
        registry.register("errors", "Failed registry reads, by error kind", metrics.errors.clone());
        registry.register("webhook_errors", "Failed webhook calls, by error kind", metrics.webhook_errors.clone());
        registry.register(
            "last_success_timestamp_seconds",
            "When the fleet was last recomputed from a good registry read (Unix seconds), by fleet",
            metrics.last_success.clone(),
        );
        metrics
    }

    pub(crate) fn set_desired(&self, fleet: &str, region: &str, replicas: u32) {
        let labels = RegionLabels { fleet: fleet.to_string(), region: region.to_string() };
        self.desired_replicas.get_or_create(&labels).set(i64::from(replicas));
    }

    /// Sets every gauge of the fleet from its explained status.
    pub(crate) fn observe(&self, status: &FleetAutoscalerStatus) {
        for r in &status.regions {
            let labels = RegionLabels { fleet: status.fleet.clone(), region: r.region.clone() };
            self.desired_replicas.get_or_create(&labels).set(i64::from(r.desired_replicas));
            self.current_replicas.get_or_create(&labels).set(i64::from(r.current_replicas));
            self.buffer.get_or_create(&labels).set(i64::from(r.buffer.target));
            let free =
                i64::from(r.current_replicas) * i64::from(r.inputs.world_capacity) - i64::from(r.inputs.used_worlds);
            self.free_world_slots.get_or_create(&labels).set(free.max(0));
            self.waiting_requests.get_or_create(&labels).set(i64::from(r.inputs.waiting_requests));
            self.allocation_rate.get_or_create(&labels).set(r.inputs.allocation_rate);
        }
    }

    pub(crate) fn decision(&self, fleet: &str, region: &str, direction: &'static str, reason: &'static str) {
        let labels = DecisionLabels { fleet: fleet.to_string(), region: region.to_string(), direction, reason };
        self.scale_decisions.get_or_create(&labels).inc();
    }

    pub(crate) fn succeeded(&self, fleet: &str, at: chrono::DateTime<chrono::Utc>) {
        let seconds = at.timestamp_millis() as f64 / 1000.0;
        self.last_success.get_or_create(&FleetLabels { fleet: fleet.to_string() }).set(seconds);
    }

    pub(crate) fn error(&self, error: &'static str) {
        self.errors.get_or_create(&ErrorLabels { error }).inc();
    }

    pub(crate) fn webhook_error(&self, error: &'static str) {
        self.webhook_errors.get_or_create(&ErrorLabels { error }).inc();
    }
}
