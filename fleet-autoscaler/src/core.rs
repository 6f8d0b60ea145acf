//! The autoscaler as a synchronous state machine, driven by instants passed in.
//!
//! [`Autoscaler`] holds, per autoscaled fleet and region, the measured signals
//! ([`crate::signals`]), a [`Stabiliser`] and the last decisions. The async shell
//! ([`crate::run`]) and the simulator drive the same code: [`Autoscaler::observe`] for
//! each registry event, [`Autoscaler::webhook_calls`] and then [`Autoscaler::decide`]
//! with a fleet's server records, [`Autoscaler::next_wake`] for when to look again.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use gaia_api::autoscaler::{
    AggregatedCounterStatus, BufferStatus, FleetAutoscaleRequest, FleetAutoscaleResponse, FleetAutoscalerSpec,
    FleetAutoscalerStatus, FleetStatus, MAX_DECISIONS, ObjectMeta, PolicyInputs, RegionAutoscalerStatus, ScaleDecision,
    WebhookPolicy,
};
use gaia_api::fleet::{DesiredReplicas, FleetConfig, FleetSpec};
use gaia_api::gameserver::{GameServer, GameServerState};
use gaia_registry::RegistryEvent;
use tokio::time::Instant;

use crate::policy::{self, Decision, Leaf, Reason, RegionStatus, Signals};
use crate::signals::{RateMeter, StartTimes, Waiting};
use crate::stabiliser::Stabiliser;

/// The rate window of policies that have none (shown in the status only).
const DEFAULT_RATE_WINDOW: Duration = Duration::from_secs(60);

/// The label that tells a webhook which region a review is about.
pub const REGION_LABEL: &str = "gaia.dev/region";

/// One change of a region's desired replicas.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub fleet: String,
    pub region: String,
    pub from: u32,
    pub to: u32,
    pub reason: Reason,
    pub message: String,
}

/// A webhook the shell should call before [`Autoscaler::decide`] for `region`.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookCall {
    pub region: String,
    pub policy: WebhookPolicy,
    pub request: FleetAutoscaleRequest,
}

/// The webhooks' answers by region, or why a call failed.
pub type WebhookAnswers = BTreeMap<String, Result<FleetAutoscaleResponse, String>>;

pub struct Autoscaler {
    fleets: Vec<Fleet>,
    /// Numbers webhook requests (their `uid`).
    reviews: u64,
}

struct Fleet {
    spec: FleetSpec,
    scaler: FleetAutoscalerSpec,
    regions: Vec<Region>,
    updated_at_ms: u64,
}

struct Region {
    name: String,
    stabiliser: Stabiliser,
    rate: RateMeter,
    releases: RateMeter,
    starts: StartTimes,
    waiting: Waiting,
    desired: u32,
    explained: Option<RegionAutoscalerStatus>,
    decisions: VecDeque<ScaleDecision>,
}

impl Region {
    fn new(name: &str, scaler: &FleetAutoscalerSpec, desired: u32, now: Instant) -> Self {
        let mut stabiliser =
            Stabiliser::with_limit(scaler.scale_down_delay, scaler.scale_down_step, scaler.scale_down_period);
        stabiliser.update(now, desired);
        Region {
            name: name.to_string(),
            stabiliser,
            rate: RateMeter::new(now),
            releases: RateMeter::new(now),
            starts: StartTimes::default(),
            waiting: Waiting::default(),
            desired,
            explained: None,
            decisions: VecDeque::new(),
        }
    }
}

impl Autoscaler {
    /// Every fleet of `config` that has an autoscaler, each region starting from its
    /// value in `current` (normally [`crate::initial_desired`]): a region started larger
    /// than it needs shrinks only after its `scaleDownDelay`.
    pub fn new(config: &FleetConfig, current: &DesiredReplicas, now: Instant) -> Self {
        let mut scaler = Self { fleets: Vec::new(), reviews: 0 };
        scaler.reconfigure(config, current, now);
        scaler
    }

