#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns
//! Durable, movable worlds (issue 4) as a standalone game server shows them: real servers
//! on ephemeral ports checkpointing into a SQLite file of the test's own, real WebSocket
//! clients, and the checkpoint store opened by the test alongside to look at or write
//! what the servers share.
//!
//! - a world outlives its server, whether it is shut down or drained: the next server
//!   on the same file goes on from the last tick the clients saw, bots where they were;
//! - a token from before the world's last move is refused (`WORLD_UNAVAILABLE`), also
//!   when that move's checkpoint is one the world cannot restore (another schema): then
//!   the world starts afresh, after that checkpoint's tick so that the store takes it;
//! - a server whose checkpoint is fenced by a newer owner stops the world and tells its
//!   clients to allocate again;
//! - a corrupt checkpoint is counted and skipped: the world starts afresh;
//! - `/readyz` names a failing tier and its backlog while worlds keep ticking (a hot
//!   tier that refuses writes: a stand-in Redis answering as a read-only replica does);
//!   a store that cannot be reached at all fails the server's start.
//!
//! The cluster version (control plane, real Redis and Postgres, kill -9, live migration)
//! is `cli/tests/durable.rs`.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gaia_api::activity::WorldMessage;
use gaia_api::protocol::{InputOutcome, close};
use gaia_api::token::JoinClaims;
use gaia_api::town::{Action, Change, ClientMsg, Entity, EntityKind, ServerMsg, Snapshot};
use gaia_checkpoint::{Checkpoint, SqlStore, Store, Written};
use gaia_gameserver::Config;
use gaia_gameserver::engine::Engine;
use gaia_gameserver::town::{Town, TownConfig};
use gaia_gameserver::world::{World, seed_of};
use gaia_testkit::files::TempFile;
use gaia_testkit::tokens;
use gaia_testkit::ws::{self, Closed, Received, Ws, send};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::Server;

/// The next message of the reference world, or the close frame as an Err.
async fn recv(ws: &mut Ws) -> Received<Snapshot, Change> {
    ws::recv(ws).await
}

const WORLD: &str = "w-durable";
/// Short, so a test sees a few checkpoints a second.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------------------
// The shared checkpoint file.

/// A SQLite file of the test's own, removed (with its `-wal` and `-shm`) on drop.
struct Db {
    file: TempFile,
}

impl Db {
    fn new() -> Self {
        Self { file: TempFile::new("db") }
    }

    fn url(&self) -> String {
        self.file.sqlite_url()
    }

    /// The store the servers write, opened alongside them.
    async fn store(&self) -> SqlStore {
        SqlStore::connect(&self.url()).await.unwrap()
    }

    /// Writes `checkpoint` as if another server had; what the store answered.
    async fn write(&self, checkpoint: Checkpoint) -> Written {
        self.store().await.write(&[Arc::new(checkpoint)]).await.unwrap()[0]
    }

    /// The checkpoint stored for `world`, checked.
    async fn stored(&self, world: &str) -> Option<Checkpoint> {
        let bytes = self.store().await.read(world).await.unwrap()?;
        Some(Checkpoint::decode(world, bytes).unwrap())
    }
}

/// A standalone server's config checkpointing into `db` every [`CHECKPOINT_EVERY`].
fn durable(db: &Db) -> Config {
    Config { database_url: Some(db.url()), checkpoint_every: CHECKPOINT_EVERY, ..Default::default() }
}

// ---------------------------------------------------------------------------------------
// A server and its clients.

impl Server {
    /// Joins `world` with a token of `epoch` (what the allocator would sign for `player`
    /// at that epoch): the client after its Welcome, or the close.
    async fn join(&self, world: &str, player: &str, epoch: u64) -> Result<Client, Closed> {
        let mut ws = ws::connect(&self.url).await;
        let token = tokens::key().sign(&JoinClaims { epoch, ..tokens::join_claims(&self.name, world, player) });
        let welcome = ws::join::<Snapshot, Change>(&mut ws, token).await?;
        assert_eq!(welcome.world_id, world);
        let mut map = welcome.snapshot;
        let entities = std::mem::take(&mut map.entities).into_iter().map(|e| (e.id, e)).collect();
        let view = View { tick: welcome.tick, map, entities };
        Ok(Client { ws, you: welcome.you, seq: 0, view, said: welcome.messages })
    }
}

/// The world as a client has it: the Welcome's snapshot with every delta applied.
#[derive(Debug)]
struct View {
    tick: u64,
    /// The map (its walls); entities are kept apart.
    map: Snapshot,
    entities: BTreeMap<u32, Entity>,
}

