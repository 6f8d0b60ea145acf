#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns
//! The game server's limits, seen from real WebSocket clients of a standalone server on an
//! ephemeral port: a reader that stalls is resynced with a snapshot once it reads again, a
//! drain answers the inputs already sent before it says `GOING_AWAY`, and a world whose
//! ticks are slow does not slow the others. Each test also checks what `/metrics` counted.
//!
//! One connection's limits (floods, silent clients, bad frames) are tested in-process on
//! the paused clock, in `conn.rs`. A reader that never reads (bounded memory, `TOO_SLOW`)
//! is in `slow_reader.rs`: it measures the process's memory, which other tests running
//! alongside would disturb.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bincode::{Decode, Encode};
use futures_util::StreamExt;
use gaia_api::protocol::{ClientMsg, InputOutcome, ServerMsg, close, decode_server};
use gaia_api::town::{Action, Change, Snapshot};
use gaia_gameserver::Config;
use gaia_gameserver::world::{MemberId, NewWorld, RestoreError, World};
use gaia_testkit::tokens;
use gaia_testkit::ws::{self, Received, Ws, recv, send};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, connect_async};
use tokio_util::sync::CancellationToken;

use common::{Server, metric};

const NAME: &str = "gs-limits";

// ---------------------------------------------------------------------------------------
// A server and its clients.

impl Server {
    /// The reference world, without bots.
    async fn town(config: Config) -> Self {
        Self::quiet(NAME, config).await
    }

    async fn probe(config: Config, new_world: NewWorld<Probe>) -> Self {
        Self::with_world(NAME, Config { bots_per_world: 0, ..config }, new_world).await
    }
}

fn token(world: &str, player: &str) -> String {
    tokens::join(NAME, world, player)
}

/// Joins `world` on `ws`; returns the socket, `Welcome::you`, `Welcome::tick` and the view.
async fn join_with<V, C>(mut ws: Ws, world: &str, player: &str) -> (Ws, u32, u64, V)
where
    V: Decode<()> + std::fmt::Debug,
    C: Decode<()> + std::fmt::Debug,
{
    let welcome = ws::join::<V, C>(&mut ws, token(world, player)).await.unwrap();
    assert_eq!(welcome.world_id, world);
    (ws, welcome.you, welcome.tick, welcome.snapshot)
}

/// Connects and joins `world`, as [`join_with`] does.
async fn join<V, C>(url: &str, world: &str, player: &str) -> (Ws, u32, u64, V)
where
    V: Decode<()> + std::fmt::Debug,
    C: Decode<()> + std::fmt::Debug,
{
    join_with::<V, C>(ws::connect(url).await, world, player).await
}

async fn join_town(url: &str, world: &str, player: &str) -> (Ws, u32, u64, Snapshot) {
    join::<Snapshot, Change>(url, world, player).await
}

fn say(seq: u32, text: &str) -> ClientMsg<Action> {
    ClientMsg::Input { seq, action: Action::Say { text: text.into() } }
}

