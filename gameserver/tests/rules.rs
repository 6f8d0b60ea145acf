#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns
//! The protocol's rules for hostile and careless clients, from real WebSocket clients of a
//! standalone server: every input the world applied is answered before any close the
//! server sends (so an input without a result was not applied), a client's close is
//! echoed, one player has one connection per world, the frame limit is exact, sockets
//! that never join cannot lock players out, and a request head that never ends is cut
//! off. One connection's rules without the socket are in `conn.rs`.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gaia_api::protocol::{InputOutcome, MAX_CLIENT_FRAME, PROTOCOL_VERSION, close, encode_client};
use gaia_api::town::{Action, Change, ClientMsg, ServerMsg, Snapshot};
use gaia_gameserver::Config;
use gaia_testkit::tokens;
use gaia_testkit::ws::{self, Received, Ws, send};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, client_async, connect_async};

use common::Server;

const NAME: &str = "gs-rules";

async fn server(config: Config) -> Server {
    Server::quiet(NAME, config).await
}

fn token(world: &str, player: &str) -> String {
    tokens::join(NAME, world, player)
}

async fn recv(ws: &mut Ws) -> Received<Snapshot, Change> {
    ws::recv(ws).await
}

/// Connects from `from` (any 127.x address works on loopback).
async fn connect_from(s: &Server, from: [u8; 4]) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    let stream = socket.connect(s.addr).await.unwrap();
    client_async(&s.url, MaybeTlsStream::Plain(stream)).await.map(|(ws, _)| ws)
}

async fn join_on(mut ws: Ws, world: &str, player: &str) -> (Ws, u32, Snapshot) {
    let welcome = ws::join::<Snapshot, Change>(&mut ws, token(world, player)).await.unwrap();
    (ws, welcome.you, welcome.snapshot)
}

async fn join(s: &Server, world: &str, player: &str) -> (Ws, u32, Snapshot) {
    join_on(ws::connect(&s.url).await, world, player).await
}

fn say(seq: u32, text: &str) -> ClientMsg {
    ClientMsg::Input { seq, action: Action::Say { text: text.into() } }
}

/// What a sender learned before its connection closed: the seqs answered Ok, and the
/// close frame.
async fn answered_until_closed(ws: &mut Ws) -> (BTreeSet<u32>, (u16, String)) {
    let mut ok = BTreeSet::new();
    loop {
        match recv(ws).await {
            Ok(ServerMsg::InputResult { seq, outcome: InputOutcome::Ok, .. }) => {
                ok.insert(seq);
            }
            Ok(_) => {}
            Err(close) => return (ok, close),
        }
    }
}

/// What `id` said, as the watcher (entity `me`) sees it: everything up to a marker the
/// watcher says now, which comes after all that `id` could still have said.
async fn said_by(watcher: &mut Ws, me: u32, id: u32, marker: u32) -> BTreeSet<String> {
    send(watcher, &say(marker, &format!("marker-{marker}"))).await;
    let mut said = BTreeSet::new();
    loop {
        match recv(watcher).await {
            Ok(ServerMsg::Delta { changes, .. }) => {
                for change in changes {
                    match change {
                        Change::Said { id: who, text } if who == id => {
                            said.insert(text);
                        }
                        Change::Said { id: who, text } if who == me && text == format!("marker-{marker}") => {
                            return said;
                        }
                        _ => {}
                    }
                }
            }
            Ok(_) => {}
            Err(close) => panic!("the watcher was closed: {close:?}"),
        }
    }
}

