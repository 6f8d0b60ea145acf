//! The world runtime: one task per world, ticking it and fanning out what changed.
//!
//! - this file, the world directory: [`Rooms`] finds or starts the task for a world id
//!   and ends it; connections talk to a world only through its bounded command queue
//!   ([`WorldHandle`], in `cmd.rs`).
//! - `task.rs`: the world task, its tick loop, shutdown and the operations it runs.
//! - `fanout.rs`: a world's members, the frames each tick sends them, slow readers and
//!   spectators.
//! - `durability.rs`: loading and saving checkpoints, and moving a world on a drain.
//! - `config.rs`: what a server's worlds are told.
//!
//! Worlds are separate tasks, so the runtime spreads them over its threads and a slow
//! world delays only itself, as long as slow worlds are fewer than the runtime's worker
//! threads (a tick runs on a worker). A world with no players for `empty_grace` ends and
//! gives its slot back.

mod cmd;
mod config;
mod durability;
mod fanout;
mod task;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gaia_api::protocol::Encoding;
use gaia_ops::Runner;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use cmd::{JoinError, Outbound, WorldEvent, WorldHandle};
pub use config::{ResumeConfig, RoomConfig};
pub use durability::{Destination, Migration, Mover, Persistence};

use crate::farewell::Farewell;
use crate::metrics::Metrics;
use crate::world::{MemberId, NewWorld, World};
use cmd::Cmd;

/// Commands queued per world before senders wait.
const WORLD_QUEUE: usize = 4096;

struct Room<A> {
    tx: mpsc::Sender<Cmd<A>>,
    /// Tells apart a world that ended from a new one of the same id.
    generation: u64,
}

/// The worlds this server hosts.
pub struct Rooms<W: World> {
    config: RoomConfig,
    new_world: NewWorld<W>,
    rooms: Mutex<HashMap<String, Room<W::Action>>>,
    next: AtomicU64,
    events: mpsc::UnboundedSender<WorldEvent>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    /// Cancelled when the server drains: worlds move away, no new ones start.
    draining: CancellationToken,
    persistence: Option<Persistence>,
    migration: Option<Migration>,
    /// Runs the worlds' operations.
    ops: Arc<Runner>,
    tasks: TaskTracker,
}

impl<W: World> Rooms<W> {
    /// `new_world` makes the world for an id; `events` receives each world's start and
    /// end, for the SDK.
    /// `persistence` and `migration` are optional: without them worlds live and die
    /// with this process, and a drain lets members go as a shutdown does. `ops` runs the
    /// worlds' operations.
    #[allow(clippy::too_many_arguments)] // each is one part of the runtime, named at its one caller
    pub fn new(
        config: RoomConfig,
        new_world: NewWorld<W>,
        events: mpsc::UnboundedSender<WorldEvent>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        persistence: Option<Persistence>,
        migration: Option<Migration>,
        ops: Arc<Runner>,
    ) -> Arc<Self> {
        Arc::new(Self {
            config,
            new_world,
            rooms: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            events,
            metrics,
            shutdown,
            draining: CancellationToken::new(),
            persistence,
            migration,
            ops,
            tasks: TaskTracker::new(),
        })
    }

