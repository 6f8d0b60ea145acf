//! One bot's life: connect, join, play, follow the world when it moves or its server
//! dies, close.
//!
//! The protocol logic lives in [`BotState`], a plain struct the async loop feeds with
//! server messages and asks for inputs: where the bot is, which moves are legal, which
//! inputs still wait for a result and which accepted moves were not yet seen in a Delta,
//! and what a Migrate or a lost connection does to them. [`play`] is the async shell
//! around it: the WebSocket, the timers, the phases, rejoining.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gaia_api::allocation::{AllocationRequest, AllocationResponse};
use gaia_api::protocol::{Encoding, InputOutcome, NEVER_RECEIVED, close};
use gaia_api::town::{Action, Change, ClientMsg, EntityId, ServerMsg, Snapshot};
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::matchmaker::backoff;
use crate::progress::Progress;
use crate::report::{BotOutcome, ErrorKind, Migration, PlayStats, Recovery, Resumption};
use crate::{Ctx, Phases, Settled};

/// How long a bot waits before connecting again to a server that answered 503 (busy
/// with connections waiting to join): the `Retry-After` game servers send.
const BUSY_RETRY: Duration = Duration::from_secs(1);
/// How long a bot waits for the TCP + WebSocket handshake, and then for its Welcome.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// After the steady phase: how long a bot keeps reading for in-flight results and the
/// deltas showing its accepted moves, at most (it stops as soon as nothing is owed). An
/// overloaded machine can take seconds; a result later than this counts as missing.
const DRAIN: Duration = Duration::from_secs(5);
/// How often a bot that sends no inputs (yet) pings, to stay under the idle timeout.
const KEEPALIVE: Duration = Duration::from_secs(10);
/// How long a bot waits for the server to answer its close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a bot whose connection broke tries to resume on the same server before it
/// allocates again: well within the servers' resume grace (10 s by default), and short,
/// as a server that does not answer by then is likely gone.
const RESUME_WINDOW: Duration = Duration::from_secs(3);
/// First wait before rejoining again after a failed connect or join (doubles up to 1 s).
const REJOIN_BACKOFF: Duration = Duration::from_millis(100);

/// What the shell must do after a message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    /// The world moved: leave this connection and join `address` with `token`.
    Migrate {
        address: String,
        token: String,
    },
}

/// What one bot knows about its world and its own inputs. No I/O: the async loop feeds
/// it messages with the time they arrived and asks it for the next input. It outlives
/// connections: after a Migrate or a loss, [`Self::rejoin`] puts it on the new one.
#[derive(Debug)]
pub(crate) struct BotState {
    you: EntityId,
    /// The map only; entities are dropped after finding our own.
    map: Snapshot,
    /// Last position the server told us (Welcome, then our own `Moved` changes).
    pos: (u16, u16),
    /// Highest tick seen on this connection (Welcome, Delta, Resync).
    tick: u64,
    /// The tick of the last whole snapshot (Welcome, Resync): an input applied by then
    /// shows in it, not in a Delta.
    snapshot_tick: u64,
    next_seq: u32,
    /// Sent, waiting for the InputResult: when it was sent and the step it asked for.
    awaiting_result: HashMap<u32, (Instant, (i8, i8))>,
    /// Accepted, waiting for our `Moved` in a Delta. Only the sum of the steps matters
    /// for where we will be, so their order does not.
    awaiting_move: VecDeque<(i8, i8)>,
    /// Set in the steady phase (until the bots stop): tick-to-client latency and the
    /// frames received are recorded then.
    pub(crate) measuring: bool,
    stats: PlayStats,
    errors: Vec<(ErrorKind, String)>,
}

/// Our entity's position in a Welcome's snapshot, and the snapshot without its entities.
fn locate(you: EntityId, mut snapshot: Snapshot) -> Result<((u16, u16), Snapshot), String> {
    let me = snapshot
        .entities
        .iter()
        .find(|e| e.id == you)
        .ok_or_else(|| format!("Welcome names entity {you}, which is not in its snapshot"))?;
    let pos = (me.x, me.y);
    snapshot.entities = Vec::new();
    Ok((pos, snapshot))
}

impl BotState {
    /// From the Welcome; fails when the snapshot does not hold the entity `you`.
    pub(crate) fn new(you: EntityId, snapshot: Snapshot, tick: u64) -> Result<Self, String> {
        let (pos, map) = locate(you, snapshot)?;
        Ok(Self {
            you,
            map,
            pos,
            tick,
            snapshot_tick: tick,
            next_seq: 1,
            awaiting_result: HashMap::new(),
            awaiting_move: VecDeque::new(),
            measuring: false,
            stats: PlayStats::default(),
            errors: Vec::new(),
        })
    }

    /// From the Welcome on a new connection to the same world: a new entity, the world's
    /// state as of `tick`; the tallies carry on. Call [`Self::connection_lost`] (or let
    /// a Migrate) forget the old connection's inputs first.
    pub(crate) fn rejoin(&mut self, you: EntityId, snapshot: Snapshot, tick: u64) -> Result<(), String> {
        let (pos, map) = locate(you, snapshot)?;
        self.forget();
        (self.you, self.map, self.pos, self.tick, self.snapshot_tick) = (you, map, pos, tick, tick);
        Ok(())
    }

