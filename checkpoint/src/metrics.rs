//! Checkpoint metrics, all under `gaia_checkpoint_`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabels {
    pub tier: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub tier: &'static str,
    /// `ok`, `fenced`, `stale` or `error`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoadLabels {
    /// `restored`, `none` or `unavailable`.
    pub result: &'static str,
}

pub struct Metrics {
    /// Checkpoints written, by tier and result.
    pub writes: Family<WriteLabels, Counter>,
    pub written_bytes: Family<TierLabels, Counter>,
    /// Time to write one batch to one tier.
    pub batch_seconds: Family<TierLabels, Histogram, fn() -> Histogram>,
    /// Worlds whose newest checkpoint is not yet in the tier.
    pub backlog: Family<TierLabels, Gauge>,
    /// Checkpoints read that failed their checks and were skipped.
    pub corrupt: Family<TierLabels, Counter>,
    pub loads: Family<LoadLabels, Counter>,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self::unregistered();
        let r = registry.sub_registry_with_prefix("gaia_checkpoint");
        r.register("writes", "Checkpoints written, by tier and result", metrics.writes.clone());
        r.register("written_bytes", "Checkpoint bytes written, by tier", metrics.written_bytes.clone());
        r.register("batch_duration_seconds", "Time to write one batch to one tier", metrics.batch_seconds.clone());
        r.register(
            "backlog_worlds",
            "Worlds whose newest checkpoint the tier does not hold yet",
            metrics.backlog.clone(),
        );
        r.register("corrupt", "Checkpoints read that failed their checks and were skipped", metrics.corrupt.clone());
        r.register("loads", "World loads, by result", metrics.loads.clone());
        metrics
    }

    /// Metrics nobody scrapes (tests, tools).
    pub fn unregistered() -> Self {
        Self {
            writes: Family::default(),
            written_bytes: Family::default(),
            batch_seconds: Family::new_with_constructor(batch_histogram),
            backlog: Family::default(),
            corrupt: Family::default(),
            loads: Family::default(),
        }
    }
}

/// 100 µs .. ~6.5 s
fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1e-4, 2.0, 17))
}
