//! `run` and `wait_ready` against a fake fleet in this process: an axum allocator and
//! two tokio-tungstenite game servers that speak the contracts loadgen is written to (a
//! Welcome, a Delta per 100 ms tick, one InputResult per input before that tick's Delta,
//! a `Moved` for each accepted move, and a world that can move to the other server or
//! lose its server and be restored from an older tick).
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use gaia_api::allocation::{AllocationRequest, AllocationResponse, ErrorBody, ErrorDetail};
use gaia_api::gameserver::{GameServer, GameServerState};
use gaia_api::protocol::{InputOutcome, NEVER_RECEIVED, decode_client, encode_server};
use gaia_api::town::{Action, Change, ClientMsg, Entity, EntityId, EntityKind, ServerMsg, Snapshot};
use gaia_loadgen::{Config, ErrorKind, RegionUse, run, wait_ready};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_util::sync::CancellationToken;

const REGIONS: [&str; 2] = ["eu-west", "us-east"];
const TICK: Duration = Duration::from_millis(100);

/// 10 x 8, a wall down column 4 (rows 0..6), so bots in columns 0..3 often stand next to it.
fn map() -> Snapshot {
    let (width, height) = (10u16, 8u16);
    let mut walls = vec![0u8; usize::from(width * height).div_ceil(8)];
    for y in 0..6u16 {
        let bit = usize::from(y * width + 4);
        walls[bit / 8] |= 1 << (bit % 8);
    }
    Snapshot { width, height, walls, entities: Vec::new() }
}

/// What a connection task is told to do.
enum Out {
    Msg(ServerMsg),
    Close(u16),
    /// Drop the socket without a close frame, as a killed server would.
    Crash,
    /// Drop the socket without a close frame, as a cut network would; the member stays
    /// in the world, away, and may resume.
    Cut,
}

struct Member {
    id: EntityId,
    out: mpsc::UnboundedSender<Out>,
    /// While away (its connection cut): the results of inputs applied meanwhile.
    away: Option<Vec<ServerMsg>>,
    /// Every result sent, by seq, to send again when a Resume awaits one.
    answered: HashMap<u32, ServerMsg>,
}

impl Member {
    fn new(id: EntityId, out: mpsc::UnboundedSender<Out>) -> Self {
        Self { id, out, away: None, answered: HashMap::new() }
    }
}

struct World {
    /// Index into `Fleet::ws_addresses` of the server the world is on.
    server: usize,
    tick: u64,
    snapshot: Snapshot,
    members: Vec<Member>,
    inputs: Vec<(EntityId, u32, Action)>,
}

#[derive(Default)]
struct Inner {
    worlds: HashMap<String, (String, World)>,
    by_key: HashMap<String, AllocationResponse>,
    next_entity: EntityId,
}

struct Fleet {
    /// Two game servers (two listeners of this process).
    ws_addresses: [String; 2],
    /// Every Join is answered with this close.
    reject: Option<(u16, &'static str)>,
    /// New-world requests answered 429 before capacity "appears".
    no_capacity: AtomicUsize,
    /// Seat requests answered 429 ("world is on a draining server").
    seat_refusals: AtomicUsize,
    inner: Mutex<Inner>,
}

impl Fleet {
    /// Moves `world_id` to the other server between two ticks, as a draining server
    /// does: inputs not yet applied are dropped, each member gets a Migrate after the
    /// last Delta, then a 1001 close.
    fn migrate(&self, world_id: &str) {
        let mut inner = self.inner.lock().unwrap();
        let (_, world) = inner.worlds.get_mut(world_id).unwrap();
        world.server = 1 - world.server;
        world.inputs.clear();
        for member in world.members.drain(..) {
            let address = self.ws_addresses[world.server].clone();
            let _ = member.out.send(Out::Msg(ServerMsg::Migrate { address, token: world_id.into() }));
            let _ = member.out.send(Out::Close(1001));
            world.snapshot.entities.retain(|e| e.id != member.id);
        }
    }

    /// Cuts the connections of `world_id`'s members without a close; the world stays
    /// where it is and holds their results for a Resume.
    fn cut(&self, world_id: &str) {
        let mut inner = self.inner.lock().unwrap();
        let (_, world) = inner.worlds.get_mut(world_id).unwrap();
        for member in &mut world.members {
            let _ = member.out.send(Out::Cut);
            member.away = Some(Vec::new());
        }
    }

