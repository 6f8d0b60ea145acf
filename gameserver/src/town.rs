//! The reference world: an AI-Town-style grid with walls, where bots pick destinations,
//! find paths to them, meet and hold short conversations, and players move and chat.
//!
//! Implements [`World`]. Deterministic: the map comes from the seed, and each tick's
//! randomness from (seed, tick), so a restored world goes on exactly as the original
//! would have (given the same outcomes of its operations).
//!
//! The first `agents` bots think through a language model ([`crate::agent`]): their
//! conversation lines are chat completions (the conversation waits for each), they answer
//! a player who speaks next to them, and they remember a summary of each conversation in
//! the server's memory store (under the town's world id), recalling what is nearest to
//! the other when a conversation starts. The others, and every bot when no model is
//! configured, say the scripted lines.

use std::collections::HashMap;

use bincode::{Decode, Encode};
use gaia_api::town::{Action, Change, Entity, EntityId, EntityKind, Snapshot};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use gaia_ops::{OpId, Operation, Outcome, Response};

use crate::agent::{self, Mind, Purpose, Recollection};
use crate::world::{Line, MemberId, RestoreError, World};

/// Longest `Say` text accepted, in bytes.
pub const MAX_SAY: usize = 200;

/// A bot takes a step about one tick in `BOT_PACE` (bots stroll; players may move every tick).
const BOT_PACE: u8 = 3;
/// Ticks between the lines of a conversation.
const LINE_TICKS: u64 = 10;
/// Ticks a bot keeps to itself after a conversation.
const COOLDOWN_TICKS: u64 = 100;
/// What two bots say to each other, in turn; `{}` is the other's name.
const LINES: [&str; 4] = ["hello, {}", "lovely day in town, {}", "have you seen the well, {}?", "see you around, {}"];

