//! Behaviour of the in-memory registry through the `Registry` trait. Written against
//! `Arc<dyn Registry>` so the Redis backend can run the same cases.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use gaia_api::allocation::{AllocationMetadata, AllocationRequest, Strategy};
use gaia_api::gameserver::{GameServer, GameServerState, RegisterRequest};
use gaia_registry::{MemoryRegistry, Registry, RegistryConfig, RegistryError, RegistryEvent};

const LEASE: Duration = Duration::from_secs(30);

fn registry() -> Arc<dyn Registry> {
    Arc::new(MemoryRegistry::new(RegistryConfig { lease_ttl: LEASE, ..Default::default() }))
}

/// Schedules and readies `name` in fleet "town".
async fn ready(reg: &Arc<dyn Registry>, name: &str, region: &str, worlds: u32) -> GameServer {
    reg.schedule(GameServer::scheduled(name, "town", region, worlds, 100)).await.unwrap();
    reg.register(
        name,
        RegisterRequest {
            fleet: "town".into(),
            region: region.into(),
            address: format!("ws://127.0.0.1:1/{name}"),
            world_capacity: worlds,
            player_capacity: 100,
            labels: Default::default(),
            health: Default::default(),
        },
    )
    .await
    .unwrap();
    reg.transition(name, GameServerState::Ready).await.unwrap()
}

