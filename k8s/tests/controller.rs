#![allow(clippy::unwrap_used)]
//! The controller against kube's mocked API server (tower-test), in the style of kube-rs
//! controller-rs: each test scripts the exact calls a reconcile must make, in order, with
//! their bodies, answers them, and checks that nothing else was called. The registry is
//! the real in-memory one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use gaia_api::allocation::AllocationRequest;
use gaia_api::fleet::TEMPLATE_LABEL;
use gaia_api::gameserver::{GameServer as Record, GameServerState, RegisterRequest};
use gaia_api::k8s::{Fleet, GameServer, GameServerStatus};
use gaia_k8s::controller::{Context, Settings, reconcile};
use gaia_registry::{MemoryRegistry, Registry, RegistryConfig};
use http::{Request, Response};
use k8s_openapi::api::core::v1::Pod;
use kube::client::Body;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

const NS: &str = "zombie-survival";

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

struct Harness {
    ctx: Arc<Context>,
    handle: Handle,
    registry: Arc<MemoryRegistry>,
    pods: Writer<Pod>,
    servers: Writer<GameServer>,
}

fn harness() -> Harness {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, NS);
    let registry = Arc::new(MemoryRegistry::new(RegistryConfig::default()));
    let (pod_store, mut pods) = reflector::store();
    let (server_store, mut servers) = reflector::store();
    // The stores have listed (empty) before the first reconcile.
    pods.apply_watcher_event(&watcher::Event::InitDone);
    servers.apply_watcher_event(&watcher::Event::InitDone);
    let count = AtomicUsize::new(0);
    let ctx = Context {
        client,
        registry: registry.clone(),
        pods: pod_store,
        game_servers: server_store,
        settings: Settings { namespace: NS.into(), ..Settings::default() },
        namer: Box::new(move |fleet, region| format!("{fleet}-{region}-{}", count.fetch_add(1, Ordering::Relaxed) + 1)),
    };
    Harness { ctx: Arc::new(ctx), handle, registry, pods, servers }
}

fn fleet(replicas: u32, image: &str) -> Fleet {
    let mut fleet: Fleet = serde_json::from_value(json!({
        "apiVersion": "gaia.dev/v1alpha1",
        "kind": "Fleet",
        "metadata": {"name": "zombies", "namespace": NS, "uid": "f1ee7000-0000-4000-8000-000000000001", "generation": 3},
        "spec": {
            "worldCapacity": 4,
            "regions": [{"name": "eu", "replicas": replicas, "nodeSelector": {"topology.kubernetes.io/region": "europe-west1"}}],
            "template": {"spec": {"containers": [{"name": "gameserver", "image": image, "args": ["gameserver"]}]}}
        }
    }))
    .unwrap();
    fleet.status = None;
    fleet
}

fn version(fleet: &Fleet) -> String {
    fleet.spec.template_version()
}

/// A server of `fleet` in the registry (Ready at `address`), with its Pod and GameServer
/// in the stores, as an earlier reconcile and the server itself would have left them.
async fn existing(h: &mut Harness, fleet: &Fleet, name: &str, version: &str, phase: &str) -> Record {
    let mut record = Record::scheduled(name, "zombies", "eu", 4, 300);
    record.labels.insert(TEMPLATE_LABEL.into(), version.into());
    h.registry.schedule(record).await.unwrap();
    let register = RegisterRequest {
        fleet: "zombies".into(),
        region: "eu".into(),
        address: format!("ws://10.0.0.{}:7777/ws", name.len()),
        world_capacity: 4,
        player_capacity: 300,
        labels: BTreeMap::from([(TEMPLATE_LABEL.to_string(), version.to_string())]),
        health: Default::default(),
    };
    h.registry.register(name, register).await.unwrap();
    let record = h.registry.transition(name, GameServerState::Ready).await.unwrap();
    let mut pod = gaia_k8s_pod(fleet, name, version);
    pod.status = Some(k8s_openapi::api::core::v1::PodStatus { phase: Some(phase.into()), ..Default::default() });
    h.pods.apply_watcher_event(&watcher::Event::Apply(pod));
    let mut server: GameServer = serde_json::from_value(json!({
        "apiVersion": "gaia.dev/v1alpha1", "kind": "GameServer",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"fleet": "zombies", "region": "eu", "templateVersion": version},
    }))
    .unwrap();
    server.status = Some(GameServerStatus::from(&record));
    h.servers.apply_watcher_event(&watcher::Event::Apply(server));
    record
}