impl View {
    fn apply(&mut self, msg: &ServerMsg) {
        match msg {
            ServerMsg::Delta { tick, changes, .. } => {
                self.tick = *tick;
                for change in changes {
                    match change {
                        Change::Joined(e) => {
                            self.entities.insert(e.id, e.clone());
                        }
                        Change::Moved { id, x, y } => {
                            let e = self.entities.get_mut(id).unwrap();
                            (e.x, e.y) = (*x, *y);
                        }
                        Change::Left { id } => {
                            self.entities.remove(id);
                        }
                        Change::Said { .. } | Change::Greeted { .. } | Change::Parted { .. } => {}
                    }
                }
            }
            ServerMsg::Resync { tick, snapshot, .. } => {
                self.tick = *tick;
                self.entities = snapshot.entities.iter().map(|e| (e.id, e.clone())).collect();
            }
            _ => {}
        }
    }
}

/// The server's bots in `entities`, by id.
fn bots<'a>(entities: impl IntoIterator<Item = &'a Entity>) -> Vec<Entity> {
    let mut bots: Vec<Entity> = entities.into_iter().filter(|e| e.kind == EntityKind::Bot).cloned().collect();
    bots.sort_by_key(|e| e.id);
    bots
}

#[derive(Debug)]
struct Client {
    ws: Ws,
    /// The entity it controls.
    you: u32,
    seq: u32,
    view: View,
    /// The lines said that its Welcome carried.
    said: Vec<WorldMessage>,
}

impl Client {
    /// The next message, applied to the view.
    async fn next(&mut self) -> Result<ServerMsg, (u16, String)> {
        let msg = recv(&mut self.ws).await?;
        self.view.apply(&msg);
        Ok(msg)
    }

    async fn input(&mut self, action: Action) {
        self.seq += 1;
        send(&mut self.ws, &ClientMsg::Input { seq: self.seq, action }).await;
    }

    /// Takes `steps` legal steps, each seen in a delta before the next.
    async fn walk(&mut self, steps: usize) {
        for _ in 0..steps {
            let me = &self.view.entities[&self.you];
            let (dx, dy) = self.view.map.open_steps(me.x.into(), me.y.into())[0];
            self.input(Action::Move { dx, dy }).await;
            let seq = self.seq;
            let applied = loop {
                if let ServerMsg::InputResult { seq: s, tick, outcome } = self.next().await.unwrap()
                    && s == seq
                {
                    assert_eq!(outcome, InputOutcome::Ok);
                    break tick;
                }
            };
            while self.view.tick < applied {
                self.next().await.unwrap();
            }
        }
    }

    /// Says `text` and reads until the delta that shows it.
    async fn say(&mut self, text: &str) {
        self.input(Action::Say { text: text.into() }).await;
        let me = self.you;
        loop {
            if let ServerMsg::Delta { changes, .. } = self.next().await.unwrap()
                && changes.iter().any(|c| matches!(c, Change::Said { id, text: t } if *id == me && t == text))
            {
                return;
            }
        }
    }

    /// Reads until `n` more deltas arrived.
    async fn deltas(&mut self, n: usize) {
        let mut seen = 0;
        while seen < n {
            match self.next().await {
                Ok(ServerMsg::Delta { .. }) => seen += 1,
                Ok(_) => {}
                Err(close) => panic!("closed with {close:?} while waiting for deltas"),
            }
        }
    }

    /// Reads (and applies) everything up to the close; its code and reason.
    async fn closed(&mut self) -> (u16, String) {
        loop {
            if let Err(close) = self.next().await {
                return close;
            }
        }
    }
}

/// Polls `check` every 20 ms until it returns `Some`, for up to `limit`.
async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, limit: Duration, mut check: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Restore after a restart, or a drain.

