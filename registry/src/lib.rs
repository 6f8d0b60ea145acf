//! The registry: live state of game servers, worlds and leases.
//!
//! [`Registry`] is the one interface every component uses (allocator, SDK endpoints,
//! controller, autoscaler). [`MemoryRegistry`] keeps it in this process; a Redis backend
//! shares it between processes (allocator issue). Allocation is one atomic operation per
//! fleet: [`choose`] picks the server (a pure function), and the backend takes the slot and
//! records the lease under the same lock (or script), so a slot is never handed out twice.
//! Each (re)assignment of a world to a server bumps the world's epoch, which fences the
//! world's checkpoints: a server holding an older epoch has lost the world.
//!
//! Start with [`Registry`], then [`choose`], then [`memory`].

pub mod choose;
mod error;
pub mod memory;
pub mod redis;

use async_trait::async_trait;
use gaia_api::allocation::{AllocationRequest, Lease};
use gaia_api::gameserver::{GameServer, GameServerState, HostedWorld, RegisterRequest};

pub use self::redis::RedisRegistry;
pub use choose::{OpenIndex, choose};
pub use error::RegistryError;
pub use memory::{MemoryRegistry, RegistryConfig};

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// Where an allocation put a world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub world_id: String,
    pub player_id: String,
    /// The server as it was right after the allocation.
    pub server: GameServer,
    /// Set when the allocation took a new world slot.
    pub lease: Option<Lease>,
    /// The world's epoch: bumped each time the world is assigned to a server (a new slot
    /// or a move), never lowered. Game servers fence their checkpoints with it.
    pub epoch: u64,
}

/// Something that changed, for components that react (the autoscaler, metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryEvent {
    /// A world slot was taken in this fleet and region.
    Allocated { fleet: String, region: String },
    /// A world slot was given back (world ended, lease expired, server gone).
    Released { fleet: String, region: String },
    /// A server changed state.
    StateChanged { name: String, fleet: String, region: String, state: GameServerState },
    /// An allocation request found no free slot (reported once per request, by the
    /// allocator that holds it): demand the fleet cannot meet yet. `region` is the first
    /// region the request asked for, `None` when it named none.
    Unmet { fleet: String, region: Option<String> },
}

impl RegistryEvent {
    /// The fleet the event is about.
    pub fn fleet(&self) -> &str {
        match self {
            Self::Allocated { fleet, .. }
            | Self::Released { fleet, .. }
            | Self::StateChanged { fleet, .. }
            | Self::Unmet { fleet, .. } => fleet,
        }
    }
}

/// What one [`Registry::sweep`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Worlds whose lease ran out before a player joined.
    pub expired_leases: Vec<String>,
    /// Servers marked Unhealthy for missing their health pings.
    pub unhealthy: Vec<String>,
    /// Terminal records removed after the tombstone time.
    pub removed: Vec<String>,
}

