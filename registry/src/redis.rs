//! The Redis registry: one [`Registry`] shared by several processes (allocator replicas,
//! the SDK endpoints, the controller).
//!
//! Every change is one Lua script (`redis/*.lua`, one per operation, each prepended with
//! `redis/common.lua`): the script reads, decides and writes in one atomic step, so two
//! allocators never hand out one slot twice. The scripts mirror [`crate::memory`], the
//! reference: `common.lua` carries its slot, epoch and lifecycle rules (the table of
//! [`GameServerState::transition`]), `choose.lua` the choice of [`crate::choose()`].
//! Redis' `TIME` is the clock, so every process agrees on leases and health deadlines.
//!
//! An allocation walks a per-fleet index of open servers (a sorted set per fleet and per
//! fleet and region, score = worlds, member = name, which Redis orders exactly as
//! [`crate::OpenIndex`]), so its cost does not grow with the number of servers.
//!
//! Events: each script publishes what it changed on the events channel and also hands it
//! back to the caller, whose subscribers get it before the call returns; one background
//! task per registry forwards the other processes' events (it skips its own) until the
//! registry is dropped.
//!
//! # Keys
//! `P` is the prefix given to [`RedisRegistry::connect`]; `F` = `P{fleet}:` is a fleet's
//! base, whose braces make the fleet a hash tag, so one script only touches one slot.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P` `fleets` | set | fleet names (for `list` and `sweep`) |
//! | `P` `fleet-of` | hash | server name -> fleet (servers are addressed by name) |
//! | `P` `events` | channel | [`RegistryEvent`]s as JSON, with the sender's id |
//! | `F` `servers` | hash | server name -> [`GameServer`] JSON |
//! | `F` `open`, `F` `open:`region | zset | open servers, score = worlds |
//! | `F` `health` | zset | live servers, score = ms when silence makes them Unhealthy |
//! | `F` `tombstones` | zset | terminal servers, score = ms they became terminal |
//! | `F` `worlds` | hash | world -> server holding it |
//! | `F` `hosts:`server | set | worlds on that server |
//! | `F` `leases`, `F` `lease-expiry` | hash, zset | unconfirmed world -> lease id, expiry ms |
//! | `F` `epochs`, `F` `epoch-at` | hash, zset | world -> last epoch, when it was handed out |
//! | `F` `idem:`key | hash | an idempotent allocation's answer and world, expiring with its lease |
//! | `F` `idem-of` | hash | world -> the idempotency key that placed it |
//! | `F` `known` | string | set once a server was scheduled or the fleet declared: tells FleetNotFound from NoCapacity |
//! | `F` `regions` | set | the fleet's regions: declared, or of a server scheduled |

use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub};
use ::redis::{AsyncCommands, Client, RedisError, Script};
use async_trait::async_trait;
use futures_util::StreamExt;
use gaia_api::allocation::{AllocationRequest, Lease};
use gaia_api::gameserver::{GameServer, GameServerState, HostedWorld, IllegalTransition, RegisterRequest};
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::{Placement, Registry, RegistryConfig, RegistryError, RegistryEvent, Result, SweepReport};

/// Script calls one registry has in flight at once. A burst beyond it waits here, in
/// order, rather than in the connection's pipeline, where the response timeout would
/// count the wait and fail calls that Redis then runs anyway (an allocation answered 503
/// whose slot stays leased until the lease expires).
const MAX_IN_FLIGHT: usize = 64;

/// Entries each sweep phase handles per script call.
const SWEEP_BATCH: usize = 500;

/// Epochs travel through Lua numbers (doubles), which hold integers exactly up to here.
const MAX_EPOCH: u64 = 1 << 53;

/// One script per operation, each after the shared `common.lua` (and `choose.lua` for
/// those that place worlds).
struct Scripts {
    schedule: Script,
    register: Script,
    transition: Script,
    retire: Script,
    health: Script,
    set_label: Script,
    set_players: Script,
    world_started: Script,
    world_ended: Script,
    declare_fleet: Script,
    allocate: Script,
    move_world: Script,
    remove: Script,
    sweep: Script,
}