    /// From the Welcome that answered a Resume: the same entity, the world as of `tick`.
    /// Inputs still waiting for a result keep waiting (their results follow, exactly
    /// once); accepted moves not yet seen in a Delta are in the snapshot.
    pub(crate) fn resumed(&mut self, you: EntityId, snapshot: Snapshot, tick: u64) -> Result<(), String> {
        if you != self.you {
            return Err(format!("resumed as entity {you}, not as {}", self.you));
        }
        let (pos, _) = locate(you, snapshot)?;
        (self.pos, self.tick, self.snapshot_tick) = (pos, self.tick.max(tick), tick);
        self.stats.own_moves_seen += self.awaiting_move.len() as u64;
        self.awaiting_move.clear();
        Ok(())
    }

    /// Whether every input sent has its result and every accepted move was seen.
    pub(crate) fn owes_nothing(&self) -> bool {
        self.awaiting_result.is_empty() && self.awaiting_move.is_empty()
    }

    /// The seqs of inputs sent that have had no result: what a Resume awaits.
    pub(crate) fn awaiting(&self) -> Vec<u32> {
        self.awaiting_result.keys().copied().collect()
    }

    /// When input `seq` was sent, while it waits for its result.
    pub(crate) fn sent_at(&self, seq: u32) -> Option<Instant> {
        self.awaiting_result.get(&seq).map(|(sent, _)| *sent)
    }

