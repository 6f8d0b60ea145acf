//! The reference world: an AI-Town-style grid where bots wander and greet each other and
//! players move and talk.
//!
//! Pure and deterministic: [`Town::tick`] takes the events of one tick (joins, leaves,
//! inputs, in arrival order) and returns what changed and each input's result. The same
//! seed and the same events give the same output, so tests can replay a world. No I/O,
//! no clock: the runtime in `room.rs` feeds it.

use std::collections::HashMap;

use gaia_api::protocol::{Action, Change, Entity, EntityId, EntityKind, InputOutcome, Snapshot};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// A connection inside one world, as the runtime numbers them.
pub type MemberId = u64;

/// Longest `Say` text accepted, in bytes.
pub const MAX_SAY: usize = 200;

/// Ticks a bot waits before greeting anyone again.
const GREET_COOLDOWN: u64 = 50;

const BOT_NAMES: [&str; 8] = ["ada", "bob", "cyd", "dot", "eve", "fay", "gus", "hal"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TownConfig {
    pub width: u16,
    pub height: u16,
    /// Server-side bots that live in the world.
    pub bots: u16,
    /// Share of cells that are walls, in percent.
    pub wall_percent: u8,
}

impl Default for TownConfig {
    fn default() -> Self {
        Self { width: 48, height: 32, bots: 5, wall_percent: 8 }
    }
}

/// What happened since the last tick, in the order it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Join { member: MemberId, name: String },
    Leave { member: MemberId },
    Input { member: MemberId, seq: u32, action: Action },
}

/// The outcome of one tick.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickOutput {
    pub tick: u64,
    /// Everything every member should learn, in order.
    pub changes: Vec<Change>,
    /// One result per input event, in input order.
    pub results: Vec<(MemberId, u32, InputOutcome)>,
    /// Members who joined this tick and the entity each now controls.
    pub joined: Vec<(MemberId, EntityId)>,
}

#[derive(Debug, Clone)]
struct Bot {
    id: EntityId,
    goal: (u16, u16),
    last_greet: u64,
}

pub struct Town {
    config: TownConfig,
    walls: Vec<u8>,
    tick: u64,
    rng: SmallRng,
    next_id: EntityId,
    /// Every entity by id, in a stable order for snapshots.
    entities: Vec<Entity>,
    bots: Vec<Bot>,
    players: HashMap<MemberId, EntityId>,
}

impl Town {
    pub fn new(config: TownConfig, seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let cells = usize::from(config.width) * usize::from(config.height);
        let mut walls = vec![0u8; cells.div_ceil(8)];
        for bit in 0..cells {
            if rng.random_range(0..100u8) < config.wall_percent {
                walls[bit / 8] |= 1 << (bit % 8);
            }
        }
        let mut town = Self {
            config,
            walls,
            tick: 0,
            rng,
            next_id: 1,
            entities: Vec::new(),
            bots: Vec::new(),
            players: HashMap::new(),
        };
        for i in 0..config.bots {
            let name = format!("{}-{i}", BOT_NAMES[usize::from(i) % BOT_NAMES.len()]);
            let entity = town.spawn(EntityKind::Bot, name);
            let goal = town.free_cell();
            town.bots.push(Bot { id: entity.id, goal, last_greet: 0 });
        }
        town
    }

    pub fn tick_count(&self) -> u64 {
        self.tick
    }

