//! The world runtime: one task per world, ticking it and fanning out what changed.
//!
//! [`Rooms`] finds or starts the task for a world id; connections talk to a world only
//! through its bounded command queue. Each tick the task hands the queued events to the
//! pure [`Engine::step`] and sends each input's result at once. Every `send_every` ticks
//! it encodes the changes since the last frame **once** per encoding in use (bincode,
//! JSON), as one Delta, and gives every member of that encoding the same bytes: inputs
//! are answered at the tick rate (20 Hz by default) while clients get one frame per delta
//! period (10 Hz). Worlds are separate tasks, so the
//! runtime spreads them over its threads and a slow world delays only itself, as long as
//! slow worlds are fewer than the runtime's worker threads (a tick runs on a worker).
//!
//! Slow readers: each member has a bounded send queue. When it is full the member is
//! *behind*: it gets no deltas, and its input results are held (a few). Once its queue
//! has drained to half, it gets a `Resync` (the whole world, encoded once per tick for
//! everyone who needs one), its held results, and deltas again. A member behind for
//! longer than `max_behind`, or with too many held results, is dropped (its connection
//! closes with `TOO_SLOW`). So a slow reader can neither grow memory nor stall the world.
//!
//! Spectators ([`Rooms::spectate`]) watch a running world: they get its Welcome (`you`
//! 0: no entity) and deltas like members, but the world's engine never hears of them, so
//! they are no player, count toward no player limit (`max_spectators` of their own), and
//! do not keep a world alive. Their connection refuses their inputs itself.
//!
//! A world with no players for `empty_grace` ends and gives its slot back. On shutdown
//! each world runs one last tick with the inputs already queued, sends the results, and
//! then lets its members go (their connections close with `GOING_AWAY`).
//!
//! Durability ([`Persistence`]): a world starts by loading its newest checkpoint (joins
//! wait in its queue meanwhile), and every `every_ticks` ticks in which something
//! happened it hands a checkpoint to the [`Tiers`] writer, which never makes a tick wait.
//! A world whose checkpoint a store refuses as fenced has a newer owner: it stops, and
//! its members are told to allocate again. On [`Rooms::drain`] each world runs its last
//! tick, writes its checkpoint to every tier, asks the control plane for a new server
//! ([`Migration`]) and sends each member `Migrate{address, token}`.
//!
//! Operations: the operations a tick starts go to the server's [`Runner`]; each outcome
//! comes back on the world's own channel and is applied at the next tick, among the
//! inputs, in the order outcomes arrive. A world that starts (restored, or moved here)
//! runs again the operations its state has in flight, or completes those that may not be
//! repeated as interrupted ([`Engine::recover`]). The operations its last tick starts
//! are not run here: they are in its checkpoint, for the world's next server.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use gaia_api::protocol::{Encoding, InputOutcome, ServerMsg, close};
use gaia_api::token::{JoinClaims, ResumeClaims, TokenKey, unix_ms};
use gaia_checkpoint::{Checkpoint, Tiers};
use gaia_ops::{Completed, Operation, Runner};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::closing::Closing;
use crate::engine::{Engine, Event, TickOutput};
use crate::farewell::{Farewell, Leftovers};
use crate::metrics::Metrics;
use crate::recent::RecentLines;
use crate::world::{MemberId, NewWorld, World};

/// Commands queued per world before senders wait.
const WORLD_QUEUE: usize = 4096;

#[derive(Debug, Clone)]
pub struct RoomConfig {
    /// The fixed time step: inputs are applied and answered at each tick.
    pub tick: Duration,
    /// Ticks per delta frame: changes of this many ticks are coalesced into one frame.
    pub send_every: u32,
    /// Players one world holds.
    pub max_players: usize,
    /// Spectators one world holds, besides its players.
    pub max_spectators: usize,
    /// Worlds this server hosts at once.
    pub max_worlds: usize,
    /// How long a world with nobody in it lives on before it ends.
    pub empty_grace: Duration,
    /// Frames queued per member before it counts as behind.
    pub member_queue: usize,
    /// How long a member may stay behind before it is dropped.
    pub max_behind: Duration,
    /// Session resume; `None`: a member whose connection drops leaves at once.
    pub resume: Option<ResumeConfig>,
    /// Lines said that a world's `Welcome` and `Resync` carry, the newest; 0: none.
    pub recent_messages: usize,
}

/// Session resume: a member whose connection drops (no close frame) stays in its world,
/// away, for `grace`; a new connection that sends `Resume` with the token of its Welcome
/// takes it back (see the module docs).
#[derive(Debug, Clone)]
pub struct ResumeConfig {
    pub key: TokenKey,
    /// This server's name, which resume tokens carry.
    pub server: String,
    pub grace: Duration,
    /// How long a member's results are kept to answer a resume's `awaiting` seqs: the
    /// idle timeout, as frames can sit undelivered in a dead connection until the
    /// server gives up on it.
    pub keep_results: Duration,
}