    /// Takes a new configuration (fleets and autoscalers edited at run time). A region
    /// that was autoscaled before keeps what was measured and decided (rates, start
    /// times, waiting requests, the stabiliser's window, the last decisions) under its
    /// new policy; a new one starts from its value in `current`, or its `replicas`. A
    /// fleet that lost its autoscaler is no longer decided: its regions keep their
    /// desired replicas.
    pub fn reconfigure(&mut self, config: &FleetConfig, current: &DesiredReplicas, now: Instant) {
        let mut old = std::mem::take(&mut self.fleets);
        for spec in &config.fleets {
            let Some(scaler) = config.autoscaler(&spec.name) else { continue };
            let mut before = old.iter().position(|f| f.spec.name == spec.name).map(|i| old.swap_remove(i));
            let regions = spec
                .regions
                .iter()
                .map(|r| {
                    let kept = before.as_mut().and_then(|f| {
                        let i = f.regions.iter().position(|k| k.name == r.name)?;
                        Some(f.regions.swap_remove(i))
                    });
                    match kept {
                        Some(mut region) => {
                            region.stabiliser.set_limit(
                                scaler.scale_down_delay,
                                scaler.scale_down_step,
                                scaler.scale_down_period,
                            );
                            region
                        }
                        None => {
                            let key = (spec.name.clone(), r.name.clone());
                            Region::new(&r.name, scaler, current.get(&key).copied().unwrap_or(r.replicas), now)
                        }
                    }
                })
                .collect();
            let updated_at_ms = before.map_or(0, |f| f.updated_at_ms);
            self.fleets.push(Fleet { spec: spec.clone(), scaler: scaler.clone(), regions, updated_at_ms });
        }
    }

    /// The autoscaled fleets' names.
    pub fn fleets(&self) -> impl Iterator<Item = &str> {
        self.fleets.iter().map(|f| f.spec.name.as_str())
    }

    /// Desired replicas of every autoscaled (fleet, region).
    pub fn desired(&self) -> DesiredReplicas {
        let mut out = DesiredReplicas::new();
        for fleet in &self.fleets {
            for region in &fleet.regions {
                out.insert((fleet.spec.name.clone(), region.name.clone()), region.desired);
            }
        }
        out
    }

    fn fleet_mut(&mut self, name: &str) -> Option<&mut Fleet> {
        self.fleets.iter_mut().find(|f| f.spec.name == name)
    }

    /// Takes in one registry event; true when it concerns an autoscaled fleet (the caller
    /// then recomputes that fleet, after a short debounce).
    ///
    /// Allocations and unmet requests feed the allocation rate, released slots the release
    /// rate; an allocation serves the oldest
    /// waiting request of its region. An unmet request that named no region counts
    /// against the fleet's first region. Scheduled-to-Ready times are measured per region.
    pub fn observe(&mut self, now: Instant, event: &RegistryEvent) -> bool {
        let region = match event {
            RegistryEvent::Allocated { region, .. }
            | RegistryEvent::Released { region, .. }
            | RegistryEvent::StateChanged { region, .. } => Some(region),
            RegistryEvent::Unmet { region, .. } => region.as_ref(),
        };
        let Some(fleet) = self.fleet_mut(event.fleet()) else { return false };
        let region = match region {
            Some(name) => fleet.regions.iter_mut().find(|r| r.name == *name),
            None => fleet.regions.first_mut(),
        };
        let Some(region) = region else { return false };
        match event {
            RegistryEvent::Allocated { .. } => {
                region.rate.record(now);
                region.waiting.served();
            }
            RegistryEvent::Released { .. } => region.releases.record(now),
            RegistryEvent::Unmet { .. } => {
                region.rate.record(now);
                region.waiting.unmet(now);
            }
            RegistryEvent::StateChanged { name, state, .. } => match state {
                GameServerState::Scheduled => region.starts.scheduled(name, now),
                GameServerState::Ready => region.starts.ready(name, now),
                s if s.is_terminal() => region.starts.gone(name),
                _ => {}
            },
        }
        // Every event may change a decision or what the status shows (a server turning
        // Ready makes its slots free): recompute, debounced.
        true
    }