#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Creates a record (the controller schedules a server). Fails if the name exists.
    /// Its fleet and region become known, as [`Registry::declare_fleet`] makes them.
    async fn schedule(&self, server: GameServer) -> Result<GameServer>;

    /// The fleet exists with these regions (the controller, from the fleet's spec), even
    /// while it has no server: an allocation for it waits for capacity (429, reported
    /// unmet so the autoscaler scales from zero) rather than failing. A region that is
    /// neither declared nor the region of a server ever scheduled is refused with
    /// [`RegistryError::unknown_region`]. Declaring adds; it never forgets a region.
    async fn declare_fleet(&self, fleet: &str, regions: &[String]) -> Result<()>;

    /// SDK `register`: the server's process is up and listening at `req.address`. Takes an
    /// existing Scheduled record (fleet and region must match) or creates one.
    async fn register(&self, name: &str, req: RegisterRequest) -> Result<GameServer>;

    /// Moves a server to `to` (SDK ready/reserve/shutdown, controller Unhealthy/Draining).
    /// Illegal moves are refused with [`RegistryError::IllegalTransition`]. Entering a
    /// terminal state frees the server's worlds and leases.
    async fn transition(&self, name: &str, to: GameServerState) -> Result<GameServer>;

    /// Scale-down: moves an idle server (Scheduled, Ready or Reserved with no world) to
    /// Shutdown in one atomic step, so no allocation can land on it meanwhile. A server
    /// that hosts a world is refused with [`RegistryError::Conflict`] and left as it is.
    async fn retire(&self, name: &str) -> Result<GameServer>;

    /// SDK health ping.
    async fn health(&self, name: &str) -> Result<()>;

    /// Sets one label (SDK). A key under a reserved domain (`gaia.dev/`, `agones.dev/`:
    /// the system's) is refused with [`RegistryError::Invalid`].
    async fn set_label(&self, name: &str, key: &str, value: &str) -> Result<GameServer>;

    async fn set_players(&self, name: &str, players: u32) -> Result<()>;

    /// The server loaded `world_id` at `epoch` and its first player joined: the lease is
    /// confirmed and the slot no longer expires. A world recorded on another server is a
    /// [`RegistryError::Conflict`]. A world recorded nowhere (its lease expired before the
    /// first join) is taken back only when `epoch` is not older than the world's last
    /// epoch; otherwise the world has moved on and that is a Conflict too.
    async fn world_started(&self, name: &str, world_id: &str, epoch: u64) -> Result<()>;

    /// The world ended on that server: its slot is free again.
    async fn world_ended(&self, name: &str, world_id: &str) -> Result<()>;

    /// One atomic allocation: for `req.world_id` that a server holds, where it lives;
    /// otherwise a new world slot on the server [`choose`] picks, held by a lease.
    /// [`RegistryError::NoCapacity`] when nothing fits. Metadata with a key under a
    /// reserved domain is refused with [`RegistryError::Invalid`].
    async fn allocate(&self, req: &AllocationRequest) -> Result<Placement>;

    /// Moves `world_id` off server `name` in one atomic step: a slot on another server
    /// ([`choose`], same region first, then any), held by a lease until the world starts
    /// there; the slot on `name` is given back and the epoch bumped. The placement's
    /// `player_id` is empty. [`RegistryError::WorldNotFound`] when the world is not on
    /// `name`, [`RegistryError::NoCapacity`] when no other server has room.
    async fn move_world(&self, name: &str, world_id: &str) -> Result<Placement>;

    async fn get(&self, name: &str) -> Result<GameServer>;

    /// All servers, or those of one fleet, sorted by name.
    async fn list(&self, fleet: Option<&str>) -> Result<Vec<GameServer>>;

    /// The worlds placed in `fleet` (every fleet: `None`), leased ones included, sorted by
    /// world id: which server holds which world (the records only count them).
    async fn worlds(&self, fleet: Option<&str>) -> Result<Vec<HostedWorld>>;

    /// Where `world_id` of `fleet` is placed (leased or started), if anywhere.
    async fn world(&self, fleet: &str, world_id: &str) -> Result<Option<HostedWorld>>;

    /// Forgets a server (the controller removed its process). Its worlds are freed.
    async fn remove(&self, name: &str) -> Result<()>;

    /// Expires leases, marks servers that stopped pinging Unhealthy, removes old
    /// terminal records. Called on a timer by whoever runs the registry.
    async fn sweep(&self) -> Result<SweepReport>;

    /// Changes from now on. A slow receiver loses the oldest events (broadcast semantics)
    /// and should re-read state with [`Registry::list`].
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<RegistryEvent>;

    /// Tells every subscriber (in every process sharing this registry) that an
    /// allocation request found no free slot in `fleet`: [`RegistryEvent::Unmet`]. The
    /// autoscaler scales for it, also from zero.
    async fn report_unmet(&self, fleet: &str, region: Option<&str>) -> Result<()>;
}
