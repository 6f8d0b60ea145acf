//! The matchmaker's side of the allocator: waiting for capacity until a deadline, the
//! batch endpoint, bad requests and the allocation metrics (the OpenAPI description:
//! tests/openapi.rs).
//! Through `router()` with `oneshot`, on tokio's paused clock where time matters.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use gaia_api::allocation::{BatchAllocationResponse, MAX_BATCH};
use gaia_api::gameserver::GameServerState;
use serde_json::{Value, json};

use common::{App, call, error};

#[tokio::test(start_paused = true)]
async fn a_request_waits_until_its_deadline_for_a_server_to_become_ready() {
    let app = App::new();
    app.register("s1", "eu", 1).await;
    let waiting = tokio::spawn({
        let router = app.router.clone();
        async move { call(&router, Method::POST, "/v1/allocations", r#"{"fleet":"town","deadlineMs":2000}"#).await }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(app.metrics().await.contains("gaia_allocator_waiting_requests 1"));
    app.registry.transition("s1", GameServerState::Ready).await.unwrap();
    let (status, v) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["server"], "s1");
    assert!(app.metrics().await.contains("gaia_allocator_waiting_requests 0"));
}

#[tokio::test(start_paused = true)]
async fn a_request_waits_for_a_slot_given_back() {
    let app = App::new();
    app.ready("s1", "eu", 1).await;
    let (_, first) = call(&app.router, Method::POST, "/v1/allocations", r#"{"fleet":"town"}"#).await;
    let world = first["worldId"].as_str().unwrap().to_string();
    let waiting = tokio::spawn({
        let router = app.router.clone();
        async move { call(&router, Method::POST, "/v1/allocations", r#"{"fleet":"town","deadlineMs":5000}"#).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    app.registry.world_ended("s1", &world).await.unwrap();
    let (status, v) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_ne!(v["worldId"], first["worldId"]);
}

#[tokio::test(start_paused = true)]
async fn past_its_deadline_a_request_gets_429_and_leaves_nothing_allocated() {
    let app = App::new();
    app.register("s1", "eu", 4).await; // never Ready
    let started = tokio::time::Instant::now();
    let (status, v) = call(&app.router, Method::POST, "/v1/allocations", r#"{"fleet":"town","deadlineMs":1500}"#).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(started.elapsed(), Duration::from_millis(1500), "answered at the deadline, not before");
    let e = error(&v);
    assert_eq!(e.error.code, "no_capacity");
    assert!(e.error.message.contains("waited 1500 ms"), "{}", e.error.message);
    // Becoming Ready now finds every slot free: the timed-out request holds nothing.
    let server = app.registry.transition("s1", GameServerState::Ready).await.unwrap();
    assert_eq!((server.worlds, server.state), (0, GameServerState::Ready));
    assert!(app.metrics().await.contains("gaia_allocator_waiting_requests 0"));
}

#[tokio::test]
async fn without_a_deadline_no_capacity_is_answered_at_once() {
    let app = App::new();
    let (status, v) = call(&app.router, Method::POST, "/v1/allocations", r#"{"fleet":"town"}"#).await;
    // No server was ever scheduled in "town": unknown fleet.
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    app.ready("s1", "eu", 1).await;
    call(&app.router, Method::POST, "/v1/allocations", r#"{"fleet":"town"}"#).await;
    let (status, v) = call(&app.router, Method::POST, "/v1/allocations", r#"{"fleet":"town","deadlineMs":0}"#).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{v}");
}

#[tokio::test]
async fn a_batch_answers_each_request_in_order() {
    let app = App::new();
    app.ready("s1", "eu", 2).await;
    // us is in the fleet's spec, with no server yet.
    app.registry.declare_fleet("town", &["eu".into(), "us".into()]).await.unwrap();
    let body = json!({"requests": [
        {"fleet":"town","idempotencyKey":"m1"},
        {"fleet":"arena"},
        {"fleet":"town","regions":["us"]},
        {"fleet":"town","selectors":[{"matchExpressions":[{"key":"k","operator":"In"}]}]},
        {"fleet":"town","idempotencyKey":"m1"},
        {"fleet":"town"},
        {"fleet":"town"},
    ]});
    let (status, v) = call(&app.router, Method::POST, "/v1/allocations:batch", &body.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let batch: BatchAllocationResponse = serde_json::from_value(v).unwrap();
    let statuses: Vec<u16> = batch.results.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 404, 429, 400, 200, 200, 429]);
    let world = |i: usize| batch.results[i].allocation.as_ref().unwrap().world_id.clone();
    assert_eq!(world(0), world(4), "the idempotent repeat in the same batch is the same allocation");
    assert_ne!(world(0), world(5));
    let bad = batch.results[3].error.as_ref().unwrap();
    assert_eq!(bad.field.as_deref(), Some("requests[3].selectors[0].matchExpressions[0].values"));
    assert_eq!(batch.results[1].error.as_ref().unwrap().code, "fleet_not_found");
}

/// A request that does not fit the type (an unknown field, a float for an integer, not an
/// object) fails alone, as one that fails validation does; the rest are allocated.
#[tokio::test]
async fn a_batch_item_that_is_not_a_request_fails_alone() {
    let app = App::new();
    app.ready("s1", "eu", 4).await;
    let body = r#"{"requests": [
        {"fleet":"town"},
        {"fleet":"town","regoins":["eu"]},
        {"fleet":"town","deadlineMs":2.0},
        "town",
        {"fleet":"town","selectors":[{"minFreeWorlds":-1}]},
        {"fleet":"town"}
    ]}"#;
    let (status, v) = call(&app.router, Method::POST, "/v1/allocations:batch", body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let batch: BatchAllocationResponse = serde_json::from_value(v).unwrap();
    let statuses: Vec<u16> = batch.results.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 400, 400, 400, 400, 200]);
    let fields: Vec<Option<&str>> =
        batch.results.iter().map(|r| r.error.as_ref().and_then(|e| e.field.as_deref())).collect();
    assert_eq!(
        fields,
        [
            None,
            Some("requests[1].regoins"),
            Some("requests[2].deadlineMs"),
            Some("requests[3]"),
            Some("requests[4].selectors[0].minFreeWorlds"),
            None
        ]
    );
    assert!(batch.results[1].error.as_ref().unwrap().message.contains("regoins"), "{:?}", batch.results[1]);
    assert!(batch.results.iter().filter_map(|r| r.error.as_ref()).all(|e| e.code == "bad_request"));
    assert_eq!(app.registry.get("s1").await.unwrap().worlds, 2);
    // A batch that is not a batch is still refused whole.
    for body in [r#"{"requests": {}}"#, r#"{"requests": [], "extra": 1}"#, "[]"] {
        let (status, v) = call(&app.router, Method::POST, "/v1/allocations:batch", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
    }
}

#[tokio::test]
async fn a_batch_too_long_is_refused_whole() {
    let app = App::new();
    app.ready("s1", "eu", 2).await;
    let requests: Vec<Value> = (0..=MAX_BATCH).map(|_| json!({"fleet":"town"})).collect();
    let body = json!({ "requests": requests }).to_string();
    let (status, v) = call(&app.router, Method::POST, "/v1/allocations:batch", &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(error(&v).error.field.as_deref(), Some("requests"));
    assert_eq!(app.registry.get("s1").await.unwrap().worlds, 0, "nothing of a refused batch is allocated");
}

#[tokio::test]
async fn bad_requests_name_the_problem() {
    let app = App::new();
    app.ready("s1", "eu", 2).await;
    let cases = [
        (
            r#"{"fleet":"town","selectors":[{"minFreePlayers":-1}]}"#,
            StatusCode::BAD_REQUEST,
            "selectors[0].minFreePlayers",
        ),
        (r#"{"fleet":"town","deadlineMs":-1}"#, StatusCode::BAD_REQUEST, "deadlineMs"),
        (r#"{"fleet":"town","deadlineMs":3600000}"#, StatusCode::BAD_REQUEST, "deadlineMs"),
        (
            r#"{"fleet":"town","selectors":[{"matchExpressions":[{"key":"k","operator":"Near","values":["x"]}]}]}"#,
            StatusCode::BAD_REQUEST,
            "selectors[0].matchExpressions[0].operator",
        ),
        (r#"{"fleet":"town","priorities":[{"key":"cpu"}]}"#, StatusCode::BAD_REQUEST, "priorities[0].key"),
        (r#"{"fleet":"town","strategy":"Random"}"#, StatusCode::BAD_REQUEST, "strategy"),
        (r#"{"fleet":"town","regions":"eu"}"#, StatusCode::BAD_REQUEST, "regions"),
    ];
    for (body, want, field) in cases {
        let (status, v) = call(&app.router, Method::POST, "/v1/allocations", body).await;
        assert_eq!(status, want, "{body}: {v}");
        assert_eq!(error(&v).error.field.as_deref(), Some(field), "{body}: {v}");
    }
    let huge = format!(r#"{{"fleet":"town","playerId":"{}"}}"#, "p".repeat(70 * 1024));
    let (status, v) = call(&app.router, Method::POST, "/v1/allocations", &huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_eq!(error(&v).error.code, "too_large");
    assert_eq!(app.registry.get("s1").await.unwrap().worlds, 0);
}

#[tokio::test]
async fn allocations_are_counted_by_result_and_region() {
    let app = App::new();
    app.ready("s1", "eu", 1).await;
    app.registry.declare_fleet("town", &["eu".into(), "us".into()]).await.unwrap();
    call(&app.router, Method::POST, "/v1/allocations", r#"{"fleet":"town"}"#).await;
    call(&app.router, Method::POST, "/v1/allocations", r#"{"fleet":"town","regions":["us"]}"#).await;
    let text = app.metrics().await;
    assert!(text.contains(r#"gaia_allocator_allocations_total{result="ok",region="eu"} 1"#), "{text}");
    assert!(text.contains(r#"gaia_allocator_allocations_total{result="no_capacity",region="us"} 1"#), "{text}");
    assert!(text.contains(r#"gaia_allocator_allocation_duration_seconds_count{result="ok"} 1"#), "{text}");
}

#[tokio::test]
async fn the_fleet_gauges_follow_the_registry_at_each_scrape() {
    let app = App::new();
    app.ready("s1", "eu", 2).await;
    app.ready("s2", "eu", 2).await;
    app.register("s3", "us", 3).await;
    call(&app.router, Method::POST, "/v1/allocations", r#"{"fleet":"town","regions":["eu"]}"#).await;
    let text = app.metrics().await;
    // s1 or s2 took the world: one Allocated, one Ready, each with 2 slots.
    for line in [
        r#"gaia_fleet_servers{fleet="town",region="eu",state="Allocated"} 1"#,
        r#"gaia_fleet_servers{fleet="town",region="eu",state="Ready"} 1"#,
        r#"gaia_fleet_servers{fleet="town",region="eu",state="Unhealthy"} 0"#,
        r#"gaia_fleet_servers{fleet="town",region="us",state="Scheduled"} 1"#,
        r#"gaia_fleet_world_slots{fleet="town",region="eu",state="Allocated"} 2"#,
        r#"gaia_fleet_worlds{fleet="town",region="eu",state="Allocated"} 1"#,
        r#"gaia_fleet_worlds{fleet="town",region="eu",state="Ready"} 0"#,
        r#"gaia_fleet_world_slots{fleet="town",region="us",state="Scheduled"} 3"#,
        r#"gaia_fleet_player_slots{fleet="town",region="eu",state="Ready"} 100"#,
        r#"gaia_fleet_players{fleet="town",region="eu",state="Allocated"} 0"#,
    ] {
        assert!(text.contains(line), "{line} not in\n{text}");
    }
    // A server that goes is gone from the next scrape.
    app.registry.remove("s3").await.unwrap();
    let text = app.metrics().await;
    assert!(!text.contains(r#"region="us""#), "{text}");
    assert!(text.contains(r#"gaia_fleet_servers{fleet="town",region="eu",state="Ready"} 1"#), "{text}");
}

#[tokio::test(start_paused = true)]
async fn the_sweeper_counts_expired_leases() {
    let app = App::new();
    app.ready("s1", "eu", 1).await;
    call(&app.router, Method::POST, "/v1/allocations", r#"{"fleet":"town"}"#).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let sweeper = tokio::spawn(gaia_allocator::run_sweeper(app.state.clone(), Duration::from_secs(1), stop.clone()));
    // Health pings keep the server alive meanwhile; the lease (30 s) runs out.
    for _ in 0..35 {
        app.registry.health("s1").await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.cancel();
    sweeper.await.unwrap();
    assert!(app.metrics().await.contains("gaia_allocator_lease_expiries_total 1"));
    assert_eq!(app.registry.get("s1").await.unwrap().worlds, 0);
}

mod arbitrary_bodies {
    use proptest::prelude::*;

    use super::*;

    /// JSON-ish bodies built from the request's own vocabulary, so many get past the
    /// parser and reach validation and the registry.
    fn body() -> impl Strategy<Value = String> {
        let atom = prop_oneof![
            Just("\"town\"".to_string()),
            Just("\"eu\"".to_string()),
            Just("-1".to_string()),
            Just("0".to_string()),
            Just("4294967296".to_string()),
            Just("1e400".to_string()),
            Just("null".to_string()),
            Just("[]".to_string()),
            Just("{}".to_string()),
            "\\PC{0,8}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        ];
        let key = prop_oneof![
            Just("fleet"),
            Just("regions"),
            Just("selectors"),
            Just("matchExpressions"),
            Just("operator"),
            Just("values"),
            Just("minFreeWorlds"),
            Just("priorities"),
            Just("deadlineMs"),
            Just("worldId"),
            Just("idempotencyKey"),
        ];
        let value = atom.prop_recursive(3, 24, 4, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec((key.clone(), inner), 0..4).prop_map(|kv| {
                    let fields: Vec<String> = kv.into_iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                    format!("{{{}}}", fields.join(","))
                }),
            ]
        });
        prop_oneof![value, "\\PC{0,64}"]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        /// Whatever arrives, the answer is a 2xx or a 4xx with an error body, never a
        /// panic or a 500.
        #[test]
        fn any_body_gets_an_answer(body in body()) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let app = App::new();
                app.ready("s1", "eu", 2).await;
                for path in ["/v1/allocations", "/v1/allocations:batch"] {
                    let (status, v) = call(&app.router, Method::POST, path, &body).await;
                    assert!(status.is_success() || status.is_client_error(), "{path} {body}: {status} {v}");
                    if status.is_client_error() {
                        assert!(!error(&v).error.message.is_empty());
                    }
                }
            });
        }
    }
}
