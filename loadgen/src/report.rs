//! What a run measured: each bot's [`BotOutcome`] goes into a [`Collector`], which turns
//! them into the [`Report`] (latency histograms, counters, errors by kind, and every
//! [`Migration`] and [`Recovery`] by bot). The report decides whether the run was clean
//! and prints itself.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::baseline::Compared;
pub use crate::baseline::{Baseline, Figures, Ratios};

/// Example messages kept per error kind.
const EXAMPLES: usize = 3;
/// Latencies above an hour are recorded as an hour.
pub(crate) const MAX_LATENCY_US: u64 = 3_600_000_000;

/// What went wrong, by kind; the report counts each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    /// The allocator answered an error, or no capacity within `allocate_timeout`.
    AllocationFailed,
    /// The bot's world was never allocated (its first member's allocation failed).
    NotStarted,
    ConnectFailed,
    /// The server closed the socket (or sent an Error) instead of a Welcome.
    JoinRefused,
    /// Welcomed to, or allocated, another world than the one asked for.
    WrongWorld,
    /// The server closed the socket with a code that does not ask the bot to come back
    /// (or the socket broke while the bot was draining at the end of the run).
    DisconnectedEarly,
    /// The socket broke and the session could not be resumed on its server, or the
    /// server closed it with 1001 (without a Migrate) or 4012, during the run: the bot
    /// then looked for its world again ([`Report::recoveries`] has it when it found it;
    /// an error of another kind says why it gave up). A break the bot resumed from is
    /// no error ([`Report::resumptions`]).
    ConnectionLost,
    /// The bot only sends legal moves, so a rejection is a server bug.
    InputRejected,
    MissingResults,
    OwnMovesNotSeen,
    UndecodableFrame,
    /// A message the contract does not allow here (e.g. a result for an unknown seq).
    Protocol,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AllocationFailed => "allocation failed",
            Self::NotStarted => "not started",
            Self::ConnectFailed => "connect failed",
            Self::JoinRefused => "join refused",
            Self::WrongWorld => "wrong world",
            Self::DisconnectedEarly => "disconnected early",
            Self::ConnectionLost => "connection lost",
            Self::InputRejected => "input rejected",
            Self::MissingResults => "missing input results",
            Self::OwnMovesNotSeen => "own moves not seen",
            Self::UndecodableFrame => "undecodable frame",
            Self::Protocol => "protocol violation",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many errors of one kind, and the first few messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorTally {
    pub count: u64,
    pub examples: Vec<String>,
}

/// Worlds and distinct servers a run used in one region.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegionUse {
    pub worlds: usize,
    pub servers: usize,
}

/// One bot's play after its Welcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PlayStats {
    pub sent: u64,
    /// Accepted inputs (every input is a Move).
    pub ok: u64,
    pub rejected: u64,
    /// Inputs that never got a result.
    pub missing: u64,
    /// Inputs without a result when the connection moved (Migrate) or was lost: the
    /// server did not apply them, or lost them with its state.
    pub unapplied: u64,
    /// Accepted moves never seen moving because the connection moved or was lost first
    /// (the error that ended the connection, if any, accounts for them).
    pub moves_forgotten: u64,
    pub deltas: u64,
    /// Frames of every kind received in the steady phase: what the servers' CPU over
    /// that phase delivered.
    pub steady_frames: u64,
    pub own_moves_seen: u64,
    pub input_latency_us: Vec<u64>,
    /// From each Delta's `server_us` to its arrival, steady phase only.
    pub tick_latency_us: Vec<u32>,
    /// Snapshots received after falling behind.
    pub resyncs: u64,
    /// WebSocket payload bytes after the Welcome: received, and sent.
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// A bot followed a `Migrate` to its world's new server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub world_id: String,
    /// Highest tick the bot saw (Welcome, Delta, Resync) before the Migrate.
    pub last_tick_seen: u64,
    /// The tick of the Welcome on the new server (the world's state is continuous, so
    /// not below `last_tick_seen`).
    pub welcome_tick: u64,
    /// From the Migrate's arrival to the new Welcome.
    pub pause: Duration,
    /// The server the bot left: its name from the allocator, or its address when the bot
    /// got there by an earlier Migrate (which names no server).
    pub server_before: String,
    /// The address the Migrate named.
    pub server_after: String,
}

/// A bot lost its connection during the run (see [`ErrorKind::ConnectionLost`]), allocated
/// a seat in the same world again and was welcomed back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub world_id: String,
    /// Highest tick the bot saw (Welcome, Delta, Resync) on the connection it lost.
    pub last_tick_seen: u64,
    /// The tick of the Welcome after rejoining; lower than `last_tick_seen` when the world
    /// was restored from a checkpoint older than what the bot had seen.
    pub welcome_tick: u64,
    /// From noticing the loss (or the Migrate that could not be followed) to the Welcome.
    pub outage: Duration,
    /// The server the bot lost: its name from the allocator, or its address when the bot
    /// got there by a Migrate.
    pub server_before: String,
    /// The server the allocator placed the world on, by name.
    pub server_after: String,
}

