//! What the tests of every crate share, so no crate keeps a copy of its own (a dev-only
//! crate: nothing ships with it).
//!
//! Start with [`services`]: where the real Redis and Postgres are, and what a test does
//! when one is not there (it skips with the reason printed, or fails under
//! `REQUIRE_SERVICES`, as CI sets it). [`files`] cleans up after a test's SQLite files.

pub mod files;
pub mod services;
