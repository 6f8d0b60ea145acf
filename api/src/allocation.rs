//! The allocation contract between a matchmaker and the allocator.
//!
//! `POST /v1/allocations` takes an [`AllocationRequest`] and answers an
//! [`AllocationResponse`], or an [`ErrorBody`] with 400 (bad field), 404 (unknown
//! fleet) or 429 (no capacity). Moving a world off its server answers a
//! [`MoveResponse`]. See docs/architecture.md for the whole contract.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::fleet::SpecError;
use crate::gameserver::GameServerState;

/// Which server a new world goes to among the candidates that fit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Strategy {
    /// Fill the fullest server that still has room, so empty ones can be scaled down.
    #[default]
    Packed,
    /// Spread over the emptiest servers.
    Distributed,
}

/// Narrows the candidate servers. Selectors are tried in order; the first that matches
/// any server wins (Agones' semantics).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selector {
    /// Every pair must be among the server's labels.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    /// Only servers in this state (Ready or Allocated); any allocatable state when unset.
    #[serde(default)]
    pub game_server_state: Option<GameServerState>,
    /// Only servers with at least this many free world slots (1 when unset).
    #[serde(default)]
    pub min_free_worlds: Option<u32>,
    /// Only servers with at least this many free player slots.
    #[serde(default)]
    pub min_free_players: Option<u32>,
}

/// Set on the chosen server at allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllocationMetadata {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllocationRequest {
    pub fleet: String,
    /// Join this world: where it lives if a server holds it, else a new slot for it.
    #[serde(default)]
    pub world_id: Option<String>,
    /// Who will join; put into the join token. Generated when unset.
    #[serde(default)]
    pub player_id: Option<String>,
    /// Preferred regions, best first. Empty: any region of the fleet.
    #[serde(default)]
    pub regions: Vec<String>,
    #[serde(default)]
    pub selectors: Vec<Selector>,
    #[serde(default)]
    pub strategy: Strategy,
    #[serde(default)]
    pub metadata: AllocationMetadata,
    /// Repeating a request with the same key while its lease lives returns the same answer.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// How long the caller will wait for capacity, in milliseconds. The walking skeleton
    /// answers at once; waiting for the autoscaler comes with the allocator issue.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
}

/// Longest id (world, player, idempotency key) the API accepts.
pub const MAX_ID_LEN: usize = 128;

fn check_id(field: &str, id: &str) -> Result<(), SpecError> {
    let ok_char = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':');
    if id.is_empty() || id.len() > MAX_ID_LEN || !id.bytes().all(ok_char) {
        return Err(SpecError {
            field: field.into(),
            message: format!("must be 1 to {MAX_ID_LEN} characters of A-Z, a-z, 0-9, '-', '_', '.', ':'"),
        });
    }
    Ok(())
}

impl AllocationRequest {
    /// Checks what serde cannot; the error names the field.
    pub fn validate(&self) -> Result<(), SpecError> {
        crate::fleet::check_name("fleet", &self.fleet)?;
        for (field, id) in
            [("worldId", &self.world_id), ("playerId", &self.player_id), ("idempotencyKey", &self.idempotency_key)]
        {
            if let Some(id) = id {
                check_id(field, id)?;
            }
        }
        for (i, region) in self.regions.iter().enumerate() {
            crate::fleet::check_name(&format!("regions[{i}]"), region)?;
            if self.regions[..i].contains(region) {
                return Err(SpecError {
                    field: format!("regions[{i}]"),
                    message: format!("duplicate region {region:?}"),
                });
            }
        }
        for (i, selector) in self.selectors.iter().enumerate() {
            if let Some(state) = selector.game_server_state
                && !state.is_allocatable()
            {
                return Err(SpecError {
                    field: format!("selectors[{i}].gameServerState"),
                    message: format!("must be Ready or Allocated, not {state}"),
                });
            }
        }
        for key in self.metadata.labels.keys() {
            if key.is_empty() {
                return Err(SpecError {
                    field: "metadata.labels".into(),
                    message: "label keys must not be empty".into(),
                });
            }
        }
        Ok(())
    }
}

/// A slot held for a world until its first player joins or the lease expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    pub id: String,
    /// Unix time in milliseconds.
    pub expires_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllocationResponse {
    pub world_id: String,
    pub player_id: String,
    pub fleet: String,
    pub server: String,
    pub region: String,
    /// WebSocket address to connect to.
    pub address: String,
    /// Present with `Join{token}` as the first frame.
    pub join_token: String,
    /// Set when this allocation took a new world slot; unset when it joined a world that
    /// is already running.
    #[serde(default)]
    pub lease: Option<Lease>,
    /// The world's epoch at this placement (also signed into the join token): bumped each
    /// time the world is assigned to a server, it fences the world's checkpoints.
    #[serde(default)]
    pub epoch: u64,
}

/// Answer to `POST /v1/gameservers/{name}/worlds/{worldId}/move`: where the world lives
/// now. The new server holds its slot under a lease until the world starts there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MoveResponse {
    pub world_id: String,
    pub server: String,
    pub region: String,
    /// WebSocket address of the new server.
    pub address: String,
    /// The world's new epoch; checkpoints written under an older one are stale.
    pub epoch: u64,
}

/// Every error the HTTP APIs return has this shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `bad_request`, `no_capacity`.
    pub code: String,
    pub message: String,
    /// The request field at fault, for 400s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> AllocationRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn minimal_request_defaults() {
        let r = request(r#"{"fleet":"town"}"#);
        assert_eq!(r.strategy, Strategy::Packed);
        assert!(r.regions.is_empty() && r.selectors.is_empty() && r.world_id.is_none());
        r.validate().unwrap();
    }

    #[test]
    fn full_request_round_trips() {
        let json = r#"{"fleet":"town","worldId":"w-1","playerId":"p-1","regions":["eu-west","us-east"],
            "selectors":[{"matchLabels":{"mode":"ranked"},"gameServerState":"Allocated","minFreeWorlds":2}],
            "strategy":"Distributed","metadata":{"labels":{"match":"m1"}},"idempotencyKey":"m1","deadlineMs":500}"#;
        let r = request(json);
        r.validate().unwrap();
        assert_eq!(r.strategy, Strategy::Distributed);
        assert_eq!(r.selectors[0].game_server_state, Some(GameServerState::Allocated));
        let again: AllocationRequest = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(again, r);
    }

    #[test]
    fn validation_names_the_field() {
        let cases = [
            (r#"{"fleet":""}"#, "fleet"),
            (r#"{"fleet":"town","worldId":"a b"}"#, "worldId"),
            (r#"{"fleet":"town","regions":["eu","eu"]}"#, "regions[1]"),
            (r#"{"fleet":"town","regions":["EU"]}"#, "regions[0]"),
            (r#"{"fleet":"town","selectors":[{},{"gameServerState":"Draining"}]}"#, "selectors[1].gameServerState"),
            (r#"{"fleet":"town","metadata":{"labels":{"":"x"}}}"#, "metadata.labels"),
        ];
        for (json, field) in cases {
            assert_eq!(request(json).validate().unwrap_err().field, field, "{json}");
        }
        let long = format!(r#"{{"fleet":"town","idempotencyKey":"{}"}}"#, "k".repeat(MAX_ID_LEN + 1));
        assert_eq!(request(&long).validate().unwrap_err().field, "idempotencyKey");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(serde_json::from_str::<AllocationRequest>(r#"{"fleet":"town","region":"eu"}"#).is_err());
    }
}
