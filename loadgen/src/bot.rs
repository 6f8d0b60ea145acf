//! One bot's life: connect, join, play, close.
//!
//! The protocol logic lives in [`BotState`], a plain struct the async loop feeds with
//! server messages and asks for inputs: where the bot is, which moves are legal, which
//! inputs still wait for a result and which accepted moves were not yet seen in a Delta.
//! [`play`] is the async shell around it: the WebSocket, the timers, the phases.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gaia_api::allocation::AllocationResponse;
use gaia_api::protocol::{InputOutcome, decode_server, encode_client};
use gaia_api::town::{Action, Change, ClientMsg, EntityId, ServerMsg, Snapshot};
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::report::{BotOutcome, ErrorKind, PlayStats};
use crate::{Phases, Settled};

/// How long a bot waits for the TCP + WebSocket handshake, and then for its Welcome.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// After the steady phase: how long a bot keeps reading for in-flight results and deltas.
const DRAIN: Duration = Duration::from_millis(500);
/// How long a bot waits for the server to answer its close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What one bot knows about its world and its own inputs. No I/O: the async loop feeds
/// it messages with the time they arrived and asks it for the next input.
#[derive(Debug)]
pub(crate) struct BotState {
    you: EntityId,
    /// The map only; entities are dropped after finding our own.
    map: Snapshot,
    /// Last position the server told us (Welcome, then our own `Moved` changes).
    pos: (u16, u16),
    next_seq: u32,
    /// Sent, waiting for the InputResult: when it was sent and the step it asked for.
    awaiting_result: HashMap<u32, (Instant, (i8, i8))>,
    /// Accepted, waiting for our `Moved` in a Delta. Only the sum of the steps matters
    /// for where we will be, so their order does not.
    awaiting_move: VecDeque<(i8, i8)>,
    /// Set in the steady phase: tick-to-client latency is recorded then.
    pub(crate) measuring: bool,
    stats: PlayStats,
    errors: Vec<(ErrorKind, String)>,
}

impl BotState {
    /// From the Welcome; fails when the snapshot does not hold the entity `you`.
    pub(crate) fn new(you: EntityId, mut snapshot: Snapshot) -> Result<Self, String> {
        let me = snapshot
            .entities
            .iter()
            .find(|e| e.id == you)
            .ok_or_else(|| format!("Welcome names entity {you}, which is not in its snapshot"))?;
        let pos = (me.x, me.y);
        snapshot.entities = Vec::new();
        Ok(Self {
            you,
            map: snapshot,
            pos,
            next_seq: 1,
            awaiting_result: HashMap::new(),
            awaiting_move: VecDeque::new(),
            measuring: false,
            stats: PlayStats::default(),
            errors: Vec::new(),
        })
    }

    /// Where the bot will be once every input it has sent and not seen rejected is applied.
    pub(crate) fn expected_pos(&self) -> (i32, i32) {
        let steps = self.awaiting_result.values().map(|(_, step)| step).chain(self.awaiting_move.iter());
        steps.fold((i32::from(self.pos.0), i32::from(self.pos.1)), |(x, y), &(dx, dy)| {
            (x + i32::from(dx), y + i32::from(dy))
        })
    }

    /// Steps whose target cell, from [`Self::expected_pos`], is inside the map and not a wall.
    pub(crate) fn legal_steps(&self) -> Vec<(i8, i8)> {
        let (x, y) = self.expected_pos();
        self.map.open_steps(x, y)
    }

    /// A random legal Move, numbered and remembered; `None` when the bot is walled in.
    pub(crate) fn next_input(&mut self, rng: &mut impl Rng, now: Instant) -> Option<ClientMsg> {
        let steps = self.legal_steps();
        if steps.is_empty() {
            return None;
        }
        let (dx, dy) = steps[rng.random_range(0..steps.len())];
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.awaiting_result.insert(seq, (now, (dx, dy)));
        self.stats.sent += 1;
        Some(ClientMsg::Input { seq, action: Action::Move { dx, dy } })
    }

