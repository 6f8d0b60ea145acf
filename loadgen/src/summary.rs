//! A run's figures as data: [`Summary`] is what `gaia loadgen --report-json FILE` writes
//! and what the capacity curve ([`crate::curve`]) reads back, one per step. It is built
//! from a [`Report`]: the latency percentiles are read off the report's histograms, the
//! rest is copied; what the curve shows per bot is derived here, in one place.

use std::path::Path;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::{ProcessUse, Report};

/// A latency distribution in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Of a histogram in microseconds; `None` without samples.
    pub fn of(us: &Histogram<u64>) -> Option<Self> {
        let ms = |us: u64| us as f64 / 1000.0;
        (!us.is_empty()).then(|| Self {
            p50: ms(us.value_at_quantile(0.5)),
            p99: ms(us.value_at_quantile(0.99)),
            max: ms(us.max()),
        })
    }
}

/// One process's CPU and memory over the steady phase ([`ProcessUse`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSummary {
    /// `loadgen`, or a game server's name.
    pub name: String,
    /// Percent of one core.
    pub cpu_percent: f64,
    pub rss_bytes: u64,
    /// Game servers: connections at the end of the steady phase.
    pub connections: Option<u64>,
    /// Game servers: resident memory growth since before the bots, per connection.
    pub kib_per_connection: Option<f64>,
    /// Game servers: 99% of the steady phase's ticks took at most this (a bucket bound).
    pub tick_p99_ms: Option<f64>,
}

impl ProcessSummary {
    pub fn is_loadgen(&self) -> bool {
        self.name == "loadgen"
    }
}

impl From<&ProcessUse> for ProcessSummary {
    fn from(p: &ProcessUse) -> Self {
        Self {
            name: p.name.clone(),
            cpu_percent: p.cpu_percent,
            rss_bytes: p.rss_bytes,
            connections: p.connections,
            kib_per_connection: p.bytes_per_connection.map(|b| b / 1024.0),
            tick_p99_ms: p.tick_p99.map(|d| d.as_secs_f64() * 1e3),
        }
    }
}

/// What one `gaia loadgen` run measured, as data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    pub bots: usize,
    pub worlds: usize,
    pub joined: u64,
    /// How long the steady phase ran.
    pub duration_s: f64,
    pub deltas_per_bot_s: f64,
    /// From a tick's run on the server to its Delta's arrival; `None` without samples.
    pub tick_ms: Option<Percentiles>,
    /// From sending an input to its result; `None` without samples.
    pub input_ms: Option<Percentiles>,
    /// The load generator (with the embedded control plane, when it ran one), then each
    /// game server.
    pub processes: Vec<ProcessSummary>,
    /// The game servers' memory growth per connection, over all of them (the report's
    /// [`Figures`](crate::Figures)); `None` when no server reported one.
    pub server_kib_per_bot: Option<f64>,
    pub errors: u64,
    /// Why the run did not pass ([`Report::problems`]); empty when it did.
    pub problems: Vec<String>,
}

impl From<&Report> for Summary {
    fn from(r: &Report) -> Self {
        Self {
            bots: r.bots,
            worlds: r.worlds,
            joined: r.joined,
            duration_s: r.steady.as_secs_f64(),
            deltas_per_bot_s: r.deltas_per_bot_s,
            tick_ms: Percentiles::of(&r.tick_latency),
            input_ms: Percentiles::of(&r.input_latency),
            processes: r.processes.iter().map(ProcessSummary::from).collect(),
            server_kib_per_bot: r.figures().bytes_per_connection.map(|b| b / 1024.0),
            errors: r.error_count(),
            problems: r.problems(),
        }
    }
}

impl Summary {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn loadgen(&self) -> Option<&ProcessSummary> {
        self.processes.iter().find(|p| p.is_loadgen())
    }

    pub fn servers(&self) -> impl Iterator<Item = &ProcessSummary> {
        self.processes.iter().filter(|p| !p.is_loadgen())
    }

    /// The load generator's resident memory over the bots (it includes the embedded
    /// control plane and what the process holds before any bot, so it overstates small runs).
    pub fn loadgen_kib_per_bot(&self) -> Option<f64> {
        let loadgen = self.loadgen()?;
        (self.bots > 0).then(|| loadgen.rss_bytes as f64 / 1024.0 / self.bots as f64)
    }

