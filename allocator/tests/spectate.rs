//! `POST /v1/fleets/{fleet}/worlds/{worldId}/spectate` through `router()`: a spectate token
//! for the server a world is placed on, which allocates nothing, and the errors.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::time::SystemTime;

use axum::http::{Method, StatusCode};
use gaia_allocator::Config;
use gaia_api::allocation::{AllocationResponse, SpectateResponse};
use gaia_api::token::{TokenError, TokenKey, unix_ms};

use common::{App, SECRET, call, error};

#[tokio::test]
async fn a_placed_world_can_be_watched_and_nothing_is_allocated() {
    let app = App::new();
    app.ready("s1", "eu-west", 2).await;
    app.ready("s2", "us-east", 2).await;
    let (status, v) =
        call(&app.router, Method::POST, "/v1/allocations", r#"{"fleet":"town","regions":["us-east"]}"#).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let placed: AllocationResponse = serde_json::from_value(v).unwrap();
    let before = app.registry.get("s2").await.unwrap();

    let path = format!("/v1/fleets/town/worlds/{}/spectate", placed.world_id);
    let (status, v) = call(&app.router, Method::POST, &path, "").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let seat: SpectateResponse = serde_json::from_value(v).unwrap();
    assert_eq!(
        (seat.world_id.as_str(), seat.fleet.as_str(), seat.server.as_str(), seat.region.as_str()),
        (placed.world_id.as_str(), "town", "s2", "us-east")
    );
    assert_eq!(seat.address, placed.address);
    let key = TokenKey::new(SECRET);
    let now = unix_ms(SystemTime::now());
    let claims = key.verify_spectate(&seat.token, "s2", now).unwrap();
    assert_eq!((claims.world_id, claims.expires_at_ms), (placed.world_id.clone(), seat.expires_at_ms));
    assert_eq!(key.verify(&seat.token, "s2", now), Err(TokenError::BadSignature), "not a join token");
    // No slot, no lease, no player.
    let after = app.registry.get("s2").await.unwrap();
    assert_eq!((after.worlds, after.players), (before.worlds, before.players));
    assert_eq!(app.registry.worlds(Some("town")).await.unwrap().len(), 1);

    let metrics = app.metrics().await;
    assert!(metrics.contains(r#"gaia_allocator_spectates_total{result="ok"} 1"#), "{metrics}");
}

#[tokio::test]
async fn worlds_not_placed_are_404_and_bad_names_400() {
    let app = App::new();
    app.ready("s1", "eu-west", 2).await;
    for path in ["/v1/fleets/town/worlds/w-none/spectate", "/v1/fleets/other/worlds/w-none/spectate"] {
        let (status, v) = call(&app.router, Method::POST, path, "").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {v}");
        assert_eq!(error(&v).error.code, "world_not_running", "{v}");
    }
    let (status, v) = call(&app.router, Method::POST, "/v1/fleets/town/worlds/a%20b/spectate", "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(error(&v).error.field.as_deref(), Some("worldId"), "{v}");
    let (status, v) = call(&app.router, Method::POST, "/v1/fleets/Town/worlds/w/spectate", "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(error(&v).error.field.as_deref(), Some("fleet"), "{v}");
    let metrics = app.metrics().await;
    assert!(metrics.contains(r#"gaia_allocator_spectates_total{result="world_not_running"} 2"#), "{metrics}");
}

#[tokio::test]
async fn spectating_takes_a_matchmaker_token() {
    let config = Config { join_secret: SECRET.into(), matchmaker_tokens: vec!["mm".into()], ..Default::default() };
    let app = App::with_config(config);
    let (status, v) = call(&app.router, Method::POST, "/v1/fleets/town/worlds/w/spectate", "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
}
