//! Fleet and fleet-autoscaler specs, as operators write them in YAML.
//!
//! A [`FleetConfig`] file is what embedded mode runs: one or more fleets, each with its
//! regions, and optionally an autoscaler per fleet. [`FleetConfig::from_yaml`] parses and
//! validates; every error names the field at fault.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use crate::autoscaler::{FleetAutoscalerSpec, IntOrPercent};

/// One file: the fleets to run and their autoscalers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FleetConfig {
    pub fleets: Vec<FleetSpec>,
    #[serde(default)]
    pub autoscalers: Vec<FleetAutoscalerSpec>,
}

/// A named set of identical game servers, sized per region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FleetSpec {
    pub name: String,
    /// Worlds one server hosts at once.
    #[serde(default = "defaults::world_capacity")]
    pub world_capacity: u32,
    /// Client connections one server accepts at once.
    #[serde(default = "defaults::player_capacity")]
    pub player_capacity: u32,
    /// Players one world holds (the Convex design capped worlds at 30).
    #[serde(default = "defaults::world_player_capacity")]
    pub world_player_capacity: u32,
    /// Labels every server of the fleet starts with.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub template: GameServerTemplate,
    #[serde(default)]
    pub health: HealthSpec,
    /// How a changed template is rolled out.
    #[serde(default)]
    pub strategy: FleetStrategy,
    pub regions: Vec<RegionSpec>,
}

/// How servers on an old template are replaced, as a Kubernetes Deployment's
/// `strategy` (only `rollingUpdate` is offered: worlds move off old servers, so nothing is
/// ever taken down before its replacement is up).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FleetStrategy {
    #[serde(default)]
    pub rolling_update: RollingUpdate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RollingUpdate {
    /// New servers started ahead of the old ones they replace: a count, or a percentage
    /// of the region's desired replicas (rounded up). Always at least 1.
    #[serde(default = "defaults::max_surge")]
    pub max_surge: IntOrPercent,
}

impl Default for RollingUpdate {
    fn default() -> Self {
        Self { max_surge: defaults::max_surge() }
    }
}

impl RollingUpdate {
    /// How many servers may be started beyond `desired` while old ones remain.
    pub fn surge(&self, desired: u32) -> u32 {
        match self.max_surge {
            IntOrPercent::Int(n) => n,
            IntOrPercent::Percent(p) => {
                u32::try_from((u64::from(desired) * u64::from(p)).div_ceil(100)).unwrap_or(u32::MAX)
            }
        }
        .max(1)
    }
}

/// A short hex digest of a serialisable value (template versions).
pub fn digest(value: &impl Serialize) -> String {
    use sha2::Digest;
    // Serialising maps of strings and integers cannot fail.
    let json = serde_json::to_vec(value).unwrap_or_default();
    let digest = sha2::Sha256::digest(&json);
    digest.iter().take(5).map(|b| format!("{b:02x}")).collect()
}

/// The label that records which version of its fleet's template a server was started
/// from: a rolling update replaces the servers whose label differs from
/// [`FleetSpec::template_version`].
pub const TEMPLATE_LABEL: &str = "gaia.dev/template";

impl FleetSpec {
    /// A short digest of everything a running server was started with (template,
    /// capacities, health, labels): when it changes, the fleet's servers are replaced
    /// one at a time (a rolling update). Regions and replica counts are not part of it.
    pub fn template_version(&self) -> String {
        let started_with = (
            &self.template,
            self.world_capacity,
            self.player_capacity,
            self.world_player_capacity,
            &self.health,
            &self.labels,
        );
        digest(&started_with)
    }
}

/// How to start one game server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GameServerTemplate {
    /// Program and arguments. A bare program name is looked up next to the running
    /// binary first, then on `PATH`.
    pub command: Vec<String>,
    /// Extra environment for the process.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// Health checking, as Agones' `health` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthSpec {
    /// How often the SDK pings.
    #[serde(default = "defaults::period_seconds")]
    pub period_seconds: u32,
    /// Missed periods before the server is marked Unhealthy.
    #[serde(default = "defaults::failure_threshold")]
    pub failure_threshold: u32,
    /// Grace after scheduling before the first ping is due.
    #[serde(default = "defaults::initial_delay_seconds")]
    pub initial_delay_seconds: u32,
}

