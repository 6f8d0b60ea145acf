//! The world runtime: one task per world, ticking it and fanning out what changed.
//!
//! [`Rooms`] finds or starts the task for a world id; connections talk to a world only
//! through its bounded command queue. Each tick the task hands the queued events to the
//! pure [`Engine::step`] and sends each input's result at once. Every `send_every` ticks
//! it encodes the changes since the last frame **once**, as one Delta, and gives every
//! member the same bytes: inputs are answered at the tick rate (20 Hz by default) while
//! clients get one frame per delta period (10 Hz). Worlds are separate tasks, so the
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
//! A world with no members for `empty_grace` ends and gives its slot back. On shutdown
//! each world runs one last tick with the inputs already queued, sends the results, and
//! then lets its members go (their connections close with `GOING_AWAY`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use gaia_api::protocol::{ServerMsg, encode_server};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::{Engine, Event, TickOutput};
use crate::metrics::Metrics;
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
    /// Worlds this server hosts at once.
    pub max_worlds: usize,
    /// How long a world with nobody in it lives on before it ends.
    pub empty_grace: Duration,
    /// Frames queued per member before it counts as behind.
    pub member_queue: usize,
    /// How long a member may stay behind before it is dropped.
    pub max_behind: Duration,
}

impl Default for RoomConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(50),
            send_every: 2,
            max_players: 30,
            max_worlds: 10,
            empty_grace: Duration::from_secs(5),
            member_queue: 64,
            max_behind: Duration::from_secs(5),
        }
    }
}

/// Why a join was refused; the connection turns it into a close code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("world is full ({0} players)")]
    WorldFull(usize),
    #[error("server hosts its maximum of {0} worlds")]
    ServerFull(usize),
    #[error("server is shutting down")]
    ShuttingDown,
}

/// What the control plane must hear about worlds; sent in order by one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorldEvent {
    Started(String),
    Ended(String),
}

enum Cmd<A> {
    Join { member: MemberId, name: String, out: mpsc::Sender<Bytes>, reply: oneshot::Sender<Result<(), JoinError>> },
    Leave { member: MemberId },
    Input { member: MemberId, seq: u32, action: A },
}

/// A member's way into its world.
pub struct WorldHandle<A> {
    member: MemberId,
    tx: mpsc::Sender<Cmd<A>>,
}

impl<A> WorldHandle<A> {
    /// Queues an input for the next tick; waits while the world's queue is full. False
    /// when the world has stopped.
    pub async fn input(&self, seq: u32, action: A) -> bool {
        self.tx.send(Cmd::Input { member: self.member, seq, action }).await.is_ok()
    }

