//! Shared types of Gaia Fleet. No runtime, no clients: every crate depends on this one,
//! and this one on nothing of ours.
//!
//! - [`gameserver`]: the game-server record and its lifecycle state machine.
//! - [`fleet`]: fleet and autoscaler specs (YAML).
//! - [`allocation`]: the matchmaker's allocation request and response.
//! - [`protocol`]: client WebSocket messages (bincode 2, versioned envelope).
//! - [`town`]: the reference world's actions, snapshot and changes.
//! - [`token`]: signed join tokens.

pub mod allocation;
pub mod fleet;
pub mod gameserver;
pub mod protocol;
pub mod token;
pub mod town;