fn gaia_k8s_pod(fleet: &Fleet, name: &str, version: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {
            "name": name, "namespace": NS,
            "labels": {"gaia.dev/fleet": fleet.name_any(), "gaia.dev/region": "eu",
                       "app.kubernetes.io/component": "gameserver", "gaia.dev/template": version},
        },
        "spec": {"containers": [{"name": "gameserver"}]},
    }))
    .unwrap()
}

/// Gives server `name` a world, as an allocation does.
async fn host_a_world(h: &Harness) -> String {
    let placed =
        h.registry.allocate(&AllocationRequest { fleet: "zombies".into(), ..Default::default() }).await.unwrap();
    placed.server.name
}

/// One expected call: answers it with `status` and `reply` (the request's own body when
/// `reply` is null, as the API server answers a create), and returns its JSON body.
async fn expect(h: &mut Harness, method: &str, uri: &str, status: u16, reply: Value) -> Value {
    let (request, send) =
        h.handle.next_request().await.unwrap_or_else(|| panic!("expected {method} {uri}, got nothing"));
    let got = format!("{} {}", request.method(), request.uri());
    assert_eq!(got, format!("{method} {uri}"), "the next API call");
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
    let reply = if reply.is_null() { body.clone() } else { reply };
    send.send_response(
        Response::builder().status(status).body(Body::from(serde_json::to_vec(&reply).unwrap())).unwrap(),
    );
    body
}

fn status_error(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code})
}

const PODS: &str = "/api/v1/namespaces/zombie-survival/pods";
const SERVERS: &str = "/apis/gaia.dev/v1alpha1/namespaces/zombie-survival/gameservers";
const FLEET: &str = "/apis/gaia.dev/v1alpha1/namespaces/zombie-survival/fleets/zombies";
const MANAGER: &str = "fieldManager=gaia-controller";

/// Runs one reconcile of `fleet` while `script` answers its calls; then checks that no
/// other call was made.
async fn reconciled<F, Fut>(mut h: Harness, fleet: Fleet, script: F) -> (Result<(), gaia_k8s::Error>, Harness)
where
    F: FnOnce(Harness) -> Fut,
    Fut: std::future::Future<Output = Harness>,
{
    let mut run = tokio::spawn(reconcile(Arc::new(fleet), h.ctx.clone()));
    let script = script(h);
    tokio::pin!(script);
    tokio::select! {
        done = &mut script => h = done,
        ended = &mut run => panic!("the reconcile ended before its expected calls: {:?}", ended.unwrap()),
    }
    let result = run.await.unwrap().map(|_| ());
    (result, h)
}

/// After the last scripted call: nothing else reached the API server.
async fn no_more_calls(h: Harness) {
    let Harness { ctx, mut handle, .. } = h;
    drop(ctx);
    if let Some((request, _)) = handle.next_request().await {
        panic!("unexpected call: {} {}", request.method(), request.uri());
    }
}

/// What the API server answers a status patch of the Fleet (its content is not read).
fn fleet_json() -> Value {
    serde_json::to_value(fleet(1, "ghcr.io/gaia-fleet/gaia:0.1.0")).unwrap()
}

fn server_json() -> Value {
    json!({"apiVersion": "gaia.dev/v1alpha1", "kind": "GameServer", "metadata": {"name": "x", "namespace": NS},
           "spec": {"fleet": "zombies", "region": "eu", "templateVersion": "v"}})
}

/// What the API server answers a delete that has begun.
fn deleted() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 200})
}