    /// Kills the server of `world_id`: connections drop without a close (or, given a
    /// code, close with it), the world is restored on the other server `rewind` ticks
    /// back, and the allocator first answers `refusals` seat requests with 429.
    fn crash(&self, world_id: &str, close: Option<u16>, rewind: u64, refusals: usize) {
        let mut inner = self.inner.lock().unwrap();
        self.seat_refusals.store(refusals, Ordering::SeqCst);
        let (_, world) = inner.worlds.get_mut(world_id).unwrap();
        world.server = 1 - world.server;
        world.tick = world.tick.saturating_sub(rewind);
        world.inputs.clear();
        for member in world.members.drain(..) {
            let _ = member.out.send(close.map_or(Out::Crash, Out::Close));
            world.snapshot.entities.retain(|e| e.id != member.id);
        }
    }
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    let body = ErrorBody { error: ErrorDetail { code: code.into(), message, field: None } };
    (status, Json(body)).into_response()
}

async fn allocate(State(fleet): State<Arc<Fleet>>, Json(req): Json<AllocationRequest>) -> Response {
    if req.fleet != "town" {
        return error(StatusCode::NOT_FOUND, "fleet_not_found", format!("no fleet {:?}", req.fleet));
    }
    let mut inner = fleet.inner.lock().unwrap();
    if let Some(world_id) = req.world_id {
        let Some((region, world)) = inner.worlds.get(&world_id) else {
            return error(StatusCode::NOT_FOUND, "world_not_found", format!("no world {world_id}"));
        };
        if fleet.seat_refusals.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return error(StatusCode::TOO_MANY_REQUESTS, "no_capacity", "world is on a draining server".into());
        }
        return Json(response(&fleet, &world_id, region, world.server)).into_response();
    }
    if let Some(done) = req.idempotency_key.as_ref().and_then(|key| inner.by_key.get(key)) {
        return Json(done.clone()).into_response();
    }
    if fleet.no_capacity.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
        return error(StatusCode::TOO_MANY_REQUESTS, "no_capacity", "no free world slot".into());
    }
    let world_id = format!("world-{}", inner.worlds.len());
    let region = req.regions.first().cloned().unwrap_or_else(|| REGIONS[0].into());
    let world = World { server: 0, tick: 0, snapshot: map(), members: Vec::new(), inputs: Vec::new() };
    inner.worlds.insert(world_id.clone(), (region.clone(), world));
    let answer = response(&fleet, &world_id, &region, 0);
    if let Some(key) = req.idempotency_key {
        inner.by_key.insert(key, answer.clone());
    }
    Json(answer).into_response()
}

fn response(fleet: &Fleet, world_id: &str, region: &str, server: usize) -> AllocationResponse {
    AllocationResponse {
        world_id: world_id.into(),
        player_id: "p".into(),
        fleet: "town".into(),
        server: format!("gs-{region}-{server}"),
        region: region.into(),
        address: fleet.ws_addresses[server].clone(),
        join_token: world_id.into(),
        lease: None,
        epoch: 0,
    }
}

#[derive(serde::Deserialize)]
struct ListQuery {
    fleet: String,
}

async fn list(State(fleet): State<Arc<Fleet>>, Query(q): Query<ListQuery>) -> Json<Vec<GameServer>> {
    let servers = REGIONS
        .iter()
        .filter(|_| q.fleet == "town")
        .map(|region| {
            let mut s = GameServer::scheduled(format!("gs-{region}"), "town", *region, 10, 100);
            s.state = GameServerState::Ready;
            s.address = Some(fleet.ws_addresses[0].clone());
            s
        })
        .collect();
    Json(servers)
}