impl Scripts {
    fn new() -> Self {
        const COMMON: &str = include_str!("redis/common.lua");
        const CHOOSE: &str = include_str!("redis/choose.lua");
        let script = |body: &str| Script::new(&format!("{COMMON}\n{body}"));
        let choosing = |body: &str| Script::new(&format!("{COMMON}\n{CHOOSE}\n{body}"));
        Self {
            schedule: script(include_str!("redis/schedule.lua")),
            register: script(include_str!("redis/register.lua")),
            transition: script(include_str!("redis/transition.lua")),
            retire: script(include_str!("redis/retire.lua")),
            health: script(include_str!("redis/health.lua")),
            set_label: script(include_str!("redis/set_label.lua")),
            set_players: script(include_str!("redis/set_players.lua")),
            world_started: script(include_str!("redis/world_started.lua")),
            world_ended: script(include_str!("redis/world_ended.lua")),
            declare_fleet: script(include_str!("redis/declare_fleet.lua")),
            allocate: choosing(include_str!("redis/allocate.lua")),
            move_world: choosing(include_str!("redis/move_world.lua")),
            remove: script(include_str!("redis/remove.lua")),
            sweep: script(include_str!("redis/sweep.lua")),
        }
    }
}

pub struct RedisRegistry {
    conn: ConnectionManager,
    prefix: String,
    config: RegistryConfig,
    scripts: Scripts,
    /// This registry's id in published events, so its forwarder skips its own.
    origin: String,
    events: broadcast::Sender<RegistryEvent>,
    /// Bounds the script calls in flight ([`MAX_IN_FLIGHT`]).
    in_flight: tokio::sync::Semaphore,
    /// Stops the event forwarder when the registry is dropped.
    _forwarder: DropGuard,
}

impl RedisRegistry {
    /// Connects to `url`; every key starts with `prefix`. Requests fail after 2 s rather
    /// than hang while Redis is away; the connection manager keeps reconnecting.
    pub async fn connect(url: &str, prefix: &str, config: RegistryConfig) -> Result<RedisRegistry> {
        let client = Client::open(url).map_err(unavailable)?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_with_config(client.clone(), manager).await.map_err(unavailable)?;
        let channel = format!("{prefix}events");
        // Subscribed before we return: events of calls made after connect are not missed.
        let pubsub = subscribe(&client, &channel).await.map_err(unavailable)?;
        let (events, _) = broadcast::channel(config.event_capacity.max(1));
        let origin = uuid::Uuid::new_v4().simple().to_string();
        let stop = CancellationToken::new();
        let forwarder =
            Forwarder { client, channel, origin: origin.clone(), events: events.clone(), stop: stop.clone() };
        tokio::spawn(forwarder.run(pubsub));
        Ok(Self {
            conn,
            prefix: prefix.to_string(),
            config,
            scripts: Scripts::new(),
            origin,
            events,
            in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
            _forwarder: stop.drop_guard(),
        })
    }

    fn fleet_key(&self, fleet: &str) -> String {
        format!("{}{{{fleet}}}:", self.prefix)
    }

    fn servers_key(&self, fleet: &str) -> String {
        format!("{}servers", self.fleet_key(fleet))
    }

    fn global_key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Runs `script` on `fleet`'s keys, delivers its events to this process' subscribers
    /// and answers its payload, or the error it reported.
    async fn run(&self, script: &Script, fleet: &str, args: &[&str]) -> Result<Vec<String>> {
        let mut invocation = script.key(self.fleet_key(fleet));
        invocation.arg(self.global_key("events")).arg(&self.origin);
        for arg in args {
            invocation.arg(*arg);
        }
        let mut conn = self.conn.clone();
        // Never closed, so acquiring cannot fail.
        let _permit = self.in_flight.acquire().await.map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        let mut reply: Vec<String> = invocation.invoke_async(&mut conn).await.map_err(unavailable)?;
        if reply.len() < 2 {
            return Err(RegistryError::Unavailable(format!("malformed script reply {reply:?}")));
        }
        let payload = reply.split_off(2);
        if !reply[0].is_empty()
            && let Some(message) = EventMessage::decode(reply[0].as_bytes())
        {
            message.send(&self.events);
        }
        match reply[1].as_str() {
            "ok" => Ok(payload),
            code => Err(script_error(code, payload)),
        }
    }

