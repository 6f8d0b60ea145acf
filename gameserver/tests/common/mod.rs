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
