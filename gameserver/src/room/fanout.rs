//! A world's members and the frames each tick sends them.
//!
//! Each tick the world sends each input's result at once. Every `send_every` ticks it
//! encodes the changes since the last frame **once** per encoding in use (bincode,
//! JSON), as one Delta, and gives every member of that encoding the same bytes: inputs
//! are answered at the tick rate (20 Hz by default) while clients get one frame per delta
//! period (10 Hz).
//!
//! Slow readers: each member has a bounded send queue. When it is full the member is
//! *behind*: it gets no deltas, and its input results are held (a few). Once its queue
//! has drained to half, it gets a `Resync` (the whole world, encoded once per tick for
//! everyone who needs one), its held results, and deltas again. A member behind for
//! longer than `max_behind`, or with too many held results, is dropped (its connection
//! closes with `TOO_SLOW`). So a slow reader can neither grow memory nor stall the world.
//!
//! Spectators ([`Rooms::spectate`](super::Rooms::spectate)) watch a running world: they
//! get its Welcome (`you` 0: no entity) and deltas like members, but the world's engine
//! never hears of them, so they are no player, count toward no player limit
//! (`max_spectators` of their own), and do not keep a world alive. Their connection
//! refuses their inputs itself.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use gaia_api::protocol::{Encoding, InputOutcome, ServerMsg, close};
use gaia_api::token::{ResumeClaims, unix_ms};
use tokio::sync::mpsc;

use super::cmd::{Cmd, JoinError, Outbound};
use super::config::{ResumeConfig, RoomConfig};
use crate::closing::Closing;
use crate::engine::{Engine, Event, TickOutput};
use crate::farewell::Farewell;
use crate::metrics::Metrics;
use crate::recent::RecentLines;
use crate::world::{MemberId, World};

/// A resume token is refused past this age; the grace, not this, bounds a resume.
const RESUME_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// At most this many results are kept per member for a resume (see
/// [`ResumeConfig::keep_results`]): more than 30 s at the default input rate limit (20/s).
const RECENT_RESULTS_MAX: usize = 1024;
/// Bytes a world's result buffer takes at a time: a few hundred results.
const RESULTS_BUFFER: usize = 4096;

/// A member as its world sees it.
pub(super) struct Member {
    pub(super) out: mpsc::Sender<Outbound>,
    /// The player id from its join token, for the token of a move.
    pub(super) player: String,
    /// How its connection's frames are written.
    pub(super) encoding: Encoding,
    /// What it controls, as its Welcome said.
    pub(super) you: u32,
    pub(super) standing: Standing,
    /// Its results of the last `keep_results` (seq, tick, frame), for a resume.
    pub(super) recent: std::collections::VecDeque<(u32, u64, Bytes)>,
    /// Input results held until the Welcome or the resync, sent to the connection if
    /// the member goes first.
    pub(super) farewell: Farewell,
    /// Watches only: not in the world's engine, never moved, never parked.
    pub(super) spectator: bool,
}