    pub async fn leave(&self) {
        let _ = self.tx.send(Cmd::Leave { member: self.member }).await;
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
    tasks: TaskTracker,
}

/// A member as its world sees it.
struct Member {
    out: mpsc::Sender<Bytes>,
    standing: Standing,
    /// Input results held until the Welcome or the resync.
    held: Vec<Bytes>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// In the world; its Welcome goes with the next delta frame.
    Welcoming { you: u32 },
    /// Keeping up: gets every delta.
    Live,
    /// Its queue was full at tick `since`; it gets a resync once it drains.
    Behind { since: u64 },
}

impl<W: World> Rooms<W> {
    /// `new_world` makes the world for an id; `events` receives each world's start and
    /// end, for the SDK.
    pub fn new(
        config: RoomConfig,
        new_world: NewWorld<W>,
        events: mpsc::UnboundedSender<WorldEvent>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            config,
            new_world,
            rooms: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            events,
            metrics,
            shutdown,
            tasks: TaskTracker::new(),
        })
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
        member: MemberId,
        name: String,
        out: mpsc::Sender<Bytes>,
    ) -> Result<WorldHandle<W::Action>, JoinError> {
        // A world may end between finding it and joining it; then start it again. Two
        // tries are enough: the second finds a fresh world or starts one.
        for _ in 0..2 {
            let tx = self.find_or_start(world_id)?;
            let (reply, answer) = oneshot::channel();
            let cmd = Cmd::Join { member, name: name.clone(), out: out.clone(), reply };
            if tx.send(cmd).await.is_err() {
                continue;
            }
            match answer.await {
                Ok(Ok(())) => return Ok(WorldHandle { member, tx }),
                Ok(Err(e)) => return Err(e),
                Err(_) => continue,
            }
        }
        Err(JoinError::ShuttingDown)
    }

    fn find_or_start(self: &Arc<Self>, world_id: &str) -> Result<mpsc::Sender<Cmd<W::Action>>, JoinError> {
        if self.shutdown.is_cancelled() {
            return Err(JoinError::ShuttingDown);
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
        let _ = self.events.send(WorldEvent::Started(world_id.to_string()));
        let engine = Engine::new((self.new_world)(world_id), 0);
        self.tasks.spawn(Arc::clone(self).run_world(world_id.to_string(), generation, engine, rx));
        Ok(tx)
    }

    /// Waits for every world task to finish (after shutdown).
    pub async fn closed(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    async fn run_world(
        self: Arc<Self>,
        world_id: String,
        generation: u64,
        mut engine: Engine<W>,
        mut rx: mpsc::Receiver<Cmd<W::Action>>,
    ) {
        let mut fanout = Fanout::<W::Change>::new(&self.config);
        let mut pending: Vec<Event<W::Action>> = Vec::new();
        let mut ticker = tokio::time::interval(self.config.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut empty_since = tokio::time::Instant::now();
        tracing::debug!(world = %world_id, "world started");
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => {
                    // Finish the tick: what clients already sent is applied and answered.
                    while let Ok(cmd) = rx.try_recv() {
                        fanout.take(cmd, &mut pending);
                    }
                    self.tick(&world_id, &mut engine, &mut fanout, std::mem::take(&mut pending));
                    if !engine.tick().is_multiple_of(fanout.send_every) {
                        fanout.flush(&world_id, &engine, engine.tick(), &self.metrics);
                    }
                    break;
                }
                cmd = rx.recv() => match cmd {
                    Some(cmd) => fanout.take(cmd, &mut pending),
                    None => break,
                },
                _ = ticker.tick() => {
                    let took = self.tick(&world_id, &mut engine, &mut fanout, std::mem::take(&mut pending));
                    pending.extend(fanout.dropped.drain(..).map(|member| Event::Leave { member }));
                    if !fanout.is_empty() {
                        empty_since = tokio::time::Instant::now();
                    } else if empty_since.elapsed() >= self.config.empty_grace && self.end(&world_id, generation) {
                        break;
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

    fn tick(
        &self,
        world_id: &str,
        engine: &mut Engine<W>,
        fanout: &mut Fanout<W::Change>,
        events: Vec<Event<W::Action>>,
    ) -> Duration {
        let started = std::time::Instant::now();
        let out = engine.step(events);
        fanout.send(world_id, engine, out, &self.metrics);
        let took = started.elapsed();
        self.metrics.tick_seconds.observe(took.as_secs_f64());
        took
    }
}

/// The members of one world and the sending of each tick's frames to them.
struct Fanout<C> {
    members: HashMap<MemberId, Member>,
    /// Accepted joins, waiting for the tick that adds them to the world.
    joining: HashMap<MemberId, mpsc::Sender<Bytes>>,
    /// Changes since the last delta frame.
    changes: Vec<C>,
    /// Members let go this tick, for the next tick's `Leave`.
    dropped: Vec<MemberId>,
    max_players: usize,
    queue: usize,
    max_behind_ticks: u64,
    /// Ticks per delta frame.
    send_every: u64,
}

impl<C: bincode::Encode> Fanout<C> {
    fn new(config: &RoomConfig) -> Self {
        let tick = config.tick.as_secs_f64().max(1e-6);
        Self {
            members: HashMap::new(),
            joining: HashMap::new(),
            changes: Vec::new(),
            dropped: Vec::new(),
            max_players: config.max_players,
            queue: config.member_queue,
            max_behind_ticks: (config.max_behind.as_secs_f64() / tick).ceil() as u64,
            send_every: u64::from(config.send_every.max(1)),
        }
    }

    fn is_empty(&self) -> bool {
        self.members.is_empty() && self.joining.is_empty()
    }

    /// Takes in one command between ticks.
    fn take<A>(&mut self, cmd: Cmd<A>, pending: &mut Vec<Event<A>>) {
        match cmd {
            Cmd::Join { member, name, out, reply } => {
                if self.members.len() + self.joining.len() >= self.max_players {
                    let _ = reply.send(Err(JoinError::WorldFull(self.max_players)));
                } else if reply.send(Ok(())).is_ok() {
                    self.joining.insert(member, out);
                    pending.push(Event::Join { member, name });
                }
            }
            Cmd::Leave { member } => {
                self.members.remove(&member);
                self.joining.remove(&member);
                pending.push(Event::Leave { member });
            }
            Cmd::Input { member, seq, action } => pending.push(Event::Input { member, seq, action }),
        }
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
            if let Some(tx) = self.joining.remove(&member) {
                self.members
                    .insert(member, Member { out: tx, standing: Standing::Welcoming { you }, held: Vec::new() });
            }
        }
        for (member, seq, outcome) in out.results {
            metrics.count_input(&outcome);
            let Some(m) = self.members.get_mut(&member) else { continue };
            let result: ServerMsg<(), ()> = ServerMsg::InputResult { seq, tick, outcome };
            let frame = Bytes::from(encode_server(&result));
            match m.standing {
                Standing::Live => deliver(m, frame, true, tick, metrics),
                Standing::Welcoming { .. } | Standing::Behind { .. } => m.held.push(frame),
            }
        }
        self.changes.extend(out.changes);
        if tick.is_multiple_of(self.send_every) {
            self.flush(world_id, engine, tick, metrics);
        }
    }

    /// Sends the coalesced delta (encoded once, the same bytes for every member), the
    /// welcomes, and the resyncs of members that caught up; drops those too far behind.
    fn flush<W: World<Change = C>>(&mut self, world_id: &str, engine: &Engine<W>, tick: u64, metrics: &Metrics) {
        // The whole world, built and encoded at most once per flush.
        let mut view: Option<W::View> = None;
        let mut resync: Option<Bytes> = None;
        let server_us = gaia_api::protocol::unix_us();
        let delta: ServerMsg<(), C> = ServerMsg::Delta { tick, server_us, changes: std::mem::take(&mut self.changes) };
        let delta = Bytes::from(encode_server(&delta));
        for (&id, m) in self.members.iter_mut() {
            match m.standing {
                Standing::Live => deliver(m, delta.clone(), false, tick, metrics),
                // The snapshot holds everything up to this tick, so no delta this time.
                Standing::Welcoming { you } => {
                    let snapshot = view.get_or_insert_with(|| engine.world().view());
                    let welcome: ServerMsg<&W::View, ()> =
                        ServerMsg::Welcome { world_id: world_id.to_string(), you, tick, snapshot };
                    m.standing = Standing::Live;
                    deliver(m, Bytes::from(encode_server(&welcome)), false, tick, metrics);
                    for frame in std::mem::take(&mut m.held) {
                        deliver(m, frame, true, tick, metrics);
                    }
                }
                Standing::Behind { since } => {
                    if m.out.is_closed() || tick - since > self.max_behind_ticks || m.held.len() > self.queue {
                        self.dropped.push(id);
                    } else if m.out.capacity() >= self.queue / 2 + m.held.len() {
                        let frame = resync
                            .get_or_insert_with(|| {
                                let snapshot = view.get_or_insert_with(|| engine.world().view());
                                let msg: ServerMsg<&W::View, ()> = ServerMsg::Resync { tick, snapshot };
                                Bytes::from(encode_server(&msg))
                            })
                            .clone();
                        m.standing = Standing::Live;
                        metrics.resyncs.inc();
                        deliver(m, frame, false, tick, metrics);
                        for frame in std::mem::take(&mut m.held) {
                            deliver(m, frame, true, tick, metrics);
                        }
                    }
                }
            }
        }
        for id in &self.dropped {
            if self.members.remove(id).is_some() {
                metrics.slow_dropped.inc();
            }
        }
    }
}

/// Queues `frame` for `m`. When its queue is full, marks it behind and, if the frame
/// `must_arrive` (an input result), holds it for after the resync; a delta or snapshot
/// is covered by the resync itself.
fn deliver(m: &mut Member, frame: Bytes, must_arrive: bool, tick: u64, metrics: &Metrics) {
    let len = frame.len() as u64;
    match m.out.try_send(frame) {
        Ok(()) => {
            metrics.frames_sent.inc();
            metrics.bytes_sent.inc_by(len);
        }
        Err(mpsc::error::TrySendError::Full(frame)) => {
            if !matches!(m.standing, Standing::Behind { .. }) {
                metrics.fell_behind.inc();
                m.standing = Standing::Behind { since: tick };
            }
            if must_arrive {
                m.held.push(frame);
            }
        }
        // The connection is gone; its Leave is on the way.
        Err(mpsc::error::TrySendError::Closed(_)) => {}
    }
}
