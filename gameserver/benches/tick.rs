//! What one tick of the reference world costs, and what sending its delta costs.
//!
//! - `tick/step`: one `Engine<Town>` step of a 48×32 town with 30 bots and 30 joined
//!   players, each player sending one `Move` per step. Every move is legal: each player
//!   steps to an open neighbouring cell and back on the next step, so all 30 inputs are
//!   accepted on every step (checked before measuring). The 30 input events are built
//!   outside the measurement (`iter_batched`); the world goes on from step to step, so
//!   bots keep walking, finding paths and talking as in a running world.
//! - `delta/encode`: encoding one step's changes as the `ServerMsg::Delta` frame.
//! - `fanout_30/*`: the frames for 30 members: encoding the delta 30 times (one per
//!   member) against encoding it once and cloning the `Bytes` 30 times, as `room/fanout.rs` does.
//! - `checkpoint/save_and_frame`: what a checkpoint adds to a world's turn (once a
//!   second): `World::save` of that town and its framing as a `Checkpoint` (header,
//!   CRC-32). Handing it to the writer is a map insert; the store I/O runs elsewhere.
//!
//! Run: `cargo bench -p gaia-gameserver --bench tick -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use gaia_api::protocol::{InputOutcome, ServerMsg, encode_server};
use gaia_api::town::{Action, Change, EntityKind};
use gaia_gameserver::engine::{Engine, Event};
use gaia_gameserver::town::{Town, TownConfig};
use gaia_gameserver::world::{MemberId, World, seed_of};

const PLAYERS: MemberId = 30;
const MEMBERS: usize = 30;

/// A town of 30 bots with 30 players joined, and each player's step to an open cell.
fn town() -> (Engine<Town>, Vec<(MemberId, i8, i8)>) {
    let mut engine = Engine::new(Town::new(TownConfig { bots: 30, ..TownConfig::default() }, seed_of("bench")), 0);
    let joins = (1..=PLAYERS).map(|member| Event::Join { member, name: format!("p{member}") }).collect();
    let joined = engine.step(joins).joined;
    let view = engine.world().view();
    let steps = joined
        .into_iter()
        .map(|(member, you)| {
            let me = view.entities.iter().find(|e| e.id == you && e.kind == EntityKind::Player).expect("joined player");
            let (dx, dy) = *view.open_steps(me.x.into(), me.y.into()).first().expect("a player with an open step");
            (member, dx, dy)
        })
        .collect();
    (engine, steps)
}

/// Each player's input for step number `n`: there on even steps, back on odd ones.
fn moves(steps: &[(MemberId, i8, i8)], n: u64) -> Vec<Event<Action>> {
    let sign = if n.is_multiple_of(2) { 1 } else { -1 };
    steps
        .iter()
        .map(|&(member, dx, dy)| Event::Input {
            member,
            seq: n as u32,
            action: Action::Move { dx: sign * dx, dy: sign * dy },
        })
        .collect()
}

fn step(c: &mut Criterion) {
    let (mut engine, steps) = town();
    // Two steps (there and back) first: every input must be accepted.
    for n in 0..2 {
        let out = engine.step(moves(&steps, n));
        assert!(out.results.iter().all(|r| r.2 == InputOutcome::Ok), "a move was refused: {:?}", out.results);
    }
    // Steps 0 and 1 ran above; the measured ones go on from 2 (there, then back).
    let mut n = 1u64;
    c.bench_function("tick/step_30_bots_30_players_30_moves", |b| {
        b.iter_batched(
            || {
                n += 1;
                moves(&steps, n)
            },
            |events| engine.step(events),
            BatchSize::SmallInput,
        )
    });
    // The parity of `n` followed the steps, so the moves were still legal at the end.
    let out = engine.step(moves(&steps, n + 1));
    assert!(out.results.iter().all(|r| r.2 == InputOutcome::Ok), "a move was refused after the run");
}

/// One step's delta frame, as `room/fanout.rs` builds it.
fn delta() -> ServerMsg<(), Change> {
    let (mut engine, steps) = town();
    // Let the bots get going, then take an ordinary step.
    for n in 0..40 {
        engine.step(moves(&steps, n));
    }
    let out = engine.step(moves(&steps, 40));
    ServerMsg::Delta { tick: out.tick, server_us: 1_700_000_000_000_000, changes: out.changes }
}

fn encode(c: &mut Criterion) {
    let msg = delta();
    if let ServerMsg::Delta { changes, .. } = &msg {
        println!("delta: {} changes, {} bytes encoded", changes.len(), encode_server(&msg).len());
    }
    c.bench_function("delta/encode", |b| b.iter(|| Bytes::from(encode_server(black_box(&msg)))));
    c.bench_function("fanout_30/encode_per_member", |b| {
        b.iter(|| {
            let mut frames = Vec::with_capacity(MEMBERS);
            for _ in 0..MEMBERS {
                frames.push(Bytes::from(encode_server(black_box(&msg))));
            }
            frames
        })
    });
    c.bench_function("fanout_30/encode_once_clone", |b| {
        b.iter(|| {
            let frame = Bytes::from(encode_server(black_box(&msg)));
            let mut frames = Vec::with_capacity(MEMBERS);
            for _ in 0..MEMBERS {
                frames.push(frame.clone());
            }
            frames
        })
    });
}

fn checkpoint(c: &mut Criterion) {
    let (mut engine, steps) = town();
    for n in 0..40 {
        engine.step(moves(&steps, n));
    }
    let state = engine.world().save();
    println!("checkpoint: {} bytes of state", state.len());
    c.bench_function("checkpoint/save_and_frame", |b| {
        b.iter(|| {
            let state = black_box(engine.world()).save();
            gaia_checkpoint::Checkpoint::new("bench", 7, engine.tick(), Town::SCHEMA_VERSION, &state)
        })
    });
}

criterion_group!(benches, step, encode, checkpoint);
criterion_main!(benches);
