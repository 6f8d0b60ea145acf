//! Load generator: acts as a matchmaker and as N bots against a running fleet, and
//! reports what it measured.
//!
//! A run has three phases. **Allocation and join**: bots are grouped into worlds; each
//! world's first bot allocates a new world, the others then allocate seats in it, and
//! every bot connects and joins ([`matchmaker`], [`bot`]). **Steady**: once every bot has
//! joined or failed, each sends a legal Move every `1 / input_rate_hz` for `duration`.
//! **End**: bots stop sending, wait for in-flight results, close, and their outcomes are
//! folded into a [`Report`] ([`report`]).
//!
//! Until the end, a bot follows its world: to the address a `Migrate` names (a draining
//! server), or, when its connection is lost (a crashed server, 1001, 4012), to wherever
//! allocating a seat in the same world again places it ([`Report::migrations`],
//! [`Report::recoveries`]).
//!
//! Start with [`run`]; [`wait_ready`] waits for the fleet to have servers to allocate.
//! [`baseline`] measures a raw tokio-tungstenite server under the same load, to report
//! the run's figures as ratios to it.
//! [`Summary`] is a report as data (`--report-json`), and [`curve`] turns the summaries of
//! runs at several bot counts into a table and a plot.

pub mod allocations;
pub mod baseline;
mod bot;
pub mod curve;
mod matchmaker;
mod progress;
pub mod refill;
mod report;
mod resources;
mod summary;

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gaia_api::allocation::{AllocationRequest, AllocationResponse};
use gaia_api::gameserver::GameServer;
use gaia_api::protocol::Encoding;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::matchmaker::{Matchmaker, chain};
use crate::progress::Progress;
pub use crate::report::{
    Baseline, ErrorKind, ErrorTally, Figures, Migration, Ratios, Recovery, RegionUse, Report, Resumption,
};
use crate::report::{BotOutcome, Collector, Placement};
pub use crate::resources::ProcessUse;
pub use crate::summary::{Percentiles, ProcessSummary, Summary};

/// How often [`wait_ready`] looks at the fleet.
const READY_POLL: Duration = Duration::from_millis(200);
/// Timeout of one `GET /v1/gameservers`.
const LIST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Config {
    /// The allocator's base URL, e.g. `http://127.0.0.1:7700`.
    pub allocator_url: String,
    /// Matchmaker bearer token, sent on allocations and fleet reads.
    pub allocator_token: Option<String>,
    /// A PEM certificate to trust for an `https://` allocator, besides the public roots.
    pub allocator_ca_file: Option<std::path::PathBuf>,
    pub fleet: String,
    /// Regions to spread worlds over, in order; empty: every region the fleet has servers in.
    pub regions: Vec<String>,
    pub bots: usize,
    /// Bots per world (the last world may have fewer).
    pub world_size: usize,
    /// Length of the steady phase, which starts once every bot has joined or failed.
    pub duration: Duration,
    /// Inputs per bot per second in the steady phase; 0 sends none.
    pub input_rate_hz: f64,
    /// Bots allocating or connecting at once.
    pub connect_concurrency: usize,
    /// How long a bot keeps retrying 429 (no capacity) before its allocation is an error.
    pub allocate_timeout: Duration,
    /// After losing its connection, how long a bot keeps re-allocating and rejoining its
    /// world (retrying 429 and connect/join failures) before it gives up.
    pub reconnect_timeout: Duration,
    /// How long [`wait_ready`] waits.
    pub ready_timeout: Duration,
    /// Print a progress line (bots joined, inputs accepted, p99 so far) to stderr this
    /// often while the run goes; `None` prints none.
    pub progress_every: Option<Duration>,
    /// How bots' frames are written: bincode (binary frames) or JSON (text frames).
    pub encoding: Encoding,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            allocator_url: "http://127.0.0.1:7700".into(),
            allocator_token: None,
            allocator_ca_file: None,
            fleet: "town".into(),
            regions: Vec::new(),
            bots: 1000,
            world_size: 30,
            duration: Duration::from_secs(20),
            input_rate_hz: 1.0,
            connect_concurrency: 64,
            allocate_timeout: Duration::from_secs(30),
            reconnect_timeout: Duration::from_secs(10),
            ready_timeout: Duration::from_secs(60),
            progress_every: None,
            encoding: Encoding::Bincode,
        }
    }
}