    fn error(&mut self, kind: ErrorKind, message: String) {
        self.errors.push((kind, message));
    }

    /// Takes in one message from the server after the Welcome.
    pub(crate) fn on_message(&mut self, msg: ServerMsg, now: Instant) {
        match msg {
            ServerMsg::Delta { changes, server_us, .. } => {
                self.stats.deltas += 1;
                if self.measuring {
                    let late = gaia_api::protocol::unix_us().saturating_sub(server_us);
                    self.stats.tick_latency_us.push(u32::try_from(late).unwrap_or(u32::MAX));
                }
                for change in changes {
                    if let Change::Moved { id, x, y } = change
                        && id == self.you
                    {
                        self.stats.own_moves_seen += 1;
                        self.awaiting_move.pop_front();
                        self.pos = (x, y);
                    }
                }
            }
            ServerMsg::InputResult { seq, outcome, .. } => {
                let Some((sent, step)) = self.awaiting_result.remove(&seq) else {
                    return self.error(ErrorKind::Protocol, format!("InputResult for seq {seq}, which is not pending"));
                };
                let latency = now.saturating_duration_since(sent);
                self.stats.input_latency_us.push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
                match outcome {
                    InputOutcome::Ok => {
                        self.stats.ok += 1;
                        self.awaiting_move.push_back(step);
                    }
                    InputOutcome::Rejected { reason } => {
                        self.stats.rejected += 1;
                        let (dx, dy) = step;
                        let message = format!("seq {seq} Move({dx},{dy}) near {:?}: {reason}", self.pos);
                        self.error(ErrorKind::InputRejected, message);
                    }
                }
            }
            ServerMsg::Pong { .. } => {}
            // We missed deltas: the snapshot says where we are, and any accepted move we
            // did not see is in it.
            ServerMsg::Resync { snapshot, .. } => {
                self.stats.resyncs += 1;
                match snapshot.entities.iter().find(|e| e.id == self.you) {
                    Some(me) => {
                        self.pos = (me.x, me.y);
                        self.stats.own_moves_seen += self.awaiting_move.len() as u64;
                        self.awaiting_move.clear();
                    }
                    None => self.error(ErrorKind::Protocol, format!("Resync without our entity {}", self.you)),
                }
            }
            ServerMsg::Welcome { world_id, .. } => {
                self.error(ErrorKind::Protocol, format!("second Welcome (world {world_id})"));
            }
            ServerMsg::Migrate { address, .. } => {
                self.error(ErrorKind::Protocol, format!("Migrate to {address} (loadgen does not follow migrations)"));
            }
            ServerMsg::Error { code, message } => {
                self.error(ErrorKind::Protocol, format!("server error {code}: {message}"));
            }
        }
    }

    /// Records a frame that did not decode.
    pub(crate) fn on_undecodable(&mut self, message: String) {
        self.error(ErrorKind::UndecodableFrame, message);
    }

