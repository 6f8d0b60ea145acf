//! The tiered writer: what a game server uses to checkpoint its worlds.
//!
//! A world hands over its newest checkpoint with [`Tiers::put`], which only swaps it
//! into each tier's map of pending checkpoints (newest wins, one per world): a tick never
//! waits for a store. One task per tier takes the whole map on its interval and writes
//! it as one batch. A failed batch goes back into the map (unless a newer checkpoint
//! arrived meanwhile) and the task retries with backoff; the map's size is the tier's
//! backlog, exported as a metric and in [`Tiers::health`]. [`Tiers::flush`] writes every
//! tier now and says whether it worked (drain, shutdown, a world's end).
//!
//! A write a store refuses as fenced means another server owns the world now: the
//! world's id is noted and [`Tiers::take_fenced`] tells its world task to stop.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::{LoadLabels, Metrics, TierLabels, WriteLabels};
use crate::{Checkpoint, Store, StoreError, Written};

/// Longest a single batch write may take before it counts as failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Backoff after a failed batch: doubling from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// One tier: a store and how often its pending checkpoints are written.
#[derive(Clone)]
pub struct Tier {
    pub store: Arc<dyn Store>,
    pub every: Duration,
}

/// How a tier is doing, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierHealth {
    pub kind: &'static str,
    /// Worlds whose newest checkpoint this tier does not hold yet.
    pub backlog: usize,
    /// Since when writes fail, and the last error; `None` while they work.
    pub failing: Option<(Duration, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("checkpoint flush failed: {}", .0.join("; "))]
pub struct FlushError(pub Vec<String>);

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A tier could not be asked; it may hold the newest checkpoint, so nothing is loaded.
    #[error("{kind} checkpoint store unavailable: {source}")]
    Unavailable {
        kind: &'static str,
        #[source]
        source: StoreError,
    },
}

type FlushReply = oneshot::Sender<Result<(), String>>;

struct TierState {
    store: Arc<dyn Store>,
    every: Duration,
    labels: TierLabels,
    pending: Mutex<HashMap<String, Arc<Checkpoint>>>,
    /// The batch being written: no longer pending, maybe not yet stored. Locked after
    /// `pending` when both are.
    writing: Mutex<HashMap<String, Arc<Checkpoint>>>,
    flush: mpsc::UnboundedSender<FlushReply>,
    failing: Mutex<Option<(Instant, String)>>,
}

pub struct Tiers {
    tiers: Vec<TierState>,
    metrics: Arc<Metrics>,
    /// Worlds a store refused as fenced, with the epoch it holds.
    fenced: Mutex<HashMap<String, u64>>,
}

impl Tiers {
    /// Starts one writer task per tier. They run until `stop`, then write what is
    /// pending once more and end.
    pub fn start(tiers: Vec<Tier>, metrics: Arc<Metrics>, stop: CancellationToken) -> Arc<Self> {
        let mut receivers = Vec::new();
        let states = tiers
            .into_iter()
            .map(|tier| {
                let (flush, rx) = mpsc::unbounded_channel();
                receivers.push(rx);
                TierState {
                    labels: TierLabels { tier: tier.store.kind() },
                    store: tier.store,
                    every: tier.every,
                    pending: Mutex::new(HashMap::new()),
                    writing: Mutex::new(HashMap::new()),
                    flush,
                    failing: Mutex::new(None),
                }
            })
            .collect();
        let this = Arc::new(Self { tiers: states, metrics, fenced: Mutex::new(HashMap::new()) });
        for (i, rx) in receivers.into_iter().enumerate() {
            tokio::spawn(Arc::clone(&this).run_tier(i, rx, stop.clone()));
        }
        this
    }

    /// Queues `checkpoint` for every tier, replacing an older one of the same world.
    /// Never waits on a store.
    pub fn put(&self, checkpoint: Checkpoint) {
        let checkpoint = Arc::new(checkpoint);
        for tier in &self.tiers {
            let mut pending = tier.pending.lock();
            keep_newest(&mut pending, Arc::clone(&checkpoint));
            self.metrics.backlog.get_or_create(&tier.labels).set(pending.len() as i64);
        }
    }