    /// The webhook reviews `fleet` needs before [`Self::decide`]: one per region whose
    /// policy in force at `wall` is a Webhook, in Agones' `FleetAutoscaleRequest` shape.
    pub fn webhook_calls(&mut self, fleet: &str, servers: &[GameServer], wall: DateTime<Utc>) -> Vec<WebhookCall> {
        let Some(f) = self.fleets.iter().find(|f| f.spec.name == fleet) else { return Vec::new() };
        let mut calls = Vec::new();
        for region in &f.regions {
            let Some(Leaf::Webhook(policy)) = policy::resolve(f.scaler.policy_for(&region.name), wall).leaf else {
                continue;
            };
            self.reviews += 1;
            let status = RegionStatus::observe(servers, &f.spec, &region.name);
            let request = review_request(&f.spec, &region.name, &status, self.reviews);
            calls.push(WebhookCall { region: region.name.clone(), policy: policy.clone(), request });
        }
        calls
    }

    /// Decides every region of `fleet` from its server records (every record of the
    /// fleet), at `now` on the autoscaler's clock and `wall` for schedules. Answers the
    /// regions whose desired replicas changed.
    pub fn decide(
        &mut self,
        fleet: &str,
        servers: &[GameServer],
        now: Instant,
        wall: DateTime<Utc>,
        webhooks: &WebhookAnswers,
    ) -> Vec<Change> {
        let Some(f) = self.fleet_mut(fleet) else { return Vec::new() };
        let at_ms = u64::try_from(wall.timestamp_millis()).unwrap_or(0);
        f.updated_at_ms = at_ms;
        let mut changes = Vec::new();
        for region in &mut f.regions {
            let status = RegionStatus::observe(servers, &f.spec, &region.name);
            let resolved = policy::resolve(f.scaler.policy_for(&region.name), wall);
            let window = match resolved.leaf {
                Some(Leaf::Adaptive(a)) => a.rate_window,
                _ => DEFAULT_RATE_WINDOW,
            };
            let signals = Signals {
                waiting: region.waiting.count(now),
                rate: region.rate.rate(now, window),
                release_rate: region.releases.rate(now, window),
                measured_start: region.starts.slowest(),
                current: region.desired,
                webhook: webhooks.get(&region.name).cloned(),
            };
            let decision = policy::decide(resolved.leaf, &status, &signals);
            let stabilised = region.stabiliser.update(now, decision.replicas);
            // A policy whose bounds changed (a schedule began or ended) is obeyed at once.
            let to = policy::clamp(resolved.leaf, stabilised);
            let message = explain(&decision, to, &f.scaler);
            let from = region.desired;
            if to != from {
                region.desired = to;
                if region.decisions.len() == MAX_DECISIONS {
                    region.decisions.pop_front();
                }
                let reason = decision.reason.as_str().to_string();
                region.decisions.push_back(ScaleDecision { at_ms, from, to, reason, message: message.clone() });
                changes.push(Change {
                    fleet: f.spec.name.clone(),
                    region: region.name.clone(),
                    from,
                    to,
                    reason: decision.reason,
                    message: message.clone(),
                });
            }
            region.explained = Some(RegionAutoscalerStatus {
                region: region.name.clone(),
                policy: resolved.path,
                desired_replicas: to,
                current_replicas: status.replicas,
                buffer: BufferStatus { unit: decision.unit, target: decision.buffer, free: status.free(decision.unit) },
                inputs: PolicyInputs {
                    used_worlds: status.used_worlds,
                    world_capacity: status.world_capacity,
                    busy_servers: status.busy,
                    waiting_requests: signals.waiting,
                    allocation_rate: signals.rate,
                    server_start_seconds: start_seconds(resolved.leaf, signals.measured_start),
                    start_measured: signals.measured_start.is_some(),
                    webhook: webhook_note(&signals),
                },
                decisions: region.decisions.iter().cloned().collect(),
            });
        }
        changes
    }

    /// The explained state of `fleet`, as of its last [`Self::decide`].
    pub fn status(&self, fleet: &str) -> Option<FleetAutoscalerStatus> {
        let f = self.fleets.iter().find(|f| f.spec.name == fleet)?;
        Some(FleetAutoscalerStatus {
            fleet: f.spec.name.clone(),
            updated_at_ms: f.updated_at_ms,
            regions: f.regions.iter().filter_map(|r| r.explained.clone()).collect(),
        })
    }