    /// Runs `script` on server `name`'s fleet, with `name` as its first argument.
    async fn run_on(&self, script: &Script, name: &str, args: &[&str]) -> Result<Vec<String>> {
        let fleet = self.fleet_of(name).await?;
        let args: Vec<&str> = std::iter::once(name).chain(args.iter().copied()).collect();
        self.run(script, &fleet, &args).await
    }

    async fn fleet_of(&self, name: &str) -> Result<String> {
        let mut conn = self.conn.clone();
        let fleet: Option<String> = conn.hget(self.global_key("fleet-of"), name).await.map_err(unavailable)?;
        fleet.ok_or_else(|| RegistryError::NotFound(name.into()))
    }

    /// Points server name `server.name` at its fleet, unless a record of that name exists.
    /// A name pointing at no record (a schedule that failed after taking the name, whose
    /// outcome we could not know) is taken over rather than blocked for ever.
    async fn claim_name(&self, server: &GameServer) -> Result<()> {
        let (key, name) = (self.global_key("fleet-of"), &server.name);
        let mut conn = self.conn.clone();
        if conn.hset_nx(&key, name, &server.fleet).await.map_err(unavailable)? {
            return Ok(());
        }
        let fleet: Option<String> = conn.hget(&key, name).await.map_err(unavailable)?;
        if let Some(fleet) = fleet
            && conn.hexists(self.servers_key(&fleet), name).await.map_err(unavailable)?
        {
            return Err(RegistryError::AlreadyExists(name.clone()));
        }
        conn.hset(&key, name, &server.fleet).await.map_err(unavailable)
    }

    /// Forgets which fleet the servers `names` were in, after their fleet's script removed
    /// their records. A name is one server's for its life: scheduling a name again while
    /// it is being removed may leave the new record unreachable by name.
    async fn forget_names(&self, names: &[String]) -> Result<()> {
        if names.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        conn.hdel::<_, _, ()>(self.global_key("fleet-of"), names).await.map_err(unavailable)
    }

    async fn fleets(&self) -> Result<Vec<String>> {
        let mut conn = self.conn.clone();
        conn.smembers(self.global_key("fleets")).await.map_err(unavailable)
    }
}

#[async_trait]
impl Registry for RedisRegistry {
    async fn schedule(&self, server: GameServer) -> Result<GameServer> {
        self.claim_name(&server).await?;
        let mut conn = self.conn.clone();
        conn.sadd::<_, _, ()>(self.global_key("fleets"), &server.fleet).await.map_err(unavailable)?;
        self.run(&self.scripts.schedule, &server.fleet, &[&to_json(&server)?]).await?;
        Ok(server)
    }

    async fn declare_fleet(&self, fleet: &str, regions: &[String]) -> Result<()> {
        let args: Vec<&str> = regions.iter().map(String::as_str).collect();
        self.run(&self.scripts.declare_fleet, fleet, &args).await.map(drop)
    }

    async fn register(&self, name: &str, req: RegisterRequest) -> Result<GameServer> {
        let args = [to_json(&req)?];
        let args = args.each_ref().map(String::as_str);
        match self.run_on(&self.scripts.register, name, &args).await {
            Err(RegistryError::NotFound(_)) => {
                // A server started by hand: create its record from the request.
                // A concurrent register of the same name won the race: update its record.
                match self.schedule(req.record(name)).await {
                    Ok(_) | Err(RegistryError::AlreadyExists(_)) => {}
                    Err(e) => return Err(e),
                }
                server_from(&self.run_on(&self.scripts.register, name, &args).await?)
            }
            reply => server_from(&reply?),
        }
    }

