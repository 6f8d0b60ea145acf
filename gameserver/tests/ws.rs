//! A game server on an ephemeral port (standalone: no control plane), driven by real
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns
//! WebSocket clients.

mod common;

use std::time::SystemTime;

use gaia_api::protocol::{InputOutcome, close};
use gaia_api::token::{JoinClaims, unix_ms};
use gaia_api::town::{Action, Change, ClientMsg, ServerMsg, Snapshot};
use gaia_gameserver::Config;
use gaia_testkit::tokens;
use gaia_testkit::ws::{self, Received, Ws, send};
use tokio_tungstenite::connect_async;
use tokio_util::sync::CancellationToken;

use common::Server;

/// The next message of the reference world, or the close frame as an Err.
async fn recv(ws: &mut Ws) -> Received<Snapshot, Change> {
    ws::recv(ws).await
}

async fn server(config: Config) -> Server {
    Server::start("gs-1", config).await
}

fn token(world: &str, player: &str, server: &str, ttl_ms: i64) -> String {
    let now = unix_ms(SystemTime::now()) as i64;
    let expires_at_ms = (now + ttl_ms).max(0) as u64;
    tokens::key().sign(&JoinClaims { expires_at_ms, ..tokens::join_claims(server, world, player) })
}

async fn join(url: &str, world: &str, player: &str) -> (Ws, u32, Snapshot) {
    let mut ws = ws::connect(url).await;
    let welcome = ws::join::<Snapshot, Change>(&mut ws, token(world, player, "gs-1", 30_000)).await.unwrap();
    assert_eq!(welcome.world_id, world);
    (ws, welcome.you, welcome.snapshot)
}

/// Reads until a close frame arrives; returns its code and reason.
async fn closed(ws: &mut Ws) -> (u16, String) {
    ws::closed::<Snapshot, Change>(ws).await
}

/// A legal one-step move from the entity's position in `snapshot`.
fn legal_move(snapshot: &Snapshot, you: u32) -> (i8, i8) {
    let me = snapshot.entities.iter().find(|e| e.id == you).unwrap();
    snapshot.open_steps(me.x.into(), me.y.into())[0]
}

#[tokio::test]
async fn members_see_each_others_moves_and_inputs_get_results() {
    let s = server(Config { bots_per_world: 0, ..Default::default() }).await;
    let (mut a, a_id, snapshot) = join(&s.url, "w1", "alice").await;
    let (mut b, _, _) = join(&s.url, "w1", "bob").await;
    let (dx, dy) = legal_move(&snapshot, a_id);
    send(&mut a, &ClientMsg::Input { seq: 1, action: Action::Move { dx, dy } }).await;
    send(&mut a, &ClientMsg::Input { seq: 2, action: Action::Move { dx: 5, dy: 0 } }).await;
    send(&mut a, &ClientMsg::Ping { nonce: 9 }).await;
    let mut results = Vec::new();
    let mut pong = false;
    while results.len() < 2 || !pong {
        match recv(&mut a).await.unwrap() {
            ServerMsg::InputResult { seq, outcome, .. } => results.push((seq, outcome)),
            ServerMsg::Pong { nonce } => pong = nonce == 9,
            _ => {}
        }
    }
    assert_eq!(results[0], (1, InputOutcome::Ok));
    assert!(matches!(&results[1], (2, InputOutcome::Rejected { reason }) if reason.contains("invalid step")));
    // Bob sees Alice's move in a delta.
    loop {
        if let ServerMsg::Delta { changes, .. } = recv(&mut b).await.unwrap()
            && changes.iter().any(|c| matches!(c, Change::Moved { id, .. } if *id == a_id))
        {
            break;
        }
    }
    s.shutdown.cancel();
    assert_eq!(closed(&mut b).await.0, close::GOING_AWAY);
    s.done.await.unwrap().unwrap();
}

#[tokio::test]
async fn full_worlds_and_full_servers_refuse_joins() {
    let s = server(Config { world_player_capacity: 1, world_capacity: 1, ..Default::default() }).await;
    let (_alice, _, _) = join(&s.url, "w1", "alice").await;
    let (mut ws, _) = connect_async(&s.url).await.unwrap();
    send(&mut ws, &ClientMsg::Join { token: token("w1", "bob", "gs-1", 30_000) }).await;
    assert_eq!(closed(&mut ws).await, (close::WORLD_FULL, "world is full (1 players)".into()));
    let (mut ws, _) = connect_async(&s.url).await.unwrap();
    send(&mut ws, &ClientMsg::Join { token: token("w2", "bob", "gs-1", 30_000) }).await;
    assert_eq!(closed(&mut ws).await.0, close::SERVER_FULL);
}

#[tokio::test]
async fn config_errors_are_clear() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = gaia_gameserver::run(Config::default(), listener, CancellationToken::new()).await.unwrap_err();
    assert_eq!(err.to_string(), "invalid configuration: GAIA_JOIN_SECRET must not be empty");
}