impl Recovery {
    /// Ticks of world state the bot had seen and the restored world no longer has.
    pub fn ticks_lost(&self) -> u64 {
        self.last_tick_seen.saturating_sub(self.welcome_tick)
    }
}

/// A bot's connection broke and it resumed its session on the same server (docs/protocol.md,
/// "Resume"): the same entity, no new allocation. Not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumption {
    pub world_id: String,
    /// Highest tick the bot saw before the connection broke.
    pub last_tick_seen: u64,
    /// The tick of the Welcome that answered the Resume.
    pub welcome_tick: u64,
    /// From noticing the break to the Welcome.
    pub outage: Duration,
    /// The server resumed on: its name from the allocator, or its address after a Migrate.
    pub server: String,
}

/// Where a bot's allocation placed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placement {
    pub region: String,
    pub server: String,
    pub world_id: String,
}

/// Everything one bot saw, from its allocation to its close.
#[derive(Debug)]
pub(crate) struct BotOutcome {
    pub bot: usize,
    pub world: usize,
    /// Latency of the allocation request that succeeded.
    pub alloc_latency_us: Option<u64>,
    pub alloc_failed: bool,
    /// 429 answers before the allocation succeeded or gave up.
    pub alloc_retries: u64,
    /// Start of the first attempt, end of the successful one.
    pub alloc_window: Option<(Instant, Instant)>,
    pub placement: Option<Placement>,
    /// From the start of the allocation to the Welcome; set once the bot joined.
    pub join_us: Option<u64>,
    /// Time connected to a world, from each Welcome to the end of that connection.
    pub connected: Duration,
    pub play: Option<PlayStats>,
    pub migrations: Vec<Migration>,
    pub recoveries: Vec<Recovery>,
    pub resumptions: Vec<Resumption>,
    pub errors: Vec<(ErrorKind, String)>,
}

impl BotOutcome {
    pub(crate) fn new(bot: usize, world: usize) -> Self {
        Self {
            bot,
            world,
            alloc_latency_us: None,
            alloc_failed: false,
            alloc_retries: 0,
            alloc_window: None,
            placement: None,
            join_us: None,
            connected: Duration::ZERO,
            play: None,
            migrations: Vec::new(),
            recoveries: Vec::new(),
            resumptions: Vec::new(),
            errors: Vec::new(),
        }
    }

    pub(crate) fn error(&mut self, kind: ErrorKind, message: impl Into<String>) {
        self.errors.push((kind, message.into()));
    }
}

/// The result of a run. Print it with `Display`; [`Report::is_clean`] says whether it passed.
#[derive(Debug, Clone)]
pub struct Report {
    pub bots: usize,
    pub worlds: usize,
    pub regions: Vec<String>,
    /// How long the steady phase actually ran.
    pub steady: Duration,
    /// `shutdown` was cancelled before the run finished.
    pub interrupted: bool,
    pub allocations_ok: u64,
    pub allocations_failed: u64,
    /// HTTP 429 answers that were retried.
    pub allocation_retries: u64,
    /// Successful allocations over the allocation phase (first request to last answer).
    pub allocations_per_s: f64,
    /// Microseconds, one sample per successful request.
    pub allocation_latency: Histogram<u64>,
    pub joined: u64,
    /// Microseconds from the start of a bot's allocation to its Welcome.
    pub join_latency: Histogram<u64>,
    pub inputs_sent: u64,
    pub inputs_ok: u64,
    pub inputs_rejected: u64,
    pub inputs_missing: u64,
    /// Inputs without a result when their connection moved or was lost (not applied).
    /// `inputs_sent == inputs_ok + inputs_rejected + inputs_missing + inputs_unapplied`.
    pub inputs_unapplied: u64,
    /// Microseconds from sending an input to its result.
    pub input_latency: Histogram<u64>,
    /// Microseconds from a tick's run on the server to its Delta's arrival (steady phase).
    pub tick_latency: Histogram<u64>,
    /// Resync snapshots: a bot fell behind and missed deltas.
    pub resyncs: u64,
    pub deltas: u64,
    /// Frames of every kind the bots received in the steady phase.
    pub steady_frames: u64,
    /// Deltas per connected bot per second.
    pub deltas_per_bot_s: f64,
    /// The encoding the bots spoke.
    pub encoding: gaia_api::protocol::Encoding,
    /// WebSocket payload bytes after the Welcome, server to bots and bots to server.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The same per connected bot per second.
    pub bytes_in_per_bot_s: f64,
    pub bytes_out_per_bot_s: f64,
    pub own_moves_seen: u64,
    pub bots_with_deltas: u64,
    /// Bots that had at least one move accepted.
    pub bots_with_inputs: u64,
    /// Whether every joined bot was due to send inputs (a rate above 0 and a steady
    /// phase of at least one period).
    pub inputs_expected: bool,
    /// Joined bots whose accepted moves all showed up as their own `Moved` changes, but
    /// for those forgotten when a connection moved or was lost.
    pub bots_with_all_own_moves: u64,
    /// Every Migrate a bot followed, as (bot, migration), in bot order. Not errors.
    pub migrations: Vec<(usize, Migration)>,
    /// Every time a bot found its world again after losing its connection, as (bot,
    /// recovery), in bot order. Each loss is also a [`ErrorKind::ConnectionLost`] error.
    pub recoveries: Vec<(usize, Recovery)>,
    /// Every time a bot resumed its session after its connection broke, as (bot,
    /// resumption), in bot order. Not errors.
    pub resumptions: Vec<(usize, Resumption)>,
    pub regions_used: BTreeMap<String, RegionUse>,
    pub errors: BTreeMap<ErrorKind, ErrorTally>,
    /// CPU and memory over the steady phase: the load generator, then each game server.
    pub processes: Vec<crate::ProcessUse>,
    /// The raw stack measured before the bots, when asked for (`gaia loadgen --baseline`).
    pub baseline: Option<Baseline>,
}

