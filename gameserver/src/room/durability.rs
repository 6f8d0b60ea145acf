//! Durability ([`Persistence`]): a world starts by loading its newest checkpoint (joins
//! wait in its queue meanwhile), and every `every_ticks` ticks in which something
//! happened it hands a checkpoint to the [`Tiers`] writer, which never makes a tick wait.
//! A world whose checkpoint a store refuses as fenced has a newer owner: it stops, and
//! its members are told to allocate again (see `task.rs`). On [`Rooms::drain`]
//! each world runs its last tick, writes its checkpoint to every tier, asks the control
//! plane for a new server ([`Migration`]) and sends each member `Migrate{address, token}`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gaia_api::protocol::{ServerMsg, close};
use gaia_api::token::{JoinClaims, TokenKey, unix_ms};
use gaia_checkpoint::{Checkpoint, Tiers};

use super::Rooms;
use super::cmd::Outbound;
use super::fanout::{Fanout, Standing};
use crate::closing::Closing;
use crate::engine::Engine;
use crate::recent::RecentLines;
use crate::world::World;

/// Checkpoints: where worlds are saved and how often.
#[derive(Clone)]
pub struct Persistence {
    pub tiers: Arc<Tiers>,
    /// Ticks between two checkpoints of a world in which something happened.
    pub every_ticks: u64,
    /// How long a starting world waits for every store to answer before its joins are
    /// refused (retryable: `WORLD_UNAVAILABLE`).
    pub load_timeout: Duration,
    /// The activity log: what is said in the worlds, written off the tick path.
    pub log: Option<gaia_checkpoint::LogWriter>,
}

/// Where a moved world went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub server: String,
    /// WebSocket address of the new server.
    pub address: String,
    /// The world's epoch there.
    pub epoch: u64,
}

/// The control plane's side of a move: reassign a world away from this server.
#[async_trait::async_trait]
pub trait Mover: Send + Sync + 'static {
    async fn move_world(&self, world_id: &str) -> Result<Destination, String>;
}

/// Moving worlds off this server when it drains.
#[derive(Clone)]
pub struct Migration {
    pub mover: Arc<dyn Mover>,
    /// Signs the members' join tokens for the new server (the allocator's secret).
    pub key: TokenKey,
    pub token_ttl: Duration,
    /// How long a world keeps trying to write its checkpoint and find a new server.
    pub timeout: Duration,
}

/// How long a starting world waits for its last lines from the activity log.
const RECALL_TIMEOUT: Duration = Duration::from_secs(2);

