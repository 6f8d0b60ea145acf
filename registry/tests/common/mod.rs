//! Backends and fixtures for the registry tests.
//!
//! [`memory`] and [`redis`] each build one backend for one test; Redis is the real server
//! at `GAIA_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`), under a key prefix of the
//! test's own (`gaia-test:<uuid>:`), deleted when the test ends. When Redis cannot be
//! reached the test prints why and passes, unless `REQUIRE_SERVICES` is set: then it fails.
//! The fixtures (`ready`, `alloc`, ...) build every server in fleet "town".
#![allow(dead_code)] // each test crate uses a part of this module

use std::sync::Arc;
use std::time::Duration;

use gaia_api::allocation::AllocationRequest;
use gaia_api::gameserver::{GameServer, GameServerState, RegisterRequest};
use gaia_registry::{MemoryRegistry, RedisRegistry, Registry, RegistryConfig, RegistryEvent};
use tokio::sync::broadcast;

pub const FLEET: &str = "town";
pub use gaia_testkit::services::{redis_prefix, redis_url, unavailable};

/// A registry for one test, and what to clean up after it.
pub struct TestRegistry {
    registry: Arc<dyn Registry>,
    /// The Redis key prefix the test wrote under.
    redis_prefix: Option<String>,
}

impl TestRegistry {
    pub fn registry(&self) -> Arc<dyn Registry> {
        Arc::clone(&self.registry)
    }

    /// Deletes what the test wrote. Not on drop: a failed test leaves its keys to look at.
    pub async fn cleanup(self) {
        if let Some(prefix) = self.redis_prefix {
            forget_prefix(&prefix).await;
        }
    }
}

pub async fn memory(config: RegistryConfig) -> Option<TestRegistry> {
    Some(TestRegistry { registry: Arc::new(MemoryRegistry::new(config)), redis_prefix: None })
}

pub async fn redis(config: RegistryConfig) -> Option<TestRegistry> {
    let url = redis_url();
    let prefix = redis_prefix();
    match RedisRegistry::connect(&url, &prefix, config).await {
        Ok(registry) => Some(TestRegistry { registry: Arc::new(registry), redis_prefix: Some(prefix) }),
        Err(e) => unavailable("Redis", &url, e),
    }
}

/// Deletes every key under `prefix`.
async fn forget_prefix(prefix: &str) {
    let client = ::redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = ::redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        if !keys.is_empty() {
            let () = ::redis::cmd("DEL").arg(&keys).query_async(&mut conn).await.unwrap();
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

/// Schedules `server`, registers it at a made-up address and makes it Ready.
pub async fn ready_server(reg: &Arc<dyn Registry>, server: GameServer) -> GameServer {
    let name = server.name.clone();
    reg.schedule(server.clone()).await.unwrap();
    reg.register(&name, register_request(&server)).await.unwrap();
    reg.transition(&name, GameServerState::Ready).await.unwrap()
}

/// Schedules and readies `name` in fleet "town" with `worlds` world slots and 100 players.
pub async fn ready(reg: &Arc<dyn Registry>, name: &str, region: &str, worlds: u32) -> GameServer {
    ready_server(reg, GameServer::scheduled(name, FLEET, region, worlds, 100)).await
}

/// [`ready`], with labels.
pub async fn ready_labelled(reg: &Arc<dyn Registry>, name: &str, worlds: u32, labels: &[(&str, &str)]) -> GameServer {
    let mut server = GameServer::scheduled(name, FLEET, "eu", worlds, 100);
    server.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    ready_server(reg, server).await
}

/// What `server` says when its process starts.
pub fn register_request(server: &GameServer) -> RegisterRequest {
    RegisterRequest {
        fleet: server.fleet.clone(),
        region: server.region.clone(),
        address: format!("ws://127.0.0.1:1/{}", server.name),
        world_capacity: server.world_capacity,
        player_capacity: server.player_capacity,
        labels: Default::default(),
        health: server.health,
    }
}

/// Puts `n` running worlds on `name` directly: each is reported started by the server,
/// as after a registry restart, so the test decides where they are without allocating.
pub async fn fill(reg: &Arc<dyn Registry>, name: &str, n: u32) {
    let before = reg.get(name).await.unwrap().worlds;
    for i in 0..n {
        reg.world_started(name, &format!("{name}-pre-{i}"), 1).await.unwrap();
    }
    assert_eq!(reg.get(name).await.unwrap().worlds, before + n, "fill {name}");
}

/// A new world in fleet "town", preferring `regions` in order (any when empty).
pub fn alloc(regions: &[&str]) -> AllocationRequest {
    AllocationRequest {
        fleet: FLEET.into(),
        regions: regions.iter().map(|r| r.to_string()).collect(),
        ..Default::default()
    }
}

/// Join (or place) world `world_id` in fleet "town".
pub fn join(world_id: &str) -> AllocationRequest {
    AllocationRequest { world_id: Some(world_id.into()), ..alloc(&[]) }
}

/// Waits (2 s at most) until every event of `want` has come; panics naming the missing.
/// A backend may publish after the call returns (Redis pub/sub), so a test waits for them.
pub async fn expect_events(events: &mut broadcast::Receiver<RegistryEvent>, want: &[RegistryEvent]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut seen = Vec::new();
    while !want.iter().all(|w| seen.contains(w)) {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(event)) => seen.push(event),
            Ok(Err(broadcast::error::RecvError::Lagged(n))) => panic!("lost {n} events; seen {seen:?}"),
            Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => {
                let missing: Vec<_> = want.iter().filter(|w| !seen.contains(w)).collect();
                panic!("missing events {missing:?}; seen {seen:?}");
            }
        }
    }
}