#[tokio::test]
async fn a_new_fleet_gets_its_pods_game_servers_and_status() {
    let h = harness();
    let fleet = fleet(2, "ghcr.io/gaia-fleet/gaia:0.1.0");
    let v = version(&fleet);
    let (result, h) = reconciled(h, fleet, |mut h| async move {
        for n in 1..=2 {
            let pod = expect(&mut h, "POST", &format!("{PODS}?&{MANAGER}"), 201, Value::Null).await;
            assert_eq!(pod["metadata"]["name"], format!("zombies-eu-{n}"));
            assert_eq!(pod["metadata"]["labels"]["gaia.dev/fleet"], "zombies");
            assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "Fleet");
            assert_eq!(pod["metadata"]["ownerReferences"][0]["uid"], "f1ee7000-0000-4000-8000-000000000001");
            assert_eq!(pod["spec"]["nodeSelector"]["topology.kubernetes.io/region"], "europe-west1");
            assert_eq!(pod["spec"]["restartPolicy"], "Never");
            let server = expect(&mut h, "POST", &format!("{SERVERS}?&{MANAGER}"), 201, Value::Null).await;
            assert_eq!(server["metadata"]["name"], format!("zombies-eu-{n}"));
            assert_eq!(server["spec"], json!({"fleet": "zombies", "region": "eu", "templateVersion": version(&fleet_for_v())}));
        }
        let status = expect(&mut h, "PATCH", &format!("{FLEET}/status?&{MANAGER}"), 200, fleet_json()).await;
        let status = &status["status"];
        assert_eq!((status["replicas"].as_u64(), status["desiredReplicas"].as_u64()), (Some(2), Some(2)));
        assert_eq!(status["readyReplicas"], 0, "Scheduled until the servers call ready");
        assert_eq!(status["labelSelector"], "gaia.dev/fleet=zombies");
        assert_eq!(status["observedGeneration"], 3);
        assert_eq!(status["regions"][0], json!({"name": "eu", "desiredReplicas": 2, "replicas": 2, "readyReplicas": 0, "allocatedReplicas": 0, "worlds": 0}));
        h
    })
    .await;
    result.unwrap();
    let records = h.registry.list(Some("zombies")).await.unwrap();
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r.state == GameServerState::Scheduled && r.labels[TEMPLATE_LABEL] == v));
    no_more_calls(h).await;
}

fn fleet_for_v() -> Fleet {
    fleet(2, "ghcr.io/gaia-fleet/gaia:0.1.0")
}

#[tokio::test]
async fn scaling_up_adds_one_pod_and_leaves_the_rest() {
    let mut h = harness();
    let fleet = fleet(2, "ghcr.io/gaia-fleet/gaia:0.1.0");
    existing(&mut h, &fleet, "zombies-eu-a", &version(&fleet), "Running").await;
    let (result, h) = reconciled(h, fleet, |mut h| async move {
        let pod = expect(&mut h, "POST", &format!("{PODS}?&{MANAGER}"), 201, Value::Null).await;
        assert_eq!(pod["metadata"]["name"], "zombies-eu-1");
        expect(&mut h, "POST", &format!("{SERVERS}?&{MANAGER}"), 201, Value::Null).await;
        let status = expect(&mut h, "PATCH", &format!("{FLEET}/status?&{MANAGER}"), 200, fleet_json()).await;
        assert_eq!(
            (status["status"]["replicas"].as_u64(), status["status"]["readyReplicas"].as_u64()),
            (Some(2), Some(1))
        );
        h
    })
    .await;
    result.unwrap();
    no_more_calls(h).await;
}

#[tokio::test]
async fn scaling_down_stops_idle_servers_and_drains_the_one_with_worlds() {
    let mut h = harness();
    let fleet = fleet(0, "ghcr.io/gaia-fleet/gaia:0.1.0");
    let v = version(&fleet);
    for name in ["zombies-eu-a", "zombies-eu-b", "zombies-eu-c"] {
        existing(&mut h, &fleet, name, &v, "Running").await;
    }
    let host = host_a_world(&h).await;
    let idle: Vec<String> = ["zombies-eu-a", "zombies-eu-b", "zombies-eu-c"]
        .iter()
        .filter(|n| **n != host)
        .map(|n| n.to_string())
        .collect();
    let (result, h) = reconciled(h, fleet, |mut h| {
        let host = host.clone();
        let idle = idle.clone();
        async move {
            // Idle servers: retired in the registry, then Pod and GameServer deleted.
            for name in &idle {
                let body = expect(&mut h, "DELETE", &format!("{PODS}/{name}?"), 200, deleted()).await;
                assert_eq!(body, json!({}), "the pod's own grace period");
                expect(&mut h, "DELETE", &format!("{SERVERS}/{name}?"), 200, deleted()).await;
            }
            // The server hosting a world is drained, not deleted: only its mirror changes.
            let mirrored =
                expect(&mut h, "PATCH", &format!("{SERVERS}/{host}/status?&{MANAGER}"), 200, server_json()).await;
            assert_eq!(mirrored["status"]["state"], "Draining");
            assert_eq!(mirrored["status"]["worlds"], 1);
            let status = expect(&mut h, "PATCH", &format!("{FLEET}/status?&{MANAGER}"), 200, fleet_json()).await;
            assert_eq!(status["status"]["drainingReplicas"], 1);
            assert_eq!(status["status"]["worlds"], 1);
            h
        }
    })
    .await;
    result.unwrap();
    let state = |name: &str| {
        let registry = h.registry.clone();
        let name = name.to_string();
        async move { registry.get(&name).await.unwrap().state }
    };
    assert_eq!(state(&host).await, GameServerState::Draining);
    for name in &idle {
        assert_eq!(state(name).await, GameServerState::Shutdown);
    }
    no_more_calls(h).await;
}