impl Config {
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.bots > 0, "bots must be at least 1");
        anyhow::ensure!(self.world_size > 0, "world size must be at least 1");
        anyhow::ensure!(self.connect_concurrency > 0, "connect concurrency must be at least 1");
        anyhow::ensure!(
            self.input_rate_hz.is_finite() && self.input_rate_hz >= 0.0,
            "input rate must be a number >= 0, not {}",
            self.input_rate_hz
        );
        Ok(())
    }
}

/// The client for the allocator: its token on every request, its certificate trusted.
fn http_client(config: &Config) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder();
    if let Some(token) = &config.allocator_token {
        let mut value = reqwest::header::HeaderValue::try_from(format!("Bearer {token}"))
            .context("the allocator token is not a valid header value")?;
        value.set_sensitive(true);
        builder = builder.default_headers([(reqwest::header::AUTHORIZATION, value)].into_iter().collect());
    }
    if let Some(path) = &config.allocator_ca_file {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem).with_context(|| format!("in {}", path.display()))?;
        builder = builder.add_root_certificate(cert);
    }
    builder.build().context("building the HTTP client")
}

async fn list_servers(http: &reqwest::Client, config: &Config) -> Result<Vec<GameServer>, String> {
    let url = format!("{}/v1/gameservers", config.allocator_url.trim_end_matches('/'));
    let fail = |e: reqwest::Error| format!("GET {url}: {}", chain(&e));
    let response =
        http.get(&url).query(&[("fleet", &config.fleet)]).timeout(LIST_TIMEOUT).send().await.map_err(fail)?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(format!("GET {url}: HTTP {}: {}", status.as_u16(), body.chars().take(200).collect::<String>()));
    }
    response.json().await.map_err(fail)
}

/// The regions to use: `wanted`, or every region a server of `fleet` is in.
fn regions_of(servers: &[GameServer], fleet: &str, wanted: &[String]) -> Vec<String> {
    if !wanted.is_empty() {
        return wanted.to_vec();
    }
    let seen: BTreeSet<&str> = servers.iter().filter(|s| s.fleet == fleet).map(|s| s.region.as_str()).collect();
    seen.into_iter().map(String::from).collect()
}

/// The regions, when each has a server that can take worlds; otherwise what is missing.
fn readiness(servers: &[GameServer], fleet: &str, wanted: &[String]) -> Result<Vec<String>, String> {
    let regions = regions_of(servers, fleet, wanted);
    if regions.is_empty() {
        return Err(format!("fleet {fleet} has no game servers"));
    }
    let ready = |region: &str| {
        servers
            .iter()
            .any(|s| s.fleet == fleet && s.region == region && s.state.is_allocatable() && s.address.is_some())
    };
    let missing: Vec<&str> = regions.iter().map(String::as_str).filter(|r| !ready(r)).collect();
    if missing.is_empty() {
        return Ok(regions);
    }
    Err(format!(
        "no Ready or Allocated server with an address in region {} (servers: {})",
        missing.join(", "),
        describe(servers)
    ))
}

fn describe(servers: &[GameServer]) -> String {
    if servers.is_empty() {
        return "none".into();
    }
    let each = |s: &GameServer| {
        let address = if s.address.is_some() { "" } else { " without address" };
        format!("{} {} {}{address}", s.name, s.region, s.state)
    };
    servers.iter().map(each).collect::<Vec<_>>().join(", ")
}

