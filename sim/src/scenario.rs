//! Scenarios: a demand trace per region and the autoscaler policies to compare on it.
//!
//! A [`Scenario`] is YAML with unknown fields refused, as fleet specs are. Each region's
//! arrival rate (allocation requests per second) is a piecewise-linear curve over the
//! time since the trace started, optionally multiplied by a day/night sine that follows
//! the (virtual) wall clock. Each policy is written exactly as an `autoscalers[]` entry of
//! a fleet config, without `fleet`: [`Scenario::fleet_config`] builds the one-fleet
//! [`FleetConfig`] a run uses and validates it as `FleetConfig::from_yaml` would.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use gaia_api::autoscaler::{AutoscalerPolicy, FleetAutoscalerSpec};
use gaia_api::fleet::{FleetConfig, FleetSpec, GameServerTemplate, RegionSpec};
use serde::Deserialize;

use crate::error::{SimError, invalid};

/// The simulated fleet's name.
pub const FLEET: &str = "sim";

/// The longest run a scenario may ask for, in steps (keeps a typo from running for days).
const MAX_STEPS: u128 = 50_000_000;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// A demand trace, the fleet's timing and the policies to compare.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Wall-clock time (RFC 3339) at which the trace starts: what schedules and the daily
    /// sine see.
    pub start: DateTime<Utc>,
    /// Length of the trace (what is measured).
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Run this long before the trace starts, at the trace's first rate, unmeasured: the
    /// fleet reaches its steady state and the autoscaler measures rates and start times.
    #[serde(default, with = "humantime_serde")]
    pub warmup: Duration,
    /// The simulation's time step.
    #[serde(default = "defaults::step", with = "humantime_serde")]
    pub step: Duration,
    #[serde(default)]
    pub seed: u64,
    /// How long an allocation request waits for a slot before it counts as failed.
    #[serde(default = "defaults::deadline", with = "humantime_serde")]
    pub deadline: Duration,
    /// Mean of the (exponential) time a world lives once placed.
    #[serde(with = "humantime_serde")]
    pub world_lifetime: Duration,
    /// Scheduled to Ready, uniform in `[min, max]`.
    pub server_start: StartRange,
    #[serde(default = "defaults::world_capacity")]
    pub world_capacity: u32,
    /// Time-series resolution of the report.
    #[serde(default = "defaults::sample_every", with = "humantime_serde")]
    pub sample_every: Duration,
    pub regions: Vec<RegionTrace>,
    pub policies: Vec<Policy>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StartRange {
    #[serde(with = "humantime_serde")]
    pub min: Duration,
    #[serde(with = "humantime_serde")]
    pub max: Duration,
}

/// One region's demand.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegionTrace {
    pub name: String,
    /// Servers the region starts with (clamped into the policy's bounds).
    #[serde(default)]
    pub replicas: u32,
    /// Allocations per second: `[[offset, rate], ...]`, offsets since the trace started
    /// (`"1h10m"`), linear in between, flat before the first point and after the last;
    /// none: no random arrivals. Arrivals are Poisson at this rate.
    #[serde(default)]
    pub rate: Vec<RatePoint>,
    /// Requests at exactly these offsets since the trace started, besides the random ones:
    /// a fixed, known trace.
    #[serde(default)]
    pub arrivals: Vec<Offset>,
    /// Multiplies the curve by a day/night sine.
    #[serde(default)]
    pub daily: Option<Daily>,
}

/// An offset since the trace started, `"1h10m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(transparent)]
pub struct Offset(#[serde(with = "humantime_serde")] pub Duration);

/// `[offset, allocations per second]`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct RatePoint(#[serde(with = "humantime_serde")] pub Duration, pub f64);

/// `1 + amplitude * cos(2π (time of day - peak) / 24h)`: the rate is highest at `peak`
/// (UTC time of day of the virtual wall clock) and lowest twelve hours later.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Daily {
    /// From 0 (flat) to 1 (no arrivals at the trough).
    pub amplitude: f64,
    #[serde(with = "humantime_serde")]
    pub peak: Duration,
}

/// A named autoscaler to compare: an `autoscalers[]` entry of a fleet config, `fleet`
/// left out.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "PolicyDoc")]
pub struct Policy {
    pub name: String,
    pub autoscaler: FleetAutoscalerSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyDoc {
    name: String,
    autoscaler: serde_norway::Value,
}

impl TryFrom<PolicyDoc> for Policy {
    type Error = String;