    /// Every autoscaled fleet's [`Self::status`], by name.
    pub fn statuses(&self) -> BTreeMap<String, FleetAutoscalerStatus> {
        self.fleets().filter_map(|name| self.status(name).map(|s| (name.to_string(), s))).collect()
    }

    /// When a decision may change with no event: a stabiliser due to let go, or a
    /// waiting request due to stop counting.
    pub fn next_wake(&self) -> Option<Instant> {
        self.fleets
            .iter()
            .flat_map(|f| &f.regions)
            .flat_map(|r| [r.stabiliser.next_fall(), r.waiting.next_expiry()])
            .flatten()
            .min()
    }
}

fn start_seconds(leaf: Option<Leaf<'_>>, measured: Option<Duration>) -> f64 {
    let assumed = match leaf {
        Some(Leaf::Adaptive(a)) => a.start_time,
        _ => Duration::ZERO,
    };
    measured.unwrap_or(assumed).as_secs_f64()
}

fn webhook_note(signals: &Signals) -> Option<String> {
    signals.webhook.as_ref().map(|answer| match answer {
        Ok(r) => format!("scale: {}, replicas: {}", r.scale, r.replicas),
        Err(e) => format!("failed: {e}"),
    })
}

/// The decision's sum, and why the answer differs from it when the stabiliser holds.
fn explain(decision: &Decision, to: u32, scaler: &FleetAutoscalerSpec) -> String {
    if to > decision.replicas {
        format!(
            "{}; the policy wants {} but scale-down goes at most {} server(s) per {:?}, after no higher need for {:?}",
            decision.message,
            decision.replicas,
            scaler.scale_down_step,
            scaler.scale_down_period,
            scaler.scale_down_delay
        )
    } else {
        decision.message.clone()
    }
}