/// Plays in [`WORLD`] on a server, stops it with `stop`, and joins the world on a second
/// server on the same file: it goes on from the last tick the first server's client saw,
/// its bots exactly where that tick had them and then moved on by the world's own rules.
async fn world_survives(stop: impl FnOnce(&Server)) {
    let db = Db::new();
    let a = Server::start("gs-a", durable(&db)).await;
    let mut alice = a.join(WORLD, "alice", 1).await.unwrap();
    alice.walk(3).await;
    alice.deltas(5).await;
    stop(&a);
    // The last tick runs and is sent before the goodbye.
    assert_eq!(alice.closed().await.0, close::GOING_AWAY);
    a.exited().await;
    let last_seen = alice.view.tick;

    // What the first server left: its last tick, exactly as its client saw it (players
    // are not kept: they come back by joining).
    let saved = db.stored(WORLD).await.expect("no checkpoint written");
    assert_eq!((saved.epoch(), saved.tick()), (1, last_seen), "the checkpoint is not the last tick sent");
    let town = Town::restore(saved.state()).unwrap();
    assert!(!bots(alice.view.entities.values()).is_empty());
    assert_eq!(bots(&town.view().entities), bots(alice.view.entities.values()));

    // The world moved: a new server, the next epoch.
    let b = Server::start("gs-b", durable(&db)).await;
    let alice = b.join(WORLD, "alice", 2).await.unwrap();
    assert!(alice.view.tick > last_seen, "welcomed at tick {}, last seen {last_seen}", alice.view.tick);
    // The bots walk on their own: replaying the checkpoint to the Welcome's tick must
    // give the Welcome's bots.
    let mut engine = Engine::new(town, saved.tick());
    while engine.tick() < alice.view.tick {
        engine.step(Vec::new());
    }
    assert_eq!(bots(alice.view.entities.values()), bots(&engine.world().view().entities));
    let players: Vec<&Entity> = alice.view.entities.values().filter(|e| e.kind == EntityKind::Player).collect();
    assert_eq!(players.len(), 1, "only the player who joined again: {players:?}");
    assert_eq!(b.metric("gaia_gameserver_worlds_restored_total").await, 1.0);
    b.stop().await;
}

/// A client joining gets the conversation so far with its Welcome: from the running world,
/// and after the world's server restarted, from the activity log.
#[tokio::test]
async fn a_welcome_carries_the_last_lines_said_also_after_a_restart() {
    let db = Db::new();
    // Room for every line the bots say meanwhile, so the players' lines stay in view.
    let config = || Config { world_recent_messages: 500, ..durable(&db) };
    let a = Server::start("gs-a", config()).await;
    let mut alice = a.join(WORLD, "alice", 1).await.unwrap();
    alice.say("is anyone here?").await;
    let mut bob = a.join(WORLD, "bob", 1).await.unwrap();
    bob.say("hello alice").await;
    let lines = |said: &[WorldMessage]| -> Vec<(String, String)> {
        said.iter()
            .filter(|m| m.author == "alice" || m.author == "bob")
            .map(|m| (m.author.clone(), m.text.clone()))
            .collect()
    };
    assert_eq!(lines(&bob.said), [("alice".into(), "is anyone here?".into())]);
    let carol = a.join(WORLD, "carol", 1).await.unwrap();
    let so_far = [("alice".to_string(), "is anyone here?".to_string()), ("bob".into(), "hello alice".into())];
    assert_eq!(lines(&carol.said), so_far);
    assert!(carol.said.windows(2).all(|w| (w[0].epoch, w[0].tick, w[0].seq) < (w[1].epoch, w[1].tick, w[1].seq)));
    drop((alice, bob, carol));
    a.stop().await;

    // The world moves to another server: its Welcome has the lines from the log.
    let b = Server::start("gs-b", config()).await;
    let dan = b.join(WORLD, "dan", 2).await.unwrap();
    assert_eq!(lines(&dan.said), so_far);
    assert!(dan.said.iter().all(|m| m.epoch == 1), "{:?}", dan.said);
    b.stop().await;

    // None kept: none sent.
    let c = Server::start("gs-c", Config { world_recent_messages: 0, ..durable(&db) }).await;
    assert!(c.join(WORLD, "eve", 3).await.unwrap().said.is_empty());
    c.stop().await;
}

#[tokio::test]
async fn a_world_goes_on_after_its_server_restarts() {
    world_survives(|s| s.shutdown.cancel()).await;
}

/// Without a control plane there is nowhere to move to: a drain saves every world and
/// lets its clients go, and the server exits by itself.
#[tokio::test]
async fn a_drained_standalone_server_saves_its_worlds_and_exits() {
    world_survives(|s| s.drain.cancel()).await;
}

// ---------------------------------------------------------------------------------------
// Epochs and fencing.

/// A checkpoint of the reference world as a server of it would have made it, but of
/// schema `version`.
fn town_checkpoint(world: &str, epoch: u64, tick: u64, version: u32) -> Checkpoint {
    let town =
        Town::new(TownConfig { bots: Config::default().bots_per_world, ..TownConfig::default() }, seed_of(world))
            .in_world(world);
    Checkpoint::new(world, epoch, tick, version, &town.save())
}

