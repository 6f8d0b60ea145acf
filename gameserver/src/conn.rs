//! One client connection, from the Join frame to the close.
//!
//! The first frame must be `Join{token}` within `join_timeout`; the token must be signed
//! by the allocator for this server and unexpired. After that the connection forwards
//! inputs to its world and writes the frames the world queues for it. Every way a
//! connection can go wrong ends in a close frame with one of [`close`]'s codes and a
//! reason, and is counted; none of them touches the world beyond a `Leave`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures_util::StreamExt;
use gaia_api::protocol::{ClientMsg, ServerMsg, close, decode_client, encode_server};
use gaia_api::token::{TokenKey, unix_ms};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::room::{JoinError, Rooms, WorldHandle};

/// What every connection of one server shares.
pub struct Ctx {
    pub server_name: String,
    pub key: TokenKey,
    pub rooms: Arc<Rooms>,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    pub join_timeout: Duration,
    pub member_queue: usize,
    /// Players who have joined a world, for the SDK's player count.
    pub players: AtomicU32,
}

/// Why the server ends a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closing {
    pub code: u16,
    pub reason: String,
    /// Metric label.
    pub label: &'static str,
}

impl Closing {
    fn new(code: u16, label: &'static str, reason: impl Into<String>) -> Self {
        Self { code, reason: reason.into(), label }
    }
}

/// Sends `closing` as a close frame and counts it. Reasons are cut to fit a control frame.
pub async fn close_with(socket: &mut WebSocket, metrics: &Metrics, closing: Closing) {
    metrics.count_close(closing.label);
    tracing::debug!(code = closing.code, reason = %closing.reason, "closing connection");
    let mut reason = closing.reason;
    while reason.len() > 120 {
        reason.pop();
    }
    let frame = CloseFrame { code: closing.code, reason: reason.into() };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

/// Runs one connection to its end.
pub async fn serve(mut socket: WebSocket, ctx: Arc<Ctx>) {
    ctx.metrics.connections.inc();
    if let Some(closing) = session(&mut socket, &ctx).await {
        close_with(&mut socket, &ctx.metrics, closing).await;
    }
    ctx.metrics.connections.dec();
}

/// A frame from the client: the payload of a binary message, or why there is none.
enum Inbound {
    Frame(Bytes),
    /// The client closed or the socket failed: nothing more to say to it.
    Gone,
    Bad(Closing),
}

async fn next_frame(socket: &mut WebSocket, metrics: &Metrics) -> Inbound {
    loop {
        match socket.next().await {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Inbound::Gone,
            Some(Ok(Message::Binary(bytes))) => {
                metrics.frames_received.inc();
                metrics.bytes_received.inc_by(bytes.len() as u64);
                return Inbound::Frame(bytes);
            }
            Some(Ok(Message::Text(_))) => {
                return Inbound::Bad(Closing::new(close::MALFORMED, "malformed", "text frames are not spoken here"));
            }
            // tungstenite answers pings itself.
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
        }
    }
}

fn decode(frame: &[u8]) -> Result<ClientMsg, Closing> {
    decode_client(frame).map_err(|e| {
        let label = match e {
            gaia_api::protocol::ProtocolError::TooLarge(_) => "too_large",
            gaia_api::protocol::ProtocolError::Version { .. } => "version",
            gaia_api::protocol::ProtocolError::Malformed(_) => "malformed",
        };
        Closing::new(e.close_code(), label, e.to_string())
    })
}

/// The connection's life; `Some` is how to close it, `None` that the client is gone.
async fn session(socket: &mut WebSocket, ctx: &Ctx) -> Option<Closing> {
    let first = tokio::select! {
        _ = ctx.shutdown.cancelled() => return Some(going_away()),
        first = tokio::time::timeout(ctx.join_timeout, next_frame(socket, &ctx.metrics)) => first,
    };
    let frame = match first {
        Err(_) => return Some(Closing::new(close::IDLE, "idle", format!("no Join within {:?}", ctx.join_timeout))),
        Ok(Inbound::Gone) => return None,
        Ok(Inbound::Bad(closing)) => return Some(closing),
        Ok(Inbound::Frame(frame)) => frame,
    };
    let token = match decode(&frame) {
        Ok(ClientMsg::Join { token }) => token,
        Ok(_) => return Some(Closing::new(close::NOT_JOINED, "not_joined", "the first message must be Join")),
        Err(closing) => return Some(closing),
    };
    let claims = match ctx.key.verify(&token, &ctx.server_name, unix_ms(SystemTime::now())) {
        Ok(claims) => claims,
        Err(e) => return Some(Closing::new(close::BAD_TOKEN, "bad_token", e.to_string())),
    };
    let (out, mut frames) = mpsc::channel(ctx.member_queue);
    let member = ctx.rooms.next_member();
    let world = match ctx.rooms.join(&claims.world_id, member, claims.player_id.clone(), out).await {
        Ok(world) => world,
        Err(e @ JoinError::WorldFull(_)) => return Some(Closing::new(close::WORLD_FULL, "world_full", e.to_string())),
        Err(e @ JoinError::ServerFull(_)) => {
            return Some(Closing::new(close::SERVER_FULL, "server_full", e.to_string()));
        }
        Err(JoinError::ShuttingDown) => return Some(going_away()),
    };
    ctx.players.fetch_add(1, Ordering::Relaxed);
    let closing = play(socket, ctx, &world, &claims.world_id, &mut frames).await;
    ctx.players.fetch_sub(1, Ordering::Relaxed);
    world.leave().await;
    closing
}

fn going_away() -> Closing {
    Closing::new(close::GOING_AWAY, "shutdown", "server shutting down")
}

/// After the join: world frames out, client inputs in.
async fn play(
    socket: &mut WebSocket,
    ctx: &Ctx,
    world: &WorldHandle,
    world_id: &str,
    frames: &mut mpsc::Receiver<Bytes>,
) -> Option<Closing> {
    loop {
        tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => return Some(going_away()),
            frame = frames.recv() => match frame {
                Some(frame) => {
                    if socket.send(Message::Binary(frame)).await.is_err() {
                        return None;
                    }
                }
                None => return Some(Closing::new(close::TOO_SLOW, "too_slow", "fell behind: send queue full")),
            },
            inbound = next_frame(socket, &ctx.metrics) => {
                let frame = match inbound {
                    Inbound::Frame(frame) => frame,
                    Inbound::Gone => return None,
                    Inbound::Bad(closing) => return Some(closing),
                };
                match decode(&frame) {
                    Err(closing) => return Some(closing),
                    Ok(ClientMsg::Join { .. }) => {
                        let reason = format!("already joined world {world_id}");
                        return Some(Closing::new(close::ALREADY_JOINED, "already_joined", reason));
                    }
                    Ok(ClientMsg::Input { seq, action }) => {
                        if !world.input(seq, action).await {
                            return Some(going_away());
                        }
                    }
                    Ok(ClientMsg::Ping { nonce }) => {
                        let pong = encode_server(&ServerMsg::Pong { nonce });
                        if socket.send(Message::Binary(pong.into())).await.is_err() {
                            return None;
                        }
                    }
                }
            }
        }
    }
}
