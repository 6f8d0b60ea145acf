//! The allocator benchmark (`gaia bench-allocations`): registers N stand-in game servers
//! (records only, no processes), then allocates from C closed-loop connections for a
//! while and reports throughput and latency. Each connection sends its next request when
//! the last is answered, so latency includes the load generator's own queueing.
//!
//! Start with [`run`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use gaia_api::allocation::AllocationRequest;
use gaia_api::fleet::HealthSpec;
use gaia_api::gameserver::RegisterRequest;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Allocator base URLs; connection `i` talks to `allocators[i % len]`.
    pub allocators: Vec<String>,
    pub fleet: String,
    /// Servers are spread over these; each request prefers one at random, then the rest.
    pub regions: Vec<String>,
    /// Stand-in servers to register (through the first allocator) before the run; 0 uses
    /// what is registered.
    pub servers: usize,
    pub worlds_per_server: u32,
    pub connections: usize,
    /// Allocations before measuring starts.
    pub warmup: Duration,
    pub duration: Duration,
    /// Matchmaker bearer token.
    pub token: Option<String>,
    /// Signs each stand-in server's SDK token when the allocator checks them.
    pub sdk_secret: Option<String>,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            allocators: vec!["http://127.0.0.1:7700".into()],
            fleet: "bench".into(),
            regions: vec!["eu-west".into(), "us-east".into(), "ap-south".into()],
            servers: 10_000,
            worlds_per_server: 64,
            connections: 32,
            warmup: Duration::from_secs(2),
            duration: Duration::from_secs(10),
            token: None,
            sdk_secret: None,
        }
    }
}

/// What one run measured (the measured phase only).
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub servers: usize,
    pub allocators: usize,
    pub connections: usize,
    pub elapsed: Duration,
    pub ok: u64,
    /// Answers by status other than 200.
    pub refused: BTreeMap<u16, u64>,
    /// Requests that got no answer (connection errors, timeouts).
    pub failed: u64,
    /// Latency of the successful allocations, in microseconds.
    pub latency_us: Histogram<u64>,
}

impl BenchReport {
    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |q: f64| self.latency_us.value_at_quantile(q) as f64 / 1000.0;
        writeln!(
            f,
            "allocations: {} ok in {:.1} s = {:.0}/s ({} servers, {} allocator(s), {} connections)",
            self.ok,
            self.elapsed.as_secs_f64(),
            self.per_second(),
            self.servers,
            self.allocators,
            self.connections
        )?;
        writeln!(
            f,
            "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            self.latency_us.max() as f64 / 1000.0
        )?;
        write!(f, "refused: {:?}  failed: {}", self.refused, self.failed)
    }
}

pub async fn run(config: BenchConfig, shutdown: CancellationToken) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(!config.allocators.is_empty(), "no allocator to drive");
    anyhow::ensure!(!config.regions.is_empty(), "no region to register servers in");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(config.connections.max(64))
        .timeout(Duration::from_secs(10))
        .build()?;
    register(&http, &config).await?;
    tracing::info!(servers = config.servers, "stand-in servers registered; allocating");

    let start = Instant::now();
    let measure_from = start + config.warmup;
    let end = measure_from + config.duration;
    let mut tasks = JoinSet::new();
    for i in 0..config.connections {
        let url = format!("{}/v1/allocations", config.allocators[i % config.allocators.len()].trim_end_matches('/'));
        let (http, config, shutdown) = (http.clone(), config.clone(), shutdown.clone());
        tasks.spawn(async move { connection(http, url, config, measure_from, end, shutdown).await });
    }
    let mut report = BenchReport {
        servers: config.servers,
        allocators: config.allocators.len(),
        connections: config.connections,
        elapsed: config.duration,
        ok: 0,
        refused: BTreeMap::new(),
        failed: 0,
        latency_us: Histogram::new(3)?,
    };
    while let Some(tally) = tasks.join_next().await {
        let tally = tally?;
        report.ok += tally.ok;
        report.failed += tally.failed;
        for (status, n) in tally.refused {
            *report.refused.entry(status).or_default() += n;
        }
        report.latency_us.add(&tally.latency_us)?;
    }
    anyhow::ensure!(!shutdown.is_cancelled(), "interrupted");
    Ok(report)
}

