//! The buffer policy as pure functions: what one region of one fleet looks like
//! ([`RegionStatus`]) and how many servers it should have ([`desired`]).
//!
//! Nothing here knows about time or the registry; [`crate::stabiliser`] smooths the
//! answers over time and [`crate::run`] feeds both from the registry.

use gaia_api::fleet::{AutoscalerPolicy, BufferPolicy, DesiredReplicas, FleetConfig, FleetSpec};
use gaia_api::gameserver::{GameServer, GameServerState};

/// One region of one fleet, as the buffer policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionStatus {
    /// Live servers: every record that is not terminal (Shutdown, Unhealthy, Error).
    /// Scheduled servers count: they are on their way.
    pub replicas: u32,
    /// World slots in use (leased ones included), summed over the live servers.
    pub used_worlds: u32,
    /// World slots per server, from the fleet spec.
    pub world_capacity: u32,
}

impl RegionStatus {
    /// Reads the status of `region` of `fleet` from the registry's records. Records of
    /// other fleets or regions, and terminal ones, are ignored.
    pub fn observe(servers: &[GameServer], fleet: &FleetSpec, region: &str) -> RegionStatus {
        let live = servers.iter().filter(|s| s.fleet == fleet.name && s.region == region && !s.state.is_terminal());
        // A Reserved or Draining server takes no new world: none of its slots is free.
        // A Scheduled one is about to be Ready, so its slots count as free.
        let used = |s: &GameServer| match s.state {
            GameServerState::Reserved | GameServerState::Draining => fleet.world_capacity.max(s.worlds),
            _ => s.worlds,
        };
        let (replicas, used_worlds) =
            live.fold((0u32, 0u32), |(n, total), s| (n.saturating_add(1), total.saturating_add(used(s))));
        RegionStatus { replicas, used_worlds, world_capacity: fleet.world_capacity }
    }

    /// Free world slots if the region had `replicas` servers with the worlds in use now.
    pub fn free_slots_at(&self, replicas: u32) -> u64 {
        (u64::from(replicas) * u64::from(self.world_capacity)).saturating_sub(u64::from(self.used_worlds))
    }
}

/// Servers a region needs so that at least `policy.free_world_slots` world slots are free:
///
/// ```text
/// desired = clamp(ceil((used_worlds + free_world_slots) / world_capacity), min_replicas, max_replicas)
/// ```
///
/// The count depends on the worlds in use, not on the servers running now, so starting
/// servers never feeds back into the answer. A buffer of 0 with no world in use gives 0
/// (scale to zero) unless `min_replicas` says otherwise. When `max_replicas` caps the
/// answer, fewer slots than the buffer are free. A `world_capacity` of 0 (rejected by
/// spec validation) is taken as 1 rather than divided by. Should `min_replicas` exceed
/// `max_replicas` (also rejected by validation), `max_replicas` wins.
pub fn desired(policy: &BufferPolicy, status: &RegionStatus) -> u32 {
    let needed = u64::from(status.used_worlds) + u64::from(policy.free_world_slots);
    let raw = needed.div_ceil(u64::from(status.world_capacity.max(1)));
    let raw = u32::try_from(raw).unwrap_or(u32::MAX);
    raw.max(policy.min_replicas).min(policy.max_replicas)
}

/// The buffer policy of `fleet`, if an autoscaler manages it.
pub fn buffer_policy<'a>(config: &'a FleetConfig, fleet: &str) -> Option<&'a BufferPolicy> {
    config.autoscaler(fleet).map(|a| match &a.policy {
        AutoscalerPolicy::Buffer(b) => b,
    })
}

/// Where every (fleet, region) of `config` starts: the region's `replicas`, clamped into
/// `[min_replicas, max_replicas]` for a fleet an autoscaler manages.
pub fn initial_desired(config: &FleetConfig) -> DesiredReplicas {
    let mut desired = DesiredReplicas::new();
    for fleet in &config.fleets {
        let policy = buffer_policy(config, &fleet.name);
        for region in &fleet.regions {
            let replicas = match policy {
                Some(p) => region.replicas.max(p.min_replicas).min(p.max_replicas),
                None => region.replicas,
            };
            desired.insert((fleet.name.clone(), region.name.clone()), replicas);
        }
    }
    desired
}

#[cfg(test)]
mod tests {
    use gaia_api::gameserver::GameServerState;
    use proptest::prelude::*;

    use super::*;

    fn policy(free_world_slots: u32, min_replicas: u32, max_replicas: u32) -> BufferPolicy {
        BufferPolicy { free_world_slots, min_replicas, max_replicas }
    }

    fn status(used_worlds: u32, world_capacity: u32) -> RegionStatus {
        RegionStatus { replicas: 0, used_worlds, world_capacity }
    }

