//! The in-memory registry: one process (embedded mode, tests).
//!
//! State is split per fleet, each behind its own mutex, so allocations in one fleet never
//! wait on another and an allocation is atomic: choose, take the slot and record the lease
//! happen under one lock, with no await in between. A second map finds a server's fleet
//! by name. Time is `tokio::time::Instant`, so leases and health timeouts can be tested on
//! tokio's paused clock; epochs alone read the wall clock (see [`Fleet::bump_epoch`]).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use dashmap::DashMap;
use gaia_api::allocation::{AllocationRequest, Lease};
use gaia_api::gameserver::{GameServer, GameServerState, HostedWorld, RegisterRequest};
use gaia_api::token::unix_ms;
use parking_lot::Mutex;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::choose::is_open;
use crate::{OpenIndex, Placement, Registry, RegistryError, RegistryEvent, Result, SweepReport};

#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// How long an allocation holds its slot before the first player must have joined.
    pub lease_ttl: Duration,
    /// How long a Shutdown/Unhealthy/Error record stays visible before it is removed.
    pub tombstone_ttl: Duration,
    /// Events buffered per subscriber before the oldest are dropped.
    pub event_capacity: usize,
    /// How long the epoch of a world that is placed nowhere is remembered after its last
    /// assignment. Only fencing of a late `world_started` needs it (see [`Fleet::prune_epochs`]).
    pub epoch_retention: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(30),
            tombstone_ttl: Duration::from_secs(60),
            event_capacity: 4096,
            epoch_retention: Duration::from_secs(3600),
        }
    }
}

struct Entry {
    record: GameServer,
    /// Last health ping or registration; scheduling time before either.
    last_seen: Instant,
    /// Whether the process has spoken at all (the initial delay applies until it has).
    spoken: bool,
    /// When the record entered its current state.
    since: Instant,
    /// The world count this server is listed under in the fleet's [`OpenIndex`], if it is.
    indexed: Option<u32>,
}

struct World {
    server: String,
    /// Unconfirmed allocation: the slot returns at the deadline unless a player joins.
    lease: Option<(Lease, Instant)>,
    /// The epoch of this assignment.
    epoch: u64,
}

/// The last epoch handed out for a world, and when.
struct Epoch {
    last: u64,
    at: Instant,
}

#[derive(Default)]
struct Fleet {
    servers: BTreeMap<String, Entry>,
    /// Declared in the fleet's spec, or where a server was scheduled.
    regions: HashSet<String>,
    /// The servers that can take a world, in choice order; kept by [`Fleet::reindex`].
    open: OpenIndex,
    worlds: HashMap<String, World>,
    idempotent: HashMap<String, (Placement, Instant)>,
    /// World id -> the idempotency key whose answer placed it.
    idem_of: HashMap<String, String>,
    /// World id -> last epoch. Outlives the world's placement: a world freed because its
    /// server died, or whose lease expired, keeps its entry, so its next epoch is higher.
    epochs: HashMap<String, Epoch>,
    /// What the sweep must look at, each in time order, so a sweep costs what expires
    /// rather than a scan of every world (the lease TTL is fixed, so deadlines come in the
    /// order they were set). Entries that went stale (a confirmed lease, a reused key, a
    /// newer epoch) are skipped when they come up.
    lease_queue: VecDeque<(Instant, String)>,
    idem_queue: VecDeque<(Instant, String)>,
    /// (assigned or last checked at, world id).
    epoch_queue: VecDeque<(Instant, String)>,
}

pub struct MemoryRegistry {
    config: RegistryConfig,
    fleets: DashMap<String, Arc<Mutex<Fleet>>>,
    /// Server name -> fleet name.
    fleet_of: DashMap<String, String>,
    events: broadcast::Sender<RegistryEvent>,
}

impl MemoryRegistry {
    pub fn new(config: RegistryConfig) -> Self {
        let (events, _) = broadcast::channel(config.event_capacity.max(1));
        Self { config, fleets: DashMap::new(), fleet_of: DashMap::new(), events }
    }

    fn fleet(&self, name: &str) -> Option<Arc<Mutex<Fleet>>> {
        self.fleets.get(name).map(|f| Arc::clone(&f))
    }

