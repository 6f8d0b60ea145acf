//! The world runtime: one task per world, ticking it and fanning out what changed.
//!
//! [`Rooms`] finds or starts the task for a world id; connections talk to a world only
//! through its bounded command queue. Each tick the task hands the queued events to the
//! pure [`Town::tick`], encodes the delta **once** and gives every member the same bytes.
//! A member whose send queue is full is dropped (its connection closes with
//! `TOO_SLOW`), so a slow reader can neither grow memory nor stall the world.
//! A world with no members for `empty_grace` ends and gives its slot back.

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

use crate::metrics::Metrics;
use crate::town::{Event, MemberId, Town, TownConfig};

/// Commands queued per world before senders wait.
const WORLD_QUEUE: usize = 4096;

#[derive(Debug, Clone)]
pub struct RoomConfig {
    pub tick: Duration,
    /// Players one world holds.
    pub max_players: usize,
    /// Worlds this server hosts at once.
    pub max_worlds: usize,
    /// How long a world with nobody in it lives on before it ends.
    pub empty_grace: Duration,
    /// Frames queued per member before it counts as too slow.
    pub member_queue: usize,
    pub town: TownConfig,
}

impl Default for RoomConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(100),
            max_players: 30,
            max_worlds: 10,
            empty_grace: Duration::from_secs(5),
            member_queue: 64,
            town: TownConfig::default(),
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

enum Cmd {
    Join { member: MemberId, name: String, out: mpsc::Sender<Bytes>, reply: oneshot::Sender<Result<(), JoinError>> },
    Leave { member: MemberId },
    Input { member: MemberId, seq: u32, action: gaia_api::protocol::Action },
}

/// A member's way into its world.
#[derive(Clone)]
pub struct WorldHandle {
    member: MemberId,
    tx: mpsc::Sender<Cmd>,
}

impl WorldHandle {
    /// Queues an input for the next tick; waits while the world's queue is full.
    pub async fn input(&self, seq: u32, action: gaia_api::protocol::Action) -> bool {
        self.tx.send(Cmd::Input { member: self.member, seq, action }).await.is_ok()
    }

    pub async fn leave(&self) {
        let _ = self.tx.send(Cmd::Leave { member: self.member }).await;
    }
}

struct Room {
    tx: mpsc::Sender<Cmd>,
    /// Tells apart a world that ended from a new one of the same id.
    generation: u64,
}