/// How long a starting world waits for its last lines from the activity log.
const RECALL_TIMEOUT: Duration = Duration::from_secs(2);
/// A resume token is refused past this age; the grace, not this, bounds a resume.
const RESUME_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// At most this many results are kept per member for a resume (see
/// [`ResumeConfig::keep_results`]): more than 30 s at the default input rate limit (20/s).
const RECENT_RESULTS_MAX: usize = 1024;

impl Default for RoomConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(50),
            send_every: 2,
            max_players: 30,
            max_spectators: 16,
            max_worlds: 10,
            empty_grace: Duration::from_secs(5),
            member_queue: 64,
            max_behind: Duration::from_secs(5),
            resume: None,
            recent_messages: 20,
        }
    }
}

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

/// Why a join was refused; the connection turns it into a close code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("world is full ({0} players)")]
    WorldFull(usize),
    #[error("world has its maximum of {0} spectators")]
    SpectatorsFull(usize),
    #[error("server hosts its maximum of {0} worlds")]
    ServerFull(usize),
    #[error("server is shutting down")]
    ShuttingDown,
    /// Retryable through the allocator: the server drains, the world moved on, or its
    /// checkpoint could not be read.
    #[error("world unavailable here: {0}; allocate again")]
    Unavailable(String),
}

/// What a world sends a member's connection.
#[derive(Debug)]
pub enum Outbound {
    Frame(Bytes),
    /// Write what came before, then close with this.
    Close(Closing),
}

/// What the control plane must hear about worlds; sent in order by one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorldEvent {
    /// Loaded here and joined; `epoch` is the newest among its joins' tokens.
    Started {
        world_id: String,
        epoch: u64,
    },
    Ended(String),
}

enum Cmd<A> {
    Join {
        member: MemberId,
        name: String,
        /// The world's epoch in the member's join token.
        epoch: u64,
        out: mpsc::Sender<Outbound>,
        encoding: Encoding,
        farewell: Farewell,
        reply: oneshot::Sender<Result<(), JoinError>>,
    },
    Leave {
        member: MemberId,
    },
    /// The member's connection dropped: it stays, away, until a resume or the grace ends.
    Park {
        member: MemberId,
    },
    /// A new connection takes back `member` (see [`ResumeConfig`]).
    Resume {
        member: MemberId,
        epoch: u64,
        out: mpsc::Sender<Outbound>,
        encoding: Encoding,
        farewell: Farewell,
        awaiting: Vec<u32>,
        reply: oneshot::Sender<Result<(), JoinError>>,
    },
    /// A read-only connection starts watching (see [`Rooms::spectate`]).
    Spectate {
        member: MemberId,
        out: mpsc::Sender<Outbound>,
        encoding: Encoding,
        farewell: Farewell,
        reply: oneshot::Sender<Result<(), JoinError>>,
    },
    Input {
        member: MemberId,
        seq: u32,
        action: A,
    },
}

/// A member's way into its world.
pub struct WorldHandle<A> {
    member: MemberId,
    tx: mpsc::Sender<Cmd<A>>,
    leftovers: oneshot::Receiver<Leftovers>,
}

impl<A> WorldHandle<A> {
    /// Queues an input for the next tick; waits while the world's queue is full. False
    /// when the world has stopped.
    pub async fn input(&self, seq: u32, action: A) -> bool {
        self.tx.send(Cmd::Input { member: self.member, seq, action }).await.is_ok()
    }

    /// Leaves the world. Its inputs the world has not applied yet are dropped unapplied,
    /// and from then on it queues nothing more for this member. The returned receiver
    /// gets what the world still owes the member (see [`Farewell`]) once it is gone.
    pub async fn leave(self) -> oneshot::Receiver<Leftovers> {
        let _ = self.tx.send(Cmd::Leave { member: self.member }).await;
        self.leftovers
    }

    /// The connection dropped without a close: with resume on, the member stays away for
    /// the grace (its inputs already sent are applied, their results kept); else it leaves.
    pub async fn park(self) {
        let _ = self.tx.send(Cmd::Park { member: self.member }).await;
    }
}

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

/// A member as its world sees it.
struct Member {
    out: mpsc::Sender<Outbound>,
    /// The player id from its join token, for the token of a move.
    player: String,
    /// How its connection's frames are written.
    encoding: Encoding,
    /// What it controls, as its Welcome said.
    you: u32,
    standing: Standing,
    /// Its results of the last `keep_results` (seq, tick, frame), for a resume.
    recent: std::collections::VecDeque<(u32, u64, Bytes)>,
    /// Input results held until the Welcome or the resync, sent to the connection if
    /// the member goes first.
    farewell: Farewell,
    /// Watches only: not in the world's engine, never moved, never parked.
    spectator: bool,
}