/// One tick of every world: inputs in arrival order, their results, then the Delta.
fn tick(fleet: &Fleet) {
    let mut inner = fleet.inner.lock().unwrap();
    for (_, world) in inner.worlds.values_mut() {
        world.tick += 1;
        let tick = world.tick;
        let mut changes = Vec::new();
        for (id, seq, action) in std::mem::take(&mut world.inputs) {
            let outcome = match action {
                Action::Move { dx, dy } => {
                    let map = &mut world.snapshot;
                    let Some(me) = map.entities.iter().position(|e| e.id == id) else { continue };
                    let x = i32::from(map.entities[me].x) + i32::from(dx);
                    let y = i32::from(map.entities[me].y) + i32::from(dy);
                    let free = (0..i32::from(map.width)).contains(&x)
                        && (0..i32::from(map.height)).contains(&y)
                        && !map.is_wall(x as u16, y as u16);
                    if free && (dx, dy) != (0, 0) {
                        (map.entities[me].x, map.entities[me].y) = (x as u16, y as u16);
                        changes.push(Change::Moved { id, x: x as u16, y: y as u16 });
                        InputOutcome::Ok
                    } else {
                        InputOutcome::Rejected { reason: format!("cannot move to {x},{y}") }
                    }
                }
                Action::Say { .. } => InputOutcome::Ok,
            };
            if let Some(member) = world.members.iter_mut().find(|m| m.id == id) {
                let result = ServerMsg::InputResult { seq, tick, outcome };
                member.answered.insert(seq, result.clone());
                match &mut member.away {
                    Some(held) => held.push(result),
                    None => drop(member.out.send(Out::Msg(result))),
                }
            }
        }
        for member in world.members.iter().filter(|m| m.away.is_none()) {
            let _ = member.out.send(Out::Msg(ServerMsg::Delta { tick, server_us: 0, changes: changes.clone() }));
        }
    }
}

/// Answers a Resume on server `server`: the member `resume:<id>` names, if it is away in a
/// world on this server, gets its connection back; `None` (close with 4012) otherwise.
fn resume(
    fleet: &Fleet,
    server: usize,
    token: &str,
    awaiting: &[u32],
    out: mpsc::UnboundedSender<Out>,
) -> Option<(String, EntityId)> {
    let id: EntityId = token.strip_prefix("resume:")?.parse().ok()?;
    let mut inner = fleet.inner.lock().unwrap();
    let (world_id, (_, world)) = inner
        .worlds
        .iter_mut()
        .find(|(_, (_, w))| w.server == server && w.members.iter().any(|m| m.id == id && m.away.is_some()))?;
    let pending: Vec<u32> = world.inputs.iter().filter(|(who, ..)| *who == id).map(|(_, seq, _)| *seq).collect();
    let member = world.members.iter_mut().find(|m| m.id == id)?;
    let held = member.away.take().unwrap_or_default();
    let welcome = ServerMsg::Welcome {
        world_id: world_id.clone(),
        you: id,
        tick: world.tick,
        snapshot: world.snapshot.clone(),
        resume: token.into(),
        messages: Vec::new(),
    };
    out.send(Out::Msg(welcome)).unwrap();
    let held_seqs: Vec<u32> = held
        .iter()
        .filter_map(|m| if let ServerMsg::InputResult { seq, .. } = m { Some(*seq) } else { None })
        .collect();
    for result in held {
        out.send(Out::Msg(result)).unwrap();
    }
    for seq in awaiting.iter().filter(|seq| !held_seqs.contains(seq) && !pending.contains(seq)) {
        let again = member.answered.get(seq).cloned().unwrap_or_else(|| ServerMsg::InputResult {
            seq: *seq,
            tick: 0,
            outcome: InputOutcome::Rejected { reason: NEVER_RECEIVED.into() },
        });
        out.send(Out::Msg(again)).unwrap();
    }
    member.out = out;
    Some((world_id.clone(), id))
}

async fn connection(fleet: Arc<Fleet>, server: usize, stream: TcpStream) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
    let Some(Ok(Message::Binary(frame))) = ws.next().await else { return };
    let (out, outbox) = mpsc::unbounded_channel();
    let token = match decode_client(&frame) {
        Ok(ClientMsg::Join { token }) => token,
        Ok(ClientMsg::Resume { token, awaiting }) => {
            let Some((world_id, id)) = resume(&fleet, server, &token, &awaiting, out) else {
                let _ = ws.close(Some(CloseFrame { code: 4012.into(), reason: "not here".into() })).await;
                while ws.next().await.is_some() {}
                return;
            };
            return serve(fleet, ws, outbox, world_id, id).await;
        }
        _ => return,
    };
    if let Some((code, reason)) = fleet.reject {
        let _ = ws.close(Some(CloseFrame { code: code.into(), reason: reason.into() })).await;
        while ws.next().await.is_some() {}
        return;
    }
    let (world_id, id) = {
        let mut inner = fleet.inner.lock().unwrap();
        let id = inner.next_entity;
        inner.next_entity += 1;
        let (_, world) = inner.worlds.get_mut(&token).unwrap();
        let (x, y) = (id as u16 % 4, id as u16 % 8);
        world.snapshot.entities.push(Entity { id, kind: EntityKind::Bot, name: format!("bot{id}"), x, y });
        let welcome = ServerMsg::Welcome {
            world_id: token.clone(),
            you: id,
            tick: world.tick,
            snapshot: world.snapshot.clone(),
            resume: format!("resume:{id}"),
            messages: Vec::new(),
        };
        out.send(Out::Msg(welcome)).unwrap();
        world.members.push(Member::new(id, out));
        (token, id)
    };
    serve(fleet, ws, outbox, world_id, id).await;
}

