#![allow(clippy::unwrap_used)]
//! The autoscaler's Kubernetes side against a scripted API server (kube-rs controller-rs'
//! `ApiServerVerifier`): every call is asserted, method, path and query and body, and
//! after the code under test is done no further call may come.

use std::collections::BTreeMap;
use std::sync::Arc;

use gaia_api::autoscaler::{
    BufferStatus, BufferUnit, FleetAutoscaler, FleetAutoscalerStatus, PolicyInputs, RegionAutoscalerStatus,
    ScaleDecision,
};
use gaia_api::k8s::Fleet;
use gaia_k8s::autoscaler::{self, Settings};
use gaia_k8s::{Error, is_conflict};
use gaia_registry::{MemoryRegistry, RegistryConfig};
use http::{Request, Response, StatusCode};
use kube::Client;
use kube::api::Api;
use kube::client::Body;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower_test::mock::{Handle, SendResponse};

const FLEETS: &str = "/apis/gaia.dev/v1alpha1/namespaces/games/fleets";
const AUTOSCALERS: &str = "/apis/gaia.dev/v1alpha1/namespaces/games/fleetautoscalers";
const MERGE_PATCH: &str = "application/merge-patch+json";

/// The other end of the client: each request as it comes, to be answered by the test.
struct ApiServer(Handle<Request<Body>, Response<Body>>);

/// One request as the API server got it.
struct Call {
    method: String,
    uri: String,
    content_type: Option<String>,
    body: Option<Value>,
    send: SendResponse<Response<Body>>,
}

impl Call {
    fn respond(self, status: StatusCode, body: Value) {
        let response = Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap();
        self.send.send_response(response);
    }

    fn ok(self, body: Value) {
        self.respond(StatusCode::OK, body);
    }
}

impl ApiServer {
    fn new() -> (Client, Self) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (Client::new(service, "games"), Self(handle))
    }

    async fn next(&mut self) -> Call {
        let (request, send) = self.0.next_request().await.expect("the client made another call");
        let method = request.method().to_string();
        let uri = request.uri().to_string();
        let content_type = request.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body = (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).unwrap());
        Call { method, uri, content_type, body, send }
    }

    /// The next call, which must be `method uri` with `body` (JSON, or none).
    async fn expect(&mut self, method: &str, uri: &str, body: Option<Value>) -> Call {
        let call = self.next().await;
        assert_eq!((call.method.as_str(), call.uri.as_str()), (method, uri));
        assert_eq!(call.body, body, "body of {method} {uri}");
        if method == "PATCH" {
            assert_eq!(call.content_type.as_deref(), Some(MERGE_PATCH));
        }
        call
    }

    /// Once everything holding the client is dropped: no call was left unanswered.
    async fn done(mut self) {
        if let Some((request, _)) = self.0.next_request().await {
            panic!("an unexpected call: {} {}", request.method(), request.uri());
        }
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": { "name": "town", "group": "gaia.dev", "kind": "fleets" },
        "code": code,
    })
}

fn conflict() -> Value {
    status(
        409,
        "Conflict",
        "Operation cannot be fulfilled on fleets.gaia.dev \"town\": the object has been modified; please apply your changes to the latest version and try again",
    )
}

/// The Fleet `town`: regions eu and us (placed on a node pool), at `resourceVersion`.
fn town(resource_version: &str, eu: u32, us: u32) -> Value {
    json!({
        "apiVersion": "gaia.dev/v1alpha1",
        "kind": "Fleet",
        "metadata": { "name": "town", "namespace": "games", "uid": "f-1", "resourceVersion": resource_version },
        "spec": {
            "worldCapacity": 10,
            "playerCapacity": 300,
            "worldPlayerCapacity": 30,
            "health": { "periodSeconds": 5, "failureThreshold": 3 },
            "regions": [
                { "name": "eu", "replicas": eu },
                { "name": "us", "replicas": us, "nodeSelector": { "cloud.google.com/gke-nodepool": "us-games" } },
            ],
            "template": { "spec": { "containers": [{ "name": "gameserver", "image": "ghcr.io/gaia-fleet/gaia:0.1.0" }] } },
        },
    })
}