/// An accepted join, waiting for the tick that adds it.
struct Joining {
    out: mpsc::Sender<Outbound>,
    player: String,
    encoding: Encoding,
    farewell: Farewell,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// In the world; its Welcome goes with the next delta frame.
    Welcoming { you: u32 },
    /// Keeping up: gets every delta.
    Live,
    /// Its queue was full at tick `since`; it gets a resync once it drains.
    Behind { since: u64 },
    /// Its connection dropped; results are held for a resume until `until`, when it
    /// leaves.
    Away { until: tokio::time::Instant },
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

    async fn run_world(self: Arc<Self>, world_id: String, generation: u64, mut rx: mpsc::Receiver<Cmd<W::Action>>) {
        // Joins wait in the queue while the world loads.
        let (mut engine, floor) = match self.load(&world_id).await {
            Ok(loaded) => loaded,
            Err(reason) => {
                tracing::warn!(world = %world_id, %reason, "world cannot start here");
                self.end(&world_id, generation);
                rx.close();
                while let Some(cmd) = rx.recv().await {
                    if let Cmd::Join { reply, .. } = cmd {
                        let _ = reply.send(Err(JoinError::Unavailable(reason.clone())));
                    }
                }
                return;
            }
        };
        // The world's epoch: the newest among its joins' tokens (the registry bumps it
        // each time the world is assigned), never below its checkpoint's.
        let mut started = false;
        let mut fanout = Fanout::<W::Change>::new(&self.config);
        fanout.epoch = floor;
        self.recall_lines(&world_id, &mut fanout.said).await;
        // The world's operations: what it had in flight, run again (or interrupted).
        let (done, mut outcomes) = mpsc::unbounded_channel::<Completed>();
        let (again, interrupted) = engine.recover();
        self.run_operations(again, &done);
        let mut pending: Vec<Event<W::Action>> = interrupted;
        let mut ticker = tokio::time::interval(self.config.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut empty_since = tokio::time::Instant::now();
        // Whether anything happened since the last checkpoint.
        let mut dirty = false;
        tracing::debug!(world = %world_id, tick = engine.tick(), "world started");
        // Made once, not per turn of the loop: each wait on a token shared by every world
        // registers with (and leaves) that token's waiter list under its lock.
        let shutdown = self.shutdown.clone().cancelled_owned();
        let draining = self.draining.clone().cancelled_owned();
        tokio::pin!(shutdown, draining);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => {
                    self.last_tick(&world_id, &mut engine, &mut fanout, &mut pending, &mut rx);
                    self.save(&world_id, fanout.epoch, &engine);
                    break;
                }
                _ = &mut draining => {
                    self.last_tick(&world_id, &mut engine, &mut fanout, &mut pending, &mut rx);
                    self.save(&world_id, fanout.epoch, &engine);
                    self.migrate(&world_id, engine.tick(), &mut fanout).await;
                    self.end(&world_id, generation);
                    break;
                }
                cmd = rx.recv() => match cmd {
                    Some(Cmd::Join { epoch: theirs, reply, .. } | Cmd::Resume { epoch: theirs, reply, .. })
                        if theirs < floor =>
                    {
                        // A token from before the world's last move: it is not ours to serve.
                        let reason = format!("token of epoch {theirs}, world is at epoch {floor}");
                        let _ = reply.send(Err(JoinError::Unavailable(reason)));
                    }
                    Some(cmd) => {
                        if let Cmd::Join { epoch: theirs, .. } = &cmd {
                            fanout.epoch = fanout.epoch.max(*theirs);
                            if !started {
                                started = true;
                                let _ = self.events.send(WorldEvent::Started { world_id: world_id.clone(), epoch: fanout.epoch });
                            }
                        }
                        fanout.take(cmd, &mut pending);
                    }
                    None => break,
                },
                Some(completed) = outcomes.recv() => pending.push(Event::Done(completed)),
                _ = ticker.tick() => {
                    dirty |= !pending.is_empty();
                    let started_at = std::time::Instant::now();
                    let (changed, started) = self.tick(&world_id, &mut engine, &mut fanout, std::mem::take(&mut pending));
                    dirty |= changed || !started.is_empty();
                    self.run_operations(started, &done);
                    if let Some(p) = &self.persistence
                        && engine.tick().is_multiple_of(p.every_ticks)
                    {
                        if dirty {
                            self.save(&world_id, fanout.epoch, &engine);
                            dirty = false;
                        }
                        if let Some(theirs) = p.tiers.take_fenced(&world_id)
                            && theirs > fanout.epoch
                        {
                            tracing::warn!(world = %world_id, ours = fanout.epoch, theirs, "world has a newer owner; stopping it here");
                            self.metrics.fenced.inc();
                            p.tiers.forget(&world_id);
                            let moved = Closing {
                                code: close::WORLD_UNAVAILABLE,
                                reason: "world moved to another server; allocate again".into(),
                                label: "fenced",
                            };
                            fanout.close_all(moved);
                            self.end(&world_id, generation);
                            break;
                        }
                    }
                    let took = started_at.elapsed();
                    self.metrics.tick_seconds.observe(took.as_secs_f64());
                    pending.extend(fanout.dropped.drain(..).map(|member| Event::Leave { member }));
                    if !fanout.is_empty() {
                        empty_since = tokio::time::Instant::now();
                    } else if empty_since.elapsed() >= self.config.empty_grace {
                        // Written to every tier before the slot is given back, so the
                        // next server to load the world finds this tick.
                        self.save(&world_id, fanout.epoch, &engine);
                        if let Some(p) = &self.persistence
                            && let Err(e) = p.tiers.flush().await
                        {
                            tracing::warn!(world = %world_id, error = %e, "final checkpoint of an ended world not written yet; retrying in the background");
                        }
                        if self.end(&world_id, generation) {
                            break;
                        }
                    }
                    // A tick longer than the period leaves the ticker always ready: give
                    // the thread back so the connections this tick woke (queued behind
                    // us on this worker) run now, not when the world next waits. Only
                    // then: a yield costs the worker an extra turn of the I/O driver.
                    if took >= self.config.tick {
                        tokio::task::yield_now().await;
                    }
                }
            }
        }
        // Joins that raced with the end are told to retry (their reply is dropped);
        // members are let go by dropping their queues.
        rx.close();
        while rx.recv().await.is_some() {}
        tracing::debug!(world = %world_id, tick = engine.tick(), "world stopped");
    }

    /// The world's newest valid checkpoint, or a new world; and the world's epoch floor:
    /// the newest epoch among its checkpoints, restorable or not (0 when it has none).
    /// Retries stores that do not answer until `load_timeout`.
    async fn load(&self, world_id: &str) -> Result<(Engine<W>, u64), String> {
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
    async fn recall_lines(&self, world_id: &str, said: &mut RecentLines) {
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

    /// Starts `started` on the runner, their outcomes to `done`.
    fn run_operations(&self, started: Vec<Operation>, done: &mpsc::UnboundedSender<Completed>) {
        for op in started {
            self.ops.start(op, done.clone());
        }
    }

    /// Hands the world's state to the checkpoint writer; never waits on a store.
    fn save(&self, world_id: &str, epoch: u64, engine: &Engine<W>) {
        if let Some(p) = &self.persistence {
            let state = engine.world().save();
            p.tiers.put(Checkpoint::new(world_id, epoch, engine.tick(), W::SCHEMA_VERSION, &state));
        }
    }

    /// The last tick before the world stops here: what clients already sent is applied
    /// and answered, and the changes since the last delta frame go out.
    fn last_tick(
        &self,
        world_id: &str,
        engine: &mut Engine<W>,
        fanout: &mut Fanout<W::Change>,
        pending: &mut Vec<Event<W::Action>>,
        rx: &mut mpsc::Receiver<Cmd<W::Action>>,
    ) {
        while let Ok(cmd) = rx.try_recv() {
            fanout.take(cmd, pending);
        }
        self.tick(world_id, engine, fanout, std::mem::take(pending));
        if !engine.tick().is_multiple_of(fanout.send_every) {
            fanout.flush(world_id, engine, engine.tick(), &self.metrics);
        }
    }

    /// Moves the world (saved at `tick`, just handed to the writer) to another server: its
    /// checkpoint is written to every tier, the control plane reassigns it, and every
    /// member is sent `Migrate`. Gives up at the migration timeout; then members are let
    /// go (`GOING_AWAY`) and find the world through the allocator, restored from the
    /// newest checkpoint written. Without checkpoints a move would lose the world's
    /// state, and without a control plane there is nowhere to go: members are let go.
    async fn migrate(&self, world_id: &str, tick: u64, fanout: &mut Fanout<W::Change>) {
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
                let _ = member.out.try_send(Outbound::Close(goodbye.clone()));
            }
        }
        tracing::info!(world = %world_id, to = %destination.server, tick, members = fanout.members.len(), took = ?started.elapsed(), "world moved");
        self.metrics.count_migration("moved");
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

    /// One tick, fanned out: whether the world changed, and the operations it started.
    fn tick(
        &self,
        world_id: &str,
        engine: &mut Engine<W>,
        fanout: &mut Fanout<W::Change>,
        events: Vec<Event<W::Action>>,
    ) -> (bool, Vec<Operation>) {
        let mut out = engine.step(events);
        let changed = !out.changes.is_empty();
        // Lines are picked out of the changes only for a log or for Welcomes: no work per
        // tick without either.
        let log = self.persistence.as_ref().and_then(|p| p.log.as_ref());
        if log.is_some() || fanout.said.wanted() {
            let at_ms = unix_ms(std::time::SystemTime::now());
            for (seq, line) in engine.world().messages(&out.changes).into_iter().enumerate() {
                let message = gaia_checkpoint::Message {
                    world_id: world_id.to_string(),
                    epoch: fanout.epoch,
                    tick: out.tick,
                    seq: seq as u32,
                    at_ms,
                    author_id: line.author_id,
                    author: line.author,
                    text: line.text,
                };
                if let Some(log) = log {
                    log.push(message.clone());
                }
                fanout.said.push(message.into_wire());
            }
        }
        if out.stray > 0 {
            self.metrics.stray_outcomes.inc_by(out.stray as u64);
        }
        let started = std::mem::take(&mut out.started);
        fanout.send(world_id, engine, out, &self.metrics);
        (changed, started)
    }
}