impl Report {
    /// No errors, every bot joined and received deltas, every accepted move was seen,
    /// and the run was not interrupted.
    pub fn is_clean(&self) -> bool {
        self.problems().is_empty()
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().map(|t| t.count).sum()
    }

    /// The longest pause of a followed Migrate.
    pub fn max_pause(&self) -> Option<Duration> {
        self.migrations.iter().map(|(_, m)| m.pause).max()
    }

    /// The longest outage a bot recovered from.
    pub fn max_outage(&self) -> Option<Duration> {
        self.recoveries.iter().map(|(_, r)| r.outage).max()
    }

    /// The most ticks of state a bot saw and then found gone after recovering.
    pub fn max_ticks_lost(&self) -> u64 {
        self.recoveries.iter().map(|(_, r)| r.ticks_lost()).max().unwrap_or(0)
    }

    /// The figures [`Ratios`] compares: CPU per frame summed over the game servers (the
    /// processes with connections), memory per connection over all their connections.
    /// No CPU figure unless as many servers were measured as the bots were placed on (a
    /// server that did not answer its scrape): the frames would be some other's too.
    pub fn figures(&self) -> Figures {
        let servers = || self.processes.iter().filter(|p| p.connections.is_some());
        let cpu_seconds: f64 = servers().map(|p| p.cpu_seconds).sum();
        let used: usize = self.regions_used.values().map(|r| r.servers).sum();
        let measured = servers().count();
        let grown: Vec<(f64, u64)> =
            servers().filter_map(|p| Some((p.bytes_per_connection?, p.connections?))).filter(|&(_, n)| n > 0).collect();
        let connections: u64 = grown.iter().map(|&(_, n)| n).sum();
        Figures {
            cpu_us_per_frame: (self.steady_frames > 0 && measured > 0 && measured >= used)
                .then(|| cpu_seconds * 1e6 / self.steady_frames as f64),
            tick_p99_us: p99(&self.tick_latency),
            input_p99_us: p99(&self.input_latency),
            bytes_per_connection: (connections > 0)
                .then(|| grown.iter().map(|&(bytes, n)| bytes * n as f64).sum::<f64>() / connections as f64),
        }
    }

    /// This run over the raw baseline measured in it, if there is one.
    pub fn vs_baseline(&self) -> Option<Ratios> {
        Some(Ratios::of(&self.figures(), &self.baseline.as_ref()?.figures()))
    }

    /// Why the run is not clean; empty when it is.
    pub fn problems(&self) -> Vec<String> {
        let bots = self.bots as u64;
        let mut problems = Vec::new();
        if self.interrupted {
            problems.push("interrupted".to_string());
        }
        let errors = self.error_count();
        if errors > 0 {
            problems.push(format!("{errors} errors"));
        }
        if self.joined < bots {
            problems.push(format!("{}/{bots} bots joined", self.joined));
        }
        if self.bots_with_deltas < bots {
            problems.push(format!("{}/{bots} bots received deltas", self.bots_with_deltas));
        }
        if self.inputs_expected && self.bots_with_inputs < bots {
            problems.push(format!("{}/{bots} bots had a move accepted", self.bots_with_inputs));
        }
        if self.bots_with_all_own_moves < bots {
            problems.push(format!("{}/{bots} bots saw all their own moves", self.bots_with_all_own_moves));
        }
        if let Some(baseline) = &self.baseline {
            problems.extend(baseline.problems().into_iter().map(|p| format!("baseline: {p}")));
        }
        problems
    }
}

pub(crate) fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// A histogram for latencies in microseconds, from 1 µs to [`MAX_LATENCY_US`].
pub(crate) fn latency_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?)
}

/// The 99th percentile, if there are samples.
pub(crate) fn p99(h: &Histogram<u64>) -> Option<u64> {
    (!h.is_empty()).then(|| h.value_at_quantile(0.99))
}

/// A latency histogram's quantiles, in milliseconds.
pub(crate) struct Latency<'a>(pub &'a Histogram<u64>);

