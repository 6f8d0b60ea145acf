#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns
//! Spectators, seen from real WebSocket clients of a standalone server: a connection that
//! joins with a spectate token watches a running world (its Welcome and deltas) but is not
//! in it. Its inputs are refused at once, it takes no player slot and counts toward no
//! player limit, the players never see it, it does not keep an empty world alive, and a
//! world takes only so many.

mod common;

use std::time::Duration;

use gaia_api::protocol::{InputOutcome, SPECTATORS_CANNOT_ACT, close};
use gaia_api::token::TokenKey;
use gaia_api::town::{Action, Change, ClientMsg, ServerMsg, Snapshot};
use gaia_gameserver::Config;
use gaia_testkit::tokens::{self, SECRET};
use gaia_testkit::ws::{self, Closed, Received, Ws, send};

use common::Server;

const NAME: &str = "gs-spectate";

async fn recv(ws: &mut Ws) -> Received<Snapshot, Change> {
    ws::recv(ws).await
}

fn spectate_token(key: &str, server: &str, world: &str) -> String {
    TokenKey::new(key).sign_spectate(&tokens::spectate_claims(server, world))
}

/// Connects and sends `Join{token}`: the Welcome (world id, you, snapshot, resume token),
/// or the close.
async fn enter(url: &str, token: String) -> Result<(Ws, u32, Snapshot, String), Closed> {
    let mut ws = ws::connect(url).await;
    let welcome = ws::join::<Snapshot, Change>(&mut ws, token).await?;
    Ok((ws, welcome.you, welcome.snapshot, welcome.resume))
}

async fn play(url: &str, world: &str, player: &str) -> (Ws, u32, Snapshot) {
    let (ws, you, snapshot, _) = enter(url, tokens::join(NAME, world, player)).await.unwrap();
    (ws, you, snapshot)
}

async fn watch(url: &str, world: &str) -> (Ws, Snapshot) {
    let (ws, you, snapshot, resume) = enter(url, spectate_token(SECRET, NAME, world)).await.unwrap();
    assert_eq!(you, 0, "a spectator controls no entity");
    assert_eq!(resume, "", "a spectator has nothing to resume");
    (ws, snapshot)
}

async fn closed(ws: &mut Ws) -> (u16, String) {
    ws::closed::<Snapshot, Change>(ws).await
}

/// Messages until `until` says stop, with a deadline.
async fn recv_until(ws: &mut Ws, mut until: impl FnMut(&ServerMsg) -> bool) -> Vec<ServerMsg> {
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let msg = recv(ws).await.unwrap();
            let done = until(&msg);
            seen.push(msg);
            if done {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("gave up after {seen:?}"));
    seen
}

fn step(snapshot: &Snapshot, you: u32) -> (i8, i8) {
    let me = snapshot.entities.iter().find(|e| e.id == you).unwrap();
    snapshot.open_steps(me.x.into(), me.y.into())[0]
}