const BOT_NAMES: [&str; 8] = ["ada", "bob", "cyd", "dot", "eve", "fay", "gus", "hal"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct TownConfig {
    pub width: u16,
    pub height: u16,
    /// Server-side bots that live in the world.
    pub bots: u16,
    /// Share of cells that are walls, in percent.
    pub wall_percent: u8,
    /// How many of the bots are agents that think through a model (the first ones).
    pub agents: u16,
}

impl Default for TownConfig {
    fn default() -> Self {
        Self { width: 48, height: 32, bots: 5, wall_percent: 8, agents: 0 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
struct Bot {
    id: EntityId,
    /// Cells still to walk, next first.
    path: Vec<(u16, u16)>,
    /// No conversations before this tick.
    quiet_until: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
struct Conversation {
    /// `a` started it and speaks first.
    a: EntityId,
    b: EntityId,
    started: u64,
    lines_said: u8,
    /// What was said so far: (speaker, text).
    transcript: Vec<(EntityId, String)>,
    /// An agent's line is being thought of: the conversation waits for it.
    waiting: bool,
}

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Town {
    /// The world's id, which names its agents' memories in the memory store.
    world_id: String,
    config: TownConfig,
    seed: u64,
    walls: Vec<u8>,
    next_id: EntityId,
    /// Every entity, in a stable order for snapshots.
    entities: Vec<Entity>,
    bots: Vec<Bot>,
    conversations: Vec<Conversation>,
    players: HashMap<MemberId, EntityId>,
    /// The agents' minds, by bot.
    minds: Vec<Mind>,
    next_op: OpId,
    /// Operations started since the runtime last took them.
    started: Vec<Operation>,
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
            world_id: String::new(),
            config,
            seed,
            walls,
            next_id: 1,
            entities: Vec::new(),
            bots: Vec::new(),
            conversations: Vec::new(),
            players: HashMap::new(),
            minds: Vec::new(),
            next_op: 0,
            started: Vec::new(),
        };
        for i in 0..config.bots {
            let name = format!("{}-{i}", BOT_NAMES[usize::from(i) % BOT_NAMES.len()]);
            let id = town.spawn(EntityKind::Bot, name, &mut rng).id;
            town.bots.push(Bot { id, path: Vec::new(), quiet_until: 0 });
            if i < config.agents {
                town.minds.push(Mind::new(id, usize::from(i)));
            }
        }
        town
    }

    /// The town of world `world_id`: its agents' memories are stored under that id.
    pub fn in_world(mut self, world_id: &str) -> Self {
        self.world_id = world_id.into();
        self
    }

    /// How many memories each agent has stored (started storing), by bot; for tests.
    pub fn remembered(&self) -> Vec<(EntityId, u64)> {
        self.minds.iter().map(|m| (m.bot, m.remembered)).collect()
    }

    fn mind(&mut self, bot: EntityId) -> Option<&mut Mind> {
        self.minds.iter_mut().find(|m| m.bot == bot)
    }

    /// Has agent `bot` think: starts `request` for `purpose` if the agent is free.
    fn think(&mut self, bot: EntityId, request: impl FnOnce(&mut Mind) -> gaia_ops::Request, purpose: Purpose) -> bool {
        let id = self.next_op + 1;
        let Some(mind) = self.minds.iter_mut().find(|m| m.bot == bot).filter(|m| m.is_free()) else { return false };
        let request = request(mind);
        let op = mind.think(id, request, purpose);
        self.next_op = id;
        self.started.push(op);
        true
    }

    /// The transcript with speakers named.
    fn named(&self, transcript: &[(EntityId, String)]) -> Vec<(String, String)> {
        transcript.iter().map(|(id, text)| (self.name(*id).to_string(), text.clone())).collect()
    }

    /// The next line of conversation `i`: an agent's is thought of (the conversation waits
    /// for it), a scripted bot's said at once.
    fn next_line(&mut self, i: usize, delta: &mut Vec<Change>) {
        let c = &self.conversations[i];
        let (speaker, listener) = if c.lines_said.is_multiple_of(2) { (c.a, c.b) } else { (c.b, c.a) };
        let (me, other) = (self.name(speaker).to_string(), self.name(listener).to_string());
        let transcript = self.named(&c.transcript);
        if self.think(speaker, |m| m.line(&me, &other, listener, &transcript), Purpose::Line { with: listener }) {
            self.conversations[i].waiting = true;
        } else if self.mind(speaker).is_none() {
            let text = LINES[usize::from(self.conversations[i].lines_said) % LINES.len()].replace("{}", &other);
            self.say_line(i, speaker, text, delta);
        }
        // An agent busy with something else says its line at a later turn.
    }

    fn say_line(&mut self, i: usize, speaker: EntityId, text: String, delta: &mut Vec<Change>) {
        let c = &mut self.conversations[i];
        c.transcript.push((speaker, text.clone()));
        c.lines_said += 1;
        c.waiting = false;
        delta.push(Change::Said { id: speaker, text });
    }

    /// An agent's thought came back (or failed): what it does with it.
    fn conclude(&mut self, bot: EntityId, purpose: Purpose, outcome: Outcome, delta: &mut Vec<Change>) {
        let answer = match &outcome {
            Ok(Response::Chat { content }) => agent::one_line(content, MAX_SAY),
            _ => None,
        };
        match purpose {
            Purpose::Line { with } => {
                let pair = |c: &Conversation| (c.a, c.b) == (bot, with) || (c.a, c.b) == (with, bot);
                let Some(i) = self.conversations.iter().position(pair) else { return };
                let scripted = LINES[usize::from(self.conversations[i].lines_said) % LINES.len()];
                let text = answer.unwrap_or_else(|| scripted.replace("{}", self.name(with)));
                self.say_line(i, bot, text, delta);
            }
            Purpose::Reply { .. } => {
                if let Some(text) = answer {
                    delta.push(Change::Said { id: bot, text });
                }
            }
            Purpose::Summary { importance, .. } => {
                if let Some(text) = answer {
                    self.think(bot, |_| agent::embed(&text), Purpose::Embed { text: text.clone(), importance });
                }
            }
            Purpose::Embed { text, importance } => {
                if let Ok(Response::Embedding { vector }) = outcome {
                    let world = self.world_id.clone();
                    self.think(bot, |m| m.remember(&world, text, importance, vector), Purpose::Store);
                }
            }
            // Stored, or lost (the lane counts failures): nothing more to do either way.
            Purpose::Store => {}
            Purpose::Wonder { about } => {
                if let Ok(Response::Embedding { vector }) = outcome {
                    let world = self.world_id.clone();
                    self.think(bot, |m| m.recall(&world, vector), Purpose::Recall { about });
                }
            }
            Purpose::Recall { about } => {
                if let (Ok(Response::Memories { memories }), Some(mind)) = (outcome, self.mind(bot)) {
                    let memories = memories.into_iter().map(|m| m.text).collect();
                    mind.recalled = Some(Recollection { about, memories });
                }
            }
        }
    }

    /// A conversation between `a` and `b` starts: each agent in it that has remembered
    /// anything first recalls what it remembers nearest to the other (its lines wait).
    fn reminisce(&mut self, a: EntityId, b: EntityId) {
        for (me, other) in [(a, b), (b, a)] {
            let Some(mind) = self.mind(me) else { continue };
            mind.recalled = None;
            if mind.remembered == 0 {
                continue;
            }
            let name = self.name(other).to_string();
            self.think(me, |_| Mind::wonder(&name), Purpose::Wonder { about: other });
        }
    }

    /// After a conversation, each agent in it forgets what it recalled for it and thinks
    /// of a summary to remember.
    fn summarize(&mut self, c: &Conversation) {
        let transcript = self.named(&c.transcript);
        let importance = agent::importance(&transcript);
        for (me, other) in [(c.a, c.b), (c.b, c.a)] {
            if let Some(mind) = self.mind(me) {
                mind.recalled = None;
            }
            let (my_name, other_name) = (self.name(me).to_string(), self.name(other).to_string());
            let summary = |m: &mut Mind| m.summary(&my_name, &other_name, other, &transcript);
            self.think(me, summary, Purpose::Summary { with: other, importance });
        }
    }

    /// A player said `text`: the free agent it names answers, wherever it is, or else
    /// the nearest free agent within two cells.
    fn hear(&mut self, player: EntityId, text: &str) {
        let Some((x, y)) = self.position(player) else { return };
        let lower = text.to_lowercase();
        let near = self
            .minds
            .iter()
            .filter(|m| m.is_free() && !self.talking(m.bot))
            .filter_map(|m| {
                let named = lower.contains(&self.name(m.bot).to_lowercase());
                let (bx, by) = self.position(m.bot)?;
                let distance = if named { 0 } else { bx.abs_diff(x).max(by.abs_diff(y)) };
                Some((distance, m.bot))
            })
            .filter(|(distance, _)| *distance <= 2)
            .min();
        if let Some((_, bot)) = near {
            let (me, them) = (self.name(bot).to_string(), self.name(player).to_string());
            self.think(bot, |m| m.reply(&me, &them, player, text), Purpose::Reply { to: player });
        }
    }

    pub fn players(&self) -> usize {
        self.players.len()
    }

    /// Walls the cell at (x, y); for tests that need a map of a given shape.
    pub fn set_wall(&mut self, x: u16, y: u16) {
        if x < self.config.width && y < self.config.height {
            let bit = usize::from(y) * usize::from(self.config.width) + usize::from(x);
            self.walls[bit / 8] |= 1 << (bit % 8);
        }
    }

    fn is_wall(&self, x: i32, y: i32) -> bool {
        if x < 0 || y < 0 || x >= i32::from(self.config.width) || y >= i32::from(self.config.height) {
            return true;
        }
        let bit = y as usize * usize::from(self.config.width) + x as usize;
        self.walls[bit / 8] & (1 << (bit % 8)) != 0
    }

    fn position(&self, id: EntityId) -> Option<(u16, u16)> {
        self.entities.iter().find(|e| e.id == id).map(|e| (e.x, e.y))
    }

    fn name(&self, id: EntityId) -> &str {
        self.entities.iter().find(|e| e.id == id).map_or("", |e| e.name.as_str())
    }

    /// A random cell that is not a wall. Falls back to scanning so a map of walls still
    /// yields a cell deterministically.
    fn free_cell(&self, rng: &mut SmallRng) -> (u16, u16) {
        for _ in 0..64 {
            let x = rng.random_range(0..self.config.width);
            let y = rng.random_range(0..self.config.height);
            if !self.is_wall(x.into(), y.into()) {
                return (x, y);
            }
        }
        (0..self.config.height)
            .flat_map(|y| (0..self.config.width).map(move |x| (x, y)))
            .find(|&(x, y)| !self.is_wall(x.into(), y.into()))
            .unwrap_or((0, 0))
    }

    fn spawn(&mut self, kind: EntityKind, name: String, rng: &mut SmallRng) -> Entity {
        let (x, y) = self.free_cell(rng);
        let entity = Entity { id: self.next_id, kind, name, x, y };
        self.next_id += 1;
        self.entities.push(entity.clone());
        entity
    }

    /// The shortest walk from `from` to `to` (8-way, around walls), without `from`.
    fn path(&self, from: (u16, u16), to: (u16, u16)) -> Vec<(u16, u16)> {
        let neighbours = |&(x, y): &(u16, u16)| {
            gaia_api::town::STEPS
                .into_iter()
                .map(move |(dx, dy)| (i32::from(x) + i32::from(dx), i32::from(y) + i32::from(dy)))
                .filter(|&(x, y)| !self.is_wall(x, y))
                .map(|(x, y)| ((x as u16, y as u16), 1u32))
                .collect::<Vec<_>>()
        };
        let distance = |&(x, y): &(u16, u16)| u32::from(x.abs_diff(to.0).max(y.abs_diff(to.1)));
        pathfinding::directed::astar::astar(&from, neighbours, distance, |&cell| cell == to)
            .map(|(mut cells, _)| {
                cells.remove(0);
                cells
            })
            .unwrap_or_default()
    }

    /// Moves `id` one step by (dx, dy) if the target is free; the change it makes.
    fn step(&mut self, id: EntityId, dx: i8, dy: i8) -> Result<Change, String> {
        if !(-1..=1).contains(&dx) || !(-1..=1).contains(&dy) || (dx, dy) == (0, 0) {
            return Err(format!("invalid step ({dx}, {dy}): each must be -1, 0 or 1, not both 0"));
        }
        let entity = self.entities.iter().position(|e| e.id == id).ok_or("no such entity")?;
        let (x, y) = (self.entities[entity].x, self.entities[entity].y);
        let (tx, ty) = (i32::from(x) + i32::from(dx), i32::from(y) + i32::from(dy));
        if tx < 0 || ty < 0 || tx >= i32::from(self.config.width) || ty >= i32::from(self.config.height) {
            return Err("off the map".into());
        }
        if self.is_wall(tx, ty) {
            return Err("blocked by a wall".into());
        }
        let (tx, ty) = (tx as u16, ty as u16);
        (self.entities[entity].x, self.entities[entity].y) = (tx, ty);
        Ok(Change::Moved { id, x: tx, y: ty })
    }

    fn talking(&self, id: EntityId) -> bool {
        self.conversations.iter().any(|c| c.a == id || c.b == id)
    }

    /// Bots not in a conversation walk their path, picking a new destination when they
    /// arrive.
    fn walk(&mut self, rng: &mut SmallRng, delta: &mut Vec<Change>) {
        for i in 0..self.bots.len() {
            let id = self.bots[i].id;
            if self.talking(id) || rng.random_range(0..BOT_PACE) != 0 {
                continue;
            }
            let Some(here) = self.position(id) else { continue };
            if self.bots[i].path.is_empty() {
                let goal = self.free_cell(rng);
                self.bots[i].path = self.path(here, goal);
                continue;
            }
            let next = self.bots[i].path.remove(0);
            let (dx, dy) = (next.0 as i32 - here.0 as i32, next.1 as i32 - here.1 as i32);
            match self.step(id, dx as i8, dy as i8) {
                Ok(change) => delta.push(change),
                Err(_) => self.bots[i].path.clear(),
            }
        }
    }

    /// Free bots next to each other start a conversation; running ones go on a line at a
    /// time and end when the lines run out.
    fn converse(&mut self, tick: u64, delta: &mut Vec<Change>) {
        let mut i = 0;
        while i < self.conversations.len() {
            let c = &self.conversations[i];
            if (tick - c.started).is_multiple_of(LINE_TICKS) && !c.waiting {
                if usize::from(c.lines_said) >= LINES.len() {
                    let (a, b) = (c.a, c.b);
                    delta.push(Change::Parted { id: a, other: b });
                    for bot in self.bots.iter_mut().filter(|bot| bot.id == a || bot.id == b) {
                        bot.quiet_until = tick + COOLDOWN_TICKS;
                    }
                    let ended = self.conversations.remove(i);
                    self.summarize(&ended);
                    continue;
                }
                self.next_line(i, delta);
            }
            i += 1;
        }
        for i in 0..self.bots.len() {
            let me = &self.bots[i];
            if me.quiet_until > tick || self.talking(me.id) {
                continue;
            }
            let Some((x, y)) = self.position(me.id) else { continue };
            let partner = self.bots.iter().find(|other| {
                other.id != me.id
                    && other.quiet_until <= tick
                    && !self.talking(other.id)
                    && self.position(other.id).is_some_and(|(ox, oy)| ox.abs_diff(x) <= 1 && oy.abs_diff(y) <= 1)
            });
            if let Some(other) = partner {
                let (a, b) = (me.id, other.id);
                delta.push(Change::Greeted { id: a, other: b });
                // The first line now, the rest every LINE_TICKS.
                let transcript = Vec::new();
                self.conversations.push(Conversation {
                    a,
                    b,
                    started: tick,
                    lines_said: 0,
                    transcript,
                    waiting: false,
                });
                self.reminisce(a, b);
                self.next_line(self.conversations.len() - 1, delta);
            }
        }
    }
}

impl World for Town {
    type Action = Action;
    type Change = Change;
    type View = Snapshot;

    fn join(&mut self, member: MemberId, name: &str, delta: &mut Vec<Change>) -> u32 {
        // Where a player appears is part of the world's randomness: seed it from the
        // member count and next id so replays agree.
        let mut rng = SmallRng::seed_from_u64(self.seed ^ u64::from(self.next_id).rotate_left(32));
        let entity = self.spawn(EntityKind::Player, name.to_string(), &mut rng);
        self.players.insert(member, entity.id);
        let id = entity.id;
        delta.push(Change::Joined(entity));
        id
    }

    fn leave(&mut self, member: MemberId, delta: &mut Vec<Change>) {
        if let Some(id) = self.players.remove(&member) {
            self.entities.retain(|e| e.id != id);
            delta.push(Change::Left { id });
        }
    }

    fn apply(&mut self, member: MemberId, action: Action, delta: &mut Vec<Change>) -> Result<(), String> {
        let id = *self.players.get(&member).ok_or("not in this world")?;
        let change = match action {
            Action::Move { dx, dy } => self.step(id, dx, dy)?,
            Action::Say { text } if text.trim().is_empty() => return Err("nothing to say".into()),
            Action::Say { text } if text.len() > MAX_SAY => return Err(format!("text longer than {MAX_SAY} bytes")),
            Action::Say { text } => {
                self.hear(id, &text);
                Change::Said { id, text }
            }
        };
        delta.push(change);
        Ok(())
    }

    fn tick(&mut self, tick: u64, delta: &mut Vec<Change>) {
        let mut rng = SmallRng::seed_from_u64(self.seed ^ tick.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        self.walk(&mut rng, delta);
        self.converse(tick, delta);
    }

    fn view(&self) -> Snapshot {
        Snapshot {
            width: self.config.width,
            height: self.config.height,
            walls: self.walls.clone(),
            entities: self.entities.clone(),
        }
    }

    /// 2: agents (their minds, the operation counter, conversation transcripts).
    /// 3: the world id; memories moved from the minds to the memory store.
    const SCHEMA_VERSION: u32 = 3;

    fn save(&self) -> Vec<u8> {
        // Encoding into a Vec cannot fail for these types.
        bincode::encode_to_vec(self, bincode::config::standard()).unwrap_or_default()
    }

    fn restore(bytes: &[u8]) -> Result<Self, RestoreError> {
        let (mut town, read): (Town, usize) =
            bincode::decode_from_slice(bytes, bincode::config::standard()).map_err(|e| RestoreError(e.to_string()))?;
        if read != bytes.len() {
            return Err(RestoreError(format!("{} trailing bytes", bytes.len() - read)));
        }
        let cells = usize::from(town.config.width) * usize::from(town.config.height);
        if town.walls.len() != cells.div_ceil(8) {
            return Err(RestoreError(format!("wall map of {} bytes for {cells} cells", town.walls.len())));
        }
        // Players come back by joining again.
        let players: Vec<EntityId> = town.players.drain().map(|(_, id)| id).collect();
        town.entities.retain(|e| !players.contains(&e.id));
        Ok(town)
    }

    fn take_operations(&mut self) -> Vec<Operation> {
        std::mem::take(&mut self.started)
    }

    fn complete(&mut self, id: OpId, outcome: Outcome, delta: &mut Vec<Change>) {
        let Some(mind) = self.minds.iter_mut().find(|m| m.thinking.as_ref().is_some_and(|t| t.op.id == id)) else {
            return;
        };
        let (bot, thought) = (mind.bot, mind.thinking.take());
        if let Some(thought) = thought {
            self.conclude(bot, thought.purpose, outcome, delta);
        }
    }

    fn in_flight(&self) -> Vec<Operation> {
        self.minds.iter().filter_map(|m| m.thinking.as_ref().map(|t| t.op.clone())).collect()
    }

    fn messages(&self, changes: &[Change]) -> Vec<Line> {
        let said = changes.iter().filter_map(|c| match c {
            Change::Said { id, text } => {
                Some(Line { author_id: *id, author: self.name(*id).to_string(), text: text.clone() })
            }
            _ => None,
        });
        said.collect()
    }
}

#[cfg(test)]
mod tests {
    use gaia_api::protocol::InputOutcome;

    use super::*;
    use crate::engine::{Engine, Event, TickOutput};

    fn open_town() -> Engine<Town> {
        Engine::new(Town::new(TownConfig { width: 8, height: 6, bots: 0, wall_percent: 0, agents: 0 }, 1), 0)
    }

    fn join(engine: &mut Engine<Town>, member: MemberId) -> EntityId {
        let out = engine.step(vec![Event::Join { member, name: format!("p{member}") }]);
        out.joined[0].1
    }

    fn position(engine: &Engine<Town>, id: EntityId) -> (u16, u16) {
        engine.world().position(id).unwrap()
    }

    fn input(member: MemberId, seq: u32, action: Action) -> Event<Action> {
        Event::Input { member, seq, action }
    }

    #[test]
    fn inputs_apply_in_order_and_each_gets_a_result() {
        let mut engine = open_town();
        let id = join(&mut engine, 7);
        let (x, y) = position(&engine, id);
        let dx = if x + 1 < 8 { 1 } else { -1 };
        let events = vec![
            input(7, 1, Action::Move { dx, dy: 0 }),
            input(7, 2, Action::Say { text: "hi".into() }),
            input(7, 3, Action::Move { dx: 2, dy: 0 }),
            input(7, 4, Action::Move { dx: -dx, dy: 0 }),
        ];
        let out = engine.step(events);
        let seqs: Vec<u32> = out.results.iter().map(|r| r.1).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4]);
        assert_eq!(out.results[0].2, InputOutcome::Ok);
        assert!(matches!(&out.results[2].2, InputOutcome::Rejected { reason } if reason.contains("invalid step")));
        let x1 = (i32::from(x) + i32::from(dx)) as u16;
        assert_eq!(
            out.changes,
            vec![Change::Moved { id, x: x1, y }, Change::Said { id, text: "hi".into() }, Change::Moved { id, x, y }]
        );
    }

    #[test]
    fn walls_edges_and_bad_text_refuse_inputs() {
        let mut town = Town::new(TownConfig { width: 2, height: 1, bots: 0, wall_percent: 0, agents: 0 }, 3);
        town.set_wall(1, 0);
        let mut engine = Engine::new(town, 0);
        let id = join(&mut engine, 1);
        assert_eq!(position(&engine, id), (0, 0));
        let reason = |out: TickOutput<Change>| match &out.results[0].2 {
            InputOutcome::Rejected { reason } => reason.clone(),
            InputOutcome::Ok => panic!("accepted"),
        };
        assert_eq!(reason(engine.step(vec![input(1, 1, Action::Move { dx: 1, dy: 0 })])), "blocked by a wall");
        assert_eq!(reason(engine.step(vec![input(1, 2, Action::Move { dx: -1, dy: 0 })])), "off the map");
        let long = "x".repeat(MAX_SAY + 1);
        assert!(reason(engine.step(vec![input(1, 3, Action::Say { text: long })])).contains("longer than"));
        assert_eq!(reason(engine.step(vec![input(1, 4, Action::Say { text: "  ".into() })])), "nothing to say");
        assert_eq!(reason(engine.step(vec![input(9, 1, Action::Say { text: "x".into() })])), "not in this world");
        // Refused inputs changed nothing.
        assert_eq!(position(&engine, id), (0, 0));
    }

    #[test]
    fn join_and_leave_show_in_changes_and_view() {
        let mut engine = open_town();
        let id = join(&mut engine, 1);
        assert_eq!(engine.world().players(), 1);
        assert!(engine.world().view().entities.iter().any(|e| e.id == id && e.kind == EntityKind::Player));
        let out = engine.step(vec![Event::Leave { member: 1 }, Event::Leave { member: 1 }]);
        assert_eq!(out.changes, vec![Change::Left { id }]);
        assert_eq!(engine.world().players(), 0);
        assert!(engine.world().view().entities.is_empty());
    }

    /// A scripted session: two players join, move, talk and one leaves.
    fn replay(seed: u64) -> Vec<TickOutput<Change>> {
        let mut engine = Engine::new(Town::new(TownConfig::default(), seed), 0);
        (0..400u32)
            .map(|t| {
                let events = match t {
                    5 => vec![Event::Join { member: 1, name: "p".into() }, Event::Join { member: 2, name: "q".into() }],
                    300 => vec![Event::Leave { member: 2 }],
                    t if t % 3 == 0 => vec![input(1, t, Action::Move { dx: 1, dy: 1 })],
                    t => vec![input(2, t, Action::Say { text: format!("line {t}") })],
                };
                engine.step(events)
            })
            .collect()
    }

    #[test]
    fn same_seed_same_deltas() {
        assert_eq!(replay(42), replay(42));
        assert_ne!(replay(42), replay(43));
    }

    #[test]
    fn a_restored_world_goes_on_as_the_original() {
        let mut original = Engine::new(Town::new(TownConfig::default(), 7), 0);
        for _ in 0..150 {
            original.step(Vec::new());
        }
        let bytes = original.world().save();
        let mut restored = Engine::new(Town::restore(&bytes).unwrap(), original.tick());
        for _ in 0..150 {
            assert_eq!(original.step(Vec::new()), restored.step(Vec::new()));
        }
        assert!(Town::restore(&bytes[..bytes.len() / 2]).is_err());
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(Town::restore(&trailing).is_err());
    }

    #[test]
    fn restore_drops_players() {
        let mut engine = open_town();
        let id = join(&mut engine, 1);
        let town = Town::restore(&engine.world().save()).unwrap();
        assert_eq!(town.players(), 0);
        assert!(town.position(id).is_none());
    }

    #[test]
    fn paths_go_around_walls() {
        // A wall across the middle column with one gap at the bottom.
        let mut town = Town::new(TownConfig { width: 5, height: 4, bots: 0, wall_percent: 0, agents: 0 }, 1);
        for y in 0..3 {
            town.set_wall(2, y);
        }
        let path = town.path((0, 0), (4, 0));
        assert_eq!(path.last(), Some(&(4, 0)));
        assert!(path.contains(&(2, 3)), "path {path:?} does not use the gap");
        let mut at = (0u16, 0u16);
        for &cell in &path {
            assert!(at.0.abs_diff(cell.0) <= 1 && at.1.abs_diff(cell.1) <= 1, "jump from {at:?} to {cell:?}");
            assert!(!town.is_wall(cell.0.into(), cell.1.into()));
            at = cell;
        }
        town.set_wall(2, 3);
        assert!(town.path((0, 0), (4, 0)).is_empty(), "no way through a closed wall");
    }

    #[test]
    fn bots_walk_meet_and_hold_conversations() {
        let mut engine =
            Engine::new(Town::new(TownConfig { width: 6, height: 6, bots: 6, wall_percent: 0, agents: 0 }, 9), 0);
        let (mut moved, mut greeted, mut said, mut parted) = (0, 0, 0, 0);
        for _ in 0..600 {
            for change in engine.step(Vec::new()).changes {
                match change {
                    Change::Moved { .. } => moved += 1,
                    Change::Greeted { .. } => greeted += 1,
                    Change::Said { .. } => said += 1,
                    Change::Parted { .. } => parted += 1,
                    _ => {}
                }
            }
        }
        assert!(moved > 50, "bots barely moved: {moved}");
        assert!(greeted > 0 && parted > 0, "no whole conversation: {greeted} greeted, {parted} parted");
        // Every finished conversation said all its lines.
        assert!(said >= parted * LINES.len(), "{said} lines for {parted} conversations");
    }

    /// The outside world of the agents tests, answering every operation at the next
    /// tick: a model (chats with a numbered line, embeddings with one vector) and a
    /// memory store (recalls ranked as the real stores rank). `fails` picks the
    /// operations that time out instead.
    struct Outside {
        fails: fn(&gaia_ops::Request) -> bool,
        stored: Vec<gaia_checkpoint::MemoryRecord>,
        recalls: usize,
        prompts: Vec<String>,
    }

    impl Outside {
        fn new(fails: fn(&gaia_ops::Request) -> bool) -> Self {
            Self { fails, stored: Vec::new(), recalls: 0, prompts: Vec::new() }
        }

        fn answer(&mut self, started: &[Operation]) -> Vec<Event<Action>> {
            started.iter().map(|op| Event::Done(gaia_ops::Completed { id: op.id, outcome: self.run(op) })).collect()
        }

        fn run(&mut self, op: &Operation) -> Outcome {
            use gaia_ops::Request;
            if (self.fails)(&op.request) {
                return Err(gaia_ops::OpError::TimedOut { after_ms: op.timeout_ms });
            }
            match &op.request {
                Request::Chat(chat) => {
                    self.prompts.push(chat.messages[0].content.clone());
                    Ok(Response::Chat { content: format!("model line {}", op.id) })
                }
                Request::Remember(r) => {
                    assert_eq!(r.world_id, "w-town");
                    let known = self.stored.iter().any(|m| (m.agent, m.id) == (r.agent, r.id));
                    assert!(!known, "memory id {} of agent {} used twice", r.id, r.agent);
                    self.stored.push(gaia_checkpoint::MemoryRecord {
                        world_id: r.world_id.clone(),
                        agent: r.agent,
                        id: r.id,
                        at_ms: 0,
                        text: r.text.clone(),
                        importance: r.importance,
                        embedding: r.embedding.clone(),
                    });
                    Ok(Response::Remembered)
                }
                Request::Recall(r) => {
                    assert_eq!(r.world_id, "w-town");
                    self.recalls += 1;
                    let mine = self.stored.iter().filter(|m| m.agent == r.agent).cloned();
                    let found = gaia_checkpoint::rank(mine, &r.query, r.k as usize);
                    let memories = found
                        .into_iter()
                        .map(|f| gaia_ops::RecalledMemory {
                            id: f.record.id,
                            at_ms: 0,
                            text: f.record.text,
                            importance: f.record.importance,
                            score: f.score,
                        })
                        .collect();
                    Ok(Response::Memories { memories })
                }
                _ => Ok(Response::Embedding { vector: vec![1.0, 0.0] }),
            }
        }
    }

    fn agents_town() -> Engine<Town> {
        let config = TownConfig { width: 6, height: 6, bots: 6, wall_percent: 0, agents: 6 };
        Engine::new(Town::new(config, 9).in_world("w-town"), 0)
    }

    /// Runs the agents' town for `ticks` against `outside`: (model lines, scripted lines,
    /// conversations ended).
    fn live(engine: &mut Engine<Town>, outside: &mut Outside, ticks: usize) -> (usize, usize, usize) {
        let (mut model_lines, mut scripted, mut parted) = (0, 0, 0);
        let mut events = Vec::new();
        for _ in 0..ticks {
            let out = engine.step(std::mem::take(&mut events));
            assert!(engine.operations() <= 6, "one operation per agent at most");
            events = outside.answer(&out.started);
            for change in out.changes {
                match change {
                    Change::Said { text, .. } if text.starts_with("model line") => model_lines += 1,
                    Change::Said { .. } => scripted += 1,
                    Change::Parted { .. } => parted += 1,
                    _ => {}
                }
            }
        }
        (model_lines, scripted, parted)
    }

    #[test]
    fn agents_talk_through_the_model_remember_their_conversations_and_recall_them() {
        let mut engine = agents_town();
        let mut outside = Outside::new(|_| false);
        let (model_lines, scripted, parted) = live(&mut engine, &mut outside, 1500);
        assert!(parted > 0 && model_lines >= parted * LINES.len(), "{model_lines} model lines, {parted} conversations");
        assert_eq!(scripted, 0);
        // Each agent of each conversation stores its summary (unless busy then).
        assert!(outside.stored.len() >= parted, "{} memories after {parted} conversations", outside.stored.len());
        assert!(outside.stored.iter().all(|m| m.text.starts_with("model line") && m.importance >= 0.0));
        let counted: u64 = engine.world().remembered().iter().map(|(_, n)| n).sum();
        assert_eq!(counted as usize, outside.stored.len());
        // Later conversations start with a recall, and their prompts carry what it found.
        assert!(outside.recalls > 0, "no recall");
        let carried = outside.prompts.iter().filter(|p| p.contains("What you remember:\n- model line")).count();
        assert!(carried > 0, "no prompt carried a memory");
    }

    #[test]
    fn failed_recalls_and_a_failed_model_never_stall_the_town() {
        // Recalls fail: agents still talk through the model, without memories.
        let mut engine = agents_town();
        let mut outside = Outside::new(|r| matches!(r, gaia_ops::Request::Recall(_)));
        let (model_lines, scripted, parted) = live(&mut engine, &mut outside, 1500);
        assert!(parted > 0 && model_lines >= parted * LINES.len(), "{model_lines} model lines, {parted} conversations");
        assert_eq!(scripted, 0);
        assert!(!outside.stored.is_empty());
        assert!(!outside.prompts.iter().any(|p| p.contains("What you remember")));

        // Everything fails: the conversations go on, with the scripted lines.
        let mut engine = agents_town();
        let mut outside = Outside::new(|_| true);
        let (_, said, parted) = live(&mut engine, &mut outside, 1500);
        assert!(parted > 0 && said >= parted * LINES.len(), "{said} lines, {parted} conversations");
        assert!(engine.world().remembered().iter().all(|(_, n)| *n == 0));
    }

    #[test]
    fn an_agents_memories_and_recollections_go_through_a_checkpoint() {
        let mut engine = agents_town();
        let mut outside = Outside::new(|_| false);
        live(&mut engine, &mut outside, 600);
        let restored = Town::restore(&engine.world().save()).unwrap();
        assert_eq!(restored.world_id, "w-town");
        assert_eq!(restored.minds, engine.world().minds);
    }

    #[test]
    fn an_agent_answers_a_player_next_to_it() {
        let mut town = Town::new(TownConfig { width: 3, height: 1, bots: 1, wall_percent: 0, agents: 1 }, 1);
        town.set_wall(2, 0);
        let mut engine = Engine::new(town, 0);
        let player = join(&mut engine, 1);
        let bot = engine.world().bots[0].id;
        let out = engine.step(vec![input(1, 1, Action::Say { text: "hello baker".into() })]);
        assert_eq!(out.started.len(), 1, "the agent thinks of an answer");
        let gaia_ops::Request::Chat(chat) = &out.started[0].request else { panic!() };
        assert!(chat.messages.last().unwrap().content.contains("hello baker"));
        let out = engine.step(Outside::new(|_| false).answer(&out.started));
        assert!(
            out.changes.contains(&Change::Said { id: bot, text: format!("model line {}", 1) }),
            "{:?}",
            out.changes
        );
        assert_ne!(player, bot);
    }
}
