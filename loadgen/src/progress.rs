//! What a run has done so far, shared by its bots and printed once a second to stderr
//! (`gaia loadgen`), so a long run is not silent. The final [`crate::Report`] is built
//! from the bots' own outcomes, not from this.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::report::MAX_LATENCY_US;

pub(crate) struct Progress {
    /// What the line starts with.
    name: &'static str,
    bots: usize,
    started: Instant,
    /// Bots that got their Welcome.
    joined: AtomicUsize,
    inputs_ok: AtomicU64,
    /// Microseconds from sending an accepted input to its result, since the start.
    input_latency: Mutex<Histogram<u64>>,
}

impl Progress {
    pub(crate) fn new(bots: usize) -> anyhow::Result<Self> {
        Self::named("loadgen", bots)
    }

    /// The progress of another phase than the bots' (the raw baseline's connections).
    pub(crate) fn named(name: &'static str, bots: usize) -> anyhow::Result<Self> {
        Ok(Self {
            name,
            bots,
            started: Instant::now(),
            joined: AtomicUsize::new(0),
            inputs_ok: AtomicU64::new(0),
            input_latency: Mutex::new(crate::report::latency_histogram()?),
        })
    }

    pub(crate) fn bot_joined(&self) {
        self.joined.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn joined(&self) -> usize {
        self.joined.load(Ordering::Relaxed)
    }

    pub(crate) fn input_ok(&self, latency: Duration) {
        self.inputs_ok.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).clamp(1, MAX_LATENCY_US);
        let mut histogram = self.input_latency.lock().unwrap_or_else(PoisonError::into_inner);
        // In bounds by the clamp above, so this cannot fail.
        let _ = histogram.record(us);
    }

    /// One line: time since the start, bots joined, inputs accepted, their p99 so far.
    pub(crate) fn line(&self) -> String {
        let p99 = {
            let histogram = self.input_latency.lock().unwrap_or_else(PoisonError::into_inner);
            (!histogram.is_empty()).then(|| histogram.value_at_quantile(0.99))
        };
        let p99 = p99.map_or_else(|| "-".to_string(), |us| format!("{:.1} ms", us as f64 / 1000.0));
        format!(
            "{} {:>4}s  bots joined {}/{}  inputs ok {}  input->result p99 {p99}",
            self.name,
            self.started.elapsed().as_secs(),
            self.joined(),
            self.bots,
            self.inputs_ok.load(Ordering::Relaxed),
        )
    }

    /// Prints [`Self::line`] to stderr every `period` until `stop`.
    pub(crate) async fn print_every(&self, period: Duration, stop: CancellationToken) {
        let mut every = tokio::time::interval_at(Instant::now() + period, period);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => eprintln!("{}", self.line()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_line_counts_joins_and_accepted_inputs() {
        let progress = Progress::new(3).unwrap();
        assert_eq!(progress.line(), "loadgen    0s  bots joined 0/3  inputs ok 0  input->result p99 -");
        tokio::time::advance(Duration::from_secs(2)).await;
        progress.bot_joined();
        progress.bot_joined();
        for ms in 1..=100 {
            progress.input_ok(Duration::from_millis(ms));
        }
        assert_eq!(progress.line(), "loadgen    2s  bots joined 2/3  inputs ok 100  input->result p99 99.0 ms");
    }
}