    #[test]
    fn desired_table() {
        // (buffer, min, max, used, capacity) -> desired
        type Row = ((u32, u32, u32, u32, u32), u32, &'static str);
        let table: &[Row] = &[
            ((10, 1, 4, 0, 20), 1, "an empty region needs one server for a buffer of 10"),
            ((10, 1, 4, 10, 20), 1, "20 slots hold 10 used + 10 free exactly"),
            ((10, 1, 4, 11, 20), 2, "one more world needs a second server"),
            ((10, 1, 4, 35, 20), 3, "45 slots needed -> 3 servers"),
            ((10, 1, 4, 200, 20), 4, "capped by max"),
            ((0, 0, 4, 0, 20), 0, "scale to zero with no buffer and no world"),
            ((0, 0, 4, 1, 20), 1, "a single world keeps one server"),
            ((0, 2, 4, 0, 20), 2, "min holds servers up"),
            ((5, 0, 0, 50, 10), 0, "max 0 wins over any need"),
            ((3, 0, 10, 0, 1), 3, "one world per server"),
            ((1, 0, 10, 4, 0), 5, "capacity 0 is taken as 1"),
            ((1, 5, 2, 0, 10), 2, "min above max: max wins"),
            ((u32::MAX, 0, u32::MAX, u32::MAX, 1), u32::MAX, "no overflow"),
        ];
        for &((buffer, min, max, used, capacity), want, why) in table {
            assert_eq!(desired(&policy(buffer, min, max), &status(used, capacity)), want, "{why}");
        }
    }

    fn server(name: &str, fleet: &str, region: &str, state: GameServerState, worlds: u32) -> GameServer {
        let mut s = GameServer::scheduled(name, fleet, region, 20, 300);
        s.state = state;
        s.worlds = worlds;
        s
    }

    fn fleet_spec() -> FleetSpec {
        let yaml = "
fleets:
  - name: town
    worldCapacity: 20
    template: { command: [gaia-gameserver] }
    regions: [{ name: eu, replicas: 2 }, { name: us, replicas: 7 }]
  - name: plain
    template: { command: [gaia-gameserver] }
    regions: [{ name: eu, replicas: 3 }]
autoscalers:
  - fleet: town
    policy: { buffer: { freeWorldSlots: 10, minReplicas: 1, maxReplicas: 4 } }
";
        config_from(yaml).fleets.remove(0)
    }

    fn config_from(yaml: &str) -> FleetConfig {
        FleetConfig::from_yaml(yaml).expect("test config parses")
    }

    #[test]
    fn observe_counts_live_servers_of_the_region_only() {
        use GameServerState::*;
        let servers = vec![
            server("a", "town", "eu", Scheduled, 0),
            server("b", "town", "eu", Ready, 0),
            server("c", "town", "eu", Allocated, 7),
            server("d", "town", "eu", Draining, 3),
            server("j", "town", "eu", Reserved, 0),
            server("e", "town", "eu", Shutdown, 0),
            server("f", "town", "eu", Unhealthy, 0),
            server("g", "town", "eu", Error, 0),
            server("h", "town", "us", Allocated, 5),
            server("i", "other", "eu", Allocated, 5),
        ];
        let status = RegionStatus::observe(&servers, &fleet_spec(), "eu");
        // Draining and Reserved servers take no world: all 20 of their slots count as used.
        assert_eq!(status, RegionStatus { replicas: 5, used_worlds: 7 + 20 + 20, world_capacity: 20 });
        assert_eq!(status.free_slots_at(5), 53);
        let empty = RegionStatus::observe(&servers, &fleet_spec(), "nowhere");
        assert_eq!(empty, RegionStatus { replicas: 0, used_worlds: 0, world_capacity: 20 });
    }

    #[test]
    fn initial_desired_clamps_autoscaled_fleets_only() {
        let yaml = "
fleets:
  - name: town
    template: { command: [gaia-gameserver] }
    regions: [{ name: eu, replicas: 0 }, { name: us, replicas: 7 }, { name: ap, replicas: 2 }]
  - name: plain
    template: { command: [gaia-gameserver] }
    regions: [{ name: eu, replicas: 9 }]
autoscalers:
  - fleet: town
    policy: { buffer: { freeWorldSlots: 10, minReplicas: 1, maxReplicas: 4 } }
";
        let desired = initial_desired(&config_from(yaml));
        let want: DesiredReplicas =
            [(("town", "eu"), 1), (("town", "us"), 4), (("town", "ap"), 2), (("plain", "eu"), 9)]
                .into_iter()
                .map(|((f, r), n)| ((f.to_string(), r.to_string()), n))
                .collect();
        assert_eq!(desired, want);
    }

    proptest! {
        #[test]
        fn desired_keeps_the_buffer_within_bounds(
            buffer in 0u32..500,
            min in 0u32..20,
            span in 0u32..20,
            used in 0u32..2000,
            capacity in 1u32..50,
        ) {
            let max = min + span;
            let p = policy(buffer, min, max);
            let s = status(used, capacity);
            let n = desired(&p, &s);
            prop_assert!(n >= min && n <= max, "{n} outside [{min}, {max}]");
            if n < max {
                prop_assert!(s.free_slots_at(n) >= u64::from(buffer), "{n} servers leave too few free slots");
            }
            // And no more than needed: unless min holds it, one server fewer would not hold
            // the worlds in use plus the buffer.
            if n > min {
                let slots = u64::from(n - 1) * u64::from(capacity);
                prop_assert!(slots < u64::from(used) + u64::from(buffer), "{n} servers are more than needed");
            }
        }
    }
}
