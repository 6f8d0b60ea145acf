//! The Pod of one game server: its fleet's template, placed in its region, told who it is.
//!
//! Plain data in, a `Pod` out ([`game_server_pod`]); nothing here talks to the API
//! server. What a game server reads from its environment is `gaia_gameserver::Config`.

use std::collections::BTreeMap;

use gaia_api::fleet::TEMPLATE_LABEL;
use gaia_api::k8s::{COMPONENT_LABEL, FLEET_LABEL, Fleet, FleetRegion, REGION_LABEL};
use gaia_api::server_env::{self as var, ServerEnv};
use gaia_api::token::TokenKey;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, Pod, Probe, SecretKeySelector,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;

/// The port every game server listens on inside its Pod.
pub const GAME_PORT: i32 = 7777;
/// `app.kubernetes.io/component` of game-server Pods.
pub const COMPONENT: &str = "gameserver";

/// What every game-server Pod is told besides its fleet's spec.
#[derive(Clone)]
pub struct PodSettings {
    /// Where game servers reach the SDK API: the allocator Service.
    pub sdk_url: String,
    /// Each server's SDK token is derived from it (`GAIA_SDK_TOKEN`); `None`: SDK auth off.
    pub sdk_key: Option<TokenKey>,
    /// Secret holding the join-token secret, key `join-secret` (`GAIA_JOIN_SECRET`).
    pub secrets: String,
    /// Secret with key `url`: the hot checkpoint tier (`GAIA_REDIS_URL`), if it exists.
    pub redis_secret: String,
    /// Secret with key `url`: the durable checkpoint tier (`GAIA_DATABASE_URL`), if it exists.
    pub postgres_secret: String,
}

impl Default for PodSettings {
    fn default() -> Self {
        Self {
            sdk_url: "http://gaia-allocator:7700".into(),
            sdk_key: None,
            secrets: "gaia-secrets".into(),
            redis_secret: "gaia-redis".into(),
            postgres_secret: "gaia-postgres".into(),
        }
    }
}

/// The Pod of server `name` of `fleet` in `region`, started from template `version`.
///
/// The fleet's template is kept, with: the fleet, region, component and template labels;
/// the Fleet as controlling owner (so deleting the Fleet deletes its Pods); the region's
/// node selector and tolerations added, its affinity in place of the template's;
/// `restartPolicy: Never` (a game server that exits is replaced, never restarted in
/// place: its worlds have moved on); and on the first container the server's identity
/// (`GAIA_*`, which the template cannot override), port 7777 and, unless the template
/// has one, a liveness probe on `/livez` timed by the fleet's health spec.
pub fn game_server_pod(fleet: &Fleet, region: &FleetRegion, name: &str, version: &str, settings: &PodSettings) -> Pod {
    let spec = &fleet.spec;
    let mut template = spec.template.clone();
    let mut meta = template.metadata.take().unwrap_or_default();
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    for (key, value) in [
        (FLEET_LABEL, fleet.metadata.name.clone().unwrap_or_default()),
        (REGION_LABEL, region.name.clone()),
        (COMPONENT_LABEL, COMPONENT.to_string()),
        (TEMPLATE_LABEL, version.to_string()),
    ] {
        labels.insert(key.to_string(), value);
    }
    let metadata = ObjectMeta {
        name: Some(name.to_string()),
        namespace: fleet.metadata.namespace.clone(),
        labels: meta.labels,
        annotations: meta.annotations,
        owner_references: fleet.controller_owner_ref(&()).map(|r| vec![r]),
        ..ObjectMeta::default()
    };

    let mut pod_spec = template.spec.unwrap_or_default();
    pod_spec.restart_policy = Some("Never".into());
    if !region.node_selector.is_empty() {
        pod_spec.node_selector.get_or_insert_with(BTreeMap::new).extend(region.node_selector.clone());
    }
    if region.affinity.is_some() {
        pod_spec.affinity = region.affinity.clone();
    }
    if !region.tolerations.is_empty() {
        pod_spec.tolerations.get_or_insert_with(Vec::new).extend(region.tolerations.iter().cloned());
    }
    if let Some(container) = pod_spec.containers.first_mut() {
        identify(container, fleet, region, name, settings);
    }
    Pod { metadata, spec: Some(pod_spec), status: None }
}