/// The members of one world and the sending of each tick's frames to them.
struct Fanout<C> {
    members: HashMap<MemberId, Member>,
    /// Accepted joins, waiting for the tick that adds them.
    joining: HashMap<MemberId, Joining>,
    /// Changes since the last delta frame.
    changes: Vec<C>,
    /// Members let go this tick, for the next tick's `Leave`.
    dropped: Vec<MemberId>,
    max_players: usize,
    max_spectators: usize,
    queue: usize,
    max_behind_ticks: u64,
    /// Ticks per delta frame.
    send_every: u64,
    resume: Option<ResumeConfig>,
    /// Ticks a result is kept for a resume (0 without resume).
    keep_results_ticks: u64,
    /// The world's epoch: the newest among its joins' tokens, never below its
    /// checkpoint's. Checkpoints and resume tokens carry it.
    epoch: u64,
    /// The last lines said, for Welcomes and Resyncs.
    said: RecentLines,
}

impl<C: bincode::Encode + serde::Serialize> Fanout<C> {
    fn new(config: &RoomConfig) -> Self {
        let tick = config.tick.as_secs_f64().max(1e-6);
        Self {
            members: HashMap::new(),
            joining: HashMap::new(),
            changes: Vec::new(),
            dropped: Vec::new(),
            max_players: config.max_players,
            max_spectators: config.max_spectators,
            queue: config.member_queue,
            max_behind_ticks: (config.max_behind.as_secs_f64() / tick).ceil() as u64,
            send_every: u64::from(config.send_every.max(1)),
            resume: config.resume.clone(),
            keep_results_ticks: config
                .resume
                .as_ref()
                .map_or(0, |r| (r.keep_results.as_secs_f64() / tick).ceil() as u64),
            epoch: 0,
            said: RecentLines::new(config.recent_messages),
        }
    }

