//! The policies as pure functions: what one region of one fleet looks like
//! ([`RegionStatus`]), which policy is in force ([`resolve`]), and how many servers it
//! wants ([`decide`]).
//!
//! Nothing here knows about the registry or the clock: the wall time a schedule needs,
//! the measured allocation rate and start time and the webhook's answer are passed in
//! ([`Signals`]). [`crate::Stabiliser`] smooths the answers over time and
//! [`crate::Autoscaler`] feeds both.

use std::time::Duration;

use chrono::{DateTime, Utc};
use gaia_api::autoscaler::{
    AdaptivePolicy, AutoscalerPolicy, BufferPolicy, BufferUnit, FleetAutoscaleResponse, IntOrPercent, WebhookPolicy,
};
use gaia_api::fleet::{DesiredReplicas, FleetConfig, FleetSpec};
use gaia_api::gameserver::{GameServer, GameServerState};

/// One region of one fleet, as the policies see it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegionStatus {
    /// Live servers: every record that is not terminal (Shutdown, Unhealthy, Error).
    /// Scheduled servers count: they are on their way.
    pub replicas: u32,
    /// Servers in state Ready, Reserved and Allocated (Agones' status counts).
    pub ready: u32,
    pub reserved: u32,
    pub allocated: u32,
    /// Live servers that are not idle: they host worlds, or are Reserved or Draining.
    pub busy: u32,
    /// World slots in use (leased ones included), summed over the live servers. A
    /// Reserved or Draining server takes no new world, so all its slots count as used.
    pub used_worlds: u32,
    /// World slots per server, from the fleet spec.
    pub world_capacity: u32,
    /// Players connected, and player slots, over the live servers.
    pub players: u32,
    pub player_capacity: u32,
}

impl RegionStatus {
    /// Reads the status of `region` of `fleet` from the registry's records. Records of
    /// other fleets or regions, and terminal ones, are ignored.
    pub fn observe(servers: &[GameServer], fleet: &FleetSpec, region: &str) -> RegionStatus {
        let mut status = RegionStatus { world_capacity: fleet.world_capacity, ..Default::default() };
        for s in servers.iter().filter(|s| s.fleet == fleet.name && s.region == region && !s.state.is_terminal()) {
            let full = matches!(s.state, GameServerState::Reserved | GameServerState::Draining);
            let used = if full { fleet.world_capacity.max(s.worlds) } else { s.worlds };
            status.replicas = status.replicas.saturating_add(1);
            status.used_worlds = status.used_worlds.saturating_add(used);
            status.players = status.players.saturating_add(s.players);
            status.player_capacity = status.player_capacity.saturating_add(s.player_capacity);
            if full || s.worlds > 0 {
                status.busy += 1;
            }
            match s.state {
                GameServerState::Ready => status.ready += 1,
                GameServerState::Reserved => status.reserved += 1,
                GameServerState::Allocated => status.allocated += 1,
                _ => {}
            }
        }
        status
    }

    /// Free world slots if the region had `replicas` servers with the worlds in use now.
    pub fn free_slots_at(&self, replicas: u32) -> u64 {
        (u64::from(replicas) * u64::from(self.world_capacity)).saturating_sub(u64::from(self.used_worlds))
    }

    /// What is free now, in `unit`: world slots, or servers that host nothing.
    pub fn free(&self, unit: BufferUnit) -> u32 {
        match unit {
            BufferUnit::Worlds => saturate(self.free_slots_at(self.replicas)),
            BufferUnit::Servers => self.replicas.saturating_sub(self.busy),
        }
    }
}

/// What a region's policy is told besides its status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Signals {
    /// Allocation requests that found no free slot and still wait.
    pub waiting: u32,
    /// Allocations per second (with unmet requests) over the policy's rate window.
    pub rate: f64,
    /// World slots given back per second over the same window.
    pub release_rate: f64,
    /// The slowest recent server start (Scheduled to Ready), once one was measured.
    pub measured_start: Option<Duration>,
    /// The desired replicas now: what a Webhook that declines, fails, or an inactive
    /// Schedule keeps.
    pub current: u32,
    /// The webhook's answer, or why there is none (Webhook policies only).
    pub webhook: Option<Result<FleetAutoscaleResponse, String>>,
}