/// An accepted join, waiting for the tick that adds it.
pub(super) struct Joining {
    pub(super) out: mpsc::Sender<Outbound>,
    pub(super) player: String,
    pub(super) encoding: Encoding,
    pub(super) farewell: Farewell,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Standing {
    /// In the world; its Welcome goes with the next delta frame.
    Welcoming { you: u32 },
    /// Keeping up: gets every delta.
    Live,
    /// Its queue was full at tick `since`; it gets a resync once it drains.
    Behind { since: u64 },
    /// Its connection dropped; results are held for a resume until `until`, when it
    /// leaves.
    Away { until: tokio::time::Instant },
}

/// The members of one world and the sending of each tick's frames to them.
pub(super) struct Fanout<C> {
    pub(super) members: HashMap<MemberId, Member>,
    /// Accepted joins, waiting for the tick that adds them.
    pub(super) joining: HashMap<MemberId, Joining>,
    /// Changes since the last delta frame.
    pub(super) changes: Vec<C>,
    /// Members let go this tick, for the next tick's `Leave`.
    pub(super) dropped: Vec<MemberId>,
    pub(super) max_players: usize,
    pub(super) max_spectators: usize,
    pub(super) queue: usize,
    pub(super) max_behind_ticks: u64,
    /// Ticks per delta frame.
    pub(super) send_every: u64,
    pub(super) resume: Option<ResumeConfig>,
    /// Ticks a result is kept for a resume (0 without resume).
    pub(super) keep_results_ticks: u64,
    /// The world's epoch: the newest among its joins' tokens, never below its
    /// checkpoint's. Checkpoints and resume tokens carry it.
    pub(super) epoch: u64,
    /// The last lines said, for Welcomes and Resyncs.
    pub(super) said: RecentLines,
    /// Where input results are encoded, one after another: they share its allocations.
    results: BytesMut,
    /// What this tick sent, for the server's metrics.
    tally: Tally,
}

/// Frames sent and inputs answered, counted per tick and added to the server's metrics
/// once per tick: every world's task adding to the shared counters once per frame would
/// cost an atomic add, on a cache line all threads write, per member per frame.
#[derive(Debug, Default)]
pub(super) struct Tally {
    frames: u64,
    bytes: u64,
    fell_behind: u64,
    ok: u64,
    rejected: u64,
}

impl Tally {
    fn record(&mut self, metrics: &Metrics) {
        let Tally { frames, bytes, fell_behind, ok, rejected } = std::mem::take(self);
        for (counter, n) in
            [(&metrics.frames_sent, frames), (&metrics.bytes_sent, bytes), (&metrics.fell_behind, fell_behind)]
        {
            if n > 0 {
                counter.inc_by(n);
            }
        }
        for (result, n) in [("ok", ok), ("rejected", rejected)] {
            if n > 0 {
                metrics.count_inputs(result, n);
            }
        }
    }
}

impl<C: bincode::Encode + serde::Serialize> Fanout<C> {
    pub(super) fn new(config: &RoomConfig) -> Self {
        let tick = config.tick.as_secs_f64().max(1e-6);
        Self {
            members: HashMap::new(),
            joining: HashMap::new(),
            changes: Vec::new(),
            dropped: Vec::new(),
            max_players: config.max_players,
            max_spectators: config.max_spectators,
            queue: config.member_queue,
            max_behind_ticks: (config.max_behind.as_secs_f64() / tick).ceil() as u64,
            send_every: u64::from(config.send_every.max(1)),
            resume: config.resume.clone(),
            keep_results_ticks: config
                .resume
                .as_ref()
                .map_or(0, |r| (r.keep_results.as_secs_f64() / tick).ceil() as u64),
            epoch: 0,
            said: RecentLines::new(config.recent_messages),
            results: BytesMut::with_capacity(RESULTS_BUFFER),
            tally: Tally::default(),
        }
    }

    /// Whether the world has no players (spectators do not count).
    pub(super) fn is_empty(&self) -> bool {
        self.joining.is_empty() && self.members.values().all(|m| m.spectator)
    }

    /// Players in the world and on their way in.
    pub(super) fn players(&self) -> usize {
        self.joining.len() + self.members.values().filter(|m| !m.spectator).count()
    }

    pub(super) fn spectators(&self) -> usize {
        self.members.values().filter(|m| m.spectator).count()
    }

    /// Lets every member go with `closing`.
    pub(super) fn close_all(&mut self, closing: Closing) {
        for (_, mut m) in self.members.drain() {
            m.farewell.closing.replace(closing.clone());
        }
        for (_, mut j) in self.joining.drain() {
            j.farewell.closing.replace(closing.clone());
        }
    }