impl<W: World> Rooms<W> {
    /// The world's newest valid checkpoint, or a new world; and the world's epoch floor:
    /// the newest epoch among its checkpoints, restorable or not (0 when it has none).
    /// Retries stores that do not answer until `load_timeout`.
    pub(super) async fn load(&self, world_id: &str) -> Result<(Engine<W>, u64), String> {
        let Some(p) = &self.persistence else {
            return Ok((Engine::new((self.new_world)(world_id), 0), 0));
        };
        let deadline = tokio::time::Instant::now() + p.load_timeout;
        let mut delay = Duration::from_millis(100);
        let found = loop {
            match p.tiers.load(world_id).await {
                Ok(found) => break found,
                Err(e) if tokio::time::Instant::now() + delay < deadline => {
                    tracing::warn!(world = %world_id, error = %e, "cannot read checkpoints yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e.to_string()),
            }
        };
        // Checkpoints the world cannot restore still count: a token older than the newest
        // is stale, and the world goes on after its tick, or the stores would refuse what
        // it saves (as older than what they hold) until it got there.
        let newest = found.first().map(|c| (c.epoch(), c.tick()));
        let (floor, after) = newest.unwrap_or((0, 0));
        for checkpoint in found {
            let header = checkpoint.header();
            if header.schema_version != W::SCHEMA_VERSION {
                tracing::error!(world = %world_id, tick = header.tick, found = header.schema_version, expected = W::SCHEMA_VERSION, "skipping a checkpoint of another schema version");
                continue;
            }
            match W::restore(checkpoint.state()) {
                Ok(world) => {
                    tracing::info!(world = %world_id, tick = header.tick, epoch = header.epoch, "world restored from its checkpoint");
                    self.metrics.restored.inc();
                    return Ok((Engine::new(world, header.tick.max(after)), floor));
                }
                Err(e) => {
                    tracing::error!(world = %world_id, tick = header.tick, error = %e, "skipping a checkpoint the world cannot restore")
                }
            }
        }
        if newest.is_some() {
            tracing::warn!(world = %world_id, epoch = floor, tick = after, "no checkpoint could be restored; the world starts afresh");
        }
        Ok((Engine::new((self.new_world)(world_id), after), floor))
    }

    /// The world's last lines from the activity log, for its Welcomes: a world that ran
    /// elsewhere before goes on with its conversation. Never holds the world up long: a
    /// log that does not answer within [`RECALL_TIMEOUT`] leaves them out.
    pub(super) async fn recall_lines(&self, world_id: &str, said: &mut RecentLines) {
        let Some(log) = self.persistence.as_ref().and_then(|p| p.log.as_ref()).filter(|_| said.wanted()) else {
            return;
        };
        match tokio::time::timeout(RECALL_TIMEOUT, log.last(world_id, self.config.recent_messages)).await {
            Ok(Ok(lines)) => said.seed(lines.into_iter().map(gaia_checkpoint::Message::into_wire).collect()),
            Ok(Err(e)) => {
                tracing::warn!(world = %world_id, error = %e, "world's last lines not read from the activity log")
            }
            Err(_) => {
                tracing::warn!(world = %world_id, "world's last lines not read: the activity log did not answer in time")
            }
        }
    }

    /// Hands the world's state to the checkpoint writer; never waits on a store.
    pub(super) fn save(&self, world_id: &str, epoch: u64, engine: &Engine<W>) {
        if let Some(p) = &self.persistence {
            let state = engine.world().save();
            p.tiers.put(Checkpoint::new(world_id, epoch, engine.tick(), W::SCHEMA_VERSION, &state));
        }
    }

    /// Moves the world (saved at `tick`, just handed to the writer) to another server: its
    /// checkpoint is written to every tier, the control plane reassigns it, and every
    /// member is sent `Migrate`. Gives up at the migration timeout; then members are let
    /// go (`GOING_AWAY`) and find the world through the allocator, restored from the
    /// newest checkpoint written. Without checkpoints a move would lose the world's
    /// state, and without a control plane there is nowhere to go: members are let go.
    pub(super) async fn migrate(&self, world_id: &str, tick: u64, fanout: &mut Fanout<W::Change>) {
        let (Some(p), Some(m)) = (&self.persistence, &self.migration) else {
            return;
        };
        let started = tokio::time::Instant::now();
        let deadline = started + m.timeout;
        let destination = async {
            while let Err(e) = p.tiers.flush().await {
                if tokio::time::Instant::now() >= deadline {
                    return Err(format!("checkpoint not written: {e}"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            loop {
                match m.mover.move_world(world_id).await {
                    Ok(destination) => return Ok(destination),
                    Err(e) if tokio::time::Instant::now() >= deadline => {
                        return Err(format!("no server to move to: {e}"));
                    }
                    Err(e) => {
                        tracing::debug!(world = %world_id, error = %e, "cannot move the world yet; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
        .await;
        let destination = match destination {
            Ok(destination) => destination,
            Err(reason) => {
                tracing::warn!(world = %world_id, %reason, "world not moved; its members will find it through the allocator");
                self.metrics.count_migration("failed");
                return;
            }
        };
        let expires_at_ms = unix_ms(std::time::SystemTime::now() + m.token_ttl);
        let goodbye = Closing {
            code: close::GOING_AWAY,
            reason: format!("world moved to {}", destination.server),
            label: "migrated",
        };
        for member in fanout.members.values().filter(|m| !m.spectator) {
            // Spectators are let go (1001) and look the world up again. A member behind holds results of applied inputs that never reached it;
            // `Migrate` promises they all did, so it is let go instead (1001, when its
            // queue is dropped) and finds its world through the allocator, as is one
            // whose queue cannot take the Migrate.
            if !matches!(member.standing, Standing::Live) || !member.farewell.held.is_empty() {
                continue;
            }
            let token = m.key.sign(&JoinClaims {
                world_id: world_id.to_string(),
                server: destination.server.clone(),
                player_id: member.player.clone(),
                expires_at_ms,
                epoch: destination.epoch,
            });
            let msg: ServerMsg<(), ()> = ServerMsg::Migrate { address: destination.address.clone(), token };
            if member.out.try_send(Outbound::Frame(Bytes::from(member.encoding.encode_server(&msg)))).is_ok() {
                let _ = member.out.try_send(Outbound::Close(Box::new(goodbye.clone())));
            }
        }
        tracing::info!(world = %world_id, to = %destination.server, tick, members = fanout.members.len(), took = ?started.elapsed(), "world moved");
        self.metrics.count_migration("moved");
    }
}
