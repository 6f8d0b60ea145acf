//! What a game server is told ([`Config`], from flags or the `GAIA_*` variables its
//! starter sets) and how it is told to stop ([`Stop`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use gaia_api::server_env as var;
use gaia_api::token::TokenKey;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::room::{ResumeConfig, RoomConfig};

/// Everything a game server is told. The controller sets these as `GAIA_*` variables.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// This server's name in the registry.
    #[arg(long, env = var::SERVER_NAME)]
    pub name: String,
    #[arg(long, env = var::FLEET, default_value = "town")]
    pub fleet: String,
    #[arg(long, env = var::REGION, default_value = "local")]
    pub region: String,
    /// Control-plane URL for the SDK. Unset: run standalone, telling nobody.
    #[arg(long, env = var::SDK_URL)]
    pub sdk_url: Option<String>,
    /// This server's SDK token, sent on every SDK call (the controller sets it; a
    /// control plane with an SDK secret refuses calls without it).
    #[arg(long, env = var::SDK_TOKEN, hide_env_values = true)]
    pub sdk_token: Option<String>,
    /// A PEM certificate to trust for an `https://` control plane, besides the public
    /// roots (a private CA, or the control plane's self-signed certificate).
    #[arg(long, env = var::SDK_CA_FILE)]
    pub sdk_ca_file: Option<std::path::PathBuf>,
    /// Verifies join tokens; the allocator signs them with the same secret.
    #[arg(long, env = var::JOIN_SECRET, hide_env_values = true)]
    pub join_secret: String,
    #[arg(long, env = var::LISTEN, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Host clients are told to connect to; defaults to the listen address's IP
    /// (127.0.0.1 when that is unspecified).
    #[arg(long, env = var::ADVERTISE_HOST)]
    pub advertise_host: Option<String>,
    #[arg(long, env = var::WORLD_CAPACITY, default_value_t = 10)]
    pub world_capacity: u32,
    #[arg(long, env = var::PLAYER_CAPACITY, default_value_t = 300)]
    pub player_capacity: u32,
    #[arg(long, env = var::WORLD_PLAYER_CAPACITY, default_value_t = 30)]
    pub world_player_capacity: u32,
    /// Spectators (read-only connections, no player slot) one world takes besides its players.
    #[arg(long, env = "GAIA_WORLD_SPECTATOR_CAPACITY", default_value_t = 16)]
    pub world_spectator_capacity: u32,
    /// Lines said that a world's Welcome (and Resync) carry, its newest: a joining client
    /// shows the conversation so far. 0: none.
    #[arg(long, env = "GAIA_WORLD_RECENT_MESSAGES", default_value_t = 20)]
    pub world_recent_messages: u16,
    #[arg(long, env = var::HEALTH_PERIOD_SECONDS, default_value_t = 2)]
    pub health_period_seconds: u32,
    /// World ticks per second: inputs are applied and answered at each tick.
    #[arg(long, env = "GAIA_TICK_HZ", default_value_t = 20)]
    pub tick_hz: u32,
    /// Delta frames per second to each client; must divide GAIA_TICK_HZ.
    #[arg(long, env = "GAIA_DELTA_HZ", default_value_t = 10)]
    pub delta_hz: u32,
    /// Server-side bots in every world.
    #[arg(long, env = "GAIA_BOTS_PER_WORLD", default_value_t = 5)]
    pub bots_per_world: u16,
    /// The town's map, in cells.
    #[arg(long, env = "GAIA_TOWN_WIDTH", default_value_t = 48)]
    pub town_width: u16,
    #[arg(long, env = "GAIA_TOWN_HEIGHT", default_value_t = 32)]
    pub town_height: u16,
    /// How many of each world's bots think through the model (GAIA_LLM_URL): the first
    /// ones. Unset: all of them when there is a model, none without.
    #[arg(long, env = "GAIA_AGENTS_PER_WORLD")]
    pub agents_per_world: Option<u16>,
    /// How long an empty world lives on before it ends and frees its slot.
    #[arg(long, env = "GAIA_EMPTY_WORLD_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub empty_world_grace: Duration,
    /// How long a new connection has to send Join.
    #[arg(long, env = "GAIA_JOIN_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub join_timeout: Duration,
    /// How long a member whose connection broke (no close frame) stays in its world,
    /// for the client to `Resume` on a new connection; 0 turns resume off.
    #[arg(long, env = "GAIA_RESUME_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub resume_grace: Duration,
    /// Connections that may wait to join at once (they hold no player slot)...
    #[arg(long, env = "GAIA_UNJOINED_CAPACITY", default_value_t = 256)]
    pub unjoined_capacity: u32,
    /// ...and how many of them may come from one address. More are refused with 503.
    #[arg(long, env = "GAIA_UNJOINED_PER_ADDRESS", default_value_t = 64)]
    pub unjoined_per_address: u32,
    /// A joined client that sends nothing (not even a Ping) for this long is closed.
    #[arg(long, env = "GAIA_IDLE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Frames (inputs and pings) one client may send per second; more are refused.
    #[arg(long, env = "GAIA_CLIENT_FRAME_RATE", default_value_t = NonZeroU32::new(20).expect("20 > 0"))]
    pub client_frame_rate: NonZeroU32,
    /// Frames a client may send in a burst; refusing more than this many in a row closes it.
    #[arg(long, env = "GAIA_CLIENT_FRAME_BURST", default_value_t = NonZeroU32::new(40).expect("40 > 0"))]
    pub client_frame_burst: NonZeroU32,
    /// Frames queued for one client; a client whose queue fills falls behind.
    #[arg(long, env = "GAIA_CLIENT_QUEUE", default_value_t = 64)]
    pub client_queue: usize,
    /// How long a client may stay behind before it is dropped; until then it is
    /// resynced with a snapshot once it reads again.
    #[arg(long, env = "GAIA_MAX_BEHIND", default_value = "5s", value_parser = humantime::parse_duration)]
    pub max_behind: Duration,
    /// Hot checkpoint tier: `redis://host:port`. Unset: no hot tier.
    #[arg(long, env = var::REDIS_URL)]
    pub redis_url: Option<String>,
    /// Durable checkpoint tier: `postgres://…` or `sqlite:path`. Unset: no durable tier.
    /// With neither tier, worlds die with this process.
    #[arg(long, env = var::DATABASE_URL)]
    pub database_url: Option<String>,
    /// How often a world that changed is checkpointed, and the hot tier written.
    #[arg(long, env = "GAIA_CHECKPOINT_EVERY", default_value = "1s", value_parser = humantime::parse_duration)]
    pub checkpoint_every: Duration,
    /// How often the durable tier is written when there is a hot tier (without one, it
    /// is written every GAIA_CHECKPOINT_EVERY). Drain and shutdown write it at once.
    #[arg(long, env = "GAIA_DURABLE_EVERY", default_value = "30s", value_parser = humantime::parse_duration)]
    pub durable_every: Duration,
    /// How long a starting world waits for its checkpoint stores before its joins are
    /// refused (4012, retryable).
    #[arg(long, env = "GAIA_LOAD_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub load_timeout: Duration,
    /// How long a draining server tries to move each world before letting its clients
    /// go to find it through the allocator.
    #[arg(long, env = "GAIA_DRAIN_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// The worlds' operations: the model server and the limits (docs/agents.md).
    #[command(flatten)]
    pub ops: gaia_ops::OpsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            name: "gs-local".into(),
            fleet: "town".into(),
            region: "local".into(),
            sdk_url: None,
            sdk_token: None,
            sdk_ca_file: None,
            join_secret: String::new(),
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            advertise_host: None,
            world_capacity: 10,
            player_capacity: 300,
            world_player_capacity: 30,
            world_spectator_capacity: 16,
            world_recent_messages: 20,
            health_period_seconds: 2,
            tick_hz: 20,
            delta_hz: 10,
            bots_per_world: 5,
            agents_per_world: None,
            town_width: 48,
            town_height: 32,
            empty_world_grace: Duration::from_secs(5),
            join_timeout: Duration::from_secs(5),
            resume_grace: Duration::from_secs(10),
            unjoined_capacity: 256,
            unjoined_per_address: 64,
            idle_timeout: Duration::from_secs(30),
            client_frame_rate: NonZeroU32::new(20).expect("20 > 0"),
            client_frame_burst: NonZeroU32::new(40).expect("40 > 0"),
            client_queue: 64,
            max_behind: Duration::from_secs(5),
            redis_url: None,
            database_url: None,
            checkpoint_every: Duration::from_secs(1),
            durable_every: Duration::from_secs(30),
            load_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(5),
            ops: gaia_ops::OpsConfig::default(),
        }
    }
}

