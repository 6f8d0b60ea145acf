#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns
//! Operations through the world runtime, on tokio's paused clock: a world asks questions
//! (chat operations, and HTTP POSTs, which may not be repeated), a scripted provider
//! answers after a latency, and the world stops while they are in flight, by a shutdown
//! or by a drain that moves it, and starts again on another "server" (new rooms and a new
//! runner over the same checkpoint store). The chat questions are asked again and
//! answered; the POSTs are completed as interrupted; nothing is answered twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bincode::{Decode, Encode};
use bytes::Bytes;
use gaia_api::protocol::Encoding;
use gaia_api::town::Action;
use gaia_checkpoint::{Checkpoint, Store, StoreError, Tier, Tiers, Written};
use gaia_gameserver::metrics::Metrics;
use gaia_gameserver::room::{Destination, Migration, Mover, Outbound, Persistence, RoomConfig, Rooms, WorldHandle};
use gaia_gameserver::world::{MemberId, NewWorld, RestoreError, World};
use gaia_ops::{
    ChatMessage, ChatRequest, HttpRequest, Kind, LaneConfig, OpError, OpId, Operation, Outcome, Provider,
    ProviderError, Request, Response, Role, Runner,
};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Asks a question for each `Say`: `post:` ones as an HTTP POST, the others as a chat.
#[derive(Debug, Default, Encode, Decode)]
struct Oracle {
    next: OpId,
    asked: Vec<Operation>,
    /// In flight, by id: part of the state, so a checkpoint holds them.
    in_flight: BTreeMap<OpId, Operation>,
    /// Every outcome applied, in order.
    answers: Vec<(OpId, Result<String, String>)>,
}

impl World for Oracle {
    type Action = Action;
    type Change = String;
    type View = usize;

    fn join(&mut self, _: MemberId, _: &str, _: &mut Vec<String>) -> u32 {
        1
    }

    fn leave(&mut self, _: MemberId, _: &mut Vec<String>) {}

    fn apply(&mut self, _: MemberId, action: Action, _: &mut Vec<String>) -> Result<(), String> {
        let Action::Say { text } = action else { return Err("say something".into()) };
        self.next += 1;
        let request = match text.strip_prefix("post:") {
            Some(body) => Request::Http(HttpRequest {
                method: "POST".into(),
                url: "http://example.invalid/".into(),
                headers: vec![],
                body: body.as_bytes().to_vec(),
            }),
            None => Request::Chat(ChatRequest {
                messages: vec![ChatMessage { role: Role::User, content: text }],
                max_tokens: None,
                temperature: None,
            }),
        };
        let op = Operation { id: self.next, request, timeout_ms: 30_000 };
        self.in_flight.insert(op.id, op.clone());
        self.asked.push(op);
        Ok(())
    }

    fn tick(&mut self, _: u64, _: &mut Vec<String>) {}

    fn view(&self) -> usize {
        self.answers.len()
    }

    fn save(&self) -> Vec<u8> {
        bincode::encode_to_vec(self, bincode::config::standard()).unwrap()
    }

    fn restore(bytes: &[u8]) -> Result<Self, RestoreError> {
        let (oracle, _) =
            bincode::decode_from_slice(bytes, bincode::config::standard()).map_err(|e| RestoreError(e.to_string()))?;
        Ok(oracle)
    }

    fn take_operations(&mut self) -> Vec<Operation> {
        std::mem::take(&mut self.asked)
    }

    fn complete(&mut self, id: OpId, outcome: Outcome, delta: &mut Vec<String>) {
        self.in_flight.remove(&id);
        let answer = match outcome {
            Ok(Response::Chat { content }) => Ok(content),
            Ok(other) => Ok(format!("{other:?}")),
            Err(e) => Err(e.to_string()),
        };
        delta.push(format!("{id}: {answer:?}"));
        self.answers.push((id, answer));
    }

    fn in_flight(&self) -> Vec<Operation> {
        self.in_flight.values().cloned().collect()
    }
}

/// Answers every request after `latency`, counting calls by kind.
struct Slow {
    latency: Duration,
    chats: AtomicUsize,
    posts: AtomicUsize,
}

#[async_trait::async_trait]
impl Provider for Slow {
    async fn run(&self, request: &Request) -> Result<Response, ProviderError> {
        match request {
            Request::Chat(c) => {
                self.chats.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(self.latency).await;
                Ok(Response::Chat { content: format!("answer to {}", c.messages[0].content) })
            }
            _ => {
                self.posts.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(self.latency).await;
                Ok(Response::Http { status: 200, body: vec![] })
            }
        }
    }
}