    /// Whether the world has no players (spectators do not count).
    fn is_empty(&self) -> bool {
        self.joining.is_empty() && self.members.values().all(|m| m.spectator)
    }

    /// Players in the world and on their way in.
    fn players(&self) -> usize {
        self.joining.len() + self.members.values().filter(|m| !m.spectator).count()
    }

    fn spectators(&self) -> usize {
        self.members.values().filter(|m| m.spectator).count()
    }

    /// Lets every member go with `closing`.
    fn close_all(&mut self, closing: Closing) {
        for (_, mut m) in self.members.drain() {
            m.farewell.closing.replace(closing.clone());
        }
        for (_, mut j) in self.joining.drain() {
            j.farewell.closing.replace(closing.clone());
        }
    }

    /// Takes in one command between ticks.
    fn take<A>(&mut self, cmd: Cmd<A>, pending: &mut Vec<Event<A>>) {
        match cmd {
            Cmd::Join { member, name, out, encoding, farewell, reply, .. } => {
                // One connection per player: a newer one takes over (the older one was
                // most likely lost on the way, and its player should not wait for it).
                if let Some(older) = self.member_of(&name) {
                    let reason = "the same player joined this world on another connection";
                    self.let_go(older, Some(Closing::new(close::REPLACED, "replaced", reason)), pending);
                }
                if self.players() >= self.max_players {
                    let _ = reply.send(Err(JoinError::WorldFull(self.max_players)));
                } else if reply.send(Ok(())).is_ok() {
                    self.joining.insert(member, Joining { out, player: name.clone(), encoding, farewell });
                    pending.push(Event::Join { member, name });
                }
            }
            Cmd::Leave { member } => self.let_go(member, None, pending),
            Cmd::Park { member } => match (self.members.get_mut(&member), &self.resume) {
                (Some(m), Some(resume)) if !m.spectator => {
                    m.standing = Standing::Away { until: tokio::time::Instant::now() + resume.grace }
                }
                _ => self.let_go(member, None, pending),
            },
            Cmd::Resume { member, out, encoding, farewell, awaiting, reply, .. } => {
                let answer = self.resume(member, out, encoding, farewell, &awaiting, pending);
                let _ = reply.send(answer);
            }
            Cmd::Spectate { member, out, encoding, farewell, reply } => {
                if self.spectators() >= self.max_spectators {
                    let _ = reply.send(Err(JoinError::SpectatorsFull(self.max_spectators)));
                } else if reply.send(Ok(())).is_ok() {
                    // Welcomed with the next delta frame; no entity, so no tick to wait for.
                    let standing = Standing::Welcoming { you: 0 };
                    let recent = std::collections::VecDeque::new();
                    let player = String::new();
                    let m = Member { out, player, encoding, you: 0, standing, recent, farewell, spectator: true };
                    self.members.insert(member, m);
                }
            }
            Cmd::Input { member, seq, action } => pending.push(Event::Input { member, seq, action }),
        }
    }