    pub fn players(&self) -> usize {
        self.players.len()
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            width: self.config.width,
            height: self.config.height,
            walls: self.walls.clone(),
            entities: self.entities.clone(),
        }
    }

    fn is_wall(&self, x: i32, y: i32) -> bool {
        if x < 0 || y < 0 || x >= i32::from(self.config.width) || y >= i32::from(self.config.height) {
            return true;
        }
        let bit = y as usize * usize::from(self.config.width) + x as usize;
        self.walls[bit / 8] & (1 << (bit % 8)) != 0
    }

    /// A random cell that is not a wall. Falls back to scanning so a map of walls still
    /// yields a cell deterministically.
    fn free_cell(&mut self) -> (u16, u16) {
        for _ in 0..64 {
            let x = self.rng.random_range(0..self.config.width);
            let y = self.rng.random_range(0..self.config.height);
            if !self.is_wall(x.into(), y.into()) {
                return (x, y);
            }
        }
        (0..self.config.height)
            .flat_map(|y| (0..self.config.width).map(move |x| (x, y)))
            .find(|&(x, y)| !self.is_wall(x.into(), y.into()))
            .unwrap_or((0, 0))
    }

    fn spawn(&mut self, kind: EntityKind, name: String) -> Entity {
        let (x, y) = self.free_cell();
        let entity = Entity { id: self.next_id, kind, name, x, y };
        self.next_id += 1;
        self.entities.push(entity.clone());
        entity
    }

    /// Moves `id` one step by (dx, dy) if the target is free; the change it makes.
    fn step(&mut self, id: EntityId, dx: i8, dy: i8) -> Result<Change, String> {
        if !(-1..=1).contains(&dx) || !(-1..=1).contains(&dy) || (dx, dy) == (0, 0) {
            return Err(format!("invalid step ({dx}, {dy}): each must be -1, 0 or 1, not both 0"));
        }
        let i = self.entities.iter().position(|e| e.id == id).ok_or("no such entity")?;
        let (x, y) = (self.entities[i].x, self.entities[i].y);
        let (tx, ty) = (i32::from(x) + i32::from(dx), i32::from(y) + i32::from(dy));
        if tx < 0 || ty < 0 || tx >= i32::from(self.config.width) || ty >= i32::from(self.config.height) {
            return Err("off the map".into());
        }
        if self.is_wall(tx, ty) {
            return Err("blocked by a wall".into());
        }
        let (tx, ty) = (tx as u16, ty as u16);
        (self.entities[i].x, self.entities[i].y) = (tx, ty);
        Ok(Change::Moved { id, x: tx, y: ty })
    }

    fn apply(&mut self, member: MemberId, action: Action) -> Result<Change, String> {
        let id = *self.players.get(&member).ok_or("not in this world")?;
        match action {
            Action::Move { dx, dy } => self.step(id, dx, dy),
            Action::Say { text } if text.is_empty() => Err("nothing to say".into()),
            Action::Say { text } if text.len() > MAX_SAY => Err(format!("text longer than {MAX_SAY} bytes")),
            Action::Say { text } => Ok(Change::Said { id, text }),
        }
    }

    /// One fixed time step: apply `events` in order, then let the bots act.
    pub fn tick(&mut self, events: Vec<Event>) -> TickOutput {
        self.tick += 1;
        let mut out = TickOutput { tick: self.tick, ..Default::default() };
        for event in events {
            match event {
                Event::Join { member, name } => {
                    if self.players.contains_key(&member) {
                        continue;
                    }
                    let entity = self.spawn(EntityKind::Player, name);
                    self.players.insert(member, entity.id);
                    out.joined.push((member, entity.id));
                    out.changes.push(Change::Joined(entity));
                }
                Event::Leave { member } => {
                    if let Some(id) = self.players.remove(&member) {
                        self.entities.retain(|e| e.id != id);
                        out.changes.push(Change::Left { id });
                    }
                }
                Event::Input { member, seq, action } => {
                    let outcome = match self.apply(member, action) {
                        Ok(change) => {
                            out.changes.push(change);
                            InputOutcome::Ok
                        }
                        Err(reason) => InputOutcome::Rejected { reason },
                    };
                    out.results.push((member, seq, outcome));
                }
            }
        }
        self.move_bots(&mut out.changes);
        out
    }

    /// Each bot takes a step toward its goal about one tick in three, picks a new goal
    /// when it arrives or is stuck, and greets another bot it bumps into.
    fn move_bots(&mut self, changes: &mut Vec<Change>) {
        for i in 0..self.bots.len() {
            if self.rng.random_range(0..3u8) != 0 {
                continue;
            }
            let Bot { id, goal, .. } = self.bots[i];
            let Some((x, y)) = self.entities.iter().find(|e| e.id == id).map(|e| (e.x, e.y)) else { continue };
            if (x, y) == goal {
                self.bots[i].goal = self.free_cell();
                continue;
            }
            let toward = |from: u16, to: u16| (i32::from(to) - i32::from(from)).signum() as i8;
            let (dx, dy) = (toward(x, goal.0), toward(y, goal.1));
            let step = self.step(id, dx, dy).or_else(|_| self.step(id, dx, 0)).or_else(|_| self.step(id, 0, dy));
            match step {
                Ok(change) => changes.push(change),
                // Walled in on the direct line: try elsewhere next time.
                Err(_) => self.bots[i].goal = self.free_cell(),
            }
        }
        self.greet(changes);
    }

    fn greet(&mut self, changes: &mut Vec<Change>) {
        let tick = self.tick;
        for i in 0..self.bots.len() {
            if tick < self.bots[i].last_greet + GREET_COOLDOWN && self.bots[i].last_greet != 0 {
                continue;
            }
            let me = self.bots[i].id;
            let Some(pos) = self.entities.iter().find(|e| e.id == me).map(|e| (e.x, e.y)) else { continue };
            let near =
                self.entities.iter().find(|e| e.id != me && e.x.abs_diff(pos.0) <= 1 && e.y.abs_diff(pos.1) <= 1);
            if let Some(other) = near {
                let (other, name) = (other.id, other.name.clone());
                self.bots[i].last_greet = tick;
                changes.push(Change::Greeted { id: me, other });
                changes.push(Change::Said { id: me, text: format!("hello, {name}") });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_town() -> Town {
        Town::new(TownConfig { width: 8, height: 6, bots: 0, wall_percent: 0 }, 1)
    }

    fn join(town: &mut Town, member: MemberId) -> EntityId {
        let out = town.tick(vec![Event::Join { member, name: format!("p{member}") }]);
        out.joined[0].1
    }

    fn position(town: &Town, id: EntityId) -> (u16, u16) {
        town.snapshot().entities.iter().find(|e| e.id == id).map(|e| (e.x, e.y)).unwrap()
    }

    #[test]
    fn inputs_apply_in_order_and_each_gets_a_result() {
        let mut town = open_town();
        let id = join(&mut town, 7);
        let (x, y) = position(&town, id);
        let dx = if x + 1 < 8 { 1 } else { -1 };
        let events = vec![
            Event::Input { member: 7, seq: 1, action: Action::Move { dx, dy: 0 } },
            Event::Input { member: 7, seq: 2, action: Action::Say { text: "hi".into() } },
            Event::Input { member: 7, seq: 3, action: Action::Move { dx: 2, dy: 0 } },
            Event::Input { member: 7, seq: 4, action: Action::Move { dx: -dx, dy: 0 } },
        ];
        let out = town.tick(events);
        let seqs: Vec<u32> = out.results.iter().map(|r| r.1).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4]);
        assert_eq!(out.results[0].2, InputOutcome::Ok);
        assert!(matches!(&out.results[2].2, InputOutcome::Rejected { reason } if reason.contains("invalid step")));
        let x1 = (i32::from(x) + i32::from(dx)) as u16;
        assert_eq!(
            out.changes,
            vec![Change::Moved { id, x: x1, y }, Change::Said { id, text: "hi".into() }, Change::Moved { id, x, y },]
        );
    }

    #[test]
    fn walls_and_edges_refuse_moves() {
        let mut town = Town::new(TownConfig { width: 2, height: 1, bots: 0, wall_percent: 0 }, 3);
        // Put a wall on cell (1, 0) and the player on (0, 0).
        town.walls[0] |= 0b10;
        let id = join(&mut town, 1);
        assert_eq!(position(&town, id), (0, 0));
        let reason = |out: TickOutput| match &out.results[0].2 {
            InputOutcome::Rejected { reason } => reason.clone(),
            InputOutcome::Ok => panic!("accepted"),
        };
        let out = town.tick(vec![Event::Input { member: 1, seq: 1, action: Action::Move { dx: 1, dy: 0 } }]);
        assert_eq!(reason(out), "blocked by a wall");
        let out = town.tick(vec![Event::Input { member: 1, seq: 2, action: Action::Move { dx: -1, dy: 0 } }]);
        assert_eq!(reason(out), "off the map");
        let long = "x".repeat(MAX_SAY + 1);
        let out = town.tick(vec![Event::Input { member: 1, seq: 3, action: Action::Say { text: long } }]);
        assert!(reason(out).contains("longer than"));
        let out = town.tick(vec![Event::Input { member: 9, seq: 1, action: Action::Say { text: "x".into() } }]);
        assert_eq!(reason(out), "not in this world");
    }

    #[test]
    fn join_and_leave_show_in_changes_and_snapshot() {
        let mut town = open_town();
        let id = join(&mut town, 1);
        assert_eq!(town.players(), 1);
        assert!(town.snapshot().entities.iter().any(|e| e.id == id && e.kind == EntityKind::Player));
        let out = town.tick(vec![Event::Leave { member: 1 }, Event::Leave { member: 1 }]);
        assert_eq!(out.changes, vec![Change::Left { id }]);
        assert_eq!(town.players(), 0);
        assert!(town.snapshot().entities.is_empty());
    }

    #[test]
    fn same_seed_same_world() {
        let run = |seed| {
            let mut town = Town::new(TownConfig::default(), seed);
            let mut all = vec![town.snapshot()];
            let mut outs = Vec::new();
            for t in 0..200u32 {
                let events = if t == 5 {
                    vec![Event::Join { member: 1, name: "p".into() }]
                } else {
                    vec![Event::Input { member: 1, seq: t, action: Action::Move { dx: 1, dy: 1 } }]
                };
                outs.push(town.tick(events));
            }
            all.push(town.snapshot());
            (all, outs)
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42).0, run(43).0);
    }

    #[test]
    fn bots_wander_and_greet() {
        let mut town = Town::new(TownConfig { width: 6, height: 6, bots: 6, wall_percent: 0 }, 9);
        let mut moved = 0;
        let mut greeted = 0;
        for _ in 0..300 {
            for change in town.tick(Vec::new()).changes {
                match change {
                    Change::Moved { .. } => moved += 1,
                    Change::Greeted { .. } => greeted += 1,
                    _ => {}
                }
            }
        }
        assert!(moved > 50, "bots barely moved: {moved}");
        assert!(greeted > 0, "six bots on a 6x6 map never met");
    }
}