/// Inputs and then a frame that breaks a rule, all in one write: whatever the world
/// applied (the watcher sees it) was answered before the close, and nothing else was.
#[tokio::test]
async fn every_applied_input_is_answered_before_the_close_the_server_sends() {
    let rate = 5;
    let s = server(Config {
        client_frame_rate: rate.try_into().unwrap(),
        client_frame_burst: 10.try_into().unwrap(),
        ..Default::default()
    })
    .await;
    let (mut watcher, me, _) = join(&s, "w1", "watcher").await;
    let mut wrong_version = encode_client(&ClientMsg::Ping { nonce: 1 });
    wrong_version[0] = (PROTOCOL_VERSION + 1) as u8;
    let cases: [(&str, Vec<Message>, u16); 5] = [
        ("malformed", vec![Message::Binary(vec![1, 200].into())], close::MALFORMED),
        ("version", vec![Message::Binary(wrong_version.into())], close::VERSION),
        (
            "joined",
            vec![Message::Binary(encode_client(&ClientMsg::Join { token: token("w1", "x") }).into())],
            close::ALREADY_JOINED,
        ),
        ("large", vec![Message::Binary(vec![1; MAX_CLIENT_FRAME + 1].into())], close::FRAME_TOO_LARGE),
        // 10 inputs pass, 10 are refused, the next one closes.
        ("flood", Vec::new(), close::RATE_LIMITED),
    ];
    for (marker, (case, bad, code)) in (1..).zip(cases) {
        let (mut ws, you, _) = join(&s, "w1", case).await;
        let inputs = if case == "flood" { 30 } else { 2 };
        for seq in 1..=inputs {
            ws.feed(Message::Binary(encode_client(&say(seq, &format!("{case}-{seq}"))).into())).await.unwrap();
        }
        for frame in bad {
            ws.feed(frame).await.unwrap();
        }
        let _ = ws.flush().await;
        let (ok, (got, reason)) = answered_until_closed(&mut ws).await;
        assert_eq!(got, code, "{case}: {reason}");
        let applied = said_by(&mut watcher, me, you, marker).await;
        let answered: BTreeSet<String> = ok.iter().map(|seq| format!("{case}-{seq}")).collect();
        assert_eq!(applied, answered, "{case}: applied inputs and answered inputs differ");
    }
}

/// RFC 6455: a close frame is answered with a close frame, before the join and after.
#[tokio::test]
async fn a_client_close_is_echoed() {
    let s = server(Config::default()).await;
    let fresh = connect_async(&s.url).await.unwrap().0;
    let (joined, _, _) = join(&s, "w1", "leaver").await;
    for (when, mut ws) in [("before the join", fresh), ("after the join", joined)] {
        let frame = CloseFrame { code: CloseCode::Normal, reason: "bye".into() };
        ws.close(Some(frame)).await.unwrap();
        let echo = loop {
            match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap() {
                Some(Ok(Message::Close(frame))) => break frame,
                Some(Ok(_)) => {}
                other => panic!("{when}: no close frame came back: {other:?}"),
            }
        };
        assert_eq!(echo.map(|f| f.code), Some(CloseCode::Normal), "{when}");
    }
}

/// One player, one connection per world: a newer connection takes over, the older one
/// is closed with REPLACED, and the world holds one entity of that name.
#[tokio::test]
async fn the_same_player_on_a_second_connection_takes_over() {
    let s = server(Config::default()).await;
    let (mut first, first_id, _) = join(&s, "w1", "p1").await;
    let (mut second, second_id, snapshot) = join(&s, "w1", "p1").await;
    assert_ne!(first_id, second_id);
    let (code, reason) = loop {
        if let Err(close) = recv(&mut first).await {
            break close;
        }
    };
    assert_eq!(code, close::REPLACED, "{reason}");
    let named: Vec<u32> = snapshot.entities.iter().filter(|e| e.name == "p1").map(|e| e.id).collect();
    assert_eq!(named, [second_id], "{snapshot:?}");
    send(&mut second, &say(1, "still me")).await;
    loop {
        match recv(&mut second).await {
            Ok(ServerMsg::InputResult { seq: 1, outcome, .. }) => break assert_eq!(outcome, InputOutcome::Ok),
            Ok(_) => {}
            Err(close) => panic!("the newer connection was closed: {close:?}"),
        }
    }
}

