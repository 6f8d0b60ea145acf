//! What the controller should do, as a pure function of what is wanted and what is seen.
//!
//! [`plan`] compares desired replicas with the registry's records and the child
//! processes this controller runs, and answers a list of [`Action`]s. The shell
//! ([`crate::run`]) executes them; nothing here does I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use gaia_api::fleet::{DesiredReplicas, FleetSpec, RollingUpdate, TEMPLATE_LABEL};
use gaia_api::gameserver::{GameServer, GameServerState};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// Schedule a new server of this fleet in this region and start its process.
    Start { fleet: String, region: String },
    /// Retire this idle server (atomically, in the registry) and ask its process to exit.
    Stop { name: String },
    /// Mark this server Draining: it moves its worlds to other servers, then exits.
    Drain { name: String },
    /// SIGKILL this child process: its record is terminal or gone, so it is hung or was
    /// given up on.
    Kill { name: String },
}

/// What one fleet's servers should run, and how fast old ones are replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    /// The template version servers must carry in [`TEMPLATE_LABEL`].
    pub version: String,
    pub strategy: RollingUpdate,
}

/// Rollouts by fleet name: the fleets [`plan`] may act on.
pub type Rollouts = BTreeMap<String, Rollout>;

/// The rollouts of embedded fleets.
pub fn rollouts(fleets: &[FleetSpec]) -> Rollouts {
    fleets
        .iter()
        .map(|f| (f.name.clone(), Rollout { version: f.template_version(), strategy: f.strategy.rolling_update }))
        .collect()
}

/// Whether scale-down may take this server: it hosts no world and is not held by its
/// SDK (Reserved), being drained, or allocated.
pub fn is_idle(server: &GameServer) -> bool {
    server.worlds == 0 && matches!(server.state, GameServerState::Scheduled | GameServerState::Ready)
}