    fn try_from(doc: PolicyDoc) -> Result<Self, String> {
        let serde_norway::Value::Mapping(mut map) = doc.autoscaler else {
            return Err(format!("policy {:?}: autoscaler must be a mapping", doc.name));
        };
        if map.contains_key("fleet") {
            return Err(format!(
                "policy {:?}: leave `fleet` out of autoscaler (the simulated fleet is {FLEET:?})",
                doc.name
            ));
        }
        map.insert("fleet".into(), FLEET.into());
        let autoscaler = serde_norway::from_value(serde_norway::Value::Mapping(map))
            .map_err(|e| format!("policy {:?}: autoscaler: {e}", doc.name))?;
        Ok(Self { name: doc.name, autoscaler })
    }
}

impl Policy {
    /// A policy from the YAML of an `autoscalers[]` entry without `fleet`.
    pub fn from_yaml(name: &str, autoscaler: &str) -> Result<Self, SimError> {
        let value: serde_norway::Value = serde_norway::from_str(autoscaler)?;
        Policy::try_from(PolicyDoc { name: name.to_string(), autoscaler: value })
            .map_err(|message| invalid(format!("policy {name:?}"), message))
    }

    /// Whether the fleet-wide policy is a static Buffer.
    pub fn is_buffer(&self) -> bool {
        matches!(self.autoscaler.policy, AutoscalerPolicy::Buffer(_))
    }
}

mod defaults {
    use std::time::Duration;

    pub fn step() -> Duration {
        Duration::from_millis(100)
    }
    pub fn deadline() -> Duration {
        Duration::from_secs(10)
    }
    pub fn world_capacity() -> u32 {
        10
    }
    pub fn sample_every() -> Duration {
        Duration::from_secs(60)
    }
}

/// The scenarios shipped with the simulator, by name.
pub const BUILT_IN: [&str; 5] = ["featured", "featured-cold", "seasonal", "regions", "short"];

fn built_in_text(name: &str) -> Option<&'static str> {
    Some(match name {
        "featured" => include_str!("../scenarios/featured.yaml"),
        "featured-cold" => include_str!("../scenarios/featured-cold.yaml"),
        "seasonal" => include_str!("../scenarios/seasonal.yaml"),
        "regions" => include_str!("../scenarios/regions.yaml"),
        "short" => include_str!("../scenarios/short.yaml"),
        _ => return None,
    })
}

