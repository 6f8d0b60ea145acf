#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns
//! One connection's rules (`conn.rs`), in-process on tokio's paused clock: `conn::serve`
//! runs over a pair of channels instead of a socket, with real rooms and a small world.
//! A client that sends no Join, or goes silent after joining, is closed (`IDLE`) at its
//! timeout to the tick; a flood is refused at once, then closed (`RATE_LIMITED`); a client
//! that stops reading is dropped after `write_timeout`; bad first frames, bad tokens and
//! bad frames after the join each close with their own code, counted by reason.
//!
//! What belongs to the WebSocket layer (the echo of a client's close frame, the frame
//! limit the upgrade sets, kernel buffers) is checked on real sockets, in `rules.rs` and
//! `slow_reader.rs`.

use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::extract::ws::Message;
use futures_util::{Sink, SinkExt, Stream};
use gaia_api::protocol::{
    ClientMsg, Encoding, InputOutcome, MAX_CLIENT_FRAME, PROTOCOL_VERSION, ServerMsg, close, decode_server,
    encode_client,
};
use gaia_api::token::{JoinClaims, TokenKey, unix_ms};
use gaia_gameserver::conn::{self, Ctx};
use gaia_gameserver::metrics::{Metrics, ReasonLabels, ResultLabels};
use gaia_gameserver::room::{RoomConfig, Rooms};
use gaia_gameserver::unjoined::Unjoined;
use gaia_gameserver::world::{MemberId, RestoreError, World};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite;
use tokio_util::sync::{CancellationToken, PollSender};

const NAME: &str = "gs-conn";
const SECRET: &str = "s3cret";
/// The rooms' tick ([`RoomConfig::default`]); deltas go out every other one.
const TICK: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------------------
// A small world: members are numbered, and each input (a number) is applied as a change.

#[derive(Default)]
struct Marks {
    joined: u32,
}

impl World for Marks {
    type Action = u32;
    type Change = u32;
    type View = u32;

    fn join(&mut self, _: MemberId, _: &str, _: &mut Vec<u32>) -> u32 {
        self.joined += 1;
        self.joined
    }

    fn leave(&mut self, _: MemberId, _: &mut Vec<u32>) {}

    fn apply(&mut self, _: MemberId, mark: u32, delta: &mut Vec<u32>) -> Result<(), String> {
        delta.push(mark);
        Ok(())
    }

    fn tick(&mut self, _: u64, _: &mut Vec<u32>) {}

    fn view(&self) -> u32 {
        self.joined
    }

    fn save(&self) -> Vec<u8> {
        Vec::new()
    }

    fn restore(_: &[u8]) -> Result<Self, RestoreError> {
        Err(RestoreError("not saved".into()))
    }
}

type Msg = ServerMsg<u32, u32>;

// ---------------------------------------------------------------------------------------
// A server without sockets: what its connections share.

/// What every connection shares, as `run` builds it from a default `Config`.
fn ctx() -> Ctx<Marks> {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let shutdown = CancellationToken::new();
    let runner = gaia_ops::Runner::builder().build(Arc::new(gaia_ops::Metrics::new(&mut registry)));
    let (events, _) = mpsc::unbounded_channel();
    let config = RoomConfig::default();
    let member_queue = config.member_queue;
    let rooms = Rooms::new(
        config,
        Arc::new(|_: &str| Marks::default()),
        events,
        Arc::clone(&metrics),
        shutdown.clone(),
        None,
        None,
        Arc::new(runner),
    );
    Ctx {
        server_name: NAME.into(),
        key: TokenKey::new(SECRET),
        rooms,
        metrics,
        shutdown,
        join_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(30),
        write_timeout: Duration::from_secs(10),
        member_queue,
        frame_rate: 20.try_into().unwrap(),
        frame_burst: 40.try_into().unwrap(),
        players: Default::default(),
        slots: Arc::new(Semaphore::new(100)),
        player_capacity: 100,
    }
}

fn closes(ctx: &Ctx<Marks>, reason: &'static str) -> u64 {
    ctx.metrics.closes.get_or_create(&ReasonLabels { reason }).get()
}

fn inputs(ctx: &Ctx<Marks>, result: &'static str) -> u64 {
    ctx.metrics.inputs.get_or_create(&ResultLabels { result }).get()
}

fn token(world: &str, player: &str) -> String {
    TokenKey::new(SECRET).sign(&JoinClaims {
        world_id: world.into(),
        server: NAME.into(),
        player_id: player.into(),
        expires_at_ms: unix_ms(SystemTime::now()) + 60_000,
        epoch: 1,
    })
}

