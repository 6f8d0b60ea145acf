//! Which server gets a new world: a pure function of the candidates and the request.
//!
//! Order of preference: regions in the request's order (any region when it names none),
//! then selectors in order (one match-everything selector when it names none); the first
//! (region, selector) pair that matches any server decides, and [`prefer`] picks among its
//! matches: Packed takes the fullest server that still fits, Distributed the emptiest.
//! `priorities` break Packed's ties among the fullest, and order Distributed's choice
//! before emptiness (as Agones' priorities do). Remaining ties go to the smaller name, so
//! the choice is deterministic.
//!
//! [`choose`] scans every candidate; it is the reference. The backends keep an index of
//! open servers (allocatable, registered, with a free slot) in [`prefer`] order per region
//! and walk it with [`first_fit`], which looks at few servers in the common case.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use gaia_api::allocation::{AllocationRequest, Order, PriorityKey, Selector, Strategy};
use gaia_api::gameserver::GameServer;

/// Whether `server` can take a new world under `selector`.
pub fn fits(server: &GameServer, selector: &Selector) -> bool {
    let state_ok = match selector.game_server_state {
        Some(state) => server.state == state,
        None => server.state.is_allocatable(),
    };
    // A server that has not registered its address cannot be joined.
    state_ok
        && server.address.is_some()
        && server.free_world_slots() >= selector.min_free_worlds.unwrap_or(1).max(1)
        && server.free_player_slots() >= selector.min_free_players.unwrap_or(0)
        && selector.matches_labels(&server.labels)
}

/// Whether `server` belongs in the index of open servers: it could fit some selector.
pub fn is_open(server: &GameServer) -> bool {
    server.state.is_allocatable() && server.address.is_some() && server.free_world_slots() > 0
}

/// `Less` when `a` should get the world rather than `b`.
pub fn prefer(a: &GameServer, b: &GameServer, req: &AllocationRequest) -> Ordering {
    let count = |s: &GameServer, key| match key {
        PriorityKey::Worlds => s.worlds,
        PriorityKey::Players => s.players,
    };
    let by_priorities = || {
        req.priorities.iter().fold(Ordering::Equal, |o, p| {
            o.then_with(|| match p.order {
                Order::Ascending => count(a, p.key).cmp(&count(b, p.key)),
                Order::Descending => count(b, p.key).cmp(&count(a, p.key)),
            })
        })
    };
    let by_strategy = match req.strategy {
        Strategy::Packed => b.worlds.cmp(&a.worlds).then_with(by_priorities),
        Strategy::Distributed => by_priorities().then_with(|| a.worlds.cmp(&b.worlds)),
    };
    by_strategy.then_with(|| a.name.cmp(&b.name))
}

/// The regions to try, in order: `None` means any.
fn regions(req: &AllocationRequest) -> Vec<Option<&str>> {
    if req.regions.is_empty() { vec![None] } else { req.regions.iter().map(|r| Some(r.as_str())).collect() }
}

/// The selectors to try, in order.
pub fn selectors(req: &AllocationRequest) -> &[Selector] {
    const ANY: &[Selector] = &[Selector {
        match_labels: std::collections::BTreeMap::new(),
        match_expressions: Vec::new(),
        game_server_state: None,
        min_free_worlds: None,
        min_free_players: None,
    }];
    if req.selectors.is_empty() { ANY } else { &req.selectors }
}

/// The server a new world should go to, or `None` when nothing fits.
pub fn choose<'a, I>(candidates: I, req: &AllocationRequest) -> Option<&'a GameServer>
where
    I: IntoIterator<Item = &'a GameServer> + Clone,
{
    for region in regions(req) {
        for selector in selectors(req) {
            let best = candidates
                .clone()
                .into_iter()
                .filter(|s| s.fleet == req.fleet)
                .filter(|s| region.is_none_or(|r| s.region == r))
                .filter(|s| fits(s, selector))
                .min_by(|a, b| prefer(a, b, req));
            if best.is_some() {
                return best;
            }
        }
    }
    None
}

/// Open servers of one fleet, ordered by (worlds, name), per region and over all regions.
#[derive(Debug, Default)]
pub struct OpenIndex {
    all: BTreeSet<(u32, String)>,
    by_region: std::collections::HashMap<String, BTreeSet<(u32, String)>>,
}

impl OpenIndex {
    pub fn insert(&mut self, region: &str, worlds: u32, name: &str) {
        self.all.insert((worlds, name.to_string()));
        self.by_region.entry(region.to_string()).or_default().insert((worlds, name.to_string()));
    }