    /// A new connection takes back `member`: it is welcomed again (the whole world, its
    /// entity as before), then gets the results held for it and, of its `awaiting` seqs,
    /// the result again if the world kept one, nothing if the input waits for the next
    /// tick (its result comes then), else a refusal saying it never arrived. A connection
    /// still holding the member (its drop not noticed yet) is closed as replaced.
    fn resume<A>(
        &mut self,
        member: MemberId,
        out: mpsc::Sender<Outbound>,
        encoding: Encoding,
        farewell: Farewell,
        awaiting: &[u32],
        pending: &[Event<A>],
    ) -> Result<(), JoinError> {
        let Some(m) = self.members.get_mut(&member).filter(|m| !m.spectator) else {
            return Err(JoinError::Unavailable("too late to resume: the member has left".into()));
        };
        if m.encoding != encoding {
            let reason = format!("resume with {}, as the connection that dropped", m.encoding.subprotocol());
            return Err(JoinError::Unavailable(reason));
        }
        let mut older = std::mem::replace(&mut m.farewell, farewell);
        m.farewell.held = std::mem::take(&mut older.held);
        if !matches!(m.standing, Standing::Away { .. }) {
            let reason = "the same member resumed on another connection";
            older.closing.replace(Closing::new(close::REPLACED, "replaced", reason));
        }
        drop(older);
        m.out = out;
        m.standing = Standing::Welcoming { you: m.you };
        for &seq in awaiting {
            let waiting = pending
                .iter()
                .any(|e| matches!(e, Event::Input { member: id, seq: s, .. } if *id == member && *s == seq));
            if waiting || m.farewell.held.iter().any(|(s, _)| *s == seq) {
                continue;
            }
            let frame = match m.recent.iter().find(|(s, ..)| *s == seq) {
                Some((.., frame)) => frame.clone(),
                None => {
                    let reason = gaia_api::protocol::NEVER_RECEIVED.to_string();
                    let msg: ServerMsg<(), ()> =
                        ServerMsg::InputResult { seq, tick: 0, outcome: InputOutcome::Rejected { reason } };
                    Bytes::from(encoding.encode_server(&msg))
                }
            };
            m.farewell.held.push((seq, frame));
        }
        Ok(())
    }

    /// The member or joining member whose player id is `player` (none for no id).
    fn member_of(&self, player: &str) -> Option<MemberId> {
        if player.is_empty() {
            return None;
        }
        let joined = self.members.iter().find(|(_, m)| !m.spectator && m.player == player).map(|(&id, _)| id);
        joined.or_else(|| self.joining.iter().find(|(_, j)| j.player == player).map(|(&id, _)| id))
    }

    /// Lets `member` go now: its unapplied inputs are dropped, and its connection gets
    /// its held results and `closing`, if any (see [`Farewell`]).
    fn let_go<A>(&mut self, member: MemberId, closing: Option<Closing>, pending: &mut Vec<Event<A>>) {
        let farewell = match self.members.remove(&member) {
            Some(m) => Some(m.farewell),
            None => self.joining.remove(&member).map(|j| j.farewell),
        };
        if let (Some(mut farewell), Some(closing)) = (farewell, closing) {
            farewell.closing.replace(closing);
        }
        retract_inputs(member, pending);
        pending.push(Event::Leave { member });
    }