    /// Starts draining: no new world starts here, and every world moves to another
    /// server (see the module docs). [`Rooms::closed`] waits for them.
    pub fn drain(&self) {
        self.draining.cancel();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    pub fn next_member(&self) -> MemberId {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    pub fn worlds(&self) -> usize {
        self.rooms.lock().len()
    }

    /// Joins `world_id`, starting it here if it is not running. The world sends the
    /// member's frames (Welcome first) into `out`; when it drops `out`, the member was
    /// let go (too slow, or the server is shutting down).
    pub async fn join(
        self: &Arc<Self>,
        world_id: &str,
        epoch: u64,
        member: MemberId,
        name: String,
        encoding: Encoding,
        out: mpsc::Sender<Outbound>,
    ) -> Result<WorldHandle<W::Action>, JoinError> {
        // A world may end between finding it and joining it; then start it again. Two
        // tries are enough: the second finds a fresh world or starts one.
        for _ in 0..2 {
            let tx = self.find_or_start(world_id)?;
            let (reply, answer) = oneshot::channel();
            let (farewell, leftovers) = Farewell::channel();
            let cmd = Cmd::Join { member, name: name.clone(), epoch, out: out.clone(), encoding, farewell, reply };
            if tx.send(cmd).await.is_err() {
                continue;
            }
            match answer.await {
                Ok(Ok(())) => return Ok(WorldHandle { member, tx, leftovers }),
                Ok(Err(e)) => return Err(e),
                Err(_) => continue,
            }
        }
        Err(JoinError::ShuttingDown)
    }

    /// Takes back `member` of `world_id` for a new connection (see [`ResumeConfig`]):
    /// refused as [`JoinError::Unavailable`] when the world or the member is not here
    /// any more, so the client allocates again.
    pub async fn resume(
        &self,
        world_id: &str,
        epoch: u64,
        member: MemberId,
        encoding: Encoding,
        out: mpsc::Sender<Outbound>,
        awaiting: Vec<u32>,
    ) -> Result<WorldHandle<W::Action>, JoinError> {
        let gone = format!("world {world_id} is not on this server any more");
        self.enter_running(world_id, member, gone, |farewell, reply| Cmd::Resume {
            member,
            epoch,
            out,
            encoding,
            farewell,
            awaiting,
            reply,
        })
        .await
    }

    /// Watches `world_id` without joining it: the world sends its Welcome (`you` 0, no
    /// resume token) and deltas into `out`, and never hears of the spectator otherwise.
    /// Only a world already running here can be watched: else [`JoinError::Unavailable`].
    /// The handle's `input` must not be used: a spectator's connection refuses its inputs.
    pub async fn spectate(
        &self,
        world_id: &str,
        member: MemberId,
        encoding: Encoding,
        out: mpsc::Sender<Outbound>,
    ) -> Result<WorldHandle<W::Action>, JoinError> {
        if self.shutdown.is_cancelled() {
            return Err(JoinError::ShuttingDown);
        }
        let gone = format!("world {world_id} is not running on this server");
        self.enter_running(world_id, member, gone, |farewell, reply| Cmd::Spectate {
            member,
            out,
            encoding,
            farewell,
            reply,
        })
        .await
    }

    /// Sends `member`'s way into a world already running here (`cmd`, made with its
    /// farewell and reply) and waits for the answer; a world not here, or gone meanwhile,
    /// is [`JoinError::Unavailable`] with `gone`.
    async fn enter_running(
        &self,
        world_id: &str,
        member: MemberId,
        gone: String,
        cmd: impl FnOnce(Farewell, oneshot::Sender<Result<(), JoinError>>) -> Cmd<W::Action>,
    ) -> Result<WorldHandle<W::Action>, JoinError> {
        let gone = || JoinError::Unavailable(gone.clone());
        let tx = self.rooms.lock().get(world_id).map(|room| room.tx.clone()).ok_or_else(gone)?;
        let (reply, answer) = oneshot::channel();
        let (farewell, leftovers) = Farewell::channel();
        tx.send(cmd(farewell, reply)).await.map_err(|_| gone())?;
        match answer.await {
            Ok(Ok(())) => Ok(WorldHandle { member, tx, leftovers }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(gone()),
        }
    }

    fn find_or_start(self: &Arc<Self>, world_id: &str) -> Result<mpsc::Sender<Cmd<W::Action>>, JoinError> {
        if self.shutdown.is_cancelled() {
            return Err(JoinError::ShuttingDown);
        }
        if self.draining.is_cancelled() {
            return Err(JoinError::Unavailable("server is draining".into()));
        }
        let mut rooms = self.rooms.lock();
        if let Some(room) = rooms.get(world_id) {
            return Ok(room.tx.clone());
        }
        if rooms.len() >= self.config.max_worlds {
            return Err(JoinError::ServerFull(self.config.max_worlds));
        }
        let (tx, rx) = mpsc::channel(WORLD_QUEUE);
        let generation = self.next.fetch_add(1, Ordering::Relaxed);
        rooms.insert(world_id.to_string(), Room { tx: tx.clone(), generation });
        self.metrics.worlds.set(rooms.len() as i64);
        drop(rooms);
        self.tasks.spawn(Arc::clone(self).run_world(world_id.to_string(), generation, rx));
        Ok(tx)
    }

    /// Waits for every world task to finish (after shutdown).
    pub async fn closed(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Removes the world from the map if it is still this generation; reports its end.
    fn end(&self, world_id: &str, generation: u64) -> bool {
        let mut rooms = self.rooms.lock();
        if rooms.get(world_id).is_some_and(|r| r.generation == generation) {
            rooms.remove(world_id);
            self.metrics.worlds.set(rooms.len() as i64);
            let _ = self.events.send(WorldEvent::Ended(world_id.to_string()));
            return true;
        }
        false
    }
}