    async fn transition(&self, name: &str, to: GameServerState) -> Result<GameServer> {
        let reply = self.run_on(&self.scripts.transition, name, &[to.as_str()]).await?;
        server_from(&reply)
    }

    async fn retire(&self, name: &str) -> Result<GameServer> {
        let reply = self.run_on(&self.scripts.retire, name, &[]).await?;
        server_from(&reply)
    }

    async fn health(&self, name: &str) -> Result<()> {
        self.run_on(&self.scripts.health, name, &[]).await.map(drop)
    }

    async fn set_label(&self, name: &str, key: &str, value: &str) -> Result<GameServer> {
        gaia_api::gameserver::check_settable_key("key", key)?;
        let reply = self.run_on(&self.scripts.set_label, name, &[key, value]).await?;
        server_from(&reply)
    }

    async fn set_players(&self, name: &str, players: u32) -> Result<()> {
        self.run_on(&self.scripts.set_players, name, &[&players.to_string()]).await.map(drop)
    }

    async fn world_started(&self, name: &str, world_id: &str, epoch: u64) -> Result<()> {
        if epoch > MAX_EPOCH {
            return Err(RegistryError::Conflict(format!("epoch {epoch} of world {world_id} is out of range")));
        }
        self.run_on(&self.scripts.world_started, name, &[world_id, &epoch.to_string()]).await.map(drop)
    }

    async fn world_ended(&self, name: &str, world_id: &str) -> Result<()> {
        self.run_on(&self.scripts.world_ended, name, &[world_id]).await.map(drop)
    }

    async fn allocate(&self, req: &AllocationRequest) -> Result<Placement> {
        // Both backends refuse metadata that would overwrite the system's labels,
        // whoever calls them.
        req.metadata.validate()?;
        let new_id = || uuid::Uuid::new_v4().simple().to_string();
        let world_id = req.world_id.clone().unwrap_or_else(new_id);
        let player_id = req.player_id.clone().unwrap_or_else(new_id);
        let args = [&to_json(req)?, &ttl_ms(self.config.lease_ttl), &world_id, &new_id(), &player_id];
        let reply = self.run(&self.scripts.allocate, &req.fleet, &args.map(String::as_str)).await?;
        placement_from(&reply)
    }

    async fn move_world(&self, name: &str, world_id: &str) -> Result<Placement> {
        let args = [world_id, &ttl_ms(self.config.lease_ttl), &uuid::Uuid::new_v4().simple().to_string()];
        let reply = self.run_on(&self.scripts.move_world, name, &args).await?;
        placement_from(&reply)
    }

    async fn get(&self, name: &str) -> Result<GameServer> {
        let fleet = self.fleet_of(name).await?;
        let mut conn = self.conn.clone();
        let json: Option<String> = conn.hget(self.servers_key(&fleet), name).await.map_err(unavailable)?;
        from_json(&json.ok_or_else(|| RegistryError::NotFound(name.into()))?)
    }

    async fn list(&self, fleet: Option<&str>) -> Result<Vec<GameServer>> {
        let fleets = match fleet {
            Some(name) => vec![name.to_string()],
            None => self.fleets().await?,
        };
        let mut conn = self.conn.clone();
        let mut servers = Vec::new();
        for fleet in fleets {
            let records: Vec<String> = conn.hvals(self.servers_key(&fleet)).await.map_err(unavailable)?;
            for json in records {
                servers.push(from_json::<GameServer>(&json)?);
            }
        }
        servers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(servers)
    }

    async fn worlds(&self, fleet: Option<&str>) -> Result<Vec<HostedWorld>> {
        let fleets = match fleet {
            Some(name) => vec![name.to_string()],
            None => self.fleets().await?,
        };
        let mut conn = self.conn.clone();
        let mut worlds = Vec::new();
        for fleet in fleets {
            let placed: Vec<(String, String)> =
                conn.hgetall(format!("{}worlds", self.fleet_key(&fleet))).await.map_err(unavailable)?;
            worlds.extend(placed.into_iter().map(|(world_id, server)| HostedWorld { world_id, server }));
        }
        worlds.sort();
        Ok(worlds)
    }

