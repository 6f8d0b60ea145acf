//! Behaviour of the in-memory registry through the `Registry` trait. Written against
//! `Arc<dyn Registry>` so the Redis backend can run the same cases.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use gaia_api::allocation::{AllocationMetadata, AllocationRequest, Strategy};
use gaia_api::gameserver::{GameServer, GameServerState, RegisterRequest};
use gaia_api::token::unix_ms;
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
    req.metadata = AllocationMetadata { labels: [("match".to_string(), "m1".to_string())].into(), ..Default::default() };
    let p = reg.allocate(&req).await.unwrap();
    assert_eq!(p.server.name, "s1");
    assert_eq!(p.server.address.as_deref(), Some("ws://127.0.0.1:1/s1"));
    assert!(p.lease.is_some());
    let s1 = reg.get("s1").await.unwrap();
    assert_eq!((s1.state, s1.worlds), (GameServerState::Allocated, 1));
    assert_eq!(s1.labels.get("match").map(String::as_str), Some("m1"));

    reg.world_started("s1", &p.world_id, p.epoch).await.unwrap();
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
    reg.world_started("s1", &p.world_id, p.epoch).await.unwrap();
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
    reg.world_started("s1", &p.world_id, p.epoch).await.unwrap();
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

fn join(world_id: &str) -> AllocationRequest {
    AllocationRequest { world_id: Some(world_id.into()), ..alloc(&[]) }
}

fn now_ms() -> u64 {
    unix_ms(std::time::SystemTime::now())
}

#[tokio::test]
async fn each_assignment_bumps_the_epoch_and_joins_keep_it() {
    let reg = registry();
    ready(&reg, "s1", "eu", 2).await;
    let before = now_ms();
    let first = reg.allocate(&join("w1")).await.unwrap();
    // The wall clock is the floor, so a restarted registry never goes below itself.
    assert!(first.epoch >= before, "{} < {before}", first.epoch);
    assert_eq!(reg.allocate(&join("w1")).await.unwrap().epoch, first.epoch, "joining does not bump");

    // The world ends and is placed again at once (the same millisecond, likely): higher.
    reg.world_ended("s1", "w1").await.unwrap();
    let second = reg.allocate(&join("w1")).await.unwrap();
    assert!(second.epoch > first.epoch, "{} <= {}", second.epoch, first.epoch);
    // Epochs are per world: another world's assignment does not touch this one.
    reg.allocate(&join("w2")).await.unwrap();
    assert_eq!(reg.allocate(&join("w1")).await.unwrap().epoch, second.epoch);
}

#[tokio::test]
async fn idempotent_repeat_returns_the_same_epoch() {
    let reg = registry();
    ready(&reg, "s1", "eu", 2).await;
    let mut req = join("w1");
    req.idempotency_key = Some("k".into());
    let a = reg.allocate(&req).await.unwrap();
    let b = reg.allocate(&req).await.unwrap();
    assert_eq!((a.epoch, &a), (b.epoch, &b));
}

#[tokio::test]
async fn the_epoch_survives_the_world_being_freed_by_a_dead_server() {
    let reg = registry();
    ready(&reg, "s1", "eu", 1).await;
    ready(&reg, "s2", "eu", 1).await;
    let first = reg.allocate(&join("w1")).await.unwrap();
    reg.world_started(&first.server.name, "w1", first.epoch).await.unwrap();
    reg.transition(&first.server.name, GameServerState::Unhealthy).await.unwrap();
    reg.remove(&first.server.name).await.unwrap();
    let second = reg.allocate(&join("w1")).await.unwrap();
    assert_ne!(second.server.name, first.server.name);
    assert!(second.epoch > first.epoch, "{} <= {}", second.epoch, first.epoch);
}

