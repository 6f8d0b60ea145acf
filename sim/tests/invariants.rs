#![allow(clippy::unwrap_used)]
//! The invariant checker catches what a broken controller or allocator would do: these
//! tests fail if `check_invariants` stops checking.

use std::collections::BTreeMap;

use gaia_api::gameserver::{GameServer, GameServerState};
use gaia_sim::{FLEET, Fault, Scenario, Sim, SimError, State, check_invariants};

fn server(name: &str, state: GameServerState, worlds: u32) -> GameServer {
    let mut s = GameServer::scheduled(name, FLEET, "eu", 4, 100);
    s.state = state;
    s.worlds = worlds;
    s
}

/// Two servers, one hosting worlds 1 and 2, desired 2 within [0, 3].
fn valid() -> State {
    State {
        step: 7,
        at_ms: 700,
        servers: vec![
            server("sim-eu-000001", GameServerState::Allocated, 2),
            server("sim-eu-000002", GameServerState::Ready, 0),
        ],
        worlds: BTreeMap::from([("sim-eu-000001".to_string(), vec![1, 2])]),
        placed: 3,
        ended: 1,
        moved: 0,
        desired: BTreeMap::from([((FLEET.to_string(), "eu".to_string()), 2)]),
        bounds: BTreeMap::from([("eu".to_string(), (0, 3))]),
    }
}

#[test]
fn a_consistent_state_passes() {
    check_invariants(&valid()).unwrap();
}

#[test]
fn a_removed_busy_server_is_caught_and_named() {
    let mut state = valid();
    state.servers.remove(0);
    let v = check_invariants(&state).unwrap_err();
    assert_eq!(v.server.as_deref(), Some("sim-eu-000001"));
    assert_eq!((v.step, v.at_ms), (7, 700));
    assert_eq!(v.to_string(), "step 7 (t=00:00:00.700), server sim-eu-000001: removed while hosting 2 world(s)");
}

#[test]
fn lost_worlds_and_broken_bounds_are_caught() {
    let mut lost = valid();
    lost.worlds.get_mut("sim-eu-000001").unwrap().pop();
    assert!(check_invariants(&lost).is_err(), "record and ledger disagree");
    lost.servers[0].worlds = 1;
    let v = check_invariants(&lost).unwrap_err();
    assert!(v.message.contains("world(s) lost"), "{v}");

    let mut over = valid();
    over.desired.insert((FLEET.to_string(), "eu".to_string()), 4);
    assert!(check_invariants(&over).unwrap_err().message.contains("outside the policy's [0, 3]"));

    let mut crowded = valid();
    crowded.bounds.insert("eu".to_string(), (0, 1));
    crowded.desired.insert((FLEET.to_string(), "eu".to_string()), 1);
    assert!(check_invariants(&crowded).unwrap_err().message.contains("2 live servers over maxReplicas 1"));

    let mut ready_with_worlds = valid();
    ready_with_worlds.servers[0].state = GameServerState::Ready;
    assert!(check_invariants(&ready_with_worlds).is_err());
}

#[test]
fn a_fault_injected_into_a_running_simulation_stops_it() {
    let scenario = Scenario::built_in("short").unwrap();
    let adaptive = scenario.policies.iter().find(|p| p.name == "adaptive").unwrap();
    let mut sim = Sim::new(&scenario, adaptive).unwrap();
    let busy = loop {
        sim.step().unwrap();
        if let Some(s) = sim.state().servers.iter().find(|s| s.worlds > 0) {
            break s.name.clone();
        }
    };
    sim.check().unwrap();
    sim.inject(Fault::RemoveServer(busy.clone()));
    match sim.check() {
        Err(SimError::Invariant { scenario, policy, violation }) => {
            assert_eq!((scenario.as_str(), policy.as_str()), ("short", "adaptive"));
            assert_eq!(violation.server.as_deref(), Some(busy.as_str()));
        }
        other => panic!("expected a violation, got {other:?}"),
    }
    assert!(sim.step().is_err(), "the next step stops too");
}
