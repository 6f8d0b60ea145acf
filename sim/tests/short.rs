#![allow(clippy::unwrap_used)]
//! The short built-in scenario (30 simulated minutes), for both of its policies: the
//! invariants hold (a run stops at the first violation), runs are deterministic, and a
//! region scales to zero when its arrivals stop and comes back when they resume.

use std::sync::OnceLock;
use std::time::Duration;

use gaia_sim::{Policy, Report, Scenario, Sim};

fn scenario() -> Scenario {
    Scenario::built_in("short").unwrap()
}

fn policy(name: &str) -> Policy {
    scenario().policies.into_iter().find(|p| p.name == name).unwrap()
}

/// Each policy is run once and shared by the tests (debug builds are slow).
fn report(name: &'static str) -> &'static Report {
    static BUFFER: OnceLock<Report> = OnceLock::new();
    static ADAPTIVE: OnceLock<Report> = OnceLock::new();
    let cell = if name == "adaptive" { &ADAPTIVE } else { &BUFFER };
    cell.get_or_init(|| gaia_sim::run(&scenario(), &policy(name)).unwrap())
}

#[test]
fn both_policies_run_with_the_invariants_holding() {
    for name in ["buffer-4", "adaptive"] {
        let r = report(name);
        assert!(r.requests > 500, "{name}: {r:?}");
        assert_eq!(r.allocated + r.failed + r.unfinished, r.requests, "{name}: every request is accounted for");
        assert!(r.waited >= r.failed);
        assert!(r.server_hours > 0.0 && r.peak_servers > 0);
        assert_eq!(r.samples.len(), 180, "every 10 s for 30 min");
    }
}

#[test]
fn the_same_seed_gives_the_same_report() {
    let again = gaia_sim::run(&scenario(), &policy("adaptive")).unwrap();
    assert_eq!(&again, report("adaptive"));
    let mut other = scenario();
    other.seed += 1;
    assert_ne!(gaia_sim::run(&other, &policy("adaptive")).unwrap().requests, 0);
}

#[test]
fn skipping_plan_when_nothing_changed_changes_nothing() {
    let mut sim = Sim::new(&scenario(), &policy("adaptive")).unwrap();
    sim.plan_every_step(true);
    assert_eq!(&sim.run().unwrap(), report("adaptive"));
}

#[test]
fn a_region_scales_to_zero_when_arrivals_stop_and_comes_back() {
    let r = report("adaptive");
    // eu's arrivals stop from 10 to 20 minutes.
    let eu = |from: u64, to: u64| {
        r.samples
            .iter()
            .filter(move |s| (Duration::from_secs(from * 60)..Duration::from_secs(to * 60)).contains(&s.offset))
            .map(|s| s.regions[0])
    };
    assert!(eu(5, 10).all(|s| s.servers > 0 && s.demand > 0.0));
    assert!(eu(10, 20).all(|s| s.demand == 0.0));
    let zero: Vec<_> = eu(10, 20).filter(|s| s.servers == 0 && s.desired == 0).collect();
    assert!(!zero.is_empty(), "eu never reached zero servers: {:?}", eu(10, 20).collect::<Vec<_>>());
    assert!(eu(21, 30).all(|s| s.servers > 0 && s.used_worlds > 0), "eu came back");
    // us kept its trickle and its servers throughout.
    assert!(r.samples.iter().all(|s| s.regions[1].servers > 0));
    // A static buffer never goes to zero.
    assert!(report("buffer-4").samples.iter().all(|s| s.regions[0].servers > 0));
}