/// How a game server is told to stop.
#[derive(Debug, Clone, Default)]
pub struct Stop {
    /// Stop now: every world runs its last tick and is checkpointed, clients are let go
    /// (`GOING_AWAY`) and find their worlds again through the allocator.
    pub shutdown: CancellationToken,
    /// Drain, then stop: every world is checkpointed and moved to another server, its
    /// clients are sent `Migrate`. The control plane marking this server Draining does
    /// the same.
    pub drain: CancellationToken,
}

impl From<CancellationToken> for Stop {
    fn from(shutdown: CancellationToken) -> Self {
        Self { shutdown, drain: CancellationToken::new() }
    }
}

impl Config {
    /// Refuses settings no server can run with.
    pub fn validate(&self) -> Result<(), Error> {
        if self.join_secret.is_empty() {
            return Err(Error::Config("GAIA_JOIN_SECRET must not be empty".into()));
        }
        if self.tick_hz == 0 || self.tick_hz > 1000 {
            return Err(Error::Config("GAIA_TICK_HZ must be 1 to 1000".into()));
        }
        if self.delta_hz == 0 || !self.tick_hz.is_multiple_of(self.delta_hz) {
            let (tick, delta) = (self.tick_hz, self.delta_hz);
            return Err(Error::Config(format!("GAIA_DELTA_HZ ({delta}) must divide GAIA_TICK_HZ ({tick})")));
        }
        Ok(())
    }

    /// What this server's worlds are told.
    pub fn room_config(&self) -> RoomConfig {
        RoomConfig {
            tick: Duration::from_secs(1) / self.tick_hz,
            send_every: self.tick_hz / self.delta_hz,
            max_players: self.world_player_capacity as usize,
            max_spectators: self.world_spectator_capacity as usize,
            max_worlds: self.world_capacity as usize,
            empty_grace: self.empty_world_grace,
            member_queue: self.client_queue.max(2),
            max_behind: self.max_behind,
            recent_messages: usize::from(self.world_recent_messages),
            resume: (!self.resume_grace.is_zero()).then(|| ResumeConfig {
                key: TokenKey::new(self.join_secret.as_bytes()),
                server: self.name.clone(),
                grace: self.resume_grace,
                keep_results: self.idle_timeout,
            }),
        }
    }
}