impl fmt::Display for Latency<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = self.0;
        if h.is_empty() {
            return f.write_str("no samples");
        }
        write!(
            f,
            "p50 {:.1} p90 {:.1} p99 {:.1} max {:.1}",
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.9)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max())
        )
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let interrupted = if self.interrupted { " (interrupted)" } else { "" };
        writeln!(
            f,
            "gaia loadgen: {} bots, {} worlds, regions {}, {:.1} s steady, {}{interrupted}",
            self.bots,
            self.worlds,
            self.regions.join(","),
            self.steady.as_secs_f64(),
            self.encoding.subprotocol()
        )?;
        writeln!(
            f,
            "allocations   {} ok, {} failed, {} retried (429); {:.1}/s; latency ms {}",
            self.allocations_ok,
            self.allocations_failed,
            self.allocation_retries,
            self.allocations_per_s,
            Latency(&self.allocation_latency)
        )?;
        writeln!(f, "join          {} joined; ms {}", self.joined, Latency(&self.join_latency))?;
        let unapplied =
            if self.inputs_unapplied > 0 { format!(", {} unapplied", self.inputs_unapplied) } else { String::new() };
        writeln!(
            f,
            "inputs        {} sent, {} ok, {} rejected, {} missing{unapplied}; input->result ms {}",
            self.inputs_sent,
            self.inputs_ok,
            self.inputs_rejected,
            self.inputs_missing,
            Latency(&self.input_latency)
        )?;
        writeln!(
            f,
            "deltas        {} received ({:.1} per bot per s); bots with deltas {}/{}; own moves seen {}/{}; \
             bots with a move accepted {}/{}; bots with all own moves {}/{}",
            self.deltas,
            self.deltas_per_bot_s,
            self.bots_with_deltas,
            self.bots,
            self.own_moves_seen,
            self.inputs_ok,
            self.bots_with_inputs,
            self.bots,
            self.bots_with_all_own_moves,
            self.bots
        )?;
        writeln!(
            f,
            "ticks         tick->client ms {}; resyncs after falling behind {}",
            Latency(&self.tick_latency),
            self.resyncs
        )?;
        writeln!(
            f,
            "traffic       {:.0} B per bot per s from the servers, {:.0} B per bot per s to them (WebSocket payloads)",
            self.bytes_in_per_bot_s, self.bytes_out_per_bot_s
        )?;
        if let Some(pause) = self.max_pause() {
            writeln!(
                f,
                "migrations    {} followed; pause ms max {:.1}",
                self.migrations.len(),
                pause.as_secs_f64() * 1000.0
            )?;
        }
        if let Some(outage) = self.max_outage() {
            writeln!(
                f,
                "reconnects    {} after lost connections; outage ms max {:.1}; ticks lost max {}",
                self.recoveries.len(),
                outage.as_secs_f64() * 1000.0,
                self.max_ticks_lost()
            )?;
        }
        if let Some(outage) = self.resumptions.iter().map(|(_, r)| r.outage).max() {
            writeln!(
                f,
                "resumes       {} after broken connections; outage ms max {:.1}",
                self.resumptions.len(),
                outage.as_secs_f64() * 1000.0
            )?;
        }
        let regions: Vec<String> = self
            .regions_used
            .iter()
            .map(|(region, used)| format!("{region} {} worlds on {} servers", used.worlds, used.servers))
            .collect();
        let regions = if regions.is_empty() { "none".to_string() } else { regions.join("; ") };
        writeln!(f, "worlds/servers per region: {regions}")?;
        for process in &self.processes {
            writeln!(f, "process       {process}")?;
        }
        if let Some(baseline) = &self.baseline {
            write!(f, "{baseline}")?;
            writeln!(f, "vs baseline   {}", Compared(&self.figures(), &baseline.figures()))?;
        }
        if self.errors.is_empty() {
            writeln!(f, "errors        none")?;
        } else {
            writeln!(f, "errors        {}", self.error_count())?;
            for (kind, tally) in &self.errors {
                writeln!(f, "  {kind}: {}", tally.count)?;
                for example in &tally.examples {
                    writeln!(f, "    {example}")?;
                }
            }
        }
        let problems = self.problems();
        if problems.is_empty() {
            write!(f, "result        PASS")
        } else {
            write!(f, "result        FAIL: {}", problems.join("; "))
        }
    }
}

/// Folds bot outcomes into a [`Report`].
pub(crate) struct Collector {
    report: Report,
    alloc_first: Option<Instant>,
    alloc_last: Option<Instant>,
    connected_s: f64,
    /// Region -> (worlds, servers).
    used: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)>,
}