    /// The bot's tally at the end. Results and moves still outstanding are errors, unless
    /// the connection was lost (then that loss is the error that explains them).
    pub(crate) fn finish(mut self, disconnected: bool) -> (PlayStats, Vec<(ErrorKind, String)>) {
        self.stats.missing = self.awaiting_result.len() as u64;
        if !disconnected {
            if !self.awaiting_result.is_empty() {
                let mut seqs: Vec<u32> = self.awaiting_result.keys().copied().collect();
                seqs.sort_unstable();
                seqs.truncate(5);
                let message = format!("{} input results never came (seq {seqs:?}..)", self.awaiting_result.len());
                self.error(ErrorKind::MissingResults, message);
            }
            if self.stats.own_moves_seen != self.stats.ok {
                let message =
                    format!("{} accepted moves, {} own Moved changes seen", self.stats.ok, self.stats.own_moves_seen);
                self.error(ErrorKind::OwnMovesNotSeen, message);
            }
        }
        (self.stats, self.errors)
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What came off the socket.
enum Inbound {
    Msg(ServerMsg),
    Undecodable(String),
    /// The server closed (code and reason, if it gave them) or the connection was lost.
    Closed(String),
}

async fn next_inbound(ws: &mut Socket) -> Inbound {
    loop {
        return match ws.next().await {
            Some(Ok(Message::Binary(frame))) => match decode_server(&frame) {
                Ok(msg) => Inbound::Msg(msg),
                Err(e) => Inbound::Undecodable(e.to_string()),
            },
            Some(Ok(Message::Text(text))) => Inbound::Undecodable(format!("text frame of {} bytes", text.len())),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Close(Some(frame)))) => {
                Inbound::Closed(format!("{} {}", u16::from(frame.code), frame.reason))
            }
            Some(Ok(Message::Close(None))) => Inbound::Closed("closed without a code".into()),
            Some(Err(e)) => Inbound::Closed(format!("connection lost: {e}")),
            None => Inbound::Closed("connection lost".into()),
        };
    }
}

/// Connects, sends Join and waits for the Welcome.
async fn join(address: &str, token: &str) -> Result<(Socket, String, EntityId, Snapshot), (ErrorKind, String)> {
    // Server frames are small: tungstenite's default 128 KiB read buffer would cost
    // 1.3 GB over 10,000 bots and be zeroed on every read.
    let config = WebSocketConfig::default().read_buffer_size(2 * 1024).write_buffer_size(0);
    let connect = tokio_tungstenite::connect_async_with_config(address, Some(config), true);
    let (mut ws, _) = match tokio::time::timeout(JOIN_TIMEOUT, connect).await {
        Ok(Ok(connected)) => connected,
        Ok(Err(e)) => return Err((ErrorKind::ConnectFailed, format!("{address}: {e}"))),
        Err(_) => return Err((ErrorKind::ConnectFailed, format!("{address}: no handshake within {JOIN_TIMEOUT:?}"))),
    };
    let hello = encode_client(&ClientMsg::Join { token: token.to_string() });
    if let Err(e) = ws.send(Message::Binary(hello.into())).await {
        return Err((ErrorKind::ConnectFailed, format!("{address}: sending Join: {e}")));
    }
    let first = match tokio::time::timeout(JOIN_TIMEOUT, next_inbound(&mut ws)).await {
        Ok(first) => first,
        Err(_) => return Err((ErrorKind::JoinRefused, format!("no Welcome within {JOIN_TIMEOUT:?}"))),
    };
    match first {
        Inbound::Msg(ServerMsg::Welcome { world_id, you, snapshot, .. }) => Ok((ws, world_id, you, snapshot)),
        Inbound::Msg(ServerMsg::Error { code, message }) => Err((ErrorKind::JoinRefused, format!("{code} {message}"))),
        Inbound::Msg(other) => Err((ErrorKind::Protocol, format!("expected Welcome, got {}", kind_of(&other)))),
        Inbound::Undecodable(e) => Err((ErrorKind::UndecodableFrame, e)),
        Inbound::Closed(why) => Err((ErrorKind::JoinRefused, why)),
    }
}

fn kind_of(msg: &ServerMsg) -> &'static str {
    match msg {
        ServerMsg::Welcome { .. } => "Welcome",
        ServerMsg::Delta { .. } => "Delta",
        ServerMsg::Resync { .. } => "Resync",
        ServerMsg::InputResult { .. } => "InputResult",
        ServerMsg::Migrate { .. } => "Migrate",
        ServerMsg::Error { .. } => "Error",
        ServerMsg::Pong { .. } => "Pong",
    }
}

