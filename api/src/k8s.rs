//! The Kubernetes custom resources: `Fleet`, `FleetAutoscaler` and `GameServer` (group
//! `gaia.dev`, version `v1alpha1`), derived with kube's `CustomResource`.
//!
//! `gaia crdgen` (gaia-k8s's `crds::write`) writes their CRDs to `manifests/crds/`; a test there
//! fails when the committed files drift from these types. A [`Fleet`] is what operators
//! write; the controller turns it into game-server Pods and mirrors each server's
//! registry record into a [`GameServer`] (a view: the registry stays the source of truth,
//! so no allocation waits on the Kubernetes API). The `FleetAutoscaler` kind is
//! [`crate::autoscaler::FleetAutoscalerSpec`] itself, so embedded YAML and Kubernetes share
//! one policy schema.
//!
//! The schemas are structural, as Kubernetes asks; where a value is a core Kubernetes type
//! (the pod template, affinity, tolerations) or recursive (a schedule's policy, a chain's
//! entries) the schema keeps it as an open object and the controller checks it when it
//! reads the spec, reporting errors in the resource's status.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, PodTemplateSpec, Toleration};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::autoscaler::{FleetAutoscaler, FleetAutoscalerResourceStatus, RegionScaleStatus};
use crate::fleet::{FleetStrategy, HealthSpec, SpecError, check_name, defaults, invalid};
use crate::gameserver::GameServerState;

/// The API group of every kind here.
pub const GROUP: &str = "gaia.dev";
/// Every object the controller makes for a fleet carries this label, with the fleet's name.
pub const FLEET_LABEL: &str = "gaia.dev/fleet";
/// The region of a game-server Pod or GameServer.
pub const REGION_LABEL: &str = "gaia.dev/region";
/// Marks the Pods the controller made (`gameserver`).
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";

// kube's derive takes one `printcolumn(...)` per column.
#[allow(clippy::duplicated_attributes)]
/// A set of identical game servers, sized per region.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "gaia.dev",
    version = "v1alpha1",
    kind = "Fleet",
    namespaced,
    status = "FleetStatus",
    shortname = "gfleet",
    category = "gaia",
    doc = "A set of identical game servers, sized per region.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.labelSelector"
    ),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".status.desiredReplicas"),
    printcolumn(name = "Current", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Allocated", type_ = "integer", json_path = ".status.allocatedReplicas"),
    printcolumn(name = "Worlds", type_ = "integer", json_path = ".status.worlds"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct FleetSpec {
    /// Servers in all regions together: what `kubectl scale` sets (the scale
    /// subresource). Unset, or equal to the sum of the regions' replicas, it changes
    /// nothing; otherwise the new total is spread over the regions in proportion to their
    /// replicas. A FleetAutoscaler writes each region's replicas and this total together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<u32>,
    /// Worlds one server hosts at once.
    #[serde(default = "defaults::world_capacity")]
    #[schemars(range(min = 1))]
    pub world_capacity: u32,
    /// Client connections one server accepts at once.
    #[serde(default = "defaults::player_capacity")]
    #[schemars(range(min = 1))]
    pub player_capacity: u32,
    /// Players one world holds.
    #[serde(default = "defaults::world_player_capacity")]
    #[schemars(range(min = 1))]
    pub world_player_capacity: u32,
    /// Labels every server of the fleet starts with in the registry (what allocation
    /// selectors match).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub health: HealthSpec,
    #[serde(default)]
    pub strategy: FleetStrategy,
    pub regions: Vec<FleetRegion>,
    /// The game-server Pod. Its first container is the game server: the controller adds
    /// its identity (`GAIA_*` env), port 7777 and a liveness probe on `/livez`.
    #[schemars(schema_with = "open_object")]
    pub template: PodTemplateSpec,
}

/// One region of a fleet and where its Pods may run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetRegion {
    pub name: String,
    /// Servers to run when no autoscaler manages the fleet (and its starting point when
    /// one does).
    #[serde(default)]
    pub replicas: u32,
    /// Added to the template's node selector for this region's Pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Replaces the template's affinity for this region's Pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "open_object")]
    pub affinity: Option<Affinity>,
    /// Added to the template's tolerations for this region's Pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "list_of_open_objects")]
    pub tolerations: Vec<Toleration>,
}

/// What the controller saw at its last reconcile.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetStatus {
    /// Live servers (every state but Shutdown, Unhealthy and Error), Scheduled included.
    pub replicas: u32,
    pub desired_replicas: u32,
    pub ready_replicas: u32,
    pub allocated_replicas: u32,
    pub reserved_replicas: u32,
    pub draining_replicas: u32,
    /// Servers still on an older template (a rolling update is under way while > 0).
    pub outdated_replicas: u32,
    /// World slots in use, and in all.
    pub worlds: u32,
    pub world_capacity: u32,
    pub players: u32,
    /// Selects the fleet's Pods (for the scale subresource).
    pub label_selector: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<FleetRegionStatus>,
    /// Why the spec cannot be acted on, when it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetRegionStatus {
    pub name: String,
    pub desired_replicas: u32,
    pub replicas: u32,
    pub ready_replicas: u32,
    pub allocated_replicas: u32,
    pub worlds: u32,
}

