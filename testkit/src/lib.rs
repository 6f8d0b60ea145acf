//! What the tests of every crate share, so no crate keeps a copy of its own (a dev-only
//! crate: nothing ships with it).
//!
//! Start with [`services`]: where the real Redis and Postgres are, and what a test does
//! when one is not there (it skips with the reason printed, or fails under
//! `REQUIRE_SERVICES`, as CI sets it). [`files`] cleans up after a test's SQLite files.
//! A test that plays against a game server signs its tokens with [`tokens`] and speaks
//! the client protocol with [`ws`].
//!
//! Starting an in-process game server is not here but in `gameserver/tests/common`: it
//! needs `gaia-gameserver`, which dev-depends on this crate. A dependency back would be a
//! cycle: the game server's unit tests would meet two copies of its types (the crate
//! under test and this crate's), and the tests of every crate that uses this one would
//! build the game server. What this crate knows of a game server is the wire (the types
//! of `gaia-api`), so any test can use it, whoever started the server: the game server's
//! own tests, an embedded fleet's, or a CLI test's real processes.

pub mod files;
pub mod services;
pub mod tokens;
pub mod ws;