impl Default for HealthSpec {
    fn default() -> Self {
        Self {
            period_seconds: defaults::period_seconds(),
            failure_threshold: defaults::failure_threshold(),
            initial_delay_seconds: defaults::initial_delay_seconds(),
        }
    }
}

impl HealthSpec {
    /// How long after the last ping a server is declared Unhealthy.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.period_seconds) * u64::from(self.failure_threshold))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegionSpec {
    pub name: String,
    /// Servers to run when no autoscaler manages the fleet (and the starting point when one does).
    #[serde(default)]
    pub replicas: u32,
}

pub(crate) mod defaults {
    pub fn world_capacity() -> u32 {
        10
    }
    pub fn player_capacity() -> u32 {
        300
    }
    pub fn world_player_capacity() -> u32 {
        30
    }
    pub fn period_seconds() -> u32 {
        2
    }
    pub fn failure_threshold() -> u32 {
        3
    }
    pub fn initial_delay_seconds() -> u32 {
        10
    }
    pub fn max_surge() -> super::IntOrPercent {
        super::IntOrPercent::Percent(25)
    }
}

/// Desired replicas per (fleet, region): what the autoscaler decides and the controller
/// realises.
pub type DesiredReplicas = BTreeMap<(String, String), u32>;

/// A spec that parsed but does not make sense; `field` is a path such as `fleets[0].regions`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid YAML: {0}")]
    Yaml(#[from] serde_norway::Error),
    #[error(transparent)]
    Invalid(#[from] SpecError),
}

pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError { field: field.into(), message: message.into() }
}

/// Longest name [`check_name`] accepts.
pub const MAX_NAME_LEN: usize = 63;

/// [`check_name`]'s characters as a JSON Schema (ECMA-262) pattern, for the OpenAPI
/// document; its length is [`MAX_NAME_LEN`].
pub const NAME_PATTERN: &str = "^[a-z0-9-]+$";

/// Names (fleets, regions, servers, worlds) are DNS-label-like so they are safe in URLs,
/// Redis keys and Kubernetes object names.
pub fn check_name(field: &str, name: &str) -> Result<(), SpecError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(invalid(field, format!("must be 1 to {MAX_NAME_LEN} characters")));
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Err(invalid(field, "may hold only a-z, 0-9 and '-'"));
    }
    Ok(())
}

impl FleetConfig {
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let config: FleetConfig = serde_norway::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    pub fn fleet(&self, name: &str) -> Option<&FleetSpec> {
        self.fleets.iter().find(|f| f.name == name)
    }

    pub fn autoscaler(&self, fleet: &str) -> Option<&FleetAutoscalerSpec> {
        self.autoscalers.iter().find(|a| a.fleet == fleet)
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        if self.fleets.is_empty() {
            return Err(invalid("fleets", "at least one fleet is required"));
        }
        let mut names = BTreeSet::new();
        for (i, fleet) in self.fleets.iter().enumerate() {
            fleet.validate(&format!("fleets[{i}]"))?;
            if !names.insert(fleet.name.as_str()) {
                return Err(invalid(format!("fleets[{i}].name"), format!("duplicate fleet {:?}", fleet.name)));
            }
        }
        let mut scaled = BTreeSet::new();
        for (i, scaler) in self.autoscalers.iter().enumerate() {
            let field = format!("autoscalers[{i}]");
            if !names.contains(scaler.fleet.as_str()) {
                return Err(invalid(format!("{field}.fleet"), format!("no fleet named {:?}", scaler.fleet)));
            }
            if !scaled.insert(scaler.fleet.as_str()) {
                return Err(invalid(format!("{field}.fleet"), "a fleet may have one autoscaler"));
            }
            if let Some(fleet) = self.fleet(&scaler.fleet) {
                scaler.validate(&field, fleet)?;
            }
        }
        Ok(())
    }
}