fn fleet(value: Value) -> Fleet {
    serde_json::from_value(value).unwrap()
}

/// The merge patch that gives `town` these replicas, fenced by `resource_version`.
fn town_patch(resource_version: &str, eu: u32, us: u32) -> Value {
    json!({
        "metadata": { "resourceVersion": resource_version },
        "spec": {
            "replicas": eu + us,
            "regions": [
                { "name": "eu", "replicas": eu },
                { "name": "us", "replicas": us, "nodeSelector": { "cloud.google.com/gke-nodepool": "us-games" } },
            ],
        },
    })
}

fn eu(replicas: u32) -> BTreeMap<String, u32> {
    BTreeMap::from([("eu".to_string(), replicas)])
}

const PATCH_TOWN: &str = "/apis/gaia.dev/v1alpha1/namespaces/games/fleets/town?&fieldManager=gaia-fleet-autoscaler";
const GET_TOWN: &str = "/apis/gaia.dev/v1alpha1/namespaces/games/fleets/town";

#[tokio::test]
async fn a_region_s_new_replicas_are_one_merge_patch() {
    let (client, mut server) = ApiServer::new();
    let api: Api<Fleet> = Api::namespaced(client, "games");
    let current = fleet(town("7", 1, 2));
    let writing = async move {
        let written = autoscaler::write_replicas(&api, &current, &eu(3), 5).await;
        drop(api);
        written
    };
    let serving = async {
        server.expect("PATCH", PATCH_TOWN, Some(town_patch("7", 3, 2))).await.ok(town("8", 3, 2));
    };
    let (written, ()) = tokio::join!(writing, serving);
    assert!(written.unwrap(), "written");
    server.done().await;
}

#[tokio::test]
async fn nothing_to_write_makes_no_call() {
    let (client, server) = ApiServer::new();
    let api: Api<Fleet> = Api::namespaced(client, "games");
    let current = fleet(town("7", 3, 2));
    assert!(!autoscaler::write_replicas(&api, &current, &eu(3), 5).await.unwrap());
    let both = BTreeMap::from([("eu".to_string(), 3), ("us".to_string(), 2)]);
    assert!(!autoscaler::write_replicas(&api, &current, &both, 5).await.unwrap());
    drop(api);
    server.done().await;
}

#[tokio::test]
async fn a_conflict_reads_the_fleet_again_and_keeps_what_others_changed() {
    let (client, mut server) = ApiServer::new();
    let api: Api<Fleet> = Api::namespaced(client, "games");
    let current = fleet(town("7", 1, 2));
    let writing = async move {
        let written = autoscaler::write_replicas(&api, &current, &eu(3), 5).await;
        drop(api);
        written
    };
    let serving = async {
        server.expect("PATCH", PATCH_TOWN, Some(town_patch("7", 3, 2))).await.respond(StatusCode::CONFLICT, conflict());
        // Someone scaled us to 5 meanwhile.
        server.expect("GET", GET_TOWN, None).await.ok(town("9", 1, 5));
        server.expect("PATCH", PATCH_TOWN, Some(town_patch("9", 3, 5))).await.ok(town("10", 3, 5));
    };
    let (written, ()) = tokio::join!(writing, serving);
    assert!(written.unwrap(), "written on the second try");
    server.done().await;
}

