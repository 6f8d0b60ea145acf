//! The game-server record and its lifecycle.
//!
//! States and their meaning follow Agones: a server is `Scheduled` when the controller
//! has asked for it, `Ready` once its SDK says so, `Allocated` while it hosts at least one
//! world (it stays allocatable while world slots are free), and `Ready` again when its
//! last world ends. [`GameServerState::transition`] is the single place that decides
//! which moves are legal; every backend goes through it.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Lifecycle state of one game server (Agones names, same meaning).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema, ts_rs::TS,
)]
#[ts(export_to = "gameserver.ts")]
pub enum GameServerState {
    /// Asked for by the controller; the process may not be running yet.
    Scheduled,
    /// Up and waiting for worlds.
    Ready,
    /// Hosts at least one world; still allocatable while it has free slots.
    Allocated,
    /// Held back by its SDK: not allocatable and not scaled down.
    Reserved,
    /// Takes no new worlds; its worlds are being moved away.
    Draining,
    /// Finished; the controller may remove it.
    Shutdown,
    /// Missed its health pings or its process died.
    Unhealthy,
    /// Failed to start or hit an unrecoverable error.
    Error,
}

impl GameServerState {
    pub const ALL: [GameServerState; 8] = [
        Self::Scheduled,
        Self::Ready,
        Self::Allocated,
        Self::Reserved,
        Self::Draining,
        Self::Shutdown,
        Self::Unhealthy,
        Self::Error,
    ];

    /// Terminal states never change again; the record only waits to be removed.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Shutdown | Self::Unhealthy | Self::Error)
    }

    /// Whether the allocator may place a new world on a server in this state.
    pub fn is_allocatable(self) -> bool {
        matches!(self, Self::Ready | Self::Allocated)
    }

    /// Whether `self -> to` is a legal move. Staying in the same non-terminal state is
    /// legal (an idempotent repeat of the same SDK call).
    pub fn can_transition(self, to: GameServerState) -> bool {
        use GameServerState::*;
        if self.is_terminal() {
            return false;
        }
        if self == to {
            return true;
        }
        match (self, to) {
            // Every live server can be shut down, fail its health checks, or fail.
            (_, Shutdown | Unhealthy | Error) => true,
            (Scheduled, Ready | Reserved) => true,
            (Ready, Allocated | Reserved | Draining) => true,
            (Allocated, Ready | Reserved | Draining) => true,
            (Reserved, Ready | Allocated | Draining) => true,
            _ => false,
        }
    }

    /// Checked transition: the new state, or an error naming both ends.
    pub fn transition(self, to: GameServerState) -> Result<GameServerState, IllegalTransition> {
        if self.can_transition(to) { Ok(to) } else { Err(IllegalTransition { from: self, to }) }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "Scheduled",
            Self::Ready => "Ready",
            Self::Allocated => "Allocated",
            Self::Reserved => "Reserved",
            Self::Draining => "Draining",
            Self::Shutdown => "Shutdown",
            Self::Unhealthy => "Unhealthy",
            Self::Error => "Error",
        }
    }
}

impl fmt::Display for GameServerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal game-server transition {from} -> {to}")]
pub struct IllegalTransition {
    pub from: GameServerState,
    pub to: GameServerState,
}

/// The live record of one game server, as the registry holds it and the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GameServer {
    pub name: String,
    pub fleet: String,
    pub region: String,
    /// WebSocket address clients connect to (`ws://host:port/ws`); set when the server
    /// registers itself.
    #[serde(default)]
    pub address: Option<String>,
    pub state: GameServerState,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Free-form notes, set by allocations' `metadata.annotations`; not used for matching.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Worlds this server can host at once.
    pub world_capacity: u32,
    /// Client connections this server accepts at once.
    pub player_capacity: u32,
    /// World slots in use, leased ones included.
    #[serde(default)]
    pub worlds: u32,
    /// Connected players, as last reported by the server.
    #[serde(default)]
    pub players: u32,
    #[serde(default)]
    pub health: crate::fleet::HealthSpec,
}

/// One world placed on a server, as the registry holds it (`Registry::worlds`; the
/// console's `GET /v1/events` lists them). Leased worlds (allocated, no player yet)
/// included.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostedWorld {
    pub world_id: String,
    /// The server holding it.
    pub server: String,
}

impl GameServer {
    /// A freshly scheduled server with nothing in it.
    pub fn scheduled(
        name: impl Into<String>,
        fleet: impl Into<String>,
        region: impl Into<String>,
        world_capacity: u32,
        player_capacity: u32,
    ) -> Self {
        Self {
            name: name.into(),
            fleet: fleet.into(),
            region: region.into(),
            address: None,
            state: GameServerState::Scheduled,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            world_capacity,
            player_capacity,
            worlds: 0,
            players: 0,
            health: crate::fleet::HealthSpec::default(),
        }
    }

    pub fn free_world_slots(&self) -> u32 {
        self.world_capacity.saturating_sub(self.worlds)
    }

    pub fn free_player_slots(&self) -> u32 {
        self.player_capacity.saturating_sub(self.players)
    }
}

/// What a game server tells the control plane when its process starts (SDK `register`).
/// If the controller already scheduled a record of that name, fleet and region must match
/// it and only the address is taken; otherwise (a server started by hand) a record is
/// created from these fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterRequest {
    pub fleet: String,
    pub region: String,
    /// WebSocket address clients connect to, `ws://host:port/ws`.
    pub address: String,
    pub world_capacity: u32,
    pub player_capacity: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub health: crate::fleet::HealthSpec,
}