/// The actions that bring the processes and records in line with `desired`.
///
/// - `observed` must hold every registry record of every fleet in `fleets` (a partial
///   read would make running children look recordless, and they would be killed).
/// - `running` names the child processes this controller runs that are alive and not
///   already being stopped or killed.
///
/// Rules, for each (fleet, region) pair present in `desired` whose fleet is in `rollouts`
/// (pairs missing from `desired` are left alone, not scaled to zero; pairs of unknown
/// fleets are ignored, there is no template to start):
/// - *live* servers are the records of that fleet and region whose state is not terminal
///   (Scheduled ones count: they are on their way);
/// - fewer live than desired: one `Start` per missing server;
/// - more live than desired: servers already Draining count as leaving; of the rest of
///   the excess, `Stop` idle servers ([`is_idle`]: no world, Scheduled or Ready),
///   Scheduled before Ready, then by name; then `Drain` Ready or Allocated servers that
///   host worlds, fewest worlds first, then by name: their worlds move to the servers
///   that stay. Reserved servers are never taken (their SDK holds them).
/// - a rolling update: servers whose [`TEMPLATE_LABEL`] is not the fleet's
///   [`Rollout::version`] are outdated. While any stays, the pair may have up to `surge`
///   servers more than desired ([`RollingUpdate::surge`], at most the outdated count):
///   new ones are started, and once none is still Scheduled the excess takes outdated
///   servers first (stopped if idle, drained if they host worlds), then the next are
///   started, until none is outdated.
///
/// And for every name in `running`: a terminal record, or none at all, gives `Kill`.
///
/// Actions come per pair in `desired`'s order (starts, then stops), kills last by name.
pub fn plan(
    rollouts: &Rollouts,
    desired: &DesiredReplicas,
    observed: &[GameServer],
    running: &BTreeSet<String>,
) -> Vec<Action> {
    let mut actions = Vec::new();
    for ((fleet, region), &want) in desired {
        let Some(rollout) = rollouts.get(fleet) else {
            continue;
        };
        let outdated = |s: &GameServer| s.labels.get(TEMPLATE_LABEL) != Some(&rollout.version);
        let live: Vec<&GameServer> =
            observed.iter().filter(|s| s.fleet == *fleet && s.region == *region && !s.state.is_terminal()).collect();
        let staying: Vec<&GameServer> = live.iter().copied().filter(|s| s.state != GameServerState::Draining).collect();
        let surge = usize::try_from(rollout.strategy.surge(want)).unwrap_or(usize::MAX);
        let want = usize::try_from(want).unwrap_or(usize::MAX);
        // A rolling update: servers of the new version are added (up to the surge), and
        // once they are up as many old servers go, until none is left.
        let outdated_count = staying.iter().filter(|s| outdated(s)).count();
        let starting = staying.iter().any(|s| !outdated(s) && s.state == GameServerState::Scheduled);
        let target = if outdated_count > 0 && (starting || staying.len() <= want) {
            want.saturating_add(surge.min(outdated_count))
        } else {
            want
        };
        if live.len() < target {
            let start = Action::Start { fleet: fleet.clone(), region: region.clone() };
            actions.extend(std::iter::repeat_n(start, target - live.len()));
        }
        let excess = staying.len().saturating_sub(target);
        // Old versions first; idle before hosting (Scheduled first); fewest worlds; name.
        // Reserved servers are never taken: their SDK holds them.
        let mut candidates: Vec<&GameServer> =
            staying.into_iter().filter(|s| is_idle(s) || (s.worlds > 0 && s.state.is_allocatable())).collect();
        candidates.sort_by_key(|s| {
            (!outdated(s), !is_idle(s), s.state != GameServerState::Scheduled, s.worlds, s.name.clone())
        });
        actions.extend(candidates.into_iter().take(excess).map(|s| {
            if is_idle(s) { Action::Stop { name: s.name.clone() } } else { Action::Drain { name: s.name.clone() } }
        }));
    }

    let records: HashMap<&str, &GameServer> = observed.iter().map(|s| (s.name.as_str(), s)).collect();
    for name in running {
        if records.get(name.as_str()).is_none_or(|s| s.state.is_terminal()) {
            actions.push(Action::Kill { name: name.clone() });
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use GameServerState::*;

    fn fleet(name: &str) -> FleetSpec {
        FleetSpec {
            name: name.into(),
            world_capacity: 4,
            player_capacity: 100,
            world_player_capacity: 30,
            labels: BTreeMap::new(),
            template: gaia_api::fleet::GameServerTemplate { command: vec!["/bin/true".into()], env: BTreeMap::new() },
            health: Default::default(),
            strategy: Default::default(),
            regions: vec![
                gaia_api::fleet::RegionSpec { name: "eu".into(), replicas: 0 },
                gaia_api::fleet::RegionSpec { name: "us".into(), replicas: 0 },
            ],
        }
    }

    fn fleets() -> Rollouts {
        rollouts(&[fleet("town")])
    }

    fn server(name: &str, region: &str, state: GameServerState, worlds: u32) -> GameServer {
        let mut s = GameServer::scheduled(name, "town", region, 4, 100);
        s.state = state;
        s.worlds = worlds;
        s.labels.insert(TEMPLATE_LABEL.into(), fleet("town").template_version());
        s
    }

    fn old(mut s: GameServer) -> GameServer {
        s.labels.insert(TEMPLATE_LABEL.into(), "old".into());
        s
    }

    #[test]
    fn a_rolling_update_replaces_one_server_at_a_time() {
        let desired = want(&[("town", "eu", 2)]);
        let plan = |observed: &[GameServer]| plan(&fleets(), &desired, observed, &BTreeSet::new());
        let (a, b) = (old(server("a", "eu", Allocated, 2)), old(server("b", "eu", Ready, 0)));
        // Surge: one new server first.
        assert_eq!(plan(&[a.clone(), b.clone()]), vec![start("eu")]);
        // While it starts, nothing else.
        let n1 = server("n1", "eu", Scheduled, 0);
        assert_eq!(plan(&[a.clone(), b.clone(), n1.clone()]), vec![]);
        // Once it is up, an old one goes: the idle one first.
        let n1 = server("n1", "eu", Ready, 0);
        assert_eq!(plan(&[a.clone(), b.clone(), n1.clone()]), vec![stop("b")]);
        // Then the next new one, and the old one hosting worlds is drained.
        let b = server("b", "eu", Shutdown, 0);
        assert_eq!(plan(&[a.clone(), b.clone(), n1.clone()]), vec![start("eu")]);
        let n2 = server("n2", "eu", Ready, 0);
        assert_eq!(plan(&[a.clone(), b.clone(), n1.clone(), n2.clone()]), vec![drain("a")]);
        // While it drains (it counts as live), nothing; once it is gone, the fleet is new.
        let mut a = a;
        a.state = Draining;
        assert_eq!(plan(&[a.clone(), n1.clone(), n2.clone()]), vec![]);
        assert_eq!(plan(&[n1, n2]), vec![]);
    }

    #[test]
    fn a_larger_surge_replaces_several_at_a_time() {
        let mut spec = fleet("town");
        spec.strategy.rolling_update.max_surge = gaia_api::fleet::IntOrPercent::Percent(50);
        let rollouts = rollouts(&[spec]);
        let desired = want(&[("town", "eu", 4)]);
        let plan = |observed: &[GameServer]| plan(&rollouts, &desired, observed, &BTreeSet::new());
        let olds: Vec<GameServer> = ["a", "b", "c"].iter().map(|n| old(server(n, "eu", Ready, 0))).collect();
        let mut observed = olds.clone();
        observed.push(old(server("d", "eu", Allocated, 1)));
        // 50% of 4: two new servers at once.
        assert_eq!(plan(&observed), vec![start("eu"), start("eu")]);
        observed.push(server("n1", "eu", Ready, 0));
        observed.push(server("n2", "eu", Scheduled, 0));
        assert_eq!(plan(&observed), vec![], "wait until both are up");
        observed.last_mut().unwrap().state = Ready;
        assert_eq!(plan(&observed), vec![stop("a"), stop("b")], "then two old ones go");
        // With one old server left, the surge is one.
        let observed = vec![
            old(server("d", "eu", Allocated, 1)),
            server("n1", "eu", Ready, 0),
            server("n2", "eu", Ready, 0),
            server("n3", "eu", Ready, 0),
        ];
        assert_eq!(plan(&observed), vec![start("eu")]);
    }

    fn want(pairs: &[(&str, &str, u32)]) -> DesiredReplicas {
        pairs.iter().map(|&(f, r, n)| ((f.to_string(), r.to_string()), n)).collect()
    }

    fn names(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn start(region: &str) -> Action {
        Action::Start { fleet: "town".into(), region: region.into() }
    }

    fn stop(name: &str) -> Action {
        Action::Stop { name: name.into() }
    }

    fn kill(name: &str) -> Action {
        Action::Kill { name: name.into() }
    }

    #[test]
    fn starts_the_missing_servers() {
        let observed = vec![server("a", "eu", Ready, 0), server("b", "eu", Shutdown, 0), server("c", "us", Ready, 0)];
        let actions = plan(&fleets(), &want(&[("town", "eu", 3)]), &observed, &names(&["a"]));
        assert_eq!(actions, vec![start("eu"), start("eu")], "the Shutdown record is not live; us is not asked for");
    }

    #[test]
    fn scheduled_and_every_live_state_count_as_live() {
        let observed = vec![
            server("a", "eu", Scheduled, 0),
            server("b", "eu", Ready, 0),
            server("c", "eu", Allocated, 1),
            server("d", "eu", Reserved, 0),
            server("e", "eu", Draining, 2),
            server("f", "eu", Unhealthy, 0),
            server("g", "eu", Error, 0),
        ];
        assert_eq!(plan(&fleets(), &want(&[("town", "eu", 5)]), &observed, &BTreeSet::new()), vec![]);
        assert_eq!(plan(&fleets(), &want(&[("town", "eu", 6)]), &observed, &BTreeSet::new()), vec![start("eu")]);
    }

    #[test]
    fn stops_idle_servers_scheduled_first_then_by_name() {
        let observed = vec![
            server("a", "eu", Ready, 0),
            server("b", "eu", Scheduled, 0),
            server("c", "eu", Ready, 0),
            server("d", "eu", Scheduled, 0),
        ];
        let desired = want(&[("town", "eu", 1)]);
        assert_eq!(plan(&fleets(), &desired, &observed, &BTreeSet::new()), vec![stop("b"), stop("d"), stop("a")]);
        let desired = want(&[("town", "eu", 3)]);
        assert_eq!(plan(&fleets(), &desired, &observed, &BTreeSet::new()), vec![stop("b")], "at most the excess");
    }

    fn drain(name: &str) -> Action {
        Action::Drain { name: name.into() }
    }

    #[test]
    fn never_stops_a_server_that_hosts_worlds_or_is_held_but_drains_it() {
        let observed = vec![
            server("a", "eu", Allocated, 2),
            server("b", "eu", Reserved, 0),
            server("c", "eu", Draining, 0),
            server("d", "eu", Allocated, 0),
            // Ready with a world: a racing allocation the state has not caught up with.
            server("e", "eu", Ready, 1),
            server("f", "eu", Ready, 0),
        ];
        let actions = plan(&fleets(), &want(&[("town", "eu", 0)]), &observed, &names(&["a", "b", "c", "d", "e", "f"]));
        assert_eq!(actions, vec![stop("f"), drain("e"), drain("a")], "idle first, then fewest worlds; never Reserved");
    }

    #[test]
    fn draining_servers_count_as_leaving() {
        let observed =
            vec![server("a", "eu", Allocated, 2), server("b", "eu", Allocated, 1), server("c", "eu", Draining, 3)];
        assert_eq!(plan(&fleets(), &want(&[("town", "eu", 2)]), &observed, &BTreeSet::new()), vec![]);
        assert_eq!(plan(&fleets(), &want(&[("town", "eu", 1)]), &observed, &BTreeSet::new()), vec![drain("b")]);
    }

    #[test]
    fn only_pairs_in_desired_are_acted_on() {
        let observed = vec![server("a", "eu", Ready, 0), server("b", "us", Ready, 0), server("c", "us", Ready, 0)];
        // us is over nothing because it is not in desired; eu is right.
        assert_eq!(plan(&fleets(), &want(&[("town", "eu", 1)]), &observed, &BTreeSet::new()), vec![]);
        assert_eq!(plan(&fleets(), &DesiredReplicas::new(), &observed, &BTreeSet::new()), vec![]);
    }

    #[test]
    fn fleets_without_a_spec_are_ignored() {
        let desired = want(&[("city", "eu", 2), ("town", "eu", 1)]);
        assert_eq!(plan(&fleets(), &desired, &[], &BTreeSet::new()), vec![start("eu")]);
    }

    #[test]
    fn kills_children_whose_record_is_terminal_or_gone() {
        let observed = vec![
            server("a", "eu", Ready, 0),
            server("b", "eu", Unhealthy, 0),
            server("c", "eu", Shutdown, 0),
            server("d", "eu", Error, 0),
            server("e", "eu", Allocated, 1),
        ];
        let running = names(&["a", "b", "c", "d", "e", "zombie"]);
        let actions = plan(&fleets(), &want(&[("town", "eu", 2)]), &observed, &running);
        assert_eq!(actions, vec![kill("b"), kill("c"), kill("d"), kill("zombie")]);
    }

    #[test]
    fn a_replacement_is_started_alongside_the_kill() {
        let observed = vec![server("a", "eu", Ready, 0), server("b", "eu", Unhealthy, 0)];
        let actions = plan(&fleets(), &want(&[("town", "eu", 2)]), &observed, &names(&["a", "b"]));
        assert_eq!(actions, vec![start("eu"), kill("b")]);
    }

    #[test]
    fn regions_are_planned_separately() {
        let observed = vec![server("a", "eu", Ready, 0), server("b", "eu", Ready, 0)];
        let actions = plan(&fleets(), &want(&[("town", "eu", 1), ("town", "us", 1)]), &observed, &BTreeSet::new());
        assert_eq!(actions, vec![stop("a"), start("us")]);
    }

    fn any_state() -> impl Strategy<Value = GameServerState> {
        proptest::sample::select(GameServerState::ALL.to_vec())
    }

    fn any_server(i: usize) -> impl Strategy<Value = GameServer> {
        (prop_oneof![Just("eu"), Just("us")], any_state(), 0u32..3, prop_oneof![Just("town"), Just("city")]).prop_map(
            move |(region, state, worlds, fleet)| {
                let mut s = GameServer::scheduled(format!("s{i}"), fleet, region, 4, 100);
                s.labels.insert(TEMPLATE_LABEL.into(), super::tests::fleet("town").template_version());
                s.state = state;
                // Terminal records hold no world (entering a terminal state frees them).
                s.worlds = if state.is_terminal() { 0 } else { worlds };
                s
            },
        )
    }

    fn any_observed() -> impl Strategy<Value = Vec<GameServer>> {
        (0usize..12).prop_flat_map(|n| (0..n).map(any_server).collect::<Vec<_>>())
    }

    proptest! {
        #[test]
        fn never_stops_or_kills_a_live_server_with_worlds(
            observed in any_observed(),
            eu in 0u32..8,
            us in 0u32..8,
            city in 0u32..8,
            running_mask in proptest::collection::vec(any::<bool>(), 14),
        ) {
            let desired = want(&[("town", "eu", eu), ("town", "us", us), ("city", "eu", city)]);
            // Some of the observed servers run here, plus names with no record.
            let running: BTreeSet<String> =
                (0..14).filter(|&i| running_mask[i]).map(|i| format!("s{i}")).collect();
            let actions = plan(&fleets(), &desired, &observed, &running);

            let record = |name: &str| observed.iter().find(|s| s.name == name);
            for action in &actions {
                match action {
                    Action::Stop { name } | Action::Kill { name } => {
                        let hosting = record(name).is_some_and(|s| s.worlds > 0 && !s.state.is_terminal());
                        prop_assert!(!hosting, "{action:?} on a server with worlds: {:?}", record(name));
                    }
                    Action::Drain { name } => {
                        let ok = record(name).is_some_and(|s| {
                            s.worlds > 0 && matches!(s.state, GameServerState::Ready | GameServerState::Allocated)
                        });
                        prop_assert!(ok, "{action:?} on {:?}", record(name));
                    }
                    Action::Start { .. } => {}
                }
                if let Action::Stop { name } = action {
                    prop_assert!(record(name).is_some_and(is_idle), "{action:?} on a server that is not idle");
                }
            }
            // Starts and stops never overshoot desired, per pair.
            for ((fleet, region), &want) in &desired {
                let live = observed
                    .iter()
                    .filter(|s| s.fleet == *fleet && s.region == *region && !s.state.is_terminal())
                    .count();
                let starts = actions
                    .iter()
                    .filter(|a| matches!(a, Action::Start { fleet: f, region: r } if f == fleet && r == region))
                    .count();
                let stops = actions
                    .iter()
                    .filter(|a| matches!(a, Action::Stop { name } | Action::Drain { name } if record(name).is_some_and(|s| s.fleet == *fleet && s.region == *region)))
                    .count();
                let leaving = observed
                    .iter()
                    .filter(|s| s.fleet == *fleet && s.region == *region && s.state == GameServerState::Draining)
                    .count();
                let want = want as usize;
                if fleet == "town" {
                    prop_assert_eq!(starts, want.saturating_sub(live));
                    prop_assert!(stops + leaving <= live.saturating_sub(want).max(leaving));
                    prop_assert!(live + starts - stops - leaving >= want.min(live - leaving));
                } else {
                    prop_assert_eq!(starts + stops, 0, "a fleet without a spec is left alone");
                }
            }
        }
    }
}