/// The policy that decides, once schedules and chains are resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Leaf<'a> {
    Buffer(&'a BufferPolicy),
    Webhook(&'a WebhookPolicy),
    Adaptive(&'a AdaptivePolicy),
}

/// The policy in force at some instant, and how it was reached.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved<'a> {
    /// `None`: a Schedule outside its window, or a chain none of whose entries applies.
    pub leaf: Option<Leaf<'a>>,
    /// E.g. `Chain/december/Schedule/Adaptive` or `Schedule (inactive)`.
    pub path: String,
}

/// The policy in force at `now`: a Schedule's policy while it is active; a chain's first
/// entry that applies (a Schedule entry applies while active, any other always).
pub fn resolve(policy: &AutoscalerPolicy, now: DateTime<Utc>) -> Resolved<'_> {
    match policy {
        AutoscalerPolicy::Schedule(s) if s.is_active(now) => {
            Resolved { leaf: leaf(&s.policy), path: format!("Schedule/{}", s.policy.kind()) }
        }
        AutoscalerPolicy::Schedule(_) => Resolved { leaf: None, path: "Schedule (inactive)".into() },
        AutoscalerPolicy::Chain(entries) => {
            for entry in entries {
                match &entry.policy {
                    AutoscalerPolicy::Schedule(s) if s.is_active(now) => {
                        let path = format!("Chain/{}/Schedule/{}", entry.id, s.policy.kind());
                        return Resolved { leaf: leaf(&s.policy), path };
                    }
                    AutoscalerPolicy::Schedule(_) => {}
                    other => {
                        return Resolved { leaf: leaf(other), path: format!("Chain/{}/{}", entry.id, other.kind()) };
                    }
                }
            }
            Resolved { leaf: None, path: "Chain (no entry applies)".into() }
        }
        other => Resolved { leaf: leaf(other), path: other.kind().into() },
    }
}

fn leaf(p: &AutoscalerPolicy) -> Option<Leaf<'_>> {
    match p {
        AutoscalerPolicy::Buffer(b) => Some(Leaf::Buffer(b)),
        AutoscalerPolicy::Webhook(w) => Some(Leaf::Webhook(w)),
        AutoscalerPolicy::Adaptive(a) => Some(Leaf::Adaptive(a)),
        // Validation keeps schedules and chains out of schedules.
        AutoscalerPolicy::Schedule(_) | AutoscalerPolicy::Chain(_) => None,
    }
}

/// Why a region wants the replicas it wants; also the `reason` label of the decision
/// metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The buffer on top of the worlds in use.
    Buffer,
    /// As `Buffer`, with requests waiting for a slot added.
    UnmetDemand,
    /// Held up by minReplicas.
    MinReplicas,
    /// Capped by maxReplicas: less than the buffer is free.
    MaxReplicas,
    /// The webhook's answer.
    Webhook,
    /// The webhook said not to scale.
    WebhookKeep,
    /// The webhook failed: replicas are kept.
    WebhookError,
    /// No policy in force (a Schedule outside its window): replicas are kept.
    Inactive,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Buffer => "buffer",
            Self::UnmetDemand => "unmet_demand",
            Self::MinReplicas => "min_replicas",
            Self::MaxReplicas => "max_replicas",
            Self::Webhook => "webhook",
            Self::WebhookKeep => "webhook_keep",
            Self::WebhookError => "webhook_error",
            Self::Inactive => "inactive",
        }
    }
}

/// What a policy wants for one region, before stabilisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub replicas: u32,
    /// What the policy keeps free, in `unit` (for a webhook or no policy: what is free).
    pub buffer: u32,
    pub unit: BufferUnit,
    pub reason: Reason,
    /// The sum behind it, in words.
    pub message: String,
}