/// Polls `GET /v1/gameservers?fleet=` every 200 ms until every region (`config.regions`,
/// or every region seen) has a Ready or Allocated server with an address. Returns the
/// regions; fails after `ready_timeout` naming what was missing.
pub async fn wait_ready(config: &Config) -> anyhow::Result<Vec<String>> {
    let http = http_client(config)?;
    let deadline = Instant::now() + config.ready_timeout;
    loop {
        let why = match list_servers(&http, config).await {
            Ok(servers) => match readiness(&servers, &config.fleet, &config.regions) {
                Ok(regions) => return Ok(regions),
                Err(why) => why,
            },
            Err(why) => why,
        };
        if Instant::now() + READY_POLL > deadline {
            anyhow::bail!(
                "fleet {} not ready after {}: {why}",
                config.fleet,
                humantime::format_duration(config.ready_timeout)
            );
        }
        tracing::debug!(%why, "fleet not ready yet");
        tokio::time::sleep(READY_POLL).await;
    }
}

/// The bots of one world and the regions it prefers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WorldPlan {
    index: usize,
    bots: Range<usize>,
    regions: Vec<String>,
}

/// Worlds of `world_size` bots; world `i` prefers region `i % n` first, then the others
/// in order, so worlds spread over the regions.
fn plan_worlds(bots: usize, world_size: usize, regions: &[String]) -> Vec<WorldPlan> {
    (0..bots)
        .step_by(world_size.max(1))
        .enumerate()
        .map(|(index, start)| {
            let first = if regions.is_empty() { 0 } else { index % regions.len() };
            let preferred = regions.get(first).into_iter();
            let rest = regions.iter().enumerate().filter(|&(j, _)| j != first).map(|(_, r)| r);
            WorldPlan {
                index,
                bots: start..(start + world_size).min(bots),
                regions: preferred.chain(rest).cloned().collect(),
            }
        })
        .collect()
}

/// Signals shared by every bot.
pub(crate) struct Phases {
    /// Cancelled when the steady phase starts.
    pub steady: CancellationToken,
    /// Cancelled when the bots should stop sending (end of the steady phase, or shutdown).
    pub stop: CancellationToken,
    /// Bots joined and inputs accepted so far.
    pub progress: Progress,
}

/// Held by a bot until it has joined or failed to; the run waits for all to be dropped.
pub(crate) struct Settled {
    _open: mpsc::Sender<()>,
}

/// What every bot of a run shares.
pub(crate) struct Ctx {
    pub matchmaker: Matchmaker,
    pub phases: Arc<Phases>,
    permits: Arc<Semaphore>,
    fleet: String,
    run_id: String,
    pub input_period: Option<Duration>,
    pub reconnect_timeout: Duration,
    pub encoding: Encoding,
}

impl Ctx {
    async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        tokio::select! {
            _ = self.phases.stop.cancelled() => None,
            permit = self.permits.clone().acquire_owned() => permit.ok(),
        }
    }

    /// Allocates for one bot; the response and when the allocation started, if it worked.
    async fn allocate(
        &self,
        bot: usize,
        world: usize,
        request: &AllocationRequest,
    ) -> (BotOutcome, Option<(AllocationResponse, Instant)>) {
        let mut outcome = BotOutcome::new(bot, world);
        let alloc = tokio::select! {
            _ = self.phases.stop.cancelled() => return (outcome, None),
            alloc = self.matchmaker.allocate(request) => alloc,
        };
        outcome.alloc_retries = alloc.retries;
        match alloc.result {
            Ok(response) => {
                outcome.alloc_latency_us = alloc.latency_us;
                outcome.alloc_window = Some((alloc.started, alloc.ended));
                outcome.placement = Some(Placement {
                    region: response.region.clone(),
                    server: response.server.clone(),
                    world_id: response.world_id.clone(),
                });
                (outcome, Some((response, alloc.started)))
            }
            Err(message) => {
                outcome.alloc_failed = true;
                outcome.error(ErrorKind::AllocationFailed, message);
                (outcome, None)
            }
        }
    }
}

