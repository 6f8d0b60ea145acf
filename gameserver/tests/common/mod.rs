//! What the WebSocket tests share: sending a client message, receiving a server one.
#![allow(dead_code)] // each test file uses its own share of them

use std::time::Duration;

use bincode::{Decode, Encode};
use futures_util::{SinkExt, StreamExt};
use gaia_api::protocol::{ClientMsg, ServerMsg, decode_server, encode_client};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A server message, or the close frame's (code, reason) as an Err.
pub type Received<V, C> = Result<ServerMsg<V, C>, (u16, String)>;

pub async fn send<A: Encode>(ws: &mut Ws, msg: &ClientMsg<A>) {
    ws.send(Message::Binary(encode_client(msg).into())).await.unwrap();
}

/// The next server message, or the close frame's (code, reason) as an Err.
pub async fn recv<V: Decode<()>, C: Decode<()>>(ws: &mut Ws) -> Received<V, C> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("server silent for 5 s");
        match msg {
            Some(Ok(Message::Binary(b))) => return Ok(decode_server(&b).unwrap()),
            Some(Ok(Message::Close(Some(frame)))) => return Err((frame.code.into(), frame.reason.to_string())),
            Some(Ok(Message::Close(None))) | None => return Err((0, "closed without a frame".into())),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err((0, e.to_string())),
        }
    }
}

/// The join secret of [`standalone`] servers.
pub const SECRET: &str = "s3cret";

/// A standalone game server (no control plane) named `name`, on an ephemeral port, with
/// no bots: its address, its WebSocket URL, and the guard that stops it when dropped.
pub async fn standalone(
    name: &str,
    config: gaia_gameserver::Config,
) -> (std::net::SocketAddr, String, tokio_util::sync::DropGuard) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let config = gaia_gameserver::Config { name: name.into(), join_secret: SECRET.into(), bots_per_world: 0, ..config };
    tokio::spawn(gaia_gameserver::run(config, listener, shutdown.clone()));
    (addr, gaia_gameserver::address(addr, None), shutdown.drop_guard())
}

/// A join token for `player` in `world` on server `server`, valid for a minute.
pub fn join_token(server: &str, world: &str, player: &str) -> String {
    gaia_api::token::TokenKey::new(SECRET).sign(&gaia_api::token::JoinClaims {
        world_id: world.into(),
        server: server.into(),
        player_id: player.into(),
        expires_at_ms: gaia_api::token::unix_ms(std::time::SystemTime::now()) + 60_000,
        epoch: 1,
    })
}
