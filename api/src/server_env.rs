//! The game server's environment: the `GAIA_*` variables whoever starts a game server sets
//! (the local controller for a child process, the Kubernetes Pod builder, embedded mode)
//! and the server reads (`gaia_gameserver::Config`, the SDK). Each name is written here
//! once and used on both sides, so the two cannot drift apart.
//!
//! [`ServerEnv`] is what every starter tells a server about its place in a fleet, the same
//! wherever it runs. How the server is named, reached and given its secrets differs by
//! place (a child process gets plain values; a Pod gets its name and address from the
//! downward API, its secrets from Secrets), so each starter sets those names itself.

/// The server's name in the registry.
pub const SERVER_NAME: &str = "GAIA_SERVER_NAME";
pub const FLEET: &str = "GAIA_FLEET";
pub const REGION: &str = "GAIA_REGION";
/// The control plane's SDK endpoint.
pub const SDK_URL: &str = "GAIA_SDK_URL";
/// The server's own SDK token, when the control plane checks them.
pub const SDK_TOKEN: &str = "GAIA_SDK_TOKEN";
/// A CA certificate to trust for the SDK endpoint (a control plane serving HTTPS).
pub const SDK_CA_FILE: &str = "GAIA_SDK_CA_FILE";
/// The secret join tokens are signed with.
pub const JOIN_SECRET: &str = "GAIA_JOIN_SECRET";
/// Where to listen; the address is registered through the SDK.
pub const LISTEN: &str = "GAIA_LISTEN";
/// The host clients are told to connect to.
pub const ADVERTISE_HOST: &str = "GAIA_ADVERTISE_HOST";
pub const WORLD_CAPACITY: &str = "GAIA_WORLD_CAPACITY";
pub const PLAYER_CAPACITY: &str = "GAIA_PLAYER_CAPACITY";
pub const WORLD_PLAYER_CAPACITY: &str = "GAIA_WORLD_PLAYER_CAPACITY";
pub const HEALTH_PERIOD_SECONDS: &str = "GAIA_HEALTH_PERIOD_SECONDS";
/// Set by a parent process: the server exits when its parent does.
pub const EXIT_WITH_PARENT: &str = "GAIA_EXIT_WITH_PARENT";
/// The hot checkpoint tier (and nothing else): `redis://...`.
pub const REDIS_URL: &str = "GAIA_REDIS_URL";
/// The durable checkpoint tier, the activity log and the agents' memories:
/// `postgres://...` or `sqlite:path`.
pub const DATABASE_URL: &str = "GAIA_DATABASE_URL";

/// What every starter tells a game server about its place in a fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerEnv {
    pub fleet: String,
    pub region: String,
    pub sdk_url: String,
    pub world_capacity: u32,
    pub player_capacity: u32,
    pub world_player_capacity: u32,
    pub health_period_seconds: u32,
}

impl ServerEnv {
    /// As variables, for a process's or a container's environment.
    pub fn vars(&self) -> [(&'static str, String); 7] {
        [
            (FLEET, self.fleet.clone()),
            (REGION, self.region.clone()),
            (SDK_URL, self.sdk_url.clone()),
            (WORLD_CAPACITY, self.world_capacity.to_string()),
            (PLAYER_CAPACITY, self.player_capacity.to_string()),
            (WORLD_PLAYER_CAPACITY, self.world_player_capacity.to_string()),
            (HEALTH_PERIOD_SECONDS, self.health_period_seconds.to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_a_variable() {
        let env = ServerEnv {
            fleet: "town".into(),
            region: "eu".into(),
            sdk_url: "http://cp:7700".into(),
            world_capacity: 8,
            player_capacity: 240,
            world_player_capacity: 30,
            health_period_seconds: 2,
        };
        let vars = std::collections::BTreeMap::from(env.vars());
        assert_eq!(vars.len(), 7, "one variable per field, no name twice");
        assert_eq!(vars[FLEET], "town");
        assert_eq!(vars[WORLD_PLAYER_CAPACITY], "30");
        assert!(vars.keys().all(|k| k.starts_with("GAIA_")));
    }
}