impl Collector {
    pub(crate) fn new(bots: usize, worlds: usize, regions: Vec<String>) -> anyhow::Result<Self> {
        let report = Report {
            bots,
            worlds,
            regions,
            steady: Duration::ZERO,
            interrupted: false,
            allocations_ok: 0,
            allocations_failed: 0,
            allocation_retries: 0,
            allocations_per_s: 0.0,
            allocation_latency: latency_histogram()?,
            joined: 0,
            join_latency: latency_histogram()?,
            inputs_sent: 0,
            inputs_ok: 0,
            inputs_rejected: 0,
            inputs_missing: 0,
            inputs_unapplied: 0,
            input_latency: latency_histogram()?,
            tick_latency: latency_histogram()?,
            resyncs: 0,
            deltas: 0,
            steady_frames: 0,
            deltas_per_bot_s: 0.0,
            encoding: gaia_api::protocol::Encoding::Bincode,
            bytes_in: 0,
            bytes_out: 0,
            bytes_in_per_bot_s: 0.0,
            bytes_out_per_bot_s: 0.0,
            own_moves_seen: 0,
            bots_with_deltas: 0,
            bots_with_inputs: 0,
            inputs_expected: false,
            bots_with_all_own_moves: 0,
            migrations: Vec::new(),
            recoveries: Vec::new(),
            resumptions: Vec::new(),
            regions_used: BTreeMap::new(),
            errors: BTreeMap::new(),
            processes: Vec::new(),
            baseline: None,
        };
        Ok(Self { report, alloc_first: None, alloc_last: None, connected_s: 0.0, used: BTreeMap::new() })
    }

    pub(crate) fn add(&mut self, bot: BotOutcome) {
        let r = &mut self.report;
        r.allocation_retries += bot.alloc_retries;
        if let Some(us) = bot.alloc_latency_us {
            r.allocations_ok += 1;
            r.allocation_latency.saturating_record(us.max(1));
        }
        if bot.alloc_failed {
            r.allocations_failed += 1;
        }
        if let Some((start, end)) = bot.alloc_window {
            self.alloc_first = Some(self.alloc_first.map_or(start, |t| t.min(start)));
            self.alloc_last = Some(self.alloc_last.map_or(end, |t| t.max(end)));
        }
        if let Some(placement) = bot.placement {
            let (worlds, servers) = self.used.entry(placement.region).or_default();
            worlds.insert(placement.world_id);
            servers.insert(placement.server);
        }
        if let Some(us) = bot.join_us {
            r.joined += 1;
            r.join_latency.saturating_record(us.max(1));
            self.connected_s += bot.connected.as_secs_f64();
        }
        if let Some(play) = bot.play {
            r.inputs_sent += play.sent;
            r.inputs_ok += play.ok;
            r.inputs_rejected += play.rejected;
            r.inputs_missing += play.missing;
            r.inputs_unapplied += play.unapplied;
            r.deltas += play.deltas;
            r.steady_frames += play.steady_frames;
            r.own_moves_seen += play.own_moves_seen;
            r.bots_with_deltas += u64::from(play.deltas > 0);
            r.bots_with_inputs += u64::from(play.ok > 0);
            r.bots_with_all_own_moves += u64::from(play.ok == play.own_moves_seen + play.moves_forgotten);
            for us in play.input_latency_us {
                r.input_latency.saturating_record(us.max(1));
            }
            for us in play.tick_latency_us {
                r.tick_latency.saturating_record(u64::from(us).max(1));
            }
            r.resyncs += play.resyncs;
            r.bytes_in += play.bytes_in;
            r.bytes_out += play.bytes_out;
        }
        r.migrations.extend(bot.migrations.into_iter().map(|m| (bot.bot, m)));
        r.recoveries.extend(bot.recoveries.into_iter().map(|m| (bot.bot, m)));
        r.resumptions.extend(bot.resumptions.into_iter().map(|m| (bot.bot, m)));
        for (kind, message) in bot.errors {
            let tally = r.errors.entry(kind).or_default();
            tally.count += 1;
            if tally.examples.len() < EXAMPLES {
                tally.examples.push(format!("bot {} in w{}: {message}", bot.bot, bot.world));
            }
        }
    }