#[tokio::test]
async fn conflicts_past_the_retry_limit_give_up() {
    let (client, mut server) = ApiServer::new();
    let api: Api<Fleet> = Api::namespaced(client, "games");
    let current = fleet(town("7", 1, 2));
    let writing = async move {
        let written = autoscaler::write_replicas(&api, &current, &eu(3), 2).await;
        drop(api);
        written
    };
    let serving = async {
        // The first try and 2 retries: 3 patches, each after a fresh read but the first.
        for (read, version) in [(false, "7"), (true, "8"), (true, "9")] {
            if read {
                server.expect("GET", GET_TOWN, None).await.ok(town(version, 1, 2));
            }
            server
                .expect("PATCH", PATCH_TOWN, Some(town_patch(version, 3, 2)))
                .await
                .respond(StatusCode::CONFLICT, conflict());
        }
    };
    let (written, ()) = tokio::join!(writing, serving);
    match written {
        Err(Error::Kube(e)) => assert!(is_conflict(&e), "{e}"),
        other => panic!("expected the conflict, got {other:?}"),
    }
    server.done().await;
}

#[tokio::test]
async fn a_fleet_that_is_gone_is_skipped() {
    let (client, mut server) = ApiServer::new();
    let api: Api<Fleet> = Api::namespaced(client, "games");
    let current = fleet(town("7", 1, 2));
    let writing = async move {
        let written = autoscaler::write_replicas(&api, &current, &eu(3), 5).await;
        drop(api);
        written
    };
    let serving = async {
        let gone = status(404, "NotFound", "fleets.gaia.dev \"town\" not found");
        server.expect("PATCH", PATCH_TOWN, Some(town_patch("7", 3, 2))).await.respond(StatusCode::NOT_FOUND, gone);
    };
    let (written, ()) = tokio::join!(writing, serving);
    assert!(!written.unwrap(), "nothing written, and no error");
    server.done().await;
}

/// An empty list of object metadata: what `require_crd` reads when the CRD is there.
fn no_objects() -> Value {
    json!({ "kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": { "resourceVersion": "10" }, "items": [] })
}