    /// Highest tick seen on this connection.
    pub(crate) fn tick(&self) -> u64 {
        self.tick
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

    /// Drops what the connection being left still owed us: inputs without a result were
    /// not applied (or were lost with the server's state); accepted moves not yet seen
    /// never will be, as our entity is replaced.
    fn forget(&mut self) {
        self.stats.unapplied += self.awaiting_result.len() as u64;
        self.awaiting_result.clear();
        self.stats.moves_forgotten += self.awaiting_move.len() as u64;
        self.awaiting_move.clear();
    }

    /// The connection broke or was closed without a Migrate; the bot will look for its
    /// world again. Not an error here: the shell records the loss.
    pub(crate) fn connection_lost(&mut self) {
        self.forget();
    }

    /// Takes in one message from the server after the Welcome.
    pub(crate) fn on_message(&mut self, msg: ServerMsg, now: Instant) -> Flow {
        self.stats.steady_frames += u64::from(self.measuring);
        match msg {
            ServerMsg::Delta { tick, changes, server_us } => {
                self.stats.deltas += 1;
                self.tick = self.tick.max(tick);
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
            ServerMsg::InputResult { seq, tick, outcome } => {
                let Some((sent, step)) = self.awaiting_result.remove(&seq) else {
                    self.error(ErrorKind::Protocol, format!("InputResult for seq {seq}, which is not pending"));
                    return Flow::Continue;
                };
                let latency = now.saturating_duration_since(sent);
                self.stats.input_latency_us.push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
                match outcome {
                    // Held while we were away or behind: the Welcome or Resync snapshot
                    // we have already shows the move.
                    InputOutcome::Ok if tick <= self.snapshot_tick => {
                        self.stats.ok += 1;
                        self.stats.own_moves_seen += 1;
                    }
                    InputOutcome::Ok => {
                        self.stats.ok += 1;
                        self.awaiting_move.push_back(step);
                    }
                    // A Resume's answer for an input lost with the old connection.
                    InputOutcome::Rejected { reason } if tick == 0 && reason == NEVER_RECEIVED => {
                        self.stats.unapplied += 1;
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
            ServerMsg::Resync { tick, snapshot, .. } => {
                self.stats.resyncs += 1;
                self.tick = self.tick.max(tick);
                self.snapshot_tick = tick;
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
            // Every applied input has had its result and the last Delta came before
            // this, so what is still outstanding was not applied; an accepted move not
            // yet seen moving breaks that promise.
            ServerMsg::Migrate { address, token } => {
                if !self.awaiting_move.is_empty() {
                    let message = format!(
                        "{} accepted moves not seen moving before Migrate to {address}",
                        self.awaiting_move.len()
                    );
                    self.error(ErrorKind::OwnMovesNotSeen, message);
                }
                self.forget();
                return Flow::Migrate { address, token };
            }
            ServerMsg::Error { code, message } => {
                self.error(ErrorKind::Protocol, format!("server error {code}: {message}"));
            }
        }
        Flow::Continue
    }

    /// Records a frame that did not decode.
    pub(crate) fn on_undecodable(&mut self, message: String) {
        self.error(ErrorKind::UndecodableFrame, message);
    }

    /// The bot's tally at the end. Results and moves still outstanding are errors, unless
    /// the bot's last connection ended early (then what ended it is the error that
    /// explains them).
    pub(crate) fn finish(mut self, ended_early: bool) -> (PlayStats, Vec<(ErrorKind, String)>) {
        self.stats.missing = self.awaiting_result.len() as u64;
        if !ended_early {
            if !self.awaiting_result.is_empty() {
                let mut seqs: Vec<u32> = self.awaiting_result.keys().copied().collect();
                seqs.sort_unstable();
                seqs.truncate(5);
                let message = format!("{} input results never came (seq {seqs:?}..)", self.awaiting_result.len());
                self.error(ErrorKind::MissingResults, message);
            }
            // Forgotten moves were accounted for when their connection ended.
            if self.stats.own_moves_seen + self.stats.moves_forgotten != self.stats.ok {
                let message =
                    format!("{} accepted moves, {} own Moved changes seen", self.stats.ok, self.stats.own_moves_seen);
                self.error(ErrorKind::OwnMovesNotSeen, message);
            }
        }
        (self.stats, self.errors)
    }
}

/// A bot's WebSocket, and the encoding its handshake asked for.
struct Socket {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    encoding: Encoding,
}

impl Socket {
    /// Sends `msg`; the size of its frame's payload.
    async fn send(&mut self, msg: &ClientMsg) -> Result<usize, tokio_tungstenite::tungstenite::Error> {
        let frame = self.encoding.encode_client(msg);
        let bytes = frame.len();
        let message = match self.encoding {
            Encoding::Bincode => Message::Binary(frame.into()),
            // serde_json writes UTF-8.
            Encoding::Json => Message::text(String::from_utf8(frame).unwrap_or_default()),
        };
        self.ws.send(message).await.map(|()| bytes)
    }
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The server sent a close frame: its code, if any, and reason.
    Closed(Option<u16>, String),
    /// An error or end of stream without a close frame: a crashed server, a cut network.
    Broken(String),
}

impl Ended {
    /// Whether the world may be found again by allocating a seat in it: the connection
    /// broke, the server went away without saying where (1001 without a Migrate), or
    /// the world cannot run there now (4012).
    pub(crate) fn should_rejoin(&self) -> bool {
        match self {
            Self::Broken(_) => true,
            Self::Closed(Some(code), _) => matches!(*code, close::GOING_AWAY | close::WORLD_UNAVAILABLE),
            Self::Closed(None, _) => false,
        }
    }
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed(Some(code), reason) => write!(f, "{code} {reason}"),
            Self::Closed(None, _) => f.write_str("closed without a code"),
            Self::Broken(why) => write!(f, "connection lost: {why}"),
        }
    }
}

/// What came off the socket.
enum Inbound {
    /// A message, and the size of its frame's payload.
    Msg(ServerMsg, usize),
    Undecodable(String),
    Closed(Ended),
}

async fn next_inbound(ws: &mut Socket) -> Inbound {
    let encoding = ws.encoding;
    loop {
        return match ws.ws.next().await {
            Some(Ok(Message::Binary(frame))) if encoding == Encoding::Bincode => match encoding.decode_server(&frame) {
                Ok(msg) => Inbound::Msg(msg, frame.len()),
                Err(e) => Inbound::Undecodable(e.to_string()),
            },
            Some(Ok(Message::Text(text))) if encoding == Encoding::Json => {
                match encoding.decode_server(text.as_bytes()) {
                    Ok(msg) => Inbound::Msg(msg, text.len()),
                    Err(e) => Inbound::Undecodable(e.to_string()),
                }
            }
            Some(Ok(Message::Binary(frame))) => Inbound::Undecodable(format!("binary frame of {} bytes", frame.len())),
            Some(Ok(Message::Text(text))) => Inbound::Undecodable(format!("text frame of {} bytes", text.len())),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Close(Some(frame)))) => {
                Inbound::Closed(Ended::Closed(Some(u16::from(frame.code)), frame.reason.to_string()))
            }
            Some(Ok(Message::Close(None))) => Inbound::Closed(Ended::Closed(None, String::new())),
            Some(Err(e)) => Inbound::Closed(Ended::Broken(e.to_string())),
            None => Inbound::Closed(Ended::Broken("end of stream".into())),
        };
    }
}

/// A Welcome and the connection it came on.
struct Joined {
    ws: Socket,
    world_id: String,
    you: EntityId,
    tick: u64,
    snapshot: Snapshot,
    /// To resume with, should this connection break.
    resume: String,
}

/// Connects, sends Join and waits for the Welcome.
async fn join(address: &str, token: &str, encoding: Encoding) -> Result<Joined, (ErrorKind, String)> {
    hello(address, ClientMsg::Join { token: token.to_string() }, encoding, JOIN_TIMEOUT).await
}

/// Connects again to the server a connection to broke from, sends Resume and waits for
/// the Welcome.
async fn resume(
    address: &str,
    token: &str,
    awaiting: Vec<u32>,
    encoding: Encoding,
) -> Result<Joined, (ErrorKind, String)> {
    hello(address, ClientMsg::Resume { token: token.to_string(), awaiting }, encoding, RESUME_WINDOW).await
}

/// Connects, sends `first` (Join or Resume) and waits for the Welcome, each step within `timeout`.
async fn hello(
    address: &str,
    first: ClientMsg,
    encoding: Encoding,
    timeout: Duration,
) -> Result<Joined, (ErrorKind, String)> {
    // Server frames are small: tungstenite's default 128 KiB read buffer would cost
    // 1.3 GB over 10,000 bots and be zeroed on every read.
    let config = WebSocketConfig::default().read_buffer_size(2 * 1024).write_buffer_size(0);
    let request = || {
        let mut request = address.into_client_request()?;
        // Bincode is the default: a handshake that names no subprotocol gets it.
        if encoding != Encoding::Bincode {
            request.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL,
                tokio_tungstenite::tungstenite::http::HeaderValue::from_static(encoding.subprotocol()),
            );
        }
        Ok::<_, tokio_tungstenite::tungstenite::Error>(request)
    };
    let deadline = Instant::now() + timeout;
    let mut ws = loop {
        let request = request().map_err(|e| (ErrorKind::ConnectFailed, format!("{address}: {e}")))?;
        let connect = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
        match tokio::time::timeout_at(deadline, connect).await {
            Ok(Ok((ws, _))) => break Socket { ws, encoding },
            // Too many connections wait to join there (a whole server's players arriving
            // after a Migrate): come back when it says, as docs/protocol.md asks.
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(busy)))
                if busy.status() == 503 && Instant::now() + BUSY_RETRY < deadline =>
            {
                tokio::time::sleep(BUSY_RETRY).await;
            }
            Ok(Err(e)) => return Err((ErrorKind::ConnectFailed, format!("{address}: {e}"))),
            Err(_) => {
                return Err((ErrorKind::ConnectFailed, format!("{address}: no handshake within {timeout:?}")));
            }
        }
    };
    if let Err(e) = ws.send(&first).await {
        return Err((ErrorKind::ConnectFailed, format!("{address}: sending the first frame: {e}")));
    }
    let first = match tokio::time::timeout(timeout, next_inbound(&mut ws)).await {
        Ok(first) => first,
        Err(_) => return Err((ErrorKind::JoinRefused, format!("no Welcome within {timeout:?}"))),
    };
    match first {
        Inbound::Msg(ServerMsg::Welcome { world_id, you, tick, snapshot, resume, .. }, _) => {
            Ok(Joined { ws, world_id, you, tick, snapshot, resume })
        }
        Inbound::Msg(ServerMsg::Error { code, message }, _) => {
            Err((ErrorKind::JoinRefused, format!("{code} {message}")))
        }
        // The world moved before we got in: like a refusal, allocating again finds it.
        Inbound::Msg(ServerMsg::Migrate { address, .. }, _) => {
            Err((ErrorKind::JoinRefused, format!("Migrate to {address} instead of a Welcome")))
        }
        Inbound::Msg(other, _) => Err((ErrorKind::Protocol, format!("expected Welcome, got {}", kind_of(&other)))),
        Inbound::Undecodable(e) => Err((ErrorKind::UndecodableFrame, e)),
        Inbound::Closed(ended) => Err((ErrorKind::JoinRefused, ended.to_string())),
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

/// Closes without waiting for the server's answer: used when leaving a server that
/// is about to close anyway (Migrate) or a connection we will not use.
async fn leave(mut ws: Socket) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.ws.close(None)).await;
}

