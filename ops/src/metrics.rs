//! The runner's metrics, under `gaia_ops_*`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// Tokens a model counted, by model and by `token`: `prompt` (what was sent) or
/// `completion` (what it wrote).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub model: String,
    pub token: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub kind: &'static str,
    pub result: &'static str,
}

pub struct Metrics {
    /// Operations finished, by kind and result (`ok`, `timed_out`, `failed`,
    /// `overloaded`, `unsupported`).
    pub operations: Family<OutcomeLabels, Counter>,
    /// From start to outcome, by kind (queue and retries included).
    pub duration: Family<KindLabels, Histogram>,
    /// Attempts running at a provider now.
    pub in_flight: Family<KindLabels, Gauge>,
    /// Operations started and not finished: running, waiting for a slot, or between
    /// retries (so `pending - in_flight` wait).
    pub pending: Family<KindLabels, Gauge>,
    /// Attempts made again after a retryable failure.
    pub retries: Family<KindLabels, Counter>,
    /// Tokens the model providers report using (their answers' `usage`): what model
    /// calls cost.
    pub tokens: Family<TokenLabels, Counter>,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            operations: Family::default(),
            // 1 ms .. ~9 min
            duration: Family::new_with_constructor(|| Histogram::new(exponential_buckets(1e-3, 2.0, 20))),
            in_flight: Family::default(),
            pending: Family::default(),
            retries: Family::default(),
            tokens: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("gaia_ops");
        r.register("operations", "Operations finished, by kind and result", metrics.operations.clone());
        r.register("duration_seconds", "Operation time from start to outcome, by kind", metrics.duration.clone());
        r.register("in_flight", "Operation attempts running at a provider, by kind", metrics.in_flight.clone());
        r.register("pending", "Operations started and not finished, by kind", metrics.pending.clone());
        r.register("retries", "Operation attempts made again after a retryable failure", metrics.retries.clone());
        r.register(
            "model_tokens",
            "Tokens model calls used, by model and prompt or completion",
            metrics.tokens.clone(),
        );
        metrics
    }
}
