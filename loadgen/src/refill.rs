//! The autoscaler's refill measurement (`gaia loadgen --refill N`): bursts of allocations
//! that each take every free world slot of a region at once, and how long the region
//! takes to have its buffer free again, against how long its new servers took to start.
//!
//! Per burst: wait until the region is steady (its buffer free, no server starting), read
//! the free slots and the buffer from `GET /v1/fleets/{fleet}/autoscaler`, send that many
//! allocations at once, then poll the server list every 10 ms until the Ready and
//! Allocated servers have the buffer free again. A new server's start is the time from its record first listed
//! (Scheduled) to it first listed Ready, at the same 10 ms resolution. The target: refill
//! in less than the start plus 1 s.
//!
//! Start with [`run`].

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use anyhow::{Context, bail};
use gaia_api::allocation::AllocationRequest;
use gaia_api::autoscaler::{FleetAutoscalerStatus, RegionAutoscalerStatus};
use gaia_api::gameserver::{GameServer, GameServerState};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{Config, chain, http_client, list_servers};

const POLL: Duration = Duration::from_millis(10);
/// The most a burst may take to refill, or a region to settle, before it is an error.
const PATIENCE: Duration = Duration::from_secs(60);
/// What refilling may take beyond the new servers' start.
pub const ALLOWANCE: Duration = Duration::from_secs(1);

/// One burst and its refill.
#[derive(Debug, Clone)]
pub struct Burst {
    pub region: String,
    /// Allocations sent at once: every free slot of the region.
    pub taken: u32,
    pub buffer: u32,
    /// Servers live before the burst and after the refill.
    pub servers_before: u32,
    pub servers_after: u32,
    /// From the burst's first request to the buffer free again.
    pub refill: Duration,
    /// The slowest start (Scheduled to Ready) among the servers started for the burst.
    pub start: Duration,
}

impl Burst {
    pub fn met(&self) -> bool {
        self.refill < self.start + ALLOWANCE
    }
}

#[derive(Debug, Clone, Default)]
pub struct RefillReport {
    pub bursts: Vec<Burst>,
}

impl RefillReport {
    pub fn passed(&self) -> bool {
        !self.bursts.is_empty() && self.bursts.iter().all(Burst::met)
    }
}

impl fmt::Display for RefillReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "| burst | region | taken | buffer | servers | start (ms) | refill (ms) | refill - start (ms) | met |"
        )?;
        writeln!(f, "|---|---|---|---|---|---|---|---|---|")?;
        for (i, b) in self.bursts.iter().enumerate() {
            writeln!(
                f,
                "| {} | {} | {} | {} | {} -> {} | {} | {} | {} | {} |",
                i + 1,
                b.region,
                b.taken,
                b.buffer,
                b.servers_before,
                b.servers_after,
                b.start.as_millis(),
                b.refill.as_millis(),
                b.refill.as_millis() as i128 - b.start.as_millis() as i128,
                if b.met() { "yes" } else { "NO" },
            )?;
        }
        write!(
            f,
            "refill < start + {} ms in every burst: {}",
            ALLOWANCE.as_millis(),
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }
}

/// Runs `bursts` bursts, taking `config.regions` in turn (every region of the fleet when
/// empty).
pub async fn run(config: &Config, bursts: usize, shutdown: CancellationToken) -> anyhow::Result<RefillReport> {
    let http = http_client(config)?;
    // The autoscaler explains a fleet from its first decision on: wait for that.
    let deadline = Instant::now() + PATIENCE;
    let first = loop {
        match status(&http, config).await {
            Ok(status) if !status.regions.is_empty() => break status,
            Ok(_) if Instant::now() < deadline => {}
            Err(_) if Instant::now() < deadline => {}
            Ok(status) => bail!("the autoscaler of {} explains no region: {status:?}", config.fleet),
            Err(e) => return Err(e),
        }
        tokio::time::sleep(POLL * 10).await;
    };
    let regions = match config.regions.is_empty() {
        false => config.regions.clone(),
        true => first.regions.into_iter().map(|r| r.region).collect(),
    };
    anyhow::ensure!(!regions.is_empty(), "fleet {} has no autoscaled region", config.fleet);
    let mut report = RefillReport::default();
    for i in 0..bursts {
        let region = &regions[i % regions.len()];
        let burst = tokio::select! {
            _ = shutdown.cancelled() => bail!("interrupted"),
            burst = one_burst(&http, config, region) => burst?,
        };
        tracing::info!(?burst, met = burst.met(), "burst refilled");
        report.bursts.push(burst);
    }
    Ok(report)
}