/// Joins the allocated world and plays until the run ends, following the world when a
/// Migrate moves it and finding it again when the connection is lost. `seat` allocates
/// a seat in this world; `allocated_at` is when this bot's allocation started (join time
/// counts from there); `permit` (one of the connect slots) and `settled` (tells the run
/// this bot is done joining) are dropped once the bot has joined or failed to.
pub(crate) async fn play(
    ctx: Arc<Ctx>,
    seat: Arc<AllocationRequest>,
    mut outcome: BotOutcome,
    alloc: AllocationResponse,
    allocated_at: Instant,
    permit: OwnedSemaphorePermit,
    settled: Settled,
) -> BotOutcome {
    let phases = &*ctx.phases;
    let joined = tokio::select! {
        _ = phases.stop.cancelled() => return outcome,
        joined = join(&alloc.address, &alloc.join_token, ctx.encoding) => joined,
    };
    let welcomed_at = Instant::now();
    drop(permit);
    drop(settled);
    let Joined { mut ws, world_id, you, tick, snapshot, resume: mut token } = match joined {
        Ok(joined) => joined,
        Err((kind, message)) => {
            outcome.error(kind, message);
            return outcome;
        }
    };
    if world_id != alloc.world_id {
        outcome.error(ErrorKind::WrongWorld, format!("allocated world {}, welcomed to {world_id}", alloc.world_id));
        leave(ws).await;
        return outcome;
    }
    let mut state = match BotState::new(you, snapshot, tick) {
        Ok(state) => state,
        Err(e) => {
            outcome.error(ErrorKind::Protocol, e);
            leave(ws).await;
            return outcome;
        }
    };
    outcome.join_us = Some(micros(welcomed_at.saturating_duration_since(allocated_at)));
    phases.progress.bot_joined();

    // The server we are on (a name, or an address after a Migrate), its address, and since when.
    let mut server = alloc.server;
    let mut address = alloc.address;
    let mut since = welcomed_at;
    let ended_early = loop {
        let exit = match run_inputs(phases, &mut ws, &mut state, ctx.input_period).await {
            Exit::Stopped => match drain(&mut ws, &mut state, &phases.progress).await {
                Some(exit) => exit,
                None => {
                    outcome.connected += since.elapsed();
                    let bye = CloseFrame { code: CloseCode::Normal, reason: "loadgen done".into() };
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                        if ws.ws.close(Some(bye)).await.is_ok() {
                            while ws.ws.next().await.is_some() {}
                        }
                    })
                    .await;
                    break false;
                }
            },
            exit => exit,
        };
        let left_at = Instant::now();
        outcome.connected += left_at.saturating_duration_since(since);
        // The end of the run: nothing is followed or rejoined any more.
        let stopping = phases.stop.is_cancelled();
        let last_tick = state.tick();
        match exit {
            Exit::Stopped => break false,
            Exit::Migrate { address: to, token: join_token } => {
                leave(ws).await;
                if stopping {
                    break false;
                }
                let followed = tokio::select! {
                    _ = phases.stop.cancelled() => None,
                    joined = join(&to, &join_token, ctx.encoding) => Some(joined),
                };
                match followed {
                    None => break false,
                    Some(Ok(Joined { ws: new_ws, world_id, you, tick, snapshot, resume })) => {
                        if !rejoined(&mut outcome, &mut state, &seat, &world_id, you, snapshot, tick) {
                            leave(new_ws).await;
                            break true;
                        }
                        let migration = Migration {
                            world_id,
                            last_tick_seen: last_tick,
                            welcome_tick: tick,
                            pause: left_at.elapsed(),
                            server_before: std::mem::replace(&mut server, to.clone()),
                            server_after: server.clone(),
                        };
                        outcome.migrations.push(migration);
                        (ws, since, token, address) = (new_ws, Instant::now(), resume, to);
                        continue;
                    }
                    // Not what a Migrate promised, but the world may still be found.
                    Some(Err((kind, message))) => {
                        outcome.error(kind, format!("following Migrate to {to}: {message}"));
                    }
                }
            }
            // Broken without a close: the server may still hold our member, away.
            Exit::Ended(ended @ Ended::Broken(_)) if !stopping => {
                leave(ws).await;
                let resumed = tokio::select! {
                    _ = phases.stop.cancelled() => None,
                    resumed = resume(&address, &token, state.awaiting(), ctx.encoding) => Some(resumed),
                };
                let failed = match resumed {
                    None => format!("the run ended while resuming on {server}"),
                    Some(Ok(Joined { ws: new_ws, world_id, you, tick, snapshot, resume })) => {
                        if world_id != alloc.world_id {
                            outcome.error(ErrorKind::WrongWorld, format!("resumed in world {world_id}"));
                            leave(new_ws).await;
                            break true;
                        }
                        if let Err(e) = state.resumed(you, snapshot, tick) {
                            outcome.error(ErrorKind::Protocol, e);
                            leave(new_ws).await;
                            break true;
                        }
                        let resumption = Resumption {
                            world_id,
                            last_tick_seen: last_tick,
                            welcome_tick: tick,
                            outage: left_at.elapsed(),
                            server: server.clone(),
                        };
                        outcome.resumptions.push(resumption);
                        (ws, since, token) = (new_ws, Instant::now(), resume);
                        continue;
                    }
                    Some(Err((_, message))) => format!("resume refused: {message}"),
                };
                outcome.error(ErrorKind::ConnectionLost, format!("{ended} (on {server}); {failed}"));
                state.connection_lost();
                if phases.stop.is_cancelled() {
                    break true;
                }
            }
            Exit::Ended(ended) if ended.should_rejoin() && !stopping => {
                outcome.error(ErrorKind::ConnectionLost, format!("{ended} (on {server})"));
                state.connection_lost();
                leave(ws).await;
            }
            Exit::Ended(ended) => {
                outcome.error(ErrorKind::DisconnectedEarly, ended.to_string());
                break true;
            }
        }
        // Lost (or a Migrate that led nowhere): find the world through the allocator.
        let (joined, server_after, address_after) = match rejoin(&ctx, &seat, left_at).await {
            // The run ended meanwhile; the loss is already an error.
            None => break true,
            Some(Ok(rejoined)) => rejoined,
            Some(Err((kind, message))) => {
                outcome.error(kind, message);
                break true;
            }
        };
        let Joined { ws: new_ws, world_id, you, tick, snapshot, resume } = joined;
        if !rejoined(&mut outcome, &mut state, &seat, &world_id, you, snapshot, tick) {
            leave(new_ws).await;
            break true;
        }
        let recovery = Recovery {
            world_id,
            last_tick_seen: last_tick,
            welcome_tick: tick,
            outage: left_at.elapsed(),
            server_before: std::mem::replace(&mut server, server_after),
            server_after: server.clone(),
        };
        outcome.recoveries.push(recovery);
        (ws, since, token, address) = (new_ws, Instant::now(), resume, address_after);
    };
    let (stats, errors) = state.finish(ended_early);
    outcome.play = Some(stats);
    for (kind, message) in errors {
        outcome.error(kind, message);
    }
    outcome
}