impl Scenario {
    /// Parses and validates.
    pub fn from_yaml(text: &str) -> Result<Self, SimError> {
        let scenario: Scenario = serde_norway::from_str(text)?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// A built-in scenario ([`BUILT_IN`]).
    pub fn built_in(name: &str) -> Result<Self, SimError> {
        let text = built_in_text(name).ok_or_else(|| SimError::UnknownScenario(name.to_string()))?;
        Self::from_yaml(text)
    }

    pub fn validate(&self) -> Result<(), SimError> {
        gaia_api::fleet::check_name("name", &self.name).map_err(|e| invalid(e.field, e.message))?;
        if self.duration.is_zero() {
            return Err(invalid("duration", "must be more than 0"));
        }
        if self.step < Duration::from_millis(1) || self.step > Duration::from_secs(60) {
            return Err(invalid("step", "must be from 1ms to 60s"));
        }
        if !self.step.subsec_nanos().is_multiple_of(1_000_000) {
            return Err(invalid("step", "must be a whole number of milliseconds"));
        }
        if (self.duration + self.warmup).as_nanos() / self.step.as_nanos() > MAX_STEPS {
            return Err(invalid("duration", format!("warmup + duration must be at most {MAX_STEPS} steps")));
        }
        if self.world_lifetime.is_zero() {
            return Err(invalid("worldLifetime", "must be more than 0"));
        }
        if self.server_start.min > self.server_start.max {
            return Err(invalid("serverStart.min", "must not exceed max"));
        }
        if self.sample_every < self.step {
            return Err(invalid("sampleEvery", "must be at least one step"));
        }
        if self.regions.is_empty() {
            return Err(invalid("regions", "at least one region is required"));
        }
        for (i, region) in self.regions.iter().enumerate() {
            region.validate(&format!("regions[{i}]"))?;
        }
        if self.policies.is_empty() {
            return Err(invalid("policies", "at least one policy is required"));
        }
        let mut names = BTreeSet::new();
        for (i, policy) in self.policies.iter().enumerate() {
            if policy.name.is_empty() {
                return Err(invalid(format!("policies[{i}].name"), "must not be empty"));
            }
            if !names.insert(policy.name.as_str()) {
                return Err(invalid(format!("policies[{i}].name"), format!("duplicate policy {:?}", policy.name)));
            }
            self.fleet_config_at(policy, &format!("policies[{i}].autoscaler"))?;
        }
        Ok(())
    }

    /// The one-fleet config a run of `policy` uses (fleet [`FLEET`], one region per
    /// scenario region), validated as a fleet config file is.
    pub fn fleet_config(&self, policy: &Policy) -> Result<FleetConfig, SimError> {
        self.fleet_config_at(policy, &format!("policy {:?}", policy.name))
    }

    fn fleet_config_at(&self, policy: &Policy, field: &str) -> Result<FleetConfig, SimError> {
        let fleet = FleetSpec {
            name: FLEET.to_string(),
            world_capacity: self.world_capacity,
            player_capacity: 300,
            world_player_capacity: 30,
            labels: Default::default(),
            template: GameServerTemplate { command: vec!["sim".to_string()], env: Default::default() },
            health: Default::default(),
            strategy: Default::default(),
            regions: self.regions.iter().map(|r| RegionSpec { name: r.name.clone(), replicas: r.replicas }).collect(),
        };
        let scaler = FleetAutoscalerSpec { fleet: FLEET.to_string(), ..policy.autoscaler.clone() };
        let config = FleetConfig { fleets: vec![fleet], autoscalers: vec![scaler] };
        config.validate().map_err(|e| {
            // Name the field as the scenario spells it.
            let path = if let Some(rest) = e.field.strip_prefix("autoscalers[0]") {
                format!("{field}{rest}")
            } else if let Some(rest) = e.field.strip_prefix("fleets[0].") {
                rest.to_string()
            } else {
                e.field.clone()
            };
            invalid(path, e.message)
        })?;
        Ok(config)
    }

    /// A built-in scenario name, or else a YAML file to read.
    pub fn load(name_or_path: &str) -> Result<Self, SimError> {
        if let Some(text) = built_in_text(name_or_path) {
            return Self::from_yaml(text);
        }
        match std::fs::read_to_string(name_or_path) {
            Ok(text) => Self::from_yaml(&text),
            Err(_) => Err(SimError::UnknownScenario(name_or_path.to_string())),
        }
    }
}

impl RegionTrace {
    fn validate(&self, field: &str) -> Result<(), SimError> {
        gaia_api::fleet::check_name(&format!("{field}.name"), &self.name).map_err(|e| invalid(e.field, e.message))?;
        if self.arrivals.windows(2).any(|w| w[1] < w[0]) {
            return Err(invalid(format!("{field}.arrivals"), "offsets must not go backwards"));
        }
        for (i, point) in self.rate.iter().enumerate() {
            if !point.1.is_finite() || point.1 < 0.0 {
                return Err(invalid(format!("{field}.rate[{i}]"), "a rate must be a number of at least 0"));
            }
            if i > 0 && point.0 < self.rate[i - 1].0 {
                return Err(invalid(format!("{field}.rate[{i}]"), "offsets must not go backwards"));
            }
        }
        if let Some(daily) = &self.daily {
            if !(0.0..=1.0).contains(&daily.amplitude) {
                return Err(invalid(format!("{field}.daily.amplitude"), "must be from 0 to 1"));
            }
            if daily.peak >= DAY {
                return Err(invalid(format!("{field}.daily.peak"), "must be a time of day, under 24h"));
            }
        }
        Ok(())
    }