    /// Takes in one command between ticks.
    pub(super) fn take<A>(&mut self, cmd: Cmd<A>, pending: &mut Vec<Event<A>>) {
        match cmd {
            Cmd::Join { member, name, out, encoding, farewell, reply, .. } => {
                // One connection per player: a newer one takes over (the older one was
                // most likely lost on the way, and its player should not wait for it).
                if let Some(older) = self.member_of(&name) {
                    let reason = "the same player joined this world on another connection";
                    self.let_go(older, Some(Closing::new(close::REPLACED, "replaced", reason)), pending);
                }
                if self.players() >= self.max_players {
                    let _ = reply.send(Err(JoinError::WorldFull(self.max_players)));
                } else if reply.send(Ok(())).is_ok() {
                    self.joining.insert(member, Joining { out, player: name.clone(), encoding, farewell });
                    pending.push(Event::Join { member, name });
                }
            }
            Cmd::Leave { member } => self.let_go(member, None, pending),
            Cmd::Park { member } => match (self.members.get_mut(&member), &self.resume) {
                (Some(m), Some(resume)) if !m.spectator => {
                    m.standing = Standing::Away { until: tokio::time::Instant::now() + resume.grace }
                }
                _ => self.let_go(member, None, pending),
            },
            Cmd::Resume { member, out, encoding, farewell, awaiting, reply, .. } => {
                let answer = self.resume(member, out, encoding, farewell, &awaiting, pending);
                let _ = reply.send(answer);
            }
            Cmd::Spectate { member, out, encoding, farewell, reply } => {
                if self.spectators() >= self.max_spectators {
                    let _ = reply.send(Err(JoinError::SpectatorsFull(self.max_spectators)));
                } else if reply.send(Ok(())).is_ok() {
                    // Welcomed with the next delta frame; no entity, so no tick to wait for.
                    let standing = Standing::Welcoming { you: 0 };
                    let recent = std::collections::VecDeque::new();
                    let player = String::new();
                    let m = Member { out, player, encoding, you: 0, standing, recent, farewell, spectator: true };
                    self.members.insert(member, m);
                }
            }
            Cmd::Input { member, seq, action } => pending.push(Event::Input { member, seq, action }),
        }
    }

    /// A new connection takes back `member`: it is welcomed again (the whole world, its
    /// entity as before), then gets the results held for it and, of its `awaiting` seqs,
    /// the result again if the world kept one, nothing if the input waits for the next
    /// tick (its result comes then), else a refusal saying it never arrived. A connection
    /// still holding the member (its drop not noticed yet) is closed as replaced.
    pub(super) fn resume<A>(
        &mut self,
        member: MemberId,
        out: mpsc::Sender<Outbound>,
        encoding: Encoding,
        farewell: Farewell,
        awaiting: &[u32],
        pending: &[Event<A>],
    ) -> Result<(), JoinError> {
        let Some(m) = self.members.get_mut(&member).filter(|m| !m.spectator) else {
            return Err(JoinError::Unavailable("too late to resume: the member has left".into()));
        };
        if m.encoding != encoding {
            let reason = format!("resume with {}, as the connection that dropped", m.encoding.subprotocol());
            return Err(JoinError::Unavailable(reason));
        }
        let mut older = std::mem::replace(&mut m.farewell, farewell);
        m.farewell.held = std::mem::take(&mut older.held);
        if !matches!(m.standing, Standing::Away { .. }) {
            let reason = "the same member resumed on another connection";
            older.closing.replace(Closing::new(close::REPLACED, "replaced", reason));
        }
        drop(older);
        m.out = out;
        m.standing = Standing::Welcoming { you: m.you };
        for &seq in awaiting {
            let waiting = pending
                .iter()
                .any(|e| matches!(e, Event::Input { member: id, seq: s, .. } if *id == member && *s == seq));
            if waiting || m.farewell.held.iter().any(|(s, _)| *s == seq) {
                continue;
            }
            let frame = match m.recent.iter().find(|(s, ..)| *s == seq) {
                Some((.., frame)) => frame.clone(),
                None => {
                    let reason = gaia_api::protocol::NEVER_RECEIVED.to_string();
                    let msg: ServerMsg<(), ()> =
                        ServerMsg::InputResult { seq, tick: 0, outcome: InputOutcome::Rejected { reason } };
                    Bytes::from(encoding.encode_server(&msg))
                }
            };
            m.farewell.held.push((seq, frame));
        }
        Ok(())
    }