async fn one_burst(http: &reqwest::Client, config: &Config, region: &str) -> anyhow::Result<Burst> {
    let (steady, known) = settle(http, config, region).await?;
    let taken = steady.buffer.free;
    let url = format!("{}/v1/allocations", config.allocator_url.trim_end_matches('/'));
    let started = Instant::now();
    let requests = (0..taken).map(|_| {
        let body = AllocationRequest {
            fleet: config.fleet.clone(),
            regions: vec![region.to_string()],
            deadline_ms: Some(10_000),
            ..AllocationRequest::default()
        };
        let request = http.post(&url).json(&body).send();
        async move {
            let response = request.await.map_err(|e| chain(&e))?;
            match response.status().is_success() {
                true => Ok(()),
                false => Err(format!("{}: {}", response.status(), response.text().await.unwrap_or_default())),
            }
        }
    });
    let failed: Vec<String> =
        futures_util::future::join_all(requests).await.into_iter().filter_map(Result::err).collect();
    if let Some(first) = failed.first() {
        bail!("{} of {taken} burst allocations in {region} failed; first: {first}", failed.len());
    }

    // Watch the new servers start and the buffer come back.
    let mut scheduled_at: BTreeMap<String, Instant> = BTreeMap::new();
    let mut ready_at: BTreeMap<String, Instant> = BTreeMap::new();
    loop {
        let now = Instant::now();
        let live = servers(http, config, region).await?;
        for (name, server) in &live {
            if known.contains_key(name) {
                continue;
            }
            scheduled_at.entry(name.clone()).or_insert(now);
            if server.state.is_allocatable() {
                ready_at.entry(name.clone()).or_insert(now);
            }
        }
        // Free slots that can be allocated now: on Ready and Allocated servers only.
        let free: u32 = live.values().filter(|s| s.state.is_allocatable()).map(GameServer::free_world_slots).sum();
        let status = region_status(http, config, region).await?;
        if free >= status.buffer.target && !ready_at.is_empty() {
            let refill = now.duration_since(started);
            let start = ready_at
                .iter()
                .filter_map(|(name, ready)| scheduled_at.get(name).map(|s| ready.duration_since(*s)))
                .max()
                .unwrap_or_default();
            return Ok(Burst {
                region: region.to_string(),
                taken,
                buffer: status.buffer.target,
                servers_before: steady.current_replicas,
                servers_after: u32::try_from(live.len()).unwrap_or(u32::MAX),
                refill,
                start,
            });
        }
        if now.duration_since(started) > PATIENCE {
            bail!("{region}: the buffer was not refilled within {PATIENCE:?}: {status:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `region` has its buffer free and no server starting; answers its status
/// and servers then.
async fn settle(
    http: &reqwest::Client,
    config: &Config,
    region: &str,
) -> anyhow::Result<(RegionAutoscalerStatus, BTreeMap<String, GameServer>)> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = region_status(http, config, region).await?;
        let servers = servers(http, config, region).await?;
        let starting = servers.values().any(|s| s.state == GameServerState::Scheduled);
        if status.buffer.free >= status.buffer.target
            && status.buffer.free > 0
            && !starting
            && status.current_replicas == status.desired_replicas
        {
            return Ok((status, servers));
        }
        if Instant::now() > deadline {
            bail!("{region} did not settle within {PATIENCE:?}: {status:?}");
        }
        tokio::time::sleep(POLL * 10).await;
    }
}

async fn status(http: &reqwest::Client, config: &Config) -> anyhow::Result<FleetAutoscalerStatus> {
    let url = format!("{}/v1/fleets/{}/autoscaler", config.allocator_url.trim_end_matches('/'), config.fleet);
    let response = http.get(&url).send().await.map_err(|e| anyhow::anyhow!("GET {url}: {}", chain(&e)))?;
    let code = response.status();
    if !code.is_success() {
        bail!("GET {url}: {code}: {}", response.text().await.unwrap_or_default());
    }
    response.json().await.with_context(|| format!("GET {url}: not an autoscaler status"))
}

async fn region_status(
    http: &reqwest::Client,
    config: &Config,
    region: &str,
) -> anyhow::Result<RegionAutoscalerStatus> {
    let status = status(http, config).await?;
    let found = status.regions.into_iter().find(|r| r.region == region);
    found.with_context(|| format!("the autoscaler of {} has no region {region}", config.fleet))
}

/// The live servers of `region`, by name.
async fn servers(
    http: &reqwest::Client,
    config: &Config,
    region: &str,
) -> anyhow::Result<BTreeMap<String, GameServer>> {
    let all = list_servers(http, config).await.map_err(anyhow::Error::msg)?;
    Ok(all.into_iter().filter(|s| s.region == region && !s.state.is_terminal()).map(|s| (s.name.clone(), s)).collect())
}