#[tokio::test(start_paused = true)]
async fn world_started_after_an_expired_lease_is_fenced_by_the_epoch() {
    let reg = registry();
    ready(&reg, "s1", "eu", 2).await;
    ready(&reg, "s2", "us", 2).await;
    let first = reg.allocate(&join("w1")).await.unwrap();
    let s = first.server.name.clone();
    tokio::time::advance(LEASE).await;
    reg.health("s1").await.unwrap();
    reg.health("s2").await.unwrap();
    assert_eq!(reg.sweep().await.unwrap().expired_leases, vec!["w1".to_string()]);
    assert_eq!(reg.get(&s).await.unwrap().worlds, 0);

    // The first player arrives late, with the placement's epoch: the world is taken back.
    reg.world_started(&s, "w1", first.epoch).await.unwrap();
    assert_eq!(reg.get(&s).await.unwrap().worlds, 1);
    assert_eq!(reg.allocate(&join("w1")).await.unwrap().server.name, s);

    // Expired again, and placed anew elsewhere meanwhile: the late start is a conflict.
    reg.world_ended(&s, "w1").await.unwrap();
    let second = reg.allocate(&AllocationRequest { regions: vec!["us".into()], ..join("w1") }).await.unwrap();
    assert_eq!(second.server.name, "s2");
    let err = reg.world_started(&s, "w1", first.epoch).await.unwrap_err();
    assert!(matches!(err, RegistryError::Conflict(_)), "{err}");

    // Placed anew and freed again: recorded nowhere, but an old epoch has moved on.
    reg.world_ended("s2", "w1").await.unwrap();
    let err = reg.world_started(&s, "w1", first.epoch).await.unwrap_err();
    assert_eq!(err, RegistryError::Conflict(format!("world w1 moved on (epoch {} < {})", first.epoch, second.epoch)));
    assert_eq!(reg.get(&s).await.unwrap().worlds, 0);
    // The current epoch may start it.
    reg.world_started(&s, "w1", second.epoch).await.unwrap();
    assert_eq!(reg.get(&s).await.unwrap().worlds, 1);
}

#[tokio::test]
async fn a_restarted_registry_takes_the_servers_epoch_and_goes_above_it() {
    let reg = registry();
    ready(&reg, "s1", "eu", 2).await;
    // A server reports a world this registry never placed (it restarted), at an epoch
    // ahead of the clock: the next assignment must still go above it.
    let ahead = now_ms() + 3_600_000;
    reg.world_started("s1", "w1", ahead).await.unwrap();
    assert_eq!(reg.get("s1").await.unwrap().worlds, 1);
    assert_eq!(reg.allocate(&join("w1")).await.unwrap().epoch, ahead);
    reg.world_ended("s1", "w1").await.unwrap();
    assert_eq!(reg.allocate(&join("w1")).await.unwrap().epoch, ahead + 1);
}

#[tokio::test]
async fn move_world_prefers_the_same_region_and_bumps_the_epoch() {
    let reg = registry();
    ready(&reg, "a-eu", "eu", 2).await;
    ready(&reg, "b-us", "us", 2).await;
    ready(&reg, "c-eu", "eu", 2).await;
    let placed = reg.allocate(&AllocationRequest { regions: vec!["eu".into()], ..join("w1") }).await.unwrap();
    assert_eq!(placed.server.name, "a-eu");
    reg.world_started("a-eu", "w1", placed.epoch).await.unwrap();
    let mut events = reg.subscribe();

    let moved = reg.move_world("a-eu", "w1").await.unwrap();
    assert_eq!((moved.world_id.as_str(), moved.server.name.as_str()), ("w1", "c-eu"));
    assert!(moved.player_id.is_empty());
    assert!(moved.epoch > placed.epoch);
    assert!(moved.lease.is_some(), "the new slot is leased until the world starts there");
    assert_eq!(moved.server.worlds, 1);
    let (a, c) = (reg.get("a-eu").await.unwrap(), reg.get("c-eu").await.unwrap());
    assert_eq!((a.state, a.worlds), (GameServerState::Ready, 0));
    assert_eq!((c.state, c.worlds), (GameServerState::Allocated, 1));
    let seen: Vec<_> = std::iter::from_fn(|| events.try_recv().ok()).collect();
    assert!(seen.contains(&RegistryEvent::Allocated { fleet: "town".into(), region: "eu".into() }), "{seen:?}");
    assert!(seen.contains(&RegistryEvent::Released { fleet: "town".into(), region: "eu".into() }), "{seen:?}");

    // Joins go to the new server with the new epoch; the old server lost the world.
    let joined = reg.allocate(&join("w1")).await.unwrap();
    assert_eq!((joined.server.name.as_str(), joined.epoch), ("c-eu", moved.epoch));
    let err = reg.world_started("a-eu", "w1", placed.epoch).await.unwrap_err();
    assert!(matches!(err, RegistryError::Conflict(_)), "{err}");
    reg.world_started("c-eu", "w1", moved.epoch).await.unwrap();

    // No other eu server with room: any region.
    reg.allocate(&AllocationRequest { regions: vec!["eu".into()], ..alloc(&[]) }).await.unwrap();
    reg.allocate(&AllocationRequest { regions: vec!["eu".into()], ..alloc(&[]) }).await.unwrap();
    reg.allocate(&AllocationRequest { regions: vec!["eu".into()], ..alloc(&[]) }).await.unwrap();
    assert_eq!((reg.get("a-eu").await.unwrap().worlds, reg.get("c-eu").await.unwrap().worlds), (2, 2));
    let moved_again = reg.move_world("c-eu", "w1").await.unwrap();
    assert_eq!(moved_again.server.name, "b-us");
    assert!(moved_again.epoch > moved.epoch);
    assert_eq!(reg.get("c-eu").await.unwrap().worlds, 1);
}