fn alloc(regions: &[&str]) -> AllocationRequest {
    AllocationRequest {
        fleet: "town".into(),
        regions: regions.iter().map(|r| r.to_string()).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn allocation_takes_a_slot_and_ending_the_world_returns_it() {
    let reg = registry();
    ready(&reg, "s1", "eu", 2).await;
    let mut req = alloc(&[]);
    req.metadata = AllocationMetadata { labels: [("match".to_string(), "m1".to_string())].into() };
    let p = reg.allocate(&req).await.unwrap();
    assert_eq!(p.server.name, "s1");
    assert_eq!(p.server.address.as_deref(), Some("ws://127.0.0.1:1/s1"));
    assert!(p.lease.is_some());
    let s1 = reg.get("s1").await.unwrap();
    assert_eq!((s1.state, s1.worlds), (GameServerState::Allocated, 1));
    assert_eq!(s1.labels.get("match").map(String::as_str), Some("m1"));

    reg.world_started("s1", &p.world_id).await.unwrap();
    reg.world_ended("s1", &p.world_id).await.unwrap();
    reg.world_ended("s1", &p.world_id).await.unwrap(); // twice is harmless
    let s1 = reg.get("s1").await.unwrap();
    assert_eq!((s1.state, s1.worlds), (GameServerState::Ready, 0));
}

#[tokio::test]
async fn joining_a_known_world_returns_where_it_lives_without_a_new_slot() {
    let reg = registry();
    ready(&reg, "s1", "eu", 1).await;
    ready(&reg, "s2", "us", 1).await;
    let first = reg.allocate(&alloc(&["us"])).await.unwrap();
    let mut join = alloc(&["eu"]);
    join.world_id = Some(first.world_id.clone());
    let second = reg.allocate(&join).await.unwrap();
    assert_eq!(second.server.name, "s2", "the world lives on s2 whatever region is preferred");
    assert_ne!(second.player_id, first.player_id);
    assert_eq!(reg.get("s2").await.unwrap().worlds, 1);
    assert_eq!(reg.get("s1").await.unwrap().worlds, 0);
}

#[tokio::test]
async fn idempotency_key_returns_the_same_answer() {
    let reg = registry();
    ready(&reg, "s1", "eu", 4).await;
    let mut req = alloc(&[]);
    req.idempotency_key = Some("match-7".into());
    let a = reg.allocate(&req).await.unwrap();
    let b = reg.allocate(&req).await.unwrap();
    assert_eq!(a, b);
    assert_eq!(reg.get("s1").await.unwrap().worlds, 1);
}

#[tokio::test]
async fn no_capacity_and_unknown_fleet_are_distinct_errors() {
    let reg = registry();
    ready(&reg, "s1", "eu", 1).await;
    reg.allocate(&alloc(&[])).await.unwrap();
    let err = reg.allocate(&alloc(&[])).await.unwrap_err();
    assert!(matches!(err, RegistryError::NoCapacity(_)), "{err}");
    let mut other = alloc(&[]);
    other.fleet = "arena".into();
    assert_eq!(reg.allocate(&other).await.unwrap_err(), RegistryError::FleetNotFound("arena".into()));
}

#[tokio::test]
async fn illegal_transitions_are_refused() {
    let reg = registry();
    reg.schedule(GameServer::scheduled("s1", "town", "eu", 1, 1)).await.unwrap();
    let err = reg.transition("s1", GameServerState::Draining).await.unwrap_err();
    assert!(matches!(err, RegistryError::IllegalTransition(_)), "{err}");
    reg.transition("s1", GameServerState::Shutdown).await.unwrap();
    assert!(reg.transition("s1", GameServerState::Ready).await.is_err());
    assert!(matches!(reg.health("s1").await, Err(RegistryError::Conflict(_))));
    assert_eq!(
        reg.transition("nope", GameServerState::Ready).await.unwrap_err(),
        RegistryError::NotFound("nope".into())
    );
}

#[tokio::test]
async fn register_must_match_the_scheduled_record() {
    let reg = registry();
    reg.schedule(GameServer::scheduled("s1", "town", "eu", 1, 1)).await.unwrap();
    let err = reg
        .register(
            "s1",
            RegisterRequest {
                fleet: "town".into(),
                region: "us".into(),
                address: "ws://x/ws".into(),
                world_capacity: 1,
                player_capacity: 1,
                labels: Default::default(),
                health: Default::default(),
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Conflict(_)), "{err}");
    assert_eq!(
        reg.schedule(GameServer::scheduled("s1", "town", "eu", 1, 1)).await.unwrap_err(),
        RegistryError::AlreadyExists("s1".into())
    );
}

#[tokio::test(start_paused = true)]
async fn unconfirmed_lease_expires_and_the_slot_returns() {
    let reg = registry();
    ready(&reg, "s1", "eu", 1).await;
    let p = reg.allocate(&alloc(&[])).await.unwrap();
    tokio::time::advance(LEASE - Duration::from_millis(1)).await;
    reg.health("s1").await.unwrap();
    assert!(reg.sweep().await.unwrap().expired_leases.is_empty());
    tokio::time::advance(Duration::from_millis(1)).await;
    let report = reg.sweep().await.unwrap();
    assert_eq!(report.expired_leases, vec![p.world_id.clone()]);
    let s1 = reg.get("s1").await.unwrap();
    assert_eq!((s1.state, s1.worlds), (GameServerState::Ready, 0));
    // The slot is free again.
    reg.allocate(&alloc(&[])).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn confirmed_world_does_not_expire() {
    let reg = registry();
    ready(&reg, "s1", "eu", 1).await;
    let p = reg.allocate(&alloc(&[])).await.unwrap();
    reg.world_started("s1", &p.world_id).await.unwrap();
    tokio::time::advance(LEASE * 2).await;
    reg.health("s1").await.unwrap();
    assert!(reg.sweep().await.unwrap().expired_leases.is_empty());
    assert_eq!(reg.get("s1").await.unwrap().worlds, 1);
}

#[tokio::test(start_paused = true)]
async fn silent_server_goes_unhealthy_after_the_threshold_and_its_worlds_are_freed() {
    let reg = registry();
    ready(&reg, "s1", "eu", 2).await; // default health: 2 s period x 3
    let p = reg.allocate(&alloc(&[])).await.unwrap();
    reg.world_started("s1", &p.world_id).await.unwrap();
    tokio::time::advance(Duration::from_millis(5_999)).await;
    assert!(reg.sweep().await.unwrap().unhealthy.is_empty());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(reg.sweep().await.unwrap().unhealthy, vec!["s1".to_string()]);
    let s1 = reg.get("s1").await.unwrap();
    assert_eq!((s1.state, s1.worlds), (GameServerState::Unhealthy, 0));
    // Its world is no longer placed there: a join for it needs a new slot, and there is none.
    let mut join = alloc(&[]);
    join.world_id = Some(p.world_id);
    assert!(matches!(reg.allocate(&join).await, Err(RegistryError::NoCapacity(_))));
    // The tombstone disappears after its time.
    tokio::time::advance(RegistryConfig::default().tombstone_ttl).await;
    assert_eq!(reg.sweep().await.unwrap().removed, vec!["s1".to_string()]);
    assert_eq!(reg.get("s1").await.unwrap_err(), RegistryError::NotFound("s1".into()));
}

#[tokio::test(start_paused = true)]
async fn scheduled_server_gets_its_initial_delay() {
    let reg = registry();
    reg.schedule(GameServer::scheduled("s1", "town", "eu", 1, 1)).await.unwrap();
    // 10 s initial delay + 6 s timeout.
    tokio::time::advance(Duration::from_millis(15_999)).await;
    assert!(reg.sweep().await.unwrap().unhealthy.is_empty());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(reg.sweep().await.unwrap().unhealthy, vec!["s1".to_string()]);
}

#[tokio::test]
async fn events_report_allocations_and_state_changes() {
    let reg = registry();
    let mut events = reg.subscribe();
    ready(&reg, "s1", "eu", 1).await;
    reg.allocate(&alloc(&[])).await.unwrap();
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push(e);
    }
    assert!(seen.contains(&RegistryEvent::Allocated { fleet: "town".into(), region: "eu".into() }), "{seen:?}");
    assert!(seen.contains(&RegistryEvent::StateChanged {
        name: "s1".into(),
        fleet: "town".into(),
        region: "eu".into(),
        state: GameServerState::Allocated
    }));
}

/// 1,000 concurrent allocations against 600 slots: exactly 600 succeed, each slot once,
/// and the other 400 are clean NoCapacity errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_allocations_never_oversell() {
    let reg = registry();
    for i in 0..60 {
        ready(&reg, &format!("s{i:02}"), if i % 2 == 0 { "eu" } else { "us" }, 10).await;
    }
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let reg = Arc::clone(&reg);
            tokio::spawn(async move {
                let mut req = alloc(if i % 2 == 0 { &["eu", "us"] } else { &["us", "eu"] });
                req.strategy = if i % 3 == 0 { Strategy::Distributed } else { Strategy::Packed };
                reg.allocate(&req).await
            })
        })
        .collect();
    let mut worlds = HashSet::new();
    let mut no_capacity = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(p) => assert!(worlds.insert(p.world_id), "world handed out twice"),
            Err(RegistryError::NoCapacity(_)) => no_capacity += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!((worlds.len(), no_capacity), (600, 400));
    for s in reg.list(Some("town")).await.unwrap() {
        assert_eq!(s.worlds, 10, "{} over or under filled", s.name);
    }
}

#[tokio::test]
async fn retire_takes_only_idle_servers() {
    let reg = registry();
    ready(&reg, "busy", "eu", 1).await;
    ready(&reg, "idle", "eu", 1).await;
    reg.schedule(GameServer::scheduled("fresh", "town", "eu", 1, 1)).await.unwrap();
    let p = reg.allocate(&alloc(&[])).await.unwrap();
    let err = reg.retire(&p.server.name).await.unwrap_err();
    assert!(matches!(err, RegistryError::Conflict(_)), "{err}");
    assert_eq!(reg.get(&p.server.name).await.unwrap().state, GameServerState::Allocated);
    let other = if p.server.name == "busy" { "idle" } else { "busy" };
    assert_eq!(reg.retire(other).await.unwrap().state, GameServerState::Shutdown);
    assert_eq!(reg.retire("fresh").await.unwrap().state, GameServerState::Shutdown);
    // A retired server takes no more worlds, and retiring twice is refused.
    assert!(matches!(reg.allocate(&alloc(&[])).await, Err(RegistryError::NoCapacity(_))));
    assert!(reg.retire("fresh").await.is_err());
    assert_eq!(reg.retire("nope").await.unwrap_err(), RegistryError::NotFound("nope".into()));
}
