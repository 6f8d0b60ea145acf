//! What a server's worlds are told: tick, frame rate, limits, slow readers, resume.

use std::time::Duration;

use gaia_api::token::TokenKey;

#[derive(Debug, Clone)]
pub struct RoomConfig {
    /// The fixed time step: inputs are applied and answered at each tick.
    pub tick: Duration,
    /// Ticks per delta frame: changes of this many ticks are coalesced into one frame.
    pub send_every: u32,
    /// Players one world holds.
    pub max_players: usize,
    /// Spectators one world holds, besides its players.
    pub max_spectators: usize,
    /// Worlds this server hosts at once.
    pub max_worlds: usize,
    /// How long a world with nobody in it lives on before it ends.
    pub empty_grace: Duration,
    /// Frames queued per member before it counts as behind.
    pub member_queue: usize,
    /// How long a member may stay behind before it is dropped.
    pub max_behind: Duration,
    /// Session resume; `None`: a member whose connection drops leaves at once.
    pub resume: Option<ResumeConfig>,
    /// Lines said that a world's `Welcome` and `Resync` carry, the newest; 0: none.
    pub recent_messages: usize,
}

/// Session resume: a member whose connection drops (no close frame) stays in its world,
/// away, for `grace`; a new connection that sends `Resume` with the token of its Welcome
/// takes it back (see the module docs).
#[derive(Debug, Clone)]
pub struct ResumeConfig {
    pub key: TokenKey,
    /// This server's name, which resume tokens carry.
    pub server: String,
    pub grace: Duration,
    /// How long a member's results are kept to answer a resume's `awaiting` seqs: the
    /// idle timeout, as frames can sit undelivered in a dead connection until the
    /// server gives up on it.
    pub keep_results: Duration,
}

impl Default for RoomConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(50),
            send_every: 2,
            max_players: 30,
            max_spectators: 16,
            max_worlds: 10,
            empty_grace: Duration::from_secs(5),
            member_queue: 64,
            max_behind: Duration::from_secs(5),
            resume: None,
            recent_messages: 20,
        }
    }
}