    /// `input_period` is the time between one bot's inputs, if bots send any.
    pub(crate) fn finish(mut self, steady: Duration, interrupted: bool, input_period: Option<Duration>) -> Report {
        let r = &mut self.report;
        r.steady = steady;
        r.inputs_expected = input_period.is_some_and(|period| steady >= period);
        r.interrupted = interrupted;
        if let (Some(first), Some(last)) = (self.alloc_first, self.alloc_last) {
            let secs = last.saturating_duration_since(first).as_secs_f64();
            r.allocations_per_s = if secs > 0.0 { r.allocations_ok as f64 / secs } else { 0.0 };
        }
        if self.connected_s > 0.0 {
            r.deltas_per_bot_s = r.deltas as f64 / self.connected_s;
            r.bytes_in_per_bot_s = r.bytes_in as f64 / self.connected_s;
            r.bytes_out_per_bot_s = r.bytes_out as f64 / self.connected_s;
        }
        r.regions_used = self
            .used
            .into_iter()
            .map(|(region, (worlds, servers))| (region, RegionUse { worlds: worlds.len(), servers: servers.len() }))
            .collect();
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined_bot(bot: usize, world: usize, region: &str, t0: Instant) -> BotOutcome {
        let mut o = BotOutcome::new(bot, world);
        o.alloc_latency_us = Some(1_000 + bot as u64 * 100);
        o.alloc_window = Some((t0, t0 + Duration::from_millis(100)));
        o.placement = Some(Placement {
            region: region.into(),
            server: format!("{region}-1"),
            world_id: format!("world-{world}"),
        });
        o.join_us = Some(3_000);
        o.connected = Duration::from_secs(1);
        o.play = Some(PlayStats {
            sent: 10,
            ok: 10,
            rejected: 0,
            missing: 0,
            unapplied: 0,
            moves_forgotten: 0,
            deltas: 10,
            steady_frames: 11,
            own_moves_seen: 10,
            input_latency_us: vec![45_000; 10],
            tick_latency_us: vec![2_000; 10],
            resyncs: 0,
            bytes_in: 2_500,
            bytes_out: 100,
        });
        o
    }

    fn report(outcomes: Vec<BotOutcome>, worlds: usize) -> Report {
        let mut c = Collector::new(outcomes.len(), worlds, vec!["eu-west".into(), "us-east".into()]).unwrap();
        for o in outcomes {
            c.add(o);
        }
        c.finish(Duration::from_secs(1), false, Some(Duration::from_secs(1)))
    }

    #[test]
    fn clean_report_prints_every_line() {
        let t0 = Instant::now();
        let mut bots = vec![joined_bot(0, 0, "eu-west", t0), joined_bot(1, 1, "us-east", t0)];
        bots[1].alloc_retries = 2;
        let r = report(bots, 2);
        assert!(r.is_clean(), "{r}");
        let expected = "\
gaia loadgen: 2 bots, 2 worlds, regions eu-west,us-east, 1.0 s steady, gaia.v1.bincode
allocations   2 ok, 0 failed, 2 retried (429); 20.0/s; latency ms p50 1.0 p90 1.1 p99 1.1 max 1.1
join          2 joined; ms p50 3.0 p90 3.0 p99 3.0 max 3.0
inputs        20 sent, 20 ok, 0 rejected, 0 missing; input->result ms p50 45.0 p90 45.0 p99 45.0 max 45.0
deltas        20 received (10.0 per bot per s); bots with deltas 2/2; own moves seen 20/20; bots with a move accepted 2/2; bots with all own moves 2/2
ticks         tick->client ms p50 2.0 p90 2.0 p99 2.0 max 2.0; resyncs after falling behind 0
traffic       2500 B per bot per s from the servers, 100 B per bot per s to them (WebSocket payloads)
worlds/servers per region: eu-west 1 worlds on 1 servers; us-east 1 worlds on 1 servers
errors        none
result        PASS";
        assert_eq!(r.to_string(), expected);
    }

    #[test]
    fn each_condition_makes_it_unclean() {
        let t0 = Instant::now();
        let clean = || vec![joined_bot(0, 0, "eu-west", t0), joined_bot(1, 0, "eu-west", t0)];
        assert!(report(clean(), 1).is_clean());

        let mut bots = clean();
        bots[1].play.as_mut().unwrap().own_moves_seen = 9;
        let r = report(bots, 1);
        assert_eq!(r.problems(), ["1/2 bots saw all their own moves"]);

        // A bot that never had a move accepted is not "clean" by having nothing to see.
        let idle = || {
            let mut bots = clean();
            *bots[1].play.as_mut().unwrap() = PlayStats { deltas: 10, ..Default::default() };
            bots
        };
        assert_eq!(report(idle(), 1).problems(), ["1/2 bots had a move accepted"]);
        let mut c = Collector::new(2, 1, vec!["eu-west".into()]).unwrap();
        idle().into_iter().for_each(|b| c.add(b));
        assert!(c.finish(Duration::from_secs(1), false, None).is_clean(), "no inputs were due");

        let mut bots = clean();
        bots[1].play.as_mut().unwrap().deltas = 0;
        assert_eq!(report(bots, 1).problems(), ["1/2 bots received deltas"]);

        let mut bots = clean();
        bots[0].play.as_mut().unwrap().input_latency_us.clear();
        bots[0].errors.push((ErrorKind::Protocol, "odd".into()));
        assert_eq!(report(bots, 1).problems(), ["1 errors"]);

        let mut c = Collector::new(2, 1, vec!["eu-west".into()]).unwrap();
        c.add(joined_bot(0, 0, "eu-west", t0));
        c.add(joined_bot(1, 0, "eu-west", t0));
        assert_eq!(c.finish(Duration::ZERO, true, Some(Duration::from_secs(1))).problems(), ["interrupted"]);
    }

    #[test]
    fn moves_and_recoveries_get_lines_of_their_own_and_only_losses_are_errors() {
        let t0 = Instant::now();
        let mut bots = vec![joined_bot(0, 0, "eu-west", t0), joined_bot(1, 0, "eu-west", t0)];
        let migration = |pause_ms| Migration {
            world_id: "world-0".into(),
            last_tick_seen: 50,
            welcome_tick: 50,
            pause: Duration::from_millis(pause_ms),
            server_before: "eu-west-1".into(),
            server_after: "ws://10.0.0.2:7001/ws".into(),
        };
        for bot in &mut bots {
            // Two inputs were outstanding at the Migrate: sent, never answered.
            let play = bot.play.as_mut().unwrap();
            (play.sent, play.unapplied) = (12, 2);
        }
        bots[0].migrations.push(migration(80));
        bots[1].migrations.push(migration(120));
        let r = report(bots, 1);
        assert!(r.is_clean(), "{r}");
        assert_eq!(r.inputs_sent, r.inputs_ok + r.inputs_rejected + r.inputs_missing + r.inputs_unapplied);
        assert_eq!(r.migrations.iter().map(|(bot, _)| *bot).collect::<Vec<_>>(), [0, 1]);
        assert_eq!((r.max_pause(), r.max_outage(), r.max_ticks_lost()), (Some(Duration::from_millis(120)), None, 0));
        let text = r.to_string();
        assert!(text.contains("4 unapplied; input->result"), "{text}");
        assert!(text.contains("\nmigrations    2 followed; pause ms max 120.0\n"), "{text}");
        assert!(!text.contains("reconnects"), "{text}");

        // A crash: bot 1 lost its connection (an error) and came back on another server
        // restored from an older checkpoint; the move it had not seen yet is forgotten.
        let mut bots = vec![joined_bot(0, 0, "eu-west", t0), joined_bot(1, 0, "eu-west", t0)];
        bots[1].error(ErrorKind::ConnectionLost, "connection lost: reset (on eu-west-1)");
        let play = bots[1].play.as_mut().unwrap();
        (play.own_moves_seen, play.moves_forgotten) = (9, 1);
        let recovery = |outage_ms, welcome_tick| Recovery {
            world_id: "world-0".into(),
            last_tick_seen: 70,
            welcome_tick,
            outage: Duration::from_millis(outage_ms),
            server_before: "eu-west-1".into(),
            server_after: "eu-west-2".into(),
        };
        bots[1].recoveries.push(recovery(900, 62));
        bots[1].recoveries.push(recovery(1_500, 75));
        let r = report(bots, 1);
        assert_eq!(r.problems(), ["1 errors"]);
        assert_eq!(r.bots_with_all_own_moves, 2);
        assert_eq!(r.recoveries.len(), 2);
        assert!(r.recoveries.iter().all(|(bot, rec)| *bot == 1 && rec.server_after == "eu-west-2"));
        assert_eq!((r.max_outage(), r.max_ticks_lost()), (Some(Duration::from_millis(1_500)), 8));
        let text = r.to_string();
        assert!(
            text.contains("\nreconnects    2 after lost connections; outage ms max 1500.0; ticks lost max 8\n"),
            "{text}"
        );
        assert!(
            text.contains("  connection lost: 1\n    bot 1 in w0: connection lost: reset (on eu-west-1)"),
            "{text}"
        );
        assert!(!text.contains("migrations") && !text.contains("unapplied"), "{text}");
    }

    #[test]
    fn errors_are_counted_by_kind_with_three_examples() {
        let mut bots: Vec<BotOutcome> = (0..5)
            .map(|i| {
                let mut o = BotOutcome::new(i, 0);
                o.error(ErrorKind::JoinRefused, "4001 join token has expired");
                o
            })
            .collect();
        bots[0].alloc_failed = true;
        bots[0].errors = vec![(ErrorKind::AllocationFailed, "HTTP 404 fleet_not_found: no fleet \"x\"".into())];
        let r = report(bots, 1);
        assert!(!r.is_clean());
        assert_eq!(r.errors[&ErrorKind::JoinRefused].count, 4);
        assert_eq!(r.errors[&ErrorKind::JoinRefused].examples.len(), 3);
        let text = r.to_string();
        assert!(text.contains("allocations   0 ok, 1 failed, 0 retried (429); 0.0/s; latency ms no samples"), "{text}");
        assert!(
            text.ends_with(
                "errors        5
  allocation failed: 1
    bot 0 in w0: HTTP 404 fleet_not_found: no fleet \"x\"
  join refused: 4
    bot 1 in w0: 4001 join token has expired
    bot 2 in w0: 4001 join token has expired
    bot 3 in w0: 4001 join token has expired
result        FAIL: 5 errors; 0/5 bots joined; 0/5 bots received deltas; 0/5 bots had a move accepted; 0/5 bots saw all their own moves"
            ),
            "{text}"
        );
    }

    fn process(name: &str, cpu_seconds: f64, connections: Option<u64>, kib_per_connection: f64) -> crate::ProcessUse {
        crate::ProcessUse {
            name: name.into(),
            cpu_percent: cpu_seconds * 100.0,
            cpu_seconds,
            rss_bytes: 64 << 20,
            connections,
            bytes_per_connection: connections.map(|_| kib_per_connection * 1024.0),
            tick_p99: None,
            operations: None,
        }
    }

    fn baseline(frames: u64, server_cpu_seconds: f64, tick_us: u64, input_us: u64) -> Baseline {
        let mut tick_latency = latency_histogram().unwrap();
        tick_latency.record(tick_us).unwrap();
        let mut input_latency = latency_histogram().unwrap();
        input_latency.record(input_us).unwrap();
        Baseline {
            server: crate::baseline::ServerConfig::default(),
            connections: 2,
            connected: 2,
            steady: Duration::from_secs(1),
            interrupted: false,
            inputs_expected: true,
            inputs_sent: 2,
            replies: 2,
            replies_missing: 0,
            input_latency,
            tick_latency,
            frames,
            connections_with_frames: 2,
            server_use: Some(process("raw-server", server_cpu_seconds, Some(2), 11.5)),
            loadgen_use: Some(process("loadgen", 0.25, None, 0.0)),
            errors: ErrorTally::default(),
        }
    }

    #[test]
    fn ratios_divide_each_figure_by_the_raw_ones_and_need_both() {
        let gaia = Figures {
            cpu_us_per_frame: Some(3.0),
            tick_p99_us: Some(16_000),
            input_p99_us: Some(60_000),
            bytes_per_connection: Some(20_480.0),
        };
        let raw = Figures {
            cpu_us_per_frame: Some(4.0),
            tick_p99_us: Some(4_000),
            input_p99_us: None,
            bytes_per_connection: Some(0.0),
        };
        let ratios = Ratios::of(&gaia, &raw);
        assert_eq!(
            ratios,
            Ratios { cpu_per_frame: Some(0.75), tick_p99: Some(4.0), input_p99: None, memory_per_connection: None }
        );
    }

    #[test]
    fn a_baseline_adds_its_lines_and_gaias_figures_over_its_own() {
        let t0 = Instant::now();
        let mut r = report(vec![joined_bot(0, 0, "eu-west", t0), joined_bot(1, 1, "us-east", t0)], 2);
        assert_eq!(r.vs_baseline(), None);
        // The loadgen's CPU is no server's; 1.1 ms of server CPU over 22 frames (11 per
        // bot) is 50 µs a frame; (20 KiB + 3 x 24 KiB) over 4 connections is 23 KiB.
        r.processes = vec![
            process("loadgen", 5.0, None, 0.0),
            process("town-eu", 0.0005, Some(1), 20.0),
            process("town-us", 0.0006, Some(3), 24.0),
        ];
        let gaia = r.figures();
        assert!((gaia.cpu_us_per_frame.unwrap() - 50.0).abs() < 1e-9, "{gaia:?}");
        assert_eq!(gaia.bytes_per_connection, Some(23.0 * 1024.0));
        assert_eq!((gaia.tick_p99_us, gaia.input_p99_us), (Some(2_000), Some(r.input_latency.value_at_quantile(0.99))));

        // The raw server: 0.2 ms over 8 frames is 25 µs a frame, 11.5 KiB per connection.
        r.baseline = Some(baseline(8, 0.0002, 1_000, 45_000));
        let ratios = r.vs_baseline().unwrap();
        assert!((ratios.cpu_per_frame.unwrap() - 2.0).abs() < 1e-9, "{ratios:?}");
        assert_eq!(
            (ratios.tick_p99, ratios.input_p99, ratios.memory_per_connection),
            (Some(2.0), Some(1.0), Some(2.0))
        );
        assert!(r.is_clean(), "{r}");
        let text = r.to_string();
        let expected = "\
process       town-us cpu 0% rss 64.0 MiB, 3 connections, 24.0 KiB per connection
baseline      raw tokio-tungstenite: 2/2 connections, groups of 30, a 38 B frame at 10 Hz, a 5 B reply per input; 1.0 s steady
baseline      inputs 2 sent, 2 replied, 0 missing; input->result ms p50 45.0 p90 45.0 p99 45.0 max 45.0
baseline      frames 8 received in the steady phase (4.0 per connection per s); tick->client ms p50 1.0 p90 1.0 p99 1.0 max 1.0
baseline      process raw-server cpu 0% rss 64.0 MiB, 2 connections, 11.5 KiB per connection
baseline      process loadgen cpu 25% rss 64.0 MiB
vs baseline   Gaia / raw: server CPU per delivered frame 50.00 / 25.00 µs = 2.00x; tick->client p99 2.00 / 1.00 ms = 2.00x; \
input->result p99 45.02 / 45.02 ms = 1.00x; memory per connection 23.00 / 11.50 KiB = 2.00x
errors        none
";
        assert!(text.contains(expected), "{text}");

        let mut broken = baseline(8, 0.0002, 1_000, 45_000);
        (broken.replies, broken.replies_missing) = (1, 1);
        r.baseline = Some(broken);
        assert_eq!(r.problems(), ["baseline: 1 replies missing"]);

        // A server that was not scraped: its CPU is unknown, so no CPU figure at all.
        r.processes.pop();
        assert_eq!(r.figures().cpu_us_per_frame, None);
        assert_eq!(r.figures().bytes_per_connection, Some(20.0 * 1024.0));
    }
}