    fn fleet_or_create(&self, name: &str) -> Arc<Mutex<Fleet>> {
        Arc::clone(&self.fleets.entry(name.to_string()).or_default())
    }

    /// The fleet holding server `name`.
    fn fleet_of(&self, name: &str) -> Result<Arc<Mutex<Fleet>>> {
        let fleet = self.fleet_of.get(name).map(|f| f.clone()).ok_or_else(|| RegistryError::NotFound(name.into()))?;
        self.fleet(&fleet).ok_or_else(|| RegistryError::NotFound(name.into()))
    }

    /// Runs `f` on server `name` under its fleet's lock, then publishes the events it made.
    fn with_server<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut Fleet, &mut Vec<RegistryEvent>) -> Result<T>,
    ) -> Result<T> {
        let fleet = self.fleet_of(name)?;
        let mut events = Vec::new();
        let result = {
            let mut fleet = fleet.lock();
            if !fleet.servers.contains_key(name) {
                return Err(RegistryError::NotFound(name.into()));
            }
            f(&mut fleet, &mut events)
        };
        self.publish(events);
        result
    }

    fn publish(&self, events: Vec<RegistryEvent>) {
        for event in events {
            // No subscriber is fine.
            let _ = self.events.send(event);
        }
    }
}

fn entry<'a>(fleet: &'a mut Fleet, name: &str) -> Result<&'a mut Entry> {
    fleet.servers.get_mut(name).ok_or_else(|| RegistryError::NotFound(name.into()))
}

fn state_changed(record: &GameServer) -> RegistryEvent {
    RegistryEvent::StateChanged {
        name: record.name.clone(),
        fleet: record.fleet.clone(),
        region: record.region.clone(),
        state: record.state,
    }
}

fn released(record: &GameServer) -> RegistryEvent {
    RegistryEvent::Released { fleet: record.fleet.clone(), region: record.region.clone() }
}

fn set_state(entry: &mut Entry, to: GameServerState, now: Instant, events: &mut Vec<RegistryEvent>) {
    if entry.record.state != to {
        entry.record.state = to;
        entry.since = now;
        events.push(state_changed(&entry.record));
    }
}

impl Fleet {
    /// Puts `name` in, moves it within, or takes it out of the open index after its record
    /// changed. Every change to a record's state, address or world count calls it.
    fn reindex(&mut self, name: &str) {
        let Some(entry) = self.servers.get_mut(name) else { return };
        let key = is_open(&entry.record).then_some(entry.record.worlds);
        if entry.indexed == key {
            return;
        }
        if let Some(worlds) = entry.indexed {
            self.open.remove(&entry.record.region, worlds, name);
        }
        if let Some(worlds) = key {
            self.open.insert(&entry.record.region, worlds, name);
        }
        entry.indexed = key;
    }

    /// Forgets server `name` altogether.
    fn remove_server(&mut self, name: &str) -> Option<Entry> {
        let entry = self.servers.remove(name)?;
        if let Some(worlds) = entry.indexed {
            self.open.remove(&entry.record.region, worlds, name);
        }
        Some(entry)
    }

    /// The open server `req` should go to (see [`crate::choose`]), never `exclude`.
    fn choose(&self, req: &AllocationRequest, exclude: Option<&str>) -> Option<String> {
        let found = self.open.choose(req, exclude, |name| self.servers.get(name).map(|e| &e.record));
        found.map(|s| s.name.clone())
    }

    /// Gives back one world slot on `server`; an Allocated server with no world left is
    /// Ready again.
    fn release_slot(&mut self, server: &str, now: Instant, events: &mut Vec<RegistryEvent>) {
        if let Some(entry) = self.servers.get_mut(server) {
            entry.record.worlds = entry.record.worlds.saturating_sub(1);
            events.push(released(&entry.record));
            if entry.record.worlds == 0 && entry.record.state == GameServerState::Allocated {
                set_state(entry, GameServerState::Ready, now, events);
            }
        }
        self.reindex(server);
    }

    /// Takes one world slot on `server`; a Ready server becomes Allocated.
    fn take_slot(&mut self, server: &str, now: Instant, events: &mut Vec<RegistryEvent>) {
        if let Some(entry) = self.servers.get_mut(server) {
            entry.record.worlds += 1;
            events.push(RegistryEvent::Allocated {
                fleet: entry.record.fleet.clone(),
                region: entry.record.region.clone(),
            });
            if entry.record.state == GameServerState::Ready {
                set_state(entry, GameServerState::Allocated, now, events);
            }
        }
        self.reindex(server);
    }

