//! One client connection, from the Join frame to the close.
//!
//! Start with [`serve`]. It runs over any [`Transport`], a stream and sink of WebSocket
//! messages: axum's `WebSocket` in the server, an in-process pair in the tests
//! (`tests/conn.rs`), which check these rules on tokio's paused clock. The transport does
//! what is left to the WebSocket layer: it answers pings, queues the echo of a client's
//! close frame, and refuses frames over the limit (tungstenite's capacity error, which
//! this module turns into `FRAME_TOO_LARGE`).
//!
//! Until it joins, a connection holds a place among the unjoined ([`crate::unjoined`]),
//! not a player slot. The first frame must be `Join{token}` within `join_timeout`; the
//! token must be signed by the allocator for this server and unexpired; then the
//! connection takes a player slot. A spectate token (see [`crate::room`]) instead makes
//! a read-only connection: it takes no slot and is no player, and each of its inputs is
//! answered `Rejected` ([`SPECTATORS_CANNOT_ACT`]) at once, never reaching the world.
//! After that it forwards inputs to its world and writes the frames the world queues for
//! it, all that are queued in one flush. Frames are rate limited per connection: an input
//! over the limit is answered `Rejected` at once (tick 0, so before results of earlier
//! inputs that wait for their tick), a ping over it still gets its pong, and a client
//! that keeps going past the burst is closed. A client silent for `idle_timeout` is
//! closed, and one that takes nothing for `write_timeout` is dropped.
//!
//! Every way a connection can go wrong ends in a close frame with one of [`close`]'s codes
//! and a reason, and is counted; none of them touches the world beyond a `Leave`. Before
//! any close frame the server sends, the member leaves its world (which drops its inputs
//! not applied yet) and gets every result the world still owes it, so every input the
//! world applied has had its result; an input without one was not applied. A client's
//! own close frame is echoed (RFC 6455: the transport queues the echo, this writes it);
//! results after it cannot be sent.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use gaia_api::protocol::{
    ClientMsg, Encoding, InputOutcome, MAX_CLIENT_FRAME, ProtocolError, SPECTATORS_CANNOT_ACT, ServerMsg, close,
};
use gaia_api::token::{TokenError, TokenKey, unix_ms};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_util::sync::CancellationToken;

use crate::closing::Closing;
use crate::farewell::Leftovers;
use crate::metrics::Metrics;
use crate::room::{JoinError, Outbound, Rooms, WorldHandle};
use crate::unjoined::Place;
use crate::world::World;

/// What every connection of one server shares.
pub struct Ctx<W: World> {
    pub server_name: String,
    pub key: TokenKey,
    pub rooms: Arc<Rooms<W>>,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    pub join_timeout: Duration,
    /// A joined client that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// A client that takes no bytes for this long is dropped without a goodbye (its
    /// socket is full, so a close frame could not reach it either).
    pub write_timeout: Duration,
    pub member_queue: usize,
    /// Frames (inputs and pings) a client may send per second, on average...
    pub frame_rate: NonZeroU32,
    /// ...and in a burst.
    pub frame_burst: NonZeroU32,
    /// Players who have joined a world, for the SDK's player count.
    pub players: AtomicU32,
    /// One permit per joined connection...
    pub slots: Arc<Semaphore>,
    /// ...`player_capacity` of them.
    pub player_capacity: u32,
}

/// What a connection runs over: axum's `WebSocket`, or anything else that reads and
/// writes its messages (the tests' in-process pair).
pub trait Transport:
    Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin + Send
{
}

impl<T> Transport for T where
    T: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin + Send
{
}

/// Sends `closing` as a close frame and counts it. Reasons are cut to fit a control frame.
async fn close_with<T: Transport>(socket: &mut Socket<T>, metrics: &Metrics, closing: Closing) {
    metrics.count_close(closing.label);
    tracing::debug!(code = closing.code, reason = %closing.reason, "closing connection");
    let mut reason = closing.reason;
    while reason.len() > 120 {
        reason.pop();
    }
    let frame = CloseFrame { code: closing.code, reason: reason.into() };
    // A client that does not read could hold this send forever.
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.ws.send(Message::Close(Some(frame)))).await;
}

/// A client's WebSocket and the encoding its handshake chose: bincode in binary
/// messages, JSON in text messages.
struct Socket<T> {
    ws: T,
    encoding: Encoding,
}

