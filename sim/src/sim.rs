//! One policy over one scenario, step by step on a virtual clock.
//!
//! [`Sim`] owns the simulated world: the registry's records ([`State::servers`]), which
//! world lives where, the queue of waiting allocation requests per region, the servers
//! still starting. Each [`Sim::step`] plays, at one instant:
//!
//! 1. servers whose start time has passed turn Ready;
//! 2. worlds whose lifetime has passed end (`Released`);
//! 3. per region, waiting requests past their deadline fail, then new arrivals join the
//!    FIFO queue, and the queue is served in order with [`gaia_registry::choose`] (Packed);
//!    a request that finds no slot is reported once (`Unmet`);
//! 4. the real [`Autoscaler`] decides (it has observed every event above);
//! 5. the real [`gaia_controller::plan`] is executed: Start (a Scheduled record, Ready after
//!    a sampled start time), Stop (an idle server goes), Drain (the server is marked
//!    Draining);
//! 6. draining servers move their worlds, one by one, to servers `choose` picks; an empty
//!    draining server goes;
//! 7. [`check_invariants`] runs; a violation stops the run.
//!
//! The autoscaler never reads a clock: it is handed `base + offset` (a
//! `tokio::time::Instant` taken once, plus virtual time) and the virtual wall clock.
//! Random numbers come from seeded streams: one per region for arrivals and lifetimes (so
//! every policy sees exactly the same demand) and one for server start times.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use gaia_api::allocation::AllocationRequest;
use gaia_api::fleet::{DesiredReplicas, FleetConfig, TEMPLATE_LABEL};
use gaia_api::gameserver::{GameServer, GameServerState};
use gaia_controller::{Action, is_idle, plan};
use gaia_fleet_autoscaler::{Autoscaler, Leaf, WebhookAnswers, initial_desired, resolve};
use gaia_registry::{RegistryEvent, choose};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, Poisson};
use tokio::time::Instant;

use crate::error::{SimError, Violation};
use crate::report::{RegionSample, Report, Sample};
use crate::scenario::{FLEET, Policy, Scenario};

/// What the invariants are checked on: the records and the world ledger after a step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    /// Steps played so far (the one just played, once one was).
    pub step: u64,
    /// Time since the trace started (negative during the warm-up).
    pub at_ms: i64,
    /// Live records (nothing terminal is kept), sorted by name.
    pub servers: Vec<GameServer>,
    /// The ledger: world ids by the server they live on.
    pub worlds: BTreeMap<String, Vec<u64>>,
    /// Worlds ever placed (moves not counted), ended, and moved by drains.
    pub placed: u64,
    pub ended: u64,
    pub moved: u64,
    /// The autoscaler's desired replicas after the step.
    pub desired: DesiredReplicas,
    /// `(minReplicas, maxReplicas)` of the policy in force per region; a region with no
    /// bounded policy in force (a Webhook, an inactive Schedule) is absent.
    pub bounds: BTreeMap<String, (u32, u32)>,
}

impl State {
    pub fn server(&self, name: &str) -> Option<&GameServer> {
        self.index(name).map(|i| &self.servers[i])
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.servers.binary_search_by(|s| s.name.as_str().cmp(name)).ok()
    }

    /// Live servers in `region`.
    pub fn live(&self, region: &str) -> usize {
        self.servers.iter().filter(|s| s.region == region).count()
    }
}

