//! The local controller: realises desired replicas as child processes of this process.
//!
//! This crate owns the game-server *processes* on one machine (embedded mode): it
//! schedules their records in the [`Registry`](gaia_registry::Registry), spawns them with
//! their `GAIA_*` environment, replaces those that die, retires idle ones on scale-down,
//! kills those the registry gave up on, and stops them all on shutdown. How many servers
//! each fleet and region should have is not its call: it follows a
//! `watch::Receiver<DesiredReplicas>` (fed by the fleet autoscaler, or fixed).
//!
//! Start with [`plan`], the pure decision (what to start, stop or kill, and the rule that
//! a server hosting worlds is never stopped), then [`run`], the shell that executes it,
//! then [`process`] for what a game server is told.

mod error;
mod metrics;
mod plan;
pub mod process;
mod shell;

pub use error::ControllerError;
pub use metrics::{ErrorLabels, Metrics, RegionLabels};
pub use plan::{Action, Rollout, Rollouts, is_idle, plan, rollouts};
pub use shell::{Config, run};
