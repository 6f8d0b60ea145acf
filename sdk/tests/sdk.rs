//! The SDK against the real control-plane API, served on an ephemeral port.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::sync::Arc;

use gaia_allocator::{AppState, Config, Metrics};
use gaia_api::allocation::AllocationRequest;
use gaia_api::gameserver::{GameServerState, RegisterRequest};
use gaia_registry::{MemoryRegistry, Registry};
use gaia_sdk::{Sdk, SdkError};
use tokio_util::sync::CancellationToken;

async fn control_plane() -> (String, Arc<dyn Registry>, CancellationToken) {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new(Default::default()));
    let mut prom = prometheus_client::registry::Registry::default();
    let metrics = Metrics::new(&mut prom);
    let state = AppState::new(&Config::default(), Arc::clone(&registry), metrics, Arc::new(prom));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(gaia_allocator::run(listener, state, shutdown.clone()));
    (url, registry, shutdown)
}

fn register_request() -> RegisterRequest {
    RegisterRequest {
        fleet: "town".into(),
        region: "eu-west".into(),
        address: "ws://127.0.0.1:1/ws".into(),
        world_capacity: 2,
        player_capacity: 60,
        labels: [("map".to_string(), "town".to_string())].into(),
        health: Default::default(),
    }
}

#[tokio::test]
async fn lifecycle_through_the_sdk() {
    let (url, registry, shutdown) = control_plane().await;
    let sdk = Sdk::new(&url, "gs-1").unwrap();
    let record = sdk.register(&register_request()).await.unwrap();
    assert_eq!((record.state, record.address.as_deref()), (GameServerState::Scheduled, Some("ws://127.0.0.1:1/ws")));
    assert_eq!(sdk.ready().await.unwrap().state, GameServerState::Ready);
    sdk.health().await.unwrap();
    assert_eq!(sdk.set_label("mode", "casual").await.unwrap().labels["mode"], "casual");

    let placement = registry.allocate(&AllocationRequest { fleet: "town".into(), ..Default::default() }).await.unwrap();
    sdk.world_started(&placement.world_id).await.unwrap();
    sdk.set_players(3).await.unwrap();
    let record = sdk.get().await.unwrap();
    assert_eq!((record.state, record.worlds, record.players), (GameServerState::Allocated, 1, 3));
    sdk.world_ended(&placement.world_id).await.unwrap();
    assert_eq!(sdk.get().await.unwrap().state, GameServerState::Ready);

    assert_eq!(sdk.reserve().await.unwrap().state, GameServerState::Reserved);
    assert_eq!(sdk.allocate().await.unwrap().state, GameServerState::Allocated);
    assert_eq!(sdk.shutdown().await.unwrap().state, GameServerState::Shutdown);
    shutdown.cancel();
}

#[tokio::test]
async fn refusals_carry_the_code_and_message() {
    let (url, _registry, shutdown) = control_plane().await;
    let sdk = Sdk::new(&url, "gs-1").unwrap();
    match sdk.ready().await.unwrap_err() {
        SdkError::Refused { call, status, code, .. } => {
            assert_eq!((call, status, code.as_str()), ("ready", 404, "not_found"))
        }
        e => panic!("unexpected {e}"),
    }
    sdk.register(&register_request()).await.unwrap();
    sdk.shutdown().await.unwrap();
    let err = sdk.ready().await.unwrap_err();
    assert_eq!(err.status(), Some(409));
    assert!(err.to_string().contains("illegal game-server transition Shutdown -> Ready"), "{err}");
    shutdown.cancel();

    let unreachable = Sdk::new("http://127.0.0.1:1", "gs-1").unwrap();
    assert_eq!(unreachable.health().await.unwrap_err().metric_label(), "transport");
}