/// Every frame up to 4096 bytes is read; one byte more is FRAME_TOO_LARGE, with one
/// reason, however large.
#[tokio::test]
async fn the_client_frame_limit_is_exact_to_the_byte() {
    let s = server(Config::default()).await;
    let (mut ws, _, _) = join(&s, "w1", "big").await;
    let frame = |len: usize| {
        let mut text_len = len;
        let mut frame = encode_client(&say(1, &"x".repeat(text_len)));
        while frame.len() > len {
            text_len -= 1;
            frame = encode_client(&say(1, &"x".repeat(text_len)));
        }
        assert_eq!(frame.len(), len);
        frame
    };
    for len in [MAX_CLIENT_FRAME - 20, MAX_CLIENT_FRAME - 12, MAX_CLIENT_FRAME - 1, MAX_CLIENT_FRAME] {
        ws.send(Message::Binary(frame(len).into())).await.unwrap();
        loop {
            match recv(&mut ws).await {
                // Longer than a Say may be: refused by the world, but read.
                Ok(ServerMsg::InputResult { seq: 1, outcome, .. }) => {
                    break assert!(matches!(outcome, InputOutcome::Rejected { .. }), "{len}: {outcome:?}");
                }
                Ok(_) => {}
                Err(close) => panic!("a frame of {len} bytes closed the connection: {close:?}"),
            }
        }
    }
    for len in [MAX_CLIENT_FRAME + 1, 20_000, 100_000] {
        let (mut ws, _, _) = join(&s, "w1", &format!("big-{len}")).await;
        ws.send(Message::Binary(vec![1; len].into())).await.unwrap();
        let reason = format!("frame of {len} bytes exceeds the limit of {MAX_CLIENT_FRAME} bytes");
        let closed = loop {
            if let Err(close) = recv(&mut ws).await {
                break close;
            }
        };
        assert_eq!(closed, (close::FRAME_TOO_LARGE, reason));
    }
    // Before the join too: a Join of exactly the limit is read (its token is checked).
    let (mut ws, _) = connect_async(&s.url).await.unwrap();
    let mut token_len = MAX_CLIENT_FRAME;
    let join = loop {
        let join = encode_client(&ClientMsg::Join { token: "t".repeat(token_len) });
        if join.len() <= MAX_CLIENT_FRAME {
            break join;
        }
        token_len -= 1;
    };
    assert_eq!(join.len(), MAX_CLIENT_FRAME);
    ws.send(Message::Binary(join.into())).await.unwrap();
    assert_eq!(recv(&mut ws).await.unwrap_err().0, close::BAD_TOKEN);
}

/// Sockets that upgrade and never join take places of their own, a few per address, not
/// player slots: the players still get in.
#[tokio::test]
async fn sockets_that_never_join_cannot_lock_players_out() {
    let s = server(Config {
        player_capacity: 2,
        unjoined_capacity: 4,
        unjoined_per_address: 2,
        join_timeout: Duration::from_secs(30),
        ..Default::default()
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(connect_from(&s, [127, 0, 0, 2]).await.unwrap());
    }
    // A third from the same address is refused before the upgrade.
    match connect_from(&s, [127, 0, 0, 2]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            assert_eq!(response.headers()["retry-after"], "1");
        }
        other => panic!("expected 503, got {other:?}"),
    }
    // Players get in; their joined connections no longer count as unjoined.
    let (_a, _, _) = join_on(connect_from(&s, [127, 0, 0, 1]).await.unwrap(), "w1", "a").await;
    let (_b, _, _) = join_on(connect_from(&s, [127, 0, 0, 1]).await.unwrap(), "w1", "b").await;
    // The player slots are taken now, by players.
    let mut third = connect_from(&s, [127, 0, 0, 3]).await.unwrap();
    send(&mut third, &ClientMsg::Join { token: token("w1", "c") }).await;
    assert_eq!(recv(&mut third).await.unwrap_err().0, close::SERVER_FULL);
    // A place given back is free again.
    drop(idle.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(connect_from(&s, [127, 0, 0, 2]).await.is_ok());
}

/// Half a request head, then nothing: closed at the header timeout (slowloris).
#[tokio::test]
async fn a_request_head_that_never_ends_is_cut_off() {
    let s = server(Config::default()).await;
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    stream.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(gaia_serve::HEADER_TIMEOUT * 2, stream.read_to_end(&mut answer)).await.unwrap().unwrap();
    assert!(answer.is_empty(), "{answer:?}");
    assert!(started.elapsed() >= gaia_serve::HEADER_TIMEOUT - Duration::from_secs(1));
}