    /// The member or joining member whose player id is `player` (none for no id).
    pub(super) fn member_of(&self, player: &str) -> Option<MemberId> {
        if player.is_empty() {
            return None;
        }
        let joined = self.members.iter().find(|(_, m)| !m.spectator && m.player == player).map(|(&id, _)| id);
        joined.or_else(|| self.joining.iter().find(|(_, j)| j.player == player).map(|(&id, _)| id))
    }

    /// Lets `member` go now: its unapplied inputs are dropped, and its connection gets
    /// its held results and `closing`, if any (see [`Farewell`]).
    pub(super) fn let_go<A>(&mut self, member: MemberId, closing: Option<Closing>, pending: &mut Vec<Event<A>>) {
        let farewell = match self.members.remove(&member) {
            Some(m) => Some(m.farewell),
            None => self.joining.remove(&member).map(|j| j.farewell),
        };
        if let (Some(mut farewell), Some(closing)) = (farewell, closing) {
            farewell.closing.replace(closing);
        }
        retract_inputs(member, pending);
        pending.push(Event::Leave { member });
    }

    /// Takes one tick's output: input results go out at once (held for members not
    /// welcomed yet or behind), changes wait for the next delta frame.
    pub(super) fn send<W: World<Change = C>>(
        &mut self,
        world_id: &str,
        engine: &Engine<W>,
        out: TickOutput<C>,
        metrics: &Metrics,
    ) {
        let tick = out.tick;
        for (member, you) in out.joined {
            if let Some(Joining { out, player, encoding, farewell }) = self.joining.remove(&member) {
                let standing = Standing::Welcoming { you };
                let recent = std::collections::VecDeque::new();
                let spectator = false;
                self.members
                    .insert(member, Member { out, player, encoding, you, standing, recent, farewell, spectator });
            }
        }
        for (member, seq, outcome) in out.results {
            match outcome {
                InputOutcome::Ok => self.tally.ok += 1,
                InputOutcome::Rejected { .. } => self.tally.rejected += 1,
            }
            let Some(m) = self.members.get_mut(&member) else { continue };
            let result: ServerMsg<(), ()> = ServerMsg::InputResult { seq, tick, outcome };
            let frame = m.encoding.encode_server_into(&result, &mut self.results);
            if self.keep_results_ticks > 0 {
                while m.recent.front().is_some_and(|(_, at, _)| at + self.keep_results_ticks < tick)
                    || m.recent.len() >= RECENT_RESULTS_MAX
                {
                    m.recent.pop_front();
                }
                m.recent.push_back((seq, tick, frame.clone()));
            }
            match m.standing {
                Standing::Live => deliver(m, frame, Some(seq), tick, &mut self.tally),
                Standing::Welcoming { .. } | Standing::Behind { .. } | Standing::Away { .. } => {
                    m.farewell.held.push((seq, frame));
                }
            }
        }
        self.changes.extend(out.changes);
        if tick.is_multiple_of(self.send_every) {
            self.flush(world_id, engine, tick, metrics);
        } else {
            self.tally.record(metrics);
        }
    }

