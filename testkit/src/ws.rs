//! A test's WebSocket client of a game server: the protocol of `gaia_api::protocol` over
//! a real socket, with every wait bounded, so a silent server fails the test instead of
//! hanging it.
//!
//! Start with [`join`]: on a [`connect`]ed socket, it sends `Join` and reads until the
//! [`Welcome`]. Then [`send`] and [`recv`] client and server messages (bincode, the
//! default encoding); [`closed`] reads to the close frame. A test of the JSON encoding
//! reads its text frames with [`frame`], which reads either encoding's frames and the close.
//!
//! A close is an `Err` of its code and reason ([`Closed`]), not a panic: what a server
//! refuses, and why, is what many tests check.

use std::fmt::Debug;
use std::time::Duration;

use bincode::{Decode, Encode};
use futures_util::{SinkExt, StreamExt};
use gaia_api::activity::WorldMessage;
use gaia_api::protocol::{ClientMsg, ServerMsg, decode_server, encode_client};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A close frame's code and reason; code 0 when the connection ended without one (the
/// reason then says how).
pub type Closed = (u16, String);

/// A server message, or the close.
pub type Received<V, C> = Result<ServerMsg<V, C>, Closed>;

/// How long [`recv`] waits for the server's next frame before it fails the test.
pub const SILENCE: Duration = Duration::from_secs(5);

/// A WebSocket connection to `url` (a game server's `ws://…/ws`).
pub async fn connect(url: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    ws
}

/// Sends `msg` in a binary frame (bincode). `A` is the world's action type; any will do
/// for a message without one (`ClientMsg::<()>::Ping`).
pub async fn send<A: Encode>(ws: &mut Ws, msg: &ClientMsg<A>) {
    ws.send(Message::Binary(encode_client(msg).into())).await.expect("send a client message");
}

/// The next data frame, binary (bincode) or text (JSON), passing over pings and pongs;
/// the close as an Err. Panics when the server sends nothing `within`.
pub async fn frame(ws: &mut Ws, within: Duration) -> Result<Message, Closed> {
    loop {
        let next =
            tokio::time::timeout(within, ws.next()).await.unwrap_or_else(|_| panic!("server silent for {within:?}"));
        match next {
            Some(Ok(data @ (Message::Binary(_) | Message::Text(_)))) => return Ok(data),
            Some(Ok(Message::Close(Some(frame)))) => return Err((frame.code.into(), frame.reason.to_string())),
            Some(Ok(Message::Close(None))) | None => return Err((0, "closed without a frame".into())),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err((0, e.to_string())),
        }
    }
}

/// The next server message (bincode), or the close; waits up to [`SILENCE`].
pub async fn recv<V: Decode<()>, C: Decode<()>>(ws: &mut Ws) -> Received<V, C> {
    recv_within(ws, SILENCE).await
}

/// [`recv`], waiting up to `within` (for servers under a heavier load).
pub async fn recv_within<V: Decode<()>, C: Decode<()>>(ws: &mut Ws, within: Duration) -> Received<V, C> {
    match frame(ws, within).await? {
        Message::Binary(bytes) => Ok(decode_server(&bytes).expect("a server message")),
        other => panic!("a text frame on a bincode connection: {other:?}"),
    }
}

/// Reads until the close; its code and reason.
pub async fn closed<V: Decode<()>, C: Decode<()>>(ws: &mut Ws) -> Closed {
    loop {
        if let Err(close) = recv::<V, C>(ws).await {
            return close;
        }
    }
}

/// What a server answers a `Join` (or a `Resume`) with: `ServerMsg::Welcome`'s fields.
#[derive(Debug)]
pub struct Welcome<V> {
    pub world_id: String,
    /// The entity the connection controls; 0 for a spectator.
    pub you: u32,
    pub tick: u64,
    pub snapshot: V,
    /// The token to resume with; empty for a spectator.
    pub resume: String,
    /// The last lines said in the world.
    pub messages: Vec<WorldMessage>,
}

/// Sends `Join` with `token` and reads until the [`Welcome`]; the close if the server
/// refused.
pub async fn join<V, C>(ws: &mut Ws, token: impl Into<String>) -> Result<Welcome<V>, Closed>
where
    V: Decode<()> + Debug,
    C: Decode<()> + Debug,
{
    send(ws, &ClientMsg::<()>::Join { token: token.into() }).await;
    welcome::<V, C>(ws, SILENCE).await
}

/// Reads until the [`Welcome`] of the `Join` or `Resume` just sent, each frame within
/// `within`; the close if the server refused. Before a Welcome the protocol allows only
/// a `Pong` and a spectator's refused inputs (`InputResult`), which are passed over;
/// anything else fails the test.
pub async fn welcome<V, C>(ws: &mut Ws, within: Duration) -> Result<Welcome<V>, Closed>
where
    V: Decode<()> + Debug,
    C: Decode<()> + Debug,
{
    loop {
        match recv_within::<V, C>(ws, within).await? {
            ServerMsg::Welcome { world_id, you, tick, snapshot, resume, messages } => {
                return Ok(Welcome { world_id, you, tick, snapshot, resume, messages });
            }
            ServerMsg::Pong { .. } | ServerMsg::InputResult { .. } => {}
            other => panic!("expected Welcome, got {other:?}"),
        }
    }
}
