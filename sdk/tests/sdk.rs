//! The SDK against the real control-plane API, served on an ephemeral port.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::sync::Arc;
use std::time::Duration;

use gaia_allocator::{AppState, Config, Metrics};
use gaia_api::allocation::AllocationRequest;
use gaia_api::gameserver::{GameServer, GameServerState, RegisterRequest};
use gaia_registry::{MemoryRegistry, Registry};
use gaia_sdk::{Sdk, SdkError};
use tokio_util::sync::CancellationToken;

type Api = tokio::task::JoinHandle<std::io::Result<()>>;

async fn control_plane() -> (String, Arc<dyn Registry>, CancellationToken, Api) {
    control_plane_with(&Config::default(), None).await
}

const SDK_SECRET: &str = "sdk-secret";

fn sdk_token(server: &str) -> String {
    gaia_api::token::TokenKey::new(SDK_SECRET).sdk_token(server)
}

/// A control plane that checks SDK tokens; with `tls`, on HTTPS.
async fn control_plane_with(
    config: &Config,
    tls: Option<gaia_allocator::TlsConfig>,
) -> (String, Arc<dyn Registry>, CancellationToken, Api) {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new(Default::default()));
    let mut prom = prometheus_client::registry::Registry::default();
    let metrics = Metrics::new(&mut prom);
    let mut state = AppState::new(config, Arc::clone(&registry), metrics, Arc::new(prom));
    let scheme = if tls.is_some() { "https" } else { "http" };
    if let Some(tls) = tls {
        state = state.with_tls(tls);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("{scheme}://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let api = tokio::spawn(gaia_allocator::run(listener, state, shutdown.clone()));
    (url, registry, shutdown, api)
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
    let (url, registry, shutdown, _) = control_plane().await;
    let sdk = Sdk::new(&url, "gs-1").unwrap();
    let record = sdk.register(&register_request()).await.unwrap();
    assert_eq!((record.state, record.address.as_deref()), (GameServerState::Scheduled, Some("ws://127.0.0.1:1/ws")));
    assert_eq!(sdk.ready().await.unwrap().state, GameServerState::Ready);
    sdk.health().await.unwrap();
    assert_eq!(sdk.set_label("mode", "casual").await.unwrap().labels["mode"], "casual");

    let placement = registry.allocate(&AllocationRequest { fleet: "town".into(), ..Default::default() }).await.unwrap();
    sdk.world_started(&placement.world_id, placement.epoch).await.unwrap();
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
    let (url, _registry, shutdown, _) = control_plane().await;
    let sdk = Sdk::new(&url, "gs-1").unwrap();
    match sdk.ready().await.unwrap_err() {
        SdkError::Refused { call, status, code, .. } => {
            assert_eq!((call, status, code.as_str()), ("ready", 404, "not_found"))
        }
        e => panic!("unexpected {e}"),
    }
    sdk.register(&register_request()).await.unwrap();
    // The system's label domains are not the game server's to set.
    let err = sdk.set_label("gaia.dev/template", "mine").await.unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    assert!(err.to_string().contains("gaia.dev/template") && err.to_string().contains("reserved"), "{err}");
    sdk.shutdown().await.unwrap();
    let err = sdk.ready().await.unwrap_err();
    assert_eq!(err.status(), Some(409));
    assert!(err.to_string().contains("illegal game-server transition Shutdown -> Ready"), "{err}");
    shutdown.cancel();

    let unreachable = Sdk::new("http://127.0.0.1:1", "gs-1").unwrap();
    assert_eq!(unreachable.health().await.unwrap_err().metric_label(), "transport");
}

#[tokio::test]
async fn watch_sees_the_drain_and_the_world_moves() {
    let (url, registry, shutdown, api) = control_plane().await;
    let sdk = Sdk::new(&url, "gs-1").unwrap();
    // Watching before the record exists: 404s, retried with backoff until it does.
    let stop_watch = CancellationToken::new();
    let mut watch = sdk.spawn_watch(stop_watch.clone());
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(watch.borrow().is_none());
    sdk.register(&register_request()).await.unwrap();
    sdk.ready().await.unwrap();
    let other = Sdk::new(&url, "gs-2").unwrap();
    other.register(&RegisterRequest { address: "ws://127.0.0.1:2/ws".into(), ..register_request() }).await.unwrap();
    other.ready().await.unwrap();

    let wait = Duration::from_secs(5);
    let in_state = |state| move |r: &Option<GameServer>| r.as_ref().is_some_and(|r| r.state == state);
    tokio::time::timeout(wait, watch.wait_for(in_state(GameServerState::Ready))).await.unwrap().unwrap();

    let req = AllocationRequest { fleet: "town".into(), world_id: Some("w1".into()), ..Default::default() };
    let placed = registry.allocate(&req).await.unwrap();
    assert_eq!(placed.server.name, "gs-1");
    sdk.world_started("w1", placed.epoch).await.unwrap();

    assert_eq!(sdk.drain().await.unwrap().state, GameServerState::Draining);
    tokio::time::timeout(Duration::from_secs(1), watch.wait_for(in_state(GameServerState::Draining)))
        .await
        .unwrap()
        .unwrap();

    let moved = sdk.move_world("w1").await.unwrap();
    assert_eq!((moved.server.as_str(), moved.address.as_str()), ("gs-2", "ws://127.0.0.1:2/ws"));
    assert!(moved.epoch > placed.epoch);
    other.world_started("w1", moved.epoch).await.unwrap();
    let err = sdk.world_started("w1", placed.epoch).await.unwrap_err();
    assert_eq!(err.status(), Some(409), "{err}");
    let err = sdk.move_world("w1").await.unwrap_err();
    assert!(matches!(&err, SdkError::Refused { status: 404, code, .. } if code == "world_not_found"), "{err}");

    // An open watch does not hold up the control plane's graceful shutdown.
    shutdown.cancel();
    tokio::time::timeout(wait, api).await.unwrap().unwrap().unwrap();
    stop_watch.cancel();
}

fn secured() -> Config {
    Config { sdk_secret: Some(SDK_SECRET.into()), ..Default::default() }
}

#[tokio::test]
async fn every_call_carries_the_server_s_own_token() {
    let (url, registry, shutdown, api) = control_plane_with(&secured(), None).await;
    let anonymous = Sdk::new(&url, "gs-1").unwrap();
    let err = anonymous.register(&register_request()).await.unwrap_err();
    assert!(matches!(&err, SdkError::Refused { status: 401, code, .. } if code == "unauthorized"), "{err}");
    let impostor = Sdk::new(&url, "gs-1").unwrap().with_token(Some(sdk_token("gs-2"))).unwrap();
    let err = impostor.register(&register_request()).await.unwrap_err();
    assert!(matches!(&err, SdkError::Refused { status: 403, code, .. } if code == "forbidden"), "{err}");

    let sdk = Sdk::new(&url, "gs-1").unwrap().with_token(Some(sdk_token("gs-1"))).unwrap();
    assert!(!format!("{sdk:?}").contains(&sdk_token("gs-1")), "Debug does not print the token");
    sdk.register(&register_request()).await.unwrap();
    sdk.ready().await.unwrap();
    sdk.health().await.unwrap();
    sdk.set_players(2).await.unwrap();
    assert_eq!(sdk.get().await.unwrap().players, 2);
    let placement = registry.allocate(&AllocationRequest { fleet: "town".into(), ..Default::default() }).await.unwrap();
    sdk.world_started(&placement.world_id, placement.epoch).await.unwrap();
    sdk.world_ended(&placement.world_id).await.unwrap();

    // The watch stream too: without the token it never gets a record.
    let stop = CancellationToken::new();
    let anonymous_watch = anonymous.spawn_watch(stop.clone());
    let mut watch = sdk.spawn_watch(stop.clone());
    let wait = Duration::from_secs(5);
    tokio::time::timeout(wait, watch.wait_for(|r| r.as_ref().is_some_and(|r| r.state == GameServerState::Ready)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sdk.drain().await.unwrap().state, GameServerState::Draining);
    tokio::time::timeout(wait, watch.wait_for(|r| r.as_ref().is_some_and(|r| r.state == GameServerState::Draining)))
        .await
        .unwrap()
        .unwrap();
    assert!(anonymous_watch.borrow().is_none());
    stop.cancel();
    shutdown.cancel();
    tokio::time::timeout(wait, api).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn from_env_reads_the_token_and_the_certificate() {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let dir = std::env::temp_dir().join(format!("gaia-sdk-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let files = gaia_allocator::TlsFiles { cert: dir.join("cert.pem"), key: dir.join("key.pem") };
    std::fs::write(&files.cert, certified.cert.pem()).unwrap();
    std::fs::write(&files.key, certified.signing_key.serialize_pem()).unwrap();
    let (url, _registry, shutdown, _api) = control_plane_with(&secured(), Some(files.load().unwrap())).await;
    assert!(url.starts_with("https://"), "{url}");

    let cert_file = files.cert.display().to_string();
    let token = sdk_token("gs-1");
    let vars = |with_token: bool, with_ca: bool| {
        let (url, token, cert_file) = (url.clone(), token.clone(), cert_file.clone());
        move |name: &str| match name {
            "GAIA_SDK_URL" => Some(url.clone()),
            "GAIA_SERVER_NAME" => Some("gs-1".to_string()),
            "GAIA_SDK_TOKEN" if with_token => Some(token.clone()),
            "GAIA_SDK_CA_FILE" if with_ca => Some(cert_file.clone()),
            _ => None,
        }
    };
    let sdk = Sdk::from_vars(vars(true, true)).unwrap();
    assert_eq!(sdk.register(&register_request()).await.unwrap().name, "gs-1");
    assert_eq!(sdk.ready().await.unwrap().state, GameServerState::Ready);

    let err = Sdk::from_vars(vars(false, true)).unwrap().health().await.unwrap_err();
    assert_eq!(err.status(), Some(401), "{err}");
    let err = Sdk::from_vars(vars(true, false)).unwrap().health().await.unwrap_err();
    assert_eq!(err.metric_label(), "transport", "the certificate is not trusted without the CA file: {err}");

    let missing = |name: &str| (name == "GAIA_SDK_URL").then(|| url.clone());
    let err = Sdk::from_vars(missing).unwrap_err();
    assert!(matches!(err, SdkError::Env { name: "GAIA_SERVER_NAME", .. }), "{err}");
    let bad_ca = |name: &str| match name {
        "GAIA_SDK_CA_FILE" => Some("/nonexistent/ca.pem".to_string()),
        _ => vars(true, false)(name),
    };
    let err = Sdk::from_vars(bad_ca).unwrap_err();
    assert!(matches!(err, SdkError::Env { name: "GAIA_SDK_CA_FILE", .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    shutdown.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}
