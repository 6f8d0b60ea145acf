//! A shared tally, the smallest complete world: members add to one number, and every
//! 100 ticks the room itself nudges it by -1, 0 or +1.
//!
//! Run it with `cargo run -p gaia-gameserver --example counter`. It serves standalone (no
//! control plane) and prints its address and a join token for world `demo`.
//! docs/worlds.md walks through this file.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use bincode::{Decode, Encode};
use gaia_api::token::{JoinClaims, TokenKey, unix_ms};
use gaia_gameserver::Config;
use gaia_gameserver::world::{MemberId, NewWorld, RestoreError, World, seed_of};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Largest amount one input may add or take away.
const MAX_ADD: i64 = 10;
/// Ticks between the room's own nudges (5 s at the default 20 Hz).
const NUDGE_EVERY: u64 = 100;

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Action {
    Add { by: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Change {
    Joined { seat: u32, name: String },
    Left { seat: u32 },
    Added { seat: u32, by: i64, total: i64 },
    Nudged { by: i64, total: i64 },
}

/// What a client draws: the total and who is in the room.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct Tally {
    pub total: i64,
    pub seats: Vec<(u32, String)>,
}

pub struct Counter {
    seed: u64,
    total: i64,
    next_seat: u32,
    /// Who is here now, by member. Not saved: players join again after a restore.
    /// A BTreeMap, so the view lists seats in the same order on every run.
    seats: BTreeMap<MemberId, (u32, String)>,
}

impl Counter {
    pub fn new(seed: u64) -> Self {
        Self { seed, total: 0, next_seat: 1, seats: BTreeMap::new() }
    }
}

impl World for Counter {
    type Action = Action;
    type Change = Change;
    type View = Tally;

    fn join(&mut self, member: MemberId, name: &str, delta: &mut Vec<Change>) -> u32 {
        let seat = self.next_seat;
        self.next_seat += 1;
        self.seats.insert(member, (seat, name.to_string()));
        delta.push(Change::Joined { seat, name: name.to_string() });
        seat
    }

    fn leave(&mut self, member: MemberId, delta: &mut Vec<Change>) {
        if let Some((seat, _)) = self.seats.remove(&member) {
            delta.push(Change::Left { seat });
        }
    }

    fn apply(&mut self, member: MemberId, action: Action, delta: &mut Vec<Change>) -> Result<(), String> {
        let Action::Add { by } = action;
        if by == 0 || !(-MAX_ADD..=MAX_ADD).contains(&by) {
            return Err(format!("add 1 to {MAX_ADD}, or take away 1 to {MAX_ADD}"));
        }
        let seat = self.seats.get(&member).map_or(0, |(seat, _)| *seat);
        // Checked before anything changes: a refused input leaves the world as it was.
        self.total = self.total.checked_add(by).ok_or("the total would overflow")?;
        delta.push(Change::Added { seat, by, total: self.total });
        Ok(())
    }

    fn tick(&mut self, tick: u64, delta: &mut Vec<Change>) {
        if !tick.is_multiple_of(NUDGE_EVERY) {
            return;
        }
        // Randomness from (seed, tick) only, so a restored world draws what the original would have.
        let mut rng = SmallRng::seed_from_u64(self.seed ^ tick.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let by = rng.random_range(-1..=1);
        if by != 0 {
            self.total = self.total.saturating_add(by);
            delta.push(Change::Nudged { by, total: self.total });
        }
    }

    fn view(&self) -> Tally {
        Tally { total: self.total, seats: self.seats.values().cloned().collect() }
    }

    fn save(&self) -> Vec<u8> {
        // Encoding integers into a Vec cannot fail.
        bincode::encode_to_vec((self.seed, self.total, self.next_seat), bincode::config::standard()).unwrap_or_default()
    }

    fn restore(bytes: &[u8]) -> Result<Self, RestoreError> {
        let ((seed, total, next_seat), read): ((u64, i64, u32), usize) =
            bincode::decode_from_slice(bytes, bincode::config::standard()).map_err(|e| RestoreError(e.to_string()))?;
        if read != bytes.len() {
            return Err(RestoreError(format!("{} trailing bytes", bytes.len() - read)));
        }
        Ok(Self { seed, total, next_seat, seats: BTreeMap::new() })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let join_secret = std::env::var("GAIA_JOIN_SECRET").unwrap_or_else(|_| "counter-example-secret".into());
    let config = Config { join_secret: join_secret.clone(), ..Default::default() };
    let listener = gaia_gameserver::bind(config.listen)?;
    println!("counter serving at {}", gaia_gameserver::address(listener.local_addr()?, None));

    // The allocator signs join tokens; standalone, we sign one ourselves.
    let claims = JoinClaims {
        world_id: "demo".into(),
        server: config.name.clone(),
        player_id: "ada".into(),
        expires_at_ms: unix_ms(SystemTime::now()) + 3_600_000,
        epoch: 1,
    };
    println!("join world `demo` as `ada` for an hour with token {}", TokenKey::new(join_secret).sign(&claims));

    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    let new_world: NewWorld<Counter> = Arc::new(|world_id: &str| Counter::new(seed_of(world_id)));
    gaia_gameserver::run_world(config, listener, new_world, shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use gaia_api::protocol::InputOutcome;
    use gaia_gameserver::engine::{Engine, Event};

    use super::*;

    fn add(member: MemberId, seq: u32, by: i64) -> Event<Action> {
        Event::Input { member, seq, action: Action::Add { by } }
    }

    #[test]
    fn inputs_apply_in_order_and_refusals_change_nothing() {
        let mut engine = Engine::new(Counter::new(seed_of("w")), 0);
        let out =
            engine.step(vec![Event::Join { member: 7, name: "ada".into() }, add(7, 1, 3), add(7, 2, 99), add(8, 1, 1)]);
        assert_eq!(out.joined, vec![(7, 1)]);
        assert_eq!(out.results[0].2, InputOutcome::Ok);
        assert!(matches!(&out.results[1].2, InputOutcome::Rejected { reason } if reason.starts_with("add 1 to 10")));
        assert_eq!(out.results[2].2, InputOutcome::Rejected { reason: "not in this world".into() });
        assert_eq!(
            out.changes,
            vec![Change::Joined { seat: 1, name: "ada".into() }, Change::Added { seat: 1, by: 3, total: 3 }]
        );
        assert_eq!(engine.world().view(), Tally { total: 3, seats: vec![(1, "ada".into())] });
    }

    #[test]
    fn a_restored_world_goes_on_as_the_original() {
        let mut original = Engine::new(Counter::new(seed_of("w")), 0);
        for _ in 0..250 {
            original.step(Vec::new());
        }
        let bytes = original.world().save();
        let mut restored = Engine::new(Counter::restore(&bytes).unwrap(), original.tick());
        for _ in 0..1000 {
            assert_eq!(original.step(Vec::new()), restored.step(Vec::new()));
        }
        assert!(Counter::restore(&bytes[..1]).is_err());
    }
}