#[tokio::test]
async fn move_world_off_a_draining_server_and_its_errors() {
    let reg = registry();
    ready(&reg, "s1", "eu", 1).await;
    ready(&reg, "s2", "eu", 1).await;
    let placed = reg.allocate(&join("w1")).await.unwrap();
    let (from, to) = if placed.server.name == "s1" { ("s1", "s2") } else { ("s2", "s1") };

    assert_eq!(
        reg.move_world(to, "w1").await.unwrap_err(),
        RegistryError::WorldNotFound { server: to.into(), world: "w1".into() }
    );
    assert_eq!(
        reg.move_world(from, "nope").await.unwrap_err(),
        RegistryError::WorldNotFound { server: from.into(), world: "nope".into() }
    );
    assert_eq!(reg.move_world("ghost", "w1").await.unwrap_err(), RegistryError::NotFound("ghost".into()));

    // Draining: no new worlds there, and joins for its world wait for the move.
    assert_eq!(reg.transition(from, GameServerState::Draining).await.unwrap().state, GameServerState::Draining);
    assert!(matches!(reg.allocate(&join("w1")).await, Err(RegistryError::NoCapacity(_))));
    let moved = reg.move_world(from, "w1").await.unwrap();
    assert_eq!(moved.server.name, to);
    let source = reg.get(from).await.unwrap();
    assert_eq!((source.state, source.worlds), (GameServerState::Draining, 0));
    assert_eq!(reg.allocate(&join("w1")).await.unwrap().server.name, to);

    // Nowhere left to go: the only other server is draining, and this one is full.
    let err = reg.move_world(to, "w1").await.unwrap_err();
    assert!(matches!(&err, RegistryError::NoCapacity(m) if m.contains("w1") && m.contains("town")), "{err}");
    assert_eq!(reg.get(to).await.unwrap().worlds, 1, "a failed move keeps the world where it is");
    assert_eq!(reg.allocate(&join("w1")).await.unwrap().server.name, to);
}

#[tokio::test]
async fn move_world_drops_idempotent_answers_that_point_at_the_old_server() {
    let reg = registry();
    ready(&reg, "s1", "eu", 1).await;
    let mut req = join("w1");
    req.idempotency_key = Some("match-1".into());
    let placed = reg.allocate(&req).await.unwrap();
    ready(&reg, "s2", "eu", 1).await;
    let moved = reg.move_world("s1", "w1").await.unwrap();
    let again = reg.allocate(&req).await.unwrap();
    assert_eq!((again.server.name.as_str(), again.epoch), ("s2", moved.epoch));
    assert_ne!(again.epoch, placed.epoch);
}

#[tokio::test(start_paused = true)]
async fn an_unconfirmed_move_expires_like_an_allocation() {
    let reg = registry();
    ready(&reg, "s1", "eu", 1).await;
    ready(&reg, "s2", "eu", 1).await;
    let placed = reg.allocate(&join("w1")).await.unwrap();
    reg.world_started(&placed.server.name, "w1", placed.epoch).await.unwrap();
    let moved = reg.move_world(&placed.server.name, "w1").await.unwrap();
    tokio::time::advance(LEASE).await;
    reg.health("s1").await.unwrap();
    reg.health("s2").await.unwrap();
    assert_eq!(reg.sweep().await.unwrap().expired_leases, vec!["w1".to_string()]);
    assert_eq!(reg.get(&moved.server.name).await.unwrap().worlds, 0);
    // The epoch outlives it: the next placement goes above the move's.
    assert!(reg.allocate(&join("w1")).await.unwrap().epoch > moved.epoch);
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