/// One connection's counts.
struct Tally {
    ok: u64,
    refused: BTreeMap<u16, u64>,
    failed: u64,
    latency_us: Histogram<u64>,
}

async fn connection(
    http: reqwest::Client,
    url: String,
    config: BenchConfig,
    measure_from: Instant,
    end: Instant,
    shutdown: CancellationToken,
) -> Tally {
    let mut tally = Tally {
        ok: 0,
        refused: BTreeMap::new(),
        failed: 0,
        // 1 µs .. 60 s, 3 significant digits: cannot fail.
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| unreachable!()),
    };
    let mut rng = rand::rngs::SmallRng::from_os_rng();
    while !shutdown.is_cancelled() {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        // Prefer one region at random, then the others in order, as a matchmaker would.
        let mut regions = config.regions.clone();
        let first = rng.random_range(0..regions.len());
        regions[..=first].rotate_right(1);
        let body = AllocationRequest { fleet: config.fleet.clone(), regions, ..AllocationRequest::default() };
        let mut req = http.post(&url).json(&body);
        if let Some(token) = &config.token {
            req = req.bearer_auth(token);
        }
        let status = match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                // Read the body whole, as a matchmaker would, before the next request.
                let body = resp.bytes().await;
                if body.is_err() { None } else { Some(status) }
            }
            Err(_) => None,
        };
        if sent < measure_from {
            continue;
        }
        match status {
            Some(200) => {
                tally.ok += 1;
                // Saturates at the histogram's bound.
                let _ = tally.latency_us.record(sent.elapsed().as_micros() as u64);
            }
            Some(status) => *tally.refused.entry(status).or_default() += 1,
            None => tally.failed += 1,
        }
    }
    tally
}

/// Registers and readies `config.servers` stand-in servers through the SDK endpoints of
/// the first allocator, 64 at a time. Their health period is an hour: they never ping.
async fn register(http: &reqwest::Client, config: &BenchConfig) -> anyhow::Result<()> {
    let base = config.allocators[0].trim_end_matches('/').to_string();
    let key = config.sdk_secret.as_ref().map(|s| Arc::new(gaia_api::token::TokenKey::new(s.as_bytes())));
    let calls = futures_util::stream::iter(0..config.servers).map(|i| {
        let (http, base, key) = (http.clone(), base.clone(), key.clone());
        let region = config.regions[i % config.regions.len()].clone();
        let (fleet, worlds) = (config.fleet.clone(), config.worlds_per_server);
        async move {
            let name = format!("{fleet}-{i:06}");
            let url = format!("{base}/v1/gameservers/{name}");
            let auth = |req: reqwest::RequestBuilder| match &key {
                Some(key) => req.bearer_auth(key.sdk_token(&name)),
                None => req,
            };
            let body = RegisterRequest {
                fleet,
                region,
                address: format!("ws://192.0.2.1:7000/{name}"),
                world_capacity: worlds,
                player_capacity: worlds * 30,
                labels: Default::default(),
                health: HealthSpec { period_seconds: 3600, failure_threshold: 1, initial_delay_seconds: 3600 },
            };
            for (path, body) in [("register", Some(body)), ("ready", None)] {
                let mut req = auth(http.post(format!("{url}/{path}")));
                if let Some(body) = &body {
                    req = req.json(body);
                }
                let resp = req.send().await.with_context(|| format!("{path} {name}"))?;
                let status = resp.status();
                anyhow::ensure!(
                    status.is_success(),
                    "{path} {name}: {status} {}",
                    resp.text().await.unwrap_or_default()
                );
            }
            anyhow::Ok(())
        }
    });
    let mut calls = calls.buffer_unordered(64);
    while let Some(result) = calls.next().await {
        result?;
    }
    Ok(())
}
