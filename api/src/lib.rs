//! Shared types of Gaia Fleet. No runtime, no clients: every crate depends on this one,
//! and this one on nothing of ours.
//!
//! - [`gameserver`]: the game-server record and its lifecycle state machine.
//! - [`fleet`]: fleet specs (YAML).
//! - [`autoscaler`]: autoscaler policies, the autoscaler's explained status, Agones'
//!   webhook review.
//! - [`k8s`]: the Kubernetes custom resources (Fleet, FleetAutoscaler, GameServer).
//! - [`allocation`]: the matchmaker's allocation request and response.
//! - [`process`]: this process's CPU time and memory, for metrics and reports.
//! - [`protocol`]: client WebSocket messages (bincode 2, versioned envelope).
//! - [`town`]: the reference world's actions, snapshot and changes.
//! - [`token`]: signed join tokens.

pub mod activity;
pub mod allocation;
pub mod autoscaler;
pub mod fleet;
pub mod gameserver;
pub mod k8s;
pub mod process;
pub mod protocol;
pub mod server_env;
pub mod token;
pub mod town;