/// Agones' request for one region: the fleet's name, its labels plus the region's, and
/// the region's status with `worlds` and `players` as counters.
fn review_request(fleet: &FleetSpec, region: &str, status: &RegionStatus, uid: u64) -> FleetAutoscaleRequest {
    let counter = |count: u32, capacity: u32| AggregatedCounterStatus {
        allocated_count: u64::from(count),
        allocated_capacity: u64::from(capacity),
        count: u64::from(count),
        capacity: u64::from(capacity),
    };
    let mut labels = fleet.labels.clone();
    labels.insert(REGION_LABEL.to_string(), region.to_string());
    let world_slots = status.replicas.saturating_mul(status.world_capacity);
    FleetAutoscaleRequest {
        uid: format!("{}-{region}-{uid}", fleet.name),
        name: fleet.name.clone(),
        namespace: "default".into(),
        status: FleetStatus {
            replicas: status.replicas,
            ready_replicas: status.ready,
            reserved_replicas: status.reserved,
            allocated_replicas: status.allocated,
            counters: BTreeMap::from([
                ("worlds".to_string(), counter(status.used_worlds, world_slots)),
                ("players".to_string(), counter(status.players, status.player_capacity)),
            ]),
        },
        metadata: Some(ObjectMeta {
            name: fleet.name.clone(),
            namespace: "default".into(),
            labels,
            annotations: BTreeMap::new(),
        }),
        region: region.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "
fleets:
  - name: town
    worldCapacity: 10
    template: { command: [gaia-gameserver] }
    regions: [{ name: eu, replicas: 1 }, { name: us, replicas: 0 }]
autoscalers:
  - fleet: town
    scaleDownDelay: 30s
    scaleDownStep: 1
    scaleDownPeriod: 10s
    policy: { buffer: { bufferSize: 5, minReplicas: 0, maxReplicas: 10 } }
    regions:
      us: { adaptive: { minBuffer: 0, startTime: 20s, maxReplicas: 10 } }
";

    fn wall() -> DateTime<Utc> {
        "2026-11-24T12:00:00Z".parse().expect("time parses")
    }

    fn servers(region: &str, worlds: &[u32]) -> Vec<GameServer> {
        worlds
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let mut s = GameServer::scheduled(format!("{region}{i}"), "town", region, 10, 300);
                s.state = if w > 0 { GameServerState::Allocated } else { GameServerState::Ready };
                s.worlds = w;
                s
            })
            .collect()
    }

    fn allocated(region: &str) -> RegistryEvent {
        RegistryEvent::Allocated { fleet: "town".into(), region: region.into() }
    }

    #[test]
    fn unmet_demand_scales_a_region_from_zero_and_explains_why() {
        let config = FleetConfig::from_yaml(CONFIG).expect("config parses");
        let t0 = Instant::now();
        let mut a = Autoscaler::new(&config, &policy::initial_desired(&config, wall()), t0);
        let none = WebhookAnswers::new();
        assert!(a.decide("town", &[], t0, wall(), &none).iter().all(|c| c.region == "eu"));
        assert_eq!(a.desired()[&("town".to_string(), "us".to_string())], 0, "no traffic in us");

        assert!(a.observe(t0, &RegistryEvent::Unmet { fleet: "town".into(), region: Some("us".into()) }));
        let changes = a.decide("town", &[], t0, wall(), &none);
        let us: Vec<_> = changes.iter().filter(|c| c.region == "us").collect();
        assert_eq!(us.len(), 1);
        assert_eq!((us[0].from, us[0].to, us[0].reason), (0, 1, Reason::UnmetDemand));

        let status = a.status("town").expect("town is autoscaled");
        let us = status.regions.iter().find(|r| r.region == "us").expect("us explained");
        assert_eq!(us.policy, "Adaptive");
        assert_eq!(us.inputs.waiting_requests, 1);
        assert_eq!(us.inputs.server_start_seconds, 20.0);
        assert!(!us.inputs.start_measured);
        assert_eq!(us.decisions.len(), 1);
        assert!(us.decisions[0].message.contains("1 waiting"), "{}", us.decisions[0].message);

        // The server comes up (Scheduled -> Ready measured) and the request is served.
        let changed = |state| RegistryEvent::StateChanged {
            name: "us0".into(),
            fleet: "town".into(),
            region: "us".into(),
            state,
        };
        a.observe(t0, &changed(GameServerState::Scheduled));
        a.observe(t0 + Duration::from_secs(7), &changed(GameServerState::Ready));
        a.observe(t0 + Duration::from_secs(7), &allocated("us"));
        a.decide("town", &servers("us", &[1]), t0 + Duration::from_secs(7), wall(), &none);
        let status = a.status("town").expect("town");
        let us = status.regions.iter().find(|r| r.region == "us").expect("us");
        assert_eq!(us.inputs.waiting_requests, 0);
        assert_eq!((us.inputs.server_start_seconds, us.inputs.start_measured), (7.0, true));
        assert!(us.inputs.allocation_rate > 0.0);
    }

    #[test]
    fn scale_down_waits_then_steps() {
        let config = FleetConfig::from_yaml(CONFIG).expect("config parses");
        let t0 = Instant::now();
        let start: DesiredReplicas = [(("town".to_string(), "eu".to_string()), 4)].into_iter().collect();
        let mut a = Autoscaler::new(&config, &start, t0);
        let none = WebhookAnswers::new();
        let eu = |a: &Autoscaler| a.desired()[&("town".to_string(), "eu".to_string())];
        let idle = servers("eu", &[0, 0, 0, 0]);
        a.decide("town", &idle, t0 + Duration::from_secs(1), wall(), &none);
        assert_eq!(eu(&a), 4, "held for the scale-down delay");
        let status = a.status("town").expect("town");
        assert_eq!(status.regions[0].buffer, BufferStatus { unit: Default::default(), target: 5, free: 40 });
        assert_eq!(a.next_wake(), Some(t0 + Duration::from_secs(30)));
        a.decide("town", &idle, t0 + Duration::from_secs(30), wall(), &none);
        assert_eq!(eu(&a), 3, "one step of 1");
        a.decide("town", &idle, t0 + Duration::from_secs(35), wall(), &none);
        assert_eq!(eu(&a), 3, "the next step waits 10 s");
        a.decide("town", &idle, t0 + Duration::from_secs(40), wall(), &none);
        assert_eq!(eu(&a), 2);
        a.decide("town", &idle, t0 + Duration::from_secs(50), wall(), &none);
        assert_eq!(eu(&a), 1, "a buffer of 5 needs one server of 10");
        let status = a.status("town").expect("town");
        let messages: Vec<_> = status.regions[0].decisions.iter().map(|d| (d.from, d.to)).collect();
        assert_eq!(messages, vec![(4, 3), (3, 2), (2, 1)]);
    }

    #[test]
    fn webhook_reviews_carry_the_region() {
        let yaml = CONFIG.replace(
            "policy: { buffer: { bufferSize: 5, minReplicas: 0, maxReplicas: 10 } }",
            "policy: { webhook: { url: 'http://scaler:8000/scale' } }",
        );
        let config = FleetConfig::from_yaml(&yaml).expect("config parses");
        let t0 = Instant::now();
        let mut a = Autoscaler::new(&config, &policy::initial_desired(&config, wall()), t0);
        let calls = a.webhook_calls("town", &servers("eu", &[3, 0]), wall());
        assert_eq!(calls.len(), 1, "us has its own adaptive policy");
        let call = &calls[0];
        assert_eq!(call.region, "eu");
        assert_eq!(call.request.name, "town");
        let status = &call.request.status;
        assert_eq!((status.replicas, status.ready_replicas, status.allocated_replicas), (2, 1, 1));
        assert_eq!(
            status.counters["worlds"],
            AggregatedCounterStatus { allocated_count: 3, allocated_capacity: 20, count: 3, capacity: 20 }
        );
        let labels = &call.request.metadata.as_ref().expect("metadata").labels;
        assert_eq!(labels[REGION_LABEL], "eu");

        let answers: WebhookAnswers = [(
            "eu".to_string(),
            Ok(FleetAutoscaleResponse { uid: call.request.uid.clone(), scale: true, replicas: 6 }),
        )]
        .into_iter()
        .collect();
        let changes = a.decide("town", &servers("eu", &[3, 0]), t0, wall(), &answers);
        let eu = changes.iter().find(|c| c.region == "eu").expect("eu changed");
        assert_eq!((eu.from, eu.to, eu.reason), (1, 6, Reason::Webhook));
    }

    #[test]
    fn reconfiguring_keeps_regions_adds_new_ones_and_drops_unscaled_fleets() {
        let config = FleetConfig::from_yaml(CONFIG).expect("config parses");
        let t0 = Instant::now();
        let mut a = Autoscaler::new(&config, &policy::initial_desired(&config, wall()), t0);
        a.observe(t0, &allocated("eu"));
        a.decide("town", &servers("eu", &[1]), t0, wall(), &WebhookAnswers::new());

        let grown = CONFIG.replace(
            "regions: [{ name: eu, replicas: 1 }, { name: us, replicas: 0 }]",
            "regions: [{ name: eu, replicas: 1 }, { name: us, replicas: 0 }, { name: ap, replicas: 2 }]",
        );
        let grown = FleetConfig::from_yaml(&grown).expect("config parses");
        a.reconfigure(&grown, &a.desired(), t0 + Duration::from_secs(1));
        let desired = a.desired();
        assert_eq!(desired[&("town".to_string(), "ap".to_string())], 2, "a new region starts at its replicas");
        a.decide("town", &servers("eu", &[1]), t0 + Duration::from_secs(1), wall(), &WebhookAnswers::new());
        let status = a.status("town").expect("town");
        let eu = status.regions.iter().find(|r| r.region == "eu").expect("eu");
        assert!(eu.inputs.allocation_rate > 0.0, "eu kept its measured rate");

        let unscaled = FleetConfig { autoscalers: Vec::new(), ..grown };
        a.reconfigure(&unscaled, &a.desired(), t0 + Duration::from_secs(2));
        assert_eq!(a.fleets().count(), 0);
        assert!(a.desired().is_empty());
    }
}
