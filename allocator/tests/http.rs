//! The control-plane API through `router()` with `oneshot`: no sockets needed.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use futures_util::StreamExt;
use gaia_api::allocation::{AllocationResponse, BatchResult, MoveResponse};
use gaia_api::gameserver::{GameServer, GameServerState};
use gaia_api::token::{TokenKey, unix_ms};
use gaia_registry::Registry;
use serde_json::json;
use tower::ServiceExt;

use common::{App, SECRET, call, error, ready_server};

fn app() -> (axum::Router, Arc<dyn Registry>) {
    let app = App::new();
    (app.router, app.registry)
}

#[tokio::test]
async fn allocation_returns_address_and_a_token_the_server_accepts() {
    let (app, _) = app();
    ready_server(&app, "s1", "eu-west", 2).await;
    ready_server(&app, "s2", "us-east", 2).await;
    let (status, v) =
        call(&app, Method::POST, "/v1/allocations", r#"{"fleet":"town","regions":["us-east","eu-west"]}"#).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let resp: AllocationResponse = serde_json::from_value(v).unwrap();
    assert_eq!((resp.server.as_str(), resp.region.as_str()), ("s2", "us-east"));
    assert_eq!(resp.address, "ws://127.0.0.1:9/s2");
    let lease = resp.lease.unwrap();
    let claims = TokenKey::new(SECRET).verify(&resp.join_token, "s2", unix_ms(std::time::SystemTime::now())).unwrap();
    assert_eq!(
        (claims.world_id, claims.player_id, claims.expires_at_ms),
        (resp.world_id.clone(), resp.player_id, lease.expires_at_ms)
    );
    assert!(resp.epoch > 0);
    assert_eq!(claims.epoch, resp.epoch, "the token carries the placement's epoch");

    // Joining the running world: the same epoch, in the answer and in the token.
    let body = json!({"fleet":"town","worldId":resp.world_id}).to_string();
    let (status, v) = call(&app, Method::POST, "/v1/allocations", &body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let joined: AllocationResponse = serde_json::from_value(v).unwrap();
    let claims = TokenKey::new(SECRET).verify(&joined.join_token, "s2", unix_ms(std::time::SystemTime::now())).unwrap();
    assert_eq!((joined.epoch, claims.epoch), (resp.epoch, resp.epoch));
}

#[tokio::test]
async fn no_capacity_is_429_and_unknown_fleet_404() {
    let (app, _) = app();
    ready_server(&app, "s1", "eu-west", 1).await;
    let (status, _) = call(&app, Method::POST, "/v1/allocations", r#"{"fleet":"town"}"#).await;
    assert_eq!(status, StatusCode::OK);
    let (status, v) = call(&app, Method::POST, "/v1/allocations", r#"{"fleet":"town"}"#).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error(&v).error.code, "no_capacity");
    let (status, v) = call(&app, Method::POST, "/v1/allocations", r#"{"fleet":"arena"}"#).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error(&v).error.code, "fleet_not_found");
}

/// A region the fleet does not have is a bad request at once, deadline or not: no
/// capacity can ever appear there.
#[tokio::test]
async fn an_unknown_region_is_400_naming_it_even_with_a_deadline() {
    let (app, _) = app();
    ready_server(&app, "s1", "eu-west", 1).await;
    let started = std::time::Instant::now();
    for (path, body, field) in [
        ("/v1/allocations", r#"{"fleet":"town","regions":["eu-west","mars"],"deadlineMs":20000}"#, "regions[1]"),
        (
            "/v1/allocations:batch",
            r#"{"requests":[{"fleet":"town","regions":["eu-west","mars"],"deadlineMs":20000}]}"#,
            "requests[0].regions[1]",
        ),
    ] {
        let (status, v) = call(&app, Method::POST, path, body).await;
        let e = if path.ends_with("batch") {
            assert_eq!(status, StatusCode::OK, "{v}");
            let result: BatchResult = serde_json::from_value(v["results"][0].clone()).unwrap();
            assert_eq!(result.status, 400, "{v}");
            result.error.unwrap()
        } else {
            assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
            error(&v).error
        };
        assert_eq!((e.code.as_str(), e.field.as_deref()), ("bad_request", Some(field)), "{v}");
        assert!(e.message.contains("\"mars\""), "{v}");
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "the request waited for its deadline");
}

#[tokio::test]
async fn bad_requests_are_400_naming_the_field() {
    let (app, _) = app();
    let cases = [
        (r#"{"fleet":"town""#, None),
        ("not json", None),
        ("", None),
        (r#"{"fleet":"town","regions":"eu"}"#, Some("regions")),
        (r#"{"fleet":"town","strategy":"Sideways"}"#, Some("strategy")),
        (r#"{"fleet":"town","selectors":[{"matchLabels":{"a":1}}]}"#, Some("selectors[0].matchLabels.a")),
        (r#"{"fleet":"town","regoins":["eu"]}"#, None),
        (r#"{"fleet":"town","regions":["eu","eu"]}"#, Some("regions[1]")),
        (r#"{"fleet":"Town!"}"#, Some("fleet")),
        // The system's labels: the controller rolls servers by gaia.dev/template.
        (r#"{"fleet":"town","metadata":{"labels":{"gaia.dev/template":"x"}}}"#, Some("metadata.labels")),
        (r#"{"fleet":"town","metadata":{"annotations":{"agones.dev/x":"y"}}}"#, Some("metadata.annotations")),
    ];
    for (body, field) in cases {
        let (status, v) = call(&app, Method::POST, "/v1/allocations", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
        let e = error(&v).error;
        assert_eq!(e.code, "bad_request");
        assert!(!e.message.is_empty());
        if field.is_some() {
            assert_eq!(e.field.as_deref(), field, "{body}: {v}");
        }
    }
    // Unknown fields are named in the message.
    let (_, v) = call(&app, Method::POST, "/v1/allocations", r#"{"fleet":"town","regoins":["eu"]}"#).await;
    assert!(error(&v).error.message.contains("regoins"), "{v}");
    // The process is still serving.
    let (status, _) = call(&app, Method::GET, "/livez", "").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn sdk_lifecycle_through_http() {
    let (app, registry) = app();
    ready_server(&app, "s1", "eu-west", 2).await;
    let (_, v) = call(&app, Method::POST, "/v1/allocations", r#"{"fleet":"town"}"#).await;
    let world = v["worldId"].as_str().unwrap().to_string();
    let epoch = v["epoch"].as_u64().unwrap();
    let started = format!("/v1/gameservers/s1/worlds/{world}/started");
    let (status, v) = call(&app, Method::POST, &started, "").await;
    assert_eq!((status, error(&v).error.code.as_str()), (StatusCode::BAD_REQUEST, "bad_request"), "epoch required");
    let (status, _) = call(&app, Method::POST, &started, &json!({ "epoch": epoch }).to_string()).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call(&app, Method::PUT, "/v1/gameservers/s1/players", r#"{"players":3}"#).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, v) = call(&app, Method::PUT, "/v1/gameservers/s1/labels", r#"{"key":"map","value":"town"}"#).await;
    assert_eq!((status, v["labels"]["map"].as_str()), (StatusCode::OK, Some("town")));
    for key in ["gaia.dev/template", "agones.dev/sdk-x", ""] {
        let body = json!({ "key": key, "value": "v" }).to_string();
        let (status, v) = call(&app, Method::PUT, "/v1/gameservers/s1/labels", &body).await;
        assert_eq!((status, error(&v).error.field.as_deref()), (StatusCode::BAD_REQUEST, Some("key")), "{key}: {v}");
        assert!(error(&v).error.message.contains(key), "{v}");
    }
    let (status, _) = call(&app, Method::POST, "/v1/gameservers/s1/health", "").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let s1: GameServer = registry.get("s1").await.unwrap();
    assert_eq!((s1.state, s1.worlds, s1.players), (GameServerState::Allocated, 1, 3));

    let (status, _) = call(&app, Method::POST, &format!("/v1/gameservers/s1/worlds/{world}/ended"), "").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, v) = call(&app, Method::GET, "/v1/gameservers/s1", "").await;
    assert_eq!((status, v["state"].as_str(), v["worlds"].as_u64()), (StatusCode::OK, Some("Ready"), Some(0)));

    let (status, v) = call(&app, Method::POST, "/v1/gameservers/s1/shutdown", "").await;
    assert_eq!((status, v["state"].as_str()), (StatusCode::OK, Some("Shutdown")));
    // Illegal transition: Shutdown is final.
    let (status, v) = call(&app, Method::POST, "/v1/gameservers/s1/ready", "").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error(&v).error.code, "illegal_transition");
    let (status, _) = call(&app, Method::POST, "/v1/gameservers/nobody/ready", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, v) = call(&app, Method::GET, "/v1/gameservers?fleet=town", "").await;
    assert_eq!((status, v.as_array().map(Vec::len)), (StatusCode::OK, Some(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_allocations_fill_every_slot_exactly_once() {
    let (app, _) = app();
    for i in 0..60 {
        let region = if i % 2 == 0 { "eu-west" } else { "us-east" };
        ready_server(&app, &format!("s{i}"), region, 10).await;
    }
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let app = app.clone();
            let regions = if i % 2 == 0 { r#"["eu-west","us-east"]"# } else { r#"["us-east","eu-west"]"# };
            let strategy = if i % 4 < 2 { "Packed" } else { "Distributed" };
            let body = format!(r#"{{"fleet":"town","regions":{regions},"strategy":"{strategy}"}}"#);
            tokio::spawn(async move { call(&app, Method::POST, "/v1/allocations", &body).await })
        })
        .collect();

    let mut worlds = std::collections::HashSet::new();
    let mut rejected = 0;
    for task in tasks {
        let (status, v) = task.await.unwrap();
        match status {
            StatusCode::OK => {
                let resp: AllocationResponse = serde_json::from_value(v).unwrap();
                assert!(worlds.insert(resp.world_id.clone()), "world {} handed out twice", resp.world_id);
            }
            StatusCode::TOO_MANY_REQUESTS => {
                let e = error(&v).error;
                assert_eq!(e.code, "no_capacity", "{v}");
                assert!(!e.message.is_empty(), "{v}");
                rejected += 1;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!((worlds.len(), rejected), (600, 400));

    let (status, v) = call(&app, Method::GET, "/v1/gameservers?fleet=town", "").await;
    assert_eq!(status, StatusCode::OK);
    let servers: Vec<GameServer> = serde_json::from_value(v).unwrap();
    assert_eq!(servers.len(), 60);
    for s in &servers {
        assert_eq!((s.name.as_str(), s.worlds, s.state), (s.name.as_str(), 10, GameServerState::Allocated));
    }
}

#[tokio::test]
async fn drain_then_move_a_world_with_a_new_epoch() {
    let (app, _) = app();
    ready_server(&app, "s1", "eu-west", 1).await;
    let (_, v) = call(&app, Method::POST, "/v1/allocations", r#"{"fleet":"town","worldId":"w1"}"#).await;
    let placed: AllocationResponse = serde_json::from_value(v).unwrap();
    assert_eq!(placed.server, "s1");
    let started = json!({ "epoch": placed.epoch }).to_string();
    let (status, _) = call(&app, Method::POST, "/v1/gameservers/s1/worlds/w1/started", &started).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let (status, v) = call(&app, Method::POST, "/v1/gameservers/s1/drain", "").await;
    assert_eq!((status, v["state"].as_str()), (StatusCode::OK, Some("Draining")));
    // The world is about to move: matchmakers get 429 and retry.
    let (status, v) = call(&app, Method::POST, "/v1/allocations", r#"{"fleet":"town","worldId":"w1"}"#).await;
    assert_eq!((status, error(&v).error.code.as_str()), (StatusCode::TOO_MANY_REQUESTS, "no_capacity"));
    // Nowhere to go yet.
    let (status, v) = call(&app, Method::POST, "/v1/gameservers/s1/worlds/w1/move", "").await;
    assert_eq!((status, error(&v).error.code.as_str()), (StatusCode::TOO_MANY_REQUESTS, "no_capacity"));

    ready_server(&app, "s2", "us-east", 1).await;
    let (status, v) = call(&app, Method::POST, "/v1/gameservers/s1/worlds/w1/move", "").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v.as_object().map(|o| o.len()), Some(5), "worldId, server, region, address, epoch: {v}");
    let moved: MoveResponse = serde_json::from_value(v).unwrap();
    assert_eq!(
        (moved.world_id.as_str(), moved.server.as_str(), moved.region.as_str(), moved.address.as_str()),
        ("w1", "s2", "us-east", "ws://127.0.0.1:9/s2")
    );
    assert!(moved.epoch > placed.epoch);

    // Joins now land on s2 with the new epoch; the old server's start is refused.
    let (_, v) = call(&app, Method::POST, "/v1/allocations", r#"{"fleet":"town","worldId":"w1"}"#).await;
    let joined: AllocationResponse = serde_json::from_value(v).unwrap();
    assert_eq!((joined.server.as_str(), joined.epoch), ("s2", moved.epoch));
    let (status, v) = call(&app, Method::POST, "/v1/gameservers/s1/worlds/w1/started", &started).await;
    assert_eq!((status, error(&v).error.code.as_str()), (StatusCode::CONFLICT, "conflict"));
    let (status, v) = call(&app, Method::POST, "/v1/gameservers/s1/worlds/w1/move", "").await;
    assert_eq!((status, error(&v).error.code.as_str()), (StatusCode::NOT_FOUND, "world_not_found"));
    let (status, _) = call(&app, Method::POST, "/v1/gameservers/nobody/worlds/w1/move", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, v) = call(&app, Method::GET, "/v1/gameservers/s1", "").await;
    assert_eq!((v["state"].as_str(), v["worlds"].as_u64()), (Some("Draining"), Some(0)));
}

/// Reads newline-delimited JSON records off a response body.
struct Lines {
    body: axum::body::BodyDataStream,
    buf: Vec<u8>,
}

impl Lines {
    /// The next record, or `None` when the stream ended.
    async fn next(&mut self) -> Option<GameServer> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return Some(serde_json::from_slice(&line).unwrap());
            }
            let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), self.body.next())
                .await
                .expect("a record within 5 s")?;
            self.buf.extend_from_slice(&chunk.unwrap());
        }
    }
}

#[tokio::test]
async fn watch_streams_the_record_on_each_state_change() {
    let (app, registry) = app();
    ready_server(&app, "s1", "eu-west", 1).await;
    let req = Request::builder().uri("/v1/gameservers/s1/watch").body(Body::empty()).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let mut lines = Lines { body: resp.into_body().into_data_stream(), buf: Vec::new() };
    assert_eq!(lines.next().await.unwrap().state, GameServerState::Ready, "the current record first");

    // Changes that are not state changes of this server send nothing.
    ready_server(&app, "s2", "eu-west", 1).await;
    registry.set_players("s1", 4).await.unwrap();
    let (status, _) = call(&app, Method::POST, "/v1/gameservers/s1/drain", "").await;
    assert_eq!(status, StatusCode::OK);
    let draining = lines.next().await.unwrap();
    assert_eq!((draining.name.as_str(), draining.state, draining.players), ("s1", GameServerState::Draining, 4));

    // A terminal record is the last one.
    call(&app, Method::POST, "/v1/gameservers/s1/shutdown", "").await;
    assert_eq!(lines.next().await.unwrap().state, GameServerState::Shutdown);
    assert!(lines.next().await.is_none(), "the stream ends after a terminal record");

    let req = Request::builder().uri("/v1/gameservers/nobody/watch").body(Body::empty()).unwrap();
    assert_eq!(app.clone().oneshot(req).await.unwrap().status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_autoscaler_explains_itself_per_fleet() {
    use gaia_api::autoscaler::{BufferStatus, FleetAutoscalerStatus, PolicyInputs, RegionAutoscalerStatus};
    let (app, _) = app();
    let (status, v) = call(&app, Method::GET, "/v1/fleets/town/autoscaler", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(error(&v).error.code, "autoscaler_not_found");

    let explained = FleetAutoscalerStatus {
        fleet: "town".into(),
        updated_at_ms: 42,
        regions: vec![RegionAutoscalerStatus {
            region: "eu".into(),
            policy: "Buffer".into(),
            desired_replicas: 3,
            current_replicas: 2,
            buffer: BufferStatus { unit: Default::default(), target: 10, free: 4 },
            inputs: PolicyInputs {
                used_worlds: 16,
                world_capacity: 10,
                busy_servers: 2,
                waiting_requests: 0,
                allocation_rate: 0.5,
                server_start_seconds: 3.0,
                start_measured: true,
                webhook: None,
            },
            decisions: Vec::new(),
        }],
    };
    let (_tx, rx) = tokio::sync::watch::channel([("town".to_string(), explained.clone())].into_iter().collect());
    let app = common::App::new();
    let router = gaia_allocator::router(app.state.clone().with_autoscaler_status(rx));
    let (status, v) = call(&router, Method::GET, "/v1/fleets/town/autoscaler", "").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(serde_json::from_value::<FleetAutoscalerStatus>(v.clone()).unwrap(), explained);
    assert_eq!(v["regions"][0]["inputs"]["usedWorlds"], 16, "camelCase on the wire: {v}");
    let (status, v) = call(&router, Method::GET, "/v1/fleets/arena/autoscaler", "").await;
    assert_eq!(
        (status, error(&v).error.message.as_str()),
        (StatusCode::NOT_FOUND, "no autoscaler manages fleet \"arena\"")
    );
    let (status, v) = call(&router, Method::GET, "/v1/fleets/Bad_Name/autoscaler", "").await;
    assert_eq!((status, error(&v).error.field.as_deref()), (StatusCode::BAD_REQUEST, Some("fleet")));
}
