//! The autoscaler's Prometheus metrics, under the prefix `gaia_autoscaler`.

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
pub struct DecisionLabels {
    pub fleet: String,
    pub region: String,
    /// `up` or `down`.
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: &'static str,
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// Desired replicas as last published, by fleet and region.
    pub desired_replicas: Family<RegionLabels, Gauge>,
    /// Changes of desired replicas, by fleet, region and direction.
    pub scale_decisions: Family<DecisionLabels, Counter>,
    /// Failed reads of the registry, by error kind (retried at the next sync).
    pub errors: Family<ErrorLabels, Counter>,
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
            "scale_decisions",
            "Changes of desired replicas, by fleet, region and direction (up, down)",
            metrics.scale_decisions.clone(),
        );
        registry.register("errors", "Failed registry reads, by error kind", metrics.errors.clone());
        metrics
    }

    pub(crate) fn set_desired(&self, fleet: &str, region: &str, replicas: u32) {
        let labels = RegionLabels { fleet: fleet.to_string(), region: region.to_string() };
        self.desired_replicas.get_or_create(&labels).set(i64::from(replicas));
    }
}