    /// Takes one tick's output: input results go out at once (held for members not
    /// welcomed yet or behind), changes wait for the next delta frame.
    fn send<W: World<Change = C>>(
        &mut self,
        world_id: &str,
        engine: &Engine<W>,
        out: TickOutput<C>,
        metrics: &Metrics,
    ) {
        let tick = out.tick;
        for (member, you) in out.joined {
            if let Some(Joining { out, player, encoding, farewell }) = self.joining.remove(&member) {
                let standing = Standing::Welcoming { you };
                let recent = std::collections::VecDeque::new();
                let spectator = false;
                self.members
                    .insert(member, Member { out, player, encoding, you, standing, recent, farewell, spectator });
            }
        }
        for (member, seq, outcome) in out.results {
            metrics.count_input(&outcome);
            let Some(m) = self.members.get_mut(&member) else { continue };
            let result: ServerMsg<(), ()> = ServerMsg::InputResult { seq, tick, outcome };
            let frame = Bytes::from(m.encoding.encode_server(&result));
            if self.keep_results_ticks > 0 {
                while m.recent.front().is_some_and(|(_, at, _)| at + self.keep_results_ticks < tick)
                    || m.recent.len() >= RECENT_RESULTS_MAX
                {
                    m.recent.pop_front();
                }
                m.recent.push_back((seq, tick, frame.clone()));
            }
            match m.standing {
                Standing::Live => deliver(m, frame, Some(seq), tick, metrics),
                Standing::Welcoming { .. } | Standing::Behind { .. } | Standing::Away { .. } => {
                    m.farewell.held.push((seq, frame));
                }
            }
        }
        self.changes.extend(out.changes);
        if tick.is_multiple_of(self.send_every) {
            self.flush(world_id, engine, tick, metrics);
        }
    }

    /// Sends the coalesced delta (encoded once per encoding in use, the same bytes for
    /// every member of that encoding), the welcomes, and the resyncs of members that
    /// caught up; drops those too far behind.
    fn flush<W: World<Change = C>>(&mut self, world_id: &str, engine: &Engine<W>, tick: u64, metrics: &Metrics) {
        // The whole world, built at most once per flush and encoded at most once per
        // encoding.
        let mut view: Option<W::View> = None;
        let mut resyncs: [Option<Bytes>; Encoding::ALL.len()] = Default::default();
        let server_us = gaia_api::protocol::unix_us();
        let delta: ServerMsg<(), C> = ServerMsg::Delta { tick, server_us, changes: std::mem::take(&mut self.changes) };
        let mut deltas: [Option<Bytes>; Encoding::ALL.len()] = Default::default();
        let (resume, epoch) = (&self.resume, self.epoch);
        let now = tokio::time::Instant::now();
        let mut expired = Vec::new();
        for (&id, m) in self.members.iter_mut() {
            match m.standing {
                Standing::Live => {
                    let frame =
                        deltas[m.encoding.index()].get_or_insert_with(|| Bytes::from(m.encoding.encode_server(&delta)));
                    deliver(m, frame.clone(), None, tick, metrics);
                }
                Standing::Away { until } => {
                    if until <= now {
                        expired.push(id);
                    }
                }
                // The snapshot holds everything up to this tick, so no delta this time.
                Standing::Welcoming { you } => {
                    let snapshot = view.get_or_insert_with(|| engine.world().view());
                    let resume = resume.as_ref().filter(|_| !m.spectator).map_or_else(String::new, |r| {
                        let expires_at_ms = unix_ms(std::time::SystemTime::now() + RESUME_TOKEN_TTL);
                        let (world_id, server) = (world_id.to_string(), r.server.clone());
                        r.key.sign_resume(&ResumeClaims { world_id, server, member: id, epoch, expires_at_ms })
                    });
                    let messages = self.said.to_vec();
                    let welcome: ServerMsg<&W::View, ()> =
                        ServerMsg::Welcome { world_id: world_id.to_string(), you, tick, snapshot, resume, messages };
                    m.standing = Standing::Live;
                    deliver(m, Bytes::from(m.encoding.encode_server(&welcome)), None, tick, metrics);
                    for (seq, frame) in std::mem::take(&mut m.farewell.held) {
                        deliver(m, frame, Some(seq), tick, metrics);
                    }
                }
                Standing::Behind { since } => {
                    if m.out.is_closed() || tick - since > self.max_behind_ticks || m.farewell.held.len() > self.queue {
                        self.dropped.push(id);
                    } else if m.out.capacity() >= self.queue / 2 + m.farewell.held.len() {
                        let encoding = m.encoding;
                        let frame = resyncs[encoding.index()]
                            .get_or_insert_with(|| {
                                let snapshot = view.get_or_insert_with(|| engine.world().view());
                                let messages = self.said.to_vec();
                                let msg: ServerMsg<&W::View, ()> = ServerMsg::Resync { tick, snapshot, messages };
                                Bytes::from(encoding.encode_server(&msg))
                            })
                            .clone();
                        m.standing = Standing::Live;
                        metrics.resyncs.inc();
                        deliver(m, frame, None, tick, metrics);
                        for (seq, frame) in std::mem::take(&mut m.farewell.held) {
                            deliver(m, frame, Some(seq), tick, metrics);
                        }
                    }
                }
            }
        }
        for id in &self.dropped {
            if let Some(mut m) = self.members.remove(id) {
                metrics.slow_dropped.inc();
                m.farewell.closing.replace(Closing::new(close::TOO_SLOW, "too_slow", "fell too far behind the world"));
            }
        }
        // Away past the grace: they leave, as a closed connection does.
        for id in expired {
            self.members.remove(&id);
            self.dropped.push(id);
        }
    }
}