/// Puts the bot on a new connection to its world; `false` (and an error) when the
/// Welcome is for another world or does not hold our entity.
fn rejoined(
    outcome: &mut BotOutcome,
    state: &mut BotState,
    seat: &AllocationRequest,
    world_id: &str,
    you: EntityId,
    snapshot: Snapshot,
    tick: u64,
) -> bool {
    let world = seat.world_id.as_deref().unwrap_or_default();
    if world_id != world {
        outcome.error(ErrorKind::WrongWorld, format!("rejoining world {world}, welcomed to {world_id}"));
        return false;
    }
    if let Err(e) = state.rejoin(you, snapshot, tick) {
        outcome.error(ErrorKind::Protocol, e);
        return false;
    }
    true
}

/// Finds the world again: allocates a seat in it and joins where the allocator says,
/// retrying (with a new allocation, as a token is for one server) when the connect or
/// the join fails, until `reconnect_timeout` after `since`. The allocator may still
/// name the dead server, or answer 429, until the control plane notices. `None` when the
/// run stopped meanwhile; otherwise the Welcome, the server's name and address, or the error that
/// made the bot give up.
async fn rejoin(
    ctx: &Ctx,
    seat: &AllocationRequest,
    since: Instant,
) -> Option<Result<(Joined, String, String), (ErrorKind, String)>> {
    let deadline = since + ctx.reconnect_timeout;
    let world = seat.world_id.as_deref().unwrap_or_default();
    let attempts = async {
        let mut rng = SmallRng::from_rng(&mut rand::rng());
        let mut retry = 0u32;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let response = match ctx.matchmaker.allocate_within(seat, left).await.result {
                Ok(response) => response,
                Err(message) => {
                    return Err((ErrorKind::AllocationFailed, format!("allocating world {world} again: {message}")));
                }
            };
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            let failed =
                match tokio::time::timeout(left, join(&response.address, &response.join_token, ctx.encoding)).await {
                    Ok(Ok(joined)) => return Ok((joined, response.server, response.address)),
                    Ok(Err((kind @ (ErrorKind::ConnectFailed | ErrorKind::JoinRefused), message))) => {
                        (kind, format!("{}: {message}", response.server))
                    }
                    Ok(Err(other)) => return Err(other),
                    Err(_) => (ErrorKind::ConnectFailed, format!("{}: no Welcome in time", response.server)),
                };
            let wait = backoff(REJOIN_BACKOFF, retry, &mut rng);
            if Instant::now() + wait >= deadline {
                let (kind, message) = failed;
                let after = humantime::format_duration(ctx.reconnect_timeout);
                return Err((kind, format!("gave up rejoining world {world} after {after}: {message}")));
            }
            retry += 1;
            tokio::time::sleep(wait).await;
        }
    };
    tokio::select! {
        _ = ctx.phases.stop.cancelled() => None,
        rejoined = attempts => Some(rejoined),
    }
}

