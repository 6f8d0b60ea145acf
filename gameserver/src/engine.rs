//! The tick engine's pure core: one fixed step of one world.
//!
//! [`Engine::step`] takes the events that arrived since the last tick, in arrival order,
//! applies them to the [`World`], ticks it once and returns what every member should see
//! plus one result per input. No I/O and no clock: `room.rs` runs it on a timer and moves
//! the output to connections.

use std::collections::HashSet;

use gaia_api::protocol::InputOutcome;

use crate::world::{MemberId, World};

/// What happened since the last tick, in the order it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<A> {
    Join { member: MemberId, name: String },
    Leave { member: MemberId },
    Input { member: MemberId, seq: u32, action: A },
}

/// The outcome of one tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TickOutput<C> {
    pub tick: u64,
    /// Everything every member should learn, in order.
    pub changes: Vec<C>,
    /// One result per input event, in input order.
    pub results: Vec<(MemberId, u32, InputOutcome)>,
    /// Members who joined this tick and the id of what each controls.
    pub joined: Vec<(MemberId, u32)>,
}

pub struct Engine<W> {
    world: W,
    tick: u64,
    members: HashSet<MemberId>,
}

impl<W: World> Engine<W> {
    /// Starts `world` after tick `tick` (0 for a new world; a checkpoint's tick after a
    /// restore).
    pub fn new(world: W, tick: u64) -> Self {
        Self { world, tick, members: HashSet::new() }
    }

    pub fn tick(&self) -> u64 {
        self.tick
    }

    pub fn members(&self) -> usize {
        self.members.len()
    }

    pub fn world(&self) -> &W {
        &self.world
    }

    /// One fixed time step: apply `events` in order, then tick the world.
    pub fn step(&mut self, events: Vec<Event<W::Action>>) -> TickOutput<W::Change> {
        self.tick += 1;
        let mut out = TickOutput { tick: self.tick, changes: Vec::new(), results: Vec::new(), joined: Vec::new() };
        for event in events {
            match event {
                Event::Join { member, name } => {
                    if self.members.insert(member) {
                        let you = self.world.join(member, &name, &mut out.changes);
                        out.joined.push((member, you));
                    }
                }
                Event::Leave { member } => {
                    if self.members.remove(&member) {
                        self.world.leave(member, &mut out.changes);
                    }
                }
                Event::Input { member, seq, action } => {
                    let outcome = if !self.members.contains(&member) {
                        InputOutcome::Rejected { reason: "not in this world".into() }
                    } else {
                        match self.world.apply(member, action, &mut out.changes) {
                            Ok(()) => InputOutcome::Ok,
                            Err(reason) => InputOutcome::Rejected { reason },
                        }
                    };
                    out.results.push((member, seq, outcome));
                }
            }
        }
        self.world.tick(self.tick, &mut out.changes);
        out
    }
}