    /// Allocations per second at `offset` since the trace started, when the wall clock
    /// reads `wall`.
    pub fn rate_at(&self, offset: Duration, wall: DateTime<Utc>) -> f64 {
        let curve = curve(&self.rate, offset);
        match &self.daily {
            None => curve,
            Some(daily) => {
                let time_of_day = f64::from(wall.num_seconds_from_midnight()) + f64::from(wall.nanosecond()) * 1e-9;
                let phase = (time_of_day - daily.peak.as_secs_f64()) / DAY.as_secs_f64();
                curve * (1.0 + daily.amplitude * (std::f64::consts::TAU * phase).cos()).max(0.0)
            }
        }
    }
}

fn curve(points: &[RatePoint], offset: Duration) -> f64 {
    let Some(first) = points.first() else { return 0.0 };
    if offset <= first.0 {
        return first.1;
    }
    for pair in points.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if offset < b.0 {
            let span = (b.0 - a.0).as_secs_f64();
            let along = if span > 0.0 { (offset - a.0).as_secs_f64() / span } else { 1.0 };
            return a.1 + (b.1 - a.1) * along;
        }
    }
    points.last().map_or(0.0, |p| p.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(secs: u64, rate: f64) -> RatePoint {
        RatePoint(Duration::from_secs(secs), rate)
    }

    #[test]
    fn the_curve_is_piecewise_linear_and_flat_outside() {
        let points = [point(10, 1.0), point(20, 3.0), point(20, 5.0), point(30, 5.0)];
        assert_eq!(curve(&points, Duration::ZERO), 1.0);
        assert_eq!(curve(&points, Duration::from_secs(15)), 2.0);
        assert_eq!(curve(&points, Duration::from_secs(20)), 5.0, "a step at 20 s");
        assert_eq!(curve(&points, Duration::from_secs(99)), 5.0);
    }

    #[test]
    fn the_daily_sine_peaks_at_its_time_of_day() {
        let trace = RegionTrace {
            name: "eu".into(),
            replicas: 0,
            rate: vec![point(0, 2.0)],
            arrivals: Vec::new(),
            daily: Some(Daily { amplitude: 0.5, peak: Duration::from_secs(20 * 3600) }),
        };
        let at = |s: &str| trace.rate_at(Duration::ZERO, s.parse().expect("time"));
        assert!((at("2026-11-24T20:00:00Z") - 3.0).abs() < 1e-9);
        assert!((at("2026-11-24T08:00:00Z") - 1.0).abs() < 1e-9);
        assert!((at("2026-11-24T02:00:00Z") - 2.0).abs() < 1e-9);
    }

    #[test]
    fn built_ins_parse() {
        for name in BUILT_IN {
            let s = Scenario::built_in(name).expect(name);
            assert_eq!(s.name, name);
        }
    }

    const MINIMAL: &str = "
name: tiny
start: 2026-11-24T00:00:00Z
duration: 1m
worldLifetime: 1m
serverStart: { min: 10s, max: 10s }
regions: [{ name: eu, rate: [[0s, 1]] }]
policies:
  - name: buffer
    autoscaler: { policy: { buffer: { bufferSize: 5, maxReplicas: 3 } } }
";

    fn err(text: &str) -> String {
        Scenario::from_yaml(text).expect_err("invalid").to_string()
    }

    #[test]
    fn errors_name_the_field() {
        let s = Scenario::from_yaml(MINIMAL).expect("valid");
        assert_eq!((s.step, s.deadline, s.world_capacity), (Duration::from_millis(100), Duration::from_secs(10), 10));
        let bad = MINIMAL.replace("maxReplicas: 3", "minReplicas: 4, maxReplicas: 3");
        assert_eq!(err(&bad), "policies[0].autoscaler.policy.buffer.minReplicas: must not exceed maxReplicas");
        let bad = MINIMAL.replace("name: eu", "name: EU");
        assert_eq!(err(&bad), "regions[0].name: may hold only a-z, 0-9 and '-'");
        let bad = MINIMAL.replace("[[0s, 1]]", "[[1m, 1], [0s, 2]]");
        assert_eq!(err(&bad), "regions[0].rate[1]: offsets must not go backwards");
        let bad = MINIMAL.replace("min: 10s, max: 10s", "min: 20s, max: 10s");
        assert_eq!(err(&bad), "serverStart.min: must not exceed max");
        let bad = MINIMAL.replace("{ policy:", "{ fleet: town, policy:");
        assert!(err(&bad).contains("leave `fleet` out"), "{}", err(&bad));
        let bad = MINIMAL.replace("worldLifetime", "worldLifetme");
        assert!(err(&bad).contains("unknown field `worldLifetme`"), "{}", err(&bad));
        let bad = MINIMAL.replace("bufferSize: 5", "bufferSize: 5, sizee: 1");
        assert!(err(&bad).contains("unknown field `sizee`"), "{}", err(&bad));
    }
}
