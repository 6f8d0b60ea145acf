//! A game server's activity-log writer: worlds hand it their messages ([`LogWriter::push`],
//! never waiting), and one task appends them in batches, every second or every
//! [`BATCH`] messages, retrying a failed batch with backoff while the store is down.
//! Messages wait in a bounded queue meanwhile ([`QUEUE`]); past it, new ones are dropped
//! and counted (`gaia_messages_dropped_total`), so an outage costs log lines, never a
//! tick or unbounded memory. On stop it writes what it holds once more.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::StoreError;
use crate::message_log::{Message, MessageLog};

/// Messages per append.
pub const BATCH: usize = 1000;
/// Messages held while the store is slow or down.
pub const QUEUE: usize = 100_000;
/// How long a message waits for its batch to fill.
const EVERY: Duration = Duration::from_secs(1);
/// Pauses after a failed append: doubling from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(10));

#[derive(Clone, Default)]
pub struct LogMetrics {
    pub written: Counter,
    pub dropped: Counter,
    pub failed: Counter,
    pub queued: Gauge,
}

impl LogMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let r = registry.sub_registry_with_prefix("gaia_messages");
        r.register("written", "Activity-log messages written", metrics.written.clone());
        r.register("dropped", "Activity-log messages dropped: the queue was full", metrics.dropped.clone());
        r.register("failed_batches", "Activity-log appends that failed (and were retried)", metrics.failed.clone());
        r.register("queued", "Activity-log messages waiting to be written", metrics.queued.clone());
        metrics
    }
}

/// Cheap to clone; every world of a server shares one.
#[derive(Clone)]
pub struct LogWriter {
    tx: mpsc::Sender<Message>,
    metrics: LogMetrics,
    /// The store it writes to, for reading a world's last lines back.
    log: Arc<dyn MessageLog>,
}

impl LogWriter {
    /// Starts the writer task; it ends after `stop`, once it has written what it holds
    /// (or failed to, once).
    pub fn start(
        log: Arc<dyn MessageLog>,
        metrics: LogMetrics,
        stop: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(log.clone(), rx, metrics.clone(), stop));
        (Self { tx, metrics, log }, task)
    }

    /// The world's last `n` lines in the store, oldest first (what is still queued here
    /// is not among them).
    pub async fn last(&self, world_id: &str, n: usize) -> Result<Vec<Message>, StoreError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut page = self.log.page(world_id, None, n).await?;
        page.reverse();
        Ok(page)
    }

    /// Queues `message` for the log; never waits.
    pub fn push(&self, message: Message) {
        if self.tx.try_send(message).is_ok() {
            self.metrics.queued.inc();
        } else {
            self.metrics.dropped.inc();
        }
    }
}

async fn run(log: Arc<dyn MessageLog>, mut rx: mpsc::Receiver<Message>, metrics: LogMetrics, stop: CancellationToken) {
    let mut batch: Vec<Message> = Vec::with_capacity(BATCH);
    let mut pause = BACKOFF.0;
    loop {
        // Fill the batch: up to BATCH, or what came within EVERY of the first.
        if batch.is_empty() {
            tokio::select! {
                _ = stop.cancelled() => break,
                first = rx.recv() => match first {
                    Some(m) => batch.push(m),
                    None => break,
                },
            }
        }
        let deadline = tokio::time::Instant::now() + EVERY;
        while batch.len() < BATCH {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep_until(deadline) => break,
                next = rx.recv() => match next {
                    Some(m) => batch.push(m),
                    None => break,
                },
            }
        }
        match log.append(&batch).await {
            Ok(()) => {
                metrics.written.inc_by(batch.len() as u64);
                metrics.queued.dec_by(batch.len() as i64);
                batch.clear();
                pause = BACKOFF.0;
            }
            Err(e) => {
                metrics.failed.inc();
                tracing::warn!(error = %e, messages = batch.len(), retry_in = ?pause, "activity log not written; retrying");
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(BACKOFF.1);
            }
        }
        if stop.is_cancelled() {
            break;
        }
    }
    // What is held and queued, once more.
    rx.close();
    while let Some(m) = rx.recv().await {
        batch.push(m);
    }
    for chunk in batch.chunks(BATCH) {
        match log.append(chunk).await {
            Ok(()) => {
                metrics.written.inc_by(chunk.len() as u64);
            }
            Err(e) => tracing::warn!(error = %e, messages = chunk.len(), "activity log lost at shutdown"),
        }
        metrics.queued.dec_by(chunk.len() as i64);
    }
}