#[tokio::test]
async fn a_token_from_before_the_worlds_last_move_is_refused() {
    let db = Db::new();
    assert_eq!(db.write(town_checkpoint(WORLD, 5, 400, Town::SCHEMA_VERSION)).await, Written::Ok);
    let s = Server::start("gs-a", durable(&db)).await;

    let stale = |(code, reason): (u16, String)| {
        assert_eq!(code, close::WORLD_UNAVAILABLE, "{reason}");
        assert!(reason.contains("token of epoch 3, world is at epoch 5"), "{reason}");
    };
    // Refused by the starting world (the join waited for its load)...
    stale(s.join(WORLD, "old", 3).await.unwrap_err());
    let at_5 = s.join(WORLD, "p5", 5).await.unwrap();
    assert!(at_5.view.tick > 400, "not restored: welcomed at tick {}", at_5.view.tick);
    s.join(WORLD, "p6", 6).await.unwrap();
    // ...and by the running one.
    stale(s.join(WORLD, "old", 3).await.unwrap_err());
    s.stop().await;
}

/// A checkpoint of another schema (a newer server's, say) is skipped, but it still says
/// which epoch and tick the world is at: an older token is refused, and the world that
/// starts afresh goes on after that tick, so the store takes what it saves.
#[tokio::test]
async fn a_checkpoint_the_world_cannot_restore_still_holds_its_epoch_and_tick() {
    let db = Db::new();
    assert_eq!(db.write(town_checkpoint(WORLD, 5, 400, Town::SCHEMA_VERSION + 1)).await, Written::Ok);
    let s = Server::start("gs-a", durable(&db)).await;
    let (code, reason) = s.join(WORLD, "old", 3).await.unwrap_err();
    assert_eq!(code, close::WORLD_UNAVAILABLE, "{reason}");
    let alice = s.join(WORLD, "alice", 5).await.unwrap();
    assert!(alice.view.tick > 400, "welcomed at tick {}", alice.view.tick);
    assert_eq!(s.metric("gaia_gameserver_worlds_restored_total").await, 0.0);
    let saved = eventually("the fresh world's checkpoint", Duration::from_secs(5), || async {
        let bytes = db.store().await.read(WORLD).await.unwrap()?;
        let c = Checkpoint::decode(WORLD, bytes).unwrap();
        (c.header().schema_version == Town::SCHEMA_VERSION).then_some(c)
    })
    .await;
    assert!(saved.tick() > 400 && saved.epoch() == 5, "{:?}", saved.header());
    s.stop().await;
}

#[tokio::test]
async fn a_fenced_world_stops_and_its_clients_allocate_again() {
    let db = Db::new();
    let s = Server::start("gs-a", durable(&db)).await;
    let mut alice = s.join(WORLD, "alice", 1).await.unwrap();
    let ours = eventually("first checkpoint", Duration::from_secs(5), || db.stored(WORLD)).await;

    // The world moved on (epoch 9) while this server still runs it.
    let theirs = Checkpoint::new(WORLD, 9, ours.tick() + 1, Town::SCHEMA_VERSION, b"the new owner's world");
    assert_eq!(db.write(theirs.clone()).await, Written::Ok);
    let moved = Instant::now();
    // Something to save, so the next checkpoint is written (and refused).
    alice.input(Action::Say { text: "still here?".into() }).await;
    let (code, reason) = alice.closed().await;
    // A couple of checkpoint intervals; the bound leaves room for a loaded machine.
    assert!(moved.elapsed() < Duration::from_secs(3), "stopped {:?} after the move", moved.elapsed());
    assert_eq!(code, close::WORLD_UNAVAILABLE, "{reason}");
    assert!(reason.contains("moved"), "{reason}");
    assert_eq!(s.metric("gaia_gameserver_worlds_fenced_total").await, 1.0);
    assert_eq!(s.metric("gaia_gameserver_worlds").await, 0.0);
    // The new owner's checkpoint stands.
    assert_eq!(db.stored(WORLD).await.unwrap(), theirs);
    s.stop().await;
    assert_eq!(db.stored(WORLD).await.unwrap(), theirs, "the old owner overwrote the new one on shutdown");
}

// ---------------------------------------------------------------------------------------
// Corruption and failing stores.