/// Servers `leaf` wants for a region in `status` (see the policies in
/// [`gaia_api::autoscaler`]):
///
/// - Buffer, worlds: `ceil((used + waiting + buffer) / worldCapacity)`; a percentage `p`
///   makes the slots `ceil((used + waiting) * 100 / (100 - p))`.
/// - Buffer, servers: `busy + ceil(waiting / worldCapacity) + buffer`; a percentage `p`
///   makes it `ceil((busy + ceil(waiting / worldCapacity)) * 100 / (100 - p))`.
/// - Adaptive: a buffer of `ceil(safetyFactor * (net * start + sqrt(rate * start)))`
///   world slots, within `[minBuffer, maxBuffer]`: what new allocations take while a new
///   server starts. `net` is the allocation rate less the rate slots are given back (at
///   least 0), `start` the measured start or the policy's `startTime`; the square root is
///   the spread of Poisson arrivals over one start, so a steady region keeps a small
///   buffer and a growing one a large one.
/// - each clamped into `[minReplicas, maxReplicas]` (max wins should min exceed it).
/// - Webhook: its `replicas` when it says `scale`; the current count when it declines or
///   fails. No policy: the current count.
///
/// The answer depends on the worlds in use, not on the servers running, so starting
/// servers never feeds back into it. Nothing in use, no buffer and no minimum gives 0:
/// the region scales to zero, and a waiting request brings it back. A world capacity
/// of 0 (refused by validation) is taken as 1.
pub fn decide(leaf: Option<Leaf<'_>>, status: &RegionStatus, signals: &Signals) -> Decision {
    match leaf {
        Some(Leaf::Buffer(b)) => buffer(b.buffer_size, b.unit, b.min_replicas, b.max_replicas, status, signals, ""),
        Some(Leaf::Adaptive(a)) => {
            let start = signals.measured_start.unwrap_or(a.start_time).as_secs_f64();
            let measured = if signals.measured_start.is_some() { "measured" } else { "assumed" };
            let rate = if signals.rate.is_finite() { signals.rate.max(0.0) } else { 0.0 };
            let released = if signals.release_rate.is_finite() { signals.release_rate.max(0.0) } else { 0.0 };
            let net = (rate - released).max(0.0);
            let wanted = (a.safety_factor * (net * start + (rate * start).sqrt())).ceil();
            // Saturating float-to-int conversion: NaN gives 0, huge values u32::MAX.
            let size = (wanted as u32).max(a.min_buffer).min(a.max_buffer.unwrap_or(u32::MAX));
            let why = format!(
                "a buffer of {size} = {} safety x ({net:.2} net allocations/s x {start:.1} s start ({measured}) + \
                 sqrt({rate:.2} allocations/s x {start:.1} s)), within [{}, {}]; ",
                a.safety_factor,
                a.min_buffer,
                a.max_buffer.map_or("none".to_string(), |m| m.to_string()),
            );
            let int = IntOrPercent::Int(size);
            buffer(int, BufferUnit::Worlds, a.min_replicas, a.max_replicas, status, signals, &why)
        }
        Some(Leaf::Webhook(_)) => {
            let keep = |reason, message| Decision {
                replicas: signals.current,
                buffer: status.free(BufferUnit::Worlds),
                unit: BufferUnit::Worlds,
                reason,
                message,
            };
            match &signals.webhook {
                Some(Ok(answer)) if answer.scale => Decision {
                    replicas: u32::try_from(answer.replicas.max(0)).unwrap_or(u32::MAX),
                    buffer: status.free(BufferUnit::Worlds),
                    unit: BufferUnit::Worlds,
                    reason: Reason::Webhook,
                    message: format!("the webhook asked for {} replicas", answer.replicas),
                },
                Some(Ok(_)) => {
                    keep(Reason::WebhookKeep, format!("the webhook said not to scale: {} kept", signals.current))
                }
                Some(Err(e)) => {
                    keep(Reason::WebhookError, format!("the webhook failed ({e}): {} kept", signals.current))
                }
                None => keep(Reason::WebhookError, format!("the webhook was not asked: {} kept", signals.current)),
            }
        }
        None => Decision {
            replicas: signals.current,
            buffer: status.free(BufferUnit::Worlds),
            unit: BufferUnit::Worlds,
            reason: Reason::Inactive,
            message: format!("no policy in force: {} kept", signals.current),
        },
    }
}