    /// Sends the coalesced delta (encoded once per encoding in use, the same bytes for
    /// every member of that encoding), the welcomes, and the resyncs of members that
    /// caught up; drops those too far behind.
    pub(super) fn flush<W: World<Change = C>>(
        &mut self,
        world_id: &str,
        engine: &Engine<W>,
        tick: u64,
        metrics: &Metrics,
    ) {
        // The whole world, built at most once per flush and encoded at most once per
        // encoding.
        let mut view: Option<W::View> = None;
        let mut resyncs: [Option<Bytes>; Encoding::ALL.len()] = Default::default();
        let server_us = gaia_api::protocol::unix_us();
        let delta: ServerMsg<(), C> = ServerMsg::Delta { tick, server_us, changes: std::mem::take(&mut self.changes) };
        let mut deltas: [Option<Bytes>; Encoding::ALL.len()] = Default::default();
        let (resume, epoch) = (&self.resume, self.epoch);
        let now = tokio::time::Instant::now();
        let mut expired = Vec::new();
        for (&id, m) in self.members.iter_mut() {
            match m.standing {
                Standing::Live => {
                    let frame =
                        deltas[m.encoding.index()].get_or_insert_with(|| Bytes::from(m.encoding.encode_server(&delta)));
                    deliver(m, frame.clone(), None, tick, &mut self.tally);
                }
                Standing::Away { until } => {
                    if until <= now {
                        expired.push(id);
                    }
                }
                // The snapshot holds everything up to this tick, so no delta this time.
                Standing::Welcoming { you } => {
                    let snapshot = view.get_or_insert_with(|| engine.world().view());
                    let resume = resume.as_ref().filter(|_| !m.spectator).map_or_else(String::new, |r| {
                        let expires_at_ms = unix_ms(std::time::SystemTime::now() + RESUME_TOKEN_TTL);
                        let (world_id, server) = (world_id.to_string(), r.server.clone());
                        r.key.sign_resume(&ResumeClaims { world_id, server, member: id, epoch, expires_at_ms })
                    });
                    let messages = self.said.to_vec();
                    let welcome: ServerMsg<&W::View, ()> =
                        ServerMsg::Welcome { world_id: world_id.to_string(), you, tick, snapshot, resume, messages };
                    m.standing = Standing::Live;
                    deliver(m, Bytes::from(m.encoding.encode_server(&welcome)), None, tick, &mut self.tally);
                    for (seq, frame) in std::mem::take(&mut m.farewell.held) {
                        deliver(m, frame, Some(seq), tick, &mut self.tally);
                    }
                }
                Standing::Behind { since } => {
                    if m.out.is_closed() || tick - since > self.max_behind_ticks || m.farewell.held.len() > self.queue {
                        self.dropped.push(id);
                    } else if m.out.capacity() >= self.queue / 2 + m.farewell.held.len() {
                        let encoding = m.encoding;
                        let frame = resyncs[encoding.index()]
                            .get_or_insert_with(|| {
                                let snapshot = view.get_or_insert_with(|| engine.world().view());
                                let messages = self.said.to_vec();
                                let msg: ServerMsg<&W::View, ()> = ServerMsg::Resync { tick, snapshot, messages };
                                Bytes::from(encoding.encode_server(&msg))
                            })
                            .clone();
                        m.standing = Standing::Live;
                        metrics.resyncs.inc();
                        deliver(m, frame, None, tick, &mut self.tally);
                        for (seq, frame) in std::mem::take(&mut m.farewell.held) {
                            deliver(m, frame, Some(seq), tick, &mut self.tally);
                        }
                    }
                }
            }
        }
        for id in &self.dropped {
            if let Some(mut m) = self.members.remove(id) {
                metrics.slow_dropped.inc();
                m.farewell.closing.replace(Closing::new(close::TOO_SLOW, "too_slow", "fell too far behind the world"));
            }
        }
        // Away past the grace: they leave, as a closed connection does.
        for id in expired {
            self.members.remove(&id);
            self.dropped.push(id);
        }
        self.tally.record(metrics);
    }
}

/// Drops `member`'s inputs that wait for the next tick: a member that left has them
/// unapplied, and unanswered.
pub(super) fn retract_inputs<A>(member: MemberId, pending: &mut Vec<Event<A>>) {
    pending.retain(|event| !matches!(event, Event::Input { member: m, .. } if *m == member));
}

/// Queues `frame` for `m`. When its queue is full, marks it behind and, if the frame
/// is the result of input `result_of`, holds it for after the resync; a delta or snapshot
/// is covered by the resync itself.
pub(super) fn deliver(m: &mut Member, frame: Bytes, result_of: Option<u32>, tick: u64, tally: &mut Tally) {
    let len = frame.len() as u64;
    match m.out.try_send(Outbound::Frame(frame)) {
        Ok(()) => {
            tally.frames += 1;
            tally.bytes += len;
        }
        Err(mpsc::error::TrySendError::Full(Outbound::Frame(frame))) => {
            if !matches!(m.standing, Standing::Behind { .. }) {
                tally.fell_behind += 1;
                m.standing = Standing::Behind { since: tick };
            }
            if let Some(seq) = result_of {
                m.farewell.held.push((seq, frame));
            }
        }
        // The connection is gone; its Leave is on the way.
        Err(mpsc::error::TrySendError::Full(_) | mpsc::error::TrySendError::Closed(_)) => {}
    }
}

#[cfg(test)]
mod tests {
    use gaia_api::protocol::decode_server;
    use gaia_api::town::{Action, Change, Snapshot};