impl<T: Transport> Socket<T> {
    /// Queues one encoded frame, in the message kind of the encoding.
    async fn feed(&mut self, frame: Bytes) -> Result<(), axum::Error> {
        let message = match self.encoding {
            Encoding::Bincode => Message::Binary(frame),
            // serde_json writes UTF-8: the check cannot fail.
            Encoding::Json => Message::Text(Utf8Bytes::try_from(frame).unwrap_or_default()),
        };
        self.ws.feed(message).await
    }

    async fn flush(&mut self) -> Result<(), axum::Error> {
        self.ws.flush().await
    }
}

/// Runs one connection to its end. `unjoined` is its place among the connections that
/// have not joined yet, given back at the join; `encoding` is what the handshake chose.
pub async fn serve<W: World, T: Transport>(socket: T, ctx: Arc<Ctx<W>>, unjoined: Place, encoding: Encoding) {
    ctx.metrics.connections.inc();
    let mut socket = Socket { ws: socket, encoding };
    if let Some(closing) = session(&mut socket, &ctx, unjoined).await {
        close_with(&mut socket, &ctx.metrics, closing).await;
    }
    ctx.metrics.connections.dec();
}

/// A frame from the client: the payload of a binary message, or why there is none.
enum Inbound {
    Frame(Bytes),
    /// The client sent its close frame.
    Closed,
    /// The socket failed: nothing more can be said to it.
    Gone,
    Bad(Closing),
}

async fn next_frame<T: Transport>(socket: &mut Socket<T>, metrics: &Metrics) -> Inbound {
    loop {
        match socket.ws.next().await {
            Some(Ok(Message::Close(_))) => return Inbound::Closed,
            None => return Inbound::Gone,
            Some(Err(e)) => {
                // tungstenite refuses frames over the upgrade's limit before we see them.
                let inner = e.into_inner();
                if let Some(tungstenite::Error::Capacity(e)) = inner.downcast_ref::<tungstenite::Error>() {
                    let size = match e {
                        CapacityError::MessageTooLong { size, .. } => *size,
                        CapacityError::TooManyHeaders => MAX_CLIENT_FRAME + 1,
                    };
                    let e = ProtocolError::TooLarge { size, limit: MAX_CLIENT_FRAME };
                    return Inbound::Bad(protocol_closing(e));
                }
                return Inbound::Gone;
            }
            Some(Ok(Message::Binary(bytes))) if socket.encoding == Encoding::Bincode => {
                metrics.frames_received.inc();
                metrics.bytes_received.inc_by(bytes.len() as u64);
                return Inbound::Frame(bytes);
            }
            Some(Ok(Message::Text(text))) if socket.encoding == Encoding::Json => {
                metrics.frames_received.inc();
                metrics.bytes_received.inc_by(text.len() as u64);
                return Inbound::Frame(text.into());
            }
            Some(Ok(Message::Binary(_))) => {
                let reason = format!("binary frames are not spoken on {}", socket.encoding.subprotocol());
                return Inbound::Bad(Closing::new(close::MALFORMED, "malformed", reason));
            }
            Some(Ok(Message::Text(_))) => {
                let reason = format!("text frames are not spoken on {}", socket.encoding.subprotocol());
                return Inbound::Bad(Closing::new(close::MALFORMED, "malformed", reason));
            }
            // tungstenite answers pings itself.
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
        }
    }
}

/// Answers the client's close frame (the transport queued the echo: tungstenite does
/// in the server; this writes it).
async fn echo_close<T: Transport>(socket: &mut Socket<T>) {
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.flush()).await;
}

fn protocol_closing(e: ProtocolError) -> Closing {
    let label = match e {
        ProtocolError::TooLarge { .. } => "too_large",
        ProtocolError::Version { .. } => "version",
        ProtocolError::Malformed(_) => "malformed",
    };
    Closing::new(e.close_code(), label, e.to_string())
}

fn decode<A: bincode::Decode<()> + serde::de::DeserializeOwned>(
    encoding: Encoding,
    frame: &[u8],
) -> Result<ClientMsg<A>, Closing> {
    encoding.decode_client(frame).map_err(protocol_closing)
}