fn buffer(
    size: IntOrPercent,
    unit: BufferUnit,
    min: u32,
    max: u32,
    status: &RegionStatus,
    signals: &Signals,
    why: &str,
) -> Decision {
    let capacity = u64::from(status.world_capacity.max(1));
    let waiting = u64::from(signals.waiting);
    let (raw, target, sum) = match unit {
        BufferUnit::Worlds => {
            let demand = u64::from(status.used_worlds) + waiting;
            let slots = match size {
                IntOrPercent::Int(n) => demand + u64::from(n),
                IntOrPercent::Percent(p) => percent_of_total(demand, p),
            };
            let raw = slots.div_ceil(capacity);
            let sum = format!(
                "{} world(s) in use + {} waiting + {} free = {slots} slots: {raw} server(s) of {capacity}",
                status.used_worlds,
                signals.waiting,
                slots - demand,
            );
            (raw, slots - demand, sum)
        }
        BufferUnit::Servers => {
            let demand = u64::from(status.busy) + waiting.div_ceil(capacity);
            let raw = match size {
                IntOrPercent::Int(n) => demand + u64::from(n),
                IntOrPercent::Percent(p) => percent_of_total(demand, p),
            };
            let sum = format!(
                "{} busy server(s) + {} for {} waiting + {} empty = {raw} server(s)",
                status.busy,
                waiting.div_ceil(capacity),
                signals.waiting,
                raw - demand
            );
            (raw, raw - demand, sum)
        }
    };
    let raw = saturate(raw);
    let replicas = raw.max(min).min(max);
    let reason = if replicas < raw {
        Reason::MaxReplicas
    } else if replicas > raw {
        Reason::MinReplicas
    } else if signals.waiting > 0 {
        Reason::UnmetDemand
    } else {
        Reason::Buffer
    };
    let clamp = match reason {
        Reason::MaxReplicas => format!(", capped at maxReplicas {max}"),
        Reason::MinReplicas => format!(", raised to {replicas} by minReplicas {min}"),
        _ => String::new(),
    };
    Decision { replicas, buffer: saturate(target), unit, reason, message: format!("{why}{sum}{clamp}") }
}

/// The total of which `demand` is `100 - p` percent, rounded up: `p`% of it is free.
fn percent_of_total(demand: u64, p: u32) -> u64 {
    let p = u64::from(p.min(99));
    (demand * 100).div_ceil(100 - p)
}