/// Why a connection's read loop ended.
enum Exit {
    /// The run is ending.
    Stopped,
    /// The world moved (the state has already let go of the old connection's inputs).
    Migrate {
        address: String,
        token: String,
    },
    Ended(Ended),
}

fn handle(state: &mut BotState, inbound: Inbound, progress: &Progress) -> Option<Exit> {
    match inbound {
        Inbound::Msg(msg, bytes) => {
            state.stats.bytes_in += bytes as u64;
            let now = Instant::now();
            let accepted = match &msg {
                ServerMsg::InputResult { seq, outcome: InputOutcome::Ok, .. } => state.sent_at(*seq),
                _ => None,
            };
            let flow = state.on_message(msg, now);
            if let Some(sent) = accepted {
                progress.input_ok(now.saturating_duration_since(sent));
            }
            match flow {
                Flow::Continue => None,
                Flow::Migrate { address, token } => Some(Exit::Migrate { address, token }),
            }
        }
        Inbound::Undecodable(e) => {
            state.on_undecodable(e);
            None
        }
        Inbound::Closed(ended) => Some(Exit::Ended(ended)),
    }
}

/// Reads frames until `stop`; once the steady phase starts, sends a Move every period.
/// Returns why it stopped.
async fn run_inputs(phases: &Phases, ws: &mut Socket, state: &mut BotState, input_period: Option<Duration>) -> Exit {
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    // Set once the steady phase has started: the first input goes at a random offset
    // within one period so the bots' inputs are spread over it.
    let mut next_input: Option<Instant> = None;
    // Made once per connection, not per frame: in a profile of the 10,000-bot run,
    // creating and dropping these waits on every turn (cancellation waiters, timer
    // entries) showed up.
    let stop = phases.stop.cancelled();
    let steady = phases.steady.cancelled();
    // Until inputs are due, a Ping every KEEPALIVE: the server closes a client silent
    // for its idle timeout, and on a slow machine the join phase of a big run is long.
    let due = tokio::time::sleep(KEEPALIVE);
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
            _ = &mut stop => {
                // What arrives while draining came after the servers' CPU was sampled.
                state.measuring = false;
                return Exit::Stopped;
            }
            inbound = next_inbound(ws) => {
                if let Some(exit) = handle(state, inbound, &phases.progress) {
                    return exit;
                }
            }
            // Only wakes the loop; the schedule is set at its top.
            _ = &mut steady, if !steady_now && input_period.is_some() => {}
            _ = &mut due => {
                if next_input.is_none() {
                    match ws.send(&ClientMsg::Ping { nonce: 0 }).await {
                        Ok(bytes) => state.stats.bytes_out += bytes as u64,
                        Err(e) => return Exit::Ended(Ended::Broken(format!("sending ping: {e}"))),
                    }
                    due.as_mut().reset(Instant::now() + KEEPALIVE);
                    continue;
                }
                if let Some(input) = state.next_input(&mut rng, Instant::now()) {
                    match ws.send(&input).await {
                        Ok(bytes) => state.stats.bytes_out += bytes as u64,
                        Err(e) => return Exit::Ended(Ended::Broken(format!("sending input: {e}"))),
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

/// Keeps reading, for at most [`DRAIN`], until every in-flight result and accepted move
/// has arrived; `None` when the connection is still there.
async fn drain(ws: &mut Socket, state: &mut BotState, progress: &Progress) -> Option<Exit> {
    let until = Instant::now() + DRAIN;
    while !state.owes_nothing() {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return None,
            inbound = next_inbound(ws) => {
                if let Some(exit) = handle(state, inbound, progress) {
                    return Some(exit);
                }
            }
        }
    }
    None
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
        result_at(seq, ok, 1)
    }

    fn result_at(seq: u32, ok: bool, tick: u64) -> ServerMsg {
        let outcome = if ok { InputOutcome::Ok } else { InputOutcome::Rejected { reason: "wall".into() } };
        ServerMsg::InputResult { seq, tick, outcome }
    }

    fn step_of(msg: &ClientMsg) -> (u32, i8, i8) {
        match msg {
            ClientMsg::Input { seq, action: Action::Move { dx, dy } } => (*seq, *dx, *dy),
            other => panic!("not a move: {other:?}"),
        }
    }

    #[test]
    fn starts_at_its_entity_and_needs_it() {
        let bot = BotState::new(7, snapshot(), 0).unwrap();
        assert_eq!(bot.expected_pos(), (0, 0));
        assert!(BotState::new(99, snapshot(), 0).unwrap_err().contains("99"));
    }

    #[test]
    fn legal_steps_avoid_walls_and_edges() {
        let bot = BotState::new(7, snapshot(), 0).unwrap();
        // From the corner (0,0): (1,0) and (1,1) are walls, the rest is off the map.
        assert_eq!(bot.legal_steps(), vec![(0, 1)]);
        let bot = BotState::new(8, snapshot(), 0).unwrap();
        assert_eq!(bot.legal_steps(), vec![(-1, 0), (0, -1), (-1, -1)]);
    }

    #[test]
    fn walled_in_bot_sends_nothing() {
        let mut map = snapshot();
        map.walls = vec![0xff, 0xff];
        let mut bot = BotState::new(7, map, 0).unwrap();
        assert!(bot.next_input(&mut SmallRng::seed_from_u64(1), Instant::now()).is_none());
        assert_eq!(bot.next_seq, 1);
    }

    #[test]
    fn random_inputs_are_always_legal_from_the_expected_position() {
        let mut rng = SmallRng::seed_from_u64(42);
        let map = snapshot();
        let mut bot = BotState::new(7, map.clone(), 0).unwrap();
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
        let mut bot = BotState::new(7, snapshot(), 0).unwrap();
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
        let mut bot = BotState::new(8, snapshot(), 0).unwrap();
        for _ in 0..3 {
            bot.next_input(&mut rng, t0).unwrap();
        }
        bot.on_message(result(1, false), t0); // rejected
        bot.on_message(result(2, true), t0); // accepted, never seen moving
        bot.on_message(result(2, true), t0); // answered twice
        bot.on_message(
            ServerMsg::Welcome {
                world_id: "w".into(),
                you: 8,
                tick: 1,
                snapshot: snapshot(),
                resume: String::new(),
                messages: Vec::new(),
            },
            t0,
        );
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

    fn migrate() -> ServerMsg {
        ServerMsg::Migrate { address: "ws://b/ws".into(), token: "t2".into() }
    }

    /// The snapshot a new server sends: the same map, our old entity gone, us as 9 at (2,0).
    fn moved_world() -> Snapshot {
        let mut map = snapshot();
        map.entities.retain(|e| e.id != 7);
        map.entities.push(Entity { id: 9, kind: EntityKind::Bot, name: "b9".into(), x: 2, y: 0 });
        map
    }

    #[test]
    fn migrate_forgets_unanswered_inputs_and_the_bot_carries_on_as_a_new_entity() {
        let t0 = Instant::now();
        let mut rng = SmallRng::seed_from_u64(3);
        let mut bot = BotState::new(7, snapshot(), 40).unwrap();
        for _ in 0..3 {
            bot.next_input(&mut rng, t0).unwrap();
        }
        // seq 1 applied and seen; 2 and 3 still unanswered when the world moves.
        bot.on_message(result_at(1, true, 41), t0);
        bot.on_message(
            ServerMsg::Delta { tick: 41, server_us: 0, changes: vec![Change::Moved { id: 7, x: 0, y: 1 }] },
            t0,
        );
        let flow = bot.on_message(migrate(), t0);
        assert_eq!(flow, Flow::Migrate { address: "ws://b/ws".into(), token: "t2".into() });
        assert_eq!(bot.tick(), 41);
        assert_eq!((bot.stats.unapplied, bot.stats.moves_forgotten), (2, 0));
        assert!(bot.errors.is_empty(), "{:?}", bot.errors);

        // Same world on the new server, the tick continuing, us a new entity elsewhere.
        bot.rejoin(9, moved_world(), 41).unwrap();
        assert_eq!((bot.you, bot.pos, bot.tick(), bot.expected_pos()), (9, (2, 0), 41, (2, 0)));
        // Moves of the entity we were are not ours any more.
        bot.on_message(moved(7, 0, 2), t0);
        assert_eq!(bot.pos, (2, 0));
        let (seq, dx, dy) = step_of(&bot.next_input(&mut rng, t0).unwrap());
        assert_eq!(seq, 4, "sequence numbers carry on");
        let target = (2 + i32::from(dx), i32::from(dy));
        bot.on_message(result_at(seq, true, 42), t0);
        bot.on_message(moved(9, target.0 as u16, target.1 as u16), t0);
        let (stats, errors) = bot.finish(false);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!((stats.sent, stats.ok, stats.rejected, stats.missing, stats.unapplied), (4, 2, 0, 0, 2));
        assert_eq!(stats.sent, stats.ok + stats.rejected + stats.missing + stats.unapplied);
        assert_eq!((stats.own_moves_seen, stats.deltas), (2, 3));
    }

    #[test]
    fn a_resumed_bot_keeps_its_inputs_and_takes_held_results_as_seen() {
        let t0 = Instant::now();
        let mut rng = SmallRng::seed_from_u64(5);
        let mut bot = BotState::new(8, snapshot(), 10).unwrap();
        for _ in 0..4 {
            bot.next_input(&mut rng, t0).unwrap();
        }
        // seq 1 accepted at tick 11, its move not yet seen, when the connection breaks.
        bot.on_message(result_at(1, true, 11), t0);
        let mut awaiting = bot.awaiting();
        awaiting.sort_unstable();
        assert_eq!(awaiting, [2, 3, 4]);
        assert!(bot.resumed(7, snapshot(), 20).unwrap_err().contains("not as 8"));
        // The server has us one step up-left of where we were, as of tick 20.
        let mut world = snapshot();
        world.entities[1] = Entity { id: 8, kind: EntityKind::Bot, name: "b8".into(), x: 2, y: 1 };
        bot.resumed(8, world, 20).unwrap();
        assert_eq!((bot.pos, bot.tick()), ((2, 1), 20));
        // seq 2 applied while away (in the snapshot), seq 3 never reached the server,
        // seq 4 applied later and seen in a Delta.
        bot.on_message(result_at(2, true, 15), t0);
        let never = InputOutcome::Rejected { reason: NEVER_RECEIVED.into() };
        bot.on_message(ServerMsg::InputResult { seq: 3, tick: 0, outcome: never }, t0);
        bot.on_message(result_at(4, true, 21), t0);
        bot.on_message(
            ServerMsg::Delta { tick: 22, server_us: 0, changes: vec![Change::Moved { id: 8, x: 1, y: 1 }] },
            t0,
        );
        assert!(bot.awaiting().is_empty());
        let (stats, errors) = bot.finish(false);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!((stats.sent, stats.ok, stats.rejected, stats.unapplied, stats.missing), (4, 3, 0, 1, 0));
        assert_eq!(stats.own_moves_seen, 3);
    }

    #[test]
    fn an_accepted_move_not_seen_before_migrate_is_an_error_once() {
        let t0 = Instant::now();
        let mut bot = BotState::new(8, snapshot(), 0).unwrap();
        bot.next_input(&mut SmallRng::seed_from_u64(1), t0).unwrap();
        bot.on_message(result(1, true), t0);
        bot.on_message(migrate(), t0);
        // The stale step must not steer the new entity.
        bot.rejoin(9, moved_world(), 5).unwrap();
        assert_eq!(bot.expected_pos(), (2, 0));
        let (stats, errors) = bot.finish(false);
        assert_eq!((stats.ok, stats.own_moves_seen, stats.moves_forgotten, stats.unapplied), (1, 0, 1, 0));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].0, ErrorKind::OwnMovesNotSeen);
        assert!(errors[0].1.contains("before Migrate to ws://b/ws"), "{errors:?}");
    }

    #[test]
    fn a_lost_connection_forgets_what_was_outstanding_and_the_restore_may_go_back_in_time() {
        let t0 = Instant::now();
        let mut rng = SmallRng::seed_from_u64(3);
        let mut bot = BotState::new(7, snapshot(), 10).unwrap();
        bot.next_input(&mut rng, t0).unwrap();
        bot.next_input(&mut rng, t0).unwrap();
        bot.on_message(result(1, true), t0);
        bot.on_message(ServerMsg::Resync { tick: 30, snapshot: snapshot(), messages: Vec::new() }, t0);
        bot.on_message(ServerMsg::Delta { tick: 31, server_us: 0, changes: vec![] }, t0);
        // seq 2 unanswered; the Resync accounted for seq 1's move.
        bot.connection_lost();
        assert_eq!(bot.tick(), 31);
        // Restored from an older checkpoint.
        bot.rejoin(9, moved_world(), 22).unwrap();
        assert_eq!(bot.tick(), 22);
        bot.on_message(ServerMsg::Delta { tick: 23, server_us: 0, changes: vec![] }, t0);
        let (stats, errors) = bot.finish(false);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!((stats.sent, stats.ok, stats.unapplied, stats.missing, stats.resyncs), (2, 1, 1, 0, 1));
    }

    #[test]
    fn a_rejoin_needs_our_entity_in_the_snapshot() {
        let mut bot = BotState::new(7, snapshot(), 0).unwrap();
        assert!(bot.rejoin(42, moved_world(), 1).unwrap_err().contains("42"));
        assert_eq!(bot.you, 7);
    }

    #[test]
    fn which_endings_send_the_bot_looking_for_its_world() {
        let closed = |code: u16| Ended::Closed(Some(code), "why".into());
        assert!(Ended::Broken("reset".into()).should_rejoin());
        assert!(closed(close::GOING_AWAY).should_rejoin());
        assert!(closed(close::WORLD_UNAVAILABLE).should_rejoin());
        for code in [1000, close::TOO_SLOW, close::IDLE, close::BAD_TOKEN] {
            assert!(!closed(code).should_rejoin(), "{code}");
        }
        assert!(!Ended::Closed(None, String::new()).should_rejoin());
        assert_eq!(closed(4012).to_string(), "4012 why");
        assert_eq!(Ended::Broken("reset".into()).to_string(), "connection lost: reset");
    }

    #[test]
    fn a_lost_connection_does_not_also_blame_missing_results() {
        let mut bot = BotState::new(8, snapshot(), 0).unwrap();
        bot.next_input(&mut SmallRng::seed_from_u64(1), Instant::now()).unwrap();
        let (stats, errors) = bot.finish(true);
        assert_eq!(stats.missing, 1);
        assert!(errors.is_empty());
    }
}
