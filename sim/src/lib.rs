//! A deterministic, trace-driven simulator of the fleet autoscaler, the controller and
//! the allocator on a virtual clock.
//!
//! It drives the real pure code, not a copy: [`gaia_fleet_autoscaler::Autoscaler`]
//! (observe, decide), [`gaia_controller::plan`] and [`gaia_registry::choose`], over the
//! real records ([`gaia_api::gameserver::GameServer`]). What it adds is the world around
//! them: Poisson arrivals from a rate curve, world lifetimes, server start times, request
//! deadlines, and invariants checked after every step.
//!
//! Start with [`Scenario`] (YAML; [`BUILT_IN`] ones ship in `scenarios/`), then
//! [`Sim`] (one policy, step by step; [`check_invariants`]), then [`simulate`] (every
//! policy of a scenario, optionally a [`sweep`] of static buffers) and its [`Outcome`]
//! ([`Outcome::markdown`], [`plot::svg`]). The same seed gives the same reports, byte
//! for byte.

mod error;
pub mod plot;
mod report;
mod scenario;
mod sim;

pub use error::{SimError, Violation};
pub use report::{Comparison, Outcome, RegionSample, Report, Sample, Sweep, SweepPoint, table};
pub use scenario::{BUILT_IN, Daily, FLEET, Offset, Policy, RatePoint, RegionTrace, Scenario, StartRange};
pub use sim::{Fault, Sim, State, check_invariants};

use gaia_api::autoscaler::{AutoscalerPolicy, BufferPolicy, IntOrPercent};

/// Runs one policy over the whole scenario.
pub fn run(scenario: &Scenario, policy: &Policy) -> Result<Report, SimError> {
    Sim::new(scenario, policy)?.run()
}

/// Runs each policy over the scenario, in parallel (one thread per core), reports in
/// the order given. Runs share nothing, so the answer does not depend on the threads.
pub fn run_all(scenario: &Scenario, policies: &[Policy]) -> Result<Vec<Report>, SimError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).max(1);
    let mut reports = Vec::with_capacity(policies.len());
    for batch in policies.chunks(threads) {
        let results: Vec<Result<Report, SimError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = batch.iter().map(|p| scope.spawn(move || run(scenario, p))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or(Err(SimError::Panicked))).collect()
        });
        for result in results {
            reports.push(result?);
        }
    }
    Ok(reports)
}

/// The static Buffer policy of `size` free world slots a sweep runs: the scenario's first
/// Buffer policy with its size replaced (same bounds, unit and scale-down settings), or
/// `{bufferSize: size, maxReplicas: 1000}` when it has none.
pub fn buffer_policy(scenario: &Scenario, size: u32) -> Result<Policy, SimError> {
    let template = scenario.policies.iter().find(|p| p.is_buffer()).cloned();
    let mut policy = match template {
        Some(p) => p,
        None => Policy::from_yaml("buffer", "policy: { buffer: { bufferSize: 0, maxReplicas: 1000 } }")?,
    };
    if let AutoscalerPolicy::Buffer(b) = &mut policy.autoscaler.policy {
        *b = BufferPolicy { buffer_size: IntOrPercent::Int(size), ..*b };
    }
    policy.name = format!("buffer-{size} (sweep)");
    Ok(policy)
}

/// Runs static Buffer policies of `sizes` free world slots in ascending order (a batch
/// per core at a time) and stops at the first batch with a size that failed no
/// allocation: the smallest such size, with its report. Failures are taken to fall as
/// the buffer grows; sizes above the first zero are not tried.
pub fn sweep(scenario: &Scenario, sizes: &[u32]) -> Result<Sweep, SimError> {
    let mut sizes = sizes.to_vec();
    sizes.sort_unstable();
    sizes.dedup();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).max(1);
    let mut tried = Vec::new();
    for batch in sizes.chunks(threads) {
        let policies = batch.iter().map(|&n| buffer_policy(scenario, n)).collect::<Result<Vec<_>, _>>()?;
        let reports = run_all(scenario, &policies)?;
        let mut best = None;
        for (&size, report) in batch.iter().zip(reports) {
            tried.push(report::SweepPoint { size, failed: report.failed, server_hours: report.server_hours });
            if best.is_none() && report.failed == 0 {
                best = Some((size, report));
            }
        }
        if best.is_some() {
            // Sizes past the first zero in this batch were run anyway; show only up to it.
            if let Some(first) = tried.iter().position(|p| p.failed == 0) {
                tried.truncate(first + 1);
            }
            return Ok(Sweep { tried, best });
        }
    }
    Ok(Sweep { tried, best: None })
}

/// Every policy of `scenario`, and a [`sweep`] of `sweep_sizes` when given.
pub fn simulate(scenario: &Scenario, sweep_sizes: Option<&[u32]>) -> Result<Outcome, SimError> {
    let reports = run_all(scenario, &scenario.policies)?;
    let sweep = sweep_sizes.map(|sizes| sweep(scenario, sizes)).transpose()?;
    Ok(Outcome { scenario: scenario.clone(), reports, sweep })
}