/// A world of one player, on a server of one player slot: the spectator still gets in,
/// sees the player move, has its inputs refused without the world seeing them, and the
/// player sees nothing of it. When the player leaves, another takes the one place while
/// the spectator watches.
#[tokio::test]
async fn a_spectator_watches_but_cannot_act_and_is_no_player() {
    let config = Config { player_capacity: 1, world_player_capacity: 1, ..Config::default() };
    let s = Server::quiet(NAME, config).await;
    let (mut alice, a, _) = play(&s.url, "w", "alice").await;

    let (mut eve, snapshot) = watch(&s.url, "w").await;
    let ids: Vec<u32> = snapshot.entities.iter().map(|e| e.id).collect();
    assert_eq!(ids, [a], "the spectator sees the world as it is, and is not in it");
    assert_eq!(s.metric("gaia_gameserver_spectators").await, 1.0);

    // Refused at once (tick 0), by the connection.
    send(&mut eve, &ClientMsg::Input { seq: 1, action: Action::Say { text: "let me in".into() } }).await;
    let seen = recv_until(&mut eve, |m| matches!(m, ServerMsg::InputResult { .. })).await;
    let rejected = InputOutcome::Rejected { reason: SPECTATORS_CANNOT_ACT.into() };
    assert_eq!(seen.last(), Some(&ServerMsg::InputResult { seq: 1, tick: 0, outcome: rejected }));
    assert_eq!(s.metric(r#"gaia_gameserver_inputs_total{result="spectator"}"#).await, 1.0);

    // Alice moves; the spectator sees it, and Alice saw no one join nor anyone say a word.
    let (dx, dy) = step(&snapshot, a);
    send(&mut alice, &ClientMsg::Input { seq: 1, action: Action::Move { dx, dy } }).await;
    let moved = |m: &ServerMsg| match m {
        ServerMsg::Delta { changes, .. } => changes.iter().any(|c| matches!(c, Change::Moved { id, .. } if *id == a)),
        _ => false,
    };
    recv_until(&mut eve, moved).await;
    let alice_saw = recv_until(&mut alice, moved).await;
    let strangers = alice_saw.iter().flat_map(|m| match m {
        ServerMsg::Delta { changes, .. } => changes.iter().filter(|c| !matches!(c, Change::Moved { .. })).collect(),
        _ => Vec::new(),
    });
    assert_eq!(strangers.count(), 0, "{alice_saw:?}");

    // The server's one player slot is Alice's, not the spectator's; when she leaves, Bob
    // takes it and the world's one place.
    let (code, _) = enter(&s.url, tokens::join(NAME, "w", "bob")).await.err().unwrap();
    assert_eq!(code, close::SERVER_FULL);
    alice.close(None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_bob, b, snapshot) = play(&s.url, "w", "bob").await;
    let ids: Vec<u32> = snapshot.entities.iter().map(|e| e.id).collect();
    assert_eq!(ids, [b]);
    let joined = |m: &ServerMsg| match m {
        ServerMsg::Delta { changes, .. } => {
            changes.iter().any(|c| matches!(c, Change::Joined(entity) if entity.id == b))
        }
        _ => false,
    };
    recv_until(&mut eve, joined).await;
}

/// Only a running world can be watched, and spectators alone do not keep it running:
/// when its last player leaves, it ends after its grace and lets them go (1001).
#[tokio::test]
async fn spectators_watch_only_running_worlds_and_do_not_keep_them_alive() {
    let config = Config { empty_world_grace: Duration::from_millis(300), ..Config::default() };
    let s = Server::quiet(NAME, config).await;
    let (code, reason) = enter(&s.url, spectate_token(SECRET, NAME, "nowhere")).await.err().unwrap();
    assert_eq!(code, close::WORLD_UNAVAILABLE, "{reason}");
    assert_eq!(s.metric("gaia_gameserver_worlds").await, 0.0, "watching does not start a world");

    let (mut alice, ..) = play(&s.url, "w", "alice").await;
    let (mut eve, _) = watch(&s.url, "w").await;
    alice.close(None).await.unwrap();
    let (code, _) = tokio::time::timeout(Duration::from_secs(5), closed(&mut eve)).await.unwrap();
    assert_eq!(code, close::GOING_AWAY);
    assert_eq!(s.metric("gaia_gameserver_worlds").await, 0.0);
    assert_eq!(s.metric("gaia_gameserver_spectators").await, 0.0);
}

/// A world takes `world_spectator_capacity` spectators; tokens of another kind, key or
/// server are refused.
#[tokio::test]
async fn spectators_are_capped_per_world_and_their_tokens_checked() {
    let config = Config { world_spectator_capacity: 1, ..Config::default() };
    let s = Server::quiet(NAME, config).await;
    let (_alice, ..) = play(&s.url, "w", "alice").await;
    let (_eve, _) = watch(&s.url, "w").await;
    let (code, reason) = enter(&s.url, spectate_token(SECRET, NAME, "w")).await.err().unwrap();
    assert_eq!((code, reason.as_str()), (close::WORLD_FULL, "world has its maximum of 1 spectators"));

    let (code, reason) = enter(&s.url, spectate_token("not-the-secret", NAME, "w")).await.err().unwrap();
    assert_eq!((code, reason.as_str()), (close::BAD_TOKEN, "join token signature does not match"));
    let (code, reason) = enter(&s.url, spectate_token(SECRET, "gs-other", "w")).await.err().unwrap();
    assert_eq!((code, reason.as_str()), (close::BAD_TOKEN, "join token is for another server"));
}