/// Joins the allocated world and plays until the run ends. `allocated_at` is when this
/// bot's allocation started (join time counts from there); `permit` (one of the connect
/// slots) and `settled` (tells the run this bot is done joining) are dropped once the bot
/// has joined or failed to.
pub(crate) async fn play(
    phases: Arc<Phases>,
    mut outcome: BotOutcome,
    alloc: AllocationResponse,
    allocated_at: Instant,
    input_period: Option<Duration>,
    permit: OwnedSemaphorePermit,
    settled: Settled,
) -> BotOutcome {
    let joined = tokio::select! {
        _ = phases.stop.cancelled() => return outcome,
        joined = join(&alloc.address, &alloc.join_token) => joined,
    };
    let welcomed_at = Instant::now();
    drop(permit);
    drop(settled);
    let (mut ws, world_id, you, snapshot) = match joined {
        Ok(joined) => joined,
        Err((kind, message)) => {
            outcome.error(kind, message);
            return outcome;
        }
    };
    if world_id != alloc.world_id {
        outcome.error(ErrorKind::WrongWorld, format!("allocated world {}, welcomed to {world_id}", alloc.world_id));
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(None)).await;
        return outcome;
    }
    let mut state = match BotState::new(you, snapshot) {
        Ok(state) => state,
        Err(e) => {
            outcome.error(ErrorKind::Protocol, e);
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(None)).await;
            return outcome;
        }
    };
    outcome.join_us = Some(micros(welcomed_at.saturating_duration_since(allocated_at)));
    phases.joined.fetch_add(1, Ordering::Relaxed);

    let lost = run_inputs(&phases, &mut ws, &mut state, input_period).await;
    let lost = match lost {
        Some(why) => Some(why),
        None => drain(&mut ws, &mut state).await,
    };
    outcome.connected = welcomed_at.elapsed();
    if let Some(why) = &lost {
        outcome.error(ErrorKind::DisconnectedEarly, why.clone());
    } else {
        let bye = CloseFrame { code: CloseCode::Normal, reason: "loadgen done".into() };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            if ws.close(Some(bye)).await.is_ok() {
                while ws.next().await.is_some() {}
            }
        })
        .await;
    }
    let (stats, errors) = state.finish(lost.is_some());
    outcome.play = Some(stats);
    for (kind, message) in errors {
        outcome.error(kind, message);
    }
    outcome
}

fn handle(state: &mut BotState, inbound: Inbound) -> Option<String> {
    match inbound {
        Inbound::Msg(msg) => state.on_message(msg, Instant::now()),
        Inbound::Undecodable(e) => state.on_undecodable(e),
        Inbound::Closed(why) => return Some(why),
    }
    None
}

/// Reads frames until `stop`; once the steady phase starts, sends a Move every period.
/// Returns why the connection ended if the server ended it.
async fn run_inputs(
    phases: &Phases,
    ws: &mut Socket,
    state: &mut BotState,
    input_period: Option<Duration>,
) -> Option<String> {
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    // Set once the steady phase has started: the first input goes at a random offset
    // within one period so the bots' inputs are spread over it.
    let mut next_input: Option<Instant> = None;
    // Made once, not per frame: in a profile of the 10,000-bot run, creating and dropping
    // these waits on every turn (cancellation waiters, timer entries) showed up.
    let stop = phases.stop.cancelled();
    let steady = phases.steady.cancelled();
    let due = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(stop, steady, due);
    loop {
        // Checked on every turn, not only in the wake-up branch below: a frame that wins
        // the (biased) select as the phase starts must not make the bot miss it.
        let steady_now = phases.steady.is_cancelled();
        state.measuring |= steady_now;
        if next_input.is_none()
            && steady_now
            && let Some(period) = input_period
        {
            let at = Instant::now() + period.mul_f64(rng.random::<f64>());
            next_input = Some(at);
            due.as_mut().reset(at);
        }
        tokio::select! {
            biased;
            _ = &mut stop => return None,
            inbound = next_inbound(ws) => {
                if let Some(why) = handle(state, inbound) {
                    return Some(why);
                }
            }
            // Only wakes the loop; the schedule is set at its top.
            _ = &mut steady, if !steady_now && input_period.is_some() => {}
            _ = &mut due, if next_input.is_some() => {
                if let Some(input) = state.next_input(&mut rng, Instant::now()) {
                    let frame = encode_client(&input);
                    if let Err(e) = ws.send(Message::Binary(frame.into())).await {
                        return Some(format!("sending input: {e}"));
                    }
                }
                if let (Some(period), Some(at)) = (input_period, next_input) {
                    // Falling behind (a slow machine) skips inputs rather than bursting.
                    let next = (at + period).max(Instant::now());
                    next_input = Some(next);
                    due.as_mut().reset(next);
                }
            }
        }
    }
}