    /// CPU, in percent of one core, per 1,000 bots: the load generator's, and every game
    /// server's together; `None` for a side without figures.
    pub fn cpu_per_kbot(&self) -> (Option<f64>, Option<f64>) {
        let per_kbot = |cpu: f64| cpu / (self.bots.max(1) as f64 / 1000.0);
        let servers = self.servers().map(|p| p.cpu_percent).reduce(|a, b| a + b);
        (self.loadgen().map(|p| per_kbot(p.cpu_percent)), servers.map(per_kbot))
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))
    }

    pub fn read_json(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("in {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::report::{BotOutcome, Collector, ErrorKind, PlayStats};

    fn process(name: &str, cpu: f64, rss_mib: u64, connections: Option<u64>, kib: Option<f64>) -> ProcessUse {
        ProcessUse {
            name: name.into(),
            cpu_percent: cpu,
            rss_bytes: rss_mib << 20,
            connections,
            cpu_seconds: cpu / 100.0 * 10.0,
            bytes_per_connection: kib.map(|k| k * 1024.0),
            tick_p99: connections.map(|_| Duration::from_micros(500)),
            operations: None,
        }
    }

    /// Two bots in one world: one played (two inputs, three deltas), one never joined.
    fn report() -> Report {
        let mut collector = Collector::new(2, 1, vec!["eu-west".into()]).unwrap();
        let mut played = BotOutcome::new(0, 0);
        played.alloc_latency_us = Some(1_000);
        played.join_us = Some(3_000);
        played.connected = Duration::from_secs(1);
        played.play = Some(PlayStats {
            sent: 2,
            ok: 2,
            deltas: 3,
            own_moves_seen: 2,
            // Exact in the histogram (3 significant digits): below 2,048 us.
            input_latency_us: vec![500, 1_500],
            tick_latency_us: vec![1_000, 1_000, 2_000],
            ..Default::default()
        });
        collector.add(played);
        let mut refused = BotOutcome::new(1, 0);
        refused.error(ErrorKind::JoinRefused, "4001 join token has expired");
        collector.add(refused);
        let mut report = collector.finish(Duration::from_secs(20), false, Some(Duration::from_secs(1)));
        report.processes =
            vec![process("loadgen", 61.0, 250, None, None), process("town-eu-west-1", 35.0, 130, Some(1), Some(20.0))];
        report
    }

    #[test]
    fn a_summary_holds_the_reports_figures() {
        let summary = Summary::from(&report());
        let ms = |p50, p99, max| Some(Percentiles { p50, p99, max });
        assert_eq!(summary.bots, 2);
        assert_eq!(summary.joined, 1);
        assert_eq!(summary.duration_s, 20.0);
        assert_eq!(summary.deltas_per_bot_s, 3.0);
        assert_eq!(summary.tick_ms, ms(1.0, 2.0, 2.0));
        assert_eq!(summary.input_ms, ms(0.5, 1.5, 1.5));
        assert_eq!(summary.errors, 1);
        assert!(!summary.passed());
        assert_eq!(summary.problems[0], "1 errors");
        assert_eq!(summary.processes[1].kib_per_connection, Some(20.0));
        assert_eq!((summary.processes[0].tick_p99_ms, summary.processes[1].tick_p99_ms), (None, Some(0.5)));
        assert_eq!(summary.loadgen().map(|p| p.cpu_percent), Some(61.0));
        assert_eq!(summary.server_kib_per_bot, Some(20.0));
        assert_eq!(summary.loadgen_kib_per_bot(), Some(125.0 * 1024.0));
        assert_eq!(summary.cpu_per_kbot(), (Some(30_500.0), Some(17_500.0)));
    }

    #[test]
    fn a_run_without_samples_has_no_percentiles() {
        let report = Collector::new(1, 1, vec![]).unwrap().finish(Duration::ZERO, true, None);
        let summary = Summary::from(&report);
        assert_eq!((summary.tick_ms, summary.input_ms), (None, None));
        assert_eq!(summary.server_kib_per_bot, None);
        assert_eq!(summary.loadgen_kib_per_bot(), None);
    }

    #[test]
    fn the_json_reads_back_the_same() {
        let summary = Summary::from(&report());
        let path = std::env::temp_dir().join(format!("gaia-summary-{}.json", std::process::id()));
        summary.write_json(&path).unwrap();
        let back = Summary::read_json(&path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(back.unwrap(), summary);
    }
}