// kube's derive takes one `printcolumn(...)` per column.
#[allow(clippy::duplicated_attributes)]
/// One game server, as the registry last reported it. The controller makes these (one per
/// Pod) and keeps their status; they are a view, not a way to start servers.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "gaia.dev",
    version = "v1alpha1",
    kind = "GameServer",
    namespaced,
    status = "GameServerStatus",
    shortname = "ggs",
    category = "gaia",
    doc = "One game server, mirrored from the registry by the controller.",
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "Fleet", type_ = "string", json_path = ".spec.fleet"),
    printcolumn(name = "Region", type_ = "string", json_path = ".spec.region"),
    printcolumn(name = "Address", type_ = "string", json_path = ".status.address"),
    printcolumn(name = "Worlds", type_ = "integer", json_path = ".status.worlds"),
    printcolumn(name = "Players", type_ = "integer", json_path = ".status.players"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct GameServerSpec {
    pub fleet: String,
    pub region: String,
    /// The fleet template digest the server was started from.
    pub template_version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GameServerStatus {
    pub state: GameServerState,
    /// Where clients connect (`ws://host:port/ws`), once the server registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub worlds: u32,
    pub world_capacity: u32,
    pub players: u32,
    pub player_capacity: u32,
}

impl From<&crate::gameserver::GameServer> for GameServerStatus {
    fn from(s: &crate::gameserver::GameServer) -> Self {
        Self {
            state: s.state,
            address: s.address.clone(),
            worlds: s.worlds,
            world_capacity: s.world_capacity,
            players: s.players,
            player_capacity: s.player_capacity,
        }
    }
}

impl FleetSpec {
    /// Checks what the schema cannot; `field` is the path of the spec (`spec`).
    pub fn validate(&self, field: &str, name: &str) -> Result<(), SpecError> {
        check_name("metadata.name", name)?;
        if self.template.spec.as_ref().is_none_or(|s| s.containers.is_empty()) {
            return Err(invalid(format!("{field}.template.spec.containers"), "must hold the game-server container"));
        }
        self.as_fleet_spec(name).validate(field)
    }

    /// The desired replicas of each region: the regions' own, unless `replicas` asks for
    /// another total, which is then spread over them in proportion to their replicas
    /// (largest remainders first; evenly when they are all 0).
    pub fn region_replicas(&self) -> BTreeMap<String, u32> {
        let own: BTreeMap<String, u32> = self.regions.iter().map(|r| (r.name.clone(), r.replicas)).collect();
        let sum: u64 = own.values().map(|&n| u64::from(n)).sum();
        let Some(total) = self.replicas.filter(|&t| u64::from(t) != sum && !self.regions.is_empty()) else {
            return own;
        };
        let total = u64::from(total);
        let count = self.regions.len() as u64;
        let weight = |r: &FleetRegion| if sum == 0 { 1 } else { u64::from(r.replicas) };
        let weights = if sum == 0 { count } else { sum };
        let mut shares: Vec<(usize, u64, u64)> = self
            .regions
            .iter()
            .enumerate()
            .map(|(i, r)| (i, total * weight(r) / weights, total * weight(r) % weights))
            .collect();
        let given: u64 = shares.iter().map(|s| s.1).sum();
        // Largest remainder first, then the order the regions are written in.
        let mut order: Vec<usize> = (0..shares.len()).collect();
        order.sort_by_key(|&i| (std::cmp::Reverse(shares[i].2), i));
        for &i in order.iter().take(usize::try_from(total - given).unwrap_or(usize::MAX)) {
            shares[i].1 += 1;
        }
        shares
            .into_iter()
            .map(|(i, n, _)| (self.regions[i].name.clone(), u32::try_from(n).unwrap_or(u32::MAX)))
            .collect()
    }

    /// The fleet as the autoscaler and the registry see it (capacities, regions). The
    /// game-server template there is only informative: Pods are made from `template`.
    pub fn as_fleet_spec(&self, name: &str) -> crate::fleet::FleetSpec {
        let container = self.template.spec.as_ref().and_then(|s| s.containers.first());
        let command = container
            .map(|c| {
                let mut command = c.command.clone().unwrap_or_default();
                command.extend(c.args.clone().unwrap_or_default());
                if command.is_empty() {
                    command.push(c.image.clone().unwrap_or_else(|| c.name.clone()));
                }
                command
            })
            .unwrap_or_default();
        let replicas = self.region_replicas();
        crate::fleet::FleetSpec {
            name: name.to_string(),
            world_capacity: self.world_capacity,
            player_capacity: self.player_capacity,
            world_player_capacity: self.world_player_capacity,
            labels: self.labels.clone(),
            template: crate::fleet::GameServerTemplate { command, env: BTreeMap::new() },
            health: self.health,
            strategy: self.strategy,
            regions: self
                .regions
                .iter()
                .map(|r| crate::fleet::RegionSpec {
                    name: r.name.clone(),
                    replicas: replicas.get(&r.name).copied().unwrap_or(0),
                })
                .collect(),
        }
    }

    /// A digest of everything a running server was started with: the Pod template, the
    /// regions' placement, capacities, health and labels. When it changes the fleet's
    /// servers are replaced (a rolling update). Replica counts are not part of it.
    pub fn template_version(&self) -> String {
        let placement: Vec<_> =
            self.regions.iter().map(|r| (&r.name, &r.node_selector, &r.affinity, &r.tolerations)).collect();
        let started_with = (
            &self.template,
            placement,
            self.world_capacity,
            self.player_capacity,
            self.world_player_capacity,
            &self.health,
            &self.labels,
        );
        crate::fleet::digest(&started_with)
    }
}

/// An object whose fields Kubernetes keeps as they are (a core type, checked by the
/// controller when it reads the spec).
pub fn open_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

pub fn list_of_open_objects(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": { "type": "object", "x-kubernetes-preserve-unknown-fields": true },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(regions: &[(&str, u32)], replicas: Option<u32>) -> FleetSpec {
        let yaml = r#"
regions: []
template:
  spec:
    containers: [{name: gameserver, image: "ghcr.io/gaia-fleet/gaia:0.1.0", args: [gameserver]}]
"#;
        let mut spec: FleetSpec = serde_norway::from_str(yaml).unwrap();
        spec.replicas = replicas;
        spec.regions = regions
            .iter()
            .map(|&(name, replicas)| FleetRegion {
                name: name.into(),
                replicas,
                node_selector: BTreeMap::new(),
                affinity: None,
                tolerations: Vec::new(),
            })
            .collect();
        spec
    }

    fn replicas(spec: &FleetSpec) -> Vec<u32> {
        spec.regions.iter().map(|r| spec.region_replicas()[&r.name]).collect()
    }

    #[test]
    fn a_total_is_spread_over_regions_in_proportion() {
        // Unset or equal to the sum: the regions' own.
        assert_eq!(replicas(&fleet(&[("eu", 3), ("us", 1)], None)), vec![3, 1]);
        assert_eq!(replicas(&fleet(&[("eu", 3), ("us", 1)], Some(4))), vec![3, 1]);
        // kubectl scale --replicas 8: doubled.
        assert_eq!(replicas(&fleet(&[("eu", 3), ("us", 1)], Some(8))), vec![6, 2]);
        // Remainders go to the largest fractions, then to the first written.
        assert_eq!(replicas(&fleet(&[("eu", 1), ("us", 1), ("ap", 1)], Some(5))), vec![2, 2, 1]);
        assert_eq!(replicas(&fleet(&[("eu", 2), ("us", 1)], Some(2))), vec![1, 1], "4/3 and 2/3: us has more left");
        // All zero: evenly.
        assert_eq!(replicas(&fleet(&[("eu", 0), ("us", 0)], Some(3))), vec![2, 1]);
        // Down to zero.
        assert_eq!(replicas(&fleet(&[("eu", 3), ("us", 1)], Some(0))), vec![0, 0]);
    }

    #[test]
    fn the_total_is_always_kept() {
        for total in 0..40u32 {
            for weights in [[0u32, 0, 0], [1, 2, 3], [7, 0, 1], [1, 1, 1]] {
                let spec = fleet(&[("a", weights[0]), ("b", weights[1]), ("c", weights[2])], Some(total));
                assert_eq!(replicas(&spec).iter().sum::<u32>(), total, "{weights:?} -> {total}");
            }
        }
    }

    #[test]
    fn template_version_follows_the_pod_template_and_placement_not_replicas() {
        let base = fleet(&[("eu", 1)], None);
        let mut scaled = base.clone();
        scaled.regions[0].replicas = 5;
        scaled.replicas = Some(9);
        assert_eq!(base.template_version(), scaled.template_version());
        let mut image = base.clone();
        image.template.spec.as_mut().unwrap().containers[0].image = Some("ghcr.io/gaia-fleet/gaia:0.2.0".into());
        assert_ne!(base.template_version(), image.template_version());
        let mut moved = base.clone();
        moved.regions[0].node_selector.insert("topology.kubernetes.io/region".into(), "europe-west1".into());
        assert_ne!(base.template_version(), moved.template_version());
    }

    #[test]
    fn validation_names_the_field() {
        let spec = fleet(&[("eu", 1)], None);
        assert_eq!(spec.validate("spec", "town"), Ok(()));
        assert_eq!(
            spec.validate("spec", "Town").unwrap_err().to_string(),
            "metadata.name: may hold only a-z, 0-9 and '-'"
        );
        let mut empty = spec.clone();
        empty.template.spec.as_mut().unwrap().containers.clear();
        assert_eq!(
            empty.validate("spec", "town").unwrap_err().to_string(),
            "spec.template.spec.containers: must hold the game-server container"
        );
        let none = fleet(&[], None);
        assert_eq!(
            none.validate("spec", "town").unwrap_err().to_string(),
            "spec.regions: at least one region is required"
        );
    }
}
