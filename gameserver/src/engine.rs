//! The tick engine's pure core: one fixed step of one world.
//!
//! [`Engine::step`] takes the events that arrived since the last tick, in arrival order,
//! applies them to the [`World`], ticks it once and returns what every member should see
//! plus one result per input. No I/O and no clock: `room/task.rs` runs it on a timer and moves
//! the output to connections.
//!
//! It also keeps the books of the world's operations: which are in flight (so an outcome
//! is applied to the world once, and one for an operation not in flight, such as a second
//! outcome or one from before a restore, is dropped), the operations the world started
//! this tick for the runtime to run, and a refusal for those over [`MAX_IN_FLIGHT`].

use std::collections::HashSet;

use gaia_api::protocol::InputOutcome;
use gaia_ops::{Completed, OpError, OpId, Operation};

use crate::world::{MemberId, World};

/// What happened since the last tick, in the order it arrived.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<A> {
    Join {
        member: MemberId,
        name: String,
    },
    Leave {
        member: MemberId,
    },
    Input {
        member: MemberId,
        seq: u32,
        action: A,
    },
    /// An operation's outcome.
    Done(Completed),
}

/// Operations one world may have in flight; more are refused (`Overloaded`) at the next
/// tick, so one world cannot take a provider's whole queue.
pub const MAX_IN_FLIGHT: usize = 256;

/// The outcome of one tick.
#[derive(Debug, Clone, PartialEq)]
pub struct TickOutput<C> {
    pub tick: u64,
    /// Everything every member should learn, in order.
    pub changes: Vec<C>,
    /// One result per input event, in input order.
    pub results: Vec<(MemberId, u32, InputOutcome)>,
    /// Members who joined this tick and the id of what each controls.
    pub joined: Vec<(MemberId, u32)>,
    /// Operations the world started this tick, to run.
    pub started: Vec<Operation>,
    /// Outcomes dropped: their operation was not in flight (already completed, or not
    /// this life's).
    pub stray: usize,
}

pub struct Engine<W> {
    world: W,
    tick: u64,
    members: HashSet<MemberId>,
    in_flight: HashSet<OpId>,
    /// Refusals of operations over the limit, applied at the next tick.
    refused: Vec<Completed>,
}

impl<W: World> Engine<W> {
    /// Starts `world` after tick `tick` (0 for a new world; a checkpoint's tick after a
    /// restore).
    pub fn new(world: W, tick: u64) -> Self {
        let in_flight = world.in_flight().iter().map(|op| op.id).collect();
        Self { world, tick, members: HashSet::new(), in_flight, refused: Vec::new() }
    }

    /// After a restore, what becomes of the operations the world had in flight: those safe
    /// to repeat are to run again (the first list); the others are completed as
    /// [`OpError::Interrupted`] by the events returned, for the first tick.
    pub fn recover<A>(&self) -> (Vec<Operation>, Vec<Event<A>>) {
        let (again, interrupted): (Vec<Operation>, Vec<Operation>) =
            self.world.in_flight().into_iter().partition(|op| op.request.retry_safe());
        let events = interrupted
            .into_iter()
            .map(|op| Event::Done(Completed { id: op.id, outcome: Err(OpError::Interrupted) }))
            .collect();
        (again, events)
    }