/// A joined member's connection: what the world sends it, and its inputs.
async fn serve(
    fleet: Arc<Fleet>,
    mut ws: WebSocketStream<TcpStream>,
    mut outbox: mpsc::UnboundedReceiver<Out>,
    world_id: String,
    id: EntityId,
) {
    loop {
        tokio::select! {
            out = outbox.recv() => match out {
                Some(Out::Msg(msg)) => {
                    if ws.send(Message::Binary(encode_server(&msg).into())).await.is_err() {
                        break;
                    }
                }
                Some(Out::Close(code)) => {
                    let _ = ws.close(Some(CloseFrame { code: code.into(), reason: "moved".into() })).await;
                    break;
                }
                Some(Out::Crash | Out::Cut) => return,
                None => break,
            },
            frame = ws.next() => match frame {
                Some(Ok(Message::Binary(frame))) => match decode_client(&frame) {
                    Ok(ClientMsg::Input { seq, action }) => {
                        let mut inner = fleet.inner.lock().unwrap();
                        let world = &mut inner.worlds.get_mut(&world_id).unwrap().1;
                        // Inputs that reach a server the world left are not applied.
                        if world.members.iter().any(|m| m.id == id) {
                            world.inputs.push((id, seq, action));
                        }
                    }
                    other => panic!("fake server got {other:?}"),
                },
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    {
        let mut inner = fleet.inner.lock().unwrap();
        let (_, world) = inner.worlds.get_mut(&world_id).unwrap();
        world.members.retain(|m| m.id != id);
        world.snapshot.entities.retain(|e| e.id != id);
    }
    // Finish the close handshake the client started.
    let _ = tokio::time::timeout(Duration::from_secs(1), async { while ws.next().await.is_some() {} }).await;
}

/// Starts the fake allocator and game servers; returns the allocator URL.
async fn fake_fleet(reject: Option<(u16, &'static str)>, no_capacity: usize) -> String {
    fake_fleet_handle(reject, no_capacity).await.0
}

/// [`fake_fleet`], and the fleet, to move worlds or crash their servers.
async fn fake_fleet_handle(reject: Option<(u16, &'static str)>, no_capacity: usize) -> (String, Arc<Fleet>) {
    let games = [TcpListener::bind("127.0.0.1:0").await.unwrap(), TcpListener::bind("127.0.0.1:0").await.unwrap()];
    let fleet = Arc::new(Fleet {
        ws_addresses: games.each_ref().map(|game| format!("ws://{}/ws", game.local_addr().unwrap())),
        reject,
        no_capacity: AtomicUsize::new(no_capacity),
        seat_refusals: AtomicUsize::new(0),
        inner: Mutex::default(),
    });
    let ticker = fleet.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(TICK);
        loop {
            every.tick().await;
            tick(&ticker);
        }
    });
    for (server, game) in games.into_iter().enumerate() {
        let fleet = fleet.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = game.accept().await {
                tokio::spawn(connection(fleet.clone(), server, stream));
            }
        });
    }
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", api.local_addr().unwrap());
    let app = Router::new()
        .route("/v1/allocations", post(allocate))
        .route("/v1/gameservers", get(list))
        .with_state(fleet.clone());
    tokio::spawn(async move { axum::serve(api, app).await.unwrap() });
    (url, fleet)
}

fn config(allocator_url: String) -> Config {
    Config {
        allocator_url,
        bots: 20,
        world_size: 5,
        duration: Duration::from_secs(1),
        input_rate_hz: 8.0,
        connect_concurrency: 4,
        allocate_timeout: Duration::from_secs(5),
        ready_timeout: Duration::from_secs(2),
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_bots_in_worlds_of_five_run_clean() {
    let config = config(fake_fleet(None, 2).await);
    assert_eq!(wait_ready(&config).await.unwrap(), REGIONS);
    let report = run(config, CancellationToken::new()).await.unwrap();
    println!("{report}");
    assert!(report.is_clean(), "{report}");
    assert_eq!((report.bots, report.worlds, report.joined), (20, 4, 20));
    assert_eq!(report.regions, REGIONS);
    let two_worlds = RegionUse { worlds: 2, servers: 1 };
    assert_eq!(report.regions_used.values().copied().collect::<Vec<_>>(), [two_worlds, two_worlds]);
    assert_eq!((report.allocations_ok, report.allocation_retries), (20, 2));
    // About 8 inputs per bot in one second; all legal, all answered, all seen moving.
    assert!(report.inputs_sent >= 20 * 5, "{report}");
    assert_eq!(report.inputs_ok, report.inputs_sent);
    assert_eq!(report.own_moves_seen, report.inputs_ok);
    assert_eq!(report.input_latency.len(), report.inputs_sent);
    assert!(report.deltas_per_bot_s > 5.0 && report.deltas_per_bot_s < 12.0, "{report}");
    let text = report.to_string();
    assert!(text.contains("errors        none") && text.ends_with("result        PASS"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_joins_make_an_unclean_report_that_names_the_reason() {
    let mut config = config(fake_fleet(Some((4001, "join token has expired")), 0).await);
    config.regions = vec!["eu-west".into()];
    let report = run(config, CancellationToken::new()).await.unwrap();
    println!("{report}");
    assert!(!report.is_clean());
    assert_eq!(report.joined, 0);
    assert_eq!(report.errors[&ErrorKind::JoinRefused].count, 20);
    assert_eq!(report.steady, Duration::ZERO, "nobody joined, so no steady phase");
    let text = report.to_string();
    assert!(text.contains("join refused: 20"), "{text}");
    assert!(text.contains("4001 join token has expired"), "{text}");
    assert!(text.contains("result        FAIL"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_allocations_are_reported_with_the_allocator_message() {
    let mut config = config(fake_fleet(None, 0).await);
    config.fleet = "nope".into();
    config.regions = vec!["eu-west".into()];
    let report = run(config, CancellationToken::new()).await.unwrap();
    assert!(!report.is_clean());
    assert_eq!((report.allocations_failed, report.errors[&ErrorKind::AllocationFailed].count), (4, 4));
    assert_eq!(report.errors[&ErrorKind::NotStarted].count, 16);
    let text = report.to_string();
    assert!(text.contains("HTTP 404 fleet_not_found: no fleet \"nope\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_the_run_early_and_cleanly_closes() {
    let mut config = config(fake_fleet(None, 0).await);
    config.duration = Duration::from_secs(30);
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        stop.cancel();
    });
    let started = std::time::Instant::now();
    let report = run(config, shutdown).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(report.interrupted && !report.is_clean(), "{report}");
    assert_eq!(report.joined, 20);
    assert!(report.errors.is_empty(), "{report}");
    assert_eq!(report.problems(), ["interrupted"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_ready_names_the_missing_region() {
    let mut config = config(fake_fleet(None, 0).await);
    config.regions = vec!["eu-west".into(), "mars".into()];
    config.ready_timeout = Duration::from_millis(300);
    let err = wait_ready(&config).await.unwrap_err().to_string();
    assert!(err.contains("not ready after 300ms") && err.contains("region mars"), "{err}");
}

/// Runs `config` and, `after` its start, does `event` to the fleet.
async fn run_with(config: Config, after: Duration, event: impl FnOnce() + Send + 'static) -> gaia_loadgen::Report {
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        event();
    });
    let report = run(config, CancellationToken::new()).await.unwrap();
    println!("{report}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_follow_a_migrating_world_and_the_run_stays_clean() {
    let (url, fleet) = fake_fleet_handle(None, 0).await;
    let mut config = config(url);
    (config.bots, config.duration) = (10, Duration::from_millis(1500));
    let moved = fleet.clone();
    let report = run_with(config, Duration::from_millis(700), move || moved.migrate("world-0")).await;
    assert!(report.is_clean(), "{report}");
    // The five bots of whichever plan got world-0, each once.
    let bots: Vec<usize> = report.migrations.iter().map(|(bot, _)| *bot).collect();
    assert!(bots == [0, 1, 2, 3, 4] || bots == [5, 6, 7, 8, 9], "{bots:?}");
    for (bot, m) in &report.migrations {
        assert_eq!(m.world_id, "world-0");
        assert_eq!(m.server_after, fleet.ws_addresses[1]);
        assert!(m.pause < Duration::from_secs(1), "bot {bot}: {m:?}");
        assert!(m.welcome_tick >= m.last_tick_seen, "bot {bot}: {m:?}");
    }
    assert!(report.recoveries.is_empty());
    assert_eq!(
        report.inputs_sent,
        report.inputs_ok + report.inputs_rejected + report.inputs_missing + report.inputs_unapplied
    );
    assert_eq!(report.own_moves_seen, report.inputs_ok);
    assert!(report.to_string().contains("migrations    5 followed; pause ms max"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_find_their_world_again_after_its_server_crashes() {
    let (url, fleet) = fake_fleet_handle(None, 0).await;
    let mut config = config(url);
    (config.bots, config.duration) = (10, Duration::from_millis(1500));
    let crashed = fleet.clone();
    // Restored 20 ticks (2 s) back; the allocator refuses the first two seats.
    let report = run_with(config, Duration::from_millis(700), move || crashed.crash("world-1", None, 20, 2)).await;
    assert_eq!(report.errors.keys().copied().collect::<Vec<_>>(), [ErrorKind::ConnectionLost], "{report}");
    assert_eq!(report.problems(), ["5 errors"], "{report}");
    let bots: Vec<usize> = report.recoveries.iter().map(|(bot, _)| *bot).collect();
    assert!(bots == [0, 1, 2, 3, 4] || bots == [5, 6, 7, 8, 9], "{bots:?}");
    for (bot, r) in &report.recoveries {
        assert_eq!(r.world_id, "world-1", "bot {bot}");
        let region = r.server_before.strip_suffix("-0").unwrap();
        assert_eq!(r.server_after, format!("{region}-1"), "bot {bot}");
        assert!(r.outage < Duration::from_secs(5), "bot {bot}: {r:?}");
        assert!(r.welcome_tick < r.last_tick_seen, "bot {bot}: the restore went back in time: {r:?}");
    }
    assert!(report.max_ticks_lost() > 0);
    assert_eq!(
        report.inputs_sent,
        report.inputs_ok + report.inputs_rejected + report.inputs_missing + report.inputs_unapplied
    );
    assert!(report.bots_with_inputs == 10 && report.bots_with_all_own_moves == 10, "{report}");
    assert!(report.to_string().contains("reconnects    5 after lost connections"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_world_unavailable_close_sends_bots_back_to_the_allocator() {
    let (url, fleet) = fake_fleet_handle(None, 0).await;
    let mut config = config(url);
    (config.bots, config.world_size, config.duration) = (3, 3, Duration::from_millis(1000));
    let closed = fleet.clone();
    let report = run_with(config, Duration::from_millis(500), move || closed.crash("world-0", Some(4012), 0, 0)).await;
    assert_eq!(report.errors[&ErrorKind::ConnectionLost].count, 3, "{report}");
    assert!(report.errors[&ErrorKind::ConnectionLost].examples[0].contains("4012 moved"), "{report}");
    assert_eq!(report.problems(), ["3 errors"], "{report}");
    assert_eq!(report.recoveries.len(), 3, "{report}");
    assert!(report.recoveries.iter().all(|(_, r)| r.ticks_lost() == 0 && r.outage < Duration::from_secs(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_resume_after_their_connections_are_cut() {
    let (url, fleet) = fake_fleet_handle(None, 0).await;
    let mut config = config(url);
    (config.bots, config.duration) = (10, Duration::from_millis(1500));
    let cut = fleet.clone();
    let report = run_with(config, Duration::from_millis(700), move || cut.cut("world-0")).await;
    assert!(report.is_clean(), "{report}");
    // The five bots of world-0, each once, on the server they were on; nobody allocated again.
    let bots: Vec<usize> = report.resumptions.iter().map(|(bot, _)| *bot).collect();
    assert!(bots == [0, 1, 2, 3, 4] || bots == [5, 6, 7, 8, 9], "{bots:?}");
    assert!(report.recoveries.is_empty() && report.migrations.is_empty(), "{report}");
    for (bot, r) in &report.resumptions {
        assert_eq!(r.world_id, "world-0", "bot {bot}");
        assert!(r.welcome_tick >= r.last_tick_seen, "bot {bot}: {r:?}");
    }
    assert_eq!(report.allocations_ok, 10, "{report}");
    // Every input has exactly one result (a second one is a protocol error, and is_clean
    // holds), and every accepted move was seen in a Delta or in the resumed snapshot.
    assert_eq!(report.inputs_missing, 0, "{report}");
    assert_eq!(report.inputs_sent, report.inputs_ok + report.inputs_rejected + report.inputs_unapplied, "{report}");
    assert_eq!(report.own_moves_seen, report.inputs_ok, "{report}");
    assert!(report.to_string().contains("resumes       5 after broken connections"), "{report}");
}