/// The connection's life; `Some` is how to close it, `None` that nothing more can be
/// said.
async fn session<W: World, T: Transport>(socket: &mut Socket<T>, ctx: &Ctx<W>, unjoined: Place) -> Option<Closing> {
    let first = tokio::select! {
        _ = ctx.shutdown.cancelled() => return Some(going_away()),
        first = tokio::time::timeout(ctx.join_timeout, next_frame(socket, &ctx.metrics)) => first,
    };
    let frame = match first {
        Err(_) => return Some(Closing::new(close::IDLE, "idle", format!("no Join within {:?}", ctx.join_timeout))),
        Ok(Inbound::Closed) => {
            echo_close(socket).await;
            return None;
        }
        Ok(Inbound::Gone) => return None,
        Ok(Inbound::Bad(closing)) => return Some(closing),
        Ok(Inbound::Frame(frame)) => frame,
    };
    let now = unix_ms(SystemTime::now());
    let bad_token = |e: TokenError| Closing::new(close::BAD_TOKEN, "bad_token", e.to_string());
    let first = match decode::<W::Action>(socket.encoding, &frame) {
        // A spectate token is not a join token: its signature is the tell.
        Ok(ClientMsg::Join { token }) => match ctx.key.verify(&token, &ctx.server_name, now) {
            Ok(claims) => First::Join(claims),
            Err(TokenError::BadSignature) => match ctx.key.verify_spectate(&token, &ctx.server_name, now) {
                Ok(claims) => {
                    drop(unjoined);
                    return spectate(socket, ctx, claims).await;
                }
                Err(e) => return Some(bad_token(e)),
            },
            Err(e) => return Some(bad_token(e)),
        },
        Ok(ClientMsg::Resume { token, awaiting }) => match ctx.key.verify_resume(&token, &ctx.server_name, now) {
            Ok(claims) => First::Resume(claims, awaiting),
            Err(e) => return Some(bad_token(e)),
        },
        Ok(_) => {
            return Some(Closing::new(close::NOT_JOINED, "not_joined", "the first message must be Join or Resume"));
        }
        Err(closing) => return Some(closing),
    };
    drop(unjoined);
    let Ok(_slot) = Arc::clone(&ctx.slots).try_acquire_owned() else {
        let reason = format!("server has all its {} player slots taken", ctx.player_capacity);
        return Some(Closing::new(close::SERVER_FULL, "server_full", reason));
    };
    let (out, mut frames) = mpsc::channel(ctx.member_queue);
    let (world_id, joined) = match first {
        First::Join(claims) => {
            let member = ctx.rooms.next_member();
            let player = claims.player_id.clone();
            let joined = ctx.rooms.join(&claims.world_id, claims.epoch, member, player, socket.encoding, out).await;
            (claims.world_id, joined)
        }
        First::Resume(claims, awaiting) => {
            let (world_id, epoch, member) = (&claims.world_id, claims.epoch, claims.member);
            let resumed = ctx.rooms.resume(world_id, epoch, member, socket.encoding, out, awaiting).await;
            (claims.world_id, resumed)
        }
    };
    let world = match joined {
        Ok(world) => world,
        Err(e) => return Some(refused(e)),
    };
    ctx.players.fetch_add(1, Ordering::Relaxed);
    let end = play(socket, ctx, &world, &world_id, false, &mut frames).await;
    let closing = part(socket, ctx, world, &mut frames, end).await;
    ctx.players.fetch_sub(1, Ordering::Relaxed);
    closing
}

/// A refused join, resume or spectate as the close that says why.
fn refused(e: JoinError) -> Closing {
    let reason = e.to_string();
    match e {
        JoinError::WorldFull(_) => Closing::new(close::WORLD_FULL, "world_full", reason),
        JoinError::SpectatorsFull(_) => Closing::new(close::WORLD_FULL, "spectators_full", reason),
        JoinError::ServerFull(_) => Closing::new(close::SERVER_FULL, "server_full", reason),
        JoinError::Unavailable(_) => Closing::new(close::WORLD_UNAVAILABLE, "world_unavailable", reason),
        JoinError::ShuttingDown => going_away(),
    }
}

/// A read-only connection: no player slot, no player count; only a world running here.
async fn spectate<W: World, T: Transport>(
    socket: &mut Socket<T>,
    ctx: &Ctx<W>,
    claims: gaia_api::token::SpectateClaims,
) -> Option<Closing> {
    let (out, mut frames) = mpsc::channel(ctx.member_queue);
    let member = ctx.rooms.next_member();
    let world = match ctx.rooms.spectate(&claims.world_id, member, socket.encoding, out).await {
        Ok(world) => world,
        Err(e) => return Some(refused(e)),
    };
    tracing::debug!(world = %claims.world_id, "spectator watching");
    ctx.metrics.spectators.inc();
    let end = play(socket, ctx, &world, &claims.world_id, true, &mut frames).await;
    let closing = part(socket, ctx, world, &mut frames, end).await;
    ctx.metrics.spectators.dec();
    closing
}

