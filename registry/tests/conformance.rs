//! One suite for every registry backend: each case is an `async fn(Arc<dyn Registry>)`,
//! and `conformance!` runs it against the in-memory registry (`memory::case`) and the Redis
//! registry (`redis::case`), each built with the `RegistryConfig` the case names (`=> f`;
//! `config()` when none). See `common` for how the backends are built and isolated.
//!
//! It covers the whole contract of [`Registry`]: allocation and release, joins,
//! idempotency, errors, the lifecycle, retire, events, epochs and moves; the choice rules
//! (selectors, strategies, priorities, regions) with exact servers; leases, health
//! timeouts and tombstones on real short timers (Redis keeps its own clock, so tokio's
//! paused clock cannot drive it; timer boundaries are in `memory.rs`); concurrent
//! allocations; and a random run checked against the reference `choose` over `list()`,
//! which guards the open-server index each backend keeps.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use gaia_api::allocation::{
    AllocationMetadata, AllocationRequest, LabelExpression, Operator, Order, Priority, PriorityKey, Selector, Strategy,
};
use gaia_api::fleet::HealthSpec;
use gaia_api::gameserver::{GameServer, GameServerState, HostedWorld, RegisterRequest};
use gaia_api::token::unix_ms;
use gaia_registry::{Registry, RegistryConfig, RegistryError, RegistryEvent, choose};
use rand::rngs::SmallRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use GameServerState::*;
use common::{FLEET, alloc, expect_events, fill, join, ready, ready_labelled, ready_server, register_request};

/// The config a case gets unless it names another.
fn config() -> RegistryConfig {
    RegistryConfig { lease_ttl: LEASE, ..Default::default() }
}

/// For the cases that wait for a lease to expire.
fn short_leases() -> RegistryConfig {
    RegistryConfig { lease_ttl: SHORT, ..config() }
}

/// For the cases that wait for a terminal record to go.
fn short_tombstones() -> RegistryConfig {
    RegistryConfig { tombstone_ttl: SHORT, ..config() }
}

const LEASE: Duration = Duration::from_secs(30);
const SHORT: Duration = Duration::from_millis(300);
/// Comfortably past [`SHORT`], for a timer to have run out on any backend's clock.
const PAST_SHORT: Duration = Duration::from_millis(450);

macro_rules! config_of {
    () => {
        crate::config()
    };
    ($config:ident) => {
        crate::$config()
    };
}

/// One module per backend, one `#[tokio::test]` per case in each.
macro_rules! suite {
    ($backend:ident: $($case:ident $(=> $config:ident)?),+ $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let Some(test) = crate::common::$backend(config_of!($($config)?)).await else { return };
                    crate::$case(test.registry()).await;
                    test.cleanup().await;
                }
            )+
        }
    };
}

macro_rules! conformance {
    ($($case:ident $(=> $config:ident)?),+ $(,)?) => {
        suite!(memory: $($case $(=> $config)?),+);
        suite!(redis: $($case $(=> $config)?),+);
    };
}

conformance!(
    // Allocation, joins, idempotency, errors.
    allocation_takes_a_slot_and_ending_the_world_returns_it,
    joining_a_known_world_returns_where_it_lives_without_a_new_slot,
    idempotency_key_returns_the_same_answer_without_a_second_slot,
    no_capacity_and_unknown_fleet_are_distinct_errors,
    metadata_labels_and_annotations_land_on_the_chosen_server,
    system_label_domains_cannot_be_set_by_allocations_or_the_sdk,
    // Lifecycle.
    illegal_transitions_are_refused,
    register_must_match_the_scheduled_record_or_creates_one,
    retire_takes_only_idle_servers,
    draining_reserved_unregistered_and_terminal_servers_are_never_chosen,
    events_report_allocations_releases_and_state_changes,
    // Epochs and moves.
    each_assignment_bumps_the_epoch_and_joins_keep_it,
    the_epoch_survives_the_world_being_freed_by_a_dead_server,
    a_restarted_registry_takes_the_servers_epoch_and_goes_above_it,
    move_world_prefers_the_same_region_and_bumps_the_epoch,
    move_world_off_a_draining_server_and_its_errors,
    move_world_drops_idempotent_answers_that_point_at_the_old_server,
    worlds_says_which_server_holds_each_world,
    // Timers, on real short timeouts.
    unconfirmed_lease_expires_and_the_slot_returns => short_leases,
    world_started_confirms_the_lease_so_it_never_expires => short_leases,
    idempotent_retry_after_the_lease_expired_is_a_new_allocation => short_leases,
    a_reused_idempotency_key_keeps_its_new_answer_when_the_old_world_goes => short_leases,
    world_started_after_an_expired_lease_is_fenced_by_the_epoch => short_leases,
    an_unconfirmed_move_expires_like_an_allocation => short_leases,
    silent_server_goes_unhealthy_and_its_worlds_are_freed,
    terminal_records_are_removed_after_the_tombstone_time => short_tombstones,
    // Selectors.
    selector_match_labels_require_every_pair,
    selector_in_matches_any_listed_value,
    selector_not_in_admits_other_values_and_unset_labels,
    selector_exists_requires_the_key,
    selector_does_not_exist_requires_the_key_unset,
    selector_game_server_state_picks_ready_or_allocated,
    selector_min_free_worlds_skips_fuller_servers,
    selector_min_free_players_skips_crowded_servers,
    selectors_fall_back_in_order_within_each_region,
    // Strategies, priorities, regions.
    packed_fills_the_fullest_server_that_fits,
    distributed_fills_the_emptiest_server,
    ties_go_to_the_smaller_name,
    priorities_break_packed_ties_and_order_distributed,
    regions_are_tried_in_order_and_unnamed_regions_never_used,
    unknown_regions_are_refused_and_declared_ones_wait_for_capacity,
    // Under load.
    concurrent_allocations_take_exactly_the_free_slots,
    random_operations_keep_allocation_in_step_with_the_records,
);

/// Allocates `req` and gives the slot straight back: the server chosen, or `None` for
/// NoCapacity. Leaves the registry as it was (world counts, states).
async fn pick(reg: &Arc<dyn Registry>, req: &AllocationRequest) -> Option<String> {
    match reg.allocate(req).await {
        Ok(p) => {
            reg.world_ended(&p.server.name, &p.world_id).await.unwrap();
            Some(p.server.name)
        }
        Err(RegistryError::NoCapacity(_)) => None,
        Err(e) => panic!("allocate {req:?}: {e}"),
    }
}

/// [`pick`] with `strategy` and `selectors`, any region.
async fn pick_with(reg: &Arc<dyn Registry>, strategy: Strategy, selectors: Vec<Selector>) -> Option<String> {
    pick(reg, &AllocationRequest { strategy, selectors, ..alloc(&[]) }).await
}

/// Allocates `req` and keeps the slot: the server chosen, or `None` for NoCapacity.
async fn take(reg: &Arc<dyn Registry>, req: &AllocationRequest) -> Option<String> {
    match reg.allocate(req).await {
        Ok(p) => Some(p.server.name),
        Err(RegistryError::NoCapacity(_)) => None,
        Err(e) => panic!("allocate {req:?}: {e}"),
    }
}