    /// Writes everything pending to every tier now; `Err` names the tiers that failed
    /// (their checkpoints stay pending and are retried).
    pub async fn flush(&self) -> Result<(), FlushError> {
        let waits: Vec<_> = self
            .tiers
            .iter()
            .map(|tier| {
                let (reply, answer) = oneshot::channel();
                let sent = tier.flush.send(reply).is_ok();
                async move {
                    match (sent, answer.await) {
                        (true, Ok(Ok(()))) => Ok(()),
                        (true, Ok(Err(e))) => Err(format!("{}: {e}", tier.labels.tier)),
                        _ => Err(format!("{}: writer stopped", tier.labels.tier)),
                    }
                }
            })
            .collect();
        let failed: Vec<String> =
            futures_util::future::join_all(waits).await.into_iter().filter_map(Result::err).collect();
        if failed.is_empty() { Ok(()) } else { Err(FlushError(failed)) }
    }

    /// If a store refused `world_id`'s checkpoint as fenced: the epoch it holds.
    pub fn take_fenced(&self, world_id: &str) -> Option<u64> {
        self.fenced.lock().remove(world_id)
    }

    /// Drops `world_id`'s pending checkpoints (the world is no longer ours).
    pub fn forget(&self, world_id: &str) {
        for tier in &self.tiers {
            let mut pending = tier.pending.lock();
            pending.remove(world_id);
            self.metrics.backlog.get_or_create(&tier.labels).set(pending.len() as i64);
        }
    }

    pub fn health(&self) -> Vec<TierHealth> {
        self.tiers
            .iter()
            .map(|tier| TierHealth {
                kind: tier.labels.tier,
                backlog: tier.pending.lock().len(),
                failing: tier.failing.lock().as_ref().map(|(since, e)| (since.elapsed(), e.clone())),
            })
            .collect()
    }

    /// Every valid checkpoint of `world_id`, newest first: from each store and from what
    /// is still pending or being written here. Corrupt ones are logged, counted and
    /// skipped. Every store must answer: one that cannot be asked may hold the newest
    /// checkpoint.
    pub async fn load(&self, world_id: &str) -> Result<Vec<Checkpoint>, LoadError> {
        // Taken before the reads: a checkpoint that leaves here afterwards is in its store
        // by the time that store is read.
        let mut found: Vec<Checkpoint> = Vec::new();
        for tier in &self.tiers {
            let pending = tier.pending.lock();
            let writing = tier.writing.lock();
            found.extend(
                [pending.get(world_id), writing.get(world_id)].into_iter().flatten().map(|c| Checkpoint::clone(c)),
            );
        }
        let reads = futures_util::future::join_all(self.tiers.iter().map(|t| t.store.read(world_id))).await;
        for (tier, read) in self.tiers.iter().zip(reads) {
            match read {
                Err(source) => {
                    self.metrics.loads.get_or_create(&LoadLabels { result: "unavailable" }).inc();
                    return Err(LoadError::Unavailable { kind: tier.labels.tier, source });
                }
                Ok(None) => {}
                Ok(Some(bytes)) => match Checkpoint::decode(world_id, bytes) {
                    Ok(checkpoint) => found.push(checkpoint),
                    Err(error) => {
                        self.metrics.corrupt.get_or_create(&tier.labels).inc();
                        tracing::error!(world = %world_id, tier = tier.labels.tier, %error, "skipping a corrupt checkpoint");
                    }
                },
            }
        }
        found.sort_by_key(|c| std::cmp::Reverse((c.epoch(), c.tick())));
        found.dedup_by(|a, b| (a.epoch(), a.tick()) == (b.epoch(), b.tick()));
        let result = if found.is_empty() { "none" } else { "restored" };
        self.metrics.loads.get_or_create(&LoadLabels { result }).inc();
        Ok(found)
    }