    /// The next epoch of `world_id`, recorded as handed out.
    ///
    /// `max(last + 1, now in Unix ms)`: checkpoints (Redis, Postgres, SQLite) outlive this
    /// process, so a restarted in-memory registry, which has forgotten every epoch, must
    /// still never hand out one lower than it did before. The wall clock is that floor;
    /// `last + 1` keeps epochs strictly increasing within a millisecond or if the clock
    /// steps back while we run.
    fn bump_epoch(&mut self, world_id: &str, now: Instant) -> u64 {
        let floor = unix_ms(SystemTime::now());
        let epoch = match self.epochs.get(world_id) {
            Some(e) => (e.last + 1).max(floor),
            None => floor.max(1),
        };
        self.remember_epoch(world_id, epoch, now);
        epoch
    }

    fn remember_epoch(&mut self, world_id: &str, last: u64, now: Instant) {
        self.epochs.insert(world_id.to_string(), Epoch { last, at: now });
        self.epoch_queue.push_back((now, world_id.to_string()));
    }

    /// Assigns `world_id` to `server` (allocation or move): takes a slot there, held by a
    /// new lease until the first player joins, under the world's next epoch.
    fn place(
        &mut self,
        world_id: &str,
        server: &str,
        now: Instant,
        lease_ttl: Duration,
        events: &mut Vec<RegistryEvent>,
    ) -> (Lease, u64) {
        self.take_slot(server, now, events);
        let lease = Lease {
            id: uuid::Uuid::new_v4().simple().to_string(),
            expires_at_ms: unix_ms(SystemTime::now() + lease_ttl),
        };
        let epoch = self.bump_epoch(world_id, now);
        let world = World { server: server.to_string(), lease: Some((lease.clone(), now + lease_ttl)), epoch };
        self.worlds.insert(world_id.to_string(), world);
        self.lease_queue.push_back((now + lease_ttl, world_id.to_string()));
        (lease, epoch)
    }

    /// Keeps `placement` as the answer to idempotency key `key` until `expires`.
    fn remember_answer(&mut self, key: &str, placement: &Placement, expires: Instant) {
        self.idempotent.insert(key.to_string(), (placement.clone(), expires));
        self.idem_of.insert(placement.world_id.clone(), key.to_string());
        self.idem_queue.push_back((expires, key.to_string()));
    }

    /// Forgets the idempotent answer that placed `world_id`, if the key still gives it.
    fn forget_answer_of(&mut self, world_id: &str) {
        if let Some(key) = self.idem_of.remove(world_id)
            && self.idempotent.get(&key).is_some_and(|(p, _)| p.world_id == world_id)
        {
            self.idempotent.remove(&key);
        }
    }

    /// Gives back the slots of leases that ran out by `now`.
    fn expire_leases(&mut self, now: Instant, report: &mut SweepReport, events: &mut Vec<RegistryEvent>) {
        while let Some((deadline, world_id)) = self.lease_queue.pop_front() {
            if deadline > now {
                self.lease_queue.push_front((deadline, world_id));
                break;
            }
            let expired =
                self.worlds.get(&world_id).is_some_and(|w| w.lease.as_ref().is_some_and(|(_, d)| *d == deadline));
            if let Some(world) = expired.then(|| self.worlds.remove(&world_id)).flatten() {
                self.release_slot(&world.server, now, events);
                report.expired_leases.push(world_id);
            }
        }
        while let Some((expires, key)) = self.idem_queue.pop_front() {
            if expires > now {
                self.idem_queue.push_front((expires, key));
                break;
            }
            // Only the answer this entry was queued for; the key may have been reused since.
            if self.idempotent.get(&key).is_some_and(|(_, e)| *e == expires)
                && let Some((placement, _)) = self.idempotent.remove(&key)
                && self.idem_of.get(&placement.world_id) == Some(&key)
            {
                self.idem_of.remove(&placement.world_id);
            }
        }
    }

    /// The last epoch handed out for `world_id`; 0 when none is remembered.
    fn last_epoch(&self, world_id: &str) -> u64 {
        self.epochs.get(world_id).map_or(0, |e| e.last)
    }

