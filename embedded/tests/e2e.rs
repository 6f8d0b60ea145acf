//! The whole path in one process: allocator + registry + two game servers (one per
//! region, talking to the allocator through the SDK) + 50 bot clients over real sockets.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use gaia_api::allocation::AllocationResponse;
use gaia_api::gameserver::{GameServer, GameServerState};
use gaia_api::protocol::InputOutcome;
use gaia_api::token::{JoinClaims, TokenKey};
use gaia_api::town::{Action, Change, ClientMsg, ServerMsg, Snapshot};
use gaia_registry::{MemoryRegistry, Registry};
use gaia_testkit::tokens::{self, SECRET};
use gaia_testkit::ws::{self, Received, Ws, send};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// How long anything may take: the servers' start, a reply to one of 50 clients.
const WAIT: Duration = Duration::from_secs(10);

struct Fleet {
    url: String,
    registry: Arc<dyn Registry>,
    shutdown: CancellationToken,
    servers: Vec<tokio::task::JoinHandle<Result<(), gaia_gameserver::Error>>>,
}

/// The allocator on an ephemeral port, and one game server in each of two regions.
async fn fleet() -> Fleet {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new(Default::default()));
    let mut prom = prometheus_client::registry::Registry::default();
    let metrics = gaia_allocator::Metrics::new(&mut prom);
    let config = gaia_allocator::Config { join_secret: SECRET.into(), ..Default::default() };
    let state = gaia_allocator::AppState::new(&config, Arc::clone(&registry), metrics, Arc::new(prom));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(gaia_allocator::run(listener, state, shutdown.child_token()));

    let mut servers = Vec::new();
    for (name, region) in [("gs-eu", "eu-west"), ("gs-us", "us-east")] {
        let config = gaia_gameserver::Config {
            name: name.into(),
            region: region.into(),
            sdk_url: Some(url.clone()),
            join_secret: SECRET.into(),
            world_capacity: 5,
            ..Default::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        servers.push(tokio::spawn(gaia_gameserver::run(config, listener, shutdown.child_token())));
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let list = registry.list(Some("town")).await.unwrap();
        if list.len() == 2 && list.iter().all(|s| s.state == GameServerState::Ready) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "servers not Ready: {list:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Fleet { url, registry, shutdown, servers }
}

async fn allocate(http: &reqwest::Client, url: &str, body: serde_json::Value) -> AllocationResponse {
    let resp = http.post(format!("{url}/v1/allocations")).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{body}");
    resp.json().await.unwrap()
}

async fn recv(ws: &mut Ws) -> Received<Snapshot, Change> {
    ws::recv_within(ws, WAIT).await
}

struct Bot {
    ws: Ws,
    world_id: String,
    you: u32,
    snapshot: Snapshot,
}

async fn join(alloc: &AllocationResponse) -> Bot {
    let mut ws = ws::connect(&alloc.address).await;
    send(&mut ws, &ClientMsg::Join { token: alloc.join_token.clone() }).await;
    let welcome = ws::welcome::<Snapshot, Change>(&mut ws, WAIT).await.unwrap();
    Bot { ws, world_id: welcome.world_id, you: welcome.you, snapshot: welcome.snapshot }
}

fn legal_move(snapshot: &Snapshot, you: u32) -> (i8, i8) {
    let me = snapshot.entities.iter().find(|e| e.id == you).unwrap();
    snapshot.open_steps(me.x.into(), me.y.into())[0]
}

/// 50 bots in 5 worlds over 2 servers: every bot lands in the world it was allocated,
/// and every other member of that world sees its move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_bots_join_their_worlds_and_see_each_others_moves() {
    let fleet = fleet().await;
    let http = reqwest::Client::new();
    let mut allocations: Vec<AllocationResponse> = Vec::new();
    for w in 0..5 {
        let regions = if w % 2 == 0 { ["eu-west", "us-east"] } else { ["us-east", "eu-west"] };
        let first = allocate(&http, &fleet.url, json!({"fleet": "town", "regions": regions})).await;
        assert_eq!(first.region, regions[0], "preferred region has room");
        for _ in 1..10 {
            let body = json!({"fleet": "town", "worldId": first.world_id, "regions": regions});
            let member = allocate(&http, &fleet.url, body).await;
            assert_eq!((&member.world_id, &member.server), (&first.world_id, &first.server));
            allocations.push(member);
        }
        allocations.push(first);
    }
    let servers_used: BTreeSet<&str> = allocations.iter().map(|a| a.server.as_str()).collect();
    assert_eq!(servers_used.len(), 2);

    // Join all 50, concurrently.
    let joins = allocations.iter().map(join);
    let mut bots: Vec<Bot> = futures_util::future::join_all(joins).await;
    for (bot, alloc) in bots.iter().zip(&allocations) {
        assert_eq!(bot.world_id, alloc.world_id, "bot joined another world than it was allocated");
    }
    // Joining confirmed each world's lease: the registry counts one slot per world.
    let worlds: u32 = fleet.registry.list(Some("town")).await.unwrap().iter().map(|s| s.worlds).sum();
    assert_eq!(worlds, 5);

    let mut members: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    for bot in &bots {
        members.entry(bot.world_id.clone()).or_default().insert(bot.you);
    }
    assert!(members.values().all(|m| m.len() == 10), "{members:?}");

    // Every bot moves once, then watches its world's deltas.
    for bot in &mut bots {
        let (dx, dy) = legal_move(&bot.snapshot, bot.you);
        send(&mut bot.ws, &ClientMsg::Input { seq: 1, action: Action::Move { dx, dy } }).await;
    }
    let watches = bots.into_iter().map(|mut bot| {
        let expected: BTreeSet<u32> = members[&bot.world_id].iter().copied().filter(|id| *id != bot.you).collect();
        async move {
            let mut seen = BTreeSet::new();
            let mut result = None;
            while result.is_none() || !expected.is_subset(&seen) {
                match recv(&mut bot.ws).await {
                    Ok(ServerMsg::InputResult { seq: 1, outcome, .. }) => result = Some(outcome),
                    Ok(ServerMsg::Delta { changes, .. }) => {
                        for change in changes {
                            if let Change::Moved { id, .. } = change {
                                seen.insert(id);
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(close) => panic!("bot {} closed: {close:?}", bot.you),
                }
            }
            assert_eq!(result, Some(InputOutcome::Ok));
            bot.ws.close(None).await.unwrap();
        }
    });
    tokio::time::timeout(WAIT, futures_util::future::join_all(watches))
        .await
        .expect("some bot never saw every other member's move");

    fleet.shutdown.cancel();
    for server in fleet.servers {
        server.await.unwrap().unwrap();
    }
}

/// Tokens the game server must refuse, each with its reason in the close frame.
#[tokio::test]
async fn wrong_and_expired_tokens_are_refused_with_a_reason() {
    let fleet = fleet().await;
    let http = reqwest::Client::new();
    let alloc = allocate(&http, &fleet.url, json!({"fleet": "town", "regions": ["eu-west"]})).await;
    let claims = |server: &str| tokens::join_claims(server, &alloc.world_id, "mallory");
    let other = fleet.registry.get("gs-us").await.unwrap();
    let cases: [(&str, String, &str); 4] = [
        (&alloc.address, TokenKey::new("not-the-secret").sign(&claims("gs-eu")), "join token signature does not match"),
        (
            &alloc.address,
            tokens::key().sign(&JoinClaims { expires_at_ms: 1, ..claims("gs-eu") }),
            "join token has expired",
        ),
        // A valid token for gs-eu, presented to gs-us.
        (other.address.as_deref().unwrap(), alloc.join_token.clone(), "join token is for another server"),
        (&alloc.address, format!("{}x", alloc.join_token), "join token signature does not match"),
    ];
    for (address, token, reason) in cases {
        let mut ws = ws::connect(address).await;
        send(&mut ws, &ClientMsg::Join { token }).await;
        assert_eq!(recv(&mut ws).await.unwrap_err(), (gaia_api::protocol::close::BAD_TOKEN, reason.to_string()));
    }
    // The real token still works, and nothing above started a world.
    let bot = join(&alloc).await;
    assert_eq!(bot.world_id, alloc.world_id);
    let servers: Vec<GameServer> = fleet.registry.list(Some("town")).await.unwrap();
    assert_eq!(servers.iter().map(|s| s.worlds).sum::<u32>(), 1);
    fleet.shutdown.cancel();
}

/// The console's path: a spectate token from the allocator for a running world. The
/// spectator watches (Welcome with no entity of its own, the player's moves), its input is
/// refused, and the server's player count, as the SDK reports it, stays the player's.
#[tokio::test]
async fn a_spectator_watches_a_world_and_is_not_counted_as_a_player() {
    let fleet = fleet().await;
    let http = reqwest::Client::new();
    let alloc = allocate(&http, &fleet.url, json!({"fleet": "town", "regions": ["eu-west"]})).await;
    let mut alice = join(&alloc).await;

    let url = format!("{}/v1/fleets/town/worlds/{}/spectate", fleet.url, alloc.world_id);
    let resp = http.post(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let seat: gaia_api::allocation::SpectateResponse = resp.json().await.unwrap();
    assert_eq!((seat.server.as_str(), seat.address.as_str()), (alloc.server.as_str(), alloc.address.as_str()));
    let mut eve = ws::connect(&seat.address).await;
    send(&mut eve, &ClientMsg::Join { token: seat.token }).await;
    let snapshot = match recv(&mut eve).await {
        Ok(ServerMsg::Welcome { you: 0, snapshot, .. }) => snapshot,
        other => panic!("expected a Welcome with no entity, got {other:?}"),
    };
    assert_eq!(snapshot.entities.len(), alice.snapshot.entities.len(), "the spectator adds no entity");

    send(&mut eve, &ClientMsg::Input { seq: 1, action: Action::Say { text: "hello?".into() } }).await;
    let (dx, dy) = legal_move(&alice.snapshot, alice.you);
    send(&mut alice.ws, &ClientMsg::Input { seq: 1, action: Action::Move { dx, dy } }).await;
    let (mut refused, mut saw_move) = (false, false);
    while !(refused && saw_move) {
        match recv(&mut eve).await.unwrap() {
            ServerMsg::InputResult { seq: 1, tick: 0, outcome: InputOutcome::Rejected { reason } } => {
                assert_eq!(reason, gaia_api::protocol::SPECTATORS_CANNOT_ACT);
                refused = true;
            }
            ServerMsg::InputResult { .. } => panic!("a spectator's input reached the world"),
            ServerMsg::Delta { changes, .. } => {
                saw_move |= changes.iter().any(|c| matches!(c, Change::Moved { id, .. } if *id == alice.you));
            }
            _ => {}
        }
    }

    // The count reaches the record at the SDK's report period (2 s by default): once it
    // shows Alice, two more periods would have shown the spectator too.
    let deadline = tokio::time::Instant::now() + WAIT;
    while fleet.registry.get(&alloc.server).await.unwrap().players == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the player count never reached the record");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    let record = fleet.registry.get(&alloc.server).await.unwrap();
    assert_eq!((record.players, record.worlds), (1, 1));
    fleet.shutdown.cancel();
}