    async fn world(&self, fleet: &str, world_id: &str) -> Result<Option<HostedWorld>> {
        let mut conn = self.conn.clone();
        let server: Option<String> =
            conn.hget(format!("{}worlds", self.fleet_key(fleet)), world_id).await.map_err(unavailable)?;
        Ok(server.map(|server| HostedWorld { world_id: world_id.into(), server }))
    }

    async fn remove(&self, name: &str) -> Result<()> {
        self.run_on(&self.scripts.remove, name, &[]).await?;
        self.forget_names(&[name.to_string()]).await
    }

    async fn sweep(&self) -> Result<SweepReport> {
        let mut report = SweepReport::default();
        let args = [ttl_ms(self.config.tombstone_ttl), ttl_ms(self.config.epoch_retention), SWEEP_BATCH.to_string()];
        let args = args.each_ref().map(String::as_str);
        for fleet in self.fleets().await? {
            loop {
                let reply = self.run(&self.scripts.sweep, &fleet, &args).await?;
                let [expired, unhealthy, removed, more] = <[String; 4]>::try_from(reply)
                    .map_err(|r| RegistryError::Unavailable(format!("malformed sweep reply {r:?}")))?;
                let (mut unhealthy, mut removed): (Vec<String>, Vec<String>) =
                    (from_json(&unhealthy)?, from_json(&removed)?);
                for name in &unhealthy {
                    tracing::warn!(server = %name, "missed its health pings; marked Unhealthy");
                }
                self.forget_names(&removed).await?;
                unhealthy.sort();
                removed.sort();
                report.expired_leases.extend(from_json::<Vec<String>>(&expired)?);
                report.unhealthy.extend(unhealthy);
                report.removed.extend(removed);
                if more != "1" {
                    break;
                }
            }
        }
        Ok(report)
    }

    async fn report_unmet(&self, fleet: &str, region: Option<&str>) -> Result<()> {
        let event = serde_json::json!({ "kind": "Unmet", "fleet": fleet, "region": region });
        let message = serde_json::json!({ "origin": self.origin, "events": [event] }).to_string();
        let _ = self.events.send(RegistryEvent::Unmet { fleet: fleet.to_string(), region: region.map(str::to_string) });
        let mut conn = self.conn.clone();
        let _: i64 = conn.publish(self.global_key("events"), message).await.map_err(unavailable)?;
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<RegistryEvent> {
        self.events.subscribe()
    }
}

/// Forwards the events other registries publish into this one's broadcast channel.
struct Forwarder {
    client: Client,
    channel: String,
    origin: String,
    events: broadcast::Sender<RegistryEvent>,
    stop: CancellationToken,
}

impl Forwarder {
    /// Until stopped: forwards from `pubsub`, and resubscribes after Redis went away
    /// (events published meanwhile are lost, as a slow receiver's are).
    async fn run(self, mut pubsub: PubSub) {
        loop {
            let mut messages = pubsub.into_on_message();
            loop {
                let message = tokio::select! {
                    _ = self.stop.cancelled() => return,
                    message = messages.next() => message,
                };
                let Some(message) = message else { break };
                self.forward(message.get_payload_bytes());
            }
            tracing::warn!(channel = %self.channel, "registry event subscription lost; resubscribing");
            pubsub = loop {
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                match subscribe(&self.client, &self.channel).await {
                    Ok(pubsub) => break pubsub,
                    Err(e) => tracing::debug!(error = %e, "resubscribing to registry events"),
                }
            };
        }
    }

    /// The caller of a script already delivered its own events.
    fn forward(&self, payload: &[u8]) {
        if let Some(message) = EventMessage::decode(payload)
            && message.origin != self.origin
        {
            message.send(&self.events);
        }
    }
}

async fn subscribe(client: &Client, channel: &str) -> Result<PubSub, RedisError> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}

/// What one script call published.
#[derive(Deserialize)]
struct EventMessage {
    origin: String,
    events: Vec<WireEvent>,
}