    /// Forgets the epochs of worlds placed nowhere and last assigned `retention` ago, so
    /// the map does not grow with every world id ever seen. Only entries already below
    /// the wall clock go: the next [`Fleet::bump_epoch`] of such a world starts at the
    /// clock, above the forgotten value, so epochs stay monotonic. A world still placed
    /// (or above the clock) is looked at again one retention later.
    fn prune_epochs(&mut self, now: Instant, retention: Duration) {
        let floor = unix_ms(SystemTime::now());
        while let Some((at, world_id)) = self.epoch_queue.pop_front() {
            if at + retention > now {
                self.epoch_queue.push_front((at, world_id));
                break;
            }
            let Some(epoch) = self.epochs.get(&world_id) else { continue };
            if epoch.at > at {
                continue; // assigned again since; that assignment has its own entry
            }
            if epoch.at + retention > now || self.worlds.contains_key(&world_id) || epoch.last >= floor {
                self.epoch_queue.push_back((now, world_id));
            } else {
                self.epochs.remove(&world_id);
            }
        }
    }

    /// Forgets every world and answer that points at `server` (it is gone or terminal).
    fn drop_worlds_of(&mut self, server: &str) -> usize {
        let before = self.worlds.len();
        self.worlds.retain(|_, w| w.server != server);
        self.idempotent.retain(|_, (p, _)| p.server.name != server);
        let worlds = &self.worlds;
        self.idem_of.retain(|world, _| worlds.contains_key(world));
        before - self.worlds.len()
    }