/// Drops `member`'s inputs that wait for the next tick: a member that left has them
/// unapplied, and unanswered.
fn retract_inputs<A>(member: MemberId, pending: &mut Vec<Event<A>>) {
    pending.retain(|event| !matches!(event, Event::Input { member: m, .. } if *m == member));
}

/// Queues `frame` for `m`. When its queue is full, marks it behind and, if the frame
/// is the result of input `result_of`, holds it for after the resync; a delta or snapshot
/// is covered by the resync itself.
fn deliver(m: &mut Member, frame: Bytes, result_of: Option<u32>, tick: u64, metrics: &Metrics) {
    let len = frame.len() as u64;
    match m.out.try_send(Outbound::Frame(frame)) {
        Ok(()) => {
            metrics.frames_sent.inc();
            metrics.bytes_sent.inc_by(len);
        }
        Err(mpsc::error::TrySendError::Full(Outbound::Frame(frame))) => {
            if !matches!(m.standing, Standing::Behind { .. }) {
                metrics.fell_behind.inc();
                m.standing = Standing::Behind { since: tick };
            }
            if let Some(seq) = result_of {
                m.farewell.held.push((seq, frame));
            }
        }
        // The connection is gone; its Leave is on the way.
        Err(mpsc::error::TrySendError::Full(_) | mpsc::error::TrySendError::Closed(_)) => {}
    }
}

#[cfg(test)]
mod tests {
    use gaia_api::protocol::decode_server;
    use gaia_api::town::{Action, Change, Snapshot};

    use super::*;
    use crate::town::{Town, TownConfig};

    fn say(member: MemberId, seq: u32) -> Cmd<Action> {
        Cmd::Input { member, seq, action: Action::Say { text: format!("hi {seq}") } }
    }

    /// The seqs of the input results among `frames`.
    fn results(frames: impl IntoIterator<Item = Bytes>) -> Vec<u32> {
        let decode = |f: &Bytes| decode_server::<Snapshot, Change>(f).unwrap();
        let seq = |m| match m {
            ServerMsg::InputResult { seq, .. } => Some(seq),
            _ => None,
        };
        frames.into_iter().filter_map(|f| seq(decode(&f))).collect()
    }

    /// A member that cannot take frames has its results held; when it leaves, they go to
    /// its connection with the member, and its inputs still waiting for a tick are
    /// dropped unapplied.
    #[test]
    fn a_leaving_member_gets_its_held_results_and_its_waiting_inputs_are_dropped() {
        let config = RoomConfig { member_queue: 1, ..RoomConfig::default() };
        let metrics = Metrics::new(&mut Default::default());
        let mut engine = Engine::new(Town::new(TownConfig { bots: 0, ..TownConfig::default() }, 1), 0);
        let mut fanout = Fanout::<Change>::new(&config);
        let mut pending = Vec::new();
        let (out, mut frames) = mpsc::channel(1);
        let (farewell, mut leftovers) = Farewell::channel();
        let (reply, _answer) = oneshot::channel();
        let encoding = Encoding::Bincode;
        fanout.take(Cmd::Join { member: 1, name: "p".into(), epoch: 1, out, encoding, farewell, reply }, &mut pending);
        let mut tick = |fanout: &mut Fanout<Change>, pending: &mut Vec<Event<Action>>| {
            let out = engine.step(std::mem::take(pending));
            fanout.send("w", &engine, out, &metrics);
        };
        tick(&mut fanout, &mut pending);
        // Applied at tick 2 with the Welcome; the queue holds the Welcome, so both
        // results are held.
        fanout.take(say(1, 1), &mut pending);
        fanout.take(say(1, 2), &mut pending);
        tick(&mut fanout, &mut pending);
        // Waits for tick 3, which it never sees.
        fanout.take(say(1, 3), &mut pending);
        fanout.take(Cmd::Leave { member: 1 }, &mut pending);
        assert!(!pending.iter().any(|e| matches!(e, Event::Input { .. })), "{pending:?}");
        tick(&mut fanout, &mut pending);

        let mut queued = Vec::new();
        while let Ok(Outbound::Frame(frame)) = frames.try_recv() {
            queued.push(frame);
        }
        let left = leftovers.try_recv().expect("sent when the member went");
        assert_eq!(results(queued.into_iter().chain(left.held)), [1, 2]);
        assert_eq!(left.closing, None);
    }
}