fn identify(container: &mut Container, fleet: &Fleet, region: &FleetRegion, name: &str, settings: &PodSettings) {
    let spec = &fleet.spec;
    let plain = |name: &str, value: String| EnvVar { name: name.into(), value: Some(value), value_from: None };
    let from = |name: &str, source: EnvVarSource| EnvVar { name: name.into(), value: None, value_from: Some(source) };
    let field = |path: &str| EnvVarSource {
        field_ref: Some(ObjectFieldSelector { field_path: path.into(), api_version: None }),
        ..EnvVarSource::default()
    };
    let secret = |secret: &str, key: &str, optional: bool| EnvVarSource {
        secret_key_ref: Some(SecretKeySelector {
            name: secret.into(),
            key: key.into(),
            optional: optional.then_some(true),
        }),
        ..EnvVarSource::default()
    };
    let place = ServerEnv {
        fleet: fleet.metadata.name.clone().unwrap_or_default(),
        region: region.name.clone(),
        sdk_url: settings.sdk_url.clone(),
        world_capacity: spec.world_capacity,
        player_capacity: spec.player_capacity,
        world_player_capacity: spec.world_player_capacity,
        health_period_seconds: spec.health.period_seconds,
    };
    let mut identity = vec![
        // The downward API: the Pod's own name is the server's name in the registry, and
        // clients reach it at the Pod's IP.
        from(var::SERVER_NAME, field("metadata.name")),
        from(var::ADVERTISE_HOST, field("status.podIP")),
        plain(var::LISTEN, format!("0.0.0.0:{GAME_PORT}")),
        from(var::JOIN_SECRET, secret(&settings.secrets, "join-secret", false)),
        from(var::REDIS_URL, secret(&settings.redis_secret, "url", true)),
        from(var::DATABASE_URL, secret(&settings.postgres_secret, "url", true)),
    ];
    identity.extend(place.vars().into_iter().map(|(name, value)| plain(name, value)));
    if let Some(key) = &settings.sdk_key {
        identity.push(plain(var::SDK_TOKEN, key.sdk_token(name)));
    }
    let mut env: Vec<EnvVar> = container.env.take().unwrap_or_default();
    env.retain(|e| !identity.iter().any(|i| i.name == e.name));
    env.extend(identity);
    container.env = Some(env);

    let ports = container.ports.get_or_insert_with(Vec::new);
    if !ports.iter().any(|p| p.container_port == GAME_PORT) {
        ports.push(ContainerPort {
            name: Some("game".into()),
            container_port: GAME_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        });
    }
    if container.liveness_probe.is_none() {
        let health = spec.health;
        container.liveness_probe = Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/livez".into()),
                port: IntOrString::Int(GAME_PORT),
                ..HTTPGetAction::default()
            }),
            initial_delay_seconds: i32::try_from(health.initial_delay_seconds).ok(),
            period_seconds: i32::try_from(health.period_seconds).ok(),
            failure_threshold: i32::try_from(health.failure_threshold).ok(),
            ..Probe::default()
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    pub(crate) fn fleet() -> Fleet {
        let yaml = r#"
apiVersion: gaia.dev/v1alpha1
kind: Fleet
metadata: {name: zombies, namespace: zombie-survival, uid: 7c1a6d7e-0000-4000-8000-000000000001}
spec:
  worldCapacity: 8
  health: {periodSeconds: 2, failureThreshold: 3, initialDelaySeconds: 10}
  regions:
    - name: eu-west
      replicas: 2
      nodeSelector: {topology.kubernetes.io/region: europe-west1}
      tolerations: [{key: dedicated, operator: Equal, value: games, effect: NoSchedule}]
  template:
    metadata: {labels: {game: zombies}, annotations: {team: undead}}
    spec:
      nodeSelector: {pool: games}
      containers:
        - name: gameserver
          image: ghcr.io/gaia-fleet/gaia:0.1.0
          args: [gameserver]
          env: [{name: RUST_LOG, value: info}, {name: GAIA_FLEET, value: spoofed}]
"#;
        serde_norway::from_str(yaml).unwrap()
    }

    fn env(pod: &Pod) -> BTreeMap<String, serde_json::Value> {
        let container = &pod.spec.as_ref().unwrap().containers[0];
        container
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| {
                let value = match (&e.value, &e.value_from) {
                    (Some(v), _) => serde_json::json!(v),
                    (None, Some(from)) => serde_json::to_value(from).unwrap(),
                    _ => serde_json::Value::Null,
                };
                (e.name.clone(), value)
            })
            .collect()
    }

    #[test]
    fn the_pod_is_the_template_placed_and_identified() {
        let fleet = fleet();
        let settings = PodSettings { sdk_key: Some(TokenKey::new("sdk")), ..PodSettings::default() };
        let pod = game_server_pod(&fleet, &fleet.spec.regions[0], "zombies-eu-west-abcde", "v1", &settings);
        let meta = &pod.metadata;
        assert_eq!(meta.name.as_deref(), Some("zombies-eu-west-abcde"));
        assert_eq!(meta.namespace.as_deref(), Some("zombie-survival"));
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels["game"], "zombies");
        assert_eq!(labels[FLEET_LABEL], "zombies");
        assert_eq!(labels[REGION_LABEL], "eu-west");
        assert_eq!(labels[COMPONENT_LABEL], "gameserver");
        assert_eq!(labels[TEMPLATE_LABEL], "v1");
        assert_eq!(meta.annotations.as_ref().unwrap()["team"], "undead");
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.controller), ("Fleet", "zombies", Some(true)));
        assert_eq!(owner.api_version, "gaia.dev/v1alpha1");

        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        let selector = spec.node_selector.as_ref().unwrap();
        assert_eq!(selector["pool"], "games");
        assert_eq!(selector["topology.kubernetes.io/region"], "europe-west1");
        assert_eq!(spec.tolerations.as_ref().unwrap()[0].key.as_deref(), Some("dedicated"));

        let env = env(&pod);
        assert_eq!(env["RUST_LOG"], "info");
        assert_eq!(env["GAIA_FLEET"], "zombies", "the template cannot override the identity");
        assert_eq!(env["GAIA_SERVER_NAME"], serde_json::json!({"fieldRef": {"fieldPath": "metadata.name"}}));
        assert_eq!(env["GAIA_ADVERTISE_HOST"], serde_json::json!({"fieldRef": {"fieldPath": "status.podIP"}}));
        assert_eq!(env["GAIA_REGION"], "eu-west");
        assert_eq!(env["GAIA_LISTEN"], "0.0.0.0:7777");
        assert_eq!(env["GAIA_WORLD_CAPACITY"], "8");
        assert_eq!(env["GAIA_SDK_URL"], "http://gaia-allocator:7700");
        assert_eq!(env["GAIA_SDK_TOKEN"], TokenKey::new("sdk").sdk_token("zombies-eu-west-abcde"));
        assert_eq!(
            env["GAIA_JOIN_SECRET"],
            serde_json::json!({"secretKeyRef": {"name": "gaia-secrets", "key": "join-secret"}})
        );
        assert_eq!(
            env["GAIA_REDIS_URL"],
            serde_json::json!({"secretKeyRef": {"name": "gaia-redis", "key": "url", "optional": true}})
        );
        let container = &spec.containers[0];
        assert_eq!(container.ports.as_ref().unwrap()[0].container_port, 7777);
        let probe = container.liveness_probe.as_ref().unwrap();
        assert_eq!(probe.http_get.as_ref().unwrap().path.as_deref(), Some("/livez"));
        assert_eq!(
            (probe.initial_delay_seconds, probe.period_seconds, probe.failure_threshold),
            (Some(10), Some(2), Some(3))
        );
    }

    #[test]
    fn without_an_sdk_secret_there_is_no_token() {
        let fleet = fleet();
        let pod = game_server_pod(&fleet, &fleet.spec.regions[0], "x", "v1", &PodSettings::default());
        assert!(!env(&pod).contains_key("GAIA_SDK_TOKEN"));
    }
}