/// One world: its first bot allocates it, then the others join it concurrently.
async fn world(ctx: Arc<Ctx>, plan: WorldPlan, members: Vec<(usize, Settled)>) -> Vec<BotOutcome> {
    let index = plan.index;
    let mut members = members.into_iter();
    let Some((first, first_settled)) = members.next() else {
        return Vec::new();
    };
    let not_started = |members: std::vec::IntoIter<(usize, Settled)>, reason: Option<&str>| {
        let mut outcomes = Vec::new();
        for (bot, _settled) in members {
            let mut outcome = BotOutcome::new(bot, index);
            if let Some(reason) = reason {
                outcome.error(ErrorKind::NotStarted, reason);
            }
            outcomes.push(outcome);
        }
        outcomes
    };
    let new_world = AllocationRequest {
        fleet: ctx.fleet.clone(),
        regions: plan.regions.clone(),
        idempotency_key: Some(format!("{}-w{index}", ctx.run_id)),
        ..Default::default()
    };
    let Some(permit) = ctx.permit().await else {
        let mut outcomes = vec![BotOutcome::new(first, index)];
        outcomes.extend(not_started(members, None));
        return outcomes;
    };
    let (outcome, allocated) = ctx.allocate(first, index, &new_world).await;
    let Some((response, started)) = allocated else {
        drop(first_settled);
        let reason = (!ctx.phases.stop.is_cancelled()).then(|| format!("world w{index} was not allocated"));
        let mut outcomes = vec![outcome];
        outcomes.extend(not_started(members, reason.as_deref()));
        return outcomes;
    };
    // A seat in this world: how the other bots join it, and how any bot finds it again.
    let seat = Arc::new(AllocationRequest {
        fleet: ctx.fleet.clone(),
        world_id: Some(response.world_id.clone()),
        regions: plan.regions.clone(),
        ..Default::default()
    });
    let mut bots = JoinSet::new();
    bots.spawn(bot::play(ctx.clone(), seat.clone(), outcome, response, started, permit, first_settled));
    for (bot, settled) in members {
        let ctx = ctx.clone();
        let seat = seat.clone();
        bots.spawn(async move {
            let Some(permit) = ctx.permit().await else {
                return BotOutcome::new(bot, index);
            };
            let (mut outcome, allocated) = ctx.allocate(bot, index, &seat).await;
            let Some((response, started)) = allocated else {
                return outcome;
            };
            let asked = seat.world_id.as_deref().unwrap_or_default();
            if asked != response.world_id {
                outcome.error(
                    ErrorKind::WrongWorld,
                    format!("asked to join world {asked}, allocated {}", response.world_id),
                );
                return outcome;
            }
            bot::play(ctx.clone(), seat, outcome, response, started, permit, settled).await
        });
    }
    let mut outcomes = Vec::new();
    while let Some(done) = bots.join_next().await {
        match done {
            Ok(outcome) => outcomes.push(outcome),
            // Bots do not panic; if one did, it shows as a bot that never joined.
            Err(e) => tracing::error!(world = index, error = %e, "bot task failed"),
        }
    }
    outcomes
}