// ---------------------------------------------------------------------------------------
// The transport: what the client sends comes out of `inbound`, what the server writes goes
// into `outbound`.

struct Pair<Si> {
    inbound: mpsc::Receiver<Result<Message, axum::Error>>,
    outbound: Si,
}

impl<Si: Unpin> Stream for Pair<Si> {
    type Item = Result<Message, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inbound.poll_recv(cx)
    }
}

impl<Si: Sink<Message> + Unpin> Sink<Message> for Pair<Si> {
    type Error = Si::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.outbound.poll_ready_unpin(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, message: Message) -> Result<(), Self::Error> {
        self.outbound.start_send_unpin(message)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.outbound.poll_flush_unpin(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.outbound.poll_close_unpin(cx)
    }
}

/// The client's end of a connection served by `conn::serve`.
struct Client {
    tx: mpsc::Sender<Result<Message, axum::Error>>,
    rx: mpsc::Receiver<Message>,
    served: tokio::task::JoinHandle<()>,
}

/// Connects a client that takes up to `room` messages without reading (a client that
/// reads nothing at all stalls the server's writes after that many).
fn connect_with_room(ctx: &Arc<Ctx<Marks>>, room: usize) -> Client {
    let (tx, inbound) = mpsc::channel(256);
    let (outbound, rx) = mpsc::channel(room);
    let outbound = PollSender::new(outbound).sink_map_err(|_| axum::Error::new("the client is gone"));
    let place = Unjoined::new(1, 1).admit(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap();
    let served = tokio::spawn(conn::serve(Pair { inbound, outbound }, Arc::clone(ctx), place, Encoding::Bincode));
    Client { tx, rx, served }
}

fn connect(ctx: &Arc<Ctx<Marks>>) -> Client {
    connect_with_room(ctx, 1024)
}

/// A server message, or the close frame's (code, reason) as an Err; (0, "gone") when the
/// server ended the connection without one.
type Received = Result<Msg, (u16, String)>;

impl Client {
    async fn send_raw(&self, message: Message) {
        self.tx.send(Ok(message)).await.unwrap();
    }

    async fn send(&self, msg: &ClientMsg<u32>) {
        self.send_raw(Message::Binary(encode_client(msg).into())).await;
    }

    async fn recv(&mut self) -> Received {
        match self.rx.recv().await {
            Some(Message::Binary(frame)) => Ok(decode_server(&frame).unwrap()),
            Some(Message::Close(Some(frame))) => Err((frame.code, frame.reason.to_string())),
            Some(other) => panic!("unexpected message from the server: {other:?}"),
            None => Err((0, "gone".into())),
        }
    }

    /// Reads until the close; returns its code and reason.
    async fn closed(&mut self) -> (u16, String) {
        loop {
            if let Err(close) = self.recv().await {
                return close;
            }
        }
    }

    /// Reads (and drops) what comes for `d`; panics if the connection closes meanwhile.
    async fn read_for(&mut self, d: Duration) {
        let until = tokio::time::sleep(d);
        tokio::pin!(until);
        loop {
            tokio::select! {
                _ = &mut until => return,
                msg = self.recv() => if let Err(close) = msg {
                    panic!("closed with {close:?}");
                },
            }
        }
    }

    /// Reads until the result of input `seq`.
    async fn result_of(&mut self, seq: u32) -> (u64, InputOutcome) {
        loop {
            match self.recv().await {
                Ok(Msg::InputResult { seq: s, tick, outcome }) if s == seq => return (tick, outcome),
                Ok(_) => {}
                Err(close) => panic!("closed with {close:?} while waiting for the result of input {seq}"),
            }
        }
    }
}

/// Connects and joins `world` as `player`.
async fn join(ctx: &Arc<Ctx<Marks>>, world: &str, player: &str) -> Client {
    join_on(connect(ctx), world, player).await
}

async fn join_on(mut client: Client, world: &str, player: &str) -> Client {
    client.send(&ClientMsg::Join { token: token(world, player) }).await;
    match client.recv().await {
        Ok(Msg::Welcome { world_id, .. }) => assert_eq!(world_id, world),
        other => panic!("expected Welcome, got {other:?}"),
    }
    client
}

fn binary(msg: &ClientMsg<u32>) -> Message {
    Message::Binary(encode_client(msg).into())
}

/// What tungstenite reports for a frame over the upgrade's limit.
fn too_large(size: usize) -> axum::Error {
    let capacity = tungstenite::error::CapacityError::MessageTooLong { size, max_size: MAX_CLIENT_FRAME };
    axum::Error::new(tungstenite::Error::Capacity(capacity))
}

// ---------------------------------------------------------------------------------------
// Timeouts.

#[tokio::test(start_paused = true)]
async fn a_client_that_sends_no_join_is_closed_at_the_join_timeout() {
    let ctx = Arc::new(ctx());
    let started = Instant::now();
    let mut client = connect(&ctx);
    assert_eq!(client.closed().await, (close::IDLE, "no Join within 5s".into()));
    assert_eq!(started.elapsed(), ctx.join_timeout);
    client.served.await.unwrap();
    assert_eq!(closes(&ctx, "idle"), 1);
    assert_eq!(ctx.metrics.connections.get(), 0);
}

/// Nothing received for `idle_timeout` closes a joined client, however much it reads; a
/// ping is something.
#[tokio::test(start_paused = true)]
async fn a_joined_client_that_sends_nothing_is_closed_at_the_idle_timeout() {
    let ctx = Arc::new(ctx());
    let idle = ctx.idle_timeout;
    let mut pinger = join(&ctx, "w1", "pinger").await;
    let joining = Instant::now();
    let mut silent = join(&ctx, "w1", "silent").await;

    // The pinger pings twice per idle timeout, for three of them; the silent client reads.
    let silent = tokio::spawn(async move { (silent.closed().await, joining.elapsed()) });
    for nonce in 1..=6 {
        pinger.read_for(idle / 2).await;
        pinger.send(&ClientMsg::Ping { nonce }).await;
        loop {
            match pinger.recv().await {
                Ok(Msg::Pong { nonce: n }) if n == nonce => break,
                Ok(_) => {}
                Err(close) => panic!("the pinging client was closed: {close:?}"),
            }
        }
    }
    let (close, after) = silent.await.unwrap();
    assert_eq!(close, (close::IDLE, "nothing received for 30s".into()));
    assert_eq!(after, idle, "from the Join");
    assert_eq!(closes(&ctx, "idle"), 1);

    // Silent from its last ping on, the pinger goes the same way.
    let last_ping = Instant::now();
    assert_eq!(pinger.closed().await.0, close::IDLE);
    assert_eq!(last_ping.elapsed(), idle);
    assert_eq!(ctx.players.load(Ordering::Relaxed), 0);
}

/// A client whose sink never takes another message is dropped `write_timeout` after the
/// write it stalled, without a close frame (it would not take that either).
#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_dropped_after_the_write_timeout() {
    let ctx = Arc::new(ctx());
    // Room for one message: the Welcome, read, then one delta, never read.
    let client = join_on(connect_with_room(&ctx, 1), "w1", "sloth").await;
    let joined = Instant::now();
    let Client { tx: _tx, mut rx, served } = client;
    served.await.unwrap();
    // Deltas go out every other tick: the second one after the Welcome stalled.
    let dropped = joined.elapsed();
    assert!(dropped >= ctx.write_timeout && dropped <= ctx.write_timeout + 4 * TICK, "dropped after {dropped:?}");
    assert!(matches!(decode_server::<u32, u32>(&frame(rx.recv().await)), Ok(Msg::Delta { .. })));
    assert!(rx.recv().await.is_none(), "more than the one delta that fit");
    assert_eq!(closes(&ctx, "too_slow"), 1);
    assert_eq!(ctx.metrics.connections.get(), 0);
    assert_eq!(ctx.players.load(Ordering::Relaxed), 0);
}

fn frame(message: Option<Message>) -> bytes::Bytes {
    match message {
        Some(Message::Binary(frame)) => frame,
        other => panic!("expected a binary frame, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// The rate limit.

/// An input over the rate is answered Rejected at once (tick 0, before the results of
/// the inputs within it, which wait for their tick); the connection stays open.
#[tokio::test(start_paused = true)]
async fn an_input_over_the_rate_is_rejected_at_once() {
    let ctx = Arc::new(Ctx { frame_rate: 5.try_into().unwrap(), frame_burst: 10.try_into().unwrap(), ..ctx() });
    let mut client = join(&ctx, "w1", "eager").await;
    for seq in 1..=11 {
        client.send(&ClientMsg::Input { seq, action: seq }).await;
    }
    let sent = Instant::now();
    let first = loop {
        if let Msg::InputResult { seq, tick, outcome } = client.recv().await.unwrap() {
            break (seq, tick, outcome);
        }
    };
    let slow_down = InputOutcome::Rejected { reason: "slow down: at most 5 inputs per second".into() };
    assert_eq!(first, (11, 0, slow_down));
    assert_eq!(sent.elapsed(), Duration::ZERO, "answered before any tick");
    for seq in 1..=10 {
        assert_eq!(client.result_of(seq).await.1, InputOutcome::Ok);
    }
    assert_eq!((inputs(&ctx, "rate_limited"), inputs(&ctx, "ok")), (1, 10));
    client.send(&ClientMsg::Ping { nonce: 1 }).await;
    assert!(matches!(client.recv().await, Ok(Msg::Pong { nonce: 1 })), "closed after a refusal");
}

/// A flood: the first `burst` inputs pass, then up to `burst` refusals in a row are
/// answered, and the next one closes the connection. Every input the world applied was
/// answered before the close; a member in the same world plays on.
#[tokio::test(start_paused = true)]
async fn a_flooding_client_is_refused_then_closed_and_others_play_on() {
    let ctx = Arc::new(Ctx { frame_rate: 5.try_into().unwrap(), frame_burst: 10.try_into().unwrap(), ..ctx() });
    let mut good = join(&ctx, "w1", "good").await;
    let mut flood = join(&ctx, "w1", "flood").await;
    // The server closes the connection part-way, so late sends may fail; that is the point.
    for seq in 1..=100 {
        let _ = flood.tx.send(Ok(binary(&ClientMsg::Input { seq, action: seq }))).await;
    }
    let (mut refused, mut applied) = (Vec::new(), 0);
    let close = loop {
        match flood.recv().await {
            Ok(Msg::InputResult { seq, tick, outcome: InputOutcome::Rejected { reason } }) => {
                assert!(reason.starts_with("slow down"), "{reason}");
                assert_eq!(tick, 0, "a refused input never reaches the world");
                refused.push(seq);
            }
            Ok(Msg::InputResult { outcome: InputOutcome::Ok, .. }) => applied += 1,
            Ok(_) => {}
            Err(close) => break close,
        }
    };
    assert_eq!(close, (close::RATE_LIMITED, "more than 5 frames per second".into()));
    // The limiter's bucket refills on the real clock (a cell per 200 ms): more refusals
    // than `burst` only if this test ran that slowly.
    assert!(refused.len() >= 10 && refused[0] == 11, "refused {refused:?}");
    flood.served.await.unwrap();

    good.send(&ClientMsg::Input { seq: 1, action: 7 }).await;
    assert_eq!(good.result_of(1).await.1, InputOutcome::Ok);
    good.read_for(4 * TICK).await;
    assert_eq!(inputs(&ctx, "rate_limited"), refused.len() as u64);
    assert_eq!(inputs(&ctx, "ok"), applied + 1, "an applied input went unanswered");
    assert_eq!(closes(&ctx, "rate_limited"), 1);
}

/// Pings count toward the flood limit, but every one is answered.
#[tokio::test(start_paused = true)]
async fn pings_over_the_rate_still_get_their_pongs() {
    let ctx = Arc::new(Ctx { frame_rate: 5.try_into().unwrap(), frame_burst: 10.try_into().unwrap(), ..ctx() });
    let mut client = join(&ctx, "w1", "pinger").await;
    for nonce in 1..=16 {
        client.send(&ClientMsg::Ping { nonce }).await;
    }
    let mut pongs = Vec::new();
    while pongs.len() < 16 {
        match client.recv().await {
            Ok(Msg::Pong { nonce }) => pongs.push(nonce),
            Ok(_) => {}
            Err(close) => panic!("closed with {close:?} after pongs {pongs:?}"),
        }
    }
    assert_eq!(pongs, (1..=16).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------------------
// Bad frames and bad tokens.

/// Frames that break the protocol, with the close each gets, and its metric label.
fn bad_frames() -> Vec<(Result<Message, axum::Error>, u16, &'static str, &'static str)> {
    let mut wrong_version = encode_client(&ClientMsg::<u32>::Ping { nonce: 1 });
    wrong_version[0] = (PROTOCOL_VERSION + 1) as u8;
    let mut truncated = encode_client(&ClientMsg::Input { seq: 1, action: u32::MAX });
    truncated.truncate(truncated.len() - 3);
    vec![
        (
            Ok(Message::Binary(vec![1, 200].into())),
            close::MALFORMED,
            "malformed",
            "malformed frame: unknown message kind 200 for ClientMsg",
        ),
        (
            Ok(Message::Binary(wrong_version.into())),
            close::VERSION,
            "version",
            "protocol version 2 is not supported (server speaks 1)",
        ),
        (
            Ok(Message::Binary(truncated.into())),
            close::MALFORMED,
            "malformed",
            "malformed frame: frame ends 3 bytes early",
        ),
        (
            Ok(Message::text("{\"join\":1}")),
            close::MALFORMED,
            "malformed",
            "text frames are not spoken on gaia.v1.bincode",
        ),
        (
            Err(too_large(5000)),
            close::FRAME_TOO_LARGE,
            "too_large",
            "frame of 5000 bytes exceeds the limit of 4096 bytes",
        ),
    ]
}

#[tokio::test(start_paused = true)]
async fn a_bad_first_frame_closes_with_its_own_code() {
    let ctx = Arc::new(ctx());
    let ping = binary(&ClientMsg::Ping { nonce: 1 });
    let not_joined = (Ok(ping), close::NOT_JOINED, "not_joined", "the first message must be Join or Resume");
    for (i, (frame, code, label, reason)) in bad_frames().into_iter().chain([not_joined]).enumerate() {
        let mut client = connect(&ctx);
        let before = closes(&ctx, label);
        client.tx.send(frame).await.unwrap();
        assert_eq!(client.closed().await, (code, reason.to_string()), "case {i}");
        assert_eq!(closes(&ctx, label), before + 1, "case {i}");
        client.served.await.unwrap();
    }
    assert_eq!(ctx.metrics.connections.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn bad_frames_on_a_joined_socket_close_it_with_their_own_code() {
    let ctx = Arc::new(ctx());
    let mut watcher = join(&ctx, "w1", "watcher").await;
    let join_again = (
        Ok(binary(&ClientMsg::Join { token: token("w1", "p") })),
        close::ALREADY_JOINED,
        "already_joined",
        "already joined world w1",
    );
    for (i, (frame, code, label, reason)) in bad_frames().into_iter().chain([join_again]).enumerate() {
        let mut client = join(&ctx, "w1", &format!("p{i}")).await;
        let before = closes(&ctx, label);
        client.tx.send(frame).await.unwrap();
        assert_eq!(client.closed().await, (code, reason.to_string()), "case {i}");
        assert_eq!(closes(&ctx, label), before + 1, "case {i}");
        client.served.await.unwrap();
    }
    // The world carries on; every bad connection is gone.
    watcher.send(&ClientMsg::Input { seq: 1, action: 1 }).await;
    assert_eq!(watcher.result_of(1).await.1, InputOutcome::Ok);
    assert_eq!(ctx.metrics.connections.get(), 1);
    assert_eq!(ctx.players.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn bad_tokens_are_refused_with_a_reason() {
    let ctx = Arc::new(ctx());
    let claims = |server: &str, expires_at_ms: u64| JoinClaims {
        world_id: "w1".into(),
        server: server.into(),
        player_id: "p".into(),
        expires_at_ms,
        epoch: 1,
    };
    let now = unix_ms(SystemTime::now());
    let key = TokenKey::new(SECRET);
    let cases = [
        (key.sign(&claims(NAME, now - 1)), "join token has expired"),
        (key.sign(&claims("gs-other", now + 60_000)), "join token is for another server"),
        (TokenKey::new("wrong").sign(&claims(NAME, u64::MAX)), "join token signature does not match"),
        ("garbage".into(), "join token is malformed"),
    ];
    for (token, reason) in cases {
        let mut client = connect(&ctx);
        client.send(&ClientMsg::Join { token }).await;
        assert_eq!(client.closed().await, (close::BAD_TOKEN, reason.to_string()));
    }
    assert_eq!(closes(&ctx, "bad_token"), 4);
    assert_eq!(ctx.players.load(Ordering::Relaxed), 0);
}

// ---------------------------------------------------------------------------------------
// Ends the server does not choose.

/// A client's close frame ends the connection without a close of the server's own (the
/// WebSocket layer echoes the client's; `rules.rs` checks the echo on a real socket), and
/// takes the member out of its world.
#[tokio::test(start_paused = true)]
async fn a_client_close_ends_the_connection_quietly() {
    let ctx = Arc::new(ctx());
    let fresh = connect(&ctx);
    let joined = join(&ctx, "w1", "leaver").await;
    for (when, mut client) in [("before the join", fresh), ("after the join", joined)] {
        client.send_raw(Message::Close(None)).await;
        assert_eq!(client.closed().await, (0, "gone".into()), "{when}");
        client.served.await.unwrap();
    }
    assert_eq!(ctx.players.load(Ordering::Relaxed), 0);
    assert_eq!(ctx.metrics.connections.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_before_the_join_says_going_away() {
    let ctx = Arc::new(ctx());
    let mut client = connect(&ctx);
    ctx.shutdown.cancel();
    assert_eq!(client.closed().await, (close::GOING_AWAY, "server shutting down".into()));
}