/// The worlds this server hosts.
pub struct Rooms {
    config: RoomConfig,
    rooms: Mutex<HashMap<String, Room>>,
    next: AtomicU64,
    events: mpsc::UnboundedSender<WorldEvent>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Rooms {
    /// `events` receives each world's start and end, for the SDK.
    pub fn new(
        config: RoomConfig,
        events: mpsc::UnboundedSender<WorldEvent>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            config,
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
    /// member's frames (Welcome first) into `out`.
    pub async fn join(
        self: &Arc<Self>,
        world_id: &str,
        member: MemberId,
        name: String,
        out: mpsc::Sender<Bytes>,
    ) -> Result<WorldHandle, JoinError> {
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

    fn find_or_start(self: &Arc<Self>, world_id: &str) -> Result<mpsc::Sender<Cmd>, JoinError> {
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
        let seed = seed_of(world_id);
        let town = Town::new(self.config.town, seed);
        self.tasks.spawn(Arc::clone(self).run_world(world_id.to_string(), generation, town, rx));
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
        mut town: Town,
        mut rx: mpsc::Receiver<Cmd>,
    ) {
        let mut members: HashMap<MemberId, mpsc::Sender<Bytes>> = HashMap::new();
        let mut joining: HashMap<MemberId, mpsc::Sender<Bytes>> = HashMap::new();
        let mut pending: Vec<Event> = Vec::new();
        let mut ticker = tokio::time::interval(self.config.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut empty_since = tokio::time::Instant::now();
        tracing::debug!(world = %world_id, "world started");
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                cmd = rx.recv() => match cmd {
                    Some(Cmd::Join { member, name, out, reply }) => {
                        if members.len() + joining.len() >= self.config.max_players {
                            let _ = reply.send(Err(JoinError::WorldFull(self.config.max_players)));
                        } else if reply.send(Ok(())).is_ok() {
                            joining.insert(member, out);
                            pending.push(Event::Join { member, name });
                        }
                    }
                    Some(Cmd::Leave { member }) => {
                        members.remove(&member);
                        joining.remove(&member);
                        pending.push(Event::Leave { member });
                    }
                    Some(Cmd::Input { member, seq, action }) => pending.push(Event::Input { member, seq, action }),
                    None => break,
                },
                _ = ticker.tick() => {
                    let started = std::time::Instant::now();
                    let dropped = self.tick(&world_id, &mut town, std::mem::take(&mut pending), &mut members, &mut joining);
                    pending.extend(dropped.into_iter().map(|member| Event::Leave { member }));
                    self.metrics.tick_seconds.observe(started.elapsed().as_secs_f64());
                    if !members.is_empty() || !joining.is_empty() {
                        empty_since = tokio::time::Instant::now();
                    } else if empty_since.elapsed() >= self.config.empty_grace && self.end(&world_id, generation) {
                        break;
                    }
                }
            }
        }
        // Joins that raced with the end are told to retry (their reply is dropped).
        rx.close();
        while rx.recv().await.is_some() {}
        tracing::debug!(world = %world_id, tick = town.tick_count(), "world stopped");
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

    /// One tick: apply events, send results, welcomes and the shared delta. Returns the
    /// members dropped for being too slow.
    fn tick(
        &self,
        world_id: &str,
        town: &mut Town,
        events: Vec<Event>,
        members: &mut HashMap<MemberId, mpsc::Sender<Bytes>>,
        joining: &mut HashMap<MemberId, mpsc::Sender<Bytes>>,
    ) -> Vec<MemberId> {
        let out = town.tick(events);
        let mut slow = Vec::new();
        let mut send = |member: MemberId, out: &mpsc::Sender<Bytes>, frame: Bytes| {
            self.metrics.frames_sent.inc();
            self.metrics.bytes_sent.inc_by(frame.len() as u64);
            if out.try_send(frame).is_err() {
                slow.push(member);
            }
        };
        // Welcomes first, so an input sent right after Join finds its member.
        let mut fresh = Vec::with_capacity(out.joined.len());
        if !out.joined.is_empty() {
            let snapshot = town.snapshot();
            for (member, you) in out.joined {
                let Some(tx) = joining.remove(&member) else { continue };
                let welcome = ServerMsg::Welcome {
                    world_id: world_id.to_string(),
                    you,
                    tick: out.tick,
                    snapshot: snapshot.clone(),
                };
                send(member, &tx, encode_server(&welcome).into());
                members.insert(member, tx);
                fresh.push(member);
            }
        }
        for (member, seq, outcome) in out.results {
            self.metrics.count_input(&outcome);
            if let Some(tx) = members.get(&member) {
                send(member, tx, encode_server(&ServerMsg::InputResult { seq, tick: out.tick, outcome }).into());
            }
        }
        // Encoded once, shared by every member. The snapshot a joiner just got already
        // holds this tick, so it gets deltas from the next one.
        let delta: Bytes = encode_server(&ServerMsg::Delta { tick: out.tick, changes: out.changes }).into();
        for (member, tx) in members.iter() {
            if !fresh.contains(member) {
                send(*member, tx, delta.clone());
            }
        }
        for member in &slow {
            members.remove(member);
            self.metrics.slow_dropped.inc();
        }
        slow
    }
}

/// A world's RNG seed, from its id, so a world id always yields the same map.
fn seed_of(world_id: &str) -> u64 {
    // FNV-1a: stable across runs and platforms, unlike the std hasher.
    world_id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}
