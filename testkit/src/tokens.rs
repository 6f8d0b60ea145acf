//! Tokens as the allocator signs them, under [`SECRET`]: give a test's game servers
//! `join_secret: SECRET` and sign with these.
//!
//! Start with [`join`]. A test that needs another claim (an epoch, an expiry, a wrong key)
//! changes one field of [`join_claims`] and signs with [`key`] or a key of its own.

use std::time::{Duration, SystemTime};

use gaia_api::token::{JoinClaims, SpectateClaims, TokenKey, unix_ms};

/// The join secret of the tests' game servers (and allocators).
pub const SECRET: &str = "s3cret";

/// How long a token from here is valid.
pub const VALID_FOR: Duration = Duration::from_secs(60);

/// The key of [`SECRET`].
pub fn key() -> TokenKey {
    TokenKey::new(SECRET)
}

/// When a token signed now expires, Unix milliseconds.
fn expiry() -> u64 {
    unix_ms(SystemTime::now()) + VALID_FOR.as_millis() as u64
}

/// What a join token for `player` in `world` on server `server` claims: epoch 1, valid
/// for [`VALID_FOR`].
pub fn join_claims(server: &str, world: &str, player: &str) -> JoinClaims {
    JoinClaims {
        world_id: world.into(),
        server: server.into(),
        player_id: player.into(),
        expires_at_ms: expiry(),
        epoch: 1,
    }
}

/// A join token of [`join_claims`], signed with [`SECRET`].
pub fn join(server: &str, world: &str, player: &str) -> String {
    key().sign(&join_claims(server, world, player))
}

/// What a spectate token for `world` on server `server` claims, valid for [`VALID_FOR`].
pub fn spectate_claims(server: &str, world: &str) -> SpectateClaims {
    SpectateClaims { world_id: world.into(), server: server.into(), expires_at_ms: expiry() }
}

/// A spectate token of [`spectate_claims`], signed with [`SECRET`].
pub fn spectate(server: &str, world: &str) -> String {
    key().sign_spectate(&spectate_claims(server, world))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_of_the_secret_accepts_its_tokens_and_only_its_own() {
        let now = unix_ms(SystemTime::now());
        let claims = key().verify(&join("gs-1", "w1", "p"), "gs-1", now).expect("a valid join token");
        assert_eq!((claims.world_id.as_str(), claims.player_id.as_str(), claims.epoch), ("w1", "p", 1));
        assert!(key().verify(&join("gs-1", "w1", "p"), "gs-2", now).is_err());
        assert!(key().verify_spectate(&spectate("gs-1", "w1"), "gs-1", now).is_ok());
        assert!(key().verify(&spectate("gs-1", "w1"), "gs-1", now).is_err(), "a spectate token is no join token");
    }
}
