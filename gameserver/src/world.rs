//! The world runtime API: what a game implements to run on Gaia Fleet.
//!
//! A game's rules live in one type that implements [`World`]. The runtime owns
//! everything else: connections, join tokens, the fixed time step, input ordering and
//! results, the shared delta encoding, slow readers, metrics and shutdown. A world is
//! plain data and plain functions: no I/O, no clock, no threads. Each call records what
//! members should see by pushing changes onto `delta`; the runtime encodes them once per
//! tick and sends the same bytes to every member.
//!
//! Per tick the runtime calls, in this order: [`World::join`], [`World::leave`] and
//! [`World::apply`] for the events that arrived since the last tick, in arrival order,
//! then [`World::tick`] once. `apply` is only called for members who joined and have not
//! left. A world that takes its randomness from a seed (`rand`'s `SeedableRng`) replays
//! exactly: same seed, same events, same deltas.
//!
//! A world that needs the outside (a model call, an HTTP call) starts an operation
//! ([`gaia_ops::Operation`]) and hands it out through [`World::take_operations`]; the
//! runtime runs it off the tick path and, at a later tick, applies its outcome with
//! [`World::complete`], in the order outcomes arrive, among the inputs. The world keeps
//! the operations it has in flight in its own state (a checkpoint holds them), and says
//! which they are in [`World::in_flight`]: after a restore or a move the runtime runs
//! those again, or, if repeating one could do harm, completes it as
//! [`gaia_ops::OpError::Interrupted`]. Each started operation gets exactly one outcome
//! per life of the world; none is applied twice. Worlds without operations implement
//! none of the three.
//!
//! docs/worlds.md walks through a small example; [`crate::town::Town`] is the reference
//! world.

use std::fmt::Debug;

use bincode::{Decode, Encode};
use gaia_ops::{OpId, Operation, Outcome};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A connection inside one world, as the runtime numbers them. Unique per server process.
pub type MemberId = u64;

pub trait World: Send + 'static {
    /// What a client may ask for; arrives in `ClientMsg::Input`.
    /// Both encodings: bincode, and JSON (serde, tagged as docs/protocol.md says).
    type Action: Decode<()> + DeserializeOwned + Debug + Send + 'static;
    /// One thing that changed, as members see it in `ServerMsg::Delta`.
    type Change: Encode + Serialize + Send + 'static;
    /// The whole world as a client draws it, sent on join and after a client fell behind.
    type View: Encode + Serialize;

    /// A member joined (under the player name from its join token). Returns the id of
    /// what the member controls, sent back to it as `Welcome::you`.
    fn join(&mut self, member: MemberId, name: &str, delta: &mut Vec<Self::Change>) -> u32;

    /// A member left, or its connection was lost.
    fn leave(&mut self, member: MemberId, delta: &mut Vec<Self::Change>);

    /// Applies one input of a joined member. `Err` is the reason shown to the player;
    /// a refused input should change nothing.
    fn apply(&mut self, member: MemberId, action: Self::Action, delta: &mut Vec<Self::Change>) -> Result<(), String>;

    /// Advances the world by one fixed step. `tick` counts from 1 and never repeats.
    fn tick(&mut self, tick: u64, delta: &mut Vec<Self::Change>);

    /// The whole world as clients see it.
    fn view(&self) -> Self::View;

    /// The version of [`World::save`]'s layout, written into every checkpoint. Bump it
    /// when the layout changes: a checkpoint of another version is never handed to
    /// [`World::restore`]; it is skipped with a logged error, and the world starts
    /// afresh (after that checkpoint's tick) unless an older checkpoint of this
    /// version exists.
    const SCHEMA_VERSION: u32 = 1;

    /// The world's state as bytes, for checkpoints. Members are not part of it: after a
    /// restore, players join again. Called about once a second per changed world, between
    /// ticks, so keep it to an encode of the state.
    fn save(&self) -> Vec<u8>;

    /// Rebuilds a world from [`World::save`]'s bytes. Bad bytes are an error, never a panic.
    fn restore(bytes: &[u8]) -> Result<Self, RestoreError>
    where
        Self: Sized;

    /// The operations the world started since the last call, to run. Called after each
    /// tick. Ids must be unique among the world's operations in flight.
    fn take_operations(&mut self) -> Vec<Operation> {
        Vec::new()
    }

    /// The outcome of operation `id`, which the world started and has in flight: called
    /// once per operation, at a tick after it started.
    fn complete(&mut self, id: OpId, outcome: Outcome, delta: &mut Vec<Self::Change>) {
        let _ = (id, outcome, delta);
    }

    /// The operations started and not completed, as the world's state holds them (so a
    /// restored world still knows them): the runtime runs them again after a restore.
    fn in_flight(&self) -> Vec<Operation> {
        Vec::new()
    }

    /// The lines said among one tick's `changes`, for the activity log (what players and
    /// agents said; docs/agents.md). Called after each tick when the server keeps a log.
    fn messages(&self, changes: &[Self::Change]) -> Vec<Line> {
        let _ = changes;
        Vec::new()
    }
}

/// One line said in a world, as [`World::messages`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The entity that said it, and its name.
    pub author_id: u32,
    pub author: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot restore world: {0}")]
pub struct RestoreError(pub String);

/// Creates the world for a world id, the same way every time (derive seeds from the id).
pub type NewWorld<W> = std::sync::Arc<dyn Fn(&str) -> W + Send + Sync>;

/// A stable seed for a world id, so a world id always yields the same world. FNV-1a:
/// stable across runs and platforms, unlike the std hasher.
pub fn seed_of(world_id: &str) -> u64 {
    world_id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}