#[tokio::test]
async fn a_corrupt_checkpoint_is_skipped_and_the_world_starts_afresh() {
    let db = Db::new();
    // Stored as if at tick 5000: a world restored from it would be welcomed after that.
    let garbage = Checkpoint::raw(WORLD, 1, 5000, Bytes::from_static(b"GCK1 this is not a checkpoint"));
    assert_eq!(db.write(garbage).await, Written::Ok);
    let s = Server::start("gs-a", durable(&db)).await;
    let alice = s.join(WORLD, "alice", 1).await.unwrap();
    assert!(alice.view.tick < 100, "not a fresh world: welcomed at tick {}", alice.view.tick);
    assert_eq!(s.metric("gaia_checkpoint_corrupt_total{tier=\"sqlite\"}").await, 1.0);
    assert_eq!(s.metric("gaia_gameserver_worlds_restored_total").await, 0.0);
    s.stop().await;
}

#[tokio::test]
async fn readyz_names_a_failing_tier_and_its_backlog_while_worlds_tick_on() {
    let db = Db::new();
    let redis = read_only_redis().await;
    let config = Config { redis_url: Some(redis), durable_every: CHECKPOINT_EVERY, ..durable(&db) };
    let s = Server::start("gs-a", config).await;
    let (status, body) = s.get("/readyz").await;
    assert_eq!(status, 200, "{body}");

    let mut alice = s.join(WORLD, "alice", 1).await.unwrap();
    let body = eventually("readyz 503", Duration::from_secs(5), || async {
        let (status, body) = s.get("/readyz").await;
        (status == 503).then_some(body)
    })
    .await;
    let redis_line = body.lines().find(|l| l.starts_with("checkpoint redis:")).unwrap_or_else(|| panic!("{body}"));
    assert!(redis_line.starts_with("checkpoint redis: backlog 1 worlds, failing for "), "{body}");
    assert!(redis_line.contains("read only replica"), "{body}");
    let sqlite_line = body.lines().find(|l| l.starts_with("checkpoint sqlite:")).unwrap_or_else(|| panic!("{body}"));
    assert!(!sqlite_line.contains("failing"), "{body}");

    // The world does not wait for its checkpoints.
    let before = alice.view.tick;
    alice.deltas(5).await;
    assert!(alice.view.tick >= before + 5 * 2, "ticks {before} -> {}", alice.view.tick);
    // ...and the durable tier has them.
    eventually("durable checkpoint", Duration::from_secs(5), || async {
        db.stored(WORLD).await.filter(|c| c.tick() > before)
    })
    .await;
    s.stop().await;
}

/// A server's stores are opened when it starts: an unreachable one is a start error.
#[tokio::test]
async fn an_unreachable_store_fails_the_start() {
    let port = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
    let url = format!("redis://127.0.0.1:{port}");
    let s = Server::start("gs-a", Config { redis_url: Some(url.clone()), ..Default::default() }).await;
    let err = tokio::time::timeout(Duration::from_secs(10), s.done).await.unwrap().unwrap().unwrap_err();
    assert!(err.to_string().starts_with(&format!("checkpoint store {url}: ")), "{err}");
    assert_eq!(err.metric_label(), "store");
}

/// A Redis that answers as a read-only replica: reads find nothing, writes are refused.
/// Returns its URL.
async fn read_only_redis() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(replica(socket));
        }
    });
    url
}

async fn replica(mut socket: TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        while let Some((name, used)) = command(&buf) {
            buf.drain(..used);
            let answer: &[u8] = match name.to_ascii_uppercase().as_slice() {
                b"HGET" => b"$-1\r\n",
                b"PING" => b"+PONG\r\n",
                b"CLIENT" => b"+OK\r\n",
                _ => b"-READONLY You can't write against a read only replica.\r\n",
            };
            if socket.write_all(answer).await.is_err() {
                return;
            }
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The name of the first whole RESP command in `buf` (an array of bulk strings) and its
/// length in bytes; `None` until it has all arrived.
fn command(buf: &[u8]) -> Option<(Vec<u8>, usize)> {
    fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let end = at + buf.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
        Some((&buf[at..end], end + 2))
    }
    let number = |s: &[u8]| -> usize { std::str::from_utf8(s).unwrap().parse().unwrap() };
    let (head, mut at) = line(buf, 0)?;
    let args = number(head.strip_prefix(b"*").expect("RESP array"));
    let mut name = None;
    for _ in 0..args {
        let (len, start) = line(buf, at)?;
        let len = number(len.strip_prefix(b"$").expect("RESP bulk string"));
        let arg = buf.get(start..start + len)?;
        name.get_or_insert_with(|| arg.to_vec());
        at = start + len + 2;
        if buf.len() < at {
            return None;
        }
    }
    Some((name.unwrap_or_default(), at))
}