#[tokio::test]
async fn a_failed_pod_is_deleted_and_replaced() {
    let mut h = harness();
    let fleet = fleet(1, "ghcr.io/gaia-fleet/gaia:0.1.0");
    existing(&mut h, &fleet, "zombies-eu-a", &version(&fleet), "Failed").await;
    let (result, h) = reconciled(h, fleet, |mut h| async move {
        expect(&mut h, "DELETE", &format!("{PODS}/zombies-eu-a?"), 200, deleted()).await;
        expect(&mut h, "DELETE", &format!("{SERVERS}/zombies-eu-a?"), 200, deleted()).await;
        let pod = expect(&mut h, "POST", &format!("{PODS}?&{MANAGER}"), 201, Value::Null).await;
        assert_eq!(pod["metadata"]["name"], "zombies-eu-1");
        expect(&mut h, "POST", &format!("{SERVERS}?&{MANAGER}"), 201, Value::Null).await;
        expect(&mut h, "PATCH", &format!("{FLEET}/status?&{MANAGER}"), 200, fleet_json()).await;
        h
    })
    .await;
    result.unwrap();
    assert_eq!(h.registry.get("zombies-eu-a").await.unwrap().state, GameServerState::Unhealthy);
    assert_eq!(h.registry.get("zombies-eu-1").await.unwrap().state, GameServerState::Scheduled);
    no_more_calls(h).await;
}

#[tokio::test]
async fn a_rolling_update_surges_then_drains_the_old_server() {
    let mut h = harness();
    let old = fleet(1, "ghcr.io/gaia-fleet/gaia:0.1.0");
    existing(&mut h, &old, "zombies-eu-a", &version(&old), "Running").await;
    host_a_world(&h).await;
    let new = fleet(1, "ghcr.io/gaia-fleet/gaia:0.2.0");
    let v2 = version(&new);
    assert_ne!(version(&old), v2);

    // First: one new server, surging past the desired count; the old one stays.
    let (result, mut h) = reconciled(h, new.clone(), |mut h| async move {
        let pod = expect(&mut h, "POST", &format!("{PODS}?&{MANAGER}"), 201, Value::Null).await;
        assert_eq!(pod["spec"]["containers"][0]["image"], "ghcr.io/gaia-fleet/gaia:0.2.0");
        assert_eq!(pod["metadata"]["labels"]["gaia.dev/template"], version(&fleet(1, "ghcr.io/gaia-fleet/gaia:0.2.0")));
        expect(&mut h, "POST", &format!("{SERVERS}?&{MANAGER}"), 201, Value::Null).await;
        // The old server took a world since its mirror was written: the mirror follows.
        let mirrored =
            expect(&mut h, "PATCH", &format!("{SERVERS}/zombies-eu-a/status?&{MANAGER}"), 200, server_json()).await;
        assert_eq!(
            (mirrored["status"]["state"].as_str(), mirrored["status"]["worlds"].as_u64()),
            (Some("Allocated"), Some(1))
        );
        let status = expect(&mut h, "PATCH", &format!("{FLEET}/status?&{MANAGER}"), 200, fleet_json()).await;
        assert_eq!(
            (status["status"]["replicas"].as_u64(), status["status"]["outdatedReplicas"].as_u64()),
            (Some(2), Some(1))
        );
        h
    })
    .await;
    result.unwrap();

    // The new server comes up (its Pod runs, it registers and calls ready).
    let register = RegisterRequest {
        fleet: "zombies".into(),
        region: "eu".into(),
        address: "ws://10.0.0.9:7777/ws".into(),
        world_capacity: 4,
        player_capacity: 300,
        labels: BTreeMap::from([(TEMPLATE_LABEL.to_string(), v2.clone())]),
        health: Default::default(),
    };
    h.registry.register("zombies-eu-1", register).await.unwrap();
    h.registry.transition("zombies-eu-1", GameServerState::Ready).await.unwrap();
    let mut pod = gaia_k8s_pod(&new, "zombies-eu-1", &v2);
    pod.status = Some(k8s_openapi::api::core::v1::PodStatus { phase: Some("Running".into()), ..Default::default() });
    h.pods.apply_watcher_event(&watcher::Event::Apply(pod));

    // Then: the old server, which hosts a world, is drained (its world moves to the new one).
    let (result, h) = reconciled(h, new, |mut h| async move {
        let mirrored =
            expect(&mut h, "PATCH", &format!("{SERVERS}/zombies-eu-a/status?&{MANAGER}"), 200, server_json()).await;
        assert_eq!(mirrored["status"]["state"], "Draining");
        expect(&mut h, "PATCH", &format!("{FLEET}/status?&{MANAGER}"), 200, fleet_json()).await;
        h
    })
    .await;
    result.unwrap();
    assert_eq!(h.registry.get("zombies-eu-a").await.unwrap().state, GameServerState::Draining);
    no_more_calls(h).await;
}