/// Takes the connection out of its world as `end` says. Leaving drops the member's
/// inputs the world has not applied yet, unanswered; the world queues nothing after it.
/// A connection that broke parks the member instead, for a resume.
async fn part<W: World, T: Transport>(
    socket: &mut Socket<T>,
    ctx: &Ctx<W>,
    world: WorldHandle<W::Action>,
    frames: &mut mpsc::Receiver<Outbound>,
    end: End,
) -> Option<Closing> {
    match end {
        End::Gone => {
            world.park().await;
            None
        }
        End::Closed => {
            drop(world.leave().await);
            echo_close(socket).await;
            None
        }
        End::Close(closing) => goodbye(socket, ctx, frames, world.leave().await, Some(closing)).await,
        End::LetGo(closing) => goodbye(socket, ctx, frames, world.leave().await, closing).await,
    }
}

/// What the first frame asked for, its token checked.
enum First {
    Join(gaia_api::token::JoinClaims),
    Resume(gaia_api::token::ResumeClaims, Vec<u32>),
}

fn going_away() -> Closing {
    Closing::new(close::GOING_AWAY, "shutdown", "server shutting down")
}

/// Before the close frame, what the world still owes the member: the frames left in its
/// queue and the input results it held (see [`crate::farewell`]). So every input the
/// world applied has had its result when the close comes. A client that does not take
/// them within `write_timeout` is dropped without a close.
async fn goodbye<W: World, T: Transport>(
    socket: &mut Socket<T>,
    ctx: &Ctx<W>,
    frames: &mut mpsc::Receiver<Outbound>,
    leftovers: oneshot::Receiver<Leftovers>,
    mut closing: Option<Closing>,
) -> Option<Closing> {
    let owed = async {
        while let Some(next) = frames.recv().await {
            match next {
                Outbound::Frame(frame) => socket.feed(frame).await?,
                Outbound::Close(c) => {
                    closing.get_or_insert(*c);
                }
            }
        }
        // Sent when the world dropped the member, as it closed `frames`.
        let left = leftovers.await.unwrap_or_default();
        if let Some(c) = left.closing {
            closing.get_or_insert(c);
        }
        for frame in left.held {
            ctx.metrics.frames_sent.inc();
            ctx.metrics.bytes_sent.inc_by(frame.len() as u64);
            socket.feed(frame).await?;
        }
        socket.flush().await
    };
    match tokio::time::timeout(ctx.write_timeout, owed).await {
        Ok(Ok(())) => Some(closing.unwrap_or_else(going_away)),
        Ok(Err(_)) => None,
        Err(_) => {
            ctx.metrics.count_close("too_slow");
            tracing::debug!(timeout = ?ctx.write_timeout, "dropping a client that does not read its last frames");
            None
        }
    }
}

/// Sends a frame the connection answers itself (not from the world); false if the
/// client is gone.
async fn send_now<T: Transport>(socket: &mut Socket<T>, metrics: &Metrics, msg: ServerMsg<(), ()>) -> bool {
    let frame = socket.encoding.encode_server(&msg);
    metrics.frames_sent.inc();
    metrics.bytes_sent.inc_by(frame.len() as u64);
    socket.feed(frame.into()).await.is_ok() && socket.flush().await.is_ok()
}

/// How the joined part of a connection ended.
enum End {
    /// The connection closes it: the client broke a rule or went silent.
    Close(Closing),
    /// The world let the member go, with its reason when it queued one.
    LetGo(Option<Closing>),
    /// The client sent its close frame.
    Closed,
    /// Nothing more can be written: the socket failed, or the client stopped reading.
    Gone,
}