fn some(name: &str) -> Option<String> {
    Some(name.to_string())
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn match_labels(pairs: &[(&str, &str)]) -> Selector {
    Selector { match_labels: labels(pairs), ..Default::default() }
}

fn expressions(exprs: &[(&str, Operator, &[&str])]) -> Selector {
    let match_expressions = exprs
        .iter()
        .map(|(key, operator, values)| LabelExpression {
            key: key.to_string(),
            operator: *operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        })
        .collect();
    Selector { match_expressions, ..Default::default() }
}

fn expression(key: &str, operator: Operator, values: &[&str]) -> Selector {
    expressions(&[(key, operator, values)])
}

fn now_ms() -> u64 {
    unix_ms(std::time::SystemTime::now())
}

// ---------------------------------------------------------------------------------------
// Allocation, joins, idempotency, errors.

async fn allocation_takes_a_slot_and_ending_the_world_returns_it(reg: Arc<dyn Registry>) {
    ready(&reg, "s1", "eu", 2).await;
    let p = reg.allocate(&alloc(&[])).await.unwrap();
    assert_eq!(p.server.name, "s1");
    assert_eq!(p.server.address.as_deref(), Some("ws://127.0.0.1:1/s1"));
    assert_eq!((p.server.state, p.server.worlds), (Allocated, 1), "the placement shows the server after it");
    assert!(p.lease.is_some());
    assert!(!p.world_id.is_empty() && !p.player_id.is_empty());
    let s1 = reg.get("s1").await.unwrap();
    assert_eq!((s1.state, s1.worlds, s1.free_world_slots()), (Allocated, 1, 1));

    reg.world_started("s1", &p.world_id, p.epoch).await.unwrap();
    reg.world_ended("s1", &p.world_id).await.unwrap();
    reg.world_ended("s1", &p.world_id).await.unwrap(); // twice is harmless
    let s1 = reg.get("s1").await.unwrap();
    assert_eq!((s1.state, s1.worlds), (Ready, 0));
}

async fn joining_a_known_world_returns_where_it_lives_without_a_new_slot(reg: Arc<dyn Registry>) {
    ready(&reg, "s1", "eu", 1).await;
    ready(&reg, "s2", "us", 1).await;
    let first = reg.allocate(&alloc(&["us"])).await.unwrap();
    assert_eq!(first.server.name, "s2");
    let mut req = alloc(&["eu"]);
    req.world_id = Some(first.world_id.clone());
    let second = reg.allocate(&req).await.unwrap();
    assert_eq!(second.server.name, "s2", "the world lives on s2 whatever region is preferred");
    assert_eq!((second.world_id.as_str(), second.epoch), (first.world_id.as_str(), first.epoch));
    assert_ne!(second.player_id, first.player_id);
    assert_eq!(reg.get("s2").await.unwrap().worlds, 1);
    assert_eq!(reg.get("s1").await.unwrap().worlds, 0);
    // A world nobody holds gets a new slot under the id asked for.
    let third = reg.allocate(&AllocationRequest { player_id: Some("p-9".into()), ..join("w-new") }).await.unwrap();
    assert_eq!((third.world_id.as_str(), third.player_id.as_str(), third.server.name.as_str()), ("w-new", "p-9", "s1"));
}

async fn idempotency_key_returns_the_same_answer_without_a_second_slot(reg: Arc<dyn Registry>) {
    ready(&reg, "s1", "eu", 4).await;
    let mut req = alloc(&[]);
    req.idempotency_key = Some("match-7".into());
    let a = reg.allocate(&req).await.unwrap();
    let b = reg.allocate(&req).await.unwrap();
    assert_eq!(
        (&b.world_id, &b.server.name, b.lease.as_ref().map(|l| &l.id), b.epoch),
        (&a.world_id, &a.server.name, a.lease.as_ref().map(|l| &l.id), a.epoch)
    );
    assert_eq!(a, b, "the whole answer is repeated, player id included");
    assert_eq!(reg.get("s1").await.unwrap().worlds, 1, "a retry takes no second slot");

    // Another key is another allocation.
    req.idempotency_key = Some("match-8".into());
    let c = reg.allocate(&req).await.unwrap();
    assert_ne!(c.world_id, a.world_id);
    assert_eq!(reg.get("s1").await.unwrap().worlds, 2);

    // With a world id, the repeat is the placement, not a join (which has a new player).
    let mut req = join("w1");
    req.idempotency_key = Some("k".into());
    let d = reg.allocate(&req).await.unwrap();
    let e = reg.allocate(&req).await.unwrap();
    assert_eq!((d.epoch, &d), (e.epoch, &e));
    assert_eq!(reg.get("s1").await.unwrap().worlds, 3);
}

async fn no_capacity_and_unknown_fleet_are_distinct_errors(reg: Arc<dyn Registry>) {
    ready(&reg, "s1", "eu", 1).await;
    reg.allocate(&alloc(&[])).await.unwrap();
    let err = reg.allocate(&alloc(&[])).await.unwrap_err();
    assert!(matches!(err, RegistryError::NoCapacity(_)), "{err}");
    let mut other = alloc(&[]);
    other.fleet = "arena".into();
    assert_eq!(reg.allocate(&other).await.unwrap_err(), RegistryError::FleetNotFound("arena".into()));
    other.world_id = Some("w1".into());
    assert_eq!(reg.allocate(&other).await.unwrap_err(), RegistryError::FleetNotFound("arena".into()));
}

/// `gaia.dev/template` decides which servers a rolling update replaces: whoever can
/// allocate must not be able to set it (nor any `gaia.dev/` or `agones.dev/` key).
async fn system_label_domains_cannot_be_set_by_allocations_or_the_sdk(reg: Arc<dyn Registry>) {
    let mut server = GameServer::scheduled("a", common::FLEET, "eu", 2, 100);
    server.labels = labels(&[("gaia.dev/template", "v1")]);
    ready_server(&reg, server).await;
    for (field, metadata) in [
        (
            "metadata.labels",
            AllocationMetadata { labels: labels(&[("gaia.dev/template", "v2")]), ..Default::default() },
        ),
        (
            "metadata.labels",
            AllocationMetadata { labels: labels(&[("ok", "1"), ("x.agones.dev/y", "1")]), ..Default::default() },
        ),
        (
            "metadata.annotations",
            AllocationMetadata { annotations: labels(&[("GAIA.DEV/a", "1")]), ..Default::default() },
        ),
    ] {
        let req = AllocationRequest { metadata, ..alloc(&[]) };
        match reg.allocate(&req).await {
            Err(RegistryError::Invalid(e)) => assert_eq!(e.field, field, "{e}"),
            other => panic!("{req:?}: expected Invalid, got {other:?}"),
        }
    }
    match reg.set_label("a", "gaia.dev/template", "v2").await {
        Err(RegistryError::Invalid(e)) => assert!(e.message.contains("gaia.dev/template"), "{e}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    // Nothing was taken or changed.
    let a = reg.get("a").await.unwrap();
    assert_eq!((a.worlds, a.labels.clone()), (0, labels(&[("gaia.dev/template", "v1")])), "{a:?}");
    assert!(a.annotations.is_empty(), "{a:?}");
}

async fn metadata_labels_and_annotations_land_on_the_chosen_server(reg: Arc<dyn Registry>) {
    ready(&reg, "a", "eu", 2).await;
    ready(&reg, "b", "eu", 2).await;
    let with = |m: &str| AllocationRequest {
        metadata: AllocationMetadata {
            labels: labels(&[("match", m)]),
            annotations: labels(&[("note", &format!("for {m}"))]),
        },
        ..alloc(&[])
    };
    let p = reg.allocate(&with("m1")).await.unwrap();
    assert_eq!(p.server.name, "a");
    assert_eq!(p.server.labels, labels(&[("match", "m1")]), "the placement shows the labels");
    assert_eq!(p.server.annotations, labels(&[("note", "for m1")]));
    let a = reg.get("a").await.unwrap();
    assert_eq!((a.labels, a.annotations), (labels(&[("match", "m1")]), labels(&[("note", "for m1")])));
    let b = reg.get("b").await.unwrap();
    assert!(b.labels.is_empty() && b.annotations.is_empty(), "{b:?}");

    // Packed goes to a again: the new values replace the old.
    let p = reg.allocate(&with("m2")).await.unwrap();
    assert_eq!(p.server.name, "a");
    let a = reg.get("a").await.unwrap();
    assert_eq!((a.labels, a.annotations), (labels(&[("match", "m2")]), labels(&[("note", "for m2")])));
    // Labels set by an allocation are matched like any other: a is full, so none matches.
    assert_eq!(pick_with(&reg, Strategy::Packed, vec![match_labels(&[("match", "m2")])]).await, None);
    reg.world_ended("a", &p.world_id).await.unwrap();
    assert_eq!(pick_with(&reg, Strategy::Distributed, vec![match_labels(&[("match", "m2")])]).await, some("a"));
}

// ---------------------------------------------------------------------------------------
// Lifecycle.

async fn illegal_transitions_are_refused(reg: Arc<dyn Registry>) {
    reg.schedule(GameServer::scheduled("s1", FLEET, "eu", 1, 1)).await.unwrap();
    let err = reg.transition("s1", Draining).await.unwrap_err();
    assert!(matches!(err, RegistryError::IllegalTransition(_)), "{err}");
    assert_eq!(reg.get("s1").await.unwrap().state, Scheduled, "a refused move changes nothing");
    reg.transition("s1", Shutdown).await.unwrap();
    let err = reg.transition("s1", Ready).await.unwrap_err();
    assert!(matches!(err, RegistryError::IllegalTransition(_)), "{err}");
    assert!(matches!(reg.health("s1").await, Err(RegistryError::Conflict(_))));
    assert_eq!(reg.transition("nope", Ready).await.unwrap_err(), RegistryError::NotFound("nope".into()));
    assert_eq!(reg.get("nope").await.unwrap_err(), RegistryError::NotFound("nope".into()));
    assert_eq!(reg.health("nope").await.unwrap_err(), RegistryError::NotFound("nope".into()));
}

async fn register_must_match_the_scheduled_record_or_creates_one(reg: Arc<dyn Registry>) {
    let scheduled = GameServer::scheduled("s1", FLEET, "eu", 1, 1);
    reg.schedule(scheduled.clone()).await.unwrap();
    let wrong_region = RegisterRequest { region: "us".into(), ..register_request(&scheduled) };
    let err = reg.register("s1", wrong_region).await.unwrap_err();
    assert!(matches!(err, RegistryError::Conflict(_)), "{err}");
    let wrong_fleet = RegisterRequest { fleet: "arena".into(), ..register_request(&scheduled) };
    let err = reg.register("s1", wrong_fleet).await.unwrap_err();
    assert!(matches!(err, RegistryError::Conflict(_)), "{err}");
    assert_eq!(reg.get("s1").await.unwrap().address, None, "a refused register changes nothing");
    assert_eq!(reg.schedule(scheduled.clone()).await.unwrap_err(), RegistryError::AlreadyExists("s1".into()));

    // A server started by hand registers without a schedule: its record is created.
    let by_hand = GameServer::scheduled("hand", FLEET, "us", 3, 50);
    let mut req = register_request(&by_hand);
    req.labels = labels(&[("mode", "ranked")]);
    let record = reg.register("hand", req).await.unwrap();
    assert_eq!(
        (record.fleet.as_str(), record.region.as_str(), record.state, record.world_capacity, record.player_capacity),
        (FLEET, "us", Scheduled, 3, 50)
    );
    assert_eq!(record.address.as_deref(), Some("ws://127.0.0.1:1/hand"));
    assert_eq!(record.labels, labels(&[("mode", "ranked")]));
    reg.transition("hand", Ready).await.unwrap();
    assert_eq!(take(&reg, &alloc(&[])).await, some("hand"));
}

async fn retire_takes_only_idle_servers(reg: Arc<dyn Registry>) {
    ready(&reg, "busy", "eu", 1).await;
    ready(&reg, "idle", "eu", 1).await;
    reg.schedule(GameServer::scheduled("fresh", FLEET, "eu", 1, 1)).await.unwrap();
    let p = reg.allocate(&alloc(&[])).await.unwrap();
    assert_eq!(p.server.name, "busy");
    let err = reg.retire("busy").await.unwrap_err();
    assert!(matches!(err, RegistryError::Conflict(_)), "{err}");
    assert_eq!(reg.get("busy").await.unwrap().state, Allocated);
    assert_eq!(reg.retire("idle").await.unwrap().state, Shutdown);
    assert_eq!(reg.retire("fresh").await.unwrap().state, Shutdown);
    // A retired server takes no more worlds, and retiring twice is refused.
    assert!(matches!(reg.allocate(&alloc(&[])).await, Err(RegistryError::NoCapacity(_))));
    assert!(reg.retire("fresh").await.is_err());
    assert_eq!(reg.retire("nope").await.unwrap_err(), RegistryError::NotFound("nope".into()));
    // Nor is a Draining one retired, even when idle.
    ready(&reg, "leaving", "eu", 1).await;
    reg.transition("leaving", Draining).await.unwrap();
    assert!(matches!(reg.retire("leaving").await, Err(RegistryError::Conflict(_))));
    assert_eq!(reg.get("leaving").await.unwrap().state, Draining);
}

async fn draining_reserved_unregistered_and_terminal_servers_are_never_chosen(reg: Arc<dyn Registry>) {
    // Named to sort first, so a tie on name would pick them if they were candidates.
    ready(&reg, "a-draining", "eu", 2).await;
    reg.transition("a-draining", Draining).await.unwrap();
    ready(&reg, "b-reserved", "eu", 2).await;
    reg.transition("b-reserved", Reserved).await.unwrap();
    reg.schedule(GameServer::scheduled("c-unregistered", FLEET, "eu", 2, 100)).await.unwrap();
    assert_eq!(reg.transition("c-unregistered", Ready).await.unwrap().address, None);
    let scheduled = GameServer::scheduled("d-scheduled", FLEET, "eu", 2, 100);
    reg.schedule(scheduled.clone()).await.unwrap();
    reg.register("d-scheduled", register_request(&scheduled)).await.unwrap();
    ready(&reg, "e-unhealthy", "eu", 2).await;
    reg.transition("e-unhealthy", Unhealthy).await.unwrap();
    ready(&reg, "f-shutdown", "eu", 2).await;
    reg.retire("f-shutdown").await.unwrap();

    for strategy in [Strategy::Packed, Strategy::Distributed] {
        assert_eq!(pick_with(&reg, strategy, vec![]).await, None, "{strategy:?}");
        let any_state = vec![Selector { game_server_state: Some(Ready), ..Default::default() }];
        assert_eq!(pick_with(&reg, strategy, any_state).await, None, "{strategy:?}");
    }
    ready(&reg, "z-ready", "eu", 2).await;
    let distributed = AllocationRequest { strategy: Strategy::Distributed, ..alloc(&[]) };
    assert_eq!(take(&reg, &distributed).await, some("z-ready"));
    assert_eq!(take(&reg, &alloc(&[])).await, some("z-ready"));
    assert_eq!(take(&reg, &distributed).await, None);
    for s in reg.list(Some(FLEET)).await.unwrap() {
        let want = if s.name == "z-ready" { 2 } else { 0 };
        assert_eq!(s.worlds, want, "{}", s.name);
    }
    // A reserved server made Ready again is a candidate again.
    reg.transition("b-reserved", Ready).await.unwrap();
    assert_eq!(take(&reg, &alloc(&[])).await, some("b-reserved"));
}

async fn events_report_allocations_releases_and_state_changes(reg: Arc<dyn Registry>) {
    let mut events = reg.subscribe();
    ready(&reg, "s1", "eu", 1).await;
    let changed =
        |state| RegistryEvent::StateChanged { name: "s1".into(), fleet: FLEET.into(), region: "eu".into(), state };
    expect_events(&mut events, &[changed(Scheduled), changed(Ready)]).await;
    let p = reg.allocate(&alloc(&[])).await.unwrap();
    expect_events(
        &mut events,
        &[RegistryEvent::Allocated { fleet: FLEET.into(), region: "eu".into() }, changed(Allocated)],
    )
    .await;
    reg.world_ended("s1", &p.world_id).await.unwrap();
    expect_events(&mut events, &[RegistryEvent::Released { fleet: FLEET.into(), region: "eu".into() }, changed(Ready)])
        .await;
    reg.report_unmet(FLEET, Some("us")).await.unwrap();
    reg.report_unmet(FLEET, None).await.unwrap();
    expect_events(
        &mut events,
        &[
            RegistryEvent::Unmet { fleet: FLEET.into(), region: Some("us".into()) },
            RegistryEvent::Unmet { fleet: FLEET.into(), region: None },
        ],
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// Epochs and moves.

/// How far the backend's clock (Redis TIME) may be behind this host's.
const CLOCK_SKEW_MS: u64 = 1_000;

async fn each_assignment_bumps_the_epoch_and_joins_keep_it(reg: Arc<dyn Registry>) {
    ready(&reg, "s1", "eu", 2).await;
    let before = now_ms();
    let first = reg.allocate(&join("w1")).await.unwrap();
    // The wall clock is the floor, so a restarted registry never goes below itself.
    assert!(first.epoch + CLOCK_SKEW_MS >= before, "{} < {before}", first.epoch);
    assert_eq!(reg.allocate(&join("w1")).await.unwrap().epoch, first.epoch, "joining does not bump");

    // The world ends and is placed again at once (the same millisecond, likely): higher.
    reg.world_ended("s1", "w1").await.unwrap();
    let second = reg.allocate(&join("w1")).await.unwrap();
    assert!(second.epoch > first.epoch, "{} <= {}", second.epoch, first.epoch);
    // Epochs are per world: another world's assignment does not touch this one.
    reg.allocate(&join("w2")).await.unwrap();
    assert_eq!(reg.allocate(&join("w1")).await.unwrap().epoch, second.epoch);
}

async fn the_epoch_survives_the_world_being_freed_by_a_dead_server(reg: Arc<dyn Registry>) {
    ready(&reg, "s1", "eu", 1).await;
    ready(&reg, "s2", "eu", 1).await;
    let first = reg.allocate(&join("w1")).await.unwrap();
    reg.world_started(&first.server.name, "w1", first.epoch).await.unwrap();
    reg.transition(&first.server.name, Unhealthy).await.unwrap();
    reg.remove(&first.server.name).await.unwrap();
    assert_eq!(reg.get(&first.server.name).await.unwrap_err(), RegistryError::NotFound(first.server.name.clone()));
    let second = reg.allocate(&join("w1")).await.unwrap();
    assert_ne!(second.server.name, first.server.name);
    assert!(second.epoch > first.epoch, "{} <= {}", second.epoch, first.epoch);
}

async fn a_restarted_registry_takes_the_servers_epoch_and_goes_above_it(reg: Arc<dyn Registry>) {
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

async fn move_world_prefers_the_same_region_and_bumps_the_epoch(reg: Arc<dyn Registry>) {
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
    assert_eq!((a.state, a.worlds), (Ready, 0));
    assert_eq!((c.state, c.worlds), (Allocated, 1));
    expect_events(
        &mut events,
        &[
            RegistryEvent::Allocated { fleet: FLEET.into(), region: "eu".into() },
            RegistryEvent::Released { fleet: FLEET.into(), region: "eu".into() },
        ],
    )
    .await;

    // Joins go to the new server with the new epoch; the old server lost the world.
    let joined = reg.allocate(&join("w1")).await.unwrap();
    assert_eq!((joined.server.name.as_str(), joined.epoch), ("c-eu", moved.epoch));
    let err = reg.world_started("a-eu", "w1", placed.epoch).await.unwrap_err();
    assert!(matches!(err, RegistryError::Conflict(_)), "{err}");
    reg.world_started("c-eu", "w1", moved.epoch).await.unwrap();

    // No other eu server with room: any region.
    for _ in 0..3 {
        reg.allocate(&alloc(&["eu"])).await.unwrap();
    }
    assert_eq!((reg.get("a-eu").await.unwrap().worlds, reg.get("c-eu").await.unwrap().worlds), (2, 2));
    let moved_again = reg.move_world("c-eu", "w1").await.unwrap();
    assert_eq!(moved_again.server.name, "b-us");
    assert!(moved_again.epoch > moved.epoch);
    assert_eq!(reg.get("c-eu").await.unwrap().worlds, 1);
}

async fn worlds_says_which_server_holds_each_world(reg: Arc<dyn Registry>) {
    let hosted = |pairs: &[(&str, &str)]| -> Vec<HostedWorld> {
        pairs.iter().map(|(w, s)| HostedWorld { world_id: w.to_string(), server: s.to_string() }).collect()
    };
    assert_eq!(reg.worlds(Some(FLEET)).await.unwrap(), vec![]);
    ready(&reg, "a-eu", "eu", 2).await;
    ready(&reg, "b-us", "us", 2).await;
    let w2 = reg.allocate(&AllocationRequest { regions: vec!["us".into()], ..join("w2") }).await.unwrap();
    let w1 = reg.allocate(&AllocationRequest { regions: vec!["eu".into()], ..join("w1") }).await.unwrap();
    reg.world_started(&w1.server.name, "w1", w1.epoch).await.unwrap();
    // Leased (w2) and started (w1) alike, sorted by world id.
    assert_eq!(reg.worlds(Some(FLEET)).await.unwrap(), hosted(&[("w1", "a-eu"), ("w2", "b-us")]));
    assert_eq!(reg.worlds(None).await.unwrap(), hosted(&[("w1", "a-eu"), ("w2", "b-us")]));
    assert_eq!(reg.worlds(Some("elsewhere")).await.unwrap(), vec![]);
    // One world, looked up alone.
    assert_eq!(reg.world(FLEET, "w2").await.unwrap(), hosted(&[("w2", "b-us")]).pop());
    assert_eq!(reg.world(FLEET, "w3").await.unwrap(), None);
    assert_eq!(reg.world("elsewhere", "w1").await.unwrap(), None);

    reg.move_world("a-eu", "w1").await.unwrap();
    assert_eq!(reg.worlds(Some(FLEET)).await.unwrap(), hosted(&[("w1", "b-us"), ("w2", "b-us")]));
    assert_eq!(reg.world(FLEET, "w1").await.unwrap(), hosted(&[("w1", "b-us")]).pop());
    reg.world_ended(&w2.server.name, "w2").await.unwrap();
    assert_eq!(reg.worlds(Some(FLEET)).await.unwrap(), hosted(&[("w1", "b-us")]));
    // A server gone frees its worlds.
    reg.transition("b-us", Unhealthy).await.unwrap();
    assert_eq!(reg.worlds(Some(FLEET)).await.unwrap(), vec![]);
    assert_eq!(reg.world(FLEET, "w1").await.unwrap(), None);
}

async fn move_world_off_a_draining_server_and_its_errors(reg: Arc<dyn Registry>) {
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
    assert_eq!(reg.transition(from, Draining).await.unwrap().state, Draining);
    assert!(matches!(reg.allocate(&join("w1")).await, Err(RegistryError::NoCapacity(_))));
    let moved = reg.move_world(from, "w1").await.unwrap();
    assert_eq!(moved.server.name, to);
    let source = reg.get(from).await.unwrap();
    assert_eq!((source.state, source.worlds), (Draining, 0));
    assert_eq!(reg.allocate(&join("w1")).await.unwrap().server.name, to);

    // Nowhere left to go: the only other server is draining, and this one is full.
    let err = reg.move_world(to, "w1").await.unwrap_err();
    assert!(matches!(&err, RegistryError::NoCapacity(m) if m.contains("w1") && m.contains(FLEET)), "{err}");
    assert_eq!(reg.get(to).await.unwrap().worlds, 1, "a failed move keeps the world where it is");
    assert_eq!(reg.allocate(&join("w1")).await.unwrap().server.name, to);
}

async fn move_world_drops_idempotent_answers_that_point_at_the_old_server(reg: Arc<dyn Registry>) {
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

// ---------------------------------------------------------------------------------------
// Timers.

async fn unconfirmed_lease_expires_and_the_slot_returns(reg: Arc<dyn Registry>) {
    ready(&reg, "s1", "eu", 1).await;
    let p = reg.allocate(&alloc(&[])).await.unwrap();
    assert!(reg.sweep().await.unwrap().expired_leases.is_empty(), "the lease is young");
    assert!(matches!(reg.allocate(&alloc(&[])).await, Err(RegistryError::NoCapacity(_))), "the lease holds the slot");

    tokio::time::sleep(PAST_SHORT).await;
    let report = reg.sweep().await.unwrap();
    assert_eq!(report.expired_leases, vec![p.world_id.clone()]);
    let s1 = reg.get("s1").await.unwrap();
    assert_eq!((s1.state, s1.worlds, s1.free_world_slots()), (Ready, 0, 1));
    assert!(reg.sweep().await.unwrap().expired_leases.is_empty(), "expires once");
    // The slot is free again.
    assert_eq!(take(&reg, &alloc(&[])).await, some("s1"));
}

async fn world_started_confirms_the_lease_so_it_never_expires(reg: Arc<dyn Registry>) {
    ready(&reg, "s1", "eu", 2).await;
    let confirmed = reg.allocate(&alloc(&[])).await.unwrap();
    reg.world_started("s1", &confirmed.world_id, confirmed.epoch).await.unwrap();
    let unconfirmed = reg.allocate(&alloc(&[])).await.unwrap();

    tokio::time::sleep(PAST_SHORT).await;
    assert_eq!(reg.sweep().await.unwrap().expired_leases, vec![unconfirmed.world_id]);
    let s1 = reg.get("s1").await.unwrap();
    assert_eq!((s1.state, s1.worlds), (Allocated, 1));
    let joined = reg.allocate(&join(&confirmed.world_id)).await.unwrap();
    assert_eq!((joined.server.name.as_str(), joined.epoch), ("s1", confirmed.epoch));
    assert_eq!(joined.lease, None, "a join takes no new slot, so holds no lease");
}

async fn idempotent_retry_after_the_lease_expired_is_a_new_allocation(reg: Arc<dyn Registry>) {
    ready(&reg, "s1", "eu", 2).await;
    let mut req = alloc(&[]);
    req.idempotency_key = Some("match-1".into());
    let first = reg.allocate(&req).await.unwrap();
    tokio::time::sleep(SHORT / 3).await;
    assert_eq!(reg.allocate(&req).await.unwrap(), first, "within the lease: the same answer");
    assert_eq!(reg.get("s1").await.unwrap().worlds, 1);

    // Past the lease, even before a sweep has returned its slot: a new allocation, not an
    // answer whose lease is already dead.
    tokio::time::sleep(PAST_SHORT).await;
    let second = reg.allocate(&req).await.unwrap();
    assert_ne!(second.world_id, first.world_id);
    assert_ne!(second.lease.as_ref().unwrap().id, first.lease.as_ref().unwrap().id);
    assert_eq!(second.server.name, "s1");
    assert_eq!(reg.allocate(&req).await.unwrap(), second, "and the key now answers the new allocation");
    assert_eq!(reg.sweep().await.unwrap().expired_leases, vec![first.world_id.clone()]);
    assert_eq!(reg.get("s1").await.unwrap().worlds, 1, "the expired slot came back, the new one is taken");
}

/// The answer a key gives belongs to the allocation it made last: the world of an older
/// allocation under the same key going away (its lease swept, or ended) leaves it alone.
async fn a_reused_idempotency_key_keeps_its_new_answer_when_the_old_world_goes(reg: Arc<dyn Registry>) {
    ready(&reg, "s1", "eu", 4).await;
    let mut req = alloc(&[]);
    req.idempotency_key = Some("expired".into());
    let first = reg.allocate(&req).await.unwrap();
    tokio::time::sleep(PAST_SHORT).await;
    let second = reg.allocate(&req).await.unwrap();
    assert_ne!(second.world_id, first.world_id);
    assert_eq!(reg.sweep().await.unwrap().expired_leases, vec![first.world_id.clone()]);
    assert_eq!(reg.allocate(&req).await.unwrap(), second, "the sweep of the old lease dropped the new answer");
    assert_eq!(reg.get("s1").await.unwrap().worlds, 1);

    // The same with a world that started (no lease to sweep) and ends later.
    req.idempotency_key = Some("ended".into());
    let started = reg.allocate(&req).await.unwrap();
    reg.world_started("s1", &started.world_id, started.epoch).await.unwrap();
    tokio::time::sleep(PAST_SHORT).await;
    let again = reg.allocate(&req).await.unwrap();
    assert_ne!(again.world_id, started.world_id, "the key's answer lives as long as the lease");
    reg.world_ended("s1", &started.world_id).await.unwrap();
    assert_eq!(reg.allocate(&req).await.unwrap(), again, "ending the old world dropped the new answer");
    assert_eq!(reg.get("s1").await.unwrap().worlds, 2, "second and again");
}

async fn world_started_after_an_expired_lease_is_fenced_by_the_epoch(reg: Arc<dyn Registry>) {
    ready(&reg, "s1", "eu", 2).await;
    ready(&reg, "s2", "us", 2).await;
    let first = reg.allocate(&join("w1")).await.unwrap();
    let s = first.server.name.clone();
    tokio::time::sleep(PAST_SHORT).await;
    assert_eq!(reg.sweep().await.unwrap().expired_leases, vec!["w1".to_string()]);
    assert_eq!(reg.get(&s).await.unwrap().worlds, 0);

    // The first player arrives late, with the placement's epoch: the world is taken back.
    reg.world_started(&s, "w1", first.epoch).await.unwrap();
    assert_eq!(reg.get(&s).await.unwrap().worlds, 1);
    assert_eq!(reg.allocate(&join("w1")).await.unwrap().server.name, s);

    // Ended, and placed anew elsewhere meanwhile: the late start is a conflict.
    reg.world_ended(&s, "w1").await.unwrap();
    let second = reg.allocate(&AllocationRequest { regions: vec!["us".into()], ..join("w1") }).await.unwrap();
    assert_eq!(second.server.name, "s2");
    let err = reg.world_started(&s, "w1", first.epoch).await.unwrap_err();
    assert!(matches!(err, RegistryError::Conflict(_)), "{err}");

    // Placed anew and freed again: recorded nowhere, but an old epoch has moved on.
    reg.world_ended("s2", "w1").await.unwrap();
    let err = reg.world_started(&s, "w1", first.epoch).await.unwrap_err();
    assert!(matches!(err, RegistryError::Conflict(_)), "{err}");
    assert_eq!(reg.get(&s).await.unwrap().worlds, 0);
    // The current epoch may start it.
    reg.world_started(&s, "w1", second.epoch).await.unwrap();
    assert_eq!(reg.get(&s).await.unwrap().worlds, 1);
}

async fn an_unconfirmed_move_expires_like_an_allocation(reg: Arc<dyn Registry>) {
    ready(&reg, "s1", "eu", 1).await;
    ready(&reg, "s2", "eu", 1).await;
    let placed = reg.allocate(&join("w1")).await.unwrap();
    reg.world_started(&placed.server.name, "w1", placed.epoch).await.unwrap();
    let moved = reg.move_world(&placed.server.name, "w1").await.unwrap();
    tokio::time::sleep(PAST_SHORT).await;
    assert_eq!(reg.sweep().await.unwrap().expired_leases, vec!["w1".to_string()]);
    assert_eq!(reg.get(&moved.server.name).await.unwrap().worlds, 0);
    assert_eq!(reg.get(&placed.server.name).await.unwrap().worlds, 0);
    // The epoch outlives it: the next placement goes above the move's.
    assert!(reg.allocate(&join("w1")).await.unwrap().epoch > moved.epoch);
}

async fn silent_server_goes_unhealthy_and_its_worlds_are_freed(reg: Arc<dyn Registry>) {
    // Unhealthy one second after the last ping; no grace (the timeout's unit is seconds).
    let health = HealthSpec { period_seconds: 1, failure_threshold: 1, initial_delay_seconds: 0 };
    for name in ["a-silent", "b-pinging"] {
        ready_server(&reg, GameServer { health, ..GameServer::scheduled(name, FLEET, "eu", 2, 100) }).await;
    }
    let p = reg.allocate(&join("w1")).await.unwrap();
    assert_eq!(p.server.name, "a-silent");
    reg.world_started("a-silent", "w1", p.epoch).await.unwrap();
    assert!(reg.sweep().await.unwrap().unhealthy.is_empty());

    tokio::time::sleep(Duration::from_millis(600)).await;
    reg.health("b-pinging").await.unwrap();
    tokio::time::sleep(Duration::from_millis(550)).await;
    assert_eq!(reg.sweep().await.unwrap().unhealthy, vec!["a-silent".to_string()]);
    let silent = reg.get("a-silent").await.unwrap();
    assert_eq!((silent.state, silent.worlds), (Unhealthy, 0));
    assert!(matches!(reg.health("a-silent").await, Err(RegistryError::Conflict(_))), "too late to ping");
    assert_eq!(reg.get("b-pinging").await.unwrap().state, Ready);
    // Its world is no longer placed there: a join for it takes a new slot, at a new epoch.
    let moved = reg.allocate(&join("w1")).await.unwrap();
    assert_eq!(moved.server.name, "b-pinging");
    assert!(moved.epoch > p.epoch);
}

async fn terminal_records_are_removed_after_the_tombstone_time(reg: Arc<dyn Registry>) {
    ready(&reg, "s1", "eu", 1).await;
    ready(&reg, "s2", "eu", 1).await;
    reg.retire("s1").await.unwrap();
    assert!(reg.sweep().await.unwrap().removed.is_empty(), "the tombstone is young");
    assert_eq!(reg.get("s1").await.unwrap().state, Shutdown);

    tokio::time::sleep(PAST_SHORT).await;
    assert_eq!(reg.sweep().await.unwrap().removed, vec!["s1".to_string()]);
    assert_eq!(reg.get("s1").await.unwrap_err(), RegistryError::NotFound("s1".into()));
    let names: Vec<String> = reg.list(Some(FLEET)).await.unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["s2"]);
    // The name is free again.
    ready(&reg, "s1", "eu", 1).await;
}

// ---------------------------------------------------------------------------------------
// Selectors. `trio` servers are empty, so Distributed with no selector picks "a" (name).

async fn trio(reg: &Arc<dyn Registry>) {
    ready_labelled(reg, "a", 4, &[("mode", "ranked"), ("tier", "gold")]).await;
    ready_labelled(reg, "b", 4, &[("mode", "casual")]).await;
    ready_labelled(reg, "c", 4, &[("note", "spare")]).await;
    assert_eq!(pick_with(reg, Strategy::Distributed, vec![]).await, some("a"));
}

async fn by(reg: &Arc<dyn Registry>, selector: Selector) -> Option<String> {
    pick_with(reg, Strategy::Distributed, vec![selector]).await
}

async fn selector_match_labels_require_every_pair(reg: Arc<dyn Registry>) {
    trio(&reg).await;
    assert_eq!(by(&reg, match_labels(&[("mode", "casual")])).await, some("b"));
    assert_eq!(by(&reg, match_labels(&[("note", "spare")])).await, some("c"));
    assert_eq!(by(&reg, match_labels(&[("mode", "ranked"), ("tier", "gold")])).await, some("a"));
    assert_eq!(by(&reg, match_labels(&[("mode", "ranked"), ("tier", "silver")])).await, None);
    assert_eq!(by(&reg, match_labels(&[("mode", "casual"), ("tier", "gold")])).await, None);
    // A label set later (SDK set_label) is matched.
    reg.set_label("b", "tier", "gold").await.unwrap();
    assert_eq!(by(&reg, match_labels(&[("mode", "casual"), ("tier", "gold")])).await, some("b"));
}

async fn selector_in_matches_any_listed_value(reg: Arc<dyn Registry>) {
    use Operator::In;
    trio(&reg).await;
    assert_eq!(by(&reg, expression("mode", In, &["casual"])).await, some("b"));
    assert_eq!(by(&reg, expression("mode", In, &["x", "casual", "ranked"])).await, some("a"));
    assert_eq!(by(&reg, expression("note", In, &["spare"])).await, some("c"));
    assert_eq!(by(&reg, expression("mode", In, &["x"])).await, None);
    assert_eq!(by(&reg, expression("missing", In, &["ranked"])).await, None);
}

async fn selector_not_in_admits_other_values_and_unset_labels(reg: Arc<dyn Registry>) {
    use Operator::NotIn;
    trio(&reg).await;
    assert_eq!(by(&reg, expression("mode", NotIn, &["ranked"])).await, some("b"));
    assert_eq!(by(&reg, expression("mode", NotIn, &["ranked", "casual"])).await, some("c"), "unset passes");
    assert_eq!(by(&reg, expression("note", NotIn, &["spare"])).await, some("a"));
    let none_left = expressions(&[("mode", NotIn, &["ranked", "casual"]), ("note", NotIn, &["spare"])]);
    assert_eq!(by(&reg, none_left).await, None);
}

async fn selector_exists_requires_the_key(reg: Arc<dyn Registry>) {
    use Operator::{Exists, NotIn};
    trio(&reg).await;
    assert_eq!(by(&reg, expression("note", Exists, &[])).await, some("c"));
    assert_eq!(by(&reg, expression("tier", Exists, &[])).await, some("a"));
    assert_eq!(by(&reg, expressions(&[("mode", Exists, &[]), ("tier", NotIn, &["gold"])])).await, some("b"));
    assert_eq!(by(&reg, expression("missing", Exists, &[])).await, None);
}

async fn selector_does_not_exist_requires_the_key_unset(reg: Arc<dyn Registry>) {
    use Operator::DoesNotExist;
    trio(&reg).await;
    assert_eq!(by(&reg, expression("mode", DoesNotExist, &[])).await, some("c"));
    assert_eq!(by(&reg, expression("tier", DoesNotExist, &[])).await, some("b"));
    assert_eq!(by(&reg, expression("note", DoesNotExist, &[])).await, some("a"));
    assert_eq!(by(&reg, expressions(&[("mode", DoesNotExist, &[]), ("note", DoesNotExist, &[])])).await, None);
}

async fn selector_game_server_state_picks_ready_or_allocated(reg: Arc<dyn Registry>) {
    ready(&reg, "a", "eu", 4).await;
    ready(&reg, "b", "eu", 4).await;
    let state = |s| vec![Selector { game_server_state: Some(s), ..Default::default() }];
    // Both Ready: Allocated matches nothing.
    assert_eq!(pick_with(&reg, Strategy::Packed, state(Allocated)).await, None);
    fill(&reg, "a", 1).await;
    assert_eq!(reg.get("a").await.unwrap().state, Allocated);
    assert_eq!(pick_with(&reg, Strategy::Packed, vec![]).await, some("a"));
    assert_eq!(pick_with(&reg, Strategy::Packed, state(Ready)).await, some("b"));
    assert_eq!(pick_with(&reg, Strategy::Packed, state(Allocated)).await, some("a"));
    assert_eq!(pick_with(&reg, Strategy::Distributed, vec![]).await, some("b"));
    assert_eq!(pick_with(&reg, Strategy::Distributed, state(Allocated)).await, some("a"));
    assert_eq!(pick_with(&reg, Strategy::Distributed, state(Ready)).await, some("b"));
}

async fn selector_min_free_worlds_skips_fuller_servers(reg: Arc<dyn Registry>) {
    for (name, worlds) in [("a", 3), ("b", 1), ("c", 0)] {
        ready(&reg, name, "eu", 4).await;
        fill(&reg, name, worlds).await;
    }
    let min = |n| vec![Selector { min_free_worlds: Some(n), ..Default::default() }];
    assert_eq!(pick_with(&reg, Strategy::Packed, vec![]).await, some("a"));
    assert_eq!(pick_with(&reg, Strategy::Packed, min(1)).await, some("a"));
    assert_eq!(pick_with(&reg, Strategy::Packed, min(2)).await, some("b"));
    assert_eq!(pick_with(&reg, Strategy::Packed, min(3)).await, some("b"));
    assert_eq!(pick_with(&reg, Strategy::Packed, min(4)).await, some("c"));
    assert_eq!(pick_with(&reg, Strategy::Packed, min(5)).await, None);
}

async fn selector_min_free_players_skips_crowded_servers(reg: Arc<dyn Registry>) {
    for (name, players) in [("a", 90), ("b", 50), ("c", 0)] {
        ready(&reg, name, "eu", 4).await; // 100 players each
        reg.set_players(name, players).await.unwrap();
    }
    assert_eq!(reg.get("a").await.unwrap().players, 90);
    let min = |n| vec![Selector { min_free_players: Some(n), ..Default::default() }];
    assert_eq!(pick_with(&reg, Strategy::Packed, vec![]).await, some("a"));
    assert_eq!(pick_with(&reg, Strategy::Packed, min(10)).await, some("a"));
    assert_eq!(pick_with(&reg, Strategy::Packed, min(11)).await, some("b"));
    assert_eq!(pick_with(&reg, Strategy::Packed, min(50)).await, some("b"));
    assert_eq!(pick_with(&reg, Strategy::Packed, min(51)).await, some("c"));
    assert_eq!(pick_with(&reg, Strategy::Packed, min(101)).await, None);
    // A new count is taken into account.
    reg.set_players("a", 0).await.unwrap();
    assert_eq!(pick_with(&reg, Strategy::Packed, min(100)).await, some("a"));
}

async fn selectors_fall_back_in_order_within_each_region(reg: Arc<dyn Registry>) {
    ready_labelled(&reg, "a", 4, &[("mode", "casual")]).await;
    fill(&reg, "a", 2).await;
    ready_labelled(&reg, "b", 4, &[("mode", "ranked")]).await;
    ready_labelled(&reg, "c", 4, &[]).await;
    fill(&reg, "c", 3).await;
    let mut us = GameServer::scheduled("d", FLEET, "us", 4, 100);
    us.labels = labels(&[("mode", "casual")]);
    ready_server(&reg, us).await;

    let packed = |selectors| AllocationRequest { selectors, ..alloc(&[]) };
    let tournament = match_labels(&[("mode", "tournament")]);
    let ranked = match_labels(&[("mode", "ranked")]);
    let casual = match_labels(&[("mode", "casual")]);
    // The first selector matches nothing: the second decides.
    assert_eq!(pick(&reg, &packed(vec![tournament.clone(), ranked.clone()])).await, some("b"));
    assert_eq!(pick(&reg, &packed(vec![tournament.clone(), Selector::default()])).await, some("c"));
    // The first that matches decides, though the strategy would prefer a fuller server.
    assert_eq!(pick(&reg, &packed(vec![ranked.clone(), casual.clone()])).await, some("b"));
    assert_eq!(pick(&reg, &packed(vec![casual.clone(), ranked.clone()])).await, some("a"));
    // A selector that matches labels but not room falls through too.
    let roomy_casual = Selector { min_free_worlds: Some(3), ..casual.clone() };
    assert_eq!(pick(&reg, &packed(vec![roomy_casual.clone(), ranked.clone()])).await, some("d"));
    assert_eq!(
        pick(&reg, &AllocationRequest { regions: vec!["eu".into()], ..packed(vec![roomy_casual, ranked.clone()]) })
            .await,
        some("b")
    );
    assert_eq!(pick(&reg, &packed(vec![tournament, match_labels(&[("mode", "x")])])).await, None);
    // Regions come first: every selector is tried in the first region before the next.
    let in_us_first =
        AllocationRequest { regions: vec!["us".into(), "eu".into()], ..packed(vec![ranked, Selector::default()]) };
    assert_eq!(pick(&reg, &in_us_first).await, some("d"));
}

// ---------------------------------------------------------------------------------------
// Strategies, priorities, regions.

/// a 1/4, b 3/4, c 4/4 (full), d 0/4.
async fn four_servers(reg: &Arc<dyn Registry>) {
    for (name, worlds) in [("a", 1), ("b", 3), ("c", 4), ("d", 0)] {
        ready(reg, name, "eu", 4).await;
        fill(reg, name, worlds).await;
    }
}

/// Allocates `req` until NoCapacity: the servers chosen, in order.
async fn take_all(reg: &Arc<dyn Registry>, req: &AllocationRequest) -> Vec<String> {
    let mut chosen = Vec::new();
    while let Some(name) = take(reg, req).await {
        chosen.push(name);
        assert!(chosen.len() <= 1000, "never runs out: {chosen:?}");
    }
    chosen
}

async fn packed_fills_the_fullest_server_that_fits(reg: Arc<dyn Registry>) {
    four_servers(&reg).await;
    let packed = AllocationRequest { strategy: Strategy::Packed, ..alloc(&[]) };
    assert_eq!(take_all(&reg, &packed).await, ["b", "a", "a", "a", "d", "d", "d", "d"]);
}

async fn distributed_fills_the_emptiest_server(reg: Arc<dyn Registry>) {
    four_servers(&reg).await;
    let distributed = AllocationRequest { strategy: Strategy::Distributed, ..alloc(&[]) };
    assert_eq!(take_all(&reg, &distributed).await, ["d", "a", "d", "a", "d", "a", "b", "d"]);
}

async fn ties_go_to_the_smaller_name(reg: Arc<dyn Registry>) {
    for name in ["c", "a", "b"] {
        ready(&reg, name, "eu", 2).await;
    }
    let distributed = AllocationRequest { strategy: Strategy::Distributed, ..alloc(&[]) };
    let mut worlds = Vec::new();
    for want in ["a", "b", "c", "a", "b", "c"] {
        let p = reg.allocate(&distributed).await.unwrap();
        assert_eq!(p.server.name, want);
        worlds.push(p);
    }
    for p in worlds {
        reg.world_ended(&p.server.name, &p.world_id).await.unwrap();
    }
    assert_eq!(take_all(&reg, &alloc(&[])).await, ["a", "a", "b", "b", "c", "c"]);
}

async fn priorities_break_packed_ties_and_order_distributed(reg: Arc<dyn Registry>) {
    for (name, worlds, players) in [("a", 2, 10), ("b", 2, 5), ("c", 1, 1)] {
        ready(&reg, name, "eu", 4).await;
        fill(&reg, name, worlds).await;
        reg.set_players(name, players).await.unwrap();
    }
    let with =
        |strategy, key, order| AllocationRequest { strategy, priorities: vec![Priority { key, order }], ..alloc(&[]) };
    use {Order::*, PriorityKey::*, Strategy::*};
    // Without priorities: Packed takes the fullest (a, b: a by name), Distributed c.
    assert_eq!(pick(&reg, &alloc(&[])).await, some("a"));
    assert_eq!(pick_with(&reg, Distributed, vec![]).await, some("c"));
    // Packed: the fullest (a, b), then fewer players first, or more.
    assert_eq!(pick(&reg, &with(Packed, Players, Ascending)).await, some("b"));
    assert_eq!(pick(&reg, &with(Packed, Players, Descending)).await, some("a"));
    // Distributed: priorities outrank emptiness.
    assert_eq!(pick(&reg, &with(Distributed, Players, Ascending)).await, some("c"));
    assert_eq!(pick(&reg, &with(Distributed, Players, Descending)).await, some("a"));
    assert_eq!(pick(&reg, &with(Distributed, Worlds, Descending)).await, some("a"));
    // Priorities in order: worlds first (a, b), then players descending.
    let two = AllocationRequest {
        strategy: Distributed,
        priorities: vec![Priority { key: Worlds, order: Descending }, Priority { key: Players, order: Ascending }],
        ..alloc(&[])
    };
    assert_eq!(pick(&reg, &two).await, some("b"));
}

async fn regions_are_tried_in_order_and_unnamed_regions_never_used(reg: Arc<dyn Registry>) {
    // sa is in the fleet's spec but has no server.
    reg.declare_fleet(common::FLEET, &["sa".into()]).await.unwrap();
    ready(&reg, "eu-1", "eu", 2).await;
    ready(&reg, "us-1", "us", 2).await;
    ready(&reg, "ap-1", "ap", 1).await;
    fill(&reg, "ap-1", 1).await;
    assert_eq!(pick(&reg, &alloc(&["us", "eu"])).await, some("us-1"));
    assert_eq!(pick(&reg, &alloc(&["eu", "us"])).await, some("eu-1"));
    // ap is full: fall back to the next region named.
    assert_eq!(pick(&reg, &alloc(&["ap", "eu"])).await, some("eu-1"));
    assert_eq!(pick(&reg, &alloc(&["sa", "us"])).await, some("us-1"));
    // Only regions named are considered.
    assert_eq!(pick(&reg, &alloc(&["ap"])).await, None);
    assert_eq!(pick(&reg, &alloc(&["sa"])).await, None);
    assert_eq!(take_all(&reg, &alloc(&["eu"])).await, ["eu-1", "eu-1"], "us-1 has room but is not named");
    assert_eq!(reg.get("us-1").await.unwrap().worlds, 0);
    assert_eq!(take_all(&reg, &alloc(&["eu", "us"])).await, ["us-1", "us-1"]);
}

/// A region the fleet does not have can never get capacity: 400 naming it, not a wait.
/// Declared regions (from the spec) and those where a server was scheduled are known,
/// and a declared fleet with no server at all waits too (scale from zero).
async fn unknown_regions_are_refused_and_declared_ones_wait_for_capacity(reg: Arc<dyn Registry>) {
    let empty = AllocationRequest { fleet: "empty".into(), ..alloc(&[]) };
    assert!(matches!(reg.allocate(&empty).await, Err(RegistryError::FleetNotFound(_))));
    reg.declare_fleet("empty", &["eu".into()]).await.unwrap();
    assert!(matches!(reg.allocate(&empty).await, Err(RegistryError::NoCapacity(_))), "declared: waits");
    let empty_eu = AllocationRequest { regions: vec!["eu".into()], ..empty.clone() };
    assert!(matches!(reg.allocate(&empty_eu).await, Err(RegistryError::NoCapacity(_))));

    ready(&reg, "eu-1", "eu", 1).await;
    reg.declare_fleet(common::FLEET, &["us".into()]).await.unwrap();
    for (regions, field) in [(&["mars"][..], "regions[0]"), (&["eu", "us", "mars"], "regions[2]")] {
        match reg.allocate(&alloc(regions)).await {
            Err(RegistryError::Invalid(e)) => {
                assert_eq!(e.field, field, "{e}");
                assert!(e.message.contains("\"mars\""), "{e}");
            }
            other => panic!("{regions:?}: expected Invalid, got {other:?}"),
        }
    }
    // Nothing was taken; known regions still allocate, and wait when full.
    assert_eq!(reg.get("eu-1").await.unwrap().worlds, 0);
    assert!(matches!(reg.allocate(&alloc(&["us"])).await, Err(RegistryError::NoCapacity(_))));
    assert_eq!(pick(&reg, &alloc(&["us", "eu"])).await, some("eu-1"));
    // Declaring again adds and forgets nothing.
    reg.declare_fleet(common::FLEET, &[]).await.unwrap();
    assert!(matches!(reg.allocate(&alloc(&["us"])).await, Err(RegistryError::NoCapacity(_))));
}

// ---------------------------------------------------------------------------------------
// Under load.

/// 2,000 concurrent allocations against 1,200 slots (120 servers of 10, in two regions):
/// exactly 1,200 succeed, each slot once, and the other 800 are clean NoCapacity errors.
async fn concurrent_allocations_take_exactly_the_free_slots(reg: Arc<dyn Registry>) {
    const SERVERS: usize = 120;
    const CAPACITY: u32 = 10;
    const REQUESTS: usize = 2_000;
    for i in 0..SERVERS {
        ready(&reg, &format!("s{i:03}"), if i % 2 == 0 { "eu" } else { "us" }, CAPACITY).await;
    }
    let tasks: Vec<_> = (0..REQUESTS)
        .map(|i| {
            let reg = Arc::clone(&reg);
            tokio::spawn(async move {
                let regions: &[&str] = match i % 3 {
                    0 => &["eu", "us"],
                    1 => &["us", "eu"],
                    _ => &[],
                };
                let mut req = alloc(regions);
                req.strategy = if i % 2 == 0 { Strategy::Distributed } else { Strategy::Packed };
                reg.allocate(&req).await
            })
        })
        .collect();
    let mut worlds = HashSet::new();
    let mut per_server: HashMap<String, u32> = HashMap::new();
    let mut no_capacity = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(p) => {
                assert!(worlds.insert(p.world_id.clone()), "world {} handed out twice", p.world_id);
                *per_server.entry(p.server.name).or_default() += 1;
            }
            Err(RegistryError::NoCapacity(_)) => no_capacity += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    let slots = SERVERS * CAPACITY as usize;
    assert_eq!((worlds.len(), no_capacity), (slots, REQUESTS - slots));
    let servers = reg.list(Some(FLEET)).await.unwrap();
    assert_eq!(servers.len(), SERVERS);
    for s in servers {
        assert_eq!((s.worlds, s.state), (CAPACITY, Allocated), "{} over or under filled", s.name);
        assert_eq!(per_server.get(&s.name), Some(&CAPACITY), "placements on {}", s.name);
    }
}

/// A few hundred random operations (allocate, end worlds, drain, reserve, register, remove,
/// player counts); each allocation must pick what the reference `choose` picks from
/// `list()`, and at the end the fleet must take exactly the free slots of its open servers.
/// This guards the open-server index each backend keeps beside the records.
async fn random_operations_keep_allocation_in_step_with_the_records(reg: Arc<dyn Registry>) {
    const REGIONS: [&str; 3] = ["eu", "us", "ap"];
    const MODES: [Option<&str>; 3] = [Some("ranked"), Some("casual"), None];
    let mut rng = SmallRng::seed_from_u64(0x6a1a);
    let mut next = 0;
    let mut worlds: Vec<(String, String)> = Vec::new();
    let mut allocations = 0;
    // The fleet's spec names every region requests may ask for.
    reg.declare_fleet(FLEET, &REGION_POOL.map(String::from)).await.unwrap();

    async fn add(reg: &Arc<dyn Registry>, rng: &mut SmallRng, next: &mut usize) {
        let name = format!("s{next:03}");
        *next += 1;
        let mut server =
            GameServer::scheduled(&name, FLEET, *REGIONS.choose(rng).unwrap(), rng.random_range(1..=4), 100);
        if let Some(mode) = *MODES.choose(rng).unwrap() {
            server.labels = labels(&[("mode", mode)]);
        }
        match rng.random_range(0..10) {
            // Never registers: no address.
            0 => {
                reg.schedule(server).await.unwrap();
            }
            // Registers but is not Ready yet.
            1 => {
                reg.schedule(server.clone()).await.unwrap();
                reg.register(&name, register_request(&server)).await.unwrap();
            }
            // Started by hand: register creates the record.
            2 => {
                let mut req = register_request(&server);
                req.labels = server.labels;
                reg.register(&name, req).await.unwrap();
                reg.transition(&name, Ready).await.unwrap();
            }
            _ => {
                ready_server(reg, server).await;
            }
        }
    }

    for _ in 0..16 {
        add(&reg, &mut rng, &mut next).await;
    }
    for step in 0..500 {
        let servers = reg.list(Some(FLEET)).await.unwrap();
        let some_server = servers.choose(&mut rng).map(|s| s.name.clone());
        match rng.random_range(0..100) {
            0..45 => {
                let req = random_request(&mut rng);
                let want = choose(&servers, &req).map(|s| s.name.clone());
                match reg.allocate(&req).await {
                    Ok(p) => {
                        assert_eq!(Some(&p.server.name), want.as_ref(), "step {step}: {req:?}\n{servers:#?}");
                        worlds.push((p.server.name, p.world_id));
                        allocations += 1;
                    }
                    Err(RegistryError::NoCapacity(_)) => {
                        assert_eq!(want, None, "step {step}: {req:?}\n{servers:#?}");
                    }
                    Err(e) => panic!("step {step}: {e}"),
                }
            }
            45..65 if !worlds.is_empty() => {
                let (server, world) = worlds.swap_remove(rng.random_range(0..worlds.len()));
                match reg.world_ended(&server, &world).await {
                    Ok(()) | Err(RegistryError::NotFound(_)) => {}
                    Err(e) => panic!("step {step}: {e}"),
                }
            }
            65..72 => {
                let Some(name) = some_server else { continue };
                match reg.transition(&name, Draining).await {
                    Ok(_) | Err(RegistryError::IllegalTransition(_)) => {}
                    Err(e) => panic!("step {step}: {e}"),
                }
            }
            72..80 => {
                let Some(name) = some_server else { continue };
                let to = if rng.random_bool(0.5) { Reserved } else { Ready };
                match reg.transition(&name, to).await {
                    Ok(_) | Err(RegistryError::IllegalTransition(_)) => {}
                    Err(e) => panic!("step {step}: {e}"),
                }
            }
            80..90 => add(&reg, &mut rng, &mut next).await,
            90..95 => {
                let Some(name) = some_server else { continue };
                if rng.random_bool(0.5) {
                    reg.remove(&name).await.unwrap();
                } else {
                    // Terminal: its worlds are freed, the record stays.
                    match reg.transition(&name, Unhealthy).await {
                        Ok(_) | Err(RegistryError::IllegalTransition(_)) => {}
                        Err(e) => panic!("step {step}: {e}"),
                    }
                }
            }
            _ => {
                let Some(name) = some_server else { continue };
                reg.set_players(&name, rng.random_range(0..=100)).await.unwrap();
            }
        }
    }
    assert!(allocations > 50, "the run allocated too little to show anything: {allocations}");

    let servers = reg.list(Some(FLEET)).await.unwrap();
    let open = |s: &GameServer| s.state.is_allocatable() && s.address.is_some();
    let free: u32 = servers.iter().filter(|s| open(s)).map(GameServer::free_world_slots).sum();
    assert!(free > 0, "nothing left to check the index with");
    let distributed = AllocationRequest { strategy: Strategy::Distributed, ..alloc(&[]) };
    let taken = take_all(&reg, &distributed).await;
    assert_eq!(taken.len(), free as usize, "took {taken:?}\nfrom {servers:#?}");
    for s in reg.list(Some(FLEET)).await.unwrap() {
        if open(&s) {
            assert_eq!(s.free_world_slots(), 0, "{} still has room", s.name);
        }
    }
}

fn random_request(rng: &mut SmallRng) -> AllocationRequest {
    let mut regions: Vec<String> = Vec::new();
    for _ in 0..rng.random_range(0..=2) {
        let region = REGION_POOL.choose(rng).unwrap().to_string();
        if !regions.contains(&region) {
            regions.push(region);
        }
    }
    let mut selectors = Vec::new();
    for _ in 0..rng.random_range(0..=2) {
        selectors.push(match rng.random_range(0..5) {
            0 => match_labels(&[("mode", "ranked")]),
            1 => expression("mode", Operator::NotIn, &["ranked"]),
            2 => Selector {
                game_server_state: Some(if rng.random_bool(0.5) { Ready } else { Allocated }),
                ..Default::default()
            },
            3 => Selector { min_free_worlds: Some(rng.random_range(1..=3)), ..Default::default() },
            _ => Selector { min_free_players: Some(rng.random_range(0..=100)), ..Default::default() },
        });
    }
    let priorities = if rng.random_bool(0.3) {
        let key = if rng.random_bool(0.5) { PriorityKey::Players } else { PriorityKey::Worlds };
        let order = if rng.random_bool(0.5) { Order::Ascending } else { Order::Descending };
        vec![Priority { key, order }]
    } else {
        Vec::new()
    };
    AllocationRequest {
        regions,
        selectors,
        priorities,
        strategy: if rng.random_bool(0.5) { Strategy::Packed } else { Strategy::Distributed },
        ..alloc(&[])
    }
}

/// Regions requests name, one of which no server is in.
const REGION_POOL: [&str; 4] = ["eu", "us", "ap", "sa"];