#[tokio::test]
async fn a_conflict_creating_a_pod_is_retried_under_a_new_name() {
    let h = harness();
    let fleet = fleet(1, "ghcr.io/gaia-fleet/gaia:0.1.0");
    let (result, h) = reconciled(h, fleet.clone(), |mut h| async move {
        let conflict = status_error(409, "AlreadyExists", "pods \"zombies-eu-1\" already exists");
        expect(&mut h, "POST", &format!("{PODS}?&{MANAGER}"), 409, conflict).await;
        h
    })
    .await;
    let error = result.unwrap_err();
    assert_eq!(error.metric_label(), "conflict", "{error}");
    // The error policy asks for a quick retry, and the record without a Pod is not left live.
    let action = gaia_k8s::controller::error_policy(Arc::new(fleet.clone()), &error, h.ctx.clone());
    assert_eq!(action, kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(1)));
    assert_eq!(h.registry.get("zombies-eu-1").await.unwrap().state, GameServerState::Error);

    let (result, h) = reconciled(h, fleet, |mut h| async move {
        let pod = expect(&mut h, "POST", &format!("{PODS}?&{MANAGER}"), 201, Value::Null).await;
        assert_eq!(pod["metadata"]["name"], "zombies-eu-2");
        expect(&mut h, "POST", &format!("{SERVERS}?&{MANAGER}"), 201, Value::Null).await;
        expect(&mut h, "PATCH", &format!("{FLEET}/status?&{MANAGER}"), 200, fleet_json()).await;
        h
    })
    .await;
    result.unwrap();
    no_more_calls(h).await;
}

#[tokio::test]
async fn an_invalid_fleet_is_reported_in_its_status_and_nothing_is_started() {
    let h = harness();
    let mut fleet = fleet(1, "ghcr.io/gaia-fleet/gaia:0.1.0");
    fleet.spec.world_capacity = 0;
    let (result, h) = reconciled(h, fleet, |mut h| async move {
        let status = expect(&mut h, "PATCH", &format!("{FLEET}/status?&{MANAGER}"), 200, fleet_json()).await;
        assert_eq!(status["status"]["message"], "spec.worldCapacity: must be at least 1");
        h
    })
    .await;
    result.unwrap();
    assert!(h.registry.list(Some("zombies")).await.unwrap().is_empty());
    no_more_calls(h).await;
}

#[tokio::test]
async fn a_missing_crd_at_start_up_is_a_clear_error() {
    let h = harness();
    let client = h.ctx.client.clone();
    let registry: Arc<dyn Registry> = h.registry.clone();
    let settings = Settings { namespace: NS.into(), ..Settings::default() };
    let run = tokio::spawn(gaia_k8s::controller::run(settings, client, registry, Default::default()));
    let mut h = h;
    let not_found = status_error(404, "NotFound", "the server could not find the requested resource");
    expect(&mut h, "GET", "/apis/gaia.dev/v1alpha1/namespaces/zombie-survival/fleets?&limit=1", 404, not_found).await;
    let error = run.await.unwrap().unwrap_err();
    assert_eq!(
        error.to_string(),
        "the fleets.gaia.dev CRD is not installed in this cluster (the API server answered 404 for Fleet); \
         install the CRDs first: kubectl apply -k manifests/crds"
    );
    no_more_calls(h).await;
}
