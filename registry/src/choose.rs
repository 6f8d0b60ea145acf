//! Which server gets a new world: a pure function of the candidates and the request.
//!
//! Order of preference: regions in the request's order (any region when it names none),
//! then selectors in order (one match-everything selector when it names none); the first
//! (region, selector) pair that matches any server decides, and the strategy picks among
//! its matches: Packed takes the fullest server that still fits, Distributed the emptiest.
//! Ties go to the smaller name so the choice is deterministic.

use gaia_api::allocation::{AllocationRequest, Selector, Strategy};
use gaia_api::gameserver::GameServer;

fn matches(server: &GameServer, selector: &Selector) -> bool {
    let state_ok = match selector.game_server_state {
        Some(state) => server.state == state,
        None => server.state.is_allocatable(),
    };
    // A server that has not registered its address cannot be joined.
    state_ok
        && server.address.is_some()
        && server.free_world_slots() >= selector.min_free_worlds.unwrap_or(1).max(1)
        && server.free_player_slots() >= selector.min_free_players.unwrap_or(0)
        && selector.match_labels.iter().all(|(k, v)| server.labels.get(k) == Some(v))
}

/// The server a new world should go to, or `None` when nothing fits.
pub fn choose<'a, I>(candidates: I, req: &AllocationRequest) -> Option<&'a GameServer>
where
    I: IntoIterator<Item = &'a GameServer> + Clone,
{
    let any_selector = [Selector::default()];
    let selectors = if req.selectors.is_empty() { &any_selector[..] } else { &req.selectors[..] };
    let regions: Vec<Option<&str>> =
        if req.regions.is_empty() { vec![None] } else { req.regions.iter().map(|r| Some(r.as_str())).collect() };

    for region in regions {
        for selector in selectors {
            let fits = candidates
                .clone()
                .into_iter()
                .filter(|s| s.fleet == req.fleet)
                .filter(|s| region.is_none_or(|r| s.region == r))
                .filter(|s| matches(s, selector));
            let best = match req.strategy {
                // Fullest first; among equals the smaller name (max_by keeps the last max,
                // so compare names reversed).
                Strategy::Packed => fits.max_by(|a, b| a.worlds.cmp(&b.worlds).then_with(|| b.name.cmp(&a.name))),
                Strategy::Distributed => fits.min_by(|a, b| a.worlds.cmp(&b.worlds).then_with(|| a.name.cmp(&b.name))),
            };
            if best.is_some() {
                return best;
            }
        }
    }
    None
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
}
