#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns
//! The JSON encoding (`gaia.v1.json`), from real WebSocket clients of a standalone server:
//! negotiated with `Sec-WebSocket-Protocol`, spoken in text frames, with the same world and
//! the same rules as bincode, and members of both encodings in one world.

mod common;

use futures_util::SinkExt;
use gaia_api::protocol::{Encoding, close};
use gaia_api::town::{Change, ClientMsg, ServerMsg};
use gaia_gameserver::Config;
use gaia_testkit::tokens;
use gaia_testkit::ws::{self, Closed, SILENCE, Ws, send};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{connect_async, tungstenite};
use tokio_util::sync::DropGuard;

use common::Server;

const NAME: &str = "gs-json";

async fn server(config: Config) -> (String, DropGuard) {
    let s = Server::quiet(NAME, config).await;
    (s.url, s.shutdown.drop_guard())
}

fn token(world: &str, player: &str) -> String {
    tokens::join(NAME, world, player)
}

/// Connects asking for `protocols`; the socket and the subprotocol the server chose.
async fn connect(url: &str, protocols: &str) -> Result<(Ws, Option<String>), tungstenite::Error> {
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert("sec-websocket-protocol", protocols.parse().unwrap());
    let (ws, response) = connect_async(request).await?;
    let chosen = response.headers().get("sec-websocket-protocol").map(|v| v.to_str().unwrap().to_string());
    Ok((ws, chosen))
}

async fn send_json(ws: &mut Ws, msg: Value) {
    ws.send(Message::text(msg.to_string())).await.unwrap();
}

/// The next JSON message, or the close frame's (code, reason) as an Err.
async fn recv_json(ws: &mut Ws) -> Result<Value, Closed> {
    match ws::frame(ws, SILENCE).await? {
        Message::Text(text) => Ok(serde_json::from_str(&text).unwrap()),
        _ => panic!("a binary frame on a JSON connection"),
    }
}

/// Reads until a message of `kind` (its `type`); panics on a close.
async fn until(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let msg = recv_json(ws).await.unwrap_or_else(|close| panic!("closed with {close:?} waiting for {kind}"));
        if msg["type"] == kind {
            return msg;
        }
    }
}

async fn join_json(url: &str, world: &str, player: &str) -> (Ws, Value) {
    let (mut ws, chosen) = connect(url, "gaia.v1.json").await.unwrap();
    assert_eq!(chosen.as_deref(), Some("gaia.v1.json"));
    send_json(&mut ws, json!({"type": "join", "token": token(world, player)})).await;
    let welcome = until(&mut ws, "welcome").await;
    (ws, welcome)
}

async fn closed(ws: &mut Ws) -> (u16, String) {
    loop {
        if let Err(close) = recv_json(ws).await {
            return close;
        }
    }
}

#[tokio::test]
async fn a_json_member_plays_beside_a_bincode_member() {
    let (url, _stop) = server(Config::default()).await;
    let (mut json_ws, welcome) = join_json(&url, "w1", "js").await;
    assert_eq!(welcome["worldId"], "w1");
    let you = welcome["you"].as_u64().unwrap() as u32;
    let me = welcome["snapshot"]["entities"].as_array().unwrap().iter().find(|e| e["id"] == you).unwrap().clone();
    assert_eq!((me["kind"].as_str(), me["name"].as_str()), (Some("player"), Some("js")));

    // A bincode member, named or not: the default encoding.
    let (mut rust, chosen) = connect(&url, "gaia.v1.bincode").await.unwrap();
    assert_eq!(chosen.as_deref(), Some("gaia.v1.bincode"));
    send(&mut rust, &ClientMsg::Join { token: token("w1", "rs") }).await;
    assert!(matches!(ws::recv(&mut rust).await, Ok(ServerMsg::Welcome { .. })));

    send_json(&mut json_ws, json!({"type": "input", "seq": 1, "action": {"type": "say", "text": "hello from json"}}))
        .await;
    let result = until(&mut json_ws, "inputResult").await;
    assert_eq!((result["seq"].as_u64(), &result["outcome"]), (Some(1), &json!({"type": "ok"})), "{result}");
    // The bincode member sees it.
    let heard = loop {
        match ws::recv(&mut rust).await.unwrap() {
            ServerMsg::Delta { changes, .. } => {
                if let Some(text) = changes.into_iter().find_map(|c| match c {
                    Change::Said { id, text } if id == you => Some(text),
                    _ => None,
                }) {
                    break text;
                }
            }
            _ => continue,
        }
    };
    assert_eq!(heard, "hello from json");
    // And the JSON member sees deltas, in JSON, with a server time.
    let delta = until(&mut json_ws, "delta").await;
    assert!(delta["serverUs"].as_u64().unwrap() > 0 && delta["changes"].is_array(), "{delta}");
    send_json(&mut json_ws, json!({"type": "ping", "nonce": 42})).await;
    assert_eq!(until(&mut json_ws, "pong").await, json!({"type": "pong", "nonce": 42}));
}

