//! The world task: one per world. Each tick it hands the queued events to the pure
//! [`Engine::step`] and gives the output to the world's [`Fanout`]. On shutdown each
//! world runs one last tick with the inputs already queued, sends the results, and then
//! lets its members go (their connections close with `GOING_AWAY`); on a drain it moves
//! the world (see `durability.rs`).
//!
//! Operations: the operations a tick starts go to the server's [`Runner`](gaia_ops::Runner);
//! each outcome comes back on the world's own channel and is applied at the next tick,
//! among the inputs, in the order outcomes arrive. A world that starts (restored, or
//! moved here) runs again the operations its state has in flight, or completes those that
//! may not be repeated as interrupted ([`Engine::recover`]). The operations its last tick
//! starts are not run here: they are in its checkpoint, for the world's next server.

use std::sync::Arc;

use gaia_api::protocol::close;
use gaia_api::token::unix_ms;
use gaia_ops::{Completed, Operation};
use tokio::sync::mpsc;

use super::Rooms;
use super::cmd::{Cmd, JoinError, WorldEvent};
use super::fanout::Fanout;
use crate::closing::Closing;
use crate::engine::{Engine, Event};
use crate::world::World;

impl<W: World> Rooms<W> {
    pub(super) async fn run_world(
        self: Arc<Self>,
        world_id: String,
        generation: u64,
        mut rx: mpsc::Receiver<Cmd<W::Action>>,
    ) {
        // Joins wait in the queue while the world loads.
        let (mut engine, floor) = match self.load(&world_id).await {
            Ok(loaded) => loaded,
            Err(reason) => {
                tracing::warn!(world = %world_id, %reason, "world cannot start here");
                self.end(&world_id, generation);
                rx.close();
                while let Some(cmd) = rx.recv().await {
                    if let Cmd::Join { reply, .. } = cmd {
                        let _ = reply.send(Err(JoinError::Unavailable(reason.clone())));
                    }
                }
                return;
            }
        };
        // The world's epoch: the newest among its joins' tokens (the registry bumps it
        // each time the world is assigned), never below its checkpoint's.
        let mut started = false;
        let mut fanout = Fanout::<W::Change>::new(&self.config);
        fanout.epoch = floor;
        self.recall_lines(&world_id, &mut fanout.said).await;
        // The world's operations: what it had in flight, run again (or interrupted).
        let (done, mut outcomes) = mpsc::unbounded_channel::<Completed>();
        let (again, interrupted) = engine.recover();
        self.run_operations(again, &done);
        let mut pending: Vec<Event<W::Action>> = interrupted;
        let mut ticker = tokio::time::interval(self.config.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut empty_since = tokio::time::Instant::now();
        // Whether anything happened since the last checkpoint.
        let mut dirty = false;
        tracing::debug!(world = %world_id, tick = engine.tick(), "world started");
        // Made once, not per turn of the loop: each wait on a token shared by every world
        // registers with (and leaves) that token's waiter list under its lock.
        let shutdown = self.shutdown.clone().cancelled_owned();
        let draining = self.draining.clone().cancelled_owned();
        tokio::pin!(shutdown, draining);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => {
                    self.last_tick(&world_id, &mut engine, &mut fanout, &mut pending, &mut rx);
                    self.save(&world_id, fanout.epoch, &engine);
                    break;
                }
                _ = &mut draining => {
                    self.last_tick(&world_id, &mut engine, &mut fanout, &mut pending, &mut rx);
                    self.save(&world_id, fanout.epoch, &engine);
                    self.migrate(&world_id, engine.tick(), &mut fanout).await;
                    self.end(&world_id, generation);
                    break;
                }
                cmd = rx.recv() => match cmd {
                    Some(Cmd::Join { epoch: theirs, reply, .. } | Cmd::Resume { epoch: theirs, reply, .. })
                        if theirs < floor =>
                    {
                        // A token from before the world's last move: it is not ours to serve.
                        let reason = format!("token of epoch {theirs}, world is at epoch {floor}");
                        let _ = reply.send(Err(JoinError::Unavailable(reason)));
                    }
                    Some(cmd) => {
                        if let Cmd::Join { epoch: theirs, .. } = &cmd {
                            fanout.epoch = fanout.epoch.max(*theirs);
                            if !started {
                                started = true;
                                let _ = self.events.send(WorldEvent::Started { world_id: world_id.clone(), epoch: fanout.epoch });
                            }
                        }
                        fanout.take(cmd, &mut pending);
                    }
                    None => break,
                },
                Some(completed) = outcomes.recv() => pending.push(Event::Done(completed)),
                _ = ticker.tick() => {
                    dirty |= !pending.is_empty();
                    let started_at = std::time::Instant::now();
                    let (changed, started) = self.tick(&world_id, &mut engine, &mut fanout, std::mem::take(&mut pending));
                    dirty |= changed || !started.is_empty();
                    self.run_operations(started, &done);
                    if let Some(p) = &self.persistence
                        && engine.tick().is_multiple_of(p.every_ticks)
                    {
                        if dirty {
                            self.save(&world_id, fanout.epoch, &engine);
                            dirty = false;
                        }
                        if let Some(theirs) = p.tiers.take_fenced(&world_id)
                            && theirs > fanout.epoch
                        {
                            tracing::warn!(world = %world_id, ours = fanout.epoch, theirs, "world has a newer owner; stopping it here");
                            self.metrics.fenced.inc();
                            p.tiers.forget(&world_id);
                            let moved = Closing {
                                code: close::WORLD_UNAVAILABLE,
                                reason: "world moved to another server; allocate again".into(),
                                label: "fenced",
                            };
                            fanout.close_all(moved);
                            self.end(&world_id, generation);
                            break;
                        }
                    }
                    let took = started_at.elapsed();
                    self.metrics.tick_seconds.observe(took.as_secs_f64());
                    pending.extend(fanout.dropped.drain(..).map(|member| Event::Leave { member }));
                    if !fanout.is_empty() {
                        empty_since = tokio::time::Instant::now();
                    } else if empty_since.elapsed() >= self.config.empty_grace {
                        // Written to every tier before the slot is given back, so the
                        // next server to load the world finds this tick.
                        self.save(&world_id, fanout.epoch, &engine);
                        if let Some(p) = &self.persistence
                            && let Err(e) = p.tiers.flush().await
                        {
                            tracing::warn!(world = %world_id, error = %e, "final checkpoint of an ended world not written yet; retrying in the background");
                        }
                        if self.end(&world_id, generation) {
                            break;
                        }
                    }
                    // A tick longer than the period leaves the ticker always ready: give
                    // the thread back so the connections this tick woke (queued behind
                    // us on this worker) run now, not when the world next waits. Only
                    // then: a yield costs the worker an extra turn of the I/O driver.
                    if took >= self.config.tick {
                        tokio::task::yield_now().await;
                    }
                }
            }
        }
        // Joins that raced with the end are told to retry (their reply is dropped);
        // members are let go by dropping their queues.
        rx.close();
        while rx.recv().await.is_some() {}
        tracing::debug!(world = %world_id, tick = engine.tick(), "world stopped");
    }

    /// Starts `started` on the runner, their outcomes to `done`.
    pub(super) fn run_operations(&self, started: Vec<Operation>, done: &mpsc::UnboundedSender<Completed>) {
        for op in started {
            self.ops.start(op, done.clone());
        }
    }

    /// The last tick before the world stops here: what clients already sent is applied
    /// and answered, and the changes since the last delta frame go out.
    pub(super) fn last_tick(
        &self,
        world_id: &str,
        engine: &mut Engine<W>,
        fanout: &mut Fanout<W::Change>,
        pending: &mut Vec<Event<W::Action>>,
        rx: &mut mpsc::Receiver<Cmd<W::Action>>,
    ) {
        while let Ok(cmd) = rx.try_recv() {
            fanout.take(cmd, pending);
        }
        self.tick(world_id, engine, fanout, std::mem::take(pending));
        if !engine.tick().is_multiple_of(fanout.send_every) {
            fanout.flush(world_id, engine, engine.tick(), &self.metrics);
        }
    }

    /// One tick, fanned out: whether the world changed, and the operations it started.
    pub(super) fn tick(
        &self,
        world_id: &str,
        engine: &mut Engine<W>,
        fanout: &mut Fanout<W::Change>,
        events: Vec<Event<W::Action>>,
    ) -> (bool, Vec<Operation>) {
        let mut out = engine.step(events);
        let changed = !out.changes.is_empty();
        // Lines are picked out of the changes only for a log or for Welcomes: no work per
        // tick without either.
        let log = self.persistence.as_ref().and_then(|p| p.log.as_ref());
        if log.is_some() || fanout.said.wanted() {
            let at_ms = unix_ms(std::time::SystemTime::now());
            for (seq, line) in engine.world().messages(&out.changes).into_iter().enumerate() {
                let message = gaia_checkpoint::Message {
                    world_id: world_id.to_string(),
                    epoch: fanout.epoch,
                    tick: out.tick,
                    seq: seq as u32,
                    at_ms,
                    author_id: line.author_id,
                    author: line.author,
                    text: line.text,
                };
                if let Some(log) = log {
                    log.push(message.clone());
                }
                fanout.said.push(message.into_wire());
            }
        }
        if out.stray > 0 {
            self.metrics.stray_outcomes.inc_by(out.stray as u64);
        }
        let started = std::mem::take(&mut out.started);
        fanout.send(world_id, engine, out, &self.metrics);
        (changed, started)
    }
}
