//! The game server's Prometheus metrics, all under `gaia_gameserver_`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Registers `gaia_gameserver_info{server, fleet, region} 1`: the other metrics of this
/// page carry no fleet, so dashboards and rules join on it
/// (`* on (job, instance) group_left (fleet, region) gaia_gameserver_info`).
pub fn register_info(registry: &mut Registry, server: &str, fleet: &str, region: &str) {
    let labels = vec![
        ("server".to_string(), server.to_string()),
        ("fleet".to_string(), fleet.to_string()),
        ("region".to_string(), region.to_string()),
    ];
    registry.sub_registry_with_prefix("gaia").register(
        "gameserver",
        "This game server's name, fleet and region",
        Info::new(labels),
    );
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

pub struct Metrics {
    /// Open WebSocket connections.
    pub connections: Gauge,
    /// Worlds running here.
    pub worlds: Gauge,
    /// Connections watching a world with a spectate token (not players).
    pub spectators: Gauge,
    pub frames_received: Counter,
    pub bytes_received: Counter,
    pub frames_sent: Counter,
    pub bytes_sent: Counter,
    /// Connections closed by the server, by reason (`bad_token`, `malformed`, ...).
    pub closes: Family<ReasonLabels, Counter>,
    /// Inputs, by result (`ok`, `rejected` by the world, `rate_limited`).
    pub inputs: Family<ResultLabels, Counter>,
    /// Times a member's send queue was full and it missed deltas.
    pub fell_behind: Counter,
    /// Snapshots sent to members that caught up after falling behind.
    pub resyncs: Counter,
    /// Members dropped for staying behind too long.
    pub slow_dropped: Counter,
    /// Time to run one world tick and fan it out (with its checkpoint encode, if due).
    pub tick_seconds: Histogram,
    /// Worlds restored from a checkpoint when they started here.
    pub restored: Counter,
    /// Worlds stopped because a store refused their checkpoint: they have a newer owner.
    pub fenced: Counter,
    /// Operation outcomes dropped because their operation was not in flight (a second
    /// outcome, or one from before the world restarted).
    pub stray_outcomes: Counter,
    /// Worlds moved off this server while it drained, by result (`moved`, `failed`).
    pub migrations: Family<ResultLabels, Counter>,
    /// Set at each scrape: CPU seconds this process has used, all threads.
    pub process_cpu_seconds: Gauge<f64, AtomicU64>,
    /// Set at each scrape: resident memory.
    pub process_resident_bytes: Gauge,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            connections: Gauge::default(),
            worlds: Gauge::default(),
            spectators: Gauge::default(),
            frames_received: Counter::default(),
            bytes_received: Counter::default(),
            frames_sent: Counter::default(),
            bytes_sent: Counter::default(),
            closes: Family::default(),
            inputs: Family::default(),
            fell_behind: Counter::default(),
            resyncs: Counter::default(),
            slow_dropped: Counter::default(),
            // 10 µs .. ~0.5 s in steps of 25%: fine enough to see a fraction of a
            // millisecond move at p99 (the loadgen report reads it).
            tick_seconds: Histogram::new(exponential_buckets(1e-5, 1.25, 50)),
            restored: Counter::default(),
            fenced: Counter::default(),
            stray_outcomes: Counter::default(),
            migrations: Family::default(),
            process_cpu_seconds: Gauge::default(),
            process_resident_bytes: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("gaia_gameserver");
        r.register("connections", "Open WebSocket connections", metrics.connections.clone());
        r.register("worlds", "Worlds running on this server", metrics.worlds.clone());
        r.register("spectators", "Connections watching a world, not playing in it", metrics.spectators.clone());
        r.register("frames_received", "WebSocket frames received", metrics.frames_received.clone());
        r.register("bytes_received", "WebSocket payload bytes received", metrics.bytes_received.clone());
        r.register("frames_sent", "WebSocket frames queued to clients", metrics.frames_sent.clone());
        r.register("bytes_sent", "WebSocket payload bytes queued to clients", metrics.bytes_sent.clone());
        r.register("closes", "Connections closed by the server, by reason", metrics.closes.clone());
        r.register("inputs", "Client inputs, by result", metrics.inputs.clone());
        r.register("fell_behind", "Times a member's send queue was full", metrics.fell_behind.clone());
        r.register("resyncs", "Snapshots sent to members that caught up", metrics.resyncs.clone());
        r.register("slow_clients_dropped", "Members dropped for staying behind", metrics.slow_dropped.clone());
        r.register("tick_duration_seconds", "Time to run and fan out one world tick", metrics.tick_seconds.clone());
        r.register("worlds_restored", "Worlds restored from a checkpoint", metrics.restored.clone());
        r.register("worlds_fenced", "Worlds stopped because they have a newer owner", metrics.fenced.clone());
        r.register(
            "stray_outcomes",
            "Operation outcomes dropped: their operation was not in flight",
            metrics.stray_outcomes.clone(),
        );
        r.register("migrations", "Worlds moved off this server while draining, by result", metrics.migrations.clone());
        r.register("process_cpu_seconds", "CPU seconds used by this process", metrics.process_cpu_seconds.clone());
        r.register("process_resident_bytes", "Resident memory of this process", metrics.process_resident_bytes.clone());
        metrics
    }

    /// Reads this process's CPU time and memory into their gauges (before a scrape).
    pub fn observe_process(&self) {
        let usage = gaia_api::process::usage();
        self.process_cpu_seconds.set(usage.cpu_seconds);
        if let Some(bytes) = usage.rss_bytes {
            self.process_resident_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }

    pub fn count_input_result(&self, result: &'static str) {
        self.count_inputs(result, 1);
    }

    pub fn count_inputs(&self, result: &'static str, n: u64) {
        self.inputs.get_or_create(&ResultLabels { result }).inc_by(n);
    }

    pub fn count_migration(&self, result: &'static str) {
        self.migrations.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn count_close(&self, reason: &'static str) {
        self.closes.get_or_create(&ReasonLabels { reason }).inc();
    }
}