    async fn run_tier(
        self: Arc<Self>,
        i: usize,
        mut flushes: mpsc::UnboundedReceiver<FlushReply>,
        stop: CancellationToken,
    ) {
        let every = self.tiers[i].every.max(Duration::from_millis(10));
        let next = tokio::time::sleep(every);
        tokio::pin!(next);
        let mut backoff = BACKOFF.0;
        loop {
            let mut waiting = Vec::new();
            tokio::select! {
                biased;
                _ = stop.cancelled() => {
                    let _ = self.write_pending(i).await;
                    while let Ok(reply) = flushes.try_recv() {
                        let _ = reply.send(Err("checkpoint writer stopped".into()));
                    }
                    return;
                }
                Some(reply) = flushes.recv() => {
                    waiting.push(reply);
                    while let Ok(reply) = flushes.try_recv() {
                        waiting.push(reply);
                    }
                }
                _ = &mut next => {}
            }
            let result = self.write_pending(i).await;
            let wait = match &result {
                Ok(()) => {
                    backoff = BACKOFF.0;
                    every
                }
                Err(_) => {
                    let wait = backoff.min(every);
                    backoff = (backoff * 2).min(BACKOFF.1);
                    wait
                }
            };
            next.as_mut().reset(Instant::now() + wait);
            for reply in waiting {
                let _ = reply.send(result.clone());
            }
        }
    }

    /// Writes tier `i`'s pending checkpoints as one batch.
    async fn write_pending(&self, i: usize) -> Result<(), String> {
        let tier = &self.tiers[i];
        let batch: Vec<Arc<Checkpoint>> = {
            let mut pending = tier.pending.lock();
            if pending.is_empty() {
                return Ok(());
            }
            let taken = std::mem::take(&mut *pending);
            let batch = taken.values().cloned().collect();
            *tier.writing.lock() = taken;
            batch
        };
        let started = Instant::now();
        let written = match tokio::time::timeout(WRITE_TIMEOUT, tier.store.write(&batch)).await {
            Ok(Ok(written)) if written.len() == batch.len() => Ok(written),
            Ok(Ok(written)) => Err(format!("store answered {} of {} writes", written.len(), batch.len())),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {WRITE_TIMEOUT:?}")),
        };
        self.metrics.batch_seconds.get_or_create(&tier.labels).observe(started.elapsed().as_secs_f64());
        let result = match written {
            Ok(written) => {
                let mut bytes = 0;
                for (checkpoint, outcome) in batch.iter().zip(written) {
                    let result = match outcome {
                        Written::Ok => {
                            bytes += checkpoint.bytes().len() as u64;
                            "ok"
                        }
                        Written::Stale { .. } => "stale",
                        Written::Fenced { epoch } => {
                            tracing::warn!(world = %checkpoint.world_id(), ours = checkpoint.epoch(), theirs = epoch, tier = tier.labels.tier, "checkpoint fenced: the world has a newer owner");
                            self.fenced.lock().insert(checkpoint.world_id().to_string(), epoch);
                            "fenced"
                        }
                    };
                    self.metrics.writes.get_or_create(&WriteLabels { tier: tier.labels.tier, result }).inc();
                }
                self.metrics.written_bytes.get_or_create(&tier.labels).inc_by(bytes);
                tier.writing.lock().clear();
                if tier.failing.lock().take().is_some() {
                    tracing::info!(tier = tier.labels.tier, "checkpoint writes work again");
                }
                Ok(())
            }
            Err(error) => {
                let labels = WriteLabels { tier: tier.labels.tier, result: "error" };
                self.metrics.writes.get_or_create(&labels).inc_by(batch.len() as u64);
                let mut pending = tier.pending.lock();
                for checkpoint in batch {
                    keep_newest(&mut pending, checkpoint);
                }
                tier.writing.lock().clear();
                let mut failing = tier.failing.lock();
                if failing.is_none() {
                    tracing::warn!(tier = tier.labels.tier, %error, backlog = pending.len(), "checkpoint writes failing; retrying with backoff");
                }
                let since = failing.as_ref().map_or_else(Instant::now, |(since, _)| *since);
                *failing = Some((since, error.clone()));
                Err(error)
            }
        };
        let backlog = tier.pending.lock().len();
        self.metrics.backlog.get_or_create(&tier.labels).set(backlog as i64);
        result
    }
}

/// Puts `checkpoint` into `pending` unless a newer one of its world is there.
fn keep_newest(pending: &mut HashMap<String, Arc<Checkpoint>>, checkpoint: Arc<Checkpoint>) {
    if !pending.get(checkpoint.world_id()).is_some_and(|p| p.is_newer_than(&checkpoint)) {
        pending.insert(checkpoint.world_id().to_string(), checkpoint);
    }
}