/// After the join: world frames out, client inputs in. Ends when the client goes, breaks
/// a rule, or the world lets it go (too slow, replaced, or the server is shutting down:
/// then the world has sent its last tick first).
async fn play<W: World, T: Transport>(
    socket: &mut Socket<T>,
    ctx: &Ctx<W>,
    world: &WorldHandle<W::Action>,
    world_id: &str,
    spectator: bool,
    frames: &mut mpsc::Receiver<Outbound>,
) -> End {
    let quota = governor::Quota::per_second(ctx.frame_rate).allow_burst(ctx.frame_burst);
    let limiter = governor::RateLimiter::direct(quota);
    // Frames over the rate in a row; past the burst size the client is flooding.
    let mut over = 0u32;
    let idle = tokio::time::sleep(ctx.idle_timeout);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            biased;
            frame = frames.recv() => {
                let frame = match frame {
                    Some(Outbound::Frame(frame)) => frame,
                    Some(Outbound::Close(closing)) => return End::LetGo(Some(*closing)),
                    None => return End::LetGo(None),
                };
                // Everything already queued goes out in one write (up to a close, which
                // ends the connection once what came before it is written). A client
                // that does not take it within `write_timeout` is gone as far as we care.
                let write = async {
                    socket.feed(frame).await?;
                    let mut closing = None;
                    while let Ok(next) = frames.try_recv() {
                        match next {
                            Outbound::Frame(frame) => socket.feed(frame).await?,
                            Outbound::Close(c) => {
                                closing = Some(*c);
                                break;
                            }
                        }
                    }
                    socket.flush().await.map(|()| closing)
                };
                // Most writes finish at once; only one that waits gets a timer.
                tokio::pin!(write);
                let written = match futures_util::poll!(&mut write) {
                    std::task::Poll::Ready(done) => Ok(done),
                    std::task::Poll::Pending => tokio::time::timeout(ctx.write_timeout, write).await,
                };
                match written {
                    Ok(Ok(Some(closing))) => return End::LetGo(Some(closing)),
                    Ok(Ok(None)) => {}
                    Ok(Err(_)) => return End::Gone,
                    Err(_) => {
                        ctx.metrics.count_close("too_slow");
                        tracing::debug!(timeout = ?ctx.write_timeout, "dropping a client that does not read");
                        return End::Gone;
                    }
                }
            }
            _ = &mut idle => {
                let reason = format!("nothing received for {:?}", ctx.idle_timeout);
                return End::Close(Closing::new(close::IDLE, "idle", reason));
            }
            inbound = next_frame(socket, &ctx.metrics) => {
                let frame = match inbound {
                    Inbound::Frame(frame) => frame,
                    Inbound::Closed => return End::Closed,
                    Inbound::Gone => return End::Gone,
                    Inbound::Bad(closing) => return End::Close(closing),
                };
                idle.as_mut().reset(tokio::time::Instant::now() + ctx.idle_timeout);
                let msg = match decode::<W::Action>(socket.encoding, &frame) {
                    Ok(msg) => msg,
                    Err(closing) => return End::Close(closing),
                };
                let refused = limiter.check().is_err();
                if refused {
                    over += 1;
                    if over > ctx.frame_burst.get() {
                        let reason = format!("more than {} frames per second", ctx.frame_rate);
                        return End::Close(Closing::new(close::RATE_LIMITED, "rate_limited", reason));
                    }
                } else {
                    over = 0;
                }
                match msg {
                    ClientMsg::Join { .. } | ClientMsg::Resume { .. } => {
                        let reason = format!("already joined world {world_id}");
                        return End::Close(Closing::new(close::ALREADY_JOINED, "already_joined", reason));
                    }
                    // Refused by the connection, never seen by the world: answered at once.
                    ClientMsg::Input { seq, .. } if spectator => {
                        ctx.metrics.count_input_result("spectator");
                        let outcome = InputOutcome::Rejected { reason: SPECTATORS_CANNOT_ACT.into() };
                        if !send_now(socket, &ctx.metrics, ServerMsg::InputResult { seq, tick: 0, outcome }).await {
                            return End::Gone;
                        }
                    }
                    ClientMsg::Input { seq, .. } if refused => {
                        ctx.metrics.count_input_result("rate_limited");
                        let reason = format!("slow down: at most {} inputs per second", ctx.frame_rate);
                        let outcome = InputOutcome::Rejected { reason };
                        if !send_now(socket, &ctx.metrics, ServerMsg::InputResult { seq, tick: 0, outcome }).await {
                            return End::Gone;
                        }
                    }
                    ClientMsg::Input { seq, action } => {
                        // A stopped world cannot take it: the input goes unanswered (a
                        // client that was sent Migrate knows it was not applied), and the
                        // world's last frames and close are still in `frames`.
                        let _ = world.input(seq, action).await;
                    }
                    // Every ping is answered, over the rate too (it still counts toward
                    // the flood limit).
                    ClientMsg::Ping { nonce } => {
                        if !send_now(socket, &ctx.metrics, ServerMsg::Pong { nonce }).await {
                            return End::Gone;
                        }
                    }
                }
            }
        }
    }
}