#[tokio::test]
async fn a_missing_crd_stops_run_at_start() {
    let (client, mut server) = ApiServer::new();
    let settings = Settings { namespace: "games".into(), ..Settings::default() };
    let registry = Arc::new(MemoryRegistry::new(RegistryConfig::default()));
    let running = autoscaler::run(settings, client, registry, CancellationToken::new());
    let serving = async {
        server.expect("GET", &format!("{FLEETS}?&limit=1"), None).await.ok(no_objects());
        // What the API server answers for a resource it does not know.
        let unknown = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "the server could not find the requested resource",
            "reason": "NotFound",
            "details": {},
            "code": 404,
        });
        server.expect("GET", &format!("{AUTOSCALERS}?&limit=1"), None).await.respond(StatusCode::NOT_FOUND, unknown);
    };
    let (result, ()) = tokio::join!(running, serving);
    let error = result.unwrap_err();
    assert!(matches!(error, Error::MissingCrd { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("fleetautoscalers.gaia.dev"), "{message}");
    assert!(message.contains("install the CRDs"), "{message}");
    server.done().await;
}

fn explained(
    region: &str,
    desired: u32,
    current: u32,
    used_worlds: u32,
    decided_at_ms: Option<u64>,
) -> RegionAutoscalerStatus {
    RegionAutoscalerStatus {
        region: region.into(),
        policy: "Buffer".into(),
        desired_replicas: desired,
        current_replicas: current,
        buffer: BufferStatus { unit: BufferUnit::Worlds, target: 5, free: (current * 10).saturating_sub(used_worlds) },
        inputs: PolicyInputs {
            used_worlds,
            world_capacity: 10,
            busy_servers: used_worlds.div_ceil(10),
            waiting_requests: 0,
            allocation_rate: 0.5,
            server_start_seconds: 8.0,
            start_measured: true,
            webhook: None,
        },
        decisions: decided_at_ms
            .map(|at_ms| ScaleDecision {
                at_ms,
                from: desired - 1,
                to: desired,
                reason: "buffer".into(),
                message: "12 world(s) in use + 0 waiting + 5 free = 17 slots: 2 server(s) of 10".into(),
            })
            .into_iter()
            .collect(),
    }
}

#[tokio::test]
async fn a_status_is_one_merge_patch_of_the_status_subresource() {
    let (client, mut server) = ApiServer::new();
    let api: Api<FleetAutoscaler> = Api::namespaced(client, "games");
    let spec = serde_json::from_value(json!({
        "fleetName": "town",
        "policy": { "type": "Buffer", "buffer": { "bufferSize": 5, "minReplicas": 1, "maxReplicas": 2 } },
    }))
    .unwrap();
    // eu: 12 worlds + 5 free = 2 servers; us: 30 worlds + 5 free wants 4, capped at 2.
    let status = FleetAutoscalerStatus {
        fleet: "town".into(),
        updated_at_ms: 1_780_000_000_000,
        regions: vec![
            explained("eu", 2, 2, 12, Some(1_779_999_990_000)),
            explained("us", 2, 3, 30, Some(1_779_999_000_000)),
        ],
    };
    let resource = autoscaler::autoscaler_status(&spec, &status);
    let writing = async move {
        let written = autoscaler::write_status(&api, "town-scaler", &resource).await;
        drop(api);
        written
    };
    let serving = async {
        let body = json!({ "status": {
            "currentReplicas": 5,
            "desiredReplicas": 4,
            "ableToScale": true,
            "scalingLimited": true,
            "lastScaleTime": "2026-05-28T20:26:30Z",
            "regions": [
                { "region": "eu", "policy": "Buffer", "currentReplicas": 2, "desiredReplicas": 2, "bufferTarget": 5, "bufferFree": 8 },
                { "region": "us", "policy": "Buffer", "currentReplicas": 3, "desiredReplicas": 2, "bufferTarget": 5, "bufferFree": 0 },
            ],
            "message": null,
        }});
        let uri = format!("{AUTOSCALERS}/town-scaler/status?&fieldManager=gaia-fleet-autoscaler");
        server.expect("PATCH", &uri, Some(body)).await.ok(json!({
            "apiVersion": "gaia.dev/v1alpha1",
            "kind": "FleetAutoscaler",
            "metadata": { "name": "town-scaler", "namespace": "games", "resourceVersion": "12" },
            "spec": { "fleetName": "town", "policy": { "type": "Buffer", "buffer": { "bufferSize": 5, "minReplicas": 1, "maxReplicas": 2 } } },
        }));
    };
    let (written, ()) = tokio::join!(writing, serving);
    written.unwrap();
    server.done().await;
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({ "apiVersion": "gaia.dev/v1alpha1", "kind": kind, "metadata": { "resourceVersion": "10" }, "items": items })
}

fn scaler(name: &str, fleet: &str) -> Value {
    json!({
        "apiVersion": "gaia.dev/v1alpha1",
        "kind": "FleetAutoscaler",
        "metadata": { "name": name, "namespace": "games", "uid": format!("a-{name}"), "resourceVersion": "5" },
        "spec": { "fleetName": fleet, "policy": { "type": "Buffer", "buffer": { "bufferSize": 5, "maxReplicas": 4 } } },
    })
}

/// `run` end to end: the CRD checks, the lists and watches, the first decision written to
/// the Fleet, and both FleetAutoscalers' statuses. The lists and watches of the two kinds
/// race each other, so calls are matched by what they are rather than their order; each
/// must come exactly once. The clock is paused: nothing here waits on it.
#[tokio::test(start_paused = true)]
async fn run_writes_the_first_decision_and_the_statuses() {
    let (client, mut server) = ApiServer::new();
    let mut settings = Settings { namespace: "games".into(), ..Settings::default() };
    settings.autoscaler.sync_every = std::time::Duration::from_secs(10);
    let registry = Arc::new(MemoryRegistry::new(RegistryConfig::default()));
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(autoscaler::run(settings, client, registry, shutdown.clone()));

    server.expect("GET", &format!("{FLEETS}?&limit=1"), None).await.ok(no_objects());
    server.expect("GET", &format!("{AUTOSCALERS}?&limit=1"), None).await.ok(no_objects());

    let watch =
        |path: &str| format!("{path}?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=10");
    let mut expected: BTreeMap<(String, String), Option<Value>> = BTreeMap::from([
        (("GET".into(), format!("{FLEETS}?&limit=500")), None),
        (("GET".into(), format!("{AUTOSCALERS}?&limit=500")), None),
        (("GET".into(), watch(FLEETS)), None),
        (("GET".into(), watch(AUTOSCALERS)), None),
        // Empty regions want 5 free world slots: one server of 10 each.
        (("PATCH".into(), PATCH_TOWN.into()), Some(town_patch("7", 1, 1))),
        (
            ("PATCH".into(), format!("{AUTOSCALERS}/ghost-scaler/status?&fieldManager=gaia-fleet-autoscaler")),
            Some(json!({ "status": {
                "currentReplicas": 0,
                "desiredReplicas": 0,
                "ableToScale": false,
                "scalingLimited": false,
                "regions": [],
                "message": "spec.fleetName: no Fleet \"ghost\" in this namespace",
            }})),
        ),
        (
            ("PATCH".into(), format!("{AUTOSCALERS}/town-scaler/status?&fieldManager=gaia-fleet-autoscaler")),
            Some(json!({ "status": {
                "currentReplicas": 0,
                "desiredReplicas": 2,
                "ableToScale": true,
                "scalingLimited": false,
                "regions": [
                    { "region": "eu", "policy": "Buffer", "currentReplicas": 0, "desiredReplicas": 1, "bufferTarget": 5, "bufferFree": 0 },
                    { "region": "us", "policy": "Buffer", "currentReplicas": 0, "desiredReplicas": 1, "bufferTarget": 5, "bufferFree": 0 },
                ],
                "message": null,
            }})),
        ),
    ]);
    // Watches stay open (answered by nothing) until run stops.
    let mut watches = Vec::new();
    while !expected.is_empty() {
        let mut call = server.next().await;
        let key = (call.method.clone(), call.uri.clone());
        let body = expected.remove(&key).unwrap_or_else(|| panic!("an unexpected or repeated call: {key:?}"));
        if call.method == "PATCH" {
            assert_eq!(call.content_type.as_deref(), Some(MERGE_PATCH), "{key:?}");
        }
        // When desired replicas last changed is the wall clock's: checked, then left out.
        if let Some(status) = call.body.as_mut().and_then(|b| b.get_mut("status")).and_then(Value::as_object_mut)
            && status.get("ableToScale") == Some(&json!(true))
        {
            let time = status.remove("lastScaleTime").unwrap();
            chrono::DateTime::parse_from_rfc3339(time.as_str().unwrap()).unwrap();
        }
        assert_eq!(call.body, body, "body of {key:?}");
        match (call.method.as_str(), call.uri.as_str()) {
            (_, uri) if uri.contains("watch=true") => watches.push(call.send),
            ("GET", uri) if uri.starts_with(FLEETS) => call.ok(list("FleetList", vec![town("7", 0, 0)])),
            ("GET", _) => call
                .ok(list("FleetAutoscalerList", vec![scaler("town-scaler", "town"), scaler("ghost-scaler", "ghost")])),
            ("PATCH", PATCH_TOWN) => call.ok(town("11", 1, 1)),
            ("PATCH", uri) => {
                let name = if uri.contains("ghost") { "ghost-scaler" } else { "town-scaler" };
                let fleet = if name == "ghost-scaler" { "ghost" } else { "town" };
                call.ok(scaler(name, fleet));
            }
            (method, uri) => panic!("unscripted {method} {uri}"),
        }
    }

    shutdown.cancel();
    running.await.unwrap().unwrap();
    drop(watches);
    server.done().await;
}