/// Checks, on a state after a step:
/// - no world is lost: every world on the ledger lives on a live record that counts it,
///   every record counts exactly the worlds on the ledger, within its capacity, and
///   `placed - ended` worlds are on the ledger (moves neither add nor remove one); a
///   server removed while it hosted worlds shows up here;
/// - a record's state matches its worlds (Ready hosts none, Allocated some);
/// - each region's desired replicas are within the bounds of the policy in force, and
///   its live servers (Scheduled and Draining included) are at most `maxReplicas`.
pub fn check_invariants(state: &State) -> Result<(), Violation> {
    let violation = |server: Option<&str>, message: String| Violation {
        step: state.step,
        at_ms: state.at_ms,
        server: server.map(str::to_string),
        message,
    };
    // Both are sorted by name: walk them side by side.
    let mut on_ledger: u64 = 0;
    let mut ledger = state.worlds.iter().filter(|(_, w)| !w.is_empty()).peekable();
    for s in &state.servers {
        if let Some((name, worlds)) = ledger.next_if(|(name, _)| name.as_str() < s.name.as_str()) {
            return Err(violation(Some(name), format!("removed while hosting {} world(s)", worlds.len())));
        }
        let hosted = match ledger.next_if(|(name, _)| name.as_str() == s.name.as_str()) {
            Some((_, worlds)) => worlds.len(),
            None => 0,
        };
        on_ledger += hosted as u64;
        if s.worlds as usize != hosted {
            return Err(violation(
                Some(&s.name),
                format!("its record counts {} world(s) but {hosted} live on it", s.worlds),
            ));
        }
        if s.worlds > s.world_capacity {
            return Err(violation(
                Some(&s.name),
                format!("{} worlds over a capacity of {}", s.worlds, s.world_capacity),
            ));
        }
        let consistent = match s.state {
            GameServerState::Scheduled | GameServerState::Ready => s.worlds == 0,
            GameServerState::Allocated => s.worlds > 0,
            GameServerState::Draining => true,
            _ => false,
        };
        if !consistent {
            return Err(violation(Some(&s.name), format!("state {} with {} world(s)", s.state, s.worlds)));
        }
    }
    if let Some((name, worlds)) = ledger.next() {
        return Err(violation(Some(name), format!("removed while hosting {} world(s)", worlds.len())));
    }
    let live_worlds = state.placed.saturating_sub(state.ended);
    if on_ledger != live_worlds || state.ended > state.placed {
        return Err(violation(
            None,
            format!(
                "world(s) lost: {} placed - {} ended = {live_worlds} should live, {on_ledger} do",
                state.placed, state.ended
            ),
        ));
    }
    for (region, &(min, max)) in &state.bounds {
        let desired = state.desired.get(&(FLEET.to_string(), region.clone())).copied().unwrap_or(0);
        if desired < min || desired > max {
            return Err(violation(
                None,
                format!("region {region}: desired replicas {desired} outside the policy's [{min}, {max}]"),
            ));
        }
        let live = state.live(region);
        if live > max as usize {
            return Err(violation(None, format!("region {region}: {live} live servers over maxReplicas {max}")));
        }
    }
    Ok(())
}

/// A deliberate fault, to show that [`check_invariants`] catches what a broken
/// controller or allocator would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Remove this server's record, whatever it hosts (a Stop that ignored `is_idle`).
    RemoveServer(String),
    /// Forget one world of this server (an allocator that lost a slot).
    LoseWorld(String),
}

/// A request waiting for a slot.
#[derive(Debug, Clone)]
struct Request {
    arrived: u64,
    lifetime: u64,
    /// Reported as unmet already (it had to wait).
    unmet: bool,
}

const NO_WEBHOOKS: &WebhookAnswers = &WebhookAnswers::new();

/// One run of one policy over one scenario.
pub struct Sim {
    scenario: Scenario,
    policy: String,
    config: FleetConfig,
    scaler: Autoscaler,
    template: String,
    /// The autoscaler's clock at virtual time 0 (the start of the warm-up).
    base: Instant,
    wall_base: DateTime<Utc>,
    step_ms: u64,
    warmup_ms: u64,
    end_ms: u64,
    deadline_ms: u64,
    sample_ms: u64,
    now_ms: u64,
    state: State,
    /// Names of the live records, the controller's `running`.
    running: BTreeSet<String>,
    requests: Vec<AllocationRequest>,
    queues: Vec<VecDeque<Request>>,
    /// Explicit arrivals (ms since the trace started) not yet played, per region.
    fixed: Vec<VecDeque<u64>>,
    rates: Vec<f64>,
    ends: BinaryHeap<Reverse<(u64, u64)>>,
    world_server: HashMap<u64, String>,
    starts: BinaryHeap<Reverse<(u64, String)>>,
    draining: BTreeSet<String>,
    arrival_rngs: Vec<StdRng>,
    start_rng: StdRng,
    lifetime: Exp<f64>,
    next_world: u64,
    next_server: u64,
    /// Bumped by every change to what `plan` reads (desired replicas, records, running).
    generation: u64,
    /// The generation `plan` last saw; it is pure, so with nothing changed since (and its
    /// actions, which change something, all executed) it would answer nothing again.
    planned: Option<u64>,
    plan_every_step: bool,
    stats: Stats,
}