/// Keeps reading for [`DRAIN`] so in-flight results and deltas arrive.
async fn drain(ws: &mut Socket, state: &mut BotState) -> Option<String> {
    let until = Instant::now() + DRAIN;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return None,
            inbound = next_inbound(ws) => {
                if let Some(why) = handle(state, inbound) {
                    return Some(why);
                }
            }
        }
    }
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use gaia_api::town::{Entity, EntityKind};

    use super::*;

    /// 4 x 3 map, walls at (1,0) and (1,1); entity 7 at (0,0), entity 8 at (3,2).
    ///
    /// ```text
    /// 7 # . .
    /// . # . .
    /// . . . 8
    /// ```
    fn snapshot() -> Snapshot {
        let wall = |x: usize, y: usize| 1u16 << (y * 4 + x);
        let bits = wall(1, 0) | wall(1, 1);
        let entity = |id, x, y| Entity { id, kind: EntityKind::Bot, name: format!("b{id}"), x, y };
        Snapshot {
            width: 4,
            height: 3,
            walls: bits.to_le_bytes().to_vec(),
            entities: vec![entity(7, 0, 0), entity(8, 3, 2)],
        }
    }

    fn moved(id: EntityId, x: u16, y: u16) -> ServerMsg {
        ServerMsg::Delta { tick: 1, server_us: 0, changes: vec![Change::Moved { id, x, y }] }
    }

    fn result(seq: u32, ok: bool) -> ServerMsg {
        let outcome = if ok { InputOutcome::Ok } else { InputOutcome::Rejected { reason: "wall".into() } };
        ServerMsg::InputResult { seq, tick: 1, outcome }
    }

    fn step_of(msg: &ClientMsg) -> (u32, i8, i8) {
        match msg {
            ClientMsg::Input { seq, action: Action::Move { dx, dy } } => (*seq, *dx, *dy),
            other => panic!("not a move: {other:?}"),
        }
    }

    #[test]
    fn starts_at_its_entity_and_needs_it() {
        let bot = BotState::new(7, snapshot()).unwrap();
        assert_eq!(bot.expected_pos(), (0, 0));
        assert!(BotState::new(99, snapshot()).unwrap_err().contains("99"));
    }

    #[test]
    fn legal_steps_avoid_walls_and_edges() {
        let bot = BotState::new(7, snapshot()).unwrap();
        // From the corner (0,0): (1,0) and (1,1) are walls, the rest is off the map.
        assert_eq!(bot.legal_steps(), vec![(0, 1)]);
        let bot = BotState::new(8, snapshot()).unwrap();
        assert_eq!(bot.legal_steps(), vec![(-1, 0), (0, -1), (-1, -1)]);
    }

    #[test]
    fn walled_in_bot_sends_nothing() {
        let mut map = snapshot();
        map.walls = vec![0xff, 0xff];
        let mut bot = BotState::new(7, map).unwrap();
        assert!(bot.next_input(&mut SmallRng::seed_from_u64(1), Instant::now()).is_none());
        assert_eq!(bot.next_seq, 1);
    }

    #[test]
    fn random_inputs_are_always_legal_from_the_expected_position() {
        let mut rng = SmallRng::seed_from_u64(42);
        let map = snapshot();
        let mut bot = BotState::new(7, map.clone()).unwrap();
        let now = Instant::now();
        let mut in_flight = Vec::new();
        for expect_seq in 1..=200u32 {
            let (x, y) = bot.expected_pos();
            let (seq, dx, dy) = step_of(&bot.next_input(&mut rng, now).unwrap());
            assert_eq!(seq, expect_seq);
            assert!((dx, dy) != (0, 0));
            let target = (u16::try_from(x + i32::from(dx)).unwrap(), u16::try_from(y + i32::from(dy)).unwrap());
            assert!(!map.is_wall(target.0, target.1), "{target:?}");
            in_flight.push((seq, target));
            // Inputs are answered two or three at a time, so the next choice must count
            // the ones still in flight.
            if seq % 3 != 1 {
                for (seq, (x, y)) in in_flight.drain(..) {
                    bot.on_message(result(seq, true), now);
                    bot.on_message(moved(7, x, y), now);
                }
            }
        }
        let (stats, errors) = bot.finish(false);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!((stats.sent, stats.ok, stats.own_moves_seen, stats.missing), (200, 200, 200, 0));
    }

    #[test]
    fn results_and_own_moves_are_tallied() {
        let t0 = Instant::now();
        let mut bot = BotState::new(7, snapshot()).unwrap();
        let mut rng = SmallRng::seed_from_u64(3);
        assert_eq!(step_of(&bot.next_input(&mut rng, t0).unwrap()), (1, 0, 1));
        // Expected position already counts the move in flight.
        assert_eq!(bot.expected_pos(), (0, 1));
        bot.on_message(result(1, true), t0 + Duration::from_millis(40));
        assert_eq!(bot.expected_pos(), (0, 1));
        // Someone else's move changes nothing; ours sets the position.
        bot.on_message(moved(8, 2, 2), t0);
        assert_eq!(bot.stats.own_moves_seen, 0);
        bot.on_message(moved(7, 0, 1), t0);
        assert_eq!((bot.pos, bot.expected_pos()), ((0, 1), (0, 1)));
        bot.on_message(ServerMsg::Delta { tick: 2, server_us: 0, changes: vec![] }, t0);
        let (stats, errors) = bot.finish(false);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(stats.input_latency_us, vec![40_000]);
        assert_eq!((stats.deltas, stats.ok, stats.own_moves_seen), (3, 1, 1));
    }

    #[test]
    fn what_makes_a_bot_unclean() {
        let t0 = Instant::now();
        let mut rng = SmallRng::seed_from_u64(3);
        let mut bot = BotState::new(8, snapshot()).unwrap();
        for _ in 0..3 {
            bot.next_input(&mut rng, t0).unwrap();
        }
        bot.on_message(result(1, false), t0); // rejected
        bot.on_message(result(2, true), t0); // accepted, never seen moving
        bot.on_message(result(2, true), t0); // answered twice
        bot.on_message(ServerMsg::Migrate { address: "ws://x".into(), token: "t".into() }, t0);
        bot.on_undecodable("malformed frame".into());
        // seq 3 never gets a result
        let (stats, errors) = bot.finish(false);
        assert_eq!((stats.sent, stats.ok, stats.rejected, stats.missing), (3, 1, 1, 1));
        let kinds: Vec<ErrorKind> = errors.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            [
                ErrorKind::InputRejected,
                ErrorKind::Protocol,
                ErrorKind::Protocol,
                ErrorKind::UndecodableFrame,
                ErrorKind::MissingResults,
                ErrorKind::OwnMovesNotSeen,
            ]
        );
        assert!(errors[0].1.contains("wall"), "{errors:?}");
    }

    #[test]
    fn a_lost_connection_does_not_also_blame_missing_results() {
        let mut bot = BotState::new(8, snapshot()).unwrap();
        bot.next_input(&mut SmallRng::seed_from_u64(1), Instant::now()).unwrap();
        let (stats, errors) = bot.finish(true);
        assert_eq!(stats.missing, 1);
        assert!(errors.is_empty());
    }
}