#[tokio::test]
async fn the_first_subprotocol_spoken_is_chosen_and_unknown_ones_are_refused() {
    let (url, _stop) = server(Config::default()).await;
    let (_, chosen) = connect(&url, "chat, gaia.v1.json, gaia.v1.bincode").await.unwrap();
    assert_eq!(chosen.as_deref(), Some("gaia.v1.json"));
    let (_, chosen) =
        connect_async(&url).await.map(|(ws, r)| (ws, r.headers().get("sec-websocket-protocol").cloned())).unwrap();
    assert_eq!(chosen, None, "no subprotocol asked, none answered: bincode");
    match connect(&url, "gaia.v2.json, chat").await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400);
            let body = String::from_utf8(response.body().clone().unwrap_or_default()).unwrap();
            assert!(body.contains("gaia.v2.json") && body.contains("gaia.v1.json"), "{body}");
        }
        other => panic!("expected 400, got {other:?}"),
    }
}

/// Each bad-input rule of the binary protocol, over JSON, with its close code.
#[tokio::test]
async fn bad_json_frames_close_with_their_own_codes() {
    let (url, _stop) = server(Config {
        client_frame_rate: 5.try_into().unwrap(),
        client_frame_burst: 10.try_into().unwrap(),
        ..Default::default()
    })
    .await;
    let too_big = json!({"type": "input", "seq": 1, "action": {"type": "say", "text": "x".repeat(5000)}}).to_string();
    let cases: Vec<(Message, u16, &str)> = vec![
        (Message::text("not json"), close::MALFORMED, "malformed frame: expected ident"),
        (Message::text(r#"{"type":"fly"}"#), close::MALFORMED, "malformed frame: unknown variant `fly`"),
        (Message::text(r#"{"type":"ping","nonce":1,"x":2}"#), close::MALFORMED, "malformed frame: unknown field `x`"),
        (
            Message::Binary(Encoding::Bincode.encode_client(&ClientMsg::Ping { nonce: 1 }).into()),
            close::MALFORMED,
            "binary frames are not spoken on gaia.v1.json",
        ),
        (Message::text(too_big.clone()), close::FRAME_TOO_LARGE, "frame of"),
        (Message::text(r#"{"type":"join","token":"t"}"#), close::ALREADY_JOINED, "already joined world w1"),
    ];
    for (i, (frame, code, reason)) in cases.into_iter().enumerate() {
        let (mut ws, _) = join_json(&url, "w1", &format!("p{i}")).await;
        ws.send(frame).await.unwrap();
        let (got, why) = closed(&mut ws).await;
        assert_eq!(got, code, "case {i}: {why}");
        assert!(why.starts_with(reason), "case {i}: {why}");
    }
    // The frame limit counts the text's bytes, exactly as for bincode.
    let (mut ws, _) = join_json(&url, "w1", "big").await;
    ws.send(Message::text(too_big.clone())).await.unwrap();
    assert_eq!(closed(&mut ws).await.1, format!("frame of {} bytes exceeds the limit of 4096 bytes", too_big.len()));
    // A flood.
    let (mut ws, _) = join_json(&url, "w1", "flood").await;
    for seq in 1..=40 {
        let input = json!({"type": "input", "seq": seq, "action": {"type": "move", "dx": 1, "dy": 0}});
        if ws.feed(Message::text(input.to_string())).await.is_err() {
            break;
        }
    }
    let _ = ws.flush().await;
    assert_eq!(closed(&mut ws).await.0, close::RATE_LIMITED);
    // Before the join: a frame that is not Join.
    let (mut ws, _) = connect(&url, "gaia.v1.json").await.unwrap();
    send_json(&mut ws, json!({"type": "ping", "nonce": 1})).await;
    assert_eq!(closed(&mut ws).await.0, close::NOT_JOINED);
}