    use super::*;
    use tokio::sync::oneshot;

    use crate::town::{Town, TownConfig};

    pub(super) fn say(member: MemberId, seq: u32) -> Cmd<Action> {
        Cmd::Input { member, seq, action: Action::Say { text: format!("hi {seq}") } }
    }

    /// The seqs of the input results among `frames`.
    pub(super) fn results(frames: impl IntoIterator<Item = Bytes>) -> Vec<u32> {
        let decode = |f: &Bytes| decode_server::<Snapshot, Change>(f).unwrap();
        let seq = |m| match m {
            ServerMsg::InputResult { seq, .. } => Some(seq),
            _ => None,
        };
        frames.into_iter().filter_map(|f| seq(decode(&f))).collect()
    }

    /// A member that cannot take frames has its results held; when it leaves, they go to
    /// its connection with the member, and its inputs still waiting for a tick are
    /// dropped unapplied.
    #[test]
    fn a_leaving_member_gets_its_held_results_and_its_waiting_inputs_are_dropped() {
        let config = RoomConfig { member_queue: 1, ..RoomConfig::default() };
        let metrics = Metrics::new(&mut Default::default());
        let mut engine = Engine::new(Town::new(TownConfig { bots: 0, ..TownConfig::default() }, 1), 0);
        let mut fanout = Fanout::<Change>::new(&config);
        let mut pending = Vec::new();
        let (out, mut frames) = mpsc::channel(1);
        let (farewell, mut leftovers) = Farewell::channel();
        let (reply, _answer) = oneshot::channel();
        let encoding = Encoding::Bincode;
        fanout.take(Cmd::Join { member: 1, name: "p".into(), epoch: 1, out, encoding, farewell, reply }, &mut pending);
        let mut tick = |fanout: &mut Fanout<Change>, pending: &mut Vec<Event<Action>>| {
            let out = engine.step(std::mem::take(pending));
            fanout.send("w", &engine, out, &metrics);
        };
        tick(&mut fanout, &mut pending);
        // Applied at tick 2 with the Welcome; the queue holds the Welcome, so both
        // results are held.
        fanout.take(say(1, 1), &mut pending);
        fanout.take(say(1, 2), &mut pending);
        tick(&mut fanout, &mut pending);
        // Waits for tick 3, which it never sees.
        fanout.take(say(1, 3), &mut pending);
        fanout.take(Cmd::Leave { member: 1 }, &mut pending);
        assert!(!pending.iter().any(|e| matches!(e, Event::Input { .. })), "{pending:?}");
        tick(&mut fanout, &mut pending);

        let mut queued = Vec::new();
        while let Ok(Outbound::Frame(frame)) = frames.try_recv() {
            queued.push(frame);
        }
        let left = leftovers.try_recv().expect("sent when the member went");
        assert_eq!(results(queued.into_iter().chain(left.held)), [1, 2]);
        assert_eq!(left.closing, None);
    }
}