/// Runs the bots against the fleet and reports. Stops early (and reports what it had)
/// when `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<Report> {
    config.validate()?;
    let http = http_client(&config)?;
    let servers = list_servers(&http, &config).await.map_err(anyhow::Error::msg)?;
    let before = resources::sample(&http, &servers).await;
    let regions = if config.regions.is_empty() {
        let regions = regions_of(&servers, &config.fleet, &[]);
        anyhow::ensure!(!regions.is_empty(), "fleet {} has no game servers to find regions from", config.fleet);
        regions
    } else {
        config.regions.clone()
    };
    let plans = plan_worlds(config.bots, config.world_size, &regions);
    let mut collector = Collector::new(config.bots, plans.len(), regions.clone())?;
    let phases = Arc::new(Phases {
        steady: CancellationToken::new(),
        stop: shutdown.child_token(),
        progress: Progress::new(config.bots)?,
    });
    if let Some(period) = config.progress_every {
        let (phases, stop) = (phases.clone(), phases.stop.clone());
        tokio::spawn(async move { phases.progress.print_every(period, stop).await });
    }
    let ctx = Arc::new(Ctx {
        matchmaker: Matchmaker::new(http.clone(), &config.allocator_url, config.allocate_timeout),
        phases: phases.clone(),
        permits: Arc::new(Semaphore::new(config.connect_concurrency)),
        fleet: config.fleet.clone(),
        run_id: format!("lg-{:08x}", rand::random::<u32>()),
        input_period: (config.input_rate_hz > 0.0).then(|| Duration::from_secs_f64(1.0 / config.input_rate_hz)),
        reconnect_timeout: config.reconnect_timeout,
        encoding: config.encoding,
    });
    tracing::info!(bots = config.bots, worlds = plans.len(), ?regions, run_id = %ctx.run_id, "allocating and joining");

    let (settled, mut all_settled) = mpsc::channel::<()>(1);
    let mut worlds = JoinSet::new();
    for plan in plans {
        let members = plan.bots.clone().map(|bot| (bot, Settled { _open: settled.clone() })).collect();
        worlds.spawn(world(ctx.clone(), plan, members));
    }
    drop(settled);
    // Nobody sends: recv returns once every bot has dropped its Settled.
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = all_settled.recv() => {}
    }

    let joined = phases.progress.joined();
    let mut steady = Duration::ZERO;
    let mut processes = Vec::new();
    if !shutdown.is_cancelled() && joined > 0 {
        tracing::info!(joined, "steady phase");
        let servers = list_servers(&http, &config).await.unwrap_or_default();
        let start_samples = resources::sample(&http, &servers).await;
        let start_usage = gaia_api::process::usage();
        let start = Instant::now();
        phases.steady.cancel();
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(config.duration) => {}
        }
        steady = start.elapsed();
        let end_samples = resources::sample(&http, &servers).await;
        let end_usage = gaia_api::process::usage();
        processes = resources::usage((start_usage, end_usage), &before, &start_samples, &end_samples, steady);
    }
    phases.stop.cancel();
    tracing::info!("stopping bots");

    let mut outcomes = Vec::with_capacity(config.bots);
    while let Some(done) = worlds.join_next().await {
        outcomes.extend(done.context("a world task failed")?);
    }
    // In bot order, so the report's example errors do not depend on scheduling.
    outcomes.sort_by_key(|o| o.bot);
    for outcome in outcomes {
        collector.add(outcome);
    }
    let mut report = collector.finish(steady, shutdown.is_cancelled(), ctx.input_period);
    report.processes = processes;
    report.encoding = config.encoding;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regions(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn worlds_spread_over_regions_and_the_last_is_smaller() {
        let plans = plan_worlds(7, 3, &regions(&["a", "b", "c"]));
        let got: Vec<_> = plans.iter().map(|p| (p.index, p.bots.clone(), p.regions.join(","))).collect();
        assert_eq!(got, [(0, 0..3, "a,b,c".into()), (1, 3..6, "b,a,c".into()), (2, 6..7, "c,a,b".into())]);
        let plans = plan_worlds(2, 30, &[]);
        assert_eq!(plans, [WorldPlan { index: 0, bots: 0..2, regions: vec![] }]);
    }

    fn server(name: &str, region: &str, state: gaia_api::gameserver::GameServerState, address: bool) -> GameServer {
        let mut s = GameServer::scheduled(name, "town", region, 4, 100);
        s.state = state;
        s.address = address.then(|| format!("ws://{name}/ws"));
        s
    }

    #[test]
    fn readiness_names_what_is_missing() {
        use gaia_api::gameserver::GameServerState::*;
        assert_eq!(readiness(&[], "town", &[]), Err("fleet town has no game servers".into()));
        let servers = [
            server("a", "eu-west", Allocated, true),
            server("b", "us-east", Ready, false),
            server("c", "us-east", Scheduled, true),
        ];
        let err = readiness(&servers, "town", &[]).unwrap_err();
        assert!(err.starts_with("no Ready or Allocated server with an address in region us-east"), "{err}");
        assert!(err.contains("b us-east Ready without address"), "{err}");
        assert_eq!(readiness(&servers, "town", &regions(&["eu-west"])), Ok(regions(&["eu-west"])));
        assert!(readiness(&servers, "town", &regions(&["eu-west", "mars"])).unwrap_err().contains("region mars"));
        let mut servers = servers.to_vec();
        servers.push(server("d", "us-east", Ready, true));
        assert_eq!(readiness(&servers, "town", &[]), Ok(regions(&["eu-west", "us-east"])));
    }
}