/// Reads town frames until the result of input `seq`; also returns the ticks of the deltas
/// seen on the way.
async fn result_of(ws: &mut Ws, seq: u32) -> (u64, InputOutcome, Vec<u64>) {
    let mut deltas = Vec::new();
    loop {
        match recv::<Snapshot, Change>(ws).await {
            Ok(ServerMsg::InputResult { seq: s, tick, outcome }) if s == seq => return (tick, outcome, deltas),
            Ok(ServerMsg::Delta { tick, .. }) => deltas.push(tick),
            Ok(_) => {}
            Err(close) => panic!("closed with {close:?} while waiting for the result of input {seq}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// A test world: every tick it adds `noise` bytes of change (to make deltas big) and
// sleeps `sleep` (to make it slow). Members are entities; `Mark(n)` inputs are recorded and
// part of the view.

#[derive(Default)]
struct Probe {
    noise: usize,
    sleep: Duration,
    next_id: u32,
    members: BTreeMap<MemberId, u32>,
    marks: Vec<u32>,
}

#[derive(Debug, Encode, Decode, serde::Serialize, serde::Deserialize)]
struct Mark(u32);

#[derive(Debug, Encode, Decode, serde::Serialize, serde::Deserialize)]
enum ProbeChange {
    Joined(u32),
    Left(u32),
    Marked(u32),
    Noise(Vec<u8>),
}

#[derive(Debug, Encode, Decode, serde::Serialize, serde::Deserialize)]
struct ProbeView {
    entities: Vec<u32>,
    marks: Vec<u32>,
}

impl World for Probe {
    type Action = Mark;
    type Change = ProbeChange;
    type View = ProbeView;

    fn join(&mut self, member: MemberId, _name: &str, delta: &mut Vec<ProbeChange>) -> u32 {
        self.next_id += 1;
        self.members.insert(member, self.next_id);
        delta.push(ProbeChange::Joined(self.next_id));
        self.next_id
    }

    fn leave(&mut self, member: MemberId, delta: &mut Vec<ProbeChange>) {
        if let Some(id) = self.members.remove(&member) {
            delta.push(ProbeChange::Left(id));
        }
    }

    fn apply(&mut self, _member: MemberId, Mark(mark): Mark, delta: &mut Vec<ProbeChange>) -> Result<(), String> {
        self.marks.push(mark);
        delta.push(ProbeChange::Marked(mark));
        Ok(())
    }

    fn tick(&mut self, _tick: u64, delta: &mut Vec<ProbeChange>) {
        if !self.sleep.is_zero() {
            std::thread::sleep(self.sleep);
        }
        if self.noise > 0 {
            delta.push(ProbeChange::Noise(vec![0xa5; self.noise]));
        }
    }

    fn view(&self) -> ProbeView {
        ProbeView { entities: self.members.values().copied().collect(), marks: self.marks.clone() }
    }

    fn save(&self) -> Vec<u8> {
        Vec::new()
    }

    fn restore(_: &[u8]) -> Result<Self, RestoreError> {
        Err(RestoreError("probe worlds are not saved".into()))
    }
}

type ProbeMsg = ServerMsg<ProbeView, ProbeChange>;

async fn recv_probe(ws: &mut Ws) -> Received<ProbeView, ProbeChange> {
    recv::<ProbeView, ProbeChange>(ws).await
}

/// A client socket whose receive buffer is small, so a client that stops reading stalls
/// the server's writes after kilobytes, not megabytes.
async fn connect_small(addr: SocketAddr, url: &str) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)).await.unwrap();
    ws
}

// ---------------------------------------------------------------------------------------
// A reader that stalls, then reads again.

#[tokio::test]
async fn a_reader_that_stalls_is_resynced_when_it_reads_again() {
    let config = Config {
        tick_hz: 100,
        delta_hz: 100,
        client_queue: 4,
        max_behind: Duration::from_secs(20),
        ..Default::default()
    };
    // 64 KiB of change every 10 ms: the stalled client's kernel buffers fill in well under
    // a second, and then its queue.
    let s = Server::probe(config, Arc::new(|_: &str| Probe { noise: 64 * 1024, ..Default::default() })).await;
    let (mut slow, me, _, _) =
        join_with::<ProbeView, ProbeChange>(connect_small(s.addr, &s.url).await, "w", "slow").await;

    // Another member reads everything and marks the world every 20 ms; `acked` is the
    // highest mark the world has applied.
    let (mut other, _, _, _) = join::<ProbeView, ProbeChange>(&s.url, "w", "other").await;
    let acked = Arc::new(AtomicU32::new(0));
    let stop = CancellationToken::new();
    let marker = tokio::spawn({
        let (acked, stop) = (Arc::clone(&acked), stop.clone());
        async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(20));
            let mut next = 1;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return other,
                    _ = ticker.tick() => {
                        send(&mut other, &ClientMsg::Input { seq: next, action: Mark(next) }).await;
                        next += 1;
                    }
                    msg = recv_probe(&mut other) => match msg {
                        Ok(ServerMsg::InputResult { seq, outcome: InputOutcome::Ok, .. }) => {
                            acked.fetch_max(seq, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(close) => panic!("the reading member was closed: {close:?}"),
                    },
                }
            }
        }
    });

    // `slow` stops reading. Once its queue is full it is behind; give the other member's
    // marks a moment to land in the world while it is.
    s.metric_reaches("gaia_gameserver_fell_behind_total", 1.0).await;
    let behind_at = acked.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(5);
    while acked.load(Ordering::Relaxed) < behind_at + 5 {
        assert!(Instant::now() < deadline, "the other member's marks stopped being applied");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let applied = acked.load(Ordering::Relaxed);
    assert_eq!(s.metric("gaia_gameserver_resyncs_total").await, 0.0);

    // Reading again: first what was queued before it fell behind, then a Resync of the
    // whole world, then deltas from the next tick on.
    let mut last_delta = 0;
    let (resync_tick, snapshot) = loop {
        match recv_probe(&mut slow).await.unwrap() {
            ProbeMsg::Delta { tick, .. } => last_delta = tick,
            ProbeMsg::Resync { tick, snapshot, .. } => break (tick, snapshot),
            _ => {}
        }
    };
    assert!(last_delta + 1 < resync_tick, "no deltas were missed: last {last_delta}, resync at {resync_tick}");
    assert!(snapshot.entities.contains(&me), "own entity {me} missing from {:?}", snapshot.entities);
    // The marks made while it was behind are in the snapshot.
    let missing: Vec<u32> = (1..=applied).filter(|m| !snapshot.marks.contains(m)).collect();
    assert!(missing.is_empty(), "marks {missing:?} were applied but are not in the snapshot");
    let mut ticks = Vec::new();
    while ticks.len() < 10 {
        match recv_probe(&mut slow).await.unwrap() {
            ProbeMsg::Delta { tick, .. } => ticks.push(tick),
            ProbeMsg::Resync { .. } => panic!("a second resync: the client fell behind again"),
            _ => {}
        }
    }
    assert_eq!(ticks[0], resync_tick + 1, "deltas resume right after the resync's tick");
    assert!(ticks.windows(2).all(|w| w[1] == w[0] + 1), "{ticks:?}");

    stop.cancel();
    let _other = marker.await.unwrap();
    assert!(s.metric("gaia_gameserver_resyncs_total").await >= 1.0);
    assert!(s.metric("gaia_gameserver_fell_behind_total").await >= 1.0);
    assert_eq!(s.metric("gaia_gameserver_slow_clients_dropped_total").await, 0.0);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// Graceful drain.

#[tokio::test]
async fn a_drain_answers_inputs_already_sent_then_says_going_away() {
    // One tick a second: the drain starts long before the next regular tick.
    let s = Server::town(Config { tick_hz: 1, delta_hz: 1, ..Default::default() }).await;
    let (mut ws, _, welcome_tick, _) = join_town(&s.url, "w1", "p").await;
    send(&mut ws, &say(1, "last words")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let drain = Instant::now();
    s.shutdown.cancel();

    let (tick, outcome, _) = result_of(&mut ws, 1).await;
    assert_eq!((tick, outcome), (welcome_tick + 1, InputOutcome::Ok));
    assert!(drain.elapsed() < Duration::from_millis(600), "answered after {:?}: at a regular tick", drain.elapsed());
    // The last tick's delta, then the close.
    let mut said = false;
    let close = loop {
        match recv::<Snapshot, Change>(&mut ws).await {
            Ok(ServerMsg::Delta { tick, changes, .. }) => {
                assert_eq!(tick, welcome_tick + 1);
                said |= changes.iter().any(|c| matches!(c, Change::Said { text, .. } if text == "last words"));
            }
            Ok(_) => {}
            Err(close) => break close,
        }
    };
    assert!(said, "the last tick's delta did not arrive before the close");
    assert_eq!(close, (close::GOING_AWAY, "server shutting down".into()));
    tokio::time::timeout(Duration::from_secs(5), s.done).await.unwrap().unwrap().unwrap();
    assert!(connect_async(&s.url).await.is_err(), "still accepting connections after the drain");
}

// ---------------------------------------------------------------------------------------
// A slow world does not slow the others.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_world_does_not_delay_the_others() {
    let tick = Duration::from_millis(150);
    let config = Config { tick_hz: 20, delta_hz: 20, ..Default::default() };
    let new_world: NewWorld<Probe> = Arc::new(move |id: &str| Probe {
        sleep: if id == "slow" { tick } else { Duration::ZERO },
        ..Default::default()
    });
    let s = Server::probe(config, new_world).await;
    let t0 = Instant::now();

    // A member in the slow world, reading whatever it is sent.
    let (mut in_slow, _) = connect_async(&s.url).await.unwrap();
    send(&mut in_slow, &ClientMsg::<Mark>::Join { token: token("slow", "s") }).await;
    let slow_ticks = tokio::spawn(async move {
        let mut ticks = Vec::new();
        while let Some(Ok(Message::Binary(b))) = in_slow.next().await {
            if let ProbeMsg::Welcome { tick, .. } | ProbeMsg::Delta { tick, .. } = decode_server(&b).unwrap() {
                ticks.push((t0.elapsed(), tick));
            }
        }
        ticks
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (mut fast, _, _, _) = join::<ProbeView, ProbeChange>(&s.url, "fast", "f").await;
    let started = Instant::now();
    let mut ticks = Vec::new();
    let mut gaps = Vec::new();
    let mut last = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        if let Ok(ProbeMsg::Delta { tick, .. }) = recv_probe(&mut fast).await {
            ticks.push(tick);
            gaps.push(last.elapsed());
            last = Instant::now();
        }
    }
    // 40 expected, one every 50 ms; a fast world sharing a thread with the slow one would
    // also see gaps of 150 ms.
    let span = ticks.last().unwrap() - ticks[0];
    assert!(ticks.len() >= 25 && span >= 25, "{} deltas in 2 s, ticks {ticks:?}", ticks.len());
    let longest = *gaps.iter().max().unwrap();
    assert!(longest < Duration::from_millis(140), "a gap of {longest:?} between deltas: {gaps:?}");

    // The slow world ticked all along, at most once per 150 ms, and its own member got
    // each tick as it happened, not in a burst at the end (the world yields its thread
    // after every tick, so the connection it woke gets to run).
    let cancelled_at = t0.elapsed();
    s.shutdown.cancel();
    let slow_ticks = slow_ticks.await.unwrap();
    let slow_last = slow_ticks.last().unwrap().1;
    assert!((5..=20).contains(&slow_last), "the slow world reached tick {slow_last}: {slow_ticks:?}");
    let on_time = slow_ticks.iter().filter(|(at, _)| *at < cancelled_at).count();
    assert!(on_time >= 5, "only {on_time} of the slow world's frames arrived before shutdown: {slow_ticks:?}");
    tokio::time::timeout(Duration::from_secs(10), s.done).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn metrics_name_the_server_its_fleet_and_its_region() {
    let s = Server::town(Config { fleet: "zombies".into(), region: "eu-west".into(), ..Default::default() }).await;
    let text = s.metrics().await;
    let info = format!(r#"gaia_gameserver_info{{server="{NAME}",fleet="zombies",region="eu-west"}}"#);
    assert_eq!(metric(&text, &info), 1.0, "{text}");
    s.stop().await;
}
