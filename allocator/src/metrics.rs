//! The allocator's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AllocationLabels {
    pub result: &'static str,
    /// Where it landed; for a failure the first region asked for, or `any`.
    pub region: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// `matchmaker` or `sdk`.
    pub endpoint: &'static str,
    /// `unauthorized` or `forbidden`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SdkLabels {
    pub call: &'static str,
    pub result: &'static str,
}

pub struct Metrics {
    /// Allocations by result (`ok`, `no_capacity`, `bad_request`, ...) and region.
    pub allocations: Family<AllocationLabels, Counter>,
    /// Allocation latency inside the allocator, by result.
    pub allocation_seconds: Family<ResultLabels, Histogram>,
    /// SDK calls from game servers, by call and result.
    pub sdk_calls: Family<SdkLabels, Counter>,
    /// Requests refused for their bearer token, by endpoint and result (also counted
    /// in `allocations` and `sdk_calls`).
    pub refused: Family<RefusedLabels, Counter>,
    /// Requests waiting for capacity (they carry a deadline and found no free slot).
    pub waiting: Gauge,
    /// Leases that ran out before a player joined, their slots given back.
    pub lease_expiries: Counter,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            allocations: Family::default(),
            // 10 µs .. ~1.3 s
            allocation_seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(1e-5, 2.0, 18))),
            sdk_calls: Family::default(),
            refused: Family::default(),
            waiting: Gauge::default(),
            lease_expiries: Counter::default(),
        };
        let registry = registry.sub_registry_with_prefix("gaia_allocator");
        registry.register("allocations", "Allocations by result and region", metrics.allocations.clone());
        registry.register(
            "allocation_duration_seconds",
            "Time to answer an allocation, by result",
            metrics.allocation_seconds.clone(),
        );
        registry.register("sdk_calls", "SDK calls from game servers, by call and result", metrics.sdk_calls.clone());
        registry.register(
            "refused_requests",
            "Requests refused for their bearer token, by endpoint and result",
            metrics.refused.clone(),
        );
        registry.register(
            "waiting_requests",
            "Allocation requests waiting for capacity until their deadline",
            metrics.waiting.clone(),
        );
        registry.register(
            "lease_expiries",
            "Allocation leases that expired before a player joined",
            metrics.lease_expiries.clone(),
        );
        metrics
    }
}