    /// Operations in flight.
    pub fn operations(&self) -> usize {
        self.in_flight.len()
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
        let mut out = TickOutput {
            tick: self.tick,
            changes: Vec::new(),
            results: Vec::new(),
            joined: Vec::new(),
            started: Vec::new(),
            stray: 0,
        };
        let refused = std::mem::take(&mut self.refused).into_iter().map(Event::Done);
        for event in refused.chain(events) {
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
                Event::Done(Completed { id, outcome }) => {
                    if self.in_flight.remove(&id) {
                        self.world.complete(id, outcome, &mut out.changes);
                    } else {
                        out.stray += 1;
                    }
                }
            }
        }
        self.world.tick(self.tick, &mut out.changes);
        for op in self.world.take_operations() {
            if !self.in_flight.insert(op.id) {
                // A world bug: the first of that id keeps its outcome.
                out.stray += 1;
            } else if self.in_flight.len() > MAX_IN_FLIGHT {
                let outcome =
                    Err(OpError::Overloaded { kind: format!("{} (this world's)", op.request.kind().label()) });
                self.refused.push(Completed { id: op.id, outcome });
            } else {
                out.started.push(op);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use gaia_ops::{EmbedRequest, JobRequest, Outcome, Request, Response};

    use super::*;
    use crate::world::RestoreError;

    /// Starts `n` operations for each input `n`, ids counting from 1; records outcomes.
    #[derive(Default)]
    struct Asker {
        next: OpId,
        started: Vec<Operation>,
        in_flight: Vec<Operation>,
        outcomes: Vec<(OpId, Outcome)>,
    }

    impl World for Asker {
        type Action = u32;
        type Change = ();
        type View = ();
        fn join(&mut self, _: MemberId, _: &str, _: &mut Vec<()>) -> u32 {
            0
        }
        fn leave(&mut self, _: MemberId, _: &mut Vec<()>) {}
        fn apply(&mut self, _: MemberId, n: u32, _: &mut Vec<()>) -> Result<(), String> {
            for _ in 0..n {
                self.next += 1;
                // Odd ids are embeddings (safe to repeat), even ones jobs that are not.
                let request = if self.next % 2 == 1 {
                    Request::Embed(EmbedRequest { input: self.next.to_string() })
                } else {
                    Request::Job(JobRequest { name: "pay".into(), payload: vec![], idempotent: false })
                };
                let op = Operation { id: self.next, request, timeout_ms: 1_000 };
                self.in_flight.push(op.clone());
                self.started.push(op);
            }
            Ok(())
        }
        fn tick(&mut self, _: u64, _: &mut Vec<()>) {}
        fn view(&self) {}
        fn save(&self) -> Vec<u8> {
            Vec::new()
        }
        fn restore(_: &[u8]) -> Result<Self, RestoreError> {
            Ok(Self::default())
        }
        fn take_operations(&mut self) -> Vec<Operation> {
            std::mem::take(&mut self.started)
        }
        fn complete(&mut self, id: OpId, outcome: Outcome, _: &mut Vec<()>) {
            self.in_flight.retain(|op| op.id != id);
            self.outcomes.push((id, outcome));
        }
        fn in_flight(&self) -> Vec<Operation> {
            self.in_flight.clone()
        }
    }

    fn done(id: OpId) -> Event<u32> {
        Event::Done(Completed { id, outcome: Ok(Response::Embedding { vector: vec![id as f32] }) })
    }

    #[test]
    fn outcomes_are_applied_in_order_once_and_strays_dropped() {
        let mut engine = Engine::new(Asker::default(), 0);
        let out = engine
            .step(vec![Event::Join { member: 1, name: "a".into() }, Event::Input { member: 1, seq: 1, action: 3 }]);
        assert_eq!(out.started.iter().map(|op| op.id).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(engine.operations(), 3);
        let out = engine.step(vec![done(3), done(1), done(3), done(9)]);
        assert_eq!(out.stray, 2, "the second outcome of 3, and one for an id never started");
        let applied: Vec<OpId> = engine.world().outcomes.iter().map(|(id, _)| *id).collect();
        assert_eq!(applied, [3, 1]);
        assert_eq!(engine.operations(), 1);
    }

    #[test]
    fn a_world_over_its_limit_is_refused_at_the_next_tick() {
        let mut engine = Engine::new(Asker::default(), 0);
        let n = MAX_IN_FLIGHT as u32 + 2;
        let out = engine
            .step(vec![Event::Join { member: 1, name: "a".into() }, Event::Input { member: 1, seq: 1, action: n }]);
        assert_eq!(out.started.len(), MAX_IN_FLIGHT);
        assert!(engine.world().outcomes.is_empty());
        engine.step(vec![]);
        let refused: Vec<&(OpId, Outcome)> = engine.world().outcomes.iter().collect();
        assert_eq!(refused.len(), 2);
        assert!(refused.iter().all(|(_, o)| matches!(o, Err(OpError::Overloaded { .. }))), "{refused:?}");
    }

    #[test]
    fn after_a_restore_safe_operations_run_again_and_the_others_are_interrupted() {
        let mut world = Asker::default();
        world.apply(1, 4, &mut Vec::new()).unwrap();
        world.started.clear();
        let mut engine = Engine::new(world, 100);
        assert_eq!(engine.operations(), 4);
        let (again, interrupted) = engine.recover::<u32>();
        assert_eq!(again.iter().map(|op| op.id).collect::<Vec<_>>(), [1, 3]);
        engine.step(interrupted);
        let applied: Vec<(OpId, Outcome)> = engine.world().outcomes.clone();
        assert_eq!(applied, [(2, Err(OpError::Interrupted)), (4, Err(OpError::Interrupted))]);
        engine.step(vec![done(1), done(3), done(2)]);
        assert_eq!(engine.world().outcomes.len(), 4, "the late outcome of 2 is a stray");
        assert_eq!(engine.operations(), 0);
    }
}
