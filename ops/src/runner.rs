//! The runner: one lane per kind of request, each with a provider, a concurrency limit, a
//! bounded queue, retries and timeouts (see the crate docs).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::task::TaskTracker;

use crate::metrics::{KindLabels, Metrics, OutcomeLabels};
use crate::provider::{Provider, ProviderError};
use crate::request::{Completed, Kind, OpError, Operation, Outcome, Request, Response};

/// How one lane runs its requests.
#[derive(Debug, Clone)]
pub struct LaneConfig {
    /// Attempts at the provider at once.
    pub concurrency: usize,
    /// Operations that may wait for a slot (or between retries) besides those running;
    /// past it an operation is [`OpError::Overloaded`] at once.
    pub queue: usize,
    /// Tries per operation, the first included (1: no retry).
    pub attempts: usize,
    /// Pause after the first failure; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Randomise the pauses (so retries of many operations do not arrive together).
    pub jitter: bool,
}

impl Default for LaneConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            queue: 1024,
            attempts: 3,
            min_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(5),
            jitter: true,
        }
    }
}

struct Lane {
    provider: Arc<dyn Provider>,
    slots: Semaphore,
    /// Operations started and not finished: running, waiting, or between retries.
    admitted: AtomicUsize,
    config: LaneConfig,
}

/// Runs operations; cheap to share (`Arc`).
pub struct Runner {
    lanes: [Option<Arc<Lane>>; Kind::ALL.len()],
    metrics: Arc<Metrics>,
    tasks: TaskTracker,
}

pub struct RunnerBuilder {
    lanes: [Option<Arc<Lane>>; Kind::ALL.len()],
}

impl RunnerBuilder {
    /// `provider` runs the requests of `kind`. A kind without a provider is
    /// [`OpError::Unsupported`].
    pub fn lane(self, kind: Kind, provider: Arc<dyn Provider>, config: LaneConfig) -> Self {
        self.shared_lane(&[kind], provider, config)
    }

    /// One lane for several kinds: they share its provider, limit and queue (a model
    /// server's chat and embeddings).
    pub fn shared_lane(mut self, kinds: &[Kind], provider: Arc<dyn Provider>, config: LaneConfig) -> Self {
        let slots = Semaphore::new(config.concurrency.max(1));
        let lane = Arc::new(Lane { provider, slots, admitted: AtomicUsize::new(0), config });
        for kind in kinds {
            self.lanes[kind.index()] = Some(Arc::clone(&lane));
        }
        self
    }

    pub fn build(self, metrics: Arc<Metrics>) -> Runner {
        Runner { lanes: self.lanes, metrics, tasks: TaskTracker::new() }
    }
}

impl Runner {
    pub fn builder() -> RunnerBuilder {
        RunnerBuilder { lanes: Default::default() }
    }

    pub fn supports(&self, kind: Kind) -> bool {
        self.lanes[kind.index()].is_some()
    }

    /// Starts `op` and returns at once; its one [`Completed`] goes to `done` when it is
    /// finished (at the latest after its timeout). Refusals (no provider, a full queue)
    /// are sent at once.
    pub fn start(&self, op: Operation, done: mpsc::UnboundedSender<Completed>) {
        let kind = op.request.kind();
        let Some(lane) = self.lanes[kind.index()].clone() else {
            self.finish(kind, op.id, Err(OpError::Unsupported { kind: kind.label().into() }), Duration::ZERO, &done);
            return;
        };
        let limit = lane.config.concurrency.max(1) + lane.config.queue;
        if lane.admitted.fetch_add(1, Ordering::AcqRel) >= limit {
            lane.admitted.fetch_sub(1, Ordering::AcqRel);
            self.finish(kind, op.id, Err(OpError::Overloaded { kind: kind.label().into() }), Duration::ZERO, &done);
            return;
        }
        let metrics = Arc::clone(&self.metrics);
        let pending = metrics.pending.get_or_create(&KindLabels { kind: kind.label() }).clone();
        pending.inc();
        self.tasks.spawn(async move {
            let started = tokio::time::Instant::now();
            let timeout = Duration::from_millis(op.timeout_ms);
            let outcome = match tokio::time::timeout(timeout, lane.run(kind, &op.request, &metrics)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(OpError::TimedOut { after_ms: op.timeout_ms }),
            };
            pending.dec();
            lane.admitted.fetch_sub(1, Ordering::AcqRel);
            record(&metrics, kind, &outcome, started.elapsed());
            let _ = done.send(Completed { id: op.id, outcome });
        });
    }

    fn finish(&self, kind: Kind, id: u64, outcome: Outcome, took: Duration, done: &mpsc::UnboundedSender<Completed>) {
        record(&self.metrics, kind, &outcome, took);
        let _ = done.send(Completed { id, outcome });
    }

    /// Waits for every started operation to finish (each within its timeout).
    pub async fn closed(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

fn record(metrics: &Metrics, kind: Kind, outcome: &Outcome, took: Duration) {
    let result = match outcome {
        Ok(_) => "ok",
        Err(OpError::TimedOut { .. }) => "timed_out",
        Err(OpError::Failed { .. }) => "failed",
        Err(OpError::Overloaded { .. }) => "overloaded",
        Err(OpError::Unsupported { .. }) => "unsupported",
        Err(OpError::Interrupted) => "interrupted",
    };
    metrics.operations.get_or_create(&OutcomeLabels { kind: kind.label(), result }).inc();
    metrics.duration.get_or_create(&KindLabels { kind: kind.label() }).observe(took.as_secs_f64());
}

/// Holds a gauge up while it lives.
struct Running(prometheus_client::metrics::gauge::Gauge);

impl Running {
    fn new(gauge: prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Lane {
    /// Every attempt the request may get, each waiting for a slot (none is held during
    /// the pauses between them).
    async fn run(&self, kind: Kind, request: &Request, metrics: &Metrics) -> Outcome {
        let labels = KindLabels { kind: kind.label() };
        let attempt = || async {
            // The semaphore is never closed.
            let _slot = self.slots.acquire().await.map_err(|_| ProviderError::permanent("lane closed"))?;
            // Counted while it runs, also when the timeout drops it half-way.
            let _running = Running::new(metrics.in_flight.get_or_create(&labels).clone());
            self.provider.run(request).await
        };
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(self.config.min_backoff)
            .with_max_delay(self.config.max_backoff)
            .with_max_times(self.config.attempts.saturating_sub(1));
        if self.config.jitter {
            backoff = backoff.with_jitter();
        }
        let safe = request.retry_safe();
        let response: Result<Response, ProviderError> = attempt
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|e: &ProviderError| e.retryable && safe)
            .notify(|e, pause| {
                metrics.retries.get_or_create(&labels).inc();
                tracing::debug!(kind = kind.label(), error = %e, ?pause, "operation failed; retrying");
            })
            .await;
        response.map_err(|e| OpError::Failed { reason: e.message })
    }
}
