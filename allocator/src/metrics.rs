//! The allocator's Prometheus metrics: its own (`gaia_allocator_*`) and the fleets' state
//! as the registry holds it (`gaia_fleet_*`, set from the registry at each scrape by
//! [`Metrics::observe_fleets`]).

use std::collections::BTreeMap;

use gaia_api::gameserver::{GameServer, GameServerState};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AllocationLabels {
    pub result: &'static str,
    /// Where it landed; for a failure the first region asked for, or `any`.
    pub region: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// `matchmaker` or `sdk`.
    pub endpoint: &'static str,
    /// `unauthorized` or `forbidden`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SdkLabels {
    pub call: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct FleetLabels {
    pub fleet: String,
    pub region: String,
    /// The servers' [`GameServerState`] (`Ready`, `Allocated`, ...).
    pub state: &'static str,
}

/// One fleet's servers as the registry holds them, by region and state. Every state of
/// a region that has any server is present (zero included), so a query for `Ready`
/// servers finds 0 rather than nothing when they are all gone.
#[derive(Default)]
pub struct FleetMetrics {
    pub servers: Family<FleetLabels, Gauge>,
    /// World slots (capacity) of those servers.
    pub world_slots: Family<FleetLabels, Gauge>,
    /// World slots in use (leased included).
    pub worlds: Family<FleetLabels, Gauge>,
    /// Player connections those servers accept.
    pub player_slots: Family<FleetLabels, Gauge>,
    /// Connected players, as the servers last reported.
    pub players: Family<FleetLabels, Gauge>,
}

pub struct Metrics {
    /// Allocations by result (`ok`, `no_capacity`, `bad_request`, ...) and region.
    pub allocations: Family<AllocationLabels, Counter>,
    /// Allocation latency inside the allocator, by result.
    pub allocation_seconds: Family<ResultLabels, Histogram>,
    /// SDK calls from game servers, by call and result.
    pub sdk_calls: Family<SdkLabels, Counter>,
    /// Requests refused for their bearer token, by endpoint and result (also counted
    /// in `allocations` and `sdk_calls`).
    pub refused: Family<RefusedLabels, Counter>,
    /// Requests waiting for capacity (they carry a deadline and found no free slot).
    pub waiting: Gauge,
    /// Leases that ran out before a player joined, their slots given back.
    pub lease_expiries: Counter,
    /// Spectate tokens asked for, by result.
    pub spectates: Family<ResultLabels, Counter>,
    pub fleets: FleetMetrics,
    /// Held while the fleet gauges are replaced and encoded, so that no scrape sees a
    /// half-set fleet.
    pub(crate) fleets_lock: std::sync::Mutex<()>,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            allocations: Family::default(),
            // 10 µs .. ~1.3 s
            allocation_seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(1e-5, 2.0, 18))),
            sdk_calls: Family::default(),
            refused: Family::default(),
            waiting: Gauge::default(),
            lease_expiries: Counter::default(),
            spectates: Family::default(),
            fleets: FleetMetrics::default(),
            fleets_lock: std::sync::Mutex::new(()),
        };
        let allocator = registry.sub_registry_with_prefix("gaia_allocator");
        allocator.register("allocations", "Allocations by result and region", metrics.allocations.clone());
        allocator.register(
            "allocation_duration_seconds",
            "Time to answer an allocation, by result",
            metrics.allocation_seconds.clone(),
        );
        allocator.register("sdk_calls", "SDK calls from game servers, by call and result", metrics.sdk_calls.clone());
        allocator.register(
            "refused_requests",
            "Requests refused for their bearer token, by endpoint and result",
            metrics.refused.clone(),
        );
        allocator.register(
            "waiting_requests",
            "Allocation requests waiting for capacity until their deadline",
            metrics.waiting.clone(),
        );
        allocator.register("spectates", "Spectate tokens asked for, by result", metrics.spectates.clone());
        allocator.register(
            "lease_expiries",
            "Allocation leases that expired before a player joined",
            metrics.lease_expiries.clone(),
        );
        let fleets = registry.sub_registry_with_prefix("gaia_fleet");
        let f = &metrics.fleets;
        fleets.register("servers", "Game servers in the registry, by fleet, region and state", f.servers.clone());
        fleets.register(
            "world_slots",
            "World slots (capacity) of the servers, by fleet, region and state",
            f.world_slots.clone(),
        );
        fleets.register("worlds", "World slots in use, by fleet, region and state", f.worlds.clone());
        fleets.register(
            "player_slots",
            "Player connections the servers accept, by fleet, region and state",
            f.player_slots.clone(),
        );
        fleets.register("players", "Connected players, by fleet, region and state", f.players.clone());
        metrics
    }

    /// Replaces the `gaia_fleet_*` gauges with the sums over `servers` (every server of
    /// every fleet). Call it with `fleets_lock` held.
    pub(crate) fn observe_fleets(&self, servers: &[GameServer]) {
        #[derive(Default)]
        struct Sums {
            servers: i64,
            world_slots: i64,
            worlds: i64,
            player_slots: i64,
            players: i64,
        }
        let mut sums: BTreeMap<FleetLabels, Sums> = BTreeMap::new();
        for s in servers {
            for state in GameServerState::ALL {
                let labels = FleetLabels { fleet: s.fleet.clone(), region: s.region.clone(), state: state.as_str() };
                let sum = sums.entry(labels).or_default();
                if state == s.state {
                    sum.servers += 1;
                    sum.world_slots += i64::from(s.world_capacity);
                    sum.worlds += i64::from(s.worlds);
                    sum.player_slots += i64::from(s.player_capacity);
                    sum.players += i64::from(s.players);
                }
            }
        }
        let f = &self.fleets;
        for family in [&f.servers, &f.world_slots, &f.worlds, &f.player_slots, &f.players] {
            family.clear();
        }
        for (labels, sum) in sums {
            f.servers.get_or_create(&labels).set(sum.servers);
            f.world_slots.get_or_create(&labels).set(sum.world_slots);
            f.worlds.get_or_create(&labels).set(sum.worlds);
            f.player_slots.get_or_create(&labels).set(sum.player_slots);
            f.players.get_or_create(&labels).set(sum.players);
        }
    }
}