fn saturate(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// `replicas` clamped into a policy's `[min, max]`, when the policy in force at `now`
/// has bounds (Buffer and Adaptive).
pub fn clamp(leaf: Option<Leaf<'_>>, replicas: u32) -> u32 {
    match leaf {
        Some(Leaf::Buffer(b)) => replicas.max(b.min_replicas).min(b.max_replicas),
        Some(Leaf::Adaptive(a)) => replicas.max(a.min_replicas).min(a.max_replicas),
        Some(Leaf::Webhook(_)) | None => replicas,
    }
}

/// Where every (fleet, region) of `config` starts: the region's `replicas`, clamped into
/// the bounds of the policy in force at `now` for a fleet an autoscaler manages.
pub fn initial_desired(config: &FleetConfig, now: DateTime<Utc>) -> DesiredReplicas {
    let mut desired = DesiredReplicas::new();
    for fleet in &config.fleets {
        let scaler = config.autoscaler(&fleet.name);
        for region in &fleet.regions {
            let replicas = match scaler {
                Some(s) => clamp(resolve(s.policy_for(&region.name), now).leaf, region.replicas),
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

    fn buffer_policy(size: IntOrPercent, unit: BufferUnit, min: u32, max: u32) -> BufferPolicy {
        BufferPolicy { buffer_size: size, unit, min_replicas: min, max_replicas: max }
    }

    fn status(used_worlds: u32, world_capacity: u32) -> RegionStatus {
        RegionStatus { used_worlds, world_capacity, ..Default::default() }
    }

    fn waiting(n: u32) -> Signals {
        Signals { waiting: n, ..Default::default() }
    }

    fn decide_buffer(p: &BufferPolicy, s: &RegionStatus, signals: &Signals) -> (u32, Reason) {
        let d = decide(Some(Leaf::Buffer(p)), s, signals);
        (d.replicas, d.reason)
    }

    #[test]
    fn buffer_of_world_slots() {
        use IntOrPercent::Int;
        use Reason::*;
        // (buffer, min, max, used, capacity, waiting) -> (desired, reason)
        type Row = ((u32, u32, u32, u32, u32, u32), (u32, Reason), &'static str);
        let table: &[Row] = &[
            ((10, 1, 4, 0, 20, 0), (1, Buffer), "an empty region needs one server for a buffer of 10"),
            ((10, 1, 4, 10, 20, 0), (1, Buffer), "20 slots hold 10 used + 10 free exactly"),
            ((10, 1, 4, 11, 20, 0), (2, Buffer), "one more world needs a second server"),
            ((10, 1, 4, 35, 20, 0), (3, Buffer), "45 slots needed -> 3 servers"),
            ((10, 1, 4, 200, 20, 0), (4, MaxReplicas), "capped by max"),
            ((0, 0, 4, 0, 20, 0), (0, Buffer), "scale to zero with no buffer and no world"),
            ((0, 0, 4, 0, 20, 1), (1, UnmetDemand), "and back: one waiting request brings a server"),
            ((0, 0, 4, 0, 20, 21), (2, UnmetDemand), "21 waiting need two servers of 20"),
            ((0, 0, 4, 1, 20, 0), (1, Buffer), "a single world keeps one server"),
            ((0, 2, 4, 0, 20, 0), (2, MinReplicas), "min holds servers up"),
            ((5, 0, 0, 50, 10, 0), (0, MaxReplicas), "max 0 wins over any need"),
            ((3, 0, 10, 0, 1, 0), (3, Buffer), "one world per server"),
            ((1, 0, 10, 4, 0, 0), (5, Buffer), "capacity 0 is taken as 1"),
            ((1, 5, 2, 0, 10, 0), (2, MinReplicas), "min above max: max wins"),
            ((u32::MAX, 0, u32::MAX, u32::MAX, 1, u32::MAX), (u32::MAX, UnmetDemand), "no overflow"),
        ];
        for &((size, min, max, used, capacity, wait), want, why) in table {
            let p = buffer_policy(Int(size), BufferUnit::Worlds, min, max);
            assert_eq!(decide_buffer(&p, &status(used, capacity), &waiting(wait)), want, "{why}");
        }
    }

    #[test]
    fn percent_buffers_round_up() {
        use IntOrPercent::Percent;
        // (percent, used, capacity) -> (desired, target free slots)
        type Row = ((u32, u32, u32), (u32, u32), &'static str);
        let table: &[Row] = &[
            ((20, 0, 10), (0, 0), "nothing in use: nothing to keep a share of"),
            ((20, 8, 10), (1, 2), "8 used is 80% of 10 slots: exactly 20% free"),
            ((20, 9, 10), (2, 3), "9 used needs 11.25 -> 12 slots: 3 free, 2 servers"),
            ((50, 1, 10), (1, 1), "1 used needs 2 slots"),
            ((99, 1, 10), (10, 99), "99% free: 100 slots for one world"),
            ((1, 99, 10), (10, 1), "1% of 100 slots: 99.99 rounds up to 100"),
            ((33, 10, 1), (15, 5), "10 * 100 / 67 = 14.9 -> 15"),
        ];
        for &((p, used, capacity), (want, target), why) in table {
            let policy = buffer_policy(Percent(p), BufferUnit::Worlds, 0, 1000);
            let d = decide(Some(Leaf::Buffer(&policy)), &status(used, capacity), &Signals::default());
            assert_eq!((d.replicas, d.buffer), (want, target), "{why}: {}", d.message);
        }
    }

    #[test]
    fn buffer_of_empty_servers() {
        use IntOrPercent::{Int, Percent};
        let s = RegionStatus { replicas: 6, busy: 4, used_worlds: 13, world_capacity: 10, ..Default::default() };
        let d = |size, wait| decide_buffer(&buffer_policy(size, BufferUnit::Servers, 0, 100), &s, &waiting(wait));
        assert_eq!(d(Int(2), 0), (6, Reason::Buffer), "4 busy + 2 empty");
        assert_eq!(d(Int(0), 0), (4, Reason::Buffer));
        assert_eq!(d(Int(2), 11), (8, Reason::UnmetDemand), "11 waiting need 2 more servers");
        assert_eq!(d(Percent(50), 0), (8, Reason::Buffer), "half empty");
        assert_eq!(d(Percent(25), 0), (6, Reason::Buffer), "4 / 0.75 = 5.33 -> 6");
        assert_eq!(s.free(BufferUnit::Servers), 2);
        assert_eq!(s.free(BufferUnit::Worlds), 47);
    }

    #[test]
    fn adaptive_buffer_follows_rate_and_start_time() {
        let policy = AdaptivePolicy {
            safety_factor: 2.0,
            min_buffer: 2,
            max_buffer: Some(100),
            rate_window: Duration::from_secs(60),
            start_time: Duration::from_secs(10),
            min_replicas: 0,
            max_replicas: 50,
        };
        // (allocation rate, release rate, measured start, worlds in use) -> (servers, buffer)
        let d = |rate: f64, released: f64, start: Option<u64>, used: u32| {
            let measured_start = start.map(Duration::from_secs);
            let signals = Signals { rate, release_rate: released, measured_start, ..Default::default() };
            let d = decide(Some(Leaf::Adaptive(&policy)), &status(used, 10), &signals);
            (d.replicas, d.buffer)
        };
        assert_eq!(d(0.0, 0.0, None, 0), (1, 2), "no traffic: minBuffer 2 needs one server");
        assert_eq!(d(0.4, 0.0, None, 0), (2, 12), "2 x (0.4 x 10 + sqrt(4)) = 12");
        assert_eq!(d(0.4, 0.0, Some(40), 0), (4, 40), "a measured 40 s start: 2 x (16 + 4)");
        assert_eq!(d(0.4, 0.4, Some(40), 30), (4, 8), "steady (releases match): only the spread, 2 x 4");
        assert_eq!(d(0.4, 1.0, Some(40), 30), (4, 8), "shrinking: never below the spread");
        assert_eq!(d(100.0, 0.0, Some(30), 0), (10, 100), "maxBuffer caps the buffer");
        assert_eq!(d(100.0, 0.0, Some(30), 900), (50, 100), "maxReplicas caps the servers");
        assert_eq!(d(f64::NAN, f64::INFINITY, None, 0), (1, 2), "no number is no rate");
        let no_min = AdaptivePolicy { min_buffer: 0, ..policy };
        let quiet = decide(Some(Leaf::Adaptive(&no_min)), &status(0, 10), &Signals::default());
        assert_eq!(quiet.replicas, 0, "no traffic and no minimum: zero");
        let back = decide(Some(Leaf::Adaptive(&no_min)), &status(0, 10), &waiting(1));
        assert_eq!((back.replicas, back.reason), (1, Reason::UnmetDemand), "and back on demand");
    }

    #[test]
    fn webhook_answers_are_used_or_current_replicas_kept() {
        let policy = WebhookPolicy {
            url: Some("http://x".into()),
            service: None,
            ca_bundle: None,
            timeout: Duration::from_secs(1),
        };
        let d = |webhook| {
            let signals = Signals { current: 4, webhook, ..Default::default() };
            let d = decide(Some(Leaf::Webhook(&policy)), &status(3, 10), &signals);
            (d.replicas, d.reason)
        };
        let answer = |scale, replicas| Some(Ok(FleetAutoscaleResponse { uid: "u".into(), scale, replicas }));
        assert_eq!(d(answer(true, 9)), (9, Reason::Webhook));
        assert_eq!(d(answer(true, 0)), (0, Reason::Webhook), "a webhook may scale to zero");
        assert_eq!(d(answer(false, 9)), (4, Reason::WebhookKeep));
        assert_eq!(d(Some(Err("timed out".into()))), (4, Reason::WebhookError));
        assert_eq!(d(None), (4, Reason::WebhookError));
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("test time parses")
    }

    #[test]
    fn schedules_and_chains_resolve_by_wall_time() {
        let chain: AutoscalerPolicy = serde_norway::from_str(
            "
chain:
  - id: december
    schedule:
      between: { start: '2026-12-01T00:00:00Z', end: '2027-01-01T00:00:00Z' }
      policy: { buffer: { bufferSize: 50, maxReplicas: 20 } }
  - id: evenings
    schedule:
      activePeriod: { startCron: '0 18 * * *', duration: 4h }
      policy: { adaptive: { maxReplicas: 10 } }
  - id: default
    buffer: { bufferSize: 5, maxReplicas: 10 }
",
        )
        .expect("chain parses");
        let path = |t| resolve(&chain, at(t)).path;
        assert_eq!(path("2026-12-24T20:00:00Z"), "Chain/december/Schedule/Buffer", "first applicable wins");
        assert_eq!(path("2026-11-24T19:00:00Z"), "Chain/evenings/Schedule/Adaptive");
        assert_eq!(path("2026-11-24T12:00:00Z"), "Chain/default/Buffer");
        let december = resolve(&chain, at("2026-12-24T20:00:00Z"));
        let d = decide(december.leaf, &status(0, 10), &Signals::default());
        assert_eq!(d.replicas, 5, "the December buffer of 50");

        let AutoscalerPolicy::Chain(entries) = &chain else { unreachable!() };
        let lone = &entries[0].policy;
        let outside = resolve(lone, at("2026-11-24T12:00:00Z"));
        assert_eq!((outside.leaf, outside.path.as_str()), (None, "Schedule (inactive)"));
        let kept = decide(outside.leaf, &status(0, 10), &Signals { current: 7, ..Default::default() });
        assert_eq!((kept.replicas, kept.reason), (7, Reason::Inactive), "a lone schedule out of its window keeps");
    }

    fn server(name: &str, fleet: &str, region: &str, state: GameServerState, worlds: u32) -> GameServer {
        let mut s = GameServer::scheduled(name, fleet, region, 20, 300);
        s.state = state;
        s.worlds = worlds;
        s.players = worlds * 2;
        s
    }

    fn config_from(yaml: &str) -> FleetConfig {
        FleetConfig::from_yaml(yaml).expect("test config parses")
    }

    #[test]
    fn observe_counts_live_servers_of_the_region_only() {
        use GameServerState::*;
        let yaml = "
fleets:
  - name: town
    worldCapacity: 20
    template: { command: [gaia-gameserver] }
    regions: [{ name: eu, replicas: 2 }]
";
        let fleet = config_from(yaml).fleets.remove(0);
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
        let status = RegionStatus::observe(&servers, &fleet, "eu");
        // Draining and Reserved servers take no world: all 20 of their slots count as used.
        let want = RegionStatus {
            replicas: 5,
            ready: 1,
            reserved: 1,
            allocated: 1,
            busy: 3,
            used_worlds: 7 + 20 + 20,
            world_capacity: 20,
            players: 20,
            player_capacity: 1500,
        };
        assert_eq!(status, want);
        assert_eq!(status.free_slots_at(5), 53);
        let empty = RegionStatus::observe(&servers, &fleet, "nowhere");
        assert_eq!(empty, RegionStatus { world_capacity: 20, ..Default::default() });
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
    regions:
      ap: { adaptive: { minReplicas: 3, maxReplicas: 8 } }
";
        let desired = initial_desired(&config_from(yaml), at("2026-11-24T12:00:00Z"));
        let want: DesiredReplicas =
            [(("town", "eu"), 1), (("town", "us"), 4), (("town", "ap"), 3), (("plain", "eu"), 9)]
                .into_iter()
                .map(|((f, r), n)| ((f.to_string(), r.to_string()), n))
                .collect();
        assert_eq!(desired, want);
    }

    proptest! {
        #[test]
        fn world_buffers_hold_within_bounds(
            size in 0u32..500,
            min in 0u32..20,
            span in 0u32..20,
            used in 0u32..2000,
            wait in 0u32..50,
            capacity in 1u32..50,
        ) {
            let max = min + span;
            let p = buffer_policy(IntOrPercent::Int(size), BufferUnit::Worlds, min, max);
            let s = status(used, capacity);
            let n = decide(Some(Leaf::Buffer(&p)), &s, &waiting(wait)).replicas;
            prop_assert!(n >= min && n <= max, "{n} outside [{min}, {max}]");
            let need = u64::from(size) + u64::from(wait);
            if n < max {
                prop_assert!(s.free_slots_at(n) >= need, "{n} servers leave too few free slots");
            }
            // And no more than needed: unless min holds it, one server fewer would not hold
            // the worlds in use plus the buffer and the waiting requests.
            if n > min {
                let slots = u64::from(n - 1) * u64::from(capacity);
                prop_assert!(slots < u64::from(used) + need, "{n} servers are more than needed");
            }
        }

        #[test]
        fn percent_buffers_keep_their_share_free(p in 1u32..100, used in 0u32..5000, capacity in 1u32..50) {
            let policy = buffer_policy(IntOrPercent::Percent(p), BufferUnit::Worlds, 0, u32::MAX);
            let s = status(used, capacity);
            let n = decide(Some(Leaf::Buffer(&policy)), &s, &Signals::default()).replicas;
            let total = u64::from(n) * u64::from(capacity);
            // At least p% of the capacity is free...
            prop_assert!(s.free_slots_at(n) * 100 >= total * u64::from(p), "{n} servers: less than {p}% free");
            // ...and one server fewer would not do.
            if n > 0 {
                let fewer = u64::from(n - 1) * u64::from(capacity);
                let free = fewer.saturating_sub(u64::from(used));
                prop_assert!(fewer < u64::from(used) || free * 100 < fewer * u64::from(p));
            }
        }
    }
}