/// A checkpoint store in memory: the newest checkpoint per world.
#[derive(Default)]
struct Memory(Mutex<HashMap<String, Bytes>>);

#[async_trait::async_trait]
impl Store for Memory {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn write(&self, batch: &[Arc<Checkpoint>]) -> Result<Vec<Written>, StoreError> {
        let mut stored = self.0.lock();
        for c in batch {
            stored.insert(c.world_id().to_string(), c.bytes().clone());
        }
        Ok(vec![Written::Ok; batch.len()])
    }

    async fn read(&self, world_id: &str) -> Result<Option<Bytes>, StoreError> {
        Ok(self.0.lock().get(world_id).cloned())
    }

    async fn delete(&self, world_id: &str) -> Result<(), StoreError> {
        self.0.lock().remove(world_id);
        Ok(())
    }
}

impl Memory {
    fn oracle(&self, world_id: &str) -> Oracle {
        let bytes = self.0.lock().get(world_id).cloned().unwrap();
        Oracle::restore(Checkpoint::decode(world_id, bytes).unwrap().state()).unwrap()
    }
}

/// Always finds the world a new server.
struct Anywhere;

#[async_trait::async_trait]
impl Mover for Anywhere {
    async fn move_world(&self, _: &str) -> Result<Destination, String> {
        Ok(Destination { server: "gs-2".into(), address: "ws://127.0.0.1:9/ws".into(), epoch: 2 })
    }
}

/// One "server": rooms and a runner over `store`.
struct Server {
    rooms: Arc<Rooms<Oracle>>,
    provider: Arc<Slow>,
    shutdown: CancellationToken,
}

fn server(store: &Arc<Memory>, latency: Duration) -> Server {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let shutdown = CancellationToken::new();
    let tier = Tier { store: Arc::clone(store) as Arc<dyn Store>, every: Duration::from_millis(100) };
    let tiers = Tiers::start(vec![tier], Arc::new(gaia_checkpoint::Metrics::new(&mut registry)), shutdown.clone());
    let persistence = Persistence { tiers, every_ticks: 2, load_timeout: Duration::from_secs(5), log: None };
    let migration = Migration {
        mover: Arc::new(Anywhere),
        key: gaia_api::token::TokenKey::new("k"),
        token_ttl: Duration::from_secs(30),
        timeout: Duration::from_secs(5),
    };
    let provider = Arc::new(Slow { latency, chats: AtomicUsize::new(0), posts: AtomicUsize::new(0) });
    let lane = LaneConfig { jitter: false, ..LaneConfig::default() };
    let runner = Runner::builder()
        .lane(Kind::Chat, Arc::clone(&provider) as Arc<dyn Provider>, lane.clone())
        .lane(Kind::Http, Arc::clone(&provider) as Arc<dyn Provider>, lane)
        .build(Arc::new(gaia_ops::Metrics::new(&mut registry)));
    let new_world: NewWorld<Oracle> = Arc::new(|_| Oracle::default());
    let (events, _) = mpsc::unbounded_channel();
    let config = RoomConfig { empty_grace: Duration::from_secs(600), ..RoomConfig::default() };
    let rooms = Rooms::new(
        config,
        new_world,
        events,
        metrics,
        shutdown.clone(),
        Some(persistence),
        Some(migration),
        Arc::new(runner),
    );
    Server { rooms, provider, shutdown }
}

impl Server {
    /// Joins `w` and says each of `questions`, as one member: its frames, and its handle
    /// (the member stays while it is held).
    async fn ask(&self, member: MemberId, questions: &[&str]) -> (mpsc::Receiver<Outbound>, WorldHandle<Action>) {
        let (out, frames) = mpsc::channel(1024);
        let world = self.rooms.join("w", 2, member, format!("p{member}"), Encoding::Json, out).await.unwrap();
        for (seq, q) in questions.iter().enumerate() {
            assert!(world.input(seq as u32 + 1, Action::Say { text: q.to_string() }).await);
        }
        (frames, world)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.rooms.closed().await;
    }
}

fn ids(answers: &[(OpId, Result<String, String>)]) -> Vec<OpId> {
    let mut ids: Vec<OpId> = answers.iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    ids
}