impl FleetSpec {
    pub fn validate(&self, field: &str) -> Result<(), SpecError> {
        check_name(&format!("{field}.name"), &self.name)?;
        for (value, name) in [
            (self.world_capacity, "worldCapacity"),
            (self.player_capacity, "playerCapacity"),
            (self.world_player_capacity, "worldPlayerCapacity"),
            (self.health.period_seconds, "health.periodSeconds"),
            (self.health.failure_threshold, "health.failureThreshold"),
        ] {
            if value == 0 {
                return Err(invalid(format!("{field}.{name}"), "must be at least 1"));
            }
        }
        if self.template.command.first().is_none_or(|c| c.is_empty()) {
            return Err(invalid(format!("{field}.template.command"), "must name a program"));
        }
        if self.regions.is_empty() {
            return Err(invalid(format!("{field}.regions"), "at least one region is required"));
        }
        let mut seen = BTreeSet::new();
        for (i, region) in self.regions.iter().enumerate() {
            check_name(&format!("{field}.regions[{i}].name"), &region.name)?;
            // Server names are `{fleet}-{region}-{5 chars}` and must stay a valid name.
            if self.name.len() + region.name.len() + 7 > 63 {
                return Err(invalid(
                    format!("{field}.regions[{i}].name"),
                    "fleet and region names together must be at most 56 characters",
                ));
            }
            if !seen.insert(region.name.as_str()) {
                return Err(invalid(
                    format!("{field}.regions[{i}].name"),
                    format!("duplicate region {:?}", region.name),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscaler::{AutoscalerPolicy, BufferPolicy};

    const EXAMPLE: &str = r#"
fleets:
  - name: town
    worldCapacity: 20
    template:
      command: [gaia, gameserver]
    health: { periodSeconds: 1, failureThreshold: 3 }
    regions:
      - { name: eu-west, replicas: 1 }
      - { name: us-east, replicas: 1 }
autoscalers:
  - fleet: town
    policy:
      buffer: { freeWorldSlots: 8, minReplicas: 1, maxReplicas: 4 }
"#;

    #[test]
    fn parses_with_defaults() {
        let config = FleetConfig::from_yaml(EXAMPLE).unwrap();
        let town = config.fleet("town").unwrap();
        assert_eq!(town.world_capacity, 20);
        assert_eq!(town.player_capacity, 300);
        assert_eq!(town.world_player_capacity, 30);
        assert_eq!(town.health.timeout(), std::time::Duration::from_secs(3));
        assert_eq!(town.health.initial_delay_seconds, 10);
        let scaler = config.autoscaler("town").unwrap();
        assert_eq!(scaler.scale_down_delay, std::time::Duration::from_secs(30));
        assert_eq!(scaler.policy, AutoscalerPolicy::Buffer(BufferPolicy::worlds(8, 1, 4)));
    }

    #[test]
    fn shipped_examples_are_valid() {
        for text in [include_str!("../../examples/fleet.yaml"), include_str!("../../examples/fleet-10k.yaml")] {
            let config = FleetConfig::from_yaml(text).unwrap();
            assert!(config.fleets.iter().all(|f| f.regions.len() >= 2));
        }
    }

    fn err(text: &str) -> String {
        FleetConfig::from_yaml(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_field() {
        let bad_name = EXAMPLE.replace("name: town", "name: Town_1");
        assert_eq!(err(&bad_name), "fleets[0].name: may hold only a-z, 0-9 and '-'");
        let dup = EXAMPLE.replace("us-east", "eu-west");
        assert_eq!(err(&dup), "fleets[0].regions[1].name: duplicate region \"eu-west\"");
        let zero = EXAMPLE.replace("worldCapacity: 20", "worldCapacity: 0");
        assert_eq!(err(&zero), "fleets[0].worldCapacity: must be at least 1");
        let orphan = EXAMPLE.replace("- fleet: town", "- fleet: city");
        assert_eq!(err(&orphan), "autoscalers[0].fleet: no fleet named \"city\"");
        let minmax = EXAMPLE.replace("minReplicas: 1", "minReplicas: 9");
        assert_eq!(err(&minmax), "autoscalers[0].policy.buffer.minReplicas: must not exceed maxReplicas");
        let long = EXAMPLE.replace("us-east", &"r".repeat(53));
        assert_eq!(
            err(&long),
            "fleets[0].regions[1].name: fleet and region names together must be at most 56 characters"
        );
        let empty_cmd = EXAMPLE.replace("[gaia, gameserver]", "[]");
        assert_eq!(err(&empty_cmd), "fleets[0].template.command: must name a program");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let typo = EXAMPLE.replace("worldCapacity", "worldCapacty");
        assert!(err(&typo).contains("unknown field `worldCapacty`"), "{}", err(&typo));
    }
}
