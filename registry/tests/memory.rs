//! Timer boundaries of the in-memory registry, on tokio's paused clock: to the millisecond
//! where `conformance.rs` can only show the behaviour with real short sleeps (the Redis
//! backend keeps its own clock), and the timers too long to wait for there.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::sync::Arc;
use std::time::Duration;

use gaia_api::gameserver::{GameServer, GameServerState};
use gaia_registry::{MemoryRegistry, Registry, RegistryConfig};

use common::{FLEET, alloc, join, ready};

const LEASE: Duration = Duration::from_secs(30);

fn registry() -> Arc<dyn Registry> {
    Arc::new(MemoryRegistry::new(RegistryConfig { lease_ttl: LEASE, ..Default::default() }))
}

#[tokio::test(start_paused = true)]
async fn lease_expires_exactly_at_its_ttl() {
    let reg = registry();
    ready(&reg, "s1", "eu", 1).await;
    let p = reg.allocate(&alloc(&[])).await.unwrap();
    tokio::time::advance(LEASE - Duration::from_millis(1)).await;
    reg.health("s1").await.unwrap();
    assert!(reg.sweep().await.unwrap().expired_leases.is_empty());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(reg.sweep().await.unwrap().expired_leases, vec![p.world_id]);
}

#[tokio::test(start_paused = true)]
async fn health_timeout_is_period_times_threshold_and_the_tombstone_its_ttl() {
    let reg = registry();
    ready(&reg, "s1", "eu", 2).await; // default health: 2 s period x 3
    tokio::time::advance(Duration::from_millis(5_999)).await;
    assert!(reg.sweep().await.unwrap().unhealthy.is_empty());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(reg.sweep().await.unwrap().unhealthy, vec!["s1".to_string()]);
    assert_eq!(reg.get("s1").await.unwrap().state, GameServerState::Unhealthy);
    let tombstone = RegistryConfig::default().tombstone_ttl;
    tokio::time::advance(tombstone - Duration::from_millis(1)).await;
    assert!(reg.sweep().await.unwrap().removed.is_empty());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(reg.sweep().await.unwrap().removed, vec!["s1".to_string()]);
}

#[tokio::test(start_paused = true)]
async fn scheduled_server_gets_its_initial_delay() {
    let reg = registry();
    reg.schedule(GameServer::scheduled("s1", FLEET, "eu", 1, 1)).await.unwrap();
    // 10 s initial delay + 6 s timeout.
    tokio::time::advance(Duration::from_millis(15_999)).await;
    assert!(reg.sweep().await.unwrap().unhealthy.is_empty());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(reg.sweep().await.unwrap().unhealthy, vec!["s1".to_string()]);
}

#[tokio::test(start_paused = true)]
async fn epochs_of_worlds_gone_for_the_retention_are_forgotten_without_going_back() {
    let reg = registry();
    ready(&reg, "s1", "eu", 2).await;
    let first = reg.allocate(&join("w1")).await.unwrap();
    reg.world_ended("s1", "w1").await.unwrap();
    let kept = reg.allocate(&join("w2")).await.unwrap();
    reg.world_started("s1", "w2", kept.epoch).await.unwrap();
    // Pruning only takes epochs below the wall clock, which the paused clock does not move.
    std::thread::sleep(Duration::from_millis(2));
    tokio::time::advance(RegistryConfig::default().epoch_retention).await;
    reg.health("s1").await.unwrap();
    reg.sweep().await.unwrap();
    // w1 is forgotten: a late start is no longer fenced ...
    reg.world_started("s1", "w1", 1).await.unwrap();
    reg.world_ended("s1", "w1").await.unwrap();
    // ... and its next epoch still goes above every one it had.
    assert!(reg.allocate(&join("w1")).await.unwrap().epoch > first.epoch);
    // w2 is placed, so its epoch stays.
    assert_eq!(reg.allocate(&join("w2")).await.unwrap().epoch, kept.epoch);
}