    /// Moves `name` to `to` through the lifecycle rules; terminal states free its worlds.
    fn transition(
        &mut self,
        name: &str,
        to: GameServerState,
        now: Instant,
        events: &mut Vec<RegistryEvent>,
    ) -> Result<GameServer> {
        let entry = entry(self, name)?;
        let mut to = entry.record.state.transition(to)?;
        // "Ready" from a server that still hosts worlds means ready for more: it stays
        // Allocated, which is Ready-and-hosting.
        if to == GameServerState::Ready && entry.record.worlds > 0 {
            to = GameServerState::Allocated;
        }
        set_state(entry, to, now, events);
        let record = if to.is_terminal() {
            let freed = entry.record.worlds;
            entry.record.worlds = 0;
            let record = entry.record.clone();
            self.drop_worlds_of(name);
            events.extend((0..freed).map(|_| released(&record)));
            record
        } else {
            entry.record.clone()
        };
        self.reindex(name);
        Ok(record)
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn schedule(&self, server: GameServer) -> Result<GameServer> {
        let fleet = self.fleet_or_create(&server.fleet);
        let now = Instant::now();
        {
            let mut fleet = fleet.lock();
            if self.fleet_of.contains_key(&server.name) {
                return Err(RegistryError::AlreadyExists(server.name));
            }
            self.fleet_of.insert(server.name.clone(), server.fleet.clone());
            fleet.regions.insert(server.region.clone());
            let entry = Entry { record: server.clone(), last_seen: now, spoken: false, since: now, indexed: None };
            fleet.servers.insert(server.name.clone(), entry);
            fleet.reindex(&server.name);
        }
        self.publish(vec![state_changed(&server)]);
        Ok(server)
    }

    async fn declare_fleet(&self, fleet: &str, regions: &[String]) -> Result<()> {
        let fleet = self.fleet_or_create(fleet);
        fleet.lock().regions.extend(regions.iter().cloned());
        Ok(())
    }

    async fn register(&self, name: &str, req: RegisterRequest) -> Result<GameServer> {
        if !self.fleet_of.contains_key(name) {
            // A concurrent register of the same name lost the race: fall through to update.
            match self.schedule(req.record(name)).await {
                Ok(_) | Err(RegistryError::AlreadyExists(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.with_server(name, |fleet, _| {
            let entry = entry(fleet, name)?;
            let record = &mut entry.record;
            if record.fleet != req.fleet || record.region != req.region {
                return Err(RegistryError::Conflict(format!(
                    "game server {name:?} is scheduled in fleet {:?} region {:?}, not {:?}/{:?}",
                    record.fleet, record.region, req.fleet, req.region
                )));
            }
            if record.state.is_terminal() {
                return Err(RegistryError::Conflict(format!("game server {name:?} is {}", record.state)));
            }
            record.address = Some(req.address);
            record.labels.extend(req.labels);
            entry.last_seen = Instant::now();
            entry.spoken = true;
            let record = entry.record.clone();
            fleet.reindex(name);
            Ok(record)
        })
    }

    async fn transition(&self, name: &str, to: GameServerState) -> Result<GameServer> {
        self.with_server(name, |fleet, events| fleet.transition(name, to, Instant::now(), events))
    }

    async fn retire(&self, name: &str) -> Result<GameServer> {
        use GameServerState::*;
        self.with_server(name, |fleet, events| {
            let record = &entry(fleet, name)?.record;
            if record.worlds > 0 || !matches!(record.state, Scheduled | Ready | Reserved) {
                return Err(RegistryError::Conflict(format!(
                    "game server {name:?} is {} with {} world(s); only an idle server is retired",
                    record.state, record.worlds
                )));
            }
            fleet.transition(name, Shutdown, Instant::now(), events)
        })
    }

    async fn health(&self, name: &str) -> Result<()> {
        self.with_server(name, |fleet, _| {
            let entry = entry(fleet, name)?;
            if entry.record.state.is_terminal() {
                return Err(RegistryError::Conflict(format!("game server {name:?} is {}", entry.record.state)));
            }
            entry.last_seen = Instant::now();
            entry.spoken = true;
            Ok(())
        })
    }

    async fn set_label(&self, name: &str, key: &str, value: &str) -> Result<GameServer> {
        gaia_api::gameserver::check_settable_key("key", key)?;
        self.with_server(name, |fleet, _| {
            let entry = entry(fleet, name)?;
            entry.record.labels.insert(key.to_string(), value.to_string());
            Ok(entry.record.clone())
        })
    }

    async fn set_players(&self, name: &str, players: u32) -> Result<()> {
        self.with_server(name, |fleet, _| {
            entry(fleet, name)?.record.players = players;
            Ok(())
        })
    }

    async fn world_started(&self, name: &str, world_id: &str, epoch: u64) -> Result<()> {
        self.with_server(name, |fleet, events| {
            match fleet.worlds.get_mut(world_id) {
                Some(world) if world.server == name => {
                    world.lease = None;
                    Ok(())
                }
                Some(world) => Err(RegistryError::Conflict(format!(
                    "world {world_id:?} belongs to game server {:?}, not {name:?}",
                    world.server
                ))),
                None => {
                    // The lease ran out just before the first player arrived, but the
                    // world now runs here: count it again rather than lose track of it,
                    // unless it has been placed again since (a newer epoch), which the
                    // server's checkpoints would lose to anyway.
                    if entry(fleet, name)?.record.state.is_terminal() {
                        return Err(RegistryError::Conflict(format!("game server {name:?} is terminal")));
                    }
                    let last = fleet.last_epoch(world_id);
                    if epoch < last {
                        return Err(RegistryError::Conflict(format!(
                            "world {world_id} moved on (epoch {epoch} < {last})"
                        )));
                    }
                    let now = Instant::now();
                    // A registry that restarted has forgotten the epoch: remember the
                    // server's, so the next assignment goes above it.
                    fleet.remember_epoch(world_id, epoch, now);
                    fleet.worlds.insert(world_id.to_string(), World { server: name.to_string(), lease: None, epoch });
                    fleet.take_slot(name, now, events);
                    Ok(())
                }
            }
        })
    }

    async fn world_ended(&self, name: &str, world_id: &str) -> Result<()> {
        self.with_server(name, |fleet, events| {
            // Ending a world twice (an SDK retry) is not an error.
            if fleet.worlds.get(world_id).is_some_and(|w| w.server == name) {
                fleet.worlds.remove(world_id);
                fleet.forget_answer_of(world_id);
                fleet.release_slot(name, Instant::now(), events);
            }
            Ok(())
        })
    }

    async fn allocate(&self, req: &AllocationRequest) -> Result<Placement> {
        // Both backends refuse metadata that would overwrite the system's labels,
        // whoever calls them.
        req.metadata.validate()?;
        let fleet = self.fleet(&req.fleet).ok_or_else(|| RegistryError::FleetNotFound(req.fleet.clone()))?;
        let now = Instant::now();
        let mut events = Vec::new();
        let placement = {
            let mut fleet = fleet.lock();
            allocate_locked(&mut fleet, req, now, self.config.lease_ttl, &mut events)
        };
        self.publish(events);
        placement
    }

    async fn move_world(&self, name: &str, world_id: &str) -> Result<Placement> {
        let lease_ttl = self.config.lease_ttl;
        self.with_server(name, |fleet, events| move_locked(fleet, name, world_id, Instant::now(), lease_ttl, events))
    }

    async fn get(&self, name: &str) -> Result<GameServer> {
        self.with_server(name, |fleet, _| Ok(entry(fleet, name)?.record.clone()))
    }

    async fn list(&self, fleet: Option<&str>) -> Result<Vec<GameServer>> {
        let fleets: Vec<Arc<Mutex<Fleet>>> = match fleet {
            Some(name) => self.fleet(name).into_iter().collect(),
            None => self.fleets.iter().map(|f| Arc::clone(f.value())).collect(),
        };
        let mut servers: Vec<GameServer> = fleets
            .iter()
            .flat_map(|f| f.lock().servers.values().map(|e| e.record.clone()).collect::<Vec<_>>())
            .collect();
        servers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(servers)
    }

    async fn worlds(&self, fleet: Option<&str>) -> Result<Vec<HostedWorld>> {
        let fleets: Vec<Arc<Mutex<Fleet>>> = match fleet {
            Some(name) => self.fleet(name).into_iter().collect(),
            None => self.fleets.iter().map(|f| Arc::clone(f.value())).collect(),
        };
        let mut worlds: Vec<HostedWorld> = fleets
            .iter()
            .flat_map(|f| {
                let f = f.lock();
                f.worlds
                    .iter()
                    .map(|(id, w)| HostedWorld { world_id: id.clone(), server: w.server.clone() })
                    .collect::<Vec<_>>()
            })
            .collect();
        worlds.sort();
        Ok(worlds)
    }

    async fn world(&self, fleet: &str, world_id: &str) -> Result<Option<HostedWorld>> {
        let Some(fleet) = self.fleet(fleet) else { return Ok(None) };
        let fleet = fleet.lock();
        Ok(fleet.worlds.get(world_id).map(|w| HostedWorld { world_id: world_id.into(), server: w.server.clone() }))
    }

    async fn remove(&self, name: &str) -> Result<()> {
        self.with_server(name, |fleet, events| {
            if let Some(entry) = fleet.remove_server(name) {
                fleet.drop_worlds_of(name);
                events.extend((0..entry.record.worlds).map(|_| released(&entry.record)));
            }
            Ok(())
        })?;
        self.fleet_of.remove(name);
        Ok(())
    }

    async fn sweep(&self) -> Result<SweepReport> {
        let now = Instant::now();
        let mut report = SweepReport::default();
        let fleets: Vec<Arc<Mutex<Fleet>>> = self.fleets.iter().map(|f| Arc::clone(f.value())).collect();
        for fleet in fleets {
            let mut events = Vec::new();
            {
                let mut fleet = fleet.lock();
                sweep_fleet(&mut fleet, now, &self.config, &mut report, &mut events);
            }
            self.publish(events);
        }
        for name in &report.removed {
            self.fleet_of.remove(name);
        }
        Ok(report)
    }

    async fn report_unmet(&self, fleet: &str, region: Option<&str>) -> Result<()> {
        self.publish(vec![RegistryEvent::Unmet { fleet: fleet.to_string(), region: region.map(str::to_string) }]);
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<RegistryEvent> {
        self.events.subscribe()
    }
}

fn allocate_locked(
    fleet: &mut Fleet,
    req: &AllocationRequest,
    now: Instant,
    lease_ttl: Duration,
    events: &mut Vec<RegistryEvent>,
) -> Result<Placement> {
    if let Some((i, region)) = req.regions.iter().enumerate().find(|(_, r)| !fleet.regions.contains(*r)) {
        return Err(RegistryError::unknown_region(&req.fleet, i, region));
    }
    if let Some(key) = &req.idempotency_key
        && let Some((placement, expires)) = fleet.idempotent.get(key)
        && *expires > now
    {
        return Ok(placement.clone());
    }
    let player_id = req.player_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());

    // Joining a world that a live server holds: tell where it is; no new slot.
    if let Some(world_id) = &req.world_id
        && let Some(world) = fleet.worlds.get(world_id)
        && let Some(entry) = fleet.servers.get(&world.server)
    {
        let server = &entry.record;
        if server.state == GameServerState::Draining {
            return Err(RegistryError::NoCapacity(format!("world {world_id:?} is on a draining server")));
        }
        return Ok(Placement {
            world_id: world_id.clone(),
            player_id,
            server: server.clone(),
            lease: world.lease.as_ref().map(|(lease, _)| lease.clone()),
            epoch: world.epoch,
        });
    }

    let name = fleet.choose(req, None).ok_or_else(|| {
        let regions = if req.regions.is_empty() { "any region".to_string() } else { req.regions.join(", ") };
        RegistryError::NoCapacity(format!("no game server of fleet {:?} in {regions} has a free world slot", req.fleet))
    })?;
    let world_id = req.world_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let (lease, epoch) = fleet.place(&world_id, &name, now, lease_ttl, events);
    let entry = entry(fleet, &name)?;
    entry.record.labels.extend(req.metadata.labels.clone());
    entry.record.annotations.extend(req.metadata.annotations.clone());
    let server = entry.record.clone();
    let placement = Placement { world_id, player_id, server, lease: Some(lease), epoch };
    if let Some(key) = &req.idempotency_key {
        fleet.remember_answer(key, &placement, now + lease_ttl);
    }
    Ok(placement)
}

/// [`Registry::move_world`] under the fleet's lock.
fn move_locked(
    fleet: &mut Fleet,
    name: &str,
    world_id: &str,
    now: Instant,
    lease_ttl: Duration,
    events: &mut Vec<RegistryEvent>,
) -> Result<Placement> {
    if fleet.worlds.get(world_id).is_none_or(|w| w.server != name) {
        return Err(RegistryError::WorldNotFound { server: name.into(), world: world_id.into() });
    }
    let source = &entry(fleet, name)?.record;
    // Same region first (players and checkpoints are near), then anywhere in the fleet.
    let mut req =
        AllocationRequest { fleet: source.fleet.clone(), regions: vec![source.region.clone()], ..Default::default() };
    let target = fleet
        .choose(&req, Some(name))
        .or_else(|| {
            req.regions.clear();
            fleet.choose(&req, Some(name))
        })
        .ok_or_else(|| {
            RegistryError::NoCapacity(format!(
                "no other game server of fleet {:?} has a free world slot for world {world_id:?}",
                req.fleet
            ))
        })?;

    fleet.release_slot(name, now, events);
    let (lease, epoch) = fleet.place(world_id, &target, now, lease_ttl, events);
    let server = entry(fleet, &target)?.record.clone();
    // An idempotent repeat of the allocation that placed it must not send players back.
    fleet.forget_answer_of(world_id);
    Ok(Placement { world_id: world_id.to_string(), player_id: String::new(), server, lease: Some(lease), epoch })
}

fn sweep_fleet(
    fleet: &mut Fleet,
    now: Instant,
    config: &RegistryConfig,
    report: &mut SweepReport,
    events: &mut Vec<RegistryEvent>,
) {
    fleet.expire_leases(now, report, events);
    fleet.prune_epochs(now, config.epoch_retention);

    let silent: Vec<String> = fleet
        .servers
        .values()
        .filter(|e| !e.record.state.is_terminal())
        .filter(|e| {
            let health = &e.record.health;
            let grace =
                if e.spoken { Duration::ZERO } else { Duration::from_secs(health.initial_delay_seconds.into()) };
            now >= e.last_seen + grace + health.timeout()
        })
        .map(|e| e.record.name.clone())
        .collect();
    for name in silent {
        if fleet.transition(&name, GameServerState::Unhealthy, now, events).is_ok() {
            tracing::warn!(server = %name, "missed its health pings; marked Unhealthy");
            report.unhealthy.push(name);
        }
    }

    let old: Vec<String> = fleet
        .servers
        .values()
        .filter(|e| e.record.state.is_terminal() && e.since + config.tombstone_ttl <= now)
        .map(|e| e.record.name.clone())
        .collect();
    for name in old {
        fleet.remove_server(&name);
        report.removed.push(name);
    }
}