impl RegisterRequest {
    /// The record of a server that registered without being scheduled (started by hand).
    pub fn record(&self, name: &str) -> GameServer {
        let mut server =
            GameServer::scheduled(name, &self.fleet, &self.region, self.world_capacity, self.player_capacity);
        server.labels = self.labels.clone();
        server.health = self.health;
        server
    }
}

/// SDK call: set one label on the calling server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetLabelRequest {
    pub key: String,
    pub value: String,
}

/// SDK call: a world is loaded on the calling server and its first player joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorldStartedRequest {
    /// The epoch of the placement the server loaded the world for (from the join token).
    pub epoch: u64,
}

/// SDK call: the calling server's current player count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlayerCountRequest {
    pub players: u32,
}

/// The label and annotation key prefixes only Gaia Fleet sets (their domains and every
/// subdomain of them): the controller marks its servers with them (`gaia.dev/template`
/// decides which servers a rolling update replaces), and Agones' own stay free for
/// servers that come from Agones. Allocations' metadata and the SDK may not set them.
pub const RESERVED_KEY_DOMAINS: [&str; 2] = ["gaia.dev", "agones.dev"];

/// Longest label or annotation key, in characters (Kubernetes' limit for a prefixed key).
pub const MAX_KEY_LEN: usize = 253;

/// Whether `key` is a label or annotation key of 1 to [`MAX_KEY_LEN`] characters
/// (characters, not bytes, as JSON Schema's `maxLength` counts).
pub fn is_key_len(key: &str) -> bool {
    (1..=MAX_KEY_LEN).contains(&key.chars().count())
}

/// Checks a label or annotation key that an allocation or an SDK call sets: 1 to
/// [`MAX_KEY_LEN`] characters, and not under a [reserved domain](RESERVED_KEY_DOMAINS).
/// The error's field is `field`, its message names the key.
pub fn check_settable_key(field: &str, key: &str) -> Result<(), crate::fleet::SpecError> {
    let refuse = |message: String| Err(crate::fleet::SpecError { field: field.into(), message });
    if !is_key_len(key) {
        let len = key.chars().count();
        return refuse(format!("keys must be 1 to {MAX_KEY_LEN} characters, not {len} ({key:?})"));
    }
    if let Some((domain, _)) = key.split_once('/') {
        let domain = domain.to_ascii_lowercase();
        for reserved in RESERVED_KEY_DOMAINS {
            if domain == reserved || domain.ends_with(&format!(".{reserved}")) {
                return refuse(format!("{key:?}: keys under {reserved}/ are reserved for the system"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn system_label_domains_are_reserved() {
        for key in ["gaia.dev/template", "GAIA.dev/fleet", "x.gaia.dev/a", "agones.dev/sdk-x", "a.agones.dev/b"] {
            let e = super::check_settable_key("metadata.labels", key).unwrap_err();
            assert_eq!(e.field, "metadata.labels");
            assert!(e.message.contains(key) && e.message.contains("reserved"), "{e}");
        }
        for key in ["mode", "example.com/gaia.dev", "notgaia.dev/x", "gaia.dev", "gaia.devx/y"] {
            assert_eq!(super::check_settable_key("metadata.labels", key), Ok(()), "{key}");
        }
        assert!(super::check_settable_key("key", "").is_err());
        assert!(super::check_settable_key("key", &"k".repeat(super::MAX_KEY_LEN + 1)).is_err());
        // Characters, not bytes: as the OpenAPI document's maxLength counts.
        assert_eq!(super::check_settable_key("key", &"é".repeat(super::MAX_KEY_LEN)), Ok(()));
    }

    use super::GameServerState::{self, *};

    /// The whole legal-transition table, written out. Anything not listed is illegal.
    const LEGAL: &[(GameServerState, GameServerState)] = &[
        (Scheduled, Scheduled),
        (Scheduled, Ready),
        (Scheduled, Reserved),
        (Scheduled, Shutdown),
        (Scheduled, Unhealthy),
        (Scheduled, Error),
        (Ready, Ready),
        (Ready, Allocated),
        (Ready, Reserved),
        (Ready, Draining),
        (Ready, Shutdown),
        (Ready, Unhealthy),
        (Ready, Error),
        (Allocated, Allocated),
        (Allocated, Ready),
        (Allocated, Reserved),
        (Allocated, Draining),
        (Allocated, Shutdown),
        (Allocated, Unhealthy),
        (Allocated, Error),
        (Reserved, Reserved),
        (Reserved, Ready),
        (Reserved, Allocated),
        (Reserved, Draining),
        (Reserved, Shutdown),
        (Reserved, Unhealthy),
        (Reserved, Error),
        (Draining, Draining),
        (Draining, Shutdown),
        (Draining, Unhealthy),
        (Draining, Error),
    ];

    #[test]
    fn every_transition_matches_the_table() {
        for from in GameServerState::ALL {
            for to in GameServerState::ALL {
                let legal = LEGAL.contains(&(from, to));
                assert_eq!(from.can_transition(to), legal, "{from} -> {to}");
                match from.transition(to) {
                    Ok(s) => assert!(legal && s == to, "{from} -> {to} accepted"),
                    Err(e) => {
                        assert!(!legal, "{from} -> {to} rejected");
                        assert_eq!((e.from, e.to), (from, to));
                        assert_eq!(e.to_string(), format!("illegal game-server transition {from} -> {to}"));
                    }
                }
            }
        }
    }

    #[test]
    fn terminal_states_are_final() {
        for from in [Shutdown, Unhealthy, Error] {
            assert!(from.is_terminal());
            for to in GameServerState::ALL {
                assert!(from.transition(to).is_err(), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn only_ready_and_allocated_take_worlds() {
        let allocatable: Vec<_> = GameServerState::ALL.into_iter().filter(|s| s.is_allocatable()).collect();
        assert_eq!(allocatable, vec![Ready, Allocated]);
    }
}