struct Stats {
    requests: u64,
    allocated: u64,
    waited: u64,
    failed: u64,
    failed_at: Vec<Duration>,
    /// In steps.
    waits: Histogram<u64>,
    max_wait_ms: u64,
    server_ms: u128,
    world_ms: u128,
    peak: u32,
    starts: u64,
    stops: u64,
    drains: u64,
    moves: u64,
    samples: Vec<Sample>,
}

/// Independent seeded streams from one scenario seed.
fn stream(seed: u64, n: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(n + 1))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Sim {
    /// A run of `policy` (which need not be one of the scenario's) over `scenario`.
    pub fn new(scenario: &Scenario, policy: &Policy) -> Result<Self, SimError> {
        scenario.validate()?;
        let config = scenario.fleet_config(policy)?;
        let warmup_ms = millis(scenario.warmup);
        let wall_base = scenario.start
            - chrono::Duration::from_std(scenario.warmup).map_err(|_| crate::error::invalid("warmup", "too long"))?;
        let base = Instant::now();
        let scaler = Autoscaler::new(&config, &initial_desired(&config, wall_base), base);
        let template = config.fleets[0].template_version();
        let regions = &scenario.regions;
        let mean = scenario.world_lifetime.as_secs_f64();
        let lifetime = Exp::new(1.0 / mean).map_err(|e| crate::error::invalid("worldLifetime", e.to_string()))?;
        // Waits are whole steps, recorded as such: exact up to 2047 steps. Fixed bounds, as
        // `saturating_record` clamps rather than resizes.
        let waits = Histogram::new_with_bounds(1, 1 << 40, 3).expect("valid histogram bounds");
        Ok(Self {
            policy: policy.name.clone(),
            config,
            scaler,
            template,
            base,
            wall_base,
            step_ms: millis(scenario.step),
            warmup_ms,
            end_ms: warmup_ms.saturating_add(millis(scenario.duration)),
            deadline_ms: millis(scenario.deadline),
            sample_ms: millis(scenario.sample_every),
            now_ms: 0,
            state: State::default(),
            running: BTreeSet::new(),
            requests: regions
                .iter()
                .map(|r| AllocationRequest { fleet: FLEET.into(), regions: vec![r.name.clone()], ..Default::default() })
                .collect(),
            queues: regions.iter().map(|_| VecDeque::new()).collect(),
            fixed: regions.iter().map(|r| r.arrivals.iter().map(|o| millis(o.0)).collect()).collect(),
            rates: vec![0.0; regions.len()],
            ends: BinaryHeap::new(),
            world_server: HashMap::new(),
            starts: BinaryHeap::new(),
            draining: BTreeSet::new(),
            arrival_rngs: (0..regions.len() as u64).map(|i| stream(scenario.seed, i + 1)).collect(),
            start_rng: stream(scenario.seed, 0),
            lifetime,
            next_world: 0,
            next_server: 0,
            generation: 0,
            planned: None,
            plan_every_step: false,
            stats: Stats {
                requests: 0,
                allocated: 0,
                waited: 0,
                failed: 0,
                failed_at: Vec::new(),
                waits,
                max_wait_ms: 0,
                server_ms: 0,
                world_ms: 0,
                peak: 0,
                starts: 0,
                stops: 0,
                drains: 0,
                moves: 0,
                samples: Vec::new(),
            },
            scenario: scenario.clone(),
        })
    }

    /// Calls `plan` at every step even when nothing it reads changed (by default it is
    /// skipped then, as its answer would be the same: nothing). For checking that the
    /// shortcut changes nothing.
    pub fn plan_every_step(&mut self, every: bool) {
        self.plan_every_step = every;
    }

    fn touch(&mut self) {
        self.generation += 1;
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Whether the whole trace has been played.
    pub fn done(&self) -> bool {
        self.now_ms >= self.end_ms
    }

    /// Plays the whole trace and reports.
    pub fn run(mut self) -> Result<Report, SimError> {
        while !self.done() {
            self.step()?;
        }
        Ok(self.report())
    }

    /// Applies `fault` to the state at once, bypassing every check (tests).
    pub fn inject(&mut self, fault: Fault) {
        self.touch();
        match fault {
            Fault::RemoveServer(name) => {
                if let Some(i) = self.state.index(&name) {
                    self.state.servers.remove(i);
                    self.running.remove(&name);
                }
            }
            Fault::LoseWorld(name) => {
                if let Some(world) = self.state.worlds.get_mut(&name).and_then(Vec::pop) {
                    self.world_server.remove(&world);
                }
            }
        }
    }

    /// [`check_invariants`] on the current state, as the run does after every step.
    pub fn check(&self) -> Result<(), SimError> {
        check_invariants(&self.state).map_err(|violation| self.invariant(violation))
    }

    fn invariant(&self, violation: Violation) -> SimError {
        SimError::Invariant { scenario: self.scenario.name.clone(), policy: self.policy.clone(), violation }
    }

    fn violation(&self, server: Option<&str>, message: String) -> SimError {
        self.invariant(Violation {
            step: self.state.step,
            at_ms: self.at_ms(self.now_ms),
            server: server.map(str::to_string),
            message,
        })
    }

    fn at_ms(&self, now: u64) -> i64 {
        i64::try_from(now).unwrap_or(i64::MAX) - i64::try_from(self.warmup_ms).unwrap_or(i64::MAX)
    }

    fn instant(&self, now: u64) -> Instant {
        self.base + Duration::from_millis(now)
    }

    fn wall(&self, now: u64) -> DateTime<Utc> {
        self.wall_base + chrono::Duration::milliseconds(i64::try_from(now).unwrap_or(i64::MAX))
    }

    fn measured(&self, at: u64) -> bool {
        at >= self.warmup_ms
    }

    fn observe(&mut self, event: RegistryEvent) {
        let now = self.instant(self.now_ms);
        self.scaler.observe(now, &event);
    }

    fn state_changed(&mut self, name: &str, region: &str, state: GameServerState) {
        self.observe(RegistryEvent::StateChanged {
            name: name.to_string(),
            fleet: FLEET.into(),
            region: region.to_string(),
            state,
        });
    }

    /// Plays one step.
    pub fn step(&mut self) -> Result<(), SimError> {
        let now = self.now_ms;
        self.state.step += 1;
        self.state.at_ms = self.at_ms(now);
        self.finish_starts(now);
        self.end_worlds(now)?;
        for region in 0..self.scenario.regions.len() {
            self.arrivals(region, now);
            self.serve(region, now);
        }
        let wall = self.wall(now);
        self.scaler.decide(FLEET, &self.state.servers, self.instant(now), wall, NO_WEBHOOKS);
        let desired = self.scaler.desired();
        if desired != self.state.desired {
            self.state.desired = desired;
            self.touch();
        }
        if self.plan_every_step || self.planned != Some(self.generation) {
            self.planned = Some(self.generation);
            let actions = plan(
                &gaia_controller::rollouts(&self.config.fleets),
                &self.state.desired,
                &self.state.servers,
                &self.running,
            );
            for action in actions {
                self.execute(action, now)?;
            }
        }
        self.drain(now)?;
        self.state.bounds = self.bounds(wall);
        self.check()?;
        self.account(now);
        self.now_ms = now + self.step_ms;
        Ok(())
    }

    fn finish_starts(&mut self, now: u64) {
        while let Some(Reverse((at, _))) = self.starts.peek()
            && *at <= now
        {
            let Some(Reverse((_, name))) = self.starts.pop() else { break };
            // A server stopped while it was starting has no record any more.
            let Some(i) = self.state.index(&name) else { continue };
            let server = &mut self.state.servers[i];
            if server.state != GameServerState::Scheduled {
                continue;
            }
            server.state = GameServerState::Ready;
            server.address = Some(format!("sim://{name}"));
            let region = server.region.clone();
            self.touch();
            self.state_changed(&name, &region, GameServerState::Ready);
        }
    }

    fn end_worlds(&mut self, now: u64) -> Result<(), SimError> {
        while let Some(Reverse((at, _))) = self.ends.peek()
            && *at <= now
        {
            let Some(Reverse((_, world))) = self.ends.pop() else { break };
            let Some(name) = self.world_server.remove(&world) else {
                return Err(self.violation(None, format!("world {world} ended but lives nowhere")));
            };
            let Some(i) = self.state.index(&name) else {
                return Err(self.violation(Some(&name), format!("world {world} ended on a server that was removed")));
            };
            let server = &mut self.state.servers[i];
            server.worlds = server.worlds.saturating_sub(1);
            if server.worlds == 0 && server.state == GameServerState::Allocated {
                server.state = GameServerState::Ready;
            }
            let region = server.region.clone();
            if let Some(worlds) = self.state.worlds.get_mut(&name) {
                worlds.retain(|&w| w != world);
            }
            self.state.ended += 1;
            self.touch();
            self.observe(RegistryEvent::Released { fleet: FLEET.into(), region });
        }
        Ok(())
    }

    fn arrivals(&mut self, region: usize, now: u64) {
        let trace = &self.scenario.regions[region];
        let offset = Duration::from_millis(now.saturating_sub(self.warmup_ms));
        let rate = trace.rate_at(offset, self.wall(now));
        self.rates[region] = rate;
        let lambda = rate * self.step_ms as f64 / 1000.0;
        let measured = self.measured(now);
        let rng = &mut self.arrival_rngs[region];
        let mut count = match Poisson::new(lambda) {
            Ok(poisson) if lambda > 0.0 => poisson.sample(rng) as u64,
            _ => 0,
        };
        if measured {
            let trace_ms = now - self.warmup_ms;
            while self.fixed[region].front().is_some_and(|&at| at <= trace_ms) {
                self.fixed[region].pop_front();
                count += 1;
            }
        }
        for _ in 0..count {
            let lifetime = (self.lifetime.sample(rng) * 1000.0).round().max(1.0) as u64;
            self.queues[region].push_back(Request { arrived: now, lifetime, unmet: false });
        }
        if measured {
            self.stats.requests += count;
        }
    }

    /// Fails the requests past their deadline, then places the rest in order.
    fn serve(&mut self, region: usize, now: u64) {
        while self.queues[region].front().is_some_and(|r| now - r.arrived > self.deadline_ms) {
            if let Some(request) = self.queues[region].pop_front()
                && self.measured(request.arrived)
            {
                self.stats.failed += 1;
                self.stats.failed_at.push(Duration::from_millis(request.arrived - self.warmup_ms));
            }
        }
        while let Some(request) = self.queues[region].front() {
            let Some(target) = choose(&self.state.servers, &self.requests[region]).map(|s| s.name.clone()) else {
                break;
            };
            let (arrived, lifetime) = (request.arrived, request.lifetime);
            self.queues[region].pop_front();
            let world = self.next_world;
            self.next_world += 1;
            self.place(&target, world);
            self.state.placed += 1;
            self.ends.push(Reverse((now + lifetime, world)));
            if self.measured(arrived) {
                self.stats.allocated += 1;
                self.stats.waits.saturating_record((now - arrived) / self.step_ms);
                self.stats.max_wait_ms = self.stats.max_wait_ms.max(now - arrived);
            }
        }
        // Whoever is left found no slot: each is reported once.
        let name = &self.scenario.regions[region].name;
        let mut unmet = 0;
        for request in self.queues[region].iter_mut().filter(|r| !r.unmet) {
            request.unmet = true;
            unmet += 1;
            if request.arrived >= self.warmup_ms {
                self.stats.waited += 1;
            }
        }
        for _ in 0..unmet {
            let event = RegistryEvent::Unmet { fleet: FLEET.into(), region: Some(name.clone()) };
            self.scaler.observe(self.base + Duration::from_millis(now), &event);
        }
    }

    /// Takes a slot on `target` for `world` (Ready -> Allocated) and observes it.
    fn place(&mut self, target: &str, world: u64) {
        let Some(i) = self.state.index(target) else { return };
        let server = &mut self.state.servers[i];
        server.worlds += 1;
        if server.state == GameServerState::Ready {
            server.state = GameServerState::Allocated;
        }
        let region = server.region.clone();
        self.state.worlds.entry(target.to_string()).or_default().push(world);
        self.world_server.insert(world, target.to_string());
        self.touch();
        self.observe(RegistryEvent::Allocated { fleet: FLEET.into(), region });
    }

    fn execute(&mut self, action: Action, now: u64) -> Result<(), SimError> {
        let measured = self.measured(now);
        self.touch();
        match action {
            Action::Start { fleet, region } => {
                self.next_server += 1;
                let name = format!("{fleet}-{region}-{:06}", self.next_server);
                let mut server = GameServer::scheduled(
                    &name,
                    &fleet,
                    &region,
                    self.scenario.world_capacity,
                    self.config.fleets[0].player_capacity,
                );
                server.labels.insert(TEMPLATE_LABEL.into(), self.template.clone());
                let at = self.state.servers.partition_point(|s| s.name < name);
                self.state.servers.insert(at, server);
                self.running.insert(name.clone());
                let range = self.scenario.server_start;
                let start = self.start_rng.random_range(millis(range.min)..=millis(range.max));
                self.starts.push(Reverse((now + start, name.clone())));
                self.state_changed(&name, &region, GameServerState::Scheduled);
                self.stats.starts += u64::from(measured);
            }
            Action::Stop { name } => {
                let Some(i) = self.state.index(&name) else {
                    return Err(self.violation(Some(&name), "plan stopped a server with no record".into()));
                };
                if !is_idle(&self.state.servers[i]) {
                    let s = &self.state.servers[i];
                    let message =
                        format!("plan stopped a server that is not idle ({}, {} world(s))", s.state, s.worlds);
                    return Err(self.violation(Some(&name), message));
                }
                self.remove(i);
                self.stats.stops += u64::from(measured);
            }
            Action::Drain { name } => {
                let Some(i) = self.state.index(&name) else {
                    return Err(self.violation(Some(&name), "plan drained a server with no record".into()));
                };
                let server = &mut self.state.servers[i];
                server.state = GameServerState::Draining;
                let region = server.region.clone();
                self.draining.insert(name.clone());
                self.state_changed(&name, &region, GameServerState::Draining);
                self.stats.drains += u64::from(measured);
            }
            Action::Kill { name } => {
                return Err(self.violation(Some(&name), "plan killed a server whose record is live".into()));
            }
        }
        Ok(())
    }

    /// Removes the record at `i` (it shuts down).
    fn remove(&mut self, i: usize) {
        let server = self.state.servers.remove(i);
        self.touch();
        self.running.remove(&server.name);
        self.draining.remove(&server.name);
        if self.state.worlds.get(&server.name).is_some_and(Vec::is_empty) {
            self.state.worlds.remove(&server.name);
        }
        self.state_changed(&server.name, &server.region, GameServerState::Shutdown);
    }

    /// Moves the worlds of draining servers while there is room; removes the empty ones.
    fn drain(&mut self, now: u64) -> Result<(), SimError> {
        let draining: Vec<String> = self.draining.iter().cloned().collect();
        for name in draining {
            let Some(i) = self.state.index(&name) else {
                return Err(self.violation(Some(&name), "a draining server lost its record".into()));
            };
            let region = self.state.servers[i].region.clone();
            let Some(r) = self.scenario.regions.iter().position(|r| r.name == region) else { continue };
            let worlds = self.state.worlds.get(&name).cloned().unwrap_or_default();
            for world in worlds {
                let Some(target) = choose(&self.state.servers, &self.requests[r]).map(|s| s.name.clone()) else {
                    break;
                };
                self.place(&target, world);
                if let Some(i) = self.state.index(&name) {
                    self.state.servers[i].worlds -= 1;
                }
                if let Some(on) = self.state.worlds.get_mut(&name) {
                    on.retain(|&w| w != world);
                }
                self.observe(RegistryEvent::Released { fleet: FLEET.into(), region: region.clone() });
                self.state.moved += 1;
                if self.measured(now) {
                    self.stats.moves += 1;
                }
            }
            if let Some(i) = self.state.index(&name)
                && self.state.servers[i].worlds == 0
            {
                self.remove(i);
            }
        }
        Ok(())
    }

    fn bounds(&self, wall: DateTime<Utc>) -> BTreeMap<String, (u32, u32)> {
        let Some(spec) = self.config.autoscalers.first() else { return BTreeMap::new() };
        self.scenario
            .regions
            .iter()
            .filter_map(|r| {
                let bounds = match resolve(spec.policy_for(&r.name), wall).leaf {
                    Some(Leaf::Buffer(b)) => (b.min_replicas, b.max_replicas),
                    Some(Leaf::Adaptive(a)) => (a.min_replicas, a.max_replicas),
                    Some(Leaf::Webhook(_)) | None => return None,
                };
                Some((r.name.clone(), bounds))
            })
            .collect()
    }

    /// Server time, peak and samples, once the warm-up is over.
    fn account(&mut self, now: u64) {
        if !self.measured(now) {
            return;
        }
        let live = u32::try_from(self.state.servers.len()).unwrap_or(u32::MAX);
        self.stats.server_ms += u128::from(live) * u128::from(self.step_ms);
        let worlds = self.state.placed - self.state.ended;
        self.stats.world_ms += u128::from(worlds) * u128::from(self.step_ms);
        self.stats.peak = self.stats.peak.max(live);
        let offset = now - self.warmup_ms;
        if !offset.is_multiple_of(self.sample_ms) {
            return;
        }
        let status = self.scaler.status(FLEET);
        let capacity = self.scenario.world_capacity;
        let regions = self
            .scenario
            .regions
            .iter()
            .zip(&self.rates)
            .map(|(r, &demand)| {
                let (mut servers, mut used) = (0, 0);
                for s in self.state.servers.iter().filter(|s| s.region == r.name) {
                    servers += 1;
                    used += s.worlds;
                }
                let explained = status.as_ref().and_then(|st| st.regions.iter().find(|x| x.region == r.name));
                let buffer_target = explained.map_or(0, |x| match x.buffer.unit {
                    gaia_api::autoscaler::BufferUnit::Worlds => x.buffer.target,
                    gaia_api::autoscaler::BufferUnit::Servers => x.buffer.target.saturating_mul(capacity),
                });
                RegionSample {
                    demand,
                    used_worlds: used,
                    servers,
                    capacity: servers * capacity,
                    buffer_target,
                    desired: self.state.desired.get(&(FLEET.to_string(), r.name.clone())).copied().unwrap_or(0),
                }
            })
            .collect();
        self.stats.samples.push(Sample { offset: Duration::from_millis(offset), regions });
    }

    /// The report so far (the whole run's once [`Self::done`]).
    pub fn report(&self) -> Report {
        let waits = &self.stats.waits;
        let unfinished = self.queues.iter().flatten().filter(|r| self.measured(r.arrived)).count() as u64;
        Report {
            scenario: self.scenario.name.clone(),
            policy: self.policy.clone(),
            requests: self.stats.requests,
            allocated: self.stats.allocated,
            waited: self.stats.waited,
            failed: self.stats.failed,
            failed_at: self.stats.failed_at.clone(),
            unfinished,
            wait_p50_ms: waits.value_at_quantile(0.5) * self.step_ms,
            wait_p99_ms: waits.value_at_quantile(0.99) * self.step_ms,
            wait_max_ms: self.stats.max_wait_ms,
            server_hours: self.stats.server_ms as f64 / 3_600_000.0,
            world_hours: self.stats.world_ms as f64 / 3_600_000.0,
            peak_servers: self.stats.peak,
            starts: self.stats.starts,
            stops: self.stats.stops,
            drains: self.stats.drains,
            moves: self.stats.moves,
            samples: self.stats.samples.clone(),
        }
    }
}