    pub fn remove(&mut self, region: &str, worlds: u32, name: &str) {
        let key = (worlds, name.to_string());
        self.all.remove(&key);
        if let Some(set) = self.by_region.get_mut(region) {
            set.remove(&key);
        }
    }

    /// [`choose`] over the indexed servers, looked up by name with `get`: the same answer,
    /// without a scan in the common case. `exclude` is never chosen.
    pub fn choose<'a>(
        &self,
        req: &AllocationRequest,
        exclude: Option<&str>,
        get: impl Fn(&str) -> Option<&'a GameServer>,
    ) -> Option<&'a GameServer> {
        let empty = BTreeSet::new();
        for region in regions(req) {
            let set = match region {
                None => &self.all,
                Some(r) => self.by_region.get(r).unwrap_or(&empty),
            };
            for selector in selectors(req) {
                let found = first_fit(set, req, |name| {
                    (Some(name) != exclude).then(|| get(name)).flatten().filter(|s| fits(s, selector))
                });
                if found.is_some() {
                    return found;
                }
            }
        }
        None
    }
}

/// The most preferred server in `set` (ordered by (worlds, name)) that `fit` accepts.
///
/// Distributed without priorities: the first fit in order. Packed: the fullest group of
/// equal world counts with any fit, best by [`prefer`] within it (the first fit when
/// there are no priorities). Distributed with priorities looks at every server, since
/// priorities outrank emptiness.
pub fn first_fit<'a>(
    set: &BTreeSet<(u32, String)>,
    req: &AllocationRequest,
    fit: impl Fn(&str) -> Option<&'a GameServer>,
) -> Option<&'a GameServer> {
    let best = |group: &mut dyn Iterator<Item = &(u32, String)>| {
        let mut fits = group.filter_map(|(_, name)| fit(name));
        if req.priorities.is_empty() { fits.next() } else { fits.min_by(|a, b| prefer(a, b, req)) }
    };
    match req.strategy {
        Strategy::Distributed => best(&mut set.iter()),
        Strategy::Packed => {
            let mut below: Option<u32> = None;
            loop {
                let worlds = match below {
                    None => set.last()?.0,
                    Some(w) => set.range(..(w, String::new())).next_back()?.0,
                };
                let mut group = set.range((worlds, String::new())..).take_while(|(w, _)| *w == worlds);
                if let Some(found) = best(&mut group) {
                    return Some(found);
                }
                below = Some(worlds);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use gaia_api::gameserver::GameServerState;

    use super::*;

    fn server(name: &str, region: &str, worlds: u32, state: GameServerState) -> GameServer {
        let mut s = GameServer::scheduled(name, "town", region, 4, 100);
        s.address = Some(format!("ws://{name}/ws"));
        s.worlds = worlds;
        s.state = state;
        s
    }

    fn req(regions: &[&str], strategy: Strategy) -> AllocationRequest {
        AllocationRequest {
            fleet: "town".into(),
            regions: regions.iter().map(|r| r.to_string()).collect(),
            strategy,
            ..Default::default()
        }
    }

    fn pick(servers: &[GameServer], r: &AllocationRequest) -> Option<String> {
        choose(servers, r).map(|s| s.name.clone())
    }

    use GameServerState::*;

    #[test]
    fn packed_fills_the_fullest_that_fits_distributed_the_emptiest() {
        let servers = [
            server("a", "eu", 1, Allocated),
            server("b", "eu", 3, Allocated),
            server("c", "eu", 4, Allocated), // full
            server("d", "eu", 0, Ready),
        ];
        assert_eq!(pick(&servers, &req(&[], Strategy::Packed)).as_deref(), Some("b"));
        assert_eq!(pick(&servers, &req(&[], Strategy::Distributed)).as_deref(), Some("d"));
    }

    #[test]
    fn ties_break_on_name() {
        let servers = [server("b", "eu", 2, Allocated), server("a", "eu", 2, Allocated)];
        assert_eq!(pick(&servers, &req(&[], Strategy::Packed)).as_deref(), Some("a"));
        assert_eq!(pick(&servers, &req(&[], Strategy::Distributed)).as_deref(), Some("a"));
    }

    #[test]
    fn regions_are_tried_in_order_and_fall_back() {
        let servers =
            [server("eu-1", "eu", 0, Ready), server("us-1", "us", 0, Ready), server("ap-1", "ap", 4, Allocated)];
        assert_eq!(pick(&servers, &req(&["us", "eu"], Strategy::Packed)).as_deref(), Some("us-1"));
        assert_eq!(pick(&servers, &req(&["eu", "us"], Strategy::Packed)).as_deref(), Some("eu-1"));
        // ap is full: fall back to the next region named.
        assert_eq!(pick(&servers, &req(&["ap", "eu"], Strategy::Packed)).as_deref(), Some("eu-1"));
        // Only regions named are considered.
        assert_eq!(pick(&servers, &req(&["ap"], Strategy::Packed)), None);
        assert_eq!(pick(&servers, &req(&["sa"], Strategy::Packed)), None);
    }

    #[test]
    fn servers_without_an_address_are_skipped() {
        let mut unregistered = server("a", "eu", 0, Ready);
        unregistered.address = None;
        assert_eq!(pick(&[unregistered], &req(&[], Strategy::Packed)), None);
    }

    #[test]
    fn only_allocatable_servers_of_the_fleet() {
        let mut other_fleet = server("z", "eu", 0, Ready);
        other_fleet.fleet = "arena".into();
        let servers = [
            server("s", "eu", 0, Scheduled),
            server("r", "eu", 0, Reserved),
            server("d", "eu", 0, Draining),
            server("u", "eu", 0, Unhealthy),
            other_fleet,
        ];
        assert_eq!(pick(&servers, &req(&[], Strategy::Packed)), None);
    }

    #[test]
    fn selectors_in_order_with_labels_state_and_minimums() {
        let mut ranked = server("ranked", "eu", 1, Allocated);
        ranked.labels = BTreeMap::from([("mode".into(), "ranked".into())]);
        let mut players_full = server("crowded", "eu", 0, Ready);
        players_full.players = 100;
        let servers = [ranked, server("casual", "eu", 0, Ready), players_full];
        let labels = BTreeMap::from([("mode".to_string(), "ranked".to_string())]);
        let mut r = req(&[], Strategy::Distributed);
        r.selectors = vec![
            Selector { match_labels: labels.clone(), min_free_worlds: Some(4), ..Default::default() },
            Selector { game_server_state: Some(Allocated), ..Default::default() },
            Selector { min_free_players: Some(1), ..Default::default() },
        ];
        // First selector: ranked has only 3 free worlds, no match. Second: Allocated -> ranked.
        assert_eq!(pick(&servers, &r).as_deref(), Some("ranked"));
        r.selectors.remove(1);
        // Now the third: free players >= 1 excludes "crowded"; Distributed picks the emptiest.
        assert_eq!(pick(&servers, &r).as_deref(), Some("casual"));
        r.selectors = vec![Selector { match_labels: labels, ..Default::default() }];
        assert_eq!(pick(&servers, &r).as_deref(), Some("ranked"));
    }

    #[test]
    fn every_expression_operator_narrows_the_choice() {
        use gaia_api::allocation::{LabelExpression, Operator};
        let mut ranked = server("ranked", "eu", 0, Ready);
        ranked.labels = BTreeMap::from([("mode".into(), "ranked".into())]);
        let mut casual = server("casual", "eu", 0, Ready);
        casual.labels = BTreeMap::from([("mode".into(), "casual".into())]);
        let plain = server("plain", "eu", 0, Ready);
        let servers = [ranked, casual, plain];
        let expr = |operator, values: &[&str]| {
            let mut r = req(&[], Strategy::Distributed);
            r.selectors = vec![Selector {
                match_expressions: vec![LabelExpression {
                    key: "mode".into(),
                    operator,
                    values: values.iter().map(|v| v.to_string()).collect(),
                }],
                ..Default::default()
            }];
            r
        };
        use Operator::*;
        assert_eq!(pick(&servers, &expr(In, &["ranked"])).as_deref(), Some("ranked"));
        assert_eq!(pick(&servers, &expr(In, &["casual", "x"])).as_deref(), Some("casual"));
        assert_eq!(pick(&servers, &expr(In, &["x"])), None);
        assert_eq!(pick(&servers, &expr(NotIn, &["casual"])).as_deref(), Some("plain"));
        assert_eq!(pick(&servers, &expr(NotIn, &["casual", "ranked"])).as_deref(), Some("plain"));
        assert_eq!(pick(&servers, &expr(Exists, &[])).as_deref(), Some("casual"));
        assert_eq!(pick(&servers, &expr(DoesNotExist, &[])).as_deref(), Some("plain"));
    }

    #[test]
    fn priorities_break_packed_ties_and_order_distributed() {
        use gaia_api::allocation::{Order, Priority, PriorityKey};
        let mut a = server("a", "eu", 2, Allocated);
        a.players = 10;
        let mut b = server("b", "eu", 2, Allocated);
        b.players = 5;
        let mut c = server("c", "eu", 1, Allocated);
        c.players = 1;
        let servers = [a, b, c];
        let with = |strategy, order| {
            let mut r = req(&[], strategy);
            r.priorities = vec![Priority { key: PriorityKey::Players, order }];
            r
        };
        // Packed: the fullest (a, b), then fewer players first.
        assert_eq!(pick(&servers, &with(Strategy::Packed, Order::Ascending)).as_deref(), Some("b"));
        assert_eq!(pick(&servers, &with(Strategy::Packed, Order::Descending)).as_deref(), Some("a"));
        // Distributed: priorities outrank emptiness.
        assert_eq!(pick(&servers, &with(Strategy::Distributed, Order::Ascending)).as_deref(), Some("c"));
        assert_eq!(pick(&servers, &with(Strategy::Distributed, Order::Descending)).as_deref(), Some("a"));
    }

    mod index {
        use gaia_api::allocation::{LabelExpression, Operator, Order, Priority, PriorityKey};
        use proptest::prelude::{any, prop, prop_assert_eq, proptest};
        use proptest::strategy::Strategy as Gen;

        use super::*;
        use crate::OpenIndex;

        fn arb_server(i: usize) -> impl Gen<Value = GameServer> {
            (0u32..4, 0u32..5, 0u32..3, prop::option::of(0u32..2), 0u32..3).prop_map(
                move |(region, worlds, state, label, players)| {
                    let state = [Ready, Allocated, Draining][state as usize];
                    let mut s = server(&format!("s{i:02}"), ["eu", "us", "ap", "sa"][region as usize], worlds, state);
                    s.players = players * 40;
                    if let Some(l) = label {
                        s.labels.insert("mode".into(), ["ranked", "casual"][l as usize].into());
                    }
                    s
                },
            )
        }

        fn arb_request() -> impl Gen<Value = AllocationRequest> {
            let selector = (prop::option::of(0u32..4), prop::option::of(1u32..4), 0u32..3).prop_map(
                |(op, min_worlds, min_players)| Selector {
                    match_expressions: op
                        .map(|op| {
                            let operator =
                                [Operator::In, Operator::NotIn, Operator::Exists, Operator::DoesNotExist][op as usize];
                            let values = if op < 2 { vec!["ranked".to_string()] } else { Vec::new() };
                            LabelExpression { key: "mode".into(), operator, values }
                        })
                        .into_iter()
                        .collect(),
                    min_free_worlds: min_worlds,
                    min_free_players: Some(min_players * 30),
                    ..Default::default()
                },
            );
            (
                prop::sample::subsequence(vec!["eu", "us", "ap"], 0..3),
                prop::collection::vec(selector, 0..3),
                any::<bool>(),
                prop::option::of(any::<bool>()),
            )
                .prop_map(|(regions, selectors, packed, priority)| {
                    let mut r = req(&regions, if packed { Strategy::Packed } else { Strategy::Distributed });
                    r.selectors = selectors;
                    r.priorities = priority
                        .map(|asc| Priority {
                            key: PriorityKey::Players,
                            order: if asc { Order::Ascending } else { Order::Descending },
                        })
                        .into_iter()
                        .collect();
                    r
                })
        }

        fn arb_fleet() -> impl Gen<Value = Vec<GameServer>> {
            (0usize..12).prop_flat_map(|n| (0..n).map(arb_server).collect::<Vec<_>>())
        }

        proptest! {
            /// The index walk gives exactly the reference scan's answer.
            #[test]
            fn index_agrees_with_the_scan(servers in arb_fleet(), r in arb_request()) {
                let mut index = OpenIndex::default();
                for s in servers.iter().filter(|s| is_open(s)) {
                    index.insert(&s.region, s.worlds, &s.name);
                }
                let by_name = |name: &str| servers.iter().find(|s| s.name == name);
                let indexed = index.choose(&r, None, by_name).map(|s| s.name.clone());
                prop_assert_eq!(indexed, pick(&servers, &r));
            }
        }
    }
}