impl EventMessage {
    fn decode(payload: &[u8]) -> Option<Self> {
        serde_json::from_slice(payload).map_err(|e| tracing::warn!(error = %e, "undecodable registry events")).ok()
    }

    fn send(self, to: &broadcast::Sender<RegistryEvent>) {
        for event in self.events {
            // No subscriber is fine.
            let _ = to.send(event.into());
        }
    }
}

#[derive(Deserialize)]
#[serde(tag = "kind")]
enum WireEvent {
    Allocated { fleet: String, region: String },
    Released { fleet: String, region: String },
    StateChanged { name: String, fleet: String, region: String, state: GameServerState },
    Unmet { fleet: String, region: Option<String> },
}

impl From<WireEvent> for RegistryEvent {
    fn from(event: WireEvent) -> Self {
        match event {
            WireEvent::Allocated { fleet, region } => Self::Allocated { fleet, region },
            WireEvent::Released { fleet, region } => Self::Released { fleet, region },
            WireEvent::StateChanged { name, fleet, region, state } => Self::StateChanged { name, fleet, region, state },
            WireEvent::Unmet { fleet, region } => Self::Unmet { fleet, region },
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePlacement {
    world_id: String,
    player_id: String,
    server: GameServer,
    lease: Option<Lease>,
    epoch: u64,
}

fn placement_from(reply: &[String]) -> Result<Placement> {
    let p: WirePlacement = from_json(first(reply)?)?;
    Ok(Placement { world_id: p.world_id, player_id: p.player_id, server: p.server, lease: p.lease, epoch: p.epoch })
}

fn server_from(reply: &[String]) -> Result<GameServer> {
    from_json(first(reply)?)
}

fn first(reply: &[String]) -> Result<&str> {
    reply.first().map(String::as_str).ok_or_else(|| RegistryError::Unavailable("empty script reply".into()))
}

/// The error a script reported: a code and its arguments (see `common.lua`).
fn script_error(code: &str, args: Vec<String>) -> RegistryError {
    let mut args = args.into_iter();
    let mut arg = || args.next().unwrap_or_default();
    match code {
        "not_found" => RegistryError::NotFound(arg()),
        "fleet_not_found" => RegistryError::FleetNotFound(arg()),
        "world_not_found" => RegistryError::WorldNotFound { server: arg(), world: arg() },
        "already_exists" => RegistryError::AlreadyExists(arg()),
        "conflict" => RegistryError::Conflict(arg()),
        "no_capacity" => RegistryError::NoCapacity(arg()),
        "unknown_region" => {
            let (fleet, index, region) = (arg(), arg(), arg());
            RegistryError::unknown_region(&fleet, index.parse().unwrap_or_default(), &region)
        }
        "illegal" => match (state(&arg()), state(&arg())) {
            (Some(from), Some(to)) => IllegalTransition { from, to }.into(),
            _ => RegistryError::Unavailable("malformed illegal-transition reply".into()),
        },
        other => RegistryError::Unavailable(format!("unknown script reply {other:?}")),
    }
}

fn state(name: &str) -> Option<GameServerState> {
    GameServerState::ALL.into_iter().find(|s| s.as_str() == name)
}

fn ttl_ms(d: Duration) -> String {
    d.as_millis().to_string()
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| RegistryError::Unavailable(format!("encoding for Redis: {e}")))
}

fn from_json<'a, T: Deserialize<'a>>(json: &'a str) -> Result<T> {
    serde_json::from_str(json).map_err(|e| RegistryError::Unavailable(format!("malformed record in Redis: {e}")))
}

fn unavailable(e: RedisError) -> RegistryError {
    RegistryError::Unavailable(e.to_string())
}

/// What only the Redis backend has: several processes, its key layout, its connection.
/// The behaviour shared with the memory backend is in `tests/conformance.rs`. Each test
/// uses a key prefix of its own on the Redis at `GAIA_TEST_REDIS_URL` (default local)
/// and passes with a note when none is reachable, unless `REQUIRE_SERVICES` is set.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashSet;

    use gaia_api::allocation::AllocationRequest;
    use gaia_testkit::services::{redis_prefix, redis_url as url, unavailable};

    use super::*;

    /// A registry under a fresh prefix, or `None` (after saying why) without Redis.
    async fn registry(config: RegistryConfig) -> Option<(RedisRegistry, String)> {
        let prefix = redis_prefix();
        match RedisRegistry::connect(&url(), &prefix, config).await {
            Ok(registry) => Some((registry, prefix)),
            Err(e) => unavailable("Redis", &url(), e),
        }
    }

    async fn keys(reg: &RedisRegistry, prefix: &str) -> Vec<String> {
        let mut conn = reg.conn.clone();
        conn.keys(format!("{prefix}*")).await.unwrap()
    }

    async fn cleanup(reg: &RedisRegistry, prefix: &str) {
        let keys = keys(reg, prefix).await;
        if !keys.is_empty() {
            reg.conn.clone().del::<_, ()>(keys).await.unwrap();
        }
    }

    async fn ready(reg: &RedisRegistry, name: &str, fleet: &str, worlds: u32) {
        let req = RegisterRequest {
            fleet: fleet.into(),
            region: "eu".into(),
            address: format!("ws://127.0.0.1:1/{name}"),
            world_capacity: worlds,
            player_capacity: 100,
            labels: Default::default(),
            health: Default::default(),
        };
        reg.register(name, req).await.unwrap();
        reg.transition(name, GameServerState::Ready).await.unwrap();
    }

    fn alloc(fleet: &str) -> AllocationRequest {
        AllocationRequest { fleet: fleet.into(), ..Default::default() }
    }

    #[tokio::test]
    async fn keys_stay_under_the_prefix_and_each_fleet_in_its_own_hash_tag() {
        let Some((reg, prefix)) = registry(RegistryConfig::default()).await else { return };
        ready(&reg, "t1", "town", 2).await;
        ready(&reg, "t2", "town", 2).await;
        ready(&reg, "a1", "arena", 1).await;
        let mut req = alloc("town");
        req.idempotency_key = Some("m1".into());
        let placed = reg.allocate(&req).await.unwrap();
        reg.allocate(&alloc("arena")).await.unwrap();
        reg.move_world(&placed.server.name, &placed.world_id).await.unwrap();
        reg.transition("a1", GameServerState::Shutdown).await.unwrap();
        reg.sweep().await.unwrap();

        let keys = keys(&reg, &prefix).await;
        let (global, fleet): (Vec<&str>, Vec<&str>) =
            keys.iter().map(|k| &k[prefix.len()..]).partition(|k| !k.starts_with('{'));
        assert_eq!(global.into_iter().collect::<HashSet<_>>(), HashSet::from(["fleets", "fleet-of"]));
        for key in fleet {
            assert!(key.starts_with("{town}:") || key.starts_with("{arena}:"), "{key}");
        }
        cleanup(&reg, &prefix).await;
    }

    #[tokio::test]
    async fn other_registries_get_the_events_once_and_the_caller_before_it_returns() {
        let Some((a, prefix)) = registry(RegistryConfig::default()).await else { return };
        let b = RedisRegistry::connect(&url(), &prefix, RegistryConfig::default()).await.unwrap();
        let (mut from_a, mut from_b) = (a.subscribe(), b.subscribe());
        ready(&a, "s1", "town", 1).await;
        a.allocate(&alloc("town")).await.unwrap();
        let allocated = RegistryEvent::Allocated { fleet: "town".into(), region: "eu".into() };

        // The caller's subscribers have every event already, in order.
        let seen: Vec<_> = std::iter::from_fn(|| from_a.try_recv().ok()).collect();
        assert!(seen.contains(&allocated), "{seen:?}");
        // The other registry hears the same, through Redis.
        let mut heard = Vec::new();
        while heard.len() < seen.len() {
            heard.push(tokio::time::timeout(Duration::from_secs(2), from_b.recv()).await.unwrap().unwrap());
        }
        assert_eq!(heard, seen);
        // Unmet demand, reported outside any script, travels the same way.
        a.report_unmet("town", Some("eu")).await.unwrap();
        let unmet = RegistryEvent::Unmet { fleet: "town".into(), region: Some("eu".into()) };
        assert_eq!(from_a.try_recv().unwrap(), unmet);
        assert_eq!(tokio::time::timeout(Duration::from_secs(2), from_b.recv()).await.unwrap().unwrap(), unmet);
        // By now Redis has sent a's own messages back to it too: they are not repeated.
        b.health("s1").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(from_a.try_recv().is_err());
        cleanup(&a, &prefix).await;
    }

    #[tokio::test]
    async fn dropping_the_registry_stops_its_subscription() {
        let Some((reg, prefix)) = registry(RegistryConfig::default()).await else { return };
        let conn = reg.conn.clone();
        let channel = format!("{prefix}events");
        let subscribers = || {
            let mut conn = conn.clone();
            let channel = channel.clone();
            async move {
                let (_, n): (String, u32) =
                    ::redis::cmd("PUBSUB").arg("NUMSUB").arg(&channel).query_async(&mut conn).await.unwrap();
                n
            }
        };
        assert_eq!(subscribers().await, 1);
        drop(reg);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while subscribers().await != 0 {
            assert!(tokio::time::Instant::now() < deadline, "still subscribed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn unreachable_redis_is_unavailable() {
        let err = RedisRegistry::connect("redis://127.0.0.1:1", "gaia-test:", RegistryConfig::default()).await.err();
        assert!(matches!(err, Some(RegistryError::Unavailable(_))), "{err:?}");
    }

    #[tokio::test]
    async fn sweep_expires_more_leases_than_one_batch() {
        let config = RegistryConfig { lease_ttl: Duration::from_millis(200), ..Default::default() };
        let Some((reg, prefix)) = registry(config).await else { return };
        let n = SWEEP_BATCH * 2 + 7;
        ready(&reg, "big", "town", n as u32).await;
        for _ in 0..n {
            reg.allocate(&alloc("town")).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        reg.health("big").await.unwrap();
        assert_eq!(reg.sweep().await.unwrap().expired_leases.len(), n);
        let big = reg.get("big").await.unwrap();
        assert_eq!((big.worlds, big.state), (0, GameServerState::Ready));
        cleanup(&reg, &prefix).await;
    }

    #[tokio::test]
    async fn epochs_of_worlds_gone_for_the_retention_are_forgotten_without_going_back() {
        let config = RegistryConfig { epoch_retention: Duration::from_millis(200), ..Default::default() };
        let Some((reg, prefix)) = registry(config).await else { return };
        ready(&reg, "s1", "town", 2).await;
        let join = |world: &str| AllocationRequest { world_id: Some(world.into()), ..alloc("town") };
        let first = reg.allocate(&join("w1")).await.unwrap();
        reg.world_ended("s1", "w1").await.unwrap();
        let kept = reg.allocate(&join("w2")).await.unwrap();
        reg.world_started("s1", "w2", kept.epoch).await.unwrap();
        // Fenced until the retention has passed.
        assert!(matches!(reg.world_started("s1", "w1", 1).await, Err(RegistryError::Conflict(_))));
        tokio::time::sleep(Duration::from_millis(300)).await;
        reg.sweep().await.unwrap();
        // w1 is forgotten: a late start is no longer fenced ...
        reg.world_started("s1", "w1", 1).await.unwrap();
        reg.world_ended("s1", "w1").await.unwrap();
        // ... and its next epoch still goes above every one it had.
        assert!(reg.allocate(&join("w1")).await.unwrap().epoch > first.epoch);
        // w2 is placed, so its epoch stays, through later sweeps too.
        tokio::time::sleep(Duration::from_millis(300)).await;
        reg.sweep().await.unwrap();
        assert_eq!(reg.allocate(&join("w2")).await.unwrap().epoch, kept.epoch);
        cleanup(&reg, &prefix).await;
    }
}