/// A shutdown with two chats and a POST in flight: the next server asks the chats again
/// and answers them, and completes the POST as interrupted, each once; a third start
/// asks nothing again.
#[tokio::test(start_paused = true)]
async fn operations_in_flight_survive_a_restart_and_are_applied_once() {
    let store = Arc::new(Memory::default());
    let first = server(&store, Duration::from_secs(10));
    let _member = first.ask(1, &["how far is the mill?", "post:order bread", "who bakes?"]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!((first.provider.chats.load(Ordering::SeqCst), first.provider.posts.load(Ordering::SeqCst)), (2, 1));
    first.stop().await;
    let saved = store.oracle("w");
    assert_eq!(saved.in_flight.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);
    assert!(saved.answers.is_empty());

    let second = server(&store, Duration::from_millis(500));
    let _member = second.ask(2, &[]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(second.provider.chats.load(Ordering::SeqCst), 2, "the chats were asked again");
    assert_eq!(second.provider.posts.load(Ordering::SeqCst), 0, "the POST was not sent again");
    second.stop().await;
    let after = store.oracle("w");
    assert!(after.in_flight.is_empty(), "{:?}", after.in_flight);
    assert_eq!(ids(&after.answers), [1, 2, 3]);
    let by_id: BTreeMap<OpId, Result<String, String>> = after.answers.into_iter().collect();
    assert_eq!(by_id[&1], Ok("answer to how far is the mill?".into()));
    assert_eq!(by_id[&2], Err(OpError::Interrupted.to_string()));
    assert_eq!(by_id[&3], Ok("answer to who bakes?".into()));

    let third = server(&store, Duration::from_millis(500));
    let _member = third.ask(3, &[]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(third.provider.chats.load(Ordering::SeqCst), 0);
    third.stop().await;
    assert_eq!(ids(&store.oracle("w").answers), [1, 2, 3]);
}

/// A drain moves the world with a chat in flight; the old server's answer (which comes
/// after the move) is not applied anywhere, the new server's is, once.
#[tokio::test(start_paused = true)]
async fn an_operation_in_flight_moves_with_its_world() {
    let store = Arc::new(Memory::default());
    let first = server(&store, Duration::from_secs(3));
    let (mut frames, _member) = first.ask(1, &["what news?"]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    first.rooms.drain();
    // The member is sent Migrate, and let go.
    let mut migrated = false;
    while let Some(frame) = frames.recv().await {
        if let Outbound::Frame(bytes) = frame {
            migrated |= std::str::from_utf8(&bytes).unwrap().contains(r#""type":"migrate""#);
        }
    }
    assert!(migrated);
    first.rooms.closed().await;
    assert_eq!(store.oracle("w").in_flight.len(), 1);

    let second = server(&store, Duration::from_secs(1));
    let _member = second.ask(2, &[]).await;
    // Past both servers' answers.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(first.provider.chats.load(Ordering::SeqCst), 1);
    assert_eq!(second.provider.chats.load(Ordering::SeqCst), 1);
    second.stop().await;
    first.shutdown.cancel();
    let after = store.oracle("w");
    assert_eq!(after.answers, [(1, Ok("answer to what news?".to_string()))]);
    assert!(after.in_flight.is_empty());
}

/// A provider that never answers: the world keeps ticking (its inputs answered at the next
/// tick as ever), and the operation ends as timed out, a result the world applies.
#[tokio::test(start_paused = true)]
async fn a_provider_that_never_answers_stalls_nothing() {
    let store = Arc::new(Memory::default());
    let hung = server(&store, Duration::from_secs(24 * 3600));
    let (mut frames, world) = hung.ask(1, &["anyone there?"]).await;
    let started = tokio::time::Instant::now();
    // While the question hangs, every input is answered within a tick or two.
    for seq in 2..=20u32 {
        assert!(world.input(seq, Action::Move { dx: 1, dy: 0 }).await);
        let answered = async {
            while let Some(Outbound::Frame(bytes)) = frames.recv().await {
                let text = String::from_utf8(bytes.to_vec()).unwrap();
                if text.contains(r#""type":"inputResult""#) && text.contains(&format!(r#""seq":{seq},"#)) {
                    return;
                }
            }
        };
        tokio::time::timeout(Duration::from_millis(150), answered).await.expect("the tick stalled");
    }
    // The question's timeout (30 s) passes: its outcome is an error, applied once.
    tokio::time::sleep(Duration::from_secs(31).saturating_sub(started.elapsed())).await;
    hung.stop().await;
    let after = store.oracle("w");
    assert_eq!(after.answers, [(1, Err(OpError::TimedOut { after_ms: 30_000 }.to_string()))]);
    assert!(after.in_flight.is_empty());
}
